"""The course-lab workflow: solutions in the notebooks, hand-out copies without them, and
the install cell that lets a hosted notebook (Colab and the like) fetch attnlab.

- Worked solutions sit right after the exercise they answer, in cells tagged
  ``solution`` (cell metadata ``tags``). :func:`student_copy` (``python -m attnlab
  student-copy DIR``) writes every numbered notebook without them and without outputs.
- Every notebook's first code cell is :data:`INSTALL_CELL`, tagged ``install``: where
  attnlab is importable it does nothing; where it is missing it runs
  ``python -m pip install $ATTNLAB_SOURCE`` (a git URL such as ``git+https://...``, or a
  wheel's path or URL, set once by the instructor), or stops with a message saying what
  to set. :func:`write_install_cell` puts it into a notebook: the one way to add it to a
  new notebook or to update it after this text changes (``tests/test_course.py`` checks
  every notebook against this constant).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import nbformat

from .reproduce import NOTEBOOK_PATTERN

SOLUTION_TAG = "solution"
INSTALL_TAG = "install"
SOURCE_VARIABLE = "ATTNLAB_SOURCE"
README = "README.md"

# The cell is plain Python (no %pip, no def), so it runs the same under Jupyter, Colab
# and papermill. A subprocess pip installs into the kernel's own interpreter (sys.executable).
_INSTALL_TEMPLATE = '''\
# Hosted notebooks (Colab and the like) start without attnlab: this cell installs it from
# ATTNLAB_SOURCE, the pip source your instructor gives you (a git URL such as git+https://...,
# or a wheel's path or URL). Where attnlab is already installed, it does nothing.
import importlib.util
import os
import subprocess
import sys

if importlib.util.find_spec("attnlab") is None:
    # the default after "or": set by `python -m attnlab student-copy DIR --source ...`
    ATTNLAB_SOURCE = os.environ.get("ATTNLAB_SOURCE", "").strip() or __DEFAULT__
    if not ATTNLAB_SOURCE:
        raise ModuleNotFoundError(
            "attnlab is not installed in this Python. Set ATTNLAB_SOURCE to the pip source your instructor "
            "gave you (a git URL such as git+https://..., or a wheel's path or URL), for example in a cell "
            "above this one: import os; os.environ['ATTNLAB_SOURCE'] = '<that source>'; then run this cell again.")
    print(f"installing attnlab from {ATTNLAB_SOURCE} (a minute or two) ...")
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", ATTNLAB_SOURCE],
                         capture_output=True, text=True)
    importlib.invalidate_caches()
    if pip.returncode != 0 or importlib.util.find_spec("attnlab") is None:
        raise ModuleNotFoundError(f"pip could not install attnlab from ATTNLAB_SOURCE = {ATTNLAB_SOURCE!r} "
                                  f"(exit status {pip.returncode}); check the source. pip said:\\n"
                                  + (pip.stderr or pip.stdout)[-3000:])
    print("attnlab installed")'''


def install_cell(source: Optional[str] = None) -> str:
    """The install cell's text; ``source`` (a pip source) becomes its default when
    ``ATTNLAB_SOURCE`` is unset, as in hand-out copies made with ``--source``."""
    if source is not None and not source.strip():
        raise ValueError("source is empty; give a pip source (a git URL such as git+https://..., "
                         "or a wheel's path or URL), or leave it out")
    return _INSTALL_TEMPLATE.replace("__DEFAULT__", repr(source.strip()) if source else '""')


#: The first code cell of every numbered notebook (the repository's copies: no default source).
INSTALL_CELL = install_cell()


def _tags(cell) -> list:
    return cell.get("metadata", {}).get("tags", [])


def is_solution(cell) -> bool:
    return SOLUTION_TAG in _tags(cell)


def first_code_cell(nb) -> Optional[int]:
    """Index of the notebook's first code cell (None when it has none)."""
    return next((i for i, c in enumerate(nb.cells) if c.cell_type == "code"), None)


def set_install_cell(nb, source: Optional[str] = None):
    """Make :func:`install_cell` the first code cell of ``nb`` (in place), replacing any
    earlier install cell; it goes before the first other code cell (the setup cell)."""
    nb.cells = [c for c in nb.cells if INSTALL_TAG not in _tags(c)]
    first = first_code_cell(nb)
    cell = nbformat.v4.new_code_cell(install_cell(source), metadata={"tags": [INSTALL_TAG]})
    nb.cells.insert(len(nb.cells) if first is None else first, cell)
    return nb


def clear_outputs(nb):
    """Drop outputs and execution counts (in place), as notebooks are committed and handed out."""
    for c in nb.cells:
        if c.cell_type == "code":
            c.outputs = []
            c.execution_count = None
    nb.metadata.pop("papermill", None)
    return nb


def write_install_cell(path: str | Path) -> Path:
    """Write the install cell into the notebook at ``path`` (idempotent), outputs cleared."""
    path = Path(path)
    nb = nbformat.read(str(path), as_version=4)
    clear_outputs(set_install_cell(nb))
    nbformat.validate(nb)
    nbformat.write(nb, str(path))
    return path


def strip_solutions(nb) -> int:
    """Remove the cells tagged ``solution`` from ``nb`` (in place); return how many."""
    before = len(nb.cells)
    nb.cells = [c for c in nb.cells if not is_solution(c)]
    return before - len(nb.cells)


def find_notebooks(notebooks_dir: str | Path, pattern: str = NOTEBOOK_PATTERN) -> list[Path]:
    folder = Path(notebooks_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"notebooks folder {folder} does not exist")
    found = sorted(folder.glob(pattern))
    if not found:
        raise FileNotFoundError(f"no notebooks matching {pattern!r} in {folder}")
    return found


def _prepare_out_dir(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"{out_dir} exists and is not a folder; choose a new folder for the copies")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise FileExistsError(f"{out_dir} exists and is not empty; choose a new folder, or pass --force to "
                              "overwrite the notebooks there (other files are left alone)")
    out_dir.mkdir(parents=True, exist_ok=True)


def _readme(removed: dict[str, tuple[int, int]], source: Optional[str]) -> str:
    total = sum(n for n, _ in removed.values())
    lines = ["# attnlab lab notebooks (hand-out copy)", "",
             "Written by `python -m attnlab student-copy`: the numbered notebooks without their worked "
             f"solutions (cells tagged `{SOLUTION_TAG}`) and without outputs. Exercises are at the end of "
             "each notebook.", "",
             "The first code cell of each notebook installs attnlab where it is missing (Colab and the like) "
             f"from the `{SOURCE_VARIABLE}` environment variable"
             + (f", or else from `{source}`." if source else ": set it to the pip source your instructor gives you "
                "(a git URL or a wheel) before running that cell."), "",
             "| notebook | cells | solution cells removed |", "|---|---|---|"]
    lines += [f"| {name} | {kept} | {n} |" for name, (n, kept) in removed.items()]
    lines += ["", f"{total} solution cell(s) removed from {len(removed)} notebook(s).", ""]
    return "\n".join(lines)


def student_copy(out_dir: str | Path, notebooks_dir: str | Path = "notebooks", *, force: bool = False,
                 source: Optional[str] = None, pattern: str = NOTEBOOK_PATTERN) -> dict[str, int]:
    """Write every notebook of ``notebooks_dir`` matching ``pattern`` into ``out_dir``
    without its ``solution`` cells and without outputs, plus a ``README.md`` listing what
    was removed. ``source`` (a pip source) becomes the install cell's default, so the
    copies install attnlab on a hosted notebook without setting ``ATTNLAB_SOURCE``.
    Returns ``{notebook name: solution cells removed}``. Refuses a non-empty ``out_dir``
    unless ``force`` (then the notebooks there are overwritten)."""
    notebooks = find_notebooks(notebooks_dir, pattern)
    install = install_cell(source)   # a bad source fails before anything is written
    out = Path(out_dir)
    if out.resolve() == Path(notebooks_dir).resolve():
        raise ValueError(f"{out} is the notebooks folder itself; write the copies into another folder")
    _prepare_out_dir(out, force)
    removed: dict[str, tuple[int, int]] = {}
    for path in notebooks:
        nb = nbformat.read(str(path), as_version=4)
        n = strip_solutions(nb)
        clear_outputs(nb)
        if source:
            for c in nb.cells:
                if INSTALL_TAG in _tags(c):
                    c.source = install
        nbformat.validate(nb)
        nbformat.write(nb, str(out / path.name))
        removed[path.name] = (n, len(nb.cells))
    (out / README).write_text(_readme(removed, source), encoding="utf-8")
    return {name: n for name, (n, _) in removed.items()}


__all__ = ["INSTALL_CELL", "SOLUTION_TAG", "INSTALL_TAG", "install_cell", "set_install_cell",
           "write_install_cell", "strip_solutions", "clear_outputs", "student_copy", "find_notebooks",
           "is_solution"]
