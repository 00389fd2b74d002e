"""The command line, run in-process through ``main([...])``, and the benchmark's pieces
at tiny sizes (the real ``bench`` takes minutes and is not run here)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from attnlab import bench, get_paper, list_papers
from attnlab.cli import main
from attnlab.data import DataUnavailableError
from attnlab.papers import SpeedTarget

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
    ("--model-kw", '{"depthh": 3}', "unknown option(s) ['depthh']"),
    ("--model-kw", '{"depth": 3}', "depth must be 6n + 2"),
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
    from torch.profiler import ProfilerActivity, profile

    from attnlab.layers import create_attn
    from attnlab.layers.sdpa import explicit_attention

    def softmax_calls(fn) -> int:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        return sum(e.name in ("aten::softmax", "aten::_softmax") for e in prof.events())

    torch.manual_seed(0)
    x = torch.randn(2, 16, 8, 8)
    for name in ("selfatt", "mha"):
        block = create_attn(name, 16, merge="residual").eval()
        with torch.no_grad():
            ref = block(x)
            with explicit_attention():
                out = block(x)
                assert softmax_calls(lambda: block(x)) > 0  # the matrix is built
            assert softmax_calls(lambda: block(x)) == 0  # and no longer after the block
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_loader_and_fit_pieces():
    from attnlab.data import load_data

    cpu = torch.device("cpu")
    train = load_data("shapes", train_subset=200).train
    res = bench.bench_loader(train, cpu, step_s=0.05, s=TINY)
    assert [r["loader"] for r in res["rows"]] == [
        "attnlab DeviceLoader", "torchvision DataLoader, 0 workers", "torchvision DataLoader, 2 workers"]
    assert res["step_ms"] == pytest.approx(50.0)
    for r in res["rows"]:  # share = data time / (data time + the 50 ms step)
        t = r["ms_per_batch"] / 1000
        assert r["share_of_step"] == pytest.approx(t / (t + 0.05))
    fit = bench.bench_fit("shapes", cpu, "fp32", TINY)
    assert fit["ratio"] == pytest.approx(fit["fit_images_per_s"] / fit["bare_images_per_s"])
    assert fit["steps"] == TINY.fit_steps and fit["precision"] == "fp32"


def test_torchvision_loader_batches():
    from attnlab.data import load_data

    train = load_data("shapes", train_subset=64).train
    x, y = next(iter(bench.torchvision_loader(train, [0.5] * 3, [0.25] * 3, workers=0, batch_size=16)))
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and y.shape == (16,)


def test_speed_targets_are_every_papers():
    expected = [(pid, t) for pid in list_papers() for t in get_paper(pid).targets]
    assert bench.speed_targets() == expected
    assert any(pid == "cnntention" for pid, _ in expected)


def test_speed_targets_measured_side_by_side():
    targets = [("p", SpeedTarget("CBAM r=8 step time", "resnet20_cbam", "resnet20", "step_time", "<=", 100.0,
                                 {"reduction": 8}, batch_size=2)),
               ("q", SpeedTarget("SE memory", "resnet20", "resnet20", "extra_memory_gib", model_kw={"attn": "se"},
                                 batch_size=2))]
    s = bench.Settings(rounds=1, steps=1, loader_batches=1, fit_steps=1, explicit=True, batch_size=8)
    res = bench.bench_attention(torch.device("cpu"), "fp32", s, targets)
    (group,) = res["groups"]  # one reference at one batch size: one side-by-side comparison
    assert group["reference"] == "resnet20" and group["batch_size"] == 2
    rows = {r["model"]: r for r in group["rows"]}
    assert list(rows) == ["resnet20", "resnet20_cbam (reduction=8)", "resnet20 (attn=se)"]  # no attention matrices
    assert rows["resnet20"]["x_reference"] == 1.0
    cbam, se = res["comparisons"]
    assert cbam["value"] == rows["resnet20_cbam (reduction=8)"]["x_reference"] and cbam["paper"] == "p"
    assert se["value"] == rows["resnet20 (attn=se)"]["extra_GiB"] and se["limit"] is None
    checked = bench._targets({"loader": {"rows": [{"loader": "attnlab", "share_of_step": 0.01}]},
                              "fit": {"ratio": 1.0}, "attention": res})
    assert [t["name"] for t in checked if t.get("paper")] == ["CBAM r=8 step time"]  # SE: measured only
    with pytest.raises(ValueError, match="unknown measure 'flops'.*step_time"):
        bench.bench_attention(torch.device("cpu"), "fp32", s, [("p", SpeedTarget("x", "resnet20", "resnet20", "flops"))])


def _recheck(target: dict) -> bool:
    """A target's verdict recomputed from its value and its stated limit ("<= 2.5x")."""
    op, limit = target["target"].split()
    limit = float(limit.rstrip("x"))
    return {"<=": target["value"] <= limit, "<": target["value"] < limit, ">=": target["value"] >= limit}[op]


def test_bench_command_tiny(capsys, runs, monkeypatch, tmp_path):
    """The whole ``bench --json --cifar-quick`` path at tiny sizes, CIFAR replaced by shapes,
    CNNtention's speed targets only (each paper's own are measured the same way)."""
    original = bench.bench_cifar
    monkeypatch.setattr(bench.Settings, "for_mode", classmethod(lambda cls, quick: TINY))
    monkeypatch.setattr(bench, "bench_cifar", lambda: original("shapes", "smoke", progress=False))
    monkeypatch.setattr(bench, "speed_targets", lambda: [("cnntention", t) for t in get_paper("cnntention").targets])
    monkeypatch.setattr(bench, "EXPLICIT_BUDGET", 0.1 * 2**30)  # SelfAtt's matrices fit at batch 8, MHA's not
    out_file = tmp_path / "bench.json"
    code, out, err = run_cli(capsys, "bench", "--quick", "--cifar-quick", "--json", "--out", str(out_file))
    assert code == 0
    res = last_json(out)
    assert res == json.loads(out_file.read_text())
    assert {"environment", "loader", "fit", "precision", "attention", "cifar", "targets"} <= set(res)
    (group,) = res["attention"]["groups"]
    assert group["reference"] == "resnet20" and group["batch_size"] == TINY.batch_size
    assert [r["model"] for r in group["rows"]] == [
        "resnet20", "resnet20_selfatt", "resnet20_mha", "resnet20_cbam",
        "resnet20_selfatt, explicit N x N", "resnet20_mha, explicit N x N"]
    explicit_sa, explicit_mha = group["rows"][4:]
    assert explicit_sa["step_ms"] > 0 and explicit_mha["step_ms"] is None and "skipped" in explicit_mha["note"]
    # the loader's share is of the ResNet-20 step measured beside the attention models
    assert res["loader"]["step_ms"] == pytest.approx(group["step_ms"])
    names = [t["name"] for t in res["targets"]]
    assert any("loader" in n for n in names) and any("fit" in n for n in names)
    assert [n for n in names if "vs ResNet-20" in n] == [
        "SelfAtt step time vs ResNet-20", "MHA step time vs ResNet-20", "CBAM step time vs ResNet-20"]
    assert sum("extra peak memory" in n for n in names) == 3
    assert [r["model"] for r in res["eval_memory"]["rows"]] == [
        "resnet20", "resnet20_selfatt", "resnet20_mha", "resnet20_cbam"]
    assert [r["reference"] for r in res["eval_memory"]["rows"]] == [True, False, False, False]
    assert sum("evaluation, process peak memory" in n for n in names) == 3  # not for the reference
    assert all(0 < r["peak_rss_GiB"] < 64 for r in res["eval_memory"]["rows"])
    assert sum("CIFAR-10 quick test accuracy" in n for n in names) == 2  # single view, flip TTA
    for t in res["targets"]:
        assert t["passed"] == _recheck(t), t
    assert res["cifar"]["dataset"] == "shapes" and 0 <= res["cifar"]["test_acc"] <= 1
    assert 0 <= res["cifar"]["test_acc_flip"] <= 1
    assert "Targets:" in out
    report = out[out.index("Targets:"):].splitlines()[:-1]  # the JSON object is the last line
    for t in res["targets"]:  # each target printed once, with its verdict
        (line,) = [ln for ln in report if t["name"] in ln and t["target"] in ln]
        assert line.rstrip().endswith("PASS" if t["passed"] else "FAIL")


def test_bench_cifar_not_imported(monkeypatch):
    monkeypatch.setattr(bench, "cached_datasets", lambda: {})
    res = bench.bench_cifar()
    assert "skipped" in res and "data import cifar10" in res["skipped"]
    report = bench.format_report({
        "environment": {"device_name": "cpu", "device": "cpu", "precision": "fp32", "torch": "x"},
        "mode": "quick", "data": "shapes",
        "attention": {"precision": "fp32", "groups": [], "comparisons": []},
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


def test_papers_command(capsys):
    code, out, _ = run_cli(capsys, "papers")
    assert code == 0
    for pid in list_papers():
        p = get_paper(pid)
        (line,) = [ln for ln in out.splitlines() if ln.split()[:1] == [pid]]
        assert p.title in line and str(len(p.models)) in line.split()
    code, out, _ = run_cli(capsys, "papers", "--json")
    listed = last_json(out)["papers"]
    assert [p["id"] for p in listed] == list_papers()
    assert listed[0]["link"] == get_paper(listed[0]["id"]).link


def test_papers_command_one_paper(capsys):
    code, out, _ = run_cli(capsys, "papers", "cnntention")
    assert code == 0
    assert "CNNtention: Can CNNs do better with Attention?" in out and "arxiv.org/abs/2412.11657" in out
    cbam = next(ln for ln in out.splitlines() if ln.split()[:1] == ["resnet20_cbam"])
    assert "cbam(merge=residual)" in cbam and "cnntention_cbam" in cbam and cbam.count("270,691") == 2
    mha = next(ln for ln in out.splitlines() if ln.split()[:1] == ["resnet20_mha"])
    assert mha.rstrip().endswith("yes")  # slow on a CPU
    assert "Published numbers" in out and "8.68" in out and "Ablation axes" in out and "8, 16, 32" in out
    code, out, _ = run_cli(capsys, "papers", "cnntention", "--json")
    paper = last_json(out)
    assert [m["name"] for m in paper["models"]] == ["resnet20_selfatt", "resnet20_mha", "resnet20_cbam"]
    assert all(m["params"] == m["pinned"] for m in paper["models"])
    assert len(paper["claims"]) == len(get_paper("cnntention").claims)
    assert {a["parameter"] for a in paper["ablations"]} == {"merge", "reduction", "placement"}


def test_papers_command_unknown_id(capsys):
    code, out, err = run_cli(capsys, "papers", "nope")
    assert code == 2 and out == ""
    assert err.startswith("attnlab: error: unknown paper 'nope'") and "cnntention" in err
    assert len(err.strip().splitlines()) == 1


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
