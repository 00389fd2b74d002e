"""The attention-block registry: each block is registered under a name and a *role*.

Roles say where a block can sit in a backbone:

- ``addon``: maps ``(B, C, H, W)`` to the same shape, so it can follow any stage or sit
  inside a residual block (SE, CBAM, SelfAtt, MHA, spatial softmax). Built as
  ``block(channels, **kw)``.
- ``conv``: replaces a convolution, so it takes ``in_channels``, ``out_channels``,
  ``kernel_size`` and ``stride`` (attention-augmented convolution). Built as
  ``block(in_channels, out_channels, kernel_size, stride=..., **kw)``.
- ``module``: a whole stage module with its own trunk (Residual Attention's
  trunk-and-mask module). Built as ``block(channels, **kw)``.

Blocks import this module (never the package ``__init__``), so the import graph runs one
way: ``registry`` <- block files <- ``layers/__init__`` <- backbones.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Optional

from torch import nn

ROLES = ("addon", "conv", "module")

#: positional arguments each role's constructor takes before the block's own options
ROLE_ARGS = {"addon": ("channels",), "module": ("channels",),
             "conv": ("in_channels", "out_channels", "kernel_size", "stride")}


@dataclass(frozen=True)
class BlockEntry:
    name: str
    role: str
    factory: Callable[..., nn.Module]

    def options(self) -> dict:
        """The block's own keyword options with their defaults (its signature, minus the
        role's positional arguments): defaults are written once, in the block."""
        params = inspect.signature(self.factory).parameters
        return {k: p.default for k, p in params.items()
                if k not in ROLE_ARGS[self.role] and k != "self"
                and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}

    def resolve(self, kw: Optional[dict] = None) -> dict:
        """``kw`` completed with the block's defaults; unknown options raise, naming the allowed."""
        kw = dict(kw or {})
        opts = self.options()
        unknown = sorted(set(kw) - set(opts))
        if unknown:
            raise TypeError(f"attention block {self.name!r} got unknown option(s) {unknown}; "
                            f"allowed: {sorted(opts)}")
        missing = [k for k, v in opts.items() if v is inspect.Parameter.empty and k not in kw]
        if missing:
            raise TypeError(f"attention block {self.name!r} needs option(s) {missing}")
        return {**opts, **kw}


_BLOCKS: dict[str, BlockEntry] = {}


def register_attn(name: str, role: str = "addon"):
    """Class decorator registering a block under ``name`` with its ``role`` (see :data:`ROLES`)."""
    if role not in ROLES:
        raise ValueError(f"unknown block role {role!r}; allowed: {', '.join(ROLES)}")

    def wrap(cls):
        if name in _BLOCKS:
            raise ValueError(f"attention block {name!r} is already registered")
        _BLOCKS[name] = BlockEntry(name, role, cls)
        return cls

    return wrap


def list_attn(role: Optional[str] = None) -> list[str]:
    """Registered block names, all or those of one ``role``."""
    if role is not None and role not in ROLES:
        raise ValueError(f"unknown block role {role!r}; allowed: {', '.join(ROLES)}")
    return sorted(n for n, e in _BLOCKS.items() if role is None or e.role == role)


def get_attn(name: str) -> BlockEntry:
    if name not in _BLOCKS:
        raise ValueError(f"unknown attention block {name!r}; available: {', '.join(list_attn())}")
    return _BLOCKS[name]


def attn_role(name: str) -> str:
    return get_attn(name).role


def create_attn(name: Optional[str], *args, **kw) -> Optional[nn.Module]:
    """Build block ``name`` with its role's positional arguments (``channels`` for add-ons
    and modules; in/out channels, kernel size and stride for conv replacements) and its
    options; ``None`` or ``"none"`` gives no block."""
    if name is None or name == "none":
        return None
    entry = get_attn(name)
    return entry.factory(*args, **entry.resolve(kw))
