"""Grids and reproductions on submitit: worker processes on this machine, or SLURM jobs.

``ablate_on(base, grid, seeds, ExecutorSpec("slurm", workers=8, partition="gpu", gpus_per_job=1))``
submits ``workers`` jobs (one SLURM job array). Each job walks the grid's unfinished runs,
starting at its own offset so the jobs spread out, and trains each through
:func:`attnlab.runs.train_or_load`. The run store is the only thing the jobs share:

- a run another job is training is locked (``<run>.lock`` beside its folder): the job
  leaves it for later and, once through its list, waits for it and loads it;
- a job killed mid-run leaves a checkpoint and a lock whose holder is gone: the next job
  that wants the run breaks the lock (at once on the same host; on another host once the
  holder's heartbeat has been silent for :data:`attnlab.locks.STALE_AFTER_S`) and
  resumes the run from its checkpoint. Running the same command again does the same;
- a job SLURM stops at its time limit (or pre-empts) is requeued and resumes likewise.

When every job has ended the driver builds the table from the store with
:func:`attnlab.ablate.ablate` (which then only loads). ``ExecutorSpec("local", workers=2)``
runs the same jobs as subprocesses here (submitit's LocalExecutor), each with its share of
the CPU cores as torch threads: on a small CPU, two processes with one thread each rather
than two each fighting over two cores.

Each job writes a *journal* beside its submitit logs (``<log_dir>/<job id>_journal.jsonl``):
one line per epoch it trained (run, epoch, pid, host) and one per run it handled, with the
status ``trained``, ``resumed`` (and after which epoch) or ``loaded``. :func:`read_journal`
gathers them, so who trained what, and where a crashed run was picked up, can be checked.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import submitit
import torch
from submitit.core.utils import FailedJobError, UncompletedJobError

from .ablate import ablate, grid_configs
from .locks import LockHeldError, describe, read_lock
from .paths import runs_root
from .runs import RunConfig, check_seeds, is_finished, train_or_load

EXECUTORS = ("local", "slurm")
#: the local executor's time limit when none is given (submitit's own default is 2 minutes)
LOCAL_TIME_MIN = 7 * 24 * 60
#: the SLURM time limit when none is given (``--time``; submitit's default is 5 minutes)
SLURM_TIME_MIN = 4 * 60
JOURNAL = "_journal.jsonl"  # after the job id
STATUSES = ("trained", "resumed", "loaded")


class ExecutorUnavailableError(ValueError):
    """The executor asked for cannot run here (no SLURM on this machine)."""


class JobsFailedError(RuntimeError):
    """Jobs ended without finishing every run; the message names them and their logs."""


def parse_time(text: str | int | None) -> Optional[int]:
    """Whole minutes (rounded up) from a time limit in SLURM's forms: ``90`` (minutes),
    ``90:30`` (minutes:seconds), ``1:30:00`` (hours:minutes:seconds), ``2-12``,
    ``2-12:30`` or ``2-12:30:00`` (days-hours...)."""
    if text is None:
        return None
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", str(text).strip())
    if m is None or isinstance(text, bool):
        raise ValueError(f"--time must be in SLURM's form: minutes (90), minutes:seconds, "
                         f"hours:minutes:seconds (1:30:00) or days-hours[:minutes[:seconds]] "
                         f"(2-12), got {text!r}")
    days, a, b, c = m.groups()
    if days is not None:  # d-h, d-h:m, d-h:m:s
        seconds = ((int(days) * 24 + int(a)) * 60 + int(b or 0)) * 60 + int(c or 0)
    elif c is not None:   # h:m:s
        seconds = (int(a) * 60 + int(b)) * 60 + int(c)
    else:                 # m or m:s
        seconds = int(a) * 60 + int(b or 0)
    if seconds < 1:
        raise ValueError(f"--time must be longer than zero, got {text!r}")
    return -(-seconds // 60)


@dataclass
class ExecutorSpec:
    """Where jobs run and what each gets.

    - ``kind``: ``local`` (subprocesses on this machine) or ``slurm`` (needs ``sbatch``:
      run on the cluster's login node).
    - ``workers``: how many jobs share a grid (never more than its unfinished runs).
    - ``gpus_per_job``: default 0 on SLURM, this machine's GPU count locally (the local
      jobs then share them).
    - ``cpus_per_job``: torch threads per job (on SLURM also ``--cpus-per-task``); default
      locally: this machine's cores divided among the workers, on SLURM what it allots.
    - ``time``: limit per job, minutes or SLURM's forms (``1:30:00``, ``2-00``); a job that
      reaches it is requeued and resumes (SLURM).
    - ``log_dir``: submitit's folder (job scripts, pickles, logs, journals); default
      ``<run store>/submitit``, which the cluster's nodes see if they see the store.
    - ``slurm_args``: further ``#SBATCH`` options, e.g. ``{"account": "lab", "qos": "short"}``.
    """

    kind: str = "local"
    workers: int = 1
    partition: Optional[str] = None
    gpus_per_job: Optional[int] = None
    cpus_per_job: Optional[int] = None
    time: str | int | None = None
    log_dir: str | Path | None = None
    slurm_args: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in EXECUTORS:
            raise ValueError(f"unknown executor {self.kind!r}; allowed: {', '.join(EXECUTORS)}")
        for name in ("workers", "gpus_per_job", "cpus_per_job"):
            value = getattr(self, name)
            smallest = 0 if name == "gpus_per_job" else 1
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < smallest):
                raise ValueError(f"--{name.replace('_', '-')} must be an integer >= {smallest}, got {value!r}")
        self.minutes = parse_time(self.time)
        if self.kind == "local":
            given = [f"--{n}" for n, v in (("partition", self.partition), ("slurm-arg", self.slurm_args)) if v]
            if given:
                raise ValueError(f"{', '.join(given)}: only with --executor slurm (this is --executor local)")
        elif shutil.which("sbatch") is None:
            raise ExecutorUnavailableError(
                "--executor slurm needs SLURM's sbatch, which is not on this machine's PATH: run the "
                "command on the cluster's login node, or use --executor local (worker processes here)")

    def folder(self, runs_dir: str | Path | None = None) -> Path:
        return Path(self.log_dir or Path(runs_dir or runs_root()) / "submitit").resolve()

    def threads(self, jobs: int) -> Optional[int]:
        """torch threads per job; None: the cores the job may use (what SLURM allots)."""
        if self.cpus_per_job or self.kind == "slurm":
            return self.cpus_per_job
        return max(1, len(os.sched_getaffinity(0)) // jobs)

    def executor(self, folder: Path, name: str, jobs: int) -> submitit.Executor:
        """A submitit executor for ``jobs`` jobs; each job's files in ``folder`` start with its id."""
        folder.mkdir(parents=True, exist_ok=True)
        if self.kind == "local":
            ex = submitit.LocalExecutor(folder=folder)
            gpus = torch.cuda.device_count() if self.gpus_per_job is None else self.gpus_per_job
            ex.update_parameters(timeout_min=self.minutes or LOCAL_TIME_MIN, gpus_per_node=gpus)
            return ex
        ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
        params: dict[str, Any] = {
            "name": name, "timeout_min": self.minutes or SLURM_TIME_MIN, "nodes": 1, "tasks_per_node": 1,
            "gpus_per_node": self.gpus_per_job or 0, "slurm_array_parallelism": jobs}
        if self.partition:
            params["slurm_partition"] = self.partition
        if self.cpus_per_job:
            params["cpus_per_task"] = self.cpus_per_job
        if self.slurm_args:
            params["slurm_additional_parameters"] = dict(self.slurm_args)
        ex.update_parameters(**params)
        return ex


# -- inside a job -----------------------------------------------------------------------

def _set_threads(threads: Optional[int]) -> None:
    """``threads`` torch threads, default the cores this process may use (what SLURM allotted:
    torch's own default counts the whole node's cores); its subprocesses inherit the count."""
    threads = threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)


class _Journal:
    """Appends this job's events to ``<log folder>/<job id>_journal.jsonl`` (one writer per
    file: appends from several hosts to one file can interleave on a network file system)."""

    def __init__(self):
        try:
            env = submitit.JobEnvironment()
            self.path, self.job = Path(env.paths.folder) / f"{env.job_id}{JOURNAL}", env.job_id
        except RuntimeError:  # called outside a submitit job: no journal
            self.path, self.job = None, None

    def write(self, **event) -> None:
        if self.path is None:
            return
        event.update(job=self.job, pid=os.getpid(), host=socket.gethostname(), time=time.time())
        with open(self.path, "a") as f:
            f.write(json.dumps(event, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())


def _say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


@dataclass
class GridWorker(submitit.helpers.Checkpointable):
    """One job of a grid: ``worker(index, count)`` trains or loads every config, starting
    at its share of the list, and returns one record per run. Requeued after a time-out
    (the store resumes each run)."""

    configs: list
    runs_dir: str
    threads: Optional[int] = None

    def __call__(self, index: int, count: int) -> list[dict]:
        _set_threads(self.threads)
        journal = _Journal()
        start = index * len(self.configs) // max(1, count)
        order = self.configs[start:] + self.configs[:start]
        _say(f"worker {index + 1}/{count}: {len(order)} run(s) in {self.runs_dir}, "
             f"{torch.get_num_threads()} torch thread(s)")
        records, later, failed = [], [], []
        for wait, todo in ((False, order), (True, later)):
            for cfg in todo:
                try:
                    records.append(self._one(cfg, journal, wait))
                except LockHeldError:
                    lock = Path(self.runs_dir) / f"{cfg.dirname}.lock"
                    _say(f"later: {cfg.dirname} is being trained by {describe(read_lock(lock) or {}, lock)}")
                    later.append(cfg)
                except Exception as exc:  # noqa: BLE001 - one bad run must not stop the grid
                    _say(f"failed {cfg.dirname}: {type(exc).__name__}: {exc}")
                    journal.write(event="run", run=cfg.dirname, status="failed", error=str(exc))
                    failed.append(f"{cfg.dirname} ({type(exc).__name__}: {exc})")
        if failed:
            raise RuntimeError(f"{len(failed)} run(s) failed: {'; '.join(failed)}")
        return records

    def _one(self, cfg: RunConfig, journal: _Journal, wait: bool) -> dict:
        epochs: list[int] = []

        def record(history) -> None:  # called under the run's lock after each epoch's checkpoint
            epochs.append(len(history.rows))
            journal.write(event="epoch", run=cfg.dirname, epoch=len(history.rows))

        t0 = time.perf_counter()
        run = train_or_load(cfg, self.runs_dir, progress=False, live=False,
                            lock_timeout=None if wait else 0, callbacks=(record,))
        if not run.finished:  # SIGINT (a cancelled job): the checkpoint stays for the next job
            raise KeyboardInterrupt(f"interrupted during {run.dir}")
        if run.from_store:
            status, after = "loaded", None
        else:  # fit resumed after the checkpoint's epoch when the first epoch it ran was later
            after = (epochs[0] - 1) if epochs else run.metrics["epochs"]
            status, after = ("resumed", after) if after else ("trained", None)
        seconds = time.perf_counter() - t0
        journal.write(event="run", run=cfg.dirname, status=status, resumed_after=after,
                      epochs=run.metrics["epochs"])
        _say(f"{status} {cfg.dirname}" + (f" after epoch {after}" if after else "") + f" ({seconds:.1f} s)")
        return {"run": cfg.dirname, "status": status, "resumed_after": after, "seconds": seconds}


@dataclass
class _Call(submitit.helpers.Checkpointable):
    """A function run as one job, with its thread count set (reproduce on an executor)."""

    fn: Callable
    threads: Optional[int] = None

    def __call__(self, *args, **kwargs):
        _set_threads(self.threads)
        return self.fn(*args, **kwargs)


# -- the driver --------------------------------------------------------------------------

def unique_configs(configs: Iterable[RunConfig]) -> list[RunConfig]:
    """``configs`` without repeats of one run (two spellings of a config share its folder)."""
    seen, out = set(), []
    for cfg in configs:
        if cfg.dirname not in seen:
            seen.add(cfg.dirname)
            out.append(cfg)
    return out


def submit_grid(configs: Iterable[RunConfig], spec: ExecutorSpec, runs_dir: str | Path | None = None,
                name: str = "attnlab-ablate", progress: bool = True) -> list[submitit.Job]:
    """Submit jobs for the unfinished runs among ``configs`` and return them at once
    (none when every run is already in the store)."""
    runs = Path(runs_dir or runs_root()).resolve()
    todo = [c for c in unique_configs(configs) if not is_finished(c, runs)]
    if not todo:
        return []
    count = min(spec.workers, len(todo))
    folder = spec.folder(runs)
    executor = spec.executor(folder, name, count)
    worker = GridWorker(todo, str(runs), spec.threads(count))
    jobs = executor.map_array(worker, range(count), [count] * count)
    if progress:
        _say(f"submitted {count} {spec.kind} job(s) for {len(todo)} unfinished run(s): "
             f"{', '.join(j.job_id for j in jobs)}; logs in {folder}")
    return jobs


def _job_error(exc: Exception) -> str:
    """The line that says what went wrong in submitit's report of a failed job: the job's
    own exception (the last ``SomeError: ...`` line of its traceback), else the first line
    (a job killed outright "has not produced any output")."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    raised = [line for line in lines if re.match(r"[\w.]+(Error|Exception|Interrupt)\b", line)]
    return (raised[-1] if raised else " ".join(lines[:2]) or "no output")[:500]


def wait_for(jobs: list[submitit.Job], progress: bool = True) -> tuple[list[dict], list[str]]:
    """Wait for every job; return the records of the runs they handled and one line per
    job that failed (its error and log)."""
    records, failures = [], []
    for job in jobs:
        try:
            out = job.result()
        except (UncompletedJobError, FailedJobError, RuntimeError) as exc:
            failures.append(f"job {job.job_id} failed ({_job_error(exc)}); log {job.paths.stderr}")
            continue
        records += out
        if progress:
            counts = {s: sum(r["status"] == s for r in out) for s in STATUSES}
            _say(f"job {job.job_id}: " + ", ".join(f"{s} {n}" for s, n in counts.items()))
    for line in failures if progress else ():
        print(f"attnlab: {line}", file=sys.stderr, flush=True)
    return records, failures


def ablate_on(base: RunConfig, grid: dict, seeds: Iterable[int] = (0,), spec: Optional[ExecutorSpec] = None,
              *, runs_dir: str | Path | None = None, progress: bool = True, **table_kw):
    """:func:`attnlab.ablate.ablate` with the training done by ``spec``'s jobs: submit,
    wait, then build the table from the store (``table_kw`` go to ``ablate``)."""
    seeds = check_seeds(seeds)
    spec = spec or ExecutorSpec()
    runs = Path(runs_dir or runs_root()).resolve()
    configs = [cfg.replace(seed=s) for _, cfg in grid_configs(base, grid) for s in seeds]
    _, failures = wait_for(submit_grid(configs, spec, runs, progress=progress), progress)
    missing = [c.dirname for c in unique_configs(configs) if not is_finished(c, runs)]
    if missing:
        raise JobsFailedError(
            f"{len(missing)} run(s) not finished: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"
            f"{'; ' + '; '.join(failures) if failures else ''}. Run the same command again (once what failed "
            f"is fixed): finished runs are loaded, interrupted ones resume from their checkpoints")
    return ablate(base, grid, seeds, runs_dir=runs, progress=False, **table_kw)


def call_on(spec: ExecutorSpec, fn: Callable, *args, name: str = "attnlab", progress: bool = True, **kwargs):
    """Run ``fn(*args, **kwargs)`` as one job of ``spec`` and return its result."""
    folder = spec.folder()
    job = spec.executor(folder, name, 1).submit(_Call(fn, spec.threads(1)), *args, **kwargs)
    if progress:
        _say(f"submitted {spec.kind} job {job.job_id}: {name}; log {job.paths.stdout}")
    try:
        return job.result()
    except (UncompletedJobError, FailedJobError) as exc:
        raise JobsFailedError(f"job {job.job_id} failed ({_job_error(exc)}); log {job.paths.stderr}") from None


def journal_path(job: submitit.Job) -> Path:
    """Where ``job`` writes its journal."""
    return Path(job.paths.folder) / f"{job.job_id}{JOURNAL}"


def read_journal(log_dir: str | Path) -> list[dict]:
    """Every job's journal under ``log_dir``, as one list of events in time order."""
    events = []
    for path in sorted(Path(log_dir).glob(f"*{JOURNAL}")):
        lines = path.read_text().split("\n")[:-1]  # not a last line cut short by a kill
        events += [json.loads(line) for line in lines if line.strip()]
    return sorted(events, key=lambda e: e["time"])
