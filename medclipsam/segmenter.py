"""The Residual UNet of stage 4 as a segmenter: the network, how an image is prepared for it,
loading a trained one, predicting, and the checkpoint-ensemble uncertainty.

* **Network.** :func:`build_unet`: MONAI ``UNet`` with residual units (``num_res_units``),
  instance norm and PReLU, one input channel (grey) and one output logit (foreground).
* **Input.** Images are made a grey [0, 1] picture by the package's one rule
  (:func:`to_unit_grey`, :mod:`medclipsam.data.convert`: uint8 / 255, a 16-bit array from its
  percentile range), resized to ``size x size`` (:func:`resize_image`: bilinear, antialiased;
  masks nearest, :func:`resize_mask`), then **z-score normalised per image** (:func:`zscore`:
  mean 0, std 1; a constant image becomes 0), which makes the network indifferent to each
  scanner's gain and offset. Predictions are resized back to every image's size bilinearly.
* **Ensemble uncertainty.** :func:`ensemble_uncertainty` averages the probability maps of several
  checkpoints; an image's score is the mean binary entropy (bits) of the averaged probability
  over the pixels where at least one member gives foreground probability >= 0.1. Pixels that
  every member calls background with confidence are left out, so the score measures the members'
  doubt about the object rather than the (large, easy) background and the image size; when no
  pixel qualifies the members agree the image is empty and the score is 0.
  :func:`select_confident` keeps the ids below a share of the highest scores.

Training lives in :mod:`medclipsam.weak`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.nets import UNet
from torch import nn

from ._utils import get_device
from .config import WeakConfig
from .data.convert import to_unit_float
from .training import autocast, autocast_dtype, read_checkpoint

__all__ = [
    "CHECKPOINT_FORMAT",
    "MODEL_FORMAT",
    "SHIPPED_SEGMENTERS",
    "WEIGHTS_DIR",
    "build_unet",
    "ensemble_uncertainty",
    "load_segmenter",
    "predict_masks",
    "predict_probabilities",
    "resize_image",
    "resize_mask",
    "select_confident",
    "to_unit_grey",
    "zscore",
]

CHECKPOINT_FORMAT = "medclipsam-weak-checkpoint-v1"
MODEL_FORMAT = "medclipsam-weak-model-v1"
#: The package's weights folder, and the weakly supervised networks it ships, by task: trained on
#: the offline world's zero-shot pseudo-labels of 105 phantom training images at full settings (100
#: epochs at 96 px, early stopping on the validation pseudo-labels) by
#: ``python benchmarks/weak_offline.py --n 150 --tasks breast --ship breast``; lesson 05 loads it.
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
SHIPPED_SEGMENTERS = {"breast": "weak_unet_breast.pt"}
UNCERTAINTY_REGION_THRESHOLD = 0.1  # a pixel counts when any member's probability reaches this
PathLike = str | Path


def build_unet(config: WeakConfig) -> nn.Module:
    """The Residual UNet: MONAI ``UNet`` (2D, 1 channel in, 1 logit out, residual units)."""
    return UNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=1,
        channels=tuple(config.channels),
        strides=tuple(config.strides),
        num_res_units=int(config.num_res_units),
    )


# --------------------------------------------------------------------------------------------
# preprocessing


def to_unit_grey(image: Any, where: str = "image") -> np.ndarray:
    """(H, W) float32 in [0, 1]: the package's one picture rule, reduced to grey
    (:func:`medclipsam.data.convert.to_unit_float`); errors name ``where``."""
    try:
        return to_unit_float(image, "grey")
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {e}") from None


def resize_image(arr: np.ndarray, size: int) -> torch.Tensor:
    """(1, size, size) float32 tensor, bilinear with antialiasing."""
    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))[None, None]
    if t.shape[-2:] != (size, size):
        t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=True)
    return t[0]


def resize_mask(mask: np.ndarray, size: int) -> torch.Tensor:
    """(1, size, size) float32 tensor of a mask, nearest neighbour."""
    t = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
    if t.shape[-2:] != (size, size):
        t = F.interpolate(t, size=(size, size), mode="nearest-exact")
    return t[0]


def zscore(x: torch.Tensor) -> torch.Tensor:
    """Per-image z-score of a (B, 1, H, W) batch."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    std = x.std(dim=(1, 2, 3), keepdim=True, unbiased=False)
    return (x - mean) / std.clamp_min(1e-6)


# --------------------------------------------------------------------------------------------
# inference


def load_segmenter(path: PathLike, device: str = "auto") -> tuple[nn.Module, WeakConfig]:
    """A trained network (``model.pt`` or an epoch checkpoint) in eval mode, and its config.
    ``"weak-<task>"`` (a key of :data:`SHIPPED_SEGMENTERS`) loads the network the package ships."""
    if isinstance(path, str) and path.startswith("weak-"):
        task = path[len("weak-"):]
        if task not in SHIPPED_SEGMENTERS:
            raise ValueError(f"no shipped network {path!r}; shipped: "
                             f"{', '.join('weak-' + t for t in SHIPPED_SEGMENTERS)}")
        path = WEIGHTS_DIR / SHIPPED_SEGMENTERS[task]
    obj = read_checkpoint(path, (MODEL_FORMAT, CHECKPOINT_FORMAT), "weak-supervision")
    cfg = WeakConfig.from_dict(obj["config"])
    model = build_unet(cfg)
    try:
        model.load_state_dict(obj["model"])
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not fit the network in its config ({e})") from e
    cfg.device = device
    return model.to(get_device(device)).eval(), cfg


@torch.no_grad()
def predict_probabilities(model: nn.Module, images: Sequence[np.ndarray],
                          config: WeakConfig) -> list[np.ndarray]:
    """Foreground probability maps, float32 (H, W) at each image's original size.

    Each image is reduced to grey, scaled to [0, 1], resized to ``config.size`` and z-scored as in
    training; the predicted probabilities are resized back bilinearly.
    """
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters())
        device = param.device
        amp_dtype = autocast_dtype(config.precision, device)
        out: list[np.ndarray] = []
        batch = max(1, int(config.batch_size))
        for start in range(0, len(images), batch):
            chunk = [to_unit_grey(im, f"images[{start + i}]")
                     for i, im in enumerate(images[start : start + batch])]
            x = torch.stack([resize_image(a, config.size) for a in chunk]).to(device)
            with autocast(device, amp_dtype):
                logits = model(zscore(x))
            probs = torch.sigmoid(logits.float())
            for a, p in zip(chunk, probs):
                if tuple(p.shape[-2:]) != a.shape:
                    p = F.interpolate(p[None], size=a.shape, mode="bilinear",
                                      align_corners=False)[0]
                out.append(p[0].clamp(0, 1).cpu().numpy().astype(np.float32))
        return out
    finally:
        model.train(was_training)


def predict_masks(model: nn.Module, images: Sequence[np.ndarray], config: WeakConfig,
                  threshold: float = 0.5) -> list[np.ndarray]:
    """Boolean masks at each image's original size: probability >= ``threshold``."""
    return [p >= threshold for p in predict_probabilities(model, images, config)]


def _entropy_bits(p: np.ndarray) -> np.ndarray:
    q = np.clip(p.astype(np.float64), 1e-12, 1 - 1e-12)
    return -(q * np.log2(q) + (1 - q) * np.log2(1 - q))


def ensemble_uncertainty(checkpoints: Sequence[PathLike], images: Sequence[np.ndarray],
                         config: WeakConfig) -> tuple[list[np.ndarray], np.ndarray]:
    """Average the probability maps of several saved networks; score each image's uncertainty.

    Each member is built from the config stored with it (size, architecture); ``config`` gives
    the device, precision and batch size. The score is the mean binary entropy (bits, 0..1) of
    the averaged probability over the pixels where any member's probability is >= 0.1 (0 when
    there are none). Returns ``(mean_prob_maps, scores)``.
    """
    if len(checkpoints) == 0:
        raise ValueError("ensemble_uncertainty needs at least one checkpoint")
    sums: list[np.ndarray] | None = None
    region: list[np.ndarray] | None = None
    for path in checkpoints:
        model, cfg = load_segmenter(path, device=config.device)
        cfg.batch_size, cfg.precision = config.batch_size, config.precision
        probs = predict_probabilities(model, images, cfg)
        if sums is None:
            sums = [p.astype(np.float64) for p in probs]
            region = [p >= UNCERTAINTY_REGION_THRESHOLD for p in probs]
        else:
            for i, p in enumerate(probs):
                sums[i] += p
                region[i] |= p >= UNCERTAINTY_REGION_THRESHOLD
        del model
    assert sums is not None and region is not None
    means = [(s / len(checkpoints)).astype(np.float32) for s in sums]
    scores = np.array([float(_entropy_bits(m)[r].mean()) if r.any() else 0.0
                       for m, r in zip(means, region)], dtype=np.float64)
    return means, scores


def select_confident(scores: Sequence[float], ids: Sequence[str],
                     drop_fraction: float) -> list[str]:
    """The ids to keep after dropping the ``floor(drop_fraction * N)`` highest scores.

    Ties are broken by id (among equal scores the larger id is dropped first, so the result does
    not depend on input order); the kept ids are returned in their input order.
    """
    scores = [float(s) for s in scores]
    ids = [str(i) for i in ids]
    if len(scores) != len(ids):
        raise ValueError(f"got {len(scores)} scores for {len(ids)} ids")
    if len(set(ids)) != len(ids):
        raise ValueError("ids must be unique")
    if any(math.isnan(s) for s in scores):
        bad = [i for i, s in zip(ids, scores) if math.isnan(s)]
        raise ValueError(f"NaN uncertainty score for: {', '.join(bad[:10])}")
    if not 0.0 <= drop_fraction <= 1.0:
        raise ValueError(f"drop_fraction must be in [0, 1], got {drop_fraction}")
    n_drop = int(math.floor(drop_fraction * len(ids) + 1e-9))
    ranked = sorted(zip(scores, ids))  # most certain first; equal scores by id
    kept = {i for _, i in ranked[: len(ids) - n_drop]}
    return [i for i in ids if i in kept]
