"""Reading and writing medical images and masks: PNG/JPEG/BMP/TIFF (8 and 16 bit), DICOM, NIfTI.

Three readers, one rule each, so every data set in the package sees pixels the same way:

* :func:`load_array` returns the *native* values (dtype kept, DICOM in rescaled units, a NIfTI slice);
* :func:`read_image` turns them into the ``uint8`` picture the models see;
* :func:`read_mask` turns them into a ``bool`` foreground mask.

Every failure is an :class:`ImageReadError` whose message names the file and the problem.
The format decoders (tifffile, pydicom, nibabel) are imported by the readers of those formats only,
so reading a PNG (or importing the data layer) does not load them.
Writers (:func:`write_image`, :func:`write_mask`) are atomic: a failed write leaves nothing behind.

Bad or awkward input, and what the readers do with it:

* an image larger than Pillow's decompression-bomb limit (about 179 million pixels) is refused
  with an error naming the file and how to allow it (``MEDCLIPSAM_MAX_IMAGE_PIXELS=N`` or ``none``
  in the environment, or ``PIL.Image.MAX_IMAGE_PIXELS`` in Python);
* EXIF orientation (JPEG/PNG/TIFF tag 274) is **applied**, to images and masks alike, so a phone
  photo of a scan comes out the way every viewer shows it; a mask drawn on the same file stays
  aligned with it;
* a broken symbolic link is reported as one (with its target), not as a missing file;
* masks: colour channels all empty but an alpha channel that varies -> the alpha channel is the
  mask; float masks with values strictly between 0 and 1 (soft / probability masks) are
  thresholded at 0.5, with a warning, instead of ``> 0``;
* DICOM: PALETTE COLOR is mapped through the file's colour lookup table (8-bit RGB); a file
  written without the 128-byte preamble and file meta is read with the encoding it was parsed
  with; compressed transfer syntaxes that need a decoder which is not installed (JPEG-LS, JPEG
  Extended 12-bit, JPEG Lossless, JPEG 2000) name the ``dicom`` extra
  (``pip install "medclipsam[dicom]"``);
* NIfTI arrays come back in native byte order (big-endian files too); a CIFTI-2 file is named as
  one (grayordinate data, not an image), not called corrupt; a 5-D file (several values per
  voxel) is refused naming its shape;
* a Git LFS pointer or an HTML page saved under an image name is called what it is, with what
  to do (``git lfs pull``; download the file again), whatever its suffix;
* DICOM written without the preamble but holding no pixel data (a report) is said to have no
  pixel data, not called invalid;
* a mask whose size differs from its image's raises :class:`SizeMismatchError` (an
  :class:`ImageReadError`) naming both files and both sizes.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import warnings
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
    "SizeMismatchError",
    "file_stem",
    "image_suffix",
    "is_dicom_file",
    "load_array",
    "load_picture",
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


class SizeMismatchError(ImageReadError):
    """A mask (or prediction) is not the size of the image it belongs to; the message names
    both files and both sizes (height x width)."""

    def __init__(self, path: PathLike, shape: tuple[int, ...], other: PathLike,
                 other_shape: tuple[int, ...], what: str = "mask", other_what: str = "image",
                 advice: str = "they must have the same height and width") -> None:
        self.shape, self.other, self.other_shape = tuple(shape[:2]), Path(other), tuple(other_shape[:2])
        super().__init__(
            path,
            f"{what} is {self.shape[0]}x{self.shape[1]} (HxW) but its {other_what} {self.other} is "
            f"{self.other_shape[0]}x{self.other_shape[1]}; {advice}",
        )


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
    if path.is_symlink() and not path.exists():
        raise ImageReadError(
            path, f"broken symbolic link (it points to {os.readlink(path)}, which does not exist)"
        )
    if not path.exists():
        raise ImageReadError(path, "file not found")
    if path.is_dir():
        raise ImageReadError(path, "is a directory, not an image file")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "file is empty (0 bytes)")


def _not_an_image(path: Path) -> str | None:
    """What a file that cannot be an image is, and what to do, judged from its first bytes: a
    Git LFS pointer (the repository's large files were never fetched) or an HTML page (a
    download that saved a login, error or warning page). None for anything else."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(1024)
    except OSError:
        return None
    size = path.stat().st_size
    if head.startswith(b"version https://git-lfs.github.com/spec/"):
        return (
            f"a Git LFS pointer file ({size} bytes), not the image itself: the repository was "
            "cloned without its large files. Run `git lfs pull` in the repository (install Git "
            "LFS first: `git lfs install`), or download the file itself again"
        )
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<!doctype html", b"<html")) or (
        text.startswith((b"<?xml", b"<head", b"<!--")) and b"<html" in text
    ):
        return (
            f"an HTML web page ({size} bytes), not an image: the download saved a page (a login, "
            "error or 'confirm download' page) instead of the file. Download it again from the "
            "direct file link (signed in if the site needs it) and check that it opens"
        )
    return None


def _load(path: PathLike, slice_index: int | None, axis: int, frame: int) -> _Loaded:
    path = Path(path)
    _check_file(path)
    other = _not_an_image(path)
    if other is not None:
        raise ImageReadError(path, other)
    kind = _format_of(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if kind == "pil":
            loaded = _Loaded(_load_pil(path, frame), kind)
        elif kind == "tiff":
            loaded = _Loaded(_load_tiff(path, frame), kind)
        elif kind == "dicom":
            loaded = _load_dicom(path, frame)
        else:
            loaded = _Loaded(_load_nifti(path, slice_index, axis, frame), kind)
    _rewarn(caught, path)
    loaded.array = _native(loaded.array)
    return loaded


def _rewarn(caught: list[warnings.WarningMessage], path: Path) -> None:
    """Warnings of the reading libraries (pydicom: "Expected explicit VR, but found implicit VR"),
    issued again with the file's name in front, so a user knows which file they are about."""
    for w in caught:
        text = str(w.message)
        if str(path) not in text:
            text = f"{path}: {text}"
        warnings.warn(text, w.category if issubclass(w.category, Warning) else UserWarning,
                      stacklevel=4)


def _native(arr: np.ndarray) -> np.ndarray:
    """``arr`` in the machine's byte order (big-endian NIfTI/DICOM/TIFF data would otherwise
    reach ``torch.from_numpy``, which refuses it)."""
    if arr.dtype.isnative:
        return arr
    return np.ascontiguousarray(arr.astype(arr.dtype.newbyteorder("=")))


# EXIF / TIFF orientation (tag 274) -> what turns the stored pixels upright (as PIL's
# ImageOps.exif_transpose does).
_ORIENTATIONS = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a.swapaxes(0, 1)[::-1, ::-1],
    8: lambda a: np.rot90(a, 1),
}


def _orient(arr: np.ndarray, code) -> np.ndarray:
    """Apply an EXIF/TIFF orientation code (1..8; anything else: unchanged)."""
    try:
        turn = _ORIENTATIONS.get(int(code))
    except (TypeError, ValueError):
        return arr
    return arr if turn is None else np.ascontiguousarray(turn(arr))


_MAX_PIXELS_ENV = "MEDCLIPSAM_MAX_IMAGE_PIXELS"


def _apply_pixel_limit() -> None:
    """Honour ``MEDCLIPSAM_MAX_IMAGE_PIXELS`` (a number, or ``none``) as Pillow's bomb limit."""
    value = os.environ.get(_MAX_PIXELS_ENV, "").strip().lower()
    if not value:
        return
    if value in ("none", "0", "off", "unlimited"):
        Image.MAX_IMAGE_PIXELS = None
        return
    try:
        Image.MAX_IMAGE_PIXELS = int(float(value))
    except ValueError:
        raise ValueError(
            f"{_MAX_PIXELS_ENV}={value!r}: expected a number of pixels or 'none'"
        ) from None


def _load_pil(path: Path, frame: int) -> np.ndarray:
    _apply_pixel_limit()
    try:
        with Image.open(path) as img:
            n_frames = getattr(img, "n_frames", 1)
            if not 0 <= frame < n_frames:
                raise ImageReadError(path, f"frame {frame} out of range (file has {n_frames})")
            if frame:
                img.seek(frame)
            img.load()
            try:
                orientation = img.getexif().get(0x0112)
            except Exception:  # noqa: BLE001 - a damaged EXIF block: pixels as stored
                orientation = None
            return _orient(pil_to_array(img), orientation)
    except ImageReadError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageReadError(
            path,
            f"image too large: {exc} If the image is genuinely this large, raise the limit: "
            f"set the environment variable {_MAX_PIXELS_ENV} to a number of pixels (or 'none'), "
            "or PIL.Image.MAX_IMAGE_PIXELS in Python; large images are processed at a working "
            "resolution by the pipeline",
        ) from None
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
            tag = page.tags.get(274)  # Orientation
            orientation = tag.value if tag is not None else None
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
    return _orient(np.ascontiguousarray(arr), orientation)


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


# Transfer syntaxes whose decoders come with the ``dicom`` extra (pylibjpeg's plugins): the
# module each needs. Pillow decodes some of them (8-bit JPEG, some JPEG 2000), not all.
_DICOM_EXTRA = 'pip install "medclipsam[dicom]"'
_DECODER_MODULES = {
    "1.2.840.10008.1.2.4.50": "libjpeg",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51": "libjpeg",  # JPEG Extended (12-bit: not in Pillow)
    "1.2.840.10008.1.2.4.57": "libjpeg",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70": "libjpeg",  # JPEG Lossless, SV1
    "1.2.840.10008.1.2.4.80": "libjpeg",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81": "libjpeg",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90": "openjpeg",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91": "openjpeg",  # JPEG 2000
    "1.2.840.10008.1.2.4.201": "openjpeg",  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202": "openjpeg",  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203": "openjpeg",  # HTJ2K
    "1.2.840.10008.1.2.5": "rle",  # RLE Lossless (pydicom also has its own decoder)
}


def _module_available(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _dicom_decode_problem(ds, exc: Exception) -> str:
    """Why ``ds.pixel_array`` failed, and what to do, for :class:`ImageReadError`."""
    meta = getattr(ds, "file_meta", None)
    syntax = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    name = getattr(syntax, "name", None) or (str(syntax) if syntax else "unknown transfer syntax")
    detail = " ".join(str(exc).split())[:300]
    compressed = bool(getattr(syntax, "is_compressed", False))
    if compressed:
        module = _DECODER_MODULES.get(str(syntax))
        if module is None or not (_module_available("pylibjpeg") and _module_available(module)):
            return (
                f"cannot decode DICOM pixel data compressed as {name}: the decoder it needs is "
                f"not installed; install the dicom extra: {_DICOM_EXTRA} (pylibjpeg with its "
                f"libjpeg, openjpeg and rle plugins). ({detail})"
            )
        return (
            f"cannot decode the {name} pixel data although a decoder is installed; the data may "
            f"be corrupt (or need GDCM: pip install python-gdcm). ({detail})"
        )
    if "less than expected" in detail or "truncat" in detail.lower():
        return f"DICOM pixel data is shorter than its header says: truncated file? ({detail})"
    return f"cannot read the DICOM pixel data ({name}): {detail}"


def _guess_transfer_syntax(ds) -> None:
    """A file read with ``force=True`` may lack the file meta's Transfer Syntax UID (files written
    without the 128-byte preamble and meta header): use the encoding pydicom parsed it with."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    encoding = getattr(ds, "original_encoding", None)  # pydicom >= 3
    if encoding is None:  # pydicom 2
        encoding = (getattr(ds, "is_implicit_VR", True), getattr(ds, "is_little_endian", True))
    implicit, little = encoding
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    if implicit:
        meta.TransferSyntaxUID = ImplicitVRLittleEndian
    else:
        meta.TransferSyntaxUID = ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def _palette_to_rgb(ds, arr: np.ndarray, path: Path) -> np.ndarray:
    """PALETTE COLOR indices -> 8-bit RGB through the file's colour lookup table."""
    try:
        from pydicom.pixels import apply_color_lut
    except ImportError:  # pydicom 2
        from pydicom.pixel_data_handlers.util import apply_color_lut
    try:
        rgb = np.asarray(apply_color_lut(arr, ds))
    except Exception as exc:  # noqa: BLE001 - missing or inconsistent LUT tags
        raise ImageReadError(
            path, f"PALETTE COLOR DICOM with an unusable colour lookup table ({exc})"
        ) from exc
    try:
        bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
    except (AttributeError, IndexError, KeyError, TypeError, ValueError):
        bits = 16 if rgb.dtype.itemsize > 1 else 8
    if rgb.dtype != np.uint8:
        if bits > 8:  # 16-bit table entries: keep the top 8 bits' worth (0..65535 -> 0..255)
            rgb = np.round(rgb.astype(np.float64) / 257.0)
        rgb = np.clip(rgb, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(rgb)


# Attributes every real DICOM object carries (SOP Common and Patient/Study modules): a file read
# with force=True that has them is DICOM written without its preamble, not some other file.
_DICOM_IDENTITY = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
                   "Modality")


def _looks_like_dicom(ds) -> bool:
    """Whether a data set read with ``force=True`` holds real DICOM identity attributes."""
    try:
        return sum(1 for k in _DICOM_IDENTITY if k in ds and str(ds.get(k, "")).strip()) >= 2
    except Exception:  # noqa: BLE001 - garbage parsed as elements may fail to decode
        return False


def _load_dicom(path: Path, frame: int) -> _Loaded:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        try:
            ds = pydicom.dcmread(path)
        except InvalidDicomError:
            # Files written without the 128-byte preamble are still common.
            ds = pydicom.dcmread(path, force=True)
            if "Rows" not in ds and "PixelData" not in ds and not _looks_like_dicom(ds):
                raise ImageReadError(path, "not a valid DICOM file") from None
    except ImageReadError:
        raise
    except Exception as exc:
        raise ImageReadError(path, f"corrupt or unreadable DICOM file ({exc})") from exc

    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ImageReadError(path, "DICOM file has no pixel data (e.g. a report or structure set)")
    _guess_transfer_syntax(ds)
    try:
        arr = ds.pixel_array
    except Exception as exc:
        raise ImageReadError(path, _dicom_decode_problem(ds, exc)) from exc

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
    if photometric == "PALETTE COLOR":
        return _Loaded(_palette_to_rgb(ds, arr, path), "dicom")

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
    except Exception as exc:
        raise ImageReadError(path, f"corrupt or unreadable NIfTI file ({exc})") from exc
    if type(img).__name__.startswith("Cifti"):
        raise ImageReadError(
            path,
            "a CIFTI-2 file (grayordinate or matrix data such as .dconn/.dtseries/.dscalar, not an "
            "image volume): there is no image slice to read; use the NIfTI volume it was "
            "computed from",
        )
    if getattr(img, "affine", None) is None:
        raise ImageReadError(path, f"{type(img).__name__} has no spatial affine: not an image volume")
    try:
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
        if any(n != 1 for n in data.shape[4:]):
            raise ImageReadError(
                path,
                f"a {data.ndim}-D NIfTI (shape {tuple(data.shape)}): only 2-D and 3-D images and "
                "4-D series (frame= picks the volume) can be read; a 5-D file holds several "
                "values per voxel (vectors, tensors or components): save the component you "
                "want as a 3-D volume (e.g. nibabel: img.slicer[..., 0, k])",
            )
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

    EXIF orientation (tag 274, JPEG/PNG/TIFF) is applied, so the array is upright as every
    viewer shows the file; masks are read the same way, so a mask stays aligned with its image.
    """
    return _load(path, slice_index, axis, frame).array


# --------------------------------------------------------------------------------------------
# conversion to uint8


def read_image(
    path: PathLike,
    *,
    mode: Literal["rgb", "grey", "auto"] = "rgb",
    window: tuple[float, float] | None = None,
    slice_index: int | None = None,
    axis: int = 2,
    frame: int = 0,
) -> np.ndarray:
    """Read an image as ``uint8``: ``(H, W, 3)`` for ``mode="rgb"``, ``(H, W)`` for ``"grey"``;
    ``"auto"`` keeps what the file holds (``(H, W)`` grey or ``(H, W, 3)`` colour), which saves
    memory on very large grey images.

    The file's native values (:func:`load_array`) become a picture by the package's one rule
    (:mod:`medclipsam.data.convert`, the same for arrays, PIL images and tensors): alpha is
    composited on black; uint8 is kept; anything else (16-bit, float, DICOM, NIfTI) is mapped
    linearly from its 0.5 .. 99.5 percentile range onto 0..255 (floats already in [0, 1] are
    scaled by 255). A window replaces the percentile range when one is known: ``window=(center,
    width)`` if given (always applied), else the DICOM ``WindowCenter``/``WindowWidth`` tags
    (first value if several): ``v -> round(clip((v - (center - width/2)) / width, 0, 1) * 255)``.
    Colour: grey is replicated into three channels for ``"rgb"``; colour is reduced to grey with
    the ITU-R 601 luma weights ``0.299 R + 0.587 G + 0.114 B`` for ``"grey"``; ``"auto"`` keeps
    the file's channels.

    ``slice_index``, ``axis`` and ``frame`` are passed to :func:`load_array`.
    """
    if mode not in ("rgb", "grey", "auto"):
        raise ValueError(f"mode must be 'rgb', 'grey' or 'auto', got {mode!r}")
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



def load_picture(image: Any, mode: Literal["rgb", "grey", "auto"] = "rgb") -> np.ndarray:
    """The uint8 picture of ``image``: a path is read with :func:`read_image`; an array, PIL
    image or tensor is converted by the same rule (:func:`medclipsam.data.convert.to_uint8`).
    ``mode`` as for :func:`read_image` (``"auto"`` keeps a grey image grey). What the pipeline
    and the explorer start from."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(image, mode=mode)
    return to_uint8(image, mode)


def read_mask(
    path: PathLike, *, slice_index: int | None = None, axis: int = 2, frame: int = 0
) -> np.ndarray:
    """Read a mask as ``bool (H, W)``.

    Binarisation rule: colour masks are first reduced to the maximum over their colour channels.
    An alpha channel is ignored, except when every colour channel is 0 and the alpha channel
    varies (an "alpha-only" mask, as some drawing tools save): then the alpha channel is the
    mask. Then foreground is ``value > 0`` for lossless formats (works for 0/1, 0/255 and label
    maps: every label is foreground; NaN is background), and ``value >= 128`` for JPEG (lossy),
    to ignore compression noise around 0 and 255. A *soft* float mask (all values in [0, 1],
    some strictly between: a probability map) is thresholded at 0.5 instead of ``> 0``, with a
    warning naming the file, since ``> 0`` would take every faint pixel.
    """
    path = Path(path)
    arr = _load(path, slice_index, axis, frame).array
    if arr.ndim == 3:
        channels = arr.shape[-1]
        if channels in (2, 4):
            colour, alpha = arr[..., :-1], arr[..., -1]
            if not np.any(np.nan_to_num(colour)) and np.nanmax(alpha) != np.nanmin(alpha):
                arr = alpha  # alpha-only mask: the colour channels are empty
            else:
                arr = colour.max(axis=-1)
        else:
            arr = arr.max(axis=-1)
    if image_suffix(path) in _LOSSY_SUFFIXES:
        limit = (int(np.iinfo(arr.dtype).max) + 1) // 2 if arr.dtype.kind in "ui" else 0.5
        return np.ascontiguousarray(arr >= limit)
    if arr.dtype.kind == "f":
        finite = arr[np.isfinite(arr)]
        if finite.size and finite.min() >= 0 and finite.max() <= 1 and np.any(
            (finite > 0) & (finite < 1)
        ):
            warnings.warn(
                f"{path}: soft mask (float values between 0 and 1); foreground is value >= 0.5",
                UserWarning,
                stacklevel=2,
            )
            with np.errstate(invalid="ignore"):
                return np.ascontiguousarray(np.nan_to_num(arr, nan=0) >= 0.5)
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
