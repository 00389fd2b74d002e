"""Batches straight from tensors on the training device, augmented there in one go.

A ResNet-20 step on a CPU takes tens of milliseconds; a PIL pipeline spends about a
tenth of that per batch decoding, cropping and converting single images. Here the
whole split is one uint8 tensor on the device, and cropping, flipping and normalising
are a few batched tensor ops, with no worker processes to start or feed.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import torch

from ..hardware import MEMORY_FORMATS, resolve_memory_format
from .imageset import ImageSet

AUGMENTS = ("none", "crop", "crop_flip")


def random_crop_flip(x: torch.Tensor, padding: int, flip: bool, g: torch.Generator) -> torch.Tensor:
    """He et al. (2016) augmentation for a uint8 batch: crop from zero padding, h-flip.

    The random numbers come from the CPU generator ``g`` so a seed gives the same
    batch on every device. The result is laid out channels-last (the gather runs over
    pixels), which is the layout training uses by default.
    """
    b, c, h, w = x.shape
    oy = torch.randint(0, 2 * padding + 1, (b, 1), generator=g).to(x.device)
    ox = torch.randint(0, 2 * padding + 1, (b, 1), generator=g).to(x.device)
    rows = oy + torch.arange(h, device=x.device)  # B, H   (indices into the padded image)
    cols = ox + torch.arange(w, device=x.device)  # B, W
    if flip:
        flipped = (torch.rand(b, 1, generator=g) < 0.5).to(x.device)
        cols = torch.where(flipped, cols.flip(1), cols)
    xp = torch.nn.functional.pad(x, (padding,) * 4).permute(0, 2, 3, 1)  # B, H+2p, W+2p, C
    bi = torch.arange(b, device=x.device).view(b, 1, 1)
    return xp[bi, rows.unsqueeze(2), cols.unsqueeze(1)].permute(0, 3, 1, 2)  # B, C, H, W (NHWC in memory)


class DeviceLoader:
    """Iterate ``(images, labels)`` float batches from an :class:`ImageSet` on ``device``.

    Shuffling and augmentation for epoch ``e`` are drawn from ``seed`` and ``e`` alone
    (call :meth:`set_epoch`), so a resumed run sees exactly the batches it would have.
    Batches come in ``memory_format`` (``contiguous`` or ``channels_last``).
    """

    def __init__(self, data: ImageSet, batch_size: int = 128, *, mean: Sequence[float],
                 std: Sequence[float], shuffle: bool = False, augment: str = "none",
                 padding: int = 4, device: str | torch.device = "cpu", seed: int = 0,
                 drop_last: bool = False, memory_format: str = "contiguous"):
        if augment not in AUGMENTS:
            raise ValueError(f"unknown augment {augment!r}; allowed: {', '.join(AUGMENTS)}")
        self.device = torch.device(device)
        self.images = data.images.to(self.device)
        self.labels = data.labels.to(self.device)
        c = self.images.shape[1]
        # Fold /255 into the normalisation so a batch needs one fused multiply-add.
        self.scale = (1.0 / (255.0 * torch.tensor(std, dtype=torch.float32))).view(1, c, 1, 1).to(self.device)
        self.shift = (-torch.tensor(mean, dtype=torch.float32) / torch.tensor(std)).view(1, c, 1, 1).to(self.device)
        self.batch_size, self.shuffle, self.augment = batch_size, shuffle, augment
        self.padding, self.seed, self.drop_last, self.epoch = padding, seed, drop_last, 0
        self.memory_format = MEMORY_FORMATS[resolve_memory_format(memory_format)]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.shift, x.float(), self.scale)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        n = len(self.labels)
        order = torch.randperm(n, generator=g).to(self.device) if self.shuffle else None
        for i in range(len(self)):
            sl = slice(i * self.batch_size, min(n, (i + 1) * self.batch_size))
            if order is None:
                x, y = self.images[sl], self.labels[sl]
            else:
                idx = order[sl]
                x, y = self.images[idx], self.labels[idx]
            if self.augment != "none":
                x = random_crop_flip(x, self.padding, self.augment == "crop_flip", g)
            yield self.normalize(x).contiguous(memory_format=self.memory_format), y
