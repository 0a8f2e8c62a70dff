"""COVID-QU-Ex chest X-rays with lung masks (Tahir et al., Comput Biol Med 2021; Kaggle).

33,920 chest X-rays (256x256 PNG) of three classes, each with a lung mask, in the official split::

    Lung Segmentation Data/{Train,Val,Test}/{COVID-19,Non-COVID,Normal}/images/*.png
    Lung Segmentation Data/{Train,Val,Test}/{COVID-19,Non-COVID,Normal}/lung masks/*.png

Kaggle's zip nests this one level deeper (``Lung Segmentation Data/Lung Segmentation Data/``)
and also holds ``Infection Segmentation Data`` (a subset with infection masks), which is not used
here. The split is the official one (the folders: ``splits/covidqu.json``). Stems are prefixed
by the class (``covid19_``, ``noncovid_``, ``normal_``) so that they stay unique.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..._utils import atomic_write_text
from ._common import (
    SPLITS_DIR,
    Item,
    Report,
    Source,
    SourceFormatError,
    begin,
    committed_split,
    conversion,
    convert_items,
    converter_main,
    find_dirs,
    find_files,
    finish,
    image_mask_loader,
    open_source,
    short_list,
    shown_source,
    slugify,
    splits_from_assignment,
    take,
)

__all__ = [
    "CLASSES",
    "EXPECTED_COUNTS",
    "build_covidqu_split_rule",
    "covidqu_stem",
    "main",
    "prepare",
    "write_covidqu_split_rule",
]

NAME = "COVID-QU-Ex"
#: Class folder name -> stem prefix.
CLASSES: dict[str, str] = {"COVID-19": "covid19", "Non-COVID": "noncovid", "Normal": "normal"}
#: Official folder -> our split name.
FOLDER_TO_SPLIT: dict[str, str] = {"Train": "train", "Val": "val", "Test": "test"}
#: Images per (split folder, class), from the data set's description (33,920 in all).
EXPECTED_COUNTS: dict[tuple[str, str], int] = {
    ("Train", "COVID-19"): 7658,
    ("Train", "Non-COVID"): 7208,
    ("Train", "Normal"): 6849,
    ("Val", "COVID-19"): 1903,
    ("Val", "Non-COVID"): 1802,
    ("Val", "Normal"): 1712,
    ("Test", "COVID-19"): 2395,
    ("Test", "Non-COVID"): 2253,
    ("Test", "Normal"): 2140,
}
SPLIT_RULE = (
    "COVID-QU-Ex (Lung Segmentation Data): the official split, i.e. the folders Train -> train, "
    "Val -> val, Test -> test (folder_to_split). The converter writes the per-stem split to "
    "OUT/splits.json."
)
HOW_TO_GET = (
    "COVID-QU-Ex is on Kaggle (an account is needed, so there is no --download): "
    "https://www.kaggle.com/datasets/anasmohammedtahir/covidqu, e.g. `kaggle datasets download "
    "-d anasmohammedtahir/covidqu`; check the licence on that page. Pass the zip (or the folder "
    "extracted from it). Cite Tahir et al., Comput Biol Med 139 (2021) 105002."
)
META_COLUMNS = ("stem", "label", "source_file", "official_split")
SOURCE = Source("covidqu", NAME, HOW_TO_GET, archive_name="covidqu.zip", nested=True)


def covidqu_stem(label: str, name: str) -> str:
    """The output stem of ``<label>/images/<name>``: class prefix plus a file-system safe name."""
    return f"{CLASSES[label]}_{slugify(Path(name).stem)}"


def build_covidqu_split_rule() -> dict[str, Any]:
    """The committed rule file: the official folders are the split."""
    return {
        "name": "covidqu",
        "seed": None,
        "rule": SPLIT_RULE,
        "folder_to_split": dict(FOLDER_TO_SPLIT),
        "splits": {},
    }


def write_covidqu_split_rule(path: str | Path = SPLITS_DIR / "covidqu.json") -> Path:
    """(Re)write the committed rule file from :func:`build_covidqu_split_rule`."""
    return atomic_write_text(Path(path), json.dumps(build_covidqu_split_rule(), indent=2) + "\n")


def _split_root(roots: Sequence[Path]) -> Path:
    """The folder holding Train/, Val/ and Test/ of the lung segmentation part."""
    candidates = []
    for train in find_dirs(roots, "Train"):
        siblings = {p.name.lower() for p in train.parent.iterdir() if p.is_dir()}
        if {"val", "test"} <= siblings:
            candidates.append(train.parent)
    if not candidates:
        raise SourceFormatError(
            f"{shown_source(roots[0])}: this does not look like COVID-QU-Ex: no folder with Train/, Val/ and "
            "Test/ (expected Lung Segmentation Data/{Train,Val,Test}/{COVID-19,Non-COVID,Normal}/"
            "{images,lung masks}/)"
        )
    lung = [c for c in candidates if any("lung segmentation" in p.lower() for p in c.parts)]
    infection = [c for c in candidates if any("infection" in p.lower() for p in c.parts)]
    if lung:
        return lung[0]
    rest = [c for c in candidates if c not in infection]
    if rest:
        return rest[0]
    raise SourceFormatError(
        f"{roots[0]}: only 'Infection Segmentation Data' was found; this converter uses "
        "'Lung Segmentation Data' (pass the whole COVID-QU-Ex archive)"
    )


def _child(folder: Path, name: str) -> Path | None:
    """The sub-folder of ``folder`` called ``name``, case-insensitively."""
    if not folder.is_dir():
        return None
    for p in folder.iterdir():
        if p.is_dir() and p.name.lower() == name.lower():
            return p
    return None


def _pair_folders(base: Path, folder: str, label: str, report: Report) -> tuple[Path, Path] | None:
    """``<folder>/<label>/images`` and ``.../lung masks`` (case-insensitive), or None (reported)."""
    split_dir = _child(base, folder)
    class_dir = _child(split_dir, label) if split_dir else None
    img_dir = _child(class_dir, "images") if class_dir else None
    mask_dir = _child(class_dir, "lung masks") if class_dir else None
    if img_dir is None or mask_dir is None:
        report.anomaly(f"{folder}/{label}/: images/ or lung masks/ folder missing")
        return None
    return img_dir, mask_dir


def _collect(base: Path, folder_to_split: dict[str, str], limit: int | None,
             report: Report) -> tuple[list[Item], bool, dict[tuple[str, str], int]]:
    """One item per image with a lung mask, the first ``limit`` of each split folder and class;
    whether that is all of them; images found per (folder, class)."""
    items: list[Item] = []
    complete = True
    seen: dict[str, str] = {}
    found: dict[tuple[str, str], int] = {}
    renamed = 0
    for folder, split in folder_to_split.items():
        for label in CLASSES:
            dirs = _pair_folders(base, folder, label, report)
            if dirs is None:
                continue
            images = {p.name: p for p in find_files(dirs[0], r".+\.(png|jpg|jpeg)")}
            masks = {p.name: p for p in find_files(dirs[1], r".+\.(png|jpg|jpeg)")}
            found[(folder, label)] = len(images)
            no_mask = sorted(set(images) - set(masks))
            if no_mask:
                report.anomaly(
                    f"{folder}/{label}: skipped {len(no_mask)} image(s) without a "
                    "lung mask: " + short_list(no_mask)
                )
            names, all_of_them = take(sorted(set(images) & set(masks)), limit)
            complete = complete and all_of_them
            for name in names:
                stem = covidqu_stem(label, name)
                where = f"{folder}/{label}/images/{name}"
                if stem in seen:  # same name in two split folders: qualify it
                    stem = f"{CLASSES[label]}_{split}_{slugify(Path(name).stem)}"
                    renamed += 1
                if stem in seen:
                    report.anomaly(f"{where}: skipped, same stem {stem} as {seen[stem]}")
                    continue
                seen[stem] = where
                row = {"stem": stem, "label": label, "source_file": where, "official_split": split}
                items.append(Item(stem, row, image_mask_loader(images[name], masks[name])))
    if renamed:
        report.info(
            f"{renamed} file name(s) occur in more than one split folder; their "
            "stems include the split (e.g. covid19_test_...)"
        )
    return items, complete, found


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
    """Convert COVID-QU-Ex's lung segmentation data (Kaggle zip or folder) into ``out_dir``.

    There is no download (Kaggle needs an account). ``limit`` converts the first N images of
    each split folder and class. Re-running resumes. Returns ``out_dir``.
    """
    src, out, report = begin(SOURCE, source, out_dir, download=download, sha256=sha256,
                             progress=progress, log=log)
    rule = committed_split("covidqu")
    folder_to_split = {k.lower(): v for k, v in rule["folder_to_split"].items()}
    with conversion(out, keep_extracted) as work:
        base = _split_root(open_source(src, work, nested=SOURCE.nested))
        extra = sorted(
            p.name for p in base.iterdir() if p.is_dir() and p.name.lower() not in folder_to_split
        )
        if extra:
            report.anomaly(
                f"{base.name}/: folder(s) not in the split rule, ignored: " + short_list(extra)
            )
        items, complete, found = _collect(base, rule["folder_to_split"], limit, report)
        if not items:
            raise SourceFormatError(f"{base}: no image/lung-mask pairs found")
        if complete:
            for key, expected in EXPECTED_COUNTS.items():
                if key in found:
                    report.expect(f"images in {key[0]}/{key[1]}", expected, found[key])
        rows = convert_items(items, out, report, progress=progress, desc=NAME)
        report.counts["images"] = len(rows)
        for label in CLASSES:
            report.counts[label] = sum(r["label"] == label for r in rows)
        official = {r["stem"]: r["official_split"] for r in rows}
        finish(SOURCE, out, rows, report, complete=complete, limit=limit, columns=META_COLUMNS,
               rule=SPLIT_RULE, splits=splits_from_assignment(official, [r["stem"] for r in rows]))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python data_scripts/prepare_covidqu.py archive.zip data/covidqu``."""
    return converter_main(
        SOURCE, prepare, argv,
        description="Convert COVID-QU-Ex's lung segmentation data (33,920 chest X-rays with lung "
        "masks) into the medclipsam folder layout: OUT/images, OUT/masks (0/255), "
        "OUT/meta.csv (class, official split), OUT/splits.json (the official "
        "Train/Val/Test folders), OUT/DONE.",
        source_help="the Kaggle zip, or the folder extracted from it",
    )


if __name__ == "__main__":
    raise SystemExit(main())
