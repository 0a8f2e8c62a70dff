"""Exercise 3: from a saliency map to SAM box prompts, checked against
:mod:`medclipsam.prompting`.

* ``saliency_to_mask(saliency (H, W) in [0, 1]) -> bool (H, W)``: 1-D k-means with two clusters
  (:func:`medclipsam.coarse.coarse_mask` with ``"kmeans"``);
* ``mask_to_boxes(mask (H, W) bool, n_components=1) -> (N, 4)``: one ``[x0, y0, x1, y1]`` box
  (x = column, inclusive corners) per 8-connected component, the ``n_components`` largest,
  sorted left to right (:func:`medclipsam.prompting.boxes_from_mask`, ``"per_component"``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu

from ..coarse import kmeans_threshold
from ..prompting import boxes_from_mask
from . import reference
from ._core import Case, CheckResult, fmt, indent, run_check, seeds

__all__ = ["check_boxes", "check_saliency_to_mask"]


# -- 3a: saliency -> coarse mask ------------------------------------------------------------------


def _blob_map(
    r: np.random.Generator,
    h: int,
    w: int,
    n_blobs: int,
    noise: float,
    lo: float = 0.0,
    hi: float = 1.0,
) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    m = np.zeros((h, w))
    for _ in range(n_blobs):
        cy, cx = r.uniform(0, h), r.uniform(0, w)
        sy, sx = r.uniform(1.0, max(1.5, h / 4)), r.uniform(1.0, max(1.5, w / 4))
        m += r.uniform(0.4, 1.0) * np.exp(
            -((yy - cy) ** 2 / (2 * sy**2) + (xx - cx) ** 2 / (2 * sx**2))
        )
    m += noise * r.random((h, w))
    m = (m - m.min()) / max(float(m.max() - m.min()), 1e-12)
    return lo + (hi - lo) * m


def _mask_cases(n_trials: int, seed: int) -> list[Case]:
    r = np.random.default_rng(seed)
    two = np.zeros((20, 30))
    yy, xx = np.mgrid[0:20, 0:30]
    two += np.exp(-((yy - 10) ** 2 + (xx - 7) ** 2) / 12) + 0.9 * np.exp(
        -((yy - 9) ** 2 + (xx - 22) ** 2) / 10
    )
    two /= two.max()
    cases = [
        Case(
            "an empty (all-zero) saliency map: no contrast, nothing to segment",
            (np.zeros((12, 16)),),
        ),
        Case("a constant map at 0.5", (np.full((10, 10), 0.5),)),
        Case("a map with two blobs", (two,)),
        Case(
            "a map with only the values 0.2 and 0.7", (np.where(r.random((9, 11)) < 0.3, 0.7, 0.2),)
        ),
        Case(
            "a map that does not span [0, 1] (values 0.1 to 0.6)",
            (_blob_map(r, 24, 18, 2, 0.1, 0.1, 0.6),),
        ),
    ]
    for s in seeds(seed, n_trials):
        rr = np.random.default_rng(s)
        h, w = int(rr.integers(8, 48)), int(rr.integers(8, 48))
        lo, hi = (
            (0.0, 1.0)
            if rr.random() < 0.6
            else (float(rr.uniform(0, 0.3)), float(rr.uniform(0.6, 1)))
        )
        cases.append(
            Case(
                f"random (seed {s}); {h} x {w} map, values {lo:.2f} to {hi:.2f}",
                (_blob_map(rr, h, w, int(rr.integers(1, 4)), float(rr.uniform(0, 0.3)), lo, hi),),
            )
        )
    return cases


def _as_mask(x: Any, shape: tuple[int, ...]) -> tuple[np.ndarray | None, str | None]:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    if not isinstance(x, np.ndarray):
        return None, f"returned a {type(x).__name__}; return a NumPy array of booleans"
    if x.shape != shape:
        return None, f"wrong shape: expected a mask of shape {shape} (H, W), got {x.shape}"
    if x.dtype != bool:
        if not np.isin(x, (0, 1)).all():
            return None, f"the mask must be boolean (True = foreground); got dtype {x.dtype}"
        x = x.astype(bool)
    return x, None


def _compare_mask(expected: np.ndarray, got: Any, case: Case) -> str | None:
    (sal,) = case.args
    m, problem = _as_mask(got, expected.shape)
    if problem:
        return problem
    diff = m != expected
    if not diff.any():
        return None
    t = kmeans_threshold(sal)
    if t is not None and np.all(np.abs(sal[diff] - t) < 1e-3):
        return None  # a threshold a hair away from the converged one: same clustering
    n = int(diff.sum())
    first = tuple(int(i) for i in np.argwhere(diff)[0])
    out = [
        f"{n} of {diff.size} pixel(s) differ (first at (row, col) = {first}: saliency "
        f"{sal[first]:.4f}, expected {bool(expected[first])}, got {bool(m[first])}); expected "
        f"{int(expected.sum())} foreground pixels, got {int(m.sum())}"
    ]
    if t is not None:
        out.append(f"the k-means threshold here is {t:.4f}")
    return "\n    ".join(out)


def _mask_mistakes(case: Case) -> list[tuple[str, np.ndarray]]:
    """Each named wrong coarse mask on this case's map, most specific first."""
    (sal,) = case.args
    t = kmeans_threshold(sal)  # None for a constant map (see _diagnose_mask)
    mid = 0.5 * (float(sal.min()) + float(sal.max()))
    try:
        otsu = sal > threshold_otsu(sal) if t is not None else None
    except ValueError:  # pragma: no cover
        otsu = None
    return [
        (
            "your mask is s > (min + max) / 2: k-means stopped after its first step. Iterate: "
            "assign each value to the nearer centre (s > threshold), move each centre to the "
            "mean of its values, threshold = midpoint of the centres, until nothing changes.",
            sal > mid if t is not None else None,
        ),
        (
            "your mask is s > 0.5, a fixed threshold; the threshold comes from 1-D k-means.",
            sal > 0.5 if t is not None else None,
        ),
        (
            "your mask is s > mean(s); the threshold comes from 1-D k-means (two clusters).",
            sal > sal.mean() if t is not None else None,
        ),
        (
            "foreground and background are swapped: the foreground is the HIGH-saliency cluster.",
            ~(sal > t) if t is not None else None,
        ),
        (
            "your mask is Otsu's threshold; the exercise asks for 1-D k-means (two clusters).",
            otsu,
        ),
    ]


def _mask_matches(output: Any, variant: np.ndarray, case: Case) -> bool | None:
    m, problem = _as_mask(output, variant.shape)
    if problem:
        return None
    return bool(np.array_equal(m, variant))


def _diagnose_mask(got: Any, case: Case, expected: np.ndarray) -> str | None:
    """The hint that is no wrong threshold: a constant map made all foreground."""
    (sal,) = case.args
    m, problem = _as_mask(got, sal.shape)
    if problem:
        return None
    if kmeans_threshold(sal) is None and m.all():
        return (
            "a constant map has no contrast: return an all-False mask (nothing is more "
            "salient than anything else)."
        )
    return None


def _mask_error_hint(error: BaseException, case: Case) -> str | None:
    (sal,) = case.args
    if float(sal.max() - sal.min()) == 0:
        return (
            "a constant map has a single cluster (one group is empty, its mean undefined): "
            "return an all-False mask when max == min."
        )
    return None


def check_saliency_to_mask(
    student_fn: Callable[[np.ndarray], np.ndarray],
    *,
    n_trials: int = 10,
    seed: int = 0,
    strict: bool = False,
    verbose: bool = True,
) -> CheckResult:
    """Compare ``student_fn(saliency) -> bool mask`` with 1-D k-means (two clusters, started
    from the minimum and the maximum): ``coarse_mask(saliency, "kmeans")``. A threshold within
    1e-3 of the converged one is accepted."""

    def run(fn: Callable, case: Case, args: tuple, kwargs: dict) -> Any:
        return fn(*args, **kwargs)

    return run_check(
        "check_saliency_to_mask",
        student_fn,
        _mask_cases(n_trials, seed),
        run=run,
        reference=reference.saliency_to_mask,
        compare=_compare_mask,
        mistakes=_mask_mistakes,
        matches=_mask_matches,
        diagnose=_diagnose_mask,
        error_hint=_mask_error_hint,
        strict=strict,
        verbose=verbose,
        success="random and edge cases: empty and constant maps, two blobs, maps not spanning "
        "[0, 1]",
    )


# -- 3b: mask -> boxes ----------------------------------------------------------------------------


def _sizes_desc(mask: np.ndarray) -> list[int]:
    lab, n = ndi.label(mask, structure=np.ones((3, 3), bool))
    return sorted(np.bincount(lab.ravel())[1:].tolist(), reverse=True) if n else []


def _random_mask(r: np.random.Generator, h: int, w: int, n_shapes: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(n_shapes):
        if r.random() < 0.5:
            y0, x0 = int(r.integers(0, h)), int(r.integers(0, w))
            y1, x1 = (
                min(h, y0 + int(r.integers(1, max(2, h // 3)))),
                min(w, x0 + int(r.integers(1, max(2, w // 3)))),
            )
            m[y0:y1, x0:x1] = True
        else:
            cy, cx = r.uniform(0, h), r.uniform(0, w)
            ry, rx = r.uniform(1, max(1.5, h / 5)), r.uniform(1, max(1.5, w / 5))
            m |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    return m


def _box_cases(n_trials: int, seed: int) -> list[Case]:
    def case(label: str, mask: np.ndarray, n: int | None) -> Case:
        return Case(
            f"{label}; mask {mask.shape[0]} x {mask.shape[1]} (H x W), n_components={n}",
            (mask,),
            {"n_components": n},
        )

    dot = np.zeros((8, 10), bool)
    dot[3, 5] = True
    two = np.zeros((12, 20), bool)
    two[2:9, 1:6] = True  # left blob, 7 x 5
    two[4:8, 12:19] = True  # right blob, 4 x 7
    corner = np.zeros((10, 10), bool)
    corner[1:4, 1:4] = True
    corner[4:8, 4:8] = True  # touches the first square at one corner only
    three = np.zeros((15, 24), bool)
    three[1:4, 18:23] = True
    three[6:14, 2:9] = True
    three[9:12, 12:14] = True
    edge = np.zeros((9, 13), bool)
    edge[0:5, 8:13] = True
    cases = [
        case("an empty mask (no component: no box)", np.zeros((6, 7), bool), 1),
        case("one pixel at row 3, column 5", dot, 1),
        case("two blobs, two boxes (left to right)", two, 2),
        case("two squares touching at a corner (one 8-connected component)", corner, 2),
        case("three components, the largest only", three, 1),
        case("three components, all of them", three, None),
        case("a component touching the image border", edge, 1),
        case("a full mask", np.ones((5, 8), bool), 1),
    ]
    for s in seeds(seed, n_trials):
        r = np.random.default_rng(s)
        for _ in range(50):
            h, w = int(r.integers(8, 40)), int(r.integers(8, 40))
            mask = _random_mask(r, h, w, int(r.integers(1, 6)))
            n = [1, 2, 3, None][int(r.integers(0, 4))]
            sizes = _sizes_desc(mask)
            if n is None or len(sizes) <= n or sizes[n - 1] != sizes[n]:
                break  # no tie at the cut: which component is kept is well defined
        cases.append(case(f"random (seed {s})", mask, n))
    return cases


def _as_boxes(x: Any) -> tuple[np.ndarray | None, str | None]:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        return None, f"returned a {type(x).__name__}; return an (N, 4) array of numbers"
    if a.ndim != 2 or a.shape[1] != 4:
        if a.size == 0:
            return None, (
                f"returned an empty array of shape {a.shape}; with no component return "
                "np.zeros((0, 4)) (no box, four columns)"
            )
        return None, f"wrong shape: expected an (N, 4) array of [x0, y0, x1, y1], got {a.shape}"
    return a, None


def _compare_boxes(expected: np.ndarray, got: Any, case: Case) -> str | None:
    b, problem = _as_boxes(got)
    if problem:
        return problem
    if b.shape != expected.shape:
        return (
            f"expected {len(expected)} box(es), got {len(b)}:\n    expected "
            f"{indent(fmt(expected, 1), 13)}\n    got      {indent(fmt(b, 1), 13)}"
        )
    if np.allclose(b, expected, atol=1e-6):
        return None
    return (
        f"boxes differ:\n    expected {indent(fmt(expected, 1), 13)}\n    got      "
        f"{indent(fmt(b, 1), 13)}"
    )


def _box_mistakes(case: Case) -> list[tuple[str, np.ndarray]]:
    """Each named wrong set of boxes on this case's mask, most specific first."""
    (mask,) = case.args
    n = case.kwargs["n_components"]
    ref = boxes_from_mask(mask, mode="per_component", n_components=n, connectivity=2)
    some = len(ref) > 0  # an empty mask has no box to get wrong (variants None there)
    wh = ref.copy()
    wh[:, 2:] = ref[:, 2:] - ref[:, :2] + 1
    return [
        (
            "x and y are swapped: a SAM box is [x0, y0, x1, y1] with x the COLUMN and y the "
            "ROW (np.nonzero / np.where give rows first).",
            ref[:, [1, 0, 3, 2]] if some else None,
        ),
        (
            "x1/y1 are one past the object (exclusive, like a Python slice); the package's "
            "corners are INCLUSIVE: x1 is the last column of the object (rows[-1], not "
            "rows[-1] + 1).",
            ref + np.array([0, 0, 1, 1]) if some else None,
        ),
        (
            "off by one at the start: x0/y0 are the first column/row of the object.",
            ref - np.array([1, 1, 0, 0]) if some else None,
        ),
        (
            "every corner is one too small: x0/y0 are the first column/row of the object and "
            "x1/y1 the last (no - 1 anywhere).",
            ref - np.array([1, 1, 1, 1]) if some else None,
        ),
        (
            "you returned [x, y, width, height]; SAM wants the two corners [x0, y0, x1, y1].",
            wh if some else None,
        ),
        (
            "the components are merged into one box; give each of the n_components largest "
            "components its own box (two lungs = two boxes).",
            boxes_from_mask(mask, mode="union", n_components=n),
        ),
        (
            "4-connectivity: pixels touching at a corner must count as one component. "
            "scipy.ndimage.label defaults to 4-neighbours; pass structure=np.ones((3, 3)).",
            boxes_from_mask(mask, mode="per_component", n_components=n, connectivity=1),
        ),
        (
            "you kept every component; keep only the n_components largest.",
            boxes_from_mask(mask, mode="per_component", n_components=None)
            if n is not None
            else None,
        ),
    ]


def _box_matches(output: Any, variant: np.ndarray, case: Case) -> bool | None:
    b, problem = _as_boxes(output)
    if problem:
        return None
    v = np.asarray(variant, dtype=np.float64).reshape(-1, 4)
    return b.shape == v.shape and bool(np.allclose(b, v, atol=1e-6))


def _diagnose_boxes(got: Any, case: Case, expected: np.ndarray) -> str | None:
    """The hints that are no single wrong formula: the order, and a box for an empty mask."""
    b, problem = _as_boxes(got)
    if problem:
        return None
    ref = expected
    if (
        len(ref)
        and b.shape == ref.shape
        and (sorted(map(tuple, b.round(6).tolist())) == sorted(map(tuple, ref.round(6).tolist())))
    ):
        return (
            "the right boxes in the wrong order: sort them left to right by x0 (then y0), "
            "not by size."
        )
    if len(ref) == 0 and len(b):
        return "an empty mask has no component: return np.zeros((0, 4)) (no box)."
    return None


def check_boxes(
    student_fn: Callable[..., np.ndarray],
    *,
    n_trials: int = 10,
    seed: int = 0,
    strict: bool = False,
    verbose: bool = True,
) -> CheckResult:
    """Compare ``student_fn(mask, n_components=...) -> (N, 4)`` with
    ``boxes_from_mask(mask, "per_component", n_components)``: ``[x0, y0, x1, y1]`` with x the
    column, inclusive corners, 8-connected components, the largest ``n_components``, sorted by
    ``(x0, y0)``; an empty mask gives ``(0, 4)``."""

    def run(fn: Callable, case: Case, args: tuple, kwargs: dict) -> Any:
        return fn(*args, **kwargs)

    return run_check(
        "check_boxes",
        student_fn,
        _box_cases(n_trials, seed),
        run=run,
        reference=reference.mask_to_boxes,
        compare=_compare_boxes,
        mistakes=_box_mistakes,
        matches=_box_matches,
        diagnose=_diagnose_boxes,
        strict=strict,
        verbose=verbose,
        success="random and edge cases: an empty mask, one pixel, two blobs, squares touching at a "
        "corner, non-square masks",
    )
