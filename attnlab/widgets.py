"""Interactive explorers for a live notebook: thin ipywidgets shells over plain functions.

Every explorer only wires controls to a ``show_*`` function that returns a matplotlib
figure. Executed notebooks (papermill, CI) never fire widget callbacks, so they call
the ``show_*`` functions directly; the figures then appear in the saved notebook too.

>>> gradcam_explorer({"resnet20": model}, images, labels, data.classes, mean=data.mean, std=data.std)
>>> show_gradcam({"resnet20": model}, images, labels, data.classes, index=3)   # same, static
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from . import explain, plots
from .runs import Run, list_runs

# -- plain functions --------------------------------------------------------------------


def _predicted(model: nn.Module, x: torch.Tensor) -> int:
    was_training = model.training
    try:
        with torch.no_grad():
            return int(model.eval()(x.to(next(model.parameters()).device)).argmax(1)[0])
    finally:
        model.train(was_training)


def show_gradcam(models: dict[str, nn.Module], images: torch.Tensor, labels: torch.Tensor,
                 classes: Sequence[str], index: int = 0, model: Optional[str] = None,
                 layer: str = "layer3", mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None):
    """GradCAM of image ``index`` for one model (``model``) or all of them, one row each.

    ``images`` are the normalised model inputs; ``mean``/``std`` undo that for display.
    """
    chosen = {model: models[model]} if model else models
    x = images[index:index + 1]
    heatmaps = {name: explain.gradcam(m, x, layer) for name, m in chosen.items()}
    preds = [f"{name}: {classes[_predicted(m, x)]}" for name, m in chosen.items()]
    title = f"#{index} true {classes[int(labels[index])]}, predicted " + "; ".join(preds)
    fig = plots.overlay(x, heatmaps, mean, std, size=2.2)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return fig


def show_attention(model: nn.Module, images: torch.Tensor, row: int, col: int, index: int = 0,
                   mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                   per_head: bool = False):
    """Attention maps of image ``index`` for the query pixel ``(row, col)``."""
    x = images[index:index + 1]
    maps = explain.attention_maps(model, x, (row, col))
    return plots.plot_attention(x, maps, (row, col), mean, std, per_head=per_head)


def show_run(run_dir: str | Path):
    """The loss and accuracy curves of the finished run stored in ``run_dir``."""
    run = Run.load(Path(run_dir))
    if run is None:
        raise FileNotFoundError(f"no finished run in {run_dir}")
    axes = plots.plot_history(run.history, title=Path(run_dir).name)
    return axes[0].figure


# -- widget shells ----------------------------------------------------------------------


def _explorer(show: Callable, controls: dict, **fixed):
    """Controls above an output area that shows ``show(**fixed, **control values)``."""
    import ipywidgets as w
    import matplotlib.pyplot as plt
    from IPython.display import display

    def draw(**values):
        fig = show(**fixed, **values)
        display(fig)
        plt.close(fig)  # displayed once, through the output area

    return w.VBox([w.HBox(list(controls.values())), w.interactive_output(draw, controls)])


def gradcam_explorer(models: dict[str, nn.Module], images: torch.Tensor, labels: torch.Tensor,
                     classes: Sequence[str], layer: str = "layer3",
                     mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None):
    """Dropdowns for the model (or all) and the image; draws :func:`show_gradcam`."""
    import ipywidgets as w

    options = [(f"{i}: {classes[int(y)]}", i) for i, y in enumerate(labels)]
    controls = {"model": w.Dropdown(options=[("all", None)] + [(n, n) for n in models], description="model"),
                "index": w.Dropdown(options=options, description="image")}
    return _explorer(show_gradcam, controls, models=models, images=images, labels=labels,
                     classes=classes, layer=layer, mean=mean, std=std)


def attention_explorer(model: nn.Module, images: torch.Tensor, mean: Optional[Sequence[float]] = None,
                       std: Optional[Sequence[float]] = None):
    """Sliders for the query row and column and the image; draws :func:`show_attention`."""
    import ipywidgets as w

    H, W = images.shape[-2:]
    controls = {"row": w.IntSlider(H // 2, 0, H - 1, description="row"),
                "col": w.IntSlider(W // 2, 0, W - 1, description="col"),
                "index": w.IntSlider(0, 0, len(images) - 1, description="image"),
                "per_head": w.Checkbox(False, description="per head")}
    return _explorer(show_attention, controls, model=model, images=images, mean=mean, std=std)


def run_browser(runs_dir: str | Path | None = None):
    """A dropdown over the finished runs; draws :func:`show_run` for the one chosen."""
    import ipywidgets as w

    runs = list_runs(runs_dir)
    if runs.empty:
        return w.HTML(f"No finished runs in {runs_dir or 'the default runs folder'} yet.")
    options = [(f"{r.model} {r.dataset} {r.profile} s{r.seed}: test acc {r.test_acc:.3f}", r.dir)
               for r in runs.itertuples()]
    return _explorer(show_run, {"run_dir": w.Dropdown(options=options, description="run",
                                                      layout=w.Layout(width="38em"))})


__all__ = ["show_gradcam", "show_attention", "show_run", "gradcam_explorer", "attention_explorer",
           "run_browser"]
