"""Text-prompted baselines beside MedCLIP-SAM: SAM 3 segmenting from the text alone.

:class:`Sam3TextBaseline` answers like :class:`~medclipsam.pipeline.MedCLIPSAM`: ``predict(images,
prompt)`` returns :class:`~medclipsam.pipeline.SegmentationResult` objects and
``run_folder(images_dir, prompt, out_dir)`` writes ``masks/*.png``, ``results.csv`` and
``run.json`` (resumable), so :func:`~medclipsam.evaluation.evaluate_predictions`,
:func:`~medclipsam.reproduce.reproduce` (as its zero-shot stage), ``medclipsam evaluate`` on its
masks and :func:`~medclipsam.compare.compare_backends` take it where they take the pipeline::

    from medclipsam.text_baselines import Sam3TextBaseline
    sam3 = Sam3TextBaseline.from_pretrained()        # facebook/sam3 (gated: request access first)
    res = sam3.predict(image, "breast lesion")
    res.mask, res.boxes, res.sam_score

What the result's fields hold for SAM 3 (it has no CLIP saliency and no prompts of its own):
``saliency`` is SAM 3's semantic-segmentation map for the phrase (a probability per pixel),
``coarse_mask`` that map cut at 0.5, ``boxes`` the boxes of the instances kept (``None`` when
none), ``mask`` the union of the kept instances' masks (``keep="all"``, default: two lungs are two
instances) or the best one (``keep="best"``), ``sam_score`` the highest instance score (kept or
not: SAM 3's confidence that the phrase is there), and ``flags`` ``"sam3_nothing_found"`` when no
instance passed the threshold (the mask is then empty: SAM 3 says the concept is absent).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from . import folder_runs
from .data.io import load_picture
from .models.sam3 import load_sam3
from .per_image import image_progress, prompts_per_image
from .pipeline import SegmentationResult

__all__ = ["Sam3TextBaseline", "Sam3TextConfig"]


@dataclass
class Sam3TextConfig:
    """Settings of :class:`Sam3TextBaseline`: instance score ``threshold`` (SAM 3's own 0.5),
    ``mask_threshold`` on mask probabilities, ``keep`` ``"all"`` (union of the instances above
    the threshold) or ``"best"`` (the highest-scoring one). ``seed`` is there for the folder
    runner's per-file seeds; SAM 3 itself is deterministic."""

    model: str = "facebook/sam3"
    threshold: float = 0.5
    mask_threshold: float = 0.5
    keep: str = "all"
    seed: int = 0

    def for_task(self, task: str | None) -> Sam3TextConfig:  # noqa: ARG002
        """No per-task preset: SAM 3 returns every instance (both lungs) by itself."""
        return self

    def to_dict(self) -> dict:
        return asdict(self)


def _check(cfg: Sam3TextConfig) -> None:
    if cfg.keep not in ("all", "best"):
        raise ValueError(f"unknown keep {cfg.keep!r}; choose 'all' or 'best'")
    for name in ("threshold", "mask_threshold"):
        v = getattr(cfg, name)
        if not 0.0 <= v < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {v}")


class Sam3TextBaseline:
    """SAM 3 from the text alone, with the pipeline's interface (see the module doc).

    ``model``: a :class:`~medclipsam.models.sam3.Sam3TextModel` (:func:`~medclipsam.models.sam3.load_sam3`
    for the real weights, :func:`~medclipsam.models.sam3.build_sam3` for random ones)."""

    def __init__(self, model: Any, config: Sam3TextConfig | None = None, **overrides: Any) -> None:
        self.model = model
        self.config = replace(config or Sam3TextConfig(model=getattr(model, "name", "sam3")), **overrides)
        _check(self.config)

    @classmethod
    def from_pretrained(cls, name: str = "facebook/sam3", *, device: Any = "auto",
                        **overrides: Any) -> Sam3TextBaseline:
        """Load SAM 3's weights (a hub id or a local folder; see :func:`~medclipsam.models.sam3.load_sam3`)."""
        return cls(load_sam3(name, device=device), Sam3TextConfig(model=str(name)), **overrides)

    def __repr__(self) -> str:
        return f"Sam3TextBaseline({self.config})"

    def close(self) -> None:
        """Nothing to release (the pipeline's counterpart removes a hook)."""

    @property
    def encoder_calls(self) -> int:
        """How many times SAM 3's vision encoder has run."""
        return self.model.encoder_calls

    def predict(
        self,
        images: Any,
        prompts: str | Sequence[str],
        *,
        task: str | None = None,
        ids: Sequence[str] | None = None,
        progress: bool = False,
        **overrides: Any,
    ) -> SegmentationResult | list[SegmentationResult]:
        """Segment what ``prompts`` names in ``images`` (one or a list; one prompt or one per
        image); ``overrides`` change :class:`Sam3TextConfig` fields for this call."""
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        plist, ids = prompts_per_image(items, prompts, ids)
        cfg = replace(self.config.for_task(task), **overrides)
        _check(cfg)
        out = [self.segment_one(im, pr, cfg, name, seed=0)
               for im, pr, name in image_progress(zip(items, plist, ids), len(items), progress)]
        return out[0] if single else out

    def segment_one(self, image: Any, prompt: str, cfg: Sam3TextConfig, name: str = "",
                    seed: int = 0) -> SegmentationResult:  # noqa: ARG002  (the pipeline's signature)
        """One image with ``cfg`` as it is (SAM 3 is deterministic: ``seed`` is not used)."""
        t0 = time.perf_counter()
        rgb = load_picture(image)
        self.model.set_image(rgb)
        t1 = time.perf_counter()
        out = self.model.segment(prompt, threshold=cfg.threshold, mask_threshold=cfg.mask_threshold)
        masks, boxes = out.masks, out.boxes
        if cfg.keep == "best":
            masks, boxes = masks[:1], boxes[:1]
        mask = masks.any(axis=0) if len(masks) else np.zeros(rgb.shape[:2], dtype=bool)
        flags = () if len(masks) else ("sam3_nothing_found",)
        total = time.perf_counter() - t0
        timings = {"saliency": 0.0, "sam_prompts": out.timings.get("text", 0.0), "sam_embed": t1 - t0,
                   "sam_decode": out.timings.get("decode", 0.0), "total": total}
        return SegmentationResult(
            prompt=prompt, saliency=out.semantic, coarse_mask=out.semantic > 0.5,
            boxes=boxes if len(boxes) else None, points=None, point_labels=None, mask=mask,
            sam_score=out.best_score, flags=flags, timings=timings, id=name,
        )

    def run_folder(self, images_dir: str | Path, prompt: str, out_dir: str | Path,
                   **options: Any) -> list[dict]:
        """As :meth:`MedCLIPSAM.run_folder <medclipsam.pipeline.MedCLIPSAM.run_folder>`: the same
        folder runner (:func:`medclipsam.folder_runs.run_folder`), resumable, with the same files."""
        return folder_runs.run_folder(self, images_dir, prompt, out_dir, **options)
