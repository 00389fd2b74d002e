"""Attention-augmented convolution (AA-Conv) with 2-D relative position logits.

Bello, Zoph, Vaswani, Shlens, Le, "Attention Augmented Convolutional Networks", ICCV 2019,
arXiv 1904.09925:

    AAConv(X) = BN(Concat[Conv(X), MHA(X)])

- ``Conv``: a ``k x k`` convolution with ``F_out - d_v`` filters.
- ``MHA``: multi-head self-attention over all ``H*W`` positions with ``d_v`` output
  channels. Q, K and V come from **one 1x1 convolution** (``2 d_k + d_v`` filters), heads
  are contiguous channel groups (``d_k^h = d_k / N_h``, ``d_v^h = d_v / N_h``), and a 1x1
  output projection mixes the heads.
- The logits of head h are ``(q_i . k_j + S^H[i, j] + S^W[i, j]) / sqrt(d_k^h)`` with
  2-D relative position logits ``S^W[i, j] = q_i . r^W[x_j - x_i + W - 1]`` and
  ``S^H[i, j] = q_i . r^H[y_j - y_i + H - 1]``. A horizontal offset ``x_j - x_i`` runs
  from ``-(W-1)`` to ``W-1``, so ``r^W`` has **2W - 1 rows**, one per offset (row
  ``W - 1`` is offset 0); likewise ``r^H``. The tables are learned, shared by the heads
  (not by layers) and initialised ``N(0, (d_k^h)^-0.5)``.
- ``relative=False`` is the paper's "NRE" variant (no relative embeddings: plain
  multi-head attention beside the convolution).

The relative logits use the paper's "relative to absolute" trick: ``q . r`` for every
offset is a ``(..., W, 2W-1)`` tensor; one zero column, a flatten, ``W - 1`` zeros and a
reshape shift row ``i`` left by ``i``, turning "offset" columns into "key" columns
(:func:`rel_to_abs`). Nothing of size ``H x W x H x W x d`` is ever built.

What the popular PyTorch port gets wrong, and what this file does instead:

1. it scales ``q`` in place on a view of the QKV split, which breaks autograd on current
   PyTorch: here the scale is the attention kernel's ``scale`` argument, nothing is
   modified in place;
2. it computes Q, K, V with a ``k x k`` convolution: here a 1x1 convolution, as the paper;
3. it initialises the relative tables with std 1: here ``(d_k^h)^-0.5``;
4. it has no BatchNorm after the concatenation: here ``batchnorm=True`` by default
   (``False`` reproduces that omission for a block used on its own; inside a backbone
   whose next layer is a BatchNorm, as in the pre-activation WRN and in ResNet, that
   BatchNorm already normalises the concatenation and the block's own is redundant);
5. it works only for square inputs of one fixed size: here any ``H`` and ``W``; the
   tables are sized by ``size`` (the largest attention grid they must cover) or from the
   first input, and a smaller grid uses their central rows.

Strided layers: with ``stride=s`` the convolution is strided and the attention runs on
the input average-pooled by ``s`` (ceil mode, so both parts have the same ``ceil(H/s)``
grid): the paper attends over the downsampled grid. ``kernel_size`` must be odd
(``same`` padding).

Three ways to compute the attention (``path``), equal up to rounding:

- ``"fused"`` (default): the relative logits are folded into the fused kernel. For query
  ``i`` the row ``[R^H_i, R^W_i]`` (its logits against every key row and column) is
  appended to ``q_i``, and the one-hot ``[e_{y_j}, e_{x_j}]`` of key ``j``'s row and
  column to ``k_j``; then ``q'_i . k'_j = q_i . k_j + S^H[i, j] + S^W[i, j]`` exactly, and
  :func:`torch.nn.functional.scaled_dot_product_attention` runs without any ``HW x HW``
  tensor (``v`` is zero-padded to the same width so the CPU kernel applies).
- ``"bias"``: the relative logits as an additive ``(B, N_h, HW, HW)`` bias to the
  attention kernel (:func:`.sdpa.attend`). PyTorch's CPU kernel falls back to its math
  path for a bias that needs gradients, so this builds the matrices; it is kept as the
  obvious formulation to compare against.
- ``"explicit"``: ``softmax(q k^T * scale + bias) v``, the textbook path.

``fused`` is the default because it is both the lightest and, on a CPU, the fastest: a
training step (forward and backward) of one layer with 64 channels on a 16x16 grid at
batch 32 took 0.76 s fused, 1.59 s with a bias and 2.09 s explicit on one CPU thread,
and its memory grows with ``hw`` instead of ``(hw)^2`` (:mod:`attnlab.memory`). Folding
widens q and k by ``h + w``, so at large grids it spends more arithmetic than the
explicit product; that is the price of never storing the matrix.

Maps (through :func:`.maps.collect_maps`): ``attention`` rows ``(B, N_h, Q, h, w)`` for the
query pixel, per head, on the attention grid.
"""
from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parameter import UninitializedParameter

from .maps import MapSource
from .registry import register_attn
from .sdpa import attend

PATHS = ("fused", "bias", "explicit")


def rel_to_abs(x: torch.Tensor) -> torch.Tensor:
    """``(..., L, 2L-1)`` logits per relative offset -> ``(..., L, L)`` logits per key:
    ``out[..., i, j] = x[..., i, j - i + L - 1]`` (the paper's pad-and-reshape trick)."""
    *lead, L, M = x.shape
    if M != 2 * L - 1:
        raise ValueError(f"rel_to_abs needs (..., L, 2L-1), got {tuple(x.shape)}")
    x = F.pad(x, (0, 1))  # ..., L, 2L: one zero column
    x = x.reshape(*lead, 2 * L * L)  # rows laid end to end
    x = F.pad(x, (0, L - 1))  # ..., (L+1)(2L-1)
    # read back with rows one shorter: row i now starts i places further along
    return x.reshape(*lead, L + 1, 2 * L - 1)[..., :L, L - 1:]


def relative_logits_1d(q: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """``q`` ``(B, h, A, L, d)`` against ``table`` ``(2L-1, d)`` along the last grid axis:
    ``(B, h, A, L, L)``, entry ``[..., a, i, j] = q[..., a, i] . table[j - i + L - 1]``."""
    rel = torch.einsum("bnald,md->bnalm", q, table)  # B, h, A, L, 2L-1
    return rel_to_abs(rel)


def split_size(value: Union[int, float], channels: int, num_heads: int, name: str,
               min_per_head: int = 0) -> int:
    """``d_k`` or ``d_v`` in channels: an int as given (it must be a multiple of
    ``num_heads``), a float as a fraction of ``channels`` rounded to the nearest multiple
    of ``num_heads`` (at least one channel per head)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be an int (channels) or a float (fraction of out_channels), got {value!r}")
    if isinstance(value, int):
        if value < num_heads or value % num_heads:
            near = sorted({max(num_heads, value // num_heads * num_heads), (value // num_heads + 1) * num_heads})
            heads = [h for h in range(1, value + 1) if value % h == 0] if value > 0 else []
            raise ValueError(f"{name}={value} channels is not a positive multiple of num_heads={num_heads}; "
                             f"valid: {name} in {near} (multiples of {num_heads}), or num_heads in {heads}")
        return value
    if not 0 < value <= 1:
        raise ValueError(f"{name}={value} as a fraction of out_channels must be in (0, 1]; "
                         f"give an int for a number of channels")
    size = value * channels
    if min_per_head:  # "at least d per head where the width allows": never above channels
        size = max(size, min(min_per_head * num_heads, channels))
    return max(num_heads, round(size / num_heads) * num_heads)


@register_attn("aaconv", role="conv")
class AugmentedConv2d(MapSource, nn.Module):
    """``BN(concat[conv_kxk(x), W_O MHA(x)])``: Bello et al.'s attention-augmented convolution.

    Parameters: ``C_in (F_out - d_v) k^2`` (conv, no bias) ``+ (C_in + 1)(2 d_k + d_v)``
    (QKV 1x1 conv) ``+ (d_v + 1) d_v`` (output projection) ``+ (2W - 1 + 2H - 1) d_k^h``
    (relative tables) ``+ 2 F_out`` (BatchNorm).

    Args:
        in_channels, out_channels: ``C_in`` and ``F_out``.
        kernel_size: odd ``k`` of the convolution part.
        stride: 1 or more; the attention runs on the input average-pooled by ``stride``.
        dk: key/query channels ``d_k``: a float is a fraction kappa of ``out_channels``
            (paper: 0.2), an int a number of channels.
        dv: value channels ``d_v`` (the attention's share of the output): a float is a
            fraction upsilon (paper: 0.1), an int a number of channels; at most ``F_out``.
        num_heads: ``N_h`` (paper: 8); must divide ``d_k`` and ``d_v``.
        relative: 2-D relative position logits (``False``: the paper's NRE variant).
        batchnorm: BatchNorm after the concatenation (the paper); ``False`` is the ports'
            omission (see the module docstring for when a backbone's BN stands in).
        size: ``(H, W)`` of the largest attention grid the relative tables must cover;
            ``None`` sizes them from the first input.
        min_dk_per_head: raise a fractional ``d_k`` to this many channels per head, but
            not above ``out_channels`` (Bello et al.'s CIFAR models: 20).
        path: ``"fused"``, ``"bias"`` or ``"explicit"`` (see the module docstring).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 dk: Union[int, float] = 0.2, dv: Union[int, float] = 0.1, num_heads: int = 8,
                 relative: bool = True, batchnorm: bool = True,
                 size: Optional[tuple[int, int]] = None, min_dk_per_head: int = 0, path: str = "fused"):
        super().__init__()
        self._check_args(kernel_size, stride, num_heads, path, size)
        self.dk = split_size(dk, out_channels, num_heads, "dk", min_dk_per_head)
        self.dv = split_size(dv, out_channels, num_heads, "dv")
        if self.dv > out_channels:
            raise ValueError(f"dv={self.dv} exceeds out_channels={out_channels}: the attention gives dv "
                             f"of the {out_channels} output channels, the convolution the rest")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.num_heads = kernel_size, stride, num_heads
        self.dkh, self.dvh = self.dk // num_heads, self.dv // num_heads
        self.relative, self.path = relative, path
        self.scale = self.dkh ** -0.5
        conv_out = out_channels - self.dv
        self.conv = nn.Conv2d(in_channels, conv_out, kernel_size, stride, kernel_size // 2,
                              bias=False) if conv_out else None
        self.qkv = nn.Conv2d(in_channels, 2 * self.dk + self.dv, 1)
        self.proj = nn.Conv2d(self.dv, self.dv, 1)
        self.bn = nn.BatchNorm2d(out_channels) if batchnorm else None
        self.size: Optional[tuple[int, int]] = None
        if relative:
            self.rel_h, self.rel_w = UninitializedParameter(), UninitializedParameter()
            if size is not None:
                self._make_tables(*size)

    @staticmethod
    def _check_args(kernel_size, stride, num_heads, path, size) -> None:
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (same padding), got {kernel_size}")
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        if num_heads < 1:
            raise ValueError(f"num_heads must be >= 1, got {num_heads}")
        if path not in PATHS:
            raise ValueError(f"path must be one of {PATHS}, got {path!r}")
        if size is not None and (len(size) != 2 or min(size) < 1):
            raise ValueError(f"size must be (H, W) of the attention grid with H, W >= 1, got {size!r}")

    # -- relative tables -----------------------------------------------------------------
    def _make_tables(self, h: int, w: int) -> None:
        """Materialise ``r^H`` (2h-1, d_k^h) and ``r^W`` (2w-1, d_k^h), N(0, d_k^h^-0.5)."""
        std = self.dkh ** -0.5
        for table, n in ((self.rel_h, 2 * h - 1), (self.rel_w, 2 * w - 1)):
            table.materialize((n, self.dkh), device=self.qkv.weight.device, dtype=self.qkv.weight.dtype)
            with torch.no_grad():
                table.normal_(0.0, std)
        self.size = (h, w)

    def _tables(self, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The central ``2h-1`` and ``2w-1`` rows (offsets ``-(h-1)..h-1``) of the tables."""
        if self.size is None:
            self._make_tables(h, w)
        H, W = self.size
        if h > H or w > W:
            raise ValueError(
                f"{type(self).__name__}: the relative tables cover attention grids up to {H}x{W} "
                f"(rows 2*{H}-1 and 2*{W}-1), this input needs {h}x{w}; build the block with "
                f"size=({max(h, H)}, {max(w, W)}) or larger (in a backbone: a larger input_size)")
        return self.rel_h[H - h:H + h - 1], self.rel_w[W - w:W + w - 1]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # tables sized from a first input: take the stored size when loading a checkpoint
        if self.relative and self.size is None and prefix + "rel_h" in state_dict:
            (nh, _), (nw, _) = state_dict[prefix + "rel_h"].shape, state_dict[prefix + "rel_w"].shape
            self._make_tables((nh + 1) // 2, (nw + 1) // 2)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- attention -----------------------------------------------------------------------
    def _heads(self, t: torch.Tensor, d: int) -> torch.Tensor:
        # B, N_h * d, h, w -> B, N_h, h, w, d (heads are contiguous channel groups)
        B, _, h, w = t.shape
        return t.reshape(B, self.num_heads, d, h, w).permute(0, 1, 3, 4, 2)

    def relative_logits(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``q`` ``(B, N_h, h, w, d_k^h)`` -> ``R^H`` ``(B, N_h, h, w, h)`` and ``R^W``
        ``(B, N_h, h, w, w)``: query ``(y, x)`` against every key row and every key column."""
        h, w = q.shape[2:4]
        r_h, r_w = self._tables(h, w)
        R_w = relative_logits_1d(q, r_w)  # B, N_h, h, w, w
        R_h = relative_logits_1d(q.transpose(2, 3), r_h).transpose(2, 3)  # B, N_h, h, w, h
        return R_h, R_w

    def attention(self, x: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The MHA part before the output projection: ``(B, d_v, h, w)`` and, when
        collecting maps, the attention rows ``(B, N_h, Q, h, w)``."""
        q, k, v = torch.split(self.qkv(x), [self.dk, self.dk, self.dv], dim=1)
        B, _, h, w = q.shape
        n = h * w
        q, k, v = self._heads(q, self.dkh), self._heads(k, self.dkh), self._heads(v, self.dvh)
        rel = self.relative_logits(q) if self.relative else None
        q, k, v = (t.reshape(B, self.num_heads, n, -1) for t in (q, k, v))  # B, N_h, HW, d
        rows = self.query_index(h, w) if self.collecting else None
        if self.path == "fused":
            q, k, v = self._folded(q, k, v, rel, h, w)
            out, attn = attend(q, k, v, self.scale, rows=rows, need_weights=self.collecting)
            out = out[..., :self.dvh]
        else:
            bias = None
            if rel is not None:  # B, N_h, (y_i, x_i), (y_j, x_j)
                bias = (rel[0].unsqueeze(-1) + rel[1].unsqueeze(-2)).reshape(B, self.num_heads, n, n) * self.scale
            out, attn = attend(q, k, v, self.scale, bias=bias, explicit=self.path == "explicit",
                               rows=rows, need_weights=self.collecting)
        out = out.transpose(2, 3).reshape(B, self.dv, h, w)  # B, N_h, d_v^h, HW -> B, d_v, h, w
        return out, None if attn is None else attn.reshape(B, self.num_heads, -1, h, w)

    def _folded(self, q, k, v, rel, h: int, w: int):
        """q, k, v of one width for the fused kernel, the relative logits folded into q . k."""
        if rel is not None:
            B, nh, n = q.shape[:3]
            R = torch.cat(rel, dim=-1).reshape(B, nh, n, h + w)  # B, N_h, HW, h + w
            ys, xs = torch.arange(h, device=q.device), torch.arange(w, device=q.device)
            one_hot = torch.cat([F.one_hot(ys, h).repeat_interleave(w, 0),
                                 F.one_hot(xs, w).repeat(h, 1)], dim=1).to(k.dtype)  # HW, h + w
            q = torch.cat([q, R.to(q.dtype)], dim=-1)
            k = torch.cat([k, one_hot.expand(B, nh, n, h + w)], dim=-1)
        width = max(q.shape[-1], v.shape[-1])  # zero padding changes no dot product
        pad = lambda t: F.pad(t, (0, width - t.shape[-1])) if t.shape[-1] < width else t  # noqa: E731
        return pad(q).contiguous(), pad(k).contiguous(), pad(v).contiguous()

    def attention_grid(self, h: int, w: int) -> tuple[int, int]:
        """The ``(h, w)`` the attention runs on for an ``h x w`` input."""
        return -(-h // self.stride), -(-w // self.stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"{type(self).__name__} expects (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        xa = F.avg_pool2d(x, self.stride, self.stride, ceil_mode=True) if self.stride > 1 else x
        att, rows = self.attention(xa)  # B, d_v, h, w
        if self.collecting:
            self.emit("attention", rows)
        parts = [self.conv(x)] if self.conv is not None else []
        out = torch.cat(parts + [self.proj(att)], dim=1)  # B, F_out, h, w
        return self.bn(out) if self.bn is not None else out

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"dk={self.dk}, dv={self.dv}, num_heads={self.num_heads}, relative={self.relative}, "
                f"size={self.size}, path={self.path!r}")
