import pytest
import torch

from attnlab.data import DATASETS, load_dataset
from attnlab.data import relations as R
from attnlab.recipes import get_profile


def test_relations_is_deterministic_balanced_and_sized():
    a, b = R.make_relations(200, seed=3), R.make_relations(200, seed=3)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert torch.equal(a.masks, b.masks)
    assert not torch.equal(a.images, R.make_relations(200, seed=4).images)
    assert a.images.shape == (200, 3, 32, 32) and a.images.dtype == torch.uint8
    assert a.labels.dtype == torch.int64 and a.masks.shape == (200, 32, 32) and a.masks.dtype == torch.bool
    assert a.classes == ["different", "same"] and a.class_counts().tolist() == [100, 100]
    assert R.make_relations(7, seed=0).class_counts().tolist() in ([4, 3], [3, 4])
    info = DATASETS["relations"]
    assert (info.num_classes, info.in_channels, info.size) == (2, 3, 32)


def test_label_follows_the_rule_on_the_drawn_objects():
    s = R.sample_scenes(400, seed=5)
    ids = s.colour_ids
    assert torch.equal(s.labels, (ids[:, 0] == ids[:, 1]).long())
    # each object's colour, shape and size alone say nothing about the label: per class,
    # every palette colour and shape appears for object A and for object B
    for obj in (0, 1):
        for label in (0, 1):
            sel = s.labels == label
            counts = torch.bincount(ids[sel, obj], minlength=len(R.PALETTE)).float()
            assert (counts / counts.sum() - 1 / len(R.PALETTE)).abs().max() < 0.08
            shape_counts = torch.stack([(s.shapes[sel, obj] == k).sum() for k in R.OBJECT_SHAPES]).float()
            assert (shape_counts / shape_counts.sum() - 1 / len(R.OBJECT_SHAPES)).abs().max() < 0.08
    # the painted pixels carry the palette colour (within the jitter) of their object
    data = R.render(s, seed=5)
    objects = R.object_masks(s)
    for obj in (0, 1):
        i = torch.arange(len(s))
        pix = data.images.permute(0, 2, 3, 1).float() / 255  # N, H, W, 3
        inside = objects[:, obj]
        mean = (pix * inside.unsqueeze(-1)).sum((1, 2)) / inside.sum((1, 2)).unsqueeze(-1)
        want = torch.tensor(R.PALETTE)[ids[i, obj]]
        assert (mean - want).abs().max() <= R.JITTER + 1 / 255


def test_changing_one_object_changes_the_label_and_only_its_pixels():
    s = R.sample_scenes(64, seed=7)
    base = R.render(s, seed=7)
    objects = R.object_masks(s)
    for obj in (0, 1):
        other = 1 - obj
        # paint object `obj` in the other object's colour: every image becomes "same"
        same = R.with_colour(s, obj, s.colour_ids[:, other])
        assert same.labels.tolist() == [1] * 64
        # and in a colour different from the other's: every image becomes "different"
        diff = R.with_colour(s, obj, (s.colour_ids[:, other] + 1) % len(R.PALETTE))
        assert diff.labels.tolist() == [0] * 64
        img = R.render(diff, seed=7)
        changed = (img.images != base.images).any(1)  # N, H, W
        assert not (changed & ~objects[:, obj]).any()   # background and the other object kept
        flipped = s.labels == 1  # those were "same"; now only object `obj`'s pixels differ
        assert changed[flipped].flatten(1).any(1).all()
    with pytest.raises(ValueError, match="obj must be 0 .* or 1"):
        R.with_colour(s, 2, s.colour_ids[:, 0])


def test_masks_cover_both_far_apart_objects():
    s = R.sample_scenes(300, seed=11)
    data = R.render(s, seed=11)
    objects = R.object_masks(s)
    area = objects.float().sum((2, 3))  # N, 2
    assert (area >= 30).all()  # each object is a visible object, not a speck
    assert not (objects[:, 0] & objects[:, 1]).any()  # they never touch
    assert torch.equal(data.masks, objects.any(1))
    # opposite halves: along one axis the centres are at least 13 px apart
    gap = (s.centres[:, 0] - s.centres[:, 1]).abs().max(1).values
    assert (gap >= 32 - 2 * R.NEAR_END - 1e-4).all()
    lo, hi = s.centres.min(2).values, s.centres.max(2).values
    assert ((lo - s.radii) >= 0).all() and ((hi + s.radii) <= 32).all()  # inside the image


def test_registered_loaded_and_profiled_like_shapes(tmp_path, monkeypatch):
    monkeypatch.setattr(R, "SPLIT_SIZES", {"train": 300, "test": 100})
    R._cached_relations.cache_clear()
    try:
        train = load_dataset("relations", "trainval", root=tmp_path)
        test = load_dataset("relations", "test", root=tmp_path)
        assert (len(train), len(test)) == (300, 100) and train.masks is not None
        assert not torch.equal(train.images[:100], test.images)  # different seeds per split
        assert (tmp_path / "cache" / f"relations-v{R.RELATIONS_VERSION}-train.pt").exists()
        again = load_dataset("relations", "trainval", root=tmp_path)  # from the cache
        assert torch.equal(again.images, train.images) and torch.equal(again.masks, train.masks)
    finally:
        R._cached_relations.cache_clear()
    quick = get_profile("quick")
    assert quick.data_kwargs("relations")["train_subset"] == quick.data_kwargs("shapes")["train_subset"]


def test_bad_input_is_explained():
    with pytest.raises(ValueError, match="unknown split 'valid' for relations; allowed: train, test"):
        R.load_relations("valid")
    for n in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="n must be an integer >= 1"):
            R.make_relations(n)
    with pytest.raises(ValueError, match="seed must be an integer"):
        R.sample_scenes(4, seed=-1)


def test_data_list_shows_relations_as_built_in(capsys, tmp_path):
    from attnlab.cli import main

    assert main(["data", "list", "--root", str(tmp_path)]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.split()[:1] == ["relations"])
    assert "built in" in line and "colour" in line
