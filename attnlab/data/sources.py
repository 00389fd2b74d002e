"""Where real images come from: torchvision downloads, ImageFolder trees and archives.

Every source ends up as an :class:`ImageSet` cached under ``<root>/cache/`` so the
second load is a single ``torch.load`` (seconds for CIFAR-10).
"""
from __future__ import annotations

import hashlib
import io
import tarfile
import zlib
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch

from .imageset import ImageSet

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]

MANUAL_ROUTE = {
    "cifar10": "put the official cifar-10-python.tar.gz into {root}/ (torchvision unpacks it), "
               "or import an ImageFolder copy: python -m attnlab data import cifar10 --from DIR "
               "(DIR holds train.tar.gz and test.tar.gz, or train/ and test/ folders)",
    "cifar100": "put the official cifar-100-python.tar.gz into {root}/ (torchvision unpacks it), "
                "or: python -m attnlab data import cifar100 --from DIR",
    "mnist": "put the four official MNIST .gz files into {root}/MNIST/raw/, "
             "or import a PNG copy: python -m attnlab data import mnist --from DIR",
}


class DataUnavailableError(RuntimeError):
    """Data is neither cached nor downloadable; the message gives the manual route."""


def cache_path(root: Path, name: str, split: str) -> Path:
    return Path(root) / "cache" / f"{name}-{split}.pt"


def from_torchvision(name: str, split: str, root: Path) -> ImageSet:
    """Download (or find) ``name`` with torchvision and convert it to uint8 tensors."""
    import torchvision.datasets as tvd

    cls = {"cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100, "mnist": tvd.MNIST}[name]
    try:
        ds = cls(str(root), train=(split == "train"), download=True)
    except Exception as exc:  # noqa: BLE001 - URLError, RuntimeError, checksum errors...
        route = MANUAL_ROUTE[name].format(root=root)
        raise DataUnavailableError(
            f"{name} ({split}) is not cached under {root}/cache and could not be downloaded "
            f"({type(exc).__name__}: {exc}). To use it offline, {route}."
        ) from exc
    data = torch.as_tensor(np.asarray(ds.data))
    images = data.unsqueeze(1) if data.ndim == 3 else data.permute(0, 3, 1, 2)
    return ImageSet(images.contiguous(), torch.as_tensor(ds.targets, dtype=torch.int64),
                    [c.split(" - ")[0] for c in ds.classes], name, split)


def _decode(raw: bytes, channels: int, where: str) -> np.ndarray:
    """Decode one image; a file that is not a readable image stops the import, naming it
    (skipping it would silently change the dataset)."""
    from PIL import Image

    try:
        img = Image.open(io.BytesIO(raw))
        img = img.convert("L" if channels == 1 else "RGB")
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for a broken file
        raise ValueError(f"{where} is not a readable image ({type(exc).__name__}: {exc}); "
                         "stopped without importing anything: remove or replace it and run again") from None
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def _walk_folder(folder: Path) -> Iterator[tuple[str, str, bytes]]:
    """Yield ``(split_and_class_path, filename, bytes)`` for every image below ``folder``."""
    for p in sorted(folder.rglob("*")):
        if p.suffix.lower() in IMAGE_SUFFIXES:
            yield str(p.parent.relative_to(folder)), p.name, p.read_bytes()


def _walk_tar(archive: Path) -> Iterator[tuple[str, str, bytes]]:
    try:
        with tarfile.open(archive, "r:*") as tar:
            for m in tar:
                if m.isfile() and Path(m.name).suffix.lower() in IMAGE_SUFFIXES:
                    parent, fname = m.name.rsplit("/", 1) if "/" in m.name else ("", m.name)
                    yield parent.lstrip("./"), fname, tar.extractfile(m).read()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        # EOFError / zlib.error: a .tar.gz cut short; TarError: not a tar archive at all
        raise ValueError(f"{archive} is not a complete tar archive ({type(exc).__name__}: {exc}); "
                         "copy or download it again") from None


def _entries(source: Path, split: str) -> Iterator[tuple[str, str, bytes]]:
    """Images of ``split`` in ``source``: a folder with ``split/`` or ``split.tar.gz``."""
    candidates = [source / split, source / f"{split}.tar.gz", source / f"{split}.tgz", source / f"{split}.tar"]
    for c in candidates:
        if c.is_dir():
            return ((f"{split}/{d}" if d else split, f, b) for d, f, b in _walk_folder(c))
        if c.is_file():
            return _walk_tar(c)
    if source.is_file() and tarfile.is_tarfile(source):
        return (e for e in _walk_tar(source) if e[0].split("/")[0] == split)
    raise FileNotFoundError(
        f"no {split!r} images in {source}: expected {split}/<class>/<image> or {split}.tar.gz "
        f"holding {split}/<class>/<image>"
    )


def read_imagefolder(source: Path, split: str, name: str, channels: int = 3,
                     classes: Optional[list[str]] = None) -> ImageSet:
    """Decode an ImageFolder split (``<split>/<class>/<image>``) into an :class:`ImageSet`.

    Labels number ``classes`` in order (for every split but the training split, pass the
    training split's classes: each split numbering its own folders would give a test
    split lacking one class shifted labels). A class missing from, or extra in, the split
    is an error that names it; so is a split with fewer than two classes.
    """
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"{source} does not exist")
    by_class: dict[str, list[tuple[str, np.ndarray]]] = {}
    for parent, fname, raw in _entries(source, split):
        cls = parent.split("/")[-1]
        by_class.setdefault(cls, []).append((fname, _decode(raw, channels, f"{source}: {parent}/{fname}")))
    if not by_class:
        raise FileNotFoundError(f"no images found for split {split!r} in {source}")
    found = sorted(by_class)
    if classes is None:
        classes = found
    missing, extra = sorted(set(classes) - set(found)), sorted(set(found) - set(classes))
    if missing or extra:
        raise ValueError(f"the {split!r} split of {source} does not have the training classes {list(classes)}: "
                         + "; ".join([f"missing {missing}"] * bool(missing) + [f"extra {extra}"] * bool(extra)))
    if len(classes) < 2:
        raise ValueError(f"{source} has {len(classes)} class(es) {list(classes)} in its {split!r} split; "
                         "classification needs at least 2 (one folder per class)")
    images, labels = [], []
    for label, cls in enumerate(classes):
        for _, arr in sorted(by_class.get(cls, []), key=lambda t: t[0]):
            images.append(arr)
            labels.append(label)
    shapes = {a.shape for a in images}
    if len(shapes) != 1:
        raise ValueError(f"images in {source} differ in size {sorted(shapes)[:4]}; resize them first")
    return ImageSet(torch.from_numpy(np.stack(images)), torch.tensor(labels), list(classes), name, split)


def imagefolder_key(path: Path) -> str:
    """Cache name for an ImageFolder source: stable per absolute path."""
    digest = hashlib.sha1(str(Path(path).resolve()).encode()).hexdigest()[:10]
    return f"imagefolder-{digest}"
