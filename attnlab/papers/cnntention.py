"""``cnntention``: "CNNtention: Can CNNs do better with Attention?" (arXiv 2412.11657).

One attention block after each stage of a CIFAR ResNet-20 (16 channels at 32x32, 32 at
16x16, 64 at 8x8), no positional encoding. The blocks, as the authors' code defines them:

- **SelfAtt** (:class:`attnlab.layers.selfatt.SelfAttention2d`): SAGAN-style attention
  over the HW positions without SAGAN's C/8 reduction; Q, K, V are 1x1 convs C -> C with
  bias; the logits are **not** scaled by 1/sqrt(d) (on purpose, the paper says).
- **MHA** (:class:`attnlab.layers.mha.MultiHeadAttention2d`): the same 1x1 projections
  cut into 8 contiguous channel groups (head widths 2/4/8), scaled dot-product per head,
  a 1x1 output projection.
- **CBAM** (:class:`attnlab.layers.cbam.CBAM`): shared-MLP channel attention then 7x7
  spatial attention; MLP without bias, conv with bias and no BN (the official CBAM code
  differs: MLP bias, conv + BN). Their CBAM block **ends with a residual**,
  ``out = Ms * Mc * F + F``: this module's CBAM model uses ``merge="residual"``; the CBAM
  paper's ``plain`` rescaling stays available as an ablation value.

Merging a block with its input: ``plain`` F(x), ``residual`` F(x) + x, ``weighted``
w F(x) + x with one scalar w per block initialised to 0 (the model starts as ResNet-20).

Recipes: SelfAtt and MHA with Adam lr 5e-4, coupled L2 1e-3, lr / 10 at epochs 91 and
115; CBAM with Adam lr 5e-3, L2 1e-4, lr / 10 at 45, 91, 136; both up to 182 epochs with
early stopping (patience 20); the baseline with He et al.'s SGD recipe. Initialisation in
their code: ``kaiming_normal_(mode="fan_out")`` (``init="fan_out"`` here; the default is
He et al.'s fan_in).

Published numbers (reconstructed from the authors' experiment logs; the body of the
paper's Table 3 is missing from its text), CIFAR-10 test error: baseline 9.04, SelfAtt
(weighted) 8.56, MHA (weighted) 8.94, CBAM r=16 8.68; MNIST: 1.48 / 0.70 / 1.16 / 2.00.
CBAM reduction (validation accuracy): r=8 90.66, r=16 90.32, r=32 89.94. SelfAtt weighted
vs residual merge: 90.01 vs 88.00 validation accuracy.

Pitfalls found in the authors' runs, worth teaching:

1. The final runs early-stopped and were selected on the **test** set.
2. In the released MHA checkpoint all three gates w are about 0 (7.6e-5, -5e-11,
   -2e-12) and W_Q, W_K, W_O have decayed to denormals: that model is a plain ResNet-20
   trained with Adam, so its gain is an optimiser effect. Read the gates before crediting
   attention. (Their SelfAtt checkpoint learned gates -0.75, -0.62 and 1.92.)
3. With C = 16 and r = 32, C // r = 0: their "CBAM-32" had no stage-1 channel attention
   (a constant 0.5). The package keeps one hidden unit and warns.
4. Their GradCAM was computed on randomly flipped/cropped copies and overlaid on the
   originals, so maps were often misaligned.
5. Their MNIST training used 32x32 random crops of 28x28 digits, testing on 28x28.
6. Their runs used different protocols (splits, patience), so the weighted-vs-plain gap
   is confounded; a fair ablation changes one factor, over seeds.
"""
from __future__ import annotations

from ..recipes import Recipe
from .registry import AblationAxis, Claim, ModelSpec, Paper, SpeedTarget, register_paper

LOGS = "CNNtention authors' experiment logs (arXiv 2412.11657)"
ON_TEST = "full length (up to 182 epochs), early-stopped and selected on the test set"

MODELS = (
    ModelSpec("resnet20_selfatt", "SelfAtt", "cifar_resnet", {"depth": 20}, "selfatt",
              recipe="cnntention_att", params=286_189,
              description="ResNet-20 + SelfAtt after each stage, weighted merge"),
    ModelSpec("resnet20_mha", "MHA", "cifar_resnet", {"depth": 20}, "mha",
              recipe="cnntention_att", params=291_677, slow_on_cpu=True,
              description="ResNet-20 + 8-head MHA after each stage, weighted merge"),
    ModelSpec("resnet20_cbam", "CBAM", "cifar_resnet", {"depth": 20}, "cbam", {"merge": "residual"},
              recipe="cnntention_cbam", params=270_691,
              description="ResNet-20 + CBAM (r=16) after each stage, ending with a residual"),
)

_c10 = (("resnet20", 9.04), ("resnet20_selfatt", 8.56), ("resnet20_mha", 8.94), ("resnet20_cbam", 8.68))
_mnist = (("resnet20", 1.48), ("resnet20_selfatt", 0.70), ("resnet20_mha", 1.16), ("resnet20_cbam", 2.00))

PAPER = register_paper(Paper(
    id="cnntention",
    title="CNNtention: Can CNNs do better with Attention?",
    authors="Bhattacharya et al.", year=2024, link="https://arxiv.org/abs/2412.11657",
    summary=__doc__, notebook="02_cnntention",
    models=MODELS,
    recipes=(
        Recipe("cnntention_att", "adam", 5e-4, 1e-3, 182, "step", (91 / 182, 115 / 182), patience=20,
               source="CNNtention SelfAtt/MHA: Adam 5e-4, coupled L2 1e-3, lr/10 at epochs 91, 115"),
        Recipe("cnntention_cbam", "adam", 5e-3, 1e-4, 182, "step", (45 / 182, 91 / 182, 136 / 182),
               patience=20, source="CNNtention CBAM: Adam 5e-3, coupled L2 1e-4, lr/10 at 45, 91, 136"),
        Recipe("cnntention_shared", "adam", 1e-3, 1e-4, 182, "cosine", patience=20,
               source="one recipe for every CNNtention model, so comparisons differ in the model only"),
    ),
    claims=tuple(
        [Claim(m, "cifar10", "test_error", v, protocol=ON_TEST, source=LOGS) for m, v in _c10]
        + [Claim(m, "mnist", "test_error", v, protocol=ON_TEST, source=LOGS) for m, v in _mnist]
        + [Claim("resnet20_cbam", "cifar10", "val_acc", v, "val", f"reduction={r}",
                 protocol="paper's Table 2", source=LOGS) for r, v in ((8, 90.66), (16, 90.32), (32, 89.94))]
        + [Claim("resnet20_selfatt", "cifar10", "val_acc", v, "val", f"merge={m}",
                 protocol="runs with different splits and patience (confounded)", source=LOGS)
           for m, v in (("weighted", 90.01), ("residual", 88.00))]),
    ablations=(
        AblationAxis("resnet20_selfatt", "merge", ("plain", "residual", "weighted"), "SelfAtt merge"),
        AblationAxis("resnet20_cbam", "reduction", (8, 16, 32), "CBAM reduction ratio r"),
        AblationAxis("resnet20_cbam", "merge", ("plain", "residual"), "CBAM merge (paper vs CNNtention)"),
        AblationAxis("resnet20_cbam", "placement", ("stage", "block"), "CBAM placement"),
    ),
    targets=(
        SpeedTarget("SelfAtt step time vs ResNet-20", "resnet20_selfatt", "resnet20", "step_time", "<=", 2.5),
        SpeedTarget("MHA step time vs ResNet-20", "resnet20_mha", "resnet20", "step_time", "<=", 8.0),
        SpeedTarget("CBAM step time vs ResNet-20", "resnet20_cbam", "resnet20", "step_time", "<=", 1.3),
        *(SpeedTarget(f"{lbl} extra peak memory (GiB)", m, "resnet20", "extra_memory_gib", "<", 0.5)
          for m, lbl in (("resnet20_selfatt", "SelfAtt"), ("resnet20_mha", "MHA"), ("resnet20_cbam", "CBAM"))),
    ),
))
