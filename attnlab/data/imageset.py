"""An image dataset held as one uint8 tensor, and its on-disk cache."""
from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from ..paths import atomic_path, clean_stale_temps


@dataclass
class ImageSet:
    """Images ``(N, C, H, W)`` uint8, labels ``(N,)`` int64, class names, optional masks."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    name: str = ""
    split: str = ""
    masks: Optional[torch.Tensor] = None  # N, H, W bool: ground-truth object pixels
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if len(self.labels) != len(self.images):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def take(self, index: torch.Tensor, split: Optional[str] = None) -> "ImageSet":
        return ImageSet(
            self.images[index], self.labels[index], self.classes, self.name,
            split or self.split, None if self.masks is None else self.masks[index], dict(self.meta),
        )

    def class_counts(self) -> torch.Tensor:
        return torch.bincount(self.labels, minlength=self.num_classes)


def content_digest(data: ImageSet) -> str:
    """SHA-256 of every byte of the images, labels and masks, and of the class names.

    Hashing is about 1 s per GB, a fraction of reading the file, and unlike a sample of
    the bytes it notices any change.
    """
    h = hashlib.sha256()
    for t in (data.images, data.labels, data.masks):
        if t is not None:
            h.update(str((t.dtype, tuple(t.shape))).encode())
            h.update(memoryview(t.contiguous().view(torch.uint8).numpy()))
    h.update(json.dumps([list(data.classes), data.name, data.split]).encode())
    return h.hexdigest()


def _legacy_checksum(images: torch.Tensor, labels: torch.Tensor) -> int:
    # format 1 sampled every n-th pixel; kept only to verify caches written before format 2
    step = max(1, images.numel() // 1_000_003)
    return int(images.flatten()[::step].long().sum()) * 31 + int(labels.sum()) * 7 + len(labels)


CACHE_FORMAT = 2


def save_cache(data: ImageSet, path: Path) -> None:
    """Write atomically (a crash mid-write leaves the old file, or none), with a digest of
    the whole content that :func:`load_cache` checks."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path.parent)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: a full disk raises OSError
        torch.save({
            "images": data.images, "labels": data.labels, "classes": data.classes,
            "masks": data.masks, "name": data.name, "split": data.split,
            "sha256": content_digest(data), "format": CACHE_FORMAT,
        }, f)


def load_cache(path: Path) -> Optional[ImageSet]:
    """The cached set, or ``None`` if there is none. A damaged file (any byte changed, cut
    short, unreadable) is reported, deleted and never used: the caller rebuilds it."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        data = ImageSet(blob["images"], blob["labels"], list(blob["classes"]), blob["name"],
                        blob["split"], blob.get("masks"))
        if data.masks is not None and data.masks.shape != (len(data), *data.shape[1:]):
            raise ValueError(f"masks of shape {tuple(data.masks.shape)} do not match the images")
        if blob.get("format", 1) < CACHE_FORMAT:
            if blob["checksum"] != _legacy_checksum(data.images, data.labels):
                raise ValueError("checksum mismatch")
            _upgrade(data, path)
        elif blob["sha256"] != content_digest(data):
            raise ValueError("checksum mismatch: its content differs from what was written")
    except Exception as exc:  # noqa: BLE001 - any failure to read means: rebuild
        warnings.warn(f"data cache {path} is corrupt ({type(exc).__name__}: {exc}); "
                      "deleting it and rebuilding from the source", stacklevel=3)
        path.unlink(missing_ok=True)
        return None
    return data


def _upgrade(data: ImageSet, path: Path) -> None:
    """Rewrite a format-1 cache with a full digest (its source may no longer be at hand)."""
    try:
        save_cache(data, path)
    except OSError as exc:
        warnings.warn(f"data cache {path} could not be upgraded to a full checksum ({exc})", stacklevel=4)
