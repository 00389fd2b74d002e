"""Spatial-softmax attention: a map over positions that sums to one, rescaling the features.

The ``abcnn`` document ("Attention-Based Convolutional Neural Networks for Image
Classification") describes, after selected convolution stages, a convolution producing
attention logits, a softmax over the spatial positions turning them into a map that sums
to one, the feature maps multiplied element-wise by that map, and the weighted features
continuing through the network. It gives no further detail (kernel size, number of maps,
scaling, placement of the residual), so the block below fixes those choices.

**Decision** (the document is silent on each point):

- a 1x1 convolution ``C -> G`` without bias gives ``G`` logit maps (a bias is a constant
  per map, which the softmax cancels); ``G = groups = 1`` by default (one map per
  module), or one map per contiguous group of ``C / G`` channels;
- ``a = softmax over the H*W positions`` of each logit map, so ``sum_{h,w} a = 1``;
- ``F(x) = H*W * a * x``: multiplied by ``H*W`` so that a uniform map (every position
  ``1 / HW``) leaves the features unchanged. A raw map that sums to one would divide the
  features by ``HW`` (1024 at 32x32) and every later layer would have to undo it;
- the logit weights start at **zero** (``logit_init="zero"``): the map starts uniform, so the
  module starts as the identity and training decides where to look. With the Kaiming
  initialisation a backbone gives its convolutions (``logit_init="kaiming"``) the first stage's
  map is already peaked (up to ~40 x HW at one position in a fresh ResNet-20); the
  features it rescales feed the next stage's logits, whose maps then collapse onto a
  single position, and the network starts nearly blind;
- ``out = merge(F(x), x)`` with the merge modes of :mod:`.merge`: ``plain``
  (``out = F(x)``, what the document describes, the default), ``residual``
  (``F(x) + x``) or ``weighted`` (``w F(x) + x``, ``w`` a scalar initialised to 0, so the
  network starts as its backbone).

Closest published work: Jetley, Lord, Lee and Torr, "Learn to Pay Attention", ICLR 2018
(arXiv 1804.02391). There a compatibility score between each local feature and a global
feature ``g`` (``c_i = <u, l_i + g>`` with a learned vector ``u``, or ``<l_i, g>``) is normalised by a softmax over
positions, and the map **pools** the local features into a descriptor for the classifier;
the document (and this block) instead **rescales** the features and lets them continue.
Jetley et al. also report a sigmoid normalisation alternative; here the softmax is the
mechanism under study.

Maps (through :func:`.maps.collect_maps`): ``spatial`` ``(B, G, H, W)``, the softmax map
(each of the ``G`` maps sums to one over positions), and ``gate`` with ``merge="weighted"``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .maps import MapSource
from .merge import Merge
from .registry import register_attn


LOGIT_INITS = ("zero", "kaiming")


@register_attn("spatial_softmax")
class SpatialSoftmax(MapSource, nn.Module):
    """``out = merge(H*W * softmax_HW(conv1x1(x)) * x, x)``; ``C * G`` parameters (``C`` for
    one map), plus ``G`` with ``bias=True`` and the gate with ``merge="weighted"``.

    Args:
        channels: input and output channels ``C``.
        groups: number of maps ``G``; map ``g`` scales channels ``g*C/G .. (g+1)*C/G - 1``.
            ``C`` must be divisible by ``G``.
        bias: bias of the 1x1 logit convolution (off: the softmax cancels it, so it would
            only be a parameter that never receives a gradient).
        merge: ``plain`` (default: the document's rescaling) / ``residual`` / ``weighted``.
        logit_init: the 1x1 logit weights at the start: ``"zero"`` (default: a uniform map, so the
            module starts as the identity) or ``"kaiming"`` (Kaiming normal, fan_in, as a
            backbone initialises its convolutions).
    """

    def __init__(self, channels: int, groups: int = 1, bias: bool = False, merge: str = "plain",
                 logit_init: str = "zero"):
        super().__init__()
        if not isinstance(groups, int) or groups < 1 or channels % groups:
            raise ValueError(f"spatial_softmax: groups must be a positive divisor of channels={channels}, "
                             f"got {groups!r}")
        if logit_init not in LOGIT_INITS:
            raise ValueError(f"spatial_softmax: logit_init must be one of {', '.join(LOGIT_INITS)}, "
                             f"got {logit_init!r}")
        self.groups, self.logit_init = groups, logit_init
        # The 1x1 convolution's weights are plain parameters, not an nn.Conv2d, so that a
        # backbone's blanket Kaiming initialisation of its convolutions leaves ``logit_init`` alone.
        self.weight = nn.Parameter(torch.empty(groups, channels, 1, 1))  # G, C, 1, 1
        self.bias = nn.Parameter(torch.zeros(groups)) if bias else None
        self.merge = Merge(merge)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.logit_init == "zero":
            nn.init.zeros_(self.weight)
        else:
            nn.init.kaiming_normal_(self.weight, mode="fan_in", nonlinearity="relu")

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The attention logits ``(B, G, H, W)``: a 1x1 convolution of ``x``."""
        return F.conv2d(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The softmax map ``(B, G, H, W)``; each map sums to one over the ``H*W`` positions."""
        b, _, h, w = x.shape
        # float32 softmax: at 32x32 a uniform map is 1/1024, small for bf16 sums
        logits = self.logits(x).flatten(2).float()  # B, G, HW
        return logits.softmax(-1).view(b, self.groups, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, h, w = x.shape[1:]
        a = self.attention(x)  # B, G, H, W
        scale = (a * (h * w)).to(x.dtype)  # uniform map -> 1 everywhere
        if self.groups > 1:
            scale = scale.repeat_interleave(c // self.groups, dim=1)  # B, C, H, W
        if self.collecting:
            self.emit("spatial", a)
            self.emit("gate", self.merge.gate)
        return self.merge(x * scale, x)

    def extra_repr(self) -> str:
        return f"groups={self.groups}, logit_init={self.logit_init!r}"
