"""Pins the definitions of CNNtention's attention blocks (SelfAtt, MHA, CBAM) and the
shared scaled-dot-product core they use."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from attnlab.layers import collect_maps, create_attn, list_attn
from attnlab.layers.cbam import CBAM, CNNTENTION, OFFICIAL
from attnlab.layers.mha import MultiHeadAttention2d
from attnlab.layers.sdpa import attend, attention_weights, explicit_attention, fused_attention
from attnlab.layers.selfatt import SelfAttention2d

SHAPES = [(2, 16, 32, 32), (2, 32, 16, 16), (2, 64, 8, 8)]
BLOCKS = ["selfatt", "mha", "cbam"]
SOFTMAX_OPS = {"aten::softmax", "aten::_softmax"}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def nparams(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def block_maps(m: torch.nn.Module, x: torch.Tensor, query=None) -> tuple[torch.Tensor, dict]:
    """The block's output and its own maps (a block alone is collected under the name "")."""
    with collect_maps(m, query=query) as maps:
        out = m(x)
    return out, maps.get("", {})


def test_registered():
    assert set(BLOCKS) <= set(list_attn())
    assert isinstance(create_attn("selfatt", 16), SelfAttention2d)
    assert isinstance(create_attn("mha", 16), MultiHeadAttention2d)
    assert isinstance(create_attn("cbam", 16), CBAM)


@pytest.mark.parametrize("name", BLOCKS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"C{s[1]}")
def test_shapes_and_maps(name, shape):
    B, C, H, W = shape
    m = create_attn(name, C)
    x = torch.randn(shape)
    assert m(x).shape == shape
    out, maps = block_maps(m, x)
    assert out.shape == shape
    if name == "cbam":
        assert maps["channel"].shape == (B, C)
        assert maps["spatial"].shape == (B, 1, H, W)
        assert "gate" not in maps  # the default merge is plain: no gate
    else:
        heads = 1 if name == "selfatt" else 8
        assert maps["attention"].shape == (B, heads, H * W, H, W)  # every query row
        assert maps["gate"].item() == 0.0


def test_maps_are_collected_only_inside_the_context():
    m = create_attn("selfatt", 16)
    x = torch.randn(1, 16, 4, 4)
    with collect_maps(m) as maps:
        pass
    m(x)
    assert maps == {} and not m.collecting


@pytest.mark.parametrize("merge", ["plain", "residual", "weighted"])
@pytest.mark.parametrize("C", [16, 32, 64])
def test_param_counts_attention(C, merge):
    gate = int(merge == "weighted")
    assert nparams(SelfAttention2d(C, merge=merge)) == 3 * (C * C + C) + gate
    assert nparams(MultiHeadAttention2d(C, merge=merge)) == 4 * (C * C + C) + gate


def test_param_counts_cbam():
    ours = [nparams(CBAM(C, reduction=16)) for C in (16, 32, 64)]
    assert ours == [16 + 16 + 99, 64 + 64 + 99, 256 + 256 + 99]
    assert sum(ours) == 969
    assert [nparams(CBAM(C, **CNNTENTION)) for C in (16, 32, 64)] == ours
    # official: MLP biases (hidden + C), conv without bias (98) + BN affine (2)
    official = [nparams(CBAM(C, mlp_bias=True, spatial_bn=True)) for C in (16, 32, 64)]
    assert official == [16 + 1 + 16 + 16 + 100, 64 + 2 + 64 + 32 + 100, 256 + 4 + 256 + 64 + 100]
    assert sum(official) == 1091
    assert [nparams(CBAM.official(C)) for C in (16, 32, 64)] == official
    assert [nparams(CBAM(C, **OFFICIAL)) for C in (16, 32, 64)] == official
    m = CBAM(16, spatial_bn=True)
    assert m.spatial.conv.bias is None and m.spatial.bn is not None
    assert CBAM(16).spatial.conv.bias is not None and CBAM(16).spatial.bn is None
    assert CBAM(16, merge="weighted").merge.gate is not None


@pytest.mark.parametrize("name", ["selfatt", "mha"])
def test_softmax_rows_sum_to_one(name):
    m = create_attn(name, 32)
    _, maps = block_maps(m, torch.randn(2, 32, 8, 8))
    a = maps["attention"]  # B, heads, Q, h, w: each row a distribution over the key grid
    assert (a >= 0).all()
    torch.testing.assert_close(a.sum((-2, -1)), torch.ones(a.shape[:3]), atol=1e-5, rtol=0)


CASES = [
    ("selfatt", {}),
    ("selfatt", {"scale": None}),
    ("selfatt", {"merge": "plain"}),
    ("mha", {}),
    ("mha", {"merge": "plain"}),
    ("cbam", {}),
    ("cbam", dict(OFFICIAL)),
]


@pytest.mark.parametrize("name,kw", CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"C{s[1]}")
def test_fused_equals_explicit(name, kw, shape):
    m = create_attn(name, shape[1], **kw)
    if m.merge.gate is not None:
        with torch.no_grad():
            m.merge.gate.fill_(0.7)  # otherwise the comparison would only see x
    x = torch.randn(shape)
    fused = m(x)
    with explicit_attention():
        explicit = m(x)
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=0)
    collected, _ = block_maps(m, x)  # the whole matrix built once and reused for the output
    torch.testing.assert_close(fused, collected, atol=1e-5, rtol=0)
    restricted, _ = block_maps(m, x, query=(0, 3))  # one row built; output still fused
    torch.testing.assert_close(fused, restricted, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name,kw", [("selfatt", {}), ("mha", {"num_heads": 4})])
def test_fused_and_explicit_gradients_match(name, kw):
    m = create_attn(name, 16, merge="residual", **kw)
    x = torch.randn(2, 16, 6, 6)
    m(x).square().sum().backward()
    g_fused = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    with explicit_attention():
        m(x).square().sum().backward()
    for gf, p in zip(g_fused, m.parameters()):
        torch.testing.assert_close(gf, p.grad, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", BLOCKS)
def test_weighted_gate_zero_is_identity(name):
    m = create_attn(name, 32, merge="weighted")
    assert m.merge.gate.item() == 0.0
    x = torch.randn(2, 32, 8, 8)
    assert torch.equal(m(x), x)
    out, maps = block_maps(m, x)
    assert torch.equal(out, x)
    assert maps["gate"].item() == 0.0


@pytest.mark.parametrize("name", BLOCKS)
def test_plain_differs_from_input(name):
    m = create_attn(name, 32, merge="plain")
    x = torch.randn(2, 32, 8, 8)
    assert not torch.allclose(m(x), x, atol=1e-3)


@pytest.mark.parametrize("name", BLOCKS)
def test_unknown_merge_raises(name):
    with pytest.raises(ValueError, match="merge"):
        create_attn(name, 16, merge="gated")


def test_heads_must_divide_channels():
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention2d(12, num_heads=8)
    with pytest.raises(ValueError, match="divisible"):
        create_attn("mha", 16, num_heads=3)
    assert MultiHeadAttention2d(16).head_dim == 2


def test_cbam_zero_hidden_warns_and_keeps_one_unit():
    with pytest.warns(UserWarning, match="CBAM-32"):
        m = CBAM(16, reduction=32)
    assert m.channel.hidden == 1
    assert m.channel.mlp[0].out_features == 1
    assert m(torch.randn(2, 16, 8, 8)).shape == (2, 16, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert CBAM(16, reduction=16).channel.hidden == 1
        assert CBAM(32, reduction=32).channel.hidden == 1


@pytest.mark.parametrize("merge", ["plain", "residual"])
def test_cbam_definition(merge):
    """Mc from one shared MLP over avg and max pools; Ms from conv([max_c; mean_c]);
    CNNtention's block adds its input back (residual), the CBAM paper's does not (plain)."""
    m = CBAM(16, reduction=4, merge=merge)
    x = torch.randn(2, 16, 5, 5)
    out, maps = block_maps(m, x)
    mlp = m.channel.mlp
    mc = torch.sigmoid(mlp(x.mean((2, 3))) + mlp(x.amax((2, 3))))
    torch.testing.assert_close(maps["channel"], mc)
    f1 = x * mc[:, :, None, None]
    pooled = torch.stack([f1.amax(1), f1.mean(1)], 1)  # max first, as in the paper
    ms = torch.sigmoid(m.spatial.conv(pooled))
    torch.testing.assert_close(maps["spatial"], ms)
    torch.testing.assert_close(out, f1 * ms + (x if merge == "residual" else 0))


def test_cbam_spatial_conv_reads_channels_last():
    """The [max; mean] map reaches the 7x7 conv channels-last: its CPU backward is ~3x faster."""
    m = CBAM(16)
    seen = []
    m.spatial.conv.register_forward_hook(
        lambda mod, inp, out: seen.append(inp[0].is_contiguous(memory_format=torch.channels_last)))
    m(torch.randn(2, 16, 8, 8))
    assert seen == [True]


@pytest.mark.parametrize("name", ["selfatt", "mha"])
def test_query_builds_only_its_row(name):
    m = create_attn(name, 16)
    heads = 1 if name == "selfatt" else 8
    x = torch.randn(2, 16, 8, 8)
    _, full = block_maps(m, x)
    for row, col in [(0, 0), (0, 5), (7, 7), (3, 6)]:
        _, maps = block_maps(m, x, query=(row, col))
        assert maps["attention"].shape == (2, heads, 1, 8, 8)
        torch.testing.assert_close(maps["attention"][:, :, 0], full["attention"][:, :, row * 8 + col],
                                   atol=1e-6, rtol=0)


def test_attend_rows_are_rows_of_the_full_matrix():
    q, k, v = (torch.randn(2, 4, 64, 8) for _ in range(3))
    full = attention_weights(q, k, 0.3)
    torch.testing.assert_close(full.sum(-1), torch.ones(2, 4, 64), atol=1e-5, rtol=0)
    rows = torch.tensor([0, 7, 63])
    out, some = attend(q, k, v, 0.3, rows=rows, need_weights=True)
    torch.testing.assert_close(some, full[:, :, rows], atol=1e-6, rtol=0)
    torch.testing.assert_close(out, full @ v, atol=1e-5, rtol=0)
    out, none = attend(q, k, v, 0.3)
    assert none is None
    torch.testing.assert_close(out, full @ v, atol=1e-5, rtol=0)


def _conv1x1(conv: torch.nn.Conv2d, X: torch.Tensor) -> torch.Tensor:
    """(C_in, N) tokens -> (N, C_out), written out from the conv's weights."""
    return (conv.weight[:, :, 0, 0] @ X).T + conv.bias


def _softmax(z: torch.Tensor) -> torch.Tensor:
    e = torch.exp(z - z.max(-1, keepdim=True).values)
    return e / e.sum(-1, keepdim=True)


@torch.no_grad()
def test_selfatt_matches_hand_written_unscaled_softmax():
    C, H, W = 3, 2, 3
    m = SelfAttention2d(C, merge="plain").double()
    assert m.scale == 1.0
    x = torch.randn(1, C, H, W, dtype=torch.float64)
    X = x[0].reshape(C, H * W)
    Q, K, V = (_conv1x1(c, X) for c in (m.query, m.key, m.value))  # N, C each
    A = _softmax(Q @ K.T)  # unscaled: no 1/sqrt(C)
    out, maps = block_maps(m, x)
    torch.testing.assert_close(maps["attention"][0, 0].reshape(H * W, H * W), A)
    torch.testing.assert_close(out[0], (A @ V).T.reshape(C, H, W))
    torch.testing.assert_close(m(x)[0], (A @ V).T.reshape(C, H, W))
    # scale=None is the usual 1/sqrt(C), and it is a different matrix
    m.scale = C**-0.5
    _, maps = block_maps(m, x)
    scaled = maps["attention"][0, 0].reshape(H * W, H * W)
    torch.testing.assert_close(scaled, _softmax(Q @ K.T / C**0.5))
    assert not torch.allclose(scaled, A)
    assert SelfAttention2d(16, scale=None).scale == 0.25


@torch.no_grad()
def test_mha_matches_hand_written_heads():
    C, heads, H, W = 8, 4, 3, 2
    d = C // heads
    m = MultiHeadAttention2d(C, num_heads=heads, merge="plain").double()
    x = torch.randn(1, C, H, W, dtype=torch.float64)
    X = x[0].reshape(C, H * W)
    Q, K, V = (_conv1x1(c, X) for c in (m.query, m.key, m.value))  # N, C each
    heads_out, maps_ref = [], []
    for h in range(heads):  # head h owns the contiguous channels [h*d, (h+1)*d)
        s = slice(h * d, (h + 1) * d)
        A = _softmax(Q[:, s] @ K[:, s].T / d**0.5)
        maps_ref.append(A)
        heads_out.append(A @ V[:, s])
    concat = torch.cat(heads_out, 1).T  # C, N
    ref = _conv1x1(m.proj, concat).T.reshape(C, H, W)
    out, maps = block_maps(m, x)
    torch.testing.assert_close(maps["attention"][0].reshape(heads, H * W, H * W), torch.stack(maps_ref))
    torch.testing.assert_close(out[0], ref)
    torch.testing.assert_close(m(x)[0], ref)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="head padding is applied on CUDA only")
def test_head_dim_padding_is_exact_on_cuda():
    """The zero-padding of narrow heads (MHA widths 2, 4) to a multiple of 8 changes nothing."""
    q, k, v = (torch.randn(2, 8, 64, 2, device="cuda", requires_grad=True) for _ in range(3))
    padded = fused_attention(q, k, v, 0.7)
    ref = attention_weights(q, k, 0.7) @ v
    assert padded.shape == ref.shape
    torch.testing.assert_close(padded, ref, atol=1e-5, rtol=0)
    padded.sum().backward()
    assert q.grad.shape == q.shape


def _op_names(fn) -> set[str]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {e.name for e in prof.events()}


@pytest.mark.parametrize("name", ["selfatt", "mha"])
def test_training_path_uses_fused_kernel(name):
    m = create_attn(name, 16).train()
    x = torch.randn(2, 16, 16, 16, requires_grad=True)
    ops = _op_names(lambda: m(x))
    assert not ops & SOFTMAX_OPS, sorted(ops)
    assert any("scaled_dot_product" in o for o in ops), sorted(ops)
    # the CPU fused kernel, not the math fallback (which would call softmax anyway)
    assert not any("attention_math" in o for o in ops), sorted(ops)
    ops = _op_names(lambda: block_maps(m, x))
    assert ops & SOFTMAX_OPS, sorted(ops)
    with explicit_attention():
        ops = _op_names(lambda: m(x))
    assert ops & SOFTMAX_OPS and not any("scaled_dot_product" in o for o in ops), sorted(ops)
