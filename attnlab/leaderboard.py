"""The leaderboard: every attention block of the workbook on one backbone, one recipe.

Each paper tests its block under its own recipe, split and selection rule, so their
numbers cannot be ranked against each other. Here every block sits in ResNet-20
(the CIFAR ResNet of He et al. 2016) and every network trains under the same recipe,
data and seeds; the table puts accuracy (mean and spread over seeds) beside what the
block costs (parameters, FLOPs, training step time, peak memory) and where the network
looks (GradCAM mass on the objects the label depends on, for datasets with masks).

The entries use each block's own paper placement where it has one (SE and spatial
softmax as their papers place them, CBAM, SelfAtt and MHA after the stages as in
CNNtention); attention-augmented convolution replaces the first 3x3 convolution of the
last stage (Bello et al. put it in the later stages of small networks), and one
residual-attention (trunk-and-mask) module follows stage 2, the deepest stage whose
16x16 maps leave its mask branch room to pool and upsample.

>>> plan = plan_leaderboard("relations", "quick", seeds=(0, 1, 2), budget_s=90)
>>> print(plan.describe()); runs = run_leaderboard(plan)
>>> table = leaderboard_table(runs, costs=leaderboard_costs(plan))
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

import torch

from .cost import cost_table
from .data import load_data
from .explain import gradcam, localisation_score
from .hardware import resolve_device
from .papers import create_model, model_spec
from .recipes import get_profile
from .runs import Run, RunConfig, check_seeds, is_finished, train_or_load
from .study import commands_for, estimate_train_seconds, normalise, seed_summary
from .train import NonFiniteLossError


@dataclass(frozen=True)
class Entry:
    """One row of the leaderboard: a registered model, plus options on top of it."""

    label: str
    model: str
    model_kw: dict = field(default_factory=dict)
    block: str = "-"
    paper: str = "baselines"

    def build(self, num_classes: int = 10, in_channels: int = 3, size: int = 32):
        model = create_model(self.model, num_classes=num_classes, in_channels=in_channels, **self.model_kw)
        with torch.no_grad():   # sizes lazy parameters (AA-Conv's relative tables) before counting
            model.eval()(torch.zeros(1, in_channels, size, size))
        return model.train()


_AA_KW = {"attn": "aaconv", "attn_stages": (3,), "attn_kw": {"min_dk_per_head": 20, "batchnorm": False}}
_RA_KW = {"attn": "residual_attention", "attn_stages": (2,)}

ENTRIES: tuple[Entry, ...] = (
    Entry("ResNet-20", "resnet20"),
    Entry("SE", "se_resnet20", block="se"),
    Entry("CBAM", "resnet20_cbam", block="cbam", paper="cnntention"),
    Entry("SelfAtt", "resnet20_selfatt", block="selfatt", paper="cnntention"),
    Entry("MHA", "resnet20_mha", block="mha", paper="cnntention"),
    Entry("spatial softmax", "resnet20_spatial_softmax", block="spatial_softmax", paper="abcnn"),
    Entry("AA-Conv (stage 3)", "resnet20", _AA_KW, block="aaconv", paper="aaconv"),
    Entry("Residual Attention (stage 2)", "resnet20", _RA_KW, block="residual_attention",
          paper="residual_attention"),
)
#: the one recipe every entry trains with (Adam, the CNNtention authors' shared settings)
RECIPE = "cnntention_shared"


def get_entry(label: str) -> Entry:
    for e in ENTRIES:
        if e.label == label:
            return e
    raise ValueError(f"no leaderboard entry {label!r}; entries: {', '.join(e.label for e in ENTRIES)}")


@dataclass(frozen=True)
class PlannedEntry:
    entry: Entry
    config: RunConfig
    stored: bool
    train: bool
    estimate_s: float   # expected training time here (0 when stored)
    reason: str = ""    # why it is not trained here


@dataclass
class LeaderboardPlan:
    dataset: str
    profile: str
    seeds: tuple[int, ...]
    recipe: str
    device: str
    runs: list[PlannedEntry]
    budget_s: Optional[float]
    runs_dir: Optional[str] = None

    @property
    def missing(self) -> list[PlannedEntry]:
        return [r for r in self.runs if not (r.stored or r.train)]

    @property
    def commands(self) -> list[str]:
        return commands_for([r.config for r in self.missing], self.runs_dir)

    def describe(self) -> str:
        prof = get_profile(self.profile)
        stored = sum(r.stored for r in self.runs)
        train = [r for r in self.runs if r.train and not r.stored]
        lines = [f"leaderboard on {self.dataset}, profile {self.profile} ({prof.description}); recipe "
                 f"{self.recipe}; seeds {list(self.seeds)}; device {self.device}",
                 f"{len(self.runs)} runs: {stored} stored, {len(train)} to train here "
                 + (f"(about {sum(r.estimate_s for r in train):.0f} s)" if self.budget_s is not None else "(no time budget)")
                 + f", {len(self.missing)} missing"]
        if self.missing:
            lines.append("missing (these commands fill the run store; then run this again):")
            lines += [f"  - {r.entry.label} seed {r.config.seed}: {r.reason}" for r in self.missing]
            lines += [f"    {c}" for c in self.commands]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.describe()


def _config(entry: Entry, dataset: str, profile: str, recipe: str, seed: int, data_kw: Optional[dict]) -> RunConfig:
    return RunConfig(entry.model, dataset, recipe, profile, seed, model_kw=dict(entry.model_kw),
                     data_kw=dict(data_kw or {}))


def plan_leaderboard(dataset: str = "relations", profile: str = "quick", seeds: Iterable[int] = (0, 1, 2),
                     recipe: str = RECIPE, device: str = "auto", *, entries: Sequence[Entry] = ENTRIES,
                     budget_s: Optional[float] = None, train_slow: bool = False,
                     runs_dir: str | Path | None = None, data_kw: Optional[dict] = None) -> LeaderboardPlan:
    """Which leaderboard runs load from the store, train here, or are left missing.

    Stored runs always load. Others train in entry order, seed by seed, while their
    estimated time (:func:`attnlab.study.estimate_train_seconds`) fits in ``budget_s``
    (``None``: no limit); models marked slow on a CPU (MHA) train only with
    ``train_slow``. What is left gets the exact commands that train it.
    """
    seeds = tuple(check_seeds(seeds))
    if not seeds:
        raise ValueError("seeds is empty; give at least one seed")
    if budget_s is not None and budget_s < 0:
        raise ValueError(f"budget_s must be >= 0 seconds or None (no limit), got {budget_s}")
    dev = resolve_device(device).type
    left = math.inf if budget_s is None else float(budget_s)
    runs, estimates = [], {}
    for seed in seeds:            # seed-major: every entry gets a first seed before any a second
        for e in entries:
            cfg = _config(e, dataset, profile, recipe, seed, data_kw)
            if is_finished(cfg, runs_dir):
                runs.append(PlannedEntry(e, cfg, True, False, 0.0))
                continue
            if model_spec(e.model).slow_on_cpu and dev == "cpu" and not train_slow:
                runs.append(PlannedEntry(e, cfg, False, False, math.nan, "too slow to train on a CPU here"))
                continue
            if budget_s is None:
                est = math.nan        # no budget to fit: no need to time anything
            elif e.label not in estimates:   # seeds of one entry cost the same
                est = estimates[e.label] = estimate_train_seconds(cfg, runs_dir, device=dev)
            else:
                est = estimates[e.label]
            fits = budget_s is None or est <= left
            left -= est if fits and budget_s is not None else 0
            runs.append(PlannedEntry(e, cfg, False, fits, est,
                                     "" if fits else f"about {est:.0f} s: over the training budget"))
    return LeaderboardPlan(dataset, profile, seeds, recipe, dev, runs, budget_s,
                           None if runs_dir is None else str(runs_dir))


def run_leaderboard(plan: LeaderboardPlan, use_cache: bool = True, progress: bool = False):
    """Train or load the plan's runs; one row per run (label, seed, status, metrics, dir)."""
    import pandas as pd

    rows = []
    for p in plan.runs:
        if not (p.stored or p.train):
            continue
        row = {"label": p.entry.label, "model": p.entry.model, "block": p.entry.block, "seed": p.config.seed}
        try:
            run = train_or_load(p.config, plan.runs_dir, use_cache=use_cache, progress=progress,
                                device=plan.device, live=False)
        except NonFiniteLossError:
            rows.append({**row, "status": "diverged", "test_acc": math.nan, "dir": ""})
            continue
        if not run.finished:
            raise KeyboardInterrupt(f"interrupted during {run.dir}; run again to resume")
        rows.append({**row, "status": "loaded" if run.from_store else "trained",
                     "test_acc": run.metrics["test_acc"], "val_acc": run.metrics["val_acc"],
                     "wall_s": run.metrics["wall_s"], "params": run.metrics["params"], "dir": str(run.dir)})
    return pd.DataFrame(rows, columns=None if rows else ["label", "model", "block", "seed", "status",
                                                         "test_acc", "val_acc", "wall_s", "params", "dir"])


def leaderboard_costs(plan: LeaderboardPlan, batch_size: int = 64, speed: bool = True,
                      memory: bool = True, steps: int = 3):
    """Parameters, FLOPs, training step time and peak memory of every entry in the plan
    (as :func:`attnlab.cost.cost_table` measures them on the plan's device)."""
    labels = list(dict.fromkeys(p.entry.label for p in plan.runs))
    models = {label: get_entry(label).build() for label in labels}
    return cost_table(models, batch_size=batch_size, device=plan.device, speed=speed, memory=memory, steps=steps)


def localisation(runs, dataset: str, n_images: int = 128, layer: str = "layer3") -> dict[str, dict]:
    """GradCAM's share of mass on the objects the label depends on, per entry (first
    seed's run), on ``n_images`` test images; empty when the dataset has no masks."""
    data = load_data(dataset, eval_subset=n_images)
    if data.test.masks is None or runs is None or len(runs) == 0:
        return {}
    x = normalise(data, data.test.images)
    out = {}
    for row in runs[runs["status"] != "diverged"].sort_values("seed").drop_duplicates("label").itertuples():
        model = Run.load(Path(row.dir)).model()
        cam = gradcam(model, x, layer, target=data.test.labels)
        out[row.label] = localisation_score(cam, data.test.masks)
    return out


def leaderboard_table(runs, costs=None, localised: Optional[dict] = None, reference: str = "ResNet-20",
                      entries: Sequence[Entry] = ENTRIES):
    """One row per entry (those with no run too, with n = 0): test accuracy mean, std and
    n over seeds, the gap to ``reference``, then the costs and localisation where given."""
    import pandas as pd

    table = pd.DataFrame(index=pd.Index([e.label for e in entries], name="label"),
                         columns=["test_acc_mean", "test_acc_std", "n"], dtype=float)
    if runs is not None and len(runs):
        summary = seed_summary(runs, "label", ("test_acc",)).set_index("label")
        table.update(summary[["test_acc_mean", "test_acc_std", "n"]])
    if reference in table.index:
        table["vs " + reference] = table["test_acc_mean"] - table.loc[reference, "test_acc_mean"]
    table["n"] = table["n"].fillna(0).astype(int)
    if costs is not None and len(costs):
        keep = [c for c in ("params", "MFLOPs", "train step ms", "peak MiB (train)") if c in costs.columns]
        table = table.join(costs.set_index("model")[keep])
    if localised:
        table["on objects"] = pd.Series({k: v["mass_inside"] for k, v in localised.items()})
        table["chance"] = pd.Series({k: v["chance"] for k, v in localised.items()})
    return table.reset_index()


def published_for_entries(entries: Sequence[Entry] = ENTRIES):
    """The papers' own numbers for the entries that are a paper's registered model as it
    stands (no options on top), quoted as published: their recipes, datasets and
    protocols differ from the leaderboard's, so they sit beside it, never in it."""
    import pandas as pd

    from .papers import get_paper

    rows = []
    for e in entries:
        if e.model_kw:
            continue  # a placement of our own: no paper measured it
        for c in get_paper(e.paper).claims:
            if c.model == e.model and not c.setting:
                rows.append({"label": e.label, "paper": e.paper, "dataset": c.dataset, "metric": c.metric,
                             "value": c.value, "split": c.split, "protocol": c.protocol, "source": c.source})
    return pd.DataFrame(rows, columns=["label", "paper", "dataset", "metric", "value", "split", "protocol", "source"])


__all__ = ["Entry", "ENTRIES", "RECIPE", "get_entry", "PlannedEntry", "LeaderboardPlan", "plan_leaderboard",
           "run_leaderboard", "leaderboard_costs", "localisation", "leaderboard_table", "published_for_entries"]
