"""The command line, run in-process through ``main([...])``, and the benchmark's pieces
at tiny sizes (the real ``bench`` takes minutes and is not run here)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from attnlab import bench
from attnlab.cli import main
from attnlab.data import DataUnavailableError

TINY = bench.Settings(rounds=1, steps=1, loader_batches=1, fit_steps=2, explicit=True, batch_size=8,
                      eval_images=32)


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from a second thread, and on a shared 2-core machine two
    spinning OpenMP threads made these tests 15x slower; restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def runs(tmp_path, monkeypatch):
    path = tmp_path / "runs"
    monkeypatch.setenv("ATTNLAB_RUNS", str(path))
    return path


def test_info(capsys, runs):
    code, out, _ = run_cli(capsys, "info")
    assert code == 0
    for word in ("torch", "device", "precision", "threads", "data root", "cached data", "runs root"):
        assert word in out
    assert str(runs) in out
    code, out, _ = run_cli(capsys, "info", "--json")
    info = last_json(out)
    assert code == 0 and info["runs_root"] == str(runs) and isinstance(info["cached_datasets"], dict)


def test_data_list(capsys):
    code, out, _ = run_cli(capsys, "data", "list")
    assert code == 0
    for name in ("cifar10", "mnist", "shapes", "imagefolder"):
        assert name in out
    assert "built in" in out


def test_data_import_missing_folder(capsys, tmp_path):
    code, out, err = run_cli(capsys, "data", "import", "cifar10", "--from", str(tmp_path / "nope"))
    assert code == 2 and err.startswith("attnlab: error:") and "nope" in err


def test_train_json_then_cached(capsys, runs):
    argv = ["train", "--model", "resnet20", "--dataset", "shapes", "--profile", "smoke", "--json"]
    code, out, _ = run_cli(capsys, *argv)
    assert code == 0
    res = last_json(out)
    assert {"test_acc", "val_acc", "epochs", "wall_s", "run_dir", "model", "dataset", "profile"} <= set(res)
    assert res["model"] == "resnet20" and res["profile"] == "smoke" and res["epochs"] == 1
    assert 0.0 <= res["test_acc"] <= 1.0 and not res["cached"]
    assert res["run_dir"].startswith(str(runs)) and (runs / res["run_dir"].split("/")[-1] / "metrics.json").exists()

    code, out, _ = run_cli(capsys, *argv)
    again = last_json(out)
    assert code == 0 and again["cached"] and again["run_dir"] == res["run_dir"]
    assert again["test_acc"] == res["test_acc"]

    code, out, _ = run_cli(capsys, "runs", "--json")
    listed = last_json(out)["runs"]
    assert code == 0 and len(listed) == 1 and listed[0]["model"] == "resnet20"
    code, out, _ = run_cli(capsys, "runs")
    assert code == 0 and "resnet20" in out and "1 run(s)" in out


def test_runs_empty(capsys, runs):
    code, out, _ = run_cli(capsys, "runs")
    assert code == 0 and "no finished runs" in out


@pytest.mark.parametrize("option, value, message", [
    ("--model", "resnet21", "unknown model 'resnet21'"),
    ("--dataset", "imagenet", "unknown dataset 'imagenet'"),
    ("--recipe", "sgdx", "unknown recipe 'sgdx'"),
    ("--profile", "huge", "unknown profile 'huge'"),
    ("--model-kw", '{"attn": "nope"}', "unknown attention block 'nope'"),
    ("--model-kw", '{"depth": 3}', "unknown keyword"),
    ("--recipe-kw", '{"lrr": 1}', "unknown recipe field"),
])
def test_train_bad_input(capsys, runs, option, value, message):
    argv = {"--model": "resnet20", "--dataset": "shapes", "--profile": "smoke", option: value}
    code, out, err = run_cli(capsys, "train", *[x for kv in argv.items() for x in kv])
    assert code == 2
    assert err.startswith("attnlab: error: ") and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not runs.exists() or not any(runs.iterdir())  # nothing half-made in the store


def test_train_bad_json(capsys, runs):
    code, _, err = run_cli(capsys, "train", "--model", "resnet20", "--model-kw", "{bad")
    assert code == 2 and "not valid JSON" in err


def test_train_missing_data_offline(capsys, runs, monkeypatch):
    import attnlab.data as data

    def offline(name, split, root):
        raise DataUnavailableError(f"{name} ({split}) is not cached and could not be downloaded.\n"
                                   "To use it offline, put cifar-10-python.tar.gz into data/.")

    monkeypatch.setattr(data, "load_cache", lambda path: None)
    monkeypatch.setattr(data, "from_torchvision", offline)
    code, _, err = run_cli(capsys, "train", "--model", "resnet20", "--dataset", "cifar10",
                           "--profile", "smoke")
    assert code == 2
    assert err.strip() == ("attnlab: error: cifar10 (train) is not cached and could not be downloaded. "
                           "To use it offline, put cifar-10-python.tar.gz into data/.")
    assert not runs.exists() or not any(runs.iterdir())


def test_unknown_command_and_reproduce_profile(capsys):
    assert main(["nope"]) == 2
    assert main(["reproduce", "--profile", "huge", "--dataset", "shapes"]) == 2
    assert main(["--version"]) == 0
    capsys.readouterr()


# -- the benchmark's pieces, tiny ---------------------------------------------------------

def test_explicit_attention_matches_fused():
    from attnlab.layers import create_attn, selfatt

    fused = selfatt._fused
    torch.manual_seed(0)
    x = torch.randn(2, 16, 8, 8)
    for name in ("selfatt", "mha"):
        block = create_attn(name, 16, merge="residual").eval()
        with torch.no_grad():
            ref = block(x)
            with bench.explicit_attention():
                assert selfatt._fused is not fused
                out = block(x)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert selfatt._fused is fused


def test_loader_and_fit_pieces():
    from attnlab.data import load_data

    cpu = torch.device("cpu")
    train = load_data("shapes", train_subset=200).train
    res = bench.bench_loader(train, cpu, step_s=0.05, s=TINY)
    assert [r["loader"] for r in res["rows"]] == [
        "attnlab DeviceLoader", "torchvision DataLoader, 0 workers", "torchvision DataLoader, 2 workers"]
    assert all(r["ms_per_batch"] > 0 and 0 < r["share_of_step"] < 1 for r in res["rows"])
    fit = bench.bench_fit("shapes", cpu, "fp32", TINY)
    assert fit["fit_images_per_s"] > 0 and fit["bare_images_per_s"] > 0 and fit["ratio"] > 0


def test_torchvision_loader_batches():
    from attnlab.data import load_data

    train = load_data("shapes", train_subset=64).train
    x, y = next(iter(bench.torchvision_loader(train, [0.5] * 3, [0.25] * 3, workers=0, batch_size=16)))
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and y.shape == (16,)


def test_bench_command_tiny(capsys, runs, monkeypatch, tmp_path):
    """The whole ``bench --json --cifar-quick`` path at tiny sizes, CIFAR replaced by shapes."""
    original = bench.bench_cifar
    monkeypatch.setattr(bench.Settings, "for_mode", classmethod(lambda cls, quick: TINY))
    monkeypatch.setattr(bench, "bench_cifar", lambda: original("shapes", "smoke", progress=False))
    out_file = tmp_path / "bench.json"
    code, out, err = run_cli(capsys, "bench", "--quick", "--cifar-quick", "--json", "--out", str(out_file))
    assert code == 0
    res = last_json(out)
    assert res == json.loads(out_file.read_text())
    assert {"environment", "loader", "fit", "precision", "attention", "cifar", "targets"} <= set(res)
    models = [r["model"] for r in res["attention"]["rows"]]
    assert models[:4] == ["resnet20", "selfatt", "mha", "cbam"] and "explicit" in models[4]
    names = [t["name"] for t in res["targets"]]
    assert any("loader" in n for n in names) and any("fit" in n for n in names)
    assert sum("step time" in n for n in names) == 3 and sum("extra peak memory" in n for n in names) == 3
    assert sum("evaluation, process peak memory" in n for n in names) == 3
    assert [r["model"] for r in res["eval_memory"]["rows"]] == ["resnet20", "selfatt", "mha", "cbam"]
    assert all(0 < r["peak_rss_GiB"] < 64 for r in res["eval_memory"]["rows"])
    assert sum("CIFAR-10 quick test accuracy" in n for n in names) == 2  # single view, flip TTA
    assert all(isinstance(t["passed"], bool) for t in res["targets"])
    assert res["cifar"]["dataset"] == "shapes" and 0 <= res["cifar"]["test_acc"] <= 1
    assert 0 <= res["cifar"]["test_acc_flip"] <= 1
    assert "Targets:" in out and ("PASS" in out or "FAIL" in out)


def test_bench_cifar_not_imported(monkeypatch):
    monkeypatch.setattr(bench, "cached_datasets", lambda: {})
    res = bench.bench_cifar()
    assert "skipped" in res and "data import cifar10" in res["skipped"]
    report = bench.format_report({
        "environment": {"device_name": "cpu", "device": "cpu", "precision": "fp32", "torch": "x"},
        "mode": "quick", "data": "shapes",
        "attention": {"batch_size": 8, "rows": []},
        "precision": {"fp32_step_ms": 2.0, "bf16_step_ms": 1.0, "speedup": 2.0, "native_bf16": True},
        "loader": {"batch_size": 8, "step_ms": 1.0, "rows": []},
        "fit": {"steps": 1, "precision": "fp32", "fit_images_per_s": 1.0, "bare_images_per_s": 1.0, "ratio": 1.0},
        "cifar": res, "targets": []})
    assert "not imported" in report


def test_reproduce_notebook_glob(tmp_path, monkeypatch):
    from argparse import Namespace

    from attnlab.cli import _notebooks_dir

    monkeypatch.chdir(tmp_path)
    assert _notebooks_dir(Namespace(notebooks="nb/01*.ipynb", notebooks_dir=None)) == (Path("nb"), "01*.ipynb")
    assert _notebooks_dir(Namespace(notebooks="02*.ipynb", notebooks_dir="/x/nb")) == (Path("/x/nb"), "02*.ipynb")
    folder, pattern = _notebooks_dir(Namespace(notebooks="[0-9][0-9]*.ipynb", notebooks_dir=None))
    assert folder.name == "notebooks" and pattern == "[0-9][0-9]*.ipynb"


def test_ablate_command(capsys, runs):
    code, out, _ = run_cli(capsys, "ablate", "--model", "resnet20_cbam", "--profile", "smoke",
                           "--grid", "reduction=8,16", "--seeds", "0", "--json")
    assert code == 0
    rows = last_json(out)
    assert [r["reduction"] for r in rows] == [8, 16] and all(r["seeds"] == 1 for r in rows)
    code, _, err = run_cli(capsys, "ablate", "--model", "resnet20_cbam", "--grid", "ratio=8")
    assert code == 2 and "ratio" in err and "allowed" in err
    code, _, err = run_cli(capsys, "ablate", "--model", "resnet20", "--grid", "merge")
    assert code == 2 and "KEY=V1,V2" in err
