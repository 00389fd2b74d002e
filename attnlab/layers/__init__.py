"""Attention blocks, one file per mechanism, built by name through :func:`create_attn`.

Every block takes the channel count as its first argument, maps ``(B, C, H, W)`` to
the same shape, and (where it has one) a ``merge=`` keyword from :mod:`.merge`.
Blocks that have maps to plot accept ``return_attention=True`` in ``forward`` and
then return ``(out, maps)`` with ``maps`` a dict of tensors.
"""
from __future__ import annotations

import inspect
from typing import Callable, Optional

from torch import nn

from .merge import MERGE_MODES, Merge, check_merge

_ATTN: dict[str, Callable[..., nn.Module]] = {}


def register_attn(name: str):
    """Decorator registering a block class (or factory) under ``name``."""

    def wrap(cls):
        if name in _ATTN:
            raise ValueError(f"attention block {name!r} is already registered")
        _ATTN[name] = cls
        return cls

    return wrap


def list_attn() -> list[str]:
    return sorted(_ATTN)


def create_attn(name: Optional[str], channels: int, **kw) -> Optional[nn.Module]:
    """Build attention block ``name`` for ``channels`` channels; ``None`` means no block."""
    if name is None or name == "none":
        return None
    if name not in _ATTN:
        raise ValueError(f"unknown attention block {name!r}; available: {', '.join(list_attn())}")
    factory = _ATTN[name]
    params = inspect.signature(factory).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kw) - set(params))
        if unknown:
            allowed = [p for p in params if p not in ("self", "channels")]
            raise TypeError(
                f"attention block {name!r} got unknown option(s) {unknown}; allowed: {allowed}"
            )
    return factory(channels, **kw)


# Importing the modules registers their blocks.
from . import se  # noqa: E402,F401
from . import selfatt, mha, cbam  # noqa: E402,F401

__all__ = ["create_attn", "list_attn", "register_attn", "Merge", "MERGE_MODES", "check_merge"]
