"""Grids on submitit executors: real worker processes sharing one run store, one killed."""
import json
import os
import signal
import stat
import time
from collections import defaultdict

import pytest

from attnlab import RunConfig
from attnlab.ablate import grid_configs
from attnlab.cli import main
from attnlab.executors import (ExecutorSpec, ablate_on, journal_path, parse_time, read_journal,
                               submit_grid, wait_for)
from attnlab.locks import read_lock
from attnlab.runs import is_finished, run_path
from attnlab.train import load_checkpoint, previous_checkpoint

EPOCHS = 6
# Smoke-size runs (a tiny ResNet, 4 batches an epoch), long enough to be killed in the middle.
BASE = RunConfig("resnet20", profile="smoke", model_kw={"depth": 8, "widths": [4, 8, 16]},
                 recipe_kw={"epochs": EPOCHS}, data_kw={"eval_subset": 64})
GRID_A, SEEDS_A = {"shortcut": ["A", "B"]}, [0]
GRID_B, SEEDS_B = {"shortcut": ["A"]}, [0, 1]  # shares (shortcut A, seed 0) with grid A


def _configs(grid, seeds):
    return [cfg.replace(seed=s) for _, cfg in grid_configs(BASE, grid) for s in seeds]


def _first_epoch(job, timeout=240.0) -> dict:
    """The first epoch ``job`` finished (from its journal), as soon as it is written."""
    path, deadline = journal_path(job), time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            lines = path.read_text().split("\n")[:-1]  # complete lines only
            epochs = [e for e in map(json.loads, lines) if e["event"] == "epoch"]
            if epochs:
                return epochs[0]
        assert not job.done(), f"job {job.job_id} ended before training an epoch: {job.paths.stderr}"
        time.sleep(0.05)
    pytest.fail(f"job {job.job_id} trained no epoch in {timeout:.0f} s")


def _wait_done(job, timeout=60.0) -> None:
    deadline = time.monotonic() + timeout
    while not job.done():
        assert time.monotonic() < deadline, f"job {job.job_id} still running"
        time.sleep(0.1)


def test_two_workers_on_overlapping_grids_one_killed(tmp_path):
    runs, logs = tmp_path / "runs", tmp_path / "logs"
    spec = ExecutorSpec("local", workers=1, cpus_per_job=1, log_dir=logs)  # one torch thread per worker
    [job_a] = submit_grid(_configs(GRID_A, SEEDS_A), spec, runs, progress=False)
    [job_b] = submit_grid(_configs(GRID_B, SEEDS_B), spec, runs, progress=False)
    try:
        # kill worker A (SIGKILL: no clean-up) one epoch into its first run, holding its lock
        victim = _first_epoch(job_a)
        victim_dir = runs / victim["run"]
        holder = read_lock(victim_dir.with_name(victim_dir.name + ".lock"))
        assert holder["pid"] == victim["pid"] != os.getpid()
        os.kill(victim["pid"], signal.SIGKILL)
        _wait_done(job_a)
        assert not is_finished(victim_dir)
        # where a resume must start (as fit picks it: the newest checkpoint, else the one before)
        ckpt = next(p for p in (victim_dir / "checkpoint.pt", previous_checkpoint(victim_dir / "checkpoint.pt"))
                    if p.exists())
        saved = load_checkpoint(ckpt)["epoch"]

        # grid A again (as one reruns the command) while worker B is still at work
        table_a = ablate_on(BASE, GRID_A, SEEDS_A, spec, runs_dir=runs, progress=False)
        records_b, failures_b = wait_for([job_b], progress=False)
        assert failures_b == [] and len(records_b) == 2
        table_b = ablate_on(BASE, GRID_B, SEEDS_B, spec, runs_dir=runs, progress=False)  # all stored: no job
    finally:
        for job in (job_a, job_b):
            if not job.done():
                job.cancel()

    every = {c.dirname: c for c in _configs(GRID_A, SEEDS_A) + _configs(GRID_B, SEEDS_B)}
    assert len(every) == 3
    events = read_journal(logs)
    trained = defaultdict(list)  # run -> [(epoch, pid)] in time order, over all workers
    for e in events:
        if e["event"] == "epoch":
            trained[e["run"]].append((e["epoch"], e["pid"]))
    assert set(trained) == set(every)
    for run, seq in trained.items():
        # one worker per run and epoch: two training it at once would repeat or interleave epochs
        pids = [pid for _, pid in seq]
        sessions = [p for i, p in enumerate(pids) if i == 0 or pids[i - 1] != p]
        if run != victim["run"]:
            assert [ep for ep, _ in seq] == list(range(1, EPOCHS + 1)) and len(sessions) == 1, (run, seq)
            continue
        # the killed worker's epochs, then one other worker's from the epoch after its checkpoint
        # (the kill may land after an epoch's checkpoint, before that epoch's journal line)
        killed = [ep for ep, pid in seq if pid == victim["pid"]]
        assert 1 <= saved < EPOCHS and killed == list(range(1, len(killed) + 1)) and len(killed) in (saved, saved - 1)
        assert sessions[0] == victim["pid"] and len(sessions) == 2, seq
        assert [ep for ep, pid in seq if pid == sessions[1]] == list(range(saved + 1, EPOCHS + 1)), seq
    done = [e for e in events if e["event"] == "run" and e["status"] != "loaded"]
    assert sorted(e["run"] for e in done) == sorted(every)  # each run finished exactly once
    assert [(e["run"], e["status"], e["resumed_after"]) for e in done if e["status"] != "trained"] == \
        [(victim["run"], "resumed", saved)]  # from the checkpoint the killed worker left
    assert not [e for e in events if e.get("status") == "failed"]

    for cfg in every.values():
        d = run_path(cfg, runs)
        metrics = json.loads((d / "metrics.json").read_text())
        assert metrics["epochs"] == EPOCHS and not (d / "checkpoint.pt").exists()
    assert not list(runs.glob("*.lock"))

    def acc(shortcut, seed):
        cfg = BASE.replace(seed=seed, model_kw={**BASE.model_kw, "shortcut": shortcut})
        return json.loads((run_path(cfg, runs) / "metrics.json").read_text())["test_acc"]

    assert list(table_a["shortcut"]) == ["A", "B"] and list(table_a["seeds"]) == [1, 1]
    assert list(table_a["test_acc_mean"]) == pytest.approx([acc("A", 0), acc("B", 0)])
    assert list(table_b["shortcut"]) == ["A"] and list(table_b["seeds"]) == [2]
    assert table_b["test_acc_mean"][0] == pytest.approx((acc("A", 0) + acc("A", 1)) / 2)


def test_slurm_without_sbatch_says_what_is_allowed(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))
    argv = ["ablate", "--model", "resnet20", "--profile", "smoke", "--grid", "shortcut=A,B",
            "--executor", "slurm", "--partition", "gpu", "--gpus-per-job", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "sbatch" in err and "login node" in err and "--executor local" in err
    assert main(["ablate", "--model", "resnet20", "--grid", "shortcut=A", "--partition", "gpu"]) == 2
    assert "only with --executor" in capsys.readouterr().err


def test_slurm_jobs_are_one_array_with_the_options_asked_for(tmp_path, monkeypatch):
    """No cluster here: a stand-in sbatch keeps the script submitit writes."""
    bin_dir, script = tmp_path / "bin", tmp_path / "submitted.sh"
    bin_dir.mkdir()
    for name, body in (("sbatch", f'cp "$1" {script}\necho "Submitted batch job 4242"'), ("srun", "exit 0")):
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    spec = ExecutorSpec("slurm", workers=2, partition="gpu", gpus_per_job=1, cpus_per_job=4,
                        time="1:30:00", log_dir=tmp_path / "logs", slurm_args={"account": "lab"})
    jobs = submit_grid(_configs(GRID_B, SEEDS_B) + _configs(GRID_A, SEEDS_A), spec, tmp_path / "runs",
                       progress=False)
    assert [j.job_id for j in jobs] == ["4242_0", "4242_1"]
    text = script.read_text()
    for line in ("--partition=gpu", "--gpus-per-node=1", "--cpus-per-task=4", "--time=90",
                 "--array=0-1%2", "--account=lab", "--job-name=attnlab-ablate"):
        assert f"#SBATCH {line}\n" in text, line
    assert parse_time("2-12") == 60 * 60 and parse_time("90:30") == 91
