"""Classification metrics beyond accuracy, from one stored pass of test predictions.

A finished run keeps its test confusion matrix (``metrics.json``, rows = true class,
columns = predicted class), and the confusion matrix is all that precision, recall and
F1 of arg-max predictions need: :func:`scores` gives them per class and averaged
(macro: every class counts once; weighted: by support; micro: equals accuracy), and
:func:`sklearn_report` is scikit-learn's ``classification_report`` of the same predictions.

Thresholded metrics need the probabilities themselves. :func:`test_predictions` runs the
trained model over the test split once and keeps the class probabilities beside the run
(``test_predictions.pt``), so every later reading uses that same pass.
:func:`keras_binary_scores` is what Keras's ``Precision()`` and ``Recall()`` report for a
softmax classifier with one-hot labels: every one of the ``N x classes`` outputs is a
binary decision at threshold 0.5. A prediction counts for precision only when its top
probability exceeds 0.5 (the confident ones, right more often than the rest), and for
recall only when the true class's does (then it is the arg-max, so recall never exceeds
accuracy). Precision lands above accuracy and recall below it: the pattern of the
Embedding Attention report (precision 0.900, accuracy 0.854, recall 0.823), which macro
averages of a balanced 10-class problem with similar classes do not give.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from .data import load_data
from .paths import atomic_path
from .recipes import get_profile
from .runs import Run

PREDICTIONS_FILE = "test_predictions.pt"


def _confusion(confusion) -> np.ndarray:
    c = np.asarray(confusion, dtype=np.int64)
    if c.ndim != 2 or c.shape[0] != c.shape[1] or (c < 0).any():
        raise ValueError(f"a confusion matrix must be square with counts >= 0, got shape {c.shape}")
    return c


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """``C[i, j]`` = images of true class ``i`` predicted as ``j`` (the run store's layout)."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def labels_from_confusion(confusion) -> tuple[np.ndarray, np.ndarray]:
    """One ``(y_true, y_pred)`` pair per counted image: the predictions a confusion matrix
    stands for (in class order), for functions that want label arrays."""
    c = _confusion(confusion)
    k = len(c)
    pairs = np.repeat(np.arange(k * k), c.ravel())
    return pairs // k, pairs % k


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # scikit-learn's convention for an empty denominator (zero_division=0): the score is 0
    return np.divide(a, b, out=np.zeros_like(a, dtype=float), where=b > 0)


def scores(confusion, classes: Optional[Sequence[str]] = None) -> dict:
    """Accuracy; precision, recall and F1 per class and as macro, weighted and micro
    averages, from a confusion matrix (rows true, columns predicted).

    Returns ``{"accuracy", "macro": {...}, "weighted": {...}, "micro": {...},
    "per_class": DataFrame(class, precision, recall, f1, support)}``.
    """
    import pandas as pd

    c = _confusion(confusion).astype(float)
    tp, predicted, support = np.diag(c), c.sum(0), c.sum(1)
    precision, recall = _safe_div(tp, predicted), _safe_div(tp, support)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    n = support.sum()
    names = list(classes) if classes is not None else [str(i) for i in range(len(c))]
    if len(names) != len(c):
        raise ValueError(f"{len(names)} class names for a {len(c)}-class confusion matrix")
    weights = support / n if n else np.zeros_like(support)
    accuracy = float(tp.sum() / n) if n else float("nan")
    return {
        "accuracy": accuracy,
        "macro": {"precision": float(precision.mean()), "recall": float(recall.mean()), "f1": float(f1.mean())},
        "weighted": {"precision": float(precision @ weights), "recall": float(recall @ weights),
                     "f1": float(f1 @ weights)},
        # every image is one prediction, so micro precision = micro recall = micro F1 = accuracy
        "micro": {"precision": accuracy, "recall": accuracy, "f1": accuracy},
        "per_class": pd.DataFrame({"class": names, "precision": precision, "recall": recall, "f1": f1,
                                   "support": support.astype(int)}),
    }


def sklearn_report(confusion, classes: Optional[Sequence[str]] = None, digits: int = 3) -> str:
    """scikit-learn's ``classification_report`` of the predictions behind ``confusion``."""
    from sklearn.metrics import classification_report

    c = _confusion(confusion)
    y_true, y_pred = labels_from_confusion(c)
    names = list(classes) if classes is not None else None
    return classification_report(y_true, y_pred, labels=list(range(len(c))), target_names=names,
                                 digits=digits, zero_division=0)


def keras_binary_scores(probs, labels, threshold: float = 0.5) -> dict:
    """Keras's ``Precision()``/``Recall()`` on one-hot labels: all ``N x classes`` outputs
    thresholded at ``threshold`` and counted as binary decisions; F1 from those two.
    ``probs``: ``(N, classes)`` probabilities; ``labels``: ``(N,)`` class indices."""
    p = torch.as_tensor(probs, dtype=torch.float64)
    y = torch.as_tensor(labels, dtype=torch.long)
    if p.ndim != 2 or y.shape != (p.shape[0],):
        raise ValueError(f"probs must be (N, classes) and labels (N,), got {tuple(p.shape)} and {tuple(y.shape)}")
    onehot = torch.nn.functional.one_hot(y, p.shape[1]).bool()
    positive = p > threshold
    tp = int((positive & onehot).sum())
    fp = int((positive & ~onehot).sum())
    fn = int((~positive & onehot).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "threshold": threshold,
            "confident": float(positive.any(1).double().mean())}


@dataclass
class Predictions:
    """Class probabilities of one pass over a run's test split."""

    probs: torch.Tensor     # N, classes
    labels: torch.Tensor    # N
    classes: list[str]

    @property
    def predicted(self) -> torch.Tensor:
        return self.probs.argmax(1)

    @property
    def confusion(self) -> np.ndarray:
        return confusion_matrix(self.labels.numpy(), self.predicted.numpy(), len(self.classes))


@torch.inference_mode()
def test_predictions(run: Run, device: str = "cpu", store: bool = True) -> Predictions:
    """The test-split probabilities of a finished ``run``: read from ``test_predictions.pt``
    in its folder, or computed once (the run's own data settings, its selected weights,
    fp32) and stored there (``store``; a read-only store just returns them)."""
    if not run.finished:
        raise ValueError(f"run {run.dir} is not finished: train it first (it has no selected weights)")
    path = Path(run.dir) / PREDICTIONS_FILE
    if path.exists():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        return Predictions(saved["probs"], saved["labels"], list(run.metrics["classes"]))
    c = run.config
    data = load_data(c.dataset, **{**get_profile(c.profile).data_kwargs(c.dataset), **c.data_kw})
    model = run.model(device)
    probs, labels = [], []
    for x, y in data.loader("test", 512, device):
        probs.append(model(x.float()).float().softmax(1).cpu())
        labels.append(y.cpu())
    pred = Predictions(torch.cat(probs), torch.cat(labels), list(data.classes))
    if store:
        try:
            with atomic_path(path) as tmp, open(tmp, "wb") as f:
                torch.save({"probs": pred.probs, "labels": pred.labels}, f)
        except OSError:
            pass  # a read-only store: the predictions are still returned
    return pred


def report(pred: Predictions) -> dict:
    """Everything this module computes for one pass: accuracy, macro/weighted/micro and
    per-class scores, Keras's thresholded binary precision/recall, the confusion matrix
    and scikit-learn's report (text)."""
    conf = pred.confusion
    s = scores(conf, pred.classes)
    return {**s, "keras_binary": keras_binary_scores(pred.probs, pred.labels), "confusion": conf.tolist(),
            "sklearn_report": sklearn_report(conf, pred.classes)}


def summary_table(reports: dict):
    """One row per run (``{label: report(...)}``): accuracy, the macro scores and Keras's
    binary precision/recall/F1 side by side."""
    import pandas as pd

    return pd.DataFrame([{"model": name, "accuracy": r["accuracy"],
                          **{f"{k} (macro)": v for k, v in r["macro"].items()},
                          **{f"{k} (Keras binary)": r["keras_binary"][k] for k in ("precision", "recall", "f1")}}
                         for name, r in reports.items()])


__all__ = ["confusion_matrix", "labels_from_confusion", "scores", "sklearn_report", "keras_binary_scores",
           "Predictions", "test_predictions", "report", "summary_table", "PREDICTIONS_FILE"]
