"""From a saliency map to SAM prompts: coarse mask, connected components, boxes and points.

Stage 3 of MedCLIP-SAM (v1: dense CRF and one box; v2: k-means or a threshold, points). Input is the
*raw* saliency map, a float ``(H, W)`` array in [0, 1]. Steps:

1. :func:`medclipsam.coarse.coarse_mask` (its own module): dense CRF (MedCLIP-SAM v1), k-means
   with k = 2, a fixed threshold (0.3, v2) or Otsu's threshold;
2. :func:`keep_largest_components`: the N largest connected components (N = 2 for two lungs);
3. :func:`boxes_from_mask` and :func:`sample_points`: box and point prompts;
4. :func:`make_sam_prompts` does all of it and returns :class:`SamPrompts`, whose ``flags`` say when
   something fell back (no contrast in the map, no component: the box is then the whole image),
   never a silent success.

Coordinate conventions (those of ``segment_anything``): a box is ``[x0, y0, x1, y1]`` with x the
column and y the row, in pixels of the image the saliency map covers; ``x1``/``y1`` are
**inclusive** (the last column/row of the object, as segment_anything's ``batched_mask_to_box``
and LiteMedSAM's official boxes); a point is ``(x, y)`` = (column, row) of a pixel. SAM adds 0.5
to both to address pixel centres. Point labels: 1 positive, 0 negative, -1 padding ("not a
point", SAM's own convention for prompts of unequal length).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy import ndimage as ndi

from .coarse import MIN_CONTRAST, CrfParams, as_saliency, coarse_mask
from .data.convert import to_uint8
from .vocab import BOX_MODES, SAM_PROMPT_MODES

__all__ = [
    "SamPrompts",
    "boxes_from_mask",
    "content_mask",
    "keep_largest_components",
    "make_sam_prompts",
    "sample_points",
    "widen_boxes",
]

# --------------------------------------------------------------------------------------------
# components and boxes


def _check_mask(mask: np.ndarray) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {m.shape}")
    return m.astype(bool)


def _structure(connectivity: int) -> np.ndarray:
    if connectivity not in (1, 2):
        raise ValueError(
            f"connectivity must be 1 (4-neighbours) or 2 (8-neighbours), got {connectivity}"
        )
    return ndi.generate_binary_structure(2, connectivity)


def _components(mask: np.ndarray, connectivity: int) -> tuple[np.ndarray, list[int]]:
    """Label image and the labels ordered by size (largest first; ties: first in raster order)."""
    lab, n = ndi.label(mask, structure=_structure(connectivity))
    if n == 0:
        return lab, []
    sizes = np.bincount(lab.ravel(), minlength=n + 1)[1:]
    order = np.lexsort((np.arange(n), -sizes))  # stable: size desc, then label (raster order)
    return lab, [int(k) + 1 for k in order]


def keep_largest_components(
    mask: np.ndarray, n: int | None = 1, connectivity: int = 2, min_area: int = 1
) -> np.ndarray:
    """The ``n`` largest connected components of ``mask`` (all when ``n`` is None) that have at
    least ``min_area`` pixels. ``connectivity`` 2 = 8-neighbours (default), 1 = 4-neighbours.
    Equal sizes are broken by the first pixel in raster order."""
    m = _check_mask(mask)
    if n is not None and n < 1:
        raise ValueError(f"n must be >= 1 or None, got {n}")
    lab, order = _components(m, connectivity)
    sizes = np.bincount(lab.ravel())
    order = [k for k in order if sizes[k] >= min_area]
    keep = order if n is None else order[:n]
    return np.isin(lab, keep) if keep else np.zeros(m.shape, bool)


def _box_of(region: np.ndarray) -> np.ndarray:
    rows, cols = np.flatnonzero(region.any(1)), np.flatnonzero(region.any(0))
    return np.array([cols[0], rows[0], cols[-1], rows[-1]], dtype=np.float64)


def _box_area(region: np.ndarray) -> float:
    x0, y0, x1, y1 = _box_of(region)
    return float((x1 - x0 + 1) * (y1 - y0 + 1))


def boxes_from_mask(
    mask: np.ndarray,
    mode: Literal["largest", "per_component", "union"] = "largest",
    n_components: int | None = 1,
    connectivity: int = 2,
    margin: float = 0.0,
) -> np.ndarray:
    """SAM box prompts ``(N, 4)`` float ``[x0, y0, x1, y1]`` (inclusive pixels) from a mask.

    * ``"largest"``: one box around the largest component;
    * ``"per_component"``: one box per component, the ``n_components`` largest (all when None),
      sorted left to right (then top to bottom): MedCLIP-SAM's "multi-contour" (two lungs);
    * ``"union"``: one box around the ``n_components`` largest components together.

    ``margin`` widens every box by that many pixels on each side, clipped to the image. An
    empty mask gives an empty ``(0, 4)`` array (:func:`make_sam_prompts` turns it into a flagged
    whole-image box).
    """
    m = _check_mask(mask)
    if mode not in BOX_MODES:
        raise ValueError(f"unknown box mode {mode!r}; choose one of {BOX_MODES}")
    regions = _regions(m, mode, n_components, connectivity)
    if not regions:
        return np.zeros((0, 4), dtype=np.float64)
    out = np.stack([_box_of(r) for r in regions])
    if margin:
        h, w = m.shape
        out += np.array([-margin, -margin, margin, margin])
        out[:, [0, 2]] = out[:, [0, 2]].clip(0, w - 1)
        out[:, [1, 3]] = out[:, [1, 3]].clip(0, h - 1)
    return out


def _regions(
    mask: np.ndarray, mode: str, n_components: int | None, connectivity: int
) -> list[np.ndarray]:
    """The masks the prompts are made for, aligned with :func:`boxes_from_mask`'s boxes."""
    lab, order = _components(mask, connectivity)
    if not order:
        return []
    if mode == "largest":
        return [lab == order[0]]
    chosen = order if n_components is None else order[: max(1, int(n_components))]
    if mode == "union":
        return [np.isin(lab, chosen)]
    regions = [lab == k for k in chosen]
    return sorted(regions, key=lambda r: tuple(_box_of(r)[:2]))


# --------------------------------------------------------------------------------------------
# points


def sample_points(
    region: np.ndarray,
    n_positive: int = 1,
    n_negative: int = 0,
    *,
    saliency: np.ndarray | None = None,
    strategy: Literal["interior", "peak", "random"] = "interior",
    outside: np.ndarray | None = None,
    negative_margin: int = 5,
    min_distance: float = 5.0,
    within: np.ndarray | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Point prompts ``(P, 2)`` as ``(x, y)`` and labels ``(P,)`` (1 positive, 0 negative).

    Positives lie inside ``region``:

    * ``"interior"``: the first is the pixel deepest inside (maximum of the distance transform;
      ties: higher saliency, then raster order), the others drawn with probability
      proportional to the depth (away from the boundary);
    * ``"peak"``: the highest-saliency pixels, each at least ``min_distance`` pixels from the
      points already chosen (needs ``saliency``);
    * ``"random"``: uniform inside the region.

    Negatives are drawn uniformly among pixels outside ``outside`` (default: ``region``)
    dilated by ``negative_margin`` pixels (falling back to plain outside when the dilation
    leaves nothing) and, when ``within`` is given, inside it (e.g. :func:`content_mask`: the
    ultrasound fan, not the black frame around it). All draws come from ``numpy.random.default_rng(seed)``: the same inputs
    and seed give the same points. Fewer points come back when there is not enough room.
    """
    r = _check_mask(region)
    if n_positive < 0 or n_negative < 0:
        raise ValueError("n_positive and n_negative must be >= 0")
    if strategy not in ("interior", "peak", "random"):
        raise ValueError(f"unknown strategy {strategy!r}; choose interior, peak or random")
    s = None if saliency is None else as_saliency(saliency)
    if s is not None and s.shape != r.shape:
        raise ValueError(f"saliency is {s.shape} but the region is {r.shape}")
    if strategy == "peak" and s is None:
        raise ValueError("strategy='peak' needs the saliency map")
    rng = np.random.default_rng(seed)
    flat = np.flatnonzero(r.ravel())
    pos: list[int] = []
    k = min(int(n_positive), flat.size)
    if k > 0:
        if strategy == "random":
            pos = [int(i) for i in rng.choice(flat, size=k, replace=False)]
        elif strategy == "interior":
            depth = ndi.distance_transform_edt(np.pad(r, 1))[1:-1, 1:-1].ravel()[flat]
            tie = s.ravel()[flat] if s is not None else np.zeros(flat.size)
            first = int(np.lexsort((np.arange(flat.size), -tie, -depth))[0])
            pos = [int(flat[first])]
            if k > 1:
                rest = np.delete(np.arange(flat.size), first)
                w = depth[rest] / depth[rest].sum()
                pos += [int(flat[i]) for i in rng.choice(rest, size=k - 1, replace=False, p=w)]
        else:
            vals = s.ravel()[flat]
            cand = flat[np.lexsort((np.arange(flat.size), -vals))]
            ys, xs = np.divmod(cand, r.shape[1])
            taken = np.zeros(cand.size, bool)
            for _ in range(k):
                free = np.flatnonzero(~taken)
                if free.size == 0:
                    break
                j = int(free[0])
                pos.append(int(cand[j]))
                taken |= (ys - ys[j]) ** 2 + (xs - xs[j]) ** 2 < float(min_distance) ** 2
                taken[j] = True
    neg: list[int] = []
    if n_negative > 0:
        base = r if outside is None else _check_mask(outside) | r
        grown = base
        if negative_margin > 0:
            grown = ndi.binary_dilation(base, iterations=int(negative_margin))
        inside = np.ones_like(base) if within is None else _check_mask(within)
        pool = np.flatnonzero((~grown & inside).ravel())
        if pool.size == 0:
            pool = np.flatnonzero((~base & inside).ravel())
        if pool.size == 0:
            pool = np.flatnonzero(~base.ravel())
        kn = min(int(n_negative), pool.size)
        if kn > 0:
            neg = [int(i) for i in rng.choice(pool, size=kn, replace=False)]
    idx = np.asarray(pos + neg, dtype=np.int64)
    ys, xs = np.divmod(idx, r.shape[1])
    points = np.stack([xs, ys], axis=1).astype(np.float64).reshape(-1, 2)
    labels = np.asarray([1] * len(pos) + [0] * len(neg), dtype=np.int64)
    return points, labels


# --------------------------------------------------------------------------------------------
# everything together


@dataclass
class SamPrompts:
    """SAM prompts made from one saliency map.

    ``boxes``: ``(N, 4)`` float xyxy (inclusive pixels) or None (``mode="points"``);
    ``points``: ``(N, P, 2)`` float ``(x, y)`` or None (``mode="box"``), one group of points per
    box/region; ``point_labels``: ``(N, P)`` int, 1 positive, 0 negative, -1 padding;
    ``mask``: the coarse mask after keeping components (what they were made from);
    ``flags``: what fell back or was missing (empty tuple when all went as asked):

    * ``"empty_saliency"``: the map has no contrast (max - min <= :data:`MIN_CONTRAST`);
    * ``"no_component"``: the coarse mask is empty; the box is then the whole image
      (``"whole_image_box"``) and a lone positive point sits at the saliency maximum
      (``"fallback_point"``, the centre for a flat map);
    * ``"small_box_dropped"``: a region's box was smaller than ``min_box_area`` of the image and
      was not used (when none is left, the ``"no_component"`` fallback follows);
    * ``"fewer_components"``: fewer components than ``n_components`` were found;
    * ``"fewer_points"``: a region had room for fewer points than asked.
    """

    boxes: np.ndarray | None
    points: np.ndarray | None
    point_labels: np.ndarray | None
    mask: np.ndarray = field(repr=False)
    mode: str
    flags: tuple[str, ...] = field(default_factory=tuple)

    @property
    def n_sam_prompts(self) -> int:
        """Number of SAM prompts (boxes, or point groups): SAM returns one mask per SAM prompt."""
        if self.boxes is not None:
            return len(self.boxes)
        return 0 if self.points is None else len(self.points)

    @property
    def ok(self) -> bool:
        """True when nothing fell back (no flags)."""
        return not self.flags

    def to_dict(self) -> dict:
        """Plain lists, for JSON logs."""
        return {
            "mode": self.mode,
            "boxes": None if self.boxes is None else self.boxes.tolist(),
            "points": None if self.points is None else self.points.tolist(),
            "point_labels": None if self.point_labels is None else self.point_labels.tolist(),
            "flags": list(self.flags),
        }


def widen_boxes(boxes: np.ndarray, share: float, shape: tuple[int, int]) -> np.ndarray:
    """``boxes`` ``(N, 4)`` xyxy, each widened on every side by ``share`` of the longer side of an
    image of ``shape`` (H, W), and clipped to it: the same margin for a sliver and a round box, and
    the same share of the picture on every image size."""
    if not 0.0 <= share <= 0.5:
        raise ValueError(f"box margin is a share of the image's longer side in [0, 0.5], got {share}")
    b = np.array(boxes, dtype=np.float64).reshape(-1, 4)
    if share:
        px = share * max(shape)
        b += np.array([-px, -px, px, px])
        b[:, [0, 2]] = b[:, [0, 2]].clip(0, shape[1] - 1)
        b[:, [1, 3]] = b[:, [1, 3]].clip(0, shape[0] - 1)
    return b


def content_mask(image: np.ndarray, *, level: int = 3, close: int = 3) -> np.ndarray:
    """Where the picture has content: grey values above ``level`` (of 255), closed by ``close``
    pixels and with holes filled, so the black frame of an ultrasound fan (or the padding of a
    letterboxed image) is outside and dark structures inside the anatomy are not. An image with no
    such pixels gives all True (nothing to exclude)."""
    on = to_uint8(image, mode="grey") > level
    if close > 0:
        on = ndi.binary_closing(np.pad(on, close), iterations=int(close))[close:-close, close:-close]
    on = ndi.binary_fill_holes(on)
    return on if on.any() else np.ones(on.shape, bool)


def _pad_groups(groups: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    p = max((len(lbl) for _, lbl in groups), default=0)
    pts = np.zeros((len(groups), p, 2), dtype=np.float64)
    lbls = -np.ones((len(groups), p), dtype=np.int64)
    for i, (xy, lbl) in enumerate(groups):
        pts[i, : len(lbl)] = xy
        lbls[i, : len(lbl)] = lbl
    return pts, lbls


def make_sam_prompts(
    saliency: np.ndarray,
    *,
    image: np.ndarray | None = None,
    postprocess: Literal["crf", "kmeans", "threshold", "otsu"] = "kmeans",
    threshold: float = 0.3,
    crf: CrfParams | None = None,
    box_mode: Literal["largest", "per_component", "union"] = "largest",
    n_components: int | None = 1,
    connectivity: int = 2,
    min_area: int = 1,
    mode: Literal["box", "points", "box+points"] = "box",
    points: int = 1,
    negatives: int = 0,
    point_strategy: Literal["interior", "peak", "random"] = "interior",
    box_margin: float = 0.0,
    within_content: bool = False,
    min_box_area: float = 0.0,
    seed: int = 0,
) -> SamPrompts:
    """Saliency map -> coarse mask -> the ``n_components`` largest components -> prompts.

    ``postprocess``/``threshold``/``crf``/``image``: :func:`coarse_mask`. ``box_mode`` picks the
    regions prompted (one box/point group each: :func:`boxes_from_mask`). ``mode``: boxes,
    points, or both (points per region: ``points`` positives inside it, ``negatives`` outside
    every kept component and, given ``image``, inside its :func:`content_mask`;
    :func:`sample_points` with ``point_strategy`` and ``seed``).
    ``box_margin``: each box widened by that share of the image's longer side (:func:`widen_boxes`).
    ``within_content``: the coarse mask is cut to ``image``'s :func:`content_mask` first (a map that
    lights the black frame around an ultrasound fan cannot put the box there; needs ``image``).
    ``min_box_area``: a region whose box (inclusive pixels) covers less than this share of the
    image is dropped (flag ``"small_box_dropped"``): a speck of a few pixels is no prompt for SAM.
    Fallbacks are flagged in :attr:`SamPrompts.flags`, never silent.
    """
    if mode not in SAM_PROMPT_MODES:
        raise ValueError(f"unknown prompt mode {mode!r}; choose one of {SAM_PROMPT_MODES}")
    if box_mode not in BOX_MODES:
        raise ValueError(f"unknown box mode {box_mode!r}; choose one of {BOX_MODES}")
    if mode == "points" and points < 1:
        raise ValueError("mode='points' needs at least one positive point (points >= 1)")
    s = as_saliency(saliency)
    h, w = s.shape
    if within_content and (image is None or np.asarray(image).shape[:2] != s.shape):
        raise ValueError("within_content=True needs the image the saliency map belongs to (same height "
                         "and width), to find its content")
    flags: list[str] = []
    # the picture's content, found once: the coarse mask is cut to it, negative points kept in it
    content = None
    if within_content or (negatives and mode != "box" and image is not None
                          and np.asarray(image).shape[:2] == s.shape):
        content = content_mask(image)
    if float(s.max() - s.min()) <= MIN_CONTRAST:
        flags.append("empty_saliency")
        coarse = np.zeros(s.shape, bool)
    else:
        coarse = coarse_mask(s, postprocess, image=image, threshold=threshold, crf=crf)
        if within_content:
            coarse &= content
    kept = keep_largest_components(coarse, n_components, connectivity, min_area)
    regions = _regions(kept, box_mode, n_components, connectivity)
    if min_box_area > 0 and regions:
        big = [r for r in regions if _box_area(r) >= min_box_area * h * w]
        if len(big) < len(regions):
            flags.append("small_box_dropped")
            regions = big
            kept = kept & np.logical_or.reduce(big) if big else np.zeros_like(kept)
    want_boxes, want_points = mode in ("box", "box+points"), mode in ("points", "box+points")
    if not regions:
        flags.append("no_component")
        boxes = None
        if want_boxes:
            boxes = np.array([[0.0, 0.0, w - 1.0, h - 1.0]])
            flags.append("whole_image_box")
        pts = lbls = None
        if want_points:
            if "empty_saliency" in flags:
                y, x = (h - 1) // 2, (w - 1) // 2
            else:
                y, x = np.unravel_index(int(np.argmax(s)), s.shape)
            pts, lbls = np.array([[[float(x), float(y)]]]), np.array([[1]])
            flags.append("fallback_point")
        return SamPrompts(boxes, pts, lbls, kept, mode, tuple(flags))
    n_found = len(_components(kept, connectivity)[1])
    if n_components is not None and box_mode != "largest" and n_found < n_components:
        flags.append("fewer_components")
    boxes = None
    if want_boxes:
        boxes = widen_boxes(np.stack([_box_of(r) for r in regions]), box_margin, (h, w))
    pts = lbls = None
    if want_points:
        groups = []
        for i, r in enumerate(regions):
            xy, lbl = sample_points(
                r, points, negatives, saliency=s, strategy=point_strategy, outside=kept,
                within=content if negatives else None, seed=seed + i,
            )
            if int((lbl == 1).sum()) < points or int((lbl == 0).sum()) < negatives:
                if "fewer_points" not in flags:
                    flags.append("fewer_points")
            groups.append((xy, lbl))
        pts, lbls = _pad_groups(groups)
    return SamPrompts(boxes, pts, lbls, kept, mode, tuple(flags))
