"""Segmentation and saliency metrics on numpy arrays, their summary, and folder evaluation.

Conventions (stated once, tested): masks are boolean ``(H, W)``; Dice and IoU of two empty masks
are 1 (a correct "nothing here"), of one empty and one non-empty mask 0. Saliency AUC and the
pointing game are undefined for an empty ground-truth mask and return NaN.

Surface metrics follow MONAI's ``compute_hausdorff_distance(percentile=95)`` and
``compute_surface_dice`` (``use_subvoxels=False``), checked against them in the tests:

* the surface of a mask is its pixels that have a 4-neighbour outside it (``mask XOR
  binary_erosion(mask)``, pixels beyond the image border count as outside, so a mask touching
  the border has a surface there);
* distances are Euclidean, from the centre of each surface pixel of one mask to the nearest
  surface pixel of the other, in pixels times ``spacing`` (a number or ``(row, column)``);
* HD95 = max over both directions of the 95th percentile (linear interpolation, numpy's default)
  of those distances;
* NSD at tolerance t = (number of surface pixels of either mask within t of the other surface) /
  (number of surface pixels of both), t in the units of ``spacing`` (pixels by default;
  MedCLIP-SAMv2 reports NSD at 2 px).

DeepMind's ``surface-distance`` package weighs each surface element by its length
(MONAI's ``use_subvoxels=True``); the two definitions can differ by several points (up to
0.08 NSD on random blobs here), so compare numbers computed with one definition only.

Empty masks (MONAI returns NaN or inf here; we choose values that can be averaged):

* both empty: HD95 0.0 and NSD 1.0 (a correct "nothing here", like Dice);
* one empty: HD95 ``inf`` (no surface to measure to) and NSD 0.0.

:func:`summarize` excludes non-finite values (an infinite HD95, a NaN) from a metric's mean,
standard deviation and bootstrap interval and reports how many it excluded (``n_excluded``, of
which ``n_infinite``), so a reader sees that HD95 was averaged over fewer images than Dice.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from scipy import stats

from .data.datasets import PairingError, pair_by_stem
from .data.io import SizeMismatchError, file_stem, read_mask

__all__ = [
    "MaskFolderPairs",
    "dice",
    "evaluate_folders",
    "evaluate_masks",
    "hd95",
    "iou",
    "nsd",
    "pair_mask_folders",
    "paired_difference",
    "pointing_game",
    "saliency_auc",
    "summarize",
    "surface_distances",
]


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


# --------------------------------------------------------------------------------------------
# surface distances: HD95 and NSD


def _spacing(spacing: float | Sequence[float]) -> tuple[float, float]:
    sp = np.asarray(spacing, dtype=np.float64).ravel()
    if sp.size == 1:
        sp = np.repeat(sp, 2)
    if sp.shape != (2,) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(
            f"spacing must be a positive number or a (row, column) pair, got {spacing!r}"
        )
    return float(sp[0]), float(sp[1])


def _surface(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it (outside the image counts as outside)."""
    return mask & ~ndi.binary_erosion(mask, border_value=0)


def surface_distances(
    pred: np.ndarray, gt: np.ndarray, spacing: float | Sequence[float] = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Distances from each surface pixel of ``pred`` to ``gt``'s surface, and from ``gt``'s to
    ``pred``'s (see the module docstring). When one mask is empty, the other's distances are
    ``inf`` and its own are an empty array; both empty gives two empty arrays."""
    p, g = _pair(pred, gt)
    if p.ndim != 2:
        raise ValueError(f"masks must be 2D (H, W), got shape {p.shape}")
    sp = _spacing(spacing)
    union = p | g
    if not union.any():
        return np.zeros(0), np.zeros(0)
    # Crop to the union's bounding box: every surface pixel lies inside it, and the pixels
    # outside it are background, so erosion with a zero border gives the same surfaces.
    rows, cols = np.flatnonzero(union.any(1)), np.flatnonzero(union.any(0))
    box = np.s_[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    sp_, sg = _surface(p[box]), _surface(g[box])
    if not sp_.any() or not sg.any():
        return np.full(int(sp_.sum()), np.inf), np.full(int(sg.sum()), np.inf)
    to_g = ndi.distance_transform_edt(~sg, sampling=sp)
    to_p = ndi.distance_transform_edt(~sp_, sampling=sp)
    return to_g[sp_], to_p[sg]


def hd95(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: float | Sequence[float] = 1.0,
    percentile: float = 95.0,
) -> float:
    """95th-percentile symmetric Hausdorff distance between the mask surfaces (pixels x spacing).

    0.0 when both masks are empty, ``inf`` when exactly one is (module docstring).
    ``percentile=100`` gives the plain Hausdorff distance.
    """
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    d_pg, d_gp = surface_distances(pred, gt, spacing)
    if d_pg.size == 0 and d_gp.size == 0:
        return 0.0
    if d_pg.size == 0 or d_gp.size == 0:
        return float("inf")
    return float(max(np.percentile(d_pg, percentile), np.percentile(d_gp, percentile)))


def nsd(
    pred: np.ndarray,
    gt: np.ndarray,
    tolerance: float = 2.0,
    spacing: float | Sequence[float] = 1.0,
) -> float:
    """Normalised surface Dice: the share of both surfaces lying within ``tolerance`` of the
    other (units of ``spacing``: pixels by default). 1.0 when both masks are empty, 0.0 when
    exactly one is."""
    if not np.isfinite(tolerance) or tolerance < 0:
        raise ValueError(f"tolerance must be a finite number >= 0, got {tolerance}")
    d_pg, d_gp = surface_distances(pred, gt, spacing)
    total = d_pg.size + d_gp.size
    if total == 0:
        return 1.0
    return float(((d_pg <= tolerance).sum() + (d_gp <= tolerance).sum()) / total)


# --------------------------------------------------------------------------------------------
# per-image rows and their summary


def evaluate_masks(
    pred_masks: Sequence[np.ndarray],
    gt_masks: Sequence[np.ndarray],
    ids: Sequence[str] | None = None,
    nsd_tolerance: float = 2.0,
    spacing: float | Sequence[float] = 1.0,
) -> list[dict]:
    """One row per image: ``{"id", "dice", "iou", "hd95", "nsd", "pred_area", "gt_area"}``.

    ``ids`` default to the positions ``"0"``, ``"1"``, ...; areas are pixel counts. A shape
    mismatch raises ``ValueError`` naming the id.
    """
    preds, gts = list(pred_masks), list(gt_masks)
    if len(preds) != len(gts):
        raise ValueError(f"{len(preds)} predicted masks but {len(gts)} ground-truth masks")
    names = [str(i) for i in range(len(preds))] if ids is None else [str(i) for i in ids]
    if len(names) != len(preds):
        raise ValueError(f"{len(names)} ids for {len(preds)} masks")
    return [_row(name, p, g, nsd_tolerance, spacing) for name, p, g in zip(names, preds, gts)]


def _row(
    name: str, pred: np.ndarray, gt: np.ndarray, tol: float, spacing: float | Sequence[float]
) -> dict:
    p, g = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    if p.shape != g.shape or p.ndim != 2:
        raise ValueError(
            f"{name}: prediction has shape {p.shape}, ground truth {g.shape} (need equal (H, W))"
        )
    return {
        "id": name,
        "dice": dice(p, g),
        "iou": iou(p, g),
        "hd95": hd95(p, g, spacing),
        "nsd": nsd(p, g, tol, spacing),
        "pred_area": int(p.sum()),
        "gt_area": int(g.sum()),
    }


def _bootstrap_means(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    n = values.size
    chunk = max(1, 2_000_000 // n)
    out = np.empty(n_boot)
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[start:stop] = values[idx].mean(axis=1)
    return out


def summarize(
    rows: Sequence[dict],
    metrics: Sequence[str] = ("dice", "iou", "hd95", "nsd"),
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[str, float | int]]:
    """Mean, standard deviation and a percentile-bootstrap confidence interval per metric.

    Returns ``{metric: {"mean", "std", "ci_low", "ci_high", "n", "n_excluded", "n_infinite"}}``.
    ``std`` is the sample standard deviation (ddof=1; NaN for fewer than 2 values). The interval
    takes the ``(1 - ci)/2`` and ``(1 + ci)/2`` quantiles of ``n_boot`` means of images drawn with
    replacement, from ``numpy.random.default_rng(seed)`` (the same draw for every metric), so
    the same rows and seed give the same interval. Non-finite values (an infinite HD95 where one
    mask is empty, NaN, None) are excluded and counted in ``n_excluded`` (``n_infinite`` of them
    infinite); ``n`` is the number of values used. A metric with no finite value gets NaN.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    out: dict[str, dict[str, float | int]] = {}
    for name in metrics:
        raw = []
        for i, row in enumerate(rows):
            if name not in row:
                raise KeyError(f"row {i} ({row.get('id', '?')}) has no metric {name!r}")
            v = row[name]
            raw.append(np.nan if v is None else float(v))
        vals = np.asarray(raw, dtype=np.float64)
        finite = vals[np.isfinite(vals)]
        stats_ = {
            "mean": float("nan"), "std": float("nan"), "ci_low": float("nan"),
            "ci_high": float("nan"), "n": int(finite.size),
            "n_excluded": int(vals.size - finite.size), "n_infinite": int(np.isinf(vals).sum()),
        }
        if finite.size:
            boots = _bootstrap_means(finite, n_boot, np.random.default_rng(seed))
            lo, hi = np.quantile(boots, [(1 - ci) / 2, (1 + ci) / 2])
            stats_.update(
                mean=float(finite.mean()),
                std=float(finite.std(ddof=1)) if finite.size > 1 else float("nan"),
                ci_low=float(lo),
                ci_high=float(hi),
            )
        out[name] = stats_
    return out


def paired_difference(
    a: Sequence[float], b: Sequence[float], n_boot: int = 2000, ci: float = 0.95, seed: int = 0
) -> dict[str, float | int]:
    """Mean of ``a - b`` over the same images with a percentile-bootstrap interval (images drawn
    with replacement, the pair kept together): the right comparison of two settings scored on
    the same images, where two separate intervals overlap even when one setting wins on nearly
    every image. Pairs with a non-finite value are dropped. Returns ``{"mean", "ci_low",
    "ci_high", "n", "wins", "losses"}`` (``wins``: images where ``a`` beats ``b``)."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"paired values need two equal-length 1-D sequences, got {x.shape} and {y.shape}")
    keep = np.isfinite(x) & np.isfinite(y)
    d = x[keep] - y[keep]
    out: dict[str, float | int] = {"mean": float("nan"), "ci_low": float("nan"),
                                   "ci_high": float("nan"), "n": int(d.size),
                                   "wins": int((d > 0).sum()), "losses": int((d < 0).sum())}
    if d.size:
        boots = _bootstrap_means(d, n_boot, np.random.default_rng(seed))
        lo, hi = np.quantile(boots, [(1 - ci) / 2, (1 + ci) / 2])
        out.update(mean=float(d.mean()), ci_low=float(lo), ci_high=float(hi))
    return out


# --------------------------------------------------------------------------------------------
# two folders of PNG masks


def _names(items: Sequence[str], shown: int = 10) -> str:
    items = list(items)
    more = len(items) - shown
    return ", ".join(items[:shown]) + (f", ... and {more} more" if more > 0 else "")


@dataclass
class MaskFolderPairs:
    """Predicted and ground-truth mask files paired by file stem (see :func:`pair_mask_folders`).

    ``missing_ground_truth``: prediction stems with no ground-truth file; ``missing_predictions``:
    ground-truth stems no prediction claimed; ``duplicates``: stems with several candidate files;
    ``ignored``: names of non-image files; ``broken_links``: symbolic links whose target does
    not exist (``name -> target``; ground truth ones prefixed ``masks/``).
    """

    ids: list[str]
    pred_paths: list[Path]
    gt_paths: list[Path]
    missing_ground_truth: list[str] = field(default_factory=list)
    missing_predictions: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    broken_links: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def problems(self) -> str | None:
        """A one-line description of everything that did not pair, or None if all did."""
        parts = []
        if self.missing_ground_truth:
            parts.append(f"{len(self.missing_ground_truth)} prediction(s) without a "
                         f"ground-truth mask: {_names(self.missing_ground_truth)}")
        if self.missing_predictions:
            parts.append(f"{len(self.missing_predictions)} ground-truth mask(s) without a "
                         f"prediction: {_names(self.missing_predictions)}")
        if self.duplicates:
            parts.append(f"several files for one stem: {_names(self.duplicates)}")
        if self.broken_links:
            parts.append(f"{len(self.broken_links)} broken symbolic link(s): "
                         f"{_names(self.broken_links)}")
        return "; ".join(parts) or None


def pair_mask_folders(
    pred_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    *,
    gt_suffixes: tuple[str, ...] = ("", "_mask"),
    strict: bool = True,
) -> MaskFolderPairs:
    """Pair ``pred_dir/<stem>.<ext>`` with ``gt_dir/<stem><suffix>.<ext>`` by file stem.

    Uses :func:`medclipsam.data.pair_by_stem` (never listing order). With ``strict=True`` any
    unpaired or duplicated file raises :class:`medclipsam.data.PairingError` naming them, as do
    folders without a single pair; otherwise the clean pairs are kept and the rest reported.
    """
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    if not pred_dir.is_dir():
        raise FileNotFoundError(f"{pred_dir}: prediction folder not found")
    if not gt_dir.is_dir():
        raise FileNotFoundError(f"{gt_dir}: ground-truth folder not found")
    pairs, report = pair_by_stem(pred_dir, gt_dir, mask_suffixes=tuple(gt_suffixes), strict=False)

    out = MaskFolderPairs(
        ids=[file_stem(p) for p, _ in pairs],
        pred_paths=[p for p, _ in pairs],
        gt_paths=[g for _, g in pairs],
        missing_ground_truth=list(report["missing_masks"]),
        missing_predictions=list(report["extra_masks"]),
        duplicates=list(report["duplicates"]),
        ignored=list(report["ignored"]),
        broken_links=list(report.get("broken_links", [])),
    )
    problem = out.problems()
    where = f"{pred_dir} (predictions) and {gt_dir} (ground truth)"
    if strict and problem:
        raise PairingError(f"masks do not pair up by file stem in {where}: {problem}", report)
    if not out.ids:
        raise PairingError(f"no prediction pairs with a ground-truth mask in {where}"
                           + (f": {problem}" if problem else ""), report)
    return out


def _iter_folder_masks(pairs: MaskFolderPairs) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    for name, pp, gp in zip(pairs.ids, pairs.pred_paths, pairs.gt_paths):
        p, g = read_mask(pp), read_mask(gp)
        if p.shape != g.shape:
            raise SizeMismatchError(pp, p.shape, gp, g.shape, what="prediction",
                                    other_what="ground truth",
                                    advice="predictions must be at the image's size")
        yield name, p, g


def evaluate_folders(
    pred_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    *,
    nsd_tolerance: float = 2.0,
    spacing: float | Sequence[float] = 1.0,
    gt_suffixes: tuple[str, ...] = ("", "_mask"),
    strict: bool = True,
) -> tuple[list[dict], MaskFolderPairs]:
    """Per-image rows (as :func:`evaluate_masks`, ids = file stems) for two folders of masks,
    and the pairing (what was missing, with ``strict=False``). Masks are read one pair at a
    time with :func:`medclipsam.data.read_mask` (foreground = value > 0)."""
    pairs = pair_mask_folders(pred_dir, gt_dir, gt_suffixes=gt_suffixes, strict=strict)
    rows = [_row(name, p, g, nsd_tolerance, spacing) for name, p, g in _iter_folder_masks(pairs)]
    return rows, pairs
