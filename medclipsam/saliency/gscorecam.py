"""gScoreCAM for CLIP: ScoreCAM restricted to the k channels with the largest gradient.

For a text prompt t and an image x (Chen et al., ACCV 2022; stage 2 of MedCLIP-SAM), one forward
and one backward pass give the target layer's activations ``A [C, h, w]`` and the gradient of the
image-text logit with respect to them (the CAM core's
:func:`~medclipsam.saliency.cam.layer_activations_and_gradients`). Then four steps:

1. :func:`select_channels`: keep the k channels with the largest spatial mean of the signed
   gradient;
2. :func:`channel_masks`: each kept channel upsampled to the input size (bilinear, half-pixel
   centres: the package's one interpolation convention) and min-max normalised to [0, 1];
3. :func:`score_masked_images`: each masked input ``x * mask_c`` scored by the model (the image-text
   logit ``logit_scale.exp() * cosine``, no gradients); :func:`gscorecam_weights`: a softmax over
   those k scores;
4. :func:`combine_maps`: the map ``ReLU(sum_c w_c A_c)``, upsampled to the input and min-max
   normalised.

:func:`gscorecam` chains them (:func:`gscorecam_details` also returns what each step computed).
Below it, the variants its options select: the reference code's conventions and a random pick of
channels as a control. The speed-ups are elsewhere and can be skipped:
:mod:`~medclipsam.saliency.gscorecam_fast` (batch size, low-precision scoring) and
:mod:`~medclipsam.saliency.gscorecam_multi` (several prompts on one image share the masked images).

Cost: about k image forwards per image (the masked images all differ, nothing can be cached), so
about 10.5 TFLOP for BiomedCLIP's ViT-B/16 at k=300; ``benchmarks/gscorecam_speed.py`` measures
the time on a machine. The text feature is normalised once and never re-encoded; masks are made
for the kept channels only, one scoring batch at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import PAPER_K
from .cam import (
    cam_to_map,
    check_images,
    exp_logit_scale,
    layer_activations_and_gradients,
    normalized_text,
    resolve_target,
    upsample_and_normalize,
)
from .gscorecam_fast import default_batch_size, scoring_dtype, scoring_encoder
from .targets import TargetLayer

__all__ = [
    "CONVENTIONS",
    "PICKS",
    "GScoreCamDetails",
    "channel_masks",
    "combine_maps",
    "gscorecam",
    "gscorecam_details",
    "gscorecam_weights",
    "score_masked_images",
    "select_channels",
]

#: ``(channel maps [N, h, w], size) -> masks [N, H, W]``: how step 2 makes its masks.
MaskMaker = Callable[[torch.Tensor, "tuple[int, int] | torch.Size"], torch.Tensor]


# --------------------------------------------------------------------------------------------
# step 1: the k channels with the largest mean gradient


def channels_kept(k: int | float | None, c: int) -> int:
    """k as a number of channels: None = all; a float in (0, 1] = that share of the C channels
    (at least one); an int is clipped to C."""
    if k is None:
        return c
    if isinstance(k, float):
        return max(1, min(c, round(k * c)))
    return min(int(k), c)


def channel_importance(grads: torch.Tensor) -> torch.Tensor:
    """Each channel's importance, the spatial mean of its signed gradient: ``[B, C, h, w]`` ->
    ``[B, C]``."""
    return grads.mean(dim=(2, 3))


def select_channels(grads: torch.Tensor, k: int | float | None) -> torch.Tensor:
    """The channels of largest importance (:func:`channel_importance`), largest first:
    ``[B, C, h, w]`` -> ``[B, kk]`` (int64, ``kk`` = :func:`channels_kept`)."""
    importance = channel_importance(grads)
    return importance.topk(channels_kept(k, importance.shape[1]), dim=1).indices


# --------------------------------------------------------------------------------------------
# step 2: each kept channel as a mask over the image


def channel_masks(maps: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Channel maps ``[N, h, w]`` as masks over the image ``[N, H, W]``: upsampled to ``size``
    (bilinear, half-pixel centres) and min-max normalised each to [0, 1] (a flat map gives
    zeros)."""
    return upsample_and_normalize(maps, size)


# --------------------------------------------------------------------------------------------
# step 3: score the masked images, weigh the channels


def masked_image_features(
    encode: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    act: torch.Tensor,
    image_idx: torch.Tensor,
    channel_idx: torch.Tensor,
    *,
    batch_size: int,
    masks: MaskMaker = channel_masks,
) -> torch.Tensor:
    """Normalised image features ``[N, D]`` of ``images[image_idx[i]] * mask(act[image_idx[i],
    channel_idx[i]])``, scored by ``encode`` in batches without gradients; the masks are made
    one batch at a time (never all at once)."""
    if image_idx.numel() == 0:
        return images.new_zeros(0, 0, dtype=torch.float32)
    size = images.shape[-2:]
    out = []
    with torch.inference_mode():
        for s in range(0, image_idx.numel(), batch_size):
            b, c = image_idx[s : s + batch_size], channel_idx[s : s + batch_size]
            x = images[b] * masks(act[b, c], size)[:, None]
            out.append(F.normalize(encode(x).float(), dim=-1))
    return torch.cat(out)


def score_masked_images(
    model: torch.nn.Module,
    images: torch.Tensor,
    act: torch.Tensor,
    channels: torch.Tensor,
    text: torch.Tensor,
    *,
    batch_size: int = 16,
    encode: Callable[[torch.Tensor], torch.Tensor] | None = None,
    masks: MaskMaker = channel_masks,
) -> torch.Tensor:
    """The image-text logit ``[B, k]`` of each image masked by each of its kept channels.

    ``images`` ``[B, 3, H, W]``, ``act`` ``[B, C, h, w]``, ``channels`` ``[B, k]``, ``text``
    ``[B, D]`` normalised. ``encode``: images -> features (default: ``model.encode_image``; see
    :func:`~medclipsam.saliency.gscorecam_fast.scoring_encoder` for low precision)."""
    n, kk = channels.shape
    image_idx = torch.arange(n, device=images.device).repeat_interleave(kk)
    feats = masked_image_features(
        encode or model.encode_image, images.detach(), act, image_idx, channels.reshape(-1),
        batch_size=batch_size, masks=masks,
    )
    return exp_logit_scale(model) * (feats.view(n, kk, -1) * text[:, None]).sum(-1)


def gscorecam_weights(scores: torch.Tensor) -> torch.Tensor:
    """Channel weights: a softmax over the k kept channels' scores, ``[B, k]`` -> ``[B, k]``."""
    return torch.softmax(scores, dim=-1)


# --------------------------------------------------------------------------------------------
# step 4: the weighted sum of the kept channels


def combine_maps(
    act: torch.Tensor,
    channels: torch.Tensor,
    weights: torch.Tensor,
    size: tuple[int, int] | torch.Size,
) -> torch.Tensor:
    """``ReLU(sum_j w_j A_{c_j})`` over the kept channels ``channels [B, k]`` of ``act
    [B, C, h, w]``, upsampled to ``size`` (bilinear, half-pixel centres) and min-max normalised:
    ``[B, H, W]`` in [0, 1]."""
    _, _, h, w = act.shape
    kept = act.gather(1, channels[:, :, None, None].expand(-1, -1, h, w))
    return cam_to_map((weights[:, :, None, None] * kept).sum(1), size)


# --------------------------------------------------------------------------------------------
# the method: the four steps in a row


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


def gscorecam_details(
    model: torch.nn.Module,
    images: torch.Tensor,
    text_features: torch.Tensor,
    *,
    k: int | float | None = PAPER_K,
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
    check_options(weighting, k, batch_size, convention, pick)
    target = resolve_target(model, target)
    device = images.device
    txt = normalized_text(text_features, images.shape[0], device)
    act, grads = layer_activations_and_gradients(model, images, txt, target)

    # 1. the k channels with the largest mean gradient
    importance = channel_importance(grads)
    channels = pick_channels(grads, k, pick, pick_seed)  # [B, k]
    # 2 and 3. the masked images scored (masks made batch by batch), in the scoring precision
    dtype = scoring_dtype(precision, device)
    scores = score_masked_images(
        model, images, act, channels, txt,
        batch_size=int(batch_size or default_batch_size(device)),
        encode=scoring_encoder(model, dtype), masks=mask_maker(convention),
    )
    # 3 and 4. softmax weights, the weighted sum of the channels
    weights, maps = weigh_and_combine(act, channels, scores, weighting, images.shape[-2:])
    return GScoreCamDetails(maps, importance, channels, scores, weights, target.name, dtype)


def gscorecam(
    model: torch.nn.Module,
    images: torch.Tensor,
    text_features: torch.Tensor,
    *,
    k: int | float | None = PAPER_K,
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
    (None: :func:`~medclipsam.saliency.gscorecam_fast.default_batch_size`; the result does not
    depend on it). ``target``: see :func:`~medclipsam.saliency.cam.resolve_target`
    (``"reference"`` reproduces the paper's layer, whose patch tokens get exactly zero gradient on
    CLS-pooled ViTs such as BiomedCLIP, so its top-k is arbitrary).

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
    float16 on CUDA, float32 otherwise; :func:`~medclipsam.saliency.gscorecam_fast.fast_dtype`),
    or ``"bf16"``/``"fp16"`` explicitly. The low-precision copy of the image tower is made once
    per model and cached.

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


# --------------------------------------------------------------------------------------------
# the variants the options select: the reference code's conventions, a random pick of channels

_WEIGHTINGS = ("selected", "reference")
#: How channel masks are made: ``"package"`` (:func:`channel_masks`: bilinear with half-pixel
#: centres, min-max with a flat map giving zeros) or ``"reference"``
#: (:func:`reference_channel_masks`: the reference code's corner-aligned upsampling and
#: ``+ 1e-6`` in the min-max denominator).
CONVENTIONS = ("package", "reference")
#: How gScoreCAM picks its k channels: ``"gradient"`` (the method: :func:`select_channels`) or
#: ``"random"`` (:func:`random_channels`: a control for whether the gradient's pick helps).
PICKS = ("gradient", "random")
#: The reference code's min-max guard: ``(x - min) / (max - min + 1e-6)``.
REFERENCE_MASK_EPS = 1e-6


def check_options(
    weighting: str,
    k: int | float | None,
    batch_size: int | None,
    convention: str = "package",
    pick: str = "gradient",
) -> None:
    """A clear ``ValueError`` for an option gScoreCAM does not know."""
    if weighting not in _WEIGHTINGS:
        raise ValueError(f"weighting must be one of {_WEIGHTINGS}, got {weighting!r}")
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    if pick not in PICKS:
        raise ValueError(f"pick must be one of {PICKS}, got {pick!r}")
    if isinstance(k, float) and not 0.0 < k <= 1.0:
        raise ValueError(f"a fractional k must lie in (0, 1] (a share of the channels), got {k}")
    if isinstance(k, int) and k < 1:
        raise ValueError(f"k must be a positive number of channels (or None for all), got {k}")
    if batch_size is not None and int(batch_size) < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")


def random_channels(
    rows: int, c: int, kk: int, seed: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """``kk`` of ``c`` channels drawn at random for each of ``rows`` rows (row b with generator
    seed ``seed + b``): ``[rows, kk]`` int64."""
    picks = [torch.randperm(c, generator=torch.Generator().manual_seed(int(seed) + b))[:kk]
             for b in range(rows)]
    return torch.stack(picks).to(device)


def pick_channels(grads: torch.Tensor, k: int | float | None, pick: str, seed: int) -> torch.Tensor:
    """The kept channels ``[B, kk]`` for gradients ``[B, C, h, w]``: :func:`select_channels`
    (``pick="gradient"``) or :func:`random_channels` (``"random"``)."""
    if pick == "gradient":
        return select_channels(grads, k)
    c = grads.shape[1]
    return random_channels(grads.shape[0], c, channels_kept(k, c), seed, grads.device)


def reference_channel_masks(maps: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Channel masks as the reference code makes them: upsampled with corner-aligned bilinear
    interpolation (``align_corners=True``, ``nn.UpsamplingBilinear2d``) and min-max normalised as
    ``(x - min) / (max - min + 1e-6)`` (a flat map gives zeros). Only for reproducing the
    reference: the package's own convention is :func:`channel_masks`."""
    up = F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=True)[:, 0]
    flat = up.flatten(1)
    lo = flat.min(1).values.view(-1, 1, 1)
    hi = flat.max(1).values.view(-1, 1, 1)
    return (up - lo) / (hi - lo + REFERENCE_MASK_EPS)


def mask_maker(convention: str) -> MaskMaker:
    """Step 2 for ``convention`` (:data:`CONVENTIONS`)."""
    return reference_channel_masks if convention == "reference" else channel_masks


def reference_weights(scores: torch.Tensor, channels: torch.Tensor, c: int) -> torch.Tensor:
    """The reference code's weights ``[Q, C]``: the k scores scattered into a zero vector of all C
    channels, then a softmax over all C (an unselected channel keeps ``exp(0)/Z``)."""
    full = torch.zeros(scores.shape[0], c, dtype=scores.dtype, device=scores.device)
    return torch.softmax(full.scatter(1, channels, scores), dim=-1)


def weigh_and_combine(
    act: torch.Tensor,
    channels: torch.Tensor,
    scores: torch.Tensor,
    weighting: str,
    size: tuple[int, int] | torch.Size,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Steps 3 and 4 for ``weighting``: the weights and the maps ``[Q, H, W]``. ``"selected"``:
    :func:`gscorecam_weights` over the k kept channels; ``"reference"``:
    :func:`reference_weights` over all C channels, the map summed over all of them."""
    if weighting == "selected":
        weights = gscorecam_weights(scores)
        return weights, combine_maps(act, channels, weights, size)
    q, c = act.shape[:2]
    weights = reference_weights(scores, channels, c)
    every = torch.arange(c, device=act.device).expand(q, c)
    return weights, combine_maps(act, every, weights, size)
