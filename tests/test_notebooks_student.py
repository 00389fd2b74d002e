"""The hand-out copies (``python -m attnlab student-copy``) still run at smoke.

This module runs after ``tests/test_notebooks.py`` (pytest takes files in name order)
and gives each copy the run store its original notebook filled (``notebook_store`` in
``conftest.py``), so a copy loads those runs, as a student re-running a notebook would,
and the suite does not train everything twice. Run alone, each copy trains its own runs.
That a copy contains no solution is checked in ``tests/test_course.py``.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from attnlab.course import student_copy
from attnlab.reproduce import NOTEBOOK_PATTERN, execute_notebook

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob(NOTEBOOK_PATTERN))
IDS = [nb.stem for nb in NOTEBOOKS]


@pytest.fixture(scope="module")
def student_copies(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("course") / "handout"
    student_copy(out, NOTEBOOKS_DIR)
    return out


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_student_copy_runs_at_smoke(path, student_copies, tmp_path, notebook_store, monkeypatch):
    monkeypatch.setenv("ATTNLAB_RUNS", notebook_store(path.stem))
    copy = student_copies / path.name
    run = execute_notebook(copy, tmp_path, "smoke", "shapes", kernel_name="python3", cell_timeout=120)
    print(f"{copy.name} (student copy): {run['status']} in {run['wall_s']:.1f} s")
    assert run["status"] == "ok", f"student copy of {path.name} failed: {run['error']}"
    results = json.loads((tmp_path / path.stem / "results.json").read_text())
    assert (results["profile"], results["dataset"]) == ("smoke", "shapes")
