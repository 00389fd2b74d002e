"""The command line: ``python -m attnlab <command>`` (or the ``attnlab`` script).

    info                                  versions, device, precision, data and runs folders
    data list | data import NAME --from DIR
    train --model M --dataset D ...       one run through the run store (--json: last line)
    runs                                  the finished runs as a table (--json)
    papers [ID]                           the source papers; one paper's models, claims, ablations
    ablate --model M --grid K=V1,V2 ...   a grid of runs over seeds: mean and spread
    bench [--quick] [--cifar-quick]       speed and memory ratios, measured in one process
    reproduce --profile P --dataset D     every notebook with papermill, then a summary
    reproduce --check REFERENCE_DIR       the same, compared with committed references (exit 1 on drift)
    gpu-check [--cifar DIR]               on a CUDA machine: GPU tests, benchmark, quick CIFAR-10 run
    tune PAPER --trials N                 a paper's Hyperband search (Optuna), resumable
    student-copy DIR                      the notebooks without solutions and outputs, to hand out
    leaderboard [--dataset D --seeds S]   every attention block on ResNet-20, one recipe: accuracy and cost

Each command is one ``_add_<name>`` function that builds its sub-parser and sets
``func``, so a new command is one more function in :data:`COMMANDS`. Bad input (an
unknown name, missing data offline, a malformed option) prints one line
``attnlab: error: ...`` and exits with 2; ``ATTNLAB_DEBUG=1`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence

from .data import DataUnavailableError
from .executors import JobsFailedError
from .locks import LockHeldError
from .train import CheckpointError, NonFiniteLossError

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
# OSError: a read-only or full runs/data folder, a missing path, a run locked by another
# process (each raised with a message that names the folder and what to do)
EXPECTED_ERRORS = (ValueError, TypeError, DataUnavailableError, OSError)
# Training that went wrong (NaN loss, a checkpoint of another run, jobs that left runs
# unfinished): the message says what to do.
TRAINING_ERRORS = (NonFiniteLossError, CheckpointError, JobsFailedError)


def _json_dict(text: str) -> dict:
    """argparse type for ``--model-kw '{"attn": "cbam"}'``."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc.msg}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object like '{{\"key\": 1}}', got {text!r}")
    return value


def _seed_list(text: str) -> list[int]:
    """argparse type for ``--seeds 0,1,2``."""
    try:
        return [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integer seeds like 0,1,2, got {text!r}") from None


def _print_json(obj) -> None:
    # Scripts read the last line, so the object must be on exactly one line.
    print(json.dumps(obj, default=str, separators=(",", ":")), flush=True)


# -- info --------------------------------------------------------------------------------

def _add_info(sub) -> None:
    p = sub.add_parser("info", help="versions, device, precision, data found, runs folder")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_info)


def _cached_text(cached: dict[str, list[str]]) -> str:
    if not cached:
        return "none (shapes and relations are built in and need no cache)"
    return ", ".join(f"{name} ({'/'.join(splits)})" for name, splits in cached.items())


def cmd_info(args) -> int:
    import torch

    from .data import cached_datasets
    from .hardware import environment
    from .paths import data_root, runs_root

    env = environment()
    runs = runs_root()
    info = {**env, "threads": torch.get_num_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", ""),
            "cuda_available": torch.cuda.is_available(), "data_root": str(data_root()),
            "cached_datasets": cached_datasets(), "runs_root": str(runs),
            "finished_runs": len(list(runs.glob("*/metrics.json")))}
    if args.json:
        _print_json(info)
        return 0
    print(f"attnlab {env['attnlab']}  python {env['python']}  torch {env['torch']}  "
          f"torchvision {env['torchvision']}")
    rows = [("device", f"{env['device']}: {env['device_name']}"), ("precision", env["precision"]),
            ("threads", f"{info['threads']} (OMP_NUM_THREADS={info['OMP_NUM_THREADS'] or 'unset'})"),
            ("platform", env["platform"]), ("data root", info["data_root"]),
            ("cached data", _cached_text(info["cached_datasets"])),
            ("runs root", f"{info['runs_root']} ({info['finished_runs']} finished runs)")]
    for k, v in rows:
        print(f"{k:<12} {v}")
    return 0


# -- data --------------------------------------------------------------------------------

def _add_data(sub) -> None:
    p = sub.add_parser("data", help="list the datasets or import an offline copy")
    dsub = p.add_subparsers(dest="data_command", metavar="{list,import}", required=True)
    ls = dsub.add_parser("list", help="datasets, descriptions and whether they are cached")
    ls.add_argument("--root", help="data folder (default: ATTNLAB_DATA or the checkout's data/)")
    ls.set_defaults(func=cmd_data_list)
    imp = dsub.add_parser("import", help="decode an offline ImageFolder copy into the cache once")
    imp.add_argument("name", help="cifar10, cifar100 or mnist")
    imp.add_argument("--from", dest="source", required=True,
                     help="folder with train/ and test/ (folders or .tar.gz)")
    imp.add_argument("--root", help="data folder (default: ATTNLAB_DATA or the checkout's data/)")
    imp.set_defaults(func=cmd_data_import)


def cmd_data_list(args) -> int:
    from .data import DATASETS, GENERATED, cached_datasets
    from .paths import data_root

    cached = cached_datasets(args.root)
    print(f"data root: {args.root or data_root()}")
    for name, info in DATASETS.items():
        if name in GENERATED:
            state = "built in"
        elif name == "imagefolder":
            state = "your path"
        else:
            state = ("cached: " + "/".join(cached[name])) if name in cached else "not cached"
        print(f"  {name:<12} {state:<20} {info.description}")
    return 0


def cmd_data_import(args) -> int:
    from .data import import_dataset

    if not Path(args.source).exists():
        raise FileNotFoundError(f"--from {args.source}: no such folder")
    t0 = time.perf_counter()
    counts = import_dataset(args.name, args.source, args.root)
    seconds = time.perf_counter() - t0
    split_text = ", ".join(f"{split} {n}" for split, n in counts.items())
    print(f"imported {args.name} from {args.source}: {split_text} images in {seconds:.1f} s")
    return 0


# -- train -------------------------------------------------------------------------------

def _add_config_args(p) -> None:
    """The options that make up a RunConfig, shared by ``train`` and ``ablate``."""
    p.add_argument("--model", required=True, help="a name from attnlab.list_models()")
    p.add_argument("--dataset", default="shapes")
    p.add_argument("--recipe", default="he2016")
    p.add_argument("--profile", default="quick", help="smoke, quick or full")
    p.add_argument("--model-kw", type=_json_dict, default={}, metavar="JSON",
                   help='model keywords, e.g. \'{"attn": "cbam"}\'')


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train (or load from the run store) one model")
    _add_config_args(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--recipe-kw", type=_json_dict, default={}, metavar="JSON",
                   help='recipe overrides, e.g. \'{"lr": 0.05}\'')
    p.add_argument("--data-kw", type=_json_dict, default={}, metavar="JSON",
                   help='data options, e.g. \'{"path": "my.tar.gz"}\' for imagefolder')
    p.add_argument("--no-cache", action="store_true", help="retrain even if the run is stored")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", help="auto, bf16, fp16 or fp32")
    p.add_argument("--json", action="store_true", help="last line: one JSON object of the results")
    p.set_defaults(func=cmd_train)


def _check_config(config, device: str) -> None:
    """Raise on a bad name or keyword before the run folder is made or data is loaded."""
    from .data import dataset_info
    from .hardware import resolve_device, resolve_precision
    from .papers import create_model, list_models
    from .recipes import get_recipe

    if config.model not in list_models():
        raise ValueError(f"unknown model {config.model!r}; available: {', '.join(list_models())}")
    dataset_info(config.dataset)
    get_recipe(config.recipe, config.profile, config.dataset, **config.recipe_kw)
    resolve_precision(config.precision)
    resolve_device(device)
    create_model(config.model, **config.model_kw)  # unknown model keywords fail here, cheaply


def cmd_train(args) -> int:
    from .paths import runs_root
    from .runs import RunConfig, train_or_load

    config = RunConfig(args.model, args.dataset, args.recipe, args.profile, args.seed,
                       model_kw=args.model_kw, recipe_kw=args.recipe_kw, data_kw=args.data_kw,
                       precision=args.precision)
    _check_config(config, args.device)
    run_dir = runs_root() / config.dirname
    fresh = not run_dir.exists()
    try:
        run = train_or_load(config, use_cache=not args.no_cache, progress=not args.json,
                            device=args.device, live=False)
    except EXPECTED_ERRORS as exc:
        if fresh and not (run_dir / "checkpoint.pt").exists() and not isinstance(exc, LockHeldError):
            # failed before its first epoch (data missing, a bad path): nothing worth keeping
            # (a locked run's folder belongs to the process that holds the lock)
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    if not run.finished:
        print(f"attnlab: interrupted; run again to resume from {run.dir}", file=sys.stderr)
        return 130
    cached = run.from_store  # not "was there a result before": a damaged one was just retrained
    m = run.metrics
    print(f"{config.model} on {config.dataset} ({config.recipe}, {config.profile}, seed {config.seed})"
          f"{' [from the run store]' if cached else ''}: test acc {m['test_acc']:.4f}"
          f"{_flip_note(m)}, "
          f"val acc {m['val_acc']:.4f}, {m['epochs']} epochs, {m['wall_s']:.1f} s, {run.dir}")
    if args.json:
        _print_json({"model": config.model, "dataset": config.dataset, "recipe": config.recipe,
                     "profile": config.profile, "seed": config.seed, "test_acc": m["test_acc"],
                     "test_acc_flip": m.get("test_acc_flip"), "val_acc": m["val_acc"], "epochs": m["epochs"], "wall_s": m["wall_s"],
                     "device": m["device"], "precision": m["precision"], "cached": cached,
                     "run_dir": str(run.dir)})
    return 0


def _flip_note(metrics: dict) -> str:
    flip = metrics.get("test_acc_flip")
    return "" if flip is None else f" (flip TTA {flip:.4f})"


# -- ablate ------------------------------------------------------------------------------

def _grid_axis(text: str) -> tuple[str, list]:
    """argparse type for ``--grid merge=plain,residual`` (values parsed as JSON if they can be)."""
    key, sep, values = text.partition("=")
    if not sep or not key or not values:
        raise argparse.ArgumentTypeError(f"expected KEY=V1,V2,..., got {text!r}")

    def parse(v: str):
        try:
            return json.loads(v)
        except json.JSONDecodeError:
            return v

    return key, [parse(v) for v in values.split(",")]


def _key_value(text: str) -> tuple[str, str]:
    """argparse type for ``--slurm-arg account=lab``."""
    key, sep, value = text.partition("=")
    if not sep or not key or not value:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (an sbatch option without --), got {text!r}")
    return key, value


def _add_executor_args(p, grid: bool) -> None:
    """Options that send the work to submitit jobs (``attnlab.executors``), shared by
    ``ablate`` and ``reproduce``."""
    g = p.add_argument_group("executors (submitit; without --executor everything runs in this process)")
    g.add_argument("--executor", choices=["local", "slurm"],
                   help="local: worker processes on this machine; slurm: jobs on the cluster (needs sbatch)")
    if grid:
        g.add_argument("--workers", type=int, default=1, help="how many jobs share the grid (default 1)")
    g.add_argument("--partition", help="SLURM partition")
    g.add_argument("--gpus-per-job", type=int, help="GPUs per job (default: 0 on SLURM, all of this machine's locally)")
    g.add_argument("--cpus-per-job", type=int,
                   help="CPU cores (torch threads) per job (default locally: the cores divided among the workers)")
    g.add_argument("--time", help="time limit per job: minutes or SLURM's forms, e.g. 1:30:00 (SLURM default 4:00:00)")
    g.add_argument("--log-dir", help="submitit's folder for job scripts, logs and journals "
                                     "(default: <runs folder>/submitit)")
    g.add_argument("--slurm-arg", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="another sbatch option, e.g. account=lab or qos=short; repeatable")


def _executor_spec(args):
    """The ExecutorSpec the options ask for, or None to run in this process."""
    from .executors import ExecutorSpec

    opts = ("partition", "gpus_per_job", "cpus_per_job", "time", "log_dir", "slurm_arg")
    if args.executor is None:
        given = [f"--{o.replace('_', '-')}" for o in opts if getattr(args, o) is not None and getattr(args, o) != []]
        if getattr(args, "workers", 1) != 1:
            given.append("--workers")
        if given:
            raise ValueError(f"{', '.join(given)}: only with --executor local or --executor slurm")
        return None
    return ExecutorSpec(args.executor, getattr(args, "workers", 1), args.partition, args.gpus_per_job,
                        args.cpus_per_job, args.time, args.log_dir, dict(args.slurm_arg))


def _add_ablate(sub) -> None:
    p = sub.add_parser("ablate", help="train or load a grid of runs over seeds; mean and spread")
    _add_config_args(p)
    p.add_argument("--grid", type=_grid_axis, action="append", required=True, metavar="KEY=V1,V2",
                   help="a grid axis: a RunConfig field (model, recipe, ...) or a model keyword "
                        "(merge, reduction, ...); repeat for more axes")
    p.add_argument("--seeds", type=_seed_list, default=[0], help="comma-separated seeds, e.g. 0,1,2")
    p.add_argument("--json", action="store_true", help="last line: the table as a JSON list")
    _add_executor_args(p, grid=True)
    p.set_defaults(func=cmd_ablate)


def cmd_ablate(args) -> int:
    from .ablate import ablate, grid_configs
    from .runs import RunConfig

    base = RunConfig(args.model, args.dataset, args.recipe, args.profile, model_kw=args.model_kw)
    grid = dict(args.grid)
    seeds = args.seeds
    for _, config in grid_configs(base, grid):
        _check_config(config, "auto")
    spec = _executor_spec(args)
    if spec is None:
        table = ablate(base, grid, seeds, progress=not args.json)
    else:
        from .executors import ablate_on

        table = ablate_on(base, grid, seeds, spec)
    print(table.to_string(index=False))
    if args.json:
        _print_json(table.to_dict(orient="records"))
    return 0


# -- runs --------------------------------------------------------------------------------

RUN_COLUMNS = ["model", "dataset", "recipe", "profile", "seed", "model_kw", "test_acc",
               "val_acc", "epochs", "wall_s", "device"]


def _add_runs(sub) -> None:
    p = sub.add_parser("runs", help="the finished runs in the run store")
    p.add_argument("--json", action="store_true", help="last line: {\"runs\": [...]}")
    p.set_defaults(func=cmd_runs)


def cmd_runs(args) -> int:
    from .paths import runs_root
    from .runs import list_runs

    df = list_runs()
    if args.json:
        _print_json({"runs_root": str(runs_root()), "runs": df.to_dict("records")})
        return 0
    if df.empty:
        print(f"no finished runs under {runs_root()}")
        return 0
    print(df[[c for c in RUN_COLUMNS if c in df]].to_string(index=False, float_format="{:.4f}".format))
    print(f"{len(df)} run(s) under {runs_root()}")
    return 0


# -- leaderboard -------------------------------------------------------------------------

def _add_leaderboard(sub) -> None:
    p = sub.add_parser("leaderboard", help="every attention block on ResNet-20, one recipe, over seeds")
    p.add_argument("--dataset", default="relations", help="default: relations (where global context matters)")
    p.add_argument("--profile", default="quick", help="smoke | quick | full (default quick)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds of training allowed here (default: no limit: train every missing run)")
    p.add_argument("--train-slow", action="store_true", help="also train the models marked slow on a CPU (MHA)")
    p.add_argument("--no-costs", action="store_true", help="skip the speed and memory measurements")
    p.add_argument("--json", action="store_true", help="print the table as JSON")
    p.set_defaults(func=cmd_leaderboard)


def cmd_leaderboard(args) -> int:
    from . import leaderboard as lb

    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    plan = lb.plan_leaderboard(args.dataset, args.profile, seeds, budget_s=args.budget, train_slow=args.train_slow)
    print(plan.describe(), file=sys.stderr)
    runs = lb.run_leaderboard(plan, progress=not args.json)
    costs = lb.leaderboard_costs(plan, speed=not args.no_costs, memory=not args.no_costs)
    table = lb.leaderboard_table(runs, costs, lb.localisation(runs, args.dataset))
    print(table.to_json(orient="records") if args.json else table.to_string(index=False, float_format="%.4g"))
    return 0


# -- papers ------------------------------------------------------------------------------

def _add_papers(sub) -> None:
    p = sub.add_parser("papers", help="the source papers; with an id: its models, published numbers, ablations")
    p.add_argument("paper", nargs="?", help="a paper id (see the list without one)")
    p.add_argument("--json", action="store_true", help="last line: one JSON object")
    p.set_defaults(func=cmd_papers)


def _settings(name: Optional[str], kw: dict) -> str:
    """``cbam(merge=residual)``: a backbone or block with the settings a model gives it."""
    if not name:
        return "-"
    return f"{name}({', '.join(f'{k}={v}' for k, v in kw.items())})" if kw else name


def _count_params(model: str) -> int:
    import torch

    from .papers import create_model

    with torch.device("meta"):  # shapes only: no memory, no initialisation work
        return sum(p.numel() for p in create_model(model).parameters())


def _paper_models(paper) -> list[dict]:
    return [{"name": m.name, "label": m.label, "backbone": _settings(m.backbone, m.backbone_kw),
             "block": _settings(m.attn, m.attn_kw), "recipe": m.recipe, "params": _count_params(m.name),
             "pinned": m.params, "slow_on_cpu": m.slow_on_cpu} for m in paper.models]


def _cell(value) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:,}" if isinstance(value, int) and value >= 10_000 else str(value)  # counts, not years


def _print_table(rows: list[dict], columns: dict[str, str]) -> None:
    """Left-aligned columns ``{key: header}``, indented under a heading."""
    if not rows:
        print("  (none)")
        return
    cells = [list(columns.values())] + [[_cell(r.get(k)) for k in columns] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    for line in cells:
        print(("  " + "  ".join(c.ljust(w) for c, w in zip(line, widths))).rstrip())


def cmd_papers(args) -> int:
    from .papers import get_paper, list_papers

    if args.paper is None:
        rows = [{"id": p.id, "year": p.year or "-", "models": len(p.models), "title": p.title, "link": p.link}
                for p in map(get_paper, list_papers())]
        if args.json:
            _print_json({"papers": rows})
        else:
            _print_table(rows, {"id": "id", "year": "year", "models": "models", "title": "title", "link": "link"})
            print("details: python -m attnlab papers ID")
        return 0
    paper = get_paper(args.paper)  # an unknown id raises, naming the known ones
    models = _paper_models(paper)
    claims = paper.claims_frame().to_dict("records")
    axes = [{"model": a.model, "parameter": a.parameter, "values": ", ".join(map(str, a.values)),
             "label": a.label} for a in paper.ablations]
    if args.json:
        _print_json({"id": paper.id, "title": paper.title, "authors": paper.authors, "year": paper.year,
                     "link": paper.link, "notebook": paper.notebook, "models": models, "claims": claims,
                     "ablations": axes})
        return 0
    print(f"{paper.id}: {paper.title}")
    print(", ".join(str(x) for x in (paper.authors, paper.year, paper.link) if x) + (f"; notebook {paper.notebook}" if paper.notebook else ""))
    print("\nModels (params: counted now for 10 classes, pinned: as the paper module states it):")
    _print_table(models, {"name": "model", "label": "label", "backbone": "backbone", "block": "block",
                          "recipe": "recipe", "params": "params", "pinned": "pinned",
                          "slow_on_cpu": "slow on CPU"})
    print("\nPublished numbers (quoted as published; accuracies and errors in %):")
    _print_table(claims, {k: k for k in ("model", "dataset", "metric", "value", "split", "setting",
                                         "protocol", "source")})
    print("\nAblation axes:")
    _print_table(axes, {k: k for k in ("model", "parameter", "values", "label")})
    return 0


# -- bench -------------------------------------------------------------------------------

def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="loader, fit, precision and attention speed/memory ratios")
    p.add_argument("--quick", action="store_true", help="fewer repeats and steps (minutes on a CPU; grows with the papers' speed targets)")
    p.add_argument("--cifar-quick", action="store_true",
                   help="also train ResNet-20 at the quick profile on CIFAR-10 (must be imported; on 2 CPU "
                        "cores 20 min in bf16, 37 min in fp32)")
    p.add_argument("--out", help="also write the results as JSON to this file")
    p.add_argument("--json", action="store_true", help="last line: one JSON object of the results")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    from .bench import format_report, run_benchmarks

    results = run_benchmarks(quick=args.quick, cifar=args.cifar_quick)
    print(format_report(results))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2, default=str))
        print(f"results written to {args.out}")
    if args.json:
        _print_json(results)
    return 0


# -- reproduce ---------------------------------------------------------------------------

def _add_reproduce(sub) -> None:
    from .reproduce import NOTEBOOK_PATTERN

    p = sub.add_parser("reproduce", help="execute every notebook with papermill, then summarise")
    p.add_argument("--profile", choices=["smoke", "quick", "full"],
                   help="required, except with --check (then the references' profile)")
    p.add_argument("--dataset", help="default: shapes, or with --check the references' dataset")
    p.add_argument("--notebooks", default=NOTEBOOK_PATTERN, metavar="GLOB",
                   help=f"which notebooks (default {NOTEBOOK_PATTERN!r}); a path part names the folder")
    p.add_argument("--notebooks-dir", help="folder of the notebooks (default: the checkout's notebooks/)")
    p.add_argument("--out", help="report folder (default: reports/<profile>-<dataset>)")
    p.add_argument("--cell-timeout", type=float, help="seconds allowed per cell")
    p.add_argument("--kernel", default="python3", help="Jupyter kernel name")
    p.add_argument("--check", metavar="REFERENCE_DIR",
                   help="compare every results.json with the references there (e.g. references/smoke-shapes): "
                        "print each drifted value, exit 1 on drift")
    p.add_argument("--update-reference", metavar="REFERENCE_DIR",
                   help="(re)write the references there from this run, with its environment fingerprint")
    p.add_argument("--no-execute", action="store_true",
                   help="with --check or --update-reference: use the existing report in --out, run nothing")
    p.add_argument("--threads", type=int, metavar="N",
                   help="torch threads in each kernel (default: inherited; with --check, the references')")
    _add_executor_args(p, grid=False)
    p.set_defaults(func=cmd_reproduce)


def _notebooks_dir(args) -> tuple[Path, str]:
    """Split ``--notebooks notebooks/0*.ipynb`` into a folder and a pattern."""
    from .paths import PROJECT_ROOT

    pattern = Path(args.notebooks)
    if pattern.parent != Path("."):
        # a path part names the folder, relative to --notebooks-dir or the current folder
        return Path(args.notebooks_dir or ".") / pattern.parent, pattern.name
    if args.notebooks_dir:
        return Path(args.notebooks_dir), pattern.name
    local, checkout = Path("notebooks"), PROJECT_ROOT / "notebooks"
    # run from outside the checkout: use its notebooks rather than fail
    return (local if local.is_dir() or not checkout.is_dir() else checkout), pattern.name


def _reproduce_settings(args) -> tuple[str, str, dict]:
    """Profile, dataset and the references' fingerprint.json (``{}`` without --check)."""
    from .drift import read_fingerprints

    if args.check and args.update_reference:
        raise ValueError("--check and --update-reference exclude each other: check against references, "
                         "or (re)write them")
    if args.no_execute and not (args.check or args.update_reference):
        raise ValueError("--no-execute needs --check or --update-reference (there is nothing else to do)")
    meta = read_fingerprints(args.check) if args.check else {}
    profile, dataset = args.profile or meta.get("profile"), args.dataset or meta.get("dataset") or "shapes"
    if not profile:
        raise ValueError("reproduce needs --profile (smoke, quick or full), or --check REFERENCE_DIR "
                         "to use the references' profile")
    if meta and (profile, dataset) != (meta.get("profile"), meta.get("dataset")):
        raise ValueError(f"{args.check} holds references for profile {meta.get('profile')}, dataset "
                         f"{meta.get('dataset')}; drop --profile/--dataset or pass those")
    return profile, dataset, meta


def _run_notebooks(args, profile: str, dataset: str, meta: dict) -> Path:
    import contextlib
    import tempfile

    from .drift import reference_threads
    from .reproduce import default_report_dir, reproduce

    nb_dir, pattern = _notebooks_dir(args)
    spec = _executor_spec(args)
    if args.no_execute:
        report = Path(args.out) if args.out else default_report_dir(profile, dataset, nb_dir)
        if not report.is_dir():
            raise FileNotFoundError(f"report folder {report} does not exist; run reproduce without --no-execute")
        return report
    threads = args.threads if args.threads is not None else reference_threads(meta)
    if threads:
        print(f"kernels use {threads} torch thread(s)" + ("" if args.threads else " (as the references)"))
    # checks and references train into an empty store: every number computed now
    isolated = args.check or args.update_reference
    # (with an executor, beside its logs: a SLURM job's node must see it)
    shared = spec and spec.folder()
    if shared and isolated:
        shared.mkdir(parents=True, exist_ok=True)
    with (tempfile.TemporaryDirectory(prefix="attnlab-runs-", dir=shared) if isolated else contextlib.nullcontext()) as runs:
        kw = dict(kernel_name=args.kernel, cell_timeout=args.cell_timeout, threads=threads, runs_dir=runs)
        if spec is None:
            report = reproduce(profile, dataset, nb_dir, args.out, pattern, **kw)
        else:  # one job; absolute paths, as a SLURM job may start in another folder
            from .executors import call_on

            report = call_on(spec, reproduce, profile, dataset, nb_dir.resolve(),
                             args.out and Path(args.out).resolve(), pattern, name="attnlab-reproduce", **kw)
    print(f"summary: {report / 'summary.md'} and {report / 'summary.html'}")
    return report


def cmd_reproduce(args) -> int:
    from .drift import drift_table, update_command
    from .reproduce import NOTEBOOK_PATTERN, check_report, failed_notebooks, update_reference

    profile, dataset, meta = _reproduce_settings(args)
    report = _run_notebooks(args, profile, dataset, meta)
    failed = failed_notebooks(report) if (report / "reproduce.json").exists() else []
    if failed:
        print(f"attnlab: {len(failed)} notebook(s) failed: {', '.join(failed)}", file=sys.stderr)
    if args.update_reference:
        if failed:
            print(f"attnlab: references in {args.update_reference} not written", file=sys.stderr)
            return EXIT_FAILED
        pattern = None if args.notebooks == NOTEBOOK_PATTERN else args.notebooks
        stems = update_reference(report, args.update_reference,
                                 update_command(profile, dataset, args.update_reference, args.threads, pattern))
        print(f"wrote {len(stems)} reference(s) to {args.update_reference}: {', '.join(stems)}")
    if args.check:
        checks = check_report(report, args.check)
        rows = [d for c in checks for d in c.drift]
        for c in checks:
            print(f"{c.notebook}: {len(c.drift)} drifted ({c.mode})")
        if rows:
            print(drift_table(rows))
            print(f"attnlab: {len(rows)} value(s) drifted from {args.check} in "
                  f"{sum(bool(c.drift) for c in checks)} notebook(s); see {report / 'summary.md'}", file=sys.stderr)
            return EXIT_FAILED
        print(f"no drift from {args.check} in {len(checks)} notebook(s)")
    return EXIT_FAILED if failed else 0


# -- gpu-check ---------------------------------------------------------------------------

def _add_gpu_check(sub) -> None:
    p = sub.add_parser("gpu-check", help="on a CUDA machine: GPU tests, benchmark, timed quick CIFAR-10 run")
    p.add_argument("--cifar", help="offline CIFAR-10 copy (train/ and test/ folders or .tar.gz), needed once")
    p.add_argument("--out", default="reports/gpu-check", help="report folder (default: reports/gpu-check)")
    p.add_argument("--quick-bench", action="store_true", help="the benchmark's quick mode")
    p.set_defaults(func=cmd_gpu_check)


def cmd_gpu_check(args) -> int:
    from .gpucheck import GpuCheckError, gpu_check

    try:
        report = gpu_check(args.cifar, Path(args.out), args.quick_bench)
    except GpuCheckError as exc:
        raise ValueError(str(exc)) from None  # one line, exit status 2
    print(f"gpu-check {'PASS' if report['ok'] else 'FAIL'}: {Path(args.out) / 'gpu-check.md'}")
    return 0 if report["ok"] else EXIT_FAILED


# -- tune --------------------------------------------------------------------------------

def _add_tune(sub) -> None:
    p = sub.add_parser("tune", help="a paper's Hyperband search through the run store (resumes)")
    p.add_argument("paper", help="a paper with a search, e.g. embedding_attention")
    p.add_argument("--trials", type=int, required=True, help="finished trials the study should hold")
    p.add_argument("--dataset", default="shapes")
    p.add_argument("--profile", default="quick", help="smoke, quick (narrow models, a CPU) or full")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-epochs", type=int, help="Hyperband's largest budget (default: the profile's)")
    p.add_argument("--sampler", default="random", help="random (as Keras Tuner) or tpe")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="last line: the best configuration as JSON")
    p.set_defaults(func=cmd_tune)


def cmd_tune(args) -> int:
    from .data import dataset_info
    from .tune import search

    dataset_info(args.dataset)
    result = search(args.paper, args.trials, args.dataset, args.profile, seed=args.seed,
                    max_epochs=args.max_epochs, sampler=args.sampler, device=args.device)
    if args.json:
        _print_json(result.best)
    return 0


# -- student-copy ------------------------------------------------------------------------

def _add_student_copy(sub) -> None:
    p = sub.add_parser("student-copy", help="write the notebooks without solution cells and outputs, to hand out")
    p.add_argument("dir", help="folder for the copies (new, or empty; --force overwrites the notebooks there)")
    p.add_argument("--notebooks", help="folder of the notebooks (default: the checkout's notebooks/)")
    p.add_argument("--source", help="pip source the copies' install cell uses when ATTNLAB_SOURCE is unset "
                                    "(a git URL such as git+https://..., or a wheel's path or URL)")
    p.add_argument("--force", action="store_true", help="write into a folder that is not empty")
    p.set_defaults(func=cmd_student_copy)


def cmd_student_copy(args) -> int:
    from .course import README, student_copy
    from .paths import PROJECT_ROOT

    local, checkout = Path("notebooks"), PROJECT_ROOT / "notebooks"
    nb_dir = Path(args.notebooks) if args.notebooks else (local if local.is_dir() or not checkout.is_dir() else checkout)
    removed = student_copy(args.dir, nb_dir, force=args.force, source=args.source)
    for name, n in removed.items():
        print(f"  {name}: {n} solution cell(s) removed")
    print(f"{len(removed)} notebook(s) from {nb_dir} written to {args.dir} without solutions and outputs "
          f"({sum(removed.values())} solution cells removed); see {Path(args.dir) / README}")
    return 0


# -- entry point -------------------------------------------------------------------------

EXAMPLES = """examples:
  python -m attnlab info
  python -m attnlab papers cnntention
  python -m attnlab data import cifar10 --from ../shared/datasets/cifar10-jpg
  python -m attnlab train --model resnet20 --dataset shapes --profile smoke --json
  python -m attnlab bench --quick
  python -m attnlab reproduce --profile quick --dataset shapes"""

COMMANDS: list[Callable] = [_add_info, _add_data, _add_train, _add_ablate, _add_runs, _add_papers, _add_bench,
                            _add_reproduce, _add_gpu_check, _add_tune, _add_student_copy,
                            _add_leaderboard]


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors on one line (``attnlab: error: ...``, exit 2), like
    every other expected failure; sub-command parsers inherit it."""

    def error(self, message: str):
        sub = self.prog.split(" ", 1)[1] + ": " if " " in self.prog else ""
        self.exit(EXIT_BAD_INPUT, f"attnlab: error: {sub}{' '.join(message.split())} "
                                  f"(see: {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from .version import __version__

    parser = _Parser(
        prog="attnlab", description="attnlab: a workbook on attention in CNNs, from the command line.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"attnlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def _one_line(exc: BaseException) -> str:
    # DataUnavailableError explains the manual route over several lines; keep one
    return " ".join(str(exc).split()) or type(exc).__name__


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings (a damaged file set aside, a cache rebuilt) as one line each, without the
    source line Python would print under them."""
    print(f"attnlab: warning: {_one_line(message)}", file=sys.stderr)


def _report(exc: BaseException, code: int) -> int:
    if os.environ.get("ATTNLAB_DEBUG"):
        raise exc
    print(f"attnlab: error: {_one_line(exc)}", file=sys.stderr)
    return code


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one command; returns the exit status (0 ok, 1 failed work, 2 bad input)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and argparse's own usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_BAD_INPUT
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _warning_line
            return int(args.func(args) or 0)
    except EXPECTED_ERRORS as exc:
        return _report(exc, EXIT_BAD_INPUT)
    except TRAINING_ERRORS as exc:
        return _report(exc, EXIT_FAILED)
    except KeyboardInterrupt:
        print("attnlab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
