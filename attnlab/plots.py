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
    """One figure in the notebook, redrawn in place after every epoch."""

    def __init__(self, title: str = ""):
        self.title, self.handle, self.fig, self.axes = title, None, None, None

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
