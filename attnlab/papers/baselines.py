"""``baselines``: the CIFAR ResNets of He et al. 2016 and the attention comparators.

He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, arXiv 1512.03385,
section 4.2: conv3x3(16)-BN-ReLU, three stages of n BasicBlocks (16/32/64 channels,
strides 1/2/2, depth 6n + 2), global average pooling, one linear layer; parameter-free
shortcuts (option A). Trained with SGD (lr 0.1, momentum 0.9, weight decay 1e-4, batch
128) for 64k iterations with lr / 10 at 32k and 48k (182 epochs on a 45k split, drops at
epochs 91 and 136). Published CIFAR-10 test errors: 8.75 / 7.51 / 7.17 / 6.97 / 6.43 % for
depths 20 / 32 / 44 / 56 / 110; a widely used PyTorch reimplementation (akamaster, 200
epochs, drops at 100 and 150) reports 8.27 / 7.37 / 6.61 / 6.32 % for 20 / 32 / 56 / 110.

SE-ResNet (Hu et al. 2018, arXiv 1709.01507) and CBAM-ResNet (Woo et al. 2018, arXiv
1807.06521) put their block inside every residual block, before the addition; CBAM here
uses the official CBAM code's settings (MLP with bias, spatial conv without bias + BN).
"""
from __future__ import annotations

from ..layers.cbam import OFFICIAL
from ..recipes import Recipe
from .registry import Claim, ModelSpec, Paper, register_paper

HE = "He et al. 2016, Table 6"
AKAMASTER = "PyTorch reimplementation (akamaster/pytorch_resnet_cifar10), 200 epochs"
PARAMS = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018, 110: 1_727_962}

_resnets = tuple(
    ModelSpec(f"resnet{d}", f"ResNet-{d}", "cifar_resnet", {"depth": d}, params=PARAMS[d],
              recipe="he2016", description=f"CIFAR ResNet-{d} (He et al. 2016)")
    for d in (20, 32, 44, 56, 110))

_comparators = (
    ModelSpec("se_resnet20", "SE-ResNet-20", "cifar_resnet", {"depth": 20, "placement": "block"},
              "se", params=272_095, description="SE in every residual block (Hu et al. 2018)"),
    ModelSpec("se_resnet110", "SE-ResNet-110", "cifar_resnet", {"depth": 110, "placement": "block"},
              "se", params=1_742_200, description="SE in every residual block (Hu et al. 2018)"),
    ModelSpec("cbam_resnet110", "CBAM-ResNet-110", "cifar_resnet", {"depth": 110, "placement": "block"},
              "cbam", dict(OFFICIAL), params=1_747_600,
              description="CBAM in every residual block (Woo et al. 2018), official CBAM code's settings"),
)

PAPER = register_paper(Paper(
    id="baselines",
    title="Deep Residual Learning for Image Recognition (CIFAR ResNets), with SE and CBAM comparators",
    authors="He, Zhang, Ren, Sun", year=2016, link="https://arxiv.org/abs/1512.03385",
    summary=__doc__, notebook="01_resnet_baseline",
    models=_resnets + _comparators,
    recipes=(
        Recipe("he2016", "sgd", 0.1, 1e-4, 182, "step", (0.5, 0.75),
               source="He et al. 2016 sec. 4.2: 64k iterations, lr/10 at 32k and 48k"),
        Recipe("adam", "adam", 1e-3, 1e-4, 182, "cosine", source="Adam, coupled L2, cosine decay"),
        Recipe("cosine", "sgd", 0.1, 5e-4, 182, "cosine", nesterov=True,
               source="SGD + Nesterov, cosine annealing"),
        Recipe("onecycle", "sgd", 0.2, 5e-4, 30, "onecycle", nesterov=True, label_smoothing=0.1,
               source="one-cycle (Smith 2018) with label smoothing 0.1: fast short schedules"),
    ),
    claims=tuple(
        [Claim(f"resnet{d}", "cifar10", "test_error", e, protocol="182 epochs, 45k/5k split for tuning",
               source=HE) for d, e in ((20, 8.75), (32, 7.51), (44, 7.17), (56, 6.97), (110, 6.43))]
        + [Claim(f"resnet{d}", "cifar10", "test_error", e, protocol="200 epochs, lr / 10 at 100 and 150",
                 source=AKAMASTER) for d, e in ((20, 8.27), (32, 7.37), (56, 6.61), (110, 6.32))]),
))
