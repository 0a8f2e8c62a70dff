"""ROCO, Radiology Objects in COntext (Pelka et al., MICCAI LABELS workshop 2018).

Image-caption pairs from PubMed Central's open-access articles, used to fine-tune CLIP. The
repository https://github.com/razorx89/roco-dataset holds the captions and the links; its
scripts download the images from PMC into this layout::

    data/{train,validation,test}/{radiology,non-radiology}/captions.txt   ROCO_00002<TAB>caption
    data/{train,validation,test}/{radiology,non-radiology}/dlinks.txt     ROCO_00002<TAB>link<TAB>file
    data/{train,validation,test}/{radiology,non-radiology}/images/        the downloaded images

The output is a caption set, not a segmentation set::

    OUT/images/<ROCO id>.<ext>   copied (or linked) image
    OUT/captions.csv             image,caption,split,roco_id,subset (image relative to OUT)
    OUT/splits.json              ROCO ids per split (the official folders)
    OUT/DONE

Captions shorter than 20 characters are dropped (as in the MedPix/PMC-CLIP recipes) and
counted; captions whose image is missing (dead links are common) are reported.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..._utils import atomic_path, atomic_write_text
from ._common import (
    SPLITS_DIR,
    Report,
    Source,
    SourceFormatError,
    committed_split,
    conversion,
    converter_main,
    find_dirs,
    find_files,
    finish,
    progress_bar,
    short_list,
    take,
)

__all__ = [
    "MIN_CAPTION_CHARS",
    "SUBSETS",
    "build_roco_split_rule",
    "main",
    "prepare",
    "read_captions",
    "read_dlinks",
    "write_roco_split_rule",
]

NAME = "ROCO"
SUBSETS: tuple[str, ...] = ("radiology", "non-radiology")
#: Official folder -> our split name.
FOLDER_TO_SPLIT: dict[str, str] = {"train": "train", "validation": "val", "test": "test"}
#: Captions with fewer characters than this are dropped.
MIN_CAPTION_CHARS = 20
SPLIT_RULE = (
    "ROCO: the official split, i.e. the folders train -> train, validation -> val, test -> test "
    "(folder_to_split). The converter writes the per-image split to OUT/splits.json and to the "
    "split column of OUT/captions.csv."
)
HOW_TO_GET = (
    "ROCO: clone https://github.com/razorx89/roco-dataset and run its download script (it "
    "fetches the images from PubMed Central; each image keeps its article's licence, listed in "
    "licences.txt), then pass the repository (or its data/ folder) to this script. Cite Pelka "
    "et al., LABELS/CVII/STENT@MICCAI 2018."
)
CAPTION_COLUMNS = ("image", "caption", "split", "roco_id", "subset")
SOURCE = Source("roco", NAME, HOW_TO_GET)


def build_roco_split_rule() -> dict[str, Any]:
    """The committed rule file: the official folders are the split."""
    return {
        "name": "roco",
        "seed": None,
        "rule": SPLIT_RULE,
        "folder_to_split": dict(FOLDER_TO_SPLIT),
        "splits": {},
    }


def write_roco_split_rule(path: str | Path = SPLITS_DIR / "roco.json") -> Path:
    """(Re)write the committed rule file from :func:`build_roco_split_rule`."""
    return atomic_write_text(Path(path), json.dumps(build_roco_split_rule(), indent=2) + "\n")


def _tab_lines(path: Path) -> list[tuple[int, list[str]]]:
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return [(i, line.split("\t")) for i, line in enumerate(lines, 1) if line.strip()]


def read_captions(path: str | Path) -> tuple[dict[str, str], list[int]]:
    """``ROCO id -> caption`` from a ``captions.txt``, and the numbers of malformed lines."""
    captions: dict[str, str] = {}
    bad: list[int] = []
    for number, parts in _tab_lines(Path(path)):
        if len(parts) < 2 or not parts[0].strip().startswith("ROCO_"):
            bad.append(number)
            continue
        captions[parts[0].strip()] = " ".join("\t".join(parts[1:]).split())
    return captions, bad


def read_dlinks(path: str | Path) -> dict[str, str]:
    """``ROCO id -> image file name`` from a ``dlinks.txt`` (its last column)."""
    names: dict[str, str] = {}
    for _, parts in _tab_lines(Path(path)):
        if len(parts) >= 3 and parts[0].strip().startswith("ROCO_"):
            names[parts[0].strip()] = parts[-1].strip()
    return names


def _place(src: Path, dest: Path, link: str) -> None:
    """Copy (atomically), hard-link or symlink ``src`` to ``dest``."""
    if link == "copy":
        with atomic_path(dest) as tmp:
            shutil.copyfile(src, tmp)
        return
    tmp = dest.with_name(f".{dest.name}.part")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    if link == "hardlink":
        os.link(src, tmp)
    else:
        os.symlink(src.resolve(), tmp)
    os.replace(tmp, dest)


def _data_root(source: Path) -> dict[tuple[str, str], Path]:
    """(split folder, subset) -> the folder holding captions.txt."""
    found: dict[tuple[str, str], Path] = {}
    for folder in FOLDER_TO_SPLIT:
        for split_dir in find_dirs(source, folder):
            for subset in SUBSETS:
                sub = next(
                    (p for p in split_dir.iterdir() if p.is_dir() and p.name.lower() == subset),
                    None,
                )
                if sub is not None and (sub / "captions.txt").is_file():
                    found.setdefault((folder, subset), sub)
    return found


def _find_image(roco_id: str, image_dir: Path, files: dict[str, str],
                by_stem: dict[str, Path]) -> Path | None:
    """The downloaded image of ``roco_id``: by its dlinks.txt name, else by file stem."""
    image = image_dir / files[roco_id] if roco_id in files else None
    if image is None or not image.is_file():
        image = by_stem.get(roco_id) or by_stem.get(Path(files.get(roco_id, "")).stem)
    return image if image is not None and image.is_file() else None


def _add_folder(where: Path, name: str, sub: str, split: str, out_dir: Path, *, link: str,
                min_caption_chars: int, limit: int | None, progress: bool, report: Report,
                tally: dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
    """Place the images of one ``<split folder>/<subset>`` and return their captions.csv rows, and
    whether every caption was taken (``limit``); ``tally`` counts short captions, missing images,
    written and resumed files."""
    captions, bad = read_captions(where / "captions.txt")
    if bad:
        report.anomaly(
            f"{name}/{sub}/captions.txt: {len(bad)} malformed line(s) "
            f"ignored (lines {short_list(map(str, bad))})"
        )
    files = read_dlinks(where / "dlinks.txt") if (where / "dlinks.txt").is_file() else {}
    image_dir = where / "images"
    by_stem = {p.stem: p for p in find_files(image_dir, r".+")} if image_dir.is_dir() else {}
    ids, complete = take(sorted(captions), limit)
    rows = []
    for roco_id in progress_bar(ids, desc=f"{NAME} {name}/{sub}", enabled=progress):
        caption = captions[roco_id]
        if len(caption) < min_caption_chars:
            tally["short"] += 1
            continue
        image = _find_image(roco_id, image_dir, files, by_stem)
        if image is None:
            tally["missing_ids"].append(roco_id)
            continue
        dest = out_dir / "images" / f"{roco_id}{image.suffix.lower()}"
        if dest.exists():
            tally["resumed"] += 1
        else:
            _place(image, dest, link)
            tally["written"] += 1
        rows.append({"image": f"images/{dest.name}", "caption": caption, "split": split,
                     "roco_id": roco_id, "subset": sub})
    return rows, complete


def _check_source(src: Path, subset: str, link: str) -> None:
    if subset not in (*SUBSETS, "all"):
        raise ValueError(f"subset must be one of {', '.join(SUBSETS)} or all, got {subset!r}")
    if link not in ("copy", "hardlink", "symlink"):
        raise ValueError(f"link must be copy, hardlink or symlink, got {link!r}")
    if not src.exists():
        raise FileNotFoundError(f"{NAME}: {src} does not exist.\n{HOW_TO_GET}")
    if not src.is_dir():
        raise SourceFormatError(
            f"{src}: ROCO is a folder (the roco-dataset repository with "
            "downloaded images), not a file"
        )


def prepare(
    source: str | Path,
    out_dir: str | Path,
    *,
    subset: str = "radiology",
    link: str = "copy",
    min_caption_chars: int = MIN_CAPTION_CHARS,
    limit: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
) -> Path:
    """Build the ROCO caption set (``subset``: radiology, non-radiology or all) in ``out_dir``.

    ``source`` is the roco-dataset repository or its ``data/`` folder, with the images already
    downloaded by its scripts. ``link``: ``copy`` (default), ``hardlink`` or ``symlink``.
    ``limit`` keeps the first N captions of each split. Re-running resumes. Returns ``out_dir``.
    """
    src = Path(source).expanduser()
    _check_source(src, subset, link)
    out = Path(out_dir).expanduser()
    report = Report(NAME, log=log)
    wanted = SUBSETS if subset == "all" else (subset,)
    folders = _data_root(src)
    if not any(key[1] in wanted for key in folders):
        raise SourceFormatError(
            f"{src}: this does not look like ROCO: no {{train,validation,test}}/{subset}/"
            "captions.txt found (expected the roco-dataset repository or its data/ folder)"
        )
    with conversion(out, keep_extracted=False):
        rows: list[dict[str, Any]] = []
        tally: dict[str, Any] = {"short": 0, "written": 0, "resumed": 0, "missing_ids": []}
        complete = True
        for name, split in committed_split("roco")["folder_to_split"].items():
            for sub in wanted:
                where = folders.get((name, sub))
                if where is None:
                    report.anomaly(f"no {name}/{sub}/captions.txt found")
                    continue
                got, all_of_them = _add_folder(
                    where, name, sub, split, out, link=link, min_caption_chars=min_caption_chars,
                    limit=limit, progress=progress, report=report, tally=tally)
                rows += got
                complete = complete and all_of_them
        splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
        for r in rows:
            splits.setdefault(r["split"], []).append(r["roco_id"])
        _report(rows, splits, tally, min_caption_chars, src, report)
        finish(SOURCE, out, rows, report, complete=complete, limit=limit,
               columns=CAPTION_COLUMNS, rule=SPLIT_RULE, splits=splits, table="captions.csv")
    return out


def _report(rows: list[dict[str, Any]], splits: dict[str, list[str]], tally: dict[str, Any],
            min_caption_chars: int, src: Path, report: Report) -> None:
    """Tell what was dropped and missing; no pair at all is an error; the counts for DONE."""
    if tally["short"]:
        report.info(f"dropped {tally['short']} caption(s) shorter than {min_caption_chars} characters")
    missing = tally["missing_ids"]
    if missing:
        report.anomaly(f"{len(missing)} image(s) missing (not downloaded?): " + short_list(missing))
    if not rows:
        raise SourceFormatError(
            f"{src}: no ROCO image was found for any caption; run the "
            "roco-dataset download script first"
        )
    report.counts.update(
        pairs=len(rows),
        written=tally["written"],
        already_present=tally["resumed"],
        dropped_short_captions=tally["short"],
        missing_images=len(missing),
        **{s: len(v) for s, v in splits.items()},
    )


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--subset",
        choices=(*SUBSETS, "all"),
        default="radiology",
        help="which part to use (default: radiology)",
    )
    parser.add_argument(
        "--link",
        choices=("copy", "hardlink", "symlink"),
        default="copy",
        help="copy the images (default) or link them to save space",
    )
    parser.add_argument(
        "--min-caption-chars",
        type=int,
        default=MIN_CAPTION_CHARS,
        help=f"drop shorter captions (default {MIN_CAPTION_CHARS})",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python data_scripts/prepare_roco.py roco-dataset data/roco``."""
    return converter_main(
        SOURCE, prepare, argv,
        description="Build the ROCO image-caption set for CLIP fine-tuning: OUT/images/<ROCO id>"
        ".<ext>, OUT/captions.csv (image,caption,split,roco_id,subset), "
        "OUT/splits.json (official train/validation/test), OUT/DONE. Captions under "
        f"{MIN_CAPTION_CHARS} characters are dropped.",
        source_help="the roco-dataset repository (or its data/ folder) with the images downloaded",
        archive=False,
        limit_help="keep only the first N captions of each split (a quick try)",
        extend=_arguments,
        options=lambda a: {"subset": a.subset, "link": a.link,
                           "min_caption_chars": a.min_caption_chars},
    )


if __name__ == "__main__":
    raise SystemExit(main())
