"""Which device and numeric precision to train with, and a description of both.

``auto`` picks CUDA, then Apple MPS, then the CPU; precision ``auto`` picks bf16
autocast where the hardware computes it natively (CUDA Ampere or newer, CPUs with
AMX or AVX512-BF16), fp16 with a GradScaler on older CUDA GPUs, fp32 otherwise.
"""
from __future__ import annotations

import functools
import platform
import sys
from pathlib import Path

import torch

from .version import __version__

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) != "auto":
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError):
            raise ValueError(f"unknown device {device!r}; allowed: auto, cpu, cuda, cuda:N, mps") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r} was asked for but no CUDA GPU is available; use 'auto' or 'cpu'")
        if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
            raise ValueError(f"device {str(device)!r} does not exist; this machine has "
                             f"{torch.cuda.device_count()} CUDA GPU(s)")
        if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ValueError("device 'mps' was asked for but Apple MPS is not available; use 'auto' or 'cpu'")
        if dev.type not in ("cpu", "cuda", "mps"):
            raise ValueError(f"device {str(device)!r} is not supported; allowed: auto, cpu, cuda, cuda:N, mps")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_bf16() -> bool:
    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags())


def resolve_precision(precision: str = "auto", device: str | torch.device = "cpu") -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; allowed: {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    dev = torch.device(device)
    if dev.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if dev.type == "cpu" and cpu_has_bf16():
        return "bf16"
    return "fp32"


def autocast(device: torch.device, precision: str):
    """The autocast context for ``precision`` (a no-op for fp32)."""
    return torch.autocast(device.type, dtype=DTYPES[precision], enabled=precision != "fp32")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        model = ""
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        return f"{model or platform.processor() or 'CPU'} ({torch.get_num_threads()} threads)"
    return device.type


def environment(device: str = "auto", precision: str = "auto") -> dict:
    """Versions, device and precision: printed by notebooks, stored with every run."""
    try:  # optional: a GPU machine's bare Python may have torch without torchvision
        import torchvision
        tv_version = torchvision.__version__
    except ImportError:
        tv_version = "not installed"

    dev = resolve_device(device)
    return {
        "attnlab": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torchvision": tv_version,
        "device": str(dev),
        "device_name": device_name(dev),
        "precision": resolve_precision(precision, dev),
        # CPU results depend on the thread count (reduction order), so runs record it
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
