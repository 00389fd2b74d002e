"""Non-local self-attention over the HW positions of a feature map.

CNNtention (seed 000, arXiv 2412.11657), REFERENCE.md section 2, after SAGAN
(Zhang et al. 2018, arXiv 1805.08318). Deviations from SAGAN, as in seed 000's code:

- Q, K and V keep all ``C`` channels (SAGAN reduces Q and K to ``C/8``).
- The logits are **not** scaled by ``1/sqrt(d)``: the paper omits it on purpose, so the
  default is ``scale=1.0``. ``scale=None`` gives the usual ``1/sqrt(C)``.
- No positional encoding; the merge with the input is :class:`.merge.Merge`
  (default ``weighted``: ``w * F(x) + x`` with ``w`` initialised to 0).

The module also holds :func:`attend`, the "fused or explicit" attention core shared
with :mod:`.mha`.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from .merge import Merge
from . import register_attn

QueryIndex = Optional[Union[int, Sequence[int], torch.Tensor]]


def _as_index(query_index: QueryIndex, n: int, device: torch.device) -> torch.Tensor:
    idx = torch.as_tensor(query_index, dtype=torch.long, device=device).reshape(-1)
    if idx.numel() and (idx.min() < -n or idx.max() >= n):
        raise IndexError(f"query_index out of range for {n} positions")
    return idx


#: CUDA's fused SDPA kernels (flash, memory-efficient, cuDNN) need the head width to be a
#: multiple of 4 (fp32) or 8 (fp16/bf16) and otherwise fall back to the math path,
#: which materialises the N x N matrix. MHA with 8 heads has widths 2 and 4 in
#: ResNet-20's first stages, so on CUDA the heads are zero-padded to this multiple.
CUDA_HEAD_DIM_MULTIPLE = 8


def _fused(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, multiple: Optional[int] = None):
    d = q.shape[-1]
    if multiple is None:
        multiple = CUDA_HEAD_DIM_MULTIPLE if q.is_cuda else 1  # the CPU kernel takes any width
    pad = -d % multiple
    if pad:
        # zeros add nothing to q.k, and the zero columns of v come out as zero columns;
        # scale is passed explicitly, so the padded width does not change it
        q, k, v = (F.pad(t, (0, pad)) for t in (q, k, v))
        return F.scaled_dot_product_attention(q, k, v, scale=scale)[..., :d]
    return F.scaled_dot_product_attention(q, k, v, scale=scale)


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    return_attention: bool = False,
    query_index: QueryIndex = None,
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``softmax(q k^T * scale) v`` over ``(B, h, N, d)`` tensors; returns ``(out, attn)``.

    Without ``return_attention`` this is ``F.scaled_dot_product_attention``, which on
    CPU and GPU picks a fused kernel that never materialises the N x N matrix (at 32x32
    that is 1024 x 1024 per image and head). The fused kernels are skipped for
    non-contiguous inputs or unequal head widths, hence the caller's ``.contiguous()``;
    on CUDA, head widths that are not a multiple of 8 are zero-padded (see
    :data:`CUDA_HEAD_DIM_MULTIPLE`).

    With ``return_attention`` and ``query_index=None`` the whole matrix is computed
    explicitly (math path) and ``out = attn @ v``; ``attn`` is ``(B, h, N, N)``.
    With a ``query_index`` (int, list or LongTensor of flat query positions) only
    those rows are materialised, ``(B, h, Q, N)``, so maps of a 32x32 stage stay
    small; ``out`` then still comes from the fused kernel, which equals the math path.
    """
    if not return_attention:
        return _fused(q, k, v, scale), None
    if query_index is None:
        attn = torch.softmax((q @ k.transpose(-2, -1)) * scale, dim=-1)  # B, h, N, N
        return attn @ v, attn
    idx = _as_index(query_index, q.shape[-2], q.device)
    out = _fused(q, k, v, scale)
    attn = torch.softmax((q[:, :, idx] @ k.transpose(-2, -1)) * scale, dim=-1)  # B, h, Q, N
    return out, attn


def _gate(merge: Merge) -> Optional[torch.Tensor]:
    return None if merge.gate is None else merge.gate.detach()


@register_attn("selfatt")
class SelfAttention2d(nn.Module):
    """Single-head self-attention over the ``H*W`` positions, seed 000's SelfAtt.

    ``out = merge(A V, x)`` with ``A = softmax(Q K^T * scale)`` over keys and Q, K, V
    each a 1x1 ``Conv2d(C, C)`` with bias. Parameters: ``3 * (C*C + C)``, plus one gate
    for ``merge="weighted"``.

    Args:
        channels: input and output channels ``C``.
        merge: ``plain`` / ``residual`` / ``weighted`` (see :mod:`.merge`).
        scale: logit scale; ``1.0`` (default) is seed 000's unscaled attention,
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

    def forward(self, x: torch.Tensor, return_attention: bool = False, query_index: QueryIndex = None):
        B, C, H, W = x.shape
        q = self._tokens(self.query(x))  # B, 1, HW, C
        k = self._tokens(self.key(x))  # B, 1, HW, C
        v = self._tokens(self.value(x))  # B, 1, HW, C
        out, attn = attend(q, k, v, self.scale, return_attention, query_index)
        out = out.squeeze(1).transpose(1, 2).reshape(B, C, H, W)  # B, HW, C -> B, C, H, W
        out = self.merge(out, x)
        if return_attention:
            return out, {"attn": attn, "gate": _gate(self.merge)}
        return out

    def extra_repr(self) -> str:
        return f"channels={self.channels}, scale={self.scale:.4g}"
