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
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Literal, Optional, Union

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
        check_option_types(f"attention block {self.name!r}", self.factory, kw)
        return {**opts, **kw}


def _hint_text(hint) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


def _matches(value, hint) -> bool:
    """Whether ``value`` fits the annotation ``hint`` (ints count as floats, bools as neither)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin is Union or origin is types.UnionType:
        return any(_matches(value, a) for a in args)
    if origin is Literal:
        return value in args
    if hint is type(None) or hint is None:
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin in (tuple, list) or hint in (tuple, list):
        if not isinstance(value, (tuple, list)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        return not args or (len(args) == len(value) and all(_matches(v, a) for v, a in zip(value, args)))
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True  # an annotation this check does not understand accepts anything


def check_option_types(owner: str, factory: Callable, values: dict) -> None:
    """Raise TypeError when a value in ``values`` does not fit the annotation of the
    same-named parameter of ``factory`` (a class or function), saying what is allowed."""
    target = factory.__init__ if inspect.isclass(factory) else factory
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # noqa: BLE001 - unresolvable annotations: nothing to check against
        return
    for key, value in values.items():
        if key in hints and not _matches(value, hints[key]):
            raise TypeError(f"{owner} option {key} must be {_hint_text(hints[key])}, "
                            f"got {value!r} ({type(value).__name__})")


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
    role_kw = {k: kw.pop(k) for k in ROLE_ARGS[entry.role] if k in kw}  # e.g. stride=2 by name
    return entry.factory(*args, **role_kw, **entry.resolve(kw))
