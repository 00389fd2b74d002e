"""Squeeze-and-Excitation (Hu et al. 2018, arXiv 1709.01507)."""
from __future__ import annotations

import torch
from torch import nn

from .maps import MapSource
from .merge import Merge
from .registry import register_attn


@register_attn("se")
class SqueezeExcite(MapSource, nn.Module):
    """Channel gate ``x * sigmoid(W2 relu(W1 avgpool(x)))``.

    The paper's block rescales its input, so the default merge is ``plain``
    (out = F(x) = x * gate); ``residual`` and ``weighted`` are offered for the
    merge ablations. ``hidden = max(1, channels // reduction)`` keeps at least one
    unit (with C=16, r=32 the plain formula gives 0).
    """

    def __init__(self, channels: int, reduction: int = 16, bias: bool = True, merge: str = "plain"):
        super().__init__()
        if reduction < 1:
            raise ValueError(f"SE reduction must be an integer >= 1 (hidden = channels // reduction), got {reduction}")
        self.merge = Merge(merge)
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=bias)
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)  # B, C, 1, 1
        gate = torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))  # B, C, 1, 1
        if self.collecting:
            self.emit("channel", gate.flatten(1))
            self.emit("gate", self.merge.gate)
        return self.merge(x * gate, x)
