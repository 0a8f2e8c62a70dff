"""The image at the pipeline's working size, and the way back to the full image.

A very large image is segmented at ``max_side`` (SAM's own input size by default): its picture is
shrunk once (:func:`working_picture`), and the saliency map, coarse mask, boxes, points and mask
found at that size are mapped back to the full image (:func:`resize_map`, :func:`resize_mask`,
:func:`scale_boxes`, :func:`scale_points`). A constant image is recognised here too: it has
nothing to segment.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .data.io import load_picture

__all__ = ["WorkingPicture", "resize_map", "resize_mask", "scale_boxes", "scale_points", "shrink",
           "working_picture"]


@dataclass
class WorkingPicture:
    """One image as the pipeline works on it: ``rgb`` the uint8 RGB picture at the working size
    (None for a constant image: nothing to segment), ``shape`` the full image's (H, W), ``scale``
    the factors from working to full coordinates (None when the image fits ``max_side``)."""

    rgb: np.ndarray | None
    shape: tuple[int, int]
    scale: tuple[float, float] | None = None

    def map_in(self, saliency: Any) -> np.ndarray:
        """A saliency map of the full image, checked, at the working size."""
        sal = np.asarray(saliency, dtype=np.float32)
        if sal.shape != self.shape:
            raise ValueError(f"saliency map {sal.shape} does not match the image {self.shape}")
        return sal if self.scale is None else resize_map(sal, self.rgb.shape[:2])


def working_picture(image: Any, name: str, max_side: int | None, stacklevel: int) -> WorkingPicture:
    """The one conversion (medclipsam.data.convert): CLIP, the CRF and SAM all take this picture;
    a grey image stays grey until the size guard has shrunk it. A constant image and one larger
    than ``max_side`` are said in a warning (at ``stacklevel`` from here)."""
    full = load_picture(image, "auto")
    h, w = full.shape[:2]
    pixels = full.reshape(-1, full.shape[2]) if full.ndim == 3 else full.reshape(-1)
    if full.size and bool((pixels == pixels[0]).all()):
        value = pixels[0].tolist()
        warnings.warn(f"{name or 'image'}: constant image (every pixel {value}): "
                      "nothing to segment; empty mask, flag 'constant_image'",
                      UserWarning, stacklevel=stacklevel)
        return WorkingPicture(None, (h, w))
    rgb, scale = shrink(full, max_side)
    del full
    if rgb.ndim == 2:
        rgb = np.ascontiguousarray(np.repeat(rgb[:, :, None], 3, axis=2))
    if scale is not None:
        warnings.warn(f"{name or 'image'}: {w}x{h} is larger than max_side={max_side}: "
                      f"processed at {rgb.shape[1]}x{rgb.shape[0]} and mapped back "
                      "(flag 'large_image_downscaled')", UserWarning, stacklevel=stacklevel)
    return WorkingPicture(rgb, (h, w), scale)


def shrink(image: np.ndarray, max_side: int | None) -> tuple[np.ndarray, tuple[float, float] | None]:
    """``image`` (uint8, grey or RGB) shrunk (area-averaged) so that its longer side is
    ``max_side``, with the factors ``(sx, sy)`` from working to full coordinates; unchanged (and
    ``None``) if it fits."""
    h, w = image.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return image, None
    k = max_side / max(h, w)
    size = (max(1, round(w * k)), max(1, round(h * k)))  # PIL: (width, height)
    small = np.array(Image.fromarray(image).resize(size, Image.BOX, reducing_gap=3.0))  # writable
    return small, (w / size[0], h / size[1])


def resize_map(arr: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A 2D float map resized (bilinear) to ``shape`` = (H, W), as float32."""
    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))[None, None]
    return F.interpolate(t, size=shape, mode="bilinear", align_corners=False)[0, 0].numpy()


def resize_mask(mask: np.ndarray, shape: tuple[int, int], smooth: bool = False) -> np.ndarray:
    """A bool mask resized to ``shape``: nearest neighbour, or (``smooth``) bilinear then
    >= 0.5, which keeps diagonal edges from turning into steps."""
    if smooth:
        return resize_map(mask.astype(np.float32), shape) >= 0.5
    return np.asarray(Image.fromarray(np.ascontiguousarray(mask)).resize(
        (shape[1], shape[0]), Image.NEAREST), dtype=bool)


def scale_boxes(boxes: np.ndarray, scale: tuple[float, float], shape: tuple[int, int]) -> np.ndarray:
    """Inclusive-pixel xyxy boxes from working to full coordinates (the pixels they cover)."""
    sx, sy = scale
    b = np.asarray(boxes, dtype=np.float64)
    out = np.stack([b[:, 0] * sx, b[:, 1] * sy, (b[:, 2] + 1) * sx - 1, (b[:, 3] + 1) * sy - 1], 1)
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, shape[1] - 1)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, shape[0] - 1)
    return out


def scale_points(points: np.ndarray, scale: tuple[float, float], shape: tuple[int, int]) -> np.ndarray:
    """(x, y) points (pixel centres) from working to full coordinates."""
    out = np.array(points, dtype=np.float64)
    out[..., 0] = ((out[..., 0] + 0.5) * scale[0] - 0.5).clip(0, shape[1] - 1)
    out[..., 1] = ((out[..., 1] + 0.5) * scale[1] - 0.5).clip(0, shape[0] - 1)
    return out
