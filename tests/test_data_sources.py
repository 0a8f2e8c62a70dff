"""The public data-set converters, run on tiny archives built here in each data set's real format."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
from httpserver import FileServer
from PIL import Image

from medclipsam._utils import UnsafeArchiveError
from medclipsam.data.datasets import CaptionDataset, FolderDataset, load_split, make_split
from medclipsam.data.io import load_array, read_mask
from medclipsam.data.sources import SourceFormatError, brain_figshare, busi, covidqu, roco, udiat

ROOT = Path(__file__).resolve().parents[1]
SPLITS = ROOT / "medclipsam" / "data" / "splits"


# --------------------------------------------------------------------------------------------
# helpers that build source files


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def grey_rgb(seed: int, shape=(10, 12)) -> np.ndarray:
    """An ultrasound-like grey image stored as RGB (as BUSI's PNGs are)."""
    g = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    return np.repeat(g[..., None], 3, axis=2)


def box_mask(shape, rows, cols) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[rows[0] : rows[1], cols[0] : cols[1]] = True
    return m


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def read_done(out: Path) -> dict:
    return json.loads((out / "DONE").read_text())


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    import csv

    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


SHAPE = (10, 12)
MASK_A = box_mask(SHAPE, (1, 4), (2, 6))
MASK_B = box_mask(SHAPE, (5, 9), (7, 11))


def busi_members() -> dict[str, bytes]:
    """benign (1) with one mask, benign (2) with two masks (to be united), malignant (1) with an
    RGB mask, normal (1) with an empty mask."""
    base = "Dataset_BUSI_with_GT"
    rgb_mask = np.zeros((*SHAPE, 3), dtype=np.uint8)
    rgb_mask[MASK_B] = (255, 255, 255)
    return {
        f"{base}/benign/benign (1).png": png_bytes(grey_rgb(1)),
        f"{base}/benign/benign (1)_mask.png": png_bytes(MASK_A.astype(np.uint8) * 255),
        f"{base}/benign/benign (2).png": png_bytes(grey_rgb(2)),
        f"{base}/benign/benign (2)_mask.png": png_bytes(MASK_A.astype(np.uint8) * 255),
        f"{base}/benign/benign (2)_mask_1.png": png_bytes(MASK_B.astype(np.uint8) * 255),
        f"{base}/malignant/malignant (1).png": png_bytes(grey_rgb(3)),
        f"{base}/malignant/malignant (1)_mask.png": png_bytes(rgb_mask),
        f"{base}/normal/normal (1).png": png_bytes(grey_rgb(4)),
        f"{base}/normal/normal (1)_mask.png": png_bytes(np.zeros(SHAPE, np.uint8)),
    }


@pytest.fixture()
def busi_zip(tmp_path: Path) -> Path:
    return write_zip(tmp_path / "Dataset_BUSI.zip", busi_members())


def mtimes(folder: Path) -> dict[str, int]:
    return {
        p.relative_to(folder).as_posix(): p.stat().st_mtime_ns
        for p in sorted(folder.rglob("*.png"))
    }


# --------------------------------------------------------------------------------------------
# BUSI


def test_busi_converts_unites_masks_and_keeps_classes(busi_zip: Path, tmp_path: Path) -> None:
    out = busi.prepare(busi_zip, tmp_path / "busi", progress=False, log=None)

    stems = ["benign_001", "benign_002", "malignant_001", "normal_001"]
    assert sorted(p.stem for p in (out / "images").glob("*.png")) == stems
    assert sorted(p.stem for p in (out / "masks").glob("*.png")) == stems
    # two masks of one image are united; RGB masks are read as foreground; normal is empty
    assert np.array_equal(read_mask(out / "masks" / "benign_002.png"), MASK_A | MASK_B)
    assert np.array_equal(read_mask(out / "masks" / "benign_001.png"), MASK_A)
    assert np.array_equal(read_mask(out / "masks" / "malignant_001.png"), MASK_B)
    assert not read_mask(out / "masks" / "normal_001.png").any()
    assert set(np.unique(load_array(out / "masks" / "benign_002.png"))) == {0, 255}
    # grey pixels stored as RGB come back exactly, as one channel
    img = load_array(out / "images" / "benign_001.png")
    assert img.shape == SHAPE and np.array_equal(img, grey_rgb(1)[..., 0])

    rows = {r["stem"]: r for r in read_csv_rows(out / "meta.csv")}
    assert rows["benign_002"]["label"] == "benign"
    assert rows["benign_002"]["original_name"] == "benign (2)"
    assert rows["benign_002"]["n_masks"] == "2"
    assert rows["malignant_001"]["source_file"] == "malignant/malignant (1).png"

    # splits.json: each stem where the committed (stratified) split puts it
    committed = load_split("busi")
    ours = load_split(out / "splits.json")
    for name, members in ours.items():
        assert set(members) <= set(committed[name])
    assert sorted(s for m in ours.values() for s in m) == stems

    done = read_done(out)
    assert done["complete"] is True
    assert done["counts"]["images"] == 4 and done["counts"]["multi_mask_images"] == 1
    assert any(
        "expected 437 benign images, found 2" in a and "benign (3)" in a for a in done["anomalies"]
    )
    assert not (out / ".source").exists()  # scratch extraction removed after success
    # the folder data set of the project reads the result
    ds = FolderDataset(out, split="train")
    assert len(ds) == len(ours["train"])


def test_busi_resume_rewrites_only_missing_outputs(busi_zip: Path, tmp_path: Path) -> None:
    out = tmp_path / "busi"
    busi.prepare(busi_zip, out, limit=2, progress=False, log=None)
    done = read_done(out)
    assert done["complete"] is False and done["limit"] == 2
    assert sorted(p.stem for p in (out / "images").glob("*.png")) == ["benign_001", "benign_002"]

    before = mtimes(out)
    busi.prepare(busi_zip, out, progress=False, log=None)
    after = mtimes(out)
    assert all(after[k] == v for k, v in before.items())  # finished files were not touched
    assert len(after) == 8 and read_done(out)["counts"]["written"] == 2

    (out / "masks" / "malignant_001.png").unlink()  # as if interrupted between the two writes
    before = mtimes(out)
    busi.prepare(busi_zip, out, progress=False, log=None)
    after = mtimes(out)
    changed = sorted(k for k in after if before.get(k) != after[k])
    assert changed == ["images/malignant_001.png", "masks/malignant_001.png"]
    counts = read_done(out)["counts"]
    assert counts["written"] == 1 and counts["already_present"] == 3


@pytest.mark.parametrize("evil", ["../evil.txt", "/tmp/medclipsam-evil/evil.txt"])
def test_archive_escaping_its_folder_is_refused(tmp_path: Path, evil: str) -> None:
    members = busi_members()
    members[evil] = b"gotcha"
    bad = write_zip(tmp_path / "bad.zip", members)
    out = tmp_path / "deep" / "out"
    with pytest.raises(UnsafeArchiveError, match="evil.txt"):
        busi.prepare(bad, out, progress=False, log=None)
    assert not list(tmp_path.rglob("evil.txt"))
    assert not Path(evil).exists()
    assert not (out / "images").exists() and not (out / "DONE").exists()


def test_wrong_archive_gives_a_clear_error(tmp_path: Path, capsys) -> None:
    other = write_zip(
        tmp_path / "holiday.zip",
        {"photos/beach.png": png_bytes(grey_rgb(0)), "notes.txt": b"hello"},
    )
    with pytest.raises(SourceFormatError, match="does not look like BUSI"):
        busi.prepare(other, tmp_path / "o1", progress=False, log=None)
    with pytest.raises(SourceFormatError, match="does not look like UDIAT"):
        udiat.prepare(other, tmp_path / "o2", progress=False, log=None)
    with pytest.raises(SourceFormatError, match="brain tumour"):
        brain_figshare.prepare(other, tmp_path / "o3", progress=False, log=None)
    with pytest.raises(SourceFormatError, match="does not look like COVID-QU-Ex"):
        covidqu.prepare(other, tmp_path / "o4", progress=False, log=None)
    # a file that is no archive at all
    junk = tmp_path / "Dataset_BUSI.zip"
    junk.write_bytes(b"<html>404 not found</html>")
    with pytest.raises(SourceFormatError, match="neither a folder nor a zip"):
        busi.prepare(junk, tmp_path / "o5", progress=False, log=None)
    # the command line prints one clear line and exits with 2
    assert busi.main([str(other), str(tmp_path / "o6"), "--quiet"]) == 2
    assert "does not look like BUSI" in capsys.readouterr().err
    assert not (tmp_path / "o1").exists()  # nothing left behind


def test_missing_source_says_where_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="scholar.cu.edu.eg"):
        busi.prepare(tmp_path / "nope.zip", tmp_path / "out", log=None)
    with pytest.raises(FileNotFoundError, match="request it from the authors"):
        udiat.prepare(tmp_path / "nope.zip", tmp_path / "out", download=True, log=None)
    with pytest.raises(FileNotFoundError, match="kaggle"):
        covidqu.prepare(tmp_path / "nope.zip", tmp_path / "out", log=None)


def test_busi_download_from_a_local_http_server(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("MEDCLIPSAM_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    data = write_zip(tmp_path / "served.zip", busi_members()).read_bytes()
    target = tmp_path / "downloads" / "Dataset_BUSI.zip"
    with FileServer() as srv:
        route = srv.add("/Dataset_BUSI.zip", data)
        code = busi.main(
            [
                str(target),
                str(tmp_path / "busi"),
                "--download",
                "--quiet",
                "--url",
                srv.url("/Dataset_BUSI.zip"),
            ]
        )
        assert code == 0
        assert len(route.requests) == 1
        assert target.read_bytes() == data
        assert read_done(tmp_path / "busi")["counts"]["images"] == 4
        # the second run finds the archive in place and does not download again
        busi.prepare(
            target,
            tmp_path / "busi2",
            download=True,
            urls=[srv.url("/Dataset_BUSI.zip")],
            progress=False,
            log=None,
        )
        assert len(route.requests) == 1


def test_committed_busi_split_is_reproducible_and_stratified(tmp_path: Path) -> None:
    committed = json.loads((SPLITS / "busi.json").read_text())
    assert committed["seed"] == 0 and "stratified" in committed["rule"]
    built = busi.build_busi_split()
    assert {k: sorted(v) for k, v in built.items()} == committed["splits"]
    assert (
        busi.write_busi_split(tmp_path / "b.json").read_text() == (SPLITS / "busi.json").read_text()
    )
    everything = sorted(s for v in committed["splits"].values() for s in v)
    assert everything == sorted(busi.known_stems()) and len(everything) == 780
    for label, n in busi.EXPECTED_COUNTS.items():
        for name, frac in {"train": 0.7, "val": 0.1, "test": 0.2}.items():
            k = sum(s.startswith(label + "_") for s in committed["splits"][name])
            assert abs(k - frac * n) <= 1, (label, name, k)


def test_committed_rule_files_match_their_builders() -> None:
    udiat_doc = json.loads((SPLITS / "udiat.json").read_text())
    assert {k: sorted(v) for k, v in udiat.build_udiat_split().items()} == udiat_doc["splits"]
    assert sum(len(v) for v in udiat_doc["splits"].values()) == 163
    assert (
        json.loads((SPLITS / "brain_figshare.json").read_text())
        == brain_figshare.build_brain_split_rule()
    )
    assert json.loads((SPLITS / "covidqu.json").read_text()) == covidqu.build_covidqu_split_rule()
    assert json.loads((SPLITS / "roco.json").read_text()) == roco.build_roco_split_rule()
    assert brain_figshare.build_brain_split_rule()["fold_to_split"] == {
        "1": "train",
        "2": "train",
        "3": "train",
        "4": "val",
        "5": "test",
    }


# --------------------------------------------------------------------------------------------
# UDIAT


def minimal_xlsx(rows: list[list[object]]) -> bytes:
    """A real (minimal) .xlsx: numbers as values, text as shared strings."""
    shared: list[str] = []
    cells = []
    for r, row in enumerate(rows, 1):
        parts = []
        for c, value in enumerate(row):
            ref = f"{chr(65 + c)}{r}"
            if isinstance(value, str):
                if value not in shared:
                    shared.append(value)
                parts.append(f'<c r="{ref}" t="s"><v>{shared.index(value)}</v></c>')
            else:
                parts.append(f'<c r="{ref}"><v>{value}</v></c>')
        cells.append(f'<row r="{r}">{"".join(parts)}</row>')
    ns = 'xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"'
    sheet = (
        f'<?xml version="1.0"?><worksheet {ns}><sheetData>{"".join(cells)}</sheetData></worksheet>'
    )
    sst = (
        f'<?xml version="1.0"?><sst {ns} count="{len(shared)}">'
        + "".join(f"<si><t>{s}</t></si>" for s in shared)
        + "</sst>"
    )
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("[Content_Types].xml", '<?xml version="1.0"?><Types/>')
        zf.writestr("xl/workbook.xml", f'<?xml version="1.0"?><workbook {ns}/>')
        zf.writestr("xl/sharedStrings.xml", sst)
        zf.writestr("xl/worksheets/sheet1.xml", sheet)
    return buf.getvalue()


def test_udiat_finds_folders_anywhere_and_reads_the_spreadsheet(tmp_path: Path) -> None:
    grey = [np.random.default_rng(i).integers(0, 256, SHAPE, dtype=np.uint8) for i in range(3)]
    members = {}
    for i in range(3):
        members[f"Dataset B/Original/{i + 1:06d}.png"] = png_bytes(grey[i])
        members[f"Dataset B/gt/{i + 1:06d}.png"] = png_bytes(
            (MASK_A if i % 2 else MASK_B).astype(np.uint8) * 255
        )
    members["Dataset B/DatasetB.xlsx"] = minimal_xlsx(
        [
            ["Image", "Type", "Lesion type"],
            [1, "Benign", "CYST"],
            [2, "Malignant", "IDC"],
            [3, "Benign", "FIBROADENOMA"],
        ]
    )
    src = write_zip(tmp_path / "udiat.zip", members)
    out = udiat.prepare(src, tmp_path / "udiat", progress=False, log=None)

    rows = {r["stem"]: r for r in read_csv_rows(out / "meta.csv")}
    assert list(rows) == ["udiat_000001", "udiat_000002", "udiat_000003"]
    assert [rows[s]["label"] for s in rows] == ["benign", "malignant", "benign"]
    assert rows["udiat_000002"]["lesion_type"] == "IDC"
    assert np.array_equal(load_array(out / "images" / "udiat_000002.png"), grey[1])
    assert np.array_equal(read_mask(out / "masks" / "udiat_000002.png"), MASK_A)
    committed = load_split("udiat")
    for name, members_ in load_split(out / "splits.json").items():
        assert set(members_) <= set(committed[name])
    assert any("expected 163 images, found 3" in a for a in read_done(out)["anomalies"])

    # without the spreadsheet, from an extracted folder: class "unknown"
    folder = tmp_path / "extracted"
    with zipfile.ZipFile(src) as zf:
        zf.extractall(folder)
    (folder / "Dataset B" / "DatasetB.xlsx").unlink()
    listing = sorted(folder.rglob("*"))
    out2 = udiat.prepare(folder, tmp_path / "udiat2", progress=False, log=None)
    assert {r["label"] for r in read_csv_rows(out2 / "meta.csv")} == {"unknown"}
    assert sorted(folder.rglob("*")) == listing  # a folder source is only read


# --------------------------------------------------------------------------------------------
# figshare brain tumour


def _matlab_v73(path: Path, fields: dict[str, tuple[np.ndarray, str]]) -> None:
    """Write ``cjdata`` the way MATLAB's ``save -v7.3`` does: HDF5 with a 512-byte user block,
    column-major arrays (so HDF5 holds the transpose) and MATLAB_class attributes."""
    with h5py.File(path, "w", userblock_size=512) as f:
        g = f.create_group("cjdata")
        g.attrs["MATLAB_class"] = np.bytes_("struct")
        for name, (value, cls) in fields.items():
            ds = g.create_dataset(name, data=np.asarray(value).T)
            ds.attrs["MATLAB_class"] = np.bytes_(cls)
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan 1 00:00:00 2015 HDF5 schema 1.00 ."
    header = header.ljust(116, b" ") + b"\0" * 8 + b"\x00\x02" + b"IM"
    with open(path, "r+b") as fh:
        fh.write(header)


def _brain_slice(n: int, shape=(6, 8)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(n)
    image = rng.integers(0, 4000, shape).astype(np.int16)
    image[0, 0] = 3000 + n  # a 16-bit value that 8 bits could not hold
    mask = np.zeros(shape, dtype=np.uint8)
    mask[1:3, 4:7] = 1  # not symmetric: a transpose would move it
    return image, mask


def _mat_v73(path: Path, n: int, label: int, pid: str) -> tuple[np.ndarray, np.ndarray]:
    image, mask = _brain_slice(n)
    pid_codes = np.array([[ord(c)] for c in pid], dtype=np.uint16).T
    _matlab_v73(
        path,
        {
            "label": (np.array([[float(label)]]), "double"),
            "PID": (pid_codes, "char"),
            "image": (image, "int16"),
            "tumorMask": (mask, "uint8"),
            "tumorBorder": (np.array([[1.0, 4.0, 2.0, 6.0]]), "double"),
        },
    )
    return image, mask


def _mat_v5(path: Path, n: int, label: int, pid: str) -> tuple[np.ndarray, np.ndarray]:
    image, mask = _brain_slice(n)
    scipy.io.savemat(
        path,
        {
            "cjdata": {
                "label": float(label),
                "PID": pid,
                "image": image,
                "tumorMask": mask.astype(bool),
                "tumorBorder": np.array([1.0, 4.0]),
            }
        },
    )
    return image, mask


@pytest.fixture()
def brain_zip(tmp_path: Path) -> tuple[Path, dict[int, tuple[np.ndarray, np.ndarray]]]:
    work = tmp_path / "mats"
    work.mkdir()
    truth = {
        1: _mat_v73(work / "1.mat", 1, 1, "100360"),
        2: _mat_v73(work / "2.mat", 2, 2, "100360"),
        3: _mat_v5(work / "3.mat", 3, 3, "MR040237"),
    }
    inner1 = write_zip(
        tmp_path / "brainTumorDataPublic_1-2.zip",
        {"1.mat": (work / "1.mat").read_bytes(), "2.mat": (work / "2.mat").read_bytes()},
    )
    inner2 = write_zip(
        tmp_path / "brainTumorDataPublic_3-3.zip", {"3.mat": (work / "3.mat").read_bytes()}
    )
    cvind = tmp_path / "cvind.mat"
    with h5py.File(cvind, "w", userblock_size=512) as f:
        f.create_dataset("cvind", data=np.array([[1.0, 1.0, 5.0]]))  # MATLAB's 3x1 column
    outer = write_zip(
        tmp_path / "1512427.zip",
        {
            inner1.name: inner1.read_bytes(),
            inner2.name: inner2.read_bytes(),
            "cvind.mat": cvind.read_bytes(),
            "README.txt": b"brain tumor dataset",
        },
    )
    return outer, truth


def test_brain_mat_files_are_transposed_and_kept_16_bit(brain_zip, tmp_path: Path) -> None:
    outer, truth = brain_zip
    out = brain_figshare.prepare(outer, tmp_path / "brain", progress=False, log=None)
    for n, (image, mask) in truth.items():
        stored = load_array(out / "images" / f"brain_{n:04d}.png")
        assert stored.dtype == np.uint16 and stored.shape == (6, 8)
        assert np.array_equal(stored, image.astype(np.uint16))
        assert np.array_equal(read_mask(out / "masks" / f"brain_{n:04d}.png"), mask > 0)
    rows = {r["stem"]: r for r in read_csv_rows(out / "meta.csv")}
    assert [rows[s]["label"] for s in sorted(rows)] == ["meningioma", "glioma", "pituitary"]
    assert [rows[s]["patient_id"] for s in sorted(rows)] == ["100360", "100360", "MR040237"]
    assert [rows[s]["fold"] for s in sorted(rows)] == ["1", "1", "5"]
    splits = load_split(out / "splits.json")
    assert splits == {"train": ["brain_0001", "brain_0002"], "val": [], "test": ["brain_0003"]}
    done = read_done(out)
    assert done["counts"]["patients"] == 2
    assert any("expected 3064 slices, found 3" in a for a in done["anomalies"])


def test_brain_without_cvind_splits_by_patient(tmp_path: Path) -> None:
    folder = tmp_path / "mats"
    folder.mkdir()
    for n in range(1, 7):
        _mat_v73(folder / f"{n}.mat", n, 1 + n % 3, f"P{(n + 1) // 2}")  # 3 patients, 2 each
    out = brain_figshare.prepare(folder, tmp_path / "brain", progress=False, log=None)
    splits = load_split(out / "splits.json")
    pids = {r["stem"]: r["patient_id"] for r in read_csv_rows(out / "meta.csv")}
    expected = make_split(sorted(pids), seed=0, groups=pids)
    assert splits == expected
    for members in splits.values():
        for stem in members:  # a patient's slices never straddle two splits
            partner = [s for s, p in pids.items() if p == pids[stem]]
            assert set(partner) <= set(members)
    assert any("cvind.mat not found" in a for a in read_done(out)["anomalies"])


def test_brain_inner_zip_escaping_is_refused(tmp_path: Path) -> None:
    inner = write_zip(
        tmp_path / "brainTumorDataPublic_1-766.zip", {"1.mat": b"x", "../../../evil.txt": b"gotcha"}
    )
    outer = write_zip(tmp_path / "outer.zip", {inner.name: inner.read_bytes()})
    with pytest.raises(UnsafeArchiveError):
        brain_figshare.prepare(outer, tmp_path / "a" / "b" / "out", progress=False, log=None)
    assert not list(tmp_path.rglob("evil.txt"))


# --------------------------------------------------------------------------------------------
# COVID-QU-Ex


def test_covidqu_nested_kaggle_zip_uses_lung_masks_and_official_split(tmp_path: Path) -> None:
    base = "COVID-QU-Ex dataset/Lung Segmentation Data/Lung Segmentation Data"
    members: dict[str, bytes] = {}
    truth = {}
    for k, folder in enumerate(["Train", "Val", "Test"]):
        for j, (label, prefix) in enumerate(
            [("COVID-19", "covid"), ("Non-COVID", "non_COVID"), ("Normal", "Normal")]
        ):
            name = f"{prefix} ({k + 1}).png"
            image = np.full(SHAPE, 10 * (3 * k + j), dtype=np.uint8)
            mask = box_mask(SHAPE, (k, k + 3), (j, j + 5))
            members[f"{base}/{folder}/{label}/images/{name}"] = png_bytes(image)
            members[f"{base}/{folder}/{label}/lung masks/{name}"] = png_bytes(
                mask.astype(np.uint8) * 255
            )
            truth[(folder, label)] = (name, image, mask)
    # the infection part of the archive must not be used
    for folder in ["Train", "Val", "Test"]:
        inf = (
            f"COVID-QU-Ex dataset/Infection Segmentation Data/Infection Segmentation Data/{folder}"
        )
        members[f"{inf}/COVID-19/images/decoy.png"] = png_bytes(np.zeros(SHAPE, np.uint8))
        members[f"{inf}/COVID-19/lung masks/decoy.png"] = png_bytes(np.zeros(SHAPE, np.uint8))
    inner = write_zip(tmp_path / "archive.zip", members)
    outer = write_zip(tmp_path / "covidqu.zip", {"archive.zip": inner.read_bytes()})

    out = covidqu.prepare(outer, tmp_path / "cxr", progress=False, log=None)
    rows = {r["stem"]: r for r in read_csv_rows(out / "meta.csv")}
    assert len(rows) == 9 and not any("decoy" in s for s in rows)
    assert rows["covid19_covid_1"]["label"] == "COVID-19"
    assert rows["noncovid_non_covid_2"]["official_split"] == "val"
    stem = "normal_normal_3"
    _, image, mask = truth[("Test", "Normal")]
    assert np.array_equal(load_array(out / "images" / f"{stem}.png"), image)
    assert np.array_equal(read_mask(out / "masks" / f"{stem}.png"), mask)
    splits = load_split(out / "splits.json")
    assert splits["train"] == ["covid19_covid_1", "noncovid_non_covid_1", "normal_normal_1"]
    assert splits["test"] == ["covid19_covid_3", "noncovid_non_covid_3", "normal_normal_3"]
    assert any(
        "expected 7658 images in Train/COVID-19, found 1" in a for a in read_done(out)["anomalies"]
    )


# --------------------------------------------------------------------------------------------
# ROCO


def test_roco_caption_set_drops_short_captions_and_reports_missing_images(tmp_path: Path) -> None:
    data = tmp_path / "roco-dataset" / "data"
    entries = {
        "train": [
            ("ROCO_00001", "CT of the chest showing a right lower lobe mass.", True),
            ("ROCO_00002", "CT scan.", True),  # too short: dropped
            ("ROCO_00003", "MRI of the brain with a ring-enhancing lesion.", False),
        ],
        "validation": [("ROCO_00010", "Ultrasound of the liver with a hypoechoic lesion.", True)],
        "test": [("ROCO_00020", "Frontal chest radiograph with bilateral opacities.", True)],
    }
    images = {}
    for folder, items in entries.items():
        where = data / folder / "radiology"
        (where / "images").mkdir(parents=True)
        caps, links = [], []
        for k, (rid, caption, present) in enumerate(items):
            fname = f"PMC{1000 + k}_{rid.lower()}.jpg"
            caps.append(f"{rid}\t {caption}")
            links.append(f"{rid}\twget ftp://example.org/{fname}\t{fname}")
            if present:
                buf = io.BytesIO()
                Image.fromarray(grey_rgb(k)).save(buf, format="JPEG")
                (where / "images" / fname).write_bytes(buf.getvalue())
                images[rid] = buf.getvalue()
        (where / "captions.txt").write_text("\n".join(caps) + "\n")
        (where / "dlinks.txt").write_text("\n".join(links) + "\n")
    other = data / "train" / "non-radiology"
    (other / "images").mkdir(parents=True)
    (other / "captions.txt").write_text("ROCO_09999\tA photograph of a surgical instrument tray.\n")

    out = roco.prepare(tmp_path / "roco-dataset", tmp_path / "roco", progress=False, log=None)
    rows = read_csv_rows(out / "captions.csv")
    assert [r["roco_id"] for r in rows] == ["ROCO_00001", "ROCO_00010", "ROCO_00020"]
    assert [r["split"] for r in rows] == ["train", "val", "test"]
    assert rows[0]["image"] == "images/ROCO_00001.jpg"
    assert rows[0]["caption"] == "CT of the chest showing a right lower lobe mass."
    assert (out / rows[1]["image"]).read_bytes() == images["ROCO_00010"]
    done = read_done(out)
    assert done["counts"]["dropped_short_captions"] == 1
    assert done["counts"]["missing_images"] == 1
    assert any("ROCO_00003" in a for a in done["anomalies"])
    assert load_split(out / "splits.json")["val"] == ["ROCO_00010"]
    ds = CaptionDataset(out / "captions.csv", split="train")
    assert len(ds) == 1 and ds[0][0].shape == (*SHAPE, 3)


# --------------------------------------------------------------------------------------------
# the scripts


def test_scripts_show_help() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "data_scripts" / "prepare_brain_figshare.py"), "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=900,  # only catches a hang: a loaded machine can take minutes to import
    )
    assert result.returncode == 0
    assert "cvind" in result.stdout and "--download" in result.stdout
    for module in (busi, udiat, covidqu, roco):
        with pytest.raises(SystemExit) as exc:
            module.main(["--help"])
        assert exc.value.code == 0
