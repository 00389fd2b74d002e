"""What a model costs: parameters, FLOPs, speed and memory, side by side.

Attention gains on CIFAR are small, so every accuracy should be read beside its price. At 32x32 one self-attention block builds a 1024 x 1024 matrix
per image (and head), which is why the stage-1 block dominates time and memory.

>>> cost_table(["resnet20", "resnet20"], speed=False)      # parameters and FLOPs only

Conventions:

- FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode``, which counts a
  multiply-accumulate as **2** FLOPs. He et al.'s "41M" for ResNet-20 are
  multiply-accumulates, so torch reports about 81M. Additions of biases, BatchNorm,
  activations and softmax are not counted (negligible next to the matmuls).
- Speed and memory are measured on a deep copy of the model, so a trained model passed
  in keeps its weights and BatchNorm statistics. The training step is the one ``fit``
  runs: forward, cross-entropy, backward, an SGD step with momentum.
"""
from __future__ import annotations

import copy
import ctypes
import ctypes.util
import gc
import math
import time
from pathlib import Path
from typing import Callable, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .hardware import MEMORY_FORMATS, autocast, resolve_device, resolve_precision, to_memory_format, training_memory_format
from .papers import create_model

aten = torch.ops.aten


def count_params(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameters (buffers such as BatchNorm running statistics excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# -- FLOPs ------------------------------------------------------------------------------

def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """``q @ k^T`` plus ``softmax(.) @ v``, 2 FLOPs per multiply-accumulate."""
    b, h, n_q, d_qk = query_shape
    n_k, d_v = key_shape[-2], value_shape[-1]
    return 2 * b * h * n_q * n_k * (d_qk + d_v)


def _sdpa_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args,
                         out_shape=None, **kwargs) -> int:
    # recomputed scores q k^T, then dV = P^T dO, dP = dO V^T, dQ = dS K, dK = dS^T Q
    b, h, n_q, d_qk = query_shape
    n_k, d_v = key_shape[-2], value_shape[-1]
    return 2 * b * h * n_q * n_k * (3 * d_qk + 2 * d_v)


#: FlopCounterMode (torch 2.14) has formulas for the CUDA SDPA kernels but not for the
#: CPU flash kernel that ``F.scaled_dot_product_attention`` dispatches to on a CPU, so
#: without these every fused attention block would count as free.
SDPA_FORMULAS = {
    aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_backward_flops,
}


def _cpu_copy(model: nn.Module) -> nn.Module:
    # a copy, so counting neither moves the caller's model nor touches its mode
    return copy.deepcopy(model).to("cpu", torch.float32).eval()


def _flop_counter(model: nn.Module, input_shape: Sequence[int]) -> FlopCounterMode:
    model = _cpu_copy(model)
    counter = FlopCounterMode(display=False, custom_mapping=SDPA_FORMULAS)
    with counter, torch.no_grad():
        model(torch.zeros(*input_shape))
    return counter


def count_flops(model: nn.Module, input_shape: Sequence[int] = (1, 3, 32, 32)) -> int:
    """Forward FLOPs per image (CPU, fp32), attention matmuls included.

    A FLOP here is what torch counts: 2 per multiply-accumulate (ResNet-20: about 81M,
    i.e. the 41M multiply-adds of He et al. 2016). The fused attention kernel is
    counted as its two matmuls (:data:`SDPA_FORMULAS`), exactly what the explicit path
    ``softmax(q k^T) v`` would be counted as.
    """
    return _flop_counter(model, input_shape).get_total_flops() // int(input_shape[0])


def flops_by_module(model: nn.Module, input_shape: Sequence[int] = (1, 3, 32, 32)) -> dict[str, int]:
    """Forward FLOPs per image of each top-level child (``layer1``, ``attn1``, ...)."""
    counts = _flop_counter(model, input_shape).get_flop_counts()
    root = type(model).__name__
    per_image = int(input_shape[0])
    return {name: sum(counts[f"{root}.{name}"].values()) // per_image
            for name, _ in model.named_children() if f"{root}.{name}" in counts}


# -- one step, for speed and memory -----------------------------------------------------

def _make_step(model: nn.Module, batch_size: int, input_shape: Sequence[int], device: torch.device,
               precision: str, train: bool) -> Callable[[], None]:
    """A closure running one training (or inference) step on a copy of ``model``, in the
    memory layout ``fit`` trains in by default."""
    layout = training_memory_format(model, device)
    model = to_memory_format(copy.deepcopy(model).to(device), layout).train(train)
    x = torch.randn(batch_size, *input_shape, device=device).contiguous(memory_format=MEMORY_FORMATS[layout])
    # every label 0: cross-entropy costs the same for any labels and fits any class count
    y = torch.zeros(batch_size, dtype=torch.long, device=device)
    if not train:
        def infer() -> None:
            with torch.inference_mode(), autocast(device, precision):
                model(x)
        return infer

    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    def step() -> None:
        with autocast(device, precision):
            loss = F.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        # gradients are freed after the step, so a step starts and ends without them
        opt.zero_grad(set_to_none=True)
    return step


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so that the clock reads finished work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def step_seconds(model: nn.Module, batch_size: int = 128, input_shape: Sequence[int] = (3, 32, 32), *,
                 device: str | torch.device = "auto", precision: str = "auto", train: bool = True,
                 steps: int = 5, warmup: int = 2) -> float:
    """Seconds per training step (forward, cross-entropy, backward, SGD) or inference
    forward of a copy of ``model``.

    ``warmup`` untimed steps first (kernel selection, lazy allocations), then ``steps``
    timed ones; the device is synchronised before reading the clock.
    """
    dev = resolve_device(device)
    step = _make_step(model, batch_size, input_shape, dev, resolve_precision(precision, dev), train)
    for _ in range(warmup):
        step()
    sync(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(dev)
    return max(time.perf_counter() - t0, 1e-9) / steps


def throughput(model: nn.Module, batch_size: int = 128, input_shape: Sequence[int] = (3, 32, 32), *,
               device: str | torch.device = "auto", precision: str = "auto", train: bool = True,
               steps: int = 5, warmup: int = 2) -> float:
    """Images per second: ``batch_size`` over :func:`step_seconds`."""
    return batch_size / step_seconds(model, batch_size, input_shape, device=device, precision=precision,
                                     train=train, steps=steps, warmup=warmup)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


def process_peak_rss() -> int:
    """Bytes of this process's peak resident memory. Linux's ``ru_maxrss`` carries the
    parent's peak over fork and exec, so the high-water mark of this address space
    (``VmHWM``) is read instead where there is one."""
    try:
        return _status_kib("VmHWM") * 1024
    except OSError:
        import resource  # macOS reports bytes, other systems KiB
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def _malloc_trim() -> None:
    # Give freed heap memory back to the OS: otherwise the step reuses pages that are
    # already resident and the peak RSS does not see them.
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _cpu_peak(step: Callable[[], None]) -> int:
    """Peak RSS of ``step`` above the RSS before it, or -1 without Linux's /proc."""
    gc.collect()
    _malloc_trim()
    try:
        before = _status_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        return -1
    step()
    return max(0, _status_kib("VmHWM") - before) * 1024


def _cuda_peak(step: Callable[[], None], device: torch.device) -> int:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    step()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def peak_memory(model: nn.Module, batch_size: int = 128, input_shape: Sequence[int] = (3, 32, 32), *,
                device: str | torch.device = "auto", precision: str = "auto", train: bool = True) -> int:
    """Bytes of extra memory at the peak of one training (or inference) step.

    "Extra" means above what exists before the step: weights, optimizer state and the
    input batch are not counted; activations kept for backward, gradients and
    temporaries (an explicit attention matrix, for instance) are. One warm-up step runs
    first so lazily created state (momentum buffers, kernel workspaces) is not counted.

    - CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``
      (tensor memory; the caching allocator's reserve is not counted).
    - CPU on Linux: the process's peak resident set (``VmHWM``, reset by writing 5 to
      ``/proc/self/clear_refs``) minus the resident set before the step, after
      returning freed heap memory to the OS. Page-granular and process-wide, so other
      threads allocating at the same time would be counted too.
    - Elsewhere (MPS, macOS and Windows CPUs): ``-1``, meaning "not measured".
    """
    dev = resolve_device(device)
    if dev.type not in ("cuda", "cpu"):
        return -1
    step = _make_step(model, batch_size, input_shape, dev, resolve_precision(precision, dev), train)
    step()  # warm-up
    return _cuda_peak(step, dev) if dev.type == "cuda" else _cpu_peak(step)


# -- the table --------------------------------------------------------------------------

Models = Union[dict[str, nn.Module], Sequence[str]]


def _as_models(models: Models, num_classes: int, in_channels: int) -> dict[str, nn.Module]:
    if isinstance(models, dict):
        return dict(models)
    return {name: create_model(name, num_classes=num_classes, in_channels=in_channels) for name in models}


def _cost_row(name: str, model: nn.Module, batch_size: int, input_shape: Sequence[int], device: torch.device,
              precision: str, memory: bool, speed: bool, steps: int) -> dict:
    row = {"model": name, "params": count_params(model),
           "MFLOPs": count_flops(model, (1, *input_shape)) / 1e6}
    kw = dict(device=device, precision=precision)
    if speed:
        train_s = step_seconds(model, batch_size, input_shape, train=True, steps=steps, **kw)
        row["train img/s"] = batch_size / train_s
        row["infer img/s"] = throughput(model, batch_size, input_shape, train=False, steps=steps, **kw)
        row["train step ms"] = 1000.0 * train_s
    if memory:
        peak = peak_memory(model, batch_size, input_shape, train=True, **kw)
        row["peak MiB (train)"] = peak / 2**20 if peak >= 0 else math.nan
    return row


def cost_table(models: Models, batch_size: int = 128, input_shape: Sequence[int] = (3, 32, 32), *,
               device: str | torch.device = "auto", precision: str = "auto", memory: bool = True,
               speed: bool = True, steps: int = 5, num_classes: int = 10):
    """One row per model: params, MFLOPs, train/inference img/s, step time, peak memory.

    ``models`` is a dict name -> module, or a list of names for :func:`attnlab.create_model`
    (built with ``num_classes`` and ``input_shape[0]`` channels). With ``speed`` a column
    ``x <first model>`` gives each training step time relative to the first row, e.g.
    "x resnet20" when the baseline comes first. ``speed=False`` / ``memory=False`` skip
    the slow measurements. The device and precision are in ``frame.attrs``.
    """
    import pandas as pd

    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    named = _as_models(models, num_classes, input_shape[0])
    frame = pd.DataFrame([_cost_row(name, m, batch_size, input_shape, dev, prec, memory, speed, steps)
                          for name, m in named.items()])
    if speed and len(frame):
        frame[f"x {frame['model'].iloc[0]}"] = frame["train step ms"] / frame["train step ms"].iloc[0]
    frame.attrs.update(device=str(dev), precision=prec, batch_size=batch_size)
    return frame


__all__ = ["count_params", "count_flops", "flops_by_module", "step_seconds", "throughput", "peak_memory",
           "process_peak_rss", "sync", "cost_table", "SDPA_FORMULAS"]
