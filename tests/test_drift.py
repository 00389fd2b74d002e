"""The reproducibility check: drift rules, reference folders and ``reproduce --check``.

Nothing here executes a notebook: reports are folders of ``results.json`` files built in
the test (copies of the committed references where the real shape matters).
``test_notebooks.py`` runs every notebook at smoke and checks it against the references.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from attnlab.cli import main
from attnlab.drift import (EXACT_REL, FINGERPRINT, check_notebook, compare, drift_table, fingerprint,
                           fingerprint_differences, flatten, read_fingerprints, write_reference)
from attnlab.reproduce import NOTEBOOK_PATTERN, check_report, summarize, update_reference

ROOT = Path(__file__).resolve().parent.parent
REFERENCES = ROOT / "references" / "smoke-shapes"
NOTEBOOK_STEMS = [p.stem for p in sorted((ROOT / "notebooks").glob(NOTEBOOK_PATTERN))]
ENV = {"device": "cpu", "device_name": "Some CPU (2 threads)", "precision": "fp32", "torch": "2.9.0",
       "threads": 2, "platform": "Linux"}
ISA = ["avx2", "fma"]


def results(**changes) -> dict:
    base = {"profile": "smoke", "dataset": "shapes", "test_acc": 0.5, "test_loss": 2.0, "params": 269722,
            "model": "resnet20", "wall_s": 12.0, "written": "2026-01-01 10:00:00", "env": dict(ENV),
            "runs": [{"model": "resnet20", "test_acc": 0.5, "train img/s": 300.0, "peak MiB (train)": 60.0,
                      "status": "trained", "ours": 50.0}],
            "published": [{"value": 8.75, "ours": 50.0}], "gate": 0.01, "per_class_acc": {"ring": 0.5}}
    return {**base, **changes}


def drifted_paths(reference: dict, now: dict, exact: bool) -> dict[str, tuple]:
    return {d.path: (d.tolerance, d.rule) for d in compare("nb", reference, now, exact)}


# -- the rules ---------------------------------------------------------------------------

def test_flatten_paths_and_leaves():
    flat = flatten({"a": {"b": [1, {"c": 2}]}, "e": [], "f": {}})
    assert flat == {("a", "b", 0): 1, ("a", "b", 1, "c"): 2, ("e",): [], ("f",): {}}
    rows = compare("nb", {"runs": [{"x": 1}]}, {"runs": [{"x": 2}]}, exact=True)
    assert [r.path for r in rows] == ["runs[0].x"]


def test_volatile_values_are_not_compared():
    now = results(wall_s=99.0, written="2030-01-01", env={**ENV, "device_name": "Other CPU", "python": "3.13"},
                  runs=[{"model": "resnet20", "test_acc": 0.5, "train img/s": 1.0, "peak MiB (train)": 1.0,
                         "status": "loaded", "ours": 50.0}], run_dir="resnet20-other-hash",
                  cache_first_call_s=3.0)
    assert compare("nb", results(), now, exact=True) == []


def test_exact_on_the_same_fingerprint():
    ref = results()
    tiny = 0.5 * EXACT_REL / 10
    assert drifted_paths(ref, results(test_acc=0.5 + tiny), exact=True) == {}
    found = drifted_paths(ref, results(test_acc=0.5 + 1e-6, test_loss=2.0 * (1 + 1e-7), gate=0.0100001), exact=True)
    assert set(found) == {"test_acc", "test_loss", "gate"}
    assert all(tol == "exact" for tol, _ in found.values())


def test_tolerance_per_metric_on_another_fingerprint():
    ref = results()
    within = results(test_acc=0.59, test_loss=2.09, gate=0.0109, per_class_acc={"ring": 0.41},
                     runs=[{**ref["runs"][0], "test_acc": 0.42, "ours": 59.0}],
                     published=[{"value": 8.75, "ours": 41.0}])
    assert drifted_paths(ref, within, exact=False) == {}
    beyond = results(test_acc=0.61, test_loss=2.2, gate=0.0115, params=269723, model="resnet32",
                     published=[{"value": 8.7500001, "ours": 50.0}], runs=[{**ref["runs"][0], "ours": 61.0}],
                     per_class_acc={"ring": 0.39})
    found = drifted_paths(ref, beyond, exact=False)
    assert found == {
        "test_acc": ("abs 0.1", "accuracy-like (fraction)"),
        "test_loss": ("rel 0.05", "loss-like"),
        "gate": ("rel 0.1", "other float"),
        "params": ("exact", "integer"),
        "model": ("exact", "string"),
        "published[0].value": ("exact", "published number (quoted, not computed)"),
        "runs[0].ours": ("abs 10", "error in percent"),
        "per_class_acc.ring": ("abs 0.1", "accuracy-like (fraction)"),  # named by its parent
    }


def test_missing_extra_and_changed_types_are_drift():
    ref = results()
    now = results(extra_metric=0.1, test_loss=None)
    del now["params"]
    now["runs"] = ref["runs"] + [{"model": "resnet32", "test_acc": 0.4}]
    rows = {d.path: d for d in compare("nb", ref, now, exact=False)}
    assert rows["params"].now == "<absent>" and rows["params"].rule == "missing now"
    assert rows["extra_metric"].reference == "<absent>" and rows["extra_metric"].rule == "not in the reference"
    assert rows["test_loss"].rule == "type changed (float -> NoneType)"
    assert {"runs[1].model", "runs[1].test_acc"} <= set(rows)
    assert "extra_metric" in drift_table(list(rows.values()))


def test_fingerprint_parts():
    fp = fingerprint(ENV, ["avx2", "fma", "sse4_2", "avx512_bf16"])
    assert fp == {"device": "cpu", "precision": "fp32", "torch": "2.9.0", "threads": 2,
                  "cpu_isa": ["avx2", "avx512_bf16", "fma"]}  # flags that pick other kernels only
    assert fingerprint(ENV, None)["cpu_isa"] is None  # unknown: never equal to a known machine
    gpu = fingerprint({**ENV, "device": "cuda:0", "device_name": "NVIDIA H200", "precision": "bf16"}, ISA)
    assert gpu["device"] == "cuda" and gpu["device_name"] == "NVIDIA H200" and "cpu_isa" not in gpu
    assert fingerprint_differences(fp, {**fp, "threads": 1}) == ["threads 2 -> 1"]


def test_fingerprint_mismatch_switches_to_tolerances(tmp_path):
    write_reference(tmp_path, {"00_nb": results()}, "smoke", "shapes", cpu_isa=ISA)
    slightly = results(test_acc=0.51)  # within every tolerance, not exact
    same = check_notebook("00_nb", slightly, tmp_path, cpu_isa=ISA)
    assert same.exact and [d.path for d in same.drift] == ["test_acc"]
    other_threads = check_notebook("00_nb", results(test_acc=0.51, env={**ENV, "threads": 1}), tmp_path, ISA)
    assert not other_threads.exact and other_threads.drift == [] and "threads 2 -> 1" in other_threads.mode
    other_cpu = check_notebook("00_nb", slightly, tmp_path, cpu_isa=ISA + ["avx512_bf16"])
    assert not other_cpu.exact and other_cpu.drift == [] and "cpu_isa" in other_cpu.mode


# -- reference folders and the command ----------------------------------------------------

def make_report(folder: Path, stems: list[str], reference_dir: Path, status: str = "ok") -> Path:
    """A report as ``reproduce`` leaves it, holding copies of the committed references'
    results, recorded on the references' CPU flags (so the comparison is exact anywhere)."""
    meta = read_fingerprints(reference_dir)
    runs = []
    for stem in stems:
        (folder / stem).mkdir(parents=True)
        shutil.copy(reference_dir / stem / "results.json", folder / stem / "results.json")
        runs.append({"notebook": f"{stem}.ipynb", "status": status, "wall_s": 1.0, "error": None,
                     "output": None, "results": f"{stem}/results.json"})
    isa = meta["notebooks"][stems[0]].get("cpu_isa")
    record = {"profile": "smoke", "dataset": "shapes", "environment": {"cpu_isa": isa}, "notebooks": runs}
    (folder / "reproduce.json").write_text(json.dumps(record))
    return folder


def test_every_notebook_has_a_committed_reference():
    meta = read_fingerprints(REFERENCES)
    assert (meta["profile"], meta["dataset"]) == ("smoke", "shapes")
    missing = [s for s in NOTEBOOK_STEMS if not (REFERENCES / s / "results.json").exists() or s not in meta["notebooks"]]
    assert not missing, (f"no committed smoke reference for {missing}: python -m attnlab reproduce --profile smoke "
                         f"--dataset shapes --threads 2 --update-reference references/smoke-shapes")


def test_edited_reference_is_drift_and_the_check_exits_non_zero(tmp_path, capsys):
    refs = tmp_path / "references"
    shutil.copytree(REFERENCES, refs)
    stems = sorted(p.parent.name for p in refs.glob("*/results.json"))
    report = make_report(tmp_path / "report", stems, refs)

    assert main(["reproduce", "--check", str(refs), "--no-execute", "--out", str(report)]) == 0
    assert "no drift" in capsys.readouterr().out
    assert all(c.exact and not c.drift for c in check_report(report, refs))

    path = refs / "00_getting_started" / "results.json"
    edited = json.loads(path.read_text())
    before = edited["test_acc"]
    edited["test_acc"] = before + 1 / 256  # one test image more classified right
    path.write_text(json.dumps(edited))
    checks = check_report(report, refs)
    rows = [d for c in checks for d in c.drift]
    assert [(d.notebook, d.path, d.reference, d.now, d.tolerance) for d in rows] == \
        [("00_getting_started", "test_acc", before + 1 / 256, before, "exact")]

    assert main(["reproduce", "--check", str(refs), "--no-execute", "--out", str(report)]) == 1
    out, err = capsys.readouterr()
    assert "test_acc" in out and "00_getting_started: 1 drifted (exact" in out and "1 value(s) drifted" in err
    md = summarize(report)
    assert "| 00_getting_started.ipynb | ok | 1.0 s | 1 value(s) (exact) |" in md
    assert f"| test_acc | {before + 1 / 256!r} | {before!r} | exact | exact (same fingerprint) |" in md
    assert "### Drift" in md and "No value drifted." in md  # the other notebooks
    assert "<h3>Drift</h3>" in (report / "summary.html").read_text()


def test_missing_references_are_clear_errors(tmp_path, capsys):
    refs = tmp_path / "references"
    shutil.copytree(REFERENCES, refs)
    report = make_report(tmp_path / "report", ["00_getting_started", "01_resnet_baseline"], refs)
    assert main(["reproduce", "--check", str(tmp_path / "nowhere"), "--no-execute", "--out", str(report)]) == 2
    assert "reference folder" in capsys.readouterr().err
    shutil.rmtree(refs / "01_resnet_baseline")
    with pytest.raises(FileNotFoundError, match="no reference for 01_resnet_baseline .*--update-reference"):
        check_report(report, refs)
    with pytest.raises(FileNotFoundError, match="no reference for notebook 01_resnet_baseline"):
        check_notebook("01_resnet_baseline", {}, refs)
    assert main(["reproduce", "--check", str(refs), "--update-reference", str(refs)]) == 2
    assert main(["reproduce", "--dataset", "shapes"]) == 2
    assert "needs --profile" in capsys.readouterr().err


def test_update_reference_from_a_report(tmp_path):
    report = tmp_path / "report"
    make_report(report, ["00_getting_started"], REFERENCES)
    refs = tmp_path / "refs"
    assert update_reference(report, refs, command="cmd") == ["00_getting_started"]
    meta = json.loads((refs / FINGERPRINT).read_text())
    assert meta["command"] == "cmd" and meta["notebooks"]["00_getting_started"]["device"] == "cpu"
    assert json.loads((refs / "00_getting_started" / "results.json").read_text()) == \
        json.loads((REFERENCES / "00_getting_started" / "results.json").read_text())
    assert check_report(report, refs)[0].exact

    failed = make_report(tmp_path / "failed", ["00_getting_started"], REFERENCES, status="failed")
    with pytest.raises(ValueError, match="every notebook ran"):
        update_reference(failed, refs)
    (failed / "00_getting_started" / "results.json").unlink()
    (check,) = check_report(failed, REFERENCES)  # a failed notebook is drift as well
    assert [(d.path, d.now, d.rule) for d in check.drift] == [("results.json", "<absent>", "the notebook failed")]
    assert not check.exact and check.mode == "no results to compare"
    with pytest.raises(ValueError, match="profile smoke"):
        write_reference(refs, {"x": results()}, "quick", "shapes")
