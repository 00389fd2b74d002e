"""``relations``: an embedded, procedurally generated same/different task (no download).

Each 32x32 RGB image holds two objects far apart: one in one half of the image, the
other in the opposite half (left/right or top/bottom, drawn at random), their centres
at least 13 pixels apart along the split (typically about 18 pixels apart), so they
never touch. Each object has a random shape (disk, triangle, plus or ring), size and
position, and a colour from a palette of four (red, green, blue, yellow, each with a
little jitter). The background is the cluttered one of ``shapes`` (smooth colour noise
plus small distractor blobs of random colour). The label is a relation between the
two objects:

- class 0 ``different``: the two objects have different palette colours;
- class 1 ``same``: the two objects have the same palette colour.

Classes are balanced, so chance is 50%. In both classes each object's colour is
uniform over the palette, and shapes, sizes and positions are drawn independently of
the label, so no single object says anything about the label: only comparing the two
does (the same/different problems of the Synthetic Visual Reasoning Test, Fleuret et
al. 2011, on which Kim, Ricci and Serre 2018, arXiv 1802.03390, found CNNs slow to learn).
Each image keeps the mask of both objects (the pixels the label depends on), so a
localisation score asks whether a saliency map covers them.

Why global context should matter (a hypothesis to test with this dataset, not a
result): a CIFAR ResNet ends in global average pooling and a linear layer, and no
linear function of a *sum* of per-object features can say "same" (it would need
``2 f(a) > t`` and ``2 f(b) > t`` but ``f(a) + f(b) < t``). So the comparison must
happen inside the convolutions, in units whose receptive fields span both objects.
ResNet-20's last stage has a theoretical receptive field wider than the image, but
its effective one is much smaller than the 13 or more pixels between the objects. A
self-attention block (SelfAtt, MHA, AA-Conv) compares every position with every
other in one layer: ``softmax(q_i . k_j)`` is large where the query at one object
matches the key at the other, which is the comparison the label needs. Channel
attention (SE) and spatial masks (CBAM, spatial softmax) reweight local features
without comparing them, so they should help less. (The first version compared the
objects' *shapes*; ResNet-20 stayed at chance at ``quick``, even with two shapes, so
the relation compares colours, whose features the first layer already has.)

Generation is vectorised and deterministic given the seed: :func:`sample_scenes`
draws the objects and labels, :func:`render` draws the background and paints the
objects, so a test can change one object and re-render on the same background.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F

from .imageset import ImageSet
from .shapes import SHAPE_CLASSES, _shape_masks

RELATION_CLASSES = ["different", "same"]
SIZE = 32
RELATIONS_VERSION = 2  # bump when the generator changes, so stale caches are not reused
SPLIT_SEEDS = {"train": 3000, "test": 4000}
SPLIT_SIZES = {"train": 12000, "test": 2000}
PALETTE_NAMES = ("red", "green", "blue", "yellow")
PALETTE = ((0.9, 0.1, 0.1), (0.1, 0.8, 0.1), (0.1, 0.2, 0.95), (0.95, 0.9, 0.1))
JITTER = 0.05              # each object's colour: its palette colour +- up to this per channel
#: the objects' shapes (a nuisance), as indices into ``SHAPE_CLASSES``
OBJECT_SHAPES = tuple(SHAPE_CLASSES.index(s) for s in ("disk", "triangle", "plus", "ring"))
RADIUS = (5.5, 6.5)        # object radius in pixels, drawn per object
NEAR_END = 9.5             # a centre lies at most this far from its own end of the split
DISTRACTORS = 3            # small blobs (radius 1.5-3 px) of clutter, as in ``shapes``
CHUNK = 1024               # images rendered at a time


@dataclass
class Scenes:
    """What each image shows; index ``[:, 0]`` / ``[:, 1]`` is object A / B."""

    labels: torch.Tensor      # N, int64: 1 where both objects have the same palette colour
    colour_ids: torch.Tensor  # N, 2, int64: indices into PALETTE
    jitter: torch.Tensor      # N, 2, 3 float: added to the palette colour
    shapes: torch.Tensor      # N, 2, int64: indices into SHAPE_CLASSES
    centres: torch.Tensor     # N, 2, 2 float: (x, y) in pixels
    radii: torch.Tensor       # N, 2 float

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def colours(self) -> torch.Tensor:
        """``(N, 2, 3)`` RGB in [0, 1] of each object."""
        return (torch.tensor(PALETTE)[self.colour_ids] + self.jitter).clamp(0, 1)


def relation_labels(colour_ids: torch.Tensor) -> torch.Tensor:
    """The rule: 1 (``same``) where both objects have the same palette colour, else 0."""
    return (colour_ids[:, 0] == colour_ids[:, 1]).long()


def _check(n, seed) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1 (number of images), got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**62:
        raise ValueError(f"seed must be an integer in [0, 2**62), got {seed!r}")


def sample_scenes(n: int, seed: int = 0) -> Scenes:
    """``n`` scenes, labels balanced (``i % 2``) and shuffled, from ``seed``."""
    _check(n, seed)
    g = torch.Generator().manual_seed(2 * seed)
    labels = (torch.arange(n) % 2)[torch.randperm(n, generator=g)]
    k = len(PALETTE)
    a = torch.randint(0, k, (n,), generator=g)
    # B = A shifted by 1..k-1 when different: B's colour is uniform in both classes too
    b = torch.where(labels == 1, a, (a + torch.randint(1, k, (n,), generator=g)) % k)
    jitter = JITTER * (2 * torch.rand(n, 2, 3, generator=g) - 1)
    shapes = torch.tensor(OBJECT_SHAPES)[torch.randint(0, len(OBJECT_SHAPES), (n, 2), generator=g)]
    radii = RADIUS[0] + (RADIUS[1] - RADIUS[0]) * torch.rand(n, 2, generator=g)
    lo = radii + 1  # keeps the object inside the image
    # along the split: A near the low end, B near the high end, then mirrored or not
    along = torch.stack([lo[:, 0] + (NEAR_END - lo[:, 0]) * torch.rand(n, generator=g),
                         SIZE - lo[:, 1] - (NEAR_END - lo[:, 1]) * torch.rand(n, generator=g)], 1)
    along = torch.where(torch.rand(n, 1, generator=g) < 0.5, SIZE - along, along)
    across = lo + (SIZE - 2 * lo) * torch.rand(n, 2, generator=g)
    vertical = torch.rand(n, 1, generator=g) < 0.5  # split top/bottom instead of left/right
    x, y = torch.where(vertical, across, along), torch.where(vertical, along, across)
    ids = torch.stack([a, b], 1)
    return Scenes(relation_labels(ids), ids, jitter, shapes, torch.stack([x, y], 2), radii)


def _background(n: int, g: torch.Generator, size: int) -> torch.Tensor:
    """Smooth colour noise, fine grain and small distractor blobs, as in ``shapes``."""
    bg = F.interpolate(torch.rand(n, 3, 4, 4, generator=g), size=(size, size),
                       mode="bicubic", align_corners=False)
    bg = 0.25 + 0.5 * bg + 0.06 * torch.randn(n, 3, size, size, generator=g)
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    for _ in range(DISTRACTORS):
        c = torch.rand(n, 2, 1, 1, generator=g) * size
        rad = 1.5 + 1.5 * torch.rand(n, 1, 1, generator=g)
        blob = ((xs - c[:, 0]) ** 2 + (ys - c[:, 1]) ** 2) <= rad ** 2
        bg = torch.where(blob.unsqueeze(1), torch.rand(n, 3, 1, 1, generator=g), bg)
    return bg


def object_masks(scenes: Scenes, size: int = SIZE) -> torch.Tensor:
    """``(N, 2, H, W)`` bool: the pixels of object A and of object B."""
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    masks = []
    for i in range(2):
        cx, cy = scenes.centres[:, i, 0].view(-1, 1, 1), scenes.centres[:, i, 1].view(-1, 1, 1)
        r = scenes.radii[:, i].view(-1, 1, 1)
        masks.append(_shape_masks(scenes.shapes[:, i], (xs - cx) / r, (ys - cy) / r))
    return torch.stack(masks, 1)


def _paint(scenes: Scenes, g: torch.Generator, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(N, 3, H, W)`` uint8 and the objects' masks ``(N, 2, H, W)`` of ``scenes``."""
    img = _background(len(scenes), g, size)
    objects = object_masks(scenes, size)
    colours = scenes.colours
    for i in range(2):
        img = torch.where(objects[:, i].unsqueeze(1), colours[:, i].view(-1, 3, 1, 1), img)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8), objects


def _slice(scenes: Scenes, start: int, length: int) -> Scenes:
    return Scenes(*(getattr(scenes, f.name)[start:start + length] for f in fields(Scenes)))


def render(scenes: Scenes, seed: int = 0, size: int = SIZE) -> ImageSet:
    """Paint ``scenes`` on backgrounds drawn from ``seed`` (the same seed, the same clutter)."""
    g = torch.Generator().manual_seed(2 * seed + 1)
    # chunks that stay in the CPU cache make the elementwise work 2-3x faster than one batch
    parts = [_paint(_slice(scenes, i, CHUNK), g, size) for i in range(0, len(scenes), CHUNK)]
    images, objects = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    return ImageSet(images, scenes.labels.clone(), list(RELATION_CLASSES), "relations", "",
                    objects.any(1))


def make_relations(n: int, seed: int = 0, size: int = SIZE) -> ImageSet:
    """``n`` images, classes balanced and shuffled, from ``seed``."""
    return render(sample_scenes(n, seed), seed, size)


def with_colour(scenes: Scenes, obj: int, colour_ids: torch.Tensor) -> Scenes:
    """``scenes`` with object ``obj`` (0: A, 1: B) in palette colours ``colour_ids``,
    labels recomputed by the rule; everything else unchanged."""
    if obj not in (0, 1):
        raise ValueError(f"obj must be 0 (object A) or 1 (object B), got {obj!r}")
    ids = scenes.colour_ids.clone()
    ids[:, obj] = colour_ids
    return replace(scenes, colour_ids=ids, labels=relation_labels(ids))


@functools.lru_cache(maxsize=4)
def _cached_relations(n: int, seed: int) -> ImageSet:
    return make_relations(n, seed)


def load_relations(split: str, n: int | None = None) -> ImageSet:
    """The fixed ``train`` or ``test`` split (generated once per process; treat as read-only)."""
    if split not in SPLIT_SEEDS:
        raise ValueError(f"unknown split {split!r} for relations; allowed: {', '.join(SPLIT_SEEDS)}")
    data = _cached_relations(SPLIT_SIZES[split] if n is None else n, SPLIT_SEEDS[split])
    return ImageSet(data.images, data.labels, data.classes, "relations", split, data.masks)
