"""Segmentation and saliency metrics on numpy arrays.

Conventions (stated once, tested): masks are boolean ``(H, W)``; Dice and IoU of two empty masks
are 1 (a correct "nothing here"), of one empty and one non-empty mask 0. Saliency AUC and the
pointing game are undefined for an empty ground-truth mask and return NaN.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

__all__ = ["dice", "iou", "pointing_game", "saliency_auc"]


def _pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p, g = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    if p.shape != g.shape:
        raise ValueError(f"prediction has shape {p.shape}, ground truth {g.shape}")
    return p, g


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice coefficient 2|P∩G| / (|P| + |G|); 1.0 when both are empty."""
    p, g = _pair(pred, gt)
    total = p.sum() + g.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(p, g).sum() / total)


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """Intersection over union; 1.0 when both are empty."""
    p, g = _pair(pred, gt)
    union = np.logical_or(p, g).sum()
    return 1.0 if union == 0 else float(np.logical_and(p, g).sum() / union)


def saliency_auc(saliency: np.ndarray, gt: np.ndarray) -> float:
    """ROC AUC of the saliency values as a pixel classifier of the mask (ties count half).

    Computed with the rank-sum (Mann-Whitney) identity; NaN when the mask is empty or full.
    """
    s = np.asarray(saliency, dtype=np.float64).ravel()
    g = np.asarray(gt, dtype=bool).ravel()
    if s.shape != g.shape:
        raise ValueError(f"saliency has {s.size} pixels, ground truth {g.size}")
    n_pos = int(g.sum())
    n_neg = g.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = stats.rankdata(s)
    return float((ranks[g].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def pointing_game(saliency: np.ndarray, gt: np.ndarray, tolerance_px: int = 0) -> float:
    """1.0 if the saliency maximum lies on the mask (within ``tolerance_px``), else 0.0; NaN for
    an empty mask. Ties at the maximum go to the first in row-major order (numpy's argmax)."""
    s = np.asarray(saliency)
    g = np.asarray(gt, dtype=bool)
    if s.shape != g.shape:
        raise ValueError(f"saliency has shape {s.shape}, ground truth {g.shape}")
    if not g.any():
        return float("nan")
    r, c = np.unravel_index(int(np.argmax(s)), s.shape)
    if tolerance_px <= 0:
        return float(g[r, c])
    r0, r1 = max(0, r - tolerance_px), r + tolerance_px + 1
    c0, c1 = max(0, c - tolerance_px), c + tolerance_px + 1
    return float(g[r0:r1, c0:c1].any())
