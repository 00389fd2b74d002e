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


def create_model(name: str, num_classes: int = 10, in_channels: int = 3, **kw) -> nn.Module:
    """Build model ``name``; unknown names or keywords raise an error listing what is valid."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(_MODELS)}")
    fn = _MODELS[name]
    params = inspect.signature(fn).parameters
    unknown = sorted(set(kw) - set(params))
    if unknown:
        allowed = [p for p in params if p not in ("num_classes", "in_channels")]
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


_register_resnets()

__all__ = ["create_model", "list_models", "register_model", "describe_models", "CifarResNet", "BasicBlock"]
