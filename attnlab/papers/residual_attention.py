"""``residual_attention``: a student replication in Keras of the Residual Attention Network.

Wang et al., "Residual Attention Network for Image Classification", CVPR 2017,
arXiv 1704.06904; the source document the workbook follows is a student replication of it.

**Mechanism** (:mod:`attnlab.layers.residual_attention`). An attention module runs ``p``
pre-processing units, then a trunk branch ``T`` (``t`` units) beside a soft mask branch
``M`` (max-pool bottom-up with ``r`` units between pools and a skip unit at each scale,
top-down upsampling that adds the skips, two 1x1 convolutions, an activation), combines
them, and ends with ``p`` post-processing units; ``p, t, r = 1, 2, 1``. Units are
pre-activation bottlenecks. Attention residual learning (ARL) gives ``H = (1 + M) * T``;
naive attention learning (NAL) ``H = M * T``. The paper's teaching point: NAL degrades as
modules stack (CIFAR-10 error 5.89 -> 7.18 % from Attention-56 to -164) while ARL improves
(5.52 -> 4.31 %), because a product of masks in [0, 1] fades the features and ARL keeps
the trunk (a mask of 0 leaves ``H = T``).

**Models.** ``attention56`` / ``attention92``: our CIFAR definition (the paper gives no
CIFAR layout): three stages at 32x32 / 16x16 / 8x8 with ResNet-164's bottleneck outputs
64 / 128 / 256, one / two attention modules per stage with 2 / 1 / 0 mask pools; depth
``36m + 20``. Attention-92 has 1,825,690 parameters, near the paper's 1.9M (its ImageNet
module layout 1 / 2 / 3, ``modules=(1, 2, 3)``, gives 2,330,842). ``*_nomask``: the same
networks with every mask removed (each module keeps its trunk), a pre-activation ResNet
of equal depth and width. ``resnet164_preact``: He et al.'s pre-activation ResNet-164
(1,703,258). ``attention56_replication``: the replication's own network (16x16 / 8x8 /
4x4 stages, a 1x1 projection shortcut in every unit, nearest upsampling, a bias-only
two-conv mask head): 2,877,290 parameters (``layernorm``: 2,878,186; Keras printed
2,892,970 / 2,893,866 because it counts BatchNorm running statistics). Its Attention-92
script fed the second stage-2 module from the stage's first unit, dropping the first
module from the graph; ``attention92_replication`` chains all six modules.

**Mask activations.** ``mixed`` (sigmoid per element), ``channel`` (L2 normalisation over
channels at each position), ``spatial`` (per channel, a z-score over positions, then
sigmoid). The replication's "spatial attention" was a LayerNorm across channels at each
position, the opposite grouping: it is offered as ``layernorm``.

**Recipes.** Paper (``ran_paper``): SGD with Nesterov momentum 0.9, weight decay 1e-4,
batch 64, lr 0.1 divided by 10 at 64k and 96k of 160k iterations (fractions 0.4 and 0.6;
160k iterations of 64 images are 205 epochs of 50k). Replication (``ran_replication_adam``):
Adam (lr 1e-3, Keras' default), batch 64, early stopping with patience 15 on validation;
for Attention-92 an SGD variant (``ran_replication_sgd``): Nesterov, lr 0.1 divided by 10
at epochs 65, 120 and 180. Neither the number of epochs the replication allowed nor its
weight decay is stated: 200 epochs and none are assumed.

**Published numbers.** Paper, CIFAR-10 test error ARL / NAL: Attention-56 5.52 / 5.89,
-92 4.99 / 5.35, -128 4.44 / 5.57, -164 4.31 / 7.18; activations on Attention-56: mixed
5.52, channel 6.24, spatial 6.33; CIFAR-100 Attention-92 21.71. Replication (Adam):
Attention-56 ARL "spatial" (LayerNorm) 86.65 %, ARL mixed 86.26 %, NAL mixed 85.66 %
test accuracy; Attention-92 ARL "spatial" with SGD 78.74 %; CIFAR-100 Attention-56 NAL
mixed 53.46 %, ARL 54.76 %. The paper's baseline, pre-activation ResNet-164 (He et al.
2016, arXiv 1603.05027): 5.46 % CIFAR-10 and 24.33 % CIFAR-100 test error. The
replication's numbers come from its own network (2.9M parameters) and Adam; the paper's
from its own CIFAR network and 160k SGD iterations.
"""
from __future__ import annotations

from ..recipes import Recipe
from .registry import AblationAxis, Claim, ModelSpec, Paper, SpeedTarget, register_paper

PAPER_SRC = "Wang et al. 2017 (arXiv 1704.06904), CIFAR experiments"
REPL_SRC = "student replication in Keras (the source document)"
HE_SRC = "He et al. 2016 (arXiv 1603.05027), quoted by Wang et al. 2017 as their baseline"
PAPER_PROTOCOL = ("the paper's own CIFAR network; Nesterov SGD, batch 64, 160k iterations, "
                  "lr / 10 at 64k and 96k; standard crop + flip augmentation")
REPL_ADAM = "the replication's network (2.9M params); Adam, batch 64, early stopping (patience 15) on validation"
REPL_SGD = "the replication's network; Nesterov SGD lr 0.1, / 10 at epochs 65, 120, 180"
#: the replication's mask settings (its layout and unit style are the ran_replication backbone's defaults)
REPLICATION_MASK = {"upsample": "nearest", "mask_head": "linear"}

MODELS = (
    ModelSpec("attention56", "Attention-56", "attention_net", {"modules": (1, 1, 1)}, "residual_attention",
              recipe="ran_paper", params=1_081_818, slow_on_cpu=True,
              description="Attention-56 for 32x32 inputs: one attention module per stage, ARL, mixed mask"),
    ModelSpec("attention92", "Attention-92", "attention_net", {"modules": (2, 2, 2)}, "residual_attention",
              recipe="ran_paper", params=1_825_690, slow_on_cpu=True,
              description="Attention-92 for 32x32 inputs: two attention modules per stage, ARL, mixed mask"),
    ModelSpec("attention56_nomask", "Attention-56, masks off", "attention_net", {"modules": (1, 1, 1)},
              recipe="ran_paper", params=708_890, slow_on_cpu=True,
              description="Attention-56 with every soft mask removed: a pre-activation ResNet-56 of the same widths"),
    ModelSpec("attention92_nomask", "Attention-92, masks off", "attention_net", {"modules": (2, 2, 2)},
              recipe="ran_paper", params=1_079_834, slow_on_cpu=True,
              description="Attention-92 with every soft mask removed: a pre-activation ResNet-92 of the same widths"),
    ModelSpec("resnet164_preact", "Pre-act ResNet-164", "preact_resnet", {"depth": 164},
              recipe="ran_paper", params=1_703_258, slow_on_cpu=True,
              description="pre-activation bottleneck ResNet-164 (He et al. 2016, arXiv 1603.05027)"),
    ModelSpec("attention56_replication", "Attention-56 (replication)", "ran_replication", {},
              "residual_attention", dict(REPLICATION_MASK), recipe="ran_replication_adam", params=2_877_290,
              slow_on_cpu=True,
              description="the Keras replication's Attention-56: 16x16 / 8x8 / 4x4 stages, a projection in every unit"),
    ModelSpec("attention92_replication", "Attention-92 (replication)", "ran_replication", {"modules": (1, 2, 3)},
              "residual_attention", dict(REPLICATION_MASK), recipe="ran_replication_sgd", params=4_849_706,
              slow_on_cpu=True,
              description="the replication's Attention-92 (modules 1 / 2 / 3), with its module chaining fixed"),
)

# Each claim is filed under the settings it illustrates: "" for a model's own defaults
# (ARL, mixed), "parameter=value" for a point of an ablation axis. A number that is both
# (Attention-56 ARL mixed, 5.52) appears once per view, with the same source.
_paper_default = [("attention56", "cifar10", 5.52), ("attention92", "cifar10", 4.99),
                  ("Attention-128", "cifar10", 4.44), ("Attention-164", "cifar10", 4.31),
                  ("attention92", "cifar100", 21.71)]
_paper_learning = [("attention56", "arl", 5.52), ("attention56", "nal", 5.89), ("attention92", "arl", 4.99),
                   ("attention92", "nal", 5.35), ("Attention-128", "arl", 4.44), ("Attention-128", "nal", 5.57),
                   ("Attention-164", "arl", 4.31), ("Attention-164", "nal", 7.18)]
_paper_activation = [("mixed", 5.52), ("channel", 6.24), ("spatial", 6.33)]
_he2016 = [("cifar10", 5.46), ("cifar100", 24.33)]
_repl = [("attention56_replication", "cifar10", "", 86.26, REPL_ADAM),
         ("attention56_replication", "cifar10", "learning=arl", 86.26, REPL_ADAM),
         ("attention56_replication", "cifar10", "learning=nal", 85.66, REPL_ADAM),
         ("attention56_replication", "cifar10", "activation=mixed", 86.26, REPL_ADAM),
         ("attention56_replication", "cifar10", "activation=layernorm", 86.65, REPL_ADAM),
         ("attention92_replication", "cifar10", "activation=layernorm", 78.74, REPL_SGD),
         ("attention56_replication", "cifar100", "", 54.76, REPL_ADAM),
         ("attention56_replication", "cifar100", "learning=arl", 54.76, REPL_ADAM),
         ("attention56_replication", "cifar100", "learning=nal", 53.46, REPL_ADAM)]

PAPER = register_paper(Paper(
    id="residual_attention",
    title="Residual Attention Network for Image Classification (a student replication)",
    authors="Wang, Jiang, Qian, Yang, Li, Zhang, Wang, Tang", year=2017, link="https://arxiv.org/abs/1704.06904",
    summary=__doc__, notebook="03_residual_attention",
    models=MODELS,
    recipes=(
        Recipe("ran_paper", "sgd", 0.1, 1e-4, 205, "step", (0.4, 0.6), nesterov=True, batch_size=64,
               source="Wang et al. 2017: Nesterov SGD, batch 64, lr / 10 at 64k and 96k of 160k iterations"),
        Recipe("ran_replication_adam", "adam", 1e-3, 0.0, 200, "constant", batch_size=64, patience=15,
               source="the replication: Adam (Keras defaults), batch 64, early stopping patience 15 "
                      "(epoch cap and weight decay not stated: 200 and none assumed)"),
        Recipe("ran_replication_sgd", "sgd", 0.1, 0.0, 200, "step", (65 / 200, 120 / 200, 180 / 200),
               nesterov=True, batch_size=64,
               source="the replication's Attention-92: Nesterov SGD lr 0.1, / 10 at epochs 65, 120, 180 "
                      "(200 epochs and no weight decay assumed)"),
    ),
    claims=tuple(
        [Claim(m, d, "test_error", v, protocol=PAPER_PROTOCOL, source=PAPER_SRC) for m, d, v in _paper_default]
        + [Claim(m, "cifar10", "test_error", v, setting=f"learning={lr}", protocol=PAPER_PROTOCOL,
                 source=PAPER_SRC) for m, lr, v in _paper_learning]
        + [Claim("attention56", "cifar10", "test_error", v, setting=f"activation={a}",
                 protocol=PAPER_PROTOCOL + "; ARL", source=PAPER_SRC) for a, v in _paper_activation]
        + [Claim("resnet164_preact", d, "test_error", v, source=HE_SRC,
                 protocol="He et al.'s own CIFAR training (SGD, crop + flip augmentation)") for d, v in _he2016]
        + [Claim(m, d, "test_acc", v, setting=st, protocol=p, source=REPL_SRC) for m, d, st, v, p in _repl]),
    ablations=(
        AblationAxis("attention56", "learning", ("arl", "nal"), "ARL vs NAL, Attention-56"),
        AblationAxis("attention92", "learning", ("arl", "nal"), "ARL vs NAL, Attention-92"),
        AblationAxis("attention56", "activation", ("mixed", "channel", "spatial", "layernorm"),
                     "mask activation (layernorm: the replication's 'spatial')"),
        AblationAxis("attention56_replication", "learning", ("arl", "nal"), "ARL vs NAL, replication network"),
        AblationAxis("attention56_replication", "activation", ("mixed", "layernorm"),
                     "replication's mixed vs its 'spatial' (LayerNorm)"),
        AblationAxis("attention56", "upsample", ("bilinear", "nearest"), "mask upsampling (paper vs replication)"),
        AblationAxis("attention56", "projection", ("when_needed", "every"),
                     "projection shortcuts (paper vs the replication's every unit)"),
    ),
    targets=tuple(
        SpeedTarget(f"Attention-56 {what} vs masks off, batch {b}", "attention56", "attention56_nomask",
                    measure, limit=None, batch_size=b)
        for b in (64, 128) for what, measure in (("step time", "step_time"), ("extra peak memory (GiB)",
                                                                            "extra_memory_gib"))),
))
