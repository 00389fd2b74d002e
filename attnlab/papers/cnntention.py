"""``cnntention``: "CNNtention: Can CNNs do better with Attention?" (arXiv 2412.11657).

One attention block after each stage of a CIFAR ResNet-20 (16 channels at 32x32, 32 at
16x16, 64 at 8x8), no positional encoding. The blocks, as the authors' code defines them:

- **SelfAtt** (:class:`attnlab.layers.selfatt.SelfAttention2d`): SAGAN-style attention
  over the HW positions without SAGAN's C/8 reduction; Q, K, V are 1x1 convs C -> C with
  bias; the logits are **not** scaled by 1/sqrt(d) (on purpose, the paper says).
- **MHA** (:class:`attnlab.layers.mha.MultiHeadAttention2d`): the same 1x1 projections
  cut into 8 contiguous channel groups (head widths 2/4/8), scaled dot-product per head,
  a 1x1 output projection.
- **CBAM** (:class:`attnlab.layers.cbam.CBAM`): shared-MLP channel attention then 7x7
  spatial attention; MLP without bias, conv with bias and no BN (the official CBAM code
  differs: MLP bias, conv + BN). Their CBAM block **ends with a residual**,
  ``out = Ms * Mc * F + F``: this module's CBAM model uses ``merge="residual"``; the CBAM
  paper's ``plain`` rescaling stays available as an ablation value.

Merging a block with its input: ``plain`` F(x), ``residual`` F(x) + x, ``weighted``
w F(x) + x with one scalar w per block initialised to 0 (the model starts as ResNet-20).

Recipes: SelfAtt and MHA with Adam lr 5e-4, coupled L2 1e-3, lr / 10 at epochs 91 and
115; CBAM with Adam lr 5e-3, L2 1e-4, lr / 10 at 45, 91, 136; both up to 182 epochs with
early stopping (patience 20); the baseline with He et al.'s SGD recipe. Initialisation in
their code: ``kaiming_normal_(mode="fan_out")`` (``init="fan_out"`` here; the default is
He et al.'s fan_in).

Published numbers (reconstructed from the authors' experiment logs; the body of the
paper's Table 3 is missing from its text), CIFAR-10 test error: baseline 9.04, SelfAtt
(weighted) 8.56, MHA (weighted) 8.94, CBAM r=16 8.68; MNIST: 1.48 / 0.70 / 1.16 / 2.00.
CBAM reduction (validation accuracy): r=8 90.66, r=16 90.32, r=32 89.94. SelfAtt weighted
vs residual merge: 90.01 vs 88.00 validation accuracy.

Released weights: :func:`load_authors_checkpoint` loads the authors' ``params.pth`` state
dicts (and CIFAR ResNet checkpoints in the common akamaster layout) into these models,
renaming their keys (``fc``, ``attI``, ``attI.weights``, MHA ``val``/``linear`` and its
swapped ``query``/``key``: their MHA computes softmax(K^T Q)). Their weights expect every
channel normalised with the red channel's CIFAR-10 mean 0.4919 and std 0.2470; the common
pretrained CIFAR ResNets expect ImageNet's mean and std (:data:`CHECKPOINT_NORMALISATION`).

Pitfalls found in the authors' runs, worth teaching:

1. The final runs early-stopped and were selected on the **test** set.
2. In the released MHA checkpoint all three gates w are about 0 (7.6e-5, -5e-11,
   -2e-12) and W_Q, W_K, W_O have decayed to denormals: that model is a plain ResNet-20
   trained with Adam, so its gain is an optimiser effect. Read the gates before crediting
   attention. (Their SelfAtt checkpoint learned gates -0.75, -0.62 and 1.92.)
3. With C = 16 and r = 32, C // r = 0: their "CBAM-32" had no stage-1 channel attention
   (a constant 0.5). The package keeps one hidden unit and warns.
4. Their GradCAM was computed on randomly flipped/cropped copies and overlaid on the
   originals, so maps were often misaligned.
5. Their MNIST training used 32x32 random crops of 28x28 digits, testing on 28x28.
6. Their runs used different protocols (splits, patience), so the weighted-vs-plain gap
   is confounded; a fair ablation changes one factor, over seeds.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from ..recipes import Recipe
from .registry import AblationAxis, Claim, ModelSpec, Paper, SpeedTarget, create_model, register_paper

LOGS = "CNNtention authors' experiment logs (arXiv 2412.11657)"
ON_TEST = "full length (up to 182 epochs), early-stopped and selected on the test set"

MODELS = (
    ModelSpec("resnet20_selfatt", "SelfAtt", "cifar_resnet", {"depth": 20}, "selfatt",
              recipe="cnntention_att", params=286_189,
              description="ResNet-20 + SelfAtt after each stage, weighted merge"),
    ModelSpec("resnet20_mha", "MHA", "cifar_resnet", {"depth": 20}, "mha",
              recipe="cnntention_att", params=291_677, slow_on_cpu=True,
              description="ResNet-20 + 8-head MHA after each stage, weighted merge"),
    ModelSpec("resnet20_cbam", "CBAM", "cifar_resnet", {"depth": 20}, "cbam", {"merge": "residual"},
              recipe="cnntention_cbam", params=270_691,
              description="ResNet-20 + CBAM (r=16) after each stage, ending with a residual"),
)

_c10 = (("resnet20", 9.04), ("resnet20_selfatt", 8.56), ("resnet20_mha", 8.94), ("resnet20_cbam", 8.68))
_mnist = (("resnet20", 1.48), ("resnet20_selfatt", 0.70), ("resnet20_mha", 1.16), ("resnet20_cbam", 2.00))

PAPER = register_paper(Paper(
    id="cnntention",
    title="CNNtention: Can CNNs do better with Attention?",
    authors="Bhattacharya et al.", year=2024, link="https://arxiv.org/abs/2412.11657",
    summary=__doc__, notebook="02_cnntention",
    models=MODELS,
    recipes=(
        Recipe("cnntention_att", "adam", 5e-4, 1e-3, 182, "step", (91 / 182, 115 / 182), patience=20,
               source="CNNtention SelfAtt/MHA: Adam 5e-4, coupled L2 1e-3, lr/10 at epochs 91, 115"),
        Recipe("cnntention_cbam", "adam", 5e-3, 1e-4, 182, "step", (45 / 182, 91 / 182, 136 / 182),
               patience=20, source="CNNtention CBAM: Adam 5e-3, coupled L2 1e-4, lr/10 at 45, 91, 136"),
        Recipe("cnntention_shared", "adam", 1e-3, 1e-4, 182, "cosine", patience=20,
               source="one recipe for every CNNtention model, so comparisons differ in the model only"),
    ),
    claims=tuple(
        [Claim(m, "cifar10", "test_error", v, protocol=ON_TEST, source=LOGS) for m, v in _c10]
        + [Claim(m, "mnist", "test_error", v, protocol=ON_TEST, source=LOGS) for m, v in _mnist]
        + [Claim("resnet20_cbam", "cifar10", "val_acc", v, "val", f"reduction={r}",
                 protocol="paper's Table 2", source=LOGS) for r, v in ((8, 90.66), (16, 90.32), (32, 89.94))]
        + [Claim("resnet20_selfatt", "cifar10", "val_acc", v, "val", f"merge={m}",
                 protocol="runs with different splits and patience (confounded)", source=LOGS)
           for m, v in (("weighted", 90.01), ("residual", 88.00))]),
    ablations=(
        AblationAxis("resnet20_selfatt", "merge", ("plain", "residual", "weighted"), "SelfAtt merge"),
        AblationAxis("resnet20_cbam", "reduction", (8, 16, 32), "CBAM reduction ratio r"),
        AblationAxis("resnet20_cbam", "merge", ("plain", "residual"), "CBAM merge (paper vs CNNtention)"),
        AblationAxis("resnet20_cbam", "placement", ("stage", "block"), "CBAM placement"),
    ),
    targets=(
        SpeedTarget("SelfAtt step time vs ResNet-20", "resnet20_selfatt", "resnet20", "step_time", "<=", 2.5),
        SpeedTarget("MHA step time vs ResNet-20", "resnet20_mha", "resnet20", "step_time", "<=", 8.0),
        SpeedTarget("CBAM step time vs ResNet-20", "resnet20_cbam", "resnet20", "step_time", "<=", 1.3),
        *(SpeedTarget(f"{lbl} extra peak memory (GiB)", m, "resnet20", "extra_memory_gib", "<", 0.5)
          for m, lbl in (("resnet20_selfatt", "SelfAtt"), ("resnet20_mha", "MHA"), ("resnet20_cbam", "CBAM"))),
    ),
))


# -- the authors' released checkpoints ---------------------------------------------------
# Learned from the authors' repository (github.com/AttentionSeekers/CNNtention: the model
# files models/resnet_*.py and models/attention/{self_att,multi_head_att,cbam}.py, and the
# ``params.pth`` state dicts stored with their MLflow runs). Their networks use our
# backbone's names (``conv1``, ``bn1``, ``layer1..3.J.{conv1,bn1,conv2,bn2}``, option-A
# shortcuts without parameters) except:
#
# - the classifier is ``fc`` (ours ``linear``);
# - the block after stage I is ``attI`` (I = 1, 2, 3, digits; ours ``attnI``), its gate
#   ``attI.weights`` of shape (1,) (ours ``attnI.merge.gate``);
# - SelfAtt: ``query``/``key``/``value`` 1x1 convs, used as named (softmax(Q K^T), no
#   scale); a SelfAtt without ``weights`` is their unweighted ``out = F(x) + x`` block;
# - MHA: ``query``/``key``/``val``/``linear``. Their forward builds softmax(K^T Q / sqrt(d))
#   over the last axis, so the conv they call ``query`` indexes the softmax axis (our key)
#   and the one they call ``key`` indexes the rows (our query): the two are swapped here;
# - CBAM: ``channel_attention.mlp.{0,2}.weight`` (no bias) and ``spatial_attention.conv``
#   (with bias), ending with ``+ F``; the reduction r is read from the MLP shapes. Where
#   C // r = 0 their MLP has zero-size weights; ours keeps one hidden unit, loaded as zeros,
#   which gives the same constant channel attention sigmoid(0) = 0.5.

#: Input normalisation (per channel, in [0, 1] units) that each family of released weights
#: expects; a loader built with other statistics feeds those networks shifted inputs.
CHECKPOINT_NORMALISATION = {
    "cnntention": {
        "mean": (0.4918687901200927, 0.49185976472299225, 0.4918583862227116),
        "std": (0.24697121702736, 0.24696766978537033, 0.2469719877121087),
        "note": "the CNNtention authors normalised every channel with the red channel's "
                "CIFAR-10 mean and std (their MNIST notebooks list the same numbers)",
    },
    "akamaster": {
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "note": "the widely used pretrained CIFAR ResNets (github.com/akamaster/"
                "pytorch_resnet_cifar10) were trained on ImageNet's mean and std",
    },
}

_STAGES = (1, 2, 3)
#: their submodule (or parameter) name -> ours, per block kind
_BLOCK_NAMES = {
    "mha": {"query": "key", "key": "query", "val": "value", "linear": "proj", "weights": "merge.gate"},
    "selfatt": {"query": "query", "key": "key", "value": "value", "weights": "merge.gate"},
    "cbam": {"channel_attention": "channel", "spatial_attention": "spatial"},
}
_MODEL_OF_KIND = {None: "resnet20", "selfatt": "resnet20_selfatt", "mha": "resnet20_mha",
                  "cbam": "resnet20_cbam"}


@dataclass
class ImportedCheckpoint:
    """A released checkpoint loaded into one of our models (in eval mode).

    ``model_kw`` are the :func:`create_model` options that rebuild the network (``model``
    names the registered model); ``mean`` / ``std`` the input normalisation it expects:
    evaluate with ``data.loader("test", mean=ck.mean, std=ck.std)``.
    """

    model: nn.Module
    name: str
    model_kw: dict
    layout: str                    # "cnntention" or "akamaster"
    mean: tuple[float, ...]
    std: tuple[float, ...]
    renamed: dict[str, str]        # their key -> our key, for every key that changed name

    @property
    def note(self) -> str:
        why = CHECKPOINT_NORMALISATION[self.layout]["note"]
        mean = ", ".join(f"{m:.4f}" for m in self.mean)
        std = ", ".join(f"{s:.4f}" for s in self.std)
        return (f"this checkpoint expects inputs normalised with mean ({mean}) and std ({std}): {why}; "
                f"evaluate with data.loader(split, mean=ck.mean, std=ck.std)")


def _state_dict_of(source) -> dict[str, torch.Tensor]:
    """A flat state dict from a path, a state dict, or a ``{"state_dict": ...}`` wrapper,
    without DataParallel's ``module.`` prefixes."""
    if isinstance(source, (str, Path)):
        source = torch.load(source, map_location="cpu", weights_only=True)
    if not isinstance(source, Mapping):
        raise TypeError(f"expected a path or a state dict, got {type(source).__name__}")
    if "state_dict" in source and isinstance(source["state_dict"], Mapping):
        source = source["state_dict"]
    return {k.removeprefix("module."): v for k, v in source.items()}


def _layout(sd: Mapping) -> str:
    if "fc.weight" in sd:
        return "cnntention"
    if "linear.weight" in sd:
        return "akamaster"
    raise ValueError("not a CNNtention or CIFAR-ResNet checkpoint: it has neither 'fc.weight' (the "
                     "CNNtention authors' classifier) nor 'linear.weight' (ours and akamaster's); "
                     f"first keys: {list(sd)[:6]}")


def _block_kind(sd: Mapping) -> Optional[str]:
    """Which attention block the ``attI.*`` keys describe (``None``: a plain ResNet)."""
    subs = {k.split(".")[1] for k in sd if k.split(".")[0] in {f"att{i}" for i in _STAGES}}
    if not subs:
        return None
    for kind in ("cbam", "mha"):
        if subs & {"channel_attention", "val", "linear"} and set(_BLOCK_NAMES[kind]) >= subs:
            return kind
    if subs <= set(_BLOCK_NAMES["selfatt"]):
        return "selfatt"
    raise ValueError(f"unrecognised attention block in the checkpoint (submodules {sorted(subs)}); "
                     f"known: {', '.join(f'{k}: {sorted(v)}' for k, v in _BLOCK_NAMES.items())}")


def _cbam_reduction(sd: Mapping) -> int:
    """The largest r with C // r equal to every stage's hidden width."""
    shapes = [tuple(v.shape) for k, v in sd.items() if k.endswith("channel_attention.mlp.0.weight")]
    c_max = max(c for _, c in shapes)
    for r in range(c_max + 1, 0, -1):
        if all(c // r == h for h, c in shapes):
            return r
    raise ValueError(f"no reduction ratio r gives the CBAM hidden widths {shapes} (hidden = C // r)")


def _inferred_options(sd: Mapping, kind: Optional[str]) -> dict:
    """``create_model`` options read from the shapes and names in ``sd``."""
    blocks = {int(k.split(".")[1]) for k in sd if k.startswith("layer1.")}
    if not blocks or blocks != set(range(len(blocks))):
        raise ValueError("cannot read the depth: the checkpoint has no layer1.0 ... layer1.N-1 keys")
    head = "fc" if "fc.weight" in sd else "linear"
    kw = {"depth": 6 * len(blocks) + 2, "num_classes": int(sd[f"{head}.weight"].shape[0]),
          "in_channels": int(sd["conv1.weight"].shape[1])}
    if kind is None:
        return kw
    stages = tuple(i for i in _STAGES if any(k.startswith(f"att{i}.") for k in sd))
    if stages != _STAGES:
        kw["attn_stages"] = stages
    if kind == "cbam":
        kw["reduction"] = _cbam_reduction(sd)
    elif kind == "selfatt" and not any(k.endswith(".weights") for k in sd):
        kw["merge"] = "residual"  # their unweighted SelfAtt: out = F(x) + x
    return kw


def _our_key(key: str, kind: Optional[str]) -> str:
    """The name of their parameter ``key`` in our model."""
    if key.startswith("fc."):
        return "linear." + key[3:]
    top, _, rest = key.partition(".")
    if kind is None or top not in {f"att{i}" for i in _STAGES}:
        return key
    sub, _, tail = rest.partition(".")
    new = _BLOCK_NAMES[kind].get(sub)
    if new is None:
        return key  # left unmatched: reported as unknown
    return f"attn{top[3:]}.{new}" + (f".{tail}" if tail else "")


def _their_key(ours: str, kind: Optional[str]) -> str:
    """The inverse of :func:`_our_key`, for error messages."""
    if ours.startswith("linear."):
        return "fc." + ours[7:]
    if kind is None or not ours.startswith("attn"):
        return ours
    top, _, rest = ours.partition(".")
    for theirs, mine in _BLOCK_NAMES[kind].items():
        if rest == mine or rest.startswith(mine + "."):
            return f"att{top[4:]}.{theirs}{rest[len(mine):]}"
    return ours


def _listing(names: list[str], ours: list[str], limit: int = 12) -> str:
    """``a, b (ours c), ...`` with at most ``limit`` names."""
    shown = [n if n == o else f"{n} (ours {o})" for n, o in zip(names, ours)][:limit]
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return (", ".join(shown) + more) or "none"


def _convert(sd: Mapping, kind: Optional[str], layout: str, target: Mapping) -> tuple[dict, dict]:
    """Rename ``sd`` into ``target``'s keys; zero-size CBAM weights become zeros."""
    name = (lambda k: _our_key(k, kind)) if layout == "cnntention" else (lambda k: k)
    out, renamed = {}, {}
    for k, v in sd.items():
        new = name(k)
        if new != k:
            renamed[k] = new
        if v.numel() == 0 and new in target and target[new].numel() > 0:
            v = torch.zeros_like(target[new])  # C // r = 0: no hidden unit contributes
        out[new] = v
    inverse = {v: k for k, v in renamed.items()}
    missing = sorted(set(target) - set(out))
    unknown = sorted(inverse.get(k, k) for k in set(out) - set(target))
    if missing or unknown:
        theirs = [_their_key(k, kind) if layout == "cnntention" else k for k in missing]
        raise ValueError(f"checkpoint does not fit the model: missing {_listing(theirs, missing)}; "
                         f"unknown {_listing(unknown, unknown)}")
    bad = [f"{inverse.get(k, k)} {tuple(v.shape)} vs ours {tuple(target[k].shape)}"
           for k, v in out.items() if tuple(v.shape) != tuple(target[k].shape)]
    if bad:
        raise ValueError(f"checkpoint shapes do not fit the model: {'; '.join(bad)}")
    return out, renamed


def load_authors_checkpoint(source, model: Optional[nn.Module] = None, *, verbose: bool = True,
                            **model_kw: Any) -> ImportedCheckpoint:
    """Load released weights: the CNNtention authors' ``params.pth`` or a CIFAR ResNet
    checkpoint in akamaster's layout (``{"state_dict": {"module.conv1.weight": ...}}``).

    ``source`` is a path or a state dict. Without ``model`` the network is built from what
    the checkpoint shows: depth, classes and input channels from the shapes, the block
    from the ``attI`` submodules (SelfAtt, MHA, CBAM with r from the MLP shapes, or none),
    the merge from the presence of ``attI.weights``; ``model_kw`` adds or overrides
    :func:`create_model` options (their MHA checkpoints do not record the head count:
    ``num_heads`` defaults to their 8). Keys that do not fit raise a ``ValueError`` naming
    them. The result carries the input normalisation the weights expect (see
    :data:`CHECKPOINT_NORMALISATION`); ``verbose`` prints it.
    """
    sd = _state_dict_of(source)
    layout = _layout(sd)
    kind = _block_kind(sd) if layout == "cnntention" else None
    kw = {**_inferred_options(sd, kind), **model_kw}
    name = _MODEL_OF_KIND[kind]
    if model is None:
        model = create_model(name, **kw)
    converted, renamed = _convert(sd, kind, layout, model.state_dict())
    model.load_state_dict(converted)
    model.eval()
    norm = CHECKPOINT_NORMALISATION[layout]
    c = kw["in_channels"]
    ck = ImportedCheckpoint(model, name, kw, layout, tuple(norm["mean"][:c]), tuple(norm["std"][:c]), renamed)
    if verbose:
        print(ck.note)
    return ck
