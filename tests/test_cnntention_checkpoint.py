"""CNNtention's ``init="fan_out"`` and the import of the authors' released checkpoints.

The checkpoints here are built by hand in the authors' layout (their module names and
shapes, random values), never downloaded; the expected logits come from a forward pass
written below in their convention (MHA: softmax(K^T Q) over the last axis), independent
of the package's blocks.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from attnlab import create_model, get_paper
from attnlab.papers import model_options
from attnlab.papers.cnntention import CHECKPOINT_NORMALISATION, load_authors_checkpoint

WIDTHS = (16, 32, 64)


# -- init ----------------------------------------------------------------------------------

def _fans(w: torch.Tensor) -> tuple[int, int]:
    receptive = w[0, 0].numel()
    return w.shape[1] * receptive, w.shape[0] * receptive


@pytest.mark.parametrize("init", ["fan_in", "fan_out"])
def test_kaiming_init_matches_its_fan(init):
    torch.manual_seed(0)
    sd = create_model("resnet20_selfatt", init=init).state_dict()
    # layers whose fan_in and fan_out differ, so the two modes are told apart
    for key in ("layer2.0.conv1.weight", "layer3.0.conv1.weight", "linear.weight"):
        w = sd[key]
        fan_in, fan_out = _fans(w)
        own, other = (fan_in, fan_out) if init == "fan_in" else (fan_out, fan_in)
        tol = 6 / math.sqrt(2 * w.numel())  # six standard errors of a sample std
        ratio = w.std().item() / math.sqrt(2 / own)
        assert abs(ratio - 1) < tol, (key, init, ratio)
        assert abs(w.std().item() / math.sqrt(2 / other) - 1) > tol, (key, "modes not distinguishable")


def test_init_is_a_named_option_of_every_cnntention_model():
    for spec in get_paper("cnntention").models:
        assert model_options(spec.name)["init"] == "fan_in"
        model = create_model(spec.name, init="fan_out")
        w = model.layer3[0].conv1.weight
        assert abs(w.std().item() / math.sqrt(2 / (64 * 9)) - 1) < 0.05
    with pytest.raises(ValueError, match="fan_out"):
        create_model("resnet20_selfatt", init="xavier")


# -- their layout, built by hand -------------------------------------------------------------

def _bn(sd, prefix, c, g):
    sd[f"{prefix}.weight"] = 1 + 0.1 * torch.randn(c, generator=g)
    sd[f"{prefix}.bias"] = 0.1 * torch.randn(c, generator=g)
    sd[f"{prefix}.running_mean"] = 0.1 * torch.randn(c, generator=g)
    sd[f"{prefix}.running_var"] = 0.5 + torch.rand(c, generator=g)
    sd[f"{prefix}.num_batches_tracked"] = torch.tensor(100)


def _conv(sd, key, shape, g, bias=False):
    fan_in = shape[1] * shape[2] * shape[3]
    sd[f"{key}.weight"] = torch.randn(*shape, generator=g) * math.sqrt(2 / fan_in)
    if bias:
        sd[f"{key}.bias"] = 0.1 * torch.randn(shape[0], generator=g)


def their_state_dict(kind=None, *, reduction=16, weighted=True, in_channels=3, blocks=3, seed=0):
    """A ResNet-(6*blocks+2) in the CNNtention authors' names: ``fc``, ``att1..3``."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    _conv(sd, "conv1", (16, in_channels, 3, 3), g)
    _bn(sd, "bn1", 16, g)
    c_in = 16
    for i, w in enumerate(WIDTHS, start=1):
        for j in range(blocks):
            _conv(sd, f"layer{i}.{j}.conv1", (w, c_in, 3, 3), g)
            _bn(sd, f"layer{i}.{j}.bn1", w, g)
            _conv(sd, f"layer{i}.{j}.conv2", (w, w, 3, 3), g)
            _bn(sd, f"layer{i}.{j}.bn2", w, g)
            c_in = w
        a = f"att{i}"
        if kind in ("selfatt", "mha"):
            for name in ("query", "key", "val" if kind == "mha" else "value") + (("linear",) if kind == "mha" else ()):
                _conv(sd, f"{a}.{name}", (w, w, 1, 1), g, bias=True)
            if weighted:
                sd[f"{a}.weights"] = torch.tensor([(0.6, -0.8, 1.3)[i - 1]])
        elif kind == "cbam":
            hidden = w // reduction  # 0 when r > C, as in their code
            sd[f"{a}.channel_attention.mlp.0.weight"] = torch.randn(hidden, w, generator=g) / math.sqrt(w)
            sd[f"{a}.channel_attention.mlp.2.weight"] = torch.randn(w, hidden, generator=g) / math.sqrt(max(hidden, 1))
            _conv(sd, f"{a}.spatial_attention.conv", (1, 2, 7, 7), g, bias=True)
    sd["fc.weight"] = 0.1 * torch.randn(10, 64, generator=g)
    sd["fc.bias"] = 0.1 * torch.randn(10, generator=g)
    return sd


# -- their forward, written from their code's formulas ----------------------------------------

def _c(sd, key, x, **kw):
    return F.conv2d(x, sd[f"{key}.weight"], sd.get(f"{key}.bias"), **kw)


def _bn_eval(sd, key, x):
    return F.batch_norm(x, sd[f"{key}.running_mean"], sd[f"{key}.running_var"],
                        sd[f"{key}.weight"], sd[f"{key}.bias"], training=False)


def _basic_block(sd, key, x, stride, planes):
    out = F.relu(_bn_eval(sd, f"{key}.bn1", _c(sd, f"{key}.conv1", x, stride=stride, padding=1)))
    out = _bn_eval(sd, f"{key}.bn2", _c(sd, f"{key}.conv2", out, padding=1))
    if stride != 1 or x.shape[1] != planes:  # option A: subsample, zero-pad channels
        p = planes // 4
        x = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, p, p))
    return F.relu(out + x)


def their_mha(sd, a, x, heads=8):
    n, c, h, w = x.shape
    d = c // heads
    q = _c(sd, f"{a}.query", x).reshape(n, heads, d, h * w)
    k = _c(sd, f"{a}.key", x).reshape(n, heads, d, h * w)
    v = _c(sd, f"{a}.val", x).reshape(n, heads, d, h * w)
    att = torch.softmax((k.transpose(-2, -1) @ q) * d ** -0.5, dim=-1)  # rows: their key
    out = (att @ v.transpose(-2, -1)).transpose(-2, -1).reshape(n, c, h, w)
    return sd[f"{a}.weights"] * _c(sd, f"{a}.linear", out) + x


def their_selfatt(sd, a, x):
    n, c, h, w = x.shape
    q = _c(sd, f"{a}.query", x).reshape(n, c, h * w).transpose(1, 2)
    k = _c(sd, f"{a}.key", x).reshape(n, c, h * w)
    v = _c(sd, f"{a}.value", x).reshape(n, c, h * w)
    att = torch.softmax(q @ k, dim=-1)  # unscaled
    out = (v @ att.transpose(1, 2)).reshape(n, c, h, w)
    return sd[f"{a}.weights"] * out + x if f"{a}.weights" in sd else out + x


def their_cbam(sd, a, x):
    w0, w2 = sd[f"{a}.channel_attention.mlp.0.weight"], sd[f"{a}.channel_attention.mlp.2.weight"]

    def mlp(t):
        return F.linear(F.relu(F.linear(t, w0)), w2)

    mc = torch.sigmoid(mlp(x.amax((2, 3))) + mlp(x.mean((2, 3))))
    f1 = x * mc[:, :, None, None]
    pooled = torch.cat([f1.amax(1, keepdim=True), f1.mean(1, keepdim=True)], 1)
    ms = torch.sigmoid(_c(sd, f"{a}.spatial_attention.conv", pooled, padding=3))
    return f1 * ms + x


BLOCKS = {"mha": their_mha, "selfatt": their_selfatt, "cbam": their_cbam, None: lambda sd, a, x: x}


def their_logits(sd, x, kind, blocks=3, head="fc"):
    sd, x = _double(sd), x.double()
    out = F.relu(_bn_eval(sd, "bn1", _c(sd, "conv1", x, padding=1)))
    for i, w in enumerate(WIDTHS, start=1):
        for j in range(blocks):
            out = _basic_block(sd, f"layer{i}.{j}", out, 2 if (j == 0 and i > 1) else 1, w)
        out = BLOCKS[kind](sd, f"att{i}", out)
    return F.linear(out.mean((2, 3)), sd[f"{head}.weight"], sd[f"{head}.bias"])


@pytest.fixture
def x():
    return torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))  # 16x16 keeps the attention cheap


def _logits(ck, x):
    # float64 on both sides: unscaled self-attention logits are large, and in float32 the
    # fused kernel and the reference round differently enough to hide nothing but noise
    with torch.no_grad():
        return ck.model.double()(x.double())


def _double(sd):
    return {k: (v.double() if v.is_floating_point() else v) for k, v in sd.items()}


# -- import ------------------------------------------------------------------------------------

def test_mha_import_swaps_query_and_key(x):
    sd = their_state_dict("mha")
    ck = load_authors_checkpoint(sd, verbose=False)
    assert ck.name == "resnet20_mha"
    expected = their_logits(sd, x, "mha")
    torch.testing.assert_close(_logits(ck, x), expected, rtol=1e-9, atol=1e-9)
    # the attention matters at these weights, so a wrong mapping could not pass unnoticed
    no_attention = {k: (torch.zeros_like(v) if k.endswith(".weights") else v) for k, v in sd.items()}
    assert (their_logits(no_attention, x, "mha") - expected).abs().max() > 1e-2
    # their "query" conv plays the key: loading it unswapped gives other logits
    swapped = dict(sd)
    for i in (1, 2, 3):
        for p in ("weight", "bias"):
            swapped[f"att{i}.query.{p}"], swapped[f"att{i}.key.{p}"] = sd[f"att{i}.key.{p}"], sd[f"att{i}.query.{p}"]
    wrong = load_authors_checkpoint(swapped, verbose=False)
    assert (_logits(wrong, x) - expected).abs().max() > 1e-3
    assert ck.renamed["att1.query.weight"] == "attn1.key.weight"
    assert ck.renamed["att2.key.bias"] == "attn2.query.bias"
    assert ck.renamed["att3.val.weight"] == "attn3.value.weight"
    assert ck.renamed["att1.linear.bias"] == "attn1.proj.bias"
    assert ck.renamed["fc.weight"] == "linear.weight"
    assert ck.model.attn2.merge.gate.item() == pytest.approx(-0.8)


@pytest.mark.parametrize("weighted, merge", [(True, "weighted"), (False, "residual")])
def test_selfatt_import_keeps_query_and_key(x, weighted, merge):
    sd = their_state_dict("selfatt", weighted=weighted)
    ck = load_authors_checkpoint(sd, verbose=False)
    assert ck.name == "resnet20_selfatt"
    assert ck.model.attn1.merge.merge == merge
    torch.testing.assert_close(_logits(ck, x), their_logits(sd, x, "selfatt"), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("reduction", [16, 32])
def test_cbam_import_reads_the_reduction_and_ends_with_a_residual(x, reduction):
    sd = their_state_dict("cbam", reduction=reduction)
    if reduction == 32:
        assert sd["att1.channel_attention.mlp.0.weight"].shape == (0, 16)  # their C // r = 0
        with pytest.warns(UserWarning, match="hidden units"):
            ck = load_authors_checkpoint(sd, verbose=False)
    else:
        ck = load_authors_checkpoint(sd, verbose=False)
    assert ck.name == "resnet20_cbam" and ck.model_kw["reduction"] == reduction
    assert ck.model.attn1.merge.merge == "residual"
    torch.testing.assert_close(_logits(ck, x), their_logits(sd, x, "cbam"), rtol=1e-9, atol=1e-9)


def test_plain_resnet_in_both_layouts(x):
    sd = their_state_dict(None)
    ck = load_authors_checkpoint(sd, verbose=False)
    assert ck.name == "resnet20" and ck.layout == "cnntention"
    torch.testing.assert_close(_logits(ck, x), their_logits(sd, x, None), rtol=1e-9, atol=1e-9)
    # akamaster's files: {"state_dict": {"module.<our names>": ...}}, ResNet-32 here
    ours = {("linear." + k[3:] if k.startswith("fc.") else k): v for k, v in their_state_dict(None, blocks=5).items()}
    ak = load_authors_checkpoint({"state_dict": {f"module.{k}": v for k, v in ours.items()}, "best_prec1": 92.0},
                                 verbose=False)
    assert ak.layout == "akamaster" and ak.model_kw["depth"] == 32
    torch.testing.assert_close(_logits(ak, x), their_logits(ours, x, None, blocks=5, head="linear"),
                               rtol=1e-9, atol=1e-9)
    assert ak.mean == (0.485, 0.456, 0.406) and ak.std == (0.229, 0.224, 0.225)


def test_normalisation_is_stated_and_returned(capsys, tmp_path):
    path = tmp_path / "params.pth"
    torch.save(their_state_dict("selfatt"), path)
    ck = load_authors_checkpoint(path)
    out = capsys.readouterr().out
    assert "mean (0.4919, 0.4919, 0.4919)" in out and "std (0.2470, 0.2470, 0.2470)" in out
    assert ck.mean == CHECKPOINT_NORMALISATION["cnntention"]["mean"]
    assert all(abs(m - 0.4919) < 1e-4 for m in ck.mean) and all(abs(s - 0.2470) < 1e-4 for s in ck.std)
    grey = load_authors_checkpoint(their_state_dict(None, in_channels=1), verbose=False)
    assert grey.model_kw["in_channels"] == 1 and len(grey.mean) == len(grey.std) == 1


def test_loader_with_a_checkpoints_normalisation(tiny_data):
    ck = load_authors_checkpoint(their_state_dict(None), verbose=False)
    xb, _ = next(iter(tiny_data.loader("test", 8, mean=ck.mean, std=ck.std)))
    raw = tiny_data.test.images[:8].float() / 255
    expected = (raw - torch.tensor(ck.mean).view(1, 3, 1, 1)) / torch.tensor(ck.std).view(1, 3, 1, 1)
    torch.testing.assert_close(xb, expected, rtol=1e-5, atol=1e-5)
    default, _ = next(iter(tiny_data.loader("test", 8)))
    assert (default - xb).abs().max() > 1e-2  # the training-set statistics differ
    with pytest.raises(ValueError, match="one per channel"):
        tiny_data.loader("test", 8, mean=(0.5,), std=(0.2,))


def test_keys_that_do_not_fit_are_named():
    sd = their_state_dict("mha")
    with pytest.raises(ValueError, match=r"unknown att\.weights"):
        load_authors_checkpoint({**sd, "att.weights": torch.zeros(1)}, verbose=False)
    partial = {k: v for k, v in sd.items() if k != "att2.val.bias"}
    with pytest.raises(ValueError, match=r"missing att2\.val\.bias \(ours attn2\.value\.bias\)"):
        load_authors_checkpoint(partial, verbose=False)
    with pytest.raises(ValueError, match=r"fc\.weight \(10, 32\)"):
        load_authors_checkpoint({**sd, "fc.weight": torch.zeros(10, 32)}, verbose=False)
    with pytest.raises(ValueError, match="neither 'fc.weight'"):
        load_authors_checkpoint({"weight": torch.zeros(1)}, verbose=False)
    # a model given by the caller must fit as well
    with pytest.raises(ValueError, match=r"unknown .*att1\.query\.weight"):
        load_authors_checkpoint(sd, create_model("resnet20"), verbose=False)


def test_evaluate_checkpoint_uses_the_stated_normalisation(tmp_path):
    from attnlab import load_data, study

    path = tmp_path / "params.pth"
    sd = their_state_dict(None)
    torch.save(sd, path)
    got = study.evaluate_checkpoint(path, "shapes", eval_subset=32, device="cpu")
    test = load_data("shapes", eval_subset=32).test
    mean = torch.tensor(CHECKPOINT_NORMALISATION["cnntention"]["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(CHECKPOINT_NORMALISATION["cnntention"]["std"]).view(1, 3, 1, 1)
    expected = their_logits(sd, (test.images.float() / 255 - mean) / std, None).argmax(1)
    assert got["n_test"] == len(test) == 32
    assert got["test_acc"] == pytest.approx(float((expected == test.labels).float().mean()))
    assert got["mean"] == pytest.approx(list(CHECKPOINT_NORMALISATION["cnntention"]["mean"]))
    assert got["model"] == "resnet20" and got["dataset"] == "shapes" and 0 <= got["test_acc_dataset_stats"] <= 1
    with pytest.raises(ValueError, match="1-channel images but 'shapes' has 3"):
        study.evaluate_checkpoint(their_state_dict(None, in_channels=1), "shapes", eval_subset=8)
