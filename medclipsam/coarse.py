"""Stage 3a of MedCLIP-SAM: from a saliency map to a coarse mask.

Input is the *raw* saliency map: a float ``(H, W)`` array in [0, 1] (a coloured overlay is refused;
the reference code's CRF read a JET overlay as if it were grey). :func:`coarse_mask` makes the
boolean foreground by one of four rules: dense CRF (MedCLIP-SAM v1, :func:`crf_mask`), k-means with
k = 2 (v2, :func:`kmeans_threshold`), a fixed threshold (0.3, v2) or Otsu's threshold.
:mod:`medclipsam.prompting` then turns the coarse mask into SAM's boxes and points.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from skimage.filters import threshold_otsu

from .data.convert import to_uint8
from .vocab import POSTPROCESS_METHODS

__all__ = ["MIN_CONTRAST", "CrfParams", "as_saliency", "coarse_mask", "crf_mask", "kmeans_threshold"]

#: A map whose max - min is at most this has no contrast: nothing to segment.
MIN_CONTRAST = 1e-6


# --------------------------------------------------------------------------------------------
# inputs


def as_saliency(saliency: np.ndarray) -> np.ndarray:
    """The map as float64 (H, W) in [0, 1]; a clear error for overlays, NaN or other ranges."""
    s = np.asarray(saliency)
    if s.ndim == 3 and s.shape[-1] in (3, 4):
        raise ValueError(
            f"saliency must be a grey (H, W) map in [0, 1], got shape {s.shape}: this looks like "
            "a coloured image (a heat-map overlay?); pass the raw saliency map instead"
        )
    if s.ndim == 3 and 1 in (s.shape[0], s.shape[-1]):
        s = s[0] if s.shape[0] == 1 else s[..., 0]
    if s.ndim != 2 or s.size == 0:
        raise ValueError(f"saliency must be a grey (H, W) map, got shape {s.shape}")
    if s.dtype == bool:
        s = s.astype(np.float64)
    if not np.issubdtype(s.dtype, np.number):
        raise ValueError(f"saliency must be numeric, got dtype {s.dtype}")
    s = s.astype(np.float64)
    if not np.all(np.isfinite(s)):
        raise ValueError("saliency contains NaN or infinite values")
    lo, hi = float(s.min()), float(s.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise ValueError(
            f"saliency values must lie in [0, 1], got [{lo:.4g}, {hi:.4g}]; min-max normalise "
            "the map first (e.g. medclipsam.saliency.normalize_maps)"
        )
    return np.clip(s, 0.0, 1.0)


# --------------------------------------------------------------------------------------------
# coarse masks


@dataclass(frozen=True)
class CrfParams:
    """Dense-CRF settings; the defaults are MedCLIP-SAM v1's post-processing (arXiv 2403.20253)."""

    tau: float = 1.05
    eps: float = 1e-8
    gaussian_sxy: float = 3.0
    gaussian_compat: float = 3.0
    bilateral_sxy: float = 60.0
    bilateral_srgb: float = 5.0
    bilateral_compat: float = 5.0
    iterations: int = 1


def _import_densecrf():
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError as e:
        raise ImportError(
            "method='crf' needs the optional dense-CRF package pydensecrf2: "
            'pip install "medclipsam[crf]" (or choose method="kmeans", which needs nothing)'
        ) from e
    return dcrf


def crf_mask(
    saliency: np.ndarray, image: np.ndarray, params: CrfParams | None = None
) -> np.ndarray:
    """Dense-CRF foreground of ``saliency`` over ``image`` (grey or RGB, same H x W).

    Unary energies (negative log-probabilities scaled by a temperature-like factor):
    background ``-log(1 - s + eps) / (tau * sigmoid(1 - s))``, foreground
    ``-log(s + eps) / (tau * sigmoid(s))``; a Gaussian pairwise term (position only) and a
    bilateral one (position and RGB colour of the image); ``iterations`` mean-field steps;
    the label with the higher marginal wins (ties: background).
    """
    p = params or CrfParams()
    s = as_saliency(saliency)
    rgb = to_uint8(image, "rgb")
    if rgb.shape[:2] != s.shape:
        raise ValueError(f"image is {rgb.shape[:2]} but the saliency map is {s.shape} (H, W)")
    dcrf = _import_densecrf()
    h, w = s.shape

    def sigmoid(x: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-x))

    u_bg = -np.log(1.0 - s + p.eps) / (p.tau * sigmoid(1.0 - s))
    u_fg = -np.log(s + p.eps) / (p.tau * sigmoid(s))
    unary = np.ascontiguousarray(np.stack([u_bg, u_fg]).reshape(2, -1), dtype=np.float32)
    d = dcrf.DenseCRF2D(w, h, 2)
    d.setUnaryEnergy(unary)
    d.addPairwiseGaussian(sxy=p.gaussian_sxy, compat=p.gaussian_compat)
    d.addPairwiseBilateral(
        sxy=p.bilateral_sxy, srgb=p.bilateral_srgb, compat=p.bilateral_compat,
        rgbim=np.array(rgb, dtype=np.uint8, order="C"),  # a writable copy: pydensecrf refuses read-only buffers
    )
    q = np.asarray(d.inference(int(p.iterations)), dtype=np.float64).reshape(2, h, w)
    return q[1] > q[0]


def kmeans_threshold(values: np.ndarray, max_iter: int = 100) -> float | None:
    """The boundary (midpoint of the two centres) of 1-D k-means with k = 2 on ``values``.

    Lloyd's algorithm started from the minimum and the maximum: deterministic, no random
    restarts. None when the values are constant (one cluster).
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    lo, hi = float(v.min()), float(v.max())
    if hi - lo <= 0:
        return None
    c0, c1 = lo, hi
    for _ in range(max_iter):
        t = 0.5 * (c0 + c1)
        fg = v > t
        n0, n1 = int((~fg).sum()), int(fg.sum())
        if n0 == 0 or n1 == 0:
            break
        new0, new1 = float(v[~fg].mean()), float(v[fg].mean())
        if new0 == c0 and new1 == c1:
            break
        c0, c1 = new0, new1
    return 0.5 * (c0 + c1)


def coarse_mask(
    saliency: np.ndarray,
    method: Literal["crf", "kmeans", "threshold", "otsu"] = "kmeans",
    *,
    image: np.ndarray | None = None,
    threshold: float = 0.3,
    crf: CrfParams | None = None,
) -> np.ndarray:
    """Boolean foreground of a saliency map in [0, 1].

    * ``"kmeans"``: two clusters of the map values (:func:`kmeans_threshold`); the cluster
      with the higher centre is foreground (v2's default);
    * ``"threshold"``: ``s > threshold`` (v2: 0.3);
    * ``"otsu"``: ``s > skimage.filters.threshold_otsu(s)``;
    * ``"crf"``: :func:`crf_mask` with ``image`` (required) and ``crf`` settings (v1).

    A constant map gives an empty mask for ``kmeans``/``otsu``.
    """
    s = as_saliency(saliency)
    if method == "kmeans":
        t = kmeans_threshold(s)
        return np.zeros(s.shape, bool) if t is None else s > t
    if method == "threshold":
        if not 0 <= threshold <= 1:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        return s > threshold
    if method == "otsu":
        if float(s.max() - s.min()) <= 0:
            return np.zeros(s.shape, bool)
        return s > float(threshold_otsu(s))
    if method == "crf":
        if image is None:
            raise ValueError("method='crf' needs the image (its bilateral term follows edges)")
        return crf_mask(s, image, crf)
    raise ValueError(f"unknown method {method!r}; choose one of {POSTPROCESS_METHODS}")
