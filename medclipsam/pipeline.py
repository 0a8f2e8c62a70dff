"""The whole zero-shot method in one object: text prompt + image -> saliency -> prompts -> SAM mask.

::

    from medclipsam import MedCLIPSAM
    pipe = MedCLIPSAM.toy()                          # toy world: shipped toy CLIP and toy SAM
    res = pipe.predict(image, "breast tumor")        # one image, one prompt
    res.mask, res.saliency, res.boxes, res.flags, res.timings

    pipe = MedCLIPSAM.from_pretrained(clip="biomedclip", sam="vit_b")   # real world (downloads)
    pipe.run_folder("images/", "breast tumor", "out/")                # masks/*.png + results.csv
    pipe.sweep(images, "breast tumor", [{"postprocess": "otsu"}, {"prompt_mode": "points"}])
                                                    # several settings, one SAM embedding per image

Every intermediate is kept in the :class:`SegmentationResult`. Settings live in
:class:`PipelineConfig`; per-task presets (:data:`TASK_PRESETS`) say what the paper changes per task
(two lungs: the two largest components, one box each, masks unioned). Nothing in the pipeline looks
at a ground-truth mask.

Two saliency *controls* exist for experiments: ``saliency="random"`` (a smooth random map,
seeded per image) and ``saliency="uniform"`` (a constant map). With them the text prompt cannot
drive the result, so the Dice drop they cause measures how much the prompt does.
"""

from __future__ import annotations

import csv
import json
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._utils import atomic_path, atomic_write_text

if TYPE_CHECKING:
    from .prompting import Prompts

__all__ = [
    "CONTROL_SALIENCY",
    "MedCLIPSAM",
    "PipelineConfig",
    "SegmentationResult",
    "TASK_PRESETS",
    "TOY_DEFAULTS",
    "evaluate_phantom",
    "evaluate_predictions",
    "evaluate_settings",
]

#: Saliency "methods" that ignore the prompt, for control experiments.
CONTROL_SALIENCY = ("random", "uniform")

#: The settings :meth:`MedCLIPSAM.toy` starts from (see there).
TOY_DEFAULTS: dict[str, Any] = {"saliency_kwargs": lambda: {"k": 24}, "prompt_mode": "box+points"}

#: What the paper changes per task (everything else stays at the :class:`PipelineConfig` default),
#: and the smallest box each task accepts (a share of the image: lesions can be small, a lung is
#: never below 0.5 % of a chest X-ray; on the phantom validation and test splits the smallest
#: target's box is 1.5 % (breast), 0.77 % (brain) and 13 % (xray) of the image).
TASK_PRESETS: dict[str, dict[str, Any]] = {
    "breast": {"n_components": 1, "box_mode": "largest", "min_box_area": 5e-4},
    "brain": {"n_components": 1, "box_mode": "largest", "min_box_area": 5e-4},
    "xray": {"n_components": 2, "box_mode": "per_component", "min_box_area": 5e-3},
}

RESULTS_COLUMNS = (
    "id", "prompt", "mask_file", "sam_score", "mask_area", "n_boxes", "boxes", "flags",
    "height", "width", "t_saliency", "t_prompts", "t_sam_embed", "t_sam_decode", "t_total",
)


@dataclass
class PipelineConfig:
    """Settings of :class:`MedCLIPSAM` (defaults: MedCLIP-SAM v1: gScoreCAM, dense CRF, one box).

    * ``saliency``: ``"gscorecam"`` (paper), ``"gradcam"``, ``"m2ib"`` (v2), or a control
      (``"random"``, ``"uniform"``); ``saliency_kwargs`` go to the method (e.g. ``k``,
      ``precision``, ``weighting``).
    * ``postprocess``: ``"crf"`` (v1, default; needs the ``crf`` extra: without it the pipeline
      uses k-means and says so in each result's flags, ``"crf_unavailable_used_kmeans"``),
      ``"kmeans"`` (v2), ``"threshold"`` (at ``threshold``), ``"otsu"``.
    * ``n_components`` largest components are kept; ``box_mode``: ``"largest"`` (one box),
      ``"per_component"`` (one per kept component, masks unioned) or ``"union"`` (one box
      around all kept).
    * ``prompt_mode``: ``"box"`` (paper v1), ``"points"`` or ``"box+points"`` (v2) with
      ``points`` positives and ``negatives`` negatives per region.
    * ``multimask``: let SAM propose three masks per prompt and keep the best by predicted IoU
      (``None``: only for point prompts without a box).
    * ``min_box_area``: boxes smaller than this share of the image are dropped (flag
      ``"small_box_dropped"``; none left: the flagged whole-image fallback). The default, 1e-4,
      removes specks (a one-pixel box) on any image size; the task presets set their own.
    """

    saliency: str = "gscorecam"
    saliency_kwargs: dict = field(default_factory=dict)
    postprocess: str = "crf"
    threshold: float = 0.3
    n_components: int = 1
    box_mode: str = "largest"
    prompt_mode: str = "box"
    points: int = 1
    negatives: int = 0
    multimask: bool | None = None
    min_box_area: float = 1e-4
    seed: int = 0

    def for_task(self, task: str | None) -> PipelineConfig:
        """This configuration with the task's preset applied (unknown task: unchanged)."""
        return replace(self, **TASK_PRESETS.get(task or "", {}))

    def to_dict(self) -> dict:
        return asdict(self)


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
        """One row of ``results.csv``."""
        h, w = self.mask.shape
        return {
            "id": self.id,
            "prompt": self.prompt,
            "mask_file": mask_file,
            "sam_score": round(float(self.sam_score), 4),
            "mask_area": int(self.mask.sum()),
            "n_boxes": 0 if self.boxes is None else len(self.boxes),
            "boxes": json.dumps([] if self.boxes is None else np.round(self.boxes, 1).tolist()),
            "flags": " ".join(self.flags),
            "height": h,
            "width": w,
            **{f"t_{k}": round(v, 4) for k, v in self.timings.items()},
        }


def _control_map(kind: str, shape: tuple[int, int], seed: int) -> np.ndarray:
    if kind == "uniform":
        return np.full(shape, 0.5, dtype=np.float32)
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.random(shape), sigma=max(2.0, 0.05 * min(shape)))
    lo, hi = float(noise.min()), float(noise.max())
    return ((noise - lo) / (hi - lo + 1e-12)).astype(np.float32)


def _image_array(image: Any) -> np.ndarray:
    """A path (any format the data layer reads), PIL image or array -> uint8 RGB (H, W, 3)."""
    from .prompting import to_uint8_rgb

    if isinstance(image, (str, Path)):
        from .data.io import read_image

        return read_image(image, mode="rgb")
    if hasattr(image, "convert") and not isinstance(image, np.ndarray):  # PIL
        return np.array(image.convert("RGB"))
    return to_uint8_rgb(np.asarray(image))


class MedCLIPSAM:
    """Text-prompted zero-shot segmentation: CLIP saliency -> coarse mask -> prompts -> SAM.

    ``clip`` is a :class:`~medclipsam.models.clip.ClipBundle`, ``sam`` a segment_anything
    ``SamPredictor`` (see :func:`~medclipsam.models.load_clip` / :func:`~medclipsam.models.load_sam`),
    ``config`` a :class:`PipelineConfig` (keyword arguments override its fields).
    """

    def __init__(self, clip: Any, sam: Any, config: PipelineConfig | None = None, **overrides: Any) -> None:
        from .sam_prompting import SamSession

        self.clip = clip
        self.sam = sam
        self.config = replace(config or PipelineConfig(), **overrides)
        _check_config(self.config)
        self.session = SamSession(sam)
        #: ``"toy"`` (:meth:`toy`), ``"real"`` (:meth:`from_pretrained`) or ``"custom"``.
        self.world = "custom"

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def toy(cls, *, device: Any = "cpu", **overrides: Any) -> MedCLIPSAM:
        """The toy world: the shipped toy CLIP and toy SAM (CPU, about a second per image).

        Its defaults (:data:`TOY_DEFAULTS`, chosen on the phantom *validation* split, never on the
        test split): gScoreCAM keeps k = 24 channels, since the toy CLIP's layer has 128 and the
        paper's k = 300 would be all of them (plain ScoreCAM), whose maps localise poorly on this
        model; prompts are a box plus one positive point (v2's box+points), which beat a box
        alone on every task there. Keyword arguments override them."""
        from .models import load_clip, load_sam

        for key, value in TOY_DEFAULTS.items():
            if key == "saliency_kwargs" and overrides.get("saliency", "gscorecam") != "gscorecam":
                continue
            overrides.setdefault(key, value() if callable(value) else value)
        pipe = cls(load_clip("toy", device=device), load_sam("toy", device=device), **overrides)
        pipe.world = "toy"
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
        from .models import load_clip, load_sam

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
                 seed: int = 0) -> np.ndarray:
        """Saliency maps ``(P, H, W)`` float32 in [0, 1] of ``prompts`` over ``image``, in the
        image's own coordinates (text features computed once for all prompts)."""
        cfg = config or self.config
        rgb = _image_array(image)
        plist = [prompts] if isinstance(prompts, str) else list(prompts)
        if cfg.saliency in CONTROL_SALIENCY:
            return np.stack([_control_map(cfg.saliency, rgb.shape[:2], seed + i) for i in range(len(plist))])
        from .saliency.api import saliency_maps

        maps = saliency_maps(self.clip, rgb, plist, method=cfg.saliency, **cfg.saliency_kwargs)
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
        plist = [prompts] * len(items) if isinstance(prompts, str) else list(prompts)
        if len(plist) != len(items):
            raise ValueError(f"{len(items)} images but {len(plist)} prompts; give one prompt or one per image")
        ids = list(ids) if ids is not None else [str(i) for i in range(len(items))]
        given = [None] * len(items)
        if maps is not None:
            given = [maps] if single else list(maps)
            if len(given) != len(items):
                raise ValueError(f"{len(items)} images but {len(given)} saliency maps")
        cfg = self._call_config(task, overrides)
        out = []
        for i, (im, pr, name, sal) in enumerate(
            _progress(zip(items, plist, ids, given), len(items), progress)
        ):
            out.append(self._one(im, pr, cfg, name, seed=cfg.seed + i, saliency=sal))
        return out[0] if single else out

    def _call_config(self, task: str | None, overrides: dict[str, Any]) -> PipelineConfig:
        """The configuration of one call: the task's preset, then ``overrides``."""
        overrides = dict(overrides)
        if overrides.get("saliency", self.config.saliency) != self.config.saliency:
            overrides.setdefault("saliency_kwargs", {})  # another method: its own defaults
        cfg = replace(self.config.for_task(task), **overrides)
        _check_config(cfg)
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
        plist = [prompts] * len(items) if isinstance(prompts, str) else list(prompts)
        if len(plist) != len(items):
            raise ValueError(f"{len(items)} images but {len(plist)} prompts; give one prompt or one per image")
        ids = list(ids) if ids is not None else [str(i) for i in range(len(items))]
        given = list(maps) if maps is not None else [None] * len(items)
        if len(given) != len(items):
            raise ValueError(f"{len(items)} images but {len(given)} saliency maps")
        cfgs = [self._call_config(task, dict(over)) for over in settings]
        base = self.config.for_task(task)
        base_key = (base.saliency, _freeze(base.saliency_kwargs))
        out: list[list[SegmentationResult]] = [[] for _ in cfgs]
        for i, (im, pr, name, sal) in enumerate(
            _progress(zip(items, plist, ids, given), len(items), progress)
        ):
            rgb = _image_array(im)
            seed = i  # offset by each configuration's own seed below, as in predict
            cache: dict[tuple, np.ndarray] = {}
            if sal is not None:
                cache[base_key + (base.seed + seed,)] = np.asarray(sal, dtype=np.float32)
            for s, cfg in enumerate(cfgs):
                key = (cfg.saliency, _freeze(cfg.saliency_kwargs), cfg.seed + seed)
                if key not in cache:
                    cache[key] = self.saliency(rgb, [pr], cfg, seed=cfg.seed + seed)[0]
                out[s].append(self._one(rgb, pr, cfg, name, seed=cfg.seed + seed, saliency=cache[key]))
        return out

    def prompts_from(self, saliency: np.ndarray, image: np.ndarray,
                     config: PipelineConfig | None = None, seed: int | None = None) -> Prompts:
        """SAM prompts from a saliency map of ``image`` (uint8 RGB) with ``config``'s
        post-processing and prompt settings. Without the ``crf`` extra, ``"crf"`` falls back to
        k-means and says so in the flags (``"crf_unavailable_used_kmeans"``)."""
        from .prompting import make_prompts

        cfg = config or self.config
        post, extra_flags = cfg.postprocess, ()
        if post == "crf" and not _crf_available():
            post, extra_flags = "kmeans", ("crf_unavailable_used_kmeans",)
        pr = make_prompts(
            saliency, image=image, postprocess=post, threshold=cfg.threshold,
            box_mode=cfg.box_mode, n_components=cfg.n_components, mode=cfg.prompt_mode,
            points=cfg.points, negatives=cfg.negatives, min_box_area=cfg.min_box_area,
            seed=cfg.seed if seed is None else seed,
        )
        return replace(pr, flags=tuple(pr.flags) + extra_flags) if extra_flags else pr

    def _one(self, image: Any, prompt: str, cfg: PipelineConfig, name: str, seed: int,
             saliency: np.ndarray | None = None) -> SegmentationResult:
        t: dict[str, float] = {}
        t0 = time.perf_counter()
        rgb = _image_array(image)
        if saliency is None:
            sal = self.saliency(rgb, [prompt], cfg, seed=seed)[0]
        else:
            sal = np.asarray(saliency, dtype=np.float32)
            if sal.shape != rgb.shape[:2]:
                raise ValueError(f"saliency map {sal.shape} does not match the image {rgb.shape[:2]}")
        t["saliency"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        pr = self.prompts_from(sal, rgb, cfg, seed=seed)
        t["prompts"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        self.session.set_image(rgb)
        t["sam_embed"] = time.perf_counter() - t2
        t3 = time.perf_counter()
        res = self.session.predict_prompts(pr, multimask=cfg.multimask, union=True)
        t["sam_decode"] = time.perf_counter() - t3
        t["total"] = time.perf_counter() - t0
        return SegmentationResult(
            prompt=prompt, saliency=sal, coarse_mask=pr.mask, boxes=pr.boxes, points=pr.points,
            point_labels=pr.point_labels, mask=res.mask, sam_score=res.score,
            flags=tuple(pr.flags),
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
    ) -> list[dict]:
        """Segment every image of ``images_dir`` (not recursive), writing as it goes:
        ``out_dir/masks/<stem>.png`` (0/255), one row per image in ``out_dir/results.csv`` and
        ``out_dir/run.json`` (prompt and settings). With ``resume`` (default) images that already
        have a row and a mask are skipped, so an interrupted run continues where it stopped;
        a run with other settings in the same ``out_dir`` is refused. ``stems`` restricts the run
        to those file stems (e.g. one split). Returns all rows."""
        from .data.datasets import list_image_files
        from .data.io import write_mask

        images_dir, out_dir = Path(images_dir), Path(out_dir)
        by_stem, _ = list_image_files(images_dir)
        dup = sorted(s for s, paths in by_stem.items() if len(paths) > 1)
        if dup:
            raise ValueError(f"{images_dir}: several files share a stem ({', '.join(dup[:5])}); rename them")
        if stems is not None:
            missing = sorted(set(stems) - set(by_stem))
            if missing:
                raise FileNotFoundError(
                    f"{images_dir}: no image for {len(missing)} requested stem(s): {', '.join(missing[:5])}"
                )
            by_stem = {k: by_stem[k] for k in stems}
        stems = sorted(by_stem)[:limit] if limit else sorted(by_stem)
        if not stems:
            raise FileNotFoundError(f"{images_dir}: no image files found")
        cfg = self.config.for_task(task)
        (out_dir / "masks").mkdir(parents=True, exist_ok=True)
        settings = {"prompt": prompt, "task": task, "config": cfg.to_dict()}
        run_file = out_dir / "run.json"
        csv_path = out_dir / "results.csv"
        done: dict[str, dict] = {}
        if run_file.exists() and csv_path.exists():
            previous = json.loads(run_file.read_text())
            if previous != json.loads(json.dumps(settings)):
                raise ValueError(
                    f"{out_dir} holds a run with other settings ({run_file}); use another out_dir "
                    "or delete it"
                )
            if resume:
                with open(csv_path, newline="") as fh:
                    done = {r["id"]: r for r in csv.DictReader(fh)
                            if (out_dir / r["mask_file"]).is_file()}
        atomic_write_text(run_file, json.dumps(settings, indent=1) + "\n")
        _write_rows(csv_path, list(done.values()))  # every finished row, also of other stems
        rows = [done[s] for s in stems if s in done]
        todo = [s for s in stems if s not in done]
        for stem in _progress(todo, len(todo), progress):
            # the seed depends on the file, not on its position, so subsets give the same masks
            seed = cfg.seed + zlib.crc32(stem.encode()) % 2**31
            res = self._one(by_stem[stem][0], prompt, cfg, stem, seed=seed)
            mask_file = f"masks/{stem}.png"
            write_mask(out_dir / mask_file, res.mask)
            if overlays:
                _save_overlay(out_dir / "overlays" / f"{stem}.png", res, by_stem[stem][0])
            rows.append(res.row(mask_file))
            _append_row(csv_path, rows[-1])
        return sorted(rows, key=lambda r: r["id"])


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
    from .metrics import evaluate_masks

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
    from .metrics import evaluate_masks, summarize

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
    tasks: Sequence[str] = ("breast", "brain", "xray"),
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
    from .data.phantom import PROMPTS, PhantomDataset
    from .metrics import summarize

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


def _check_config(cfg: PipelineConfig) -> None:
    from .prompting import BOX_MODES, COARSE_METHODS, PROMPT_MODES

    methods = ("gscorecam", "gradcam", "m2ib", *CONTROL_SALIENCY)
    for name, value, allowed in (
        ("saliency", cfg.saliency, methods),
        ("postprocess", cfg.postprocess, COARSE_METHODS),
        ("box_mode", cfg.box_mode, BOX_MODES),
        ("prompt_mode", cfg.prompt_mode, PROMPT_MODES),
    ):
        if value not in allowed:
            raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")
    if cfg.n_components < 1:
        raise ValueError(f"n_components must be >= 1, got {cfg.n_components}")
    if not 0.0 <= cfg.min_box_area < 1.0:
        raise ValueError(f"min_box_area is a share of the image in [0, 1), got {cfg.min_box_area}")


_CRF: list[bool] = []


def _crf_available() -> bool:
    """Whether pydensecrf (the ``crf`` extra) imports; warns once when it does not."""
    if not _CRF:
        try:
            import pydensecrf.densecrf  # noqa: F401

            _CRF.append(True)
        except ImportError:
            import warnings

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


def _progress(it: Iterable, total: int, show: bool) -> Iterable:
    if not show:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, total=total, unit="image")


def _write_rows(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=RESULTS_COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def _append_row(path: Path, row: dict) -> None:
    with open(path, "a", newline="") as fh:
        csv.DictWriter(fh, fieldnames=RESULTS_COLUMNS, extrasaction="ignore").writerow(row)
        fh.flush()


def _save_overlay(path: Path, res: SegmentationResult, image: Any) -> None:
    from .viz import result_figure, save_figure

    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(result_figure(_image_array(image), res), path)
