"""Phantom samples on demand: :func:`generate_sample`, the :class:`PhantomDataset` and
:class:`PhantomPairs` views, folders on disk (:func:`write_phantom_folder`), and the pointing-game
baseline (:func:`intensity_rule_point`, :func:`pointing_hit`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from ..._utils import atomic_path, atomic_write_text
from ...vocab import TASKS
from .brain import brain_words, draw_brain
from .breast import breast_words, draw_breast
from .world import (
    CLASSES,
    GENERATOR_VERSION,
    TASK_CODE,
    Grid,
    PhantomSample,
    component_boxes,
    make_rng,
    mask_bbox,
    mask_centroid,
    write_captions,
)
from .xray import draw_xray, xray_words

_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}


# ============================================================================================
# public generator

__all__ = [
    "PhantomDataset",
    "PhantomPairs",
    "caption_words",
    "generate_sample",
    "intensity_rule_point",
    "pointing_hit",
    "pointing_verdict",
    "write_phantom_folder",
]

#: Per task: how an image is drawn, and the words its captions are written from.
_MAKERS = {"breast": (draw_breast, breast_words), "brain": (draw_brain, brain_words),
           "xray": (draw_xray, xray_words)}


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown phantom task {task!r}; choose one of {', '.join(TASKS)}")


def _check_size(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        h = w = int(size)
    else:
        try:
            h, w = (int(v) for v in size)
        except (TypeError, ValueError):
            raise ValueError(f"size must be an int or (height, width), got {size!r}") from None
    if h < 32 or w < 32 or h > 4096 or w > 4096:
        raise ValueError(f"size must be between 32 and 4096 pixels per side, got {(h, w)}")
    return h, w


def generate_sample(
    task: str, seed: int, size: int | tuple[int, int] = 256, label: str | None = None
) -> PhantomSample:
    """Generate one phantom sample; a pure function of ``(task, seed, size, label)``.

    ``label=None`` draws the class uniformly from ``CLASSES[task]`` (from the seed).
    ``size`` is an int (square) or ``(height, width)``.
    """
    _check_task(task)
    h, w = _check_size(size)
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    seed = int(seed)
    if label is None:
        label = CLASSES[task][int(make_rng(TASK_CODE[task], seed, 3).integers(len(CLASSES[task])))]
    elif label not in CLASSES[task]:
        raise ValueError(
            f"unknown label {label!r} for task {task!r}; choose one of {', '.join(CLASSES[task])}"
        )
    g = Grid(h, w)
    make, words = _MAKERS[task]
    rng = make_rng(TASK_CODE[task], seed, CLASSES[task].index(label), 1)
    info = make(g, rng, label)
    info["label"] = label
    loc, finds, locs = words(info, g)
    caps, ids = write_captions(task, seed, finds, locs, make_rng(TASK_CODE[task], seed, 11))
    mask = np.ascontiguousarray(info.pop("mask"), dtype=bool)
    image = np.ascontiguousarray(info.pop("image"), dtype=np.uint8)
    info.pop("label")
    meta = {
        "seed": seed,
        "size": (h, w),
        "centroid": mask_centroid(mask),
        "bbox": mask_bbox(mask),
        "boxes": component_boxes(mask),
        "location": loc,
        "side_convention": "image" if task == "breast" else "radiological",
        "caption_templates": ids,
        "generator_version": GENERATOR_VERSION,
        **info,
    }
    return PhantomSample(image=image, mask=mask, task=task, label=label, captions=caps, meta=meta)


def caption_words(sample: PhantomSample) -> tuple[list[str], list[str]]:
    """The finding and location phrases the caption writer drew ``sample``'s captions from."""
    words = _MAKERS[sample.task][1]
    _, finds, locs = words({**sample.meta, "mask": sample.mask, "label": sample.label}, None)
    return list(finds), list(locs)


# ============================================================================================
# pointing-game helpers (what a naive intensity rule would pick)


def _auto_fov(image: np.ndarray) -> np.ndarray:
    thr = max(1.0, 0.06 * float(np.percentile(image, 99)))
    fov = image >= thr
    fov = ndi.binary_closing(fov, iterations=2)
    return ndi.binary_fill_holes(fov)


def intensity_rule_point(
    image: np.ndarray,
    rule: str = "darkest",
    smooth_sigma: float | None = None,
    fov: np.ndarray | None = None,
) -> tuple[int, int]:
    """(row, col) of the darkest or brightest smoothed spot inside the field of view.

    The baseline a segmentation prompt must beat: if this rule found the lesion, a method could
    look good without reading the text. ``smooth_sigma`` defaults to 1 % of ``min(H, W)``;
    smoothing is normalised inside ``fov`` (default: the non-background region, holes filled),
    so the black surround never pulls border pixels down.
    """
    if rule not in ("darkest", "brightest"):
        raise ValueError(f"rule must be 'darkest' or 'brightest', got {rule!r}")
    img = np.asarray(image)
    if img.ndim == 3:
        img = img.mean(axis=2)
    if img.ndim != 2:
        raise ValueError(f"image must be (H, W) or (H, W, C), got shape {np.shape(image)}")
    img = img.astype(np.float32)
    if fov is None:
        fov = _auto_fov(img)
    fov = np.asarray(fov, dtype=bool)
    if fov.shape != img.shape:
        raise ValueError(f"fov shape {fov.shape} does not match image shape {img.shape}")
    if not fov.any():
        fov = np.ones_like(fov)
    sigma = 0.01 * min(img.shape) if smooth_sigma is None else float(smooth_sigma)
    f = fov.astype(np.float32)
    num = ndi.gaussian_filter(img * f, sigma)
    den = ndi.gaussian_filter(f, sigma)
    sm = num / np.maximum(den, 1e-6)
    sm = np.where(fov, sm, np.inf if rule == "darkest" else -np.inf)
    idx = int(np.argmin(sm) if rule == "darkest" else np.argmax(sm))
    r, c = divmod(idx, img.shape[1])
    return int(r), int(c)


def pointing_hit(point: tuple[int, int], mask: np.ndarray, tolerance_px: float = 0.0) -> bool:
    """True when ``point`` (row, col) is inside ``mask`` or within ``tolerance_px`` of it."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return False
    r, c = int(round(point[0])), int(round(point[1]))
    if 0 <= r < mask.shape[0] and 0 <= c < mask.shape[1] and mask[r, c]:
        return True
    rows, cols = np.nonzero(mask)
    return bool(np.min((rows - r) ** 2 + (cols - c) ** 2) <= tolerance_px**2)


def pointing_verdict(point: tuple[int, int], mask: np.ndarray) -> str:
    """``"hit"`` or ``"miss"`` for ``point`` (row, col) against ``mask`` (:func:`pointing_hit`),
    or ``"no finding"`` when the mask is empty (a normal image has nothing to hit or miss)."""
    if not np.asarray(mask, dtype=bool).any():
        return "no finding"
    return "hit" if pointing_hit(point, mask) else "miss"


# ============================================================================================
# data set and folder writer


def _split_code(split: str) -> int:
    if split in _SPLIT_CODE:
        return _SPLIT_CODE[split]
    return 3 + zlib.crc32(split.encode("utf-8")) % 253


_GOLD = (math.sqrt(5) - 1) / 2
_SQRT2 = math.sqrt(2) - 1


class PhantomDataset(Sequence):
    """``n`` phantom samples of one task, reproducible and torch-free.

    Sample ``i`` depends only on ``(task, seed, split, i)`` (and ``size``): its seed is
    ``seed * 2**40 + split_code * 2**32 + i``, so different splits never share seeds. Labels
    follow two low-discrepancy sequences: about ``normal_fraction`` normals at every length,
    the rest spread evenly over the finding classes.
    """

    def __init__(
        self,
        task: str,
        n: int,
        seed: int = 0,
        size: int | tuple[int, int] = 256,
        split: str = "train",
        normal_fraction: float = 0.15,
    ) -> None:
        _check_task(task)
        if int(n) < 0 or int(n) >= 2**32:
            raise ValueError(f"n must be between 0 and 2**32 - 1, got {n}")
        if int(seed) < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        if not 0.0 <= float(normal_fraction) <= 1.0:
            raise ValueError(f"normal_fraction must be in [0, 1], got {normal_fraction}")
        if not isinstance(split, str) or not split:
            raise ValueError(f"split must be a non-empty string, got {split!r}")
        self.task, self.n, self.seed = task, int(n), int(seed)
        self.size = _check_size(size)
        self.split = split
        self.normal_fraction = float(normal_fraction)
        self._offset = make_rng(TASK_CODE[task], self.seed, _split_code(split), 5).random(2)

    def seed_of(self, i: int) -> int:
        """The generator seed of sample ``i``."""
        return self.seed * 2**40 + _split_code(self.split) * 2**32 + int(i)

    def label_of(self, i: int) -> str:
        """The class of sample ``i`` (cheap: no image is generated)."""
        findings = [c for c in CLASSES[self.task] if c != "normal"]
        u = (i * _GOLD + self._offset[0]) % 1.0
        if u < self.normal_fraction or not findings:
            return "normal"
        v = (i * _SQRT2 + self._offset[1]) % 1.0
        return findings[min(len(findings) - 1, int(v * len(findings)))]

    @property
    def labels(self) -> list[str]:
        """The class of every sample (cheap: no image is generated)."""
        return [self.label_of(i) for i in range(self.n)]

    def __len__(self) -> int:
        return self.n

    def _index(self, i: int) -> int:
        if not isinstance(i, (int, np.integer)):
            raise TypeError(f"index must be an int or a slice, got {type(i).__name__}")
        j = int(i) + self.n if i < 0 else int(i)
        if not 0 <= j < self.n:
            raise IndexError(f"index {i} out of range for a PhantomDataset of length {self.n}")
        return j

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.n))]
        j = self._index(i)
        return generate_sample(self.task, self.seed_of(j), self.size, self.label_of(j))

    def __iter__(self) -> Iterator[PhantomSample]:
        for j in range(self.n):
            yield self[j]

    def __repr__(self) -> str:
        return (f"PhantomDataset(task={self.task!r}, n={self.n}, seed={self.seed}, "
                f"size={self.size}, split={self.split!r})")


class PhantomPairs:
    """Image-caption pairs of phantom images from several tasks, for contrastive fine-tuning and
    retrieval (what :func:`medclipsam.finetune.finetune` and the retrieval protocol take).

    Images come from :class:`PhantomDataset` (``n_per_task`` per task, same ``seed``/``split``
    rules) and are generated once, at construction. ``captions="one"`` pairs each image with one
    of its captions, drawn reproducibly from ``seed``; ``"all"`` gives one pair per caption (the
    image repeated). ``transform`` (e.g. a :class:`~medclipsam.models.ClipBundle`'s ``preprocess``) is applied once per image
    and its output stored, so training epochs do not re-run it. Items are ``(image, caption)``;
    ``.captions``, ``.tasks`` and ``.labels`` list them per pair (``.captions`` doubles as the
    groups of identical captions in retrieval).
    """

    def __init__(
        self,
        tasks: Sequence[str] = TASKS,
        n_per_task: int = 100,
        *,
        seed: int = 0,
        split: str = "train",
        size: int | tuple[int, int] = 224,
        captions: str = "one",
        transform: Callable[[Any], Any] | None = None,
    ) -> None:
        if captions not in ("one", "all"):
            raise ValueError(f"captions must be 'one' or 'all', got {captions!r}")
        if isinstance(tasks, str):
            tasks = (tasks,)
        rng = np.random.default_rng([int(seed), _split_code(split), 17])
        self.images: list[Any] = []
        self.captions: list[str] = []
        self.tasks: list[str] = []
        self.labels: list[str] = []
        self.image_index: list[int] = []
        for task in tasks:
            ds = PhantomDataset(task, n_per_task, seed=seed, size=size, split=split)
            for s in ds:
                image = s.rgb if transform is None else transform(s.rgb)
                caps = s.captions if captions == "all" else [s.captions[int(rng.integers(len(s.captions)))]]
                self.images.append(image)
                for c in caps:
                    self.image_index.append(len(self.images) - 1)
                    self.captions.append(c)
                    self.tasks.append(task)
                    self.labels.append(s.label)

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i: int) -> tuple[Any, str]:
        return self.images[self.image_index[i]], self.captions[i]


def _png_ok(path: Path, size_wh: tuple[int, int]) -> bool:
    try:
        with Image.open(path) as im:
            if im.size != size_wh or im.mode != "L":
                return False
            im.verify()
        return True
    except (OSError, ValueError, SyntaxError):
        return False


def _write_png(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(array, mode="L").save(tmp, format="PNG")


def _write_if_changed(path: Path, text: str) -> None:
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    atomic_write_text(path, text)


def _split_counts(n: int, splits: dict[str, float]) -> dict[str, int]:
    raw = {k: n * f for k, f in splits.items()}
    counts = {k: int(math.floor(v)) for k, v in raw.items()}
    rest = n - sum(counts.values())
    for k in sorted(splits, key=lambda k: (-(raw[k] - counts[k]), list(splits).index(k)))[:rest]:
        counts[k] += 1
    return counts


def write_phantom_folder(
    out_dir: str | os.PathLike,
    task: str,
    n: int,
    seed: int = 0,
    size: int | tuple[int, int] = 256,
    splits: dict[str, float] | None = None,
    normal_fraction: float = 0.15,
) -> Path:
    """Write ``n`` phantom samples as a folder data set; resumable and atomic.

    Layout: ``images/<stem>.png`` (grey), ``masks/<stem>.png`` (0/255), ``captions.csv``
    (``image,caption,split``, one row per caption, paths relative to ``out_dir``), ``meta.csv``
    (``stem,task,label,split``), ``splits.json`` (``{"name", "seed", "rule", "splits"}``) and
    ``phantom.json`` (the parameters). Existing complete PNGs are kept untouched, so an
    interrupted call resumes; a folder written with other parameters is refused.
    Stems are ``<task>_<split>_<index:05d>``; split ``k`` holds ``PhantomDataset(task, n_k, seed,
    size, k)``.
    """
    _check_task(task)
    out_dir = Path(out_dir)
    hw = _check_size(size)
    splits = dict(splits) if splits is not None else {"train": 0.7, "val": 0.1, "test": 0.2}
    if not splits or any(not isinstance(k, str) or not k for k in splits):
        raise ValueError(f"splits must map non-empty split names to fractions, got {splits!r}")
    if any(f < 0 for f in splits.values()) or abs(sum(splits.values()) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must be non-negative and sum to 1, got {splits}")
    if int(n) < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    config = {
        "generator": "medclipsam.data.phantom",
        "generator_version": GENERATOR_VERSION,
        "task": task,
        "n": int(n),
        "seed": int(seed),
        "size": list(hw),
        "splits": splits,
        "normal_fraction": float(normal_fraction),
    }
    cfg_path = out_dir / "phantom.json"
    if cfg_path.is_file():
        try:
            old = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{cfg_path}: not valid JSON ({exc}); delete the folder or the file") \
                from exc
        if old != config:
            raise ValueError(
                f"{cfg_path}: this folder was written with other parameters ({old}); "
                f"refusing to mix it with {config}. Use another out_dir or delete it."
            )
    counts = _split_counts(int(n), splits)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_if_changed(cfg_path, json.dumps(config, indent=1) + "\n")
    cap_rows: list[tuple[str, str, str]] = []
    meta_rows: list[tuple[str, str, str, str]] = []
    split_stems: dict[str, list[str]] = {}
    size_wh = (hw[1], hw[0])
    for split_name, count in counts.items():
        ds = PhantomDataset(task, count, seed, hw, split_name, normal_fraction)
        split_stems[split_name] = []
        for i in range(count):
            stem = f"{task}_{split_name}_{i:05d}"
            sample = ds[i]
            img_path, mask_path = out_dir / "images" / f"{stem}.png", out_dir / "masks" / f"{stem}.png"
            if not _png_ok(img_path, size_wh):
                _write_png(img_path, sample.image)
            if not _png_ok(mask_path, size_wh):
                _write_png(mask_path, sample.mask.astype(np.uint8) * 255)
            split_stems[split_name].append(stem)
            meta_rows.append((stem, task, sample.label, split_name))
            for cap in sample.captions:
                cap_rows.append((f"images/{stem}.png", cap, split_name))

    def to_csv(header: Sequence[str], rows: list) -> str:
        buf = io.StringIO()
        wr = csv.writer(buf, lineterminator="\n")
        wr.writerow(header)
        wr.writerows(rows)
        return buf.getvalue()

    _write_if_changed(out_dir / "captions.csv", to_csv(("image", "caption", "split"), cap_rows))
    _write_if_changed(out_dir / "meta.csv", to_csv(("stem", "task", "label", "split"), meta_rows))
    doc = {
        "name": f"phantom-{task}",
        "seed": int(seed),
        "rule": (f"phantom world {task}, generator v{GENERATOR_VERSION}: split k holds "
                 f"PhantomDataset(task, n_k, seed, size, k); counts {counts}"),
        "splits": {k: sorted(v) for k, v in split_stems.items()},
    }
    _write_if_changed(out_dir / "splits.json", json.dumps(doc, indent=1) + "\n")
    return out_dir
