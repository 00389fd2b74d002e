"""Every registered paper, as data: its models build, run, and match their pinned parameter
counts (each pin is checked against a count written out by hand in that paper's own model
test, e.g. test_models.py); its recipes resolve at every profile; its published numbers
follow the one claims schema; its ablation axes name real options; its maps are of known kinds."""
from __future__ import annotations

import dataclasses
import math
import re

import pytest
import torch

from attnlab import PROFILES, RunConfig, collect_maps, create_model, get_paper, get_recipe, list_papers
from attnlab.hardware import to_memory_format
from attnlab.layers import MAP_KINDS
from attnlab.papers import list_models, model_spec, resolve_model
from attnlab.papers.registry import METRICS, SPLITS

PAPERS = list_papers()
MODELS = [pytest.param(m.name, id=m.name) for pid in PAPERS for m in get_paper(pid).models]
BIG = 10_000_000  # above this many parameters, a no-grad forward only (keeps the test fast)
RUN_FIELDS = {f.name for f in dataclasses.fields(RunConfig)}
#: a claim's model that looks like a model id must be one; free labels read like "Attention-128"
MODEL_ID = re.compile(r"^[a-z0-9_]+$")


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    """Batches of two gain nothing from a second thread, and on a shared 2-core machine two
    spinning OpenMP threads slow these tests many times over; restored afterwards."""
    torch.manual_seed(0)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_the_papers_are_registered():
    assert {"baselines", "cnntention"} <= set(PAPERS)
    assert len(set(list_models())) == len(list_models())  # each model name belongs to one paper


@pytest.mark.parametrize("pid", PAPERS)
def test_paper_header(pid):
    p = get_paper(pid)
    assert p.id == pid and p.title.strip() and p.authors.strip()
    assert isinstance(p.year, int)
    assert p.link == "" or p.link.startswith("https://")
    assert p.models, f"{pid} registers no model"
    for m in p.models:
        assert m.paper == pid and m.label.strip()
        assert model_spec(m.name) is m or model_spec(m.name) == m


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def check_maps(maps: dict, batch: int) -> None:
    """Every emitted map is of a known kind, in that kind's layout (see MAP_KINDS)."""
    ndim = {"attention": 5, "spatial": 4, "mask": 4, "channel": 2}
    for module, kinds in maps.items():
        for kind, value in kinds.items():
            assert kind in MAP_KINDS, (module, kind)
            if kind == "gate":
                assert value.numel() == 1, (module, value.shape)
                continue
            assert value.ndim == ndim[kind] and value.shape[0] == batch, (module, kind, tuple(value.shape))
            assert torch.isfinite(value).all(), (module, kind)
    for module, kinds in maps.items():
        a = kinds.get("attention")
        if a is not None:  # one query row per head, a distribution over the key grid
            assert a.shape[2] == 1, (module, tuple(a.shape))
            torch.testing.assert_close(a.sum((-2, -1)), torch.ones(a.shape[:3]), atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", MODELS)
def test_model_builds_runs_and_matches_its_pin(name):
    spec = model_spec(name)
    model = create_model(name)
    count = n_params(model)
    if spec.params is not None:
        assert count == spec.params, f"{name}: {count} parameters, pinned {spec.params}"
    x = torch.randn(2, 3, 32, 32)
    if count > BIG:
        with torch.no_grad():
            out = model.eval()(x[:1])
        assert out.shape == (1, 10) and torch.isfinite(out).all()
    else:
        out = model.train()(x)
        assert out.shape == (2, 10) and torch.isfinite(out).all()
        torch.nn.functional.cross_entropy(out, torch.tensor([0, 1])).backward()
        no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert not no_grad, f"{name}: parameters outside the graph: {no_grad[:5]}"
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    with torch.no_grad(), collect_maps(model, query=(16, 16)) as maps:
        model(x)
    check_maps(maps, 2)


@pytest.mark.parametrize("name", MODELS)
def test_channels_last_computes_what_nchw_computes(name):
    """fit trains channels-last by default: every block must index by shape, not by the
    memory layout (a ``.view`` over NHWC memory raises, a wrong permute mixes pixels).
    In float64, so that the two layouts' different summation orders cannot hide a real
    difference (in fp32, batch-norm's backward over two images amplifies them to ~1%).
    Dropout is off: its masks are drawn in memory order, so they differ by layout."""
    model = create_model(name).double()
    twin = to_memory_format(create_model(name).double(), "channels_last")
    twin.load_state_dict(model.state_dict())
    big = n_params(model) > BIG
    x = torch.randn(1 if big else 2, 3, 32, 32, dtype=torch.float64)
    outs = []
    for net, inp in ((model, x), (twin, x.contiguous(memory_format=torch.channels_last))):
        net.train(not big)
        for m in net.modules():
            if isinstance(m, torch.nn.modules.dropout._DropoutNd):
                m.eval()
        with torch.set_grad_enabled(not big), collect_maps(net, query=(16, 16)) as maps:
            out = net(inp)
        if not big:
            torch.nn.functional.cross_entropy(out, torch.tensor([0, 1])).backward()
        outs.append((out.detach(), {m: {k: v.detach() for k, v in kinds.items()} for m, kinds in maps.items()}))
    (a, maps_a), (b, maps_b) = outs
    torch.testing.assert_close(b, a, atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(maps_b, maps_a, atol=1e-10, rtol=1e-9)
    if not big:
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        twin_grads = {n: p.grad.contiguous() for n, p in twin.named_parameters() if p.grad is not None}
        torch.testing.assert_close(twin_grads, grads, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("pid", PAPERS)
def test_recipes_resolve_at_every_profile(pid):
    p = get_paper(pid)
    names = {m.recipe for m in p.models} | {r.name for r in p.recipes}
    for name in sorted(names):
        for profile in PROFILES:
            for dataset in ("shapes", "cifar10"):
                r = get_recipe(name, profile, dataset)
                assert r.epochs >= 1 and r.lr > 0, (name, profile, dataset)
    for r in p.recipes:  # what the paper contributes is what the registry serves at "full"
        assert get_recipe(r.name, "full") == r


@pytest.mark.parametrize("pid", PAPERS)
def test_claims_follow_the_schema(pid):
    p = get_paper(pid)
    registered = set(list_models())
    for c in p.claims:
        assert c.metric in METRICS and c.split in SPLITS, c
        assert isinstance(c.value, (int, float)) and math.isfinite(c.value), c
        if c.metric in ("test_error", "test_acc", "test_top5", "val_acc", "precision", "recall", "f1"):
            assert 0 <= c.value <= 100, f"{c}: percentages are in [0, 100]"
        assert c.dataset.strip() and c.source.strip(), c
        assert c.model in registered or not MODEL_ID.match(c.model), \
            f"{pid}: claim model {c.model!r} looks like a model id but is not registered"
    frame = p.claims_frame()
    assert len(frame) == len(p.claims)
    assert list(frame.columns) == ["model", "dataset", "metric", "value", "split", "setting", "protocol",
                                   "source"]


@pytest.mark.parametrize("pid", PAPERS)
def test_ablation_axes_name_real_options(pid):
    for axis in get_paper(pid).ablations:
        assert axis.model in list_models(), axis
        assert len(set(map(repr, axis.values))) == len(axis.values) >= 2, axis
        keys = set()
        for value in axis.values:
            if axis.parameter in RUN_FIELDS:
                config = RunConfig(**{"model": axis.model, axis.parameter: value})  # the axis may be "model"
            else:
                resolve_model(axis.model, **{axis.parameter: value})  # raises on an unknown option
                config = RunConfig(axis.model, model_kw={axis.parameter: value})
            keys.add(config.key)
        assert len(keys) == len(axis.values), f"{axis}: some values give the same run"


def test_the_same_network_gets_the_same_run_key_however_spelled():
    spellings = [{"attn": "cbam"},
                 {"attn": "cbam", "attn_kw": {"reduction": 16}},
                 {"attn": "cbam", "reduction": 16},
                 {"attn": "cbam", "attn_kw": {"reduction": 16, "merge": "plain"}, "kernel_size": 7},
                 {"attn": "cbam", "placement": "stage", "attn_stages": [1, 2, 3]}]
    keys = {RunConfig("resnet20", model_kw=kw).key for kw in spellings}
    assert len(keys) == 1
    different = [{"attn": "cbam", "reduction": 8}, {"attn": "cbam", "attn_kw": {"reduction": 8}},
                 {"attn": "cbam", "merge": "residual"}, {"attn": "se"}, {},
                 {"attn": "cbam", "placement": "block"}]
    other = [RunConfig("resnet20", model_kw=kw).key for kw in different]
    assert keys.isdisjoint(other) and len(set(other[:1] + other[2:])) == len(other) - 1
    assert other[0] == other[1]  # reduction 8, flat or nested


def test_a_papers_own_settings_share_the_run_with_them_spelled_out():
    spec = model_spec("resnet20_cbam")
    assert RunConfig("resnet20_cbam").key == RunConfig("resnet20_cbam", model_kw=dict(spec.attn_kw)).key
    assert RunConfig("resnet20_cbam").key != RunConfig("resnet20_cbam", model_kw={"merge": "plain"}).key
