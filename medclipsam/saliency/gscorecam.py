"""gScoreCAM for CLIP: ScoreCAM restricted to the k channels with the largest gradient.

For a prompt t and an image x (Chen et al., ACCV 2022; stage 2 of MedCLIP-SAM):

1. one forward and backward pass with the target layer hooked; channel importance is the spatial
   mean of the signed gradient of the image-text logit; the top k channels are kept;
2. each kept activation channel is upsampled (bilinear, half-pixel centres, ``align_corners=False``:
   the one interpolation convention used throughout, also for the final resize) to the input size
   and min-max normalised to [0, 1]; the masked inputs ``image * mask`` are scored by the model
   (the image-text logit ``logit_scale.exp() * cosine``), in batches, without gradients;
3. weights are a softmax of those scores (see ``weighting``);
4. the map is ``ReLU(sum_c w_c A_c)``, resized to the input and min-max normalised.

Cost: about k image forwards per image (the masked images all differ, nothing can be cached), so
about 10.5 TFLOP for BiomedCLIP's ViT-B/16 at k=300; the scoring runs at 75-85 % of the machine's
matmul rate (benchmarks/gscorecam_speed.py). Measured on a 2-core AMD EPYC without AMX (2048^2
matmul 190 GFLOP/s fp32, 410 bf16 when quiet): about 62 s per image in fp32 and 31 s in fast mode.
The text feature is normalised once and never re-encoded; masks are built on the model's device
for the k kept channels only, one scoring batch at a time.

The target layer, the forward/backward pass, the channel masks and the final ReLU/resize/normalise
are the CAM core's (:mod:`medclipsam.saliency.cam`); this module holds what is gScoreCAM's own:
the top-k choice, the batched scoring of masked images and the softmax weights.

``precision="fast"`` scores with a copy of the image tower cast once to bfloat16 (CPUs with bf16
support) or float16 (CUDA), cached per model and rebuilt when its parameters change; the gradient
pass stays float32, so the channel choice and the masks are the exact ones.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from open_clip.model import CLIP, CustomTextCLIP

from .._utils import cpu_has_bf16
from ..vocab import SALIENCY_PRECISIONS
from .cam import (
    cam_to_map,
    channel_masks,
    check_images,
    exp_logit_scale,
    gradients_per_logit,
    layer_activations_and_gradients,
    layer_outputs_and_logits,
    normalized_text,
    reference_channel_masks,
    resolve_target,
)
from .targets import TargetLayer

__all__ = [
    "CONVENTIONS",
    "GScoreCamDetails",
    "MaskedFeatureStore",
    "clear_cast_cache",
    "default_batch_size",
    "fast_dtype",
    "gscorecam",
    "gscorecam_details",
    "gscorecam_multi",
]

_WEIGHTINGS = ("selected", "reference")
#: How channel masks are made: ``"package"`` (bilinear with half-pixel centres, min-max with a
#: flat map giving zeros: the one interpolation convention of the package) or ``"reference"``
#: (the reference code's corner-aligned upsampling and ``+ 1e-6`` in the min-max denominator).
CONVENTIONS = ("package", "reference")


@dataclass
class GScoreCamDetails:
    """What gScoreCAM computed, for inspection (notebooks, tests).

    ``maps`` [Q, H, W] in [0, 1]; ``importance`` [Q, C] the mean gradient per channel;
    ``channels`` [Q, k] the kept channels (largest importance first); ``scores`` [Q, k] their
    masked-image logits; ``weights`` the softmax weights, [Q, k] (``"selected"``) or [Q, C]
    (``"reference"``, over all channels); ``layer`` the hooked layer's name; ``dtype`` the
    scoring dtype. Q is the number of (image, prompt) pairs.
    """

    maps: torch.Tensor
    importance: torch.Tensor
    channels: torch.Tensor
    scores: torch.Tensor
    weights: torch.Tensor
    layer: str
    dtype: torch.dtype


def default_batch_size(device: torch.device | str) -> int:
    """Masked images scored per forward pass when ``batch_size=None``.

    CPU: 16 (measured on a 2-core CPU with BiomedCLIP's ViT-B/16: batches of 16, 32 and 64 ran
    within 10 % of each other, both in fp32 and bf16, and 16 holds the least memory, about
    0.2 GB of activations). CUDA: 64 per 8 GiB of device memory, between 64 and 1024, so a k=300
    map is a single batch on a large GPU.
    """
    device = torch.device(device)
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory / 2**30
        return int(max(64, min(1024, 64 * (total // 8))))
    return 16


def fast_dtype(device: torch.device | str) -> torch.dtype:
    """The scoring dtype of ``precision="fast"`` on ``device``: float16 on CUDA (more mantissa
    than bfloat16, the same speed there), bfloat16 on CPUs with bf16 support, else float32."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and cpu_has_bf16():
        return torch.bfloat16
    return torch.float32


def _scoring_dtype(precision: str, device: torch.device) -> torch.dtype:
    if precision not in SALIENCY_PRECISIONS:
        raise ValueError(f"precision must be one of {SALIENCY_PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return torch.float32
    if precision == "fast":
        return fast_dtype(device)
    return torch.bfloat16 if precision == "bf16" else torch.float16


# --------------------------------------------------------------------------------------------
# the image encoder used for scoring (and its cached low-precision copy)


def _visual_only(model: torch.nn.Module) -> bool:
    """True when ``model.encode_image`` is open_clip's plain ``visual(x)`` (so a copy of the image
    tower alone scores the same)."""
    fn = getattr(type(model), "encode_image", None)
    return hasattr(model, "visual") and fn in (CLIP.encode_image, CustomTextCLIP.encode_image)


def _signature(module: torch.nn.Module) -> tuple:
    return tuple(
        (t.data_ptr(), t._version, t.dtype, t.device)
        for t in (*module.parameters(), *module.buffers())
    )


_CAST_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def clear_cast_cache() -> None:
    """Drop the low-precision copies made by ``precision="fast"`` (they live as long as their
    model otherwise: about half the image tower's memory each)."""
    _CAST_CACHE.clear()


def _cast_encoder(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """A copy of ``model``'s image tower (or of the whole model) in ``dtype``, made once per model
    and dtype and rebuilt when the model's parameters change (in-place updates, loading, moving)."""
    source = model.visual if _visual_only(model) else model
    sig = _signature(source)
    entries = _CAST_CACHE.setdefault(model, {})
    hit = entries.get(dtype)
    if hit is not None and hit[0] == sig:
        return hit[1]
    entries.pop(dtype, None)  # free the stale copy before making the new one
    cast = copy.deepcopy(source).to(dtype)
    for p in cast.parameters():
        p.requires_grad_(False)
    entries[dtype] = (sig, cast)
    return cast


def _encoder(model: torch.nn.Module, dtype: torch.dtype) -> Callable[[torch.Tensor], torch.Tensor]:
    """x -> image features (unnormalised) computed in ``dtype``."""
    if dtype == torch.float32 and next(model.parameters()).dtype == torch.float32:
        return model.encode_image
    cast = _cast_encoder(model, dtype)
    return cast if _visual_only(model) else cast.encode_image


# --------------------------------------------------------------------------------------------
# gScoreCAM's own steps: score the masked images, weigh the channels


def _masked_features(
    encode: Callable[[torch.Tensor], torch.Tensor],
    dtype: torch.dtype,
    images: torch.Tensor,
    act: torch.Tensor,
    image_idx: torch.Tensor,
    channel_idx: torch.Tensor,
    batch_size: int,
    convention: str = "package",
) -> torch.Tensor:
    """Normalised image features [N, D] of ``images[image_idx[i]] * mask(act[image_idx[i],
    channel_idx[i]])``, scored in batches; the masks are made per batch (never all at once)."""
    size = images.shape[-2:]
    make_masks = reference_channel_masks if convention == "reference" else channel_masks
    out = []
    if image_idx.numel() == 0:
        return images.new_zeros(0, 0, dtype=torch.float32)
    with torch.inference_mode():
        for s in range(0, image_idx.numel(), batch_size):
            b, c = image_idx[s : s + batch_size], channel_idx[s : s + batch_size]
            masks = make_masks(act[b, c], size)
            x = (images[b] * masks[:, None]).to(dtype)
            out.append(F.normalize(encode(x).float(), dim=-1))
    return torch.cat(out)


def _combine(
    act: torch.Tensor, channels: torch.Tensor, scores: torch.Tensor, weighting: str, size
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights and maps [Q, H, W] from activations [Q, C, h, w] and the kept channels' scores."""
    q, c, h, w = act.shape
    if weighting == "selected":
        weights = torch.softmax(scores, dim=-1)
        kept = act.gather(1, channels[:, :, None, None].expand(-1, -1, h, w))
        cam = (weights[:, :, None, None] * kept).sum(1)
    else:
        full = torch.zeros(q, c, dtype=scores.dtype, device=scores.device)
        weights = torch.softmax(full.scatter(1, channels, scores), dim=-1)
        cam = (weights[:, :, None, None] * act).sum(1)
    return weights, cam_to_map(cam, size)


def _check_options(
    weighting: str, k: int | float | None, batch_size: int | None, convention: str = "package"
) -> None:
    if weighting not in _WEIGHTINGS:
        raise ValueError(f"weighting must be one of {_WEIGHTINGS}, got {weighting!r}")
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    if isinstance(k, float) and not 0.0 < k <= 1.0:
        raise ValueError(f"a fractional k must lie in (0, 1] (a share of the channels), got {k}")
    if isinstance(k, int) and k < 1:
        raise ValueError(f"k must be a positive number of channels (or None for all), got {k}")
    if batch_size is not None and int(batch_size) < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")


def _channels_kept(k: int | float | None, c: int) -> int:
    """k as a number of channels: None = all; a float in (0, 1] = that share of the C channels
    (at least one); an int is clipped to C."""
    if k is None:
        return c
    if isinstance(k, float):
        return max(1, min(c, round(k * c)))
    return min(int(k), c)


#: How gScoreCAM picks its k channels: ``"gradient"`` (the method: the k largest mean gradients)
#: or ``"random"`` (k channels drawn at random: a control for whether the gradient's pick helps).
PICKS = ("gradient", "random")


def _pick_channels(importance: torch.Tensor, kk: int, pick: str, seed: int) -> torch.Tensor:
    """Channel indices ``[B, kk]`` for each row of ``importance`` ``[B, C]``: the largest first
    (``"gradient"``), or drawn at random with ``seed + row`` (``"random"``)."""
    if pick == "gradient":
        return importance.topk(kk, dim=1).indices
    if pick != "random":
        raise ValueError(f"pick must be one of {PICKS}, got {pick!r}")
    c = importance.shape[1]
    rows = [torch.randperm(c, generator=torch.Generator().manual_seed(int(seed) + b))[:kk]
            for b in range(importance.shape[0])]
    return torch.stack(rows).to(importance.device)


class MaskedFeatureStore:
    """The normalised features of one image's masked copies, by channel, kept across calls.

    A masked image ``image * mask(A_c)`` depends on the image, the channel c, the model, the
    target layer, the scoring dtype and the mask convention, never on the prompt. Pass one store
    to :func:`gscorecam_multi` (or ``store=`` through :func:`~medclipsam.saliency.saliency_maps`,
    the prompt-sensitivity check, the explorer) and a later call on the same image scores only the
    channels no earlier call scored. The store holds one image at a time: a call with another
    image, model (or changed weights), layer, dtype or convention empties it first.
    ``scored`` counts the masked images it had scored (for tests and benchmarks).
    """

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._image: torch.Tensor | None = None
        self.features: dict[int, torch.Tensor] = {}
        self.scored = 0

    def bind(self, model: torch.nn.Module, image: torch.Tensor, layer: str, dtype: torch.dtype,
             convention: str) -> None:
        """Keep the features if they are of this image and setting, else start empty."""
        key = (id(model), _signature(model), layer, dtype, convention, tuple(image.shape),
               image.dtype, image.device)
        same = key == self._key and self._image is not None and torch.equal(self._image, image)
        if not same:
            self._key, self._image, self.features = key, image.detach().clone(), {}

    def missing(self, channels: torch.Tensor) -> torch.Tensor:
        """The channels of ``channels`` not scored yet."""
        keep = [i for i, c in enumerate(channels.tolist()) if c not in self.features]
        return channels[torch.tensor(keep, dtype=torch.long, device=channels.device)]

    def add(self, channels: torch.Tensor, feats: torch.Tensor) -> None:
        for c, f in zip(channels.tolist(), feats):
            self.features[c] = f
        self.scored += channels.numel()

    def get(self, channels: torch.Tensor) -> torch.Tensor:
        """Features ``[N, D]`` of ``channels`` (all scored)."""
        return torch.stack([self.features[c] for c in channels.tolist()])


def gscorecam_details(
    model: torch.nn.Module,
    images: torch.Tensor,
    text_features: torch.Tensor,
    *,
    k: int | float | None = 300,
    batch_size: int | None = None,
    target: TargetLayer | str | None = None,
    weighting: str = "selected",
    precision: str = "fp32",
    convention: str = "package",
    pick: str = "gradient",
    pick_seed: int = 0,
) -> GScoreCamDetails:
    """:func:`gscorecam` with everything it computed (channels, scores, weights); see there."""
    check_images(images)
    _check_options(weighting, k, batch_size, convention)
    target = resolve_target(model, target)
    device = images.device
    n = images.shape[0]
    txt = normalized_text(text_features, n, device)

    act, grads = layer_activations_and_gradients(model, images, txt, target)
    importance = grads.mean(dim=(2, 3))
    c = act.shape[1]
    kk = _channels_kept(k, c)
    channels = _pick_channels(importance, kk, pick, pick_seed)  # [B, k]

    dtype = _scoring_dtype(precision, device)
    bs = int(batch_size or default_batch_size(device))
    image_idx = torch.arange(n, device=device).repeat_interleave(kk)
    feats_masked = _masked_features(
        _encoder(model, dtype), dtype, images.detach(), act, image_idx, channels.reshape(-1), bs,
        convention,
    )
    scores = exp_logit_scale(model) * (feats_masked.view(n, kk, -1) * txt[:, None]).sum(-1)
    weights, maps = _combine(act, channels, scores, weighting, images.shape[-2:])
    return GScoreCamDetails(maps, importance, channels, scores, weights, target.name, dtype)


def gscorecam(
    model: torch.nn.Module,
    images: torch.Tensor,
    text_features: torch.Tensor,
    *,
    k: int | float | None = 300,
    batch_size: int | None = None,
    target: TargetLayer | str | None = None,
    weighting: str = "selected",
    precision: str = "fp32",
    convention: str = "package",
    pick: str = "gradient",
    pick_seed: int = 0,
) -> torch.Tensor:
    """gScoreCAM maps ``[B, H, W]`` in [0, 1] at the model-input resolution.

    ``images``: preprocessed ``[B, 3, H, W]``; ``text_features``: ``[B, D]`` or ``[1, D]``, one
    prompt per image (normalised or not; never re-encoded). ``k``: channels kept (clipped to the
    layer's C; None = all, which is ScoreCAM; a float in (0, 1] = that share of C, e.g. 0.39 is
    the paper's 300 of 768 for narrower models). ``batch_size``: masked images per scoring pass
    (None: :func:`default_batch_size`; the result does not depend on it). ``target``: see
    :func:`resolve_target` (``"reference"`` reproduces the paper's layer, whose patch tokens get
    exactly zero gradient on CLS-pooled ViTs such as BiomedCLIP, so its top-k is arbitrary).

    ``weighting="selected"`` (default): softmax over the k scores only, as the gScoreCAM paper
    describes. ``"reference"``: the reference code's convention, the k scores scattered into a zero
    vector of all C channels before the softmax and the map summed over all C channels; every
    unselected channel then keeps weight ``exp(0)/Z``, so for a poorly matched prompt (logits near
    or below 0) the unselected channels dominate and the map tends to the plain sum of all
    activations whatever the prompt. That is why it is not the default.

    ``convention``: how the channel masks are made (:data:`CONVENTIONS`). ``"package"`` (default):
    half-pixel centres, as everywhere else in the package. ``"reference"``: the reference code's
    corner-aligned upsampling (``align_corners=True``) and ``(x - min) / (max - min + 1e-6)``.
    The reference itself is ``target="reference", weighting="reference", convention="reference"``
    (its final resize uses half-pixel centres, as ours does; its batch size does not change maps).

    ``precision``: ``"fp32"`` (exact), ``"fast"`` (scoring in bfloat16 on CPUs that support it,
    float16 on CUDA, float32 otherwise; :func:`fast_dtype`), or ``"bf16"``/``"fp16"`` explicitly.
    The low-precision copy of the image tower is made once per model and cached.

    ``pick="random"`` keeps k channels drawn at random (image b of the batch with ``pick_seed + b``)
    instead of the k largest mean gradients, everything else unchanged: a control that tells
    whether the gradient's pick helps on a model (lesson 03, ``benchmarks/toy_channel_picks.py``).
    (Not called ``seed``: a method taking a ``seed`` is treated as stochastic by the sensitivity
    check, and gScoreCAM with a seeded pick is deterministic.)
    """
    return gscorecam_details(
        model,
        images,
        text_features,
        k=k,
        batch_size=batch_size,
        target=target,
        weighting=weighting,
        precision=precision,
        convention=convention,
        pick=pick,
        pick_seed=pick_seed,
    ).maps


def gscorecam_multi(
    model: torch.nn.Module,
    image: torch.Tensor,
    text_features: torch.Tensor,
    *,
    k: int | float | None = 300,
    batch_size: int | None = None,
    target: TargetLayer | str | None = None,
    weighting: str = "selected",
    precision: str = "fp32",
    convention: str = "package",
    store: MaskedFeatureStore | None = None,
    return_details: bool = False,
    pick: str = "gradient",
    pick_seed: int = 0,
) -> torch.Tensor | GScoreCamDetails:
    """gScoreCAM maps ``[P, H, W]`` of one image ``[1, 3, H, W]`` for P prompts ``[P, D]``.

    Shared across prompts: the image's forward pass (one, then one backward pass per prompt for
    the channel importances) and the scoring. A masked image depends on the channel, not on the
    prompt, so the union of the prompts' k-channel sets is scored once and each masked image's
    feature is compared with every prompt: at most ``min(C, P*k)`` forwards instead of ``P*k``
    (never more than looping over prompts). Each map equals :func:`gscorecam` of that prompt.
    ``store``: a :class:`MaskedFeatureStore` kept by the caller across calls on the same image:
    only channels it does not hold yet are scored (a new prompt on an image already seen).
    ``pick``, ``pick_seed``: as in :func:`gscorecam`.
    """
    check_images(image)
    _check_options(weighting, k, batch_size, convention)
    if image.shape[0] != 1:
        raise ValueError(f"gscorecam_multi takes one image [1, 3, H, W], got {tuple(image.shape)}")
    target = resolve_target(model, target)
    device = image.device
    t = text_features.detach()
    t = t[None] if t.ndim == 1 else t
    p = t.shape[0]
    txt = normalized_text(t, p, device)

    act_raw, logits = layer_outputs_and_logits(model, image, txt, target)  # logits [P]
    grads = gradients_per_logit(logits, act_raw)
    act1 = target.to_grid(act_raw.detach()).float().contiguous()  # [1, C, h, w]
    importance = torch.cat([target.to_grid(g).float().mean(dim=(2, 3)) for g in grads])  # [P, C]
    kk = _channels_kept(k, act1.shape[1])
    if pick == "random":  # one draw for the image whatever the prompt, as gscorecam makes it
        channels = _pick_channels(importance[:1], kk, pick, pick_seed).expand(p, -1).contiguous()
    else:
        channels = _pick_channels(importance, kk, pick, pick_seed)  # [P, k]

    union = torch.unique(channels)  # sorted
    dtype = _scoring_dtype(precision, device)
    bs = int(batch_size or default_batch_size(device))
    if store is not None:
        store.bind(model, image, target.name, dtype, convention)
    todo = union if store is None else store.missing(union)
    feats_new = _masked_features(
        _encoder(model, dtype), dtype, image.detach(), act1, torch.zeros_like(todo), todo, bs,
        convention,
    )
    if store is not None:
        store.add(todo, feats_new)
        feats_masked = store.get(union)
    else:
        feats_masked = feats_new
    all_scores = exp_logit_scale(model) * feats_masked @ txt.T  # [U, P]
    pos = torch.searchsorted(union, channels)  # [P, k] rows of the union
    scores = all_scores.gather(0, pos.T).T  # scores[p, j] = all_scores[pos[p, j], p]
    act = act1.expand(p, -1, -1, -1)
    weights, maps = _combine(act, channels, scores, weighting, image.shape[-2:])
    details = GScoreCamDetails(maps, importance, channels, scores, weights, target.name, dtype)
    return details if return_details else maps
