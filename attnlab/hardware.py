"""Which device and numeric precision to train with, and a description of both.

``auto`` picks CUDA, then Apple MPS, then the CPU; precision ``auto`` picks bf16
autocast where the hardware computes it natively (CUDA Ampere or newer, CPUs with
AMX or AVX512-BF16), fp16 with a GradScaler on older CUDA GPUs, fp32 otherwise.
Memory format ``auto`` is channels-last (see :func:`resolve_memory_format`).
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
MEMORY_FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


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


def resolve_memory_format(memory_format: str = "auto") -> str:
    """The layout asked for: ``channels_last`` (N, H, W, C in memory) or ``contiguous``
    (N, C, H, W); ``auto`` is channels-last. :func:`training_memory_format` decides for a
    given model and device.

    Why channels-last: oneDNN's CPU convolutions and cuDNN's tensor-core kernels work in
    that layout, so NCHW tensors are reordered at every convolution. On a 2-core AVX2 CPU
    in fp32 a ResNet-20 training step (batch 128) took 374 ms instead of 606 ms. The
    values computed are the same up to summation order (a test checks every registered
    model in both layouts).
    """
    if memory_format == "auto":
        return "channels_last"
    if memory_format not in MEMORY_FORMATS:
        raise ValueError(f"unknown memory format {memory_format!r}; allowed: auto, {', '.join(MEMORY_FORMATS)}")
    return memory_format


def channels_last_hazards(model: torch.nn.Module, device: str | torch.device = "cpu") -> list[str]:
    """The convolutions of ``model`` whose channels-last training is broken on ``device``.

    torch 2.14's CPU kernel for the weight gradient of a strided 1x1 convolution with 2 to
    7 input channels per group, in channels-last, writes out of bounds: wrong gradients
    with two threads, heap corruption (``free(): invalid next size``) with one. Found on an
    AVX2 CPU; 1 or 8+ input channels, strides of 1 and kernels larger than 1x1 are fine.
    Only small custom networks have such a layer (a ResNet shortcut of width 4).
    """
    if torch.device(device).type != "cpu":
        return []
    return [f"{name} ({m.in_channels} input channels, 1x1, stride {m.stride[0]}x{m.stride[1]})"
            for name, m in model.named_modules()
            if isinstance(m, torch.nn.Conv2d) and tuple(m.kernel_size) == (1, 1)
            and tuple(m.stride) != (1, 1) and 2 <= m.in_channels // m.groups <= 7]


def training_memory_format(model: torch.nn.Module, device: str | torch.device = "cpu",
                           memory_format: str = "auto") -> str:
    """The layout to train ``model`` in on ``device``: ``auto`` is channels-last unless
    :func:`channels_last_hazards` finds a convolution it would break, then contiguous;
    asking for ``channels_last`` on such a model is an error that names the layer."""
    asked = resolve_memory_format(memory_format)
    hazards = channels_last_hazards(model, device) if asked == "channels_last" else []
    if hazards and memory_format == "channels_last":
        raise ValueError(f"memory_format='channels_last' would train {hazards[0]} with a broken kernel "
                         f"(torch's CPU weight gradient of strided 1x1 convolutions with 2-7 input "
                         f"channels); use memory_format='auto' or 'contiguous'")
    return "contiguous" if hazards else asked


def to_memory_format(model: torch.nn.Module, memory_format: str) -> torch.nn.Module:
    """Lay out ``model``'s 4-D parameters and buffers (convolution weights) in
    ``memory_format``, in place. Unlike ``Module.to(memory_format=...)`` this skips
    parameters that are not materialised yet (an attention-augmented convolution sizes its
    relative embeddings at its first forward)."""
    layout = MEMORY_FORMATS[resolve_memory_format(memory_format)]
    for t in [*model.parameters(), *model.buffers()]:
        if not isinstance(t, torch.nn.parameter.UninitializedTensorMixin) and t.dim() == 4:
            t.data = t.data.contiguous(memory_format=layout)
    return model


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
        # what fit(memory_format="auto") picks; a run's metrics.json records what it used
        "default_memory_format": resolve_memory_format(),
        # CPU results depend on the thread count (reduction order), so runs record it
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
