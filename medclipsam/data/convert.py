"""One rule for turning any image into the picture the models and the figures see.

Every consumer in the package converts through this module: the file reader
(:func:`medclipsam.data.io.read_image`), CLIP's preparation (:func:`medclipsam.models.clip.prepare_image`),
SAM (:class:`medclipsam.sam_session.SamSession`), the dense CRF, the Residual UNet
(:mod:`medclipsam.weak`) and the figures (:mod:`medclipsam.viz`). So a raw 16-bit scan looks the same
to all of them, whether it arrives as a file, an array, a PIL image or a tensor.

**Layout** (:func:`as_array`): a NumPy array ``(H, W)``, ``(H, W, 1)``, ``(H, W, 2)`` (grey + alpha),
``(H, W, 3)`` or ``(H, W, 4)`` (RGBA); a PIL image of any mode (``1``, ``L``, ``LA``, ``P``, ``RGB``,
``RGBA``, ``CMYK``, 16-bit ``I;16``/``I;16B``, 32-bit ``I``, float ``F`` ...: its own values, never
``convert("RGB")``, which saturates 16-bit images to white); a torch tensor ``(H, W)``,
``(1|3|4, H, W)`` (channels first, as torch keeps them). An alpha channel is composited on black
(colour times alpha / the dtype's maximum alpha), as a viewer on a black background shows it.

**Values** (one rule, per image, all channels together):

* ``uint8``: kept as it is (the picture *is* the pixels);
* ``bool``: ``False`` -> 0, ``True`` -> the maximum (255, or 1.0);
* floats whose values all lie in [0, 1]: kept (they already are a picture in [0, 1]);
* anything else (uint16, other integers, floats outside [0, 1], CT units ...): mapped linearly
  from the 0.5 .. 99.5 percentile range of the image's values onto [0, 1] and clipped, so a few
  hot pixels do not darken the rest; non-finite values count as 0; when the percentiles coincide
  the full min .. max range is used; a constant image becomes 0 (never NaN).

The uint8 picture is ``round(255 * v)`` of that [0, 1] picture. Grey images are repeated into three
channels for ``mode="rgb"``; colour is reduced to grey with the ITU-R 601 luma weights
``0.299 R + 0.587 G + 0.114 B`` for ``mode="grey"``; ``mode="auto"`` keeps the channels (grey
``(H, W)`` or colour ``(H, W, 3)``: a large grey image is not copied three times). Intensity windowing (a DICOM window, an explicit
``(center, width)``) is :func:`apply_window`, which the file reader applies when a file asks for it.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

__all__ = [
    "LUMA_WEIGHTS",
    "PERCENTILES",
    "apply_window",
    "as_array",
    "pil_to_array",
    "to_uint8",
    "to_unit_float",
]

#: The range of an image's values mapped onto [0, 1] when it is not uint8, bool or a [0, 1] float.
PERCENTILES = (0.5, 99.5)
#: ITU-R 601 luma weights (R, G, B) used to reduce colour to grey.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)

Mode = Literal["rgb", "grey", "auto"]


# --------------------------------------------------------------------------------------------
# layout


def pil_to_array(img: Any) -> np.ndarray:
    """A PIL image's own values as a NumPy array (dtype kept: uint8, uint16, int32, float32).

    Palette images become RGB (RGBA with transparency), 1-bit images 0/255 uint8, CMYK and other
    colour spaces RGB; big-endian 16-bit data is byte-swapped to native order. Old Pillow opens
    16-bit grey PNG files as 32-bit mode ``I``: those hold uint16 values by definition.
    """
    mode = img.mode
    if mode == "1":
        img = img.convert("L")
    elif mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode == "PA":
        img = img.convert("RGBA")
    elif mode == "La":
        img = img.convert("LA")
    elif mode == "RGBa":
        img = img.convert("RGBA")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        img = img.convert("RGB")
    arr = np.asarray(img)
    if arr.dtype.byteorder not in ("=", "|"):
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if img.mode == "I" and getattr(img, "format", None) == "PNG":
        arr = arr.astype(np.uint16)
    return np.ascontiguousarray(arr)


def _is_pil(image: Any) -> bool:
    return hasattr(image, "mode") and hasattr(image, "getbands") and not isinstance(image, np.ndarray)


def _from_tensor(t: Any) -> np.ndarray:
    """A torch tensor ``(H, W)`` or ``(C, H, W)`` as a channels-last NumPy array."""
    a = t.detach().cpu().numpy()
    if a.ndim == 3:
        if a.shape[0] not in (1, 3, 4):
            raise ValueError(
                f"expected a tensor of shape (3, H, W), (1, H, W) or (H, W), got {tuple(t.shape)}"
            )
        a = np.moveaxis(a, 0, -1)
    elif a.ndim != 2:
        raise ValueError(f"expected a tensor of shape (3, H, W), (1, H, W) or (H, W), got {tuple(t.shape)}")
    return a


def _alpha_max(dtype: np.dtype) -> float:
    return float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else 1.0


def _finite_float(arr: np.ndarray) -> np.ndarray:
    out = arr.astype(np.float64)
    out[~np.isfinite(out)] = 0.0
    return out


def _composite(arr: np.ndarray) -> np.ndarray:
    """(H, W, 2|4) -> colour times alpha / max alpha, in the input's dtype (integers rounded)."""
    alpha = np.clip(_finite_float(arr[..., -1:]) / _alpha_max(arr.dtype), 0.0, 1.0)
    colour = _finite_float(arr[..., :-1]) * alpha
    colour = np.round(colour).astype(arr.dtype) if np.issubdtype(arr.dtype, np.integer) else colour.astype(arr.dtype)
    return colour[..., 0] if arr.shape[-1] == 2 else colour


def as_array(image: Any) -> np.ndarray:
    """``image`` (NumPy array, PIL image or torch tensor) as ``(H, W)`` or ``(H, W, 3)`` NumPy
    values, dtype kept, alpha composited on black (see the module docstring). Bad layouts and
    non-numeric data raise ``ValueError``."""
    if _is_pil(image):
        arr = pil_to_array(image)
    elif type(image).__module__.startswith("torch"):
        arr = _from_tensor(image)
    elif isinstance(image, np.ndarray) or np.isscalar(image) or isinstance(image, (list, tuple)):
        arr = np.asarray(image)
    else:
        raise TypeError(f"expected a NumPy array, PIL image or torch tensor, got {type(image).__name__}")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[-1] in (2, 4):
        arr = _composite(arr)
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] == 3)) or arr.size == 0:
        raise ValueError(
            f"an image must be (H, W), (H, W, 1), (H, W, 2), (H, W, 3) or (H, W, 4); got shape {arr.shape}"
        )
    if arr.dtype != bool and not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"an image must be numeric, got dtype {arr.dtype}")
    return arr


def _channels(arr: np.ndarray, mode: Mode) -> np.ndarray:
    if mode == "auto":
        return arr
    if mode == "rgb":
        return np.repeat(arr[:, :, None], 3, axis=2) if arr.ndim == 2 else arr
    if arr.ndim == 3:
        return arr[..., 0] * LUMA_WEIGHTS[0] + arr[..., 1] * LUMA_WEIGHTS[1] + arr[..., 2] * LUMA_WEIGHTS[2]
    return arr


def _check_mode(mode: str) -> None:
    if mode not in ("rgb", "grey", "auto"):
        raise ValueError(f"mode must be 'rgb', 'grey' or 'auto', got {mode!r}")


# --------------------------------------------------------------------------------------------
# values


def _unit64(arr: np.ndarray) -> np.ndarray:
    """The rule's [0, 1] picture as float64, for any numeric array that is not uint8."""
    if arr.dtype == bool:
        return arr.astype(np.float64)
    if np.issubdtype(arr.dtype, np.floating):
        f = arr.astype(np.float64)
        if np.all(np.isfinite(f)) and f.min() >= 0.0 and f.max() <= 1.0:
            return f
    values = _finite_float(arr)
    lo, hi = np.percentile(values, PERCENTILES)
    if hi <= lo:  # almost constant image: fall back to the full range
        lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.float64)
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0)


def to_unit_float(image: Any, mode: Mode = "rgb") -> np.ndarray:
    """The picture as float32 in [0, 1]: ``(H, W, 3)`` for ``mode="rgb"``, ``(H, W)`` for
    ``"grey"`` (what CLIP and the Residual UNet take; not quantised to 256 levels)."""
    _check_mode(mode)
    arr = as_array(image)
    if arr.dtype == np.uint8 and (mode != "grey" or arr.ndim == 2):
        unit = _channels(arr.astype(np.float32) / np.float32(255.0), mode)
    elif arr.dtype == np.uint8:  # luma of the 8-bit values, then scaled
        unit = _channels(arr.astype(np.float64), mode) / 255.0
    else:
        unit = _channels(_unit64(arr), mode)
    return np.ascontiguousarray(unit, dtype=np.float32)


def to_uint8(image: Any, mode: Mode = "rgb") -> np.ndarray:
    """The picture as uint8: ``(H, W, 3)`` for ``mode="rgb"`` (what SAM, the CRF and the figures
    take), ``(H, W)`` for ``"grey"`` (luma rounded), either for ``"auto"``. A C-contiguous uint8
    array that already is such a picture is returned as it is, so converting again costs nothing."""
    _check_mode(mode)
    if (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.flags.c_contiguous
            and image.size and ((image.ndim == 3 and image.shape[-1] == 3 and mode != "grey")
                                or (image.ndim == 2 and mode != "rgb"))):
        return image
    arr = as_array(image)
    if arr.dtype != np.uint8:
        arr = np.round(_unit64(arr) * 255.0).astype(np.uint8)
    out = _channels(arr, mode)
    if out.dtype != np.uint8:  # grey from colour: the luma, rounded
        out = np.round(out).clip(0, 255).astype(np.uint8)
    return np.ascontiguousarray(out)


def apply_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """Intensity windowing to uint8: ``v -> round(clip((v - (center - width / 2)) / width, 0, 1)
    * 255)`` (non-finite values count as 0). The file reader applies it for an explicit window
    and for DICOM ``WindowCenter``/``WindowWidth`` tags."""
    if width <= 0:
        raise ValueError(f"window width must be > 0, got {width}")
    lo = center - width / 2.0
    scaled = (_finite_float(np.asarray(values)) - lo) / width
    return np.round(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)
