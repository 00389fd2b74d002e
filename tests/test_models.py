"""The CIFAR ResNet backbone with its attention slot, and the parameter counts of the
baselines' and CNNtention's models, each pinned against a count written out by hand."""
import math

import pytest
import torch

from attnlab import collect_maps, create_model, list_models
from attnlab.models.resnet_cifar import PadShortcut
from attnlab.papers import model_spec, resolve_model


# -- parameter counts, summed by hand (no model code involved) --------------------------

def conv(cin: int, cout: int, k: int = 3, bias: bool = False) -> int:
    return cin * cout * k * k + (cout if bias else 0)


def bn(c: int) -> int:
    return 2 * c  # weight and bias (running statistics are buffers)


def resnet(depth: int, block=lambda c: 0, after_stage=lambda c: 0, classes: int = 10) -> int:
    """ResNet-(6n+2) with option-A shortcuts (no parameters): conv-BN, three stages of n
    BasicBlocks (16/32/64 channels), a linear classifier; ``block(C)`` parameters added in
    every BasicBlock and ``after_stage(C)`` after every stage."""
    n = (depth - 2) // 6
    total, cin = conv(3, 16) + bn(16), 16
    for c in (16, 32, 64):
        for _ in range(n):
            total += conv(cin, c) + bn(c) + conv(c, c) + bn(c) + block(c)
            cin = c
        total += after_stage(c)
    return total + 64 * classes + classes


def se(c: int, r: int = 16) -> int:
    h = max(1, c // r)
    return conv(c, h, 1, bias=True) + conv(h, c, 1, bias=True)


def cbam(c: int, r: int = 16, official: bool = False) -> int:
    h = max(1, c // r)
    mlp = 2 * c * h + ((h + c) if official else 0)  # two Linear layers, biases only officially
    spatial = conv(2, 1, 7) + (bn(1) if official else 1)  # official: no conv bias, BN; ours: bias
    return mlp + spatial


def selfatt(c: int, gate: int = 1) -> int:
    return 3 * conv(c, c, 1, bias=True) + gate


def mha(c: int, gate: int = 1) -> int:
    return 4 * conv(c, c, 1, bias=True) + gate


HAND_COUNTS = {
    "resnet20": resnet(20), "resnet32": resnet(32), "resnet44": resnet(44), "resnet56": resnet(56),
    "resnet110": resnet(110),
    "se_resnet20": resnet(20, block=se), "se_resnet110": resnet(110, block=se),
    "cbam_resnet110": resnet(110, block=lambda c: cbam(c, official=True)),
    "resnet20_selfatt": resnet(20, after_stage=selfatt),
    "resnet20_mha": resnet(20, after_stage=mha),
    "resnet20_cbam": resnet(20, after_stage=cbam),
}


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_hand_counts_are_the_published_ones():
    # He et al. 2016 give 0.27M / 0.46M / 0.66M / 0.85M / 1.7M for depths 20 ... 110
    for depth, millions in ((20, 0.27), (32, 0.46), (44, 0.66), (56, 0.85), (110, 1.7)):
        assert round(HAND_COUNTS[f"resnet{depth}"] / 1e6, 2 if depth < 110 else 1) == millions
    assert HAND_COUNTS["resnet20"] == 269_722
    assert (HAND_COUNTS["se_resnet20"], HAND_COUNTS["se_resnet110"]) == (272_095, 1_742_200)
    assert HAND_COUNTS["cbam_resnet110"] == 1_747_600
    assert HAND_COUNTS["resnet20_cbam"] - HAND_COUNTS["resnet20"] == 969  # CNNtention, r=16


@pytest.mark.parametrize("name", sorted(HAND_COUNTS))
def test_pinned_counts_equal_the_hand_counts(name):
    """The pins in the paper modules (which test_papers checks against the built models)."""
    assert model_spec(name).params == HAND_COUNTS[name]
    assert n_params(create_model(name)) == HAND_COUNTS[name]


@pytest.mark.parametrize("name,kw,expected", [
    ("resnet20_selfatt", {"merge": "residual"}, resnet(20, after_stage=lambda c: selfatt(c, gate=0))),
    ("resnet20_mha", {"merge": "plain"}, resnet(20, after_stage=lambda c: mha(c, gate=0))),
    ("resnet20_cbam", {"merge": "plain"}, HAND_COUNTS["resnet20_cbam"]),
    ("resnet20_cbam", {"merge": "weighted"}, HAND_COUNTS["resnet20_cbam"] + 3),
    ("resnet20_cbam", {"reduction": 8}, resnet(20, after_stage=lambda c: cbam(c, 8))),
    ("resnet20", {"attn": "se", "placement": "block"}, HAND_COUNTS["se_resnet20"]),
])
def test_variant_parameter_counts(name, kw, expected):
    assert n_params(create_model(name, **kw)) == expected


def test_cnntention_cbam_ends_with_a_residual():
    assert resolve_model("resnet20_cbam")["attn_kw"]["merge"] == "residual"
    assert resolve_model("resnet20_cbam")["attn_kw"]["reduction"] == 16  # the block's own default
    torch.manual_seed(0)
    residual = create_model("resnet20_cbam").eval()
    plain = create_model("resnet20_cbam", merge="plain").eval()
    plain.load_state_dict(residual.state_dict())
    x = torch.randn(2, 16, 32, 32)
    torch.testing.assert_close(residual.attn1(x), plain.attn1(x) + x)


@pytest.mark.parametrize("init,fan", [("fan_in", 16 * 9), ("fan_out", 32 * 9)])
def test_kaiming_init_modes(init, fan):
    torch.manual_seed(0)
    w = create_model("resnet20", init=init).layer2[0].conv1.weight  # 16 -> 32 channels, 3x3
    assert w.std().item() == pytest.approx(math.sqrt(2 / fan), rel=0.05)


def test_option_a_shortcut_subsamples_and_zero_pads():
    x = torch.randn(2, 16, 8, 8)
    out = PadShortcut(8)(x)
    assert out.shape == (2, 32, 4, 4)
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2])
    assert out[:, :8].abs().sum() == 0 and out[:, 24:].abs().sum() == 0


def test_option_b_adds_projection_parameters():
    a, b = create_model("resnet20"), create_model("resnet20", shortcut="B")
    # two projections (16 -> 32, 32 -> 64): a 1x1 conv and a BatchNorm each
    assert n_params(b) - n_params(a) == conv(16, 32, 1) + bn(32) + conv(32, 64, 1) + bn(64)
    assert any(isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1) for m in b.modules())


def test_reference_module_names():
    names = {n for n, _ in create_model("resnet20").named_children()}
    assert {"conv1", "bn1", "layer1", "layer2", "layer3", "linear"} <= names
    keys = create_model("resnet20").state_dict().keys()
    assert "layer1.0.conv1.weight" in keys and "linear.weight" in keys


def test_forward_shapes_and_mnist_variant():
    assert create_model("resnet20", num_classes=100)(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    assert create_model("resnet20", in_channels=1)(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError, match="unknown model 'resnet21'.*resnet20"):
        create_model("resnet21")


def test_unknown_keyword_lists_allowed():
    with pytest.raises(TypeError, match=r"unknown option.*'heads'.*allowed.*num_heads"):
        create_model("resnet20_mha", heads=4)


def test_unknown_attention_block():
    with pytest.raises(ValueError, match="unknown attention block 'foo'.*selfatt"):
        create_model("resnet20", attn="foo")


@pytest.mark.parametrize("kw,message", [({"depth": 21}, "6n \\+ 2"), ({"placement": "inside"}, "placement"),
                                        ({"attn_stages": (4,)}, "attn_stages"), ({"init": "xavier"}, "init")])
def test_bad_backbone_options_are_explained(kw, message):
    with pytest.raises((ValueError, TypeError), match=message):
        create_model("resnet20_selfatt", **kw)


@pytest.mark.parametrize("shape,hint", [((2, 1, 32, 32), "in_channels=1"), ((2, 3, 4, 4), "H, W >= 8"),
                                        ((3, 32, 32), "expects images")])
def test_wrong_input_shape_is_explained(shape, hint):
    with pytest.raises(ValueError, match="expects images") as err:
        create_model("resnet20")(torch.randn(*shape))
    assert hint in str(err.value)


@pytest.mark.parametrize("name", ["resnet20_selfatt", "resnet20_mha"])
def test_zero_gates_compute_the_plain_backbone(name):
    torch.manual_seed(0)
    base, att = create_model("resnet20").eval(), create_model(name, merge="weighted").eval()
    missing = att.load_state_dict(base.state_dict(), strict=False)
    assert not missing.unexpected_keys
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(base(x), att(x))


def test_placements_after_stages_and_in_blocks():
    after = create_model("resnet20", attn="se")
    inside = create_model("resnet20", attn="se", placement="block")
    assert type(after.attn1).__name__ == "SqueezeExcite"
    assert isinstance(after.layer1[0].attn, torch.nn.Identity)
    assert type(inside.layer2[0].attn).__name__ == "SqueezeExcite"
    assert isinstance(inside.attn1, torch.nn.Identity)
    only_two = create_model("resnet20", attn="se", attn_stages=(2,))
    assert [type(getattr(only_two, f"attn{i}")).__name__ for i in (1, 2, 3)] == \
        ["Identity", "SqueezeExcite", "Identity"]
    assert after(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_cbam_block_placement_and_deep_variants():
    m = create_model("resnet20_cbam", placement="block", depth=32)
    assert sum(type(b).__name__ == "CBAM" for b in m.modules()) == 15
    assert "se_resnet110" in list_models() and "cbam_resnet110" in list_models()


def test_maps_per_stage_for_one_query():
    m = create_model("resnet20_mha").eval()
    with torch.no_grad(), collect_maps(m, query=(0, 0)) as maps:
        logits = m(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10)
    assert set(maps) == {"attn1", "attn2", "attn3"}
    assert maps["attn1"]["attention"].shape == (2, 8, 1, 32, 32)
    assert maps["attn3"]["attention"].shape == (2, 8, 1, 8, 8)


def test_in_block_maps_are_collected_by_module_name():
    m = create_model("resnet20_cbam", placement="block").eval()
    with torch.no_grad(), collect_maps(m) as maps:
        m(torch.randn(2, 3, 32, 32))
    assert len(maps) == 9 and maps["layer3.2.attn"]["spatial"].shape == (2, 1, 8, 8)
    assert maps["layer1.0.attn"]["channel"].shape == (2, 16)
    se = create_model("resnet20", attn="se").eval()
    with torch.no_grad(), collect_maps(se, query=(5, 5)) as maps:
        se(torch.randn(2, 3, 32, 32))
    assert maps["attn2"]["channel"].shape == (2, 32) and "gate" not in maps["attn2"]
