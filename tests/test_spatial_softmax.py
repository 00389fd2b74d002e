"""The ``abcnn`` paper: the spatial-softmax block, its models, the comparators' parameter
counts, the document's recipe and claims, and top-5 accuracy in the run metrics."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from attnlab.data import DeviceLoader
from attnlab.data.imageset import ImageSet
from attnlab.layers import collect_maps, create_attn, get_attn
from attnlab.layers.spatial_softmax import SpatialSoftmax
from attnlab.papers import create_model, get_paper, model_spec
from attnlab.papers.registry import METRICS
from attnlab.recipes import get_recipe
from attnlab.runs import RunConfig, train_or_load
from attnlab.train import evaluate, milestone_epoch

WIDTHS = (16, 32, 64)


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# -- the block --------------------------------------------------------------------------

def test_registered_as_addon_with_its_defaults():
    entry = get_attn("spatial_softmax")
    assert entry.role == "addon"
    assert entry.options() == {"groups": 1, "bias": False, "merge": "plain", "logit_init": "zero"}


@pytest.mark.parametrize("groups", [1, 4])
def test_map_sums_to_one_over_positions(groups):
    torch.manual_seed(0)
    block = SpatialSoftmax(16, groups=groups).eval()
    nn.init.normal_(block.weight, std=1.0)  # a peaked, far from uniform map
    x = torch.randn(3, 16, 12, 10)
    with collect_maps(block) as maps, torch.no_grad():
        block(x)
    a = maps[""]["spatial"]
    assert a.shape == (3, groups, 12, 10)
    assert (a >= 0).all()
    torch.testing.assert_close(a.sum((2, 3)), torch.ones(3, groups))
    assert a.amax() > 5 / (12 * 10), "the test map should not be uniform"
    assert "gate" not in maps[""], "a plain merge has no gate to show"


@pytest.mark.parametrize("groups", [1, 4])
def test_output_is_features_times_hw_times_map(groups):
    torch.manual_seed(1)
    block = SpatialSoftmax(8, groups=groups, logit_init="kaiming").eval()
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        logits = torch.einsum("gc,bchw->bghw", block.weight[:, :, 0, 0], x).flatten(2)  # B, G, 36
        a = logits.softmax(-1).view(2, groups, 6, 6)
        expected = x * 36 * a.repeat_interleave(8 // groups, 1)
        torch.testing.assert_close(block(x), expected)


@pytest.mark.parametrize("groups", [1, 2])
def test_uniform_map_leaves_features_unchanged(groups):
    torch.manual_seed(2)
    block = SpatialSoftmax(16, groups=groups, logit_init="kaiming").eval()
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        assert not torch.allclose(block(x), x), "a non-uniform map must change the features"
        block.weight.zero_()  # equal logits everywhere: a = 1 / HW
        torch.testing.assert_close(block(x), x)
        # the default initialisation is that uniform map: the module starts as the identity
        torch.testing.assert_close(SpatialSoftmax(16, groups=groups)(x), x)


def test_merge_modes():
    torch.manual_seed(3)
    x = torch.randn(2, 16, 8, 8)
    plain = SpatialSoftmax(16, logit_init="kaiming").eval()
    residual = SpatialSoftmax(16, merge="residual").eval()
    weighted = SpatialSoftmax(16, merge="weighted").eval()
    residual.load_state_dict(plain.state_dict())
    weighted.load_state_dict(plain.state_dict(), strict=False)
    with torch.no_grad():
        fx = plain(x)
        torch.testing.assert_close(residual(x), fx + x)
        torch.testing.assert_close(weighted(x), x)  # gate starts at 0
        weighted.merge.gate.fill_(0.5)
        torch.testing.assert_close(weighted(x), x + 0.5 * fx)
    assert weighted.merge.gate.requires_grad


@pytest.mark.parametrize("kw, match", [
    ({"groups": 3}, "positive divisor of channels=16"),
    ({"groups": 0}, "positive divisor"),
    ({"merge": "gated"}, "allowed: plain, residual, weighted"),
    ({"heads": 2}, "allowed"),
    ({"logit_init": "orthogonal"}, "logit_init must be one of zero, kaiming"),
])
def test_bad_options_say_what_is_allowed(kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        create_attn("spatial_softmax", 16, **kw)


def test_bias_is_off_because_the_softmax_cancels_it():
    block = SpatialSoftmax(16, bias=True)
    x = torch.randn(2, 16, 8, 8)
    block(x).square().sum().backward()
    assert block.bias.grad.abs().max() < 1e-4 * block.weight.grad.abs().max()
    assert block.weight.grad.abs().max() > 0, "a zero-initialised map must still learn"


# -- the models -------------------------------------------------------------------------

def test_zero_gate_model_is_its_backbone():
    torch.manual_seed(4)
    backbone = create_model("resnet20").eval()
    att = create_model("resnet20_spatial_softmax", merge="weighted").eval()
    missing = att.load_state_dict(backbone.state_dict(), strict=False).missing_keys
    assert sorted(missing) == sorted(f"attn{i}.{p}" for i in (1, 2, 3) for p in ("weight", "merge.gate"))
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        for i in (1, 2, 3):  # far from uniform maps: only the gate keeps the block out
            nn.init.normal_(getattr(att, f"attn{i}").weight, std=1.0)
        torch.testing.assert_close(att(x), backbone(x), rtol=0, atol=1e-6)
        att.attn2.merge.gate.fill_(0.3)
        assert (att(x) - backbone(x)).abs().max() > 1e-3, "a non-zero gate must change the logits"


def test_zero_init_survives_the_backbone_and_starts_as_the_backbone():
    torch.manual_seed(5)
    backbone = create_model("resnet20").eval()
    att = create_model("resnet20_spatial_softmax").eval()   # plain merge, zero-initialised logits
    assert all((getattr(att, f"attn{i}").weight == 0).all() for i in (1, 2, 3))
    att.load_state_dict(backbone.state_dict(), strict=False)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(att(x), backbone(x), rtol=0, atol=1e-5)


def test_kaiming_init_collapses_the_later_maps():
    # why the default is zero: with Kaiming logits the rescaled stage-1 features make the
    # later maps put nearly all their mass on one position
    torch.manual_seed(0)
    model = create_model("resnet20_spatial_softmax", logit_init="kaiming").eval()
    with collect_maps(model) as maps, torch.no_grad():
        model(torch.randn(8, 3, 32, 32))
    peak = {k: float(v["spatial"].flatten(2).amax(-1).mean()) for k, v in maps.items()}
    assert peak["attn3"] > 0.5, peak                  # uniform would be 1/64
    assert peak["attn1"] > 10 / 1024, peak


def test_map_shapes_per_stage():
    model = create_model("resnet20_spatial_softmax").eval()
    with collect_maps(model) as maps, torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    assert {k: tuple(v["spatial"].shape) for k, v in maps.items()} == {
        "attn1": (2, 1, 32, 32), "attn2": (2, 1, 16, 16), "attn3": (2, 1, 8, 8)}

    model = create_model("resnet20_spatial_softmax", attn_stages=(2, 3), groups=4, merge="weighted").eval()
    with collect_maps(model) as maps, torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert {k: tuple(v["spatial"].shape) for k, v in maps.items()} == {"attn2": (1, 4, 16, 16), "attn3": (1, 4, 8, 8)}
    assert all(tuple(v["gate"].shape) == (1,) for v in maps.values())


def resnet_params(depth: int, classes: int = 10) -> int:
    """He et al.'s CIFAR ResNet with parameter-free (option A) shortcuts, summed by hand:
    3x3 convs without bias, BN weight and bias, a linear layer."""
    n = (depth - 2) // 6
    total = 3 * 16 * 9 + 2 * 16  # stem conv + BN
    c_in = 16
    for w in WIDTHS:
        for _ in range(n):
            total += c_in * w * 9 + w * w * 9 + 2 * (2 * w)
            c_in = w
    return total + 64 * classes + classes


def se_params(c: int, r: int = 16) -> int:  # two 1x1 convs with bias, hidden = C // r
    h = c // r
    return c * h + h + h * c + c


def cbam_official_params(c: int, r: int = 16) -> int:
    # shared MLP with bias (same shape as SE's), 7x7 conv 2 -> 1 without bias, BN(1)
    return se_params(c, r) + 2 * 7 * 7 + 2


@pytest.mark.parametrize("name, expected", [
    ("resnet20", resnet_params(20)),
    ("resnet110", resnet_params(110)),
    ("se_resnet110", resnet_params(110) + 18 * sum(se_params(c) for c in WIDTHS)),
    ("cbam_resnet110", resnet_params(110) + 18 * sum(cbam_official_params(c) for c in WIDTHS)),
    ("resnet20_spatial_softmax", resnet_params(20) + sum(WIDTHS)),     # one C -> 1 map per stage
    ("resnet110_spatial_softmax", resnet_params(110) + sum(WIDTHS)),
])
def test_parameter_counts(name, expected):
    assert n_params(create_model(name)) == expected
    assert model_spec(name).params == expected


def test_parameter_count_formula_matches_he_et_al():
    # the figures quoted for option-A CIFAR ResNets (10 classes)
    assert resnet_params(20) == 269_722 and resnet_params(110) == 1_727_962


def test_block_options_change_the_count():
    base = resnet_params(20)
    assert n_params(create_model("resnet20_spatial_softmax", groups=4)) == base + 4 * sum(WIDTHS)
    assert n_params(create_model("resnet20_spatial_softmax", merge="weighted")) == base + sum(WIDTHS) + 3
    assert n_params(create_model("resnet20_spatial_softmax", attn_stages=(1,))) == base + 16


# -- the paper ----------------------------------------------------------------------------

def test_recipes_are_the_documents():
    step = get_recipe("abcnn_step")
    assert (step.optimizer, step.lr, step.momentum, step.weight_decay, step.batch_size, step.epochs) == \
        ("sgd", 0.1, 0.9, 1e-4, 128, 200)
    assert step.schedule == "step" and step.gamma == 0.1
    assert [milestone_epoch(m, step.epochs) for m in step.milestones] == [100, 150]
    cos = get_recipe("abcnn_cosine")
    assert cos.schedule == "cosine" and (cos.lr, cos.weight_decay, cos.epochs) == (0.1, 1e-4, 200)


def test_claims_keep_both_contradictory_values():
    paper = get_paper("abcnn")
    claims = paper.claims_frame()
    doc = claims[claims["source"].str.contains("abcnn document")]
    se = doc[(doc["model"] == "se_resnet110") & (doc["dataset"] == "cifar10")]
    assert sorted(se["value"]) == [95.2, 95.3]
    assert se["protocol"].str.contains("contradiction").all()
    r110 = doc[doc["model"] == "resnet110"]
    assert sorted(r110[r110["dataset"] == "cifar10"]["value"]) == [93.6, 93.8]
    assert sorted(r110[r110["dataset"] == "cifar100"]["value"]) == [72.7, 73.6, 74.3]
    assert r110["protocol"].str.contains("contradiction").all()
    ours = doc[doc["model"] == "resnet110_spatial_softmax"].set_index("dataset")["value"]
    assert ours.to_dict() == {"cifar10": 96.2, "cifar100": 80.5}
    assert "cannot be verified" in paper.summary
    assert {c.metric for c in paper.claims} <= set(METRICS)


def test_ablation_axes_and_speed_targets_resolve():
    paper = get_paper("abcnn")
    assert {a.parameter for a in paper.ablations} == {"merge", "attn_stages", "groups", "logit_init"}
    for axis in paper.ablations:
        for v in axis.values:
            create_model(axis.model, **{axis.parameter: v})
    assert paper.targets and all(t.limit is None for t in paper.targets)
    stages = sorted(t.model_kw.get("attn_stages", (1, 2, 3)) for t in paper.targets)
    assert stages == [(1,), (1, 2, 3), (2,), (3,)]


# -- top-5 ------------------------------------------------------------------------------

class LookupModel(nn.Module):
    """Logits read from a table by the image's index (stored in its pixels)."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = table

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[x[:, 0, 0, 0].round().long()]


def test_top5_on_a_hand_built_example():
    # rank of the true class among 10 logits, per image: top-1 hits rank 1 only,
    # top-5 hits ranks 1..5
    ranks = [1, 2, 5, 6, 10, 3, 1, 7]
    labels = torch.tensor([i % 10 for i in range(len(ranks))])
    table = torch.zeros(len(ranks), 10)
    for i, (y, r) in enumerate(zip(labels.tolist(), ranks)):
        others = [c for c in range(10) if c != y]
        order = others[:r - 1] + [y] + others[r - 1:]  # class order, best first
        table[i, order] = torch.arange(10, 0, -1, dtype=torch.float)
    images = torch.arange(len(ranks), dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, 4, 4).contiguous()
    data = ImageSet(images, labels, [str(c) for c in range(10)])
    # mean 0 and std 1/255 make the normalisation the identity on the pixel values
    loader = DeviceLoader(data, batch_size=3, mean=[0.0] * 3, std=[1 / 255] * 3)
    out = evaluate(LookupModel(table), loader, "fp32", num_classes=10)
    assert out["acc"] == pytest.approx(2 / 8)
    assert out["top5"] == pytest.approx(5 / 8)


def test_top5_in_run_metrics():
    config = RunConfig("resnet20_spatial_softmax", "shapes", "abcnn_step", "smoke",
                       recipe_kw={"max_steps_per_epoch": 1}, data_kw={"train_subset": 64, "eval_subset": 64})
    run = train_or_load(config, progress=False)
    m = run.metrics
    assert "test_top5" in m and "test_acc" in m
    assert m["test_acc"] <= m["test_top5"] <= 1.0
    if m["num_classes"] <= 5:
        assert m["test_top5"] == 1.0
