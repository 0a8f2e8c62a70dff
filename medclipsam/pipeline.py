"""The whole zero-shot method in one object: text prompt + image -> saliency -> prompts -> SAM mask.

::

    from medclipsam import MedCLIPSAM
    pipe = MedCLIPSAM.toy()                          # toy world: shipped toy CLIP and toy SAM
    res = pipe.predict(image, "breast tumor")        # one image, one prompt
    res.mask, res.saliency, res.boxes, res.flags, res.timings

    pipe = MedCLIPSAM.from_pretrained(clip="biomedclip", sam="vit_b")   # real world (downloads)
    pipe.run_folder("images/", "breast tumor", "out/")                # masks/*.png + results.csv

Every intermediate is kept in the :class:`SegmentationResult`. Settings live in
:class:`~medclipsam.config.PipelineConfig`; per-task presets (:data:`~medclipsam.config.TASK_PRESETS`)
say what the paper changes per task (two lungs: the two largest components, one box each, masks
unioned). Nothing in the pipeline looks at a ground-truth mask.

One call, step by step (:meth:`MedCLIPSAM._one`): the image becomes the uint8 RGB picture once
(:func:`~medclipsam.data.io.load_rgb`, the package's one image rule); CLIP's saliency maps of the
prompt (:func:`~medclipsam.saliency.saliency_maps`); the coarse mask and SAM's boxes and points
(:func:`~medclipsam.prompting.make_prompts`); SAM's embedding of the picture, once per image, and its
masks (:class:`~medclipsam.sam_prompting.SamSession`).

Two saliency *controls* exist for experiments: ``saliency="random"`` (a smooth random map,
seeded per image) and ``saliency="uniform"`` (a constant map). With them the text prompt cannot
drive the result, so the Dice drop they cause measures how much the prompt does.
"""

from __future__ import annotations

import csv
import json
import time
import warnings
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from tqdm.auto import tqdm

from ._utils import atomic_path, atomic_write_text
from .config import TOY_DEFAULTS, PipelineConfig
from .data.datasets import list_image_files
from .data.io import load_rgb, write_mask
from .data.phantom import PROMPTS, PhantomDataset
from .metrics import evaluate_masks, summarize
from .models import load_clip, load_sam
from .prompting import Prompts, make_prompts
from .saliency.api import saliency_maps
from .sam_prompting import SamSession
from .viz import result_figure, save_figure
from .vocab import CONTROL_SALIENCY, TASKS

__all__ = [
    "MedCLIPSAM",
    "SegmentationResult",
    "evaluate_phantom",
    "evaluate_predictions",
]

RESULTS_COLUMNS = (
    "id", "prompt", "mask_file", "sam_score", "mask_area", "n_boxes", "boxes", "flags",
    "height", "width", "t_saliency", "t_prompts", "t_sam_embed", "t_sam_decode", "t_total",
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

    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.random(shape), sigma=max(2.0, 0.05 * min(shape)))
    lo, hi = float(noise.min()), float(noise.max())
    return ((noise - lo) / (hi - lo + 1e-12)).astype(np.float32)


def _image_array(image: Any) -> np.ndarray:
    """A path, array, PIL image or tensor -> the uint8 RGB picture (H, W, 3): see
    :func:`medclipsam.data.io.load_rgb`."""
    return load_rgb(image)


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

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def toy(cls, *, device: Any = "cpu", **overrides: Any) -> MedCLIPSAM:
        """The toy world: the shipped toy CLIP and toy SAM (CPU, about a second per image).

        Its defaults (:data:`TOY_DEFAULTS`, chosen on the phantom *validation* split, never on the
        test split): gScoreCAM keeps k = 24 channels, since the toy CLIP's layer has 128 and the
        paper's k = 300 would be all of them (plain ScoreCAM), whose maps localise poorly on this
        model; prompts are a box plus one positive point (v2's box+points), which beat a box
        alone on every task there. Keyword arguments override them."""
        for key, value in TOY_DEFAULTS.items():
            if key == "saliency_kwargs" and overrides.get("saliency", "gscorecam") != "gscorecam":
                continue
            overrides.setdefault(key, value() if callable(value) else value)
        return cls(load_clip("toy", device=device), load_sam("toy", device=device), **overrides)

    @classmethod
    def from_pretrained(
        cls, clip: str = "biomedclip", sam: str = "vit_b", *, device: Any = "auto", **overrides: Any
    ) -> MedCLIPSAM:
        """The real world: BiomedCLIP (or a fine-tuned checkpoint path) and SAM/MedSAM weights,
        downloaded and verified on first use (see :mod:`medclipsam.models`)."""
        return cls(load_clip(clip, device=device), load_sam(sam, device=device), **overrides)

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
        return self._saliency(load_rgb(image), prompts, config or self.config, seed)

    def _saliency(self, rgb: np.ndarray, prompts: str | Sequence[str], cfg: PipelineConfig,
                  seed: int) -> np.ndarray:
        """:meth:`saliency` of a picture already converted by :func:`~medclipsam.data.io.load_rgb`."""
        plist = [prompts] if isinstance(prompts, str) else list(prompts)
        if cfg.saliency in CONTROL_SALIENCY:
            return np.stack([_control_map(cfg.saliency, rgb.shape[:2], seed + i) for i in range(len(plist))])

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
        if overrides.get("saliency", self.config.saliency) != self.config.saliency:
            overrides.setdefault("saliency_kwargs", {})  # another method: its own defaults
        cfg = replace(self.config.for_task(task), **overrides)
        cfg.validate()
        out = []
        for i, (im, pr, name, sal) in enumerate(
            _progress(zip(items, plist, ids, given), len(items), progress)
        ):
            out.append(self._one(im, pr, cfg, name, seed=cfg.seed + i, saliency=sal))
        return out[0] if single else out

    def prompts_from(self, saliency: np.ndarray, image: np.ndarray,
                     config: PipelineConfig | None = None, seed: int | None = None) -> Prompts:
        """SAM prompts from a saliency map of ``image`` (uint8 RGB) with ``config``'s
        post-processing and prompt settings. Without the ``crf`` extra, ``"crf"`` falls back to
        k-means and says so in the flags (``"crf_unavailable_used_kmeans"``)."""
        cfg = config or self.config
        post, extra_flags = cfg.postprocess, ()
        if post == "crf" and not _crf_available():
            post, extra_flags = "kmeans", ("crf_unavailable_used_kmeans",)
        pr = make_prompts(
            saliency, image=image, postprocess=post, threshold=cfg.threshold,
            box_mode=cfg.box_mode, n_components=cfg.n_components, mode=cfg.prompt_mode,
            points=cfg.points, negatives=cfg.negatives, seed=cfg.seed if seed is None else seed,
        )
        return replace(pr, flags=tuple(pr.flags) + extra_flags) if extra_flags else pr

    def _one(self, image: Any, prompt: str, cfg: PipelineConfig, name: str, seed: int,
             saliency: np.ndarray | None = None) -> SegmentationResult:
        t: dict[str, float] = {}
        t0 = time.perf_counter()
        rgb = load_rgb(image)  # the one conversion: CLIP, the CRF and SAM all take this picture
        if saliency is None:
            sal = self._saliency(rgb, [prompt], cfg, seed)[0]
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
    results = pipe.predict(list(images), prompt, task=task, ids=ids, **overrides)
    rows = evaluate_masks([r.mask for r in results], list(masks), ids=[r.id for r in results],
                          nsd_tolerance=nsd_tolerance)
    for row, r in zip(rows, results):
        row.update(sam_score=r.sam_score, flags=" ".join(r.flags), seconds=r.timings["total"])
    return rows, results


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


def _progress(it: Iterable, total: int, show: bool) -> Iterable:
    if not show:
        return it

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
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(result_figure(load_rgb(image), res), path)
