"""Residual Attention Network (arXiv 1704.06904): units, modules, mask activations, maps,
the registered models with their pinned parameter counts, and the paper's registry entry."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from attnlab.cost import count_params
from attnlab.layers import collect_maps, create_attn, get_attn
from attnlab.layers.residual_attention import (ACTIVATIONS, AttentionModule, MaskActivation, PreActBottleneck,
                                               SoftMaskBranch)
from attnlab.models import create_backbone
from attnlab.papers import create_model, get_paper, model_spec
from attnlab.recipes import get_recipe


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# -- the residual unit ----------------------------------------------------------------------

@pytest.mark.parametrize("cin, cout, stride, size, out_size", [(16, 16, 1, 8, 8), (16, 32, 2, 8, 4),
                                                               (32, 64, 2, 9, 5), (64, 16, 1, 7, 7)])
def test_unit_shapes(cin, cout, stride, size, out_size):
    unit = PreActBottleneck(cin, cout, stride)
    assert unit(torch.randn(2, cin, size, size)).shape == (2, cout, out_size, out_size)
    assert unit.conv2.out_channels == cout // 4  # the bottleneck is C / 4 wide
    # a projection only where the shape changes (the paper); identity otherwise
    assert (unit.shortcut is None) == (cin == cout and stride == 1)


def test_projection_every_unit_and_shortcut_input():
    x = torch.randn(2, 16, 8, 8)
    every = PreActBottleneck(16, 16, projection="every")
    assert isinstance(every.shortcut, nn.Conv2d)
    raw = PreActBottleneck(16, 16, projection="every", shortcut_input="input")
    raw.load_state_dict(every.state_dict())
    # same weights, different tensor into the projection: the raw input vs BN-ReLU(input)
    every.train(), raw.train()
    assert not torch.allclose(every(x), raw(x))


def test_unit_rejects_bad_options():
    with pytest.raises(ValueError, match="projection must be one of 'when_needed', 'every'"):
        PreActBottleneck(16, 16, projection="always")
    with pytest.raises(ValueError, match="divisible by 4"):
        PreActBottleneck(16, 18)


# -- the attention module -------------------------------------------------------------------

@pytest.mark.parametrize("pools, size", [(0, 8), (2, 16), (1, 7), (3, 11)])
def test_module_keeps_shape(pools, size):
    m = AttentionModule(16, pools=pools)
    x = torch.randn(2, 16, size, size)
    assert m(x).shape == x.shape
    assert m.mask(x).shape == x.shape


class Constant(nn.Module):
    def __init__(self, value: float):
        super().__init__()
        self.value = value

    def forward(self, x):
        return torch.full_like(x, self.value)


def _trunk_path(m: AttentionModule, x: torch.Tensor) -> torch.Tensor:
    return m.post(m.trunk(m.pre(x)))


@pytest.mark.parametrize("learning, neutral", [("arl", 0.0), ("nal", 1.0)])
def test_neutral_mask_gives_the_trunk(learning, neutral):
    # ARL: H = (1 + M) T is T at M = 0; NAL: H = M T is T at M = 1
    m = AttentionModule(16, pools=1, learning=learning).eval()
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        learned = m(x)
        trunk = _trunk_path(m, x)
        assert not torch.allclose(learned, trunk, atol=1e-4)  # the real mask does change H
        m.mask = Constant(neutral)
        assert torch.allclose(m(x), trunk, atol=1e-6)
        m.mask = Constant(0.5)
        assert not torch.allclose(m(x), trunk, atol=1e-4)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_every_activation_builds_through_the_registry(activation):
    m = create_attn("residual_attention", 16, activation=activation, learning="nal").eval()
    x = torch.randn(2, 16, 6, 6)
    with collect_maps(m) as maps, torch.no_grad():
        assert m(x).shape == x.shape
    assert maps[""]["mask"].shape == x.shape
    assert m.mask.activation.activation == activation


def test_mixed_is_the_elementwise_sigmoid():
    s = torch.randn(2, 8, 5, 5)
    assert torch.allclose(MaskActivation("mixed", 8)(s), torch.sigmoid(s))


def test_channel_activation_has_unit_norm_over_channels():
    m = MaskActivation("channel", 8)(3 * torch.randn(2, 8, 5, 7))
    assert torch.allclose(m.norm(dim=1), torch.ones(2, 5, 7), atol=1e-5)
    assert (m < 0).any()  # not squashed into [0, 1]: the paper's channel attention is a plain L2 norm


def test_spatial_activation_zscores_each_channel_over_positions():
    s = 2 + 3 * torch.randn(2, 8, 6, 5)
    z = torch.logit(MaskActivation("spatial", 8)(s).double())  # the value before the sigmoid
    assert torch.allclose(z.mean((2, 3)), torch.zeros(2, 8, dtype=torch.double), atol=1e-4)
    assert torch.allclose(z.var((2, 3), unbiased=False), torch.ones(2, 8, dtype=torch.double), atol=1e-3)
    # ...and not across channels: a position's values over C are not standardised
    assert z.mean(1).abs().max() > 0.05


def test_layernorm_activation_normalises_across_channels():
    act = MaskActivation("layernorm", 8)
    assert count_params(act) == 16  # a gain and a bias per channel
    s = 2 + 3 * torch.randn(2, 8, 6, 5)
    with torch.no_grad():
        z = act.norm(s.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # the value before the sigmoid
        assert torch.allclose(act(s), torch.sigmoid(z))
    assert torch.allclose(z.mean(1), torch.zeros(2, 6, 5), atol=1e-5)
    # unit variance up to Keras' LayerNorm epsilon (1e-3): var / (var + eps)
    v = s.var(1, unbiased=False)
    assert torch.allclose(z.var(1, unbiased=False), v / (v + 1e-3), atol=1e-5)
    assert z.mean((2, 3)).abs().max() > 0.05  # the opposite grouping to the paper's spatial


def test_activation_end_to_end_in_a_module():
    m = AttentionModule(16, pools=1, activation="channel").eval()
    with collect_maps(m) as maps, torch.no_grad():
        m(torch.randn(2, 16, 8, 8))
    assert torch.allclose(maps[""]["mask"].norm(dim=1), torch.ones(2, 8, 8), atol=1e-5)


@pytest.mark.parametrize("upsample", ["bilinear", "nearest"])
@pytest.mark.parametrize("pools, h, w", [(1, 5, 7), (2, 7, 9), (3, 9, 15), (3, 15, 5)])
def test_mask_branch_returns_to_input_resolution(upsample, pools, h, w):
    branch = SoftMaskBranch(8, pools, 1, None, upsample, "preact", "mixed")
    out = branch(torch.randn(2, 8, h, w))
    assert out.shape == (2, 8, h, w)
    assert ((out > 0) & (out < 1)).all()


def test_mask_unit_counts():
    # paper: r units after each pool, a skip unit at each pooled scale but the lowest,
    # r more at the lowest scale, r after each addition on the way up
    def n_units(b):
        return sum(isinstance(u, PreActBottleneck) for u in b.modules())
    for pools, expected in [(0, 2), (1, 2), (2, 5), (3, 8)]:
        assert n_units(SoftMaskBranch(8, pools, 1, None, "bilinear", "preact", "mixed")) == expected
    # the replication's 1-pool modules have no extra unit at the lowest scale
    assert n_units(SoftMaskBranch(8, 1, 1, 0, "nearest", "linear", "mixed")) == 1


def test_module_rejects_bad_options():
    with pytest.raises(ValueError, match="activation must be one of 'mixed', 'channel', 'spatial', 'layernorm'"):
        AttentionModule(16, activation="softmax")
    with pytest.raises(ValueError, match="learning must be one of 'arl', 'nal'"):
        AttentionModule(16, learning="residual")
    with pytest.raises(ValueError, match="integers >= 0"):
        AttentionModule(16, pools=-1)
    assert get_attn("residual_attention").role == "module"


# -- maps -----------------------------------------------------------------------------------

def test_masks_appear_as_maps_at_their_own_resolution():
    model = create_model("attention56").eval()
    with collect_maps(model) as maps, torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    masks = {name: kinds["mask"].shape for name, kinds in maps.items()}
    assert masks == {"stage1.1": (2, 64, 32, 32), "stage2.1": (2, 128, 16, 16), "stage3.1": (2, 256, 8, 8)}
    assert all(((k["mask"] >= 0) & (k["mask"] <= 1)).all() for k in maps.values())  # mixed: sigmoid
    assert all(m._collection is None for m in model.modules() if isinstance(m, AttentionModule))


def test_masks_off_twin_has_no_maps_and_the_same_trunk_depth():
    def trunk_units(model):
        # units outside any mask branch: the depth the paper counts
        masked = {id(u) for b in model.modules() if isinstance(b, SoftMaskBranch)
                  for u in b.modules() if isinstance(u, PreActBottleneck)}
        return sum(isinstance(u, PreActBottleneck) and id(u) not in masked for u in model.modules())
    for name, twin, m in [("attention92", "attention92_nomask", 2), ("attention56", "attention56_nomask", 1)]:
        a, b = create_model(name), create_model(twin)
        # depth 36m + 20 = 3 layers per unit + the stem conv + the linear layer
        assert 3 * trunk_units(a) + 2 == 3 * trunk_units(b) + 2 == 36 * m + 20
    with collect_maps(b) as maps, torch.no_grad():
        b.eval()(torch.randn(1, 3, 16, 16))
    assert maps == {}


# -- pinned parameter counts, against a count by hand ----------------------------------------

def unit_params(cin: int, cout: int, bias: bool = False, every: bool = False) -> int:
    b = cout // 4
    p = 2 * cin + cin * b + 2 * b + 9 * b * b + 2 * b + b * cout  # BN-1x1-BN-3x3-BN-1x1
    p += (b + b + cout) if bias else 0
    if every or cin != cout:
        p += cin * cout + (cout if bias else 0)
    return p


def module_params(c: int, pools: int, bottom: int = 1, replication: bool = False,
                  layernorm: bool = False) -> int:
    n = 2 + 2  # p pre + p post + t trunk, with p = 1, t = 2
    n += pools + max(pools - 1, 0) + bottom + (1 if pools == 0 else 0) + max(pools - 1, 0)
    head = 2 * (c * c + c) if replication else 2 * c + c * c + 2 * c + c * c
    return n * unit_params(c, c, replication, replication) + head + (2 * c if layernorm else 0)


def paper_net(modules, masks: bool = True) -> int:
    p, c = 3 * 9 * 16, 16  # conv3x3, no bias
    for w, m, pools in zip((64, 128, 256), modules, (2, 1, 0)):
        p += unit_params(c, w)
        p += m * (module_params(w, pools) if masks else 4 * unit_params(w, w))
        c = w
    return p + 3 * unit_params(256, 256) + 2 * 256 + 256 * 10 + 10


def replication_net(modules=(1, 1, 1), layernorm: bool = False) -> int:
    p, c = 5 * 5 * 3 * 64 + 64, 64
    for w, m, pools, bottom in zip((64, 128, 256), modules, (3, 2, 1), (1, 1, 0)):
        p += unit_params(c, w, True, True)
        p += m * module_params(w, pools, bottom, replication=True, layernorm=layernorm)
        c = w
    p += unit_params(256, 512, True, True) + 2 * unit_params(512, 512, True, True)
    return p + 2 * 512 + 512 * 10 + 10


def preact_resnet164() -> int:
    p, c = 3 * 9 * 16, 16
    for w in (64, 128, 256):
        p += unit_params(c, w) + 17 * unit_params(w, w)
        c = w
    return p + 2 * 256 + 256 * 10 + 10


HAND = {
    "attention56": paper_net((1, 1, 1)), "attention92": paper_net((2, 2, 2)),
    "attention56_nomask": paper_net((1, 1, 1), masks=False), "attention92_nomask": paper_net((2, 2, 2), masks=False),
    "resnet164_preact": preact_resnet164(), "attention56_replication": replication_net(),
    "attention92_replication": replication_net((1, 2, 3)),
}


@pytest.mark.parametrize("name", sorted(HAND))
def test_pinned_parameter_counts(name):
    spec = model_spec(name)
    assert spec.params == HAND[name] == count_params(create_model(name))


def test_replication_counts_match_its_published_summary():
    assert HAND["attention56_replication"] == 2_877_290
    assert replication_net(layernorm=True) == 2_878_186 == count_params(
        create_model("attention56_replication", activation="layernorm"))
    # Keras printed 2,892,970: it also counts the BatchNorm running means and variances
    model = create_model("attention56_replication")
    stats = sum(b.numel() for n, b in model.named_buffers() if n.endswith(("running_mean", "running_var")))
    assert HAND["attention56_replication"] + stats == 2_892_970
    # and the paper's CIFAR Attention-92 has 1.9M parameters; ours is near it
    assert abs(HAND["attention92"] - 1.9e6) < 0.1e6


def test_replication_style_everywhere():
    model = create_model("attention56_replication")
    units = [u for u in model.modules() if isinstance(u, PreActBottleneck)]
    assert all(isinstance(u.shortcut, nn.Conv2d) and u.shortcut_input == "input" for u in units)
    assert all(u.conv1.bias is not None for u in units)
    modules = [m for m in model.modules() if isinstance(m, AttentionModule)]
    assert [m.mask.upsample for m in modules] == ["nearest"] * 3
    assert [len(m.mask.down) for m in modules] == [3, 2, 1]


# -- backbones: options and bad input -----------------------------------------------------------

def test_backbone_owns_mask_depth_and_unit_style():
    with pytest.raises(ValueError, match="mask_pools"):
        create_model("attention56", pools=3)
    with pytest.raises(ValueError, match="model option 'projection'"):
        create_model("attention56", attn_kw={"projection": "every"})
    deeper = create_model("attention56", mask_pools=(3, 2, 1))
    assert [len(m.mask.down) for m in deeper.modules() if isinstance(m, AttentionModule)] == [3, 2, 1]
    every = create_model("attention56", projection="every")
    assert all(u.shortcut is not None for u in every.modules() if isinstance(u, PreActBottleneck))


def test_attn_stages_and_the_slot():
    only_first = create_model("attention56", attn_stages=(1,))
    assert sum(isinstance(m, AttentionModule) for m in only_first.modules()) == 1
    with pytest.raises(ValueError, match="'module'-role block"):
        create_backbone("attention_net", attn="se")
    with pytest.raises(ValueError, match="no attention slot"):
        create_backbone("preact_resnet", attn="residual_attention")
    with pytest.raises(ValueError, match="9n \\+ 2"):
        create_backbone("preact_resnet", depth=21)
    with pytest.raises(ValueError, match="expects images"):
        create_model("attention56")(torch.randn(2, 1, 32, 32))


def test_tiny_model_trains_and_masks_get_gradients():
    model = create_model("attention56", widths=(16, 32, 64), learning="nal")
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    nn.functional.cross_entropy(model(x), y).backward()
    head = model.stage1[1].mask.head[-1].weight
    assert head.grad is not None and head.grad.abs().sum() > 0


# -- the paper entry ---------------------------------------------------------------------------

def test_paper_registry_entry():
    paper = get_paper("residual_attention")
    names = {m.name for m in paper.models}
    assert {"attention56", "attention92", "attention56_nomask", "attention92_nomask", "resnet164_preact",
            "attention56_replication"} <= names
    claims = paper.claims_frame()
    c10 = claims[(claims.dataset == "cifar10") & (claims.metric == "test_error")]
    arl = dict(zip(c10[c10.setting == "learning=arl"].model, c10[c10.setting == "learning=arl"].value))
    nal = dict(zip(c10[c10.setting == "learning=nal"].model, c10[c10.setting == "learning=nal"].value))
    assert arl == {"attention56": 5.52, "attention92": 4.99, "Attention-128": 4.44, "Attention-164": 4.31}
    assert nal == {"attention56": 5.89, "attention92": 5.35, "Attention-128": 5.57, "Attention-164": 7.18}
    assert set(claims[claims.metric == "test_acc"].value) == {86.65, 86.26, 85.66, 78.74, 53.46, 54.76}
    assert all(c.protocol and c.source for c in paper.claims)
    # every ablation axis point the paper reports is filed under "parameter=value"
    act = c10[(c10.model == "attention56") & c10.setting.str.startswith("activation=")]
    assert dict(zip(act.setting, act.value)) == {"activation=mixed": 5.52, "activation=channel": 6.24,
                                                 "activation=spatial": 6.33}
    defaults = claims[claims.setting == ""]
    assert {"attention56", "attention92", "resnet164_preact", "attention56_replication"} <= set(defaults.model)
    targets = paper.targets
    assert {t.batch_size for t in targets} == {64, 128}
    assert all(t.limit is None and t.reference == "attention56_nomask" for t in targets)
    for axis in paper.ablations:
        for v in axis.values:
            create_model(axis.model, **{axis.parameter: v})


def test_recipes():
    paper = get_recipe("ran_paper")
    assert (paper.optimizer, paper.nesterov, paper.lr, paper.batch_size) == ("sgd", True, 0.1, 64)
    assert paper.milestones == pytest.approx((64 / 160, 96 / 160))
    adam = get_recipe("ran_replication_adam")
    assert (adam.optimizer, adam.batch_size, adam.patience) == ("adam", 64, 15)
    sgd = get_recipe("ran_replication_sgd")
    assert [round(m * sgd.epochs) for m in sgd.milestones] == [65, 120, 180]
