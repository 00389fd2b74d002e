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
- papers' speed targets: every registered paper's :class:`~attnlab.papers.SpeedTarget`
  (``attnlab.get_paper(id).targets``). The models compared with one reference model are
  measured side by side in one run: training-step time relative to the reference and
  extra peak memory of a step; a target with a limit passes or fails, one without is
  measured only. In the full mode also, for each model with attention matrices that
  fit :data:`EXPLICIT_BUDGET`, the explicit ``softmax(q k^T) v`` that the fused kernel
  replaced (:func:`attnlab.layers.sdpa.explicit_attention`), for scale.
- evaluation memory: each of those networks (at its registered settings) evaluated in a
  fresh process as ``fit`` does (batches of 512), plus GradCAM on 128 images and
  attention maps, as the notebooks draw them; the process's peak resident memory.
  Target (all but the reference models): under 3 GiB.
- cifar (``cifar=True``): ResNet-20 at the ``quick`` profile on CIFAR-10 through the run
  store. Target: at least 86% test accuracy within 20 minutes.

Step time and peak memory are :mod:`attnlab.cost`'s measurements (one implementation).
Everything in the result dict is plain JSON; :func:`format_report` prints it.
"""
from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from . import cost
from .cost import step_seconds, sync
from .data import DataSplits, DeviceLoader, ImageSet, cached_datasets, channel_stats, load_data
from .explain import attention_maps, gradcam
from .hardware import (autocast, cpu_has_bf16, environment, resolve_device, resolve_memory_format, resolve_precision,
                       to_memory_format, training_memory_format)
from .layers import collect_maps
from .layers.sdpa import explicit_attention
from .papers import SpeedTarget, create_model, get_paper, list_papers
from .recipes import get_recipe
from .runs import RunConfig, train_or_load
from .train import evaluate, fit, seed_everything

BATCH = 128
GIB = 2**30
CIFAR_HINT = "python -m attnlab data import cifar10 --from ../shared/datasets/cifar10-jpg"


@dataclass(frozen=True)
class Settings:
    """How long to measure. ``quick`` takes one timed step per round and two rounds; its
    length grows with the papers' speed targets (about 10 minutes with all six papers on a
    busy 2-core CPU, most of it the larger models at batch 128)."""

    rounds: int            # alternating repeats; the medians are over these
    steps: int             # timed training steps per round and contender
    loader_batches: int    # timed batches per round and loader
    fit_steps: int         # steps per epoch in the fit-vs-loop comparison
    explicit: bool         # also time the explicit attention matrices
    batch_size: int = BATCH  # the targets are stated at 128; tests use less
    eval_images: int = 1024  # test images per model in the evaluation-memory check

    @classmethod
    def for_mode(cls, quick: bool) -> "Settings":
        if quick:
            return cls(rounds=2, steps=1, loader_batches=5, fit_steps=4, explicit=False, eval_images=512)
        return cls(rounds=5, steps=3, loader_batches=10, fit_steps=15, explicit=True)


EVAL_RSS_LIMIT = 3 * GIB
#: the explicit-matrix rows are skipped for models whose attention matrices (one forward
#: pass at the benchmark's batch size, fp32) would take more than this
EXPLICIT_BUDGET = 2 * GIB
MEASURES = ("step_time", "extra_memory_gib")


def _log(msg: str) -> None:
    # stderr, so that with --json the JSON object stays the last line of stdout
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def _target(name: str, value: float, op: str, limit: float, unit: str = "") -> dict:
    passed = value <= limit if op == "<=" else value >= limit if op == ">=" else value < limit
    return {"name": name, "value": float(value), "target": f"{op} {limit:g}{unit}", "passed": bool(passed)}


# -- timing primitives -------------------------------------------------------------------

def _step_s(model: torch.nn.Module, device: torch.device, precision: str, s: Settings,
            batch_size: Optional[int] = None, extra_steps: int = 0) -> float:
    """:func:`attnlab.cost.step_seconds` with the benchmark's steps and one warm-up step."""
    return step_seconds(model, batch_size or s.batch_size, device=device, precision=precision,
                        steps=s.steps + extra_steps, warmup=1)


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
        sync(device)
        t0 = time.perf_counter()
        for _ in range(batches):
            x, y = next(it)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        sync(device)
        out.append((time.perf_counter() - t0) / batches)
    return out


def bench_loader(train: ImageSet, device: torch.device, step_s: float, s: Settings) -> dict:
    """Data time per batch of each loader and its share of (data + ResNet-20 step)."""
    mean, std = channel_stats(train)
    bs = s.batch_size
    need = s.rounds * s.loader_batches + 8
    if len(train) < need * bs:
        raise ValueError(f"the loader benchmark needs {need * bs} images, got {len(train)}")
    loaders = {"attnlab DeviceLoader": (DeviceLoader(train, bs, mean=mean, std=std, shuffle=True,
                                                     augment="crop_flip", device=device,
                                                     memory_format=resolve_memory_format()), 1)}
    # a GPU machine's bare Python may lack torchvision: then attnlab's loader is timed alone
    for workers in (0, 2) if importlib.util.find_spec("torchvision") else ():
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
    """Images/s of the last of ``epochs`` windows of the plainest PyTorch training loop,
    in the memory layout ``fit`` trains in by default."""
    seed_everything(seed)
    layout = training_memory_format(model, device)
    model = to_memory_format(model.to(device), layout).train()
    loader = data.loader("train", recipe.batch_size, device, seed, memory_format=layout)
    opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                          nesterov=recipe.nesterov, weight_decay=recipe.weight_decay)
    rate = 0.0
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        sync(device)
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
        sync(device)
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
    model = create_model("resnet20")
    times = _alternate({p: (lambda p=p: _step_s(model, device, p, s, extra_steps=1))
                        for p in ("fp32", "bf16")}, s.rounds)
    native = cpu_has_bf16() if device.type == "cpu" else device.type == "cuda"
    return {"fp32_step_ms": 1000 * times["fp32"], "bf16_step_ms": 1000 * times["bf16"],
            "speedup": times["fp32"] / times["bf16"], "native_bf16": bool(native)}


# -- d. the papers' speed targets --------------------------------------------------------

def speed_targets() -> list[tuple[str, SpeedTarget]]:
    """Every registered paper's speed targets, as ``(paper id, target)``."""
    return [(pid, t) for pid in list_papers() for t in get_paper(pid).targets]


def contender_name(model: str, model_kw: Optional[dict] = None) -> str:
    """How a compared model is named in the report: the model, with its options if any."""
    kw = model_kw or {}
    return model if not kw else f"{model} ({', '.join(f'{k}={v}' for k, v in sorted(kw.items()))})"


def _groups(targets: list[tuple[str, SpeedTarget]], batch_size: int) -> dict[tuple[str, int], dict]:
    """``(reference, batch size) -> {name: (model, model_kw)}``, the reference first: the
    models measured side by side in one comparison."""
    groups: dict[tuple[str, int], dict] = {}
    for pid, t in targets:
        if t.measure not in MEASURES:
            raise ValueError(f"speed target {t.name!r} of paper {pid!r}: unknown measure {t.measure!r}; "
                             f"allowed: {', '.join(MEASURES)}")
        group = groups.setdefault((t.reference, min(t.batch_size, batch_size)), {t.reference: (t.reference, {})})
        group.setdefault(contender_name(t.model, t.model_kw), (t.model, dict(t.model_kw)))
    return groups


def attention_matrix_bytes(model: torch.nn.Module, batch_size: int,
                           input_shape: tuple[int, int, int] = (3, 32, 32)) -> int:
    """Bytes of the explicit fp32 attention matrices of one forward pass at ``batch_size``
    (0 for a model without attention maps), from one query row per block on one image."""
    probe = copy.deepcopy(model).eval()
    with torch.no_grad(), collect_maps(probe, query=(0, 0)) as maps:
        probe(torch.zeros(1, *input_shape))
    per_image = sum(a.shape[1] * a[0, 0, 0].numel() ** 2  # heads x (keys)^2, every row built
                    for kinds in maps.values() for kind, a in kinds.items() if kind == "attention")
    return 4 * batch_size * per_image


def _explicit_row(name: str, model: torch.nn.Module, device, precision, s: Settings, batch: int,
                  base: dict) -> Optional[dict]:
    """The model with every attention matrix built explicitly; None without attention maps."""
    need = attention_matrix_bytes(model, batch)
    if need == 0:
        return None
    row = {"model": f"{name}, explicit N x N", "x_reference": None, "extra_GiB": None}
    if need > EXPLICIT_BUDGET:
        return {**row, "step_ms": None, "note": f"skipped: its attention matrices alone would take "
                                                f"{need / GIB:.1f} GiB at batch {batch}"}
    with explicit_attention():
        t = _median([_step_s(model, device, precision, s, batch) for _ in range(s.rounds)])
        mem = cost.peak_memory(model, batch, device=device, precision=precision)
    return {**row, "step_ms": 1000 * t, "x_reference": t / base["step_s"],
            "extra_GiB": (mem - base["mem"]) / GIB if mem >= 0 and base["mem"] >= 0 else None,
            "note": "the formulation the fused kernel replaced; not the training path"}


def _measure_group(reference: str, batch: int, contenders: dict, device: torch.device, precision: str,
                   s: Settings) -> dict:
    """Step time and peak memory of each contender, alternated round by round with its reference."""
    models = {name: create_model(m, **kw) for name, (m, kw) in contenders.items()}
    times = _alternate({name: (lambda m=m: _step_s(m, device, precision, s, batch))
                        for name, m in models.items()}, s.rounds)
    mems = {name: cost.peak_memory(m, batch, device=device, precision=precision) for name, m in models.items()}
    base = {"step_s": times[reference], "mem": mems[reference]}
    rows = [{"model": name, "step_ms": 1000 * times[name], "x_reference": times[name] / base["step_s"],
             "extra_GiB": (mems[name] - base["mem"]) / GIB if mems[name] >= 0 and base["mem"] >= 0 else None}
            for name in models]
    if s.explicit:
        rows += [r for name, m in models.items() if name != reference
                 for r in [_explicit_row(name, m, device, precision, s, batch, base)] if r is not None]
    return {"reference": reference, "batch_size": batch, "step_ms": 1000 * base["step_s"],
            "peak_GiB": base["mem"] / GIB if base["mem"] >= 0 else None, "rows": rows}


def _comparison(pid: str, t: SpeedTarget, group: dict) -> dict:
    name = contender_name(t.model, t.model_kw)
    row = next(r for r in group["rows"] if r["model"] == name)
    value = row["x_reference"] if t.measure == "step_time" else row["extra_GiB"]
    return {"name": t.name, "paper": pid, "model": name, "reference": t.reference,
            "batch_size": group["batch_size"], "measure": t.measure, "value": value, "op": t.op,
            "limit": t.limit}


def bench_attention(device: torch.device, precision: str, s: Settings,
                    targets: Optional[list[tuple[str, SpeedTarget]]] = None) -> dict:
    """Every paper's speed targets (or ``targets``): per reference model, its contenders
    measured side by side; then one comparison per target (``limit`` None: measured only)."""
    targets = speed_targets() if targets is None else targets
    groups = {key: _measure_group(key[0], key[1], contenders, device, precision, s)
              for key, contenders in _groups(targets, s.batch_size).items()}
    comparisons = [_comparison(pid, t, groups[(t.reference, min(t.batch_size, s.batch_size))])
                   for pid, t in targets]
    # each compared network once, at its registered settings, for the evaluation-memory check
    # (variants such as fewer attention stages are measured for speed, not again for memory)
    names = dict.fromkeys(m for contenders in _groups(targets, s.batch_size).values()
                          for m, _ in contenders.values())
    return {"precision": precision, "groups": list(groups.values()), "comparisons": comparisons,
            "models": {name: {"model": name, "model_kw": {}} for name in names},
            "references": sorted({t.reference for _, t in targets})}


def reference_step_s(attention: dict, model: str, batch_size: int) -> Optional[float]:
    """Seconds per step of reference ``model`` at ``batch_size`` from :func:`bench_attention`."""
    for g in attention["groups"]:
        if g["reference"] == model and g["batch_size"] == batch_size:
            return g["step_ms"] / 1000
    return None


# -- e. evaluation memory ----------------------------------------------------------------

def _last_spatial_layer(model: torch.nn.Module, x: torch.Tensor) -> str:
    """The last module with a ``(B, C, H, W)`` output: GradCAM's usual layer."""
    found: list[str] = []
    names = {m: n for n, m in model.named_modules() if n}
    hooks = [m.register_forward_hook(lambda m, i, o: found.append(names[m])
                                     if torch.is_tensor(o) and o.ndim == 4 else None)
             for m in names]
    try:
        with torch.no_grad():
            model.eval()(x[:1])
    finally:
        for h in hooks:
            h.remove()
    if not found:
        raise ValueError(f"{type(model).__name__} has no layer with a (B, C, H, W) output for GradCAM")
    return found[-1]


def eval_peak_memory(model: str, dataset: str, images: int, device: str = "auto",
                     precision: str = "auto", model_kw: Optional[dict] = None) -> dict:
    """Meant for a fresh process: evaluate ``model`` (with ``model_kw``) as ``fit`` does,
    draw GradCAM (on the last spatial layer) and attention maps as the notebooks do, and
    return the process's peak resident memory (and the GPU's, on CUDA)."""
    dev = resolve_device(device)
    data = load_data(dataset, eval_subset=images)
    data_peak = cost.process_peak_rss()  # decoding the cache: a floor shared by every model
    net = create_model(model, num_classes=data.num_classes, in_channels=data.in_channels,
                       **(model_kw or {})).to(dev)
    evaluate(net, data.loader("test", 512, dev), resolve_precision(precision, dev), data.num_classes)
    x, _ = next(iter(data.loader("test", 128, dev)))
    gradcam(net, x, _last_spatial_layer(net, x))
    attention_maps(net, x[:8], query=(16, 16))
    out = {"model": contender_name(model, model_kw), "images": len(data.test),
           "data_peak_GiB": data_peak / GIB, "peak_rss_GiB": cost.process_peak_rss() / GIB}
    if dev.type == "cuda":
        out["peak_cuda_GiB"] = torch.cuda.max_memory_allocated(dev) / GIB
    return out


def bench_eval_memory(dataset: str, device: torch.device, precision: str, s: Settings,
                      models: dict[str, dict], references: Sequence[str] = ()) -> dict:
    """:func:`eval_peak_memory` for each of ``models`` (name -> ``{"model", "model_kw"}``),
    each in its own process (a clean peak); ``references`` are measured but have no target."""
    rows = []
    for name, spec in models.items():
        code = ("import json; from attnlab.bench import eval_peak_memory; "
                f"print(json.dumps(eval_peak_memory({spec['model']!r}, {dataset!r}, {s.eval_images}, "
                f"{str(device)!r}, {precision!r}, {spec['model_kw']!r})))")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"evaluation-memory check of {name} failed:\n{done.stderr[-2000:]}")
        rows.append({**json.loads(done.stdout.strip().splitlines()[-1]), "reference": name in references})
    return {"dataset": dataset, "eval_batch": 512, "gradcam_batch": 128, "rows": rows}


# -- f. ResNet-20 on CIFAR-10 at the quick profile ---------------------------------------

def bench_cifar(dataset: str = "cifar10", profile: str = "quick", recipe: str = "onecycle",
                model: str = "resnet20", runs_dir=None, progress: bool = True) -> dict:
    """Train (or load from the run store) ``model`` at ``profile``; accuracy and wall time."""
    if dataset != "shapes" and not {"train", "test"} <= set(cached_datasets().get(dataset, [])):
        return {"skipped": f"{dataset} is not imported; first run: {CIFAR_HINT}"}
    config = RunConfig(model, dataset, recipe, profile)
    run = train_or_load(config, runs_dir, progress=progress, live=False)
    if not run.finished:
        return {"skipped": "interrupted; run the benchmark again to resume"}
    m = run.metrics
    # a stored run reports the wall time it was trained in, on the device in env.json
    return {"model": model, "dataset": dataset, "profile": profile, "recipe": recipe,
            "test_acc": m["test_acc"], "test_acc_flip": m.get("test_acc_flip"),
            "wall_s": m["wall_s"], "epochs": m["epochs"],
            "from_run_store": run.from_store,
            "device": m["device"], "precision": m["precision"], "run_dir": str(run.dir)}


# -- all of it ---------------------------------------------------------------------------

def _targets(r: dict) -> list[dict]:
    t = []
    share = next(row["share_of_step"] for row in r["loader"]["rows"] if row["loader"].startswith("attnlab"))
    t.append(_target("attnlab loader share of a step", share, "<=", 0.02))
    t.append(_target("fit / bare loop images/s", r["fit"]["ratio"], ">=", 0.95))
    for c in r["attention"]["comparisons"]:
        if c["limit"] is not None and c["value"] is not None:
            t.append({**_target(c["name"], c["value"], c["op"], c["limit"],
                                "x" if c["measure"] == "step_time" else ""), "paper": c["paper"]})
    for row in (r.get("eval_memory") or {}).get("rows", []):
        if not row["reference"]:
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
    _log("the papers' speed targets: each model vs its reference (step time, peak memory)")
    r["attention"] = bench_attention(dev, prec, s)
    _log("bf16 vs fp32")
    r["precision"] = bench_precision(dev, s)
    _log(f"loaders on {dataset}")
    train = load_data(dataset).train
    step_s = reference_step_s(r["attention"], "resnet20", s.batch_size)
    if step_s is None:  # no paper compares with ResNet-20 at this batch size
        step_s = _median([_step_s(create_model("resnet20"), dev, prec, s) for _ in range(s.rounds)])
    r["loader"] = bench_loader(train, dev, step_s, s)
    _log("fit vs a bare loop")
    r["fit"] = bench_fit(dataset, dev, prec, s)
    _log("evaluation memory of each model, each in a fresh process")
    r["eval_memory"] = bench_eval_memory(dataset, dev, prec, s, r["attention"]["models"],
                                         r["attention"]["references"])
    if cifar:
        _log("ResNet-20, quick profile, CIFAR-10 (on 2 CPU cores: 20 min in bf16, 37 min in fp32)")
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


def _attention_report(a: dict) -> list[str]:
    out = []
    for g in a["groups"]:
        out += ["", f"Models vs {g['reference']} (training step, batch {g['batch_size']}, {a['precision']}; "
                    f"{g['reference']} {g['step_ms']:.0f} ms):"]
        out += _table(g["rows"], [("model", "model", ""), ("step_ms", "step ms", ".0f"),
                                  ("x_reference", f"x {g['reference']}", ".2f"),
                                  ("extra_GiB", "extra GiB", ".3f"), ("note", "note", "")])
    if a["comparisons"]:
        rows = [{**c, "limit": "measured only" if c["limit"] is None else f"{c['op']} {c['limit']:g}"}
                for c in a["comparisons"]]
        out += ["", "The papers' speed targets:"]
        out += _table(rows, [("paper", "paper", ""), ("name", "comparison", ""), ("value", "value", ".3g"),
                             ("limit", "limit", "")])
    return out


def format_report(r: dict) -> str:
    env = r["environment"]
    out = [f"attnlab bench ({r['mode']} mode, {r.get('wall_s', 0):.0f} s): {env['device_name']}, "
           f"{env['device']}, default precision {env['precision']}, torch {env['torch']}",
           f"data: {r['data']}"]
    out += _attention_report(r["attention"])
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
           "bench_attention", "bench_eval_memory", "bench_cifar", "speed_targets", "contender_name",
           "attention_matrix_bytes", "reference_step_s", "Settings"]
