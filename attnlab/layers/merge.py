"""How an attention block's output F(x) is merged with its input x.

CNNtention (arXiv 2412.11657) compares three merges:

- ``plain``:    out = F(x)              (the paper's first, unstable version, Fig. 5)
- ``residual``: out = F(x) + x          (Eq. 2)
- ``weighted``: out = w * F(x) + x      (Eq. 3), one learnable scalar ``w`` per block,
  initialised to 0 so training starts from the plain backbone.
"""
from __future__ import annotations

import torch
from torch import nn

MERGE_MODES = ("plain", "residual", "weighted")


def check_merge(merge: str) -> str:
    if merge not in MERGE_MODES:
        raise ValueError(f"unknown merge mode {merge!r}; allowed: {', '.join(MERGE_MODES)}")
    return merge


class Merge(nn.Module):
    """Combines ``F(x)`` with ``x``; owns the gate ``w`` for ``merge="weighted"``."""

    def __init__(self, merge: str = "weighted", gate_init: float = 0.0):
        super().__init__()
        self.merge = check_merge(merge)
        if merge == "weighted":
            self.gate = nn.Parameter(torch.full((1,), float(gate_init)))
        else:
            self.register_parameter("gate", None)

    def forward(self, fx: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.merge == "plain":
            return fx
        if self.merge == "residual":
            return x + fx
        return x + self.gate * fx  # x first: the result keeps x's memory layout

    def extra_repr(self) -> str:
        return f"merge={self.merge!r}"
