"""Looking inside a trained model: GradCAM, attention maps, localisation, gates.

Check what a model learned, not only its accuracy. The ``shapes`` dataset keeps each
image's object mask, so :func:`localisation_score` can say whether a saliency map looks
at the object more than chance would.

All functions run the model in eval mode and fp32 and restore its mode afterwards.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from .layers import collect_maps

Layer = Union[str, nn.Module]
Size = Union[int, Sequence[int]]


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@contextmanager
def _eval_fp32(model: nn.Module) -> Iterator[torch.device]:
    """Eval mode without autocast; the caller's mode is restored even on errors."""
    was_training = model.training
    device = _device(model)
    model.eval()
    try:
        with torch.autocast(device.type, enabled=False):
            yield device
    finally:
        model.train(was_training)


def _resolve_layer(model: nn.Module, layer: Layer) -> nn.Module:
    return model.get_submodule(layer) if isinstance(layer, str) else layer


# -- GradCAM ----------------------------------------------------------------------------

def _targets(target, logits: torch.Tensor) -> torch.Tensor:
    if target is None:
        return logits.argmax(1)
    t = torch.as_tensor(target, dtype=torch.long, device=logits.device).reshape(-1)
    return t.expand(len(logits)) if t.numel() == 1 else t


def _activation_and_grad(model: nn.Module, x: torch.Tensor, module: nn.Module, target):
    """The layer's output ``A`` and ``d score / d A`` for each image's target logit."""
    store = {}

    def hook(_m, _inp, out):
        if not torch.is_tensor(out) or out.ndim != 4:
            raise ValueError(f"GradCAM needs a layer with a (B, C, H, W) output, got {type(out).__name__}")
        # A detached leaf: its gradient is all GradCAM needs, it works for frozen models,
        # and the clone keeps it safe from in-place ops (ReLU(inplace=True)) downstream.
        store["a"] = out.detach().requires_grad_(True)
        return store["a"].clone()

    handle = module.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            logits = model(x)
            if "a" not in store:
                raise ValueError("the GradCAM layer was not called in the forward pass")
            t = _targets(target, logits)
            # In eval mode images do not interact, so the gradient of the summed scores
            # is each image's own gradient: one backward pass for the whole batch.
            score = logits.gather(1, t[:, None]).sum()
            (grad,) = torch.autograd.grad(score, store["a"])
    finally:
        handle.remove()
    return store["a"].detach(), grad


def gradcam(model: nn.Module, images: torch.Tensor, layer: Layer,
            target: Optional[Union[int, Sequence[int], torch.Tensor]] = None) -> torch.Tensor:
    """GradCAM (Selvaraju et al. 2017, arXiv 1610.02391) for a batch: ``(B, H, W)`` in [0, 1].

    For the output ``A`` (``K`` channels) of ``layer`` (a module or a dotted name such as
    ``"layer3"`` or ``"layer3.2.conv2"``) and the score ``y`` of the target class
    (the predicted class by default, else ``target``: one label or one per image):
    ``alpha_k = mean_ij dy/dA_k,ij``, ``cam = ReLU(sum_k alpha_k A_k)``, upsampled
    bilinearly to the input size and divided by its maximum per image (a map that is
    zero everywhere stays zero).

    The map is computed on exactly the images passed, which should be the ones shown
    (pass the normalised model inputs; plot with :func:`attnlab.plots.overlay` and the
    same mean/std). The CNNtention authors (arXiv 2412.11657) computed GradCAM on randomly
    flipped and cropped copies and overlaid it on the originals, so their maps were often
    misaligned. Returned on the CPU.
    """
    module = _resolve_layer(model, layer)
    with _eval_fp32(model) as device:
        x = images.to(device, torch.float32)
        acts, grads = _activation_and_grad(model, x, module, target)
    weights = grads.mean((2, 3), keepdim=True)  # B, K, 1, 1
    cam = F.relu((weights * acts).sum(1, keepdim=True))  # B, 1, h, w
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False).squeeze(1)
    peak = cam.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)
    return (cam / peak).clamp(0, 1).cpu()


# -- attention maps ---------------------------------------------------------------------

def _query_row(a: torch.Tensor, query: Sequence[int], in_size: Sequence[int]) -> torch.Tensor:
    """``(B, heads, h, w)``: the row of the input pixel ``query`` in an emitted
    ``(B, heads, Q, h, w)`` attention map. ``collect_maps`` asks blocks for that row only
    (Q = 1); a block that built every row (Q = h*w queries on the same grid) is indexed here."""
    if a.shape[2] == 1:
        return a[:, :, 0]
    h, w = a.shape[-2:]
    if a.shape[2] != h * w:
        raise ValueError(f"an attention map with {a.shape[2]} query rows over a {h}x{w} key grid: "
                         "expected the one query row that collect_maps asks for")
    r, c = query[0] * h // in_size[0], query[1] * w // in_size[1]
    return a[:, :, r * w + c]


#: How each map kind (:data:`attnlab.layers.MAP_KINDS`) becomes entries of
#: :func:`attention_maps`: ``rule(module, tensor, query, input size) -> {key: tensor}``.
#: One rule per kind; a kind without a rule raises instead of vanishing from the plots.
PLOT_RULES: dict[str, Callable[..., dict[str, torch.Tensor]]] = {
    # B, heads, Q, h, w -> B, heads, h, w: where the query pixel attends, per head
    "attention": lambda name, a, query, size: {name: _query_row(a, query, size)},
    # B, G, h, w: a spatial mask per channel group, drawn as is
    "spatial": lambda name, a, query, size: {name: a},
    # B, C, h, w -> B, 1, h, w: a per-channel mask, averaged over the channels to draw
    "mask": lambda name, a, query, size: {name: a.mean(1, keepdim=True)},
    # B, C: channel weights have no place in a spatial figure; kept beside it
    "channel": lambda name, a, query, size: {f"{name}.channel": a},
    # the merge gates are read with gate_table, not drawn
    "gate": lambda name, a, query, size: {},
}


def plot_entries(name: str, kind: str, value: torch.Tensor, query: Sequence[int],
                 in_size: Sequence[int]) -> dict[str, torch.Tensor]:
    """The :data:`PLOT_RULES` entries of one emitted map; an unknown kind raises."""
    if kind not in PLOT_RULES:
        raise ValueError(f"no plotting rule for map kind {kind!r} (emitted by {name or 'the model'!r}); "
                         f"rules exist for: {', '.join(PLOT_RULES)}")
    return PLOT_RULES[kind](name, value, query, in_size)


def attention_maps(model: nn.Module, images: torch.Tensor, query: Sequence[int]) -> dict[str, torch.Tensor]:
    """Each block's maps for one query pixel ``(row, col)`` of the input, ready to plot.

    The maps come from :func:`attnlab.layers.collect_maps` (which maps the query to each
    block's own grid, so only one row of each attention matrix is built) and are laid
    out by :data:`PLOT_RULES`. Keyed by module name (``"attn1"``, ``"layer3.2.attn"``),
    on the CPU:

    - ``"<module>"``: ``(B, heads, h, w)`` where the query attends (sums to 1 per head)
      for attention blocks; ``(B, G, h, w)`` for spatial masks (CBAM: ``G = 1``, not
      query dependent); ``(B, 1, h, w)``, the channel mean, for per-channel masks;
    - ``"<module>.channel"``: channel weights ``(B, C)`` (SE, CBAM).

    A block emitting two drawable kinds keeps the first under ``"<module>"`` and the
    next under ``"<module>.<kind>"``.
    """
    in_size = tuple(images.shape[-2:])
    if not (0 <= query[0] < in_size[0] and 0 <= query[1] < in_size[1]):
        raise ValueError(f"query {tuple(query)} lies outside the {in_size} input")
    with _eval_fp32(model) as device, torch.no_grad(), collect_maps(model, query=query) as maps:
        model(images.to(device, torch.float32))
    out: dict[str, torch.Tensor] = {}
    for name, kinds in maps.items():
        for kind, value in kinds.items():
            for key, v in plot_entries(name, kind, value, query, in_size).items():
                out[f"{key}.{kind}" if key in out else key] = v.float().cpu()
    return out


def upsample_to(maps: Union[torch.Tensor, dict], size: Size, mode: str = "nearest"):
    """Resize ``(B, k, h, w)`` maps (or a dict of them) to ``size``; other tensors pass through.

    ``nearest`` by default: each attention position stands for a block of input pixels,
    and nearest shows that grid instead of inventing detail between positions.
    """
    if isinstance(maps, dict):
        return {k: upsample_to(v, size, mode) for k, v in maps.items()}
    if maps.ndim != 4:
        return maps
    size = (size, size) if isinstance(size, int) else tuple(size)
    kw = {} if mode == "nearest" else {"align_corners": False}
    return F.interpolate(maps.float(), size=size, mode=mode, **kw)


# -- localisation -----------------------------------------------------------------------

def localisation_score(saliency: torch.Tensor, masks: torch.Tensor) -> dict[str, float]:
    """How much a saliency map looks at the object, read against chance.

    ``saliency`` is ``(B, H, W)`` or ``(B, 1, H, W)`` and non-negative (GradCAM, an
    upsampled attention map); it is resized bilinearly to the masks if needed.
    ``masks`` is ``(B, H, W)``, true on the object (``ImageSet.masks`` of ``shapes``).

    Returns ``mass_inside`` (mean share of saliency mass on the object), ``peak_inside``
    (share of images whose maximum lies on the object), ``chance`` (mean object area
    share: what both scores are for a uniform map or a random peak), and ``n``. Images
    whose map is zero everywhere have no mass to place and are left out of
    ``mass_inside``.
    """
    sal = saliency.detach().float().cpu()
    sal = sal.squeeze(1) if sal.ndim == 4 else sal
    m = masks.detach().cpu().bool()
    if sal.shape[-2:] != m.shape[-2:]:
        sal = F.interpolate(sal[:, None], size=m.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    sal, m = sal.clamp_min(0).flatten(1), m.flatten(1)
    total = sal.sum(1)
    has_mass = total > 0
    inside = (sal * m).sum(1)[has_mass] / total[has_mass]
    peak = m.gather(1, sal.argmax(1, keepdim=True)).squeeze(1)
    return {"mass_inside": float(inside.mean()) if len(inside) else float("nan"),
            "peak_inside": float(peak.float().mean()),
            "chance": float(m.float().mean(1).mean()),
            "n": int(len(m))}


# -- gates ------------------------------------------------------------------------------

def gate_table(model: nn.Module):
    """The learned merge gates ``w`` (``out = w * F(x) + x``), one row per gate.

    A gate near 0 means the block is switched off: the model is the plain backbone
    there (CNNtention's released MHA model, arXiv 2412.11657, had all three gates about
    0). Read the gates before crediting attention for a gain.
    """
    import pandas as pd

    rows = []
    for name, m in model.named_modules():
        gate = getattr(m, "gate", None)
        if not isinstance(gate, nn.Parameter):
            continue
        owner = name.removesuffix(".merge")
        rows.append({"module": owner, "block": type(model.get_submodule(owner)).__name__,
                     "gate": float(gate.detach().float().mean()),
                     "abs": float(gate.detach().float().abs().mean())})
    return pd.DataFrame(rows, columns=["module", "block", "gate", "abs"])


__all__ = ["gradcam", "attention_maps", "PLOT_RULES", "plot_entries", "upsample_to", "localisation_score", "gate_table"]
