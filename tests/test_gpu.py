"""The CUDA path: ``pytest -m gpu`` (``make gpu-check`` runs these on a GPU machine).

Marked ``gpu`` and skipped without a CUDA device: the on-device loader, one bf16 ``fit``
step per model family (one model per backbone and per attention block), an fp16 step
through the GradScaler, the fused attention kernels with head widths padded to 8 (no
math fallback), and CUDA peak-memory accounting. The unmarked tests at the end check,
on any machine, that the GPU tests skip cleanly and that ``gpu-check`` stops at once
without CUDA and imports nothing the bare GPU Python lacks.
"""
from __future__ import annotations

import gc
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from attnlab import cost, create_model, fit, list_models
from attnlab.layers import create_attn
from attnlab.layers.sdpa import attend, attention_weights, explicit_attention
from attnlab.papers import model_spec
from attnlab.recipes import get_recipe

ROOT = Path(__file__).resolve().parent.parent
HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")

FUSED_OPS = ("aten::_scaled_dot_product_flash_attention", "aten::_scaled_dot_product_efficient_attention",
             "aten::_scaled_dot_product_cudnn_attention")
MATH_OP = "aten::_scaled_dot_product_attention_math"


def model_families() -> list[str]:
    """The first registered model of each backbone and of each attention block."""
    seen, out = set(), []
    for name in list_models():
        spec = model_spec(name)
        for family in (("backbone", spec.backbone), ("attn", spec.attn)):
            if family[1] is not None and family not in seen:
                seen.add(family)
                if name not in out:
                    out.append(name)
    return out


# -- the loader on the device ---------------------------------------------------------------

@pytest.mark.gpu
@needs_cuda
def test_device_loader_on_cuda_matches_cpu(tiny_data):
    cuda = tiny_data.loader("train", 64, device="cuda", seed=3)
    cpu = tiny_data.loader("train", 64, device="cpu", seed=3)
    assert cuda.images.is_cuda  # the whole split lives on the GPU
    n = 0
    for (xc, yc), (xg, yg) in zip(cpu, cuda):
        assert xg.is_cuda and yg.is_cuda and xg.dtype == torch.float32
        # crops, flips and order come from the CPU generator: the same batches on both
        torch.testing.assert_close(xg.cpu(), xc, rtol=1e-5, atol=1e-5)
        assert torch.equal(yg.cpu(), yc)
        n += len(yg)
    assert n == len(tiny_data.train)


# -- one training step per model family ----------------------------------------------------------

@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("name", model_families())
def test_one_bf16_fit_step(tiny_data, name):
    model = create_model(name, num_classes=tiny_data.num_classes, in_channels=tiny_data.in_channels)
    before = [p.detach().clone() for p in model.parameters()]
    recipe = get_recipe(model_spec(name).recipe, "smoke", "shapes", epochs=1, max_steps_per_epoch=1, batch_size=32)
    h = fit(model, tiny_data, recipe, device="cuda", precision="bf16", progress=False, live=False)
    assert h.device.startswith("cuda") and h.precision == "bf16"
    assert all(p.is_cuda for p in model.parameters())
    assert math.isfinite(h.rows[0]["train_loss"]) and 0 <= h.test["acc"] <= 1
    assert any(not torch.equal(b, p.detach().cpu()) for b, p in zip(before, model.parameters()))


@pytest.mark.gpu
@needs_cuda
def test_fp16_step_goes_through_the_grad_scaler(tiny_data):
    model = create_model("resnet20_mha")
    recipe = get_recipe("cnntention_att", "smoke", "shapes", epochs=1, max_steps_per_epoch=2, batch_size=32)
    h = fit(model, tiny_data, recipe, device="cuda", precision="fp16", progress=False, live=False)
    assert h.precision == "fp16" and math.isfinite(h.rows[0]["train_loss"])
    assert all(torch.isfinite(p).all() for p in model.parameters())


# -- fused kernels with padded heads -------------------------------------------------------------

def _sdpa_ops(fn) -> set[str]:
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts) as prof:
        fn()
        torch.cuda.synchronize()
    return {e.key for e in prof.key_averages()}


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("block, channels, kw", [("mha", 16, {"num_heads": 8}), ("mha", 32, {"num_heads": 8}),
                                                  ("selfatt", 16, {})])
def test_fused_kernel_without_math_fallback(block, channels, kw):
    """Head widths 2 and 4 (MHA at 16 and 32 channels) are padded to 8, so a flash,
    memory-efficient or cuDNN kernel runs forward and backward; the math path (which
    stores the N x N matrix) is disabled here and must not be needed."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    m = create_attn(block, channels, **kw).cuda()
    x = torch.randn(4, channels, 32, 32, device="cuda", requires_grad=True)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            m(x).float().sum().backward()

    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]):
        step()  # raises "No available kernel" if only the math path could run
        ops = _sdpa_ops(step)
    assert ops & set(FUSED_OPS), sorted(o for o in ops if "attention" in o)
    assert MATH_OP not in ops
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("d", [2, 4, 8, 12])
def test_padding_changes_no_value(d):
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(2, 8, 256, d, device="cuda", generator=g) for _ in range(3))
    scale = d ** -0.5
    expected = attention_weights(q, k, scale) @ v  # fp32, explicit
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out, _ = attend(q.bfloat16(), k.bfloat16(), v.bfloat16(), scale)
    assert out.shape == expected.shape  # the padded columns were cut off again
    torch.testing.assert_close(out.float(), expected, rtol=2e-2, atol=2e-2)


# -- CUDA memory accounting ----------------------------------------------------------------------

@pytest.mark.gpu
@needs_cuda
def test_cuda_peak_memory_accounting(monkeypatch):
    # fixed convolution algorithms, so workspaces do not change between batch sizes
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    kw = dict(device="cuda", precision="bf16")
    base = create_model("resnet20")
    m64, m128 = cost.peak_memory(base, 64, **kw), cost.peak_memory(base, 128, **kw)
    assert 0 < m64 < m128 < 4 * 2**30
    assert 1.4 < m128 / m64 < 2.6, (m64, m128)  # activations grow with the batch
    gc.collect()
    allocated = torch.cuda.memory_allocated()
    cost.peak_memory(base, 64, **kw)
    gc.collect()
    # the measurement leaks nothing (a model copy with its optimizer state would be > 2 MiB)
    assert abs(torch.cuda.memory_allocated() - allocated) < 2**18
    # SelfAtt at stage 1: N = 32*32 positions, one head. The explicit path keeps at least
    # one bf16 N x N matrix per image for backward; the fused kernel keeps none.
    batch = 16
    matrix = batch * (32 * 32) ** 2 * 2
    selfatt = create_model("resnet20_selfatt")
    fused = cost.peak_memory(selfatt, batch, **kw)
    with explicit_attention():
        explicit = cost.peak_memory(selfatt, batch, **kw)
    assert explicit - fused >= matrix, (explicit, fused, matrix)
    assert fused - cost.peak_memory(base, batch, **kw) < matrix


# -- without CUDA (any machine) ------------------------------------------------------------------

def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "OMP_NUM_THREADS": "1"}


def test_model_families_cover_every_backbone():
    from attnlab.models import list_backbones

    used = {model_spec(n).backbone for n in list_models()}
    fams = model_families()
    assert {model_spec(n).backbone for n in fams} == used
    assert {model_spec(n).attn for n in fams} - {None} == {model_spec(n).attn for n in list_models()} - {None}
    assert used <= set(list_backbones())


@pytest.mark.skipif(HAS_CUDA, reason="checks the machine without CUDA")
def test_gpu_tests_skip_cleanly_without_cuda(tmp_path):
    """gpu-check's own pytest run (``-m gpu --strict-markers``): every test skips, and
    gpu-check counts that as not passed, since the CUDA path did not run."""
    from attnlab.gpucheck import run_gpu_tests

    r = run_gpu_tests(tmp_path)
    assert r["returncode"] == 0, r["output_tail"]
    assert r["tests"] == r["skipped"] > 0 and r["failures"] == r["errors"] == 0
    assert "needs a CUDA GPU" in r["output_tail"]
    assert r["ok"] is False


def test_gpu_check_report_renders():
    from attnlab.gpucheck import format_markdown

    report = {
        "environment": {"torch": "2.11.0", "precision": "bf16"},
        "cuda": {"name": "NVIDIA H200", "cuda": "13.0", "cudnn": 91000, "capability": "9.0", "memory_GiB": 139.8},
        "tests": {"tests": 20, "failures": 1, "errors": 0, "skipped": 0, "seconds": 42.0, "ok": False,
                  "output_tail": "FAILED tests/test_gpu.py::test_cuda_peak_memory_accounting"},
        "bench": {"environment": {}, "targets": [{"name": "fit / bare loop images/s", "value": 0.97,
                                                  "target": ">= 0.95", "passed": True}],
                  "cifar": {"test_acc": 0.8712, "test_acc_flip": None, "epochs": 15, "wall_s": 95.0,
                            "device": "cuda", "precision": "bf16", "recipe": "onecycle"}},
        "wall_s": 300.0, "ok": False}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("attnlab.gpucheck.format_report", lambda r: "bench text")
        md = format_markdown(report)
    assert md.startswith("# attnlab gpu-check: NVIDIA H200")
    assert "1 failed" in md and "test_cuda_peak_memory_accounting" in md
    assert "| fit / bare loop images/s | 0.97 | >= 0.95 | PASS |" in md
    assert "test accuracy 87.12%, 15 epochs in 95 s on cuda (bf16)" in md
    failed = {**report, "bench": {"error": "RuntimeError: boom"}}
    md = format_markdown(failed)
    assert "failed: RuntimeError: boom" in md and "not run: RuntimeError: boom" in md


@pytest.mark.skipif(HAS_CUDA, reason="checks the machine without CUDA")
def test_gpu_check_fails_fast_without_cuda(tmp_path):
    out = tmp_path / "report"
    done = subprocess.run([sys.executable, "-m", "attnlab.gpucheck", "--out", str(out)], cwd=tmp_path,
                          env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu-check: error: no CUDA device"), done.stderr
    assert not out.exists()  # nothing was started


def test_gpu_check_needs_no_notebook_packages():
    """The GPU machine's Python has no papermill, ipywidgets, optuna or torchvision."""
    code = ("import sys\n"
            "for m in ('papermill', 'ipywidgets', 'optuna', 'torchvision'): sys.modules[m] = None\n"
            "import attnlab, attnlab.bench, attnlab.cli, attnlab.gpucheck, attnlab.explain\n"
            "from attnlab.hardware import environment\n"
            "assert environment('cpu')['torchvision'] == 'not installed'\n"
            "print([m for m in sys.modules if m.startswith(('papermill', 'ipywidgets')) and sys.modules[m]])\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
