"""Multi-head self-attention over the HW positions of a feature map.

CNNtention (arXiv 2412.11657), following the
multi-head attention of Vaswani et al. 2017 (arXiv 1706.03762) with 1x1 convolutions
as the projections. As in CNNtention's code: heads are contiguous channel groups
(8 heads give head widths 2/4/8 at ResNet-20's 16/32/64-channel stages), the logits
are scaled by ``1/sqrt(d_h)``, there is no positional encoding, and the result is
merged with the input by :class:`.merge.Merge` (default ``weighted``, gate at 0).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .maps import MapSource
from .merge import Merge
from .registry import register_attn
from .sdpa import attend


@register_attn("mha")
class MultiHeadAttention2d(MapSource, nn.Module):
    """``merge(W_O concat_h softmax(Q_h K_h^T / sqrt(d_h)) V_h, x)``, CNNtention's MHA.

    Q, K, V and the output projection ``proj`` (W_O) are 1x1 ``Conv2d(C, C)`` with bias,
    so the block has ``4 * (C*C + C)`` parameters, plus one gate for ``weighted``.

    Args:
        channels: input and output channels ``C``; must be divisible by ``num_heads``.
        num_heads: number of heads; head ``i`` owns channels ``[i*d_h, (i+1)*d_h)``.
        merge: ``plain`` / ``residual`` / ``weighted`` (see :mod:`.merge`).
    """

    def __init__(self, channels: int, num_heads: int = 8, merge: str = "weighted"):
        super().__init__()
        if num_heads < 1 or channels % num_heads != 0:
            raise ValueError(
                f"channels ({channels}) must be divisible by num_heads ({num_heads}); "
                "heads are contiguous channel groups of equal width"
            )
        self.channels = channels
        self.num_heads = num_heads
        self.head_dim = channels // num_heads
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.query = nn.Conv2d(channels, channels, 1)
        self.key = nn.Conv2d(channels, channels, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        self.merge = Merge(merge)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        # B, C, H, W -> B, h, HW, d_h; contiguous so SDPA can use its fused kernel
        B = t.shape[0]
        return t.reshape(B, self.num_heads, self.head_dim, -1).transpose(-2, -1).contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        q = self._heads(self.query(x))  # B, h, HW, d_h
        k = self._heads(self.key(x))  # B, h, HW, d_h
        v = self._heads(self.value(x))  # B, h, HW, d_h
        rows = self.query_index(H, W) if self.collecting else None
        out, attn = attend(q, k, v, self.scale, rows=rows, need_weights=self.collecting)
        # concatenating the heads restores the channel order they were cut from
        out = out.transpose(-2, -1).reshape(B, C, H, W)  # B, h, d_h, HW -> B, C, H, W
        if self.collecting:
            self.emit("attention", attn.reshape(B, self.num_heads, -1, H, W))  # B, h, Q, H, W
            self.emit("gate", self.merge.gate)
        return self.merge(self.proj(out), x)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, num_heads={self.num_heads}, head_dim={self.head_dim}"
