"""Backbones: network families that attention blocks plug into.

A backbone is registered under a name with :func:`register_backbone`; its factory takes
``num_classes``, ``in_channels``, ``attn`` and ``attn_kw`` (the attention block of its
one slot, or ``None``) and its own keyword options with defaults. Named models (a
backbone, its settings and a block, as a paper used them) live in :mod:`attnlab.papers`.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

from torch import nn

from .resnet_cifar import BasicBlock, CifarResNet

#: arguments every backbone factory takes that are not options of the backbone itself
SLOT_ARGS = ("num_classes", "in_channels", "attn", "attn_kw")


@dataclass(frozen=True)
class BackboneEntry:
    name: str
    factory: Callable[..., nn.Module]
    description: str

    def options(self) -> dict:
        params = inspect.signature(self.factory).parameters
        return {k: p.default for k, p in params.items() if k not in SLOT_ARGS and k != "self"
                and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


_BACKBONES: dict[str, BackboneEntry] = {}


def register_backbone(name: str, description: str = ""):
    def wrap(factory):
        if name in _BACKBONES:
            raise ValueError(f"backbone {name!r} is already registered")
        doc = description or (factory.__doc__ or "").strip().split("\n")[0]
        _BACKBONES[name] = BackboneEntry(name, factory, doc)
        return factory

    return wrap


def list_backbones() -> list[str]:
    return list(_BACKBONES)


def get_backbone(name: str) -> BackboneEntry:
    if name not in _BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; available: {', '.join(_BACKBONES)}")
    return _BACKBONES[name]


def create_backbone(name: str, num_classes: int = 10, in_channels: int = 3, *,
                    attn=None, attn_kw=None, **kw) -> nn.Module:
    entry = get_backbone(name)
    unknown = sorted(set(kw) - set(entry.options()))
    if unknown:
        raise TypeError(f"backbone {name!r} got unknown option(s) {unknown}; allowed: {sorted(entry.options())}")
    return entry.factory(num_classes=num_classes, in_channels=in_channels, attn=attn, attn_kw=attn_kw, **kw)


register_backbone("cifar_resnet", "CIFAR ResNet-(6n+2) (He et al. 2016) with an attention slot")(CifarResNet)

# Each backbone file registers its families when imported.
from . import attention_net  # noqa: E402,F401
from . import wrn  # noqa: E402,F401
from . import embedding_cnn  # noqa: E402,F401

__all__ = ["register_backbone", "list_backbones", "get_backbone", "create_backbone",
           "BackboneEntry", "CifarResNet", "BasicBlock", "SLOT_ARGS"]
