"""Figures for the notebooks: training curves (live and static), image grids, maps."""
from __future__ import annotations

from typing import Optional, Sequence

import torch


def in_notebook() -> bool:
    """True inside a Jupyter kernel (JupyterLab, papermill), False in a terminal."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def plot_history(history, axes=None, title: str = ""):
    """Loss and accuracy, train and validation, per epoch (a History or its DataFrame)."""
    import matplotlib.pyplot as plt

    df = history.to_frame() if hasattr(history, "to_frame") else history
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, metric in zip(axes, ("loss", "acc")):
        ax.cla()
        for split, style in (("train", "-"), ("val", "--")):
            col = f"{split}_{metric}"
            if col in df and len(df):
                ax.plot(df["epoch"], df[col], style, marker="o", ms=3, label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy" if metric == "acc" else "cross-entropy")
        ax.legend()
        ax.grid(alpha=0.3)
    if title:
        axes[0].figure.suptitle(title)
    axes[0].figure.tight_layout()
    return axes


class LiveCurves:
    """One figure in the notebook, redrawn in place after every epoch: a ``fit`` callback
    (``fit(..., callbacks=[LiveCurves()])``; :func:`attnlab.notebook.setup` makes it the
    default live display of every ``fit`` in a notebook)."""

    def __init__(self, title: str = ""):
        self.title, self.handle, self.fig, self.axes = title, None, None, None

    def __call__(self, history) -> None:
        self.update(history)

    def update(self, history) -> None:
        import matplotlib.pyplot as plt
        from IPython.display import display

        if self.fig is None:
            self.fig, self.axes = plt.subplots(1, 2, figsize=(9, 3.2))
            plt.close(self.fig)  # shown through the display handle only, not again at cell end
        plot_history(history, self.axes, self.title)
        if self.handle is None:
            self.handle = display(self.fig, display_id=True)
        else:
            self.handle.update(self.fig)


def denormalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    c = x.shape[1]
    return (x * torch.tensor(std).view(1, c, 1, 1) + torch.tensor(mean).view(1, c, 1, 1)).clamp(0, 1)


def show_images(images: torch.Tensor, labels: Optional[Sequence[str]] = None, ncols: int = 10,
                size: float = 1.1, masks: Optional[torch.Tensor] = None, title: str = ""):
    """Grid of images (uint8 or float in [0, 1], ``(N, C, H, W)``), with optional captions
    and mask outlines."""
    import matplotlib.pyplot as plt

    n = len(images)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * size, nrows * size * 1.15), squeeze=False)
    imgs = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        img = imgs[i].permute(1, 2, 0).cpu().numpy()
        ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None)
        if masks is not None:
            ax.contour(masks[i].float().cpu().numpy(), levels=[0.5], colors="w", linewidths=0.8)
        if labels is not None:
            ax.set_title(str(labels[i]), fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_confusion(confusion, classes: Sequence[str], title: str = "confusion (test)"):
    import matplotlib.pyplot as plt
    import numpy as np

    cm = np.asarray(confusion, dtype=float)
    cm = cm / cm.sum(1, keepdims=True).clip(min=1)
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    im = ax.imshow(cm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(classes)), classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


# -- explanation figures (GradCAM, attention, gates) and result summaries ---------------

def _display_images(images: torch.Tensor, mean: Optional[Sequence[float]] = None,
                    std: Optional[Sequence[float]] = None):
    """``(N, C, H, W)`` as ``(N, H, W, C)`` floats in [0, 1] for ``imshow``."""
    x = images.detach().cpu()
    if x.dtype == torch.uint8:
        x = x.float() / 255
    elif mean is not None and std is not None:
        x = denormalize(x.float(), mean, std)
    else:
        # normalised inputs without their statistics: stretch each image to [0, 1]
        x = x.float()
        lo = x.amin((1, 2, 3), keepdim=True)
        hi = x.amax((1, 2, 3), keepdim=True)
        x = torch.where((lo < 0) | (hi > 1), (x - lo) / (hi - lo).clamp_min(1e-12), x)
    return x.permute(0, 2, 3, 1).numpy()


def _imshow(ax, img) -> None:
    if img.shape[-1] == 1:
        ax.imshow(img[..., 0], cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(img)
    ax.set_xticks([])
    ax.set_yticks([])


def _as_maps(maps: torch.Tensor, size) -> torch.Tensor:
    """``(N, H, W)`` maps at ``size``, each scaled by its own maximum."""
    m = maps.detach().float().cpu()
    m = m.squeeze(1) if m.ndim == 4 else m
    if tuple(m.shape[-2:]) != tuple(size):
        m = torch.nn.functional.interpolate(m[:, None], size=tuple(size), mode="bilinear",
                                            align_corners=False)[:, 0]
    return m / m.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)


def overlay(images: torch.Tensor, heatmaps: torch.Tensor | dict[str, torch.Tensor],
            mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
            alpha: float = 0.5, titles: Optional[Sequence[str]] = None, cmap: str = "jet",
            size: float = 1.6):
    """Images with heatmaps (GradCAM, ...) on top: one column per image, one row per model.

    ``images``: uint8, or the normalised model inputs with their ``mean``/``std``
    (the images the maps were computed on, so the two line up). ``heatmaps``:
    ``(N, H, W)`` or a dict ``name -> (N, H, W)``; each map is scaled by its maximum.
    """
    import matplotlib.pyplot as plt

    rows = heatmaps if isinstance(heatmaps, dict) else {"": heatmaps}
    imgs = _display_images(images, mean, std)
    n = len(imgs)
    fig, axes = plt.subplots(len(rows), n, figsize=(n * size, len(rows) * size * 1.1), squeeze=False)
    for r, (name, maps) in enumerate(rows.items()):
        maps = _as_maps(maps, imgs.shape[1:3]).numpy()
        for i in range(n):
            ax = axes[r, i]
            _imshow(ax, imgs[i])
            ax.imshow(maps[i], cmap=cmap, alpha=alpha, vmin=0, vmax=1)
            if r == 0 and titles is not None:
                ax.set_title(str(titles[i]), fontsize=7)
            if i == 0 and name:
                ax.set_ylabel(name, fontsize=8)
    fig.tight_layout()
    return fig


def _attention_columns(maps: dict[str, torch.Tensor], per_head: bool) -> list[tuple[str, torch.Tensor]]:
    cols = []
    for name, m in maps.items():
        if m.ndim != 4:  # channel masks (B, C) have no place in a spatial figure
            continue
        heads = m.shape[1]
        if per_head and heads > 1:
            cols += [(f"{name} head {j}", m[:, j]) for j in range(heads)]
        else:
            cols.append((name if heads == 1 else f"{name} (mean of {heads} heads)", m.mean(1)))
    return cols


def plot_attention(images: torch.Tensor, maps: dict[str, torch.Tensor], query: Sequence[int],
                   mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                   per_head: bool = False, alpha: float = 0.6, size: float = 1.8):
    """Where the query pixel attends, per stage: one row per image, the query marked "+".

    ``maps`` comes from :func:`attnlab.explain.attention_maps` (the query in input
    coordinates, as given there). Each map is drawn at its own resolution over the whole
    image, so an 8x8 map shows its 8x8 grid. Heads are averaged unless ``per_head``.
    """
    import matplotlib.pyplot as plt

    imgs = _display_images(images, mean, std)
    n, H, W = imgs.shape[:3]
    cols = _attention_columns(maps, per_head)
    fig, axes = plt.subplots(n, 1 + len(cols), figsize=((1 + len(cols)) * size, n * size * 1.1),
                             squeeze=False)
    extent = (-0.5, W - 0.5, H - 0.5, -0.5)  # map pixels stretched over input pixels
    for i in range(n):
        _imshow(axes[i, 0], imgs[i])
        for ax, (_, m) in zip(axes[i, 1:], cols):
            _imshow(ax, imgs[i])
            ax.imshow(m[i].float().cpu().numpy(), cmap="magma", alpha=alpha, extent=extent,
                      interpolation="nearest")
        for ax in axes[i]:
            ax.plot(query[1], query[0], marker="+", color="cyan", ms=9, mew=2)
    for ax, title in zip(axes[0], ["input, query +"] + [name for name, _ in cols]):
        ax.set_title(title, fontsize=7)
    fig.tight_layout()
    return fig


def plot_gates(history_frame, ax=None, title: str = "learned merge gates w"):
    """The gates ``w`` of weighted merges per epoch (columns ``gate:<module>``).

    A curve that stays at 0 is a block that never switched on (as in CNNtention's
    released MHA model). Takes a History or its DataFrame; returns the axes.
    """
    import matplotlib.pyplot as plt

    df = history_frame.to_frame() if hasattr(history_frame, "to_frame") else history_frame
    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 3))
    x = df["epoch"] if "epoch" in df else range(1, len(df) + 1)
    gates = [c for c in df.columns if str(c).startswith("gate:")]
    for col in gates:
        ax.plot(x, df[col], marker="o", ms=3, label=col.removeprefix("gate:"))
    ax.axhline(0, color="k", lw=0.8, alpha=0.5)
    if gates:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no weighted-merge gates", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("epoch")
    ax.set_ylabel("w")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return ax


def plot_results(frame, metric: str, published: Optional[dict[str, float]] = None, by: str = "model",
                 ax=None, title: str = ""):
    """Mean ± std of ``metric`` over seeds per ``by`` group, each seed a grey dot.

    ``frame`` has one row per run (e.g. :func:`attnlab.list_runs`). ``published`` maps
    a group name to a number in the same units as ``metric`` (accuracy in [0, 1] vs
    error in %: convert first), drawn as red stars; names without runs get their own
    position. Returns the axes.
    """
    import matplotlib.pyplot as plt
    import numpy as np

    published = dict(published or {})
    stats = frame.groupby(by, sort=False)[metric].agg(["mean", "std", "count"])
    names = list(stats.index) + [k for k in published if k not in stats.index]
    if ax is None:
        _, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(names) + 1.5), 3.4))
    pos = {name: i for i, name in enumerate(names)}
    for name, grp in frame.groupby(by, sort=False):
        jitter = np.linspace(-0.12, 0.12, len(grp)) if len(grp) > 1 else np.zeros(1)
        ax.plot(pos[name] + jitter, grp[metric], ".", color="0.6", zorder=1)
    ax.errorbar([pos[n] for n in stats.index], stats["mean"], yerr=stats["std"].fillna(0), fmt="o",
                capsize=4, color="C0", zorder=2, label="mean ± std over seeds")
    if published:
        ax.plot([pos[n] for n in published], list(published.values()), "*", color="C3", ms=11,
                ls="", zorder=3, label="published")
    counts = stats["count"].to_dict()
    ax.set_xticks(range(len(names)), [f"{n}\n(n={counts.get(n, 0)})" for n in names],
                  rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title)
    ax.figure.tight_layout()
    return ax


def pareto_front(cost: Sequence[float], value: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats on both axes (lower cost, higher value),
    in order of cost; NaNs never belong to the front."""
    import math

    pts = sorted((c, -v, i) for i, (c, v) in enumerate(zip(cost, value)) if not (math.isnan(c) or math.isnan(v)))
    front, best = [], -math.inf
    for c, neg_v, i in pts:
        if -neg_v > best:
            front.append(i)
            best = -neg_v
    return front


def plot_pareto(table, x: str = "train step ms", y: str = "test_acc_mean", yerr: Optional[str] = "test_acc_std",
                label: str = "label", ax=None, title: str = ""):
    """Accuracy against cost, one labelled point per row of ``table`` (mean ± std over
    seeds), with the Pareto front (nothing both cheaper and more accurate) drawn as a line."""
    import matplotlib.pyplot as plt

    rows = table.dropna(subset=[x, y]).reset_index(drop=True)
    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 4))
    err = rows[yerr].fillna(0) if yerr and yerr in rows else None
    ax.errorbar(rows[x], rows[y], yerr=err, fmt="o", capsize=3, color="C0")
    for r in rows.itertuples():
        ax.annotate(rows.loc[r.Index, label], (rows.loc[r.Index, x], rows.loc[r.Index, y]), fontsize=7,
                    xytext=(4, 3), textcoords="offset points")
    front = pareto_front(list(rows[x]), list(rows[y]))
    if front:
        ax.plot(rows.loc[front, x], rows.loc[front, y], "--", color="C3", lw=1, label="Pareto front")
        ax.legend(fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel(f"{x} (log scale)")
    ax.set_ylabel(y)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=9)
    ax.figure.tight_layout()
    return ax
