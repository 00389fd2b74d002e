"""The ablation explorer's plain functions: one ablation axis of one paper, as the run
store has it, and what it would take to fill the gaps.

An axis is one factor of a paper's model (CBAM's merge, Residual Attention's NAL vs ARL,
AA-Conv's relative embeddings, ...), every other setting fixed. :func:`explore_axis`
plans it over seeds with :func:`attnlab.study.plan_ablation`, loads every stored run and
lists the missing ones with the exact command and an estimate of the time they need
here; :func:`show_axis` draws accuracy per value (seeds as dots), the validation curves,
the learned gates and a GradCAM map per value; :func:`train_missing` trains the gaps.
:func:`attnlab.widgets.ablation_explorer` wires the same functions to controls.

>>> view = explore_axis("cnntention", "resnet20_cbam.merge", "shapes", "quick", seeds=[0])
>>> fig = show_axis(view); print(view.describe())
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import torch

from . import explain, plots
from .data import load_data
from .papers import AblationAxis, get_paper, list_papers
from .runs import Run
from .study import commands_for, estimate_train_seconds, normalise, plan_ablation, run_ablation, seed_summary

#: above this estimate (seconds) the explorer warns before training in the notebook
SLOW_S = 60.0


def axis_key(axis: AblationAxis) -> str:
    return f"{axis.model}.{axis.parameter}"


def list_axes(paper: Optional[str] = None) -> list[tuple[str, str, str]]:
    """``(paper id, axis key, label)`` of every ablation axis (of one paper, or all)."""
    ids = [paper] if paper else list_papers()
    return [(p, axis_key(a), a.label or a.parameter) for p in ids for a in get_paper(p).ablations]


def find_axis_by_key(paper: str, key: str) -> AblationAxis:
    for a in get_paper(paper).ablations:
        if axis_key(a) == key:
            return a
    have = ", ".join(axis_key(a) for a in get_paper(paper).ablations) or "none"
    raise ValueError(f"paper {paper!r} has no ablation axis {key!r}; its axes: {have}")


@dataclass
class AxisView:
    """One axis as the store has it: the plan, the stored runs, and the gaps."""

    paper: str
    axis: AblationAxis
    plan: object                 # attnlab.study.StudyPlan
    runs: object                 # DataFrame, one row per stored run
    estimates: dict              # axis value (repr) -> estimated seconds per missing run
    cpu_quick_data: Optional[dict] = None

    @property
    def missing(self) -> list:
        return self.plan.missing

    @property
    def missing_seconds(self) -> float:
        return sum(self.estimates.get(repr(r.value), math.nan) for r in self.missing)

    @property
    def commands(self) -> list[str]:
        return commands_for([r.config for r in self.missing], self.plan.runs_dir, self.axis.parameter)

    def summary(self):
        """Mean, std and n of the test accuracy per axis value (stored runs only)."""
        if not len(self.runs):
            return self.runs
        frame = self.runs.assign(value=self.runs[self.axis.parameter].map(repr))
        return seed_summary(frame, "value", ("test_acc",))

    def describe(self) -> str:
        ax, p = self.axis, self.plan
        lines = [f"{self.paper}: {ax.label or ax.parameter} ({axis_key(ax)} over {list(ax.values)}) on "
                 f"{p.dataset}, profile {p.profile}, seeds {list(p.seeds)}: {len(self.runs)} stored, "
                 f"{len(self.missing)} missing"]
        if self.missing:
            est = self.missing_seconds
            if not math.isnan(est):
                lines.append(f"training the missing runs here would take about {est:.0f} s on this "
                             f"{p.device.upper()}" + (" (slow: consider the commands on a GPU)" if est > SLOW_S else ""))
            lines += [f"  {c}" for c in self.commands]
        return "\n".join(lines)


def explore_axis(paper: str, axis: str, dataset: str = "shapes", profile: str = "quick",
                 seeds: Iterable[int] = (0,), *, recipe: str = "paper", runs_dir: str | Path | None = None,
                 device: str = "auto", cpu_quick_data: Optional[dict] = None, estimate: bool = True) -> AxisView:
    """What the store has for ``axis`` (its key ``"model.parameter"``) of ``paper``; trains
    nothing. ``estimate`` times a few steps per missing value (a stored sibling run's
    wall time when there is one) to say how long filling the gaps would take."""
    ax = find_axis_by_key(paper, axis)
    plan = plan_ablation(paper, ax, dataset, profile, seeds, recipe, device=device, train=False,
                         runs_dir=runs_dir, cpu_quick_data=cpu_quick_data)
    # plan_ablation would still train the default point (the main comparison's run): not here
    plan.runs = [dataclasses.replace(r, train=False) for r in plan.runs]
    runs = run_ablation(plan, verbose=False)
    estimates = {}
    for r in plan.missing if estimate else []:
        if repr(r.value) not in estimates:
            estimates[repr(r.value)] = estimate_train_seconds(r.config, runs_dir, device=plan.device)
    return AxisView(paper, ax, plan, runs, estimates, cpu_quick_data)


def train_missing(view: AxisView, progress: bool = True) -> AxisView:
    """Train the view's missing runs here (a progress bar per run), then the new view."""
    p = view.plan
    plan = plan_ablation(view.paper, view.axis, p.dataset, p.profile, p.seeds, p.recipe, device=p.device,
                         train=True, train_slow=True, runs_dir=p.runs_dir, cpu_quick_data=view.cpu_quick_data)
    runs = run_ablation(plan, progress=progress, verbose=progress)
    return AxisView(view.paper, view.axis, plan, runs, {}, view.cpu_quick_data)


def _accuracy_panel(ax, view: AxisView) -> None:
    param = view.axis.parameter
    stored = {repr(v) for v in view.runs[param]} if len(view.runs) else set()
    missing = [str(v) for v in view.axis.values if repr(v) not in stored]
    if stored:
        plots.plot_results(view.runs.assign(value=view.runs[param].map(str)), "test_acc", by="value", ax=ax)
    else:
        ax.text(0.5, 0.5, "no stored runs", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(f"{param}: mean ± std, seeds as dots" + (f"\nmissing: {', '.join(missing)}" if missing else ""),
                 fontsize=9)


def _curves_panel(ax, view: AxisView) -> None:
    values = [repr(v) for v in view.axis.values]
    for row in view.runs.itertuples() if len(view.runs) else []:
        run = Run.load(Path(row.dir))
        if run is None or "val_acc" not in run.history:
            continue
        colour = f"C{values.index(repr(getattr(row, view.axis.parameter)))}"
        ax.plot(run.history["epoch"], run.history["val_acc"], "-o", ms=3, color=colour,
                label=f"{getattr(row, view.axis.parameter)} s{row.seed}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.set_title("curves", fontsize=9)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=7)


def _gates_panel(ax, view: AxisView) -> None:
    cols = [c for c in view.runs.columns if str(c).startswith("gate:")] if len(view.runs) else []
    rows = view.runs.dropna(subset=cols, how="all") if cols else []
    if not len(rows):
        ax.text(0.5, 0.5, "no learned gates to show\n(no stored run with a weighted merge)", ha="center", va="center",
                fontsize=8, transform=ax.transAxes)
        ax.set_axis_off()
        return
    for i, row in enumerate(rows.itertuples()):
        gates = [rows.iloc[i][c] for c in cols]
        ax.plot(range(len(cols)), gates, "o-", label=f"{getattr(row, view.axis.parameter)} s{row.seed}")
    ax.set_xticks(range(len(cols)), [c.removeprefix("gate:") for c in cols], fontsize=8)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_title("learned gates w", fontsize=9)
    ax.legend(fontsize=7)


def axis_gradcams(view: AxisView, index: int = 0, layer: str = "layer3") -> dict[str, torch.Tensor]:
    """GradCAM of test image ``index`` for the first seed's run of each stored value."""
    if not len(view.runs):
        return {}
    data = load_data(view.plan.dataset, eval_subset=max(index + 1, 16))
    x = normalise(data, data.test.images[index:index + 1])
    out = {}
    for row in view.runs.sort_values("seed").drop_duplicates(view.axis.parameter).itertuples():
        model = Run.load(Path(row.dir)).model()
        out[f"{view.axis.parameter}={getattr(row, view.axis.parameter)}"] = explain.gradcam(model, x, layer)
    return out | {"_image": x, "_mean": data.mean, "_std": data.std}


def show_axis(view: AxisView, maps: bool = True, index: int = 0):
    """Accuracy per value, validation curves and learned gates; with ``maps`` a second
    row of GradCAM maps (test image ``index``) from each value's first-seed run."""
    import matplotlib.pyplot as plt

    cams = axis_gradcams(view, index) if maps else {}
    n_maps = len([k for k in cams if not k.startswith("_")])
    rows = 2 if n_maps else 1
    fig = plt.figure(figsize=(12, 3.4 * rows))
    grid = fig.add_gridspec(rows, max(3, n_maps))
    span = max(3, n_maps) // 3
    panels = [fig.add_subplot(grid[0, i * span:(i + 1) * span]) for i in range(3)]
    _accuracy_panel(panels[0], view)
    _curves_panel(panels[1], view)
    _gates_panel(panels[2], view)
    if n_maps:
        img = plots.denormalize(cams["_image"], cams["_mean"], cams["_std"])[0].permute(1, 2, 0).clamp(0, 1)
        for i, (name, cam) in enumerate((k, v) for k, v in cams.items() if not k.startswith("_")):
            ax = fig.add_subplot(grid[1, i])
            ax.imshow((img.squeeze(-1) if img.shape[-1] == 1 else img).numpy(), cmap="gray")
            ax.imshow(cam[0].numpy(), cmap="jet", alpha=0.45, vmin=0, vmax=1)
            ax.set_title(f"GradCAM, {name}", fontsize=8)
            ax.set_axis_off()
    p = view.plan
    fig.suptitle(f"{view.paper}: {view.axis.label or view.axis.parameter} on {p.dataset} ({p.profile}, "
                 f"{len(view.runs)} stored, {len(view.missing)} missing)", fontsize=10)
    fig.tight_layout()
    return fig


__all__ = ["SLOW_S", "axis_key", "list_axes", "find_axis_by_key", "AxisView", "explore_axis", "train_missing",
           "axis_gradcams", "show_axis"]
