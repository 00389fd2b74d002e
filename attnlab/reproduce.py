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
"""
from __future__ import annotations

import datetime as _dt
import html
import json
import os
import time
from pathlib import Path
from typing import Any, NamedTuple, Optional

from .data import dataset_info
from .hardware import environment
from .paths import atomic_path
from .recipes import get_profile

NOTEBOOK_PATTERN = "[0-9][0-9]*.ipynb"
RECORD = "reproduce.json"
RESULTS = "results.json"


def default_report_dir(profile: str, dataset: str, notebooks_dir: str | Path = "notebooks") -> Path:
    """``reports/<profile>-<dataset>`` beside the notebooks folder (the checkout's root)."""
    return Path(notebooks_dir).resolve().parent / "reports" / f"{profile}-{dataset}"


def reproduce(profile: str, dataset: str, notebooks_dir: str | Path = "notebooks",
              out_dir: str | Path | None = None, pattern: str = NOTEBOOK_PATTERN,
              kernel_name: str = "python3", cell_timeout: Optional[float] = None,
              progress: bool = True) -> Path:
    """Run the notebooks matching ``pattern`` in ``notebooks_dir`` (cwd there) and return
    the report folder; ``cell_timeout`` (seconds) bounds every cell."""
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
              "environment": _environment(), "notebooks": []}
    t0 = time.perf_counter()
    for i, nb in enumerate(notebooks, 1):
        if progress:
            print(f"[{i}/{len(notebooks)}] {nb.name} ...", flush=True)
        run = execute_notebook(nb, report, profile, dataset, kernel_name, cell_timeout)
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
    return env


def execute_notebook(nb: Path, report: Path, profile: str, dataset: str,
                     kernel_name: str = "python3", cell_timeout: Optional[float] = None) -> dict:
    """Execute one notebook into ``report``; never raises for a failure inside it."""
    import papermill as pm

    out_dir = report / nb.stem
    out_dir.mkdir(parents=True, exist_ok=True)
    # A results.json left by an earlier reproduce must not pass for this run's.
    (out_dir / RESULTS).unlink(missing_ok=True)
    error = None
    t0 = time.perf_counter()
    try:
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


def _overview(record: dict) -> list[Block]:
    rows = []
    for r in record["notebooks"]:
        name = Link(r["notebook"], r["output"]) if r.get("output") else r["notebook"]
        rows.append([name, r["status"], _duration(r.get("wall_s")), _first_line(r.get("error"))])
    total = sum(r.get("wall_s") or 0 for r in record["notebooks"])
    failed = sum(r["status"] == "failed" for r in record["notebooks"])
    line = f"{len(rows)} notebook(s), {failed} failed, {_duration(total)} in all."
    return [("h2", "Notebooks"), ("p", line), _table(["notebook", "status", "wall time", "error"], rows)]


def _notebook_blocks(report: Path, run: dict) -> list[Block]:
    blocks: list[Block] = [("h2", run["notebook"])]
    if run.get("error"):
        blocks += [("p", "Failed with:"), ("pre", run["error"])]
    results = _read_results(report, run)
    if results is None:
        return blocks + [("p", f"No readable {run['results']}.")]
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
    blocks += _overview(record)
    env = record.get("environment")
    if env:
        blocks += [("h2", "Environment"), _table(["setting", "value"], [[k, v] for k, v in env.items()])]
    for run in record["notebooks"]:
        blocks += _notebook_blocks(report, run)
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
           "default_report_dir", "NOTEBOOK_PATTERN"]
