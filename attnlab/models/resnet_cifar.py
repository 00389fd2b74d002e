"""CIFAR ResNets (He et al. 2016, arXiv 1512.03385, section 4.2) with attention hooks.

depth = 6n + 2: three stages of n BasicBlocks with 16/32/64 channels and strides 1/2/2,
global average pooling and one linear layer. Shortcut option A (parameter-free:
subsample and zero-pad channels) is the paper's CIFAR choice; option B (1x1 conv + BN)
is offered. Module names follow the common reference code (``conv1``, ``bn1``,
``layer1..3``, ``linear``) so its checkpoints load.

Two places take an attention block from :func:`attnlab.layers.create_attn`:

- ``attn``: after each stage (``attn1..attn3``), CNNtention's placement
  (arXiv 2412.11657, REFERENCE.md section 2);
- ``block_attn``: inside every BasicBlock on the residual branch before the addition,
  the SE and CBAM papers' placement.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import create_attn


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
                 attn: Optional[str] = None, attn_kw: Optional[dict] = None):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
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

    def forward(self, x: torch.Tensor, maps: Optional[dict] = None, name: str = "", **attn_kw) -> torch.Tensor:
        """``maps``: when given, the in-block attention's maps are stored there under ``name``."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if maps is not None and not isinstance(self.attn, nn.Identity):
            out, maps[name] = self.attn(out, return_attention=True, **attn_kw)
        else:
            out = self.attn(out)
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs; ``in_channels=1`` gives the MNIST variant."""

    def __init__(self, depth: int = 20, num_classes: int = 10, in_channels: int = 3,
                 shortcut: str = "A", attn: Optional[str] = None, attn_kw: Optional[dict] = None,
                 block_attn: Optional[str] = None, block_attn_kw: Optional[dict] = None,
                 widths: tuple[int, int, int] = (16, 32, 64)):
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 (20, 32, 44, 56, 110, ...), got {depth}")
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' (zero-pad) or 'B' (1x1 conv), got {shortcut!r}")
        n = (depth - 2) // 6
        self.in_channels, self.num_classes = in_channels, num_classes
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        planes_in = widths[0]
        for i, (w, stride) in enumerate(zip(widths, (1, 2, 2)), start=1):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(planes_in, w, stride if j == 0 else 1, shortcut,
                                         block_attn, block_attn_kw))
                planes_in = w
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
            setattr(self, f"attn{i}", create_attn(attn, w, **(attn_kw or {})) or nn.Identity())
        self.linear = nn.Linear(widths[-1], num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # Kaiming normal on every conv and linear weight, attention blocks' 1x1 convs
        # included (as ``model.apply`` does in the reference code); scalar gates keep 0.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)) and m.weight.ndim > 1:
                nn.init.kaiming_normal_(m.weight)
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

    def forward(self, x: torch.Tensor, return_attention: bool = False, **attn_kw):
        """Logits; with ``return_attention=True`` also the maps of every attention block,
        keyed by module name: ``attn1..3`` after the stages, ``layer1.0.attn`` ... inside
        blocks (``attn_kw`` such as ``query_index`` is passed to them)."""
        self.check_input(x)
        out = F.relu(self.bn1(self.conv1(x)))
        maps = {}
        for i in (1, 2, 3):
            layer = getattr(self, f"layer{i}")
            if return_attention:
                for j, basic in enumerate(layer):
                    out = basic(out, maps, f"layer{i}.{j}.attn", **attn_kw)
            else:
                out = layer(out)
            block = getattr(self, f"attn{i}")
            if return_attention and not isinstance(block, nn.Identity):
                out, maps[f"attn{i}"] = block(out, return_attention=True, **attn_kw)
            else:
                out = block(out)
        logits = self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))
        return (logits, maps) if return_attention else logits
