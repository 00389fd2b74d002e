import pytest
import torch

from attnlab import create_model, list_models
from attnlab.models.resnet_cifar import PadShortcut

PARAMS = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018, 110: 1_727_962}
SEED000_PARAMS = {  # REFERENCE.md section 2, as counted in seed 000's code
    ("resnet20_selfatt", "weighted"): 286_189,
    ("resnet20_selfatt", "residual"): 286_186,
    ("resnet20_mha", "weighted"): 291_677,
    ("resnet20_cbam", "plain"): 270_691,
}


def n_params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("depth", sorted(PARAMS))
def test_resnet_parameter_counts(depth):
    assert n_params(create_model(f"resnet{depth}")) == PARAMS[depth]


@pytest.mark.parametrize("name,merge", sorted(SEED000_PARAMS))
def test_seed000_parameter_counts(name, merge):
    assert n_params(create_model(name, merge=merge)) == SEED000_PARAMS[(name, merge)]


def test_option_a_shortcut_subsamples_and_zero_pads():
    x = torch.randn(2, 16, 8, 8)
    out = PadShortcut(8)(x)
    assert out.shape == (2, 32, 4, 4)
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2])
    assert out[:, :8].abs().sum() == 0 and out[:, 24:].abs().sum() == 0


def test_option_b_adds_projection_parameters():
    a, b = create_model("resnet20"), create_model("resnet20", shortcut="B")
    assert n_params(b) > n_params(a)
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
    with pytest.raises(TypeError, match="unknown keyword.*'heads'.*allowed"):
        create_model("resnet20_mha", heads=4)


def test_unknown_attention_block():
    with pytest.raises(ValueError, match="unknown attention block 'foo'.*selfatt"):
        create_model("resnet20", attn="foo")


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


def test_hooks_place_blocks_after_stages_and_in_blocks():
    after = create_model("resnet20", attn="se")
    inside = create_model("resnet20", block_attn="se")
    assert type(after.attn1).__name__ == "SqueezeExcite"
    assert type(inside.layer2[0].attn).__name__ == "SqueezeExcite"
    assert isinstance(after.layer1[0].attn, torch.nn.Identity)
    assert after(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_cbam_block_placement_and_deep_variants():
    m = create_model("resnet20_cbam", placement="block", depth=32)
    assert sum(type(b).__name__ == "CBAM" for b in m.modules()) == 15
    assert "se_resnet110" in list_models() and "cbam_resnet110" in list_models()


def test_model_returns_attention_maps_per_stage():
    m = create_model("resnet20_mha").eval()
    logits, maps = m(torch.randn(2, 3, 32, 32), return_attention=True, query_index=[0])
    assert logits.shape == (2, 10)
    assert maps["attn1"]["attn"].shape == (2, 8, 1, 1024)
    assert maps["attn3"]["attn"].shape == (2, 8, 1, 64)


def test_in_block_attention_maps_are_returned_by_module_name():
    m = create_model("resnet20_cbam", placement="block").eval()
    _, maps = m(torch.randn(2, 3, 32, 32), return_attention=True)
    assert len(maps) == 9 and maps["layer3.2.attn"]["spatial"].shape == (2, 1, 8, 8)
    se = create_model("resnet20", attn="se").eval()
    _, maps = se(torch.randn(2, 3, 32, 32), return_attention=True, query_index=5)
    assert maps["attn2"]["channel"].shape == (2, 32) and maps["attn2"]["gate"] is None
