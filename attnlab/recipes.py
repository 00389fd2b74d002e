"""Named training recipes and the profiles that scale them.

A *recipe* is the paper's optimiser and schedule at full length; a *profile* says how
much of it to run: ``smoke`` (a few batches, for tests), ``quick`` (minutes on a CPU,
possibly on a subset, which results then state) or ``full`` (the paper's length).
Milestones are fractions of training so a recipe keeps its shape when shortened.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Optional


@dataclass(frozen=True)
class Recipe:
    name: str
    optimizer: str                    # sgd | adam | adamw
    lr: float
    weight_decay: float
    epochs: int
    schedule: str = "step"            # step | cosine | onecycle | constant
    milestones: tuple[float, ...] = (0.5, 0.75)
    gamma: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    batch_size: int = 128
    patience: Optional[int] = None    # early stopping on validation accuracy
    label_smoothing: float = 0.0
    max_steps_per_epoch: Optional[int] = None
    source: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


SCHEDULES = ("step", "cosine", "onecycle", "constant")
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
    Profile("quick", "minutes on a 2-core CPU: shapes 4 epochs on 6,000 images; MNIST 2 epochs "
            "on 12,000 images; CIFAR 16 epochs on the full 45k training split",
            {"shapes": 4, "mnist": 2, "*": 16}, {"shapes": 6000, "mnist": 12000}),
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
    out = replace(scaled, **overrides)
    validate_recipe(out)
    return out


def validate_recipe(r: Recipe) -> None:
    if r.optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {r.optimizer!r}; allowed: {', '.join(OPTIMIZERS)}")
    if r.schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {r.schedule!r}; allowed: {', '.join(SCHEDULES)}")
    if r.epochs < 1 or r.batch_size < 1 or r.lr <= 0:
        raise ValueError(f"recipe {r.name!r} needs epochs >= 1, batch_size >= 1 and lr > 0")
