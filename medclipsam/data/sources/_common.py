"""Shared machinery of the public data-set converters.

Every converter turns one public data set into the project's folder layout::

    OUT/images/<stem>.png     the image (8- or 16-bit, grey or RGB)
    OUT/masks/<stem>.png      the ground-truth mask, 0/255
    OUT/meta.csv              stem,label,source_file plus data-set specific columns
    OUT/splits.json           {"name", "seed", "rule", "splits": {"train": [...], ...}}
    OUT/DONE                  JSON with counts and anomalies, written last

This module holds what they share: getting the source (an archive, an extracted folder, or a
download), extracting archives safely and only once, resuming, checking counts, writing the
metadata files and the command line. A converter describes its data set once (:class:`Source`);
its ``prepare()`` starts with :func:`begin`, converts inside :func:`conversion`, ends with
:func:`finish`, and its ``main()`` is :func:`converter_main`. What stays in each converter is what
differs: where the files are, how an image and its mask are read, and what counts to expect.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import re
import shutil
import sys
import tarfile
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..._utils import UnsafeArchiveError, atomic_write_text, cache_dir, safe_extract
from ...download import DownloadError, sha256sum
from ...download import download as fetch
from ..datasets import write_split
from ..io import ImageReadError, load_array, read_mask, write_image, write_mask

__all__ = [
    "Item",
    "Report",
    "Source",
    "SourceFormatError",
    "add_common_arguments",
    "begin",
    "committed_split",
    "convert_items",
    "converter_main",
    "finish",
    "find_dirs",
    "obtain_source",
    "open_source",
    "outputs_exist",
    "read_table",
    "run_main",
    "slugify",
    "store_image",
    "write_csv",
    "write_done",
]

#: Name of the scratch folder inside OUT where archives are extracted (removed when done).
WORK_DIR_NAME = ".source"
_EXTRACTED_MARKER = ".medclipsam-extracted"
_IGNORED_DIRS = {"__macosx", ".ds_store", WORK_DIR_NAME}
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
SPLITS_DIR = Path(__file__).resolve().parent.parent / "splits"


class SourceFormatError(ValueError):
    """The given source is not the expected data set (or is damaged); the message says why."""


@dataclass(frozen=True)
class Source:
    """What the shared steps need to know about one data set.

    ``key``: module, split-file and command name (``"busi"``: ``prepare_busi``,
    ``splits/busi.json``); ``name``: shown in messages; ``how_to_get``: where a user gets it (in
    errors and ``--help``); ``archive_name``: the file a download is saved as in the cache;
    ``urls``: official downloads (empty: it cannot be downloaded); ``nested``: zips inside the
    archive are extracted too.
    """

    key: str
    name: str
    how_to_get: str
    archive_name: str = ""
    urls: tuple[str, ...] = ()
    nested: bool = False

    @property
    def command(self) -> str:
        return f"prepare_{self.key}"


# --------------------------------------------------------------------------------------------
# reporting


@dataclass
class Report:
    """Collects what a conversion found: counts, and anomalies worth telling the user about.

    Messages go to ``log`` (``print`` by default) as they happen, and the anomalies are also
    stored in the ``DONE`` file so that they stay next to the data.
    """

    dataset: str
    log: Callable[[str], None] | None = print
    anomalies: list[str] = field(default_factory=list)
    counts: dict[str, Any] = field(default_factory=dict)

    def info(self, message: str) -> None:
        if self.log is not None:
            self.log(f"{self.dataset}: {message}")

    def anomaly(self, message: str) -> None:
        self.anomalies.append(message)
        if self.log is not None:
            self.log(f"{self.dataset}: WARNING: {message}")

    def expect(self, what: str, expected: int, found: int, missing: Sequence[str] = ()) -> bool:
        """Compare a count with the published one; record an anomaly when they differ."""
        if expected == found:
            return True
        msg = f"expected {expected} {what}, found {found}"
        if missing:
            shown = ", ".join(list(missing)[:20])
            more = f" (and {len(missing) - 20} more)" if len(missing) > 20 else ""
            msg += f"; missing: {shown}{more}"
        self.anomaly(msg)
        return False


def short_list(items: Iterable[str], n: int = 10) -> str:
    """``a, b, c (and 7 more)``: keeps messages about long lists readable."""
    items = list(items)
    text = ", ".join(items[:n])
    return text + (f" (and {len(items) - n} more)" if len(items) > n else "")


# --------------------------------------------------------------------------------------------
# names and folders


def slugify(text: str) -> str:
    """A file-system friendly lower-case name: letters, digits and single underscores."""
    slug = re.sub(r"[^0-9a-zA-Z]+", "_", text).strip("_").lower()
    return slug or "x"


def _ignored(path: Path, root: Path) -> bool:
    rel = path.relative_to(root).parts
    return any(p.lower() in _IGNORED_DIRS or p.startswith("._") for p in rel)


def find_dirs(roots: Path | Sequence[Path], name: str) -> list[Path]:
    """All folders called ``name`` (case-insensitive) under ``roots``, sorted, macOS debris skipped."""
    roots = [roots] if isinstance(roots, Path) else list(roots)
    wanted = name.lower()
    found: list[Path] = []
    for root in roots:
        if root.name.lower() == wanted:
            found.append(root)
        for dirpath, dirnames, _ in os.walk(root):
            base = Path(dirpath)
            dirnames[:] = sorted(d for d in dirnames if d.lower() not in _IGNORED_DIRS)
            found.extend(base / d for d in dirnames if d.lower() == wanted)
    return sorted(set(found))


def find_files(roots: Path | Sequence[Path], pattern: str) -> list[Path]:
    """Files under ``roots`` whose name matches the regular expression ``pattern`` (whole name,
    case-insensitive), sorted, macOS debris skipped."""
    roots = [roots] if isinstance(roots, Path) else list(roots)
    rx = re.compile(pattern, re.IGNORECASE)
    found: list[Path] = []
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d.lower() not in _IGNORED_DIRS]
            found.extend(
                Path(dirpath) / f for f in filenames if rx.fullmatch(f) and not f.startswith("._")
            )
    return sorted(found)


# --------------------------------------------------------------------------------------------
# getting the source


def is_archive(path: Path) -> bool:
    """True for a zip or tar file (judged by content, and by suffix for tar)."""
    if not path.is_file():
        return False
    if zipfile.is_zipfile(path):
        return True
    return path.name.lower().endswith(_TAR_SUFFIXES) and tarfile.is_tarfile(path)


def obtain_source(
    source: str | os.PathLike | None,
    *,
    dataset: str,
    default_name: str,
    urls: Sequence[str] | None,
    download: bool,
    how_to_get: str,
    sha256: str | None = None,
    progress: bool = True,
) -> Path:
    """Return the path of the data set's source, downloading it first when asked and possible.

    ``source`` may be an archive or an extracted folder. With ``download=True`` and a missing
    ``source`` (or none given) the archive is fetched from ``urls`` to ``source`` (default:
    ``<cache>/datasets/<default_name>``). Without a download the error says where to get it.
    """
    path = Path(source).expanduser() if source is not None else None
    if path is not None and path.exists():
        return path
    if not download or not urls:
        where = f"{path} does not exist" if path is not None else "no source given"
        extra = "" if urls else " (it cannot be downloaded automatically)"
        raise FileNotFoundError(f"{dataset}: {where}{extra}.\n{how_to_get}")

    dest = path if path is not None else cache_dir() / "datasets" / default_name
    return fetch(list(urls), dest, sha256=sha256, progress=progress)


def check_archive_hash(path: Path, sha256: str | None, known: str | None, report: Report) -> None:
    """Verify ``path`` against a user-given or published SHA-256; else print its hash.

    No SHA-256 is published for these data sets, so by default we only print the hash of the
    user's copy (to compare later copies with) and say so; ``sha256`` makes it a check.
    """
    if not path.is_file():
        return

    actual = sha256sum(path)
    expected = (sha256 or known or "").strip().lower() or None
    if expected is None:
        report.info(
            f"{path.name}: SHA-256 {actual} (no published checksum is known for this archive; "
            "keep this value to check other copies against)"
        )
    elif actual != expected:
        raise SourceFormatError(
            f"{path}: SHA-256 is {actual}, expected {expected}; the file is damaged or a "
            "different version"
        )
    else:
        report.info(f"{path.name}: SHA-256 verified ({actual})")
    report.counts["source_sha256"] = actual


def _extract_once(archive: Path, dest: Path) -> Path:
    """Extract ``archive`` into ``dest`` unless an earlier run already finished doing so."""
    stamp = f"{archive.resolve()}|{archive.stat().st_size}|{archive.stat().st_mtime_ns}"
    marker = dest / _EXTRACTED_MARKER
    if marker.is_file() and marker.read_text(encoding="utf-8") == stamp:
        return dest
    existed = dest.exists()
    try:
        safe_extract(archive, dest)
    except BaseException:
        if not existed:
            shutil.rmtree(dest, ignore_errors=True)
        raise
    atomic_write_text(marker, stamp)
    return dest


_ARCHIVE_OF: dict[Path, Path] = {}  # extracted folder -> the archive the user gave


def shown_source(root: Path) -> str:
    """``root`` as a user knows it: the archive they gave (and where it was extracted) when
    ``root`` is an extracted archive's folder, else ``root`` itself."""
    archive = _ARCHIVE_OF.get(root)
    return f"{archive} (extracted to {root})" if archive is not None else str(root)


def open_source(source: Path, work: Path, *, nested: bool = False) -> list[Path]:
    """Return the folders holding the data set's files, extracting archives into ``work``.

    A folder source is used in place (never written to). An archive is extracted once into
    ``work`` (safely: members escaping it are refused with :class:`UnsafeArchiveError`). With
    ``nested`` also every zip found inside is extracted, into ``work/inner/...``.
    """
    if source.is_dir():
        roots = [source]
    elif is_archive(source):
        roots = [_extract_once(source, work / slugify(source.name))]
        _ARCHIVE_OF[roots[0]] = source
    elif source.is_file():
        raise SourceFormatError(
            f"{source}: neither a folder nor a zip/tar archive (is the download complete?)"
        )
    else:
        raise FileNotFoundError(f"{source}: no such file or folder")
    if nested:
        inner_roots: list[Path] = []
        for root in list(roots):
            for inner in find_files(root, r".+\.zip"):
                rel = inner.relative_to(root).with_suffix("")
                dest = work / "inner" / slugify(str(rel))
                try:
                    inner_roots.append(_extract_once(inner, dest))
                except (zipfile.BadZipFile, ValueError) as e:
                    if isinstance(e, UnsafeArchiveError):
                        raise
                    raise SourceFormatError(f"{inner}: not a readable zip archive ({e})") from e
        roots += inner_roots
    return roots


@contextlib.contextmanager
def conversion(out_dir: Path, keep_extracted: bool) -> Iterator[Path]:
    """Set up ``out_dir`` for a (re)run and yield the scratch folder for extracted archives.

    A stale ``DONE`` is removed first. On success the scratch folder is deleted unless
    ``keep_extracted``. On an interruption or a read error it stays, so that a re-run does not
    extract again; when the source turned out to be the wrong data set or an unsafe archive it
    is deleted. Folders this run created and left empty are removed.
    """
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "DONE").unlink(missing_ok=True)
    work = out_dir / WORK_DIR_NAME
    try:
        yield work
    except BaseException as e:
        if isinstance(e, (SourceFormatError, UnsafeArchiveError)):
            shutil.rmtree(work, ignore_errors=True)
        with contextlib.suppress(OSError):
            if work.is_dir() and not any(work.iterdir()):
                work.rmdir()
            if created and not any(out_dir.iterdir()):
                out_dir.rmdir()
        raise
    if not keep_extracted:
        shutil.rmtree(work, ignore_errors=True)


def begin(
    info: Source,
    source: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    *,
    download: bool = False,
    urls: Sequence[str] | None = None,
    sha256: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
) -> tuple[Path, Path, Report]:
    """The common start of ``prepare()``: the source (downloaded first when asked and possible;
    see :func:`obtain_source`) with its SHA-256 checked or printed, the output folder and the
    :class:`Report`. Returns ``(source path, output folder, report)``."""
    out = Path(out_dir).expanduser()
    report = Report(info.name, log=log)
    src = obtain_source(
        source,
        dataset=info.name,
        default_name=info.archive_name,
        urls=info.urls if urls is None else urls,
        download=download,
        how_to_get=info.how_to_get,
        progress=progress,
    )
    check_archive_hash(src, sha256, None, report)
    return src, out, report


def take(items: Sequence[Any], limit: int | None) -> tuple[list[Any], bool]:
    """The first ``limit`` items (all when None), and whether that is all of them."""
    complete = limit is None or limit >= len(items)
    return list(items if limit is None else items[:limit]), complete


# --------------------------------------------------------------------------------------------
# writing outputs


def outputs_exist(out_dir: Path, stem: str, *, mask: bool = True) -> bool:
    """True when an earlier run already wrote this stem's outputs (writes are atomic)."""
    if not (out_dir / "images" / f"{stem}.png").is_file():
        return False
    return not mask or (out_dir / "masks" / f"{stem}.png").is_file()


def store_image(path: Path, array: np.ndarray) -> Path:
    """Write an image losslessly, storing grey images that come as RGB(A) as one channel."""
    arr = np.asarray(array)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[2] == 4:
        top = np.iinfo(arr.dtype).max if arr.dtype.kind in "ui" else 1
        if np.all(arr[..., 3] == top):
            arr = arr[..., :3]
    if arr.ndim == 3 and arr.shape[2] == 3:
        if np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2]):
            arr = arr[..., 0]
    return write_image(path, np.ascontiguousarray(arr))


@dataclass
class Item:
    """One image of a data set: its output stem, its meta.csv row and how to load it.

    ``load`` returns ``(image, mask)``: the image array as stored (8/16 bit, grey or RGB) and a
    boolean mask of the same height and width. It is only called when the outputs are missing.
    """

    stem: str
    row: dict[str, Any]
    load: Callable[[], tuple[np.ndarray, np.ndarray]]


def image_mask_loader(image: Path, mask: Path) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
    """A deferred read of one image (native values) and its mask, for an :class:`Item`."""

    def load() -> tuple[np.ndarray, np.ndarray]:
        return load_array(image), read_mask(mask)

    return load


def convert_items(
    items: Sequence[Item], out_dir: Path, report: Report, *, progress: bool, desc: str
) -> list[dict[str, Any]]:
    """Write every item's image and mask, skipping those an earlier run finished.

    An item that cannot be read (or whose mask does not match the image) is skipped and
    reported. Returns the meta.csv rows of the items now present in ``out_dir``.
    """
    rows: list[dict[str, Any]] = []
    written = resumed = failed = 0
    for item in progress_bar(items, desc=desc, enabled=progress):
        where = item.row.get("source_file") or item.stem
        if outputs_exist(out_dir, item.stem):
            resumed += 1
            rows.append(item.row)
            continue
        try:
            image, mask = item.load()
        except (ImageReadError, OSError, ValueError, KeyError) as e:
            report.anomaly(f"{where}: skipped, cannot be read ({e})")
            failed += 1
            continue
        if mask.shape != image.shape[:2]:
            report.anomaly(
                f"{where}: skipped, mask is {mask.shape[1]}x{mask.shape[0]} but the image is "
                f"{image.shape[1]}x{image.shape[0]}"
            )
            failed += 1
            continue
        store_image(out_dir / "images" / f"{item.stem}.png", image)
        write_mask(out_dir / "masks" / f"{item.stem}.png", mask)
        written += 1
        rows.append(item.row)
    report.counts.update(written=written, already_present=resumed, failed=failed)
    if resumed:
        report.info(f"resumed: {resumed} item(s) already converted were kept")
    return rows


def write_csv(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> Path:
    """Write ``rows`` as CSV with a header, atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(
        buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n"
    )
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    return atomic_write_text(path, buf.getvalue())


def write_done(out_dir: Path, report: Report, *, complete: bool, limit: int | None) -> Path:
    """Write the ``DONE`` marker (JSON: data set, counts, anomalies); always the last write."""
    payload = {
        "dataset": report.dataset,
        "complete": complete,
        "limit": limit,
        "counts": report.counts,
        "anomalies": report.anomalies,
    }
    return atomic_write_text(out_dir / "DONE", json.dumps(payload, indent=2) + "\n")


def finish_output(
    out_dir: Path,
    *,
    name: str,
    splits: dict[str, list[str]],
    seed: int | None,
    rule: str,
    rows: Sequence[dict[str, Any]],
    columns: Sequence[str],
    report: Report,
    complete: bool,
    limit: int | None,
    table: str = "meta.csv",
) -> None:
    """The last steps of every converter: ``splits.json``, the table (``meta.csv`` or
    ``captions.csv``), then the ``DONE`` marker, so a folder with DONE is complete."""
    write_split(out_dir / "splits.json", splits, name=name, seed=seed, rule=rule)
    write_csv(out_dir / table, rows, columns)
    write_done(out_dir, report, complete=complete, limit=limit)


def finish(
    info: Source,
    out_dir: Path,
    rows: Sequence[dict[str, Any]],
    report: Report,
    *,
    complete: bool,
    limit: int | None,
    columns: Sequence[str],
    rule: str,
    seed: int | None = None,
    splits: dict[str, list[str]] | None = None,
    table: str = "meta.csv",
) -> None:
    """The common end of ``prepare()``. ``splits`` defaults to the committed split file of the
    data set restricted to the stems converted (stems it does not know, and for a complete run
    split stems without data, are reported); then :func:`finish_output`."""
    if splits is None:
        stems = [r["stem"] for r in rows]
        assignment = check_against_split(
            stems, committed_split(info.key)["splits"], report, complete=complete
        )
        splits = splits_from_assignment(assignment, stems)
    finish_output(out_dir, name=info.key, splits=splits, seed=seed, rule=rule, rows=rows,
                  columns=columns, report=report, complete=complete, limit=limit, table=table)


def committed_split(name: str) -> dict[str, Any]:
    """The committed split file ``medclipsam/data/splits/<name>.json`` as a dict."""
    path = SPLITS_DIR / f"{name}.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{path}: committed split file missing from the package") from e


def splits_from_assignment(
    assignment: dict[str, str], order: Sequence[str]
) -> dict[str, list[str]]:
    """``{"train": [...], "val": [...], "test": [...]}`` from stem -> split, in ``order``."""
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for stem in order:
        if stem in assignment:
            splits.setdefault(assignment[stem], []).append(stem)
    return splits


def check_against_split(
    stems: Sequence[str], committed: dict[str, list[str]], report: Report, *, complete: bool
) -> dict[str, str]:
    """Map each stem to its committed split; report stems the split file does not know and (for a
    complete run) split stems with no data."""
    assignment = {s: name for name, members in committed.items() for s in members}
    unknown = [s for s in stems if s not in assignment]
    if unknown:
        report.anomaly(
            f"{len(unknown)} stem(s) not in the committed split file (left out of splits.json): "
            + short_list(unknown)
        )
    if complete:
        present = set(stems)
        absent = [s for s in assignment if s not in present]
        if absent:
            report.anomaly(
                f"{len(absent)} stem(s) of the committed split file have no data: "
                + short_list(absent)
            )
    return {s: assignment[s] for s in stems if s in assignment}


# --------------------------------------------------------------------------------------------
# spreadsheets (for UDIAT's lesion-type table)


def _xlsx_rows(path: Path) -> list[list[str]]:
    """Rows of the first worksheet of an .xlsx file, as strings (no openpyxl needed)."""
    ns = {"m": "http://schemas.openxmlformats.org/spreadsheetml/2006/main"}
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise SourceFormatError(f"{path}: not a readable .xlsx file ({e})") from e
    with zf:
        names = zf.namelist()
        shared: list[str] = []
        if "xl/sharedStrings.xml" in names:
            root = ET.fromstring(zf.read("xl/sharedStrings.xml"))
            for si in root.findall("m:si", ns):
                shared.append("".join(t.text or "" for t in si.iter(f"{{{ns['m']}}}t")))
        sheets = sorted(n for n in names if re.fullmatch(r"xl/worksheets/sheet\d+\.xml", n))
        if not sheets:
            raise SourceFormatError(f"{path}: no worksheet found in this .xlsx file")
        first = min(sheets, key=lambda n: int(re.findall(r"\d+", n)[-1]))
        root = ET.fromstring(zf.read(first))
    rows: list[list[str]] = []
    for row in root.iter(f"{{{ns['m']}}}row"):
        values: dict[int, str] = {}
        for i, c in enumerate(row.findall("m:c", ns)):
            ref = c.get("r", "")
            letters = re.match(r"[A-Z]+", ref)
            col = i
            if letters:
                col = 0
                for ch in letters.group(0):
                    col = col * 26 + ord(ch) - 64
                col -= 1
            kind = c.get("t")
            v = c.find("m:v", ns)
            if kind == "s" and v is not None and v.text is not None:
                text = shared[int(v.text)]
            elif kind == "inlineStr":
                text = "".join(t.text or "" for t in c.iter(f"{{{ns['m']}}}t"))
            else:
                text = v.text if v is not None and v.text is not None else ""
            values[col] = text.strip()
        if values:
            rows.append([values.get(i, "") for i in range(max(values) + 1)])
    return rows


def read_table(path: Path) -> list[list[str]]:
    """Rows of a .csv/.tsv/.txt or .xlsx table as lists of strings (the header row included)."""
    suffix = path.suffix.lower()
    if suffix == ".xlsx":
        return _xlsx_rows(path)
    if suffix in {".csv", ".tsv", ".txt"}:
        text = path.read_text(encoding="utf-8-sig", errors="replace")
        try:
            dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t")
        except csv.Error:
            dialect = csv.excel
        return [
            [c.strip() for c in row]
            for row in csv.reader(io.StringIO(text), dialect)
            if any(c.strip() for c in row)
        ]
    raise SourceFormatError(
        f"{path}: cannot read {suffix} tables; save it as .xlsx or .csv and run again"
    )


# --------------------------------------------------------------------------------------------
# progress and the command line


def progress_bar(items: Sequence[Any], *, desc: str, enabled: bool) -> Iterable[Any]:
    """Wrap ``items`` in a tqdm bar (a widget in notebooks) when ``enabled``."""
    if not enabled:
        return items

    return tqdm(items, desc=desc, leave=False)


def add_common_arguments(
    parser: argparse.ArgumentParser,
    *,
    source_help: str,
    can_download: bool,
    archive: bool = True,
    limit_help: str = "convert only the first N items (a quick try; DONE says so)",
) -> None:
    """The arguments every converter shares (``archive=False``: a source that is a folder, with
    no checksum to check and nothing to extract)."""
    parser.add_argument("source", nargs="?" if can_download else None, help=source_help)
    parser.add_argument(
        "out",
        help="output folder (created; re-running resumes an interrupted "
        "conversion, skipping files already written)",
    )
    if can_download:
        parser.add_argument(
            "--download",
            action="store_true",
            help="download the archive to SOURCE first if it is missing "
            "(default place: the medclipsam cache)",
        )
        parser.add_argument(
            "--url",
            action="append",
            default=None,
            help="download from this URL instead of the official one (repeat for mirrors)",
        )
    if archive:
        parser.add_argument(
            "--sha256",
            default=None,
            help="check the source archive against this SHA-256 (none is published; "
            "by default its hash is only printed)",
        )
    parser.add_argument("--limit", type=int, default=None, help=limit_help)
    if archive:
        parser.add_argument(
            "--keep-extracted",
            action="store_true",
            help=f"keep the extracted archive in OUT/{WORK_DIR_NAME} afterwards",
        )
    parser.add_argument(
        "--strict", action="store_true", help="exit with status 1 when any anomaly was found"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar or messages")


def run_main(prepare_call: Callable[[], Path], *, strict: bool, name: str) -> int:
    """Run a converter for a command line: clear one-line errors instead of tracebacks."""
    try:
        out = prepare_call()
    except (SourceFormatError, UnsafeArchiveError, FileNotFoundError, DownloadError) as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        return 2
    done = json.loads((out / "DONE").read_text(encoding="utf-8"))
    n_anomalies = len(done.get("anomalies", []))
    counts = ", ".join(
        f"{k} {v}" for k, v in done.get("counts", {}).items() if k != "source_sha256"
    )
    print(
        f"{name}: wrote {out} ({counts}); {n_anomalies} "
        f"anomal{'y' if n_anomalies == 1 else 'ies'} (listed in {out / 'DONE'})"
    )
    return 1 if strict and n_anomalies else 0


def converter_main(
    info: Source,
    prepare: Callable[..., Path],
    argv: Sequence[str] | None,
    *,
    description: str,
    source_help: str,
    archive: bool = True,
    limit_help: str | None = None,
    extend: Callable[[argparse.ArgumentParser], None] | None = None,
    options: Callable[[argparse.Namespace], dict[str, Any]] | None = None,
) -> int:
    """A converter's whole command line: the shared options (plus ``extend``'s), then
    ``prepare(source, out, ...)`` with them (plus ``options(args)``) under :func:`run_main`."""
    parser = argparse.ArgumentParser(prog=info.command, description=f"{description} {info.how_to_get}")
    add_common_arguments(parser, source_help=source_help, can_download=bool(info.urls),
                         archive=archive, **({"limit_help": limit_help} if limit_help else {}))
    if extend is not None:
        extend(parser)
    args = parser.parse_args(argv)
    kwargs: dict[str, Any] = {"limit": args.limit, "progress": not args.quiet,
                              "log": None if args.quiet else print}
    if archive:
        kwargs.update(sha256=args.sha256, keep_extracted=args.keep_extracted)
    if info.urls:
        kwargs.update(download=args.download, urls=args.url or info.urls)
    if options is not None:
        kwargs.update(options(args))
    return run_main(lambda: prepare(args.source, args.out, **kwargs), strict=args.strict,
                    name=info.command)
