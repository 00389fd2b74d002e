"""Non-local self-attention over the HW positions of a feature map.

CNNtention (arXiv 2412.11657), after SAGAN
(Zhang et al. 2018, arXiv 1805.08318). Deviations from SAGAN, as in the CNNtention authors' code:

- Q, K and V keep all ``C`` channels (SAGAN reduces Q and K to ``C/8``).
- The logits are **not** scaled by ``1/sqrt(d)``: the paper omits it on purpose, so the
  default is ``scale=1.0``. ``scale=None`` gives the usual ``1/sqrt(C)``.
- No positional encoding; the merge with the input is :class:`.merge.Merge`
  (default ``weighted``: ``w * F(x) + x`` with ``w`` initialised to 0).

The attention itself is :func:`.sdpa.attend`, the core shared with :mod:`.mha`.
Maps (through :func:`.maps.collect_maps`): ``attention`` rows and the ``gate``.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from .maps import MapSource
from .merge import Merge
from .registry import register_attn
from .sdpa import attend

@register_attn("selfatt")
class SelfAttention2d(MapSource, nn.Module):
    """Single-head self-attention over the ``H*W`` positions, CNNtention's SelfAtt.

    ``out = merge(A V, x)`` with ``A = softmax(Q K^T * scale)`` over keys and Q, K, V
    each a 1x1 ``Conv2d(C, C)`` with bias. Parameters: ``3 * (C*C + C)``, plus one gate
    for ``merge="weighted"``.

    Args:
        channels: input and output channels ``C``.
        merge: ``plain`` / ``residual`` / ``weighted`` (see :mod:`.merge`).
        scale: logit scale; ``1.0`` (default) is CNNtention's unscaled attention,
            ``None`` means ``1/sqrt(C)``.
    """

    def __init__(self, channels: int, merge: str = "weighted", scale: Optional[float] = 1.0):
        super().__init__()
        self.channels = channels
        self.scale = 1.0 / math.sqrt(channels) if scale is None else float(scale)
        self.query = nn.Conv2d(channels, channels, 1)
        self.key = nn.Conv2d(channels, channels, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.merge = Merge(merge)

    def _tokens(self, t: torch.Tensor) -> torch.Tensor:
        # B, C, H, W -> B, 1, HW, C; contiguous so SDPA can use its fused kernel
        return t.flatten(2).transpose(1, 2).unsqueeze(1).contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        q = self._tokens(self.query(x))  # B, 1, HW, C
        k = self._tokens(self.key(x))  # B, 1, HW, C
        v = self._tokens(self.value(x))  # B, 1, HW, C
        rows = self.query_index(H, W) if self.collecting else None
        out, attn = attend(q, k, v, self.scale, rows=rows, need_weights=self.collecting)
        out = out.squeeze(1).transpose(1, 2).reshape(B, C, H, W)  # B, HW, C -> B, C, H, W
        if self.collecting:
            self.emit("attention", attn.reshape(B, 1, -1, H, W))  # B, 1, Q, H, W
            self.emit("gate", self.merge.gate)
        return self.merge(out, x)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, scale={self.scale:.4g}"
