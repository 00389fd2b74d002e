"""``make gpu-check`` / ``python -m attnlab.gpucheck``: the CUDA path, run once on a GPU.

Three parts, one report (``gpu-check.md`` and ``gpu-check.json`` under ``--out``):

1. the GPU tests (``pytest -m gpu tests/test_gpu.py``): the on-device loader, one bf16
   :func:`~attnlab.fit` step per model family, an fp16 step through the GradScaler, the
   fused attention kernels with padded head widths (no math fallback), CUDA peak memory;
2. the benchmark (:func:`attnlab.bench.run_benchmarks`) on CUDA, with
3. its timed ResNet-20 run at the ``quick`` profile on CIFAR-10, trained fresh in a run
   store under ``--out`` (never loaded from an earlier run).

Made for a GPU machine without network access whose Python has torch, pandas,
matplotlib, seaborn, tqdm, scikit-learn and pytest (no papermill, ipywidgets or
torchvision needed, no virtual environment): run it from the checkout with the package
on ``PYTHONPATH``, and give the offline CIFAR-10 copy (``train/`` and ``test/`` folders
or ``.tar.gz`` archives) with ``--cifar`` the first time; it is imported into the data
cache once. Without a CUDA device it stops at once with one line on stderr.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Iterator, Optional, Sequence

import torch

from .bench import format_report, run_benchmarks
from .data import cached_datasets, import_dataset
from .hardware import environment
from .paths import PROJECT_ROOT

TEST_FILE = PROJECT_ROOT / "tests" / "test_gpu.py"
TEST_TIMEOUT_S = 1200


class GpuCheckError(RuntimeError):
    """The check cannot start (no CUDA device, no CIFAR-10); the message says why."""


def require_cuda() -> None:
    if not torch.cuda.is_available():
        raise GpuCheckError(
            f"no CUDA device: torch {torch.__version__} (CUDA build {torch.version.cuda or 'none'}) "
            "sees no GPU; run gpu-check on a machine with an NVIDIA GPU")


def ensure_cifar(source: Optional[str]) -> dict:
    """Import CIFAR-10 from ``source`` unless it is cached; what was done, and how long it took."""
    cached = {"train", "test"} <= set(cached_datasets().get("cifar10", []))
    if source is not None and not Path(source).exists():
        raise GpuCheckError(f"--cifar {source}: no such file or folder")
    if cached:
        return {"imported": False, "note": "already in the data cache"}
    if source is None:
        raise GpuCheckError("CIFAR-10 is not imported: pass --cifar DIR (train/ and test/ folders or "
                            "train.tar.gz and test.tar.gz), e.g. make gpu-check CIFAR=/path/to/cifar10-jpg")
    t0 = time.perf_counter()
    counts = import_dataset("cifar10", source)
    return {"imported": True, "source": str(source), "counts": counts, "seconds": time.perf_counter() - t0}


def cuda_info() -> dict:
    dev = torch.device("cuda")
    props = torch.cuda.get_device_properties(dev)
    return {"name": props.name, "capability": f"{props.major}.{props.minor}",
            "memory_GiB": round(props.total_memory / 2**30, 1), "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(), "bf16": torch.cuda.is_bf16_supported(),
            "device_count": torch.cuda.device_count()}


def run_gpu_tests(out: Path) -> dict:
    """``pytest -m gpu`` in a child process; counts from its JUnit XML."""
    xml = out / "gpu-tests.xml"
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", str(TEST_FILE), "-q", "-rs", "--strict-markers",
           "-p", "no:cacheprovider", f"--junitxml={xml}"]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=TEST_TIMEOUT_S)
    result = {"command": " ".join(cmd[1:]), "returncode": done.returncode,
              "seconds": time.perf_counter() - t0, "output_tail": (done.stdout + done.stderr)[-4000:]}
    if xml.exists():
        suite = ET.parse(xml).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        result.update({k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")})
    # skipped GPU tests on a GPU machine mean the CUDA path did not run: not a pass
    result["ok"] = (done.returncode == 0 and result.get("tests", 0) > 0
                    and result.get("skipped", 0) == 0 and result.get("failures", 1) == 0)
    return result


@contextlib.contextmanager
def fresh_run_store(folder: Path) -> Iterator[None]:
    """An empty run store at ``folder`` for the duration, so the CIFAR-10 run is trained
    (and timed) here rather than loaded from an earlier one."""
    shutil.rmtree(folder, ignore_errors=True)
    old = os.environ.get("ATTNLAB_RUNS")
    os.environ["ATTNLAB_RUNS"] = str(folder)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("ATTNLAB_RUNS", None)
        else:
            os.environ["ATTNLAB_RUNS"] = old


def run_bench(out: Path, quick: bool) -> dict:
    """The benchmark on CUDA with the quick CIFAR-10 ResNet-20 run."""
    with fresh_run_store(out / "runs"):
        return run_benchmarks(quick=quick, cifar=True, device="cuda")


def _guarded(name: str, fn, *args) -> dict:
    """Run one part; a failure is recorded in the report instead of ending the check."""
    print(f"[gpu-check] {name} ...", file=sys.stderr, flush=True)
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 - every part reports, whatever went wrong
        return {"error": f"{type(exc).__name__}: {exc}"}


def _targets_table(bench: dict) -> list[str]:
    rows = bench.get("targets") or []
    if not rows:
        return []
    lines = ["| target | measured | limit | result |", "|---|---|---|---|"]
    for t in rows:
        lines.append(f"| {t['name']} | {t['value']:.4g} | {t['target']} | {'PASS' if t['passed'] else 'FAIL'} |")
    return lines


def format_markdown(report: dict) -> str:
    cuda, tests, bench = report["cuda"], report["tests"], report["bench"]
    cifar = bench.get("cifar") or {"error": bench.get("error", "not run")}
    lines = [f"# attnlab gpu-check: {cuda['name']}", "",
             f"torch {report['environment']['torch']}, CUDA {cuda['cuda']}, cuDNN {cuda['cudnn']}, "
             f"compute capability {cuda['capability']}, {cuda['memory_GiB']} GiB, "
             f"precision {report['environment']['precision']}; total {report['wall_s']:.0f} s. "
             f"Overall: **{'PASS' if report['ok'] else 'FAIL'}** (PASS: the GPU tests passed and the "
             "benchmark ran with its CIFAR-10 run; each benchmark target is listed with its own result).", "",
             "## GPU tests (`pytest -m gpu`)", ""]
    if "error" in tests:
        lines.append(f"did not run: {tests['error']}")
    else:
        lines.append(f"{tests.get('tests', 0)} tests, {tests.get('failures', 0)} failed, "
                     f"{tests.get('errors', 0)} errors, {tests.get('skipped', 0)} skipped "
                     f"in {tests['seconds']:.0f} s: **{'PASS' if tests['ok'] else 'FAIL'}**")
        if not tests["ok"]:
            lines += ["", "```", tests["output_tail"][-2500:], "```"]
    lines += ["", "## Benchmark on CUDA", ""]
    if "error" in bench:
        lines.append(f"failed: {bench['error']}")
    else:
        lines += _targets_table(bench) + ["", "```", format_report(bench), "```"]
    lines += ["", "## ResNet-20, quick profile, CIFAR-10 (trained fresh)", ""]
    if "test_acc" in cifar:
        flip = cifar.get("test_acc_flip")
        lines.append(f"test accuracy {100 * cifar['test_acc']:.2f}%"
                     + (f" (flip TTA {100 * flip:.2f}%)" if flip is not None else "")
                     + f", {cifar['epochs']} epochs in {cifar['wall_s']:.0f} s on {cifar['device']} "
                       f"({cifar['precision']}), recipe {cifar['recipe']}")
    else:
        lines.append(f"not run: {cifar.get('error') or cifar.get('skipped')}")
    return "\n".join(lines) + "\n"


def gpu_check(cifar: Optional[str], out: Path, quick_bench: bool = False) -> dict:
    """All three parts; the report dict (also written to ``out``)."""
    require_cuda()
    t0 = time.perf_counter()
    data = ensure_cifar(cifar)
    out.mkdir(parents=True, exist_ok=True)
    report = {"environment": environment("cuda"), "cuda": cuda_info(), "cifar_data": data}
    report["tests"] = _guarded("GPU tests", run_gpu_tests, out)
    report["bench"] = _guarded("benchmark and the quick CIFAR-10 ResNet-20 run", run_bench, out, quick_bench)
    report["wall_s"] = time.perf_counter() - t0
    report["ok"] = bool(report["tests"].get("ok")) and "test_acc" in (report["bench"].get("cifar") or {})
    (out / "gpu-check.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "gpu-check.md").write_text(format_markdown(report))
    return report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m attnlab.gpucheck", description=__doc__.split("\n\n")[0])
    p.add_argument("--cifar", help="offline CIFAR-10 copy: train/ and test/ folders or .tar.gz archives "
                                   "(needed once, until it is in the data cache)")
    p.add_argument("--out", default="reports/gpu-check", help="report folder (default: reports/gpu-check)")
    p.add_argument("--quick-bench", action="store_true", help="the benchmark's quick mode (fewer repeats)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        report = gpu_check(args.cifar or None, Path(args.out), args.quick_bench)
    except GpuCheckError as exc:
        print(f"gpu-check: error: {exc}", file=sys.stderr)
        return 2
    print(f"gpu-check {'PASS' if report['ok'] else 'FAIL'}: {Path(args.out) / 'gpu-check.md'}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
