"""Where attnlab keeps files, and how it writes them.

Default folders for data and runs are the checkout's ``data/`` and ``runs/``: notebooks
run from ``notebooks/`` and the CLI from anywhere, so relative defaults would scatter
caches; ``ATTNLAB_DATA`` and ``ATTNLAB_RUNS`` override.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _default(env: str, sub: str) -> Path:
    if os.environ.get(env):
        return Path(os.environ[env])
    if (PROJECT_ROOT / "pyproject.toml").exists():
        return PROJECT_ROOT / sub
    return Path.home() / ".cache" / "attnlab" / sub


def data_root() -> Path:
    return _default("ATTNLAB_DATA", "data")


def runs_root() -> Path:
    return _default("ATTNLAB_RUNS", "runs")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary sibling of ``path`` to write to; it replaces ``path`` in one step when
    the block succeeds. A crash mid-write leaves the old file (or none), never half a file."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
