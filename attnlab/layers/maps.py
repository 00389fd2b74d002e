"""One mechanism for the maps a block can show: :func:`collect_maps`.

A block that has something to plot inherits :class:`MapSource` and, in its ``forward``,
calls ``self.emit(kind, tensor)`` when ``self.collecting``. Nothing is computed or kept
otherwise, so training pays nothing for it. :func:`collect_maps` switches collection on
for every block of a model (the model itself included) and yields a dict
``{module name: {kind: tensor}}``; a backbone needs no plumbing of its own.

The kinds are defined once, in :data:`MAP_KINDS`; ``emit`` refuses any other kind, so a
new kind cannot be dropped silently by the plotting code.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence

import torch
from torch import nn

#: kind -> layout of the tensor a block emits (B = batch)
MAP_KINDS = {
    "attention": "(B, heads, Q, h, w): softmax rows of Q query positions over the block's key grid",
    "spatial": "(B, G, h, w): a mask over positions, one per group G of channels",
    "mask": "(B, C, h, w): a soft mask per channel and position",
    "channel": "(B, C): a weight per channel",
    "gate": "(1,): a learned scalar merge gate",
}


@dataclass
class _Collection:
    query: Optional[tuple[int, int]] = None
    input_size: Optional[tuple[int, int]] = None
    maps: dict = field(default_factory=dict)


class MapSource:
    """Mixin for blocks with maps. ``self.collecting`` says whether to compute them;
    ``self.query_index(h, w)`` gives the flat query positions to build attention rows for
    (``None``: every position, the full matrix)."""

    _collection: Optional[_Collection] = None
    _map_name: str = ""

    @property
    def collecting(self) -> bool:
        return self._collection is not None

    def query_index(self, h: int, w: int) -> Optional[torch.Tensor]:
        """The query pixel mapped to this block's ``h x w`` grid as a flat index ``(1,)``:
        input pixel ``(r, c)`` of an ``H x W`` input lies in block cell ``(r*h//H, c*w//W)``."""
        col = self._collection
        if col is None or col.query is None:
            return None
        (r, c), (H, W) = col.query, col.input_size or (h, w)
        return torch.tensor([(r * h // H) * w + (c * w // W)])

    def emit(self, kind: str, value: Optional[torch.Tensor]) -> None:
        if kind not in MAP_KINDS:
            raise ValueError(f"unknown map kind {kind!r}; known: {', '.join(MAP_KINDS)}")
        if self._collection is not None and value is not None:
            self._collection.maps.setdefault(self._map_name, {})[kind] = value.detach()


@contextlib.contextmanager
def collect_maps(model: nn.Module, query: Optional[Sequence[int]] = None) -> Iterator[dict]:
    """Collect the maps of every :class:`MapSource` in ``model`` during the forward passes
    inside the block. ``query``: an input pixel ``(row, col)``; attention blocks then build
    only that row of each attention matrix (at 32x32 a full matrix is 1024 x 1024).

    Yields ``{module name: {kind: tensor}}`` (``""`` for the model itself when it is a
    block), filled as the model runs; the last forward pass wins.
    """
    col = _Collection(query=None if query is None else (int(query[0]), int(query[1])))
    sources = [(n, m) for n, m in model.named_modules() if isinstance(m, MapSource)]

    def record_size(_m, args):
        if args and torch.is_tensor(args[0]) and args[0].ndim == 4:
            col.input_size = tuple(args[0].shape[-2:])

    handle = model.register_forward_pre_hook(record_size)
    for name, m in sources:
        m._collection, m._map_name = col, name
    try:
        yield col.maps
    finally:
        handle.remove()
        for _, m in sources:
            m._collection = None
