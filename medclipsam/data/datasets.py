"""Folder data sets (images paired with masks by file stem), image-caption CSVs, and splits.

Pairing is always by file stem (``case_01.png`` <-> ``case_01_mask.png``), never by listing
order, so a folder copied by a tool that reorders files still pairs correctly. Splits are small
JSON files; the package ships the ones used by the paper's benchmarks in
``medclipsam/data/splits/<name>.json``.

Bad input:

* a broken (dangling) symbolic link in an image or mask folder is listed in the pairing
  report (``broken_links``) and, with ``strict=True``, refused by name; it is never silently
  left out;
* file names are compared after Unicode normalisation (NFC), so ``café.png`` written by macOS
  (decomposed, NFD) pairs with ``café_mask.png`` written elsewhere (composed, NFC); on a
  case-insensitive file system (macOS, Windows) ``Case1.png`` pairs with ``case1.png`` too;
* caption CSVs must be UTF-8 (a file in another encoding is refused naming the line and byte);
  RFC 4180 quoting is accepted, a caption quoted over several lines included (its line breaks
  become spaces); a row with more or fewer fields than the header (an unquoted comma in a
  caption) is refused naming its line; a quoted field that runs to the end of the file or
  swallows what look like rows (an unclosed quote) is refused naming the lines it spans; an
  empty caption is refused naming its line, unless ``min_caption_chars`` > 0 asks to drop short
  captions (they are counted in ``.dropped``); a listed image that does not exist is named with
  its line. Every problem of a file is reported at once, each with its line.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import unicodedata
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medclipsam._utils import atomic_write_text
from medclipsam.data.io import (
    SUPPORTED_SUFFIXES,
    SizeMismatchError,
    file_stem,
    image_suffix,
    is_dicom_file,
    read_image,
    read_mask,
)

__all__ = [
    "CaptionDataset",
    "broken_links",
    "case_insensitive",
    "FolderDataset",
    "PairingError",
    "SplitError",
    "known_splits",
    "list_image_files",
    "load_split",
    "make_split",
    "nfc",
    "pair_by_stem",
    "write_split",
]

PathLike = str | os.PathLike

_SPLITS_DIR = Path(__file__).resolve().parent / "splits"
_SHOWN = 10  # how many names an error message lists before "... and N more"


class PairingError(ValueError):
    """Images and masks do not pair up one to one; ``report`` holds the details."""

    def __init__(self, message: str, report: dict | None = None) -> None:
        super().__init__(message)
        self.report = report or {}


class SplitError(ValueError):
    """A split file or split request is inconsistent (overlaps, unknown names, missing stems)."""


def _names(items: Iterable[str]) -> str:
    items = list(items)
    shown = ", ".join(items[:_SHOWN])
    return shown + (f", ... and {len(items) - _SHOWN} more" if len(items) > _SHOWN else "")


# --------------------------------------------------------------------------------------------
# pairing


def list_image_files(folder: PathLike) -> tuple[dict[str, list[Path]], list[str]]:
    """Image files of ``folder`` (not recursive) grouped by stem, plus the names it ignored.

    Hidden files (``.DS_Store``, temporaries of atomic writes) are ignored; files that are not
    images (``notes.txt``) and subfolders (not searched) are returned as ignored names; files without a known suffix count when they are DICOM. Stems
    are Unicode-normalised (NFC, see :func:`nfc`), so names written by macOS (NFD) group and
    pair with the same names written elsewhere.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: folder not found")
    by_stem: dict[str, list[Path]] = {}
    ignored: list[str] = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():  # not searched: named, so that its images are not dropped in silence
            ignored.append(entry.name)
            continue
        if not entry.is_file():
            continue
        if image_suffix(entry) or is_dicom_file(entry):
            by_stem.setdefault(nfc(file_stem(entry)), []).append(entry)
        else:
            ignored.append(entry.name)
    return by_stem, ignored


def nfc(name: str) -> str:
    """``name`` in Unicode normal form C: macOS writes file names decomposed (NFD, ``e`` plus a
    combining accent), most other systems composed (NFC); both look the same on screen."""
    return unicodedata.normalize("NFC", name)


def case_insensitive(folder: PathLike) -> bool:
    """Whether ``folder``'s file system ignores the case of names (macOS and Windows by default):
    some file's name with its case swapped opens the same file. False for an empty folder or one
    whose names have no letters."""
    folder = Path(folder)
    try:
        entries = list(folder.iterdir())
    except OSError:
        return False
    for entry in entries:
        swapped = entry.name.swapcase()
        if swapped != entry.name:
            other = folder / swapped
            try:
                return other.exists() and os.path.samefile(entry, other)
            except OSError:
                return False
    return False


def broken_links(folder: PathLike) -> list[Path]:
    """Symbolic links in ``folder`` (not recursive, hidden names skipped) whose target does not
    exist: :func:`list_image_files` cannot tell what they were, so callers report them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return [
        e for e in sorted(folder.iterdir())
        if not e.name.startswith(".") and e.is_symlink() and not e.exists()
    ]


def _link_names(links: list[Path]) -> list[str]:
    out = []
    for link in links:
        try:
            out.append(f"{link.name} -> {os.readlink(link)}")
        except OSError:
            out.append(link.name)
    return out


def _scan(images_dir: Path, masks_dir: Path | None, mask_suffixes: tuple[str, ...]) -> dict:
    """Pair every image stem with its mask; collect everything that does not fit."""
    images, ignored = list_image_files(images_dir)
    masks, ignored_masks = ({}, []) if masks_dir is None else list_image_files(masks_dir)
    duplicates: dict[str, list[Path]] = {s: p for s, p in images.items() if len(p) > 1}
    found: dict[str, Path | None] = {}
    missing: list[str] = []
    claimed: dict[str, list[str]] = {}  # mask stem -> image stems claiming it
    fold = masks_dir is not None and (case_insensitive(images_dir) or case_insensitive(masks_dir))
    lookup = {(m.casefold() if fold else m): m for m in masks}
    for stem in sorted(images):
        wanted = [stem + sfx for sfx in mask_suffixes]
        hits = [lookup[w] for w in ((w.casefold() if fold else w) for w in wanted) if w in lookup]
        for m in hits:
            claimed.setdefault(m, []).append(stem)
        if masks_dir is None:
            found[stem] = None
        elif not hits:
            missing.append(stem)
        elif len(hits) > 1 or len(masks[hits[0]]) > 1:
            duplicates[stem] = [p for m in hits for p in masks[m]]
        else:
            found[stem] = masks[hits[0]][0]
    for m, stems in claimed.items():
        if len(stems) > 1:  # e.g. images "a" and "a_mask" both claim mask "a_mask"
            for s in stems:
                duplicates[s] = duplicates.get(s, []) + masks[m]
    for s in duplicates:
        found.pop(s, None)
    extra = sorted(m for m in masks if m not in claimed)
    return {
        "images": images,
        "found": found,
        "missing_masks": missing,
        "extra_masks": extra,
        "duplicates": {s: sorted(set(p), key=str) for s, p in sorted(duplicates.items())},
        "ignored": ignored + [f"masks/{n}" for n in ignored_masks],
        "broken_links": _link_names(broken_links(images_dir))
        + ([f"masks/{n}" for n in _link_names(broken_links(masks_dir))] if masks_dir else []),
    }


def _report(scan: dict) -> dict:
    return {
        "n_images": sum(len(p) for p in scan["images"].values()),
        "n_pairs": sum(1 for m in scan["found"].values() if m is not None),
        "missing_masks": list(scan["missing_masks"]),
        "extra_masks": list(scan["extra_masks"]),
        "duplicates": list(scan["duplicates"]),
        "ignored": list(scan["ignored"]),
        "broken_links": list(scan["broken_links"]),
    }


def _pairing_message(images_dir: Path, masks_dir: Path | None, scan: dict) -> str | None:
    parts = []
    if scan["missing_masks"]:
        parts.append(
            f"{len(scan['missing_masks'])} image(s) without a mask: {_names(scan['missing_masks'])}"
        )
    if scan["extra_masks"]:
        parts.append(
            f"{len(scan['extra_masks'])} mask(s) without an image: {_names(scan['extra_masks'])}"
        )
    if scan["duplicates"]:
        shown = [
            f"{s} ({', '.join(p.name for p in paths)})"
            for s, paths in list(scan["duplicates"].items())[:_SHOWN]
        ]
        more = len(scan["duplicates"]) - len(shown)
        parts.append(
            "several files share one stem: "
            + "; ".join(shown)
            + (f"; ... {more} more" if more else "")
        )
    if scan["broken_links"]:
        parts.append(
            f"{len(scan['broken_links'])} broken symbolic link(s) (their targets do not exist): "
            f"{_names(scan['broken_links'])}"
        )
    if not parts:
        return None
    where = f"{images_dir}" + (f" and {masks_dir}" if masks_dir is not None else "")
    return f"images and masks do not pair up by file stem in {where}: " + "; ".join(parts)


def pair_by_stem(
    images_dir: PathLike,
    masks_dir: PathLike,
    *,
    mask_suffixes: tuple[str, ...] = ("", "_mask"),
    strict: bool = True,
) -> tuple[list[tuple[Path, Path]], dict]:
    """Pair ``images_dir/<stem>.<ext>`` with ``masks_dir/<stem><suffix>.<ext>``.

    Image and mask may have different formats (``a.jpg`` with ``a_mask.png``); ``.nii.gz``
    counts as one suffix. Returns the pairs sorted by stem and a report
    ``{"missing_masks", "extra_masks", "duplicates", "ignored", "broken_links", "n_images",
    "n_pairs"}`` (stems, or file names for ``ignored`` and ``broken_links``). Several files with one stem (``a.png`` and ``a.jpg``),
    or one image matching several masks, are duplicates. With ``strict=True`` any missing mask,
    extra mask, duplicate or broken link raises :class:`PairingError` naming them, as does an empty folder;
    otherwise only the clean pairs are returned.
    """
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    if not masks_dir.is_dir():
        raise FileNotFoundError(f"{masks_dir}: mask folder not found")
    scan = _scan(images_dir, masks_dir, tuple(mask_suffixes))
    report = _report(scan)
    if strict:
        if not scan["images"]:
            raise PairingError(
                f"{images_dir}: no image files found (supported: {', '.join(SUPPORTED_SUFFIXES)})",
                report,
            )
        message = _pairing_message(images_dir, masks_dir, scan)
        if message:
            raise PairingError(message, report)
    pairs = [(scan["images"][s][0], m) for s, m in sorted(scan["found"].items()) if m is not None]
    return pairs, report


# --------------------------------------------------------------------------------------------
# folder data set


class FolderDataset:
    """Images in ``root/images``, masks (optional) in ``root/masks``, paired by stem.

    Without a ``masks`` folder the data set is image-only (for inference): ``mask`` is None.
    ``split`` picks the stems listed under that name in ``splits_file`` (default
    ``root/splits.json`` if present; a packaged split name works too, see :func:`load_split`).
    With ``strict=True`` missing/extra/duplicate masks raise :class:`PairingError`; with
    ``strict=False`` images without a mask get ``mask=None`` and duplicates are left out
    (see ``.report``).

    Items are dicts ``{"image": uint8 array, "mask": bool array | None, "stem": str,
    "image_path": Path, "mask_path": Path | None}``; ``transform``, if given, is called on that
    dict and its result returned.
    """

    def __init__(
        self,
        root: PathLike,
        *,
        split: str | None = None,
        splits_file: PathLike | None = None,
        strict: bool = True,
        mode: str = "rgb",
        transform: Callable[[dict], Any] | None = None,
        mask_suffixes: tuple[str, ...] = ("", "_mask"),
    ) -> None:
        self.root = Path(root)
        images_dir = self.root / "images"
        if not images_dir.is_dir():
            raise FileNotFoundError(
                f"{self.root}: expected an 'images' folder inside (and optionally 'masks')"
            )
        masks_dir = self.root / "masks"
        self.has_masks = masks_dir.is_dir()
        self.mode = mode
        self.transform = transform
        scan = _scan(images_dir, masks_dir if self.has_masks else None, tuple(mask_suffixes))
        self.report = _report(scan)
        if not scan["images"]:
            raise PairingError(
                f"{images_dir}: no image files found (supported: {', '.join(SUPPORTED_SUFFIXES)})",
                self.report,
            )
        message = _pairing_message(images_dir, masks_dir if self.has_masks else None, scan)
        if strict and message:
            raise PairingError(message, self.report)
        _warn_left_out(self.root, scan, strict)

        usable = sorted(s for s in scan["images"] if s not in scan["duplicates"])
        stems = usable
        self.split = split
        if split is not None:
            if splits_file is None:
                default = self.root / "splits.json"
                if not default.is_file():
                    raise SplitError(
                        f"{self.root}: split {split!r} requested but there is no splits.json "
                        "here; pass splits_file="
                    )
                splits_file = default
            splits = load_split(splits_file)
            if split not in splits:
                raise SplitError(
                    f"{splits_file}: no split named {split!r}; it has {_names(sorted(splits))}"
                )
            wanted = [nfc(w) for w in splits[split]]
            absent = sorted(set(wanted) - set(scan["images"]))
            if absent:
                raise SplitError(
                    f"{splits_file}: split {split!r} lists {len(absent)} stem(s) with no image in "
                    f"{images_dir}: {_names(absent)}"
                )
            dup = sorted(set(wanted) & set(scan["duplicates"]))
            if dup:
                raise PairingError(
                    f"{images_dir}: split {split!r} uses stems with several files: {_names(dup)}",
                    self.report,
                )
            stems = sorted(set(wanted))
        self._items = [
            (s, scan["images"][s][0], scan["found"].get(s) if self.has_masks else None)
            for s in stems
        ]

    @property
    def stems(self) -> list[str]:
        """The stems of this data set, sorted."""
        return [s for s, _, _ in self._items]

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> Any:
        stem, image_path, mask_path = self._items[index]
        image = read_image(image_path, mode=self.mode)  # type: ignore[arg-type]
        mask = None
        if mask_path is not None:
            mask = read_mask(mask_path)
            if mask.shape != image.shape[:2]:
                raise SizeMismatchError(mask_path, mask.shape, image_path, image.shape)
        sample = {
            "image": image,
            "mask": mask,
            "stem": stem,
            "image_path": image_path,
            "mask_path": mask_path,
        }
        return self.transform(sample) if self.transform is not None else sample

    def __repr__(self) -> str:
        split = f", split={self.split!r}" if self.split else ""
        return f"FolderDataset({str(self.root)!r}{split}, n={len(self)})"


def _warn_left_out(root: Path, scan: dict, strict: bool) -> None:
    """One warning naming the files a data set leaves out (unsupported formats; with
    ``strict=False`` also stems with several files and broken links), so that none is dropped in
    silence (they are in ``.report`` as well)."""
    parts = []
    if scan["ignored"]:
        parts.append(f"not an image format ({', '.join(SUPPORTED_SUFFIXES)}): "
                     f"{_names(scan['ignored'])}")
    if not strict and scan["duplicates"]:
        files = [p.name for paths in scan["duplicates"].values() for p in paths]
        parts.append(f"several files share a stem: {_names(files)}")
    if not strict and scan["broken_links"]:
        parts.append(f"broken symbolic links: {_names(scan['broken_links'])}")
    if parts:
        warnings.warn(f"{root}: files left out of the data set ({'; '.join(parts)}); see .report",
                      UserWarning, stacklevel=3)


# --------------------------------------------------------------------------------------------
# image-caption CSV


class CaptionDataset:
    """Image-caption pairs from a CSV with a header row: ``image,caption[,split]``.

    ``image`` is relative to ``image_root`` (default: the CSV's folder) unless absolute. Rows
    whose stripped caption is shorter than ``min_caption_chars`` are dropped and counted in
    ``.dropped`` (the MedPix recipe uses 20); with the default 0 an empty caption is an error
    naming its line. The file must be UTF-8 and every row must have the header's number of
    fields; a caption may span lines inside a closed quote (RFC 4180), an unclosed quote is an
    error. All problems are reported in one ``ValueError``, each with its line. Missing image
    files alone raise ``FileNotFoundError`` at construction, naming them and their lines. Items are ``(image, caption)`` with ``image`` a uint8 RGB
    array, or ``transform(PIL.Image)`` and ``tokenizer([caption])[0]`` when those are given.
    """

    REQUIRED = ("image", "caption")

    def __init__(
        self,
        csv_path: PathLike,
        *,
        image_root: PathLike | None = None,
        split: str | None = None,
        transform: Callable[[Any], Any] | None = None,
        tokenizer: Callable[[list[str]], Any] | None = None,
        min_caption_chars: int = 0,
    ) -> None:
        self.csv_path = Path(csv_path)
        if not self.csv_path.is_file():
            raise FileNotFoundError(f"{self.csv_path}: caption CSV not found")
        self.image_root = Path(image_root) if image_root is not None else self.csv_path.parent
        self.transform = transform
        self.tokenizer = tokenizer
        self.split = split

        columns, records, problems = _parse_caption_csv(self.csv_path)
        if split is not None and "split" not in columns:
            raise ValueError(
                f"{self.csv_path}: split={split!r} requested but the CSV has no 'split' column"
            )
        i_img, i_cap = columns.index("image"), columns.index("caption")
        i_split = columns.index("split") if "split" in columns else None
        rows: list[tuple[Path, str]] = []
        lines: list[int] = []
        empty: list[int] = []
        self.dropped = 0
        for start, row in records:
            if i_split is not None and split is not None and row[i_split].strip() != split:
                continue
            name, caption = row[i_img].strip(), _one_line_caption(row[i_cap])
            if not name:
                problems.append((start, "empty 'image' field"))
                continue
            if not caption and min_caption_chars <= 0:
                empty.append(start)
                continue
            if len(caption) < min_caption_chars:
                self.dropped += 1
                continue
            path = Path(name)
            rows.append((path if path.is_absolute() else self.image_root / path, caption))
            lines.append(start)
        if empty:
            shown = ", ".join(str(n) for n in empty[:_SHOWN])
            more = f" and {len(empty) - _SHOWN} more" if len(empty) > _SHOWN else ""
            problems.append((empty[0], f"empty caption on line(s) {shown}{more}; fill them in or "
                             "remove those rows (min_caption_chars=1 drops them instead)"))
        missing = [(n, p) for n, (p, _) in zip(lines, rows) if not p.is_file()]
        if problems:
            # every problem at once, in file order, so one round of fixes is enough
            problems += [(n, f"image file {p} not found") for n, p in missing]
            raise ValueError(_caption_problems(self.csv_path, problems))
        if missing:
            listed = [f"line {n}: {p}" for n, p in missing]
            raise FileNotFoundError(
                f"{self.csv_path}: {len(missing)} image file(s) listed but not found "
                f"(relative to {self.image_root}): {_names(listed)}"
            )
        self._rows = rows

    @staticmethod
    def has_split_column(csv_path: PathLike) -> bool:
        """Whether the CSV's header names a ``split`` column. The file is read as the data set
        reads it (UTF-8 or an error naming the line; a header naming 'image' and 'caption')."""
        return "split" in _parse_caption_csv(Path(csv_path))[0]

    @property
    def image_paths(self) -> list[Path]:
        return [p for p, _ in self._rows]

    @property
    def captions(self) -> list[str]:
        return [c for _, c in self._rows]

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        path, caption = self._rows[index]
        image: Any = read_image(path, mode="rgb")
        if self.transform is not None:
            image = self.transform(Image.fromarray(image))
        text: Any = caption
        if self.tokenizer is not None:
            text = self.tokenizer([caption])[0]
        return image, text

    def __repr__(self) -> str:
        return f"CaptionDataset({str(self.csv_path)!r}, n={len(self)}, dropped={self.dropped})"


# A line that starts like a caption row ("name.png,..."): inside a quoted field it means that an
# unclosed quote swallowed the rows after it, not that a caption runs over several lines.
_ROW_START = re.compile(
    r"^\s*[^,\"\r\n]+\.(png|jpe?g|bmp|tiff?|dcm|nii|nii\.gz)\s*,", re.IGNORECASE | re.MULTILINE
)


def _parse_caption_csv(path: Path) -> tuple[list[str], list[tuple[int, list[str]]], list[tuple[int, str]]]:
    """Read a caption CSV: its lower-cased header, its records as ``(first line, fields)`` and
    the problems found, as ``(line, text)``. RFC 4180 quoting is accepted, a caption quoted over
    several lines included; an unclosed quote (one that runs to the end of the file, or swallows
    lines that look like rows) is a problem naming the lines it spans. Raises ``ValueError`` for
    what makes the rest unreadable: not UTF-8, no header."""
    text = _read_utf8(path)
    physical = io.StringIO(text, newline="").readlines()  # the lines as csv counts them
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise ValueError(f"{path}, line 1: not a readable CSV row ({exc})") from None
    if header is None:
        raise ValueError(f"{path}: the CSV is empty; expected a header row 'image,caption[,split]'")
    columns = [h.strip().lower() for h in header]
    lacking = [c for c in CaptionDataset.REQUIRED if c not in columns]
    if lacking:
        raise ValueError(
            f"{path}: the first row must be a header naming the columns 'image' and 'caption' "
            f"(and optionally 'split'); found {header!r}, missing {lacking}"
        )
    i_cap = columns.index("caption")
    records: list[tuple[int, list[str]]] = []
    problems: list[tuple[int, str]] = []
    line_no = reader.line_num + 1  # the physical line the next record starts on
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            problems.append((line_no, f"not a readable CSV row ({exc}); an unclosed quote?"))
            break
        start, end = line_no, reader.line_num
        line_no = end + 1
        if end > start or any("\n" in c or "\r" in c for c in row):
            raw = "".join(physical[start - 1 : end])
            broken = [i for i, c in enumerate(row) if ("\n" in c or "\r" in c) and i != i_cap]
            if raw.count('"') % 2 or broken or _ROW_START.search(row[i_cap] if i_cap < len(row) else ""):
                where = f"lines {start}-{end}" if end > start else f"line {start}"
                problems.append((start, (
                    f"{where}: a quoted field runs over {end - start + 1} line(s) and "
                    "swallows what look like rows; an unclosed quote (\") swallows the rows after "
                    "it. Close the quote (a caption may span lines only inside a closed quote)")))
                continue
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != len(columns):
            hint = ("an unquoted comma in a caption? quote the field (\"...\")"
                    if len(row) > len(columns) else "a missing field?")
            problems.append(
                (start, f"{len(row)} field(s), the header has {len(columns)} ({hint})"))
            continue
        records.append((start, row))
    return columns, records, problems


def _one_line_caption(caption: str) -> str:
    """A caption stripped, with the line breaks of a caption quoted over several lines turned
    into single spaces."""
    caption = caption.strip()
    if "\n" in caption or "\r" in caption:
        caption = " ".join(part.strip() for part in caption.splitlines() if part.strip())
    return caption


def _caption_problems(path: Path, problems: list[tuple[int, str]]) -> str:
    """One message listing every problem of a caption CSV, in line order."""
    def one(line: int, text: str) -> str:
        return text if text.startswith(("line", "empty caption")) else f"line {line}: {text}"

    problems = sorted(problems, key=lambda p: p[0])
    if len(problems) == 1:
        line, text = problems[0]
        return f"{path}: {text}" if text.startswith("empty caption") else f"{path}, {one(line, text)}"
    shown = "; ".join(one(n, t) for n, t in problems[:_SHOWN])
    more = f"; ... and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
    return f"{path}: {len(problems)} problems: {shown}{more}"


def _read_utf8(path: Path) -> str:
    """The text of a UTF-8 file (a byte-order mark is dropped); any other encoding is refused
    naming the line, the column and the byte."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        offset = exc.start
        line = data.count(b"\n", 0, offset) + 1
        column = offset - (data.rfind(b"\n", 0, offset) + 1) + 1
        raise ValueError(
            f"{path}, line {line}: not valid UTF-8 (byte 0x{data[offset]:02x} at column "
            f"{column}); save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8, or your "
            "spreadsheet's 'CSV UTF-8' option)"
        ) from None


# --------------------------------------------------------------------------------------------
# splits


def make_split(
    stems: Iterable[str],
    fractions: Mapping[str, float] | None = None,
    seed: int = 0,
    groups: Mapping[str, str] | Sequence[str] | None = None,
) -> dict[str, list[str]]:
    """Split ``stems`` into named parts, deterministically and independent of input order.

    ``fractions`` defaults to ``{"train": 0.7, "val": 0.1, "test": 0.2}`` and must sum to 1.
    Without ``groups`` each part gets its share rounded (every count within 1 of
    ``fraction * n``, totals exact). With ``groups`` (stem -> patient id, every stem needs one;
    or a sequence of ids aligned with ``stems``) all stems of a group land in the same part;
    groups are shuffled by ``seed``, taken largest first, and each goes to the part furthest
    below its target. Parts are sorted lists.
    """
    fractions = (
        dict(fractions) if fractions is not None else {"train": 0.7, "val": 0.1, "test": 0.2}
    )
    if not fractions or any(f < 0 for f in fractions.values()):
        raise SplitError(f"fractions must be non-negative and non-empty, got {fractions}")
    if abs(sum(fractions.values()) - 1.0) > 1e-6:
        raise SplitError(
            f"fractions must sum to 1, got {fractions} (sum {sum(fractions.values())})"
        )
    stems = [str(s) for s in stems]
    unique = sorted(set(stems))
    if groups is not None and not isinstance(groups, Mapping):
        groups = list(groups)
        if len(groups) != len(stems):
            raise SplitError(
                f"groups given as a sequence must align with stems: {len(groups)} groups for "
                f"{len(stems)} stems"
            )
        by_stem: dict[str, str] = {}
        for s, g in zip(stems, groups):
            if by_stem.setdefault(s, str(g)) != str(g):
                raise SplitError(f"stem {s!r} is given two groups: {by_stem[s]!r} and {g!r}")
        groups = by_stem
    if groups is not None:
        lacking = [s for s in unique if s not in groups]
        if lacking:
            raise SplitError(f"groups has no entry for {len(lacking)} stem(s): {_names(lacking)}")
        members: dict[str, list[str]] = {}
        for s in unique:
            members.setdefault(str(groups[s]), []).append(s)
        units = [members[g] for g in sorted(members)]
    else:
        units = [[s] for s in unique]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(units))
    units = [units[i] for i in order]
    units.sort(key=len, reverse=True)  # stable: random order among groups of equal size

    n = len(unique)
    names = list(fractions)
    target = {k: fractions[k] * n for k in names}
    out: dict[str, list[str]] = {k: [] for k in names}
    rank = {k: i for i, k in enumerate(sorted(names, key=lambda k: -fractions[k]))}
    for unit in units:
        best = max(names, key=lambda k: (target[k] - len(out[k]), -rank[k]))
        out[best].extend(unit)
    return {k: sorted(v) for k, v in out.items()}


def _check_splits(splits: Mapping[str, Iterable[str]], where: str) -> dict[str, list[str]]:
    clean: dict[str, list[str]] = {}
    seen: dict[str, str] = {}
    overlaps: list[str] = []
    for name, stems in splits.items():
        if isinstance(stems, str) or not isinstance(stems, Iterable):
            raise SplitError(f"{where}: split {name!r} must be a list of stems")
        lst = [str(s) for s in stems]
        if len(set(lst)) != len(lst):
            dup = sorted({s for s in lst if lst.count(s) > 1})
            raise SplitError(f"{where}: split {name!r} lists stems twice: {_names(dup)}")
        for s in lst:
            if s in seen:
                overlaps.append(f"{s} ({seen[s]} and {name})")
            seen[s] = name
        clean[str(name)] = lst
    if overlaps:
        raise SplitError(f"{where}: stems in more than one split: {_names(overlaps)}")
    return clean


def write_split(
    path: PathLike,
    splits: Mapping[str, Iterable[str]],
    *,
    name: str,
    seed: int | None = None,
    rule: str = "",
) -> Path:
    """Write ``{"name", "seed", "rule", "splits"}`` as JSON, atomically; refuses overlaps."""
    path = Path(path)
    clean = _check_splits(splits, str(path))
    doc = {
        "name": name,
        "seed": seed,
        "rule": rule,
        "splits": {k: sorted(v) for k, v in clean.items()},
    }
    return atomic_write_text(path, json.dumps(doc, indent=1) + "\n")


def known_splits() -> list[str]:
    """Names of the split files shipped in the package."""
    if not _SPLITS_DIR.is_dir():
        return []
    return sorted(p.stem for p in _SPLITS_DIR.glob("*.json"))


def load_split(path_or_name: PathLike) -> dict[str, list[str]]:
    """Load a split file: a path, or the name of one shipped in ``medclipsam/data/splits/``.

    Returns ``{split name: [stems]}`` and checks that no stem is in two splits.
    """
    text = os.fspath(path_or_name)
    path = Path(text)
    looks_like_path = (
        isinstance(path_or_name, os.PathLike)
        or text.endswith(".json")
        or "/" in text
        or os.sep in text
    )
    if not looks_like_path and not path.is_file():
        path = _SPLITS_DIR / f"{text}.json"
        if not path.is_file():
            known = known_splits()
            raise SplitError(
                f"unknown split {text!r}; known: {', '.join(known) if known else '(none shipped)'}"
                " (or pass a path to a .json file)"
            )
    if not path.is_file():
        raise FileNotFoundError(f"{path}: split file not found")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SplitError(f"{path}: not valid JSON ({exc})") from exc
    if isinstance(doc, dict) and isinstance(doc.get("splits"), dict):
        splits = doc["splits"]
    elif isinstance(doc, dict) and doc and all(isinstance(v, list) for v in doc.values()):
        splits = doc  # a bare {"train": [...], ...} mapping
    else:
        raise SplitError(f"{path}: expected {{'splits': {{name: [stems]}}}}")
    return _check_splits(splits, str(path))
