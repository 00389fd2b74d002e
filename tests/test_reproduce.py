"""``reproduce`` runs notebooks through papermill and gathers their ``results.json``."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from attnlab.cli import main
from attnlab.reproduce import failed_notebooks, reproduce, split_results, summarize


def write_results(folder: Path, results: dict) -> None:
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(results))


def test_split_results_flattens_and_finds_tables():
    scalars, tables = split_results({"acc": 0.9, "env": {"device": "cpu"}, "curve": [1, 2],
                                     "table": [{"model": "a", "acc": 0.5}]})
    assert scalars == [("acc", 0.9), ("env.device", "cpu"), ("curve", [1, 2])]
    assert tables == {"table": [{"model": "a", "acc": 0.5}]}


def test_summarize_fake_report(tmp_path):
    write_results(tmp_path / "00_getting_started", {
        "profile": "smoke", "dataset": "shapes", "test_acc": 0.91234, "finished": True,
        "per_class": list(range(20)), "env": {"device": "cpu"}})
    write_results(tmp_path / "01_resnet_baseline", {
        "test_acc": 0.8, "table": [{"model": "resnet20", "acc": 0.8, "published": 0.9125},
                                   {"model": "resnet32", "acc": 0.81}]})
    md = summarize(tmp_path)
    assert "## 00_getting_started" in md and "## 01_resnet_baseline" in md
    assert "| test_acc | 0.9123 |" in md and "| env.device | cpu |" in md
    assert "| per_class | [20 values] |" in md
    assert "| model | acc | published |" in md and "| resnet32 | 0.81 | - |" in md
    html = summarize(tmp_path, fmt="html")
    assert html.startswith("<!DOCTYPE html>") and "<td>resnet20</td>" in html and "0.9125" in html
    with pytest.raises(ValueError, match="unknown format"):
        summarize(tmp_path, fmt="pdf")
    with pytest.raises(FileNotFoundError):
        summarize(tmp_path / "missing")


def make_notebook(path: Path, body: str) -> Path:
    """A notebook with the skeleton's ``parameters`` cell and one cell of ``body``."""
    import nbformat

    params = nbformat.v4.new_code_cell('PROFILE = "quick"\nDATASET = "shapes"\nOUT_DIR = "out"')
    params.metadata["tags"] = ["parameters"]
    nb = nbformat.v4.new_notebook(cells=[params, nbformat.v4.new_code_cell(body)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
    return path


WRITES_RESULTS = """\
import json, os, pathlib
out = pathlib.Path(OUT_DIR)
out.mkdir(parents=True, exist_ok=True)
(out / "results.json").write_text(json.dumps({
    "profile": PROFILE, "dataset": DATASET, "cwd": os.getcwd(), "out_dir": OUT_DIR,
    "test_acc": 0.5, "table": [{"model": "resnet20", "acc": 0.5}]}))
"""


@pytest.mark.notebook
def test_reproduce_runs_a_notebook(tmp_path):
    nb_dir = tmp_path / "notebooks"
    make_notebook(nb_dir / "00_tiny.ipynb", WRITES_RESULTS)
    make_notebook(nb_dir / "scratch.ipynb", "raise RuntimeError('unnumbered: must not run')")
    report = reproduce("smoke", "shapes", nb_dir, cell_timeout=120, progress=False)

    assert report == tmp_path / "reports" / "smoke-shapes"
    assert (report / "00_tiny.ipynb").exists() and not (report / "scratch.ipynb").exists()
    results = json.loads((report / "00_tiny" / "results.json").read_text())
    assert results["profile"] == "smoke" and results["dataset"] == "shapes"
    assert results["out_dir"] == str(report / "00_tiny") and Path(results["out_dir"]).is_absolute()
    assert results["cwd"] == str(nb_dir)
    assert failed_notebooks(report) == []
    md = (report / "summary.md").read_text()
    assert "profile smoke, dataset shapes" in md and "[00_tiny.ipynb](00_tiny.ipynb)" in md
    assert "| test_acc | 0.5 |" in md and "| resnet20 | 0.5 |" in md and "## Environment" in md
    assert "<table>" in (report / "summary.html").read_text()
    record = json.loads((report / "reproduce.json").read_text())
    assert record["notebooks"][0]["status"] == "ok" and record["notebooks"][0]["wall_s"] > 0


@pytest.mark.notebook
def test_failing_notebook_is_recorded_and_the_rest_still_run(tmp_path, capsys):
    nb_dir, out = tmp_path / "nb", tmp_path / "report"
    make_notebook(nb_dir / "00_fails.ipynb", "raise ValueError('boom at cell two')")
    make_notebook(nb_dir / "01_no_results.ipynb", "x = 1")
    make_notebook(nb_dir / "02_ok.ipynb", WRITES_RESULTS)
    # a results.json left by an earlier run must not count for this one
    write_results(out / "01_no_results", {"stale": True})

    code = main(["reproduce", "--profile", "smoke", "--dataset", "shapes", "--notebooks-dir", str(nb_dir),
                 "--out", str(out), "--cell-timeout", "120"])
    captured = capsys.readouterr()
    assert code == 1 and "00_fails.ipynb, 01_no_results.ipynb" in captured.err
    assert failed_notebooks(out) == ["00_fails.ipynb", "01_no_results.ipynb"]
    assert (out / "02_ok" / "results.json").exists()
    md = (out / "summary.md").read_text()
    assert "ValueError: boom at cell two" in md and "wrote no results.json" in md
    assert "stale" not in md


def test_reproduce_bad_input(tmp_path):
    with pytest.raises(ValueError, match="unknown profile"):
        reproduce("huge", "shapes", tmp_path)
    with pytest.raises(ValueError, match="unknown dataset"):
        reproduce("smoke", "imagenet", tmp_path)
    with pytest.raises(FileNotFoundError, match="no notebooks"):
        reproduce("smoke", "shapes", tmp_path)
