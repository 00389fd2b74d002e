"""Pins the definitions of the seed 000 attention blocks (REFERENCE.md section 2)."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from attnlab.layers import create_attn, list_attn
from attnlab.layers.cbam import CBAM, OFFICIAL, SEED000
from attnlab.layers.mha import MultiHeadAttention2d
from attnlab.layers.selfatt import SelfAttention2d, _fused

SHAPES = [(2, 16, 32, 32), (2, 32, 16, 16), (2, 64, 8, 8)]
BLOCKS = ["selfatt", "mha", "cbam"]
SOFTMAX_OPS = {"aten::softmax", "aten::_softmax"}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def nparams(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


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
    out, maps = m(x, return_attention=True)
    assert out.shape == shape
    if name == "cbam":
        assert maps["channel"].shape == (B, C)
        assert maps["spatial"].shape == (B, 1, H, W)
        assert maps["gate"] is None  # default merge is plain
    else:
        heads = 1 if name == "selfatt" else 8
        assert maps["attn"].shape == (B, heads, H * W, H * W)
        assert maps["gate"] is not None and maps["gate"].item() == 0.0


@pytest.mark.parametrize("merge", ["plain", "residual", "weighted"])
@pytest.mark.parametrize("C", [16, 32, 64])
def test_param_counts_attention(C, merge):
    gate = int(merge == "weighted")
    assert nparams(SelfAttention2d(C, merge=merge)) == 3 * (C * C + C) + gate
    assert nparams(MultiHeadAttention2d(C, merge=merge)) == 4 * (C * C + C) + gate


def test_param_counts_cbam():
    seed = [nparams(CBAM(C, reduction=16)) for C in (16, 32, 64)]
    assert seed == [16 + 16 + 99, 64 + 64 + 99, 256 + 256 + 99]
    assert sum(seed) == 969
    assert [nparams(CBAM(C, **SEED000)) for C in (16, 32, 64)] == seed
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
    _, maps = m(torch.randn(2, 32, 8, 8), return_attention=True)
    a = maps["attn"]
    assert (a >= 0).all()
    torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:-1]), atol=1e-5, rtol=0)


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
    explicit, _ = m(x, return_attention=True)
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=0)
    restricted, _ = m(x, return_attention=True, query_index=[0, 3])
    torch.testing.assert_close(fused, restricted, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name,kw", [("selfatt", {}), ("mha", {"num_heads": 4})])
def test_fused_and_explicit_gradients_match(name, kw):
    m = create_attn(name, 16, merge="residual", **kw)
    x = torch.randn(2, 16, 6, 6)
    m(x).square().sum().backward()
    g_fused = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    m(x, return_attention=True)[0].square().sum().backward()
    for gf, p in zip(g_fused, m.parameters()):
        torch.testing.assert_close(gf, p.grad, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", BLOCKS)
def test_weighted_gate_zero_is_identity(name):
    m = create_attn(name, 32, merge="weighted")
    assert m.merge.gate.item() == 0.0
    x = torch.randn(2, 32, 8, 8)
    assert torch.equal(m(x), x)
    out, maps = m(x, return_attention=True)
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


def test_cbam_definition():
    """Mc from one shared MLP over avg and max pools; Ms from conv([max_c; mean_c])."""
    m = CBAM(16, reduction=4)
    x = torch.randn(2, 16, 5, 5)
    out, maps = m(x, return_attention=True)
    mlp = m.channel.mlp
    mc = torch.sigmoid(mlp(x.mean((2, 3))) + mlp(x.amax((2, 3))))
    torch.testing.assert_close(maps["channel"], mc)
    f1 = x * mc[:, :, None, None]
    pooled = torch.stack([f1.amax(1), f1.mean(1)], 1)  # max first, as in the paper
    ms = torch.sigmoid(m.spatial.conv(pooled))
    torch.testing.assert_close(maps["spatial"], ms)
    torch.testing.assert_close(out, f1 * ms)


def test_cbam_spatial_conv_reads_channels_last():
    """The [max; mean] map reaches the 7x7 conv channels-last: its CPU backward is ~3x faster."""
    m = CBAM(16)
    seen = []
    m.spatial.conv.register_forward_hook(
        lambda mod, inp, out: seen.append(inp[0].is_contiguous(memory_format=torch.channels_last)))
    m(torch.randn(2, 16, 8, 8))
    assert seen == [True]


@pytest.mark.parametrize("name", ["selfatt", "mha"])
def test_query_index_restricts_map(name):
    m = create_attn(name, 16)
    heads = 1 if name == "selfatt" else 8
    x = torch.randn(2, 16, 8, 8)
    _, full = m(x, return_attention=True)
    for qi, n in [(5, 1), ([0, 7, 63], 3), (torch.tensor([1, 2]), 2)]:
        _, maps = m(x, return_attention=True, query_index=qi)
        assert maps["attn"].shape == (2, heads, n, 64)
        rows = torch.as_tensor(qi).reshape(-1)
        torch.testing.assert_close(maps["attn"], full["attn"][:, :, rows], atol=1e-6, rtol=0)


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
    out, maps = m(x, return_attention=True)
    torch.testing.assert_close(maps["attn"][0, 0], A)
    torch.testing.assert_close(out[0], (A @ V).T.reshape(C, H, W))
    torch.testing.assert_close(m(x)[0], (A @ V).T.reshape(C, H, W))
    # scale=None is the usual 1/sqrt(C), and it is a different matrix
    m.scale = C**-0.5
    _, maps = m(x, return_attention=True)
    torch.testing.assert_close(maps["attn"][0, 0], _softmax(Q @ K.T / C**0.5))
    assert not torch.allclose(maps["attn"][0, 0], A)
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
    out, maps = m(x, return_attention=True)
    torch.testing.assert_close(maps["attn"][0], torch.stack(maps_ref))
    torch.testing.assert_close(out[0], ref)
    torch.testing.assert_close(m(x)[0], ref)


def test_head_dim_padding_is_exact():
    """The zero-padding used on CUDA for narrow heads (MHA widths 2, 4) changes nothing."""
    q, k, v = (torch.randn(2, 8, 64, 2, requires_grad=True) for _ in range(3))
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=0.7)
    padded = _fused(q, k, v, 0.7, multiple=8)
    assert padded.shape == ref.shape
    torch.testing.assert_close(padded, ref, atol=1e-6, rtol=0)
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
    ops = _op_names(lambda: m(x, return_attention=True))
    assert ops & SOFTMAX_OPS, sorted(ops)
