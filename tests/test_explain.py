"""GradCAM, attention maps, localisation scores, gates, and their figures."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from attnlab import collect_maps, create_model, plots  # noqa: E402
from attnlab.explain import (PLOT_RULES, attention_maps, gate_table, gradcam,  # noqa: E402
                             localisation_score, plot_entries, upsample_to)
from attnlab.layers import MAP_KINDS, MapSource  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
    plt.close("all")


def tiny_model() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 5, 3, stride=2, padding=1),  # index 3: the GradCAM layer, 8x8 -> 4x4
        nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3),
    )


def reference_gradcam(model: nn.Sequential, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """GradCAM written out by hand, one image at a time, with torch.autograd.grad."""
    model.eval()
    maps = []
    for i in range(len(x)):
        a = model[:4](x[i:i + 1])
        score = model[4:](a.clone())[0, target[i]]
        (g,) = torch.autograd.grad(score, a)
        cam = torch.relu((g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True))
        cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
        maps.append(cam / cam.max() if cam.max() > 0 else cam)
    return torch.stack(maps).detach()


def test_gradcam_matches_hand_computation():
    model = tiny_model()
    x = torch.randn(5, 3, 8, 8)
    target = torch.tensor([0, 1, 2, 1, 0])
    ours = gradcam(model, x, model[3], target)
    assert torch.allclose(ours, reference_gradcam(model, x, target), atol=1e-5)
    # default target: the predicted class; layer by dotted name
    pred = model.eval()(x).argmax(1)
    assert torch.allclose(gradcam(model, x, "3"), reference_gradcam(model, x, pred), atol=1e-5)


def test_gradcam_shape_range_batching_and_mode():
    model = create_model("resnet20").train()
    x = torch.randn(3, 3, 32, 32)
    bn_mean = model.bn1.running_mean.clone()
    cams = gradcam(model, x, "layer3")
    assert cams.shape == (3, 32, 32)
    assert cams.min() >= 0 and cams.max() <= 1
    assert torch.allclose(cams.flatten(1).amax(1), torch.ones(3))
    single = torch.cat([gradcam(model, x[i:i + 1], "layer3") for i in range(3)])
    assert torch.allclose(cams, single, atol=1e-5)
    assert model.training  # mode restored
    assert torch.equal(model.bn1.running_mean, bn_mean)  # ran in eval mode
    assert not model.layer3._forward_hooks  # hooks removed
    assert all(p.grad is None for p in model.parameters())


def test_gradcam_rejects_non_spatial_layer():
    model = create_model("resnet20")
    with pytest.raises(ValueError, match="B, C, H, W"):
        gradcam(model, torch.randn(1, 3, 32, 32), "linear")


@pytest.mark.parametrize("attn, kw, heads", [("selfatt", {}, 1), ("mha", {"num_heads": 8}, 8)])
def test_attention_maps_shapes_and_rows(attn, kw, heads):
    model = create_model("resnet20", attn=attn, attn_kw=kw).train()
    x = torch.randn(2, 3, 32, 32)
    query = (20, 9)
    maps = attention_maps(model, x, query)
    assert model.training
    assert set(maps) == {"attn1", "attn2", "attn3"}
    model.eval()
    with torch.no_grad(), collect_maps(model) as full:  # whole matrices, every query row
        model(x)
    for i, side in enumerate((32, 16, 8), start=1):
        m = maps[f"attn{i}"]
        assert m.shape == (2, heads, side, side)
        assert torch.allclose(m.sum((2, 3)), torch.ones(2, heads), atol=1e-5)
        row, col = query[0] * side // 32, query[1] * side // 32
        expected = full[f"attn{i}"]["attention"][:, :, row * side + col]  # B, heads, side, side
        assert torch.allclose(m, expected, atol=1e-5)


def test_attention_maps_cbam():
    model = create_model("resnet20", attn="cbam")
    maps = attention_maps(model, torch.randn(2, 3, 32, 32), (0, 31))
    for i, (side, c) in enumerate(((32, 16), (16, 32), (8, 64)), start=1):
        assert maps[f"attn{i}"].shape == (2, 1, side, side)
        assert maps[f"attn{i}.channel"].shape == (2, c)


def test_attention_maps_in_block_placement():
    model = create_model("resnet20_cbam", placement="block")
    maps = attention_maps(model, torch.randn(1, 3, 32, 32), (4, 4))
    assert maps["layer3.2.attn"].shape == (1, 1, 8, 8) and maps["layer1.0.attn.channel"].shape == (1, 16)
    assert len(maps) == 2 * 9


class Emitter(MapSource, nn.Module):
    """Emits given maps as a block would."""

    def __init__(self, **maps):
        super().__init__()
        self.maps = maps

    def forward(self, x):
        if self.collecting:
            for kind, value in self.maps.items():
                self.emit(kind, value)
        return x


def test_every_map_kind_has_one_plotting_rule():
    assert set(PLOT_RULES) == set(MAP_KINDS)
    with pytest.raises(ValueError, match="no plotting rule for map kind 'saliency'"):
        plot_entries("attn1", "saliency", torch.zeros(1, 1, 4, 4), (0, 0), (8, 8))


def test_plotting_rules_per_kind():
    mask = torch.rand(2, 6, 4, 4)
    groups = torch.rand(2, 3, 4, 4)
    model = nn.Sequential(Emitter(mask=mask), Emitter(spatial=groups, gate=torch.ones(1)),
                          Emitter(spatial=groups[:, :1], mask=mask))
    maps = attention_maps(model, torch.zeros(2, 3, 8, 8), (1, 1))
    assert set(maps) == {"0", "1", "2", "2.mask"}  # gates are not drawn
    torch.testing.assert_close(maps["0"], mask.mean(1, keepdim=True))  # per-channel mask: its mean
    torch.testing.assert_close(maps["1"], groups)  # one spatial mask per group, as emitted
    torch.testing.assert_close(maps["2"], groups[:, :1])  # the second drawable kind keeps its own key
    torch.testing.assert_close(maps["2.mask"], mask.mean(1, keepdim=True))


def test_attention_rule_picks_the_query_row_of_a_full_matrix():
    a = torch.rand(1, 2, 16, 4, 4)  # a block that built every row of a 4x4 grid
    full = attention_maps(nn.Sequential(Emitter(attention=a)), torch.zeros(1, 3, 8, 8), (5, 2))
    torch.testing.assert_close(full["0"], a[:, :, (5 * 4 // 8) * 4 + 2 * 4 // 8])
    with pytest.raises(ValueError, match="query rows"):
        attention_maps(nn.Sequential(Emitter(attention=a[:, :, :3])), torch.zeros(1, 3, 8, 8), (0, 0))


def test_attention_maps_query_outside_input():
    model = create_model("resnet20", attn="selfatt")
    with pytest.raises(ValueError, match="outside"):
        attention_maps(model, torch.randn(1, 3, 32, 32), (32, 0))


def test_upsample_to():
    maps = {"a": torch.rand(2, 8, 8, 8), "a.channel": torch.rand(2, 64)}
    up = upsample_to(maps, 32)
    assert up["a"].shape == (2, 8, 32, 32)
    assert torch.equal(up["a"][:, :, ::4, ::4], maps["a"])  # nearest keeps the grid
    assert up["a.channel"] is maps["a.channel"]
    assert upsample_to(torch.rand(1, 1, 4, 4), (8, 16), mode="bilinear").shape == (1, 1, 8, 16)


def test_localisation_score_on_hand_made_masks():
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[:, 2:4, 2:6] = True  # 8 of 64 pixels: chance 0.125
    inside = torch.zeros(2, 8, 8)
    inside[:, 2:4, 2:6] = torch.rand(2, 2, 4) + 0.1
    s = localisation_score(inside, masks)
    assert s["mass_inside"] == pytest.approx(1.0) and s["peak_inside"] == 1.0
    assert s["chance"] == pytest.approx(0.125) and s["n"] == 2
    outside = (~masks).float()
    outside[1, 0, 0] = 5.0
    s = localisation_score(outside[:, None], masks)
    assert s["mass_inside"] == 0.0 and s["peak_inside"] == 0.0
    uniform = localisation_score(torch.ones(2, 4, 4), masks)  # resized to the masks
    assert uniform["mass_inside"] == pytest.approx(uniform["chance"])


def test_gate_table():
    frame = gate_table(create_model("resnet20", attn="selfatt"))
    assert frame["module"].tolist() == ["attn1", "attn2", "attn3"]
    assert (frame["gate"] == 0).all() and (frame["block"] == "SelfAttention2d").all()
    assert gate_table(create_model("resnet20")).empty


def test_figures():
    model = create_model("resnet20", attn="mha")
    x = torch.randn(2, 3, 32, 32)
    mean, std = [0.5] * 3, [0.25] * 3
    cams = {"a": gradcam(model, x, "layer3"), "b": gradcam(model, x, "layer2")}
    fig = plots.overlay(x, cams, mean, std, titles=["one", "two"])
    assert len(fig.axes) == 4
    maps = attention_maps(model, x, (3, 4))
    assert len(plots.plot_attention(x, maps, (3, 4)).axes) == 2 * 4
    assert len(plots.plot_attention(x, maps, (3, 4), per_head=True).axes) == 2 * (1 + 3 * 8)
    uint8 = (torch.rand(2, 1, 28, 28) * 255).to(torch.uint8)
    assert len(plots.overlay(uint8, torch.rand(2, 7, 7)).axes) == 2


def test_plot_gates_and_results():
    hist = pd.DataFrame({"epoch": [1, 2, 3], "gate:attn1": [0.0, 0.1, 0.2], "gate:attn2": [0, 0, 0.0]})
    ax = plots.plot_gates(hist)
    assert len(ax.get_lines()) == 3  # two gates and the zero line
    assert plots.plot_gates(pd.DataFrame({"epoch": [1]})).texts
    runs = pd.DataFrame({"model": ["resnet20"] * 3 + ["selfatt"] * 2,
                         "test_acc": [0.90, 0.91, 0.92, 0.915, 0.925]})
    ax = plots.plot_results(runs, "test_acc", published={"resnet20": 0.9096, "paper-only": 0.93})
    assert [t.get_text().split("\n")[0] for t in ax.get_xticklabels()] == ["resnet20", "selfatt", "paper-only"]
