"""Attention blocks, one file per mechanism, built by name through :func:`create_attn`.

Each block is registered with a role (:mod:`.registry`): ``addon`` blocks map
``(B, C, H, W)`` to the same shape and take ``merge=`` from :mod:`.merge`; ``conv``
blocks replace a convolution; ``module`` blocks are whole trunk-and-mask stages.
Blocks with something to plot emit it through :func:`.maps.collect_maps`; the shared
scaled-dot-product core is :mod:`.sdpa`.
"""
from __future__ import annotations

from .maps import MAP_KINDS, MapSource, collect_maps
from .merge import MERGE_MODES, Merge, check_merge
from .registry import ROLES, attn_role, create_attn, get_attn, list_attn, register_attn

# Importing the block modules registers their blocks.
from . import cbam, mha, se, selfatt  # noqa: E402,F401
from . import residual_attention  # noqa: E402,F401
from . import aaconv  # noqa: E402,F401
from . import embedding_attention  # noqa: E402,F401
from . import spatial_softmax  # noqa: E402,F401

__all__ = ["create_attn", "list_attn", "get_attn", "attn_role", "register_attn", "ROLES",
           "Merge", "MERGE_MODES", "check_merge", "MAP_KINDS", "MapSource", "collect_maps"]
