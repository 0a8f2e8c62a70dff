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

import argparse
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
    SourceFormatError,
    add_common_arguments,
    check_against_split,
    check_archive_hash,
    committed_split,
    conversion,
    convert_items,
    find_dirs,
    find_files,
    finish_output,
    image_mask_loader,
    obtain_source,
    open_source,
    read_table,
    run_main,
    short_list,
    splits_from_assignment,
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
        f"{roots[0]}: this does not look like UDIAT Dataset B: expected folders original/ "
        f"(images) and GT/ (masks) side by side; found {found}"
    )


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

    out = Path(out_dir).expanduser()
    report = Report(NAME, log=log)
    src = obtain_source(
        source,
        dataset=NAME,
        default_name="UDIAT_DatasetB.zip",
        urls=None,
        download=download,
        how_to_get=HOW_TO_GET,
        progress=progress,
    )
    check_archive_hash(src, sha256, None, report)
    with conversion(out, keep_extracted) as work:
        roots = open_source(src, work)
        orig_dir, gt_dir = _find_pair_dirs(roots)
        images = {
            n: p
            for p in find_files(orig_dir, r".+\.(png|bmp|jpg|tif|tiff)")
            if p.parent == orig_dir and (n := _number(p.name)) is not None
        }
        masks = {
            n: p
            for p in find_files(gt_dir, r".+\.(png|bmp|jpg|tif|tiff)")
            if p.parent == gt_dir and (n := _number(p.name)) is not None
        }
        if not images:
            raise SourceFormatError(f"{orig_dir}: no numbered images (000001.png ...) found")
        no_mask = sorted(set(images) - set(masks))
        if no_mask:
            report.anomaly(
                "skipped image(s) without a mask in GT/: "
                + short_list(images[n].name for n in no_mask)
            )
        no_image = sorted(set(masks) - set(images))
        if no_image:
            report.anomaly(
                "mask(s) without an image: " + short_list(masks[n].name for n in no_image)
            )

        classes: dict[int, tuple[str, str]] = {}
        tables = find_files(roots, _TABLE_PATTERN)
        for table in tables:
            try:
                classes = read_class_table(table, set(images))
            except SourceFormatError as e:
                report.anomaly(f"spreadsheet not used: {e}")
                continue
            report.info(f"classes from {table.name}")
            break
        if not tables:
            report.info("no spreadsheet found: class 'unknown' for every image")

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
        complete = limit is None or limit >= len(items)
        if limit is not None:
            items = items[:limit]
        rows = convert_items(items, out, report, progress=progress, desc=NAME)
        stems = [r["stem"] for r in rows]
        if complete:
            missing = [
                f"{i:06d}.png"
                for i in range(1, EXPECTED_TOTAL + 1)
                if udiat_stem(i) not in set(stems)
            ]
            report.expect("images", EXPECTED_TOTAL, len(rows), missing)
            if classes:
                for label, expected in EXPECTED_COUNTS.items():
                    report.expect(
                        f"{label} images", expected, sum(r["label"] == label for r in rows)
                    )
        for label in (*EXPECTED_COUNTS, "unknown"):
            report.counts[label] = sum(r["label"] == label for r in rows)
        report.counts["images"] = len(rows)
        assignment = check_against_split(
            stems, committed_split("udiat")["splits"], report, complete=complete
        )
        finish_output(
            out,
            name="udiat",
            splits=splits_from_assignment(assignment, stems),
            seed=SPLIT_SEED,
            rule=SPLIT_RULE,
            rows=rows,
            columns=META_COLUMNS,
            report=report,
            complete=complete,
            limit=limit,
        )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python data_scripts/prepare_udiat.py DatasetB.zip data/udiat``."""
    parser = argparse.ArgumentParser(
        prog="prepare_udiat",
        description="Convert UDIAT Dataset B (breast ultrasound, 163 images with lesion masks) "
        "into the medclipsam folder layout: OUT/images, OUT/masks (0/255), "
        "OUT/meta.csv (class from the spreadsheet if present, else 'unknown'), "
        "OUT/splits.json (70/10/20, seed 0), OUT/DONE. " + HOW_TO_GET,
    )
    add_common_arguments(
        parser,
        can_download=False,
        source_help="the archive the authors sent, or the folder extracted "
        "from it (with original/ and GT/ somewhere inside)",
    )
    args = parser.parse_args(argv)
    return run_main(
        lambda: prepare(
            args.source,
            args.out,
            sha256=args.sha256,
            limit=args.limit,
            keep_extracted=args.keep_extracted,
            progress=not args.quiet,
            log=None if args.quiet else print,
        ),
        strict=args.strict,
        name="prepare_udiat",
    )


if __name__ == "__main__":
    raise SystemExit(main())
