"""Damaged state is detected and explained, every bad input gets one clear line, and the
run store is safe under concurrent workers. Each test sets up a fault the way a crash, a
full disk, a hand-edit or a second process produces it; each would have passed the fault
through silently (or with a traceback) before."""
from __future__ import annotations

import builtins
import errno
import io
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tarfile
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from attnlab import RunConfig, list_runs, train_or_load
from attnlab import runs as runs_mod
from attnlab.ablate import ablate
from attnlab.cli import main
from attnlab.data import ImageSet, load_cache, load_data, load_dataset, save_cache
from attnlab.data import imageset as imageset_mod
from attnlab.integrity import MANIFEST, Manifest
from attnlab.locks import FileLock, LockHeldError
from attnlab.papers import create_model, resolve_model
from attnlab.paths import clean_stale_temps
from attnlab.recipes import get_recipe
from attnlab.runs import RunDamageWarning, check_seeds
from attnlab.train import CheckpointError, fit, load_checkpoint, previous_checkpoint

REPO = Path(__file__).resolve().parent.parent


def smoke(**kw) -> RunConfig:
    return RunConfig(model="resnet20", dataset="shapes", recipe="he2016", profile="smoke", **kw)


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One finished smoke run, trained once; tests damage copies of it."""
    torch.set_num_threads(1)
    return train_or_load(smoke(), tmp_path_factory.mktemp("store"), progress=False)


@pytest.fixture
def store(tmp_path, monkeypatch):
    path = tmp_path / "runs"
    path.mkdir()
    monkeypatch.setenv("ATTNLAB_RUNS", str(path))
    return path


def copy_run(trained, store: Path, name: str | None = None) -> Path:
    dest = store / (name or trained.dir.name)
    shutil.copytree(trained.dir, dest)
    return dest


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code: int, err: str) -> str:
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("attnlab: error: "), err
    return err


def no_training(*a, **k):
    raise AssertionError("this run must be loaded, not trained")


class Retrained(Exception):
    pass


def retrain_marker(*a, **k):
    raise Retrained


def largest_member(path: Path) -> tuple[int, int]:
    """(offset, size) of the largest member's bytes inside a torch.save zip archive."""
    with zipfile.ZipFile(path) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        name_len, extra_len = struct.unpack("<HH", f.read(30)[26:30])
    return info.header_offset + 30 + name_len + extra_len, info.file_size


def garble(path: Path, n: int, at: int | None = None) -> None:
    start, size = largest_member(path)
    offset = start + (size // 2 if at is None else at)
    raw = bytearray(path.read_bytes())
    raw[offset:offset + n] = bytes(b ^ 0x5A for b in raw[offset:offset + n])
    path.write_bytes(bytes(raw))


def write_png(path: Path, value: int, size: int = 8, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    Image.fromarray(np.full(shape, value, np.uint8), mode).save(path)


def imagefolder(root: Path, splits: dict[str, tuple[str, ...]], per_class: int = 2) -> Path:
    for split, classes in splits.items():
        for ci, cls in enumerate(classes):
            for j in range(per_class):
                write_png(root / split / cls / f"{j}.png", 40 * ci + j)
    return root


def mnist_folder(root: Path) -> Path:
    for split in ("train", "test"):
        for d in range(10):
            write_png(root / split / str(d) / "0.png", d * 20, size=28, mode="L")
    return root


# -- silent wrong results ------------------------------------------------------------------

def test_imagefolder_test_split_lacking_a_class_is_an_error_not_a_label_shift(tmp_path):
    src = imagefolder(tmp_path / "pets", {"train": ("cat", "dog", "fox"), "test": ("cat", "fox")})
    with pytest.raises(ValueError, match=r"'test' split .* missing \['dog'\]"):
        load_dataset("imagefolder", "test", root=tmp_path / "data", path=src)
    extra = imagefolder(tmp_path / "extra", {"train": ("cat", "dog"), "test": ("cat", "dog", "owl")})
    with pytest.raises(ValueError, match=r"extra \['owl'\]"):
        load_data("imagefolder", root=tmp_path / "data", path=extra)
    same = imagefolder(tmp_path / "same", {"train": ("cat", "dog", "fox"), "test": ("cat", "dog", "fox")})
    test = load_dataset("imagefolder", "test", root=tmp_path / "data", path=same)
    assert test.classes == ["cat", "dog", "fox"] and test.labels.tolist() == [0, 0, 1, 1, 2, 2]


def test_one_class_imagefolder_is_refused(tmp_path):
    src = imagefolder(tmp_path / "one", {"train": ("cat",), "test": ("cat",)})
    with pytest.raises(ValueError, match="at least 2"):
        load_data("imagefolder", root=tmp_path / "data", path=src)


def test_garbled_checkpoint_is_set_aside_and_training_resumes_from_the_epoch_before(tiny_data, tmp_path):
    recipe = get_recipe("he2016", "smoke", "shapes", epochs=2, max_steps_per_epoch=1, batch_size=32)
    ckpt = tmp_path / "checkpoint.pt"
    first = fit(create_model("resnet20"), tiny_data, recipe, checkpoint=ckpt, progress=False)
    assert ckpt.exists() and previous_checkpoint(ckpt).exists()
    garble(ckpt, 64)
    torch.load(ckpt, weights_only=False)  # torch itself reads the garbled weights without a word
    with pytest.raises(CheckpointError, match="CRC-32 mismatch"):
        load_checkpoint(ckpt)
    with pytest.warns(RunDamageWarning, match=r"checkpoint.pt is damaged .*set aside as checkpoint.pt.damaged.*"
                                              r"resuming from checkpoint.prev.pt"):
        runs_mod._recover_checkpoint(ckpt)
    assert not ckpt.exists() and (tmp_path / "checkpoint.pt.damaged").exists()
    again = fit(create_model("resnet20"), tiny_data, recipe, checkpoint=ckpt, progress=False)
    # epoch 1 came from the previous checkpoint (same timing row), epoch 2 was trained again
    assert again.epochs == 2 and again.rows[0]["seconds"] == first.rows[0]["seconds"]

    garble(ckpt, 4096, at=0)
    garble(previous_checkpoint(ckpt), 64)
    with pytest.warns(RunDamageWarning, match="training restarts from epoch 1"):
        runs_mod._recover_checkpoint(ckpt)
    assert not ckpt.exists() and not previous_checkpoint(ckpt).exists()


def test_one_flipped_byte_in_the_data_cache_is_caught_and_rebuilt(tmp_path):
    g = torch.Generator().manual_seed(0)
    data = ImageSet(torch.randint(0, 256, (1200, 3, 32, 32), dtype=torch.uint8, generator=g),
                    torch.arange(1200) % 10, [str(i) for i in range(10)], "x", "train")
    path = tmp_path / "x-train.pt"
    save_cache(data, path)
    start, size = largest_member(path)
    assert size == data.images.numel()
    raw = bytearray(path.read_bytes())
    raw[start + 1] ^= 0x01  # pixel 1: between the pixels the old sampled checksum read
    path.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match="checksum"):
        assert load_cache(path) is None
    assert not path.exists()  # never used: the caller rebuilds it


def test_cache_of_the_old_format_is_verified_and_upgraded(tmp_path):
    data = ImageSet(torch.full((4, 3, 8, 8), 7, dtype=torch.uint8), torch.tensor([0, 1, 0, 1]), ["a", "b"])
    path = tmp_path / "old.pt"
    torch.save({"images": data.images, "labels": data.labels, "classes": data.classes, "masks": None,
                "name": "", "split": "", "format": 1,
                "checksum": imageset_mod._legacy_checksum(data.images, data.labels)}, path)
    assert torch.equal(load_cache(path).images, data.images)
    assert torch.load(path, weights_only=True)["format"] == imageset_mod.CACHE_FORMAT


def test_read_only_data_folder_still_gives_the_data(tmp_path, monkeypatch):
    import attnlab.data as data_mod

    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "data"))

    monkeypatch.setattr(data_mod, "save_cache", read_only)
    src = imagefolder(tmp_path / "pets", {"train": ("cat", "dog"), "test": ("cat", "dog")})
    with pytest.warns(UserWarning, match="could not write the data cache.*Read-only"):
        assert len(load_dataset("imagefolder", "train", root=tmp_path / "data", path=src, val_size=1)) == 3


def test_truncated_history_and_edited_metrics_are_detected(trained, store):
    assert json.loads((trained.dir / "env.json").read_text())["threads"] == 1  # recorded for determinism
    d = copy_run(trained, store)
    history = (d / "history.csv").read_text()
    (d / "history.csv").write_text(history[: len(history) - 7])  # cut mid-row
    with pytest.warns(RunDamageWarning, match="history.csv is damaged.*result .* is intact and used"):
        run = runs_mod.Run.load(d)
    assert run.metrics == trained.metrics and run.history.empty and "history.csv" in run.damaged

    (d / "history.csv").write_text(history)
    metrics = json.loads((d / "metrics.json").read_text())
    (d / "metrics.json").write_text(json.dumps({**metrics, "test_acc": 0.99}, indent=2))
    with pytest.warns(RunDamageWarning, match="metrics.json is damaged.*trained again"):
        assert runs_mod.Run.load(d) is None


def test_history_cut_short_is_caught_without_a_manifest_too(trained, store):
    d = copy_run(trained, store)
    (d / MANIFEST).unlink()  # a run stored before digests existed
    assert runs_mod.Run.load(d) is not None
    (d / "history.csv").write_text((d / "history.csv").read_text().splitlines()[0] + "\n")
    with pytest.warns(RunDamageWarning, match="history.csv is unreadable .*0 rows for 1 epochs"):
        runs_mod.Run.load(d)


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_missing_or_truncated_model_is_detected_on_load(trained, store, damage):
    d = copy_run(trained, store)
    if damage == "missing":
        (d / "model.pt").unlink()
    else:
        (d / "model.pt").write_bytes((d / "model.pt").read_bytes()[:1000])
    with pytest.warns(RunDamageWarning, match="model.pt is (missing|damaged)"):
        assert runs_mod.Run.load(d) is None


@pytest.mark.parametrize("content", ["{}", "null"])
def test_empty_metrics_is_trained_again_not_interrupted_forever(trained, store, monkeypatch, content):
    d = copy_run(trained, store)
    (d / "metrics.json").write_text(content)
    monkeypatch.setattr(runs_mod, "fit", retrain_marker)
    with pytest.warns(RunDamageWarning, match="metrics.json is damaged"), pytest.raises(Retrained):
        train_or_load(smoke(), store, progress=False)
    assert (d / "metrics.json.damaged").read_text() == content and not (d / "metrics.json").exists()


def test_damaged_config_beside_a_good_result_keeps_the_result_and_is_repaired(trained, store, monkeypatch):
    d = copy_run(trained, store)
    (d / "config.json").write_text('{"model": "resnet20", "seed": ')
    monkeypatch.setattr(runs_mod, "fit", no_training)
    with pytest.warns(RunDamageWarning, match="config.json is damaged.*result .* is intact and used"):
        run = train_or_load(smoke(), store, progress=False)
    assert run.from_store and run.metrics == trained.metrics
    assert json.loads((d / "config.json").read_text())["model"] == "resnet20"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # repaired: loads without a warning
        assert runs_mod.Run.load(d) is not None


def test_runs_command_reports_and_skips_bad_folders(trained, store, capsys):
    copy_run(trained, store)
    (copy_run(trained, store, "empty") / "metrics.json").write_text("{}")  # a crash, a hand-edit
    for name, text in [("null", "null"), ("nokey", '{"test_acc": 0.5}')]:  # sealed: another version wrote them
        with Manifest(copy_run(trained, store, name)).write("metrics.json") as tmp:
            tmp.write_text(text)
    newer = copy_run(trained, store, "newer")
    cfg = json.loads((newer / "config.json").read_text())
    with Manifest(newer).write("config.json") as tmp:  # written by a version with another field
        tmp.write_text(json.dumps({**cfg, "compile": True}))
    code, out, err = run_cli(capsys, "runs")
    assert code == 0 and "Traceback" not in err and "1 run(s)" in out
    lines = err.strip().splitlines()
    assert len(lines) == 4 and all(line.startswith("attnlab: warning: run ") for line in lines)
    assert "unknown config key(s) ['compile']" in err and "metric 'val_acc' is missing" in err
    assert len(list_runs(store)) == 1


def test_cli_does_not_call_a_retrained_run_stored(trained, store, capsys):
    d = copy_run(trained, store)
    argv = ["train", "--model", "resnet20", "--profile", "smoke"]
    code, out, _ = run_cli(capsys, *argv)
    assert code == 0 and "[from the run store]" in out
    (d / "metrics.json").write_text("{}")
    code, out, err = run_cli(capsys, *argv, "--json")
    assert code == 0 and "[from the run store]" not in out and json.loads(out.splitlines()[-1])["cached"] is False
    assert "attnlab: warning: run " in err and "metrics.json is damaged" in err
    assert (d / "metrics.json.damaged").exists() and runs_mod.Run.load(d) is not None


# -- read-only and full stores -------------------------------------------------------------

def _refuse_writes_under(monkeypatch, root: Path, err: int, only: str = "") -> None:
    """Patch every way attnlab opens files so writes below ``root`` (to files named
    ``only*``) fail with ``err``, as a read-only or full file system fails them."""
    real_open, real_os_open = builtins.open, os.open

    def refused(path) -> bool:
        p = Path(os.fspath(path))
        return str(p).startswith(str(root)) and p.name.startswith(only)

    def fake_open(file, mode="r", *a, **k):
        if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+") and refused(file):
            raise OSError(err, os.strerror(err), str(file))
        return real_open(file, mode, *a, **k)

    def fake_os_open(path, flags, *a, **k):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and refused(path):
            raise OSError(err, os.strerror(err), str(path))
        return real_os_open(path, flags, *a, **k)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_open)
    monkeypatch.setattr(os, "open", fake_os_open)


def test_read_only_store_serves_its_runs_and_refuses_training_in_one_line(trained, store, capsys, monkeypatch):
    copy_run(trained, store)
    _refuse_writes_under(monkeypatch, store, errno.EROFS)
    code, out, err = run_cli(capsys, "train", "--model", "resnet20", "--profile", "smoke")
    assert code == 0 and "[from the run store]" in out and not err
    code, out, err = run_cli(capsys, "runs")
    assert code == 0 and "1 run(s)" in out
    code, _, err = run_cli(capsys, "train", "--model", "resnet20", "--profile", "smoke", "--seed", "1")
    one_line_error(code, err)
    assert "cannot write the run store" in err and "Read-only file system" in err and "ATTNLAB_RUNS" in err


def test_full_disk_mid_training_is_one_line_and_leaves_no_result(store, capsys, monkeypatch):
    _refuse_writes_under(monkeypatch, store, errno.ENOSPC, only="checkpoint")
    code, _, err = run_cli(capsys, "train", "--model", "resnet20", "--profile", "smoke", "--json")  # no bar
    one_line_error(code, err)
    assert "No space left on device" in err and "free some space" in err
    d = store / smoke().dirname
    assert not (d / "metrics.json").exists()  # (the CLI drops a run that failed in its first epoch)
    assert not list(store.rglob("*.tmp*")) and not list(store.glob("*.lock"))


def test_full_data_folder_on_import_is_one_line(tmp_path, capsys, monkeypatch):
    import attnlab.data as data_mod

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "data"))

    monkeypatch.setattr(data_mod, "save_cache", full)
    code, _, err = run_cli(capsys, "data", "import", "mnist", "--from", str(mnist_folder(tmp_path / "m")),
                           "--root", str(tmp_path / "data"))
    assert "No space left on device" in one_line_error(code, err)


# -- one line for every bad input ------------------------------------------------------------

TRAIN = ["train", "--model", "se_resnet20", "--profile", "smoke"]


@pytest.mark.parametrize("argv, message", [
    (TRAIN + ["--device", "gpu"], "unknown device 'gpu'; allowed: auto, cpu, cuda"),
    (TRAIN + ["--model-kw", '{"reduction": 0}'], "SE reduction must be an integer >= 1"),
    (["train", "--model", "resnet20_cbam", "--profile", "smoke", "--model-kw", '{"reduction": 0}'],
     "CBAM reduction must be an integer >= 1"),
    (TRAIN + ["--model-kw", '{"reduction": "16"}'], "option reduction must be int, got '16' (str)"),
    (TRAIN + ["--data-kw", '{"train_subset": 0}'], "train_subset must be an integer >= 1"),
    (TRAIN + ["--data-kw", '{"train_subset": -5}'], "train_subset must be an integer >= 1"),
    (TRAIN + ["--data-kw", '{"eval_subset": 0}'], "eval_subset must be an integer >= 1"),
    (TRAIN + ["--recipe-kw", '{"label_smoothing": 2}'], "label_smoothing must be a number in [0, 1)"),
    (TRAIN + ["--recipe-kw", '{"epochs": "abc"}'], "epochs must be an integer >= 1, got 'abc'"),
    (TRAIN + ["--recipe-kw", '{"epochs": 2.5}'], "epochs must be an integer >= 1, got 2.5"),
    (TRAIN + ["--recipe-kw", '{"lr": "0.1"}'], "lr must be a number > 0, got '0.1' (str)"),
    (TRAIN + ["--seed", "abc"], "argument --seed: invalid int value: 'abc'"),
    (TRAIN + ["--seed", str(2**70)], "seed must be an integer in [0, 2**63)"),
    (["ablate", "--model", "resnet20", "--grid", "depth=20", "--seeds", "abc"],
     "expected comma-separated integer seeds like 0,1,2"),
    (["ablate", "--model", "resnet20", "--grid", "depth=20", "--seeds", f"0,{2**70}"],
     "each seed must be an integer in [0, 2**63)"),
])
def test_bad_cli_input_is_one_line(capsys, store, argv, message):
    code, _, err = run_cli(capsys, *argv)
    assert message in one_line_error(code, err)
    assert not any(store.iterdir())  # nothing half-made in the store


def _tar(folder: Path, split: str, out: Path) -> Path:
    with tarfile.open(out, "w:gz") as tar:
        tar.add(folder / split, arcname=split)
    return out


@pytest.mark.parametrize("fault, message", [
    ("not an archive", "not a complete tar archive"),
    ("truncated archive", "not a complete tar archive"),
    ("corrupt image", "train/3/bad.png is not a readable image"),
])
def test_data_import_of_damaged_input_is_one_line(tmp_path, capsys, fault, message):
    src = mnist_folder(tmp_path / "png")
    if fault == "corrupt image":
        (src / "train" / "3" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    else:
        archives = tmp_path / "tars"
        archives.mkdir()
        train = _tar(src, "train", archives / "train.tar.gz")
        _tar(src, "test", archives / "test.tar.gz")
        if fault == "not an archive":
            train.write_text("these are not the images you are looking for")
        else:
            train.write_bytes(train.read_bytes()[: train.stat().st_size // 2])
        src = archives
    code, _, err = run_cli(capsys, "data", "import", "mnist", "--from", str(src), "--root", str(tmp_path / "data"))
    assert message in one_line_error(code, err)
    if fault == "corrupt image":
        assert "stopped" in err
    assert not (tmp_path / "data" / "cache").exists() or not any((tmp_path / "data" / "cache").iterdir())


def test_bad_input_in_a_real_process_is_one_line(store):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ATTNLAB_RUNS": str(store)}
    p = subprocess.run([sys.executable, "-m", "attnlab", "train", "--model", "resnet20", "--device", "gpu"],
                       capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert p.returncode == 2 and p.stderr.strip() == (
        "attnlab: error: unknown device 'gpu'; allowed: auto, cpu, cuda, cuda:N, mps")


def test_configs_are_validated_where_they_are_built(store):
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*63\)"):
        smoke(seed=2**70)
    with pytest.raises(ValueError, match="seed must be an integer"):
        smoke(seed="1")
    with pytest.raises(ValueError, match="unknown data option"):
        smoke(data_kw={"subset": 5})
    with pytest.raises(ValueError, match="eval_subset must be an integer >= 1"):
        smoke(data_kw={"eval_subset": 0})
    with pytest.raises(ValueError, match=r"label_smoothing must be a number in \[0, 1\)"):
        get_recipe("he2016", label_smoothing=-0.1)
    with pytest.raises(ValueError, match="train_subset must be an integer >= 1"):
        load_data("shapes", train_subset=-5)
    with pytest.raises(TypeError, match="reduction must be int"):
        resolve_model("se_resnet20", reduction=16.0)
    assert get_recipe("he2016", lr=1).lr == 1.0 and get_recipe("he2016", lr=1) == get_recipe("he2016", lr=1.0)
    with pytest.raises(ValueError, match=r"seeds must be a list of integers like \[0\]"):
        check_seeds(0)  # SEEDS = 0 in a notebook's parameters cell
    with pytest.raises(ValueError, match="seeds must be a list"):
        ablate(smoke(), {"depth": [20]}, seeds=0)
    assert check_seeds(range(3)) == [0, 1, 2]


# -- concurrent workers ----------------------------------------------------------------------

def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _write_lock(path: Path, **record) -> None:
    path.write_text(json.dumps({"pid": 1, "host": socket.gethostname(), "time": time.time(),
                                "token": "theirs", **record}))


def test_stale_locks_are_broken_and_live_ones_name_their_holder(tmp_path):
    lock = tmp_path / "run.lock"
    _write_lock(lock, pid=_dead_pid())  # a holder killed with kill -9
    with FileLock(lock, timeout=0):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        with pytest.raises(LockHeldError, match=rf"pid {os.getpid()} on host {socket.gethostname()}"):
            FileLock(lock, timeout=0.2, poll=0.05).acquire()
    assert not lock.exists()

    _write_lock(lock, host="elsewhere")  # another machine on a shared file system, heartbeat fresh
    with pytest.raises(LockHeldError, match="on host elsewhere"):
        FileLock(lock, timeout=0).acquire()
    old = time.time() - 3600
    os.utime(lock, (old, old))  # ... and silent for an hour
    with FileLock(lock, timeout=0):
        pass
    assert not lock.exists()


def test_stale_temp_files_are_cleaned(tmp_path):
    dead = _dead_pid()
    (tmp_path / f"checkpoint.pt.tmp{dead}").write_bytes(b"half")
    (tmp_path / f"x.pt.tmp{os.getpid()}").write_bytes(b"mine, being written")
    (tmp_path / "history.csv").write_text("kept")
    assert [p.name for p in clean_stale_temps(tmp_path)] == [f"checkpoint.pt.tmp{dead}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.csv", f"x.pt.tmp{os.getpid()}"]


def test_lock_of_a_killed_process_is_recovered(tmp_path):
    lock = tmp_path / "run.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from attnlab.locks import FileLock; "
                               "FileLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(300)",
         str(lock)], stdout=subprocess.PIPE, text=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockHeldError, match=f"pid {holder.pid}"):
            FileLock(lock, timeout=0).acquire()
        holder.kill()
        holder.wait()
        with FileLock(lock, timeout=5, poll=0.05):
            assert json.loads(lock.read_text())["pid"] == os.getpid()
    finally:
        holder.kill()
        holder.wait()


def test_two_processes_on_one_config_train_it_once(store):
    run_dir = store / smoke().dirname
    run_dir.mkdir()
    (run_dir / "checkpoint.pt.tmp4194999").write_bytes(b"left by a killed writer")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "ATTNLAB_RUNS": str(store)}
    argv = [sys.executable, "-m", "attnlab", "train", "--model", "resnet20", "--profile", "smoke", "--json"]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert sorted(r["cached"] for r in results) == [False, True]  # one trained, the other loaded
    assert results[0]["test_acc"] == results[1]["test_acc"] and results[0]["run_dir"] == results[1]["run_dir"]
    assert not (run_dir / "checkpoint.pt.tmp4194999").exists() and not list(store.glob("*.lock"))
