"""Attention-augmented convolution (paper ``aaconv``): the block, its relative logits, the
WRN / ResNet-34 backbones, the memory planner, the warm-up cosine schedule and the paper."""
from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnlab import collect_maps, create_model
from attnlab.cost import peak_memory
from attnlab.layers import create_attn, get_attn
from attnlab.layers.aaconv import PATHS, AugmentedConv2d, rel_to_abs, split_size
from attnlab.memory import AttentionMemoryError, check_memory, layer_memory, plan_memory
from attnlab.models import create_backbone
from attnlab.papers import get_paper, model_spec
from attnlab.recipes import RECIPES, SCHEDULES, get_recipe
from attnlab.train import WARMUP_FRACTION, lr_factor


def block(**kw) -> AugmentedConv2d:
    base = dict(in_channels=6, out_channels=16, kernel_size=3, dk=8, dv=8, num_heads=2)
    return AugmentedConv2d(**{**base, **kw})


# -- the relative logits ----------------------------------------------------------------

def test_rel_to_abs_shifts_each_row_by_its_index():
    L = 4
    x = torch.arange(L * (2 * L - 1), dtype=torch.float).reshape(L, 2 * L - 1)
    out = rel_to_abs(x)
    expected = torch.tensor([[x[i, j - i + L - 1].item() for j in range(L)] for i in range(L)])
    assert torch.equal(out, expected)


@pytest.mark.parametrize("H,W", [(3, 5), (4, 2), (1, 3)])
def test_relative_logits_equal_brute_force_on_non_square_grids(H, W):
    torch.manual_seed(0)
    m = block(size=(H, W))
    q = torch.randn(2, 2, H, W, m.dkh)
    R_h, R_w = m.relative_logits(q)
    for yi in range(H):
        for xi in range(W):
            for yj in range(H):
                for xj in range(W):
                    s = q[:, :, yi, xi] @ m.rel_w[xj - xi + W - 1] + q[:, :, yi, xi] @ m.rel_h[yj - yi + H - 1]
                    torch.testing.assert_close(R_h[:, :, yi, xi, yj] + R_w[:, :, yi, xi, xj], s)


@pytest.mark.parametrize("path", PATHS)
def test_attention_matrix_equals_the_definition(path):
    """softmax((q k^T + S^H + S^W) / sqrt(d_k^h)) from q, k and the tables, every pair (i, j)."""
    torch.manual_seed(1)
    H, W = 3, 4
    m = block(path=path).eval()
    x = torch.randn(2, 6, H, W)
    with torch.no_grad(), collect_maps(m) as maps:
        m(x)
    got = maps[""]["attention"].reshape(2, 2, H * W, H * W)
    q, k, _ = torch.split(m.qkv(x), [8, 8, 8], dim=1)
    q = q.reshape(2, 2, 4, H * W).detach()
    k = k.reshape(2, 2, 4, H * W).detach()
    logits = torch.zeros(2, 2, H * W, H * W)
    for i in range(H * W):
        for j in range(H * W):
            (yi, xi), (yj, xj) = divmod(i, W), divmod(j, W)
            qi = q[..., i]
            logits[..., i, j] = ((qi * k[..., j]).sum(-1) + qi @ m.rel_w[xj - xi + W - 1].detach()
                                 + qi @ m.rel_h[yj - yi + H - 1].detach())
    torch.testing.assert_close(got, torch.softmax(logits / math.sqrt(4), -1), atol=1e-6, rtol=1e-5)


def test_tables_are_shared_by_heads_sized_2L_minus_1_and_initialised_with_dkh_to_the_minus_half():
    m = AugmentedConv2d(8, 64, 3, dk=64, dv=16, num_heads=4, size=(30, 20))  # d_k^h = 16
    assert m.rel_w.shape == (2 * 20 - 1, 16) and m.rel_h.shape == (2 * 30 - 1, 16)
    values = torch.cat([m.rel_w.flatten(), m.rel_h.flatten()])
    assert abs(values.std().item() - 16 ** -0.5) < 0.02  # std 0.25 over 1568 draws
    assert m.qkv.kernel_size == (1, 1)


# -- NRE is plain multi-head attention beside a convolution ----------------------------

def test_nre_equals_plain_multi_head_attention():
    torch.manual_seed(2)
    C, heads, H, W = 8, 2, 3, 5
    m = AugmentedConv2d(C, 12, 3, dk=C, dv=C, num_heads=heads, relative=False, batchnorm=False).eval()
    mha = nn.MultiheadAttention(C, heads, batch_first=True).eval()
    with torch.no_grad():
        mha.in_proj_weight.copy_(m.qkv.weight[:, :, 0, 0])
        mha.in_proj_bias.copy_(m.qkv.bias)
        mha.out_proj.weight.copy_(m.proj.weight[:, :, 0, 0])
        mha.out_proj.bias.copy_(m.proj.bias)
    x = torch.randn(2, C, H, W)
    tokens = x.flatten(2).transpose(1, 2)  # B, HW, C
    with torch.no_grad():
        out = m(x)
        ref, _ = mha(tokens, tokens, tokens)
        conv = m.conv(x)
    torch.testing.assert_close(out[:, -C:], ref.transpose(1, 2).reshape(2, C, H, W), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[:, :-C], conv)
    assert not hasattr(m, "rel_w")


# -- shapes, sizes and bad input --------------------------------------------------------

@pytest.mark.parametrize("stride,H,W,out_hw", [(1, 7, 9, (7, 9)), (2, 7, 9, (4, 5)), (2, 8, 6, (4, 3))])
def test_output_channels_and_shapes(stride, H, W, out_hw):
    m = AugmentedConv2d(5, 20, 3, stride=stride, dk=0.2, dv=0.1, num_heads=2)
    assert (m.dk, m.dv) == (4, 2)
    y = m(torch.randn(3, 5, H, W))
    assert y.shape == (3, 20, *out_hw)
    assert m.conv.out_channels == 18 and m.proj.out_channels == 2
    assert m.size == out_hw  # the attention runs on the strided grid


def test_fractions_round_to_head_multiples_and_respect_the_minimum_per_head():
    assert split_size(0.2, 64, 8, "dk") == 16  # 12.8 -> nearest multiple of 8
    assert split_size(0.1, 64, 8, "dv") == 8
    assert split_size(0.2, 160, 8, "dk", 20) == 160  # Bello et al.: >= 20 per head
    assert split_size(0.2, 64, 8, "dk", 20) == 64  # ... where the width allows
    assert split_size(24, 64, 8, "dk") == 24


def test_heads_must_divide_dk_and_dv_with_the_valid_choices_named():
    with pytest.raises(ValueError, match=r"dk=12 .* multiple of num_heads=8.*\[8, 16\].*\[1, 2, 3, 4, 6, 12\]"):
        AugmentedConv2d(4, 32, 3, dk=12, dv=8, num_heads=8)
    with pytest.raises(ValueError, match="dv=10"):
        AugmentedConv2d(4, 32, 3, dk=8, dv=10, num_heads=4)
    with pytest.raises(ValueError, match="exceeds out_channels"):
        AugmentedConv2d(4, 8, 3, dk=8, dv=16, num_heads=8)
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        AugmentedConv2d(4, 8, 2)
    with pytest.raises(ValueError, match="path must be one of"):
        AugmentedConv2d(4, 8, 3, dk=8, dv=8, path="flash")
    with pytest.raises(TypeError, match="dk must be"):
        get_attn("aaconv").resolve({"dk": "0.2"})


def test_tables_sized_from_the_first_input_then_a_clear_error_for_a_larger_one():
    m = block()
    assert m.size is None
    m(torch.randn(1, 6, 4, 6))
    assert m.size == (4, 6) and m.rel_w.shape == (11, 4)
    m(torch.randn(1, 6, 3, 2))  # smaller grids use the central rows
    with pytest.raises(ValueError, match=r"up to 4x6.*needs 5x6.*size=\(5, 6\)"):
        m(torch.randn(1, 6, 5, 6))
    declared = block(size=(8, 8))
    assert declared.rel_h.shape == (15, 4)
    declared(torch.randn(1, 6, 8, 8))


def test_a_checkpoint_of_lazily_sized_tables_loads_into_a_fresh_block():
    a = block()
    a(torch.randn(1, 6, 3, 5))
    b = block()
    b.load_state_dict(a.state_dict())
    assert b.size == (3, 5)
    x = torch.randn(2, 6, 3, 5)
    torch.testing.assert_close(a.eval()(x), b.eval()(x))


def test_kernel_size_is_taken_from_the_conv_role():
    m = create_attn("aaconv", 4, 16, 5, 2, dk=8, dv=8, num_heads=2)
    assert get_attn("aaconv").role == "conv"
    assert m.conv.kernel_size == (5, 5) and m.conv.stride == (2, 2)


# -- paths agree; training works; gradients are right -----------------------------------

@pytest.mark.parametrize("relative", [True, False])
@pytest.mark.parametrize("stride", [1, 2])
def test_fused_equals_explicit_forward_and_gradients(relative, stride):
    torch.manual_seed(3)
    x = torch.randn(2, 6, 5, 7)
    outs, grads = {}, {}
    for path in PATHS:
        torch.manual_seed(4)
        # without the BatchNorm, whose mean removal leaves the projection bias a gradient of ~0 (all noise)
        m = block(path=path, relative=relative, stride=stride, size=(3, 4) if stride == 2 else (5, 7),
                  batchnorm=False)
        xi = x.clone().requires_grad_(True)
        y = m(xi)
        (y * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum().backward()
        outs[path] = y.detach()
        grads[path] = [xi.grad] + [p.grad for p in m.parameters()]
    for path in ("fused", "bias"):
        torch.testing.assert_close(outs[path], outs["explicit"], atol=1e-5, rtol=0)
        for g, ref in zip(grads[path], grads["explicit"]):
            torch.testing.assert_close(g, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("path", PATHS)
def test_gradients_match_finite_differences(path):
    torch.manual_seed(5)
    m = AugmentedConv2d(3, 6, 3, dk=4, dv=4, num_heads=2, path=path, size=(3, 4)).double()
    x = torch.randn(2, 3, 3, 4, dtype=torch.double, requires_grad=True)
    params = [m.rel_h, m.rel_w]
    assert torch.autograd.gradcheck(lambda inp, *_: m(inp), (x, *params), eps=1e-6, atol=1e-5, fast_mode=True)


def test_training_steps_run_without_in_place_errors_and_reach_every_parameter():
    torch.manual_seed(6)
    model = create_model("aa_wrn10_2")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    losses = []
    for _ in range(3):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        aa = model.block3[0].conv1
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in aa.parameters())
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]


def test_attention_rows_per_head_for_a_query_pixel():
    torch.manual_seed(7)
    m = create_model("aa_wrn10_2").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), collect_maps(m, query=(20, 10)) as maps:
        m(x)
    rows = maps["block3.0.conv1"]["attention"]
    assert rows.shape == (2, 8, 1, 8, 8)  # B, heads, one query, the 8x8 grid
    torch.testing.assert_close(rows.sum((-1, -2)), torch.ones(2, 8, 1))
    with torch.no_grad(), collect_maps(m) as full:
        m(x)
    # input pixel (20, 10) lies in cell (5, 2) of the 8x8 grid
    torch.testing.assert_close(full["block3.0.conv1"]["attention"][:, :, 5 * 8 + 2], rows[:, :, 0])


# -- parameter counts, pinned against formulas ------------------------------------------

def aa_params(c_in, f_out, k, dk, dv, heads, grid, relative=True, bn=True) -> int:
    conv = c_in * (f_out - dv) * k * k
    qkv = (c_in + 1) * (2 * dk + dv)
    proj = (dv + 1) * dv
    tables = (2 * grid[0] - 1 + 2 * grid[1] - 1) * (dk // heads) if relative else 0
    return conv + qkv + proj + tables + (2 * f_out if bn else 0)


def wrn_params(depth, k, classes=10) -> int:
    n, widths = (depth - 4) // 6, [16, 16 * k, 32 * k, 64 * k]
    total = 3 * 16 * 9
    for g in range(3):
        cin, cout = widths[g], widths[g + 1]
        for b in range(n):
            i = cin if b == 0 else cout
            total += 2 * i + i * cout * 9 + 2 * cout + cout * cout * 9 + (i * cout if b == 0 else 0)
    return total + 2 * widths[3] + widths[3] * classes + classes


def test_block_params():
    m = AugmentedConv2d(32, 64, 3, dk=16, dv=8, num_heads=4, size=(6, 5))
    assert sum(p.numel() for p in m.parameters()) == aa_params(32, 64, 3, 16, 8, 4, (6, 5))
    m = AugmentedConv2d(32, 64, 3, dk=16, dv=8, num_heads=4, relative=False, batchnorm=False)
    assert sum(p.numel() for p in m.parameters()) == aa_params(32, 64, 3, 16, 8, 4, (0, 0), False, False)


@functools.lru_cache(maxsize=None)
def count(name: str) -> int:
    return sum(p.numel() for p in create_model(name).parameters())


@pytest.mark.parametrize("name,depth,k", [("wrn10_2", 10, 2), ("wrn16_4", 16, 4), ("wrn28_10", 28, 10)])
def test_wrn_params(name, depth, k):
    assert count(name) == wrn_params(depth, k) == model_spec(name).params


def test_wrn28_10_has_36_5_million_parameters():
    assert round(count("wrn28_10") / 1e6, 1) == 36.5


def conv3x3_minus_aa(c_in, f, dk, dv, grid, relative=True):
    """What replacing a bias-free 3x3 conv (c_in -> f) by the AA block (no BN) adds."""
    return aa_params(c_in, f, 3, dk, dv, 8, grid, relative, bn=False) - c_in * f * 9


@pytest.mark.parametrize("name,base,layers", [
    ("aa_wrn10_2", "wrn10_2", [(64, 128, 128, 16, (8, 8))]),
    ("aa_wrn10_2_nre", "wrn10_2", [(64, 128, 128, 16, None)]),
    ("aa_wrn16_4", "wrn16_4", [(128, 256, 160, 24, (8, 8))]),
    ("aa_wrn16_4_nre", "wrn16_4", [(128, 256, 160, 24, None)]),
    ("aa_wrn28_10_last", "wrn28_10", [(320, 640, 160, 64, (8, 8))]),
    # Bello et al.: every block; d_k = max(0.2 F, 20 * 8) = 160, d_v = 0.1 F
    ("aa_wrn28_10", "wrn28_10", [(16, 160, 160, 16, (32, 32))] + [(160, 160, 160, 16, (32, 32))] * 3
     + [(160, 320, 160, 32, (16, 16))] + [(320, 320, 160, 32, (16, 16))] * 3
     + [(320, 640, 160, 64, (8, 8))] + [(640, 640, 160, 64, (8, 8))] * 3),
    # the last stage of ResNet-34: d_k = max(0.2 * 512, 20 * 8) = 160, d_v = round(51.2 / 8) * 8 = 48
    ("aa_resnet34", "resnet34", [(256, 512, 160, 48, (1, 1))] + [(512, 512, 160, 48, (1, 1))] * 2),
    ("aa_resnet34_cifarstem", "resnet34_cifarstem", [(256, 512, 160, 48, (4, 4))] + [(512, 512, 160, 48, (4, 4))] * 2),
])
def test_aa_model_params(name, base, layers):
    extra = sum(conv3x3_minus_aa(c, f, dk, dv, g or (0, 0), g is not None) for c, f, dk, dv, g in layers)
    assert count(name) == count(base) + extra == model_spec(name).params


def test_resnet34_params_equal_torchvision_and_the_stems_differ_by_the_first_conv():
    torchvision = pytest.importorskip("torchvision")
    ref = sum(p.numel() for p in torchvision.models.resnet34(num_classes=10).parameters())
    assert count("resnet34") == ref == 21_289_802
    assert count("resnet34") - count("resnet34_cifarstem") == 3 * 64 * (49 - 9)


# -- backbones --------------------------------------------------------------------------

@pytest.mark.parametrize("at,n_layers", [("all", 6), ("last", 2), ("last_first", 1)])
def test_wrn_attention_placement(at, n_layers):
    m = create_backbone("wrn", depth=16, widen_factor=1, attn="aaconv", attn_kw={"dk": 8, "dv": 8}, attn_at=at)
    names = [n for n, mod in m.named_modules() if isinstance(mod, AugmentedConv2d)]
    assert len(names) == n_layers and all(n.endswith("conv1") for n in names)
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_imagenet_stem_leaves_the_last_stage_a_one_by_one_attention_grid():
    m = create_model("aa_resnet34")
    grids = {n: mod.size for n, mod in m.named_modules() if isinstance(mod, AugmentedConv2d)}
    assert grids == {"layer4.0.conv1": (1, 1), "layer4.1.conv1": (1, 1), "layer4.2.conv1": (1, 1)}
    assert set(v.size for n, v in create_model("aa_resnet34_cifarstem").named_modules()
               if isinstance(v, AugmentedConv2d)) == {(4, 4)}


def test_backbone_slot_takes_only_conv_role_blocks_and_known_placements():
    with pytest.raises(ValueError, match="role 'conv'"):
        create_backbone("wrn", depth=10, widen_factor=1, attn="se")
    with pytest.raises(ValueError, match="attn_at must be one of"):
        create_backbone("wrn", depth=10, widen_factor=1, attn_at="middle")
    with pytest.raises(ValueError, match="6n \\+ 4"):
        create_backbone("wrn", depth=12)
    with pytest.raises(ValueError, match="stem must be"):
        create_backbone("resnet_basic", stem="tiny")


def test_tables_sized_for_the_backbone_input_size():
    m = create_model("aa_wrn10_2", input_size=16)
    assert m.block3[0].conv1.size == (4, 4)
    m(torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match="relative tables cover"):
        m(torch.randn(1, 3, 32, 32))


# -- the memory planner -----------------------------------------------------------------

def test_plan_counts_the_hw_by_hw_matrices_of_the_explicit_path_only():
    e = layer_memory("l", (8, 8), 8, 4, 2, 16, 1, True, "explicit", 32)
    f = layer_memory("l", (8, 8), 8, 4, 2, 16, 1, True, "fused", 32)
    assert e.matrix == 3 * 32 * 8 * 64 * 64 * 4
    assert f.matrix == 0 and f.total < e.total
    half = layer_memory("l", (8, 8), 8, 4, 2, 16, 1, True, "explicit", 32, "bf16")
    assert (half.total - half.tables) * 2 == e.total - e.tables  # the tables stay fp32 parameters
    plan = plan_memory("aa_wrn28_10", 64)
    assert len(plan.layers) == 12 and {x.grid for x in plan.layers} == {(32, 32), (16, 16), (8, 8)}
    tables = sum(x.tables for x in plan.layers)  # parameters: they do not scale with the batch
    assert plan.with_batch(128).total - tables == 2 * (plan.total - tables)


def test_planner_refuses_with_the_prediction_and_what_would_fit():
    setting = {"batch_size": 128, "path": "explicit", "free_bytes": 8 * 2**30}
    with pytest.raises(AttentionMemoryError) as info:
        check_memory("aa_wrn28_10", **setting)
    msg = str(info.value)
    plan = info.value.plan
    assert msg.startswith(f"aa_wrn28_10: 12 attention layer(s), batch 128, 32x32 input, fp32: "
                          f"{plan.total / 2**30:.2f} GiB extra") and "does not fit" in msg
    assert "4.00 GiB (50% of 8.00 GiB free)" in msg
    assert "What would fit:" in msg and "batch_size=" in msg and "attn_at='last'" in msg
    options = {s["change"]: s for s in info.value.suggestions}
    assert options["path='fused' (no hw x hw matrices)"]["bytes"] < plan.total
    assert options["relative=False (NRE)"]["bytes"] < plan.total
    fitting = [s for s in info.value.suggestions if s["fits"]]
    assert len(fitting) >= 3
    for s in fitting:  # each suggestion is accepted as it is offered
        accepted = check_memory("aa_wrn28_10", **{**setting, **s["kw"]})
        assert accepted.total == s["bytes"] <= 4 * 2**30
    module = create_model("aa_wrn10_2")
    with pytest.raises(AttentionMemoryError, match="None of these alone would fit"):
        check_memory(module, 128, free_bytes=1000)
    assert check_memory(module, 128, free_bytes=None, device="cpu").total > 0


class _OneBlock(nn.Module):
    def __init__(self, conv: nn.Module, out: int):
        super().__init__()
        self.conv, self.fc = conv, nn.Linear(out, 10)
        self.in_channels = 16

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))


@pytest.mark.parametrize("path", ["explicit", "fused"])
def test_predicted_extra_memory_within_25_percent_of_the_measured_peak(path):
    """CPU peak resident memory of a training step, AA block minus a plain conv, at a size
    where the attention dominates (a 16x16 grid, batch 32: the page-granular measurement
    is reliable there)."""
    torch.manual_seed(8)
    aa = _OneBlock(AugmentedConv2d(16, 32, 3, dk=16, dv=16, num_heads=8, batchnorm=False, path=path,
                                   size=(16, 16)), 32)
    conv = _OneBlock(nn.Conv2d(16, 32, 3, 1, 1, bias=False), 32)
    measured = (peak_memory(aa, 32, (16, 16, 16), device="cpu", precision="fp32")
                - peak_memory(conv, 32, (16, 16, 16), device="cpu", precision="fp32"))
    predicted = plan_memory(aa, 32, 16, "fp32").total
    assert 0.75 <= measured / predicted <= 1.25, \
        f"measured {measured / 2**20:.1f} MiB, predicted {predicted / 2**20:.1f} MiB"


# -- the warm-up cosine schedule, the recipes, the paper --------------------------------

def test_warmup_cosine_warms_up_linearly_over_5_percent_then_decays_along_a_cosine():
    assert "warmup_cosine" in SCHEDULES
    r = get_recipe("bello2019", epochs=10)
    steps, total = 20, 200
    warm = int(WARMUP_FRACTION * total)
    assert warm == 10
    f = [lr_factor(r, s, steps) for s in range(total + 1)]
    assert f[0] == pytest.approx(0.1) and f[4] == pytest.approx(0.5) and f[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(f[:warm], f[1:warm]))
    assert f[warm] == pytest.approx(1.0)
    mid = warm + (total - warm) // 2
    assert f[mid] == pytest.approx(0.5 * (1 + math.cos(math.pi * (mid - warm) / (total - warm))))
    assert f[total] == pytest.approx(0.0, abs=1e-12)
    assert r.lr == pytest.approx(0.2 * r.batch_size / 256) and r.momentum == 0.9


def test_replication_recipes():
    wrn = RECIPES["aa_repl_wrn"]
    f = [lr_factor(wrn, e * 5, 5) for e in range(60)]
    assert f[:30] == [1.0] * 30 and f[30:] == pytest.approx([0.2] * 30)  # 0.1 * 0.2^floor(epoch / 30)
    assert wrn.nesterov and wrn.epochs == 60
    assert RECIPES["aa_repl_adam"].optimizer == "adam"


def test_paper_registers_models_claims_axes_and_targets():
    p = get_paper("aaconv")
    assert p.notebook == "04_aaconv"
    values = {(c.model, c.dataset, c.setting): c.value for c in p.claims}
    assert values[("wrn28_10", "cifar10", "")] == 89.10 and values[("aa_wrn28_10_last_nre", "cifar10", "")] == 88.19
    assert values[("resnet34", "cifar10", "data_kw={'augment': 'none'}")] == 81.23
    assert {a.parameter for a in p.ablations} >= {"model", "data_kw", "attn_at"}
    assert {t.measure for t in p.targets} == {"step_time", "extra_memory_gib"}
    assert all(t.limit is None and t.batch_size == 128 for t in p.targets)
    for m in p.models:
        assert (m.attn == "aaconv") == m.name.startswith("aa_")
        assert m.recipe in RECIPES


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("relative", [True, False])
def test_fused_path_runs_a_fused_cuda_kernel_without_the_math_fallback(relative):
    """With the relative logits folded into q and k, a flash, memory-efficient or cuDNN
    kernel runs forward and backward under bf16; the math path is disabled and not needed."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    m = AugmentedConv2d(32, 64, 3, min_dk_per_head=20, relative=relative, size=(16, 16)).cuda()
    x = torch.randn(4, 32, 16, 16, device="cuda", requires_grad=True)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            m(x).float().sum().backward()  # raises "No available kernel" if only the math path could run
    assert torch.isfinite(x.grad).all() and (not relative or torch.isfinite(m.rel_w.grad).all())
    with torch.no_grad():
        fused = m.eval()(x)
        m.path = "explicit"
        torch.testing.assert_close(fused, m(x), atol=2e-3, rtol=2e-3)


def test_aaconv_in_resnet20_replaces_the_first_conv_of_stage_3():
    # the leaderboard's AA-Conv entry: ResNet-20 with layer3[0].conv1 (32 -> 64, stride 2,
    # an 8x8 output grid) replaced by the AA block without BatchNorm
    m = create_model("resnet20", attn="aaconv", attn_stages=(3,), attn_kw={"min_dk_per_head": 20, "batchnorm": False})
    m.eval()(torch.zeros(1, 3, 32, 32))  # sizes the relative tables
    conv = m.layer3[0].conv1
    assert isinstance(conv, AugmentedConv2d) and (conv.dk, conv.dv, conv.num_heads) == (64, 8, 8)
    assert not isinstance(m.layer3[1].conv1, AugmentedConv2d) and not isinstance(m.layer2[0].conv1, AugmentedConv2d)
    expected = count("resnet20") + conv3x3_minus_aa(32, 64, 64, 8, (8, 8))
    assert sum(p.numel() for p in m.parameters()) == expected
    every = create_model("resnet20", attn="aaconv", attn_stages=(3,), placement="block")
    assert all(isinstance(b.conv1, AugmentedConv2d) for b in every.layer3)
