"""Looking inside a trained model: GradCAM, attention maps, localisation, gates.

REFERENCE.md section 7: check what the model learned, not only its accuracy. The
``shapes`` dataset keeps each image's object mask, so :func:`localisation_score` can
say whether a saliency map looks at the object more than chance would.

All functions run the model in eval mode and fp32 and restore its mode afterwards.
"""
from __future__ import annotations

import inspect
from contextlib import contextmanager
from typing import Iterator, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

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
    same mean/std). Seed 000 computed GradCAM on randomly flipped and cropped copies
    and overlaid it on the originals, so its maps were often misaligned (REFERENCE.md
    section 2, pitfall 4). Returned on the CPU.
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

def _takes_query(module: nn.Module) -> bool:
    try:
        return "query_index" in inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return False


def _query_hook(query: Sequence[int], in_size: Sequence[int], sizes: dict):
    """A pre-hook setting each block's flat ``query_index`` at the block's own resolution."""
    row, col = query

    def hook(m, args, kwargs):
        h, w = args[0].shape[-2:]
        sizes[m] = (h, w)
        # stage pixel (r, c) covers input rows [r * H / h, (r + 1) * H / h), same for columns
        r, c = row * h // in_size[0], col * w // in_size[1]
        return args, {**kwargs, "query_index": r * w + c}

    return hook


def _reshape_maps(stage: str, maps: dict, size: Optional[Sequence[int]]) -> dict[str, torch.Tensor]:
    out = {}
    if maps.get("attn") is not None:
        a = maps["attn"]  # B, heads, 1, HW
        if size is None:  # a stage name that is not a module name: assume a square map
            side = int(round(a.shape[-1] ** 0.5))
            size = (side, side)
        out[stage] = a[:, :, 0].reshape(a.shape[0], a.shape[1], *size).float().cpu()
    if maps.get("spatial") is not None:
        out[stage] = maps["spatial"].float().cpu()  # B, 1, h, w
    if maps.get("channel") is not None:
        out[f"{stage}.channel"] = maps["channel"].float().cpu()  # B, C
    return out


def attention_maps(model: nn.Module, images: torch.Tensor, query: Sequence[int]) -> dict[str, torch.Tensor]:
    """Each attention stage's map for one query pixel ``(row, col)`` of the input.

    The query is mapped to each stage's resolution (row ``r`` of a 32-row input is row
    ``r * 16 // 32`` at 16x16) and passed as that stage's ``query_index``, so only one
    row of each attention matrix is built. Returns, on the CPU:

    - ``"attn1"``, ... : ``(B, heads, h, w)``, where the query attends (sums to 1 per head),
      for self-attention and multi-head blocks; for CBAM the spatial mask ``(B, 1, h, w)``
      (not query dependent);
    - ``"attn1.channel"``, ... : CBAM's channel mask ``(B, C)``.
    """
    in_size = images.shape[-2:]
    if not (0 <= query[0] < in_size[0] and 0 <= query[1] < in_size[1]):
        raise ValueError(f"query {tuple(query)} lies outside the {tuple(in_size)} input")
    blocks = [m for m in model.modules() if m is not model and _takes_query(m)]
    sizes: dict[nn.Module, tuple[int, int]] = {}
    hook = _query_hook(query, in_size, sizes)
    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in blocks]
    try:
        with _eval_fp32(model) as device, torch.no_grad():
            _, maps = model(images.to(device, torch.float32), return_attention=True)
    finally:
        for h in handles:
            h.remove()
    modules = dict(model.named_modules())
    out = {}
    for stage, stage_maps in maps.items():
        out.update(_reshape_maps(stage, stage_maps, sizes.get(modules.get(stage))))
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
    there (seed 000's released MHA model had all three gates about 0, REFERENCE.md
    section 2, pitfall 2). Read the gates before crediting attention for a gain.
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


__all__ = ["gradcam", "attention_maps", "upsample_to", "localisation_score", "gate_table"]
