"""``aaconv``: a simplified replication of "Attention Augmented Convolutional Networks".

Bello, Zoph, Vaswani, Shlens, Le, ICCV 2019 (arXiv 1904.09925). An attention-augmented
convolution (:class:`attnlab.layers.aaconv.AugmentedConv2d`) concatenates a ``k x k``
convolution with ``F_out - d_v`` filters and multi-head self-attention with ``d_v``
output channels over all positions, with 2-D relative position logits, then
BatchNorm. Bello et al. augment the **first convolution of every residual block** of
Wide-ResNet-28-10 with ``N_h = 8`` heads, ``kappa = d_k / F_out = 0.2``,
``upsilon = d_v / F_out = 0.1`` and at least 20 key dimensions per head, and train with
SGD (momentum 0.9) whose rate warms up linearly to ``0.2 * B / 256`` over the first 5%
of training, then decays along a cosine (recipe ``bello2019``; the schedule is
``warmup_cosine``). They report AA-WRN-28-10 about one point better than WRN-28-10 on
CIFAR-100.

The source of this module is a student replication in TensorFlow on CIFAR-10 (45k/5k/10k
split, pad to 40 and crop 32, horizontal flips): ResNet-34 (with the ImageNet stem:
7x7 stride-2 convolution and max-pool, so the last stage sees 2x2 maps, their stated
reason attention could not help) trained with Adam, and WRN-28-10 trained with Nesterov
SGD at ``0.1 * 0.2^floor(epoch / 30)`` for 60 epochs. They ran out of memory and could
augment only **one layer**: the third group's first convolution of the WRN, the last
stage of ResNet-34. Published CIFAR-10 test accuracies: ResNet-34 86.99, AA-ResNet-34
86.76; WRN-28-10 89.10, AA-WRN-28-10 88.40, AA-WRN-28-10 without relative embeddings
(NRE) 88.19. Without data augmentation: ResNet-34 81.23, WRN-28-10 87.26.

Reading these numbers:

1. AA lost to the plain network in both of the replication's comparisons, with one seed
   each; differences of a few tenths are within what changing the seed does.
2. With the ImageNet stem the augmented layer of ResNet-34 attends over 1x1 maps (its
   input is 2x2 and the attention runs on the stride-2 grid): a softmax over one
   position is 1, so the "attention" is a learned 1x1 projection. ``stem="cifar"``
   (``resnet34_cifarstem``) keeps 4x4 maps in the last stage.
3. The replication's AA WRN and Bello et al.'s differ in where the attention sits
   (one layer vs every block) and in the dataset (CIFAR-10 vs CIFAR-100), so the two
   results do not contradict each other.
4. Memory is the binding constraint: explicit attention keeps ``N_h (hw)^2`` floats per
   image and layer. :mod:`attnlab.memory` predicts it and refuses what will not fit.

The public PyTorch port most people start from breaks in training on current PyTorch (it
scales ``q`` in place on a view), uses a ``k x k`` QKV convolution, initialises the
relative tables with std 1 and has no BatchNorm after the concatenation; the block here
does none of these (see its docstring).

Models: ``wrn16_4`` / ``aa_wrn16_4`` / ``aa_wrn16_4_nre`` (2.7M parameters; attention on
the third group's first convolution, as the replication could afford) and the CPU-size
``wrn10_2`` family (0.3M) that the notebook trains in minutes; ``wrn28_10`` (36.5M),
``aa_wrn28_10`` (Bello et al.'s placement), ``aa_wrn28_10_last`` and
``aa_wrn28_10_last_nre`` (the replication's); ``resnet34`` / ``aa_resnet34`` (ImageNet
stem, the replication's) and ``resnet34_cifarstem`` / ``aa_resnet34_cifarstem``. In
every AA model the backbone's BatchNorm after the slot normalises the concatenation
(``batchnorm=False`` in the block).
"""
from __future__ import annotations

from ..recipes import Recipe
from .registry import AblationAxis, Claim, ModelSpec, Paper, SpeedTarget, register_paper

#: Bello et al.'s block settings that differ from the block's defaults (kappa 0.2,
#: upsilon 0.1, 8 heads and relative logits are the defaults); the backbone's BN follows
AA_KW = {"min_dk_per_head": 20, "batchnorm": False}
NRE_KW = {**AA_KW, "relative": False}

AUG_ON = {"augment": "crop_flip"}
AUG_OFF = {"augment": "none"}

REPL = "simplified replication of Bello et al. (TensorFlow, CIFAR-10)"
BELLO = "Bello et al. 2019, Table 1 (CIFAR-100)"
REPL_SPLIT = "45k/5k/10k split, pad to 40 + crop 32 + flip, one run"


def _wrn(name: str, label: str, depth: int, k: int, params: int, attn_kw=None, at: str = "last_first",
         recipe: str = "bello2019", slow: bool = True, description: str = "") -> ModelSpec:
    kw = {"depth": depth, "widen_factor": k}
    if attn_kw is not None:
        kw["attn_at"] = at
    return ModelSpec(name, label, "wrn", kw, "aaconv" if attn_kw is not None else None, dict(attn_kw or {}),
                     recipe=recipe, params=params, slow_on_cpu=slow, description=description)


def _resnet34(name: str, label: str, stem: str, params: int, attn_kw=None) -> ModelSpec:
    kw = {"stem": stem, **({"attn_at": "last"} if attn_kw is not None else {})}
    where = "; attention in every block of the last stage" if attn_kw is not None else ""
    return ModelSpec(name, label, "resnet_basic", kw, "aaconv" if attn_kw is not None else None,
                     dict(attn_kw or {}), recipe="aa_repl_adam", params=params, slow_on_cpu=True,
                     description=f"ResNet-34, {stem} stem{where}")


MODELS = (
    _wrn("wrn10_2", "WRN-10-2", 10, 2, 303_706, slow=False,
         description="CPU-size WRN-10-2 (one block per group)"),
    _wrn("aa_wrn10_2", "AA-WRN-10-2", 10, 2, 312_922, AA_KW, slow=False,
         description="WRN-10-2, AA on the third group's first convolution"),
    _wrn("aa_wrn10_2_nre", "AA-WRN-10-2 NRE", 10, 2, 312_442, NRE_KW, slow=False,
         description="as aa_wrn10_2 without relative logits"),
    _wrn("wrn16_4", "WRN-16-4", 16, 4, 2_748_890, description="WRN-16-4 (Zagoruyko and Komodakis 2016)"),
    _wrn("aa_wrn16_4", "AA-WRN-16-4", 16, 4, 2_766_818, AA_KW,
         description="WRN-16-4, AA on the third group's first convolution (the replication's placement)"),
    _wrn("aa_wrn16_4_nre", "AA-WRN-16-4 NRE", 16, 4, 2_766_218, NRE_KW,
         description="as aa_wrn16_4 without relative logits"),
    _wrn("wrn28_10", "WRN-28-10", 28, 10, 36_479_194, recipe="aa_repl_wrn",
         description="WRN-28-10 (Zagoruyko and Komodakis 2016)"),
    _wrn("aa_wrn28_10", "AA-WRN-28-10", 28, 10, 36_259_706, AA_KW, at="all",
         description="Bello et al.: AA on the first convolution of every residual block"),
    _wrn("aa_wrn28_10_last", "AA-WRN-28-10 (one layer)", 28, 10, 36_422_898, AA_KW, recipe="aa_repl_wrn",
         description="the replication: AA on the third group's first convolution only"),
    _wrn("aa_wrn28_10_last_nre", "AA-WRN-28-10 NRE (one layer)", 28, 10, 36_422_298, NRE_KW,
         recipe="aa_repl_wrn", description="as aa_wrn28_10_last without relative logits"),
    _resnet34("resnet34", "ResNet-34", "imagenet", 21_289_802),
    _resnet34("aa_resnet34", "AA-ResNet-34", "imagenet", 21_216_162, AA_KW),
    _resnet34("resnet34_cifarstem", "ResNet-34 (CIFAR stem)", "cifar", 21_282_122),
    _resnet34("aa_resnet34_cifarstem", "AA-ResNet-34 (CIFAR stem)", "cifar", 21_209_202, AA_KW),
)

_repl = [("resnet34", 86.99, "ImageNet stem, Adam"),
         ("aa_resnet34", 86.76, "ImageNet stem, Adam; AA in the last stage"),
         ("wrn28_10", 89.10, "Nesterov SGD, lr 0.1 * 0.2^floor(epoch/30), 60 epochs"),
         ("aa_wrn28_10_last", 88.40, "as WRN-28-10; AA on the third group's first convolution only"),
         ("aa_wrn28_10_last_nre", 88.19, "as AA-WRN-28-10, without relative embeddings")]
_augment = [("resnet34", 86.99, 81.23), ("wrn28_10", 89.10, 87.26)]

PAPER = register_paper(Paper(
    id="aaconv",
    title="Attention Augmented Convolutional Networks (a simplified replication)",
    authors="Bello, Zoph, Vaswani, Shlens, Le", year=2019, link="https://arxiv.org/abs/1904.09925",
    summary=__doc__, notebook="04_aaconv",
    models=MODELS,
    recipes=(
        Recipe("bello2019", "sgd", 0.1, 5e-4, 200, "warmup_cosine",
               source="Bello et al.: SGD momentum 0.9, lr warmed up linearly to 0.2 * B / 256 (0.1 at batch 128) "
                      "over 5% of training, then cosine; 200 epochs and weight decay 5e-4 as the WRN recipe"),
        Recipe("aa_repl_wrn", "sgd", 0.1, 5e-4, 60, "step", milestones=(0.5,), gamma=0.2, nesterov=True,
               source="the replication's WRN-28-10: Nesterov SGD, lr 0.1 * 0.2^floor(epoch / 30), 60 epochs"),
        Recipe("aa_repl_adam", "adam", 1e-3, 0.0, 60, "constant",
               source="the replication's ResNet-34: Adam lr 1e-3 (their step changes are not specified in "
                      "detail and not reproduced); 60 epochs as their WRN"),
    ),
    claims=tuple(
        [Claim(m, "cifar10", "test_acc", v, protocol=f"{note}; {REPL_SPLIT}", source=REPL) for m, v, note in _repl]
        + [Claim(m, "cifar10", "test_acc", v, setting=f"data_kw={aug}", protocol=f"augmentation ablation; {REPL_SPLIT}",
                 source=REPL) for m, on, off in _augment for v, aug in ((on, AUG_ON), (off, AUG_OFF))]
        + [Claim("wrn28_10", "cifar100", "test_acc", 80.3, protocol="Bello et al.'s WRN-28-10 baseline", source=BELLO),
           Claim("aa_wrn28_10", "cifar100", "test_acc", 81.6,
                 protocol="AA in every residual block, N_h=8, kappa=0.2, upsilon=0.1, >= 20 key dims per head",
                 source=BELLO)]),
    ablations=(
        AblationAxis("wrn10_2", "model", ("wrn10_2", "aa_wrn10_2", "aa_wrn10_2_nre"), "conv vs AA vs AA-NRE"),
        AblationAxis("aa_wrn10_2", "data_kw", (AUG_ON, AUG_OFF), "data augmentation on / off"),
        # WRN-10-2 has one block per group, so "last" would be "last_first" again
        AblationAxis("aa_wrn10_2", "attn_at", ("last_first", "all"), "where the attention sits"),
        AblationAxis("aa_wrn16_4", "attn_at", ("last_first", "last", "all"), "where the attention sits, WRN-16-4"),
        AblationAxis("wrn16_4", "model", ("wrn16_4", "aa_wrn16_4", "aa_wrn16_4_nre"), "conv vs AA vs AA-NRE, WRN-16-4"),
    ),
    targets=(
        SpeedTarget("AA-WRN-16-4 step time vs WRN-16-4", "aa_wrn16_4", "wrn16_4", "step_time", batch_size=128),
        SpeedTarget("AA-WRN-16-4 extra peak memory (GiB)", "aa_wrn16_4", "wrn16_4", "extra_memory_gib",
                    batch_size=128),
    ),
))
