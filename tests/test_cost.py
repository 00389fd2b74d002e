"""Cost accounting: parameters, FLOPs (attention included), speed, memory, the table."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from attnlab import cost, create_model
from attnlab.cost import (count_flops, count_params, cost_table, flops_by_module, peak_memory,
                          step_seconds, throughput)

STAGES = [(16, 32 * 32), (32, 16 * 16), (64, 8 * 8)]  # (C, HW) after each ResNet-20 stage


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_count_params_matches_he2016():
    assert count_params(create_model("resnet20")) == 269_722


def test_resnet20_flops_are_twice_the_published_macs():
    # He et al.: about 41M multiply-accumulates; torch counts 2 FLOPs per MAC
    flops = count_flops(create_model("resnet20"))
    assert 80e6 < flops < 83e6, flops
    assert count_flops(create_model("resnet20"), (2, 3, 32, 32)) == flops  # per image


@pytest.mark.parametrize("attn", ["selfatt", "mha"])
def test_attention_matmuls_are_counted(attn):
    plain = count_flops(create_model("resnet20"))
    with_attn = count_flops(create_model("resnet20", attn=attn))
    # q k^T and A v: 2 matmuls of HW x HW x C multiply-accumulates, 2 FLOPs each
    matmuls = sum(2 * (2 * hw * hw * c) for c, hw in STAGES)
    projections = sum(2 * hw * c * c for c, hw in STAGES) * (3 if attn == "selfatt" else 4)
    assert with_attn - plain >= matmuls
    assert with_attn - plain == pytest.approx(matmuls + projections, rel=1e-3)


def test_flops_by_module_shows_the_stage1_block_dominates():
    parts = flops_by_module(create_model("resnet20", attn="selfatt"))
    assert parts["attn1"] > parts["attn2"] > parts["attn3"]
    assert parts["attn1"] > parts["layer1"]


def test_count_flops_leaves_the_model_alone():
    model = create_model("resnet20").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    count_flops(model)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


class Counting(nn.Module):
    """Counts its forward passes (over deep copies too, hence a class attribute)."""

    calls = 0

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 10)

    def forward(self, x):
        type(self).calls += 1
        return self.lin(x.mean((2, 3)))


class FakeClock:
    """``perf_counter`` reading 10.0 at the start of the timed steps and 11.5 at the end."""

    def __init__(self):
        self.readings = iter([10.0, 11.5])

    def perf_counter(self):
        return next(self.readings)


@pytest.mark.parametrize("train", [True, False])
def test_step_time_is_timed_steps_over_the_clock(monkeypatch, train):
    Counting.calls = 0
    monkeypatch.setattr(cost, "time", FakeClock())
    seconds = step_seconds(Counting(), 4, (3, 8, 8), device="cpu", precision="fp32", train=train,
                           steps=3, warmup=2)
    assert seconds == pytest.approx(1.5 / 3)  # the warm-up steps are not timed
    assert Counting.calls == 2 + 3
    monkeypatch.setattr(cost, "time", FakeClock())
    assert throughput(Counting(), 4, (3, 8, 8), device="cpu", precision="fp32", train=train,
                      steps=3, warmup=0) == pytest.approx(4 / 0.5)


def test_timing_trains_a_copy_and_leaves_the_model_alone():
    model = create_model("resnet20").eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    throughput(model, 4, device="cpu", precision="fp32", train=True, steps=1, warmup=1)
    throughput(model, 4, device="cpu", precision="fp32", train=False, steps=1, warmup=1)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.training and all(p.grad is None for p in model.parameters())


def test_peak_memory_grows_with_the_batch():
    model = create_model("resnet20")
    small = peak_memory(model, 4, device="cpu", precision="fp32")
    big = peak_memory(model, 64, device="cpu", precision="fp32")
    if small < 0:
        pytest.skip("peak memory is not measurable on this platform")
    assert big > 4 * small and big - small > 16 * 2**20, (small, big)


def test_cost_table_columns_fast():
    frame = cost_table(["resnet20", "se_resnet20"], speed=False, memory=False)
    assert list(frame.columns) == ["model", "params", "MFLOPs"]
    assert frame["params"].tolist()[0] == 269_722


def test_cost_table_with_speed_and_memory():
    models = {"resnet20": create_model("resnet20"), "cbam": create_model("resnet20", attn="cbam")}
    frame = cost_table(models, batch_size=2, device="cpu", precision="fp32", steps=1)
    assert list(frame.columns) == ["model", "params", "MFLOPs", "train img/s", "infer img/s",
                                   "train step ms", "peak MiB (train)", "x resnet20"]
    assert frame["params"].tolist() == [269_722, 269_722 + 969]  # CBAM r=16 adds 969
    assert frame["MFLOPs"].iloc[1] > frame["MFLOPs"].iloc[0]
    ms = frame["train step ms"]
    assert frame["x resnet20"].tolist() == pytest.approx((ms / ms.iloc[0]).tolist())
    assert frame["train img/s"].tolist() == pytest.approx((2 * 1000 / ms).tolist())  # batch 2
    assert frame.attrs["device"] == "cpu" and frame.attrs["precision"] == "fp32"
