"""Reference answers of the exercises, with the simple signatures the student notebooks use.

Each one is, or is built only from, the package's own implementation, so what students are graded
against is what the package computes:

* :func:`hard_negative_weights`, :func:`dhn_nce`: :mod:`medclipsam.losses`;
* :func:`select_channels`, :func:`channel_masks`, :func:`gscorecam_weights`,
  :func:`combine_maps`: the four public steps of :mod:`medclipsam.saliency.gscorecam` with the
  student's signatures (the tests check that chaining them on the toy CLIP gives the package's
  maps, channels and weights exactly);
* :func:`saliency_to_mask`, :func:`mask_to_boxes`: :func:`medclipsam.coarse.coarse_mask` with
  ``"kmeans"`` and :func:`medclipsam.prompting.boxes_from_mask` with ``"per_component"``;
* :func:`mean_dice`: the mean of :func:`medclipsam.metrics.dice`;
* :func:`interpret`: reading a zero-shot / weak / full table (exercise 4), its ``clear_gain`` from
  :func:`paired_gain`, the paired difference of :func:`medclipsam.metrics.paired_difference`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from ..coarse import coarse_mask
from ..losses import dhn_nce as _dhn_nce
from ..losses import hard_negative_weights as _hard_negative_weights
from ..metrics import dice as _dice
from ..metrics import paired_difference as _paired_difference
from ..prompting import boxes_from_mask
from ..saliency.gscorecam import channel_masks as _channel_masks
from ..saliency.gscorecam import combine_maps as _combine_maps
from ..saliency.gscorecam import gscorecam_weights as _gscorecam_weights
from ..saliency.gscorecam import select_channels as _select_channels

__all__ = [
    "channel_masks",
    "combine_maps",
    "dhn_nce",
    "gscorecam_weights",
    "hard_negative_weights",
    "interpret",
    "mask_to_boxes",
    "mean_dice",
    "paired_gain",
    "per_image_dice",
    "saliency_to_mask",
    "select_channels",
]

#: The rows exercise 4's table must have (the uncertainty-filtered run is optional).
ZERO_SHOT, WEAK, FULL = "zero-shot", "weakly supervised", "fully supervised"


# -- exercise 1 --------------------------------------------------------------------------------


def hard_negative_weights(sim: torch.Tensor, beta: float) -> torch.Tensor:
    """``w_ij = (B-1) exp(beta s_ij) / sum_{k != i} exp(beta s_ik)``, zero on the diagonal:
    :func:`medclipsam.losses.hard_negative_weights`."""
    return _hard_negative_weights(sim, beta)


def dhn_nce(
    img: torch.Tensor, txt: torch.Tensor, tau: float = 0.6, beta1: float = 0.15, beta2: float = 0.15
) -> torch.Tensor:
    """DHN-NCE of B image/text embedding pairs (rows), ``L_v2t(beta1) + L_t2v(beta2)``."""
    return _dhn_nce(img, txt, tau=tau, beta1=beta1, beta2=beta2)


# -- exercise 2 --------------------------------------------------------------------------------


def select_channels(grads: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` channels of largest signed mean gradient, largest first: ``[B, C, h, w]`` ->
    ``[B, min(k, C)]`` (int64). Ties may come in any order."""
    return _select_channels(grads.float(), int(k))


def channel_masks(act: torch.Tensor, channels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Each kept channel upsampled to ``size`` (bilinear, ``align_corners=False``) and min-max
    normalised to [0, 1] (a constant channel gives zeros): ``[B, k, H, W]``."""
    b, k = channels.shape
    image_idx = torch.arange(b, device=act.device).repeat_interleave(k)
    masks = _channel_masks(act[image_idx, channels.reshape(-1)].float(), tuple(size))
    return masks.reshape(b, k, *masks.shape[-2:])


def gscorecam_weights(cosines: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """Softmax over the k kept channels of their masked-image logits ``logit_scale * cosine``:
    ``[B, k]`` -> ``[B, k]`` (``weighting="selected"``)."""
    return _gscorecam_weights(logit_scale * cosines)


def combine_maps(
    act: torch.Tensor, channels: torch.Tensor, weights: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """``ReLU(sum_j w_j A_{c_j})`` upsampled to ``size`` (bilinear, ``align_corners=False``) and
    min-max normalised: ``[B, H, W]`` in [0, 1]."""
    return _combine_maps(act, channels, weights, tuple(size))


# -- exercise 3 --------------------------------------------------------------------------------


def saliency_to_mask(saliency: np.ndarray) -> np.ndarray:
    """Foreground of a saliency map in [0, 1] by 1-D k-means with two clusters (started from the
    minimum and the maximum): ``s > t`` for the midpoint ``t`` of the two centres at
    convergence; a constant map gives an empty mask."""
    return coarse_mask(saliency, "kmeans")


def mask_to_boxes(mask: np.ndarray, n_components: int | None = 1) -> np.ndarray:
    """One box ``[x0, y0, x1, y1]`` (x = column, inclusive corners) per 8-connected component,
    the ``n_components`` largest (all when None), sorted by ``(x0, y0)``: ``(N, 4)`` float."""
    return boxes_from_mask(mask, mode="per_component", n_components=n_components, connectivity=2)


# -- exercise 4 --------------------------------------------------------------------------------


def mean_dice(preds: Sequence[np.ndarray], gts: Sequence[np.ndarray]) -> float:
    """Mean over images of the Dice of each (prediction, ground truth) pair; a pair of empty
    masks has Dice 1 (a correct "nothing here")."""
    return float(np.mean([_dice(p, g) for p, g in zip(preds, gts)]))


#: The bootstrap of exercise 4's paired difference: :func:`medclipsam.metrics.paired_difference`'s
#: defaults (2000 resamples of the test images, seed 0).
PAIRED_N_BOOT, PAIRED_SEED = 2000, 0


def per_image_dice(table: Mapping[str, Mapping], setting: str) -> list[float]:
    """The per-image Dice (``"dice_per_image"``) of one row of exercise 4's table; a
    ``ValueError`` saying where to get them when the row has none."""
    row = table[setting]
    if "dice_per_image" not in row:
        raise ValueError(
            f"the table's {setting!r} row has no 'dice_per_image': the paired difference needs "
            "each test image's Dice; build the table from the rows reproduce() returns (its "
            "table.csv holds the means only)"
        )
    return [float(v) for v in row["dice_per_image"]]


def paired_gain(table: Mapping[str, Mapping]) -> dict:
    """Weak minus zero-shot Dice on the same test images: :func:`medclipsam.metrics.
    paired_difference` of the two rows' per-image Dice (``{"mean", "ci_low", "ci_high", "n",
    "wins", "losses"}``; the interval is a 95 % bootstrap over the images, each image's pair of
    scores kept together)."""
    return _paired_difference(
        per_image_dice(table, WEAK),
        per_image_dice(table, ZERO_SHOT),
        n_boot=PAIRED_N_BOOT,
        seed=PAIRED_SEED,
    )


def interpret(table: Mapping[str, Mapping]) -> dict:
    """Answers read off a table ``{setting: {"dice": float, "ci": (low, high),
    "dice_per_image": [...]}}`` (every row scored on the same test images, in the same order):

    ``best_method``: the setting with the highest Dice; ``weak_helped``: weak supervision has a
    higher Dice than zero-shot; ``weak_gain``: weak minus zero-shot Dice; ``clear_gain``: the 95 %
    interval of the **paired** difference, weak minus zero-shot per image (:func:`paired_gain`),
    lies above 0. Not whether the two separate intervals ``"ci"`` overlap: on the same images those
    also carry how much the images differ from each other, which the paired difference cancels.
    """
    best = max(table, key=lambda s: float(table[s]["dice"]))
    zs, weak = table[ZERO_SHOT], table[WEAK]
    gain = float(weak["dice"]) - float(zs["dice"])
    return {
        "best_method": best,
        "weak_helped": bool(gain > 0),
        "weak_gain": gain,
        "clear_gain": bool(paired_gain(table)["ci_low"] > 0),
    }
