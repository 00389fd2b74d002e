"""Named training recipes and the profiles that scale them.

A *recipe* is the paper's optimiser and schedule at full length; a *profile* says how
much of it to run: ``smoke`` (a few batches, for tests), ``quick`` (minutes on a CPU,
possibly on a subset, which results then state) or ``full`` (the paper's length).
Milestones are fractions of training so a recipe keeps its shape when shortened.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Optional


@dataclass(frozen=True)
class Recipe:
    name: str
    optimizer: str                    # sgd | adam | adamw
    lr: float
    weight_decay: float
    epochs: int
    schedule: str = "step"            # step | cosine | onecycle | constant | warmup_cosine
    milestones: tuple[float, ...] = (0.5, 0.75)
    gamma: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    batch_size: int = 128
    patience: Optional[int] = None    # early stopping on validation accuracy (or ``monitor``)
    label_smoothing: float = 0.0
    max_steps_per_epoch: Optional[int] = None
    source: str = ""
    eps: Optional[float] = None       # Adam/AdamW epsilon; None: PyTorch's 1e-8 (Keras uses 1e-7)
    monitor: Optional[str] = None     # early stopping on "val_loss" (Keras's default); None: val accuracy

    def to_dict(self) -> dict:
        # fields added later are left out while None, so runs stored before keep their keys
        return {k: v for k, v in asdict(self).items() if not (k in _LATE_FIELDS and v is None)}


_LATE_FIELDS = ("eps", "monitor")
MONITORS = ("val_loss",)


#: ``warmup_cosine``: linear warm-up over the first 5% of steps, then cosine decay to 0
#: (Bello et al. 2019, arXiv 1904.09925)
SCHEDULES = ("step", "cosine", "onecycle", "constant", "warmup_cosine")
OPTIMIZERS = ("sgd", "adam", "adamw")

#: every recipe by name; each paper module registers the recipes it contributes
#: (:mod:`attnlab.papers`), so a recipe is defined once, beside the paper that used it
RECIPES: dict[str, Recipe] = {}


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    epochs: dict = field(default_factory=dict)          # dataset -> epochs ("*" = default)
    train_subset: dict = field(default_factory=dict)    # dataset -> images (None = all)
    eval_subset: Optional[int] = None
    max_steps_per_epoch: Optional[int] = None

    def epochs_for(self, dataset: str, recipe: Recipe) -> int:
        return self.epochs.get(dataset, self.epochs.get("*", recipe.epochs))

    def data_kwargs(self, dataset: str) -> dict:
        return {"train_subset": self.train_subset.get(dataset, self.train_subset.get("*")),
                "eval_subset": self.eval_subset}


PROFILES: dict[str, Profile] = {p.name: p for p in [
    Profile("smoke", "a few batches of 64 images: checks that everything runs",
            {"*": 1}, {"*": 256}, 256, 4),
    Profile("quick", "minutes on a 2-core CPU: shapes and relations 3 epochs on 4,000 images; MNIST "
            "2 epochs on 12,000 images; CIFAR 16 epochs on the full 45k training split",
            {"shapes": 3, "relations": 3, "mnist": 2, "*": 16},
            {"shapes": 4000, "relations": 4000, "mnist": 12000}),
    Profile("full", "the paper's schedule length on the full data"),
]}


def list_recipes() -> list[str]:
    return list(RECIPES)


def register_recipe(recipe: Recipe) -> Recipe:
    if recipe.name in RECIPES:
        raise ValueError(f"recipe {recipe.name!r} is already registered")
    RECIPES[recipe.name] = recipe
    return recipe


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; available: {', '.join(PROFILES)}")
    return PROFILES[name]


def get_recipe(name: str, profile: str = "full", dataset: str = "", **overrides) -> Recipe:
    """Recipe ``name`` scaled by ``profile`` for ``dataset``, then ``overrides`` applied."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; available: {', '.join(RECIPES)}")
    base = RECIPES[name]
    prof = get_profile(profile)
    epochs = prof.epochs_for(dataset, base)
    scaled = replace(base, epochs=epochs, max_steps_per_epoch=prof.max_steps_per_epoch)
    if scaled.patience is not None and epochs < base.epochs:
        scaled = replace(scaled, patience=max(2, round(base.patience * epochs / base.epochs)))
    if prof.name == "smoke":
        scaled = replace(scaled, batch_size=64)
    unknown = sorted(set(overrides) - set(Recipe.__dataclass_fields__))
    if unknown:
        raise TypeError(f"unknown recipe field(s) {unknown}; allowed: {sorted(Recipe.__dataclass_fields__)}")
    out = replace(scaled, **_normalised(overrides))
    validate_recipe(out)
    return out


def _normalised(overrides: dict) -> dict:
    """Integers for float fields become floats and lists tuples, so that ``lr=1`` and
    ``lr=1.0`` (or milestones from JSON) are the same recipe, and the same run."""
    out = dict(overrides)
    for k in _NUMBERS:
        if _is_int(out.get(k)):
            out[k] = float(out[k])
    if isinstance(out.get("milestones"), list):
        out["milestones"] = tuple(out["milestones"])
    if out.get("monitor") == "val_acc":  # the default spelled out is the default
        out["monitor"] = None
    if _is_int(out.get("eps")):
        out["eps"] = float(out["eps"])
    return out


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


#: field -> (test, what is allowed)
_NUMBERS = {
    "lr": (lambda v: v > 0, "a number > 0"),
    "weight_decay": (lambda v: v >= 0, "a number >= 0"),
    "gamma": (lambda v: v > 0, "a number > 0"),
    "momentum": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "label_smoothing": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
}
_COUNTS = {"epochs": False, "batch_size": False, "patience": True, "max_steps_per_epoch": True}


def validate_recipe(r: Recipe) -> None:
    """Types, ranges and choices of every field; the message says what is allowed."""
    def bad(field_name: str, allowed: str):
        v = getattr(r, field_name)
        return ValueError(f"recipe {r.name!r}: {field_name} must be {allowed}, got {v!r} ({type(v).__name__})")

    if r.optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {r.optimizer!r}; allowed: {', '.join(OPTIMIZERS)}")
    if r.schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {r.schedule!r}; allowed: {', '.join(SCHEDULES)}")
    for name, (ok, allowed) in _NUMBERS.items():
        v = getattr(r, name)
        if not _is_number(v) or not ok(v):
            raise bad(name, allowed)
    for name, optional in _COUNTS.items():
        v = getattr(r, name)
        if not (v is None and optional) and not (_is_int(v) and v >= 1):
            raise bad(name, "an integer >= 1" + (" or None" if optional else ""))
    if not isinstance(r.nesterov, bool):
        raise bad("nesterov", "true or false")
    if r.eps is not None and not (_is_number(r.eps) and r.eps > 0):
        raise bad("eps", "a number > 0 or None")
    if r.monitor is not None and r.monitor not in MONITORS:
        raise bad("monitor", f"None (validation accuracy) or one of {MONITORS}")
    if not isinstance(r.milestones, (tuple, list)) or not all(_is_number(m) and 0 < m <= 1 for m in r.milestones):
        raise bad("milestones", "a list of fractions of training in (0, 1]")
