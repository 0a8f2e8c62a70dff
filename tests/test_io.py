"""Image and mask readers/writers on real files: PNG/JPEG/BMP/TIFF, DICOM, NIfTI, bad files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medclipsam.data.io import (
    SUPPORTED_SUFFIXES,
    ImageReadError,
    file_stem,
    load_array,
    read_image,
    read_mask,
    write_image,
    write_mask,
)

RNG = np.random.default_rng(1234)


def _smooth_rgb(h: int = 48, w: int = 64) -> np.ndarray:
    """A smooth colour picture, so that JPEG reproduces it closely."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack(
        [xx * 255 // (w - 1), yy * 255 // (h - 1), (xx + yy) * 255 // (h + w - 2)], -1
    ).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# raster formats


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif", ".tiff"])
@pytest.mark.parametrize("channels", [0, 3])
def test_lossless_8bit_round_trip(tmp_path, suffix, channels):
    shape = (20, 30) if channels == 0 else (20, 30, channels)
    img = RNG.integers(0, 256, shape, dtype=np.uint8)
    path = write_image(tmp_path / f"x{suffix}", img)
    back = load_array(path)
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, img)
    # 8-bit pictures are kept as they are by read_image.
    expected_rgb = img if channels else np.repeat(img[:, :, None], 3, axis=2)
    np.testing.assert_array_equal(read_image(path), expected_rgb)


@pytest.mark.parametrize("suffix", [".jpg", ".jpeg"])
def test_jpeg_round_trip_is_close(tmp_path, suffix):
    img = _smooth_rgb()
    path = write_image(tmp_path / f"x{suffix}", img)
    back = read_image(path)
    assert back.shape == img.shape and back.dtype == np.uint8
    assert np.abs(back.astype(int) - img.astype(int)).mean() < 3


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_grey_round_trip_and_percentile_rescaling(tmp_path, suffix):
    img = np.arange(10000, dtype=np.uint16).reshape(100, 100)
    path = write_image(tmp_path / f"x16{suffix}", img)
    back = load_array(path)
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, img)

    # Independent computation of the documented rule: linear map of the 0.5 / 99.5 percentiles
    # (linear interpolation over the sorted values 0..9999) onto 0..255, clipped and rounded.
    lo, hi = 0.005 * 9999, 0.995 * 9999
    expected = np.empty(img.shape, np.uint8)
    for idx, v in np.ndenumerate(img):
        t = min(max((float(v) - lo) / (hi - lo), 0.0), 1.0)
        expected[idx] = int(np.round(t * 255))
    grey = read_image(path, mode="grey")
    np.testing.assert_array_equal(grey, expected)
    assert grey[0, 0] == 0 and grey[-1, -1] == 255
    np.testing.assert_array_equal(read_image(path), np.repeat(expected[:, :, None], 3, axis=2))


def test_explicit_window(tmp_path):
    img = np.array([[0, 4000, 4500, 5000], [6000, 9000, 65535, 5500]], np.uint16)
    path = write_image(tmp_path / "w.png", img)
    out = read_image(path, mode="grey", window=(5000, 2000))
    # lo = 4000, width 2000: (v - 4000) / 2000 * 255
    np.testing.assert_array_equal(out, [[0, 0, 64, 128], [255, 255, 255, 191]])


def test_16bit_rgb_tiff_rescaled_with_one_range(tmp_path):
    img = np.zeros((10, 10, 3), np.uint16)
    img[..., 0] = 60000
    img[..., 1] = 30000
    img[0, 0] = 0  # a few dark pixels set the lower end
    img[0, 1] = 0
    path = write_image(tmp_path / "c16.tif", img)
    np.testing.assert_array_equal(load_array(path), img)
    out = read_image(path)
    # All channels share one range, so red stays brighter than green and blue stays dark.
    assert out[5, 5, 0] == 255 and 120 <= out[5, 5, 1] <= 135 and out[5, 5, 2] == 0


def test_16bit_png_colour_refused_with_advice(tmp_path):
    with pytest.raises(ValueError, match=r"\.tif"):
        write_image(tmp_path / "c16.png", np.zeros((4, 4, 3), np.uint16))
    assert list(tmp_path.iterdir()) == []


def test_float_tiff_is_rescaled(tmp_path):
    img = np.linspace(-1.0, 1.0, 200 * 5, dtype=np.float32).reshape(200, 5)
    path = write_image(tmp_path / "f.tif", img)
    back = load_array(path)
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, img)
    out = read_image(path, mode="grey")
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    assert np.all(np.diff(out.astype(int).ravel()) >= 0)  # order kept


def test_rgba_composited_on_black(tmp_path):
    img = np.zeros((2, 2, 4), np.uint8)
    img[0, 0] = (200, 100, 50, 255)
    img[0, 1] = (200, 100, 50, 128)
    img[1, 0] = (200, 100, 50, 0)
    path = write_image(tmp_path / "a.png", img)
    np.testing.assert_array_equal(load_array(path), img)  # native keeps alpha
    out = read_image(path)
    np.testing.assert_array_equal(out[0, 0], (200, 100, 50))
    np.testing.assert_array_equal(out[0, 1], (100, 50, 25))  # 200 * 128 / 255 = 100.4 ...
    np.testing.assert_array_equal(out[1, 0], (0, 0, 0))


def test_palette_image_converted(tmp_path):
    idx = np.array([[0, 1], [2, 1]], np.uint8)
    pal = Image.fromarray(idx, mode="P")
    pal.putpalette([0, 0, 0, 255, 0, 0, 10, 20, 30] + [0] * (256 * 3 - 9))
    path = tmp_path / "p.png"
    pal.save(path)
    out = read_image(path)
    np.testing.assert_array_equal(out[0, 1], (255, 0, 0))
    np.testing.assert_array_equal(out[1, 0], (10, 20, 30))
    np.testing.assert_array_equal(out[0, 0], (0, 0, 0))
    np.testing.assert_array_equal(read_mask(path), [[False, True], [True, True]])


def test_grey_and_rgb_conversions(tmp_path):
    rgb = RNG.integers(0, 256, (8, 9, 3), dtype=np.uint8)
    path = write_image(tmp_path / "rgb.png", rgb)
    grey = read_image(path, mode="grey")
    r, g, b = (rgb[..., i].astype(float) for i in range(3))
    np.testing.assert_array_equal(grey, np.round(0.299 * r + 0.587 * g + 0.114 * b))
    with pytest.raises(ValueError, match="mode"):
        read_image(path, mode="hsv")


def test_multipage_tiff_frames(tmp_path):
    import tifffile

    stack = np.stack([np.full((6, 7), i * 100, np.uint16) for i in range(3)])
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, stack, photometric="minisblack")
    for i in range(3):
        np.testing.assert_array_equal(load_array(path, frame=i), stack[i])
    with pytest.raises(ImageReadError, match="stack.tif.*frame 3 out of range"):
        load_array(path, frame=3)


def test_file_stem_handles_double_suffix():
    assert file_stem("a/b/case_01.nii.gz") == "case_01"
    assert file_stem("x.y.PNG") == "x.y"
    assert file_stem("1.2.840.10008") == "1.2.840.10008"  # extension-less DICOM style names
    assert ".nii.gz" in SUPPORTED_SUFFIXES and ".dcm" in SUPPORTED_SUFFIXES


# --------------------------------------------------------------------------------------------
# DICOM


def _write_dicom(
    path,
    pixels,
    *,
    photometric="MONOCHROME2",
    intercept=None,
    slope=None,
    window=None,
    bits_stored=16,
    with_pixels=True,
    preamble=True,
):
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.PatientName = "Phantom^Test"
    if with_pixels and photometric == "RGB":
        ds.Rows, ds.Columns = pixels.shape[:2]
        ds.SamplesPerPixel = 3
        ds.PlanarConfiguration = 0
        ds.PhotometricInterpretation = "RGB"
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelRepresentation = 0
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    elif with_pixels:
        frames = pixels.shape[0] if pixels.ndim == 3 else 1
        ds.Rows, ds.Columns = pixels.shape[-2:]
        if frames > 1:
            ds.NumberOfFrames = frames
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated = 16
        ds.BitsStored = bits_stored
        ds.HighBit = bits_stored - 1
        ds.PixelRepresentation = 1 if pixels.dtype == np.int16 else 0
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    if intercept is not None:
        ds.RescaleIntercept = str(intercept)
        ds.RescaleSlope = str(slope if slope is not None else 1)
    if window is not None:
        ds.WindowCenter = str(window[0])
        ds.WindowWidth = str(window[1])
    ds.preamble = b"\0" * 128
    try:  # pydicom >= 3
        pydicom.dcmwrite(path, ds, enforce_file_format=preamble)
    except TypeError:  # pydicom 2.x
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(path, write_like_original=not preamble)
    return path


def test_dicom_ct_hounsfield_and_window_tags(tmp_path):
    stored = np.array(
        [[0, 864, 1024], [1064, 1264, 3000]], np.int16
    )  # HU: -1024 -160 0 40 240 1976
    path = _write_dicom(tmp_path / "ct.dcm", stored, intercept=-1024, window=(40, 400))
    hu = load_array(path)
    assert hu.dtype == np.float32
    np.testing.assert_array_equal(hu, stored.astype(np.float32) - 1024)
    # Window tags (40, 400): -160 HU -> 0, 40 HU -> 128 (127.5 rounded), 240 HU -> 255.
    out = read_image(path, mode="grey")
    np.testing.assert_array_equal(out, [[0, 0, 102], [128, 255, 255]])
    # An explicit window wins over the tags: (0, 2048) maps -1024..1024 HU.
    wide = read_image(path, mode="grey", window=(0, 2048))
    np.testing.assert_array_equal(wide, np.round(np.clip((hu + 1024) / 2048, 0, 1) * 255))


def test_dicom_slope_and_percentile_fallback(tmp_path):
    stored = np.arange(100, dtype=np.uint16).reshape(10, 10)
    path = _write_dicom(tmp_path / "s.dcm", stored, intercept=5, slope=0.5)
    np.testing.assert_allclose(load_array(path), stored * 0.5 + 5)
    out = read_image(path, mode="grey")  # no window tags: percentile range
    assert out[0, 0] == 0 and out[-1, -1] == 255


def test_dicom_without_suffix_detected_by_preamble(tmp_path):
    stored = np.full((4, 5), 1100, np.int16)
    path = _write_dicom(tmp_path / "IM000001", stored, intercept=-1024)
    np.testing.assert_array_equal(load_array(path), np.full((4, 5), 76.0, np.float32))


def test_dicom_monochrome1_inverted(tmp_path):
    stored = np.array([[0, 1000], [3000, 4095]], np.uint16)
    m1 = _write_dicom(tmp_path / "m1.dcm", stored, photometric="MONOCHROME1", bits_stored=12)
    m2 = _write_dicom(tmp_path / "m2.dcm", stored, photometric="MONOCHROME2", bits_stored=12)
    np.testing.assert_array_equal(load_array(m1), 4095.0 - stored)
    a, b = read_image(m1, mode="grey").astype(int), read_image(m2, mode="grey").astype(int)
    assert np.abs(a - (255 - b)).max() <= 1
    assert a[0, 0] == 255 and a[1, 1] == 0  # stored 0 is white in MONOCHROME1
    # Window tags refer to the stored (pre-inversion) scale and still work.
    w = _write_dicom(
        tmp_path / "w.dcm", stored, photometric="MONOCHROME1", bits_stored=12, window=(2000, 2000)
    )
    np.testing.assert_array_equal(read_image(w, mode="grey"), [[255, 255], [0, 0]])


def test_dicom_multiframe(tmp_path):
    frames = np.stack([np.full((3, 4), 10 * i, np.uint16) for i in range(3)])
    path = _write_dicom(tmp_path / "mf.dcm", frames)
    np.testing.assert_array_equal(load_array(path, frame=2), np.full((3, 4), 20.0))
    with pytest.raises(ImageReadError, match="mf.dcm.*frame 5"):
        load_array(path, frame=5)


def test_dicom_colour_kept(tmp_path):
    rgb = _smooth_rgb(6, 8)
    path = _write_dicom(tmp_path / "us.dcm", rgb, photometric="RGB")
    np.testing.assert_array_equal(load_array(path), rgb)
    np.testing.assert_array_equal(read_image(path), rgb)  # 8-bit colour is not stretched


def test_dicom_without_pixels(tmp_path):
    path = _write_dicom(tmp_path / "report.dcm", None, with_pixels=False)
    with pytest.raises(ImageReadError, match="report.dcm.*no pixel data"):
        read_image(path)


# --------------------------------------------------------------------------------------------
# NIfTI


def _volume() -> np.ndarray:
    return np.arange(5 * 6 * 7, dtype=np.int16).reshape(5, 6, 7)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_slices_along_each_axis(tmp_path, suffix):
    import nibabel as nib

    vol = _volume()
    path = tmp_path / f"vol{suffix}"
    nib.save(nib.Nifti1Image(vol, np.eye(4)), path)
    # Axial (axis 2): rows run anterior (top) -> posterior, columns left -> right.
    s = load_array(path, slice_index=3)
    assert s.dtype == np.int16 and s.shape == (6, 5)
    for r in range(6):
        for c in range(5):
            assert s[r, c] == vol[c, 5 - r, 3]
    for axis in (0, 1, 2):
        for k in range(vol.shape[axis]):
            expected = np.flipud(np.take(vol, k, axis=axis).T)
            np.testing.assert_array_equal(load_array(path, axis=axis, slice_index=k), expected)
    # default: the middle slice
    np.testing.assert_array_equal(load_array(path, axis=1), np.flipud(vol[:, 3, :].T))
    assert read_image(path).shape == (6, 5, 3)


def test_nifti_reoriented_to_ras(tmp_path):
    import nibabel as nib

    vol = _volume().astype(np.float32)
    ras = tmp_path / "ras.nii"
    las = tmp_path / "las.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.eye(4)), ras)
    # Same anatomy stored with the first axis flipped (x runs right -> left).
    affine = np.diag([-1.0, 1.0, 1.0, 1.0])
    affine[0, 3] = vol.shape[0] - 1
    nib.save(nib.Nifti1Image(vol[::-1].copy(), affine), las)
    for axis in (0, 1, 2):
        np.testing.assert_array_equal(
            load_array(las, axis=axis, slice_index=2), load_array(ras, axis=axis, slice_index=2)
        )


def test_nifti_4d_frame_and_mask(tmp_path):
    import nibabel as nib

    vol = np.zeros((4, 4, 3, 2), np.uint8)
    vol[1:3, 1:3, 1, 1] = 2  # a label only in volume 1
    path = tmp_path / "lab.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.eye(4)), path)
    assert not read_mask(path, frame=0).any()
    assert read_mask(path, frame=1).sum() == 4
    with pytest.raises(ImageReadError, match="lab.nii.gz.*frame 2"):
        read_mask(path, frame=2)


def test_nifti_slice_out_of_range(tmp_path):
    import nibabel as nib

    path = tmp_path / "v.nii"
    nib.save(nib.Nifti1Image(_volume(), np.eye(4)), path)
    with pytest.raises(ImageReadError, match=r"v\.nii.*slice index 7 out of range"):
        load_array(path, slice_index=7)
    with pytest.raises(ImageReadError, match=r"v\.nii.*slice index -1"):
        read_image(path, axis=0, slice_index=-1)


# --------------------------------------------------------------------------------------------
# bad files


def _png_bytes(tmp_path) -> bytes:
    return write_image(tmp_path / "good.png", RNG.integers(0, 256, (64, 64), np.uint8)).read_bytes()


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("absent.png", None, "not found"),
        ("empty.png", b"", "empty"),
        ("truncated.png", "truncate", "corrupt or truncated"),
        ("garbage.png", b"this is not an image at all" * 10, "not a readable"),
        ("anim.gif", b"GIF89a" + b"\0" * 50, "unsupported"),
        ("data.xyz", b"\1\2\3" * 100, "unsupported"),
        ("garbage.dcm", b"not dicom" * 100, "DICOM"),
        ("garbage.nii.gz", b"not nifti" * 100, "NIfTI"),
        ("garbage.tif", b"II*\0garbage" * 20, "TIFF"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
@pytest.mark.parametrize("reader", [load_array, read_image, read_mask])
def test_bad_files_name_the_file(tmp_path, name, content, problem, reader):
    path = tmp_path / name
    if content == "truncate":
        path.write_bytes(_png_bytes(tmp_path)[:200])
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(ImageReadError) as info:
        reader(path)
    message = str(info.value)
    assert name in message and problem in message
    if problem == "unsupported":
        assert ".png" in message and ".nii.gz" in message  # the supported list is shown


# --------------------------------------------------------------------------------------------
# masks


def _blob_mask() -> np.ndarray:
    m = np.zeros((40, 48), bool)
    m[8:30, 10:36] = True
    return m


@pytest.mark.parametrize("scale", [1, 255])
def test_mask_binary_values(tmp_path, scale):
    m = _blob_mask()
    path = write_image(tmp_path / "m.png", m.astype(np.uint8) * scale)
    out = read_mask(path)
    assert out.dtype == bool
    np.testing.assert_array_equal(out, m)


def test_mask_label_map_and_16bit(tmp_path):
    labels = np.zeros((10, 10), np.uint16)
    labels[1:3, 1:3] = 1
    labels[5:7, 5:7] = 700
    out = read_mask(write_image(tmp_path / "l.tif", labels))
    np.testing.assert_array_equal(out, labels > 0)


def test_jpeg_noisy_mask(tmp_path):
    m = _blob_mask()
    path = tmp_path / "m.jpg"
    Image.fromarray(m.astype(np.uint8) * 255).save(path, quality=50)
    raw = load_array(path)
    assert ((raw > 0) != m).sum() > 20  # JPEG really did add noise around the edges
    np.testing.assert_array_equal(read_mask(path), m)


def test_rgb_and_rgba_masks(tmp_path):
    m = _blob_mask()
    rgb = np.zeros(m.shape + (3,), np.uint8)
    rgb[m] = (0, 0, 200)  # a blue mask: the maximum over the channels counts
    np.testing.assert_array_equal(read_mask(write_image(tmp_path / "rgb.png", rgb)), m)
    rgba = np.zeros(m.shape + (4,), np.uint8)
    rgba[..., 3] = 255  # opaque black background
    rgba[m, 0] = 255
    rgba[m, 3] = 0  # alpha is ignored
    np.testing.assert_array_equal(read_mask(write_image(tmp_path / "rgba.png", rgba)), m)


def test_write_mask_png_0_255(tmp_path):
    m = _blob_mask()
    path = write_mask(tmp_path / "sub" / "m.png", m.astype(np.float32) * 0.7)
    raw = np.asarray(Image.open(path))
    assert raw.dtype == np.uint8 and set(np.unique(raw)) == {0, 255}
    np.testing.assert_array_equal(read_mask(path), m)
    assert [p.name for p in path.parent.iterdir()] == ["m.png"]  # no temporary left behind
    with pytest.raises(ValueError, match="JPEG"):
        write_mask(tmp_path / "m.jpg", m)
    with pytest.raises(ValueError, match="2D"):
        write_mask(tmp_path / "m3.png", np.zeros((2, 3, 4)))


def test_failed_writes_leave_nothing(tmp_path):
    with pytest.raises(ValueError, match="x.png"):
        write_image(tmp_path / "x.png", np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="cannot write"):
        write_image(tmp_path / "x.gif", np.zeros((4, 4), np.uint8))
    assert list(tmp_path.iterdir()) == []
