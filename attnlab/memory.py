"""Memory planning for attention-augmented convolutions: predict, then check before training.

Self-attention over the ``h*w`` positions of a layer stores, per image and head, an
``hw x hw`` matrix when it is computed explicitly: at a 32x32 stage with 8 heads that is
8 x 1024 x 1024 floats, 32 MiB per image, 4 GiB for a batch of 128, in a single layer.
This is what stopped the attention-augmentation replication (it could afford one
augmented layer). :func:`plan_memory` predicts the *extra* memory of a training step
that a model's :class:`~attnlab.layers.aaconv.AugmentedConv2d` layers cost, and
:func:`check_memory` refuses a configuration whose prediction does not fit the free
device memory, saying what would (a smaller batch, attention only at later stages, the
fused path, NRE).

What is counted, per layer, with ``t = B * N_h * h * w`` (one entry per head and
position) and ``e`` bytes per element (4 for fp32; 2 for bf16/fp16, which autocast uses
for the matmuls, the softmax and the relative logits alike):

- explicit and ``bias`` paths: the softmax ``A`` (``t * hw`` elements) is kept for the
  backward pass; while a layer runs forward or backward two more ``hw x hw`` tensors exist
  (logits and bias forward; ``dA`` and the logits' gradient backward).
- fused path: the kernel keeps ``q'``, ``k'``, ``v'`` and its output (width
  ``W' = max(d_k^h + h + w, d_v^h)`` with the relative logits folded in, ``d_k^h``
  without) and one log-sum-exp per row; no ``hw x hw`` tensor. Its backward makes the
  three gradients and a working copy.
- every path: the QKV output and the per-head copies of q, k and v; the relative logits
  per offset (``t * (2w - 1)`` and ``t * (2h - 1)``, with two padded copies while the
  "relative to absolute" reshape runs) and per key row and column (``t * (h + w)``);
  the average-pooled input of a strided layer; the relative tables with their gradients
  (negligible).

The prediction for a model is the sum of what layers keep plus the largest transient
of any one layer (layers run one at a time). The plain-convolution model is the
reference: the concatenation of an AA layer replaces that model's convolution output.
These counts follow the block's code; the tests and the benchmark compare them with
measured peaks.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional, Sequence, Union

import torch
from torch import nn

from .hardware import resolve_device
from .layers.aaconv import AugmentedConv2d
from .papers import create_model

GIB = 2**30
BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


class AttentionMemoryError(MemoryError):
    """The attention of a configuration is predicted not to fit the free device memory.
    ``plan`` is the refused :class:`MemoryPlan`, ``suggestions`` what would fit."""

    def __init__(self, message: str, plan: "MemoryPlan", suggestions: list[dict]):
        super().__init__(message)
        self.plan, self.suggestions = plan, suggestions


@dataclass(frozen=True)
class LayerMemory:
    """One AA layer's predicted extra memory in bytes at a batch size and precision."""

    name: str
    grid: tuple[int, int]           # the attention's (h, w)
    heads: int
    dkh: int
    dvh: int
    dk: int
    dv: int
    in_channels: int
    stride: int
    relative: bool
    path: str
    batch_size: int
    bytes_per_element: int
    kept: int = 0                   # held from the forward pass until the backward pass
    transient: int = 0              # alive only while this layer runs
    matrix: int = 0                 # of ``kept + transient``: the hw x hw tensors
    tables: int = 0                 # relative tables and their gradients

    @property
    def total(self) -> int:
        return self.kept + self.transient + self.tables


def layer_memory(name: str, grid: tuple[int, int], heads: int, dkh: int, dvh: int, in_channels: int,
                 stride: int, relative: bool, path: str, batch_size: int, precision: str = "fp32") -> LayerMemory:
    """The counts of the module docstring for one layer (see :class:`LayerMemory`)."""
    if precision not in BYTES:
        raise ValueError(f"precision must be one of {sorted(BYTES)}, got {precision!r}")
    e = BYTES[precision]
    h, w = grid
    n = h * w
    t = batch_size * heads * n
    dk, dv = heads * dkh, heads * dvh
    kept = batch_size * n * (2 * dk + dv) + t * (2 * dkh + dvh)  # QKV output, per-head copies
    transient = t * (2 * dkh + dvh)  # the attention output and its reshaped copy, the projection
    if stride > 1:
        kept += batch_size * in_channels * n
    if relative:
        per_offset = t * (2 * w - 1 + 2 * h - 1)
        transient += 2 * per_offset + t * (h + w)  # padded copies, R^H and R^W
        kept += t * (h + w) if path == "fused" else 0  # folded into q'
    matrix = 0
    if path == "fused":
        width = max(dkh + (h + w if relative else 0), dvh)
        kept += 4 * t * width + t  # q', k', v', output; log-sum-exp
        transient += 4 * t * width  # their gradients and a working copy
    else:
        matrix = 3 * t * n  # A kept; two more while the layer runs
        kept += t * n
        transient += 2 * t * n
    tables = 2 * (2 * h - 1 + 2 * w - 1) * dkh * 4 if relative else 0
    return LayerMemory(name, (h, w), heads, dkh, dvh, dk, dv, in_channels, stride, relative, path,
                       batch_size, e, kept * e, transient * e, matrix * e, tables)


@dataclass(frozen=True)
class MemoryPlan:
    """The predicted extra memory of a training step for a model's attention layers."""

    model: str
    batch_size: int
    input_size: tuple[int, int]
    precision: str
    layers: tuple[LayerMemory, ...] = field(default_factory=tuple)

    @property
    def kept(self) -> int:
        return sum(layer.kept + layer.tables for layer in self.layers)

    @property
    def transient(self) -> int:
        return max((layer.transient for layer in self.layers), default=0)

    @property
    def total(self) -> int:
        """Predicted extra bytes at the peak: everything kept plus the largest transient."""
        return self.kept + self.transient

    def with_layers(self, layers: Sequence[LayerMemory]) -> "MemoryPlan":
        return replace(self, layers=tuple(layers))

    def with_batch(self, batch_size: int) -> "MemoryPlan":
        return self.with_layers([_relaid(layer, batch_size=batch_size) for layer in self.layers])

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame([{"layer": x.name, "grid": f"{x.grid[0]}x{x.grid[1]}", "heads": x.heads,
                              "d_k/h": x.dkh, "d_v/h": x.dvh, "relative": x.relative, "path": x.path,
                              "kept MiB": x.kept / 2**20, "transient MiB": x.transient / 2**20,
                              "hw x hw MiB": x.matrix / 2**20} for x in self.layers])

    def __str__(self) -> str:
        return (f"{self.model}: {len(self.layers)} attention layer(s), batch {self.batch_size}, "
                f"{self.input_size[0]}x{self.input_size[1]} input, {self.precision}: "
                f"{_gib(self.total)} extra ({_gib(self.kept)} kept + {_gib(self.transient)} transient)")


def _relaid(layer: LayerMemory, **changes) -> LayerMemory:
    """``layer`` recounted with some inputs changed (batch size, path, relative)."""
    kw = {k: getattr(layer, k) for k in ("name", "grid", "heads", "dkh", "dvh", "in_channels", "stride",
                                          "relative", "path", "batch_size")}
    kw.update(changes)
    precision = next(p for p, b in BYTES.items() if b == layer.bytes_per_element)
    return layer_memory(precision=precision, **kw)


def _gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB / 10 else f"{n / 2**20:.1f} MiB"


def attention_layers(model: nn.Module, input_size: Union[int, tuple[int, int]] = 32,
                     in_channels: Optional[int] = None) -> list[tuple[str, AugmentedConv2d, tuple[int, int]]]:
    """``(name, block, input (h, w))`` of every AA layer, from one forward pass of one
    zero image in eval mode (the model's mode is restored)."""
    size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    blocks = [(n, m) for n, m in model.named_modules() if isinstance(m, AugmentedConv2d)]
    if not blocks:
        return []
    seen: dict[str, tuple[int, int]] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, n=n: seen.__setitem__(n, tuple(args[0].shape[-2:])))
             for n, m in blocks]
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    channels = in_channels or getattr(model, "in_channels", None) or first.in_channels
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, channels, *size, device=first.weight.device))
    finally:
        model.train(was_training)
        for hk in hooks:
            hk.remove()
    return [(n, m, seen[n]) for n, m in blocks if n in seen]


def plan_memory(model: Union[nn.Module, str], batch_size: int = 128,
                input_size: Union[int, tuple[int, int]] = 32, precision: str = "fp32",
                path: Optional[str] = None, **model_kw) -> MemoryPlan:
    """Predicted extra memory of ``model``'s attention layers for one training step.

    ``model``: a module or a registered model name (built with ``model_kw`` on the
    ``meta`` device: shapes only, so planning WRN-28-10 allocates nothing).
    ``path``: count every layer as ``"fused"``, ``"bias"`` or ``"explicit"`` (default:
    each layer's own). See the module docstring for what is counted.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    name = model if isinstance(model, str) else type(model).__name__
    if isinstance(model, str):
        with torch.device("meta"):  # shapes only: no weights are allocated or initialised
            module = create_model(model, **model_kw)
    else:
        module = model
    size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    layers = [layer_memory(n, m.attention_grid(*hw), m.num_heads, m.dkh, m.dvh, m.in_channels, m.stride,
                           m.relative, path or m.path, batch_size, precision)
              for n, m, hw in attention_layers(module, size)]
    return MemoryPlan(name, batch_size, size, precision, tuple(layers))


def free_memory(device: Union[str, torch.device] = "auto") -> Optional[int]:
    """Free bytes on ``device``: CUDA's free memory, a CPU's ``MemAvailable``; None if unknown."""
    dev = resolve_device(device)
    if dev.type == "cuda":
        return int(torch.cuda.mem_get_info(dev)[0])
    if dev.type == "cpu":
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None


def suggestions(plan: MemoryPlan, budget: int) -> list[dict]:
    """What would fit ``budget`` bytes: each change alone, as ``{"change": words, "kw": the
    options that make it (``batch_size`` or model options for :func:`check_memory`),
    "bytes": its prediction, "fits": bool}``. The placements assume a backbone with
    ``attn_at`` (:mod:`attnlab.models.wrn`)."""
    out = []
    per_image = plan.with_batch(1).total
    batch = min(plan.batch_size - 1, int(budget // per_image)) if per_image else plan.batch_size
    if batch >= 1:
        out.append({"change": f"batch_size={batch}", "kw": {"batch_size": batch},
                    "bytes": plan.with_batch(batch).total})
    grids = sorted({x.grid[0] * x.grid[1] for x in plan.layers})
    if len(grids) > 1:
        last = [x for x in plan.layers if x.grid[0] * x.grid[1] == grids[0]]
        out.append({"change": "attention only in the last stage (attn_at='last')", "kw": {"attn_at": "last"},
                    "bytes": plan.with_layers(last).total})
    if len(plan.layers) > 1:
        first = next(x for x in plan.layers if x.grid[0] * x.grid[1] == grids[0])
        out.append({"change": "one attention layer, the last stage's first (attn_at='last_first')",
                    "kw": {"attn_at": "last_first"}, "bytes": plan.with_layers([first]).total})
    if any(x.path != "fused" for x in plan.layers):
        out.append({"change": "path='fused' (no hw x hw matrices)", "kw": {"path": "fused"},
                    "bytes": plan.with_layers([_relaid(x, path="fused") for x in plan.layers]).total})
    if any(x.relative for x in plan.layers):
        out.append({"change": "relative=False (NRE)", "kw": {"relative": False},
                    "bytes": plan.with_layers([_relaid(x, relative=False) for x in plan.layers]).total})
    for s in out:
        s["fits"] = s["bytes"] <= budget
    return out


def check_memory(model: Union[nn.Module, str], batch_size: int = 128,
                 input_size: Union[int, tuple[int, int]] = 32, precision: str = "fp32", *,
                 device: Union[str, torch.device] = "auto", free_bytes: Optional[int] = None,
                 share: float = 0.5, **model_kw) -> MemoryPlan:
    """Refuse, before training, a configuration whose attention would not fit.

    The prediction of :func:`plan_memory` must stay within ``share`` of the free memory
    (``free_bytes``, or :func:`free_memory` of ``device``); the rest is left to the
    network's own activations, weights and optimiser. Returns the plan when it fits;
    raises :class:`AttentionMemoryError` with the prediction and what would fit otherwise.
    With no way to know the free memory, nothing is refused.
    """
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], got {share}")
    plan = plan_memory(model, batch_size, input_size, precision, **model_kw)
    free = free_bytes if free_bytes is not None else free_memory(device)
    if free is None:
        return plan
    budget = int(free * share)
    if plan.total <= budget:
        return plan
    options = suggestions(plan, budget)
    fitting = [s for s in options if s["fits"]]
    lines = [f"{plan} does not fit: the attention may use {_gib(budget)} "
             f"({share:.0%} of {_gib(free)} free).",
             "What would fit:" if fitting else "None of these alone would fit:"]
    lines += [f"  - {s['change']}: {_gib(s['bytes'])}" for s in (fitting or options)]
    raise AttentionMemoryError("\n".join(lines), plan, options)


__all__ = ["AttentionMemoryError", "LayerMemory", "MemoryPlan", "layer_memory", "plan_memory",
           "attention_layers", "free_memory", "suggestions", "check_memory", "BYTES", "GIB"]
