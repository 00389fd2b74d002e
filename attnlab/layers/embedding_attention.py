"""Parameter-free dot-product attention, as in "Embedding Attention in CNNs for Improved
Image Classification" (a course report in Keras; paper id ``embedding_attention``).

The report puts ``keras.layers.Attention()([x, x])`` between the two convolution blocks of
a small CNN: the feature map is query, key and value at once, with no projections, no
scaling and so **no parameters**. Its text describes attention over all positions of the
feature map, but on a 4-D tensor ``(B, H, W, C)`` the Keras layer computes
``softmax(x x^T) x`` with a *batched* matrix product over the last two axes, so each image
row attends only **along W, within that row**: scores ``B x H x W x W``. The block offers
both readings:

- ``mode="row"``: what the report's code computed (Keras on a 4-D tensor);
- ``mode="global"``: what its text describes, all ``H*W`` positions (scores ``HW x HW``);
- ``mode="none"``: the input unchanged, the ablation point without attention (the same
  function as no block at all).

Costs per image: ``row`` builds ``H`` matrices of ``W x W`` (``H W^2 C`` multiply-adds for
the scores), ``global`` one of ``HW x HW`` (``H^2 W^2 C``), ``H`` times more.

The softmax-weighted sum is :func:`.sdpa.attend` with ``scale=1`` (Keras's
``use_scale=False``). Maps (through :func:`.maps.collect_maps`): ``attention`` rows
``(B, 1, Q, H, W)`` over the block's key grid; in ``row`` mode a query's weights are
zero outside its own image row, which is exactly what the layer does.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from .maps import MapSource
from .registry import register_attn
from .sdpa import attend

MODES = ("row", "global", "none")


@register_attn("embedding_attention")
class EmbeddingAttention(MapSource, nn.Module):
    """``softmax(x x^T) x`` over the positions of a feature map, with no parameters.

    Args:
        channels: input and output channels ``C`` (kept for the registry; nothing depends on it).
        mode: ``"row"`` (each image row attends within itself, what Keras's
            ``Attention()([x, x])`` does on ``(B, H, W, C)``; the report's code),
            ``"global"`` (every position over all ``H*W``, what the report's text says) or
            ``"none"`` (identity, the ablation without attention).
    """

    def __init__(self, channels: int, mode: Literal["row", "global", "none"] = "row"):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"embedding_attention mode must be one of {MODES} ('row': Keras's "
                             f"Attention()([x, x]) on a 4-D tensor; 'global': all positions), got {mode!r}")
        self.channels, self.mode = channels, mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "none":
            return x
        B, C, H, W = x.shape
        rows = self.query_index(H, W) if self.collecting else None
        if self.mode == "row":
            out, attn = self._row(x, rows)
        else:
            out, attn = self._global(x, rows)
        if self.collecting:
            self.emit("attention", attn)  # B, 1, Q, H, W
        return out

    def _row(self, x: torch.Tensor, rows) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, C, H, W = x.shape
        t = x.permute(0, 2, 3, 1).contiguous()  # B, H, W, C: each image row is one "head" of W tokens
        cols = None if rows is None else rows % W
        out, a = attend(t, t, t, 1.0, rows=cols, need_weights=self.collecting)
        out = out.permute(0, 3, 1, 2)  # B, H, W, C -> B, C, H, W
        if a is None:
            return out, None
        if rows is None:  # a: B, H, W, W -> every query row, zero outside the query's image row
            full = torch.einsum("brcw,rg->brcgw", a, torch.eye(H, dtype=a.dtype, device=a.device))
            return out, full.reshape(B, 1, H * W, H, W)
        # a: B, H, Q, W (the query's column in every image row); keep the query's own row
        maps = a.new_zeros(B, 1, len(rows), H, W)
        for i, q in enumerate(rows.tolist()):
            r = q // W
            maps[:, 0, i, r] = a[:, r, i]
        return out, maps

    def _global(self, x: torch.Tensor, rows) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, C, H, W = x.shape
        t = x.flatten(2).transpose(1, 2).unsqueeze(1).contiguous()  # B, 1, HW, C
        out, a = attend(t, t, t, 1.0, rows=rows, need_weights=self.collecting)
        out = out.squeeze(1).transpose(1, 2).reshape(B, C, H, W)  # B, HW, C -> B, C, H, W
        return out, None if a is None else a.reshape(B, 1, -1, H, W)  # B, 1, Q, H, W

    def extra_repr(self) -> str:
        return f"channels={self.channels}, mode={self.mode!r}"
