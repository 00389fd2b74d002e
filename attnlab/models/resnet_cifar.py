"""CIFAR ResNets (He et al. 2016, arXiv 1512.03385, section 4.2) with attention hooks.

depth = 6n + 2: three stages of n BasicBlocks with 16/32/64 channels and strides 1/2/2,
global average pooling and one linear layer. Shortcut option A (parameter-free:
subsample and zero-pad channels) is the paper's CIFAR choice; option B (1x1 conv + BN)
is offered. Module names follow the common reference code (``conv1``, ``bn1``,
``layer1..3``, ``linear``) so its checkpoints load.

One add-on attention block (:func:`attnlab.layers.create_attn`) can be placed in two ways:

- ``placement="stage"``: after each stage listed in ``attn_stages`` (``attn1..attn3``),
  CNNtention's placement (arXiv 2412.11657);
- ``placement="block"``: inside every BasicBlock on the residual branch before the
  addition, the SE and CBAM papers' placement.

A conv-replacement block (role ``conv``: attention-augmented convolution, arXiv
1904.09925) instead replaces the first 3x3 convolution of the first block of each stage
in ``attn_stages`` (``placement="stage"``, Bello et al.'s "first layer of the stage"
for small networks) or of every block of those stages (``placement="block"``).

Initialisation: Kaiming normal, ``init="fan_in"`` (He et al. and the common CIFAR port)
or ``init="fan_out"`` (the CNNtention authors' ``kaiming_normal_(mode="fan_out")``).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import create_attn, get_attn


class PadShortcut(nn.Module):
    """Option A: ``x[:, :, ::2, ::2]`` with zero channels padded equally on both sides."""

    def __init__(self, pad_channels: int):
        super().__init__()
        self.pad_channels = pad_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.pad_channels
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, p, p))


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN (+ optional attention), add shortcut, ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "A",
                 attn: Optional[str] = None, attn_kw: Optional[dict] = None, conv_attn: Optional[str] = None):
        super().__init__()
        # conv_attn: a conv-role block (e.g. "aaconv") in place of the first 3x3 convolution
        self.conv1 = (create_attn(conv_attn, in_planes, planes, 3, stride=stride, **(attn_kw or {})) if conv_attn
                      else nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False))
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.attn = create_attn(attn, planes, **(attn_kw or {})) or nn.Identity()
        if stride == 1 and in_planes == planes:
            self.shortcut = nn.Identity()
        elif shortcut == "A":
            self.shortcut = PadShortcut(planes // 4)
        else:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False),
                                          nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.attn(self.bn2(self.conv2(out)))
        return F.relu(out + self.shortcut(x))


PLACEMENTS = ("stage", "block")
INITS = ("fan_in", "fan_out")


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs; ``in_channels=1`` gives the MNIST variant.

    Args:
        depth: 6n + 2 (20, 32, 44, 56, 110, ...).
        shortcut: ``"A"`` (zero-pad, the paper's CIFAR choice) or ``"B"`` (1x1 conv + BN).
        attn, attn_kw: an attention block and its options (``None``: plain ResNet): an
            add-on or module block, or a conv replacement (see the module docstring).
        placement: ``"stage"`` (after stages) or ``"block"`` (inside every BasicBlock);
            for a conv replacement: the first block of each stage, or every block.
        attn_stages: the stages (1-3) that get a block with ``placement="stage"``.
        init: Kaiming normal with ``"fan_in"`` or ``"fan_out"``.
    """

    def __init__(self, depth: int = 20, num_classes: int = 10, in_channels: int = 3,
                 shortcut: str = "A", attn: Optional[str] = None, attn_kw: Optional[dict] = None,
                 placement: str = "stage", attn_stages: tuple[int, ...] = (1, 2, 3),
                 init: str = "fan_in", widths: tuple[int, int, int] = (16, 32, 64)):
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 (20, 32, 44, 56, 110, ...), got {depth}")
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' (zero-pad) or 'B' (1x1 conv), got {shortcut!r}")
        if placement not in PLACEMENTS:
            raise ValueError(f"placement must be 'stage' (after stages, CNNtention) or 'block' "
                             f"(inside every residual block, the SE/CBAM papers), got {placement!r}")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        stages = tuple(attn_stages)
        if not set(stages) <= {1, 2, 3}:
            raise ValueError(f"attn_stages must be a subset of (1, 2, 3), got {attn_stages!r}")
        n = (depth - 2) // 6
        self.in_channels, self.num_classes = in_channels, num_classes
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        replaces_conv = attn not in (None, "none") and get_attn(attn).role == "conv"
        in_block = attn if placement == "block" and not replaces_conv else None
        planes_in = widths[0]
        for i, (w, stride) in enumerate(zip(widths, (1, 2, 2)), start=1):
            blocks = []
            for j in range(n):
                conv = attn if replaces_conv and i in stages and (j == 0 or placement == "block") else None
                blocks.append(BasicBlock(planes_in, w, stride if j == 0 else 1, shortcut, in_block, attn_kw, conv))
                planes_in = w
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
            after = attn if placement == "stage" and i in stages and not replaces_conv else None
            setattr(self, f"attn{i}", create_attn(after, w, **(attn_kw or {})) or nn.Identity())
        self.linear = nn.Linear(widths[-1], num_classes)
        self._init_weights(init)

    def _init_weights(self, init: str) -> None:
        # Kaiming normal on every conv and linear weight, attention blocks' 1x1 convs
        # included (as ``model.apply`` does in the reference code); scalar gates keep 0.
        mode = "fan_out" if init == "fan_out" else "fan_in"
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)) and m.weight.ndim > 1:
                nn.init.kaiming_normal_(m.weight, mode=mode, nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels or min(x.shape[2:]) < 8:
            raise ValueError(
                f"{type(self).__name__} expects images (B, {self.in_channels}, H, W) with H, W >= 8, "
                f"got shape {tuple(x.shape)}"
                + ("; for MNIST use in_channels=1" if x.ndim == 4 and x.shape[1] != self.in_channels else "")
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        out = F.relu(self.bn1(self.conv1(x)))  # B, 16, 32, 32
        out = self.attn1(self.layer1(out))  # B, 16, 32, 32
        out = self.attn2(self.layer2(out))  # B, 32, 16, 16
        out = self.attn3(self.layer3(out))  # B, 64, 8, 8
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))  # B, classes
