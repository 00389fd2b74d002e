"""Compare a notebook's ``results.json`` with a reference copy and list what drifted.

A reference folder (``references/smoke-shapes/`` in the checkout) holds one
``<notebook>/results.json`` per notebook, as a run wrote it, and ``fingerprint.json``:
the environment each reference was computed in. :func:`compare` walks both results
down to their leaves (paths such as ``runs[0].test_acc``) and applies one rule per value:

- **volatile** values are not compared: wall and step times, throughputs, measured
  memory, the environment block, dates, run-store folder names and whether a run was
  trained or loaded (:data:`VOLATILE`). They differ from run to run by nature.
- integers (parameter counts, epochs, image counts), strings, booleans and ``null``
  must be equal.
- floats are **exact** (relative ``1e-9``, :data:`EXACT_REL`) when the reference was
  computed with the same :func:`fingerprint`: device type, precision, torch version,
  torch thread count and the CPU instruction sets that select other kernels
  (:data:`KERNEL_ISA`; for a GPU, its name). Training at a fixed seed on one CPU is
  then deterministic, so any difference means the code changed what it computes.
  With another fingerprint the summation order changes, a few training steps amplify
  it, and each metric gets the tolerance :data:`TOLERANCES` states.
- a key present on one side only is drift, and so is a change of type.

The module knows nothing about notebooks or reports (``attnlab.reproduce`` reads
those); it only needs ``attnlab.hardware`` for this machine's CPU flags.
"""
from __future__ import annotations

import datetime as _dt
import fnmatch
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, NamedTuple, Optional, Sequence

from .hardware import cpu_flags
from .paths import atomic_path

RESULTS = "results.json"
FINGERPRINT = "fingerprint.json"
EXACT_REL = 1e-9
ABSENT = "<absent>"

#: CPU flags that change which oneDNN / MKL kernels run, and with them the rounding
KERNEL_ISA = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


@dataclass(frozen=True)
class Rule:
    """Values whose own name (``leaf_only``) or any name on their path matches one of
    ``patterns`` (``fnmatch``, lower-case patterns, case ignored) follow this rule:
    ``kind`` is ``volatile``, ``exact``, ``abs`` or ``rel`` (absolute or relative ``value``)."""
    name: str
    patterns: tuple[str, ...]
    kind: str
    value: float = 0.0
    leaf_only: bool = True

    def matches(self, names: Sequence[str]) -> bool:
        pool = names[-1:] if self.leaf_only else names
        return any(fnmatch.fnmatchcase(n.lower(), p) for n in pool for p in self.patterns)

    @property
    def tolerance(self) -> str:
        if self.kind in ("abs", "rel"):
            return f"{self.kind} {self.value:g}"
        return self.kind


#: Not compared: they measure the machine and the moment, not what the code computes.
#: Most are matched against every name on the path, so ``env`` covers the whole block.
VOLATILE = (
    Rule("environment (compared as the fingerprint)", ("env", "environment", "cost_measured_on", "device_name",
                                                       "platform"), "volatile", leaf_only=False),
    Rule("date", ("written", "started", "checked"), "volatile", leaf_only=False),
    Rule("wall time in seconds", ("*_s",), "volatile", leaf_only=False),
    Rule("throughput or step time", ("*img/s*", "*step ms*", "* ms", "x *", "share of the * step"), "volatile",
         leaf_only=False),
    Rule("measured memory", ("*peak mib*", "measured *"), "volatile", leaf_only=False),
    # leaf names only: a table called "plan" still holds results
    Rule("run-store name or path", ("run_dir", "dir", "study", "out_dir", "cwd", "notebooks_dir"), "volatile"),
    Rule("trained now or loaded from the store", ("stored", "plan", "status"), "volatile"),
)

#: Floats across fingerprints: the first rule that matches. Accuracies are fractions in
#: [0, 1], ``ours`` columns test error in percent (also where a table of published numbers
#: sets ours beside them, hence first). Each tolerance is about three times the largest
#: change seen at smoke on shapes when only the thread count changed (2 -> 1): accuracies
#: 0.035 (9 of 256 images), losses 1.8 %, other floats 3.1 %.
TOLERANCES = (
    Rule("error in percent", ("ours", "ours_std"), "abs", 10.0),
    Rule("published number (quoted, not computed)", ("published*",), "exact", EXACT_REL, leaf_only=False),
    Rule("counted, not measured", ("params*", "*flops*", "predicted*", "chance", "lr_*", "threshold"),
         "exact", EXACT_REL),
    Rule("loss-like", ("*loss*",), "rel", 0.05),
    # per-class or per-model accuracies sit under a key naming the accuracy
    Rule("accuracy-like (fraction)", ("*acc*", "*top1*", "*top5*"), "abs", 0.10, leaf_only=False),
    Rule("accuracy-like (fraction)", ("precision", "recall", "f1", "*inside*", "confident", "positions used",
                                      "share", "gap", "mean", "std", "se"), "abs", 0.10),
)
#: Any other float (attention-map statistics, gates, ratios of computed values)
DEFAULT_TOLERANCE = Rule("other float", ("*",), "rel", 0.10)
EXACT = Rule("exact (same fingerprint)", ("*",), "exact", EXACT_REL)


class Drift(NamedTuple):
    """One value that differs from its reference."""
    notebook: str
    path: str
    reference: Any
    now: Any
    tolerance: str
    rule: str


@dataclass
class NotebookCheck:
    """The outcome for one notebook: the two fingerprints and the drifted values."""
    notebook: str
    reference_fingerprint: dict
    fingerprint: dict
    drift: list[Drift]

    @property
    def exact(self) -> bool:
        return bool(self.fingerprint) and self.reference_fingerprint == self.fingerprint

    @property
    def mode(self) -> str:
        if not self.fingerprint:
            return "no results to compare"
        if self.exact:
            return "exact: same fingerprint as the reference"
        return "tolerances: " + "; ".join(fingerprint_differences(self.reference_fingerprint, self.fingerprint))

    def to_dict(self) -> dict:
        return {"notebook": self.notebook, "exact": self.exact, "mode": self.mode,
                "reference_fingerprint": self.reference_fingerprint, "fingerprint": self.fingerprint,
                "drift": [d._asdict() for d in self.drift]}


# -- fingerprints ------------------------------------------------------------------------

def machine_isa() -> list[str]:
    """The :data:`KERNEL_ISA` flags this machine's CPU has."""
    return sorted(set(KERNEL_ISA) & cpu_flags())


def fingerprint(env: Optional[dict], cpu_isa: Optional[Iterable[str]]) -> dict:
    """What decides the rounding of a run: from a notebook's ``env`` (as ``setup()``
    returns it) and the CPU's kernel flags. ``None`` for an unknown part (never equal
    to a known one, so an unknown environment is compared with tolerances)."""
    env = env or {}
    device = str(env.get("device") or "unknown").split(":")[0]
    fp = {"device": device, "precision": env.get("precision"), "torch": env.get("torch"),
          "threads": env.get("threads")}
    if device == "cpu":
        fp["cpu_isa"] = None if cpu_isa is None else sorted(set(cpu_isa) & set(KERNEL_ISA))
    else:
        fp["device_name"] = env.get("device_name")
    return fp


def fingerprint_differences(reference: dict, now: dict) -> list[str]:
    """``"threads 2 -> 1"`` for each part that differs."""
    keys = list(dict.fromkeys([*reference, *now]))
    return [f"{k} {reference.get(k, ABSENT)} -> {now.get(k, ABSENT)}" for k in keys
            if reference.get(k, ABSENT) != now.get(k, ABSENT)]


# -- flattening and the rules ------------------------------------------------------------

KeyPath = tuple  # names (str) and list positions (int)


def flatten(obj: Any, prefix: KeyPath = ()) -> dict[KeyPath, Any]:
    """Leaves of nested dicts and lists by path; empty containers are leaves too."""
    if isinstance(obj, dict) and obj:
        out: dict[KeyPath, Any] = {}
        for k, v in obj.items():
            out.update(flatten(v, prefix + (str(k),)))
        return out
    if isinstance(obj, list) and obj:
        out = {}
        for i, v in enumerate(obj):
            out.update(flatten(v, prefix + (i,)))
        return out
    return {prefix: obj}


def path_text(path: KeyPath) -> str:
    """``runs[0].test_acc``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "(top level)"


def _names(path: KeyPath) -> list[str]:
    return [p for p in path if isinstance(p, str)]


def volatile_rule(path: KeyPath) -> Optional[Rule]:
    names = _names(path)
    return next((r for r in VOLATILE if r.matches(names)), None)


def float_rule(path: KeyPath, exact: bool) -> Rule:
    """The rule for a float at ``path``: :data:`EXACT` on the same fingerprint, else
    the first of :data:`TOLERANCES` that matches, else :data:`DEFAULT_TOLERANCE`."""
    if exact:
        return EXACT
    names = _names(path)
    return next((r for r in TOLERANCES if r.matches(names)), DEFAULT_TOLERANCE)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def within(rule: Rule, reference: float, now: float) -> bool:
    if math.isnan(reference) or math.isnan(now):
        return math.isnan(reference) and math.isnan(now)
    diff = abs(now - reference)
    if rule.kind == "abs":
        return diff <= rule.value
    return diff <= rule.value * max(abs(reference), abs(now))  # exact and rel


def _value_drift(path: KeyPath, ref: Any, now: Any, exact: bool) -> Optional[tuple[str, str]]:
    """``(tolerance, rule)`` when ``now`` drifted from ``ref``, else None."""
    if _is_number(ref) and _is_number(now) and (isinstance(ref, float) or isinstance(now, float)):
        rule = float_rule(path, exact)
        return None if within(rule, float(ref), float(now)) else (rule.tolerance, rule.name)
    if type(ref) is not type(now):
        return "exact", f"type changed ({type(ref).__name__} -> {type(now).__name__})"
    if ref == now:
        return None
    kind = {int: "integer", str: "string", bool: "boolean"}.get(type(ref), "value")
    return "exact", kind


def compare(notebook: str, reference: dict, now: dict, exact: bool) -> list[Drift]:
    """Every non-volatile value of ``now`` that drifted from ``reference``, missing or
    extra keys included, in the reference's order (new keys last)."""
    ref, cur = flatten(reference), flatten(now)
    rows = []
    for path in dict.fromkeys([*ref, *cur]):
        if volatile_rule(path):
            continue
        if path not in cur:
            rows.append(Drift(notebook, path_text(path), ref[path], ABSENT, "-", "missing now"))
        elif path not in ref:
            rows.append(Drift(notebook, path_text(path), ABSENT, cur[path], "-", "not in the reference"))
        else:
            found = _value_drift(path, ref[path], cur[path], exact)
            if found:
                rows.append(Drift(notebook, path_text(path), ref[path], cur[path], *found))
    return rows


# -- reference folders -------------------------------------------------------------------

def update_command(profile: str, dataset: str, reference_dir: str | Path, threads: Optional[int] = None,
                   notebooks: Optional[str] = None) -> str:
    """The command that (re)writes references, for error messages."""
    cmd = f"python -m attnlab reproduce --profile {profile} --dataset {dataset}"
    if threads:
        cmd += f" --threads {threads}"
    if notebooks:
        cmd += f" --notebooks '{notebooks}'"
    return cmd + f" --update-reference {reference_dir}"


def read_fingerprints(reference_dir: str | Path) -> dict:
    """``fingerprint.json`` of a reference folder; a clear error when there is none."""
    ref = Path(reference_dir)
    if not ref.is_dir():
        raise FileNotFoundError(f"reference folder {ref} does not exist; write one with "
                                f"`{update_command('smoke', 'shapes', ref, 2)}`")
    path = ref / FINGERPRINT
    if not path.exists():
        raise FileNotFoundError(f"{ref} has no {FINGERPRINT}, so it is not a reference folder; write one with "
                                f"`{update_command('smoke', 'shapes', ref, 2)}`")
    return json.loads(path.read_text(encoding="utf-8"))


def reference_threads(meta: dict) -> Optional[int]:
    """The torch thread count the references in ``fingerprint.json`` were computed with."""
    counts = {fp.get("threads") for fp in (meta.get("notebooks") or {}).values()} - {None}
    return counts.pop() if len(counts) == 1 else None


def read_reference(reference_dir: str | Path, notebook: str) -> tuple[dict, dict]:
    """``(results, fingerprint)`` of ``notebook`` (its stem) in ``reference_dir``."""
    ref = Path(reference_dir)
    meta = read_fingerprints(ref)
    path = ref / notebook / RESULTS
    if not path.exists():
        raise FileNotFoundError(
            f"no reference for notebook {notebook} in {ref} (no {notebook}/{RESULTS}); write it with `"
            + update_command(meta.get("profile", "smoke"), meta.get("dataset", "shapes"), ref, reference_threads(meta),
                             f"{notebook}.ipynb") + "`")
    results = json.loads(path.read_text(encoding="utf-8"))
    fp = (meta.get("notebooks") or {}).get(notebook) or fingerprint(results.get("env"), None)
    return results, fp


def check_notebook(notebook: str, results: dict, reference_dir: str | Path,
                   cpu_isa: Optional[Iterable[str]] = None) -> NotebookCheck:
    """Compare one notebook's ``results`` (computed on a CPU with ``cpu_isa``, default
    this machine's) with its reference; raises FileNotFoundError without one."""
    reference, ref_fp = read_reference(reference_dir, notebook)
    now_fp = fingerprint(results.get("env"), machine_isa() if cpu_isa is None else cpu_isa)
    rows = compare(notebook, reference, results, exact=ref_fp == now_fp)
    return NotebookCheck(notebook, ref_fp, now_fp, rows)


def write_reference(reference_dir: str | Path, results: dict[str, dict], profile: str, dataset: str,
                    cpu_isa: Optional[Iterable[str]] = None, command: Optional[str] = None) -> Path:
    """Write ``results`` (notebook stem -> results) as references, and their fingerprints
    into ``fingerprint.json`` (merged: references of other notebooks stay)."""
    ref = Path(reference_dir)
    ref.mkdir(parents=True, exist_ok=True)
    meta_path = ref / FINGERPRINT
    meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.exists() else {}
    if meta and (meta.get("profile"), meta.get("dataset")) != (profile, dataset):
        raise ValueError(f"{ref} holds references for profile {meta.get('profile')}, dataset "
                         f"{meta.get('dataset')}; not {profile}, {dataset}: choose another folder")
    isa = machine_isa() if cpu_isa is None else cpu_isa
    fps = dict(meta.get("notebooks") or {})
    for stem, res in results.items():
        (ref / stem).mkdir(exist_ok=True)
        with atomic_path(ref / stem / RESULTS) as tmp:
            tmp.write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
        fps[stem] = fingerprint(res.get("env"), isa)
    meta = {"profile": profile, "dataset": dataset,
            "written": _dt.datetime.now().isoformat(timespec="seconds"),
            "command": command or meta.get("command"),
            "notebooks": dict(sorted(fps.items()))}
    with atomic_path(meta_path) as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return ref


# -- printing ----------------------------------------------------------------------------

def format_cell(v: Any, width: int = 40) -> str:
    if isinstance(v, float):
        text = repr(v)
    elif isinstance(v, str):
        text = v
    else:
        text = json.dumps(v, default=str)
    return text if len(text) <= width else text[:width - 3] + "..."


def drift_table(rows: Sequence[Drift]) -> str:
    """The drifted values as an aligned text table (one line per value)."""
    if not rows:
        return "no drift"
    header = list(Drift._fields)
    body = [[format_cell(v, 60 if i == 1 else 40) for i, v in enumerate(r)] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(header, *body)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


__all__ = ["Drift", "NotebookCheck", "Rule", "VOLATILE", "TOLERANCES", "DEFAULT_TOLERANCE", "EXACT",
           "EXACT_REL", "KERNEL_ISA", "FINGERPRINT", "compare", "flatten", "fingerprint",
           "fingerprint_differences", "machine_isa", "check_notebook", "read_reference", "read_fingerprints",
           "reference_threads", "write_reference", "update_command", "drift_table", "format_cell"]
