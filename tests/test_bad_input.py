"""The corpus of awkward and invalid inputs (issue 15), readers and data sets.

Every case ends in one of three ways: a correct read, a clear error that names the file (and the
line or member) and what to do, or a result with a flag and a warning. The files are written by
the tests themselves; DICOM and NIfTI cases also use the real test files that pydicom and nibabel
ship (only those present offline). Folder runs, the size guard and the command line are in
``test_bad_input_runs.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
from bad_inputs import png_bomb, zip_with_link
from PIL import Image, ImageOps

from medclipsam._utils import (
    UnsafeArchiveError,
    atomic_path,
    checkpoint_error_detail,
    remove_stale_temporaries,
    safe_extract,
)
from medclipsam.data.datasets import CaptionDataset, FolderDataset, PairingError, pair_by_stem
from medclipsam.data.io import ImageReadError, load_array, read_image, read_mask, write_image

ROOT = Path(__file__).resolve().parents[1]


def _testdata(name: str) -> str:
    """A pydicom test file that ships with the package (skip if this pydicom lacks it)."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False) if _takes_download() else get_testdata_file(name)
    if path is None or not Path(path).is_file():
        pytest.skip(f"pydicom test file {name} is not installed here")
    return str(path)


def _takes_download() -> bool:
    import inspect

    from pydicom.data import get_testdata_file

    return "download" in inspect.signature(get_testdata_file).parameters


def _nibabel_file(name: str) -> Path:
    from nibabel.testing import data_path

    path = Path(data_path) / name
    if not path.is_file():
        pytest.skip(f"nibabel test file {name} is not installed here")
    return path


# --------------------------------------------------------------------------------------------
# images


def test_a_decompression_bomb_names_the_file_and_how_to_allow_it(tmp_path, monkeypatch):
    bomb = tmp_path / "huge_scan.png"
    png_bomb(bomb)
    assert bomb.stat().st_size < 200_000
    with pytest.raises(ImageReadError) as err:
        read_image(bomb)
    msg = str(err.value)
    assert str(bomb) in msg and "MEDCLIPSAM_MAX_IMAGE_PIXELS" in msg and "MAX_IMAGE_PIXELS" in msg
    # The environment variable really lifts the limit (on a small file, with a small limit).
    small = tmp_path / "small.png"
    Image.new("L", (100, 100), 9).save(small)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageReadError, match="too large"):
        load_array(small)
    monkeypatch.setenv("MEDCLIPSAM_MAX_IMAGE_PIXELS", "none")
    assert load_array(small).shape == (100, 100)
    monkeypatch.setenv("MEDCLIPSAM_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(ValueError, match="MEDCLIPSAM_MAX_IMAGE_PIXELS"):
        load_array(small)


@pytest.mark.parametrize("code", range(1, 9))
def test_exif_orientation_is_applied_to_images_and_masks_as_viewers_show_them(tmp_path, code):
    rng = np.random.default_rng(code)
    pixels = rng.integers(0, 255, (6, 10, 3), dtype=np.uint8)  # not square: rotations show
    img = Image.fromarray(pixels)
    exif = Image.Exif()
    exif[0x0112] = code
    path = tmp_path / "phone_photo.png"
    img.save(path, exif=exif)
    with Image.open(path) as opened:
        upright = np.asarray(ImageOps.exif_transpose(opened).convert("RGB"))
    assert np.array_equal(read_image(path), upright)
    mask = np.zeros((6, 10), np.uint8)
    mask[1:3, 2:7] = 255
    mpath = tmp_path / "phone_mask.png"
    Image.fromarray(mask).save(mpath, exif=exif)
    with Image.open(mpath) as opened:
        want = np.asarray(ImageOps.exif_transpose(opened)) > 0
    assert np.array_equal(read_mask(mpath), want)


def test_tiff_orientation_tag_is_applied_too(tmp_path):
    import tifffile

    pixels = np.arange(12, dtype=np.uint16).reshape(3, 4)
    path = tmp_path / "rotated.tif"
    tifffile.imwrite(path, pixels, extratags=[(274, "H", 1, 6, True)])  # 6: rotate 90 clockwise
    assert np.array_equal(load_array(path), np.rot90(pixels, -1))


def test_a_broken_link_is_named_as_one(tmp_path):
    link = tmp_path / "scan.png"
    link.symlink_to(tmp_path / "moved_away.png")
    with pytest.raises(ImageReadError, match="broken symbolic link .*moved_away.png"):
        read_image(link)


# --------------------------------------------------------------------------------------------
# masks


def test_an_alpha_only_mask_uses_its_alpha_channel(tmp_path):
    square = np.zeros((20, 30), bool)
    square[5:12, 8:20] = True
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., 3] = square * 255  # colour channels all 0: the drawing is in alpha only
    path = write_image(tmp_path / "alpha_only.png", rgba)
    assert np.array_equal(read_mask(path), square)
    # a colour mask keeps using its colour; a fully opaque empty one stays empty
    rgba[..., 0] = 0
    rgba[..., 3] = 255
    assert not read_mask(write_image(tmp_path / "opaque_empty.png", rgba)).any()
    rgba[..., 1] = np.flipud(square) * 255
    rgba[..., 3] = square * 255
    assert np.array_equal(read_mask(write_image(tmp_path / "colour.png", rgba)), np.flipud(square))


def test_a_soft_float_mask_warns_and_is_thresholded_at_one_half(tmp_path):
    yy, xx = np.mgrid[:64, :64]
    soft = np.exp(-((yy - 32.0) ** 2 + (xx - 32.0) ** 2) / (2 * 8.0**2)).astype(np.float32)
    path = write_image(tmp_path / "probabilities.tif", soft)
    with pytest.warns(UserWarning, match="probabilities.tif: soft mask"):
        m = read_mask(path)
    assert np.array_equal(m, soft >= 0.5)
    assert m.sum() < 0.2 * (soft > 0).sum()  # the old "> 0" rule took nearly every pixel
    hard = write_image(tmp_path / "hard.tif", (soft >= 0.5).astype(np.float32))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.array_equal(read_mask(hard), soft >= 0.5)  # 0/1 floats: no warning
    labels = write_image(tmp_path / "labels.tif", (soft > 0.3).astype(np.float32) * 3)
    assert np.array_equal(read_mask(labels), soft > 0.3)  # float label maps: > 0 as before


# --------------------------------------------------------------------------------------------
# DICOM and NIfTI: the real test files of pydicom and nibabel


def test_palette_colour_dicom_goes_through_its_colour_table():
    import pydicom

    try:
        from pydicom.pixels import apply_color_lut
    except ImportError:  # pydicom 2
        from pydicom.pixel_data_handlers.util import apply_color_lut

    path = _testdata("examples_palette.dcm")
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "PALETTE COLOR"
    rgb = load_array(path)
    assert rgb.dtype == np.uint8 and rgb.shape == (*ds.pixel_array.shape, 3)
    want = np.round(np.asarray(apply_color_lut(ds.pixel_array, ds), np.float64) / 257.0)
    assert np.array_equal(rgb, want.astype(np.uint8))
    assert np.any(rgb[..., 0] != rgb[..., 2])  # colour, not grey indices
    assert np.array_equal(read_image(path), rgb)


COMPRESSED = {  # what Pillow alone cannot decode, and the dicom extra can
    "jpeg_ls_lossless": "MR_small_jpeg_ls_lossless.dcm",
    "jpeg_extended_12bit": "JPGExtended.dcm",
    "jpeg_lossless_sv1": "SC_rgb_jpeg_gdcm.dcm",
}


def _have_dicom_extra() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) for m in ("pylibjpeg", "libjpeg", "openjpeg"))


@pytest.mark.parametrize("name", sorted(COMPRESSED))
def test_compressed_dicom_decodes_with_the_dicom_extra(name):
    if not _have_dicom_extra():
        pytest.skip('the dicom extra is not installed (pip install "medclipsam[dicom]")')
    import pydicom

    path = _testdata(COMPRESSED[name])
    ds = pydicom.dcmread(path)
    stored = ds.pixel_array
    got = load_array(path)
    if stored.ndim == 3:  # colour: kept as stored
        assert np.array_equal(got, stored)
    else:
        slope, intercept = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
        assert np.array_equal(got, stored.astype(np.float32) * slope + intercept)


def test_without_the_decoders_the_error_names_the_dicom_extra(tmp_path):
    # A fresh interpreter in which the decoders cannot be imported (as on a machine without
    # the extra): each file's error names it and the file.
    names = [_testdata(n) for n in COMPRESSED.values()]
    code = textwrap.dedent(f"""
        import sys, warnings
        warnings.simplefilter("ignore")
        for m in ("pylibjpeg", "libjpeg", "openjpeg", "rle", "gdcm", "jpeg_ls"):
            sys.modules[m] = None  # not importable
        from medclipsam.data.io import ImageReadError, load_array
        for path in {names!r}:
            try:
                load_array(path)
                print("READ", path)
            except ImageReadError as e:
                print("ERROR", e)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=900, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(("READ", "ERROR"))]
    assert len(lines) == len(names), proc.stdout + proc.stderr
    for line, path in zip(lines, names):
        assert line.startswith("ERROR") and path in line, line
        assert 'pip install "medclipsam[dicom]"' in line, line
        assert "corrupt" not in line.split("(")[0]


def test_a_dicom_file_without_preamble_and_file_meta_is_read(tmp_path):
    import pydicom

    original = _testdata("CT_small.dcm")
    ds = pydicom.dcmread(original)
    ds.preamble = None
    del ds.file_meta
    bare = tmp_path / "no_preamble.dcm"
    try:
        ds.save_as(bare, enforce_file_format=False)
    except TypeError:  # pydicom 2
        ds.save_as(bare, write_like_original=True)
    assert bare.read_bytes()[128:132] != b"DICM"
    assert np.array_equal(load_array(bare), load_array(original))


@pytest.mark.parametrize("name", ["MR_small_bigendian.dcm", "rtdose_expb_1frame.dcm"])
def test_big_endian_dicom_comes_back_in_native_byte_order(name):
    import torch

    arr = load_array(_testdata(name))
    assert arr.dtype.isnative
    torch.from_numpy(arr)


@pytest.mark.parametrize("name", ["anatomical.nii", "reoriented_anat_moved.nii"])
def test_big_endian_nifti_comes_back_in_native_byte_order(name, tmp_path):
    import nibabel as nib
    import torch

    path = _nibabel_file(name)
    img = nib.load(str(path))
    data = np.asanyarray(img.dataobj)
    assert not data.dtype.isnative  # the file really is big-endian
    arr = load_array(path)
    assert arr.dtype.isnative and arr.dtype == data.dtype.newbyteorder("=")
    assert torch.from_numpy(arr).shape == arr.shape
    little = tmp_path / "little.nii"
    nib.save(nib.Nifti1Image(data.astype(data.dtype.newbyteorder("<")), img.affine), little)
    assert np.array_equal(arr, load_array(little))


def test_a_cifti_file_is_named_not_called_corrupt():
    path = _nibabel_file("row_major.dconn.nii")
    with pytest.raises(ImageReadError) as err:
        load_array(path)
    msg = str(err.value)
    assert str(path) in msg and "CIFTI-2" in msg and "corrupt" not in msg


# --------------------------------------------------------------------------------------------
# folders and caption CSVs


def _folder(root: Path, names: list[str]) -> None:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for n in names:
        Image.new("L", (8, 8), 40).save(root / "images" / f"{n}.png")
        Image.new("L", (8, 8), 255).save(root / "masks" / f"{n}.png")


def test_a_dangling_symlink_appears_in_the_pairing_report(tmp_path):
    _folder(tmp_path, ["a", "b"])
    (tmp_path / "images" / "c.png").symlink_to("/nonexistent/c.png")
    ds = FolderDataset(tmp_path, strict=False)
    assert ds.stems == ["a", "b"]
    assert ds.report["broken_links"] == ["c.png -> /nonexistent/c.png"]
    with pytest.raises(PairingError, match=r"broken symbolic link.*c\.png -> /nonexistent/c\.png"):
        FolderDataset(tmp_path)
    with pytest.raises(PairingError, match="broken symbolic link"):
        pair_by_stem(tmp_path / "images", tmp_path / "masks")
    from medclipsam.metrics import pair_mask_folders

    (tmp_path / "masks" / "d.png").symlink_to("/nonexistent/d.png")
    pairs = pair_mask_folders(tmp_path / "images", tmp_path / "masks", strict=False)
    assert "masks/d.png -> /nonexistent/d.png" in pairs.broken_links
    assert "broken symbolic link" in pairs.problems()


def _captions(tmp_path: Path, text: str | bytes, images=("a.png", "b.png", "c.png")) -> Path:
    for n in images:
        Image.new("L", (4, 4), 10).save(tmp_path / n)
    path = tmp_path / "captions.csv"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def test_a_caption_csv_that_is_not_utf8_names_the_line(tmp_path):
    text = "image,caption\na.png,chest x-ray\nb.png,l\xe9sion du sein\n".encode("latin-1")
    path = _captions(tmp_path, text)
    with pytest.raises(ValueError) as err:
        CaptionDataset(path)
    msg = str(err.value)
    assert f"{path}, line 3" in msg and "UTF-8" in msg and "0xe9" in msg
    path.write_bytes(b"\xef\xbb\xbf" + text.decode("latin-1").encode("utf-8"))  # UTF-8 with BOM
    assert CaptionDataset(path).captions[1] == "l\xe9sion du sein"


def test_empty_captions_are_refused_naming_their_lines_or_dropped_on_request(tmp_path):
    path = _captions(tmp_path, "image,caption\na.png,chest x-ray\nb.png,  \nc.png,\n")
    with pytest.raises(ValueError, match=r"empty caption on line\(s\) 3, 4") as err:
        CaptionDataset(path)
    assert str(path) in str(err.value) and "min_caption_chars" in str(err.value)
    ds = CaptionDataset(path, min_caption_chars=1)
    assert len(ds) == 1 and ds.dropped == 2


def test_an_unclosed_quote_that_swallows_rows_is_detected(tmp_path):
    path = _captions(tmp_path, 'image,caption\na.png,"chest x-ray\nb.png,breast\nc.png,brain\n')
    with pytest.raises(ValueError, match=r"lines 2-4: .*unclosed quote") as err:
        CaptionDataset(path)
    assert str(path) in str(err.value)
    # a quote left open on the last line is caught as well
    path = _captions(tmp_path, 'image,caption\na.png,chest\nb.png,"breast\n')
    with pytest.raises(ValueError, match="line.* 3.*unclosed quote"):
        CaptionDataset(path)


def test_ragged_rows_are_reported_with_their_line(tmp_path):
    path = _captions(tmp_path, "image,caption\na.png,chest x-ray\nb.png,mass, left breast\n")
    with pytest.raises(ValueError, match=r"line 3: 3 field\(s\), the header has 2 .*unquoted comma"):
        CaptionDataset(path)
    path = _captions(tmp_path, "image,caption,split\na.png,chest,train\nb.png,breast\n")
    with pytest.raises(ValueError, match=r"line 3: 2 field\(s\), the header has 3"):
        CaptionDataset(path)


# --------------------------------------------------------------------------------------------
# checkpoints, archives, temporary files


class NotAWeight:
    """A pickled object in a checkpoint: what weights_only loading refuses."""

    def __init__(self) -> None:
        self.payload = "runs code when unpickled"


def test_a_refused_pickle_says_what_to_do_not_to_load_it_anyway(tmp_path):
    import torch

    from medclipsam.models import load_clip, load_sam

    path = tmp_path / "downloaded.pt"
    torch.save({"model": NotAWeight()}, path)
    try:
        torch.load(path, weights_only=True)
    except Exception as e:  # noqa: BLE001 - the raw message, to show what is not repeated
        assert "likely succeed" in str(e) or "weights_only" in str(e)
        assert "Do not load a file you do not trust" in checkpoint_error_detail(e)
    for load in (load_clip, load_sam):
        with pytest.raises(ValueError) as err:
            load(path, device="cpu")
        msg = str(err.value)
        assert str(path) in msg and "refused" in msg and "state_dict" in msg
        assert "likely succeed" not in msg and "Do not load a file you do not trust" in msg


def test_a_zip_with_a_symlink_entry_is_refused_clearly(tmp_path):
    archive = tmp_path / "dataset.zip"
    zip_with_link(archive)
    with pytest.raises(UnsafeArchiveError, match="'data/images' is a symbolic link"):
        safe_extract(archive, tmp_path / "out")
    assert not any((tmp_path / "out").rglob("*"))  # nothing written
    clash = tmp_path / "clash.zip"
    with zipfile.ZipFile(clash, "w") as zf:
        zf.writestr("data/images", b"a file")
        zf.writestr("data/images/b.png", b"png bytes")
    with pytest.raises(UnsafeArchiveError, match="needs 'images' to be a folder"):
        safe_extract(clash, tmp_path / "out2")


def test_stale_temporaries_of_a_killed_write_are_removed(tmp_path):
    # A process killed inside atomic_path leaves its temporary file behind, for real.
    code = textwrap.dedent(f"""
        import os
        from medclipsam._utils import atomic_path
        with atomic_path({str(tmp_path / "checkpoints" / "epoch_0003.pt")!r}) as tmp:
            tmp.write_bytes(b"half a checkpoint")
            os._exit(9)
    """)
    proc = subprocess.run([sys.executable, "-c", code], timeout=900,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 9
    left = list((tmp_path / "checkpoints").iterdir())
    assert len(left) == 1 and ".part" in left[0].name
    keep = tmp_path / "checkpoints" / "epoch_0002.pt"
    keep.write_bytes(b"finished")
    with atomic_path(tmp_path / "checkpoints" / "notes.txt") as tmp:
        tmp.write_text("kept")
    assert remove_stale_temporaries(tmp_path / "checkpoints", tmp_path / "missing") == left
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "epoch_0002.pt", "notes.txt"]
