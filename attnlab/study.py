"""The study logic the notebooks share: which runs to train or load, what a CPU restricts,
seed summaries, our numbers beside a paper's claims, and what the seeds can say.

A notebook sets parameters and calls these; it defines no helpers of its own. Everything
is paper-agnostic: a paper enters only through the registry (``get_paper(id)``: its models'
labels, recipes and ``slow_on_cpu`` flags, its :class:`Claim` rows, its ablation axes).

Planning and running
    ``plan_study(paper, models, dataset, profile, seeds, recipe="paper", epochs=None,
    device="auto", train=True, train_slow=False, runs_dir=None, data_kw=None,
    cpu_quick_data=None, reason="") -> StudyPlan``: one :class:`PlannedRun` per model and
    seed. ``recipe="paper"`` gives each model the recipe its paper used
    (``ModelSpec.recipe``); any recipe name gives all models that one. A run already in the
    store is always loaded. A CPU does not train models marked ``slow_on_cpu`` (unless
    ``train_slow``), at any profile: even at ``smoke`` MHA's few steps and evaluations cost
    more than the rest of notebook 02 (model tests cover their forward and backward);
    ``train=False`` trains nothing here, ``train="auto"`` trains except at ``quick`` on a
    CPU; ``cpu_quick_data`` (e.g. ``{"train_subset": 3000}``) lightens the runs trained on
    a CPU at ``quick`` unless the profile's own runs are all stored. Every run left out
    becomes a :class:`Restriction` with the exact ``python -m attnlab ...`` command that
    fills the store (then the notebook loads it). ``plan.describe()`` says it in words.

    ``plan_ablation(paper, axis, dataset, profile, seeds, ..., train="auto")`` plans one of
    the paper's :class:`AblationAxis` (``find_axis(paper, parameter, model=None)``). A point
    equal to the model's default is the same run as the main comparison's (run keys
    resolve the model's settings), so it is loaded, never trained twice.

    ``run_study(plan, use_cache=True, progress=False) -> DataFrame`` (``run_ablation`` is
    the same): one row per run: model, label, seed, the axis value for an ablation,
    status (loaded / trained / diverged), test_acc, val_acc, test_top5, test_loss, params,
    epochs, best_epoch, wall_s, n_train, ``gate:<block>`` columns, dir.

Reading the results
    ``seed_summary(frame, by="model", metrics=("test_acc", "val_acc"))``: per group
    ``<metric>_mean``, ``<metric>_std`` (sample std; NaN for one seed) and ``n``.
    ``compare(frame, by, metric, reference)`` and ``verdict(frame, by, metric, reference)``:
    each group's gap to a reference group against two standard errors of that gap: what
    these seeds can and cannot say (with one seed: nothing about a ranking).
    ``published_table(paper, ours, dataset, profile, metric="test_error", by="model",
    axis=None)``: our numbers in the claim's units (columns ours, ours_std, n) beside the
    paper's claims, one ``published <dataset>`` column per dataset (and source); ``table.attrs["differences"]`` lists how ours differs (dataset,
    length, protocol, split) and ``attrs["comparable"]`` says whether it is like for like.
    ``published_points(paper, dataset, by="label")``: the claims as accuracies in [0, 1] for
    :func:`attnlab.plots.plot_results` (empty unless the dataset matches).

Gates
    ``gate_share(model, x) -> {block: ||w F(x)|| / ||x||}`` for every weighted merge;
    ``gate_report(runs, x)``: the learned gates and shares of every run in a run frame.

Schedules, shapes and images
    ``lr_schedule(recipe, n_train)``: the learning rate per epoch as ``fit`` applies it.
    ``trace_shapes(model, x, modules=None, depth=1)``: each module's input and output
    shapes and parameters for one batch, in call order.
    ``one_per_class(imageset, n=8)``, ``images_covering(imageset, pixel, n=3)`` and
    ``normalise(data, images)``: the exact tensors the models see.

"Is this run finished?" has one answer: :func:`attnlab.runs.is_finished`.
"""
from __future__ import annotations

import dataclasses
import json
import math
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

import torch
from torch import nn

from .hardware import resolve_device
from .layers.merge import Merge
from .cost import step_seconds
from .data import dataset_info, load_data
from .papers import AblationAxis, Claim, Paper, create_model, get_paper, model_options, model_spec
from .papers.cnntention import load_authors_checkpoint
from .recipes import Recipe, get_profile, get_recipe
from .runs import Run, RunConfig, check_seeds, is_finished, run_path, train_or_load
from .train import NonFiniteLossError, evaluate, gate_values, lr_factor

PaperLike = Union[str, Paper]
TrainPolicy = Union[bool, str]

_CONFIG_FIELDS = {f.name for f in dataclasses.fields(RunConfig)} - {"seed"}
_RUN_METRICS = ("test_acc", "val_acc", "test_top5", "test_loss", "params", "epochs", "best_epoch", "wall_s",
                "n_train")


def _paper(paper: PaperLike) -> Paper:
    return paper if isinstance(paper, Paper) else get_paper(paper)


# -- planning ---------------------------------------------------------------------------

@dataclass(frozen=True)
class PlannedRun:
    model: str
    label: str
    seed: int
    config: RunConfig
    stored: bool        # finished in the store: loaded, not trained
    train: bool         # trained here when not stored
    value: Any = None   # the ablation axis value (None for a main comparison)

    @property
    def available(self) -> bool:
        return self.stored or self.train


@dataclass(frozen=True)
class Restriction:
    what: str
    reason: str
    commands: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"{self.what}: {self.reason}" + "".join(f"\n    {c}" for c in self.commands)


@dataclass
class StudyPlan:
    paper: str
    dataset: str
    profile: str
    seeds: tuple[int, ...]
    recipe: str
    epochs: Optional[int]
    device: str
    models: list[str]
    labels: dict[str, str]
    recipes: dict[str, str]
    runs: list[PlannedRun]
    restrictions: list[Restriction] = field(default_factory=list)
    axis: Optional[AblationAxis] = None
    runs_dir: Optional[str] = None

    @property
    def on_cpu(self) -> bool:
        return self.device == "cpu"

    @property
    def available(self) -> list[PlannedRun]:
        """The runs this notebook will have: stored ones and those trained here."""
        return [r for r in self.runs if r.available]

    @property
    def missing(self) -> list[PlannedRun]:
        return [r for r in self.runs if not r.available]

    @property
    def restricted_models(self) -> list[str]:
        """Models with no run at all here (e.g. a slow model on a CPU with nothing stored)."""
        return [m for m in self.models if not any(r.available for r in self.runs if r.model == m)]

    @property
    def commands(self) -> list[str]:
        return [c for r in self.restrictions for c in r.commands]

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame([{"model": r.model, "label": r.label, "seed": r.seed,
                              **({self.axis.parameter: r.value} if self.axis else {}),
                              "recipe": r.config.recipe, "stored": r.stored,
                              "plan": "load" if r.stored else "train" if r.train else "restricted",
                              "dir": r.config.dirname} for r in self.runs])

    def describe(self) -> str:
        """The plan in words: profile, recipe per model, what loads, trains, is restricted."""
        prof = get_profile(self.profile)
        title = f"{self.axis.label or self.axis.parameter}: " if self.axis else ""
        lines = [f"{title}{self.paper} on {self.dataset}, profile {self.profile} ({prof.description}); "
                 f"seeds {list(self.seeds)}; device {self.device}"]
        for m in self.models:
            cfg = next(r.config for r in self.runs if r.model == m)
            r = get_recipe(cfg.recipe, cfg.profile, cfg.dataset, **cfg.recipe_kw)
            mine = [p for p in self.runs if p.model == m]
            counts = (f"{sum(p.stored for p in mine)} stored, {sum(p.train and not p.stored for p in mine)} "
                      f"to train, {sum(not p.available for p in mine)} restricted")
            lines.append(f"  {self.labels[m]:>14}: recipe {r.name}: {r.optimizer} lr {r.lr:g}, wd {r.weight_decay:g}, "
                         f"{r.epochs} epoch(s), {r.schedule}, batch {r.batch_size}, patience {r.patience}"
                         + (f", at most {r.max_steps_per_epoch} batches/epoch" if r.max_steps_per_epoch else "")
                         + (f"; data {cfg.data_kw}" if cfg.data_kw else "") + f"; {counts}")
        if self.restrictions:
            lines.append("restricted (the commands fill the run store; the notebook then loads the runs):")
            lines += [f"  - {x}" for x in self.restrictions]
        else:
            lines.append("restricted: nothing")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.describe()


def recipe_for(model: str, recipe: str = "paper") -> str:
    """The recipe of ``model``: its paper's (``recipe="paper"``) or the one named."""
    return model_spec(model).recipe if recipe == "paper" else recipe


def _device(device: str) -> str:
    return resolve_device(device).type


def _train_allowed(train: TrainPolicy, profile: str, on_cpu: bool) -> bool:
    if train == "auto":
        return not (on_cpu and profile == "quick")
    if not isinstance(train, bool):
        raise ValueError(f"train must be True, False or 'auto', got {train!r}")
    return train


def _slow_here(model: str, profile: str, on_cpu: bool, train_slow: bool) -> bool:
    return model_spec(model).slow_on_cpu and on_cpu and not train_slow


def _cli_value(v: Any) -> str:
    return json.dumps(v) if not isinstance(v, str) else v


def commands_for(configs: Sequence[RunConfig], runs_dir: str | Path | None = None,
                 axis: Optional[str] = None) -> list[str]:
    """The shortest ``python -m attnlab`` commands that train ``configs`` into the store.

    Configs that differ only in seed (and, with ``axis``, in that model option) share one
    ``ablate`` command; a lone config, or one with recipe or data overrides (which
    ``ablate`` does not take), gets a ``train`` command per seed.
    """
    env = f"ATTNLAB_RUNS={shlex.quote(str(runs_dir))} " if runs_dir else ""
    groups: dict[str, list[RunConfig]] = {}
    for c in configs:
        kw = {k: v for k, v in c.model_kw.items() if k != axis}
        key = json.dumps([c.model, c.dataset, c.recipe, c.profile, kw, c.recipe_kw, c.data_kw, c.precision],
                         sort_keys=True, default=str)
        groups.setdefault(key, []).append(c)
    out = []
    for group in groups.values():
        c = group[0]
        scalar = axis is None or all(isinstance(g.model_kw.get(axis), (str, int, float)) for g in group)
        if len(group) == 1 or c.recipe_kw or c.data_kw or c.precision != "auto" or not scalar:
            for g in group:
                cmd = (f"{env}python -m attnlab train --model {g.model} --dataset {g.dataset} --recipe {g.recipe} "
                       f"--profile {g.profile} --seed {g.seed}")
                for flag, val in (("--model-kw", g.model_kw), ("--recipe-kw", g.recipe_kw), ("--data-kw", g.data_kw)):
                    if val:
                        cmd += f" {flag} {shlex.quote(json.dumps(val, sort_keys=True))}"
                if g.precision != "auto":
                    cmd += f" --precision {g.precision}"
                out.append(cmd)
            continue
        base_kw = {k: v for k, v in c.model_kw.items() if k != axis}
        seeds = sorted({g.seed for g in group})
        if axis and axis in c.model_kw:
            values = list(dict.fromkeys(_cli_value(g.model_kw[axis]) for g in group))
            grid = f"{axis}={','.join(values)}"
        else:
            grid = f"model={c.model}"
        cmd = (f"{env}python -m attnlab ablate --model {c.model} --dataset {c.dataset} --recipe {c.recipe} "
               f"--profile {c.profile}")
        if base_kw:
            cmd += f" --model-kw {shlex.quote(json.dumps(base_kw, sort_keys=True))}"
        out.append(cmd + f" --grid {grid} --seeds {','.join(map(str, seeds))}")
    return out


#: official training-set sizes, for estimates before a dataset is loaded
_TRAIN_SIZES = {"cifar10": 50000, "cifar100": 50000, "mnist": 60000, "shapes": 12000, "relations": 12000}


def _official_train_size(dataset: str) -> int:
    return _TRAIN_SIZES.get(dataset, 50000)


def estimate_train_seconds(config: RunConfig, runs_dir: str | Path | None = None, device: str = "auto") -> float:
    """How long training ``config`` should take here: the wall time of a stored run that
    differs only in its seed when there is one, else a few timed training steps scaled to
    the recipe's steps, plus a quarter for evaluation."""
    for seed in range(8):
        other = config.replace(seed=seed)
        if seed != config.seed and is_finished(other, runs_dir):
            run = Run.load(run_path(other, runs_dir))
            if run is not None:
                return float(run.metrics["wall_s"])
    info = dataset_info(config.dataset)
    r = get_recipe(config.recipe, config.profile, config.dataset, **config.recipe_kw)
    n_train = (config.data_kw.get("train_subset") or get_profile(config.profile).data_kwargs(config.dataset)
               .get("train_subset") or _official_train_size(config.dataset) - info.val_size)
    steps = math.ceil(n_train / r.batch_size)
    steps = min(steps, r.max_steps_per_epoch) if r.max_steps_per_epoch else steps
    model = create_model(config.model, num_classes=max(info.num_classes, 1), in_channels=info.in_channels,
                         **config.model_kw)
    shape = (info.in_channels, info.size or 32, info.size or 32)
    per_step = step_seconds(model, r.batch_size, shape, device=device, steps=2, warmup=1)
    return 1.25 * per_step * steps * r.epochs


def _restrict(runs: list[PlannedRun], what: str, reason: str, runs_dir, axis: Optional[str]) -> list[Restriction]:
    missing = [r for r in runs if not r.available]
    if not missing:
        return []
    return [Restriction(what, reason, tuple(commands_for([r.config for r in missing], runs_dir, axis)))]


def _base_config(model: str, dataset: str, profile: str, recipe: str, epochs: Optional[int],
                 data_kw: Optional[dict]) -> RunConfig:
    recipe_kw = {} if epochs is None else {"epochs": int(epochs)}
    return RunConfig(model, dataset, recipe_for(model, recipe), profile, recipe_kw=recipe_kw,
                     data_kw=dict(data_kw or {}))


def _lighten(configs: list[RunConfig], light: Optional[dict], on_cpu: bool, profile: str,
             runs_dir) -> tuple[list[RunConfig], Optional[Restriction]]:
    """``configs`` with the ``light`` data options on a CPU at ``quick``, unless every one
    of them is stored as it is; the restriction says so, with the standard runs' commands."""
    if not light or not on_cpu or profile != "quick" or all(is_finished(c, runs_dir) for c in configs):
        return configs, None
    standard = get_profile(profile).data_kwargs(configs[0].dataset) if configs else {}
    missing = [c for c in configs if not is_finished(c, runs_dir)]
    note = ", ".join(f"{k}={v}" for k, v in light.items())
    was = ", ".join(f"{k}={standard.get(k)}" for k in light if k in standard)
    res = Restriction(f"lighter runs on this CPU ({note})",
                      f"trained with {note}" + (f" instead of the profile's {was}" if was else "")
                      + " to stay within the notebook's time (ablations too); the profile's own runs are used "
                        "instead once all of them are stored, e.g. by", tuple(commands_for(missing, runs_dir)))
    return [c.replace(data_kw={**c.data_kw, **light}) for c in configs], res


def plan_study(paper: PaperLike, models: Optional[Sequence[str]] = None, dataset: str = "shapes",
               profile: str = "quick", seeds: Iterable[int] = (0,), recipe: str = "paper",
               epochs: Optional[int] = None, device: str = "auto", *, train: TrainPolicy = True,
               train_slow: bool = False, runs_dir: str | Path | None = None,
               data_kw: Optional[dict] = None, cpu_quick_data: Optional[dict] = None,
               reason: str = "") -> StudyPlan:
    """Plan a comparison of ``models`` (default: the paper's own) over ``seeds``.

    ``models`` may name any registered model (a baseline from another paper too).
    ``train``: True trains what is missing, False only loads, "auto" trains except at
    ``quick`` on a CPU; ``reason`` explains a False/"auto" restriction in the plan's words.
    ``slow_on_cpu`` models are not trained on a CPU (at any profile) unless ``train_slow``.
    ``cpu_quick_data`` (e.g. ``{"train_subset": 3000}``): data options that lighten every
    run of the plan on a CPU at ``quick``, unless all the plan's standard runs are stored
    (a restriction then prints the commands for those).
    """
    p = _paper(paper)
    models = list(models) if models is not None else [m.name for m in p.models]
    seeds = tuple(check_seeds(seeds))
    if not seeds:
        raise ValueError("seeds is empty; give at least one seed, e.g. [0] (and [0, 1, 2] before claiming a difference)")
    get_profile(profile)
    dev = _device(device)
    allowed = _train_allowed(train, profile, dev == "cpu")
    standard = [_base_config(m, dataset, profile, recipe, epochs, data_kw).replace(seed=s) for m in models for s in seeds]
    configs, light = _lighten(standard, cpu_quick_data, dev == "cpu", profile, runs_dir)
    runs, by_reason = [], {}
    for i, m in enumerate(models):
        slow = _slow_here(m, profile, dev == "cpu", train_slow)
        label = model_spec(m).label
        mine = [PlannedRun(m, label, s, cfg, is_finished(cfg, runs_dir), allowed and not slow)
                for s, cfg in zip(seeds, configs[i * len(seeds):(i + 1) * len(seeds)])]
        runs += mine
        if slow:
            why = (f"too slow to train at profile {profile!r} on a CPU; train_slow=True (TRAIN_SLOW_ON_CPU) "
                   "trains it here")
        else:
            why = reason or f"not trained here at profile {profile!r} on a {dev.upper()}"
        if any(not r.available for r in mine):
            by_reason.setdefault(why, []).extend(mine)
    # one restriction per reason, naming its models; its commands fill exactly the planned runs
    restrictions = [Restriction(f"{', '.join(dict.fromkeys(r.label for r in group if not r.available))} on {dataset}",
                                why, tuple(commands_for([r.config for r in group if not r.available], runs_dir)))
                    for why, group in by_reason.items()]
    restrictions += [light] if light else []
    return StudyPlan(p.id, dataset, profile, seeds, recipe, epochs, dev, models,
                     {m: model_spec(m).label for m in models}, {m: recipe_for(m, recipe) for m in models},
                     runs, restrictions, None, None if runs_dir is None else str(runs_dir))


def find_axis(paper: PaperLike, parameter: str, model: Optional[str] = None) -> AblationAxis:
    """The paper's ablation axis over ``parameter`` (of ``model`` when several models have one)."""
    p = _paper(paper)
    found = [a for a in p.ablations if a.parameter == parameter and (model is None or a.model == model)]
    if len(found) != 1:
        have = ", ".join(f"{a.model}.{a.parameter}" for a in p.ablations) or "none"
        raise ValueError(f"paper {p.id!r} has {len(found)} ablation axes over {parameter!r}"
                         f"{'' if model is None else f' of {model!r}'}; its axes: {have}")
    return found[0]


def plan_ablation(paper: PaperLike, axis: Union[AblationAxis, str], dataset: str = "shapes",
                  profile: str = "quick", seeds: Iterable[int] = (0,), recipe: str = "paper",
                  epochs: Optional[int] = None, device: str = "auto", *, model: Optional[str] = None,
                  values: Optional[Sequence[Any]] = None, train: TrainPolicy = "auto",
                  train_slow: bool = False, runs_dir: str | Path | None = None,
                  data_kw: Optional[dict] = None, cpu_quick_data: Optional[dict] = None) -> StudyPlan:
    """Plan one ablation axis of ``paper`` (an :class:`AblationAxis` or its parameter name,
    with ``model`` to choose among axes over the same parameter) over ``seeds``.

    Every other setting is as in :func:`plan_study` (pass the same ``recipe``, ``epochs``,
    ``data_kw`` and ``cpu_quick_data``, so the default point is the main comparison's run);
    ``values`` overrides the axis's. ``train="auto"``: at ``quick`` on a CPU only stored
    runs and the default point (which the main comparison trains) are shown, and the plan
    prints the commands for the rest.
    """
    p = _paper(paper)
    ax = axis if isinstance(axis, AblationAxis) else find_axis(p, axis, model)
    values = tuple(values) if values is not None else tuple(ax.values)
    seeds = tuple(check_seeds(seeds))
    if not seeds:
        raise ValueError("seeds is empty; give at least one seed")
    dev = _device(device)
    on_cpu = dev == "cpu"
    allowed = _train_allowed(train, profile, on_cpu)
    slow = _slow_here(ax.model, profile, on_cpu, train_slow)
    base = _base_config(ax.model, dataset, profile, recipe, epochs, data_kw)
    in_config = ax.parameter in _CONFIG_FIELDS
    if not in_config and ax.parameter not in model_options(ax.model):
        raise ValueError(f"ablation axis {ax.parameter!r} is neither a RunConfig field nor an option of "
                         f"{ax.model!r}; options: {sorted(model_options(ax.model))}")
    default = None if in_config else model_options(ax.model)[ax.parameter]
    main, _ = _lighten([base.replace(seed=s) for s in seeds], cpu_quick_data, on_cpu, profile, runs_dir)
    main_keys = {c.key for c in main}   # the main comparison's runs, as it plans them
    points = [(v, base.replace(seed=s, **{ax.parameter: v}) if in_config
               else base.replace(seed=s, model_kw={**base.model_kw, ax.parameter: v})) for v in values for s in seeds]
    configs, _ = _lighten([c for _, c in points], cpu_quick_data, on_cpu, profile, runs_dir)  # said by plan_study
    label = model_spec(ax.model).label
    runs = []
    for (v, _), cfg in zip(points, configs):
        # the default point is the main comparison's run: trained there unless it is restricted
        is_main = not in_config and v == default and cfg.key in main_keys
        runs.append(PlannedRun(ax.model, f"{label} {ax.parameter}={v}", cfg.seed, cfg, is_finished(cfg, runs_dir),
                               (allowed or is_main) and not slow, v))
    if slow:
        why = f"{label} is too slow to train at profile {profile!r} on a CPU (train_slow=True trains it)"
    else:
        why = (f"ablation runs are not trained at profile {profile!r} on a {dev.upper()} "
               "(set ABLATIONS = True to train them here)")
    missing = [r for r in runs if not r.available]
    what = f"{ax.label or ax.parameter}: {ax.parameter} = {list({repr(r.value): r.value for r in missing}.values())}"
    restrictions = _restrict(runs, what, why, runs_dir, None if in_config else ax.parameter)
    return StudyPlan(p.id, dataset, profile, seeds, recipe, epochs, dev, [ax.model], {ax.model: label},
                     {ax.model: recipe_for(ax.model, recipe)}, runs, restrictions, ax,
                     None if runs_dir is None else str(runs_dir))


# -- running ----------------------------------------------------------------------------

def _row(planned: PlannedRun, axis: Optional[str], status: str, run: Optional[Run]) -> dict:
    row = {"model": planned.model, "label": planned.label, "seed": planned.seed,
           **({axis: planned.value} if axis else {}), "status": status}
    metrics = run.metrics if run is not None else {}
    row.update({k: metrics.get(k, math.nan) for k in _RUN_METRICS})
    row.update({k: v for k, v in metrics.items() if k.startswith("gate:")})
    row["dir"] = str(run.dir) if run is not None else ""
    return row


def run_study(plan: StudyPlan, use_cache: bool = True, progress: bool = False, verbose: bool = True):
    """Train or load every available run of ``plan``; one row per run (see the module doc).

    A run that diverges (non-finite loss) is a row with status ``diverged`` and NaN
    metrics, not an error; an interrupted one raises KeyboardInterrupt (run again to resume).
    """
    import pandas as pd

    axis = plan.axis.parameter if plan.axis else None
    rows, t0 = [], time.perf_counter()
    for p in plan.available:
        try:
            run = train_or_load(p.config, plan.runs_dir, use_cache=use_cache, progress=progress,
                                device=plan.device, live=False)
        except NonFiniteLossError as exc:
            if verbose:
                print(f"{p.label} seed {p.seed}: diverged ({exc})")
            rows.append(_row(p, axis, "diverged", None))
            continue
        if not run.finished:
            raise KeyboardInterrupt(f"interrupted during {run.dir}; run again to resume")
        rows.append(_row(p, axis, "loaded" if run.from_store else "trained", run))
    frame = pd.DataFrame(rows, columns=None if rows else ["model", "label", "seed", *([axis] if axis else []),
                                                           "status", *_RUN_METRICS, "dir"])
    if verbose:
        trained = frame[frame["status"] == "trained"] if len(frame) else frame
        print(f"{len(frame)} run(s) ready in {time.perf_counter() - t0:.1f} s: "
              f"{len(trained)} trained here ({trained['wall_s'].sum() if len(trained) else 0:.1f} s of training), "
              f"{int((frame['status'] == 'loaded').sum()) if len(frame) else 0} loaded from the store"
              + (f"; {len(plan.missing)} restricted" if plan.missing else ""))
    return frame


run_ablation = run_study  # the same for an ablation plan; rows carry the axis value


# -- summaries and verdicts -------------------------------------------------------------

def seed_summary(frame, by: Union[str, Sequence[str]] = "model",
                 metrics: Sequence[str] = ("test_acc", "val_acc")):
    """Per group of ``by``: ``<metric>_mean``, ``<metric>_std`` (sample std, NaN for one
    seed) and ``n`` (runs with a result; a diverged run counts in ``diverged``)."""
    import pandas as pd

    by = [by] if isinstance(by, str) else list(by)
    if frame is None or len(frame) == 0:
        return pd.DataFrame(columns=[*by, *(f"{m}_{s}" for m in metrics for s in ("mean", "std")), "n"])
    g = frame.groupby(by, sort=False, dropna=False)
    out = pd.DataFrame({f"{m}_{s}": getattr(g[m], s)() for m in metrics for s in ("mean", "std")})
    out["n"] = g[metrics[0]].count()
    if "status" in frame:
        out["diverged"] = g["status"].apply(lambda s: int((s == "diverged").sum()))
    if "label" in frame and "label" not in by:
        out.insert(0, "label", g["label"].first())
    if "epochs" in frame:
        out["epochs"] = g["epochs"].max()
    return out.reset_index()


def compare(frame, by: str = "label", metric: str = "test_acc", reference: Optional[Any] = None):
    """Each group's mean ``metric`` minus the ``reference`` group's (default: the first),
    with the standard error of that gap (``sqrt(s_a^2/n_a + s_b^2/n_b)``) and whether the
    gap exceeds two of them. Groups with fewer than two seeds have no spread: NaN, False."""
    import pandas as pd

    s = seed_summary(frame, by, (metric,)).set_index(by)
    if s.empty:
        return pd.DataFrame(columns=[by, "n", "mean", "std", "gap", "se", "separable"])
    ref = s.index[0] if reference is None else reference
    if ref not in s.index:
        raise ValueError(f"reference {ref!r} is not among the groups {list(s.index)}")
    r = s.loc[ref]
    rows = []
    for name, x in s.iterrows():
        se = math.sqrt(x[f"{metric}_std"] ** 2 / x["n"] + r[f"{metric}_std"] ** 2 / r["n"]) \
            if min(x["n"], r["n"]) >= 2 else math.nan
        gap = x[f"{metric}_mean"] - r[f"{metric}_mean"]
        rows.append({by: name, "n": int(x["n"]), "mean": x[f"{metric}_mean"], "std": x[f"{metric}_std"],
                     "gap": gap, "se": se, "separable": bool(name != ref and se == se and abs(gap) > 2 * se)})
    out = pd.DataFrame(rows)
    out.attrs["reference"] = ref
    return out


def verdict(frame, by: str = "label", metric: str = "test_acc", reference: Optional[Any] = None) -> str:
    """What these seeds can and cannot say about ``metric`` across the groups of ``by``."""
    c = compare(frame, by, metric, reference)
    if c.empty:
        return "no finished runs: nothing to say"
    ref = c.attrs["reference"]
    if c["n"].max() < 2 or (c["n"] < 2).any():
        few = ", ".join(f"{g} (n={n})" for g, n in zip(c[by], c["n"]) if n < 2)
        return (f"too few seeds for {few}: the table shows the mechanics, it cannot rank the groups. "
                f"Changing only the seed moves {metric} too; run SEEDS = [0, 1, 2] (or more) before "
                f"reading a difference.")
    lines = [f"{metric} gaps to {ref}, against two standard errors of the gap (seed-to-seed spread):"]
    for row in c.itertuples():
        if getattr(row, by) == ref:
            continue
        word = "larger than seed noise" if row.separable else "within seed noise: no claim either way"
        lines.append(f"  {getattr(row, by)}: {row.gap:+.4f} (2 SE = {2 * row.se:.4f}, n = {row.n} vs "
                     f"{int(c.loc[c[by] == ref, 'n'].iloc[0])}): {word}")
    if not c["separable"].any():
        lines.append("  none of the gaps stands out from the spread over seeds")
    return "\n".join(lines)


# -- ours beside the published claims ---------------------------------------------------

_OUR_COLUMN = {"test_error": "test_acc", "test_acc": "test_acc", "val_acc": "val_acc",
               "test_top5": "test_top5", "test_loss": "test_loss"}


def _ours_in_claim_units(mean: float, std: float, metric: str) -> tuple[float, float]:
    if metric == "test_error":
        return 100 * (1 - mean), 100 * std
    if metric == "test_loss":
        return mean, std
    return 100 * mean, 100 * std


def _claims(paper: Paper, metric: str, model: Optional[str] = None, setting: Optional[str] = None) -> list[Claim]:
    return [c for c in paper.claims if c.metric == metric and (model is None or c.model == model)
            and (setting is None or c.setting == setting)]


def published_table(paper: PaperLike, ours, dataset: str, profile: str, metric: str = "test_error",
                    by: str = "model", axis: Optional[AblationAxis] = None, all_claims: bool = False):
    """Our ``metric`` (mean, std, n over seeds, in the claim's units: errors and accuracies
    in percent) beside the paper's claims, one ``published <dataset>`` column per claim
    dataset (``published <dataset>: <source>`` where a dataset has several sources).

    ``ours`` is a run frame (:func:`run_study`) or its :func:`seed_summary` by ``by``.
    Rows are models (``by="model"``; claims without a setting) or, with ``axis``, the axis
    values (claims of the axis's model whose setting is ``parameter=value``).
    ``all_claims`` adds rows for claimed models we did not run. ``attrs["differences"]``
    lists how our numbers differ from the claims; ``attrs["comparable"]`` is True only for
    the same dataset at the ``full`` profile.
    """
    import pandas as pd

    p = _paper(paper)
    if metric not in _OUR_COLUMN:
        raise ValueError(f"cannot compare {metric!r}; metrics with a measured counterpart: {', '.join(_OUR_COLUMN)}")
    col = _OUR_COLUMN[metric]
    key = axis.parameter if axis else by
    summary = ours if f"{col}_mean" in getattr(ours, "columns", []) else seed_summary(ours, key, (col,))
    rows, claims_used = {}, []
    for r in summary.itertuples(index=False):
        r = r._asdict()
        mean, std = _ours_in_claim_units(r[f"{col}_mean"], r[f"{col}_std"], metric)
        rows[r[key]] = {key: r[key], "label": r.get("label", model_spec(r[key]).label if by == "model" and not axis else r[key]),
                        "metric": metric, "ours": mean, "ours_std": std, "n": int(r["n"]), "ours_dataset": dataset}
    if axis:
        wanted = {f"{axis.parameter}={v}": v for v in axis.values}
        claims = [c for c in _claims(p, metric, axis.model) if c.setting in wanted]
        place = {id(c): wanted[c.setting] for c in claims}
    else:
        claims = [c for c in _claims(p, metric, setting="") if all_claims or c.model in rows]
        place = {id(c): c.model for c in claims}
    sources = {}
    for c in claims:
        sources.setdefault(c.dataset, set()).add(c.source)
    for c in claims:
        k = place[id(c)]
        if k not in rows:
            rows[k] = {key: k, "label": model_spec(k).label if not axis and _known(k) else k, "metric": metric,
                       "ours": math.nan, "ours_std": math.nan, "n": 0, "ours_dataset": dataset}
        # one source per dataset: the column names the dataset, the differences name the source
        column = f"published {c.dataset}" + (f": {c.source}" if len(sources[c.dataset]) > 1 else "")
        rows[k][column] = c.value
        claims_used.append(c)
    table = pd.DataFrame(list(rows.values()))
    table.attrs["differences"] = differences(claims_used, dataset, profile, metric, summary)
    table.attrs["comparable"] = bool(claims_used) and profile == "full" and \
        all(c.dataset == dataset for c in claims_used)
    return table


def _known(model: str) -> bool:
    try:
        model_spec(model)
        return True
    except ValueError:
        return False


def differences(claims: Sequence[Claim], dataset: str, profile: str, metric: str, summary=None) -> list[str]:
    """How our runs differ from ``claims``: dataset, length, split, protocol, sources."""
    if not claims:
        return [f"no published {metric} to compare with"]
    out = []
    datasets = sorted({c.dataset for c in claims})
    if datasets != [dataset]:
        out.append(f"dataset: ours {dataset}; published {', '.join(datasets)}: not the same task, "
                   "so the columns are reference points, not targets")
    if profile != "full":
        epochs = ""
        if summary is not None and "epochs" in getattr(summary, "columns", []) and len(summary):
            epochs = f", at most {int(summary['epochs'].max())} epoch(s)"
        out.append(f"length: ours profile {profile!r} ({get_profile(profile).description}{epochs}); "
                   "published: the paper's full schedule")
    if any(c.split == "val" for c in claims):
        out.append("split: the published numbers are validation accuracies; ours in the same column are too")
    for proto in dict.fromkeys(c.protocol for c in claims if c.protocol):
        out.append(f"published protocol: {proto}")
    for src in dict.fromkeys(c.source for c in claims if c.source):
        out.append(f"source: {src}")
    return out


def published_points(paper: PaperLike, dataset: str, by: str = "label", metric: str = "test_error") -> dict:
    """The paper's ``dataset`` claims as accuracies in [0, 1], keyed by label (or model),
    for the red stars of :func:`attnlab.plots.plot_results`; empty for other datasets."""
    p = _paper(paper)
    out = {}
    for c in _claims(p, metric, setting=""):
        if c.dataset != dataset or c.split != "test" or c.metric not in ("test_error", "test_acc"):
            continue
        key = model_spec(c.model).label if by == "label" and _known(c.model) else c.model
        out.setdefault(key, 1 - c.value / 100 if c.metric == "test_error" else c.value / 100)
    return out


# -- gates ------------------------------------------------------------------------------

def gate_share(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """``||w F(x)|| / ||x||`` for every weighted merge (``out = x + w F(x)``) of ``model``
    on the batch ``x``, by block name: how much the attention branch adds to what it gets.
    The size of ``w`` alone says little, since ``F(x)`` has no fixed scale."""
    shares, hooks = {}, []

    def hook(name):
        def record(m: Merge, inputs, _out):
            fx, inp = inputs
            shares[name] = float((m.gate * fx).norm() / inp.norm().clamp_min(1e-12))
        return record

    for name, m in model.named_modules():
        if isinstance(m, Merge) and m.gate is not None:
            hooks.append(m.register_forward_hook(hook(name.removesuffix(".merge"))))
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(x.to(next(model.parameters()).device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return shares


def gate_report(runs, x: torch.Tensor, off_below: float = 0.01):
    """The learned gates ``w`` and :func:`gate_share` of every run in ``runs`` (a run frame)
    with weighted merges: one row per run and block, with a reading (``off``: the branch
    adds under ``off_below`` of its input, so the model is the plain backbone there)."""
    import pandas as pd

    rows = []
    for r in runs.itertuples(index=False):
        r = r._asdict()
        if not r.get("dir"):
            continue
        run = Run.load(r["dir"])
        if run is None:
            continue
        shares = gate_share(run.model(), x)
        for block, share in shares.items():
            rows.append({"label": r.get("label", r["model"]), "seed": r["seed"], "block": block,
                         "gate": run.metrics.get(f"gate:{block}", math.nan), "share": share,
                         "reading": "off" if share < off_below else "in use", "dir": r["dir"]})
    return pd.DataFrame(rows, columns=["label", "seed", "block", "gate", "share", "reading", "dir"])


# -- the learning-rate schedule ---------------------------------------------------------

def lr_schedule(recipe: Recipe, n_train: int):
    """The learning rate :func:`attnlab.train.fit` uses, per epoch (counted from 1), for
    ``recipe`` on ``n_train`` training images: the real steps per epoch
    (``ceil(n_train / batch_size)``, capped by ``max_steps_per_epoch``) fed to
    :func:`attnlab.train.lr_factor`, the one schedule mechanism. Columns: epoch, steps,
    lr_first and lr_last (at the epoch's first and last step), and ``drop`` (the rate at
    the epoch's start is lower than at the end of the epoch before)."""
    import pandas as pd

    steps = math.ceil(n_train / recipe.batch_size)
    if recipe.max_steps_per_epoch:
        steps = min(steps, recipe.max_steps_per_epoch)
    rows, last = [], None
    for e in range(recipe.epochs):
        first = recipe.lr * lr_factor(recipe, e * steps, steps)
        rows.append({"epoch": e + 1, "steps": steps, "lr_first": first,
                     "lr_last": recipe.lr * lr_factor(recipe, (e + 1) * steps - 1, steps),
                     "drop": last is not None and first < last * (1 - 1e-9)})
        last = rows[-1]["lr_last"]
    return pd.DataFrame(rows)


# -- shapes through a model -------------------------------------------------------------

def trace_shapes(model: nn.Module, x: torch.Tensor, modules: Optional[Sequence[str]] = None, depth: int = 1):
    """What modules receive and return for the batch ``x``, in call order: one row per
    module (name, type, input shape, output shape, parameters). ``modules`` names them;
    by default every module less than ``depth`` dots deep (1: the model's children;
    2: also each block of a stage)."""
    import pandas as pd

    named = dict(model.named_modules())
    names = list(modules) if modules is not None else [n for n in named if n and n.count(".") < depth]
    unknown = [n for n in names if n not in named]
    if unknown:
        raise ValueError(f"no module(s) {unknown} in {type(model).__name__}")
    rows = []

    def hook(name):
        def record(m, inputs, out):
            rows.append({"module": name, "type": type(m).__name__,
                         "input": tuple(inputs[0].shape) if inputs and torch.is_tensor(inputs[0]) else None,
                         "output": tuple(out.shape) if torch.is_tensor(out) else None,
                         "params": sum(p.numel() for p in m.parameters())})
        return record

    hooks = [named[n].register_forward_hook(hook(n)) for n in names]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return pd.DataFrame(rows, columns=["module", "type", "input", "output", "params"])


# -- images -----------------------------------------------------------------------------

def one_per_class(imageset, n: int = 8) -> torch.Tensor:
    """Indices of the first image of each class (up to ``n``): varied and reproducible."""
    labels = imageset.labels
    idx = [int((labels == c).nonzero()[0]) for c in range(imageset.num_classes) if (labels == c).any()]
    return torch.tensor(idx[:n], dtype=torch.long)


def images_covering(imageset, pixel: Sequence[int] = (16, 16), n: int = 3) -> torch.Tensor:
    """Indices of ``n`` images whose object mask covers ``pixel`` (the first ``n`` images
    when the set has no masks), so a query there lies on the object."""
    if getattr(imageset, "masks", None) is None:
        return torch.arange(min(n, len(imageset)))
    return imageset.masks[:, pixel[0], pixel[1]].nonzero().flatten()[:n]


def normalise(data, images: torch.Tensor) -> torch.Tensor:
    """``uint8`` images as the models see them: scaled to [0, 1] and normalised with the
    training split's mean and std (``data`` is a :class:`attnlab.data.DataSplits`), by the
    evaluation loader's own arithmetic, so the tensors equal what training evaluated."""
    return data.loader("test").normalize(images.to("cpu"))


# -- released checkpoints -------------------------------------------------------------------

def evaluate_checkpoint(source, dataset: Optional[str] = None, *, eval_subset: Optional[int] = None,
                        root=None, device: str = "auto") -> dict:
    """Evaluate released CNNtention (or akamaster CIFAR-ResNet) weights on ``dataset``'s
    test split twice: with the normalisation the checkpoint states and with the dataset's
    own training statistics, so the cost of the wrong one is visible.

    ``dataset`` defaults to what the weights were trained on: ``mnist`` for a one-channel
    network, ``cifar10`` otherwise. ``source`` is a path or a state dict.
    """
    ck = load_authors_checkpoint(source, verbose=False)
    in_channels = ck.model_kw["in_channels"]
    dataset = dataset or ("mnist" if in_channels == 1 else "cifar10")
    data = load_data(dataset, root, eval_subset=eval_subset)
    if data.in_channels != in_channels:
        raise ValueError(f"the checkpoint takes {in_channels}-channel images but {dataset!r} has "
                         f"{data.in_channels}; pick a dataset with {in_channels} channel(s)")
    dev = resolve_device(device)
    model = ck.model.to(dev)
    stated = evaluate(model, data.loader("test", device=dev, mean=ck.mean, std=ck.std))
    own = evaluate(model, data.loader("test", device=dev))
    return {"model": ck.name, "layout": ck.layout, "dataset": dataset, "n_test": len(data.test),
            "mean": list(ck.mean), "std": list(ck.std), "note": ck.note,
            "test_acc": stated["acc"], "test_acc_dataset_stats": own["acc"],
            "gates": gate_values(model), "renamed": len(ck.renamed)}


__all__ = ["PlannedRun", "Restriction", "StudyPlan", "recipe_for", "commands_for", "plan_study", "find_axis",
           "plan_ablation", "run_study", "run_ablation", "seed_summary", "compare", "verdict",
           "published_table", "differences", "published_points", "gate_share", "gate_report",
           "lr_schedule", "trace_shapes", "one_per_class", "images_covering", "normalise", "evaluate_checkpoint", "estimate_train_seconds", "is_finished"]
