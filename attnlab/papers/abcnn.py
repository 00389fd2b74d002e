"""``abcnn``: "Attention-Based Convolutional Neural Networks for Image Classification".

**This document cannot be verified.** It has no code and no venue; the
authors it names are the first names of another paper's author list; it refers to a
"Section ??"; it gives no architecture details; and its tables contradict each other.
Its numbers are therefore **claims to test, not targets to reproduce**.

What it describes: after selected convolution stages, a convolution produces attention
logits, a softmax over the spatial positions turns them into a map that sums to one, the
feature maps are multiplied element-wise by the map, and the weighted features continue.
The block built here, with every choice the document leaves open, is
:class:`attnlab.layers.spatial_softmax.SpatialSoftmax` (a 1x1 convolution to one logit
map, softmax over H*W, features scaled by H*W times the map so that a uniform map is the
identity, logits initialised at zero so the module starts as the identity; plain /
residual / weighted merges). Closest published work: Jetley et al.,
"Learn to Pay Attention", ICLR 2018 (arXiv 1804.02391). Here the block follows each
stage of a CIFAR ResNet (ResNet-20 for a CPU, ResNet-110 as in the document's
comparisons); its "no attention" twins are the plain ``resnet20`` and ``resnet110`` of
the ``baselines`` paper.

Recipe stated: SGD, momentum 0.9, weight decay 1e-4, batch 128, 200 epochs, learning rate
0.1 divided by 10 at epochs 100 and 150 (``abcnn_step``); it also mentions cosine
annealing (``abcnn_cosine``: the same with a cosine decay).

Claims (CIFAR test top-1 accuracy, %): the attention ResNet-110 96.2 (CIFAR-10) and 80.5
(CIFAR-100), against ResNet-110 93.6 / 72.7, SE-ResNet-110 95.2 in one place and 95.3 in
another, CBAM-ResNet-110 95.5; its ablation "without attention" gives 93.8 (CIFAR-10) and
73.6 or 74.3 (CIFAR-100), which contradicts the 93.6 / 72.7 of its own comparison table
for what should be the same network. It also reports top-5 accuracy. The claimed gains,
+2.4 points on CIFAR-10 and about +7 on CIFAR-100 from one light module per stage under a
standard schedule, are far above what SE or CBAM give on CIFAR ResNets (a few tenths to
about one point). Its ResNet-110 (93.6%) is He et al.'s published 6.43% error (93.57%)
rounded, while its SE-ResNet-110 (95.2-95.3%) beats the SE paper's own (94.79%).

Comparators' own published CIFAR numbers: He et al. 2016, ResNet-110 6.43% CIFAR-10 test
error (registered with the ``baselines`` paper); Hu et al., "Squeeze-and-Excitation
Networks" (arXiv 1709.01507, journal version), CIFAR-10 test error ResNet-110 6.37 (their
own run) and SE-ResNet-110 5.21. The CBAM paper (Woo et al. 2018, arXiv 1807.06521)
reports ImageNet, MS COCO and VOC results only: there is no CBAM CIFAR figure to quote.
"""
from __future__ import annotations

from ..recipes import Recipe
from .registry import AblationAxis, Claim, ModelSpec, Paper, SpeedTarget, register_paper

DOC = "the abcnn document (unverifiable: no code, no venue)"
SE_PAPER = "Hu et al., Squeeze-and-Excitation Networks (arXiv 1709.01507), CIFAR-10 table"
DOC_PROTOCOL = "as stated: SGD, 200 epochs, lr/10 at 100 and 150; selection and seeds not stated"
CONTRA_RESNET = ("contradiction: its comparison table gives ResNet-110 93.6 (CIFAR-10) / 72.7 (CIFAR-100), "
                 "its ablation 'without attention' 93.8 / 73.6-74.3 for what should be the same network")
CONTRA_SE = "contradiction: the document gives SE-ResNet-110 as 95.2 in one place and 95.3 in another"
CONTRA_C100 = "contradiction: the ablation's CIFAR-100 'without attention' appears as both 73.6 and 74.3"
#: the document's internal contradictions, in words
CONTRADICTIONS = (CONTRA_RESNET, CONTRA_SE, CONTRA_C100)

_ATTN = "spatial_softmax"
MODELS = (
    ModelSpec("resnet20_spatial_softmax", "ResNet-20 + spatial softmax", "cifar_resnet", {"depth": 20}, _ATTN,
              recipe="abcnn_step", params=269_834,
              description="ResNet-20 + a spatial-softmax map after each stage (one map, plain merge)"),
    ModelSpec("resnet110_spatial_softmax", "ResNet-110 + spatial softmax", "cifar_resnet", {"depth": 110}, _ATTN,
              recipe="abcnn_step", params=1_728_074, slow_on_cpu=True,
              description="ResNet-110 + a spatial-softmax map after each stage, the document's comparison size"),
)

COMPARISON, ABLATION = "comparison table", "ablation table"
_doc_c10 = (("resnet110_spatial_softmax", 96.2, COMPARISON, ""),
            ("resnet110", 93.6, COMPARISON, CONTRA_RESNET),
            ("se_resnet110", 95.2, COMPARISON, CONTRA_SE),
            ("se_resnet110", 95.3, COMPARISON, CONTRA_SE),
            ("cbam_resnet110", 95.5, COMPARISON, ""),
            ("resnet110", 93.8, ABLATION, CONTRA_RESNET))
_doc_c100 = (("resnet110_spatial_softmax", 80.5, COMPARISON, ""),
             ("resnet110", 72.7, COMPARISON, CONTRA_RESNET),
             ("resnet110", 73.6, ABLATION, CONTRA_RESNET + "; " + CONTRA_C100),
             ("resnet110", 74.3, ABLATION, CONTRA_RESNET + "; " + CONTRA_C100))


def _doc_claims(dataset: str, rows) -> list[Claim]:
    return [Claim(m, dataset, "test_acc", v, setting=s,
                  protocol=DOC_PROTOCOL + ("; " + note if note else ""), source=DOC)
            for m, v, s, note in rows]


PAPER = register_paper(Paper(
    id="abcnn",
    title="Attention-Based Convolutional Neural Networks for Image Classification",
    authors="unverifiable (the names given are the first names of another paper's author list)",
    year=0, link="",  # no date and no public record to link
    summary=__doc__, notebook="06_abcnn",
    models=MODELS,
    recipes=(
        Recipe("abcnn_step", "sgd", 0.1, 1e-4, 200, "step", (0.5, 0.75),
               source="abcnn document: SGD momentum 0.9, wd 1e-4, batch 128, 200 epochs, lr/10 at 100 and 150"),
        Recipe("abcnn_cosine", "sgd", 0.1, 1e-4, 200, "cosine",
               source="abcnn document's cosine annealing variant: the same SGD settings, cosine decay"),
    ),
    claims=tuple(
        _doc_claims("cifar10", _doc_c10) + _doc_claims("cifar100", _doc_c100)
        + [Claim(m, "cifar10", "test_error", e,
                 protocol="the SE paper's own runs (its ResNet-110 re-run, not He et al.'s 6.43)", source=SE_PAPER)
           for m, e in (("resnet110", 6.37), ("se_resnet110", 5.21))]),
    ablations=(
        AblationAxis("resnet20_spatial_softmax", "merge", ("plain", "residual", "weighted"), "merge with the input"),
        AblationAxis("resnet20_spatial_softmax", "attn_stages", ((1,), (2,), (3,), (1, 2, 3)),
                     "stages followed by the module"),
        AblationAxis("resnet20_spatial_softmax", "groups", (1, 2, 4), "maps per module (channel groups)"),
        AblationAxis("resnet20_spatial_softmax", "logit_init", ("zero", "kaiming"),
                     "initial map: uniform (zero logits) or Kaiming logits"),
    ),
    targets=(
        SpeedTarget("spatial softmax after every stage: step time vs ResNet-20",
                    "resnet20_spatial_softmax", "resnet20", "step_time"),
        *(SpeedTarget(f"spatial softmax after stage {i} only: step time vs ResNet-20",
                      "resnet20_spatial_softmax", "resnet20", "step_time", model_kw={"attn_stages": (i,)})
          for i in (1, 2, 3)),
    ),
))
