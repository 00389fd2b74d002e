"""The paper registry: each source paper as data.

A :class:`Paper` declares its id, title, authors, year and link; its models
(:class:`ModelSpec`: a backbone, the backbone's settings, an attention block and the
block's settings that differ from the block's own defaults, a display label, the recipe
the paper used, the pinned parameter count and whether it is too slow for a CPU at the
``quick`` profile); the recipes it contributes; its published numbers as
:class:`Claim` rows in one long-form schema; its ablation axes; and any speed targets the
benchmark checks.

Model settings are resolved against the backbone's and the block's own signatures
(:func:`resolve_model`), so each default is written once, in the code that uses it, and a
network gets the same resolved settings however they are spelled.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from torch import nn

from ..layers import get_attn
from ..layers.registry import check_option_types
from ..models import create_backbone, get_backbone
from ..recipes import Recipe, register_recipe

METRICS = ("test_error", "test_acc", "test_top5", "val_acc", "test_loss", "precision", "recall", "f1")
SPLITS = ("test", "val")


@dataclass(frozen=True)
class ModelSpec:
    """A named model: ``backbone`` with ``backbone_kw``, and block ``attn`` with ``attn_kw``
    (only the settings that differ from the block's defaults)."""

    name: str
    label: str
    backbone: str
    backbone_kw: dict = field(default_factory=dict)
    attn: Optional[str] = None
    attn_kw: dict = field(default_factory=dict)
    recipe: str = "he2016"
    params: Optional[int] = None       # pinned count for 10 classes and 3 input channels
    slow_on_cpu: bool = False          # too slow to train at ``quick`` on a 2-core CPU
    description: str = ""
    paper: str = ""                    # set when the paper registers


@dataclass(frozen=True)
class Claim:
    """One published number, quoted as published (never ours)."""

    model: str          # a registered model name, or a free label for a model we do not build
    dataset: str        # cifar10, cifar100, mnist, ...
    metric: str         # one of METRICS; accuracies and errors in percent
    value: float
    split: str = "test"  # the split it was measured on
    setting: str = ""   # e.g. "reduction=8", "learning=nal", "augment=False"
    protocol: str = ""  # e.g. "selected on test", "200 epochs"
    source: str = ""    # who reported it, where


@dataclass(frozen=True)
class AblationAxis:
    model: str
    parameter: str      # a model option (backbone or block) or a RunConfig field
    values: tuple
    label: str = ""


@dataclass(frozen=True)
class SpeedTarget:
    """A benchmark comparison of ``model`` with ``reference`` (measured side by side in one
    run): ``step_time`` is the ratio of training-step times, ``extra_memory_gib`` the extra
    peak memory of a training step. ``limit`` (with ``op``) makes it a target; ``None``
    measures only."""

    name: str
    model: str
    reference: str
    measure: str = "step_time"      # "step_time" or "extra_memory_gib"
    op: str = "<="                  # "<=" or "<"
    limit: Optional[float] = None
    model_kw: dict = field(default_factory=dict)   # options of ``model`` for this comparison
    batch_size: int = 128


@dataclass(frozen=True)
class Paper:
    id: str
    title: str
    authors: str
    year: int
    link: str
    summary: str = ""
    notebook: str = ""
    models: tuple[ModelSpec, ...] = ()
    recipes: tuple[Recipe, ...] = ()
    claims: tuple[Claim, ...] = ()
    ablations: tuple[AblationAxis, ...] = ()
    targets: tuple[SpeedTarget, ...] = ()

    def model(self, name: str) -> ModelSpec:
        for m in self.models:
            if m.name == name:
                return m
        raise ValueError(f"paper {self.id!r} has no model {name!r}; it has: "
                         f"{', '.join(m.name for m in self.models)}")

    @property
    def labels(self) -> dict[str, str]:
        return {m.name: m.label for m in self.models}

    def claims_frame(self):
        """The published numbers as one long-form DataFrame."""
        import pandas as pd

        cols = [f for f in Claim.__dataclass_fields__]
        return pd.DataFrame([{c: getattr(x, c) for c in cols} for x in self.claims], columns=cols)


_PAPERS: dict[str, Paper] = {}
_MODELS: dict[str, ModelSpec] = {}


def _check_claim(paper: str, c: Claim) -> None:
    if c.metric not in METRICS:
        raise ValueError(f"{paper}: claim metric {c.metric!r} is not one of {METRICS}")
    if c.split not in SPLITS:
        raise ValueError(f"{paper}: claim split {c.split!r} is not one of {SPLITS}")


def register_paper(paper: Paper) -> Paper:
    """Register ``paper``, its models and its recipes (each name once across papers)."""
    if paper.id in _PAPERS:
        raise ValueError(f"paper {paper.id!r} is already registered")
    for spec in paper.models:
        if spec.name in _MODELS:
            raise ValueError(f"model {spec.name!r} of {paper.id!r} is already registered "
                             f"by {_MODELS[spec.name].paper!r}")
    for c in paper.claims:
        _check_claim(paper.id, c)
    for r in paper.recipes:
        register_recipe(r)
    specs = tuple(ModelSpec(**{**spec.__dict__, "paper": paper.id}) for spec in paper.models)
    paper = Paper(**{**paper.__dict__, "models": specs})
    for spec in specs:
        _MODELS[spec.name] = spec
    _PAPERS[paper.id] = paper
    return paper


def list_papers() -> list[str]:
    return list(_PAPERS)


def get_paper(paper_id: str) -> Paper:
    if paper_id not in _PAPERS:
        raise ValueError(f"unknown paper {paper_id!r}; available: {', '.join(_PAPERS)}")
    return _PAPERS[paper_id]


def list_models() -> list[str]:
    return list(_MODELS)


def model_spec(name: str) -> ModelSpec:
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(_MODELS)}")
    return _MODELS[name]


def model_options(name: str) -> dict:
    """Every option of model ``name`` with its resolved default: backbone options, then
    the block's (``attn`` and ``attn_kw`` themselves can also be given)."""
    r = resolve_model(name)
    return {**{k: v for k, v in r.items() if k not in ("backbone", "attn", "attn_kw")}, **r["attn_kw"]}


def resolve_model(name: str, **kw: Any) -> dict:
    """The complete settings of model ``name`` with the options ``kw``:
    ``{"backbone": ..., <every backbone option>, "attn": ..., "attn_kw": {<every block option>}}``.

    ``kw`` may name backbone options, block options (flat, or nested in ``attn_kw``) and
    ``attn`` (another block in the same slot; the model's own block settings then do not
    apply). Unknown options raise, naming the allowed ones.
    """
    spec = model_spec(name)
    kw = dict(kw)
    attn = kw.pop("attn", spec.attn)
    attn = None if attn == "none" else attn
    nested = dict(kw.pop("attn_kw", None) or {})
    b_opts = get_backbone(spec.backbone).options()
    a_opts = get_attn(attn).options() if attn else {}
    flat_attn = {k: kw.pop(k) for k in list(kw) if k in a_opts and k not in b_opts}
    unknown = sorted(set(kw) - set(b_opts))
    if unknown:
        raise TypeError(f"model {name!r} got unknown option(s) {unknown}; allowed: "
                        f"{sorted({*b_opts, *a_opts, 'attn', 'attn_kw'})}")
    check_option_types(f"backbone {spec.backbone!r}", get_backbone(spec.backbone).factory, kw)
    backbone = {**b_opts, **spec.backbone_kw, **kw}
    if isinstance(backbone.get("attn_stages"), list):
        backbone["attn_stages"] = tuple(backbone["attn_stages"])
    base_attn = spec.attn_kw if attn == spec.attn else {}
    attn_kw = get_attn(attn).resolve({**base_attn, **nested, **flat_attn}) if attn else {}
    return {"backbone": spec.backbone, **backbone, "attn": attn, "attn_kw": attn_kw}


def create_model(name: str, num_classes: int = 10, in_channels: int = 3, **kw: Any) -> nn.Module:
    """Build model ``name`` (any registered paper's) with options ``kw`` (see :func:`resolve_model`)."""
    r = resolve_model(name, **kw)
    backbone = r.pop("backbone")
    return create_backbone(backbone, num_classes, in_channels, **r)
