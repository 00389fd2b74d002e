"""Execute every numbered notebook with papermill and gather their results in one report.

``reproduce("quick", "shapes")`` runs ``notebooks/[0-9][0-9]*.ipynb`` in order, one
kernel at a time (two torch processes on a small CPU slow each other down many times
over), and writes::

    reports/quick-shapes/
        00_getting_started.ipynb          the executed notebook, outputs and errors kept
        00_getting_started/results.json   what the notebook measured (its OUT_DIR)
        reproduce.json                    status, wall time and error per notebook, environment
        summary.md, summary.html          all of the above as tables

Each notebook gets exactly three parameters, ``PROFILE``, ``DATASET`` and ``OUT_DIR``
(an absolute path), which every notebook defines in its ``parameters`` cell; papermill
warns about any other name. A failing notebook is recorded with its error and the
others still run; :func:`failed_notebooks` tells the caller (the CLI exits non-zero).

Reproducibility checks (``reproduce --check references/smoke-shapes``): :func:`check_report`
compares every ``results.json`` of a report with a reference folder through
:mod:`attnlab.drift` (exact on the reference's environment fingerprint, stated tolerances
on another), writes ``drift.json`` beside ``reproduce.json`` and adds the drift to the
summary; :func:`update_reference` writes a report's results as the new references.
``threads`` and ``runs_dir`` set each kernel's torch thread count (``OMP_NUM_THREADS``,
``MKL_NUM_THREADS``) and run store (``ATTNLAB_RUNS``): a check trains into an empty store,
so that every number is computed now rather than loaded from runs an older version made.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import html
import json
import os
import time
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Optional

from .data import dataset_info
from .drift import (ABSENT, Drift, NotebookCheck, check_notebook, format_cell, machine_isa, read_fingerprints,
                    reference_threads, update_command, write_reference)
from .hardware import environment
from .paths import atomic_path
from .recipes import get_profile

NOTEBOOK_PATTERN = "[0-9][0-9]*.ipynb"
RECORD = "reproduce.json"
RESULTS = "results.json"
DRIFT = "drift.json"


def default_report_dir(profile: str, dataset: str, notebooks_dir: str | Path = "notebooks") -> Path:
    """``reports/<profile>-<dataset>`` beside the notebooks folder (the checkout's root)."""
    return Path(notebooks_dir).resolve().parent / "reports" / f"{profile}-{dataset}"


def reproduce(profile: str, dataset: str, notebooks_dir: str | Path = "notebooks",
              out_dir: str | Path | None = None, pattern: str = NOTEBOOK_PATTERN,
              kernel_name: str = "python3", cell_timeout: Optional[float] = None,
              progress: bool = True, threads: Optional[int] = None,
              runs_dir: str | Path | None = None) -> Path:
    """Run the notebooks matching ``pattern`` in ``notebooks_dir`` (cwd there) and return
    the report folder; ``cell_timeout`` (seconds) bounds every cell. ``threads`` and
    ``runs_dir`` (see :func:`kernel_settings`) default to this process's environment."""
    get_profile(profile)      # fail on a typo before any kernel starts
    dataset_info(dataset)
    nb_dir = Path(notebooks_dir).resolve()
    notebooks = sorted(nb_dir.glob(pattern))
    if not notebooks:
        raise FileNotFoundError(f"no notebooks matching {pattern!r} in {nb_dir}")
    report = Path(out_dir).resolve() if out_dir else default_report_dir(profile, dataset, nb_dir)
    report.mkdir(parents=True, exist_ok=True)
    record = {"profile": profile, "dataset": dataset, "notebooks_dir": str(nb_dir),
              "started": _dt.datetime.now().isoformat(timespec="seconds"),
              "environment": {**_environment(),
                              **{f"kernels {k}": v for k, v in kernel_settings(threads, runs_dir).items()}},
              "notebooks": []}
    # a drift record belongs to the results it was computed from
    (report / DRIFT).unlink(missing_ok=True)
    t0 = time.perf_counter()
    for i, nb in enumerate(notebooks, 1):
        if progress:
            print(f"[{i}/{len(notebooks)}] {nb.name} ...", flush=True)
        run = execute_notebook(nb, report, profile, dataset, kernel_name, cell_timeout,
                               kernel_env=kernel_settings(threads, runs_dir))
        record["notebooks"].append(run)
        record["wall_s"] = time.perf_counter() - t0
        # rewritten after each notebook so a killed reproduce still leaves a readable record
        _write_text(report / RECORD, json.dumps(record, indent=2, default=str))
        if progress:
            print(f"      {run['status']} in {_duration(run['wall_s'])}"
                  + (f": {_first_line(run['error'])}" if run["error"] else ""), flush=True)
    _write_text(report / "summary.md", summarize(report))
    _write_text(report / "summary.html", summarize(report, fmt="html"))
    return report


def _environment() -> dict:
    import torch

    env = environment()
    env["threads"] = torch.get_num_threads()
    env["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", "")
    env["cpu_isa"] = machine_isa()  # part of each notebook's fingerprint (attnlab.drift)
    return env


def kernel_settings(threads: Optional[int] = None, runs_dir: str | Path | None = None) -> dict[str, str]:
    """Environment variables for the notebook kernels: ``threads`` torch threads (both
    OpenMP and MKL, which torch otherwise lets disagree) and ``runs_dir`` as run store."""
    env = {}
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be a positive count, got {threads}")
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    if runs_dir is not None:
        env["ATTNLAB_RUNS"] = str(Path(runs_dir).resolve())
    return env


@contextlib.contextmanager
def _environ(settings: dict[str, str]) -> Iterator[None]:
    """``os.environ`` with ``settings`` while a kernel starts (it copies the environment)."""
    saved = {k: os.environ.get(k) for k in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def execute_notebook(nb: Path, report: Path, profile: str, dataset: str,
                     kernel_name: str = "python3", cell_timeout: Optional[float] = None,
                     kernel_env: Optional[dict[str, str]] = None) -> dict:
    """Execute one notebook into ``report``; never raises for a failure inside it.
    ``kernel_env`` (e.g. from :func:`kernel_settings`) is added to the kernel's environment."""
    import papermill as pm

    out_dir = report / nb.stem
    out_dir.mkdir(parents=True, exist_ok=True)
    # A results.json left by an earlier reproduce must not pass for this run's.
    (out_dir / RESULTS).unlink(missing_ok=True)
    error = None
    t0 = time.perf_counter()
    try:
        with _environ(kernel_env or {}):
            pm.execute_notebook(str(nb), str(report / nb.name), kernel_name=kernel_name,
                                parameters={"PROFILE": profile, "DATASET": dataset, "OUT_DIR": str(out_dir)},
                                cwd=str(nb.parent), execution_timeout=cell_timeout, progress_bar=False)
    except pm.PapermillExecutionError as exc:
        error = f"cell [{exc.exec_count}]: {exc.ename}: {exc.evalue}"
    except Exception as exc:  # noqa: BLE001 - a dead kernel or timeout is a result to report
        error = f"{type(exc).__name__}: {exc}"
    wall = time.perf_counter() - t0
    if error is None and not (out_dir / RESULTS).exists():
        error = f"the notebook finished but wrote no {RESULTS} into OUT_DIR"
    return {"notebook": nb.name, "status": "ok" if error is None else "failed", "wall_s": wall,
            "error": error, "output": nb.name, "results": f"{nb.stem}/{RESULTS}"}


def failed_notebooks(report_dir: str | Path) -> list[str]:
    """Names of the notebooks that failed in the last reproduce into ``report_dir``."""
    record = _load_record(Path(report_dir))
    return [r["notebook"] for r in record["notebooks"] if r.get("status") == "failed"]


def _stem(run: dict) -> str:
    return Path(run["notebook"]).stem


def check_report(report_dir: str | Path, reference_dir: str | Path) -> list[NotebookCheck]:
    """Compare every notebook's ``results.json`` in ``report_dir`` with its reference in
    ``reference_dir`` (see :mod:`attnlab.drift`) without executing anything; write
    ``drift.json`` and the summaries with the drift. A failed notebook is drift too.
    Raises FileNotFoundError for a missing reference folder or notebook reference."""
    report, ref = Path(report_dir), Path(reference_dir)
    record = _load_record(report)
    meta = read_fingerprints(ref)
    ours = (record.get("profile"), record.get("dataset"))
    if ours[0] and ours != (meta.get("profile"), meta.get("dataset")):
        raise ValueError(f"{report} was run at profile {ours[0]}, dataset {ours[1]}, but {ref} holds references "
                         f"for profile {meta.get('profile')}, dataset {meta.get('dataset')}")
    missing = [_stem(r) for r in record["notebooks"] if not (ref / _stem(r) / RESULTS).exists()]
    if missing:
        raise FileNotFoundError(
            f"no reference for {', '.join(missing)} in {ref}; write the references with `"
            + update_command(meta.get("profile", "smoke"), meta.get("dataset", "shapes"), ref,
                             reference_threads(meta)) + "` (--notebooks 'NN*.ipynb' writes only some)")
    env = record.get("environment") or {}
    isa = env["cpu_isa"] if "cpu_isa" in env else machine_isa()  # reports made before it was recorded
    checks = []
    for run in record["notebooks"]:
        results = _read_results(report, run)
        if results is None:
            why = "the notebook failed" if run.get("status") == "failed" else f"no readable {RESULTS}"
            checks.append(NotebookCheck(_stem(run), {}, {}, [Drift(_stem(run), RESULTS, "present", ABSENT, "-", why)]))
        else:
            checks.append(check_notebook(_stem(run), results, ref, isa))
    drift = {"reference": str(ref.resolve()), "checked": _dt.datetime.now().isoformat(timespec="seconds"),
             "notebooks": [c.to_dict() for c in checks]}
    _write_text(report / DRIFT, json.dumps(drift, indent=2, default=str))
    _write_text(report / "summary.md", summarize(report))
    _write_text(report / "summary.html", summarize(report, fmt="html"))
    return checks


def update_reference(report_dir: str | Path, reference_dir: str | Path, command: Optional[str] = None) -> list[str]:
    """Write the results of ``report_dir`` as the references in ``reference_dir``, with
    their fingerprints; only from a report where every notebook ran. Returns the stems."""
    report = Path(report_dir)
    record = _load_record(report)
    failed = [r["notebook"] for r in record["notebooks"] if r.get("status") == "failed"]
    results = {_stem(r): _read_results(report, r) for r in record["notebooks"]}
    unreadable = [stem for stem, res in results.items() if res is None]
    if failed or unreadable or not results:
        raise ValueError(f"{report}: {', '.join(failed + unreadable) or 'no notebooks'} failed or wrote no "
                         f"readable {RESULTS}; references are written only from a report where every notebook ran")
    first = next(iter(results.values()))
    profile = record.get("profile") or first.get("profile")
    dataset = record.get("dataset") or first.get("dataset")
    env = record.get("environment") or {}
    write_reference(reference_dir, results, profile, dataset, env.get("cpu_isa"), command)
    return list(results)


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


# -- reading a report ----------------------------------------------------------------------

def _load_record(report: Path) -> dict:
    """``reproduce.json``, or one rebuilt from the ``*/results.json`` found (no timings)."""
    path = report / RECORD
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))
    if not report.is_dir():
        raise FileNotFoundError(f"report folder {report} does not exist")
    runs = [{"notebook": p.parent.name, "status": "ok", "wall_s": None, "error": None,
             "output": None, "results": f"{p.parent.name}/{RESULTS}"}
            for p in sorted(report.glob(f"*/{RESULTS}"))]
    return {"profile": None, "dataset": None, "environment": None, "notebooks": runs}


def _read_results(report: Path, run: dict) -> Optional[dict]:
    path = report / run["results"]
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None
    return data if isinstance(data, dict) else {"value": data}


def _is_table(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def split_results(results: dict) -> tuple[list[tuple[str, Any]], dict[str, list[dict]]]:
    """Scalar entries (nested dicts flattened to ``a.b``) and list-of-dict tables."""
    scalars: list[tuple[str, Any]] = []
    tables: dict[str, list[dict]] = {}

    def walk(prefix: str, obj: dict) -> None:
        for k, v in obj.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict):
                walk(key + ".", v)
            elif _is_table(v):
                tables[key] = v
            else:
                scalars.append((key, v))

    walk("", results)
    return scalars, tables


def format_value(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        # long per-class lists or curves belong in the notebook, not in a summary cell
        return ", ".join(format_value(x) for x in v) if len(v) <= 12 else f"[{len(v)} values]"
    text = v if isinstance(v, str) else json.dumps(v, default=str)
    return text if len(text) <= 120 else text[:117] + "..."


def _duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{int(seconds // 60)} min {seconds % 60:02.0f} s"


def _first_line(text: Optional[str]) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else ""


# -- one document model, rendered as markdown or HTML ------------------------------------

class Link(NamedTuple):
    text: str
    href: str


Block = tuple  # ("h1" | "h2" | "p" | "pre", text) or ("table", headers, rows)


def _table(headers: list[str], rows: list[list[Any]]) -> Block:
    return ("table", headers, rows)


def _load_drift(report: Path) -> Optional[dict]:
    """``drift.json`` of the last :func:`check_report`, by notebook stem (None if unchecked)."""
    try:
        data = json.loads((report / DRIFT).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None
    return {**data, "by_notebook": {c["notebook"]: c for c in data.get("notebooks", [])}}


def _drift_cell(check: Optional[dict]) -> str:
    if check is None:
        return "not checked"
    n = len(check["drift"])
    return f"{n} value(s) ({'exact' if check['exact'] else 'tolerances'})" if n else \
        f"none ({'exact' if check['exact'] else 'within tolerances'})"


def _overview(record: dict, drift: Optional[dict] = None) -> list[Block]:
    rows = []
    for r in record["notebooks"]:
        name = Link(r["notebook"], r["output"]) if r.get("output") else r["notebook"]
        row = [name, r["status"], _duration(r.get("wall_s")), _first_line(r.get("error"))]
        if drift:
            row.insert(3, _drift_cell(drift["by_notebook"].get(_stem(r))))
        rows.append(row)
    total = sum(r.get("wall_s") or 0 for r in record["notebooks"])
    failed = sum(r["status"] == "failed" for r in record["notebooks"])
    line = f"{len(rows)} notebook(s), {failed} failed, {_duration(total)} in all."
    headers = ["notebook", "status", "wall time", "error"]
    if drift:
        drifted = [c for c in drift["notebooks"] if c["drift"]]
        line += (f" Checked against the references in {drift['reference']} on {drift.get('checked')}: "
                 f"{sum(len(c['drift']) for c in drifted)} value(s) drifted in {len(drifted)} notebook(s).")
        headers.insert(3, "drift")
    return [("h2", "Notebooks"), ("p", line), _table(headers, rows)]


def _run_blocks(run: dict, results: dict) -> list[Block]:
    """Wall time, device and versions of one notebook's kernel (its ``env``)."""
    env = results.get("env") if isinstance(results.get("env"), dict) else {}
    device = env.get("device")
    if env.get("device_name"):
        device = f"{device} ({env['device_name']})"
    return [_table(["wall time", "device", "precision", "torch threads", "torch", "attnlab", "python"],
                   [[_duration(run.get("wall_s")), device, env.get("precision"), env.get("threads"),
                     env.get("torch"), env.get("attnlab"), env.get("python")]])]


def _drift_blocks(check: dict, reference: str) -> list[Block]:
    rows = check["drift"]
    head = f"Against {reference}/{check['notebook']}: {check['mode']}. "
    if not rows:
        return [("h3", "Drift"), ("p", head + "No value drifted.")]
    return [("h3", "Drift"), ("p", head + f"{len(rows)} value(s) drifted:"),
            _table(["path", "reference", "now", "tolerance", "rule"],
                   # full float repr: a drift in the 7th digit must not print as two equal numbers
                   [[r["path"], format_cell(r["reference"], 80), format_cell(r["now"], 80), r["tolerance"],
                     r["rule"]] for r in rows])]


def _notebook_blocks(report: Path, run: dict, drift: Optional[dict] = None) -> list[Block]:
    blocks: list[Block] = [("h2", run["notebook"])]
    if run.get("error"):
        blocks += [("p", "Failed with:"), ("pre", run["error"])]
    check = drift["by_notebook"].get(_stem(run)) if drift else None
    results = _read_results(report, run)
    if results is None:
        blocks.append(("p", f"No readable {run['results']}."))
        return blocks + (_drift_blocks(check, drift["reference"]) if check else [])
    blocks += _run_blocks(run, results)
    if check:
        blocks += _drift_blocks(check, drift["reference"])
    scalars, tables = split_results(results)
    if scalars:
        blocks.append(_table(["entry", "value"], [[k, v] for k, v in scalars]))
    for name, rows in tables.items():
        cols = list(dict.fromkeys(c for row in rows for c in row))
        blocks += [("h3", name), _table(cols, [[row.get(c) for c in cols] for row in rows])]
    return blocks


def _blocks(report: Path, record: dict) -> list[Block]:
    profile, dataset = record.get("profile"), record.get("dataset")
    title = f"attnlab reproduction: profile {profile}, dataset {dataset}" if profile else \
        f"attnlab results: {report.name}"
    blocks: list[Block] = [("h1", title)]
    if profile:
        blocks.append(("p", f"Profile {profile}: {_profile_description(profile)}."))
    if record.get("started"):
        blocks.append(("p", f"Started {record['started']}; report folder {report}."))
    drift = _load_drift(report)
    blocks += _overview(record, drift)
    env = record.get("environment")
    if env:
        blocks += [("h2", "Environment"),
                   ("p", "Of the process that ran the notebooks; each notebook's kernel is described "
                         "in the notebook's section."),
                   _table(["setting", "value"], [[k, v] for k, v in env.items()])]
    for run in record["notebooks"]:
        blocks += _notebook_blocks(report, run, drift)
    return blocks


def _profile_description(name: str) -> str:
    try:
        return get_profile(name).description
    except ValueError:  # a report written by a version with other profiles
        return "unknown profile"


def _md_cell(v: Any) -> str:
    if isinstance(v, Link):
        return f"[{v.text}]({v.href})"
    return format_value(v).replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: list[Block]) -> str:
    out = []
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2", "h3"):
            out.append("#" * int(kind[1]) + " " + b[1])
        elif kind == "p":
            out.append(b[1])
        elif kind == "pre":
            out.append("```\n" + b[1].rstrip() + "\n```")
        else:
            headers, rows = b[1], b[2]
            lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
            out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


def _html_cell(v: Any) -> str:
    if isinstance(v, Link):
        return f'<a href="{html.escape(v.href)}">{html.escape(v.text)}</a>'
    return html.escape(format_value(v))


_CSS = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;"
        "padding:.25em .6em;text-align:left}th{background:#f3f3f3}pre{background:#fff3f3;"
        "padding:.6em;overflow-x:auto}")


def render_html(blocks: list[Block]) -> str:
    title = next((b[1] for b in blocks if b[0] == "h1"), "attnlab report")
    out = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
           f"<style>{_CSS}</style></head><body>"]
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2", "h3", "p", "pre"):
            out.append(f"<{kind}>{html.escape(b[1])}</{kind}>")
        else:
            head = "".join(f"<th>{html.escape(h)}</th>" for h in b[1])
            body = "".join("<tr>" + "".join(f"<td>{_html_cell(c)}</td>" for c in row) + "</tr>"
                           for row in b[2])
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
    return "\n".join(out) + "\n</body></html>\n"


def summarize(report_dir: str | Path, fmt: str = "markdown") -> str:
    """The report of ``report_dir`` as markdown (default) or ``fmt="html"``.

    Works on any folder of ``<notebook>/results.json`` files; wall times, errors and the
    environment come from ``reproduce.json`` when :func:`reproduce` wrote one.
    """
    if fmt not in ("markdown", "html"):
        raise ValueError(f"unknown format {fmt!r}; allowed: markdown, html")
    report = Path(report_dir)
    blocks = _blocks(report, _load_record(report))
    return render_markdown(blocks) if fmt == "markdown" else render_html(blocks)


__all__ = ["reproduce", "summarize", "failed_notebooks", "execute_notebook", "split_results",
           "default_report_dir", "kernel_settings", "check_report", "update_reference", "NOTEBOOK_PATTERN"]
