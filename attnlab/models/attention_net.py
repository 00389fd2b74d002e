"""Residual Attention Networks for 32x32 inputs, and their no-mask and ResNet-164 baselines.

Wang et al., "Residual Attention Network for Image Classification", CVPR 2017,
arXiv 1704.06904. The paper gives the ImageNet layout and only the CIFAR results, so the
CIFAR network here is defined by analogy (no faithful public PyTorch CIFAR version
exists; the popular port is ImageNet-width, about 20M parameters for its CIFAR
Attention-92 against the paper's 1.9M):

- ``attention_net`` (the paper's style): conv3x3(16); three stages at 32x32, 16x16 and
  8x8, each one pre-activation bottleneck unit (outputs 64 / 128 / 256, ResNet-164's
  widths, stride 2 into stages 2 and 3) followed by ``modules[i]`` attention modules
  with 2 / 1 / 0 mask pools; three more units; BN-ReLU, global average pooling, a
  linear layer. Depth counts the trunk (a module adds ``2p + t = 4`` units, 12 layers):
  ``36m + 20`` with ``3m`` modules in all. ``modules=(1, 1, 1)`` is Attention-56
  (1,081,818 parameters) and ``(2, 2, 2)`` Attention-92 (1,825,690, near the paper's
  1.9M on CIFAR); the paper's ImageNet Attention-92 spreads its six modules 1 / 2 / 3
  (``modules=(1, 2, 3)``: 2,330,842 here).
- The slot: ``attn="residual_attention"`` puts attention modules in the stages listed in
  ``attn_stages``; ``attn=None`` (or a stage left out) gives each module's place to its
  trunk alone, ``2p + t`` units: the **masks-off twin**, a pre-activation ResNet of the
  same depth and width, so "what does the mask add" is one switch.
- ``ran_replication``: the Keras replication's network, as its code builds it: 5x5
  conv (64, with bias) and a 2x2 max-pool to 16x16; stages at 16x16 / 8x8 / 4x4 with
  3 / 2 / 1 mask pools (its 1-pool modules have no extra unit at the lowest scale);
  a unit widening to 512 at 4x4 and two more; BN-ReLU, 4x4 average pooling, a linear
  layer; every unit with a 1x1 projection shortcut on its raw input and biased convs;
  nearest upsampling and a linear two-conv mask head. 2,877,290 parameters for 10
  classes (``layernorm``: 2,878,186); Keras reported 2,892,970 / 2,893,866 because it
  counts the 15,680 BatchNorm running statistics, which are buffers here. Their
  Attention-92 script fed its second stage-2 module from the stage's first unit
  instead of the first module, which silently dropped a module; ``modules=(1, 2, 3)``
  here chains them.
- ``preact_resnet``: pre-activation ResNet (He et al. 2016, arXiv 1603.05027) of depth
  ``9n + 2`` with bottleneck units, 164 by default (1.7M parameters).

Settings that shape the whole network (mask depth per stage, unit style) are backbone
options; the backbone hands them to every module, so give them to the model, not in
``attn_kw``.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import attn_role, create_attn, get_attn
from ..layers.residual_attention import PreActBottleneck, units
from . import register_backbone

STEMS = ("conv3x3", "conv5x5_pool")


def _module_kw(attn: str, attn_kw: Optional[dict], owned: dict) -> dict:
    """``attn_kw`` with the backbone-owned settings ``owned`` put in; a value in ``attn_kw``
    that differs (the block's ``None`` means "the backbone's") is an error, since it would be
    silently overridden."""
    kw = dict(attn_kw or {})
    for k, v in owned.items():
        if kw.get(k) is not None and kw[k] != v:
            hint = "mask_pools / mask_bottom_units" if k in ("pools", "bottom_units") else k
            raise ValueError(f"{k}={kw[k]!r} is set per network by the backbone; pass it as the "
                             f"model option {hint!r} instead of in attn_kw")
        kw[k] = v
    return kw


def _init(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out" if isinstance(m, nn.Conv2d) else "fan_in",
                                    nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class AttentionNet(nn.Module):
    """Residual Attention Network for small images (see the module docstring).

    Args:
        modules: attention modules per stage, ``(1, 1, 1)`` = Attention-56.
        widths: unit outputs per stage (bottleneck width ``/ 4``).
        stem: ``"conv3x3"`` (3x3 conv, stride 1) or ``"conv5x5_pool"`` (the replication:
            5x5 conv with bias, then a 2x2 max-pool).
        stem_channels: the stem's output channels.
        mask_pools: each stage's mask depth (max-pool levels).
        mask_bottom_units: each stage's extra units at the mask's lowest scale (``None``: r).
        attn_stages: stages (1-3) whose modules get a soft mask; the others keep the trunk.
        end_units, end_width: units after stage 3, at ``end_width`` channels (``None``:
            stage 3's width) without downsampling.
        projection, conv_bias, shortcut_input: the unit style (paper vs replication), for
            every unit of the network, modules included.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, attn: Optional[str] = None,
                 attn_kw: Optional[dict] = None, modules: tuple[int, int, int] = (1, 1, 1),
                 widths: tuple[int, int, int] = (64, 128, 256), stem: str = "conv3x3", stem_channels: int = 16,
                 mask_pools: tuple[int, int, int] = (2, 1, 0),
                 mask_bottom_units: tuple[Optional[int], Optional[int], Optional[int]] = (None, None, None),
                 attn_stages: tuple[int, ...] = (1, 2, 3), end_units: int = 3, end_width: Optional[int] = None,
                 projection: str = "when_needed", conv_bias: bool = False, shortcut_input: str = "preact"):
        super().__init__()
        self._check(attn, modules, widths, stem, mask_pools, mask_bottom_units, attn_stages)
        self.in_channels, self.num_classes = in_channels, num_classes
        unit_kw = dict(projection=projection, conv_bias=conv_bias, shortcut_input=shortcut_input)
        if stem == "conv3x3":
            self.stem = nn.Conv2d(in_channels, stem_channels, 3, 1, 1, bias=conv_bias)
        else:
            self.stem = nn.Sequential(nn.Conv2d(in_channels, stem_channels, 5, 1, 2, bias=True), nn.MaxPool2d(2))
        trunk_units = self._trunk_units(attn_kw)
        c_in = stem_channels
        for i, (w, n, pools, bottom) in enumerate(zip(widths, modules, mask_pools, mask_bottom_units), start=1):
            blocks = [PreActBottleneck(c_in, w, 1 if i == 1 else 2, **unit_kw)]
            for _ in range(n):
                if attn is not None and i in attn_stages:
                    kw = _module_kw(attn, attn_kw, {"pools": pools, "bottom_units": bottom, **unit_kw})
                    blocks.append(create_attn(attn, w, **kw))
                else:
                    blocks.append(units(w, trunk_units, **unit_kw))
            setattr(self, f"stage{i}", nn.Sequential(*blocks))
            c_in = w
        end_width = end_width or c_in
        self.end = nn.Sequential(*(PreActBottleneck(c_in if j == 0 else end_width, end_width, **unit_kw)
                                   for j in range(end_units)))
        self.bn = nn.BatchNorm2d(end_width if end_units else c_in)
        self.linear = nn.Linear(end_width if end_units else c_in, num_classes)
        _init(self)

    @staticmethod
    def _trunk_units(attn_kw: Optional[dict]) -> int:
        # a module's trunk depth 2p + t (the block's defaults unless attn_kw sets p or t), so
        # a stage without masks keeps the depth of one with them
        opts = {**get_attn("residual_attention").options(), **(attn_kw or {})}
        return 2 * opts["p"] + opts["t"]

    @staticmethod
    def _check(attn, modules, widths, stem, mask_pools, mask_bottom_units, attn_stages) -> None:
        if attn is not None and attn_role(attn) != "module":
            raise ValueError(f"the attention_net slot takes a 'module'-role block (residual_attention); "
                             f"{attn!r} has role {attn_role(attn)!r}")
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
        for name, v in (("modules", modules), ("widths", widths), ("mask_pools", mask_pools),
                        ("mask_bottom_units", mask_bottom_units)):
            if len(tuple(v)) != 3:
                raise ValueError(f"{name} needs one value per stage (3), got {v!r}")
        if any(m < 0 for m in modules) or any(p < 0 for p in mask_pools):
            raise ValueError(f"modules and mask_pools must be >= 0, got {modules!r} and {mask_pools!r}")
        if not set(attn_stages) <= {1, 2, 3}:
            raise ValueError(f"attn_stages must be a subset of (1, 2, 3), got {attn_stages!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"{type(self).__name__} expects images (B, {self.in_channels}, H, W), "
                             f"got shape {tuple(x.shape)}")
        out = self.stem(x)  # B, 16, 32, 32 (replication: B, 64, 16, 16)
        out = self.stage1(out)  # B, 64, 32, 32
        out = self.stage2(out)  # B, 128, 16, 16
        out = self.stage3(out)  # B, 256, 8, 8
        out = F.relu(self.bn(self.end(out)))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))  # B, classes


register_backbone("attention_net", "Residual Attention Network for 32x32 inputs (Wang et al. 2017), "
                  "attention modules in the slot; attn=None is the masks-off twin")(AttentionNet)


@register_backbone("ran_replication", "the Keras replication's Residual Attention Network (16x16 / 8x8 / 4x4 stages)")
def ran_replication(num_classes: int = 10, in_channels: int = 3, attn: Optional[str] = None,
                    attn_kw: Optional[dict] = None, *, modules: tuple[int, int, int] = (1, 1, 1),
                    mask_pools: tuple[int, int, int] = (3, 2, 1),
                    mask_bottom_units: tuple[Optional[int], Optional[int], Optional[int]] = (None, None, 0),
                    attn_stages: tuple[int, ...] = (1, 2, 3), projection: str = "every", conv_bias: bool = True,
                    shortcut_input: str = "input") -> AttentionNet:
    """The replication's layout; its mask settings (nearest upsampling, linear head) are the
    model's ``attn_kw``."""
    return AttentionNet(num_classes, in_channels, attn, attn_kw, modules=modules, widths=(64, 128, 256),
                        stem="conv5x5_pool", stem_channels=64, mask_pools=mask_pools,
                        mask_bottom_units=mask_bottom_units, attn_stages=attn_stages, end_units=3,
                        end_width=512, projection=projection, conv_bias=conv_bias, shortcut_input=shortcut_input)


class PreActResNet(nn.Module):
    """Pre-activation bottleneck ResNet for 32x32 inputs, depth ``9n + 2`` (He et al. 2016,
    arXiv 1603.05027): conv3x3(16), three stages of ``n`` units with outputs 64 / 128 / 256,
    BN-ReLU, global average pooling, a linear layer. No attention slot."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, attn: Optional[str] = None,
                 attn_kw: Optional[dict] = None, depth: int = 164, widths: tuple[int, int, int] = (64, 128, 256)):
        super().__init__()
        if attn is not None:
            raise ValueError("preact_resnet has no attention slot; use attention_net for attention modules")
        if (depth - 2) % 9 or depth < 11:
            raise ValueError(f"pre-activation bottleneck ResNet depth must be 9n + 2 (56, 110, 164, ...), got {depth}")
        n = (depth - 2) // 9
        self.in_channels = in_channels
        self.stem = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        c_in = 16
        for i, w in enumerate(widths, start=1):
            blocks = [PreActBottleneck(c_in if j == 0 else w, w, (1 if i == 1 else 2) if j == 0 else 1)
                      for j in range(n)]
            setattr(self, f"stage{i}", nn.Sequential(*blocks))
            c_in = w
        self.bn = nn.BatchNorm2d(c_in)
        self.linear = nn.Linear(c_in, num_classes)
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"PreActResNet expects images (B, {self.in_channels}, H, W), got shape {tuple(x.shape)}")
        out = self.stage3(self.stage2(self.stage1(self.stem(x))))  # B, 256, 8, 8
        out = F.relu(self.bn(out))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


register_backbone("preact_resnet",
                  "pre-activation bottleneck ResNet-(9n+2) (He et al. 2016), no attention")(PreActResNet)
