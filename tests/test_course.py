"""The course-lab workflow: solution cells, ``student-copy`` and the install cell.

Every numbered notebook carries worked solutions (cells tagged ``solution``) and starts
with the install cell (:data:`attnlab.course.INSTALL_CELL`); ``python -m attnlab
student-copy DIR`` writes them without solutions and outputs; that the copies still run at
the smoke profile is tested in ``tests/test_notebooks_student.py``. The install cell is run for real in subprocesses: once where
attnlab is importable, once where it is not (``python -I -S``: no site-packages, so the
editable install is invisible), with and without a source to install from.
"""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from attnlab.cli import main
from attnlab.course import (INSTALL_CELL, INSTALL_TAG, README, SOLUTION_TAG, install_cell, student_copy,
                            write_install_cell)
from attnlab.reproduce import NOTEBOOK_PATTERN

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob(NOTEBOOK_PATTERN))
IDS = [nb.stem for nb in NOTEBOOKS]
EXERCISE = re.compile(r"^\*\*Exercise (\d+)\.\*\*")


def read(path: Path):
    return nbformat.read(str(path), as_version=4)


def tags(cell) -> list:
    return cell.get("metadata", {}).get("tags", [])


def code_names(source: str, assigned_only: bool) -> set[str]:
    """Names a cell binds (assignments, loop and comprehension targets, imports) or, with
    ``assigned_only=False``, every name it mentions."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Name) and (not assigned_only or isinstance(node.ctx, (ast.Store, ast.Del))):
            names.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


# -- the notebooks as committed ----------------------------------------------------------

@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_first_code_cell_is_the_install_cell(path):
    nb = read(path)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code[0].source == INSTALL_CELL, (
        f"{path.name}: the first code cell is not attnlab.course.INSTALL_CELL; run "
        f"attnlab.course.write_install_cell('{path}')")
    assert tags(code[0]) == [INSTALL_TAG], f"{path.name}: the install cell must be tagged only {INSTALL_TAG!r}"
    assert sum(INSTALL_TAG in tags(c) for c in nb.cells) == 1, f"{path.name}: more than one install cell"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_every_exercise_has_a_solution_right_after_it(path):
    nb = read(path)
    solutions = [i for i, c in enumerate(nb.cells) if SOLUTION_TAG in tags(c)]
    assert solutions, f"{path.name}: no cell tagged {SOLUTION_TAG!r}; give the exercises worked solutions"
    exercises = [i for i, c in enumerate(nb.cells) if c.cell_type == "markdown" and EXERCISE.match(c.source)]
    assert exercises, f"{path.name}: no exercise cells ('**Exercise N.** ...', one per exercise)"
    numbers = [int(EXERCISE.match(nb.cells[i].source).group(1)) for i in exercises]
    assert numbers == list(range(1, len(numbers) + 1)), f"{path.name}: exercises numbered {numbers}"
    unanswered = [n for n, i in zip(numbers, exercises)
                  if not (nb.cells[i + 1].cell_type == "markdown" and SOLUTION_TAG in tags(nb.cells[i + 1]))]
    assert not unanswered, f"{path.name}: exercises {unanswered} have no solution (markdown) cell right after them"
    stray = [i for i in solutions if i < exercises[0]]
    assert not stray, f"{path.name}: solution cells {stray} come before the first exercise"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_solution_names_stay_in_solution_cells(path):
    # The student copy runs without the solution cells, and the instructor's run must
    # reach the same results: other cells never read, and solutions never rebind, a name
    # the other.
    nb = read(path)
    code = [c for c in nb.cells if c.cell_type == "code"]
    bound = set().union(*(code_names(c.source, True) for c in code if SOLUTION_TAG in tags(c)))
    used = set().union(*(code_names(c.source, False) for c in code if SOLUTION_TAG not in tags(c)))
    shared = sorted(bound & used)
    assert not shared, f"{path.name}: solution cells bind names other cells also use: {shared}; rename them"


# -- the install cell --------------------------------------------------------------------

def run_cell(source: str, tmp_path: Path, *flags: str, source_env=None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("ATTNLAB_SOURCE", "PYTHONPATH")}
    if source_env is not None:
        env["ATTNLAB_SOURCE"] = source_env
    return subprocess.run([sys.executable, *flags, "-c", source], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)


def test_install_cell_does_nothing_where_attnlab_is_installed(tmp_path):
    # a source pip could not install: any attempt to use it would fail the cell
    done = run_cell(INSTALL_CELL, tmp_path, source_env=str(tmp_path / "missing.whl"))
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and done.stderr == ""


def test_hidden_attnlab_is_really_missing(tmp_path):
    # the premise of the next tests: under -I -S this interpreter cannot import attnlab
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('attnlab') is not None)"
    assert run_cell(probe, tmp_path, "-I", "-S").returncode == 0


def test_install_cell_says_what_to_set_when_attnlab_is_missing(tmp_path):
    done = run_cell(INSTALL_CELL, tmp_path, "-I", "-S")
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ModuleNotFoundError: attnlab is not installed"), done.stderr
    assert "Set ATTNLAB_SOURCE" in last and "git+https://..." in last and "wheel" in last
    assert "installing" not in done.stdout, "it must not try to install without a source"


@pytest.mark.parametrize("where", ["environment", "handout default"])
def test_install_cell_installs_from_the_source_and_reports_failure(tmp_path, where):
    wheel = tmp_path / "no-such-dir" / "attnlab-0.1.0-py3-none-any.whl"
    cell = install_cell(str(wheel)) if where == "handout default" else INSTALL_CELL
    done = run_cell(cell, tmp_path, "-I", "-S", source_env=str(wheel) if where == "environment" else None)
    assert f"installing attnlab from {wheel}" in done.stdout, done.stdout + done.stderr
    assert done.returncode != 0
    assert "pip could not install attnlab from ATTNLAB_SOURCE" in done.stderr and str(wheel) in done.stderr


def test_install_cell_text():
    assert install_cell() == INSTALL_CELL
    assert "def " not in INSTALL_CELL and "%pip" not in INSTALL_CELL and "!pip" not in INSTALL_CELL
    ast.parse(INSTALL_CELL)
    baked = install_cell("git+https://example.invalid/attnlab.git")
    differing = [(a, b) for a, b in zip(INSTALL_CELL.splitlines(), baked.splitlines()) if a != b]
    assert len(differing) == 1 and differing[0][1].endswith("or 'git+https://example.invalid/attnlab.git'")
    with pytest.raises(ValueError, match="source is empty"):
        install_cell("  ")


def make_notebook(path: Path, extra_code: str = "") -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# 99 · A new notebook"),
                nbformat.v4.new_code_cell("import attnlab" + extra_code),
                nbformat.v4.new_code_cell("PROFILE = 'quick'", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_markdown_cell("**Exercise 1.** Do something."),
                nbformat.v4.new_markdown_cell("**Solution.** The answer is 42.", metadata={"tags": [SOLUTION_TAG]}),
                nbformat.v4.new_code_cell("answer = 6 * 7", metadata={"tags": [SOLUTION_TAG]}),
                nbformat.v4.new_code_cell("print('done')")]
    nbformat.write(nb, str(path))
    return path


def test_write_install_cell_adds_or_replaces_it_once(tmp_path):
    path = make_notebook(tmp_path / "99_new.ipynb")
    write_install_cell(path)
    nb = read(path)
    old = nbformat.v4.new_code_cell("print('an older install cell')", metadata={"tags": [INSTALL_TAG]})
    nb.cells.insert(3, old)
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", text="hi")]
    nbformat.write(nb, str(path))
    write_install_cell(path)
    write_install_cell(path)
    nb = read(path)
    assert [c.source for c in nb.cells if INSTALL_TAG in tags(c)] == [INSTALL_CELL]
    assert nb.cells[0].cell_type == "markdown" and nb.cells[1].source == INSTALL_CELL
    assert nb.cells[2].source == "import attnlab", "the install cell goes before the setup cell"
    assert [tags(c) for c in nb.cells].count(["parameters"]) == 1
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")


# -- student-copy ------------------------------------------------------------------------

def dirty_copy_of_notebooks(tmp_path: Path) -> Path:
    """The committed notebooks with outputs and execution counts added, as after a run."""
    folder = tmp_path / "notebooks"
    folder.mkdir()
    for path in NOTEBOOKS:
        nb = read(path)
        for i, c in enumerate(nb.cells):
            if c.cell_type == "code":
                c.execution_count = i + 1
                c.outputs = [nbformat.v4.new_output("stream", text=f"output of cell {i}\n")]
        nbformat.write(nb, str(folder / path.name))
    return folder


def test_student_copy_removes_every_solution_and_output(tmp_path):
    source = dirty_copy_of_notebooks(tmp_path)
    out = tmp_path / "handout"
    removed = student_copy(out, source)
    assert sorted(removed) == [p.name for p in NOTEBOOKS]
    readme = (out / README).read_text()
    for path in NOTEBOOKS:
        original, copy = read(path), read(out / path.name)
        solutions = [c for c in original.cells if SOLUTION_TAG in tags(c)]
        kept = [c for c in original.cells if SOLUTION_TAG not in tags(c)]
        assert removed[path.name] == len(solutions) > 0
        assert f"| {path.name} | {len(kept)} | {len(solutions)} |" in readme
        assert not [c for c in copy.cells if SOLUTION_TAG in tags(c)]
        assert [(c.cell_type, c.source, tags(c)) for c in copy.cells] == \
               [(c.cell_type, c.source, tags(c)) for c in kept], f"{path.name}: other cells changed or reordered"
        text = "\n".join(c.source for c in copy.cells)
        leaked = [c.source[:60] for c in solutions if c.source.strip() in text]
        assert not leaked, f"{path.name}: solution text survived: {leaked}"
        dirty = [i for i, c in enumerate(copy.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
        assert not dirty, f"{path.name}: cells {dirty} kept outputs or execution counts"
        assert copy.cells[[c.cell_type for c in copy.cells].index("code")].source == INSTALL_CELL
    total = sum(removed.values())
    assert f"{total} solution cell(s) removed from {len(NOTEBOOKS)} notebook(s)." in readme


def test_student_copy_cli(tmp_path, capsys):
    notebooks = tmp_path / "nbs"
    notebooks.mkdir()
    make_notebook(notebooks / "99_new.ipynb")
    out = tmp_path / "handout"
    assert main(["student-copy", str(out), "--notebooks", str(notebooks)]) == 0
    assert "99_new.ipynb: 2 solution cell(s) removed" in capsys.readouterr().out
    assert [c.source for c in read(out / "99_new.ipynb").cells][-1] == "print('done')"

    assert main(["student-copy", str(out), "--notebooks", str(notebooks)]) == 2
    err = capsys.readouterr().err
    assert "is not empty" in err and "--force" in err

    write_install_cell(notebooks / "99_new.ipynb")
    src = "git+https://example.invalid/attnlab.git@v1"
    assert main(["student-copy", str(out), "--notebooks", str(notebooks), "--force", "--source", src]) == 0
    copy = read(out / "99_new.ipynb")
    assert copy.cells[1].source == install_cell(src) and tags(copy.cells[1]) == [INSTALL_TAG]
    assert src in (out / README).read_text()

    assert main(["student-copy", str(tmp_path / "other"), "--notebooks", str(tmp_path / "empty")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["student-copy", str(tmp_path / "other"), "--notebooks", str(tmp_path / "empty")]) == 2
    assert "no notebooks matching" in capsys.readouterr().err
    assert not (tmp_path / "other").exists(), "nothing is written when there is nothing to copy"
