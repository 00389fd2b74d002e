"""Datasets as uint8 tensors, deterministic splits, and the on-device loader.

>>> data = load_data("shapes")          # train / val / test + training-set statistics
>>> loader = data.loader("train", batch_size=128, device="cpu", seed=0)
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..paths import data_root
from .imageset import ImageSet, load_cache, save_cache
from .loader import AUGMENTS, DeviceLoader, random_crop_flip
from .relations import RELATION_CLASSES, RELATIONS_VERSION, load_relations
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
    # crops and flips keep both objects' colours, so they keep the label
    "relations": DatasetInfo("relations", 2, 3, 32, "crop_flip", 2000,
                             "embedded same/different task: do two objects in opposite halves share "
                             "a colour? (needs global context), object masks, 12k/2k 32x32 RGB"),
    "imagefolder": DatasetInfo("imagefolder", 0, 3, 0, "crop_flip", 0,
                               "your own ImageFolder tree or .tar.gz (path=...), train/ and test/"),
}
SPLITS = ("train", "val", "test", "trainval")
#: the datasets generated here, no download: name -> (generator version, split loader)
GENERATED = {"shapes": (SHAPES_VERSION, load_shapes), "relations": (RELATIONS_VERSION, load_relations)}


def list_datasets() -> list[str]:
    return list(DATASETS)


def dataset_info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")
    return DATASETS[name]


def _official(name: str, split: str, root: Path, path: Optional[Path]) -> ImageSet:
    """The official ``train`` or ``test`` split, from the cache or built once."""
    if name == "imagefolder" and path is None:
        raise ValueError("dataset 'imagefolder' needs path=<folder or .tar.gz with train/ and test/>")
    key = {"imagefolder": imagefolder_key(path) if path else "",
           **{g: f"{g}-v{version}" for g, (version, _) in GENERATED.items()}}.get(name, name)
    cpath = cache_path(root, key, split)
    # an ImageFolder's classes come from its training split, whichever split is asked for
    classes = _official(name, "train", root, path).classes if name == "imagefolder" and split != "train" else None
    data = load_cache(cpath)
    if data is not None and classes is not None and data.classes != classes:
        data = None  # cached before the classes were taken from the training split
    if data is None:
        if name in GENERATED:  # generating takes seconds; loading the cache a fraction of one
            data = GENERATED[name][1](split)
        elif name == "imagefolder":
            data = read_imagefolder(Path(path), split, "imagefolder", classes=classes)
        else:
            data = from_torchvision(name, split, root)
        _save_cache_if_possible(data, cpath)
    return data


def _save_cache_if_possible(data: ImageSet, cpath: Path) -> None:
    """A read-only or full data folder costs the next load a rebuild, not this one its data."""
    try:
        save_cache(data, cpath)
    except OSError as exc:
        warnings.warn(f"could not write the data cache {cpath} ({exc.strerror or exc}); continuing "
                      "without it (set ATTNLAB_DATA to a writable folder to cache)", stacklevel=3)


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
    check_data_options(name, val_size=val_size, split_seed=split_seed, path=path)
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
               augment: Optional[str] = None, mean: Optional[Sequence[float]] = None,
               std: Optional[Sequence[float]] = None, memory_format: str = "contiguous") -> DeviceLoader:
        """Training loader shuffles and augments; evaluation loaders do neither.

        ``mean`` / ``std`` replace the training-set statistics, for weights trained with
        other ones (a released checkpoint states what it expects). ``memory_format``:
        the batches' layout (``contiguous`` or ``channels_last``, as :func:`attnlab.fit`
        trains by default).
        """
        data = {"train": self.train, "val": self.val, "test": self.test}[split]
        train = split == "train"
        mean, std = (self.mean if mean is None else list(mean)), (self.std if std is None else list(std))
        if len(mean) != self.in_channels or len(std) != self.in_channels:
            raise ValueError(f"mean and std need {self.in_channels} values (one per channel), "
                             f"got {len(mean)} and {len(std)}")
        return DeviceLoader(data, batch_size, mean=mean, std=std, shuffle=train,
                            augment=(augment or self.augment) if train else "none",
                            device=device, seed=seed, drop_last=False, memory_format=memory_format)

    def summary(self) -> str:
        return (f"{self.name}: train {len(self.train)}, val {len(self.val)}, test {len(self.test)}, "
                f"{self.num_classes} classes, {tuple(self.train.shape)}, augment {self.augment}")


def _check_count(name: str, value, minimum: int = 1) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
        raise ValueError(f"{name} must be an integer >= {minimum} or None (all), got {value!r}")


def check_data_options(name: str, *, val_size=None, split_seed=0, train_subset=None, eval_subset=None,
                       augment=None, path=None) -> None:
    """Types and ranges of :func:`load_data`'s options, with what is allowed (a run config
    checks its ``data_kw`` with it when it is built)."""
    for option, value in (("train_subset", train_subset), ("eval_subset", eval_subset), ("val_size", val_size)):
        _check_count(option, value)
    if isinstance(split_seed, bool) or not isinstance(split_seed, int) or not 0 <= split_seed < 2**63:
        raise ValueError(f"split_seed must be an integer in [0, 2**63), got {split_seed!r}")
    if augment is not None and augment not in AUGMENTS:
        raise ValueError(f"unknown augment {augment!r}; allowed: {', '.join(AUGMENTS)}")
    if path is not None and not isinstance(path, (str, Path)):
        raise ValueError(f"path must be a folder or archive path, got {path!r}")
    if path is not None and name != "imagefolder":
        raise ValueError(f"path= is for dataset 'imagefolder'; {name!r} is found by name "
                         "(import an offline copy with: python -m attnlab data import)")


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
    """Everything a training run needs. Subsets (for quick profiles) are seeded and logged.

    ``train_subset`` / ``eval_subset``: at most this many training / validation and test
    images (None: all); ``val_size``: images held out of the official training set.
    """
    info = dataset_info(name)
    check_data_options(name, val_size=val_size, split_seed=split_seed, train_subset=train_subset,
                       eval_subset=eval_subset, augment=augment, path=path)
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
    decoded = {}
    for split in ("train", "test"):  # both decoded and checked before either is cached
        data = read_imagefolder(Path(source), split, name, info.in_channels, classes)
        classes = data.classes  # the test split is labelled with the training split's classes
        if data.num_classes != info.num_classes:
            raise ValueError(f"{source} has {data.num_classes} classes for {split}; {name} has {info.num_classes}")
        if data.shape[1:] != (info.size, info.size):
            raise ValueError(f"{source} images are {data.shape[1:]}, {name} needs {info.size}x{info.size}")
        decoded[split] = data
    for split, data in decoded.items():
        save_cache(data, cache_path(root, name, split))
    return {split: len(data) for split, data in decoded.items()}


def cached_datasets(root: str | Path | None = None) -> dict[str, list[str]]:
    """Which dataset splits are in the cache: ``{"cifar10": ["test", "train"], ...}``."""
    root = Path(root) if root is not None else data_root()
    found: dict[str, list[str]] = {}
    for p in sorted((root / "cache").glob("*.pt")):
        name, _, split = p.stem.rpartition("-")
        found.setdefault(name, []).append(split)
    return found


__all__ = [
    "ImageSet", "DataSplits", "DeviceLoader", "DatasetInfo", "DATASETS", "GENERATED", "SHAPE_CLASSES",
    "RELATION_CLASSES",
    "DataUnavailableError", "load_dataset", "load_data", "list_datasets", "dataset_info",
    "import_dataset", "cached_datasets", "channel_stats", "random_crop_flip", "split_indices",
    "save_cache", "load_cache", "subsample", "check_data_options",
]
