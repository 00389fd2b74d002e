"""The model zoo: ``create_model(name, num_classes=10, in_channels=3, **kw)``."""
from __future__ import annotations

import inspect
from typing import Callable

from torch import nn

from .resnet_cifar import BasicBlock, CifarResNet

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_DESCRIPTIONS: dict[str, str] = {}


def register_model(name: str, description: str = ""):
    def wrap(fn):
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        _MODELS[name] = fn
        _DESCRIPTIONS[name] = description or (fn.__doc__ or "").strip().split("\n")[0]
        return fn

    return wrap


def list_models() -> list[str]:
    return list(_MODELS)


def describe_models() -> dict[str, str]:
    return dict(_DESCRIPTIONS)


def model_defaults(name: str) -> dict:
    """The keyword defaults of model ``name`` (so ``{}`` and the defaults spelled out are
    recognised as the same model, e.g. by the run store)."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(_MODELS)}")
    params = inspect.signature(_MODELS[name]).parameters
    return {k: p.default for k, p in params.items()
            if k not in ("num_classes", "in_channels") and not k.startswith("_")
            and p.default is not inspect.Parameter.empty}


def create_model(name: str, num_classes: int = 10, in_channels: int = 3, **kw) -> nn.Module:
    """Build model ``name``; unknown names or keywords raise an error listing what is valid."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(_MODELS)}")
    fn = _MODELS[name]
    params = inspect.signature(fn).parameters
    unknown = sorted(set(kw) - set(params))
    if unknown:
        allowed = [p for p in params if p not in ("num_classes", "in_channels") and not p.startswith("_")]
        raise TypeError(f"model {name!r} got unknown keyword(s) {unknown}; allowed: {allowed}")
    return fn(num_classes=num_classes, in_channels=in_channels, **kw)


def _register_resnets() -> None:
    for depth in (20, 32, 44, 56, 110):
        def resnet(num_classes: int = 10, in_channels: int = 3, shortcut: str = "A",
                   attn: str | None = None, attn_kw: dict | None = None,
                   block_attn: str | None = None, block_attn_kw: dict | None = None,
                   _depth: int = depth) -> CifarResNet:
            return CifarResNet(_depth, num_classes, in_channels, shortcut, attn, attn_kw,
                               block_attn, block_attn_kw)

        register_model(f"resnet{depth}", f"CIFAR ResNet-{depth} (He et al. 2016), attention hooks")(resnet)

    for depth in (20, 110):
        def se_resnet(num_classes: int = 10, in_channels: int = 3, reduction: int = 16,
                      _depth: int = depth) -> CifarResNet:
            return CifarResNet(_depth, num_classes, in_channels, block_attn="se",
                               block_attn_kw={"reduction": reduction})

        register_model(f"se_resnet{depth}", f"SE-ResNet-{depth}: squeeze-excitation in every block")(se_resnet)

    def cbam_resnet110(num_classes: int = 10, in_channels: int = 3, reduction: int = 16,
                       official: bool = True) -> CifarResNet:
        """CBAM-ResNet-110: CBAM inside every block (the CBAM paper's placement)."""
        kw = {"reduction": reduction, "mlp_bias": official, "spatial_bn": official}
        return CifarResNet(110, num_classes, in_channels, block_attn="cbam", block_attn_kw=kw)

    register_model("cbam_resnet110", "CBAM-ResNet-110: CBAM in every block (Woo et al. 2018)")(cbam_resnet110)


def _register_cnntention() -> None:
    """Seed 000's models: one block after each stage of a CIFAR ResNet (default depth 20).

    ``merge`` and the block's own options pass through (``scale`` for selfatt,
    ``num_heads`` for mha, ``reduction``/``mlp_bias``/``spatial_bn`` for cbam).
    ``placement="block"`` puts CBAM inside every residual block instead (CBAM paper).
    """

    def resnet20_selfatt(num_classes: int = 10, in_channels: int = 3, depth: int = 20,
                         merge: str = "weighted", scale: float | None = 1.0) -> CifarResNet:
        return CifarResNet(depth, num_classes, in_channels, attn="selfatt",
                           attn_kw={"merge": merge, "scale": scale})

    def resnet20_mha(num_classes: int = 10, in_channels: int = 3, depth: int = 20,
                     merge: str = "weighted", num_heads: int = 8) -> CifarResNet:
        return CifarResNet(depth, num_classes, in_channels, attn="mha",
                           attn_kw={"merge": merge, "num_heads": num_heads})

    def resnet20_cbam(num_classes: int = 10, in_channels: int = 3, depth: int = 20,
                      merge: str = "plain", reduction: int = 16, mlp_bias: bool = False,
                      spatial_bn: bool = False, placement: str = "stage") -> CifarResNet:
        if placement not in ("stage", "block"):
            raise ValueError(f"placement must be 'stage' (seed 000) or 'block' (CBAM paper), got {placement!r}")
        kw = {"merge": merge, "reduction": reduction, "mlp_bias": mlp_bias, "spatial_bn": spatial_bn}
        if placement == "stage":
            return CifarResNet(depth, num_classes, in_channels, attn="cbam", attn_kw=kw)
        return CifarResNet(depth, num_classes, in_channels, block_attn="cbam", block_attn_kw=kw)

    register_model("resnet20_selfatt", "ResNet-20 + SelfAtt after each stage (seed 000)")(resnet20_selfatt)
    register_model("resnet20_mha", "ResNet-20 + 8-head MHA after each stage (seed 000)")(resnet20_mha)
    register_model("resnet20_cbam", "ResNet-20 + CBAM after each stage (seed 000) or in blocks")(resnet20_cbam)


_register_resnets()
_register_cnntention()

__all__ = ["create_model", "model_defaults", "list_models", "register_model", "describe_models", "CifarResNet", "BasicBlock"]
