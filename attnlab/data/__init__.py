"""Datasets as uint8 tensors, deterministic splits, and the on-device loader.

>>> data = load_data("shapes")          # train / val / test + training-set statistics
>>> loader = data.loader("train", batch_size=128, device="cpu", seed=0)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ..paths import data_root
from .imageset import ImageSet, load_cache, save_cache
from .loader import AUGMENTS, DeviceLoader, random_crop_flip
from .shapes import SHAPE_CLASSES, SHAPES_VERSION, load_shapes
from .sources import (CIFAR10_CLASSES, DataUnavailableError, cache_path, from_torchvision,
                      imagefolder_key, read_imagefolder)


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    in_channels: int
    size: int
    augment: str       # training augmentation that suits the images
    val_size: int      # held out of the official training set
    description: str


DATASETS = {
    "cifar10": DatasetInfo("cifar10", 10, 3, 32, "crop_flip", 5000, "CIFAR-10, 50k/10k 32x32 RGB"),
    "cifar100": DatasetInfo("cifar100", 100, 3, 32, "crop_flip", 5000, "CIFAR-100, 50k/10k 32x32 RGB"),
    # Digits must not be mirrored; crops keep the 28x28 size used at test time.
    "mnist": DatasetInfo("mnist", 10, 1, 28, "crop", 5000, "MNIST, 60k/10k 28x28 grey"),
    "shapes": DatasetInfo("shapes", 10, 3, 32, "crop_flip", 2000,
                          "embedded synthetic shapes with object masks, 12k/2k 32x32 RGB"),
    "imagefolder": DatasetInfo("imagefolder", 0, 3, 0, "crop_flip", 0,
                               "your own ImageFolder tree or .tar.gz (path=...), train/ and test/"),
}
SPLITS = ("train", "val", "test", "trainval")


def list_datasets() -> list[str]:
    return list(DATASETS)


def dataset_info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")
    return DATASETS[name]


def _official(name: str, split: str, root: Path, path: Optional[Path]) -> ImageSet:
    """The official ``train`` or ``test`` split, from the cache or built once."""
    key = {"imagefolder": imagefolder_key(path) if path else "", "shapes": f"shapes-v{SHAPES_VERSION}"}.get(name, name)
    cpath = cache_path(root, key, split)
    data = load_cache(cpath)
    if data is None:
        if name == "shapes":  # generating takes seconds; loading the cache a fraction of one
            data = load_shapes(split)
        elif name == "imagefolder":
            if path is None:
                raise ValueError("dataset 'imagefolder' needs path=<folder or .tar.gz with train/ and test/>")
            data = read_imagefolder(Path(path), split, "imagefolder")
        else:
            data = from_torchvision(name, split, root)
        save_cache(data, cpath)
    return data


def split_indices(n: int, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded train/validation partition of ``range(n)`` (the test split is never touched)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[val_size:].sort().values, perm[:val_size].sort().values


def load_dataset(name: str, split: str = "train", root: str | Path | None = None, *,
                 val_size: Optional[int] = None, split_seed: int = 0,
                 path: str | Path | None = None) -> ImageSet:
    """Load one split as an :class:`ImageSet`.

    ``train`` and ``val`` partition the official training set (``val_size`` images,
    chosen by ``split_seed``); ``trainval`` is all of it; ``test`` is the official test set.
    """
    info = dataset_info(name)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    root = Path(root) if root is not None else data_root()
    if split == "test":
        return _official(name, "test", root, path)
    full = _official(name, "train", root, path)
    if split == "trainval":
        return full
    tr, va = split_indices(len(full), _val_size(info, len(full), val_size), split_seed)
    return full.take(tr if split == "train" else va, split)


def _val_size(info: DatasetInfo, n: int, val_size: Optional[int]) -> int:
    """The requested size, else the paper's (5k for CIFAR), else a tenth of the data."""
    vs = val_size if val_size is not None else (info.val_size or max(1, n // 10))
    if not 0 < vs < n:
        raise ValueError(f"val_size must be between 1 and {n - 1}, got {vs}")
    return vs


def channel_stats(data: ImageSet) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] units (computed in chunks to bound memory)."""
    c = data.images.shape[1]
    s = torch.zeros(c, dtype=torch.float64)
    s2 = torch.zeros(c, dtype=torch.float64)
    for chunk in data.images.split(8192):
        x = chunk.double().div_(255).transpose(0, 1).reshape(c, -1)
        s += x.sum(1)
        s2 += (x * x).sum(1)
    n = data.images.numel() / c
    mean = s / n
    std = (s2 / n - mean**2).clamp_min(1e-12).sqrt()
    return mean.tolist(), std.tolist()


@dataclass
class DataSplits:
    """Train / validation / test sets plus the training-set statistics used to normalise."""

    name: str
    train: ImageSet
    val: ImageSet
    test: ImageSet
    mean: list[float]
    std: list[float]
    augment: str

    @property
    def classes(self) -> list[str]:
        return self.train.classes

    @property
    def num_classes(self) -> int:
        return self.train.num_classes

    @property
    def in_channels(self) -> int:
        return self.train.images.shape[1]

    def loader(self, split: str, batch_size: int = 128, device="cpu", seed: int = 0,
               augment: Optional[str] = None) -> DeviceLoader:
        """Training loader shuffles and augments; evaluation loaders do neither."""
        data = {"train": self.train, "val": self.val, "test": self.test}[split]
        train = split == "train"
        return DeviceLoader(data, batch_size, mean=self.mean, std=self.std, shuffle=train,
                            augment=(augment or self.augment) if train else "none",
                            device=device, seed=seed, drop_last=False)

    def summary(self) -> str:
        return (f"{self.name}: train {len(self.train)}, val {len(self.val)}, test {len(self.test)}, "
                f"{self.num_classes} classes, {tuple(self.train.shape)}, augment {self.augment}")


def subsample(data: ImageSet, n: Optional[int], seed: int = 0) -> ImageSet:
    """A seeded random subset of ``n`` images (all of them if ``n`` is None or too big)."""
    if n is None or n >= len(data):
        return data
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return data.take(idx)


def load_data(name: str, root: str | Path | None = None, *, val_size: Optional[int] = None,
              split_seed: int = 0, train_subset: Optional[int] = None,
              eval_subset: Optional[int] = None, path: str | Path | None = None,
              augment: Optional[str] = None) -> DataSplits:
    """Everything a training run needs. Subsets (for quick profiles) are seeded and logged."""
    info = dataset_info(name)
    root = Path(root) if root is not None else data_root()
    full = _official(name, "train", root, path)
    tr, va = split_indices(len(full), _val_size(info, len(full), val_size), split_seed)
    train, val = full.take(tr, "train"), full.take(va, "val")
    test = _official(name, "test", root, path)
    mean, std = channel_stats(train)  # statistics of the full training split, not the subset
    train = subsample(train, train_subset, split_seed)
    val, test = subsample(val, eval_subset, split_seed), subsample(test, eval_subset, split_seed)
    aug = augment or info.augment
    if aug not in AUGMENTS:
        raise ValueError(f"unknown augment {aug!r}; allowed: {', '.join(AUGMENTS)}")
    return DataSplits(name, train, val, test, mean, std, aug)


def import_dataset(name: str, source: str | Path, root: str | Path | None = None) -> dict[str, int]:
    """Decode an offline ImageFolder copy (folders or ``train.tar.gz``/``test.tar.gz``) once
    into the cache, after which ``load_dataset(name)`` works without a network."""
    if name not in ("cifar10", "cifar100", "mnist"):
        raise ValueError(f"import supports cifar10, cifar100 and mnist, not {name!r}; "
                         "use dataset 'imagefolder' with path=... for other data")
    info = DATASETS[name]
    root = Path(root) if root is not None else data_root()
    classes = CIFAR10_CLASSES if name == "cifar10" else None
    counts = {}
    for split in ("train", "test"):
        data = read_imagefolder(Path(source), split, name, info.in_channels, classes)
        if data.num_classes != info.num_classes:
            raise ValueError(f"{source} has {data.num_classes} classes for {split}; {name} has {info.num_classes}")
        if data.shape[1:] != (info.size, info.size):
            raise ValueError(f"{source} images are {data.shape[1:]}, {name} needs {info.size}x{info.size}")
        save_cache(data, cache_path(root, name, split))
        counts[split] = len(data)
    return counts


def cached_datasets(root: str | Path | None = None) -> dict[str, list[str]]:
    """Which dataset splits are in the cache: ``{"cifar10": ["test", "train"], ...}``."""
    root = Path(root) if root is not None else data_root()
    found: dict[str, list[str]] = {}
    for p in sorted((root / "cache").glob("*.pt")):
        name, _, split = p.stem.rpartition("-")
        found.setdefault(name, []).append(split)
    return found


__all__ = [
    "ImageSet", "DataSplits", "DeviceLoader", "DatasetInfo", "DATASETS", "SHAPE_CLASSES",
    "DataUnavailableError", "load_dataset", "load_data", "list_datasets", "dataset_info",
    "import_dataset", "cached_datasets", "channel_stats", "random_crop_flip", "split_indices",
    "save_cache", "load_cache", "subsample",
]
