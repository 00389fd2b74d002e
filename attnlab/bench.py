"""``python -m attnlab bench``: the speed and memory claims, measured side by side.

All figures come from one process on one machine, so the ratios compare like with
like even when the machine is shared: every comparison warms up first, alternates
its contenders round by round (a neighbour's load then hits both), and reports the
median over rounds.

- loader: attnlab's :class:`~attnlab.data.DeviceLoader` (batched crop and flip on the
  device) against torchvision's ``DataLoader`` over PIL images (RandomCrop(32, 4),
  flip, ToTensor, Normalize; 0 and 2 workers): data time per batch and its share of
  a ResNet-20 training step. Target: attnlab's share at most 2%.
- fit: :func:`attnlab.fit` against a bare PyTorch loop on the same initial weights,
  batches and precision. Target: at least 0.95 of the bare loop's images/s.
- precision: bf16 autocast against fp32 for a ResNet-20 step.
- attention (issue 3, section 6): the step time of ResNet-20 with SelfAtt, 8-head MHA
  and CBAM relative to ResNet-20 (targets 2.5x, 8x, 1.3x) and their extra peak memory
  (target under 0.5 GiB each); in the full mode also SelfAtt with the explicit
  ``softmax(q k^T) v`` that the fused kernel replaced, for scale.
- evaluation memory: each attention model evaluated in a fresh process as ``fit`` does
  (batches of 512), plus GradCAM on 128 images and attention maps, as the notebooks draw
  them; the process's peak resident memory. Target: under 3 GiB.
- cifar (``cifar=True``): ResNet-20 at the ``quick`` profile on CIFAR-10 through the run
  store. Target: at least 86% test accuracy within 20 minutes.

Everything in the result dict is plain JSON; :func:`format_report` prints it.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch
import torch.nn.functional as F

from . import cost
from .data import DataSplits, ImageSet, cached_datasets, channel_stats, load_data
from .hardware import autocast, environment, resolve_device, resolve_precision
from .layers.sdpa import explicit_attention
from .papers import create_model
from .recipes import get_recipe
from .train import evaluate, fit, seed_everything

BATCH = 128
GIB = 2**30
CIFAR_HINT = "python -m attnlab data import cifar10 --from ../shared/datasets/cifar10-jpg"


@dataclass(frozen=True)
class Settings:
    """How long to measure: ``quick`` finishes in about a minute on a 2-core CPU."""

    rounds: int            # alternating repeats; the medians are over these
    steps: int             # timed training steps per round and contender
    loader_batches: int    # timed batches per round and loader
    fit_steps: int         # steps per epoch in the fit-vs-loop comparison
    explicit: bool         # also time the explicit-matrix SelfAtt
    batch_size: int = BATCH  # the targets are stated at 128; tests use less
    eval_images: int = 1024  # test images per model in the evaluation-memory check

    @classmethod
    def for_mode(cls, quick: bool) -> "Settings":
        if quick:
            return cls(rounds=2, steps=1, loader_batches=5, fit_steps=4, explicit=False, eval_images=512)
        return cls(rounds=5, steps=3, loader_batches=10, fit_steps=15, explicit=True)


#: (name, create_model keywords, max step time relative to ResNet-20)
ATTENTION_MODELS = [
    ("selfatt", {"attn": "selfatt"}, 2.5),
    ("mha", {"attn": "mha", "attn_kw": {"num_heads": 8}}, 8.0),
    ("cbam", {"attn": "cbam"}, 1.3),
]
EXTRA_MEMORY_LIMIT = 0.5 * GIB
EVAL_RSS_LIMIT = 3 * GIB


def _log(msg: str) -> None:
    # stderr, so that with --json the JSON object stays the last line of stdout
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def _target(name: str, value: float, op: str, limit: float, unit: str = "") -> dict:
    passed = value <= limit if op == "<=" else value >= limit if op == ">=" else value < limit
    return {"name": name, "value": float(value), "target": f"{op} {limit:g}{unit}", "passed": bool(passed)}


# -- timing primitives -------------------------------------------------------------------

def step_seconds(model: torch.nn.Module, device: torch.device, precision: str, steps: int,
                 batch_size: int = BATCH, warmup: int = 1) -> float:
    """Seconds per training step (forward, loss, backward, SGD) of a copy of ``model``."""
    ips = cost.throughput(model, batch_size, device=device, precision=precision, train=True,
                          steps=steps, warmup=warmup)
    return batch_size / ips


def _alternate(contenders: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    """Median of each contender's measurement, the order rotating every round."""
    values: dict[str, list[float]] = {k: [] for k in contenders}
    names = list(contenders)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            values[name].append(contenders[name]())
    return {k: _median(v) for k, v in values.items()}


# -- a. loaders --------------------------------------------------------------------------

def bench_data() -> tuple[str, str]:
    """CIFAR-10 when it is in the cache (the real workload), else the built-in shapes."""
    have = set(cached_datasets().get("cifar10", []))
    if {"train", "test"} <= have:
        return "cifar10", "CIFAR-10 (imported, cached)"
    return "shapes", "shapes (CIFAR-10 is not imported; same image size and batch size)"


class PILImages(torch.utils.data.Dataset):
    """torchvision's CIFAR-10 access pattern: an HWC uint8 array, a PIL image per item."""

    def __init__(self, data: ImageSet, transform: Callable):
        self.array = data.images.permute(0, 2, 3, 1).contiguous().numpy()
        self.labels = data.labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        img = self.array[i]
        img = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
        return self.transform(img), self.labels[i]


def torchvision_loader(data: ImageSet, mean: list[float], std: list[float], workers: int,
                       batch_size: int = BATCH) -> torch.utils.data.DataLoader:
    import torchvision.transforms as T

    tf = T.Compose([T.RandomCrop(data.shape[-1], padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize(mean, std)])
    return torch.utils.data.DataLoader(PILImages(data, tf), batch_size=batch_size, shuffle=True,
                                       num_workers=workers, drop_last=True)


def batch_seconds(loader, device: torch.device, rounds: int, batches: int, warmup: int) -> list[float]:
    """Seconds per batch over ``rounds`` windows of ``batches`` consecutive batches, after
    ``warmup`` untimed ones (worker start-up, first allocations). Batches are moved to
    ``device``: on a GPU machine a CPU pipeline pays that copy too."""
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    out = []
    for _ in range(rounds):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(batches):
            x, y = next(it)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        _sync(device)
        out.append((time.perf_counter() - t0) / batches)
    return out


def bench_loader(train: ImageSet, device: torch.device, step_s: float, s: Settings) -> dict:
    """Data time per batch of each loader and its share of (data + ResNet-20 step)."""
    from .data import DeviceLoader

    mean, std = channel_stats(train)
    bs = s.batch_size
    need = s.rounds * s.loader_batches + 8
    if len(train) < need * bs:
        raise ValueError(f"the loader benchmark needs {need * bs} images, got {len(train)}")
    loaders = {"attnlab DeviceLoader": (DeviceLoader(train, bs, mean=mean, std=std, shuffle=True,
                                                     augment="crop_flip", device=device), 1)}
    for workers in (0, 2):
        # warm-up covers every worker's first batch, which includes starting the worker
        loaders[f"torchvision DataLoader, {workers} workers"] = (
            torchvision_loader(train, mean, std, workers, bs), 2 * workers + 1)
    rows = []
    for name, (loader, warmup) in loaders.items():
        t = _median(batch_seconds(loader, device, s.rounds, s.loader_batches, warmup))
        rows.append({"loader": name, "ms_per_batch": 1000 * t, "share_of_step": t / (t + step_s)})
    return {"batch_size": bs, "step_ms": 1000 * step_s, "rows": rows,
            "note": "share = data time / (data time + ResNet-20 training step); with workers the "
                    "data time is measured alone, while in training the workers compete for the cores"}


# -- b. fit vs a bare loop ---------------------------------------------------------------

def bare_loop_rate(model: torch.nn.Module, data: DataSplits, recipe, device: torch.device,
                   precision: str, seed: int = 0, epochs: int = 2) -> float:
    """Images/s of the last of ``epochs`` windows of the plainest PyTorch training loop."""
    seed_everything(seed)
    model = model.to(device).train()
    loader = data.loader("train", recipe.batch_size, device, seed)
    opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                          nesterov=recipe.nesterov, weight_decay=recipe.weight_decay)
    rate = 0.0
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        _sync(device)
        t0, seen = time.perf_counter(), 0
        for i, (x, y) in enumerate(loader):
            if i == recipe.max_steps_per_epoch:
                break
            with autocast(device, precision):
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(y)
        _sync(device)
        rate = seen / (time.perf_counter() - t0)
    return rate


def fit_rate(model: torch.nn.Module, data: DataSplits, recipe, device: torch.device,
             precision: str, seed: int = 0) -> float:
    """Images/s of ``fit``'s last training epoch (its own ``images_per_s``)."""
    h = fit(model, data, recipe, device=str(device), precision=precision, seed=seed,
            progress=False, live=False, evaluate_test=False)
    return float(h.rows[-1]["images_per_s"])


def bench_fit(dataset: str, device: torch.device, precision: str, s: Settings) -> dict:
    """``fit`` vs the bare loop: same initial weights, loader batches, precision, SGD."""
    data = load_data(dataset, train_subset=s.fit_steps * s.batch_size, eval_subset=256)
    # two epochs: the first warms up, the second is timed; constant lr like the bare loop
    recipe = get_recipe("he2016", "full", dataset, epochs=2, schedule="constant",
                        max_steps_per_epoch=s.fit_steps, batch_size=s.batch_size)
    init = create_model("resnet20", num_classes=data.num_classes, in_channels=data.in_channels)

    def fresh() -> torch.nn.Module:
        return copy.deepcopy(init)

    rates = _alternate({"fit": lambda: fit_rate(fresh(), data, recipe, device, precision),
                        "bare": lambda: bare_loop_rate(fresh(), data, recipe, device, precision)},
                       s.rounds)
    return {"fit_images_per_s": rates["fit"], "bare_images_per_s": rates["bare"],
            "ratio": rates["fit"] / rates["bare"], "steps": s.fit_steps, "precision": precision}


# -- c. precision ------------------------------------------------------------------------

def bench_precision(device: torch.device, s: Settings) -> dict:
    from .hardware import cpu_has_bf16

    model = create_model("resnet20")
    times = _alternate({p: (lambda p=p: step_seconds(model, device, p, s.steps + 1, s.batch_size))
                        for p in ("fp32", "bf16")}, s.rounds)
    native = cpu_has_bf16() if device.type == "cpu" else device.type == "cuda"
    return {"fp32_step_ms": 1000 * times["fp32"], "bf16_step_ms": 1000 * times["bf16"],
            "speedup": times["fp32"] / times["bf16"], "native_bf16": bool(native)}


# -- d. attention blocks -----------------------------------------------------------------

def _bench_model(name: str) -> torch.nn.Module:
    """``resnet20`` or one of :data:`ATTENTION_MODELS` by its short name."""
    variants = {"resnet20": {}, **{n: kw for n, kw, _ in ATTENTION_MODELS}}
    if name not in variants:
        raise ValueError(f"unknown benchmark model {name!r}; allowed: {', '.join(variants)}")
    return create_model("resnet20", **variants[name])


def _attention_models() -> dict[str, tuple[torch.nn.Module, Optional[float]]]:
    models = {"resnet20": (_bench_model("resnet20"), None)}
    for name, _, limit in ATTENTION_MODELS:
        models[name] = (_bench_model(name), limit)
    return models


def _explicit_row(model: torch.nn.Module, device, precision, s: Settings, base: dict) -> dict:
    with explicit_attention():
        t = _median([step_seconds(model, device, precision, s.steps, s.batch_size) for _ in range(s.rounds)])
        mem = cost.peak_memory(model, s.batch_size, device=device, precision=precision)
    return {"model": "selfatt (explicit N x N)", "step_ms": 1000 * t,
            "x_resnet20": t / base["step_s"], "extra_GiB": (mem - base["mem"]) / GIB,
            "target_x": None, "note": "the formulation the fused kernel replaced; not the training path"}


def bench_attention(device: torch.device, precision: str, s: Settings) -> dict:
    """Step time and extra peak memory of each attention model relative to ResNet-20."""
    models = _attention_models()
    times = _alternate({name: (lambda m=m: step_seconds(m, device, precision, s.steps, s.batch_size))
                        for name, (m, _) in models.items()}, s.rounds)
    mems = {name: cost.peak_memory(m, s.batch_size, device=device, precision=precision)
            for name, (m, _) in models.items()}
    base = {"step_s": times["resnet20"], "mem": mems["resnet20"]}
    rows = []
    for name, (m, limit) in models.items():
        rows.append({"model": name, "step_ms": 1000 * times[name], "x_resnet20": times[name] / base["step_s"],
                     "extra_GiB": (mems[name] - base["mem"]) / GIB if mems[name] >= 0 else None,
                     "target_x": limit})
    if s.explicit:
        rows.append(_explicit_row(models["selfatt"][0], device, precision, s, base))
    return {"batch_size": s.batch_size, "precision": precision, "resnet20_step_ms": 1000 * base["step_s"],
            "resnet20_peak_GiB": mems["resnet20"] / GIB if mems["resnet20"] >= 0 else None,
            "rows": rows}


# -- e. evaluation memory ----------------------------------------------------------------

def eval_peak_memory(model: str, dataset: str, images: int, device: str = "auto",
                     precision: str = "auto") -> dict:
    """Meant for a fresh process: evaluate ``model`` (``resnet20`` or an attention model)
    as ``fit`` does, draw GradCAM and attention maps as the notebooks do, and return
    the process's peak resident memory (and the GPU's, on CUDA)."""
    from .explain import attention_maps, gradcam

    dev = resolve_device(device)
    data = load_data(dataset, eval_subset=images)
    data_peak = _peak_rss_bytes()  # decoding the cache: a floor shared by every model
    net = _bench_model(model).to(dev)
    evaluate(net, data.loader("test", 512, dev), resolve_precision(precision, dev), data.num_classes)
    x, _ = next(iter(data.loader("test", 128, dev)))
    gradcam(net, x, "layer3")
    if model != "resnet20":
        attention_maps(net, x[:8], query=(16, 16))
    out = {"model": model, "images": len(data.test), "data_peak_GiB": data_peak / GIB,
           "peak_rss_GiB": _peak_rss_bytes() / GIB}
    if dev.type == "cuda":
        out["peak_cuda_GiB"] = torch.cuda.max_memory_allocated(dev) / GIB
    return out


def _peak_rss_bytes() -> int:
    """This process's peak resident memory. Linux's ``ru_maxrss`` carries the parent's peak
    over fork and exec, so read the high-water mark of this address space instead."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        import resource  # macOS reports bytes, other systems KiB

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def bench_eval_memory(dataset: str, device: torch.device, precision: str, s: Settings) -> dict:
    """:func:`eval_peak_memory` for each model, each in its own process (a clean peak)."""
    rows = []
    for model in ["resnet20"] + [name for name, _, _ in ATTENTION_MODELS]:
        code = ("import json; from attnlab.bench import eval_peak_memory; "
                f"print(json.dumps(eval_peak_memory({model!r}, {dataset!r}, {s.eval_images}, "
                f"{str(device)!r}, {precision!r})))")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"evaluation-memory check of {model} failed:\n{done.stderr[-2000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return {"dataset": dataset, "eval_batch": 512, "gradcam_batch": 128, "rows": rows}


# -- f. ResNet-20 on CIFAR-10 at the quick profile ---------------------------------------

def bench_cifar(dataset: str = "cifar10", profile: str = "quick", recipe: str = "onecycle",
                model: str = "resnet20", runs_dir=None, progress: bool = True) -> dict:
    """Train (or load from the run store) ``model`` at ``profile``; accuracy and wall time."""
    from .paths import runs_root
    from .runs import RunConfig, train_or_load

    if dataset != "shapes" and not {"train", "test"} <= set(cached_datasets().get(dataset, [])):
        return {"skipped": f"{dataset} is not imported; first run: {CIFAR_HINT}"}
    config = RunConfig(model, dataset, recipe, profile)
    stored = (Path(runs_dir or runs_root()) / config.dirname / "metrics.json").exists()
    run = train_or_load(config, runs_dir, progress=progress, live=False)
    if not run.finished:
        return {"skipped": "interrupted; run the benchmark again to resume"}
    m = run.metrics
    # a stored run reports the wall time it was trained in, on the device in env.json
    return {"model": model, "dataset": dataset, "profile": profile, "recipe": recipe,
            "test_acc": m["test_acc"], "test_acc_flip": m.get("test_acc_flip"),
            "wall_s": m["wall_s"], "epochs": m["epochs"],
            "from_run_store": stored,
            "device": m["device"], "precision": m["precision"], "run_dir": str(run.dir)}


# -- all of it ---------------------------------------------------------------------------

def _targets(r: dict) -> list[dict]:
    t = []
    share = next(row["share_of_step"] for row in r["loader"]["rows"] if row["loader"].startswith("attnlab"))
    t.append(_target("attnlab loader share of a step", share, "<=", 0.02))
    t.append(_target("fit / bare loop images/s", r["fit"]["ratio"], ">=", 0.95))
    for row in r["attention"]["rows"]:
        if row.get("target_x") is not None:
            t.append(_target(f"{row['model']} step time vs ResNet-20", row["x_resnet20"], "<=", row["target_x"], "x"))
            if row["extra_GiB"] is not None:
                t.append(_target(f"{row['model']} extra peak memory (GiB)", row["extra_GiB"], "<",
                                 EXTRA_MEMORY_LIMIT / GIB))
    for row in (r.get("eval_memory") or {}).get("rows", []):
        if row["model"] != "resnet20":
            t.append(_target(f"{row['model']} evaluation, process peak memory (GiB)", row["peak_rss_GiB"],
                             "<", EVAL_RSS_LIMIT / GIB))
    c = r.get("cifar") or {}
    if "test_acc" in c:
        t.append(_target("CIFAR-10 quick test accuracy, single view", c["test_acc"], ">=", 0.86))
        if c["test_acc_flip"] is not None:
            t.append(_target("CIFAR-10 quick test accuracy, flip TTA", c["test_acc_flip"], ">=", 0.86))
        t.append(_target("CIFAR-10 quick wall time (s)", c["wall_s"], "<=", 1200))
    return t


def run_benchmarks(quick: bool = False, cifar: bool = False, device: str = "auto",
                   precision: str = "auto") -> dict:
    """Every benchmark in one process; a JSON-serialisable dict (see the module doc)."""
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    s = Settings.for_mode(quick)
    dataset, data_note = bench_data()
    env = {**environment(str(dev), prec), "threads": torch.get_num_threads()}
    t0 = time.perf_counter()
    r: dict = {"environment": env, "mode": "quick" if quick else "default",
               "settings": dataclasses.asdict(s), "data": data_note}
    _log("attention blocks vs ResNet-20 (step time, peak memory)")
    r["attention"] = bench_attention(dev, prec, s)
    _log("bf16 vs fp32")
    r["precision"] = bench_precision(dev, s)
    _log(f"loaders on {dataset}")
    train = load_data(dataset).train
    r["loader"] = bench_loader(train, dev, r["attention"]["resnet20_step_ms"] / 1000, s)
    _log("fit vs a bare loop")
    r["fit"] = bench_fit(dataset, dev, prec, s)
    _log("evaluation memory of each model, each in a fresh process")
    r["eval_memory"] = bench_eval_memory(dataset, dev, prec, s)
    if cifar:
        _log("ResNet-20, quick profile, CIFAR-10 (about 20 minutes on a 2-core CPU)")
        r["cifar"] = bench_cifar()
    r["targets"] = _targets(r)
    r["wall_s"] = time.perf_counter() - t0
    return r


# -- the printed report ------------------------------------------------------------------

def _fmt(v, spec: str = ".3g") -> str:
    return "-" if v is None else format(v, spec) if isinstance(v, (int, float)) else str(v)


def _table(rows: list[dict], cols: list[tuple[str, str, str]]) -> list[str]:
    """Aligned text table; ``cols`` are (key, header, format spec)."""
    cells = [[h for _, h, _ in cols]] + [[_fmt(row.get(k), f) for k, _, f in cols] for row in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(cols))]
    return [("  " + "  ".join(c.ljust(w) for c, w in zip(line, widths))).rstrip() for line in cells]


def format_report(r: dict) -> str:
    env = r["environment"]
    out = [f"attnlab bench ({r['mode']} mode, {r.get('wall_s', 0):.0f} s): {env['device_name']}, "
           f"{env['device']}, default precision {env['precision']}, torch {env['torch']}",
           f"data: {r['data']}", "", f"Attention blocks vs ResNet-20 (training step, batch {r['attention']['batch_size']}):"]
    out += _table(r["attention"]["rows"], [("model", "model", ""), ("step_ms", "step ms", ".0f"),
                                           ("x_resnet20", "x ResNet-20", ".2f"),
                                           ("target_x", "target", ".1f"), ("extra_GiB", "extra GiB", ".3f")])
    p = r["precision"]
    out += ["", f"Precision: fp32 {p['fp32_step_ms']:.0f} ms, bf16 {p['bf16_step_ms']:.0f} ms per step: "
                f"bf16 {p['speedup']:.2f}x faster (native bf16: {'yes' if p['native_bf16'] else 'no'})",
            "", f"Loaders (batch {r['loader']['batch_size']}; ResNet-20 step {r['loader']['step_ms']:.0f} ms):"]
    out += _table(r["loader"]["rows"], [("loader", "loader", ""), ("ms_per_batch", "ms/batch", ".2f"),
                                        ("share_of_step", "share of step", ".1%")])
    f = r["fit"]
    out += ["", f"fit vs bare loop ({f['steps']} steps, {f['precision']}): fit {f['fit_images_per_s']:.0f} img/s, "
                f"bare {f['bare_images_per_s']:.0f} img/s, ratio {f['ratio']:.3f}"]
    e = r.get("eval_memory")
    if e:
        out += ["", f"Evaluation in a fresh process ({e['dataset']}, batches of {e['eval_batch']}, "
                    f"GradCAM on {e['gradcam_batch']} images, attention maps), peak resident memory:"]
        out += _table(e["rows"], [("model", "model", ""), ("images", "images", "d"),
                                  ("data_peak_GiB", "after loading data", ".2f"), ("peak_rss_GiB", "peak GiB", ".2f")])
    c = r.get("cifar")
    if c:
        out += ["", "ResNet-20, quick profile, CIFAR-10: " + (c["skipped"] if "skipped" in c else
                f"test acc {c['test_acc']:.4f} (flip TTA {_fmt(c['test_acc_flip'], '.4f')}) in "
                f"{c['wall_s'] / 60:.1f} min, {c['epochs']} epochs "
                f"({c['recipe']}{', from the run store' if c['from_run_store'] else ''})")]
    out += ["", "Targets:"]
    out += _table([{**t, "result": "PASS" if t["passed"] else "FAIL"} for t in r["targets"]],
                  [("name", "target", ""), ("value", "value", ".3g"), ("target", "limit", ""),
                   ("result", "result", "")])
    return "\n".join(out)


__all__ = ["run_benchmarks", "format_report", "bench_loader", "bench_fit", "bench_precision",
           "bench_attention", "bench_cifar", "explicit_attention", "Settings", "step_seconds"]
