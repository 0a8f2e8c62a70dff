"""The prompt explorer's state and computation, without widgets (:mod:`medclipsam.widgets` is its
view: it builds the controls, forwards their changes here and draws what comes back).

::

    from medclipsam.explorer_model import ExplorerModel
    model = ExplorerModel.offline(per_task=1)  # toy CLIP + LiteMedSAM, phantom images
    model.set_prompt("breast tumor")
    state = model.update()  # ExplorerState: saliency, coarse mask, SAM prompts, SAM mask, Dice ...

A setter (:meth:`~ExplorerModel.set_prompt`, :meth:`~ExplorerModel.select`,
:meth:`~ExplorerModel.set`, :meth:`~ExplorerModel.add_point` ...) records the first stage its
change affects; :meth:`~ExplorerModel.update` recomputes from there, taking earlier stages from
the caches (the table in :mod:`medclipsam.widgets`), and :attr:`ExplorerModel.counts` says how
often each stage really ran. :meth:`~ExplorerModel.compare` runs several prompts side by side with
their prompt-sensitivity.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from .config import TASK_PRESETS, PipelineConfig
from .data.io import load_picture
from .explorer_sources import ExplorerBuilders, ExplorerImage, read_upload
from .explorer_state import ComparedPrompt, ExplorerState, RecentCache
from .metrics import dice as dice_score
from .pipeline import MedCLIPSAM
from .prompting import SamPrompts
from .saliency import METHODS, prompt_sensitivity
from .saliency.api import is_gscorecam
from .saliency.cam import resolve_target
from .saliency.gscorecam_multi import MaskedFeatureStore
from .sam_session import SamSession
from .vocab import (
    CONTROL_SALIENCY,
    POSTPROCESS_METHODS,
    SALIENCY_METHODS,
    SALIENCY_OPTIONS,
    SAM_PROMPT_MODES,
)

__all__ = ["ExplorerImage", "ExplorerModel", "ExplorerState"]

STAGES = ("saliency", "sam_prompts", "sam_embed", "sam_decode")
#: The saliency methods offered (the controls ignore the prompt: for experiments) and the task
#: presets ("auto": the image's own task; "none": no preset).
METHOD_NAMES = (*SALIENCY_METHODS, *CONTROL_SALIENCY)
PRESETS = ("auto", "none", *TASK_PRESETS)
#: The settings :meth:`ExplorerModel.set` changes, and the first stage each one's change affects.
SETTING_STAGES = {
    "method": "saliency", "k": "saliency", "preset": "saliency",
    "postprocess": "sam_prompts", "threshold": "sam_prompts", "sam_prompt_mode": "sam_prompts",
    "sam": "sam_embed",
}


def _freeze(d: Mapping) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in d.items()))


class ExplorerModel(ExplorerBuilders):
    """The explorer's state and computation: one pipeline over a set of images, no widgets.

    ``pipeline``: a :class:`~medclipsam.pipeline.MedCLIPSAM`. ``images``: a mapping of names to
    :class:`ExplorerImage` (or to bare arrays). ``sam_models``: extra SAM predictors to choose
    from, by name (a predictor, or a no-argument callable that loads one on first use, e.g.
    ``lambda: load_sam("medsam")``); the pipeline's own SAM is always offered first as
    ``sam_name``. ``prompt``: the first prompt (default: the first image's suggested prompt).
    ``k``: gScoreCAM's channels to start with (default: the pipeline's ``config.k``, at most the
    layer's C); each channel costs one image forward of the CLIP model
    (``benchmarks/real_path_times.py`` times it), so a smaller k keeps the explorer responsive.
    ``text_baseline``: a segmenter from the text alone (a
    :class:`~medclipsam.text_baselines.Sam3TextBaseline`, or a no-argument callable loading one on
    first use, e.g. ``Sam3TextBaseline.from_pretrained``): :meth:`compare` then gives its Dice for
    each prompt beside MedCLIP-SAM's.

    The settings are attributes (``image``, ``prompt``, ``method``, ``k``, ``postprocess``,
    ``threshold``, ``sam_prompt_mode``, ``preset``, ``sam``); change them through the setters so
    that :meth:`update` knows what to recompute. ``progress_listener(stage, step)`` (optional) is
    told each stage as it starts, and ``(None, 0)`` when the work is done.
    """

    def __init__(
        self,
        pipeline: MedCLIPSAM,
        images: Mapping[str, ExplorerImage | np.ndarray],
        *,
        sam_models: Mapping[str, Any] | None = None,
        sam_name: str = "pipeline SAM",
        prompt: str | None = None,
        text_baseline: Any = None,
        k: int | None = None,
    ) -> None:
        if not images:
            raise ValueError("give at least one image to explore")
        if k is not None and int(k) < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.pipeline = pipeline
        self.images: dict[str, ExplorerImage] = {}
        # bounded: a long session of new prompts and settings keeps the most recent results only
        self._saliency_cache: RecentCache = RecentCache(32)
        self._sam_prompts_cache: RecentCache = RecentCache(64)
        self._sensitivity_cache: RecentCache = RecentCache(256)
        # gScoreCAM's masked-image features of the image shown (any prompt, the controls too):
        # a new prompt or the compare view scores only channels no earlier call scored.
        self.feature_store = MaskedFeatureStore()
        for name, item in images.items():
            self._add_image(str(name), item)
        self._sam_sources: dict[str, Any] = {sam_name: pipeline.sam, **dict(sam_models or {})}
        self._sessions: dict[str, SamSession] = {sam_name: pipeline.session}
        self.counts = dict.fromkeys(STAGES, 0) | {"sensitivity": 0}
        self._text_source = text_baseline
        if text_baseline is not None:
            self.counts["text_baseline"] = 0
        self.progress_log: list[tuple[str, int]] = []
        self.progress_listener: Callable[[str | None, int], None] | None = None
        self.last_error: str | None = None
        self.user_points: list[tuple[float, float, int]] = []  # (x, y, label)
        self.user_box: np.ndarray | None = None
        self.saliency: np.ndarray | None = None
        self.sam_prompts: SamPrompts | None = None
        self.mask: np.ndarray | None = None
        self.sam_score: float | None = None
        self.dice: float | None = None
        self.seconds: float | None = None
        self.comparison: list[dict] = []
        # the settings, from the pipeline's configuration
        cfg = pipeline.config
        self.channels = self._channels()  # the saliency layer's C: k's largest value
        self.method = cfg.saliency if cfg.saliency in METHOD_NAMES else "gscorecam"
        self.k = min(int(k) if k is not None else cfg.with_k(pipeline.world).k, self.channels)
        self.postprocess, self.threshold = cfg.postprocess, cfg.threshold
        self.sam_prompt_mode, self.preset, self.sam = cfg.sam_prompt_mode, "auto", sam_name
        self.image = next(iter(self.images))
        first = self.current
        self.prompt = prompt or first.prompt or ""
        self._suggested = None if prompt else first.prompt  # the suggestion, while not retyped
        self._pending: str | None = None
        self._image_changed()

    # -- settings -------------------------------------------------------------------------------

    @property
    def current(self) -> ExplorerImage:
        """The image shown now."""
        return self.images[self.image]

    @property
    def task(self) -> str | None:
        """The task preset in force (the image's own task with ``preset="auto"``)."""
        v = self.preset
        return self.current.task if v == "auto" else (None if v == "none" else v)

    def config(self) -> PipelineConfig:
        """The pipeline settings in force now."""
        base = self.pipeline.config
        kwargs = base.saliency_kwargs if self.method == base.saliency else {}
        return replace(
            base.for_task(self.task), saliency=self.method, k=int(self.k), saliency_kwargs=kwargs,
            postprocess=self.postprocess, threshold=float(self.threshold),
            sam_prompt_mode=self.sam_prompt_mode,
        )

    @property
    def sam_names(self) -> list[str]:
        """The SAM models offered, the pipeline's own first."""
        return list(self._sam_sources)

    def uses(self, setting: str) -> bool:
        """Whether the current settings read ``setting``: ``k`` only with a method that has it
        (gScoreCAM), ``threshold`` only with the threshold rule, any other setting always."""
        if setting == "k":
            return "k" in SALIENCY_OPTIONS.get(self.method, ())
        if setting == "threshold":
            return self.postprocess == "threshold"
        return True

    def _channels(self) -> int:
        try:
            module = resolve_target(self.pipeline.clip.model, None).module
        except Exception:  # noqa: BLE001 - an unknown tower: a generous slider
            return 512
        if hasattr(module, "normalized_shape"):  # LayerNorm of a ViT block
            return int(module.normalized_shape[0])
        if hasattr(module, "out_channels"):
            return int(module.out_channels)
        params = [p for p in module.parameters() if p.ndim >= 1]
        return int(params[-1].shape[0]) if params else 512

    def _mark(self, stage: str) -> None:
        """Recompute from ``stage`` (or an earlier stage already due) at the next update."""
        due = self._pending
        if due is None or STAGES.index(stage) < STAGES.index(due):
            self._pending = stage

    def _checked(self, name: str, value: Any) -> Any:
        known = {"method": METHOD_NAMES, "postprocess": POSTPROCESS_METHODS,
                 "sam_prompt_mode": SAM_PROMPT_MODES, "preset": PRESETS, "sam": self.sam_names}
        if name in known:
            if value not in known[name]:
                raise ValueError(f"unknown {name} {value!r}; known: {list(known[name])}")
            return value
        if name == "k":
            if not 1 <= int(value) <= self.channels:
                raise ValueError(f"k must be in 1..{self.channels} (the layer's channels), got {value}")
            return int(value)
        if name == "threshold":
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"threshold must be in [0, 1], got {value}")
            return float(value)
        raise TypeError(f"unknown setting {name!r}; known: {sorted(SETTING_STAGES)}")

    def set(self, **settings: Any) -> None:
        """Change settings by name (``method``, ``k``, ``preset``, ``postprocess``,
        ``threshold``, ``sam_prompt_mode``, ``sam``); unknown names and values are refused (and
        then nothing changes)."""
        checked = {name: self._checked(name, value) for name, value in settings.items()}
        for name, value in checked.items():
            if value != getattr(self, name):
                setattr(self, name, value)
                self._mark(SETTING_STAGES[name])

    def refusal(self, prompt: str) -> str | None:
        """Why ``prompt`` cannot be applied (None when it can): an empty or whitespace-only prompt
        says nothing to segment; its map would be the image's own salience (the command line
        refuses one too)."""
        if str(prompt).strip():
            return None
        example = self.current.prompt or self.prompt.strip() or "breast tumor"
        if self.mask is None:  # nothing shown yet: an image without a suggested prompt
            return f"no prompt yet: type what to segment, e.g. {example!r}"
        return f"empty prompt {str(prompt)!r} refused: type what to segment, e.g. {example!r}"

    def set_prompt(self, prompt: str) -> None:
        """Type ``prompt`` (the saliency, unless cached, and everything after it are recomputed).
        An empty or whitespace-only prompt is refused (ValueError) and nothing changes."""
        why = self.refusal(prompt)
        if why is not None:
            raise ValueError(why)
        if str(prompt) != self.prompt:
            self.prompt = str(prompt)
            self._mark("saliency")

    def select(self, name: str) -> None:
        """Show the image called ``name`` (hand-made SAM prompts are forgotten; a prompt that was
        the previous image's suggestion follows the new image's suggestion)."""
        if name not in self.images:
            raise KeyError(f"no image {name!r}; known: {list(self.images)}")
        if name != self.image:
            self.image = name
            self._image_changed()

    def _image_changed(self) -> None:
        self.user_points, self.user_box = [], None
        typed, suggested = self.prompt, self.current.prompt
        if suggested and (not typed or typed == self._suggested) and typed != suggested:
            # the prompt was the previous image's suggestion, not the user's own words
            self._suggested = self.prompt = suggested
        else:
            self._suggested = suggested or self._suggested
        self._mark("saliency")

    def add_image(self, name: str, image: Any, gt: np.ndarray | None = None, *,
                  task: str | None = None, prompt: str | None = None, show: bool = True) -> None:
        """Add an image (array, PIL image or path) and, with ``show``, show it; an image of the
        same name is replaced (and nothing cached for it is used again)."""
        self._add_image(name, ExplorerImage(image, gt, task, prompt))
        if name == self.image:
            self._image_changed()
        elif show:
            self.select(name)

    def add_upload(self, filename: str, content: bytes, show: bool = True) -> str:
        """An uploaded file (see :func:`read_upload`), added as ``"upload: <filename>"``."""
        name = f"upload: {filename}"
        self.add_image(name, read_upload(filename, content), show=show)
        return name

    def _add_image(self, name: str, item: ExplorerImage | np.ndarray) -> None:
        if not isinstance(item, ExplorerImage):
            item = ExplorerImage(np.asarray(item))
        rgb = load_picture(item.image)
        gt = None
        if item.gt is not None:
            gt = np.asarray(item.gt).astype(bool)
            if gt.shape != rgb.shape[:2]:
                raise ValueError(f"image {name!r}: mask {gt.shape} does not match the image {rgb.shape[:2]}")
        if item.task is not None and item.task not in TASK_PRESETS:
            raise ValueError(f"image {name!r}: unknown task {item.task!r}; known: {sorted(TASK_PRESETS)}")
        if name in self.images:  # replaced (e.g. a new upload of the same file name): forget it
            self._saliency_cache.drop(lambda k: k[0] == name)
            self._sam_prompts_cache.drop(lambda k: k[0][0] == name)
            self._sensitivity_cache.drop(lambda k: k[0] == name)
        self.images[name] = ExplorerImage(rgb, gt, item.task, item.prompt)

    def add_point(self, x: float, y: float, positive: bool = True) -> None:
        """Add a positive (or negative) point at pixel ``(x, y)``; only SAM's decoder re-runs."""
        h, w = self.current.image.shape[:2]
        if not (0 <= x <= w - 1 and 0 <= y <= h - 1):
            raise ValueError(f"point ({x}, {y}) is outside the {w} x {h} image")
        self.user_points.append((float(x), float(y), 1 if positive else 0))
        self._mark("sam_decode")

    def set_box(self, x0: float, y0: float, x1: float, y1: float) -> None:
        """Prompt SAM with this box (any two opposite corners) instead of the automatic boxes."""
        h, w = self.current.image.shape[:2]
        b = np.array([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], dtype=np.float64)
        b[[0, 2]] = b[[0, 2]].clip(0, w - 1)
        b[[1, 3]] = b[[1, 3]].clip(0, h - 1)
        self.user_box = b
        self._mark("sam_decode")

    def clear_clicks(self) -> None:
        """Forget the points and box added by hand (back to the automatic SAM prompts)."""
        self.user_points, self.user_box = [], None
        self._mark("sam_decode")

    # -- computing ------------------------------------------------------------------------------

    def update(self) -> ExplorerState:
        """Recompute from the first stage the changes since the last update affect (nothing when
        nothing changed; earlier stages come from the caches) and return the state. Without a
        prompt (an empty one: an image with no suggested prompt) it raises a ValueError."""
        if self._pending is not None and self.refusal(self.prompt) is not None:
            # no prompt yet (an image without a suggested prompt): nothing to compute from
            raise ValueError(self.refusal(self.prompt))
        stage, self._pending = self._pending, None
        if stage is not None:
            self._refresh(stage)
        return self.snapshot()

    @property
    def changed(self) -> bool:
        """Whether a change waits for :meth:`update` to recompute."""
        return self._pending is not None

    def snapshot(self) -> ExplorerState:
        """The state as it is now (without computing anything)."""
        return ExplorerState(
            image=self.image, prompt=self.prompt, method=self.method,
            k=self.config().saliency_options().get("k"), postprocess=self.postprocess,
            threshold=float(self.threshold), sam_prompt_mode=self.sam_prompt_mode,
            task=self.task, sam=self.sam, saliency=self.saliency, sam_prompts=self.sam_prompts,
            mask=self.mask, sam_score=self.sam_score, dice=self.dice,
            user_points=list(self.user_points), user_box=self.user_box, error=self.last_error,
            seconds=self.seconds,
        )

    def _progress(self, stage: str | None, step: int = 0) -> None:
        if stage is not None:
            self.progress_log.append((stage, step))
            del self.progress_log[:-200]  # the recent stages are enough (tests read them)
        if self.progress_listener is not None:
            self.progress_listener(stage, step)

    def _saliency_key(self, cfg: PipelineConfig, prompt: str) -> tuple:
        return (self.image, prompt, cfg.saliency, _freeze(cfg.saliency_options()))

    def saliency_for(self, prompt: str, cfg: PipelineConfig | None = None) -> np.ndarray:
        """``prompt``'s saliency map of the current image with ``cfg`` (default: the settings in
        force), cached."""
        cfg = self.config() if cfg is None else cfg
        key = self._saliency_key(cfg, prompt)
        if key not in self._saliency_cache:
            self.counts["saliency"] += 1
            self._saliency_cache[key] = self.pipeline.saliency(
                self.current.image, [prompt], cfg, seed=cfg.seed, store=self.feature_store)[0]
        return self._saliency_cache[key]

    def _sam_prompts_for(self, sal_key: tuple, sal: np.ndarray, cfg: PipelineConfig) -> SamPrompts:
        post = cfg.postprocess
        thr = cfg.threshold if post == "threshold" else None  # only the threshold rule reads it
        key = (sal_key, post, thr, cfg.sam_prompt_mode, cfg.n_components, cfg.box_mode,
               cfg.box_margin, cfg.within_content, cfg.min_box_area, cfg.points, cfg.negatives, cfg.seed)
        if key not in self._sam_prompts_cache:
            self.counts["sam_prompts"] += 1
            self._sam_prompts_cache[key] = self.pipeline.sam_prompts_from(sal, self.current.image, cfg)
        return self._sam_prompts_cache[key]

    def _session(self) -> SamSession:
        name = self.sam
        if name not in self._sessions:
            src = self._sam_sources[name]
            predictor = src() if callable(src) and not hasattr(src, "set_image") else src
            self._sam_sources[name] = predictor
            self._sessions[name] = SamSession(predictor)
        return self._sessions[name]

    def _embed(self, session: SamSession) -> None:
        before = session.encoder_calls
        session.set_image(self.current.image)
        self.counts["sam_embed"] += session.encoder_calls - before

    def final_sam_prompts(self) -> SamPrompts:
        """The automatic SAM prompts with the hand-made ones: a drawn box replaces the automatic
        boxes (one SAM prompt); clicked points join every SAM prompt's point group."""
        pr = self.sam_prompts
        boxes = pr.boxes if self.user_box is None else self.user_box[None]
        if self.user_box is not None:
            pts = lbl = None
            if pr.points is not None and self.sam_prompt_mode != "box":
                keep = pr.point_labels[0] >= 0
                pts, lbl = pr.points[0][keep][None], pr.point_labels[0][keep][None]
        else:
            pts, lbl = pr.points, pr.point_labels
        if self.user_points:
            up = np.array([[x, y] for x, y, _ in self.user_points], dtype=np.float64)
            ul = np.array([lab for _, _, lab in self.user_points], dtype=np.int64)
            n = 1 if boxes is None and pts is None else (len(boxes) if boxes is not None else len(pts))
            up, ul = np.repeat(up[None], n, 0), np.repeat(ul[None], n, 0)
            if pts is None:
                pts, lbl = up, ul
            else:
                pts, lbl = np.concatenate([pts, up], 1), np.concatenate([lbl, ul], 1)
        return replace(pr, boxes=boxes, points=pts, point_labels=lbl)

    def _refresh(self, stage: str) -> None:
        """Recompute from ``stage`` on (earlier stages come from the caches)."""
        t0 = time.perf_counter()
        self.last_error = None
        cfg = self.config()
        prompt = self.prompt
        start = STAGES.index(stage)
        if start <= 0 or self.saliency is None:
            self._progress("saliency", 0)
            self.saliency = self.saliency_for(prompt, cfg)
        if start <= 1 or self.sam_prompts is None:
            self._progress("sam_prompts", 1)
            self.sam_prompts = self._sam_prompts_for(self._saliency_key(cfg, prompt), self.saliency, cfg)
        session = self._session()
        self._progress("sam_embed", 2)
        self._embed(session)  # free when this SAM already holds this image
        self._progress("sam_decode", 3)
        res = session.predict_sam_prompts(self.final_sam_prompts(), multimask=cfg.multimask, union=True)
        self.counts["sam_decode"] += 1
        self.mask, self.sam_score = res.mask, res.score
        gt = self.current.gt
        self.dice = None if gt is None else dice_score(self.mask, gt)
        self._progress(None)
        self.seconds = time.perf_counter() - t0

    # -- comparing prompts ----------------------------------------------------------------------

    def sensitivity(self, prompt: str) -> float | None:
        """The prompt-sensitivity of the current method on the current image (None for the
        prompt-free control maps), cached."""
        cfg = self.config()
        if cfg.saliency in CONTROL_SALIENCY:
            return None
        key = self._saliency_key(cfg, prompt) + (self.task,)
        if key not in self._sensitivity_cache:
            self.counts["sensitivity"] += 1
            extra = {"store": self.feature_store} if is_gscorecam(cfg.saliency) else {}
            rep = prompt_sensitivity(self.pipeline.clip, self.current.image, prompt,
                                     METHODS[cfg.saliency], task=self.task, warn=False,
                                     **cfg.saliency_options(), **extra)
            self._sensitivity_cache[key] = float(rep.sensitivity)
        return self._sensitivity_cache[key]

    def _text_baseline_result(self, prompt: str) -> Any:
        """The text-alone segmenter's result for ``prompt`` on the current image (None without
        one); a loader given as a callable runs on first use."""
        src = self._text_source
        if src is None:
            return None
        if callable(src) and not hasattr(src, "predict"):
            src = self._text_source = src()
        self.counts["text_baseline"] += 1
        return src.predict(self.current.image, prompt)

    def compare_prompts(self, prompts: Sequence[str]) -> list[ComparedPrompt]:
        """Run each prompt on the current image with the current settings (hand-made clicks are
        not used): its maps and its row of Dice, SAM score and prompt-sensitivity (and the
        text-alone segmenter's ``text_dice``, ``text_score``, ``text_flags`` when there is one).
        The rows are kept as :attr:`comparison`."""
        prompts = [p for p in prompts if p.strip()]
        if not prompts:
            raise ValueError("type at least one prompt to compare (one per line)")
        cfg = self.config()
        session = self._session()
        self._embed(session)
        out = []
        for i, prompt in enumerate(prompts):
            self._progress("compare", min(len(STAGES) - 1, i))
            sal = self.saliency_for(prompt, cfg)
            pr = self._sam_prompts_for(self._saliency_key(cfg, prompt), sal, cfg)
            res = session.predict_sam_prompts(pr, multimask=cfg.multimask, union=True)
            self.counts["sam_decode"] += 1
            gt = self.current.gt
            row = {"prompt": prompt, "dice": None if gt is None else dice_score(res.mask, gt),
                   "sam_score": res.score, "sensitivity": self.sensitivity(prompt),
                   "flags": list(pr.flags)}
            item = ComparedPrompt(row, sal, res.mask, pr.boxes)
            text_res = self._text_baseline_result(prompt)
            if text_res is not None:
                row["text_dice"] = None if gt is None else dice_score(text_res.mask, gt)
                row["text_score"], row["text_flags"] = text_res.sam_score, list(text_res.flags)
                item.text_mask, item.text_boxes = text_res.mask, text_res.boxes
            out.append(item)
        self._progress(None)
        self.comparison = [item.row for item in out]
        return out

    def compare(self, prompts: Sequence[str]) -> list[dict]:
        """The rows of :meth:`compare_prompts`."""
        return [item.row for item in self.compare_prompts(prompts)]
