"""Convolutional Block Attention Module (Woo et al. 2018, arXiv 1807.06521).

Channel attention then spatial attention, both multiplicative:

- ``Mc = sigmoid(MLP(avgpool F) + MLP(maxpool F))`` with one **shared** MLP
  ``Linear(C, C/r) - ReLU - Linear(C/r, C)``; ``F' = Mc * F``.
- ``Ms = sigmoid(conv7x7([max_c F'; mean_c F']))`` (max first, as in the paper and
  its code); ``F'' = Ms * F'``.

Defaults follow the CNNtention authors' code (arXiv 2412.11657):
MLP without bias, 7x7 conv with bias and no BatchNorm. The official CBAM code
(github.com/Jongchan/attention-module) uses an MLP with bias and a conv without bias
followed by ``BatchNorm2d(1, momentum=0.01)``. Both are offered as keyword presets::

    CBAM(64, **CNNTENTION)    # == CBAM(64)
    CBAM(64, **OFFICIAL)   # == CBAM.official(64)

Deviation from both codes: ``hidden = C // r`` is raised to 1 when it would be 0 (with
a warning). CNNtention's "CBAM-32" had C=16, r=32 in stage 1, i.e. 0 hidden units, so
its channel attention there was a constant ``sigmoid(0) = 0.5``.

The merge with the input: the CBAM paper's block rescales its input (``merge="plain"``,
the block default). The CNNtention authors' block ends with a residual,
``out = Ms * Mc * F + F`` (``merge="residual"``, their CBAM models' setting; their
released r=16 checkpoint gives the same logits only with it).

Placement (after each stage as in CNNtention, or inside every residual block before the
addition as in the CBAM paper) is the model's business; this is just the block.
Maps (through :func:`.maps.collect_maps`): ``channel`` (Mc), ``spatial`` (Ms), ``gate``.
"""
from __future__ import annotations

import warnings
from typing import Optional

import torch
from torch import nn

from .maps import MapSource
from .merge import Merge
from .registry import register_attn

#: the CNNtention authors' code (the defaults)
CNNTENTION = dict(mlp_bias=False, spatial_bn=False, spatial_bias=None)
#: the official CBAM code
OFFICIAL = dict(mlp_bias=True, spatial_bn=True, spatial_bias=None)


class ChannelAttention(nn.Module):
    """``Mc = sigmoid(MLP(avgpool x) + MLP(maxpool x))``, returned as ``(B, C)``."""

    def __init__(self, channels: int, reduction: int = 16, bias: bool = False):
        super().__init__()
        if reduction < 1:
            raise ValueError(f"CBAM reduction must be an integer >= 1 (hidden = channels // reduction), got {reduction}")
        hidden = channels // reduction
        if hidden < 1:
            warnings.warn(
                f"CBAM: channels // reduction = {channels} // {reduction} = 0 hidden units; "
                "using 1. CNNtention's CBAM-32 (C=16, r=32) silently lost its stage-1 channel "
                "attention this way (Mc was a constant 0.5).",
                stacklevel=3,
            )
            hidden = 1
        self.hidden = hidden
        # one MLP shared by both pooled descriptors, as in the paper
        self.mlp = nn.Sequential(
            nn.Linear(channels, hidden, bias=bias),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, channels, bias=bias),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        pooled = torch.cat([x.mean((2, 3)), x.amax((2, 3))])  # 2B, C: avg then max
        scores = self.mlp(pooled)  # one pass of the shared MLP over both descriptors
        return torch.sigmoid(scores[:b] + scores[b:])  # B, C


class SpatialAttention(nn.Module):
    """``Ms = sigmoid(conv([max_c x; mean_c x]))``, returned as ``(B, 1, H, W)``."""

    def __init__(self, kernel_size: int = 7, bn: bool = False, bias: Optional[bool] = None):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd to keep H, W; got {kernel_size}")
        # a bias before BatchNorm is redundant, hence the official code drops it
        bias = (not bn) if bias is None else bias
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=bias)
        # momentum 0.01 as in the official code's BasicConv
        self.bn = nn.BatchNorm2d(1, momentum=0.01) if bn else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Stacked last, then viewed as B, 2, H, W: a channels-last layout, in which oneDNN's
        # backward of this 2 -> 1 channel conv ran about 3x faster on CPU than in NCHW.
        pooled = torch.stack([x.amax(1), x.mean(1)], dim=-1).permute(0, 3, 1, 2)  # B, 2, H, W
        s = self.conv(pooled)  # B, 1, H, W
        if self.bn is not None:
            s = self.bn(s)
        return torch.sigmoid(s)


@register_attn("cbam")
class CBAM(MapSource, nn.Module):
    """Channel then spatial attention, ``out = merge(Ms * (Mc * x), x)``.

    With the defaults (CNNtention's code) the block has ``2*C*hidden + 99`` parameters: 969 for
    C = 16, 32, 64 at r = 16 together.

    Args:
        channels: input and output channels ``C``.
        reduction: MLP reduction ``r``; ``hidden = max(1, C // r)`` (warns if raised).
        mlp_bias: bias in the shared MLP (CNNtention: False, official: True).
        spatial_bn: BatchNorm after the spatial conv (CNNtention: False, official: True).
        spatial_bias: bias of the spatial conv; ``None`` means ``not spatial_bn``.
        kernel_size: spatial conv size (7 in the paper).
        merge: ``plain`` (default, the CBAM paper's rescaling) / ``residual`` (CNNtention) / ``weighted``.
    """

    def __init__(
        self,
        channels: int,
        reduction: int = 16,
        mlp_bias: bool = False,
        spatial_bn: bool = False,
        spatial_bias: Optional[bool] = None,
        kernel_size: int = 7,
        merge: str = "plain",
    ):
        super().__init__()
        self.channel = ChannelAttention(channels, reduction, bias=mlp_bias)
        self.spatial = SpatialAttention(kernel_size, bn=spatial_bn, bias=spatial_bias)
        self.merge = Merge(merge)

    @classmethod
    def official(cls, channels: int, **kw) -> "CBAM":
        """The official CBAM code's variant: MLP with bias, conv without bias + BN."""
        return cls(channels, **{**OFFICIAL, **kw})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mc = self.channel(x)  # B, C
        f1 = x * mc[:, :, None, None]  # B, C, H, W
        ms = self.spatial(f1)  # B, 1, H, W
        if self.collecting:
            self.emit("channel", mc)
            self.emit("spatial", ms)
            self.emit("gate", self.merge.gate)
        return self.merge(f1 * ms, x)
