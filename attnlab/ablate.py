"""Ablations: a grid of configs times seeds, each trained or loaded through the run store.

Attention gains on CIFAR are small and recipe-sensitive, so an ablation fixes everything
but one factor and reports mean and spread over seeds.
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Iterable

from .runs import RunConfig, check_seeds, train_or_load

_CONFIG_FIELDS = {f.name for f in dataclasses.fields(RunConfig)} - {"seed"}


def grid_configs(base: RunConfig, grid: dict[str, Iterable[Any]]) -> list[tuple[dict, RunConfig]]:
    """Every combination of ``grid``; keys are RunConfig fields (``model``, ``recipe``, ...)
    or, otherwise, keyword arguments of the model (``merge``, ``reduction``, ...)."""
    keys = list(grid)
    out = []
    for values in itertools.product(*(list(grid[k]) for k in keys)):
        point = dict(zip(keys, values))
        fields = {k: v for k, v in point.items() if k in _CONFIG_FIELDS}
        model_kw = {**base.model_kw, **{k: v for k, v in point.items() if k not in _CONFIG_FIELDS}}
        out.append((point, base.replace(**fields, model_kw=model_kw)))
    return out


def ablate(base: RunConfig, grid: dict[str, Iterable[Any]], seeds: Iterable[int] = (0,), *,
           runs_dir=None, use_cache: bool = True, progress: bool = True, aggregate: bool = True,
           metrics: tuple[str, ...] = ("test_acc", "val_acc")):
    """Train or load every grid point for every seed; return a DataFrame.

    With ``aggregate`` (default) one row per grid point: ``<metric>_mean``,
    ``<metric>_std`` (sample std, NaN for one seed) and ``seeds``; otherwise one row
    per run, with its directory and learned gates.
    """
    import pandas as pd

    seeds = check_seeds(seeds)
    rows = []
    for point, cfg in grid_configs(base, grid):
        for seed in seeds:
            run = train_or_load(cfg.replace(seed=seed), runs_dir, use_cache=use_cache,
                                progress=progress, live=False)
            if not run.finished:
                raise KeyboardInterrupt(f"ablation interrupted during {run.dir}; run it again to resume")
            gates = {k: v for k, v in run.metrics.items() if k.startswith("gate:")}
            rows.append({**{k: _label(v) for k, v in point.items()}, "seed": seed,
                         **{m: run.metrics[m] for m in metrics}, "epochs": run.metrics["epochs"],
                         "wall_s": run.metrics["wall_s"], **gates, "dir": str(run.dir)})
    frame = pd.DataFrame(rows)
    if not aggregate or frame.empty:
        return frame
    keys = [k for k in grid]
    agg = frame.groupby(keys, sort=False, dropna=False).agg(
        **{f"{m}_{s}": (m, s) for m in metrics for s in ("mean", "std")},
        seeds=("seed", "count"), wall_s=("wall_s", "sum"))
    return agg.reset_index()


def _label(value: Any) -> Any:
    """Grid values must be hashable to group by; dicts and lists become strings."""
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in sorted(value.items()))
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return value
