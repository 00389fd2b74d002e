"""Where attnlab keeps files, and how it writes them.

Default folders for data and runs are the checkout's ``data/`` and ``runs/``: notebooks
run from ``notebooks/`` and the CLI from anywhere, so relative defaults would scatter
caches; ``ATTNLAB_DATA`` and ``ATTNLAB_RUNS`` override.
"""
from __future__ import annotations

import contextlib
import os
import re
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


_TEMP_SUFFIX = re.compile(r"\.tmp(\d+)$")


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's
        return True
    except (OverflowError, ValueError):
        return False
    return True


def clean_stale_temps(folder: str | Path, *, any_writer: bool = False) -> list[Path]:
    """Remove the temporary files :func:`atomic_path` left behind when its writer died.

    A temp file is stale when the process named in its suffix is gone; with
    ``any_writer`` (the caller holds the folder's lock, so nobody else writes there) every
    temp file but this process's own is. Returns the files removed.
    """
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        m = _TEMP_SUFFIX.search(p.name)
        if not m or not p.is_file() or int(m.group(1)) == os.getpid():
            continue
        if any_writer or not pid_alive(int(m.group(1))):
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p)
    return removed
