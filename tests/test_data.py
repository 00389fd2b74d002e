import io
import tarfile
import urllib.error

import numpy as np
import pytest
import torch
from PIL import Image

from attnlab.data import (DataUnavailableError, DeviceLoader, import_dataset, load_data,
                          load_dataset, random_crop_flip)
from attnlab.data.imageset import load_cache, save_cache
from attnlab.data.shapes import make_shapes
from attnlab.data.sources import cache_path


def test_shapes_is_deterministic_balanced_and_masked():
    a, b = make_shapes(200, seed=3), make_shapes(200, seed=3)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, make_shapes(200, seed=4).images)
    assert a.images.shape == (200, 3, 32, 32) and a.images.dtype == torch.uint8
    assert a.class_counts().tolist() == [20] * 10
    assert a.masks.shape == (200, 32, 32)
    area = a.masks.float().mean((1, 2))
    assert (area > 0.02).all() and (area < 0.5).all()  # every image shows an object, not a flood


def test_splits_are_disjoint_seeded_and_test_is_separate():
    tr, va = load_dataset("shapes", "train"), load_dataset("shapes", "val")
    full = load_dataset("shapes", "trainval")
    assert len(tr) + len(va) == len(full) == 12000 and len(va) == 2000
    assert len(load_dataset("shapes", "test")) == 2000
    tr2 = load_dataset("shapes", "train", split_seed=1)
    assert not torch.equal(tr.labels, tr2.labels)
    assert torch.equal(load_dataset("shapes", "val").images, va.images)


def test_unknown_dataset_and_split_are_explained():
    with pytest.raises(ValueError, match="unknown dataset 'cifar11'.*cifar10"):
        load_dataset("cifar11")
    with pytest.raises(ValueError, match="unknown split 'valid'.*train, val, test"):
        load_dataset("shapes", "valid")


def test_normalisation_uses_training_statistics():
    data = load_data("shapes")
    # the statistics, computed independently in float64 over the whole training split
    pixels = data.train.images.double() / 255  # N, C, H, W in [0, 1]
    torch.testing.assert_close(torch.tensor(data.mean, dtype=torch.float64), pixels.mean((0, 2, 3)),
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.tensor(data.std, dtype=torch.float64),
                               pixels.std((0, 2, 3), unbiased=False), atol=1e-6, rtol=0)
    # the normalised training data (unaugmented): mean 0 and std 1 in every channel
    total = torch.zeros(3, dtype=torch.float64)
    squares = torch.zeros(3, dtype=torch.float64)
    n = 0
    for x, _ in data.loader("train", 1000, augment="none"):
        total += x.double().sum((0, 2, 3))
        squares += x.double().square().sum((0, 2, 3))
        n += x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / n
    torch.testing.assert_close(mean, torch.zeros(3, dtype=torch.float64), atol=1e-3, rtol=0)
    torch.testing.assert_close((squares / n - mean**2).sqrt(), torch.ones(3, dtype=torch.float64),
                               atol=1e-3, rtol=0)
    # validation images are normalised with the training statistics, not their own
    x, _ = next(iter(data.loader("val", 64)))
    m, s = torch.tensor(data.mean).view(1, 3, 1, 1), torch.tensor(data.std).view(1, 3, 1, 1)
    torch.testing.assert_close(x, (data.val.images[:64].float() / 255 - m) / s, atol=1e-5, rtol=0)


def test_loader_is_deterministic_per_seed_and_epoch(tiny_data):
    def first_batch(seed, epoch):
        loader = tiny_data.loader("train", 32, seed=seed)
        loader.set_epoch(epoch)
        return next(iter(loader))

    x1, y1 = first_batch(0, 0)
    x2, y2 = first_batch(0, 0)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(first_batch(0, 1)[0], x1)
    assert not torch.equal(first_batch(1, 0)[0], x1)


def test_loader_covers_every_image_once_per_epoch(tiny_data):
    loader = DeviceLoader(tiny_data.train, 100, mean=[0] * 3, std=[1] * 3, shuffle=True)
    labels = torch.cat([y for _, y in loader])
    assert len(loader) == 3 and len(labels) == len(tiny_data.train)
    assert torch.equal(labels.sort().values, tiny_data.train.labels.sort().values)


def test_crop_flip_output_is_a_window_of_the_zero_padded_image():
    x = torch.randint(1, 256, (64, 3, 8, 8), dtype=torch.uint8)
    out = random_crop_flip(x, 2, True, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    flips = 0
    for i in range(64):
        windows = [padded[i, :, dy:dy + 8, dx:dx + 8] for dy in range(5) for dx in range(5)]
        plain = any(torch.equal(out[i], w) for w in windows)
        flipped = any(torch.equal(out[i], w.flip(2)) for w in windows)
        assert plain or flipped
        flips += flipped and not plain
    assert 10 < flips < 54  # about half are mirrored, left-right only


def test_crop_without_flip_never_mirrors():
    x = torch.arange(64, dtype=torch.uint8).view(1, 1, 8, 8).repeat(16, 1, 1, 1)
    out = random_crop_flip(x, 0, False, torch.Generator().manual_seed(0))
    assert torch.equal(out, x)


@pytest.mark.parametrize("augment", ["none", "crop_flip"])
def test_channels_last_batches_hold_the_same_values(tiny_data, augment):
    def batches(memory_format):
        loader = DeviceLoader(tiny_data.train, 64, mean=[0.5] * 3, std=[0.25] * 3, shuffle=True,
                              augment=augment, seed=3, memory_format=memory_format)
        return list(loader)

    for (a, ya), (b, yb) in zip(batches("contiguous"), batches("channels_last"), strict=True):
        assert a.is_contiguous() and not a.is_contiguous(memory_format=torch.channels_last)
        assert b.is_contiguous(memory_format=torch.channels_last) and not b.is_contiguous()
        assert torch.equal(a, b) and torch.equal(ya, yb)
    with pytest.raises(ValueError, match="unknown memory format 'nhwc'; allowed: auto, channels_last, contiguous"):
        DeviceLoader(tiny_data.train, mean=[0] * 3, std=[1] * 3, memory_format="nhwc")


def test_unknown_augment_is_rejected(tiny_data):
    with pytest.raises(ValueError, match="unknown augment 'rotate'"):
        DeviceLoader(tiny_data.train, mean=[0] * 3, std=[1] * 3, augment="rotate")


def test_missing_data_offline_names_the_manual_route(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(tvd, "CIFAR10", offline)
    with pytest.raises(DataUnavailableError) as err:
        load_dataset("cifar10", "test", root=tmp_path)
    msg = str(err.value)
    assert "cifar-10-python.tar.gz" in msg and "attnlab data import cifar10" in msg and str(tmp_path) in msg


def _write_imagefolder_tar(path, classes=("a", "b"), per_class=3, size=8, mode="RGB"):
    with tarfile.open(path, "w:gz") as tar:
        for split in ("train", "test"):
            for ci, cls in enumerate(classes):
                for j in range(per_class):
                    arr = np.full((size, size, 3) if mode == "RGB" else (size, size), (20 * ci + j) % 256, np.uint8)
                    buf = io.BytesIO()
                    Image.fromarray(arr, mode).save(buf, format="PNG")
                    info = tarfile.TarInfo(f"{split}/{cls}/{j}.png")
                    info.size = len(buf.getvalue())
                    buf.seek(0)
                    tar.addfile(info, buf)


def test_imagefolder_archive_loads_and_is_cached(tmp_path):
    archive = tmp_path / "tiny.tar.gz"
    _write_imagefolder_tar(archive)
    data = load_dataset("imagefolder", "test", root=tmp_path, path=archive)
    assert data.classes == ["a", "b"] and len(data) == 6 and data.images.shape[1:] == (3, 8, 8)
    assert data.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert list((tmp_path / "cache").glob("imagefolder-*-test.pt"))


def test_corrupt_cache_is_reported_and_rebuilt(tmp_path):
    archive = tmp_path / "tiny.tar.gz"
    _write_imagefolder_tar(archive)
    first = load_dataset("imagefolder", "train", root=tmp_path, path=archive)
    cache = next((tmp_path / "cache").glob("imagefolder-*-train.pt"))
    cache.write_bytes(cache.read_bytes()[:100])  # a truncated write
    with pytest.warns(UserWarning, match="corrupt.*rebuilding"):
        again = load_dataset("imagefolder", "train", root=tmp_path, path=archive)
    assert torch.equal(first.images, again.images)
    assert load_cache(cache) is not None  # rebuilt and readable


def test_cache_checksum_catches_flipped_pixels(tmp_path):
    data = make_shapes(20, 0)
    path = tmp_path / "x.pt"
    save_cache(data, path)
    blob = torch.load(path, weights_only=True)
    blob["images"][0, 0, 0, 0] ^= 0xFF
    torch.save(blob, path)
    with pytest.warns(UserWarning, match="checksum"):
        assert load_cache(path) is None


def test_import_dataset_fills_the_cache_for_offline_loading(tmp_path):
    src = tmp_path / "mnist-png"
    src.mkdir()
    for split in ("train", "test"):
        for d in range(10):
            folder = src / split / str(d)
            folder.mkdir(parents=True)
            Image.fromarray(np.full((28, 28), d * 20, np.uint8), "L").save(folder / "0.png")
    counts = import_dataset("mnist", src, root=tmp_path / "data")
    assert counts == {"train": 10, "test": 10}
    test = load_dataset("mnist", "test", root=tmp_path / "data")
    assert test.images.shape == (10, 1, 28, 28) and test.classes == [str(d) for d in range(10)]
    assert cache_path(tmp_path / "data", "mnist", "test").exists()


def test_import_rejects_wrong_image_size(tmp_path):
    archive = tmp_path / "tiny.tar.gz"
    _write_imagefolder_tar(archive, classes=[str(i) for i in range(10)], per_class=1, mode="L")
    with pytest.raises(ValueError, match="needs 28x28"):
        import_dataset("mnist", _untar(archive, tmp_path), root=tmp_path)


def _untar(archive, dest):
    out = dest / "untarred"
    with tarfile.open(archive) as tar:
        tar.extractall(out, filter="data")
    return out
