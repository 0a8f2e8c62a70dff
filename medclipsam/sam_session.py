"""Running SAM: one image embedding per image, any number of SAM prompts (boxes, points) against it.

:class:`SamSession` wraps a ``segment_anything.SamPredictor`` (or our ``MedSamPredictor``; see
:func:`medclipsam.models.load_sam`). ``set_image`` runs the image encoder, the expensive part,
once per image (setting the same pixels again is free); ``predict`` then decodes any SAM prompts
against the stored embedding, all boxes of one call in a single batched ``predict_torch`` call
(one mask per box; several masks are unioned: MedCLIP-SAM's "multi-contour" boxes for two
lungs). ``encoder_calls`` counts how often the image encoder actually ran.

Coordinates are those of :mod:`medclipsam.prompting`: boxes ``[x0, y0, x1, y1]`` and points
``(x, y)`` in pixels of the image given to ``set_image``; point labels 1 positive, 0 negative,
-1 padding.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .data.convert import to_uint8
from .prompting import SamPrompts

__all__ = ["SamResult", "SamSession"]


@dataclass
class SamResult:
    """SAM's answer to the SAM prompts of one :meth:`SamSession.predict` call.

    ``masks``: ``(N, H, W)`` bool, one per SAM prompt, at the image's size; ``scores``: ``(N,)``
    SAM's predicted IoU of each returned mask; ``choice``: ``(N,)`` which of SAM's three masks
    was taken per SAM prompt (0 without ``multimask``); ``low_res_logits``: ``(N, 1, 4 g, 4 g)``
    float32 logits of the returned masks for an embedding grid g (256 x 256 for SAM, 64 x 64
    for LiteMedSAM; SAM's ``mask_input`` format, for a refinement pass);
    ``mask``: ``(H, W)`` bool, the union of ``masks`` when ``union`` was asked, otherwise the
    mask with the highest score.
    """

    mask: np.ndarray
    masks: np.ndarray
    scores: np.ndarray
    choice: np.ndarray
    low_res_logits: np.ndarray

    @property
    def score(self) -> float:
        """The highest predicted IoU among the SAM prompts."""
        return float(self.scores.max())


class SamSession:
    """A ``SamPredictor`` with a stored image embedding, batched SAM prompts and an encoder counter.

    Use as a context manager (or call :meth:`close`) to remove the counting hook from the
    model when done; the predictor itself stays usable.
    """

    def __init__(self, predictor: Any) -> None:
        for attr in ("set_image", "predict_torch", "transform", "model"):
            if not hasattr(predictor, attr):
                raise TypeError(
                    f"expected a segment_anything SamPredictor, got {type(predictor).__name__} "
                    f"(no {attr!r}); load one with medclipsam.models.load_sam"
                )
        self.predictor = predictor
        counter = [0]
        self._counter = counter

        def _count(_module: Any, _inputs: Any, _output: Any) -> None:
            counter[0] += 1

        self._hook = predictor.model.image_encoder.register_forward_hook(_count)
        self._key: str | None = None
        self._features: Any = None
        self._shape: tuple[int, int] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def encoder_calls(self) -> int:
        """How many times the image encoder has run since this session was made."""
        return self._counter[0]

    def close(self) -> None:
        """Remove the counting hook from the model (idempotent)."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def __enter__(self) -> SamSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- image -----------------------------------------------------------------------------

    @property
    def image_shape(self) -> tuple[int, int] | None:
        """(H, W) of the image set, or None."""
        return self._shape

    def set_image(self, image: np.ndarray) -> bool:
        """Compute and store the embedding of ``image`` (any array, PIL image or tensor, made
        the uint8 RGB picture by :func:`medclipsam.data.convert.to_uint8`). Returns False,
        computing nothing, when the predictor already holds these exact pixels from this session."""
        rgb = to_uint8(image, "rgb")
        digest = hashlib.blake2b(rgb.tobytes(), digest_size=16)
        digest.update(repr(rgb.shape).encode())
        key = digest.hexdigest()
        p = self.predictor
        if key == self._key and getattr(p, "is_image_set", False) and p.features is self._features:
            return False
        _check_shape(rgb.shape[:2], getattr(getattr(p, "transform", None), "target_length", None))
        p.set_image(rgb, image_format="RGB")
        self._key, self._features, self._shape = key, p.features, rgb.shape[:2]
        return True

    # -- SAM prompts -----------------------------------------------------------------------

    def _check_set(self) -> tuple[int, int]:
        p = self.predictor
        if self._shape is None or not getattr(p, "is_image_set", False):
            raise RuntimeError("no image set: call set_image(image) before predict")
        if p.features is not self._features:
            raise RuntimeError(
                "the predictor's image was changed outside this session; call set_image again"
            )
        return self._shape

    @torch.no_grad()
    def predict(
        self,
        boxes: np.ndarray | None = None,
        points: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        *,
        multimask: bool = False,
        union: bool = True,
    ) -> SamResult:
        """Masks for ``N`` SAM prompts against the stored embedding, in one batched call.

        ``boxes``: ``(4,)`` or ``(N, 4)`` xyxy. ``points``: ``(P, 2)`` (one SAM prompt) or
        ``(N, P, 2)`` ``(x, y)``, with ``point_labels`` ``(P,)`` or ``(N, P)``. With both, box i
        and point group i form SAM prompt i (N must agree). ``multimask=True`` asks SAM for three
        masks per SAM prompt and keeps the one with the highest predicted IoU (SAM's advice for a
        lone point); otherwise one mask per SAM prompt. ``union``: see :class:`SamResult`.
        """
        h, w = self._check_set()
        p = self.predictor
        dev = p.device
        tb = coords = labels = None
        n = None
        if boxes is not None:
            b = np.asarray(boxes, dtype=np.float64)
            if b.ndim == 1:
                b = b[None]
            if b.ndim != 2 or b.shape[1] != 4 or b.shape[0] == 0:
                raise ValueError(f"boxes must be (4,) or (N, 4) x0, y0, x1, y1; got {b.shape}")
            if not np.all(np.isfinite(b)) or np.any(b[:, 2] < b[:, 0]) or np.any(b[:, 3] < b[:, 1]):
                raise ValueError(
                    f"boxes must be finite with x1 >= x0 and y1 >= y0; got {b.tolist()}"
                )
            n = b.shape[0]
            tb = p.transform.apply_boxes_torch(torch.as_tensor(b, dtype=torch.float32), (h, w))
            tb = tb.to(dev)
        if points is not None:
            if point_labels is None:
                raise ValueError("points need point_labels (1 positive, 0 negative, -1 padding)")
            c = np.asarray(points, dtype=np.float64)
            lab = np.asarray(point_labels)
            if c.ndim == 2:
                c, lab = c[None], lab[None] if lab.ndim == 1 else lab
            if c.ndim != 3 or c.shape[-1] != 2 or lab.shape != c.shape[:2] or c.shape[1] == 0:
                raise ValueError(
                    f"points must be (P, 2) or (N, P, 2) with labels (P,) or (N, P); got "
                    f"points {np.shape(points)} and labels {np.shape(point_labels)}"
                )
            if not np.all(np.isin(lab, (-1, 0, 1))) or not np.all(np.isfinite(c)):
                raise ValueError("point labels must be 1, 0 or -1 and coordinates finite")
            if n is not None and c.shape[0] != n:
                raise ValueError(f"{n} boxes but {c.shape[0]} point groups; one group per box")
            n = c.shape[0]
            coords = p.transform.apply_coords_torch(
                torch.as_tensor(c, dtype=torch.float32), (h, w)
            ).to(dev)
            labels = torch.as_tensor(lab, dtype=torch.int64, device=dev)
        if n is None:
            raise ValueError("give boxes, points, or both")
        masks, iou_pred, low = p.predict_torch(
            coords, labels, boxes=tb, multimask_output=bool(multimask)
        )
        choice = iou_pred.argmax(dim=1)  # 0 when a single mask was asked for
        idx = torch.arange(n, device=choice.device)
        masks_np = masks[idx, choice].cpu().numpy().astype(bool)
        scores = iou_pred[idx, choice].float().cpu().numpy()
        low_np = low[idx, choice][:, None].float().cpu().numpy()
        mask = masks_np.any(axis=0) if union else masks_np[int(np.argmax(scores))]
        return SamResult(mask, masks_np, scores, choice.cpu().numpy(), low_np)

    def predict_sam_prompts(
        self, sam_prompts: SamPrompts, *, multimask: bool | None = None, union: bool = True
    ) -> SamResult:
        """:meth:`predict` with :class:`medclipsam.prompting.SamPrompts` (from
        :func:`medclipsam.prompting.make_sam_prompts`) made at this image's size.
        ``multimask=None``: three masks per SAM prompt for points alone, one when there is a box."""
        shape = self._check_set()
        if sam_prompts.mask.shape != tuple(shape):
            raise ValueError(
                f"SAM prompts were made for a {sam_prompts.mask.shape} map but the image is {shape}"
            )
        if multimask is None:
            multimask = sam_prompts.boxes is None
        return self.predict(
            sam_prompts.boxes, sam_prompts.points, sam_prompts.point_labels, multimask=multimask, union=union
        )


class ImageShapeError(ValueError):
    """An image SAM cannot take (so elongated that its short side vanishes at SAM's size)."""


def _check_shape(shape: tuple[int, int], target: int | None) -> None:
    """Refuse, in words, an image whose short side would be under one pixel once its long side
    is scaled to SAM's input size ``target`` (PIL would fail with 'height and width must be > 0')."""
    h, w = int(shape[0]), int(shape[1])
    if target and int(min(h, w) * target / max(h, w) + 0.5) < 1:
        raise ImageShapeError(
            f"image of {h}x{w} pixels (HxW) is too elongated for SAM: scaled to SAM's input size "
            f"({target} px on the long side) its short side would be under one pixel; crop it, "
            "or pad it to a less extreme shape"
        )
