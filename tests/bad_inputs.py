"""The bad-input corpus (issues 15 and 26): a generator of awkward and invalid inputs, and the
library-level classification of what the package does with each.

Shared by the tests (``test_bad_input.py``, ``test_reliability.py``, ``test_bad_input_corpus.py``)
and the benchmark ``benchmarks/bad_input_corpus.py``, which also runs the corpus through the
command line. Every file is written here (own code) except the real DICOM and NIfTI test files
that pydicom and nibabel ship, which are copied when present offline.

Each case ends in one of these outcomes:

``ok``           a correct read or result;
``clear error``  the project's error type, naming the file, without a raw library message;
``flagged``      a result with a warning naming the file (or a flag);
``unclear``      a message without the file's name, a raw exception type or library advice;
``silent skip``  a file the reader left out without a word;
``wrong``        a read whose values are not what the file holds;
``hang``         no answer within the time limit.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import tarfile
import unicodedata
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
TOY_SAM = ROOT / "tests" / "data" / "toy_sam.pt"

OUTCOMES = ("ok", "clear error", "flagged", "unclear", "silent skip", "wrong", "hang")
FAILING = ("unclear", "silent skip", "wrong", "hang")

LFS_POINTER = (
    "version https://git-lfs.github.com/spec/v1\n"
    "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
    "size 182734\n"
)
HTML_PAGE = (
    "<!DOCTYPE html>\n<html lang=\"en\"><head><title>Sign in</title></head>\n"
    "<body><form action=\"/login\">...</form></body></html>\n"
)
TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
# Phrases of a library's own message that a user should never be shown as the explanation.
RAW_MARKERS = ("Traceback (most recent call last)", "likely succeed", "cannot reshape array",
               "index out of bounds", "object has no attribute", "'NoneType'",
               "codec can't decode", "Unsupported operand", "invalid load key")


@dataclass
class Case:
    """One input of the corpus: ``path`` (a file or folder) in ``group``, and what it is."""

    name: str
    group: str
    path: Path
    what: str
    names: tuple[str, ...] = ()  # file names a message may name instead of path.name
    check: Callable[[Any], str | None] | None = None  # a problem with a correct-looking read

    def mentioned_in(self, text: str) -> bool:
        """Whether ``text`` names this case's file (or one of ``names``), Unicode-normalised."""
        text = unicodedata.normalize("NFC", text)
        return any(unicodedata.normalize("NFC", n) in text for n in (self.path.name, *self.names))


@dataclass
class Outcome:
    """What happened to a case in one channel (library or a CLI command)."""

    case: str
    channel: str
    outcome: str
    detail: str = ""


# --------------------------------------------------------------------------------------------
# writers


def png_bomb(path: Path, side: int = 20000) -> Path:
    """A real 1-bit PNG of side x side pixels (400 million for 20000), about 50 kB on disk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

    comp = zlib.compressobj(9)
    row = b"\0" * (1 + side // 8)
    idat = b"".join(comp.compress(row * 1000) for _ in range(side // 1000)) + comp.flush()
    header = side.to_bytes(4, "big") * 2 + bytes([1, 0, 0, 0, 0])  # 1 bit, grey
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat)
                     + chunk(b"IEND", b""))
    return path


class Payload:
    """A pickled object in a checkpoint: what ``torch.load(weights_only=True)`` refuses."""

    def __init__(self) -> None:
        self.note = "runs code when unpickled"


def pickled_weights(path: Path) -> Path:
    """A checkpoint holding a pickled Python object beside an empty state dict."""
    import torch

    torch.save({"state_dict": {}, "extra": Payload()}, path)
    return path


def clip_folder(folder: Path) -> Path:
    """A model folder with a tiny open_clip config (weights added by the caller)."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP}))
    return folder


def zip_with_link(path: Path) -> Path:
    """A zip whose folder ``data/images`` is a symbolic link to /etc."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("data/a.png", b"png bytes")
        link = zipfile.ZipInfo("data/images")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc")
        zf.writestr("data/images/b.png", b"png bytes")
    return path


def phantom_image(size: int = 64, seed: int = 7) -> np.ndarray:
    """A grey phantom breast ultrasound image (uint8) with a lesion."""
    from medclipsam.data import PhantomDataset

    return PhantomDataset("breast", 1, seed=seed, size=size, split="test", normal_fraction=0.0)[0].image


def _save(path: Path, arr: np.ndarray, **kw: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kw)
    return path


def _tiff(path: Path, arr: np.ndarray, **kw: Any) -> Path:
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, arr, **kw)
    return path


def _equals(want: np.ndarray) -> Callable[[Any], str | None]:
    def check(got: Any) -> str | None:
        if not isinstance(got, np.ndarray) or got.shape != want.shape or not np.array_equal(got, want):
            shape = getattr(got, "shape", None)
            return f"read {shape}, expected {want.shape} with the file's values"
        return None
    return check


def _shape(shape: tuple[int, ...]) -> Callable[[Any], str | None]:
    def check(got: Any) -> str | None:
        return None if getattr(got, "shape", None) == shape else f"read {got.shape}, expected {shape}"
    return check


# --------------------------------------------------------------------------------------------
# the corpus


def write_images(folder: Path, quick: bool = False) -> list[Case]:
    """Image files, all in one folder (one folder run reads them all; stems differ, since a
    folder run refuses a folder where two files share one): fine, awkward and bad."""
    folder.mkdir(parents=True, exist_ok=True)
    cases: list[Case] = []

    def add(name: str, what: str, check: Callable[[Any], str | None] | None = None) -> Path:
        path = folder / name
        cases.append(Case(f"images/{name}", "images", path, what, check=check))
        return path

    ph = phantom_image()
    rgb = np.stack([ph, ph[::-1], ph[:, ::-1]], -1)
    _save(add("ok_grey.png", "grey PNG", _equals(np.repeat(ph[..., None], 3, -1))), ph)
    _save(add("ok_rgb.jpg", "RGB JPEG"), rgb, quality=95)
    _save(add("rgba.png", "RGBA PNG"), np.dstack([rgb, np.full(ph.shape, 200, np.uint8)]))
    _save(add("grey_alpha.png", "grey + alpha PNG"), np.dstack([ph, np.full(ph.shape, 255, np.uint8)]))
    Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE).save(add("palette.png", "palette PNG"))
    pal = Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE)
    pal.info["transparency"] = 0
    pal.save(add("palette_transparent.png", "palette PNG with a transparent index"), transparency=0)
    Image.fromarray(ph > 100).save(add("one_bit.png", "1-bit PNG"))
    _save(add("grey16.png", "16-bit PNG"), (ph.astype(np.uint16) * 257))
    _tiff(add("grey16_tiff.tif", "16-bit TIFF"), ph.astype(np.uint16) * 200)
    _tiff(add("float32.tif", "float TIFF (CT-like values)"), ph.astype(np.float32) * 8 - 1000)
    f = ph.astype(np.float32) / 255
    f[:4, :4] = np.nan
    _tiff(add("float_nan.tif", "float TIFF with NaN pixels"), f)
    _tiff(add("int32.tif", "int32 TIFF"), ph.astype(np.int32) - 100)
    _tiff(add("multipage.tif", "3-page TIFF (first page is read)"), np.stack([ph, ph, ph]))
    _tiff(add("two_channel.tif", "2-channel TIFF"), np.dstack([ph, ph]))
    _tiff(add("five_channel.tif", "5-channel TIFF"), np.dstack([ph] * 5), photometric="minisblack",
          planarconfig="contig")
    Image.fromarray(rgb).convert("CMYK").save(add("cmyk.jpg", "CMYK JPEG"))
    for code in (3, 6, 8):
        exif = Image.Exif()
        exif[0x0112] = code
        want = np.rot90(rgb[:, :48], {3: 2, 6: -1, 8: 1}[code])
        _save(add(f"exif_{code}.jpg", f"JPEG with EXIF orientation {code}", _shape(want.shape)),
              rgb[:, :48], exif=exif, quality=95)
    _tiff(add("tiff_orientation.tif", "TIFF orientation tag 6", _shape((48, 64, 3))),
          ph[:, :48].astype(np.uint16), extratags=[(274, "H", 1, 6, True)])
    _save(add("tiny_1x1.png", "1x1 pixel image"), np.array([[7]], np.uint8))
    _save(add("wide_2x3000.png", "2x3000 pixel image"), np.tile(np.arange(250, dtype=np.uint8), (2, 12)))
    _save(add("constant.png", "constant grey image"), np.full((40, 50), 77, np.uint8))
    png_bomb(add("bomb.png", "decompression bomb header (20000 x 20000 1-bit PNG)"))
    good_png = (folder / "ok_grey.png").read_bytes()
    good_jpg = (folder / "ok_rgb.jpg").read_bytes()
    good_tif = (folder / "grey16_tiff.tif").read_bytes()
    add("truncated_png.png", "PNG cut to a third").write_bytes(good_png[: len(good_png) // 3])
    add("truncated_jpg.jpg", "JPEG cut to a third").write_bytes(good_jpg[: len(good_jpg) // 3])
    add("truncated_tif.tif", "TIFF cut to a third").write_bytes(good_tif[: len(good_tif) // 3])
    add("header_only.png", "PNG signature only").write_bytes(good_png[:8])
    for suffix in (".png", ".jpg", ".tif", ".dcm", ".nii.gz"):
        add(f"empty_{suffix.replace('.', '')}{suffix}", "0-byte file").write_bytes(b"")
    for suffix in (".png", ".jpg", ".tif"):
        add(f"text_{suffix[1:]}{suffix}", "a text file with an image suffix").write_text("this is not an image\n")
    add("random.png", "random bytes as .png").write_bytes(np.random.default_rng(0).bytes(3000))
    add("jpeg_named.png", "a JPEG saved as .png").write_bytes(good_jpg)
    add("png_named.tif", "a PNG saved as .tif").write_bytes(good_png)
    for suffix in (".png", ".tif", ".nii.gz", ".dcm"):
        add(f"lfs_pointer_{suffix.replace('.', '')}{suffix}", "Git LFS pointer").write_text(LFS_POINTER)
    for suffix in (".png", ".jpg"):
        add(f"html_page_{suffix[1:]}{suffix}", "HTML page").write_text(HTML_PAGE)
    Image.fromarray(ph).save(add("scan.gif", "GIF (unsupported format)"))
    add("notes.txt", "a text file").write_text("taken on the old scanner\n")
    add("README", "a file without a suffix (not DICOM)").write_text("read me\n")
    link = add("moved_away.png", "broken symbolic link")
    link.symlink_to(folder.parent / "nowhere" / "moved_away.png")
    nested = add("nested", "a subfolder holding an image")
    _save(nested / "inside.png", ph)
    if os.geteuid() != 0:  # root reads any file
        p = add("no_permission.png", "a file nobody may read")
        p.write_bytes(good_png)
        p.chmod(0)
    if quick:
        keep = {"ok_grey.png", "truncated_png.png", "text_png.png", "lfs_pointer_png.png", "html_page_png.png",
                "scan.gif", "moved_away.png", "float32.tif", "bomb.png", "exif_6.jpg",
                "empty_png.png", "nested"}
        for c in cases:
            if c.path.name not in keep:
                if c.path.is_dir() and not c.path.is_symlink():
                    shutil.rmtree(c.path)
                else:
                    c.path.unlink()
        cases = [c for c in cases if c.path.name in keep]
    return cases


def write_masks(folder: Path) -> list[Case]:
    """Mask files, each in its own folder ``<stem>/pred`` beside a correct ``<stem>/gt`` mask (for
    ``medclipsam evaluate``); all 20x30 unless the case is about the size."""
    cases: list[Case] = []
    square = np.zeros((20, 30), bool)
    square[5:12, 8:20] = True

    def add(name: str, what: str, gt_shape: tuple[int, int] = (20, 30),
            check: Callable[[Any], str | None] | None = None) -> Path:
        stem = name.split(".")[0]
        pred = folder / stem / "pred" / name
        pred.parent.mkdir(parents=True, exist_ok=True)
        gt = np.zeros(gt_shape, np.uint8)
        gt[5:12, 8:20] = 255
        _save(folder / stem / "gt" / f"{stem}.png", gt)
        cases.append(Case(f"masks/{name}", "masks", pred, what, check=check))
        return pred

    _save(add("binary.png", "0/255 mask", check=_equals(square)), square.astype(np.uint8) * 255)
    _save(add("zero_one.png", "0/1 mask", check=_equals(square)), square.astype(np.uint8))
    _save(add("labels.png", "label map 0/1/2", check=_equals(square)), square.astype(np.uint8) * 2)
    _save(add("rgb.png", "colour mask", check=_equals(square)), np.dstack([square * 255] * 3).astype(np.uint8))
    alpha = np.zeros((20, 30, 4), np.uint8)
    alpha[..., 3] = square * 255
    _save(add("alpha_only.png", "mask drawn in the alpha channel only", check=_equals(square)), alpha)
    _save(add("lossy.jpg", "JPEG mask", check=_equals(square)), square.astype(np.uint8) * 255, quality=75)
    yy, xx = np.mgrid[:20, :30]
    soft = np.exp(-((yy - 8.0) ** 2 + (xx - 14.0) ** 2) / 20).astype(np.float32)
    _tiff(add("soft.tif", "soft float mask (probabilities)", check=_equals(soft >= 0.5)), soft)
    _tiff(add("hard_float.tif", "0/1 float mask", check=_equals(square)), square.astype(np.float32))
    _save(add("empty_mask.png", "all-background mask"), np.zeros((20, 30), np.uint8))
    _save(add("mask16.png", "16-bit mask", check=_equals(square)), square.astype(np.uint16) * 65535)
    _save(add("smaller.png", "mask smaller than its ground truth"), np.zeros((10, 30), np.uint8))
    _save(add("transposed.png", "mask with height and width swapped"), np.zeros((30, 20), np.uint8))
    add("truncated_mask.png", "PNG mask cut short").write_bytes(
        (folder / "binary" / "pred" / "binary.png").read_bytes()[:40])
    add("lfs_mask.png", "Git LFS pointer as a mask").write_text(LFS_POINTER)
    return cases


def write_pairs(folder: Path) -> list[Case]:
    """Data-set folders (``images/``, ``masks/`` and a correct ``gt/``) whose pairing is awkward."""
    cases: list[Case] = []
    ph = phantom_image(32)
    m = (ph > 128).astype(np.uint8) * 255

    def dataset(name: str, what: str, images: dict[str, np.ndarray], masks: dict[str, np.ndarray],
                names: tuple[str, ...] = ()) -> None:
        root = folder / name
        for n, a in images.items():
            _save(root / "images" / n, a)
            _save(root / "gt" / (n.rsplit(".", 1)[0] + ".png"), np.zeros(a.shape[:2], np.uint8))
        for n, a in masks.items():
            _save(root / "masks" / n, a)
        (root / "masks").mkdir(parents=True, exist_ok=True)
        cases.append(Case(f"pairs/{name}", "pairs", root, what, names=names))

    dataset("ok", "two images with masks", {"a.png": ph, "b.png": ph}, {"a.png": m, "b_mask.png": m})
    dataset("size_mismatch", "a mask of another size", {"a.png": ph}, {"a.png": m[:, :20]}, ("a.png",))
    nfd, nfc = (unicodedata.normalize(f, "lésion_01") for f in ("NFD", "NFC"))
    dataset("nfc_nfd", "NFD image name with an NFC mask name", {f"{nfd}.png": ph}, {f"{nfc}.png": m})
    dataset("missing_mask", "an image without a mask", {"a.png": ph, "b.png": ph}, {"a.png": m}, ("b",))
    dataset("extra_mask", "a mask without an image", {"a.png": ph}, {"a.png": m, "z.png": m}, ("z",))
    dataset("duplicate_stem", "a.png and a.jpg", {"a.png": ph, "a.jpg": ph}, {"a.png": m}, ("a.jpg",))
    dataset("mask_is_html", "an HTML page saved as the mask", {"a.png": ph}, {}, ("a.png",))
    (folder / "mask_is_html" / "masks" / "a.png").write_text(HTML_PAGE)
    dataset("mask_link", "a mask that is a broken link", {"a.png": ph}, {}, ("a.png",))
    (folder / "mask_link" / "masks" / "a.png").symlink_to("/nonexistent/a.png")
    dataset("gif_image", "a GIF beside a PNG image", {"a.png": ph}, {"a.png": m}, ("scan.gif",))
    Image.fromarray(ph).save(folder / "gif_image" / "images" / "scan.gif")
    return cases


def write_volumes(folder: Path, quick: bool = False) -> list[Case]:
    """DICOM and NIfTI: pydicom's and nibabel's own test files (as installed) and files
    written here (no preamble, no pixel data, 2-D to 5-D arrays)."""
    import nibabel as nib
    import pydicom
    from pydicom.data import get_testdata_files
    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid

    cases: list[Case] = []
    dicom, nifti = folder / "dicom", folder / "nifti"
    dicom.mkdir(parents=True, exist_ok=True)
    nifti.mkdir(parents=True, exist_ok=True)
    shipped = sorted(p for p in get_testdata_files() if Path(p).is_file())
    if quick:
        shipped = [p for p in shipped if Path(p).name in (
            "CT_small.dcm", "MR_small_bigendian.dcm", "examples_palette.dcm", "rtstruct.dcm",
            "JPGExtended.dcm", "emri_small.dcm")]
    for i, p in enumerate(shipped):
        name = f"pd{i:03d}_{Path(p).name}"
        shutil.copyfile(p, dicom / name)
        cases.append(Case(f"dicom/{name}", "dicom", dicom / name, f"pydicom test file {Path(p).name}"))
    ct = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    ct.preamble = None
    del ct.file_meta
    ct.save_as(dicom / "no_preamble.dcm", enforce_file_format=False)
    cases.append(Case("dicom/no_preamble.dcm", "dicom", dicom / "no_preamble.dcm",
                      "CT without preamble and file meta"))
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    ds.SOPInstanceUID, ds.StudyInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientID = "SR", "anon"
    ds.save_as(dicom / "report_no_pixels.dcm", implicit_vr=True, little_endian=True)
    cases.append(Case("dicom/report_no_pixels.dcm", "dicom", dicom / "report_no_pixels.dcm",
                      "preamble-less DICOM without pixel data"))
    raw = (dicom / "no_preamble.dcm").read_bytes()
    (dicom / "truncated.dcm").write_bytes(raw[: len(raw) // 2])
    cases.append(Case("dicom/truncated.dcm", "dicom", dicom / "truncated.dcm", "DICOM cut in half"))
    (dicom / "junk.dcm").write_bytes(bytes(range(256)) * 4)
    cases.append(Case("dicom/junk.dcm", "dicom", dicom / "junk.dcm", "bytes 0..255 as .dcm"))

    from nibabel.testing import data_path

    shipped_nii = sorted(p for p in Path(data_path).iterdir() if p.is_file())
    if quick:
        shipped_nii = [p for p in shipped_nii if p.name in (
            "anatomical.nii", "example4d.nii.gz", "row_major.dconn.nii", "tiny.mnc")]
    for i, p in enumerate(shipped_nii):
        name = f"nb{i:03d}_{p.name}"
        shutil.copyfile(p, nifti / name)
        cases.append(Case(f"nifti/{name}", "nifti", nifti / name, f"nibabel test file {p.name}"))
    arrays = {
        "vol2d.nii.gz": (np.arange(30, dtype=np.float32).reshape(5, 6), (6, 5, 3)),
        "vol3d.nii.gz": (np.random.default_rng(1).random((16, 12, 5), np.float32), (12, 16, 3)),
        "vol4d.nii.gz": (np.random.default_rng(2).random((16, 12, 5, 3), np.float32), (12, 16, 3)),
        "vol5d.nii.gz": (np.zeros((4, 5, 3, 1, 6), np.float32), None),
        "vol5d_singleton.nii.gz": (np.ones((4, 5, 3, 1, 1), np.float32), (5, 4, 3)),
        "int16.nii": (np.arange(16 * 12 * 3, dtype=np.int16).reshape(16, 12, 3), (12, 16, 3)),
        "all_nan.nii.gz": (np.full((8, 8, 3), np.nan, np.float32), (8, 8, 3)),
    }
    for name, (arr, shape) in arrays.items():
        nib.save(nib.Nifti1Image(arr, np.eye(4)), str(nifti / name))
        cases.append(Case(f"nifti/{name}", "nifti", nifti / name, f"{arr.ndim}-D NIfTI {arr.shape}",
                          check=_shape(shape) if shape else None))
    gz = (nifti / "vol3d.nii.gz").read_bytes()
    (nifti / "truncated.nii.gz").write_bytes(gz[: len(gz) // 2])
    cases.append(Case("nifti/truncated.nii.gz", "nifti", nifti / "truncated.nii.gz", "NIfTI cut in half"))
    (nifti / "not_gzip.nii.gz").write_bytes(b"\x00" * 400)
    cases.append(Case("nifti/not_gzip.nii.gz", "nifti", nifti / "not_gzip.nii.gz", "zeros as .nii.gz"))
    return cases


def write_captions(folder: Path) -> list[Case]:
    """Caption CSVs beside three small images (and one fake one)."""
    folder.mkdir(parents=True, exist_ok=True)
    ph = phantom_image(32)
    for n in ("a.png", "b.png", "c.png"):
        _save(folder / n, ph)
    (folder / "fake.png").write_text("not an image\n")
    texts: dict[str, tuple[str | bytes, str]] = {
        "ok.csv": ("image,caption\na.png,breast ultrasound with a mass\nb.png,a benign cyst\n"
                   "c.png,normal tissue\n", "three rows"),
        "ok_split.csv": ("image,caption,split\na.png,a mass,train\nb.png,a cyst,train\n"
                         "c.png,normal,val\n", "a split column"),
        "bom_crlf.csv": ("\ufeffimage,caption\r\na.png,a mass\r\nb.png,a cyst\r\n", "UTF-8 BOM, CRLF"),
        "multiline.csv": ('image,caption\na.png,"a hypoechoic mass,\nirregular margins"\n'
                          'b.png,"the ""lesion"", round"\n', "RFC 4180 caption over two lines"),
        "latin1.csv": ("image,caption\na.png,chest\nb.png,l\xe9sion du sein\n".encode("latin-1"),
                       "Latin-1 encoded"),
        "ragged.csv": ("image,caption\na.png,chest\nb.png,mass, left breast\n", "a row with 3 fields"),
        "unclosed_quote.csv": ('image,caption\na.png,"chest\nb.png,breast\nc.png,brain\n',
                               "an unclosed quote"),
        "missing_image.csv": ("image,caption\na.png,chest\ngone.png,a lung\n", "an image not on disk"),
        "empty_caption.csv": ("image,caption\na.png,chest\nb.png,  \n", "an empty caption"),
        "no_header.csv": ("a.png,chest\nb.png,breast\n", "no header row"),
        "wrong_header.csv": ("file,text\na.png,chest\n", "header without image/caption"),
        "header_only.csv": ("image,caption\n", "a header and no rows"),
        "empty.csv": ("", "0-byte CSV"),
        "bad_image.csv": ("image,caption\na.png,a mass\nfake.png,a cyst\n", "a row naming a fake PNG"),
        "many_problems.csv": ("image,caption\na.png,chest\nb.png,x, y\nc.png,\n,no image\n",
                              "several problems"),
        "utf16.csv": ("image,caption\na.png,chest\n".encode("utf-16"), "UTF-16 encoded"),
    }
    cases = []
    for name, (text, what) in texts.items():
        path = folder / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
        names = ("fake.png",) if name == "bad_image.csv" else ()
        cases.append(Case(f"captions/{name}", "captions", path, what, names=names))
    return cases


def write_checkpoints(folder: Path) -> list[Case]:
    """Weight files for ``--sam PATH``, ``--sam litemedsam --sam-checkpoint PATH``, ``--clip
    PATH`` and CLIP model folders (``local-dir:DIR``): safe, pickled, damaged and foreign."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    cases: list[Case] = []
    toy = TOY_SAM.read_bytes()

    def bad_files(group: str, suffix: str) -> None:
        d = folder / group
        d.mkdir(exist_ok=True)

        def add(name: str, what: str) -> Path:
            cases.append(Case(f"{group}/{name}", group, d / name, what))
            return d / name

        pickled_weights(add(f"pickled{suffix}", "a pickle of Python objects"))
        add(f"truncated{suffix}", "a real checkpoint cut in half").write_bytes(toy[: len(toy) // 2])
        add(f"random{suffix}", "random bytes").write_bytes(np.random.default_rng(3).bytes(5000))
        add(f"empty_{suffix.replace('.', '')}{suffix}", "0-byte file").write_bytes(b"")
        add(f"lfs{suffix}", "Git LFS pointer").write_text(LFS_POINTER)
        add(f"html{suffix}", "HTML page").write_text(HTML_PAGE)
        torch.save({"foo.weight": torch.zeros(3)}, add(f"foreign{suffix}", "tensors of another model"))
        torch.save([torch.zeros(3)], add(f"list{suffix}", "a list of tensors, not a state dict"))
        torch.save({"model": {"epoch": 3}}, add(f"no_tensors{suffix}", "a dict without tensors"))
        (d / f"folder{suffix}").mkdir(exist_ok=True)
        add(f"folder{suffix}", "an empty folder named like a file")

    bad_files("sam", ".pth")
    shutil.copyfile(TOY_SAM, folder / "sam" / "toy_sam.pt")
    cases.append(Case("sam/toy_sam.pt", "sam", folder / "sam" / "toy_sam.pt", "a valid small SAM"))
    bad_files("litemedsam", ".pth")
    bad_files("clip", ".pt")
    d = folder / "clip_dir"

    def add_dir(name: str, what: str, names: tuple[str, ...] = ()) -> Path:
        cases.append(Case(f"clip_dir/{name}", "clip_dir", d / name, what, names=names))
        return d / name

    pickled_weights(clip_folder(add_dir("pickled_bin", "pickled open_clip_pytorch_model.bin"))
                    / "open_clip_pytorch_model.bin")
    broken = clip_folder(add_dir("broken_safetensors", "damaged .safetensors"))
    (broken / "open_clip_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    clip_folder(add_dir("no_weights", "config without a weight file"))
    add_dir("empty_dir", "an empty folder").mkdir(parents=True)
    bad_json = add_dir("bad_config", "open_clip_config.json is not JSON")
    bad_json.mkdir(parents=True)
    (bad_json / "open_clip_config.json").write_text("{model_cfg: oops")
    (bad_json / "open_clip_pytorch_model.bin").write_bytes(b"")
    lfs = clip_folder(add_dir("lfs_bin", "weight file is a Git LFS pointer"))
    (lfs / "open_clip_pytorch_model.bin").write_text(LFS_POINTER)
    return cases


def write_archives(folder: Path) -> list[Case]:
    """Archives for ``medclipsam prepare``: path traversal, links, damage, another data set."""
    import io

    folder.mkdir(parents=True, exist_ok=True)
    cases: list[Case] = []

    def add(name: str, what: str) -> Path:
        cases.append(Case(f"archives/{name}", "archives", folder / name, what))
        return folder / name

    with zipfile.ZipFile(add("zip_slip.zip", "member ../../evil.png"), "w") as zf:
        zf.writestr("Dataset_BUSI_with_GT/benign/../../../evil.png", b"x")
    with zipfile.ZipFile(add("zip_absolute.zip", "member /tmp/evil.png"), "w") as zf:
        zf.writestr("/tmp/medclipsam_evil.png", b"x")
    zip_with_link(add("zip_symlink.zip", "a member that is a symbolic link"))
    with tarfile.open(add("tar_slip.tar", "tar member ../evil.png"), "w") as tf:
        info = tarfile.TarInfo("../evil.png")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))
    with tarfile.open(add("tar_link.tar", "tar symlink to /etc"), "w") as tf:
        info = tarfile.TarInfo("data/etc")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc"
        tf.addfile(info)
    with zipfile.ZipFile(folder / "good.zip", "w") as zf:
        zf.writestr("other/readme.txt", "a different data set\n" * 50)
    raw = (folder / "good.zip").read_bytes()
    add("truncated.zip", "zip cut in half").write_bytes(raw[: len(raw) // 2])
    add("html.zip", "HTML page saved as .zip").write_text(HTML_PAGE)
    add("empty.zip", "0-byte .zip").write_bytes(b"")
    shutil.move(folder / "good.zip", add("other_dataset.zip", "a valid zip of another data set"))
    return cases


def write_corpus(out: str | os.PathLike, *, quick: bool = False) -> list[Case]:
    """Write the whole corpus under ``out`` (emptied first) and return its cases."""
    out = Path(out)
    if out.exists():
        for p in out.rglob("*"):  # a no-permission file blocks rmtree's reads, not its unlink
            if not p.is_symlink():
                p.chmod(0o755 if p.is_dir() else 0o644)
        shutil.rmtree(out)
    out.mkdir(parents=True)
    cases = write_images(out / "images", quick)
    cases += write_masks(out / "masks")
    cases += write_pairs(out / "pairs")
    cases += write_volumes(out, quick)
    cases += write_captions(out / "captions")
    cases += write_checkpoints(out / "checkpoints")
    cases += write_archives(out / "archives")
    return cases


# --------------------------------------------------------------------------------------------
# the library, case by case


class _Timeout(Exception):
    pass


@contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """Raise :class:`_Timeout` after ``seconds`` (main thread, Unix; elsewhere no limit)."""
    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def ring(signum: int, frame: Any) -> None:  # noqa: ARG001
        raise _Timeout

    old = signal.signal(signal.SIGALRM, ring)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def is_project_error(exc: BaseException) -> bool:
    """Whether ``exc`` is what the package raises for a user's input: its own error types, or
    ValueError/OSError/ImportError (what the command line prints as one line)."""
    if isinstance(exc, (ValueError, OSError, ImportError)):
        return True
    return any(k.__module__.startswith("medclipsam") and k.__name__.endswith("Error")
               for k in type(exc).__mro__)


def judge_error(case: Case, exc: BaseException) -> tuple[str, str]:
    """``clear error`` or ``unclear`` for an exception raised on ``case``."""
    msg = f"{type(exc).__name__}: {exc}"
    if not is_project_error(exc):
        return "unclear", f"raw {msg}"
    if not case.mentioned_in(str(exc)):
        return "unclear", f"does not name the file: {msg}"
    raw = [m for m in RAW_MARKERS if m in str(exc)]
    if raw:
        return "unclear", f"library wording {raw}: {msg}"
    return "clear error", msg


def judge_value(case: Case, value: Any, caught: list[warnings.WarningMessage]) -> tuple[str, str]:
    """``ok``, ``flagged``, ``wrong`` or ``unclear`` for a read that returned ``value``."""
    if case.check is not None:
        problem = case.check(value)
        if problem:
            return "wrong", problem
    shown = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    if shown:
        named = [s for s in shown if case.mentioned_in(s)]
        if not named:
            return "unclear", f"warning without the file's name: {shown[0]}"
        return "flagged", named[0]
    return "ok", ""


def _folder_outcome(case: Case) -> tuple[str, str]:
    """FolderDataset over a data-set folder: every file is an item, reported, or an error."""
    from medclipsam.data.datasets import FolderDataset

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = FolderDataset(case.path, strict=False)
        for i in range(len(ds)):
            ds[i]
    files = [p.name for p in (case.path / "images").iterdir()]
    used = {unicodedata.normalize("NFC", Path(p).name) for _, p, _ in ds._items}
    left = [f for f in files if unicodedata.normalize("NFC", f) not in used]
    said = " ".join(str(w.message) for w in caught)
    silent = [f for f in left if f not in said]
    if silent:
        return "silent skip", f"left out without a warning: {', '.join(silent)}"
    if said:
        return "flagged", said[:200]
    return "ok", ""


def library_call(case: Case) -> Callable[[], Any]:
    """The library call that reads ``case``."""
    from medclipsam._utils import safe_extract
    from medclipsam.data.datasets import CaptionDataset
    from medclipsam.data.io import load_picture, read_image, read_mask

    p = case.path
    if case.group in ("images", "dicom", "nifti"):
        return lambda: (read_image(p), load_picture(p, "auto"))[0]
    if case.group == "masks":
        return lambda: read_mask(p)
    if case.group == "captions":
        def captions() -> Any:
            CaptionDataset.has_split_column(p)
            ds = CaptionDataset(p)
            return [ds[i] for i in range(len(ds))]
        return captions
    if case.group in ("sam", "litemedsam", "clip", "clip_dir"):
        from medclipsam.models import load_clip, load_sam

        return {
            "sam": lambda: load_sam(p, device="cpu", download=False),
            "litemedsam": lambda: load_sam("litemedsam", checkpoint=p, device="cpu"),
            "clip": lambda: load_clip(p, device="cpu"),
            "clip_dir": lambda: load_clip(f"local-dir:{p}", device="cpu"),
        }[case.group]
    if case.group == "archives":
        import tempfile

        def extract() -> Any:
            with tempfile.TemporaryDirectory() as tmp:
                return safe_extract(p, Path(tmp) / "out")
        return extract
    raise ValueError(f"no library call for group {case.group!r}")


def classify_library(case: Case, timeout: int = 120) -> Outcome:
    """Run ``case`` through its library reader(s) and classify the outcome."""
    try:
        with time_limit(timeout):
            if case.group == "pairs":
                outcome, detail = _folder_outcome(case)
            else:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    value = library_call(case)()
                outcome, detail = judge_value(case, value if case.group in (
                    "images", "masks", "dicom", "nifti") else None, caught)
    except _Timeout:
        outcome, detail = "hang", f"no answer in {timeout} s"
    except Exception as exc:  # noqa: BLE001 - every exception is classified, none escapes
        outcome, detail = judge_error(case, exc)
    return Outcome(case.name, "library", outcome, " ".join(detail.split())[:300])
