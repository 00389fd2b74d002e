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
from .data import list_datasets
from .explorer import explore_axis, list_axes, show_axis, train_missing
from .papers import get_paper, list_papers
from .recipes import PROFILES
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


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.replace(" ", "").split(",") if s]
    except ValueError:
        raise ValueError(f"seeds must be comma-separated integers such as 0,1,2; got {text!r}") from None


def _axis_options(paper: str) -> list[tuple[str, str]]:
    """(label, key) pairs of ``paper``'s ablation axes, for a dropdown."""
    return [(f"{label} ({key})", key) for _, key, label in list_axes(paper)]


def ablation_explorer(dataset: str = "shapes", profile: str = "quick", seeds: Sequence[int] = (0,),
                      runs_dir: str | Path | None = None, paper: str = "cnntention", axis: Optional[str] = None,
                      cpu_quick_data: Optional[dict] = None):
    """Pick a paper, one of its ablation axes, dataset, profile and seeds: draws
    :func:`attnlab.explorer.show_axis` for what the store has, says what is missing (with
    the time it would take here and the commands), and a button trains the gaps."""
    import html

    import ipywidgets as w
    import matplotlib.pyplot as plt
    from IPython.display import display

    papers = [p for p in list_papers() if get_paper(p).ablations]
    paper_dd = w.Dropdown(options=papers, value=paper, description="paper")
    axis_dd = w.Dropdown(options=_axis_options(paper), value=axis or _axis_options(paper)[0][1], description="ablation",
                         layout=w.Layout(width="36em"))
    dataset_dd = w.Dropdown(options=[d for d in list_datasets() if d != "imagefolder"], value=dataset,
                            description="dataset")
    profile_dd = w.Dropdown(options=list(PROFILES), value=profile, description="profile")
    seeds_txt = w.Text(",".join(map(str, seeds)), description="seeds", continuous_update=False)
    train_btn = w.Button(description="train missing", button_style="warning", icon="play")
    status, out = w.HTML(), w.Output()
    state: dict = {}

    def draw(view):
        state["view"] = view
        with out:
            out.clear_output(wait=True)
            fig = show_axis(view)
            display(fig)
            plt.close(fig)
        status.value = f"<pre style='font-size:11px'>{html.escape(view.describe())}</pre>"
        train_btn.disabled = not view.missing

    def refresh(*_):
        try:
            draw(explore_axis(paper_dd.value, axis_dd.value, dataset_dd.value, profile_dd.value,
                              _seeds(seeds_txt.value), runs_dir=runs_dir, cpu_quick_data=cpu_quick_data))
        except (ValueError, TypeError) as exc:
            status.value = f"<b style='color:#b00'>{html.escape(str(exc))}</b>"

    def on_paper(change):
        axis_dd.options = _axis_options(change["new"])  # selecting the first axis redraws

    def on_train(_):
        train_btn.disabled = True
        with out:
            view = train_missing(state["view"], progress=True)
        draw(view)

    paper_dd.observe(on_paper, names="value")
    for control in (axis_dd, dataset_dd, profile_dd, seeds_txt):
        control.observe(refresh, names="value")
    train_btn.on_click(on_train)
    refresh()
    return w.VBox([w.HBox([paper_dd, axis_dd]), w.HBox([dataset_dd, profile_dd, seeds_txt, train_btn]), status, out])


__all__ = ["show_gradcam", "show_attention", "show_run", "gradcam_explorer", "attention_explorer",
           "run_browser", "ablation_explorer"]
