"""The run store: every training run is a folder named by a hash of its config.

``runs/<model>-<dataset>-<profile>-s<seed>-<hash>/`` holds ``config.json``,
``env.json`` (versions, device, precision), ``history.csv`` (rewritten each epoch),
``checkpoint.pt`` while training, and, once finished, ``model.pt`` (a state_dict) and
``metrics.json``. ``metrics.json`` is written last and atomically, so its presence is
what "finished" means: an interrupted run is resumed, never read as a result.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from .version import __version__
from .data import load_data
from .hardware import environment
from .papers import create_model, resolve_model
from .paths import atomic_path, runs_root
from .recipes import get_profile, get_recipe
from .train import fit, seed_everything


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


def _write_json(path: Path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=str))


def _write_csv(path: Path, frame) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


@dataclass
class Run:
    config: RunConfig
    dir: Path
    metrics: dict
    history: "object"  # pandas.DataFrame

    @property
    def finished(self) -> bool:
        return bool(self.metrics)

    def model(self, device: str = "cpu"):
        """The trained model (weights of the selected epoch), in eval mode."""
        data_info = self.metrics
        m = create_model(self.config.model, num_classes=data_info["num_classes"],
                         in_channels=data_info["in_channels"], **self.config.model_kw)
        m.load_state_dict(torch.load(self.dir / "model.pt", map_location=device, weights_only=True))
        return m.to(device).eval()

    @classmethod
    def load(cls, run_dir: Path) -> Optional["Run"]:
        """The finished run in ``run_dir``, or None when it is unfinished or unreadable."""
        import pandas as pd

        run_dir = Path(run_dir)
        try:
            metrics = json.loads((run_dir / "metrics.json").read_text())
            cfg = json.loads((run_dir / "config.json").read_text())
            cfg.pop("version", None)
            history = pd.read_csv(run_dir / "history.csv")
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError, pd.errors.ParserError) as exc:
            warnings.warn(f"run {run_dir} is unreadable ({exc}); it will be trained again")
            return None
        return cls(RunConfig(**cfg), run_dir, metrics, history)


def train_or_load(config: RunConfig, runs_dir: str | Path | None = None, *, use_cache: bool = True,
                  progress: bool = True, device: str = "auto", live: Optional[bool] = None) -> Run:
    """Return the finished run for ``config`` from the store, training it first if needed.

    An unfinished run (interrupted or killed) resumes from its checkpoint.
    ``use_cache=False`` retrains from scratch and overwrites the stored result.
    """
    run_dir = Path(runs_dir or runs_root()) / config.dirname
    if use_cache:
        done = Run.load(run_dir)
        if done is not None:
            return done
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_json(run_dir / "config.json", config.to_dict())
    _write_json(run_dir / "env.json", environment(device, config.precision))
    # the config's own data options override the profile's subsets
    data = load_data(config.dataset, **{**get_profile(config.profile).data_kwargs(config.dataset),
                                        **config.data_kw})
    recipe = get_recipe(config.recipe, config.profile, config.dataset, **config.recipe_kw)
    seed_everything(config.seed)  # the initial weights belong to the config too
    model = create_model(config.model, num_classes=data.num_classes, in_channels=data.in_channels,
                         **config.model_kw)
    ckpt = run_dir / "checkpoint.pt"
    if not use_cache:  # the old result must not outlive a retrain that stops half-way
        for stale in (ckpt, run_dir / "metrics.json", run_dir / "model.pt"):
            stale.unlink(missing_ok=True)
    history = fit(model, data, recipe, device=device, precision=config.precision, seed=config.seed,
                  checkpoint=ckpt, progress=progress, live=live,
                  callbacks=[lambda h: _write_csv(run_dir / "history.csv", h.to_frame())])
    if history.interrupted:
        return Run(config, run_dir, {}, history.to_frame())
    _write_csv(run_dir / "history.csv", history.to_frame())
    with atomic_path(run_dir / "model.pt") as tmp:
        torch.save({k: v.cpu() for k, v in model.state_dict().items()}, tmp)
    _write_json(run_dir / "metrics.json", _metrics(history, data, recipe, model))
    ckpt.unlink(missing_ok=True)
    return Run.load(run_dir)


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
        **{k: v for k, v in frame.iloc[-1].items() if str(k).startswith("gate:")},
    }


def list_runs(runs_dir: str | Path | None = None):
    """All finished runs as one DataFrame (config columns, then headline metrics)."""
    import pandas as pd

    rows = []
    for d in sorted(Path(runs_dir or runs_root()).glob("*/metrics.json")):
        run = Run.load(d.parent)
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
