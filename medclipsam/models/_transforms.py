"""The per-axis resize to a square that MedSAM (and SAM 2) feed their image encoders, with
segment_anything's ``ResizeLongestSide`` interface (``apply_image``, ``apply_coords``,
``apply_boxes`` and their torch versions), shared by :class:`medclipsam.models.sam.MedSamPredictor`
and :class:`medclipsam.models.sam2.Sam2Predictor`; and :func:`rgb_channels`, the channel handling
MedSAM's and LiteMedSAM's predictors share."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["StretchTransform", "rgb_channels"]


def rgb_channels(image: np.ndarray, image_format: str, model_format: str) -> np.ndarray:
    """``image`` as (H, W, 3) in the model's channel order: grey repeated, alpha dropped, BGR and
    RGB swapped when ``image_format`` is not ``model_format``; any dtype is kept."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise ValueError(f"expected an (H, W) or (H, W, 3) image, got shape {image.shape}")
    image = image[..., :3]
    return image[..., ::-1] if image_format != model_format else image


class StretchTransform:
    """Per-axis resize to a square (MedSAM's convention), with SAM's transform interface."""

    def __init__(self, target_length: int) -> None:
        self.target_length = target_length

    def _scale(self, original_size: tuple[int, ...]) -> tuple[float, float]:
        h, w = original_size
        return self.target_length / w, self.target_length / h

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
        t = F.interpolate(
            t, size=(self.target_length,) * 2, mode="bicubic", antialias=True, align_corners=False
        )
        return t[0].permute(1, 2, 0).clamp(0, 255).round().byte().numpy()

    def apply_coords(self, coords: np.ndarray, original_size: tuple[int, ...]) -> np.ndarray:
        sx, sy = self._scale(original_size)
        coords = np.array(coords, dtype=float, copy=True)
        coords[..., 0] *= sx
        coords[..., 1] *= sy
        return coords

    def apply_boxes(self, boxes: np.ndarray, original_size: tuple[int, ...]) -> np.ndarray:
        return self.apply_coords(np.asarray(boxes).reshape(-1, 2, 2), original_size).reshape(-1, 4)

    def apply_coords_torch(
        self, coords: torch.Tensor, original_size: tuple[int, ...]
    ) -> torch.Tensor:
        sx, sy = self._scale(original_size)
        coords = coords.clone().float()
        coords[..., 0] *= sx
        coords[..., 1] *= sy
        return coords

    def apply_boxes_torch(
        self, boxes: torch.Tensor, original_size: tuple[int, ...]
    ) -> torch.Tensor:
        return self.apply_coords_torch(boxes.reshape(-1, 2, 2), original_size).reshape(-1, 4)
