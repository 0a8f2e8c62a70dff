"""The figshare brain tumour data set (Cheng et al., PLoS ONE 2015; figshare article 1512427).

3064 T1-weighted contrast-enhanced MRI slices of 233 patients with a meningioma (708 slices),
glioma (1426) or pituitary tumour (930). The figshare "download all" zip holds four zips
(``brainTumorDataPublic_1-766.zip``, ``_767-1532``, ``_1533-2298``, ``_2299-3064``) with
``1.mat`` ... ``3064.mat``, plus ``cvind.mat`` (the authors' 5-fold cross-validation indices,
patient-wise) and a README. Each ``.mat`` is MATLAB v7.3 (HDF5) holding a struct ``cjdata``:

* ``label``: 1 meningioma, 2 glioma, 3 pituitary
* ``PID``: patient id (a MATLAB char array, i.e. uint16 codes)
* ``image``: the slice (mostly 512x512, int16), ``tumorMask``: the tumour mask,
  ``tumorBorder``: the outline's coordinates (not used)

MATLAB stores arrays column-major, so HDF5 readers see the transpose; it is undone here. Images
are written as 16-bit PNG (no values lost; the readers rescale them for display). Split:
patient-wise from ``cvind.mat`` (folds 1-3 train, 4 val, 5 test: ``splits/brain_figshare.json``),
or, without it, ``make_split`` grouped by patient, seed 0.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import scipy.io

from ..._utils import atomic_write_text
from ..datasets import make_split
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
    find_files,
    finish,
    open_source,
    progress_bar,
    short_list,
    splits_from_assignment,
    take,
)

__all__ = [
    "EXPECTED_COUNTS",
    "FOLD_TO_SPLIT",
    "LABELS",
    "URLS",
    "brain_stem",
    "build_brain_split_rule",
    "main",
    "prepare",
    "read_cjdata",
    "read_cvind",
    "write_brain_split_rule",
]

NAME = "brain_figshare"
#: Label codes of ``cjdata.label``.
LABELS: dict[int, str] = {1: "meningioma", 2: "glioma", 3: "pituitary"}
EXPECTED_TOTAL = 3064
EXPECTED_PATIENTS = 233
EXPECTED_COUNTS: dict[str, int] = {"meningioma": 708, "glioma": 1426, "pituitary": 930}
#: The official 5 folds of cvind.mat mapped to our three splits.
FOLD_TO_SPLIT: dict[int, str] = {1: "train", 2: "train", 3: "train", 4: "val", 5: "test"}
#: Figshare's public "download all" links for article 1512427, version 5 (the same file).
URLS: tuple[str, ...] = (
    "https://figshare.com/ndownloader/articles/1512427/versions/5",
    "https://ndownloader.figshare.com/articles/1512427/versions/5",
)
SPLIT_SEED = 0
SPLIT_RULE = (
    "brain_figshare: patient-wise, from the authors' 5-fold cross-validation indices cvind.mat: "
    "folds 1-3 train, 4 val, 5 test (fold_to_split). Without cvind.mat: "
    "medclipsam.data.datasets.make_split(stems, seed=0, groups=patient ids). The converter "
    "writes the per-stem split to OUT/splits.json."
)
HOW_TO_GET = (
    "brain_figshare: download 'brain tumor dataset' from https://figshare.com/articles/dataset/"
    "brain_tumor_dataset/1512427 ('Download all', under 1 GB; licence as shown there, CC BY "
    "4.0 at the time of writing), or pass --download. Cite Cheng et al., PLoS ONE 10(10): "
    "e0140381 (2015)."
)
META_COLUMNS = ("stem", "label", "source_file", "label_id", "patient_id", "fold")
SOURCE = Source("brain_figshare", NAME, HOW_TO_GET, archive_name="brain_tumor_dataset_1512427.zip",
                urls=URLS, nested=True)


def brain_stem(number: int) -> str:
    """The output stem of ``<number>.mat``: ``brain_0001``."""
    return f"brain_{number:04d}"


def build_brain_split_rule() -> dict[str, Any]:
    """The committed rule file: no stems, but how cvind.mat folds become splits."""
    return {
        "name": "brain_figshare",
        "seed": SPLIT_SEED,
        "rule": SPLIT_RULE,
        "fold_to_split": {str(k): v for k, v in FOLD_TO_SPLIT.items()},
        "splits": {},
    }


def write_brain_split_rule(path: str | Path = SPLITS_DIR / "brain_figshare.json") -> Path:
    """(Re)write the committed rule file from :func:`build_brain_split_rule`."""
    return atomic_write_text(Path(path), json.dumps(build_brain_split_rule(), indent=2) + "\n")


# --------------------------------------------------------------------------------------------
# reading the MATLAB files


def _is_hdf5(path: Path) -> bool:
    return bool(h5py.is_hdf5(path))


def _decode_chars(value: Any) -> str:
    """A MATLAB char array (uint16 codes, or a str from scipy) as a Python string."""
    if isinstance(value, str):
        return value.strip()
    arr = np.asarray(value)
    if arr.dtype.kind in "US":
        return "".join(str(x) for x in arr.ravel()).strip()
    return "".join(chr(int(c)) for c in arr.ravel() if int(c) != 0).strip()


def read_cjdata(path: str | Path, *, pixels: bool = True) -> dict[str, Any]:
    """Read one ``N.mat`` file: ``{"label": int, "pid": str, "image": array, "mask": bool}``.

    MATLAB v7.3 (HDF5) files are read with h5py and transposed back to row-major; older ``.mat``
    versions with scipy. With ``pixels=False`` only label and patient id are read (fast).
    """
    path = Path(path)
    try:
        if _is_hdf5(path):
            with h5py.File(path, "r") as f:
                if "cjdata" not in f:
                    raise SourceFormatError(f"{path}: no 'cjdata' struct in this .mat file")
                cj = f["cjdata"]
                out: dict[str, Any] = {
                    "label": int(np.asarray(cj["label"]).ravel()[0]),
                    "pid": _decode_chars(cj["PID"][()]),
                }
                if pixels:
                    out["image"] = np.ascontiguousarray(np.asarray(cj["image"]).T)
                    out["mask"] = np.ascontiguousarray(np.asarray(cj["tumorMask"]).T) != 0
                return out
        mat = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)
        if "cjdata" not in mat:
            raise SourceFormatError(f"{path}: no 'cjdata' struct in this .mat file")
        cj = mat["cjdata"]
        out = {"label": int(np.asarray(cj.label).ravel()[0]), "pid": _decode_chars(cj.PID)}
        if pixels:
            out["image"] = np.asarray(cj.image)
            out["mask"] = np.asarray(cj.tumorMask) != 0
        return out
    except SourceFormatError:
        raise
    except (KeyError, AttributeError, IndexError) as e:
        raise SourceFormatError(f"{path}: cjdata lacks a field ({e})") from e
    except (OSError, ValueError, NotImplementedError) as e:
        raise SourceFormatError(f"{path}: not a readable MATLAB file ({e})") from e


def read_cvind(path: str | Path) -> np.ndarray:
    """The fold number (1-5) of every image, in file-number order, from ``cvind.mat``."""
    path = Path(path)
    try:
        if _is_hdf5(path):
            with h5py.File(path, "r") as f:
                key = (
                    "cvind" if "cvind" in f else next((k for k in f if not k.startswith("#")), None)
                )
                if key is None:
                    raise SourceFormatError(f"{path}: no variable in this .mat file")
                arr = np.asarray(f[key]).ravel()
        else:
            mat = scipy.io.loadmat(path)
            keys = [k for k in mat if not k.startswith("__")]
            key = "cvind" if "cvind" in mat else (keys[0] if keys else None)
            if key is None:
                raise SourceFormatError(f"{path}: no variable in this .mat file")
            arr = np.asarray(mat[key]).ravel()
    except SourceFormatError:
        raise
    except (OSError, ValueError, NotImplementedError) as e:
        raise SourceFormatError(f"{path}: not a readable MATLAB file ({e})") from e
    return arr.astype(np.int64)


def _to_uint16(image: np.ndarray, where: str, report: Report) -> np.ndarray:
    """Pixel values as uint16, unchanged where they fit (the data set's are 0..~12000)."""
    if image.dtype == np.uint16:
        return image
    if image.dtype.kind == "f":
        if not np.all(np.isfinite(image)) or not np.all(image == np.round(image)):
            raise ValueError("image has non-integer pixel values; cannot store them losslessly")
    lo, hi = float(image.min()), float(image.max())
    if lo < 0 or hi > 65535:
        report.anomaly(f"{where}: pixel values {lo:g}..{hi:g} clipped to 0..65535")
    return np.clip(image, 0, 65535).astype(np.uint16)


def _loader(path: Path, report: Report) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
    def load() -> tuple[np.ndarray, np.ndarray]:
        data = read_cjdata(path)
        return _to_uint16(np.asarray(data["image"]), path.name, report), data["mask"]

    return load


# --------------------------------------------------------------------------------------------


def _find_mats(roots: Sequence[Path], src: Path, report: Report) -> dict[int, Path]:
    """The numbered ``.mat`` files (``1.mat`` ...), by number."""
    mats: dict[int, Path] = {}
    for p in find_files(roots, r"\d+\.mat"):
        number = int(p.stem)
        if number in mats:
            report.info(f"{p.name} found twice; using {mats[number]}")
            continue
        mats[number] = p
    if not mats:
        raise SourceFormatError(
            f"{src}: this does not look like the figshare brain tumour data set: no "
            "numbered .mat files (1.mat ... 3064.mat), nor zips holding them, were found"
        )
    return mats


def _find_folds(roots: Sequence[Path], report: Report) -> np.ndarray | None:
    """The official folds from ``cvind.mat`` (None without it: reported)."""
    cvind_files = find_files(roots, r"cvind\.mat")
    cvind = read_cvind(cvind_files[0]) if cvind_files else None
    if cvind is None:
        report.anomaly(
            "cvind.mat not found: patient-wise split made with make_split "
            "(groups = patient ids, seed 0) instead of the official folds"
        )
    elif not np.isin(cvind, list(FOLD_TO_SPLIT)).all():
        raise SourceFormatError(
            f"{cvind_files[0]}: fold numbers outside 1..5: "
            f"{sorted(set(cvind.tolist()) - set(FOLD_TO_SPLIT))}"
        )
    return cvind


def _collect(mats: dict[int, Path], numbers: Sequence[int], cvind: np.ndarray | None,
             report: Report, progress: bool) -> list[Item]:
    """One item per slice whose header (label, patient) reads; its fold when known."""
    items: list[Item] = []
    for n in progress_bar(numbers, desc=f"{NAME} (headers)", enabled=progress):
        try:
            head = read_cjdata(mats[n], pixels=False)
        except SourceFormatError as e:
            report.anomaly(f"skipped: {e}")
            continue
        label = LABELS.get(head["label"])
        if label is None:
            report.anomaly(f"{mats[n].name}: skipped, unknown label {head['label']}")
            continue
        fold = int(cvind[n - 1]) if cvind is not None and n <= len(cvind) else None
        if cvind is not None and fold is None:
            report.anomaly(f"{mats[n].name}: no entry in cvind.mat (it has {len(cvind)})")
        row = {
            "stem": brain_stem(n),
            "label": label,
            "source_file": mats[n].name,
            "label_id": head["label"],
            "patient_id": head["pid"],
            "fold": fold,
        }
        items.append(Item(brain_stem(n), row, _loader(mats[n], report)))
    return items


def _check_counts(rows: Sequence[dict[str, Any]], report: Report, complete: bool,
                  n_mats: int, cvind: np.ndarray | None) -> None:
    """Slice, class and patient counts against the published ones (complete runs); DONE's counts."""
    patients = {r["patient_id"] for r in rows}
    if complete:
        have = {r["stem"] for r in rows}
        missing = [f"{i}.mat" for i in range(1, EXPECTED_TOTAL + 1) if brain_stem(i) not in have]
        report.expect("slices", EXPECTED_TOTAL, len(rows), missing)
        for label, expected in EXPECTED_COUNTS.items():
            report.expect(f"{label} slices", expected, sum(r["label"] == label for r in rows))
        report.expect("patients", EXPECTED_PATIENTS, len(patients))
        if cvind is not None and len(cvind) != n_mats:
            report.anomaly(f"cvind.mat has {len(cvind)} entries for {n_mats} .mat files")
    report.counts.update(
        images=len(rows),
        patients=len(patients),
        **{lb: sum(r["label"] == lb for r in rows) for lb in LABELS.values()},
    )


def _splits(rows: Sequence[dict[str, Any]], cvind: np.ndarray | None,
            report: Report) -> tuple[dict[str, list[str]], int | None]:
    """Patient-wise splits from the official folds (else :func:`make_split` grouped by patient),
    the seed used (None for the folds); patients in more than one split are reported."""
    stems = [r["stem"] for r in rows]
    if cvind is not None:
        rule = committed_split("brain_figshare")
        fold_to_split = {int(k): v for k, v in rule["fold_to_split"].items()}
        assignment = {r["stem"]: fold_to_split[r["fold"]] for r in rows if r["fold"]}
        splits, seed = splits_from_assignment(assignment, stems), None
    else:
        splits = make_split(stems, seed=SPLIT_SEED, groups=[r["patient_id"] for r in rows])
        assignment = {s: name for name, members in splits.items() for s in members}
        seed = SPLIT_SEED
    by_patient: dict[str, set[str]] = {}
    for r in rows:
        if r["stem"] in assignment:
            by_patient.setdefault(r["patient_id"], set()).add(assignment[r["stem"]])
    mixed = sorted(p for p, s in by_patient.items() if len(s) > 1)
    if mixed:
        report.anomaly(
            f"{len(mixed)} patient(s) have slices in more than one split: " + short_list(mixed)
        )
    return splits, seed


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
    """Convert the figshare brain tumour data set into ``out_dir``.

    ``source``: the figshare zip, a folder holding the four inner zips and ``cvind.mat``, or a
    folder of ``.mat`` files. ``download=True`` fetches the zip from ``urls`` when ``source`` is
    missing. Re-running resumes. Returns ``out_dir``.
    """
    src, out, report = begin(SOURCE, source, out_dir, download=download, urls=urls,
                             sha256=sha256, progress=progress, log=log)
    with conversion(out, keep_extracted) as work:
        roots = open_source(src, work, nested=SOURCE.nested)
        mats = _find_mats(roots, src, report)
        cvind = _find_folds(roots, report)
        numbers, complete = take(sorted(mats), limit)
        items = _collect(mats, numbers, cvind, report, progress)
        rows = convert_items(items, out, report, progress=progress, desc=NAME)
        _check_counts(rows, report, complete, len(mats), cvind)
        splits, seed = _splits(rows, cvind, report)
        finish(SOURCE, out, rows, report, complete=complete, limit=limit, columns=META_COLUMNS,
               rule=SPLIT_RULE, seed=seed, splits=splits)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python data_scripts/prepare_brain_figshare.py 1512427.zip data/brain``."""
    return converter_main(
        SOURCE, prepare, argv,
        description="Convert the figshare brain tumour MRI data set (3064 slices, 233 patients) "
        "into the medclipsam folder layout: OUT/images (16-bit PNG), OUT/masks "
        "(0/255), OUT/meta.csv (tumour type, patient id, fold), OUT/splits.json "
        "(patient-wise: cvind folds 1-3 train, 4 val, 5 test), OUT/DONE.",
        source_help="the figshare zip, or a folder with the four "
        "brainTumorDataPublic_*.zip and cvind.mat, or with the "
        ".mat files (with --download: where to save the zip)",
    )


if __name__ == "__main__":
    raise SystemExit(main())
