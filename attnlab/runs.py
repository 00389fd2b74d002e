"""The run store: every training run is a folder named by a hash of its config.

``runs/<model>-<dataset>-<profile>-s<seed>-<hash>/`` holds ``config.json``,
``env.json`` (versions, device, precision), ``history.csv`` (rewritten each epoch),
``checkpoint.pt`` while training, and, once finished, ``model.pt`` (a state_dict) and
``metrics.json``. ``metrics.json`` is written last and atomically, so its presence is
what "finished" means: an interrupted run is resumed, never read as a result.

Damage is detected, never used: ``digests.json`` records the SHA-256 of every file the
store writes, checked on load (checkpoints carry their own CRC-32s). A damaged result
(``metrics.json``, ``model.pt``) is set aside as ``<file>.damaged`` and the run trained
again; a damaged checkpoint is set aside and the run resumes from the epoch before (or
from scratch); a damaged log or config beside an intact result keeps the result, with a
warning naming the file. One process at a time trains a run: ``<run>.lock`` beside the
folder (:func:`run_lock`); another process asking for the same run waits, then loads it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import numbers
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from .version import __version__
from .data import check_data_options, dataset_info, load_data
from .hardware import PRECISIONS, environment
from .integrity import MANIFEST, DamagedFileError, Manifest, verify_torch_file
from .locks import FileLock, LockHeldError
from .papers import create_model, list_models, resolve_model
from .paths import clean_stale_temps, runs_root
from .recipes import RECIPES, get_profile, get_recipe
from .train import fit, previous_checkpoint, seed_everything


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run's result (and so its cache key)."""

    model: str
    dataset: str = "shapes"
    recipe: str = "he2016"
    profile: str = "quick"
    seed: int = 0
    model_kw: dict = field(default_factory=dict)
    recipe_kw: dict = field(default_factory=dict)   # overrides of recipe fields
    data_kw: dict = field(default_factory=dict)     # val_size, split_seed, path, augment
    precision: str = "auto"

    def __post_init__(self):
        _check_config(self)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["version"] = __version__
        return d

    @property
    def key(self) -> str:
        # Hash what determines the result, resolved: the model's complete settings, nested
        # block options included (so {} and the defaults spelled out, flat or in attn_kw,
        # share a run) and the recipe as scaled by the profile (so editing a recipe's
        # definition, or spelling out its values, is seen for what it is).
        d = self.to_dict()
        d["model_kw"] = resolve_model(self.model, **self.model_kw)
        d["recipe"] = get_recipe(self.recipe, self.profile, self.dataset, **self.recipe_kw).to_dict()
        del d["recipe_kw"]
        blob = json.dumps(d, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:10]

    @property
    def dirname(self) -> str:
        return f"{self.model}-{self.dataset}-{self.profile}-s{self.seed}-{self.key}"

    def replace(self, **kw) -> "RunConfig":
        return dataclasses.replace(self, **kw)


#: load_data's options a config may set in ``data_kw``
DATA_OPTIONS = ("val_size", "split_seed", "train_subset", "eval_subset", "path", "augment")
SEED_RANGE = (0, 2**63)


def check_seed(seed, what: str = "seed") -> int:
    """``seed`` as an int if it is an integer torch can seed with, else a ValueError saying what is."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not SEED_RANGE[0] <= seed < SEED_RANGE[1]:
        raise ValueError(f"{what} must be an integer in [0, 2**63), got {seed!r} ({type(seed).__name__})")
    return int(seed)


def check_seeds(seeds) -> list[int]:
    """A list of seeds (as notebooks' ``SEEDS`` and ablations take them), checked: a
    non-empty list (or other iterable) of distinct integers in [0, 2**63)."""
    if isinstance(seeds, (str, bytes, numbers.Number)) or not isinstance(seeds, Iterable):
        raise ValueError(f"seeds must be a list of integers like [0] or [0, 1, 2], got {seeds!r} "
                         f"({type(seeds).__name__})")
    out = [check_seed(s, "each seed") for s in seeds]
    if not out:
        raise ValueError("seeds is empty; give at least one seed, e.g. [0]")
    if len(set(out)) != len(out):
        raise ValueError(f"seeds must be distinct, got {list(seeds)}")
    return out


def _check_config(c: "RunConfig") -> None:
    """Types, names and ranges of a config, where it is built: the message says what is
    allowed. (Model options are checked against the blocks' signatures by the key.)"""
    for name in ("model", "dataset", "recipe", "profile", "precision"):
        if not isinstance(getattr(c, name), str):
            raise ValueError(f"RunConfig {name} must be a name (str), got {getattr(c, name)!r}")
    if c.model not in list_models():
        raise ValueError(f"unknown model {c.model!r}; available: {', '.join(list_models())}")
    dataset_info(c.dataset)
    get_profile(c.profile)
    if c.recipe not in RECIPES:
        raise ValueError(f"unknown recipe {c.recipe!r}; available: {', '.join(RECIPES)}")
    if c.precision not in PRECISIONS:
        raise ValueError(f"unknown precision {c.precision!r}; allowed: {', '.join(PRECISIONS)}")
    check_seed(c.seed)
    for name in ("model_kw", "recipe_kw", "data_kw"):
        if not isinstance(getattr(c, name), dict):
            raise ValueError(f"RunConfig {name} must be a dict, got {getattr(c, name)!r}")
    unknown = sorted(set(c.data_kw) - set(DATA_OPTIONS))
    if unknown:
        raise ValueError(f"unknown data option(s) {unknown}; allowed: {', '.join(DATA_OPTIONS)}")
    check_data_options(c.dataset, **c.data_kw)


class RunStoreError(OSError):
    """The run store could not be written (read-only, full, ...); says what to do."""

    def __str__(self) -> str:
        return self.args[1] if len(self.args) > 1 else super().__str__()


def _store_error(exc: OSError, run_dir: Path) -> RunStoreError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        hint = "free some space (an interrupted run resumes from its last checkpoint)"
    else:
        hint = "set ATTNLAB_RUNS to a writable folder"
    return RunStoreError(exc.errno, f"cannot write the run store at {run_dir} "
                                    f"({exc.strerror or exc}: {exc.filename or run_dir}); {hint}")


def _write_json(path: Path, obj) -> None:
    with Manifest(path.parent).write(path.name) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=str))


def _write_csv(path: Path, frame) -> None:
    with Manifest(path.parent).write(path.name) as tmp:
        frame.to_csv(tmp, index=False)


def _write_model(path: Path, model) -> None:
    with Manifest(path.parent).write(path.name) as tmp, open(tmp, "wb") as f:
        torch.save({k: v.cpu() for k, v in model.state_dict().items()}, f)


@dataclass
class Run:
    config: RunConfig
    dir: Path
    metrics: dict
    history: "object"  # pandas.DataFrame
    #: loaded from the store rather than trained by this call
    from_store: bool = False
    #: damaged files beside an intact result, {file: what is wrong} (the result is used, they are not)
    damaged: dict = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return bool(self.metrics)

    def model(self, device: str = "cpu"):
        """The trained model (weights of the selected epoch), in eval mode."""
        data_info = self.metrics
        m = create_model(self.config.model, num_classes=data_info["num_classes"],
                         in_channels=data_info["in_channels"], **self.config.model_kw)
        verify_torch_file(self.dir / "model.pt")
        m.load_state_dict(torch.load(self.dir / "model.pt", map_location=device, weights_only=True))
        return m.to(device).eval()

    @classmethod
    def load(cls, run_dir: Path, config: Optional[RunConfig] = None) -> Optional["Run"]:
        """The finished run in ``run_dir``, or None when it is unfinished, its result is
        damaged, or (without ``config``) its config cannot be read. Damage is reported as
        a warning naming the files; nothing is changed on disk."""
        state = inspect_run(run_dir, config)
        if state.damaged:
            warnings.warn(state.report(), RunDamageWarning, stacklevel=2)
        return state.run


class RunDamageWarning(UserWarning):
    """A file in a run folder is damaged; the message says what happens to the run."""


#: metrics every consumer reads, with the test a sound value passes
_METRIC_CHECKS = {
    "test_acc": lambda v: 0 <= v <= 1, "val_acc": lambda v: 0 <= v <= 1,
    "epochs": lambda v: isinstance(v, int) and v >= 1, "params": lambda v: isinstance(v, int) and v >= 1,
    "num_classes": lambda v: isinstance(v, int) and v >= 2, "in_channels": lambda v: isinstance(v, int) and v >= 1,
    "wall_s": lambda v: v >= 0,
}
_RESULT_FILES = ("metrics.json", "model.pt")   # damaged: the run is trained again
_LOG_FILES = ("history.csv", "env.json", "config.json", MANIFEST)  # damaged: reported, result kept


def _parse_metrics(path: Path) -> dict:
    m = json.loads(path.read_text())
    if not isinstance(m, dict) or not m:
        raise ValueError(f"holds {json.dumps(m)[:20]}, not the run's metrics")
    for key, ok in _METRIC_CHECKS.items():
        v = m.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not ok(v):
            raise ValueError(f"metric {key!r} is {'missing' if key not in m else repr(v)}")
    return m


def _parse_config(path: Path) -> RunConfig:
    cfg = json.loads(path.read_text())
    if not isinstance(cfg, dict):
        raise ValueError("not a config object")
    cfg.pop("version", None)
    unknown = sorted(set(cfg) - {f.name for f in dataclasses.fields(RunConfig)})
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown}")
    return RunConfig(**cfg)


def _parse_history(path: Path, epochs: Optional[int]):
    import pandas as pd

    frame = pd.read_csv(path)
    if "epoch" not in frame or frame[["epoch"]].isna().any().any() or frame.iloc[:, :3].isna().any().any():
        raise ValueError("rows are incomplete (cut short?)")
    if epochs is not None and len(frame) != epochs:
        raise ValueError(f"{len(frame)} rows for {epochs} epochs")
    return frame


@dataclass
class RunState:
    """What :func:`inspect_run` found in a run folder."""

    dir: Path
    run: Optional[Run]           # the usable finished run, or None
    damaged: dict                # {file: what is wrong}
    finished: bool               # metrics.json exists (intact or not)

    @property
    def result_damaged(self) -> bool:
        return any(f in self.damaged for f in _RESULT_FILES)

    def report(self, action: Optional[str] = None) -> str:
        what = "; ".join(f"{f} {why}" for f, why in self.damaged.items())
        if action is None:
            if self.result_damaged:
                action = "its result is not used: the run will be trained again"
            elif self.run is None:
                action = "it is skipped (its config is unknown; train_or_load with the config repairs it)"
            else:
                action = "the result (metrics.json, model.pt) is intact and used; the damaged files are not"
        return f"run {self.dir}: {what}; {action}"


def inspect_run(run_dir: str | Path, config: Optional[RunConfig] = None) -> RunState:
    """Check every file of a finished run against ``digests.json`` and its own format,
    changing nothing. ``config`` (when known) stands in for a damaged ``config.json``."""
    run_dir = Path(run_dir)
    if not (run_dir / "metrics.json").exists():
        return RunState(run_dir, None, {}, False)
    damaged: dict[str, str] = {}
    manifest = Manifest(run_dir)
    try:
        entries = manifest.entries()
    except DamagedFileError as exc:
        damaged[MANIFEST], entries = exc.reason, None

    def read(name: str, parse):
        try:
            manifest.check(name, entries)
            return parse(run_dir / name)
        except FileNotFoundError:
            damaged[name] = "is missing"
        except DamagedFileError as exc:
            damaged[name] = f"is damaged ({exc.reason})"
        except Exception as exc:  # noqa: BLE001 - any parse failure means: do not use it
            damaged[name] = f"is unreadable ({type(exc).__name__}: {exc})"
        return None

    metrics = read("metrics.json", _parse_metrics)
    read("model.pt", verify_torch_file)
    stored = read("config.json", _parse_config)
    read("env.json", lambda p: json.loads(p.read_text()))
    history = read("history.csv", lambda p: _parse_history(p, metrics and metrics["epochs"]))
    # two spellings of one network share a key (and a folder): compare what they resolve to
    if config is not None and stored is not None and stored.key != config.key:
        damaged["config.json"] = "describes another config"
    cfg = config or stored
    if any(f in damaged for f in _RESULT_FILES) or cfg is None:
        return RunState(run_dir, None, damaged, True)
    if history is None:
        import pandas as pd
        history = pd.DataFrame()
    return RunState(run_dir, Run(cfg, run_dir, metrics, history, from_store=True, damaged=dict(damaged)),
                    damaged, True)


def _set_aside(path: Path) -> Path:
    """Rename a damaged file to ``<name>.damaged`` (kept to look at, never read again)."""
    aside = path.with_name(path.name + ".damaged")
    os.replace(path, aside)
    Manifest(path.parent).forget(path.name)
    return aside


def run_lock(run_dir: str | Path, timeout: Optional[float] = None, poll: float = 0.5) -> FileLock:
    """The lock of one run: ``<run_dir>.lock`` beside the folder, holding pid, host and
    time of the process that trains it. ``with run_lock(d): ...`` waits while a live
    process holds it (``timeout`` seconds at most, None for as long as it takes, then
    :class:`attnlab.locks.LockHeldError` names the holder) and breaks the lock of a
    process that died. Whoever holds it is the only writer of the folder."""
    run_dir = Path(run_dir)
    return FileLock(run_dir.with_name(run_dir.name + ".lock"), timeout=timeout, poll=poll)


def run_path(config: RunConfig, runs_dir: str | Path | None = None) -> Path:
    """The folder of ``config``'s run in the store (``runs_dir`` or :func:`runs_root`)."""
    return Path(runs_dir or runs_root()) / config.dirname


def is_finished(config: RunConfig | str | Path, runs_dir: str | Path | None = None) -> bool:
    """Whether the store holds ``config``'s finished, readable run (``config`` may also be a
    run folder). The one definition of "finished": :meth:`Run.load` reads it, which is also
    what :func:`train_or_load` loads instead of training."""
    if isinstance(config, RunConfig):  # the config stands in for a damaged config.json, as in train_or_load
        return Run.load(run_path(config, runs_dir), config) is not None
    return Run.load(Path(config)) is not None


def train_or_load(config: RunConfig, runs_dir: str | Path | None = None, *, use_cache: bool = True,
                  progress: bool = True, device: str = "auto", live: Optional[bool] = None,
                  lock_timeout: Optional[float] = None, callbacks: tuple = ()) -> Run:
    """Return the finished run for ``config`` from the store, training it first if needed.

    An unfinished run (interrupted or killed) resumes from its checkpoint.
    ``use_cache=False`` retrains from scratch and overwrites the stored result.
    Training holds the run's lock (:func:`run_lock`): a second process asking for the
    same run waits (``lock_timeout`` seconds at most) and then loads what the first trained.
    ``run.from_store`` tells a loaded run from one trained by this call.
    ``callbacks`` go to :func:`fit` (called with the history after each epoch; raising
    ``KeyboardInterrupt`` in one stops training like Ctrl-C, leaving the run resumable).
    """
    run_dir = run_path(config, runs_dir)
    if use_cache:  # the common case reads only, so a read-only store still serves its runs
        state = inspect_run(run_dir, config)
        if state.run is not None:
            if state.damaged:
                warnings.warn(state.report(), RunDamageWarning, stacklevel=2)
                _repair_config(state, config)
            return state.run
    lock = run_lock(run_dir, timeout=lock_timeout)
    with _writing(run_dir):
        lock.acquire()
    try:
        return _train_locked(config, run_dir, use_cache, progress, device, live, callbacks)
    finally:
        lock.release()


@contextlib.contextmanager
def _writing(run_dir: Path):
    """Turn a failed write into one :class:`RunStoreError` that names the folder and the fix."""
    try:
        yield
    except (RunStoreError, LockHeldError):
        raise
    except OSError as exc:
        raise _store_error(exc, run_dir) from exc


def _repair_config(state: RunState, config: RunConfig) -> None:
    """Rewrite a damaged config.json from the config that found the run (its folder name is
    the config's hash), if the run is not locked and the store is writable."""
    if "config.json" not in state.damaged:
        return
    try:
        with run_lock(state.dir, timeout=0):
            _write_json(state.dir / "config.json", config.to_dict())
    except (LockHeldError, OSError):
        pass


def _train_locked(config: RunConfig, run_dir: Path, use_cache: bool, progress: bool, device: str,
                  live: Optional[bool], callbacks: tuple = ()) -> Run:
    ckpt = run_dir / "checkpoint.pt"
    if use_cache:
        state = inspect_run(run_dir, config)
        if state.run is not None:  # another process finished it while we waited
            return state.run
    with _writing(run_dir):
        clean_stale_temps(run_dir, any_writer=True)  # we hold the lock: any temp file is a dead writer's
        if use_cache and state.damaged:
            for name in state.damaged:
                if name in _RESULT_FILES and (run_dir / name).exists():
                    _set_aside(run_dir / name)
            warnings.warn(state.report("its result is not used: damaged files set aside as *.damaged; "
                                       "training it again"), RunDamageWarning, stacklevel=3)
    # data, recipe and model first: a bad option fails before anything is written
    # (the config's own data options override the profile's subsets)
    data = load_data(config.dataset, **{**get_profile(config.profile).data_kwargs(config.dataset),
                                        **config.data_kw})
    recipe = get_recipe(config.recipe, config.profile, config.dataset, **config.recipe_kw)
    seed_everything(config.seed)  # the initial weights belong to the config too
    model = create_model(config.model, num_classes=data.num_classes, in_channels=data.in_channels,
                         **config.model_kw)
    with _writing(run_dir):
        run_dir.mkdir(parents=True, exist_ok=True)
        if not use_cache:  # the old result must not outlive a retrain that stops half-way
            for stale in (ckpt, previous_checkpoint(ckpt), run_dir / "metrics.json", run_dir / "model.pt"):
                stale.unlink(missing_ok=True)
        _write_json(run_dir / "config.json", config.to_dict())
        _write_json(run_dir / "env.json", environment(device, config.precision))
        _recover_checkpoint(ckpt)
        history = fit(model, data, recipe, device=device, precision=config.precision, seed=config.seed,
                      checkpoint=ckpt, progress=progress, live=live,
                      callbacks=[lambda h: _write_csv(run_dir / "history.csv", h.to_frame()), *callbacks])
        if history.interrupted:
            return Run(config, run_dir, {}, history.to_frame())
        _write_csv(run_dir / "history.csv", history.to_frame())
        _write_model(run_dir / "model.pt", model)
        _write_json(run_dir / "metrics.json", _metrics(history, data, recipe, model))
        ckpt.unlink(missing_ok=True)
        previous_checkpoint(ckpt).unlink(missing_ok=True)
    state = inspect_run(run_dir, config)
    if state.run is None:
        raise RunStoreError(errno.EIO, state.report("the files just written do not read back"))
    return dataclasses.replace(state.run, from_store=False)


def _recover_checkpoint(ckpt: Path) -> None:
    """Set aside a damaged checkpoint (and a damaged previous one) before resuming, saying
    where training will resume from."""
    damaged = []
    for path in (ckpt, previous_checkpoint(ckpt)):
        if path.exists():
            try:
                verify_torch_file(path)
            except DamagedFileError as exc:
                damaged.append((path, exc.reason, _set_aside(path)))
    if damaged:
        good = next((p for p in (ckpt, previous_checkpoint(ckpt)) if p.exists()), None)
        resume = ("training restarts from epoch 1" if good is None else f"resuming from {good.name}"
                  + (" (the epoch before)" if good != ckpt else ""))
        for path, reason, aside in damaged:
            warnings.warn(f"checkpoint {path} is damaged ({reason}); set aside as {aside.name}, "
                          f"never used; {resume}", RunDamageWarning, stacklevel=4)


def _metrics(history, data, recipe, model) -> dict:
    frame = history.to_frame()
    return {
        "test_acc": history.test["acc"], "test_top5": history.test["top5"],
        "test_loss": history.test["loss"], "test_per_class": history.test["per_class"],
        "test_confusion": history.test["confusion"],
        "test_acc_flip": history.test_flip.get("acc"),  # None: trained without flips
        "val_acc": history.best_val_acc, "best_epoch": history.best_epoch,
        "epochs": history.epochs, "stopped_early": history.stopped_early,
        "wall_s": history.elapsed_s, "train_images_per_s": float(frame["images_per_s"].median()),
        "params": sum(p.numel() for p in model.parameters()),
        "num_classes": data.num_classes, "in_channels": data.in_channels, "classes": data.classes,
        "n_train": len(data.train), "n_val": len(data.val), "n_test": len(data.test),
        "recipe": recipe.to_dict(), "device": history.device, "precision": history.precision,
        "memory_format": history.memory_format,
        **{k: v for k, v in frame.iloc[-1].items() if str(k).startswith("gate:")},
    }


def list_runs(runs_dir: str | Path | None = None):
    """All finished runs as one DataFrame (config columns, then headline metrics)."""
    import pandas as pd

    rows = []
    for d in sorted(Path(runs_dir or runs_root()).glob("*/metrics.json")):
        try:  # one bad folder is reported and skipped; it never breaks the listing
            run = Run.load(d.parent)
        except Exception as exc:  # noqa: BLE001
            warnings.warn(f"run {d.parent}: unreadable ({type(exc).__name__}: {exc}); skipped", RunDamageWarning)
            continue
        if run is None:
            continue
        c = run.config
        rows.append({"model": c.model, "dataset": c.dataset, "recipe": c.recipe, "profile": c.profile,
                     "seed": c.seed, "model_kw": json.dumps(c.model_kw, sort_keys=True),
                     "test_acc": run.metrics["test_acc"], "val_acc": run.metrics["val_acc"],
                     "epochs": run.metrics["epochs"], "params": run.metrics["params"],
                     "wall_s": run.metrics["wall_s"], "device": run.metrics["device"],
                     "dir": str(run.dir)})
    return pd.DataFrame(rows)
