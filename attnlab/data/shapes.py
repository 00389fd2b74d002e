"""``shapes``: an embedded, procedurally generated 10-class dataset (no download).

Each 32x32 RGB image holds one coloured object at a random position and size on a
cluttered background (smooth colour noise plus small distractor blobs). The class is
the object's shape; colour, position and size are nuisance factors. Each image keeps
its ground-truth object mask, so we can score *where* GradCAM or attention looks.
Generation is vectorised and deterministic given the seed.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from .imageset import ImageSet

SHAPE_CLASSES = [
    "disk", "square", "diamond", "triangle", "ring",
    "plus", "cross", "bar", "frame", "hourglass",
]
SIZE = 32
SHAPES_VERSION = 1  # bump when the generator changes, so stale caches are not reused
SPLIT_SEEDS = {"train": 1000, "test": 2000}
SPLIT_SIZES = {"train": 12000, "test": 2000}


def _inside(k: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Inside-test of class ``k`` on coordinates (u, v) normalised by the object radius."""
    au, av = u.abs(), v.abs()
    r = torch.sqrt(u * u + v * v)
    cheb = torch.maximum(au, av)
    name = SHAPE_CLASSES[k]
    if name == "disk":
        inside = r <= 1.0
    elif name == "square":
        inside = cheb <= 0.8
    elif name == "diamond":
        inside = au + av <= 1.0
    elif name == "triangle":  # apex up
        inside = (v <= 0.75) & (v >= -0.9) & (au <= (v + 0.9) * 0.6)
    elif name == "ring":
        inside = (r <= 1.0) & (r >= 0.55)
    elif name == "plus":
        inside = ((au <= 0.3) & (av <= 1.0)) | ((av <= 0.3) & (au <= 1.0))
    elif name == "cross":  # x
        inside = ((u - v).abs() <= 0.4) | ((u + v).abs() <= 0.4)
    elif name == "bar":  # horizontal
        inside = (av <= 0.32) & (au <= 1.0)
    elif name == "frame":
        inside = (cheb <= 0.9) & (cheb >= 0.55)
    else:  # hourglass
        inside = (av <= 0.9) & (au <= av * 0.9 + 0.1)
    return inside & (r <= 1.3)  # keeps the diagonal cross bounded


def _shape_masks(labels: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``(N, H, W)`` bool: image i's object of class ``labels[i]`` on its coordinates (u, v).

    Each image is tested only against its own class (10x less work than testing all).
    """
    mask = torch.zeros(u.shape, dtype=torch.bool)
    for k in labels.unique().tolist():
        sel = labels == k
        mask[sel] = _inside(k, u[sel], v[sel])
    return mask


def make_shapes(n: int, seed: int = 0, size: int = SIZE) -> ImageSet:
    """``n`` images, classes balanced (``i % 10``) and shuffled, from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % len(SHAPE_CLASSES)
    labels = labels[torch.randperm(n, generator=g)]

    # Smooth background: 4x4 colour noise upsampled, plus fine grain.
    bg = F.interpolate(torch.rand(n, 3, 4, 4, generator=g), size=(size, size),
                       mode="bicubic", align_corners=False)
    bg = 0.25 + 0.5 * bg + 0.06 * torch.randn(n, 3, size, size, generator=g)

    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    # Distractors: small blobs (radius 1.5-3 px) in random colours, never the object shape.
    for _ in range(3):
        c = torch.rand(n, 2, 1, 1, generator=g) * size
        rad = 1.5 + 1.5 * torch.rand(n, 1, 1, generator=g)
        blob = ((xs - c[:, 0]) ** 2 + (ys - c[:, 1]) ** 2) <= rad ** 2
        col = torch.rand(n, 3, 1, 1, generator=g)
        bg = torch.where(blob.unsqueeze(1), col, bg)

    radius = 6.0 + 4.0 * torch.rand(n, 1, 1, generator=g)
    margin = radius + 1
    cx = margin + (size - 2 * margin) * torch.rand(n, 1, 1, generator=g)
    cy = margin + (size - 2 * margin) * torch.rand(n, 1, 1, generator=g)
    mask = _shape_masks(labels, (xs - cx) / radius, (ys - cy) / radius)  # N, H, W

    # Object colour far enough from the local background to be visible.
    colour = torch.rand(n, 3, 1, 1, generator=g)
    bg_mean = bg.mean((2, 3), keepdim=True)
    dark = bg_mean.mean(1, keepdim=True) > 0.5
    colour = torch.where(dark, colour * 0.35, 0.65 + colour * 0.35)
    img = torch.where(mask.unsqueeze(1), colour, bg)
    images = (img.clamp(0, 1) * 255).round().to(torch.uint8)
    return ImageSet(images, labels, list(SHAPE_CLASSES), "shapes", "", mask)


@functools.lru_cache(maxsize=4)
def _cached_shapes(n: int, seed: int) -> ImageSet:
    return make_shapes(n, seed)


def load_shapes(split: str, n: int | None = None) -> ImageSet:
    """The fixed ``train`` or ``test`` split (generated once per process; treat as read-only)."""
    data = _cached_shapes(n or SPLIT_SIZES[split], SPLIT_SEEDS[split])
    return ImageSet(data.images, data.labels, data.classes, "shapes", split, data.masks)
