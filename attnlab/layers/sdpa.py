"""The scaled-dot-product attention core shared by the attention blocks.

``attend(q, k, v, scale)`` is ``softmax(q k^T * scale + bias) v`` over ``(B, h, N, d)``
tensors. On the training path it is :func:`torch.nn.functional.scaled_dot_product_attention`,
whose fused kernels never store the ``N x N`` matrix (at a 32x32 stage that is
1024 x 1024 per image and head). The explicit path builds the matrix; it is taken when a
caller asks for it, with ``explicit=True`` or inside :func:`explicit_attention` (the
benchmark compares both paths that way).

Fused kernels on CUDA (flash, memory-efficient, cuDNN) need the head width to be a
multiple of 8 (fp16/bf16) and otherwise fall back to the math path, which does store the
matrix; so on CUDA the heads are zero-padded to :data:`CUDA_HEAD_DIM_MULTIPLE`. Zeros
add nothing to ``q . k``, the zero columns of ``v`` come out as zero columns, and the
scale is passed explicitly, so the padding changes no value.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator, Optional

import torch
import torch.nn.functional as F

CUDA_HEAD_DIM_MULTIPLE = 8

_EXPLICIT = contextvars.ContextVar("attnlab_explicit_attention", default=False)


@contextlib.contextmanager
def explicit_attention(enabled: bool = True) -> Iterator[None]:
    """Inside the block, :func:`attend` always builds the explicit matrix (for comparisons)."""
    token = _EXPLICIT.set(enabled)
    try:
        yield
    finally:
        _EXPLICIT.reset(token)


def fused_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                    bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    d, dv = q.shape[-1], v.shape[-1]
    multiple = CUDA_HEAD_DIM_MULTIPLE if q.is_cuda else 1  # the CPU kernel takes any width
    pad_qk, pad_v = -d % multiple, -dv % multiple
    if pad_qk or pad_v:
        q, k = F.pad(q, (0, pad_qk)), F.pad(k, (0, pad_qk))
        v = F.pad(v, (0, pad_v))
    if bias is not None:
        bias = bias.to(q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
    return out[..., :dv] if pad_v else out


def attention_weights(q: torch.Tensor, k: torch.Tensor, scale: float,
                      bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``softmax(q k^T * scale + bias)`` over the keys: ``(B, h, Nq, Nk)``."""
    logits = (q @ k.transpose(-2, -1)) * scale  # B, h, Nq, Nk
    if bias is not None:
        logits = logits + bias
    return torch.softmax(logits, dim=-1)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, *,
           bias: Optional[torch.Tensor] = None, explicit: bool = False,
           rows: Optional[torch.Tensor] = None, need_weights: bool = False,
           ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``softmax(q k^T * scale + bias) v``; returns ``(out, weights)``.

    - ``bias``: additive logits broadcastable to ``(B, h, Nq, Nk)`` (relative positions).
    - ``explicit`` (or :func:`explicit_attention`): build the matrix, ``out = A v``.
    - ``need_weights``: also return attention weights; with ``rows`` (flat query
      indices) only those rows ``(B, h, len(rows), Nk)`` are built and ``out`` still comes
      from the fused kernel; without ``rows`` the whole matrix is built once and reused
      for ``out``.
    """
    explicit = explicit or _EXPLICIT.get()
    if need_weights and rows is None or explicit:
        a = attention_weights(q, k, scale, bias)
        return a @ v, (a if need_weights and rows is None else
                       (a[:, :, rows] if need_weights else None))
    out = fused_attention(q, k, v, scale, bias)
    if not need_weights:
        return out, None
    b = None if bias is None else bias[..., rows, :] if bias.shape[-2] > 1 else bias
    return out, attention_weights(q[:, :, rows], k, scale, b)
