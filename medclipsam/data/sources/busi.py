"""BUSI, the Breast Ultrasound Images data set (Al-Dhabyani et al., Data in Brief 2020).

780 PNG images of 600 women (437 benign, 210 malignant, 133 normal) with hand-drawn lesion masks,
published as ``Dataset_BUSI.zip``::

    Dataset_BUSI_with_GT/benign/benign (1).png          the image
    Dataset_BUSI_with_GT/benign/benign (1)_mask.png     its mask
    Dataset_BUSI_with_GT/benign/benign (1)_mask_1.png   a second lesion's mask (some images)

Images with several masks get their union (as in the paper). Normal images have empty masks.
Output stems are ``benign_001`` ... (class and number, zero-padded); the original file name is
kept in ``meta.csv``. The split (``splits/busi.json``) is stratified by class, seed 0.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..datasets import make_split, write_split
from ..io import load_array, read_mask
from ._common import (
    SPLITS_DIR,
    Item,
    Report,
    Source,
    SourceFormatError,
    begin,
    conversion,
    convert_items,
    converter_main,
    find_dirs,
    finish,
    open_source,
    short_list,
    shown_source,
    take,
)

__all__ = [
    "CLASSES",
    "EXPECTED_COUNTS",
    "URLS",
    "build_busi_split",
    "busi_stem",
    "known_stems",
    "main",
    "prepare",
    "write_busi_split",
]

NAME = "BUSI"
#: The three classes, in the order used for stems and splits.
CLASSES: tuple[str, ...] = ("benign", "malignant", "normal")
#: Images per class, from the data set's description.
EXPECTED_COUNTS: dict[str, int] = {"benign": 437, "malignant": 210, "normal": 133}
#: The original download (the authors' page links this zip directly).
URLS: tuple[str, ...] = ("https://scholar.cu.edu.eg/Dataset_BUSI.zip",)
SPLIT_SEED = 0
SPLIT_RULE = (
    "BUSI: stratified by class; within each class (benign, malignant, normal) 70/10/20 "
    "train/val/test with medclipsam.data.datasets.make_split(seed=0); see "
    "medclipsam.data.sources.busi.build_busi_split"
)
HOW_TO_GET = (
    "BUSI: download Dataset_BUSI.zip from the authors' page https://scholar.cu.edu.eg/?q=afahmy/"
    "pages/dataset (direct link: https://scholar.cu.edu.eg/Dataset_BUSI.zip), or pass "
    "--download to fetch it. Cite Al-Dhabyani et al., Data in Brief 28 (2020) 104863."
)
META_COLUMNS = ("stem", "label", "source_file", "original_name", "mask_files", "n_masks")
SOURCE = Source("busi", NAME, HOW_TO_GET, archive_name="Dataset_BUSI.zip", urls=URLS)

_FILE_RE = re.compile(r"(benign|malignant|normal)\s*\((\d+)\)(_mask(?:_(\d+))?)?\.png", re.I)


def busi_stem(label: str, number: int) -> str:
    """The output stem of ``<label> (<number>).png``: ``benign_001``."""
    return f"{label}_{number:03d}"


def known_stems() -> list[str]:
    """The 780 stems of the published data set, from its description (no data needed)."""
    return [busi_stem(c, i) for c in CLASSES for i in range(1, EXPECTED_COUNTS[c] + 1)]


def build_busi_split(seed: int = SPLIT_SEED) -> dict[str, list[str]]:
    """The committed BUSI split: 70/10/20 within each class, so every split has all classes."""
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for label in CLASSES:
        stems = [busi_stem(label, i) for i in range(1, EXPECTED_COUNTS[label] + 1)]
        for name, members in make_split(stems, seed=seed).items():
            splits.setdefault(name, []).extend(members)
    return splits


def write_busi_split(path: str | Path = SPLITS_DIR / "busi.json") -> Path:
    """(Re)write the committed split file from :func:`build_busi_split`."""
    return Path(
        write_split(Path(path), build_busi_split(), name="busi", seed=SPLIT_SEED, rule=SPLIT_RULE)
    )


def _find_class_dirs(roots: Sequence[Path]) -> dict[str, Path]:
    """The benign/malignant/normal folders: those sharing the parent that holds most of them."""
    by_parent: dict[Path, dict[str, Path]] = {}
    for label in CLASSES:
        for d in find_dirs(roots, label):
            by_parent.setdefault(d.parent, {})[label] = d
    if not by_parent:
        raise SourceFormatError(
            f"{shown_source(roots[0])}: this does not look like BUSI: no folder named benign/, malignant/ or "
            "normal/ (expected Dataset_BUSI_with_GT/{benign,malignant,normal}/ from "
            "Dataset_BUSI.zip)"
        )
    best = max(by_parent, key=lambda p: (len(by_parent[p]), -len(p.parts)))
    return by_parent[best]


def _union_masks(paths: Sequence[Path]) -> np.ndarray:
    masks = [read_mask(p) for p in paths]
    for p, m in zip(paths[1:], masks[1:]):
        if m.shape != masks[0].shape:
            raise ValueError(
                f"{p.name} is {m.shape[1]}x{m.shape[0]}, {paths[0].name} is "
                f"{masks[0].shape[1]}x{masks[0].shape[0]}"
            )
    return np.logical_or.reduce(masks)


def _loader(image: Path, masks: Sequence[Path]) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
    def load() -> tuple[np.ndarray, np.ndarray]:
        return load_array(image), _union_masks(masks)

    return load


def _collect(class_dirs: dict[str, Path], report: Report) -> list[Item]:
    items: list[Item] = []
    for label in CLASSES:
        folder = class_dirs.get(label)
        if folder is None:
            report.anomaly(f"no {label}/ folder found")
            continue
        images: dict[int, Path] = {}
        masks: dict[int, list[Path]] = {}
        unexpected: list[str] = []
        for f in sorted(folder.iterdir()):
            if not f.is_file() or f.name.startswith("."):
                continue
            m = _FILE_RE.fullmatch(f.name)
            if m is None or m.group(1).lower() != label:
                unexpected.append(f.name)
                continue
            number = int(m.group(2))
            if m.group(3):
                masks.setdefault(number, []).append(f)
            else:
                images[number] = f
        if unexpected:
            report.anomaly(
                f"{label}/: ignored {len(unexpected)} unexpected file(s): " + short_list(unexpected)
            )
        orphans = sorted(set(masks) - set(images))
        if orphans:
            report.anomaly(
                f"{label}/: mask(s) without an image: "
                + short_list(f"{label} ({n})" for n in orphans)
            )
        for number in sorted(images):
            image = images[number]
            mask_files = sorted(masks.get(number, []), key=lambda p: (len(p.name), p.name))
            if not mask_files:
                report.anomaly(f"{label}/{image.name}: skipped, no mask file")
                continue
            stem = busi_stem(label, number)
            row: dict[str, Any] = {
                "stem": stem,
                "label": label,
                "source_file": f"{label}/{image.name}",
                "original_name": image.stem,
                "mask_files": ";".join(p.name for p in mask_files),
                "n_masks": len(mask_files),
            }
            items.append(Item(stem, row, _loader(image, mask_files)))
    return items


def _check_counts(rows: Sequence[dict[str, Any]], report: Report, complete: bool) -> None:
    """Per-class counts against the published ones (complete runs), and the counts for DONE."""
    if complete:
        for label in CLASSES:
            have = {r["stem"] for r in rows if r["label"] == label}
            want = [busi_stem(label, i) for i in range(1, EXPECTED_COUNTS[label] + 1)]
            missing = [
                f"{label} ({s.rsplit('_', 1)[1].lstrip('0')})" for s in want if s not in have
            ]
            report.expect(f"{label} images", EXPECTED_COUNTS[label], len(have), missing)
    for label in CLASSES:
        report.counts[label] = sum(r["label"] == label for r in rows)
    report.counts["images"] = len(rows)
    report.counts["multi_mask_images"] = sum(int(r["n_masks"]) > 1 for r in rows)


def prepare(
    source: str | Path | None,
    out_dir: str | Path,
    *,
    download: bool = False,
    urls: Sequence[str] = URLS,
    sha256: str | None = None,
    limit: int | None = None,
    keep_extracted: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
) -> Path:
    """Convert BUSI (``Dataset_BUSI.zip`` or its extracted folder) into ``out_dir``.

    ``download=True`` fetches the zip from ``urls`` to ``source`` when it is missing. ``limit``
    converts only the first N images (DONE then says ``complete: false``). Re-running resumes:
    images already written are kept. Returns ``out_dir``. Raises :class:`SourceFormatError`
    when the source is not BUSI, ``UnsafeArchiveError`` for an archive with escaping paths.
    """
    src, out, report = begin(SOURCE, source, out_dir, download=download, urls=urls,
                             sha256=sha256, progress=progress, log=log)
    with conversion(out, keep_extracted) as work:
        items = _collect(_find_class_dirs(open_source(src, work)), report)
        if not items:
            raise SourceFormatError(f"{src}: BUSI folders found but no image/mask pairs in them")
        items, complete = take(items, limit)
        rows = convert_items(items, out, report, progress=progress, desc=NAME)
        _check_counts(rows, report, complete)
        finish(SOURCE, out, rows, report, complete=complete, limit=limit, columns=META_COLUMNS,
               seed=SPLIT_SEED, rule=SPLIT_RULE)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python data_scripts/prepare_busi.py Dataset_BUSI.zip data/busi``."""
    return converter_main(
        SOURCE, prepare, argv,
        description="Convert BUSI (breast ultrasound, 780 images with lesion masks) into the "
        "medclipsam folder layout: OUT/images, OUT/masks (0/255; several masks of "
        "one image are united), OUT/meta.csv (class, original name), "
        "OUT/splits.json (stratified 70/10/20, seed 0), OUT/DONE.",
        source_help="Dataset_BUSI.zip or the folder extracted from it "
        "(with --download: where to save the zip)",
    )


if __name__ == "__main__":
    raise SystemExit(main())
