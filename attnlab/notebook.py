"""Small helpers every notebook uses: the setup banner, showing package code, the
training config from the parameters cell, and writing ``results.json``."""
from __future__ import annotations

import inspect
import json
import time
from pathlib import Path
from typing import Any, Optional

from .hardware import environment
from .paths import atomic_path
from .plots import LiveCurves, in_notebook
from .train import set_live_display


def setup(device: str = "auto", precision: str = "auto") -> dict:
    """Print versions, device and precision; return them (stored in results.json). In a
    notebook, every later ``fit`` also draws live loss and accuracy curves
    (:class:`attnlab.plots.LiveCurves`, registered with :func:`attnlab.train.set_live_display`)."""
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 100, "axes.spines.top": False, "axes.spines.right": False})
    if in_notebook():
        set_live_display(LiveCurves)
    env = environment(device, precision)
    width = max(len(k) for k in env)
    for k, v in env.items():
        print(f"{k:<{width}}  {v}")
    return env


def show_code(obj: Any, lines: Optional[tuple[int, int]] = None) -> None:
    """Display the source of a package object, so notebooks read the code they run."""
    from IPython.display import Markdown, display

    src = inspect.getsource(obj)
    if lines:
        src = "\n".join(src.splitlines()[lines[0]:lines[1]])
    where = f"{inspect.getmodule(obj).__name__}.{getattr(obj, '__qualname__', '')}"
    display(Markdown(f"`{where}`\n```python\n{src}\n```"))


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "to_dict") and hasattr(obj, "columns"):  # DataFrame
        return [_jsonable(r) for r in obj.to_dict(orient="records")]
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:
        obj = obj.item()  # numpy and torch scalars
    if isinstance(obj, float) and obj != obj:
        return None  # NaN is not JSON
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def save_results(out_dir: str | Path, results: dict) -> Path:
    """Write ``results.json`` atomically (tests and ``reproduce`` read it)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_jsonable({**results, "written": time.strftime("%Y-%m-%d %H:%M:%S")}),
                                  indent=2))
    print(f"wrote {path}")
    return path
