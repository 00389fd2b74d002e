"""``embedding_attention``: "Embedding Attention in CNNs for Improved Image Classification"
(a course report, in Keras, on CIFAR-10).

**The model** (:class:`attnlab.models.embedding_cnn.EmbeddingCNN`, its final Keras graph):
Conv3x3(64)-ReLU, Conv3x3(64)-ReLU, BatchNorm, MaxPool 2 (16x16x64), parameter-free
dot-product attention with the feature map as query, key and value, Conv5x5(256)-ReLU,
Conv5x5(256)-ReLU, BatchNorm, MaxPool 3 (5x5x256), Dropout 0.25, Flatten (6400),
Dense 512-ReLU, Dropout 0.5, Dense 10: 5,370,314 trainable parameters (Keras prints
5,370,954, counting the 640 BatchNorm moving statistics). The printed builder code has a
Dropout 0.1 after the first pool that the final graph does not: the graph is followed.

**The attention, code against text.** The layer is ``keras.layers.Attention()([x, x])``
on a ``(B, H, W, C)`` tensor. Keras multiplies the last two axes, so the scores are
``B x H x W x W``: each image row attends **along W only, within itself**, with no scaling
and no weights (:class:`attnlab.layers.embedding_attention.EmbeddingAttention`,
``mode="row"``, this paper's default). The text describes attention over all positions
(``mode="global"``, scores ``HW x HW``). ``embedding_cnn_none`` has no attention layer.

**Recipe** (``embedding_attention``): AdamW with Keras's defaults (lr 1e-3, weight decay
0.004, epsilon 1e-7), cross-entropy, 45 epochs at a constant rate, Keras's default batch
of 32 (the report states none), a 40k/10k train/validation split of CIFAR-10
(:data:`SPLITS`) and geometric augmentation (here: each dataset's standard augmentation,
random crops and flips for CIFAR-10). The layer sizes were tuned with Keras Tuner's
Hyperband (:mod:`attnlab.tune`): first-block kernel 3/5, first pool 2/3, second-block
filters 16..512, kernel 3/5, second pool 2/3, dense units 32..1024; objective validation
accuracy, at most 30 epochs, reduction factor 3, early stopping on validation loss
(patience 5).

**Published test results** (CIFAR-10): loss 0.467, accuracy 85.4 %, precision 0.900,
recall 0.823, F1 0.855. Precision 0.900 with recall 0.823 and accuracy 0.854 cannot be
macro averages of a balanced 10-class problem with nearly equal per-class numbers; they
match Keras's ``Precision()``/``Recall()`` metrics, which threshold every one-hot output
at 0.5 and count all 10 x N entries as binary decisions (:mod:`attnlab.metrics` computes
both readings). The F1 0.855 is not the harmonic mean of those two (0.860); it sits next
to the accuracy, as a macro F1 of arg-max predictions would (Keras's ``F1Score`` with no
threshold), so it was probably computed that way.
"""
from __future__ import annotations

from ..recipes import Recipe
from .registry import AblationAxis, Claim, ModelSpec, Paper, SpeedTarget, register_paper

REPORT = "Embedding Attention report, test set"
PROTOCOL = "45 epochs, 40k/10k split, layer sizes tuned by Hyperband on the validation split"
KERAS_METRICS = (PROTOCOL + "; precision and recall as Keras's thresholded binary metrics "
                 "(not macro averages, by their values)")
PARAMS = 5_370_314

#: the report's train/validation split per dataset (data options for the run config)
SPLITS = {"cifar10": {"val_size": 10_000}}


#: model widths per profile: the report's model at ``full``; on a CPU the full model trains
#: at a few images per second (about 0.56 G multiply-adds per 32x32 image, forward), so
#: ``smoke`` and ``quick`` narrow both blocks and the dense layer (same graph, same attention)
SIZES = {"smoke": {"filters1": 8, "filters2": 16, "dense": 32},
         "quick": {"filters1": 16, "filters2": 32, "dense": 64},
         "full": {}}

#: data subsets per profile on top of the profile's own (``quick``: fewer images, so three
#: models and a search fit in minutes on a CPU)
SUBSETS = {"quick": {"train_subset": 1500, "eval_subset": 500}}


def split_kw(dataset: str) -> dict:
    """Data options for the report's split on ``dataset`` (40k/10k on CIFAR-10; other
    datasets keep their own validation size)."""
    return dict(SPLITS.get(dataset, {}))


def size_kw(profile: str) -> dict:
    """Model options for ``profile`` (:data:`SIZES`); ``{}`` is the report's model."""
    if profile not in SIZES:
        raise ValueError(f"unknown profile {profile!r}; available: {', '.join(SIZES)}")
    return dict(SIZES[profile])


def data_kw(dataset: str, profile: str) -> dict:
    """Data options for ``dataset`` at ``profile``: the report's split, plus the CPU subsets
    of :data:`SUBSETS` (none at ``full``)."""
    return {**split_kw(dataset), **SUBSETS.get(profile, {})}


MODELS = (
    ModelSpec("embedding_cnn", "row attention (code)", "embedding_cnn", {}, "embedding_attention",
              recipe="embedding_attention", params=PARAMS,
              description="the report's Keras CNN with Attention()([x, x]): each image row attends within itself"),
    ModelSpec("embedding_cnn_global", "global attention (text)", "embedding_cnn", {}, "embedding_attention",
              {"mode": "global"}, recipe="embedding_attention", params=PARAMS,
              description="the same CNN, attention over all 16x16 positions as the report's text describes"),
    ModelSpec("embedding_cnn_none", "no attention", "embedding_cnn", {}, None,
              recipe="embedding_attention", params=PARAMS,
              description="the same CNN without the attention layer"),
)

PAPER = register_paper(Paper(
    id="embedding_attention",
    title="Embedding Attention in CNNs for Improved Image Classification",
    authors="course report (Keras)", year=0, link="",  # no date and no public record to link
    summary=__doc__, notebook="05_embedding_attention",
    models=MODELS,
    recipes=(
        Recipe("embedding_attention", "adamw", 1e-3, 0.004, 45, "constant", batch_size=32, eps=1e-7,
               source="the report: AdamW with Keras defaults (lr 1e-3, wd 0.004, eps 1e-7), 45 epochs, "
                      "Keras's default batch of 32"),
    ),
    claims=(
        Claim("embedding_cnn", "cifar10", "test_loss", 0.467, protocol=PROTOCOL, source=REPORT),
        Claim("embedding_cnn", "cifar10", "test_acc", 85.4, protocol=PROTOCOL, source=REPORT),
        Claim("embedding_cnn", "cifar10", "precision", 90.0, protocol=KERAS_METRICS, source=REPORT),
        Claim("embedding_cnn", "cifar10", "recall", 82.3, protocol=KERAS_METRICS, source=REPORT),
        Claim("embedding_cnn", "cifar10", "f1", 85.5, protocol=KERAS_METRICS, source=REPORT),
    ),
    ablations=(
        AblationAxis("embedding_cnn", "mode", ("row", "global", "none"),
                     "attention: row (code) / global (text) / none"),
    ),
    # measured only, at the recipe's batch of 32 (the full model is slow on a CPU)
    targets=(
        SpeedTarget("row attention step time vs none", "embedding_cnn", "embedding_cnn_none", "step_time",
                    batch_size=32),
        SpeedTarget("global attention step time vs none", "embedding_cnn_global", "embedding_cnn_none",
                    "step_time", batch_size=32),
    ),
))
