"""Residual Attention Network's attention module (Wang et al., CVPR 2017, arXiv 1704.06904).

An attention module is ``p`` pre-processing residual units, then two branches on their
output ``x``:

- the **trunk** ``T(x)``: ``t`` residual units;
- the **soft mask** ``M(x)``: bottom-up max-pooling (3x3, stride 2) with ``r`` units after
  each pool and a skip unit at each pooled scale but the lowest, ``r`` more units at the
  lowest scale, then top-down upsampling with the skips added and ``r`` units after each
  addition, back to the input resolution; then two 1x1 convolutions and an activation.

and they combine as **attention residual learning** (``learning="arl"``)
``H = (1 + M) * T`` or **naive attention learning** (``"nal"``) ``H = M * T``, followed by
``p`` post-processing units. Paper defaults: ``p = 1, t = 2, r = 1``. With NAL a mask near 0
erases the trunk's features, and stacking modules multiplies masks, which is why the paper
finds NAL degrading as modules stack while ARL keeps the trunk's features (``M = 0`` gives
``H = T``).

Mask activations (``activation=``), applied to the 1x1 convolutions' output ``s``:

- ``"mixed"``: ``sigmoid(s)`` per channel and position (the paper's choice);
- ``"channel"``: ``s / ||s||_2`` over the channels at each position;
- ``"spatial"``: per channel, ``sigmoid((s - mean) / std)`` over the positions;
- ``"layernorm"``: a LayerNorm over the channels at each position (learnable gain and
  bias, eps 1e-3 as in Keras), then ``sigmoid``. This is what a student replication in
  Keras used as its "spatial" attention: the opposite grouping to the paper's (it
  normalises across channels, not across positions), hence its own name.

The mask depth ``pools`` depends on the input resolution: the paper keeps the lowest mask
resolution equal to the smallest trunk map (7x7 on ImageNet: 3 / 2 / 1 pools at 56 / 28
/ 14); on 32x32 CIFAR inputs 2 / 1 / 0 pools at 32 / 16 / 8 is the analogue. With
``pools=0`` the mask branch works at full resolution. Every upsampling returns exactly to
the size of the map it came from, so odd sizes work (a 3x3 / 2 pool gives ``ceil(n/2)``).

Where the paper (and its released Caffe model) and the Keras replication's code differ,
both are offered:

========================  ==============================  ===================================
option                    paper                           replication
========================  ==============================  ===================================
``upsample``              ``"bilinear"`` (align corners)  ``"nearest"`` (``UpSampling2D``)
``mask_head``             ``"preact"``: BN-ReLU-1x1-      ``"linear"``: 1x1-1x1, with bias,
                          BN-ReLU-1x1, no bias            nothing in between
``projection``            ``"when_needed"``               ``"every"`` unit (a shape test that
                                                          was always true)
``conv_bias``             ``False``                       ``True`` (Keras ``Conv2D``)
``shortcut_input``        ``"preact"`` (BN-ReLU output)   ``"input"`` (the raw input)
``bottom_units``          ``None`` (= ``r``)              ``0`` in its 1-pool modules only
========================  ==============================  ===================================

Maps (through :func:`.maps.collect_maps`): ``mask``, the soft mask ``M`` ``(B, C, h, w)``
at the module's own resolution.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .maps import MapSource
from .registry import register_attn

LEARNINGS = ("arl", "nal")
ACTIVATIONS = ("mixed", "channel", "spatial", "layernorm")
UPSAMPLES = ("bilinear", "nearest")
MASK_HEADS = ("preact", "linear")
PROJECTIONS = ("when_needed", "every")
SHORTCUT_INPUTS = ("preact", "input")
#: mask depth of a module built on its own (a backbone sets the depth per stage)
STANDALONE_POOLS = 1


def check_choice(name: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")


class PreActBottleneck(nn.Module):
    """Pre-activation bottleneck unit (He et al. 2016, arXiv 1603.05027):
    BN-ReLU-1x1(C/4)-BN-ReLU-3x3(C/4, stride)-BN-ReLU-1x1(C), plus a shortcut.

    The shortcut is the identity unless the shape changes (``projection="when_needed"``),
    then a 1x1 convolution with the unit's stride; ``projection="every"`` puts one in
    every unit (the Keras replication's accident). ``shortcut_input="preact"`` feeds the
    projection the unit's BN-ReLU output, as the pre-activation ResNet code does;
    ``"input"`` feeds it the raw input, as the replication did.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, *,
                 projection: str = "when_needed", conv_bias: bool = False, shortcut_input: str = "preact"):
        super().__init__()
        check_choice("projection", projection, PROJECTIONS)
        check_choice("shortcut_input", shortcut_input, SHORTCUT_INPUTS)
        if out_channels % 4 or out_channels < 4:
            raise ValueError(f"a bottleneck unit needs out_channels divisible by 4, got {out_channels}")
        mid = out_channels // 4
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, mid, 1, bias=conv_bias)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, bias=conv_bias)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_channels, 1, bias=conv_bias)
        needed = stride != 1 or in_channels != out_channels
        self.shortcut = (nn.Conv2d(in_channels, out_channels, 1, stride, bias=conv_bias)
                         if needed or projection == "every" else None)
        self.shortcut_input = shortcut_input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        out = self.conv1(pre)  # B, C/4, H, W
        out = self.conv2(F.relu(self.bn2(out)))  # B, C/4, H/s, W/s
        out = self.conv3(F.relu(self.bn3(out)))  # B, C, H/s, W/s
        if self.shortcut is None:
            return out + x
        return out + self.shortcut(pre if self.shortcut_input == "preact" else x)


def units(channels: int, n: int, **unit_kw) -> nn.Sequential:
    """``n`` same-shape pre-activation bottleneck units (an empty Sequential is the identity)."""
    return nn.Sequential(*(PreActBottleneck(channels, channels, **unit_kw) for _ in range(n)))


class MaskActivation(nn.Module):
    """The mask's last step, ``f(s)`` for the activations listed in the module docstring."""

    def __init__(self, activation: str, channels: int, eps: float = 1e-5):
        super().__init__()
        check_choice("activation", activation, ACTIVATIONS)
        self.activation, self.eps = activation, eps
        # Keras' LayerNormalization epsilon, as in the replication
        self.norm = nn.LayerNorm(channels, eps=1e-3) if activation == "layernorm" else None

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        if self.activation == "mixed":
            return torch.sigmoid(s)
        if self.activation == "channel":
            return F.normalize(s, p=2.0, dim=1)  # unit L2 norm over C at each position
        if self.activation == "spatial":
            mean = s.mean((2, 3), keepdim=True)  # B, C, 1, 1
            var = s.var((2, 3), keepdim=True, unbiased=False)
            return torch.sigmoid((s - mean) / torch.sqrt(var + self.eps))
        return torch.sigmoid(self.norm(s.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))  # LN over C


class SoftMaskBranch(nn.Module):
    """Bottom-up / top-down soft mask ``M(x)`` with ``pools`` max-pool levels, returning
    ``(B, C, H, W)`` at the input's resolution (see the module docstring)."""

    def __init__(self, channels: int, pools: int, r: int, bottom_units: Optional[int], upsample: str,
                 mask_head: str, activation: str, **unit_kw):
        super().__init__()
        check_choice("upsample", upsample, UPSAMPLES)
        check_choice("mask_head", mask_head, MASK_HEADS)
        bottom = r if bottom_units is None else bottom_units
        self.upsample = upsample
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.down = nn.ModuleList(units(channels, r, **unit_kw) for _ in range(pools))
        self.skips = nn.ModuleList(PreActBottleneck(channels, channels, **unit_kw) for _ in range(max(pools - 1, 0)))
        # the lowest scale has the r units of the way down plus `bottom` more; with no
        # pooling the way down is empty, so its r units sit here
        self.bottom = units(channels, bottom + (r if pools == 0 else 0), **unit_kw)
        self.up = nn.ModuleList(units(channels, r, **unit_kw) for _ in range(max(pools - 1, 0)))
        if mask_head == "preact":
            self.head = nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(), nn.Conv2d(channels, channels, 1, bias=False),
                                      nn.BatchNorm2d(channels), nn.ReLU(), nn.Conv2d(channels, channels, 1, bias=False))
        else:
            self.head = nn.Sequential(nn.Conv2d(channels, channels, 1), nn.Conv2d(channels, channels, 1))
        self.activation = MaskActivation(activation, channels)

    def resize(self, x: torch.Tensor, size) -> torch.Tensor:
        if self.upsample == "nearest":
            return F.interpolate(x, size=size, mode="nearest")
        return F.interpolate(x, size=size, mode="bilinear", align_corners=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        out, skips = x, []
        for i, down in enumerate(self.down):
            out = down(self.pool(out))  # B, C, ceil(H/2^(i+1)), ...
            if i < len(self.skips):
                skips.append(self.skips[i](out))
        out = self.bottom(out)
        for up, skip in zip(self.up, reversed(skips)):
            out = up(self.resize(out, skip.shape[-2:]) + skip)
        if len(self.down):
            out = self.resize(out, size)  # B, C, H, W
        return self.activation(self.head(out))


@register_attn("residual_attention", role="module")
class AttentionModule(MapSource, nn.Module):
    """One attention module: ``post((1 + M(x)) * T(x))`` (ARL) or ``post(M(x) * T(x))`` (NAL)
    with ``x = pre(input)``; ``(B, C, H, W)`` in and out.

    Args:
        channels: ``C`` (divisible by 4: the units are bottlenecks of width ``C/4``).
        pools: mask depth, the number of max-pool levels. ``None``: set per stage by the
            backbone (``mask_pools``); a module built alone then gets ``STANDALONE_POOLS``.
        learning: ``"arl"`` (``H = (1 + M) T``) or ``"nal"`` (``H = M T``).
        activation: ``"mixed"``, ``"channel"``, ``"spatial"`` or ``"layernorm"``.
        p, t, r: pre/post-processing units, trunk units, mask units between pools.
        bottom_units: extra units at the mask's lowest scale (``None``: ``r``, the paper).
        upsample, mask_head: paper vs replication, see the module docstring.
        projection, conv_bias, shortcut_input: the unit style (see :class:`PreActBottleneck`);
            ``None`` (default) is the unit's own default, the paper's; backbones set them
            for the whole network.
    """

    def __init__(self, channels: int, pools: Optional[int] = None, learning: str = "arl",
                 activation: str = "mixed", p: int = 1, t: int = 2, r: int = 1, bottom_units: Optional[int] = None,
                 upsample: str = "bilinear", mask_head: str = "preact", projection: Optional[str] = None,
                 conv_bias: Optional[bool] = None, shortcut_input: Optional[str] = None):
        super().__init__()
        check_choice("learning", learning, LEARNINGS)
        pools = STANDALONE_POOLS if pools is None else pools
        counts = {"pools": pools, "p": p, "t": t, "r": r, "bottom_units": 0 if bottom_units is None else bottom_units}
        bad = {k: v for k, v in counts.items() if not isinstance(v, int) or v < 0}
        if bad:
            raise ValueError(f"residual attention counts must be integers >= 0; got {bad}")
        # None leaves the unit's own default (the paper's); a backbone passes its unit style
        unit_kw = {k: v for k, v in dict(projection=projection, conv_bias=conv_bias,
                                         shortcut_input=shortcut_input).items() if v is not None}
        self.learning = learning
        self.pre = units(channels, p, **unit_kw)
        self.trunk = units(channels, t, **unit_kw)
        self.mask = SoftMaskBranch(channels, pools, r, bottom_units, upsample, mask_head, activation, **unit_kw)
        self.post = units(channels, p, **unit_kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pre(x)  # B, C, H, W
        trunk = self.trunk(x)
        m = self.mask(x)  # B, C, H, W
        if self.collecting:
            self.emit("mask", m)
        h = trunk * (1 + m) if self.learning == "arl" else trunk * m
        return self.post(h)
