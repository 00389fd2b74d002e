"""Default folders for data and runs: the checkout's ``data/`` and ``runs/``.

Notebooks run from ``notebooks/`` and the CLI from anywhere, so relative defaults would
scatter caches; ``ATTNLAB_DATA`` and ``ATTNLAB_RUNS`` override.
"""
from __future__ import annotations

import os
from pathlib import Path

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
