"""Wide ResNets and ResNet-18/34 for CIFAR, with a convolution-replacing attention slot.

- ``wrn``: WRN-d-k (Zagoruyko and Komodakis 2016, arXiv 1605.07146): a 3x3 stem with 16
  channels, three groups of ``n = (d - 4) / 6`` pre-activation basic blocks
  (BN-ReLU-conv3x3-BN-ReLU-dropout-conv3x3) with ``16k / 32k / 64k`` channels and strides
  1/2/2, then BN-ReLU, global average pooling and one linear layer. Where a block changes
  width or resolution its shortcut is a 1x1 convolution on the pre-activated input, as in
  the authors' code. WRN-28-10 has 36.5M parameters, WRN-16-4 2.7M.
- ``resnet_basic``: ResNet-18/34 as He et al. 2016 (arXiv 1512.03385) built them for
  ImageNet (post-activation basic blocks, 64/128/256/512 channels, 1x1 projection
  shortcuts with BatchNorm), for 32x32 inputs with one of two stems:
  ``stem="imagenet"`` (7x7 stride 2 + 3x3 max-pool: the attention-augmentation
  replication's choice, so the last stage sees 2x2 inputs) or ``stem="cifar"`` (3x3
  stride 1, no pool: the last stage sees 8x8 inputs and works on 4x4).

The attention slot takes a block of role ``conv`` (:func:`attnlab.layers.create_attn`,
e.g. ``"aaconv"``) and puts it in place of the **first convolution** of residual blocks,
chosen by ``attn_at``:

- ``"all"``: every residual block (Bello et al. 2019, arXiv 1904.09925, for WRN);
- ``"last"``: every block of the last group / stage;
- ``"last_first"``: only the first block of the last group / stage (one layer).

The convolution that follows the slot in both block designs is a BatchNorm (``bn2`` of
the pre-activation block, ``bn1`` of the post-activation one): that BatchNorm normalises
the attention-augmented convolution's concatenation, which is why the named AA models
build the block with ``batchnorm=False``. The backbone sizes the block's relative tables
for ``input_size x input_size`` inputs (``size=`` of the block, unless given).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import attn_role, create_attn, get_attn
from . import register_backbone

ATTN_AT = ("all", "last", "last_first")


def _slot_blocks(attn: Optional[str], attn_at: str, blocks_per_group: list[int]) -> set[tuple[int, int]]:
    """The ``(group, block)`` indices whose first convolution takes the attention block."""
    if attn_at not in ATTN_AT:
        raise ValueError(f"attn_at must be one of {ATTN_AT} (every block / every block of the last "
                         f"group / the last group's first block only), got {attn_at!r}")
    if attn is None or attn == "none":
        return set()
    if attn_role(attn) != "conv":
        raise ValueError(f"this backbone's attention slot replaces a convolution, so it takes a block of "
                         f"role 'conv' (e.g. 'aaconv'); {attn!r} has role {attn_role(attn)!r}")
    last = len(blocks_per_group) - 1
    return {(g, b) for g, n in enumerate(blocks_per_group) for b in range(n)
            if attn_at == "all" or (g == last and (attn_at == "last" or b == 0))}


def slot_conv(in_ch: int, out_ch: int, stride: int, attn: Optional[str], attn_kw: Optional[dict],
              input_grid: int) -> nn.Module:
    """A 3x3 convolution (no bias), or the attention block in its place with relative
    tables sized for the ``input_grid x input_grid`` maps this layer sees."""
    if attn is None:
        return nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
    kw = dict(attn_kw or {})
    if "size" in get_attn(attn).options() and kw.get("size") is None:
        grid = -(-input_grid // stride)
        kw["size"] = (grid, grid)
    return create_attn(attn, in_ch, out_ch, 3, stride, **kw)


def _init(model: nn.Module) -> None:
    # Kaiming normal (fan_out) on convolutions, as both reference codes; BN 1 / 0.
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)


class PreActBlock(nn.Module):
    """WRN block: BN-ReLU-conv3x3 (or the attention slot)-BN-ReLU-dropout-conv3x3, + shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, dropout: float, conv1: nn.Module):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = conv1
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.shortcut = (nn.Conv2d(in_ch, out_ch, 1, stride, bias=False)
                         if stride != 1 or in_ch != out_ch else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn1(x))
        y = self.conv2(self.dropout(F.relu(self.bn2(self.conv1(o)))))
        # a changing block's shortcut sees the pre-activated input, as in the WRN code
        return y + (self.shortcut(o) if self.shortcut is not None else x)


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor`` for 32x32 inputs.

    Args:
        depth: 6n + 4 (16, 22, 28, 40, ...).
        widen_factor: k; groups have 16k, 32k and 64k channels.
        dropout: dropout between the two convolutions of each block (WRN paper: 0.3 in
            some runs; 0 by default).
        attn, attn_kw: a ``conv``-role block in place of first convolutions (None: plain WRN).
        attn_at: ``"all"`` (Bello et al.), ``"last"`` or ``"last_first"`` (the replication).
        input_size: the input height and width the relative tables are sized for.
    """

    def __init__(self, depth: int = 28, widen_factor: int = 10, num_classes: int = 10, in_channels: int = 3,
                 attn: Optional[str] = None, attn_kw: Optional[dict] = None, dropout: float = 0.0,
                 attn_at: str = "all", input_size: int = 32):
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"WRN depth must be 6n + 4 (10, 16, 22, 28, 40, ...), got {depth}")
        if widen_factor < 1:
            raise ValueError(f"widen_factor must be >= 1, got {widen_factor}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        n = (depth - 4) // 6
        widths = [16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        slots = _slot_blocks(attn, attn_at, [n, n, n])
        self.in_channels, self.num_classes = in_channels, num_classes
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        ch, grid = 16, input_size
        for g, (w, stride) in enumerate(zip(widths, (1, 2, 2))):
            blocks = []
            for b in range(n):
                s = stride if b == 0 else 1
                here = attn if (g, b) in slots else None
                blocks.append(PreActBlock(ch, w, s, dropout, slot_conv(ch, w, s, here, attn_kw, grid)))
                ch, grid = w, -(-grid // s)
            setattr(self, f"block{g + 1}", nn.Sequential(*blocks))
        self.bn = nn.BatchNorm2d(ch)
        self.fc = nn.Linear(ch, num_classes)
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"WideResNet expects images (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        out = self.conv1(x)  # B, 16, 32, 32
        out = self.block3(self.block2(self.block1(out)))  # B, 64k, 8, 8
        out = F.relu(self.bn(out))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))  # B, classes


class BasicBlock(nn.Module):
    """He et al.'s basic block: conv3x3 (or the slot)-BN-ReLU-conv3x3-BN, + shortcut, ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, conv1: nn.Module):
        super().__init__()
        self.conv1 = conv1
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = (nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))
                         if stride != 1 or in_ch != out_ch else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


STEMS = ("imagenet", "cifar")


class ResNetBasic(nn.Module):
    """ResNet with basic blocks (``layers=(3, 4, 6, 3)``: ResNet-34; ``(2, 2, 2, 2)``: ResNet-18).

    Args:
        layers: blocks per stage; stages have ``widths`` channels and strides 1/2/2/2.
        stem: ``"imagenet"`` (7x7/2 conv + 3x3/2 max-pool: 32x32 -> 8x8 before stage 1) or
            ``"cifar"`` (3x3/1 conv, no pool).
        attn, attn_kw, attn_at, input_size: the attention slot (see the module docstring).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, attn: Optional[str] = None,
                 attn_kw: Optional[dict] = None, layers: tuple[int, ...] = (3, 4, 6, 3),
                 widths: tuple[int, ...] = (64, 128, 256, 512), stem: str = "imagenet",
                 attn_at: str = "all", input_size: int = 32):
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"stem must be 'imagenet' (7x7 stride 2 + max-pool) or 'cifar' (3x3, no pool), "
                             f"got {stem!r}")
        if len(layers) != len(widths) or not layers or min(layers) < 1:
            raise ValueError(f"layers and widths need one entry per stage (each >= 1 block), got {layers}, {widths}")
        self.in_channels, self.num_classes = in_channels, num_classes
        slots = _slot_blocks(attn, attn_at, list(layers))
        if stem == "imagenet":
            self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 7, 2, 3, bias=False),
                                      nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
            grid = -(-input_size // 4)
        else:
            self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
                                      nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
            grid = input_size
        ch = widths[0]
        for g, (n, w) in enumerate(zip(layers, widths)):
            blocks = []
            for b in range(n):
                s = 2 if g > 0 and b == 0 else 1
                here = attn if (g, b) in slots else None
                blocks.append(BasicBlock(ch, w, s, slot_conv(ch, w, s, here, attn_kw, grid)))
                ch, grid = w, -(-grid // s)
            setattr(self, f"layer{g + 1}", nn.Sequential(*blocks))
        self.num_stages = len(layers)
        self.fc = nn.Linear(ch, num_classes)
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"ResNetBasic expects images (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        out = self.stem(x)  # B, 64, 8, 8 (imagenet stem) or 32, 32 (cifar stem)
        for i in range(1, self.num_stages + 1):
            out = getattr(self, f"layer{i}")(out)  # last: B, 512, 1, 1 (imagenet) or 4, 4 (cifar)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))  # B, classes


register_backbone("wrn", "Wide ResNet WRN-d-k for CIFAR (Zagoruyko and Komodakis 2016) with a conv-replacing "
                  "attention slot")(WideResNet)
register_backbone("resnet_basic", "ResNet-18/34 (He et al. 2016 ImageNet design) for 32x32 inputs, ImageNet "
                  "or CIFAR stem, with a conv-replacing attention slot")(ResNetBasic)
