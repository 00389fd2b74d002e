"""The Keras CNN of "Embedding Attention in CNNs for Improved Image Classification"
(a course report; paper id ``embedding_attention``), with one attention slot.

The report's final graph, for 32x32 RGB inputs::

    Conv3x3(64)-ReLU, Conv3x3(64)-ReLU, BatchNorm, MaxPool 2        -> 16x16x64
    attention (query = key = value = the feature map)               -> 16x16x64
    Conv5x5(256)-ReLU, Conv5x5(256)-ReLU, BatchNorm, MaxPool 3      -> 5x5x256
    Dropout 0.25, Flatten (6400), Dense 512-ReLU, Dropout 0.5, Dense 10

5,370,314 trainable parameters (Keras prints 5,370,954: it also counts the 640 BatchNorm
moving statistics, which are buffers in PyTorch). Convolutions use ``padding="same"``;
pools are Keras's ``MaxPooling2D`` (stride = pool size, no padding, so 16 // 3 = 5).

Deviations and options, each named:

- The report's printed model builder has a ``Dropout(0.1)`` after the first pool; its
  final graph (the one whose parameter count it reports) has none. This follows the graph.
- Keras defaults are on by default (``bn_momentum=0.01``, i.e. Keras's 0.99 in PyTorch's
  convention, ``bn_eps=1e-3``, ``init="glorot"``: Glorot-uniform weights and zero biases);
  ``bn_momentum=0.1, bn_eps=1e-5, init="torch"`` gives PyTorch's.
- Flatten runs over ``(C, H, W)`` here and ``(H, W, C)`` in Keras: the same layer up to a
  fixed permutation of the dense weights (it matters only when porting Keras weights).
- The builder's search space (Keras Tuner Hyperband) is exposed as options:
  ``kernel1`` (3/5), ``pool1`` (2/3), ``filters2`` (16..512), ``kernel2`` (3/5),
  ``pool2`` (2/3), ``dense`` (32..1024); the final graph is the default. ``filters1``
  (64 in the report, never searched) is an extra option for narrow, fast models.
- ``image_size``: the flatten width depends on the input size; 32 for CIFAR-10 and
  shapes, 28 for MNIST.
"""
from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import create_attn
from . import register_backbone

INITS = ("glorot", "torch")


def _conv_block(c_in: int, c_out: int, kernel: int, pool: int, momentum: float, eps: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, padding="same"), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, kernel, padding="same"), nn.ReLU(inplace=True),
        nn.BatchNorm2d(c_out, eps=eps, momentum=momentum),
        nn.MaxPool2d(pool),
    )


class EmbeddingCNN(nn.Module):
    """The report's two-block CNN with attention between the blocks (see the module doc).

    Args:
        attn, attn_kw: the block between the two convolution blocks (the report:
            ``embedding_attention`` with ``mode="row"``); ``None`` for no attention.
        kernel1, pool1: first block's kernel size and pool size (report: 3, 2).
        filters2, kernel2, pool2: second block's filters, kernel size, pool size (256, 5, 3).
        dense: units of the hidden dense layer (512).
        filters1: first block's filters (64; not part of the report's search).
        dropout, dense_dropout: after the second pool and after the dense layer (0.25, 0.5).
        bn_momentum, bn_eps: BatchNorm settings (Keras defaults: 0.01 in PyTorch's terms, 1e-3).
        init: ``"glorot"`` (Keras: Glorot-uniform, zero biases) or ``"torch"`` (PyTorch's defaults).
        image_size: input height and width (square), which sets the flatten width.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, attn: Optional[str] = None,
                 attn_kw: Optional[dict] = None, *, kernel1: Literal[3, 5] = 3, pool1: Literal[2, 3] = 2,
                 filters2: int = 256, kernel2: Literal[3, 5] = 5, pool2: Literal[2, 3] = 3, dense: int = 512,
                 filters1: int = 64, dropout: float = 0.25, dense_dropout: float = 0.5,
                 bn_momentum: float = 0.01, bn_eps: float = 1e-3,
                 init: Literal["glorot", "torch"] = "glorot", image_size: int = 32):
        super().__init__()
        for name, v in (("filters1", filters1), ("filters2", filters2), ("dense", dense)):
            if v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        after_pools = image_size // pool1 // pool2
        if after_pools < 1:
            raise ValueError(f"image_size {image_size} is too small for pools {pool1} and {pool2}")
        self.in_channels, self.image_size = in_channels, image_size
        self.block1 = _conv_block(in_channels, filters1, kernel1, pool1, bn_momentum, bn_eps)
        self.attn = create_attn(attn, filters1, **(attn_kw or {})) or nn.Identity()
        self.block2 = _conv_block(filters1, filters2, kernel2, pool2, bn_momentum, bn_eps)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(filters2 * after_pools ** 2, dense)
        self.dense_dropout = nn.Dropout(dense_dropout)
        self.head = nn.Linear(dense, num_classes)
        if init == "glorot":
            self._keras_init()

    def _keras_init(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)  # Keras's glorot_uniform: same fans, conv included
                nn.init.zeros_(m.bias)

    def check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels or tuple(x.shape[2:]) != (self.image_size,) * 2:
            raise ValueError(f"EmbeddingCNN expects images (B, {self.in_channels}, {self.image_size}, "
                             f"{self.image_size}), got shape {tuple(x.shape)}; set in_channels and "
                             f"image_size (e.g. in_channels=1, image_size=28 for MNIST)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        out = self.attn(self.block1(x))  # B, 64, 16, 16
        out = self.dropout(self.block2(out))  # B, 256, 5, 5
        out = self.dense_dropout(F.relu(self.fc(out.flatten(1))))  # B, 512
        return self.head(out)  # B, classes (logits; Keras applies the softmax in the layer)


register_backbone("embedding_cnn", "the Embedding Attention report's Keras CNN with an attention slot")(EmbeddingCNN)
