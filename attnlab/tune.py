"""Hyperband search over a model's layer sizes, with Optuna, through the run store.

The Embedding Attention report chose its layer sizes with Keras Tuner's Hyperband. Here
the engine is Optuna: configurations are sampled at random (as Keras Tuner's Hyperband
does; ``sampler="tpe"`` is offered) and :class:`optuna.pruners.HyperbandPruner` stops
weak trials early, at budgets of 1, 3, 9, ... epochs up to ``max_epochs`` (reduction
factor 3). The objective is the best validation accuracy; within a trial, training stops
early when the validation loss has not improved for ``patience`` epochs (Keras's
``EarlyStopping(monitor="val_loss")``).

Two things Keras Tuner users trip on are made visible here:

- **Old results reloaded silently.** Every trial is a run of the run store
  (:func:`attnlab.runs.train_or_load`): a configuration that finished before is loaded,
  never retrained, and each trial prints one line saying ``trained``, ``resumed`` (an
  interrupted run continued from its checkpoint) or ``loaded`` (from the store).
- **Hyperband retraining from scratch.** A trial trains once, epoch after epoch; the
  pruner only decides whether it goes on. An interrupted search resumes from its study
  (an SQLite file beside the runs, ``<runs>/_tune/<study>.sqlite3``): finished and pruned
  trials are not repeated, and the trial that was cut off continues from its checkpoint.

``search(paper, trials, dataset, profile)`` runs it (``python -m attnlab tune PAPER
--trials N``) and writes the best configuration as JSON beside the study. The search at
each profile (:data:`SEARCHES`): the report's space and 30 epochs at ``full``; at
``smoke`` and ``quick`` narrow models, capped widths and 2 or 3 epochs, so the search
fits a CPU.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import optuna

from .papers import embedding_attention as ea
from .papers import get_paper
from .paths import atomic_path, runs_root
from .recipes import get_profile
from .runs import RunConfig, run_path, train_or_load
from .train import NonFiniteLossError, previous_checkpoint

#: a search space: option -> categorical choices (tuple) or an integer grid (range)
Space = dict[str, Union[tuple, range]]

#: the report's Keras Tuner space for the Embedding Attention CNN
REPORT_SPACE: Space = {
    "kernel1": (3, 5), "pool1": (2, 3), "filters2": range(16, 513, 16),
    "kernel2": (3, 5), "pool2": (2, 3), "dense": range(32, 1025, 32),
}


@dataclass(frozen=True)
class Budget:
    """How much of a search one profile runs."""

    max_epochs: int                 # Hyperband's maximum resource per trial
    caps: dict = field(default_factory=dict)      # option -> largest value searched
    model_kw: dict = field(default_factory=dict)  # fixed model options (narrow models on a CPU)
    data_kw: dict = field(default_factory=dict)   # data subsets on a CPU


@dataclass(frozen=True)
class Search:
    """A paper's search: ``model`` with ``recipe``, ``space``, and a :class:`Budget` per profile."""

    paper: str
    model: str
    recipe: str
    space: Space
    budgets: dict
    min_epochs: int = 1
    reduction_factor: int = 3
    patience: int = 5               # early stopping on validation loss within a trial
    split: Callable[[str], dict] = dict  # dataset -> the paper's split options


SEARCHES: dict[str, Search] = {
    "embedding_attention": Search(
        "embedding_attention", "embedding_cnn", "embedding_attention", REPORT_SPACE,
        budgets={
            "smoke": Budget(2, {"filters2": 32, "dense": 64}, {"filters1": ea.SIZES["smoke"]["filters1"]}),
            "quick": Budget(3, {"filters2": 64, "dense": 128}, {"filters1": ea.SIZES["quick"]["filters1"]},
                            {"train_subset": 500, "eval_subset": 250}),
            "full": Budget(30),
        },
        split=ea.split_kw),
}

SAMPLERS = ("random", "tpe")
STATUSES = ("trained", "resumed", "loaded")


def get_search(paper: str) -> Search:
    if paper not in SEARCHES:
        raise ValueError(f"no search defined for paper {paper!r}; papers with one: {', '.join(SEARCHES)}")
    return SEARCHES[paper]


def space_for(search: Search, profile: str) -> Space:
    """``search.space`` with the profile's caps applied (every option keeps >= 1 value)."""
    caps = _budget(search, profile).caps
    out: Space = {}
    for name, values in search.space.items():
        cap = caps.get(name)
        if cap is None:
            out[name] = values
        elif isinstance(values, range):
            out[name] = range(values.start, max(values.start, min(values.stop - 1, cap)) + 1, values.step)
        else:
            out[name] = tuple(v for v in values if v <= cap) or values[:1]
    return out


def _budget(search: Search, profile: str) -> Budget:
    get_profile(profile)
    if profile not in search.budgets:
        raise ValueError(f"search {search.paper!r} has no budget for profile {profile!r}; "
                         f"it has: {', '.join(search.budgets)}")
    return search.budgets[profile]


def _suggest(trial: optuna.Trial, space: Space) -> dict:
    out = {}
    for name, values in space.items():
        if isinstance(values, range):
            out[name] = trial.suggest_int(name, values.start, values[-1], step=values.step)
        else:
            out[name] = trial.suggest_categorical(name, list(values))
    return out


# -- the study ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Study:
    """Where a search lives: its name (a hash of everything that defines it) and files."""

    search: Search
    dataset: str
    profile: str
    seed: int
    model_kw: dict
    data_kw: dict
    recipe_kw: dict
    space: Space
    runs_dir: Optional[str]

    @property
    def definition(self) -> dict:
        return {"paper": self.search.paper, "model": self.search.model, "recipe": self.search.recipe,
                "dataset": self.dataset, "profile": self.profile, "seed": self.seed,
                "model_kw": self.model_kw, "data_kw": self.data_kw, "recipe_kw": self.recipe_kw,
                "space": {k: list(v) for k, v in self.space.items()},
                "hyperband": [self.search.min_epochs, self.recipe_kw["epochs"], self.search.reduction_factor]}

    @property
    def name(self) -> str:
        blob = json.dumps(self.definition, sort_keys=True, default=str)
        return (f"{self.search.paper}-{self.dataset}-{self.profile}-s{self.seed}-"
                f"{hashlib.sha256(blob.encode()).hexdigest()[:8]}")

    @property
    def folder(self) -> Path:
        return Path(self.runs_dir or runs_root()) / "_tune"

    @property
    def storage_path(self) -> Path:
        return self.folder / f"{self.name}.sqlite3"

    @property
    def best_path(self) -> Path:
        return self.folder / f"{self.name}.best.json"

    def config(self, params: dict) -> RunConfig:
        return RunConfig(self.search.model, self.dataset, self.search.recipe, self.profile, self.seed,
                         model_kw={**self.model_kw, **params}, recipe_kw=dict(self.recipe_kw),
                         data_kw=dict(self.data_kw))


def make_study(paper: str = "embedding_attention", dataset: str = "shapes", profile: str = "quick",
               seed: int = 0, runs_dir: str | Path | None = None, model_kw: Optional[dict] = None,
               max_epochs: Optional[int] = None) -> Study:
    """The study for ``paper``'s search on ``dataset`` at ``profile``: the profile's budget,
    ``model_kw`` on top of its fixed model options, ``max_epochs`` instead of its budget's."""
    s = get_search(paper)
    b = _budget(s, profile)
    epochs = int(max_epochs or b.max_epochs)
    if epochs < s.min_epochs:
        raise ValueError(f"max_epochs must be >= {s.min_epochs}, got {epochs}")
    recipe_kw = {"epochs": epochs, "patience": s.patience, "monitor": "val_loss"}
    return Study(s, dataset, profile, int(seed), {**b.model_kw, **(model_kw or {})},
                 {**s.split(dataset), **b.data_kw}, recipe_kw, space_for(s, profile),
                 None if runs_dir is None else str(runs_dir))


def _optuna_study(study: Study, sampler: str) -> optuna.Study:
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    study.folder.mkdir(parents=True, exist_ok=True)
    s = study.search
    pruner = optuna.pruners.HyperbandPruner(min_resource=s.min_epochs, max_resource=study.recipe_kw["epochs"],
                                            reduction_factor=s.reduction_factor)
    storage = f"sqlite:///{study.storage_path}"
    ost = optuna.create_study(study_name=study.name, storage=storage, load_if_exists=True,
                              direction="maximize", pruner=pruner)
    # a fresh sampler seed per session, so a resumed search draws new configurations
    # instead of replaying the first session's
    seed = study.seed * 1_000_003 + len(ost.trials)
    ost.sampler = (optuna.samplers.RandomSampler(seed=seed) if sampler == "random"
                   else optuna.samplers.TPESampler(seed=seed))
    return ost


def _done(t: optuna.trial.FrozenTrial) -> bool:
    return t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def _requeue_interrupted(ost: optuna.Study) -> int:
    """Trials cut off by an interruption (failed, or left running by a killed process) are
    queued again with their configuration, so their runs resume; diverged ones are not."""
    trials = ost.get_trials(deepcopy=False)
    settled = {json.dumps(t.params, sort_keys=True) for t in trials
               if _done(t) or t.state == optuna.trial.TrialState.WAITING}
    queued = 0
    for t in trials:
        if t.state == optuna.trial.TrialState.RUNNING:  # one search per study at a time
            ost.tell(t.number, state=optuna.trial.TrialState.FAIL)
        elif t.state != optuna.trial.TrialState.FAIL:
            continue
        key = json.dumps(t.params, sort_keys=True)
        if t.params and t.user_attrs.get("status") != "diverged" and key not in settled:
            ost.enqueue_trial(t.params, user_attrs={"requeued_from": t.number})
            settled.add(key)
            queued += 1
    return queued


def _objective(study: Study, on_trial: Callable[[dict], None], callbacks: Sequence[Callable],
               device: str, progress: bool):
    def objective(trial: optuna.Trial) -> float:
        params = _suggest(trial, study.space)
        cfg = study.config(params)
        run_dir = run_path(cfg, study.runs_dir)
        ckpt = run_dir / "checkpoint.pt"
        resumable = ckpt.exists() or previous_checkpoint(ckpt).exists()
        trial.set_user_attr("run_dir", str(run_dir))
        reported, pruned = set(), []

        def report(h) -> None:
            for row in h.rows:
                if row["epoch"] not in reported:
                    trial.report(row["val_acc"], row["epoch"])
                    reported.add(row["epoch"])
            # a run that ends this epoch anyway (last epoch, early stop) is kept, not pruned
            if len(h.rows) < study.recipe_kw["epochs"] and not h.stopped_early and trial.should_prune():
                pruned.append(len(h.rows))
                raise KeyboardInterrupt("pruned by Hyperband")  # stops fit like Ctrl-C

        t0 = time.perf_counter()
        try:
            # fit's "Interrupted: ..." note would misreport a pruned trial; the trial line says it
            with contextlib.redirect_stdout(io.StringIO()):
                run = train_or_load(cfg, study.runs_dir, progress=progress, device=device, live=False,
                                    callbacks=(*callbacks, report))
        except NonFiniteLossError:
            trial.set_user_attr("status", "diverged")
            on_trial(_line(trial.number, "diverged", params, None, None, time.perf_counter() - t0))
            raise
        status = "loaded" if run.finished and run.from_store else "resumed" if resumable else "trained"
        trial.set_user_attr("status", status)
        rows = run.history.to_dict("records") if len(run.history) else []
        if pruned:
            for p in (ckpt, previous_checkpoint(ckpt)):  # a pruned trial never continues
                p.unlink(missing_ok=True)
            trial.set_user_attr("epochs", pruned[0])
            on_trial(_line(trial.number, status, params, max(r["val_acc"] for r in rows), pruned[0],
                           time.perf_counter() - t0, pruned=True))
            raise optuna.TrialPruned(f"pruned after epoch {pruned[0]}")
        if not run.finished:
            raise KeyboardInterrupt(f"search interrupted during trial {trial.number} ({run_dir}); "
                                    "run it again to resume")
        for row in rows:  # a loaded run reports its whole curve at once
            if row["epoch"] not in reported:
                trial.report(row["val_acc"], int(row["epoch"]))
        trial.set_user_attr("epochs", int(run.metrics["epochs"]))
        trial.set_user_attr("test_acc", float(run.metrics["test_acc"]))
        on_trial(_line(trial.number, status, params, run.metrics["val_acc"], run.metrics["epochs"],
                       time.perf_counter() - t0))
        return float(run.metrics["val_acc"])

    return objective


def _line(number: int, status: str, params: dict, val_acc, epochs, seconds: float, pruned: bool = False) -> dict:
    return {"trial": number, "status": status, "params": params, "val_acc": val_acc, "epochs": epochs,
            "seconds": seconds, "pruned": pruned}


def format_line(d: dict) -> str:
    """One trial as a line: ``trial   3  trained   kernel1=3 ... -> val acc 0.412 (3 epoch(s), 9.1 s)``
    (trials numbered as Optuna numbers them, from 0)."""
    params = " ".join(f"{k}={v}" for k, v in d["params"].items())
    n = d["trial"]
    if d["status"] == "diverged":
        return f"trial {n:>3}  diverged  {params}"
    end = f"pruned after epoch {d['epochs']}" if d["pruned"] else f"{d['epochs']} epoch(s)"
    return (f"trial {n:>3}  {d['status']:<8}  {params} -> val acc {d['val_acc']:.3f} ({end}, "
            f"{d['seconds']:.1f} s)")


# -- running it ---------------------------------------------------------------------------

@dataclass
class SearchResult:
    study: Study
    trials: "object"   # DataFrame, one row per trial
    best: Optional[dict]
    trained_here: int
    best_path: Optional[Path]

    def curves(self) -> dict[int, dict[int, float]]:
        """Validation accuracy per epoch of every trial: ``{trial: {epoch: val_acc}}``."""
        return {int(r.trial): dict(r.curve) for r in self.trials.itertuples()}


def trials_frame(ost: optuna.Study):
    """One row per trial: number, state, status, parameters, epochs, val_acc, curve, run_dir."""
    import pandas as pd

    rows = []
    for t in ost.get_trials(deepcopy=False):
        curve = sorted(t.intermediate_values.items())
        rows.append({"trial": t.number, "state": t.state.name.lower(), "status": t.user_attrs.get("status", ""),
                     **t.params, "epochs": t.user_attrs.get("epochs", len(curve) or None),
                     "val_acc": t.value if t.value is not None else (max(v for _, v in curve) if curve else math.nan),
                     "test_acc": t.user_attrs.get("test_acc", math.nan), "curve": curve,
                     "run_dir": t.user_attrs.get("run_dir", "")})
    return pd.DataFrame(rows)


def best_config(study: Study, ost: optuna.Study) -> Optional[dict]:
    """The best finished trial as a configuration to train (``None`` before any finishes)."""
    done = [t for t in ost.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        return None
    t = max(done, key=lambda t: t.value)
    kw = {**study.model_kw, **t.params}
    # the chosen configuration under the paper's own recipe, with the study's data
    cmd = (f"python -m attnlab train --model {study.search.model} --recipe {study.search.recipe} "
           f"--dataset {study.dataset} --profile {study.profile} "
           f"--model-kw {shlex.quote(json.dumps(kw, sort_keys=True))}")
    if study.data_kw:
        cmd += f" --data-kw {shlex.quote(json.dumps(study.data_kw, sort_keys=True))}"
    return {"paper": study.search.paper, "study": study.name, "dataset": study.dataset, "profile": study.profile,
            "model": study.search.model, "params": dict(t.params), "model_kw": kw, "val_acc": t.value,
            "epochs": t.user_attrs.get("epochs"), "trial": t.number, "run_dir": t.user_attrs.get("run_dir"),
            "train_command": cmd}


def search(paper: str = "embedding_attention", trials: int = 10, dataset: str = "shapes",
           profile: str = "quick", *, seed: int = 0, runs_dir: str | Path | None = None,
           model_kw: Optional[dict] = None, max_epochs: Optional[int] = None, sampler: str = "random",
           device: str = "auto", progress: bool = False, verbose: bool = True,
           callbacks: Sequence[Callable] = ()) -> SearchResult:
    """Run ``paper``'s Hyperband search until the study holds ``trials`` finished (complete
    or pruned) trials; resume it if it exists. Prints one line per trial (trained /
    resumed / loaded) and writes the best configuration to ``<study>.best.json``.

    ``callbacks`` are called with each trial's history after every epoch (raising
    ``KeyboardInterrupt`` in one interrupts the search as Ctrl-C does; run it again to
    resume). An interruption propagates as ``KeyboardInterrupt`` after the study is saved.
    """
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ValueError(f"trials must be an integer >= 1, got {trials!r}")
    get_paper(paper)
    study = make_study(paper, dataset, profile, seed, runs_dir, model_kw, max_epochs)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ost = _optuna_study(study, sampler)
    requeued = _requeue_interrupted(ost)
    finished = sum(_done(t) for t in ost.get_trials(deepcopy=False))
    todo = max(0, trials - finished)
    say = print if verbose else (lambda *a, **k: None)
    say(f"study {study.name} ({study.storage_path}): {finished} trial(s) finished before"
        + (f", {requeued} interrupted one(s) queued to resume" if requeued else "")
        + f"; {todo} to run (max {study.recipe_kw['epochs']} epochs, reduction factor "
          f"{study.search.reduction_factor}, early stopping on val loss after {study.search.patience})")
    lines: list[dict] = []

    def on_trial(d: dict) -> None:
        lines.append(d)
        say(format_line(d), flush=True)

    if todo:
        try:
            ost.optimize(_objective(study, on_trial, callbacks, device, progress), n_trials=todo,
                         catch=(NonFiniteLossError,), gc_after_trial=False)
        except KeyboardInterrupt:
            say("search interrupted: run the same call again to resume (finished trials are kept)")
            raise
    best = best_config(study, ost)
    if best is not None:
        best["trials_finished"] = sum(_done(t) for t in ost.get_trials(deepcopy=False))
        with atomic_path(study.best_path) as tmp:
            tmp.write_text(json.dumps(best, indent=2))
        say(f"best: trial {best['trial']}, val acc {best['val_acc']:.3f}, {best['params']} "
            f"-> {study.best_path}")
    return SearchResult(study, trials_frame(ost), best, sum(d["status"] != "loaded" for d in lines),
                        study.best_path if best is not None else None)


def plot_trials(result: SearchResult, ax=None, title: str = "Hyperband trials by budget"):
    """Validation accuracy against epochs (the budget) for every trial: pruned trials end
    at a rung, the ones that went on reach the larger budgets; the best is marked."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.2))
    frame = result.trials
    best = result.best["trial"] if result.best else None
    for r in frame.itertuples():
        if not r.curve:
            continue
        x, y = zip(*r.curve)
        style = dict(color="tab:red", lw=2, zorder=3) if r.trial == best else \
            dict(color="tab:grey" if r.state == "pruned" else "tab:blue", lw=1, alpha=0.7)
        ax.plot(x, y, marker="o", ms=3, **style)
    ax.set_xlabel("epochs (budget)")
    ax.set_ylabel("validation accuracy")
    ax.set_title(title)
    ax.plot([], [], color="tab:grey", label="pruned")
    ax.plot([], [], color="tab:blue", label="completed")
    ax.plot([], [], color="tab:red", lw=2, label="best")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return ax


__all__ = ["REPORT_SPACE", "Budget", "Search", "SEARCHES", "get_search", "space_for", "Study", "make_study",
           "search", "SearchResult", "trials_frame", "best_config", "format_line", "plot_trials"]
