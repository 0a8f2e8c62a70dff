"""Reading and writing medical images and masks: PNG/JPEG/BMP/TIFF (8 and 16 bit), DICOM, NIfTI.

Three readers, one rule each, so every data set in the package sees pixels the same way:

* :func:`load_array` returns the *native* values (dtype kept, DICOM in rescaled units, a NIfTI slice);
* :func:`read_image` turns them into the ``uint8`` picture the models see;
* :func:`read_mask` turns them into a ``bool`` foreground mask.

Every failure is an :class:`ImageReadError` whose message names the file and the problem.
The format decoders (tifffile, pydicom, nibabel) are imported by the readers of those formats only,
so reading a PNG (or importing the data layer) does not load them.
Writers (:func:`write_image`, :func:`write_mask`) are atomic: a failed write leaves nothing behind.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from .._utils import atomic_path
from .convert import apply_window, as_array, pil_to_array, to_uint8

__all__ = [
    "SUPPORTED_SUFFIXES",
    "WRITABLE_SUFFIXES",
    "ImageReadError",
    "file_stem",
    "image_suffix",
    "is_dicom_file",
    "load_array",
    "load_rgb",
    "read_image",
    "read_mask",
    "write_image",
    "write_mask",
]

PathLike = str | os.PathLike

SUPPORTED_SUFFIXES: tuple[str, ...] = (
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".tif",
    ".tiff",
    ".dcm",
    ".nii",
    ".nii.gz",
)
"""Suffixes the readers accept (case-insensitive). DICOM files with no (or an unknown) suffix are
accepted too when they carry the ``DICM`` marker at byte 128, as files from scanners often do."""

WRITABLE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

_PIL_SUFFIXES = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP"}
_TIFF_SUFFIXES = (".tif", ".tiff")
_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_LOSSY_SUFFIXES = (".jpg", ".jpeg")


class ImageReadError(ValueError):
    """An image or mask file could not be read; the message names the file and the problem."""

    def __init__(self, path: PathLike, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


# --------------------------------------------------------------------------------------------
# names and formats


def image_suffix(path: PathLike) -> str:
    """The lower-case image suffix of ``path`` (``".nii.gz"`` counts as one), or ``""`` if none
    of :data:`SUPPORTED_SUFFIXES` matches."""
    name = Path(path).name.lower()
    for suffix in sorted(SUPPORTED_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix) and len(name) > len(suffix):
            return suffix
    return ""


def file_stem(path: PathLike) -> str:
    """The file name without its image suffix: ``case_01.nii.gz -> case_01``, ``a.b.png -> a.b``.

    A name without a supported suffix (an extension-less DICOM such as ``IM0001`` or
    ``1.2.840.1``) is returned whole, so pairing images with masks never guesses at dots.
    """
    name = Path(path).name
    suffix = image_suffix(name)
    return name[: len(name) - len(suffix)] if suffix else name


def is_dicom_file(path: PathLike) -> bool:
    """True if the file starts with the 128-byte DICOM preamble followed by ``DICM``."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _format_of(path: Path) -> str:
    """One of 'pil', 'tiff', 'dicom', 'nifti'; raises for anything else."""
    suffix = image_suffix(path)
    if suffix in _PIL_SUFFIXES:
        return "pil"
    if suffix in _TIFF_SUFFIXES:
        return "tiff"
    if suffix == ".dcm":
        return "dicom"
    if suffix in _NIFTI_SUFFIXES:
        return "nifti"
    if is_dicom_file(path):
        return "dicom"
    shown = Path(path).suffix or "(no suffix)"
    raise ImageReadError(
        path,
        f"unsupported file type {shown!r}; supported: {', '.join(SUPPORTED_SUFFIXES)} "
        "(and DICOM files without a suffix)",
    )


# --------------------------------------------------------------------------------------------
# native loading


@dataclass
class _Loaded:
    array: np.ndarray
    kind: str  # 'pil', 'tiff', 'dicom', 'nifti'
    window: tuple[float, float] | None = None  # DICOM WindowCenter/Width, already in output units


def _check_file(path: Path) -> None:
    if not path.exists():
        raise ImageReadError(path, "file not found")
    if path.is_dir():
        raise ImageReadError(path, "is a directory, not an image file")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "file is empty (0 bytes)")


def _load(path: PathLike, slice_index: int | None, axis: int, frame: int) -> _Loaded:
    path = Path(path)
    _check_file(path)
    kind = _format_of(path)
    if kind == "pil":
        arr = _load_pil(path, frame)
        return _Loaded(arr, kind)
    if kind == "tiff":
        return _Loaded(_load_tiff(path, frame), kind)
    if kind == "dicom":
        return _load_dicom(path, frame)
    return _Loaded(_load_nifti(path, slice_index, axis, frame), kind)


def _load_pil(path: Path, frame: int) -> np.ndarray:
    try:
        with Image.open(path) as img:
            n_frames = getattr(img, "n_frames", 1)
            if not 0 <= frame < n_frames:
                raise ImageReadError(path, f"frame {frame} out of range (file has {n_frames})")
            if frame:
                img.seek(frame)
            img.load()
            return pil_to_array(img)
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        raise ImageReadError(
            path, f"not a readable {path.suffix.lower()} image (corrupt, or another format)"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(path, f"corrupt or truncated image ({exc})") from exc


def _load_tiff(path: Path, frame: int) -> np.ndarray:
    import tifffile

    logger = logging.getLogger("tifffile")
    level = logger.level
    logger.setLevel(logging.CRITICAL)  # its warnings about corrupt files end up in our error
    try:
        with tifffile.TiffFile(path) as tif:
            n_pages = len(tif.pages)
            if n_pages == 0:
                raise ImageReadError(path, "corrupt TIFF: no readable image pages")
            if not 0 <= frame < n_pages:
                raise ImageReadError(path, f"frame {frame} out of range (TIFF has {n_pages} pages)")
            page = tif.pages[frame]
            arr = page.asarray()
            separate = int(getattr(page, "planarconfig", 1)) == 2
    except ImageReadError:
        raise
    except Exception as exc:  # tifffile raises many kinds (TiffFileError, ValueError, ...)
        # Some compressions need optional codecs; Pillow may still decode the file.
        try:
            return _load_pil(path, frame)
        except ImageReadError:
            pass
        raise ImageReadError(path, f"corrupt or unreadable TIFF ({exc})") from exc
    finally:
        logger.setLevel(level)
    if arr.ndim == 3 and separate:
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3):
        raise ImageReadError(path, f"TIFF page has unexpected shape {arr.shape}")
    if arr.dtype.byteorder not in ("=", "|"):
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    return np.ascontiguousarray(arr)


def _first_number(value) -> float | None:
    """A DICOM DS/IS value that may be multi-valued or empty -> its first number, or None."""
    if value is None:
        return None
    try:
        if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
            if len(value) == 0:
                return None
            value = value[0]
        if value == "":
            return None
        return float(value)
    except (TypeError, ValueError):
        return None


def _load_dicom(path: Path, frame: int) -> _Loaded:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        try:
            ds = pydicom.dcmread(path)
        except InvalidDicomError:
            # Files written without the 128-byte preamble are still common.
            ds = pydicom.dcmread(path, force=True)
            if "Rows" not in ds and "PixelData" not in ds:
                raise ImageReadError(path, "not a valid DICOM file") from None
    except ImageReadError:
        raise
    except Exception as exc:
        raise ImageReadError(path, f"corrupt or unreadable DICOM file ({exc})") from exc

    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ImageReadError(path, "DICOM file has no pixel data (e.g. a report or structure set)")
    try:
        arr = ds.pixel_array
    except Exception as exc:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", syntax) or "unknown transfer syntax"
        raise ImageReadError(
            path,
            f"cannot decode DICOM pixel data ({name}): {exc}. Compressed DICOM may need "
            "pylibjpeg / python-gdcm installed",
        ) from exc

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    n_frames = int(_first_number(ds.get("NumberOfFrames")) or 1)
    if n_frames > 1:
        if not 0 <= frame < n_frames:
            raise ImageReadError(path, f"frame {frame} out of range (DICOM has {n_frames} frames)")
        arr = arr[frame]
    elif frame != 0:
        raise ImageReadError(path, f"frame {frame} out of range (DICOM has 1 frame)")
    expected_ndim = 3 if samples > 1 else 2
    if arr.ndim != expected_ndim:
        raise ImageReadError(path, f"DICOM pixel data has unexpected shape {arr.shape}")

    if samples > 1:  # colour: rescale/window tags do not apply
        return _Loaded(np.ascontiguousarray(arr), "dicom")

    slope = _first_number(ds.get("RescaleSlope"))
    intercept = _first_number(ds.get("RescaleIntercept"))
    slope = 1.0 if slope is None else slope
    intercept = 0.0 if intercept is None else intercept
    out = arr.astype(np.float32) * np.float32(slope) + np.float32(intercept)

    center = _first_number(ds.get("WindowCenter"))
    width = _first_number(ds.get("WindowWidth"))
    window = (center, width) if center is not None and width is not None and width > 0 else None

    if photometric == "MONOCHROME1":
        # Low values are bright in MONOCHROME1: mirror the values within the range the stored
        # bits can hold (rescaled), so bright stays bright; the window centre is mirrored too.
        bits = int(ds.get("BitsStored", arr.dtype.itemsize * 8) or arr.dtype.itemsize * 8)
        if int(ds.get("PixelRepresentation", 0) or 0) == 1:
            lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        else:
            lo, hi = 0, 2**bits - 1
        total = (lo * slope + intercept) + (hi * slope + intercept)
        out = np.float32(total) - out
        if window is not None:
            window = (total - window[0], window[1])
    return _Loaded(np.ascontiguousarray(out, dtype=np.float32), "dicom", window)


def _load_nifti(path: Path, slice_index: int | None, axis: int, frame: int) -> np.ndarray:
    import nibabel as nib
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
        ornt = io_orientation(img.affine)
    except Exception as exc:
        raise ImageReadError(path, f"corrupt or unreadable NIfTI file ({exc})") from exc
    if data.dtype.names:  # RGB24 / RGBA32 structured types
        data = np.stack([data[n] for n in data.dtype.names], axis=-1)
        if data.ndim >= 4 and data.shape[2] == 1:
            data = data[:, :, 0]
        if data.ndim == 3:
            return np.ascontiguousarray(np.rot90(data))
        raise ImageReadError(path, "colour NIfTI volumes are not supported, only 2D colour images")

    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim > 4:
        data = data.reshape(data.shape[:4])  # trailing singleton dims (e.g. 5D with size 1)
    if data.ndim == 4:
        if not 0 <= frame < data.shape[3]:
            raise ImageReadError(
                path, f"frame {frame} out of range (NIfTI has {data.shape[3]} volumes)"
            )
        data = data[..., frame]
    elif frame != 0:
        raise ImageReadError(path, f"frame {frame} out of range (NIfTI has 1 volume)")
    if data.ndim != 3:
        raise ImageReadError(path, f"NIfTI data has unexpected shape {data.shape}")

    # Reorient to RAS+ (axis 0: left->right, 1: posterior->anterior, 2: inferior->superior).
    try:
        transform = ornt_transform(ornt[:3], axcodes2ornt(("R", "A", "S")))
        data = nib.orientations.apply_orientation(data, transform)
    except Exception:  # a degenerate affine: keep the voxel order as stored
        pass

    if axis not in (0, 1, 2):
        raise ImageReadError(path, f"axis must be 0, 1 or 2, got {axis}")
    n = data.shape[axis]
    index = n // 2 if slice_index is None else slice_index
    if not 0 <= index < n:
        raise ImageReadError(
            path, f"slice index {index} out of range along axis {axis} (size {n}, valid 0..{n - 1})"
        )
    sl = np.take(data, index, axis=axis)
    # Rows from the larger coordinate (anterior / superior) at the top, columns increasing
    # (patient left -> right for axial and coronal: the "neurological" convention).
    return np.ascontiguousarray(np.rot90(sl))


def load_array(
    path: PathLike, *, slice_index: int | None = None, axis: int = 2, frame: int = 0
) -> np.ndarray:
    """Read the native pixel values of an image file as ``(H, W)`` or ``(H, W, C)``.

    The dtype is kept (uint8, uint16, int16, float32, ...), with these exceptions:

    * palette images become RGB (RGBA if they have transparency); 1-bit images become 0/255 uint8;
    * DICOM grey images: stored values times ``RescaleSlope`` plus ``RescaleIntercept``
      (Hounsfield units for CT) as float32; ``MONOCHROME1`` images are mirrored within the range
      their stored bits can hold, so that bright is always a larger value; colour DICOM is kept as
      stored;
    * NIfTI: the volume is first reoriented to RAS+ (axis 0 left->right, axis 1
      posterior->anterior, axis 2 inferior->superior), the slice ``slice_index`` along ``axis``
      (default: the middle slice) is taken and rotated 90 degrees so that anterior (axial) or
      superior (coronal, sagittal) is at the top and the patient's left is on the image's left
      (neurological convention). Scaled NIfTI data (``scl_slope``) comes back as float.
      4D data: ``frame`` picks the volume.
    * multi-page TIFF and multi-frame DICOM: ``frame`` picks the page.

    EXIF orientation tags are ignored (pixels as stored), so images and masks stay aligned.
    """
    return _load(path, slice_index, axis, frame).array


# --------------------------------------------------------------------------------------------
# conversion to uint8


def read_image(
    path: PathLike,
    *,
    mode: Literal["rgb", "grey"] = "rgb",
    window: tuple[float, float] | None = None,
    slice_index: int | None = None,
    axis: int = 2,
    frame: int = 0,
) -> np.ndarray:
    """Read an image as ``uint8``: ``(H, W, 3)`` for ``mode="rgb"``, ``(H, W)`` for ``"grey"``.

    The file's native values (:func:`load_array`) become a picture by the package's one rule
    (:mod:`medclipsam.data.convert`, the same for arrays, PIL images and tensors): alpha is
    composited on black; uint8 is kept; anything else (16-bit, float, DICOM, NIfTI) is mapped
    linearly from its 0.5 .. 99.5 percentile range onto 0..255 (floats already in [0, 1] are
    scaled by 255). A window replaces the percentile range when one is known: ``window=(center,
    width)`` if given (always applied), else the DICOM ``WindowCenter``/``WindowWidth`` tags
    (first value if several): ``v -> round(clip((v - (center - width/2)) / width, 0, 1) * 255)``.
    Colour: grey is replicated into three channels for ``"rgb"``; colour is reduced to grey with
    the ITU-R 601 luma weights ``0.299 R + 0.587 G + 0.114 B`` for ``"grey"``.

    ``slice_index``, ``axis`` and ``frame`` are passed to :func:`load_array`.
    """
    if mode not in ("rgb", "grey"):
        raise ValueError(f"mode must be 'rgb' or 'grey', got {mode!r}")
    path = Path(path)
    loaded = _load(path, slice_index, axis, frame)
    try:
        arr = as_array(loaded.array)
    except ValueError as exc:
        raise ImageReadError(path, str(exc)) from None
    if window is None and arr.dtype != np.uint8 and arr.dtype != bool:
        window = loaded.window
    if window is not None:
        arr = apply_window(arr.astype(np.uint8) * 255 if arr.dtype == bool else arr,
                           float(window[0]), float(window[1]))
    return to_uint8(arr, mode)


def load_rgb(image: Any) -> np.ndarray:
    """The uint8 ``(H, W, 3)`` picture of ``image``: a path is read with :func:`read_image`; an
    array, PIL image or tensor is converted by the same rule
    (:func:`medclipsam.data.convert.to_uint8`). What the pipeline and the explorer start from."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(image, mode="rgb")
    return to_uint8(image, "rgb")


def read_mask(
    path: PathLike, *, slice_index: int | None = None, axis: int = 2, frame: int = 0
) -> np.ndarray:
    """Read a mask as ``bool (H, W)``.

    Binarisation rule: colour masks are first reduced to the maximum over their colour channels
    (an alpha channel is ignored). Then foreground is ``value > 0`` for lossless formats (works
    for 0/1, 0/255 and label maps: every label is foreground; NaN is background), and
    ``value >= 128`` for JPEG (lossy), to ignore compression noise around 0 and 255.
    """
    path = Path(path)
    arr = _load(path, slice_index, axis, frame).array
    if arr.ndim == 3:
        channels = arr.shape[-1]
        if channels in (2, 4):
            arr = arr[..., :-1]
        arr = arr.max(axis=-1)
    if image_suffix(path) in _LOSSY_SUFFIXES:
        limit = (int(np.iinfo(arr.dtype).max) + 1) // 2 if arr.dtype.kind in "ui" else 0.5
        return np.ascontiguousarray(arr >= limit)
    with np.errstate(invalid="ignore"):
        return np.ascontiguousarray(np.nan_to_num(arr, nan=0) > 0)


# --------------------------------------------------------------------------------------------
# writing


def _writable_suffix(path: Path, allowed: tuple[str, ...]) -> str:
    suffix = path.suffix.lower()
    if suffix not in allowed:
        raise ValueError(
            f"{path}: cannot write {suffix or '(no suffix)'!r}; use one of {', '.join(allowed)}"
        )
    return suffix


def write_image(path: PathLike, image: np.ndarray) -> Path:
    """Write ``image`` (``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)``) atomically, format by suffix.

    * PNG: uint8 grey/RGB/RGBA and uint16 grey (16-bit colour: use TIFF);
    * JPEG (quality 95): uint8 grey/RGB; BMP: uint8 grey/RGB;
    * TIFF (deflate-compressed): any integer or float dtype, grey or RGB(A), values kept exactly.

    A bool image is written as 0/255 uint8. Returns the path written.
    """
    path = Path(path)
    suffix = _writable_suffix(path, WRITABLE_SUFFIXES)
    arr = np.asarray(image)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)) or arr.size == 0:
        raise ValueError(f"{path}: image must be (H, W), (H, W, 3) or (H, W, 4); got {arr.shape}")

    if suffix in _TIFF_SUFFIXES:
        import tifffile

        photometric = "rgb" if arr.ndim == 3 else "minisblack"
        with atomic_path(path) as tmp:
            tifffile.imwrite(tmp, arr, photometric=photometric, compression="zlib")
        return path


    fmt = _PIL_SUFFIXES[suffix]
    if arr.dtype == np.uint16 and arr.ndim == 2 and fmt == "PNG":
        pil = Image.fromarray(np.ascontiguousarray(arr))
    elif arr.dtype == np.uint8:
        if fmt in ("JPEG", "BMP") and arr.ndim == 3 and arr.shape[-1] == 4:
            raise ValueError(f"{path}: {fmt} cannot store an alpha channel; use .png or .tif")
        pil = Image.fromarray(np.ascontiguousarray(arr))
    else:
        what = "16-bit grey" if fmt == "PNG" else "8-bit"
        raise ValueError(
            f"{path}: {fmt} cannot store a {arr.dtype} array of shape {arr.shape} (only uint8"
            f"{' or ' + what if fmt == 'PNG' else ''}); use .tif to keep these values"
        )
    options = {"quality": 95} if fmt == "JPEG" else {}
    with atomic_path(path) as tmp:
        pil.save(tmp, format=fmt, **options)
    return path


def write_mask(path: PathLike, mask: np.ndarray) -> Path:
    """Write a mask atomically as a 0/255 uint8 grey image (foreground = ``mask > 0``).

    The suffix must be lossless: ``.png`` (recommended), ``.bmp``, ``.tif`` or ``.tiff``.
    """
    path = Path(path)
    if path.suffix.lower() in _LOSSY_SUFFIXES:
        raise ValueError(f"{path}: masks must not be written as JPEG (lossy); use .png")
    _writable_suffix(path, (".png", ".bmp", ".tif", ".tiff"))
    arr = np.asarray(mask)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"{path}: a mask must be 2D (H, W); got shape {arr.shape}")
    with np.errstate(invalid="ignore"):
        binary = np.nan_to_num(arr, nan=0) > 0
    return write_image(path, binary.astype(np.uint8) * 255)
