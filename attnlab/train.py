"""One training loop for every model: ``fit(model, data, recipe) -> History``.

GPU when present, CPU otherwise; bf16 autocast where the hardware has it. Each epoch
ends with an atomic checkpoint, so Ctrl-C (which returns the history so far) and a
killed process lose at most the epoch in progress, and ``fit`` called again resumes.
Early stopping and model selection use the validation split; the test split is
evaluated once, at the end, with the selected weights.
"""
from __future__ import annotations

import copy
import itertools
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data import DataSplits, DeviceLoader
from .hardware import autocast, resolve_device, resolve_precision, to_memory_format, training_memory_format
from .integrity import verify_torch_file
from .paths import atomic_path
from .recipes import Recipe, validate_recipe


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


class CheckpointError(RuntimeError):
    """A checkpoint could not be read or does not belong to this run."""


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch; ``deterministic`` also pins torch's algorithms."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    # switching costs seconds (it imports torch's compiler stack), so only when it changes
    if torch.are_deterministic_algorithms_enabled() != deterministic:
        torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


@dataclass
class History:
    """Per-epoch metrics plus the final test evaluation."""

    rows: list[dict] = field(default_factory=list)
    test: dict = field(default_factory=dict)
    #: the test split with flip test-time augmentation (only when training used flips)
    test_flip: dict = field(default_factory=dict)
    best_epoch: int = 0
    best_val_acc: float = 0.0
    stopped_early: bool = False
    interrupted: bool = False
    #: seconds spent training and evaluating, summed over the sessions of a resumed run
    elapsed_s: float = 0.0
    device: str = ""
    precision: str = ""
    memory_format: str = ""

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame(self.rows)

    @property
    def epochs(self) -> int:
        return len(self.rows)

    def gates(self):
        """Learned merge gates per epoch (columns ``gate:<module>``)."""
        df = self.to_frame()
        return df[["epoch"] + [c for c in df.columns if c.startswith("gate:")]]

    def __repr__(self) -> str:
        last = self.rows[-1] if self.rows else {}
        return (f"History(epochs={self.epochs}, val_acc={last.get('val_acc', float('nan')):.4f}, "
                f"test_acc={self.test.get('acc', float('nan')):.4f}, interrupted={self.interrupted})")


def make_optimizer(model: nn.Module, r: Recipe) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if r.optimizer == "sgd":
        return torch.optim.SGD(params, lr=r.lr, momentum=r.momentum, nesterov=r.nesterov,
                               weight_decay=r.weight_decay)
    eps = {} if r.eps is None else {"eps": r.eps}
    if r.optimizer == "adam":  # coupled L2, as the papers' Adam runs used
        return torch.optim.Adam(params, lr=r.lr, weight_decay=r.weight_decay, **eps)
    return torch.optim.AdamW(params, lr=r.lr, weight_decay=r.weight_decay, **eps)


def milestone_epoch(fraction: float, epochs: int) -> int:
    """First (0-based) epoch at the lower rate: 0.5 of 182 is 91 and 0.75 of 182 is 136, as
    in the papers; never 0, so a one-epoch run does not start at the reduced rate."""
    return max(1, int(fraction * epochs + 1e-9))


#: share of training the ``warmup_cosine`` schedule warms up over
WARMUP_FRACTION = 0.05


def lr_factor(r: Recipe, step: int, steps_per_epoch: int) -> float:
    """Multiplier of ``r.lr`` at optimiser step ``step`` (one mechanism for all schedules)."""
    total = r.epochs * steps_per_epoch
    if r.schedule == "step":  # drops at epoch boundaries, as in the papers
        epoch = step // steps_per_epoch
        return r.gamma ** sum(epoch >= milestone_epoch(m, r.epochs) for m in r.milestones)
    if r.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
    if r.schedule == "onecycle":
        warm = max(1, int(0.25 * total))
        if step < warm:
            return 0.04 + 0.96 * step / warm
        return 0.5 * (1 + math.cos(math.pi * min(step - warm, total - warm) / max(1, total - warm)))
    if r.schedule == "warmup_cosine":  # Bello et al.: linear warm-up over 5%, then cosine
        warm = max(1, int(WARMUP_FRACTION * total))
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(step - warm, total - warm) / max(1, total - warm)))
    return 1.0


def gate_values(model: nn.Module) -> dict[str, float]:
    """Scalar merge gates ``w`` of every weighted attention block, by module name."""
    return {f"gate:{name.removesuffix('.merge')}": float(m.gate.detach().float().mean())
            for name, m in model.named_modules()
            if getattr(m, "gate", None) is not None and isinstance(m.gate, nn.Parameter)}


class _Tally:
    """Running loss, top-5 hits and confusion matrix of one way of predicting."""

    def __init__(self, k: int, device: torch.device):
        self.k = k
        self.confusion = torch.zeros(k, k, dtype=torch.long, device=device)
        self.loss_sum = torch.zeros((), device=device)
        self.top5 = torch.zeros((), device=device)

    def add(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        k = self.k
        self.loss_sum += F.cross_entropy(logits, y, reduction="sum")
        self.top5 += (logits.topk(min(5, k), 1).indices == y[:, None]).any(1).sum()
        self.confusion += torch.bincount(y * k + logits.argmax(1), minlength=k * k).view(k, k)

    def result(self) -> dict:
        conf = self.confusion.cpu()
        n = int(conf.sum())
        per_class = (conf.diag() / conf.sum(1).clamp_min(1)).tolist()
        return {"loss": float(self.loss_sum) / max(n, 1), "acc": float(conf.diag().sum()) / max(n, 1),
                "top5": float(self.top5) / max(n, 1), "per_class": per_class, "confusion": conf.tolist(),
                "n": n}


@torch.inference_mode()
def evaluate(model: nn.Module, loader: DeviceLoader, precision: str = "fp32",
             num_classes: Optional[int] = None, flip: bool = False) -> dict:
    """Loss, top-1, top-5, per-class accuracy and confusion matrix over ``loader``.

    ``flip=True`` adds, under ``"flip"``, the same metrics with horizontal-flip test-time
    augmentation: the class probabilities of each image and its mirror image averaged
    (one more forward pass per batch). It suits only models trained with flips;
    :func:`fit` reports it beside the single-view test result.
    """
    was_training = model.training
    model.eval()
    device = loader.device
    k = num_classes or int(loader.labels.max()) + 1
    single, flipped = _Tally(k, device), _Tally(k, device)
    for x, y in loader:
        with autocast(device, precision):
            logits = model(x).float()
            mirrored = model(x.flip(3)).float() if flip else None
        single.add(logits, y)
        if flip:  # log of the mean probability, so the loss stays a cross-entropy
            flipped.add(torch.stack([logits.log_softmax(1), mirrored.log_softmax(1)]).logsumexp(0)
                        - math.log(2), y)
    model.train(was_training)
    return {**single.result(), **({"flip": flipped.result()} if flip else {})}


def _atomic_save(obj, path: Path) -> None:
    # through a Python file object, so a full disk raises OSError (ENOSPC), not a RuntimeError
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


def previous_checkpoint(path: str | Path) -> Path:
    """Where the checkpoint of the epoch before is kept (``checkpoint.prev.pt``): the last
    good state when the newest checkpoint turns out damaged."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint after checking every byte against the archive's CRC-32s
    (``torch.load`` alone would resume from garbled weights)."""
    try:
        verify_torch_file(path)
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - truncated zip, CRC mismatch, pickle errors, ...
        raise CheckpointError(
            f"checkpoint {path} is corrupt or unreadable ({type(exc).__name__}: {exc}); "
            "delete it to train from scratch, or pass resume=False"
        ) from exc


class _Trainer:
    """State of one ``fit`` call; split out so each step stays short."""

    def __init__(self, model, data, recipe, device, precision, memory_format, seed, checkpoint,
                 progress, callbacks):
        validate_recipe(recipe)
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.memory_format = training_memory_format(model, self.device, memory_format)
        self.model = to_memory_format(model.to(self.device), self.memory_format)
        self.data, self.recipe, self.seed = data, recipe, seed
        self.train_loader = self.loader("train", recipe.batch_size)
        self.val_loader = self.loader("val", 512)
        self.steps = len(self.train_loader)
        if recipe.max_steps_per_epoch:
            self.steps = min(self.steps, recipe.max_steps_per_epoch)
        self.opt = make_optimizer(self.model, recipe)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: lr_factor(recipe, s, self.steps))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.history = History(device=str(self.device), precision=self.precision,
                               memory_format=self.memory_format)
        self.best_state = None
        self.bad_epochs = 0
        self.start_epoch = 0
        self.elapsed_before = 0.0  # seconds of the sessions before a resume
        self.checkpoint = Path(checkpoint) if checkpoint else None
        self.progress, self.callbacks = progress, list(callbacks)
        # Checking the loss every batch costs a device sync; on a GPU check in blocks.
        self.check_every = 1 if self.device.type == "cpu" else 50

    def loader(self, split: str, batch_size: int):
        return self.data.loader(split, batch_size, self.device, self.seed if split == "train" else 0,
                                memory_format=self.memory_format)

    # -- checkpoints -------------------------------------------------------------------
    def state(self) -> dict:
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict(),
                "sched": self.sched.state_dict(), "scaler": self.scaler.state_dict(),
                "epoch": len(self.history.rows), "history": self.history,
                "best_state": self.best_state, "bad_epochs": self.bad_epochs,
                "recipe": self.recipe.to_dict(), "torch_rng": torch.get_rng_state()}

    def save(self) -> None:
        if self.checkpoint:
            self.checkpoint.parent.mkdir(parents=True, exist_ok=True)
            if self.checkpoint.exists():  # keep one good state behind the newest
                os.replace(self.checkpoint, previous_checkpoint(self.checkpoint))
            _atomic_save(self.state(), self.checkpoint)

    def restore(self, path: Path) -> None:
        ck = load_checkpoint(path)
        if ck.get("recipe") != self.recipe.to_dict():
            raise CheckpointError(f"checkpoint {path} was written by another recipe "
                                  f"({ck.get('recipe', {}).get('name')}); delete it or pass resume=False")
        try:
            self.model.load_state_dict(ck["model"])
        except RuntimeError as exc:
            raise CheckpointError(f"checkpoint {path} does not fit this model: {exc}") from exc
        self.opt.load_state_dict(ck["opt"])
        self.sched.load_state_dict(ck["sched"])
        self.scaler.load_state_dict(ck["scaler"])
        self.history, self.best_state, self.bad_epochs = ck["history"], ck["best_state"], ck["bad_epochs"]
        self.elapsed_before = self.history.elapsed_s
        self.start_epoch = ck["epoch"]
        torch.set_rng_state(ck["torch_rng"])

    # -- one epoch -----------------------------------------------------------------------
    def train_epoch(self, epoch: int, bar) -> dict:
        model, opt, loader = self.model, self.opt, self.train_loader
        model.train()
        loader.set_epoch(epoch)
        lr = opt.param_groups[0]["lr"]  # the rate this epoch starts with (the schedule steps per batch)
        losses = torch.zeros(self.steps, device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        seen, checked = 0, 0
        t0 = time.perf_counter()
        for i, (x, y) in enumerate(itertools.islice(loader, self.steps)):
            with autocast(self.device, self.precision):
                logits = model(x)
                loss = F.cross_entropy(logits, y, label_smoothing=self.recipe.label_smoothing)
            opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(opt)
            self.scaler.update()
            self.sched.step()
            losses[i] = loss.detach()
            correct += (logits.detach().argmax(1) == y).sum()
            seen += len(y)
            if (i + 1) % self.check_every == 0:
                self.check_finite(losses, checked, i + 1, epoch)
                checked = i + 1
            if bar is not None:
                bar.update(1)
        self.check_finite(losses, checked, self.steps, epoch)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        return {"train_loss": float(losses[:i + 1].mean()), "train_acc": int(correct) / max(seen, 1), "lr": lr,
                "seconds": seconds, "images_per_s": seen / max(seconds, 1e-9)}

    def check_finite(self, losses, start: int, stop: int, epoch: int) -> None:
        block = losses[start:stop]
        if not bool(torch.isfinite(block).all()):
            bad = start + int((~torch.isfinite(block)).nonzero()[0])
            raise NonFiniteLossError(
                f"training loss became {float(losses[bad])} at epoch {epoch + 1}, batch {bad + 1}: "
                f"lower the learning rate (recipe {self.recipe.name!r} uses lr={self.recipe.lr}), "
                f"try precision='fp32' (now {self.precision}), or a residual/weighted merge"
            )

    def end_epoch(self, epoch: int, row: dict) -> bool:
        """Validate, keep the best weights, checkpoint; True when training should stop."""
        val = evaluate(self.model, self.val_loader, self.precision, self.data.num_classes)
        self.clock()
        row.update(epoch=epoch + 1, val_loss=val["loss"], val_acc=val["acc"], elapsed_s=self.history.elapsed_s,
                   **gate_values(self.model))
        h = self.history
        h.rows.append(row)
        if val["acc"] > h.best_val_acc or self.best_state is None:
            h.best_val_acc, h.best_epoch, self.bad_epochs = val["acc"], epoch + 1, 0
            self.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in self.model.state_dict().items()})
        else:
            self.bad_epochs += 1
        if self.recipe.monitor == "val_loss":  # epochs since the lowest val loss (Keras's EarlyStopping)
            losses = [r["val_loss"] for r in h.rows]
            self.bad_epochs = len(losses) - 1 - losses.index(min(losses))
        stop = self.recipe.patience is not None and self.bad_epochs >= self.recipe.patience
        h.stopped_early = stop
        self.save()
        for cb in self.callbacks:
            cb(h)
        return stop

    def clock(self) -> None:
        self.history.elapsed_s = self.elapsed_before + time.perf_counter() - self.t_start

    def run(self, evaluate_test: bool) -> History:
        from tqdm.auto import tqdm

        r = self.recipe
        self.t_start = time.perf_counter()
        total = (r.epochs - self.start_epoch) * self.steps
        bar = tqdm(total=total, desc=type(self.model).__name__, leave=False,
                   disable=not self.progress or total == 0)
        try:
            # a resumed run that had already stopped early stays stopped
            for epoch in range(self.start_epoch, 0 if self.history.stopped_early else r.epochs):
                bar.set_postfix_str(f"epoch {epoch + 1}/{r.epochs}")
                row = self.train_epoch(epoch, bar)
                if self.end_epoch(epoch, row):
                    break
        except KeyboardInterrupt:
            self.history.interrupted = True
            where = f"; {self.checkpoint} resumes after epoch {len(self.history.rows)}" if self.checkpoint else ""
            print(f"Interrupted: returning the history of {len(self.history.rows)} finished epoch(s){where}.")
            return self.history
        finally:
            bar.close()
        if evaluate_test:
            self.final_test()
        self.clock()
        return self.history

    def final_test(self) -> None:
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        test_loader = self.loader("test", 512)
        test = evaluate(self.model, test_loader, self.precision, self.data.num_classes,
                        flip="flip" in self.train_loader.augment)
        self.history.test_flip = test.pop("flip", {})
        self.history.test = test


Callback = Callable[[History], None]

#: Makes the live display's per-epoch callback for ``fit(live=...)``; ``None``: no display.
#: The training loop never imports the figure module: :func:`attnlab.notebook.setup`
#: registers :class:`attnlab.plots.LiveCurves` here when it runs in a notebook.
_live_display: Optional[Callable[[], Callback]] = None


def set_live_display(factory: Optional[Callable[[], Callback]]) -> None:
    """Register the default live display: ``factory()`` gives a fresh per-epoch callback
    for each ``fit`` that shows one (``None`` removes it)."""
    global _live_display
    _live_display = factory


def _live_callbacks(live: Optional[bool], progress: bool) -> list[Callback]:
    if live is None:
        live = progress and _live_display is not None
    if not live:
        return []
    if _live_display is None:
        raise ValueError("fit(live=True) needs a live display: call attnlab.notebook.setup() in a "
                         "notebook, or pass callbacks=[attnlab.plots.LiveCurves()]")
    return [_live_display()]


def fit(model: nn.Module, data: DataSplits, recipe: Recipe, *, device: str = "auto",
        precision: str = "auto", memory_format: str = "auto", seed: int = 0,
        checkpoint: str | Path | None = None, resume: bool = True, progress: bool = True, live: Optional[bool] = None,
        deterministic: bool = False, evaluate_test: bool = True,
        callbacks: Sequence[Callback] = ()) -> History:
    """Train ``model`` on ``data`` with ``recipe`` and return its :class:`History`.

    - ``checkpoint``: file written atomically after every epoch (the epoch before's is
      kept beside it, see :func:`previous_checkpoint`); with ``resume`` an existing one is
      checked against its CRC-32s and continued (a run interrupted after epoch k restarts
      at k + 1 and, with ``deterministic``, gives the same history as an uninterrupted run).
    - ``callbacks``: called with the history after each epoch; raising
      ``KeyboardInterrupt`` in one stops like Ctrl-C.
    - ``memory_format``: ``auto`` (channels-last where the model's convolutions allow
      it), ``channels_last`` or ``contiguous``; the model is converted in place and the
      batches come in that layout (``history.memory_format``). It changes speed, not the
      maths (see :func:`attnlab.hardware.training_memory_format`).
    - ``live``: add the registered live display (:func:`set_live_display`; in a notebook
      after :func:`attnlab.notebook.setup`, loss and accuracy curves) to the callbacks;
      default: when one is registered and ``progress`` is on.
    At the end the weights of the best validation epoch are restored and evaluated once
    on the test split (``history.test``); when training used flips, also with flip
    test-time augmentation (``history.test_flip``).
    """
    seed_everything(seed, deterministic)
    callbacks = [*callbacks, *_live_callbacks(live, progress)]
    t = _Trainer(model, data, recipe, device, precision, memory_format, seed, checkpoint, progress, callbacks)
    if t.checkpoint and resume:
        # a crash between keeping the previous checkpoint and writing the new one leaves only the previous
        latest = next((p for p in (t.checkpoint, previous_checkpoint(t.checkpoint)) if p.exists()), None)
        if latest is not None:
            t.restore(latest)
    return t.run(evaluate_test)
