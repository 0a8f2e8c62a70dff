"""UDIAT "Dataset B" breast ultrasound (Yap et al., IEEE J Biomed Health Inform 2018).

163 images (109 benign, 54 malignant lesions) from the UDIAT Diagnostic Centre, Sabadell, with
lesion masks. The authors give it on request (a signed agreement), as an archive usually laid out
as::

    original/000001.png ... 000163.png     the images
    GT/000001.png ...                      the masks
    DatasetB.xlsx (or .csv)                lesion type per image (sometimes)

The ``original`` and ``GT`` folders are found case-insensitively anywhere in the archive. The
class (benign/malignant) comes from the spreadsheet when one is present, else it is ``unknown``.
Output stems are ``udiat_000001`` ...; the split (``splits/udiat.json``) is 70/10/20, seed 0.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..datasets import make_split, write_split
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
    find_files,
    finish,
    image_mask_loader,
    open_source,
    read_table,
    short_list,
    shown_source,
    take,
)

__all__ = [
    "EXPECTED_COUNTS",
    "build_udiat_split",
    "known_stems",
    "main",
    "prepare",
    "udiat_stem",
    "write_udiat_split",
]

NAME = "UDIAT"
EXPECTED_TOTAL = 163
#: Lesions per class, from the data set's description.
EXPECTED_COUNTS: dict[str, int] = {"benign": 109, "malignant": 54}
SPLIT_SEED = 0
SPLIT_RULE = (
    "UDIAT Dataset B: 70/10/20 train/val/test over the 163 stems udiat_000001..udiat_000163 with "
    "medclipsam.data.datasets.make_split(seed=0) (not stratified: the class list is not "
    "public); see medclipsam.data.sources.udiat.build_udiat_split"
)
HOW_TO_GET = (
    "UDIAT Dataset B is not downloadable: request it from the authors (Moi Hoon Yap, Manchester "
    "Metropolitan University; see Yap et al., IEEE JBHI 22(4) 2018, 'Automated breast ultrasound "
    "lesions detection using convolutional neural networks') and sign their licence agreement, "
    "then pass the archive (or the folder extracted from it) to this script."
)
META_COLUMNS = ("stem", "label", "source_file", "mask_file", "lesion_type")
SOURCE = Source("udiat", NAME, HOW_TO_GET, archive_name="UDIAT_DatasetB.zip")

_TABLE_PATTERN = r".+\.(xlsx|xls|csv|tsv)"
_CLASS_WORDS = {"benign", "malignant"}


def udiat_stem(number: int) -> str:
    """The output stem of ``000001.png``: ``udiat_000001``."""
    return f"udiat_{number:06d}"


def known_stems() -> list[str]:
    """The 163 stems of Dataset B (its images are numbered 000001 ... 000163)."""
    return [udiat_stem(i) for i in range(1, EXPECTED_TOTAL + 1)]


def build_udiat_split(seed: int = SPLIT_SEED) -> dict[str, list[str]]:
    """The committed UDIAT split (70/10/20, seed 0)."""
    return make_split(known_stems(), seed=seed)


def write_udiat_split(path: str | Path = SPLITS_DIR / "udiat.json") -> Path:
    """(Re)write the committed split file from :func:`build_udiat_split`."""
    return Path(
        write_split(Path(path), build_udiat_split(), name="udiat", seed=SPLIT_SEED, rule=SPLIT_RULE)
    )


def _number(text: str) -> int | None:
    """``000012``, ``12``, ``12.0``, ``000012.png`` -> 12; anything else -> None."""
    m = re.fullmatch(r"(?:img_?)?0*(\d+)(?:\.0+)?(?:\.(?:png|bmp|jpg|tif))?", text.strip(), re.I)
    return int(m.group(1)) if m else None


def read_class_table(path: Path, numbers: set[int]) -> dict[int, tuple[str, str]]:
    """Image number -> (class, lesion type) from the spreadsheet that comes with Dataset B.

    The columns are recognised by their content, not their header: the image column is the one
    whose cells name image numbers, the class column the one mostly holding benign/malignant; a
    column whose header mentions type/lesion/diagnosis (other than those) gives the lesion type.
    """
    rows = read_table(path)
    if len(rows) < 2:
        raise SourceFormatError(f"{path}: the table has no data rows")
    header = [h.lower() for h in rows[0]]
    data = rows[1:]
    width = max(len(r) for r in rows)
    cols = [[r[j] if j < len(r) else "" for r in data] for j in range(width)]
    id_hits = [sum(_number(c) in numbers for c in col) for col in cols]
    id_col = int(np.argmax(id_hits))
    if id_hits[id_col] < max(1, len(data) // 2):
        raise SourceFormatError(f"{path}: no column of this table names the images (000001 ...)")
    class_hits = [
        sum(c.strip().lower() in _CLASS_WORDS for c in col) if j != id_col else -1
        for j, col in enumerate(cols)
    ]
    class_col = int(np.argmax(class_hits)) if class_hits else -1
    if class_col < 0 or class_hits[class_col] < max(1, len(data) // 2):
        class_col = -1
    type_col = next(
        (
            j
            for j, h in enumerate(header)
            if j not in (id_col, class_col) and re.search(r"type|lesion|diagnos|histolog", h)
        ),
        -1,
    )
    out: dict[int, tuple[str, str]] = {}
    for i in range(len(data)):
        n = _number(cols[id_col][i])
        if n is None:
            continue
        label = cols[class_col][i].strip().lower() if class_col >= 0 else ""
        lesion = cols[type_col][i].strip() if type_col >= 0 else ""
        out[n] = (label if label in _CLASS_WORDS else "unknown", lesion)
    return out


def _find_pair_dirs(roots: Sequence[Path]) -> tuple[Path, Path]:
    originals = find_dirs(roots, "original")
    gts = find_dirs(roots, "GT")
    for o in originals:
        for g in gts:
            if o.parent == g.parent:
                return o, g
    if originals and gts:
        return originals[0], gts[0]
    found = "original/" if originals else "GT/" if gts else "neither"
    raise SourceFormatError(
        f"{shown_source(roots[0])}: this does not look like UDIAT Dataset B: expected folders original/ "
        f"(images) and GT/ (masks) side by side; found {found}"
    )


def _numbered(folder: Path) -> dict[int, Path]:
    """The numbered image files (``000001.png`` ...) directly in ``folder``, by number."""
    return {
        n: p
        for p in find_files(folder, r".+\.(png|bmp|jpg|tif|tiff)")
        if p.parent == folder and (n := _number(p.name)) is not None
    }


def _classes(roots: Sequence[Path], numbers: set[int], report: Report) -> dict[int, tuple[str, str]]:
    """Class and lesion type per image number from the first readable spreadsheet ({} without)."""
    tables = find_files(roots, _TABLE_PATTERN)
    for table in tables:
        try:
            classes = read_class_table(table, numbers)
        except SourceFormatError as e:
            report.anomaly(f"spreadsheet not used: {e}")
            continue
        report.info(f"classes from {table.name}")
        return classes
    if not tables:
        report.info("no spreadsheet found: class 'unknown' for every image")
    return {}


def _collect(roots: Sequence[Path], report: Report) -> tuple[list[Item], bool]:
    """One item per image with a mask; whether class labels were found."""
    orig_dir, gt_dir = _find_pair_dirs(roots)
    images, masks = _numbered(orig_dir), _numbered(gt_dir)
    if not images:
        raise SourceFormatError(f"{orig_dir}: no numbered images (000001.png ...) found")
    no_mask = sorted(set(images) - set(masks))
    if no_mask:
        report.anomaly(
            "skipped image(s) without a mask in GT/: " + short_list(images[n].name for n in no_mask)
        )
    no_image = sorted(set(masks) - set(images))
    if no_image:
        report.anomaly("mask(s) without an image: " + short_list(masks[n].name for n in no_image))
    classes = _classes(roots, set(images), report)
    items = []
    for n in sorted(set(images) & set(masks)):
        label, lesion = classes.get(n, ("unknown", ""))
        stem = udiat_stem(n)
        row: dict[str, Any] = {
            "stem": stem,
            "label": label,
            "source_file": f"{orig_dir.name}/{images[n].name}",
            "mask_file": f"{gt_dir.name}/{masks[n].name}",
            "lesion_type": lesion,
        }
        items.append(Item(stem, row, image_mask_loader(images[n], masks[n])))
    return items, bool(classes)


def _check_counts(rows: Sequence[dict[str, Any]], report: Report, complete: bool,
                  has_classes: bool) -> None:
    """Image and class counts against the published ones (complete runs), and the counts for DONE."""
    if complete:
        stems = {r["stem"] for r in rows}
        missing = [f"{i:06d}.png" for i in range(1, EXPECTED_TOTAL + 1) if udiat_stem(i) not in stems]
        report.expect("images", EXPECTED_TOTAL, len(rows), missing)
        if has_classes:
            for label, expected in EXPECTED_COUNTS.items():
                report.expect(f"{label} images", expected, sum(r["label"] == label for r in rows))
    for label in (*EXPECTED_COUNTS, "unknown"):
        report.counts[label] = sum(r["label"] == label for r in rows)
    report.counts["images"] = len(rows)


def prepare(
    source: str | Path,
    out_dir: str | Path,
    *,
    download: bool = False,
    sha256: str | None = None,
    limit: int | None = None,
    keep_extracted: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
) -> Path:
    """Convert UDIAT Dataset B (the authors' archive or its extracted folder) into ``out_dir``.

    There is no download (``download=True`` only explains where to get it). Classes come from
    the spreadsheet when present. Re-running resumes. Returns ``out_dir``.
    """
    src, out, report = begin(SOURCE, source, out_dir, download=download, sha256=sha256,
                             progress=progress, log=log)
    with conversion(out, keep_extracted) as work:
        items, has_classes = _collect(open_source(src, work), report)
        items, complete = take(items, limit)
        rows = convert_items(items, out, report, progress=progress, desc=NAME)
        _check_counts(rows, report, complete, has_classes)
        finish(SOURCE, out, rows, report, complete=complete, limit=limit, columns=META_COLUMNS,
               seed=SPLIT_SEED, rule=SPLIT_RULE)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python data_scripts/prepare_udiat.py DatasetB.zip data/udiat``."""
    return converter_main(
        SOURCE, prepare, argv,
        description="Convert UDIAT Dataset B (breast ultrasound, 163 images with lesion masks) "
        "into the medclipsam folder layout: OUT/images, OUT/masks (0/255), "
        "OUT/meta.csv (class from the spreadsheet if present, else 'unknown'), "
        "OUT/splits.json (70/10/20, seed 0), OUT/DONE.",
        source_help="the archive the authors sent, or the folder extracted "
        "from it (with original/ and GT/ somewhere inside)",
    )


if __name__ == "__main__":
    raise SystemExit(main())
