"""The prompt explorer: MedCLIP-SAM as an ipywidgets application (JupyterLab, Colab, VS Code).

::

    from medclipsam.widgets import PromptExplorer
    ex = PromptExplorer.offline()      # toy CLIP + LiteMedSAM + a few phantom images of each task
    ex                                 # displays it (or display(ex.widget))

Choose an image (or upload one), type a prompt, pick the saliency method, k, the post-processing,
its threshold, the SAM prompt mode and the SAM model: the four panels show the saliency map, the
coarse mask with the automatic SAM prompts (boxes, points), and SAM's mask (against the ground truth's outline when there is
one, with its Dice). Click on the first panel to add a point (the "click adds" switch says
positive, negative, or box) and drag to draw a box: that re-runs only SAM's decoder, on the stored
image embedding. The "compare prompts" tab puts several prompts side by side on one image with each
one's prompt-sensitivity (how far its map is from the maps of control prompts; see
:func:`medclipsam.saliency.prompt_sensitivity`).

Only what a change affects is recomputed, and results are cached:

=====================================  ============================================================
change                                 recomputed
=====================================  ============================================================
image                                  saliency (unless cached), SAM prompts, embedding, decoding
prompt, method, k, task preset         saliency (unless cached), SAM prompts, SAM decoding
post-processing, threshold, mode       SAM prompts, SAM decoding
SAM model                              SAM embedding (one session per model), decoding
a click or a dragged box               SAM decoding only
=====================================  ============================================================

:attr:`PromptExplorer.counts` says how often each stage really ran, which is how the tests check
the caching. Every callback is an ordinary method (``on_*``), and the public methods
(:meth:`~PromptExplorer.set_prompt`, :meth:`~PromptExplorer.add_point`,
:meth:`~PromptExplorer.set_box`, :meth:`~PromptExplorer.compare` ...) drive it without a browser,
as notebook 06 does under papermill.

Needs the ``notebooks`` extra (ipywidgets, and ipyevents for clicks on the image). In Colab, call
``google.colab.output.enable_custom_widget_manager()`` first (notebook 06 does) so that ipyevents'
third-party widget renders.
"""

from __future__ import annotations

import html
import io
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .saliency import METHODS, prompt_sensitivity

try:
    import ipywidgets as W
except ImportError as e:  # pragma: no cover - depends on the installation
    raise ImportError(
        "medclipsam.widgets needs ipywidgets: pip install 'medclipsam[notebooks]'"
    ) from e

import tempfile

from PIL import Image

from .config import TASK_PRESETS, PipelineConfig
from .data import FolderDataset
from .data.io import load_picture, read_image
from .data.phantom import PROMPTS, TASKS, PhantomDataset
from .metrics import dice as dice_score
from .models import load_sam
from .pipeline import MedCLIPSAM
from .prompting import SamPrompts
from .saliency.api import is_gscorecam
from .saliency.cam import resolve_target
from .saliency.gscorecam_multi import MaskedFeatureStore
from .saliency.sensitivity import DEFAULT_THRESHOLD
from .sam_session import SamSession
from .viz import overlay, sample_grid
from .vocab import (
    CONTROL_SALIENCY,
    POSTPROCESS_METHODS,
    SALIENCY_METHODS,
    SALIENCY_OPTIONS,
    SAM_PROMPT_MODES,
)
from .worlds import pipeline_for_world

__all__ = ["ExplorerImage", "PromptExplorer"]

#: Saliency methods offered (label, name); the controls ignore the prompt (for experiments).
# What each of the package's names (medclipsam.vocab) is called on screen.
LABELS = {
    "gscorecam": "gScoreCAM", "gradcam": "GradCAM", "m2ib": "M2IB",
    "random": "random map (control)", "uniform": "uniform map (control)",
    "crf": "dense CRF", "kmeans": "k-means", "threshold": "threshold", "otsu": "Otsu",
    "box": "box", "points": "points", "box+points": "box + points",
}
METHOD_CHOICES = [(LABELS[m], m) for m in (*SALIENCY_METHODS, *CONTROL_SALIENCY)]
POSTPROCESS_CHOICES = [(LABELS[m], m) for m in POSTPROCESS_METHODS]
MODE_CHOICES = [(LABELS[m], m) for m in SAM_PROMPT_MODES]
CLICK_CHOICES = [("+ point", "positive"), ("- point", "negative"), ("box (drag)", "box")]
STAGES = ("saliency", "sam_prompts", "sam_embed", "sam_decode")

# colours of the drawings (RGB)
AUTO_BOX = (64, 160, 255)
USER_BOX = (255, 215, 0)
POSITIVE = (0, 230, 0)
NEGATIVE = (255, 0, 255)


@dataclass
class ExplorerImage:
    """One image the explorer can show: pixels, an optional ground-truth mask, an optional task
    (which selects the task's preset, e.g. two lung boxes for ``"xray"``) and a suggested prompt."""

    image: np.ndarray
    gt: np.ndarray | None = None
    task: str | None = None
    prompt: str | None = None


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _dot(img: np.ndarray, x: float, y: float, color: tuple[int, int, int], r: int) -> None:
    h, w = img.shape[:2]
    yi, xi = int(round(y)), int(round(x))
    img[max(0, yi - r): min(h, yi + r + 1), max(0, xi - r): min(w, xi + r + 1)] = (0, 0, 0)
    r2 = max(0, r - 1)
    img[max(0, yi - r2): min(h, yi + r2 + 1), max(0, xi - r2): min(w, xi + r2 + 1)] = color


def _phantom_images(per_task: int, size: int, seed: int) -> dict[str, ExplorerImage]:
    """``per_task`` held-out phantom images (with a finding) of each task, with their ground
    truth and each task's prompt."""
    images: dict[str, ExplorerImage] = {}
    for task in TASKS:
        ds = PhantomDataset(task, 8 * per_task, seed=seed, size=size, split="test")
        picked = [s for s in ds if s.mask.any()][:per_task]
        for i, s in enumerate(picked):
            images[f"{task} {i + 1} ({s.label})"] = ExplorerImage(s.rgb, s.mask, task, PROMPTS[task])
    return images


def _freeze(d: Mapping) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in d.items()))


class RecentCache(OrderedDict):
    """A dict that keeps only its ``maxsize`` most recently used entries (reads count as use)."""

    def __init__(self, maxsize: int) -> None:
        super().__init__()
        self.maxsize = int(maxsize)

    def __getitem__(self, key: Any) -> Any:
        value = super().__getitem__(key)
        self.move_to_end(key)
        return value

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.maxsize:
            self.popitem(last=False)

    def drop(self, which: Callable[[Any], bool]) -> None:
        """Forget every entry whose key ``which`` accepts."""
        for key in [k for k in self if which(k)]:
            del self[key]


class PromptExplorer:
    """An interactive view of one pipeline over a set of images (see the module doc).

    ``pipeline``: a :class:`~medclipsam.pipeline.MedCLIPSAM`. ``images``: a mapping of names to
    :class:`ExplorerImage` (or to bare arrays). ``sam_models``: extra SAM predictors to choose
    from, by name (a predictor, or a no-argument callable that loads one on first use, e.g.
    ``lambda: load_sam("medsam")``); the pipeline's own SAM is always offered first as
    ``sam_name``. ``prompt``: the first prompt (default: the first image's suggested prompt).
    ``k``: gScoreCAM's channels to start with (default: the pipeline's ``config.k``, at most the
    layer's C); each channel costs one image forward of the CLIP model
    (``benchmarks/real_path_times.py`` times it), so a smaller k keeps the explorer responsive. ``display_size``: width in CSS pixels of
    each panel. ``text_baseline``: a segmenter from the text alone (a
    :class:`~medclipsam.text_baselines.Sam3TextBaseline`, or a no-argument callable loading one on
    first use, e.g. ``Sam3TextBaseline.from_pretrained``): the *compare prompts* tab then shows its
    mask and Dice for each prompt beside MedCLIP-SAM's.
    """

    def __init__(
        self,
        pipeline: MedCLIPSAM,
        images: Mapping[str, ExplorerImage | np.ndarray],
        *,
        sam_models: Mapping[str, Any] | None = None,
        sam_name: str = "pipeline SAM",
        prompt: str | None = None,
        display_size: int = 256,
        compare_prompts: Sequence[str] | None = None,
        text_baseline: Any = None,
        k: int | None = None,
    ) -> None:
        if not images:
            raise ValueError("give at least one image to explore")
        if k is not None and int(k) < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self._k = None if k is None else int(k)
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
        self.last_error: str | None = None
        self.user_points: list[tuple[float, float, int]] = []  # (x, y, label)
        self.user_box: np.ndarray | None = None
        self._drag_start: tuple[float, float] | None = None
        self.saliency: np.ndarray | None = None
        self.sam_prompts: SamPrompts | None = None
        self.mask: np.ndarray | None = None
        self.sam_score: float | None = None
        self.dice: float | None = None
        self.comparison: list[dict] = []
        self._suggested: str | None = None  # the image's suggested prompt, while not retyped
        self._silent = True  # no callbacks while the controls are being built
        self._build_widgets(display_size, compare_prompts)
        first = next(iter(self.images.values()))
        self.prompt_box.value = prompt or first.prompt or ""
        self._suggested = None if prompt else first.prompt
        self._silent = False
        self._image_changed()

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def offline(cls, *, per_task: int = 3, size: int = 256, seed: int = 0, device: Any = "cpu",
                **kwargs: Any) -> PromptExplorer:
        """The offline world: :meth:`MedCLIPSAM.offline` (toy CLIP + LiteMedSAM) over
        ``per_task`` held-out phantom images (with a finding) of each task, with their ground
        truth and each task's prompt."""
        kwargs.setdefault("sam_name", "LiteMedSAM")
        return cls(MedCLIPSAM.offline(device=device), _phantom_images(per_task, size, seed), **kwargs)

    @classmethod
    def for_world(cls, world: str, *, data_dir: str | Path | None = None, prompt: str | None = None,
                  task: str | None = None, clip: str = "biomedclip", sam: str = "vit_b",
                  sam_checkpoint: str | Path | None = None, k: int | None = None,
                  device: Any = "auto", per_task: int = 3, limit: int = 12,
                  fallback: bool = True, **kwargs: Any) -> PromptExplorer:
        """The explorer a lesson builds from its parameters (see :mod:`medclipsam.worlds`).

        ``"real"``: the pipeline of ``clip``, ``sam`` (``sam_checkpoint``) and ``k`` over the
        images (and masks) of ``data_dir`` (a folder with ``images/``, as ``medclipsam
        prepare`` writes; the first ``limit``), or over ``per_task`` phantom images per task when
        no folder is given; MedSAM, SAM ViT-H and SAM 2.1 tiny are offered too, loaded when
        picked. When the real models cannot be loaded: the offline world (phantom images), with
        a message.
        ``"offline"``: :meth:`offline` (``k`` still applies). ``kwargs`` go to the constructor.
        """
        pipe = pipeline_for_world(world, clip=clip, sam=sam, sam_checkpoint=sam_checkpoint, k=k,
                                  device=device, fallback=fallback)
        if pipe.world != "real":
            if data_dir:
                print(f"(the offline world explores phantom images; DATA_DIR {data_dir} is not used)")
            kwargs.setdefault("sam_name", "LiteMedSAM")
            return cls(pipe, _phantom_images(per_task, 256, 0), k=k, **kwargs)
        if sam_checkpoint or str(sam) not in ("vit_b", "vit_l", "vit_h", "medsam", "litemedsam"):
            kwargs.setdefault("sam_name", f"SAM ({Path(str(sam_checkpoint or sam)).name})")
        else:
            kwargs.setdefault("sam_name", {"vit_b": "SAM ViT-B", "vit_l": "SAM ViT-L",
                                           "vit_h": "SAM ViT-H", "medsam": "MedSAM",
                                           "litemedsam": "LiteMedSAM"}[str(sam)])
        if "sam_models" not in kwargs:
            offered = {"MedSAM": "medsam", "SAM ViT-H": "vit_h",
                       "SAM 2.1 tiny": "sam2-hiera-tiny"}
            kwargs["sam_models"] = {
                label: (lambda name=name: load_sam(name, device=device))
                for label, name in offered.items() if label != kwargs["sam_name"]
            }
        if data_dir:
            return cls.from_folder(pipe, data_dir, prompt=prompt, task=task, limit=limit, k=k,
                                   **kwargs)
        print("(no DATA_DIR: the real models explore phantom images)")
        return cls(pipe, _phantom_images(per_task, 256, 0), prompt=prompt, k=k, **kwargs)

    @classmethod
    def from_folder(cls, pipeline: MedCLIPSAM, root: str | Path, *, prompt: str | None = None,
                    task: str | None = None, split: str | None = None, limit: int = 12,
                    **kwargs: Any) -> PromptExplorer:
        """The first ``limit`` images of a folder data set (``root/images``, masks from
        ``root/masks`` when present: see :class:`~medclipsam.data.FolderDataset`), all with the
        same suggested ``prompt`` and ``task`` preset."""
        ds = FolderDataset(root, split=split, strict=False)
        images = {}
        for i in range(min(limit, len(ds))):
            item = ds[i]
            images[item["stem"]] = ExplorerImage(item["image"], item["mask"], task, prompt)
        return cls(pipeline, images, prompt=prompt, **kwargs)

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

    def _build_widgets(self, size: int, compare_prompts: Sequence[str] | None) -> None:
        style = {"description_width": "90px"}
        wide = W.Layout(width="330px")
        self.image_picker = W.Dropdown(options=list(self.images), description="image", style=style,
                                       layout=wide)
        self.upload = W.FileUpload(accept=".png,.jpg,.jpeg,.bmp,.tif,.tiff,.dcm,.nii,.gz",
                                   multiple=False, description="upload image")
        self.prompt_box = W.Text(description="prompt", continuous_update=False, style=style,
                                 layout=wide)
        self.method = W.Dropdown(options=METHOD_CHOICES, value=self._default_method(),
                                 description="saliency", style=style, layout=wide)
        self.k = W.IntSlider(value=self._default_k(), min=1, max=self._channels(),
                             description="k (channels)", style=style, continuous_update=False)
        self.postprocess = W.Dropdown(options=POSTPROCESS_CHOICES, value=self._cfg().postprocess,
                                      description="coarse mask", style=style, layout=wide)
        self.threshold = W.FloatSlider(value=self._cfg().threshold, min=0.05, max=0.95, step=0.05,
                                       description="threshold", style=style,
                                       continuous_update=False)
        self.mode = W.ToggleButtons(options=MODE_CHOICES, value=self._cfg().sam_prompt_mode,
                                    description="SAM prompts", style=style)
        self.preset = W.Dropdown(options=[("from the image", "auto"), ("none", "none")]
                                 + [(t, t) for t in TASK_PRESETS], value="auto",
                                 description="task preset", style=style, layout=wide)
        self.sam_picker = W.Dropdown(options=list(self._sam_sources), description="SAM model",
                                     style=style, layout=wide)
        self.click_mode = W.ToggleButtons(options=CLICK_CHOICES, value="positive",
                                          description="click adds", style=style)
        self.clear_button = W.Button(description="clear clicks", icon="eraser")
        self.progress = W.IntProgress(value=0, min=0, max=len(STAGES), description="",
                                      layout=W.Layout(width="200px", visibility="hidden"))
        self.status = W.HTML()
        self.readout = W.HTML()
        panel_layout = W.Layout(width=f"{size}px", height="auto")
        self.panels = {name: W.Image(format="png", layout=panel_layout)
                       for name in ("sam_prompts", "saliency", "coarse", "mask")}
        titles = {"sam_prompts": "image + SAM prompts (click / drag)", "saliency": "saliency",
                  "coarse": "coarse mask", "mask": "SAM mask (green: ground truth)"}
        columns = [W.VBox([W.HTML(f"<b>{titles[n]}</b>"), p]) for n, p in self.panels.items()]
        try:
            from ipyevents import Event
        except ImportError:  # clicks need ipyevents; everything else works without it
            self.events = None
            click_note = W.HTML("<i>pip install ipyevents to add points and boxes by clicking</i>")
        else:
            self.events = Event(source=self.panels["sam_prompts"],
                                watched_events=["mousedown", "mouseup"],
                                prevent_default_action=True)
            self.events.on_dom_event(self.on_mouse)
            click_note = W.HTML("")

        self.compare_text = W.Textarea(
            value="\n".join(compare_prompts or []), placeholder="one prompt per line",
            description="prompts", layout=W.Layout(width="420px", height="90px"), style=style)
        self.compare_button = W.Button(description="compare", icon="columns", button_style="primary")
        self.compare_out = W.VBox()

        for w, cb in [(self.image_picker, self.on_image), (self.prompt_box, self.on_prompt),
                      (self.method, self.on_method), (self.k, self.on_saliency_option),
                      (self.preset, self.on_saliency_option),
                      (self.postprocess, self.on_prompt_option),
                      (self.threshold, self.on_prompt_option), (self.mode, self.on_prompt_option),
                      (self.sam_picker, self.on_sam), (self.upload, self.on_upload)]:
            w.observe(cb, names="value")
        self.clear_button.on_click(self.on_clear)
        self.compare_button.on_click(self.on_compare)

        controls = W.VBox([
            W.HBox([self.image_picker, self.upload]),
            W.HBox([self.prompt_box, self.preset]),
            W.HBox([self.method, self.k]),
            W.HBox([self.postprocess, self.threshold]),
            self.mode,
            W.HBox([self.sam_picker]),
            W.HBox([self.click_mode, self.clear_button, click_note]),
            W.HBox([self.progress, self.status]),
        ])
        explore = W.VBox([controls, W.HBox(columns), self.readout])
        compare = W.VBox([W.HBox([self.compare_text, self.compare_button]), self.compare_out])
        self.tabs = W.Tab(children=[explore, compare])
        self.tabs.set_title(0, "explore")
        self.tabs.set_title(1, "compare prompts")
        self.widget = self.tabs
        self._update_enabled()

    def _ipython_display_(self) -> None:  # pragma: no cover - needs a front end
        from IPython.display import display

        display(self.widget)

    # -- settings -------------------------------------------------------------------------------

    def _cfg(self) -> PipelineConfig:
        return self.pipeline.config

    def _default_method(self) -> str:
        name = self._cfg().saliency
        return name if name in {v for _, v in METHOD_CHOICES} else "gscorecam"

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

    def _default_k(self) -> int:
        if self._k is not None:
            return min(self._k, self._channels())
        return min(self._cfg().with_k(self.pipeline.world).k, self._channels())

    @property
    def current(self) -> ExplorerImage:
        """The image shown now."""
        return self.images[self.image_picker.value]

    @property
    def task(self) -> str | None:
        """The task preset in force (the image's own task with "from the image")."""
        v = self.preset.value
        return self.current.task if v == "auto" else (None if v == "none" else v)

    def config(self) -> PipelineConfig:
        """The pipeline settings the controls describe now."""
        method = self.method.value
        kwargs = self._cfg().saliency_kwargs if method == self._cfg().saliency else {}
        return replace(
            self._cfg().for_task(self.task), saliency=method, k=int(self.k.value), saliency_kwargs=kwargs,
            postprocess=self.postprocess.value, threshold=float(self.threshold.value),
            sam_prompt_mode=self.mode.value,
        )

    def _update_enabled(self) -> None:
        self.k.disabled = "k" not in SALIENCY_OPTIONS.get(self.method.value, ())
        self.threshold.disabled = self.postprocess.value != "threshold"

    # -- callbacks (ordinary methods: tests and notebooks call them too) ------------------------

    def _guarded(self, fn: Callable[[], None]) -> None:
        if self._silent:
            return
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - shown to the user instead of lost in a log
            self.last_error = f"{type(e).__name__}: {e}"
            self._show_progress(None)
            self.status.value = f"<span style='color:#c00'>{html.escape(self.last_error)}</span>"

    def on_image(self, change: Any = None) -> None:
        self._guarded(self._image_changed)

    def on_prompt(self, change: Any = None) -> None:
        self._guarded(lambda: self._refresh("saliency"))

    def on_method(self, change: Any = None) -> None:
        self._update_enabled()
        self._guarded(lambda: self._refresh("saliency"))

    def on_saliency_option(self, change: Any = None) -> None:
        self._guarded(lambda: self._refresh("saliency"))

    def on_prompt_option(self, change: Any = None) -> None:
        self._update_enabled()
        self._guarded(lambda: self._refresh("sam_prompts"))

    def on_sam(self, change: Any = None) -> None:
        self._guarded(lambda: self._refresh("sam_embed"))

    def on_clear(self, _button: Any = None) -> None:
        self.clear_clicks()

    def on_compare(self, _button: Any = None) -> None:
        prompts = [p.strip() for p in self.compare_text.value.splitlines() if p.strip()]
        self._guarded(lambda: self.compare(prompts))

    def on_upload(self, change: Any = None) -> None:
        files = list(self.upload.value or ())
        if not files:
            return
        self.upload.value = ()  # so that choosing the same file again is a new upload
        for f in files:
            content = f["content"]
            self._guarded(lambda f=f, content=content: self.add_upload(f["name"], bytes(content)))

    def on_mouse(self, event: Mapping[str, Any]) -> None:
        """ipyevents' mouse events on the first panel: a click adds a point of the chosen kind;
        with "box", pressing and releasing at two places draws a box."""
        x, y = event.get("dataX"), event.get("dataY")
        if x is None or y is None:
            return
        h, w = self.current.image.shape[:2]  # the panel's edge can report x = w: keep it inside
        x, y = min(max(float(x), 0.0), w - 1.0), min(max(float(y), 0.0), h - 1.0)
        kind = event.get("type")
        if kind == "mousedown":
            self._drag_start = (float(x), float(y))
        elif kind == "mouseup" and self._drag_start is not None:
            (x0, y0), self._drag_start = self._drag_start, None
            if self.click_mode.value == "box":
                if abs(x - x0) >= 2 and abs(y - y0) >= 2:
                    self.set_box(x0, y0, x, y)
            else:
                self.add_point(x, y, positive=self.click_mode.value == "positive")

    # -- public, programmatic use ---------------------------------------------------------------

    def set_prompt(self, prompt: str) -> None:
        """Type ``prompt`` (as pressing Enter in the prompt box)."""
        self.prompt_box.value = prompt

    def select(self, name: str) -> None:
        """Show the image called ``name``."""
        if name not in self.images:
            raise KeyError(f"no image {name!r}; known: {list(self.images)}")
        self.image_picker.value = name

    def add_image(self, name: str, image: Any, gt: np.ndarray | None = None, *,
                  task: str | None = None, prompt: str | None = None, show: bool = True) -> None:
        """Add an image (array, PIL image or path) to the picker and, with ``show``, display it."""
        shown = self.image_picker.value
        self._add_image(name, ExplorerImage(image, gt, task, prompt))
        self._silent = True  # new options may move the selection: refresh once, below
        self.image_picker.options = list(self.images)
        self.image_picker.value = shown
        self._silent = False
        if show and name != shown:
            self.select(name)
        elif name == shown:  # the image on screen was replaced
            self._guarded(self._image_changed)

    def add_upload(self, filename: str, content: bytes) -> str:
        """An uploaded file (any format the data layer reads: PNG, JPEG, TIFF, DICOM, NIfTI),
        added as ``"upload: <filename>"`` and shown. Unreadable files raise an error naming them."""
        suffix = "".join(Path(filename).suffixes[-2:]) if filename.endswith(".gz") else Path(filename).suffix
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"upload{suffix}"
            path.write_bytes(content)
            try:
                rgb = read_image(path, mode="rgb")
            except Exception as e:
                raise ValueError(f"cannot read the uploaded file {filename!r}: {e}") from e
        name = f"upload: {filename}"
        self.add_image(name, rgb)
        return name

    def add_point(self, x: float, y: float, positive: bool = True) -> None:
        """Add a positive (or negative) point at pixel ``(x, y)``; only SAM's decoder re-runs."""
        h, w = self.current.image.shape[:2]
        if not (0 <= x <= w - 1 and 0 <= y <= h - 1):
            raise ValueError(f"point ({x}, {y}) is outside the {w} x {h} image")
        self.user_points.append((float(x), float(y), 1 if positive else 0))
        self._guarded(lambda: self._refresh("sam_decode"))

    def set_box(self, x0: float, y0: float, x1: float, y1: float) -> None:
        """Prompt SAM with this box (any two opposite corners) instead of the automatic boxes."""
        h, w = self.current.image.shape[:2]
        b = np.array([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], dtype=np.float64)
        b[[0, 2]] = b[[0, 2]].clip(0, w - 1)
        b[[1, 3]] = b[[1, 3]].clip(0, h - 1)
        self.user_box = b
        self._guarded(lambda: self._refresh("sam_decode"))

    def clear_clicks(self) -> None:
        """Forget the points and box added by hand (back to the automatic SAM prompts)."""
        self.user_points, self.user_box = [], None
        self._guarded(lambda: self._refresh("sam_decode"))

    @property
    def state(self) -> dict[str, Any]:
        """What is displayed now, as plain values (for tests and for printing)."""
        pr = self.sam_prompts
        return {
            "image": self.image_picker.value,
            "prompt": self.prompt_box.value,
            "method": self.method.value,
            "k": self.config().saliency_options().get("k"),
            "postprocess": self.postprocess.value,
            "threshold": float(self.threshold.value),
            "sam_prompt_mode": self.mode.value,
            "task": self.task,
            "sam": self.sam_picker.value,
            "n_boxes": 0 if pr is None or pr.boxes is None else len(pr.boxes),
            "user_points": list(self.user_points),
            "user_box": None if self.user_box is None else self.user_box.tolist(),
            "flags": [] if pr is None else list(pr.flags),
            "mask_area": None if self.mask is None else int(self.mask.sum()),
            "sam_score": self.sam_score,
            "dice": self.dice,
            "error": self.last_error,
        }

    # -- computing ------------------------------------------------------------------------------

    def _image_changed(self) -> None:
        self.user_points, self.user_box = [], None
        typed = self.prompt_box.value
        suggested = self.current.prompt
        if suggested and (not typed or typed == self._suggested) and typed != suggested:
            # the prompt was the previous image's suggestion, not the user's own words
            self._suggested = suggested
            self.prompt_box.value = suggested  # fires on_prompt, which refreshes
            return
        self._suggested = suggested or self._suggested
        self._refresh("saliency")

    def _show_progress(self, stage: str | None, step: int = 0) -> None:
        if stage is None:
            self.progress.layout.visibility = "hidden"
            return
        self.progress.layout.visibility = "visible"
        self.progress.value = step
        self.progress_log.append((stage, step))
        del self.progress_log[:-200]  # the recent stages are enough (tests read them)
        label = {"saliency": f"running {self.method.label} on {self.prompt_box.value!r} ...",
                 "sam_prompts": "making SAM prompts ...", "sam_embed": "SAM: embedding the image ...",
                 "sam_decode": "SAM: decoding ...", "compare": "comparing prompts ..."}[stage]
        self.status.value = f"<i>{html.escape(label)}</i>"

    def _saliency_key(self, cfg: PipelineConfig, prompt: str) -> tuple:
        return (self.image_picker.value, prompt, cfg.saliency, _freeze(cfg.saliency_options()))

    def _saliency_for(self, prompt: str, cfg: PipelineConfig) -> np.ndarray:
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
               cfg.points, cfg.negatives, cfg.seed)
        if key not in self._sam_prompts_cache:
            self.counts["sam_prompts"] += 1
            self._sam_prompts_cache[key] = self.pipeline.sam_prompts_from(sal, self.current.image, cfg)
        return self._sam_prompts_cache[key]

    def _session(self) -> SamSession:
        name = self.sam_picker.value
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

    def _final_sam_prompts(self) -> SamPrompts:
        """The automatic SAM prompts with the hand-made ones: a drawn box replaces the automatic
        boxes (one SAM prompt); clicked points join every SAM prompt's point group."""
        pr = self.sam_prompts
        boxes = pr.boxes if self.user_box is None else self.user_box[None]
        if self.user_box is not None:
            pts = lbl = None
            if pr.points is not None and self.mode.value != "box":
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
        """Recompute from ``stage`` on (earlier stages come from the caches) and redraw."""
        t0 = time.perf_counter()
        self.last_error = None
        cfg = self.config()
        prompt = self.prompt_box.value
        start = STAGES.index(stage)
        if start <= 0 or self.saliency is None:
            self._show_progress("saliency", 0)
            self.saliency = self._saliency_for(prompt, cfg)
        if start <= 1 or self.sam_prompts is None:
            self._show_progress("sam_prompts", 1)
            self.sam_prompts = self._sam_prompts_for(self._saliency_key(cfg, prompt), self.saliency, cfg)
        session = self._session()
        self._show_progress("sam_embed", 2)
        self._embed(session)  # free when this SAM already holds this image
        self._show_progress("sam_decode", 3)
        res = session.predict_sam_prompts(self._final_sam_prompts(), multimask=cfg.multimask, union=True)
        self.counts["sam_decode"] += 1
        self.mask, self.sam_score = res.mask, res.score
        gt = self.current.gt
        self.dice = None if gt is None else dice_score(self.mask, gt)
        self.progress.value = len(STAGES)
        self._show_progress(None)
        self._draw(time.perf_counter() - t0)

    # -- drawing --------------------------------------------------------------------------------

    def _sam_prompt_panel(self) -> np.ndarray:
        img = self.current.image
        pr = self.sam_prompts
        auto_boxes = [] if pr is None or pr.boxes is None or self.user_box is not None else list(pr.boxes)
        out = overlay(img, boxes=auto_boxes, box_color=AUTO_BOX)
        if self.user_box is not None:
            out = overlay(out, boxes=[self.user_box], box_color=USER_BOX)
        r = max(2, min(img.shape[:2]) // 64)
        shown = self._final_sam_prompts() if pr is not None else None
        if shown is not None and shown.points is not None:
            for (x, y), lab in zip(shown.points[0], shown.point_labels[0]):
                if lab >= 0:
                    _dot(out, x, y, POSITIVE if lab == 1 else NEGATIVE, r)
        return out

    def panel_images(self) -> dict[str, np.ndarray]:
        """The four panels as RGB arrays (what the widget shows)."""
        img = self.current.image
        pr = self.sam_prompts
        return {
            "sam_prompts": self._sam_prompt_panel(),
            "saliency": overlay(img, saliency=self.saliency),
            "coarse": overlay(img, None if pr is None else pr.mask, mask_color=AUTO_BOX),
            "mask": overlay(img, self.mask, outline=self.current.gt),
        }

    def _draw(self, seconds: float) -> None:
        for name, rgb in self.panel_images().items():
            self.panels[name].value = _png(rgb)
        s = self.state
        parts = [f"SAM score <b>{s['sam_score']:.2f}</b>", f"mask area {s['mask_area']} px"]
        if s["dice"] is not None:
            parts.insert(0, f"Dice vs ground truth <b>{s['dice']:.3f}</b>")
        if s["flags"]:
            parts.append("flags: " + ", ".join(s["flags"]))
        if self.user_points or self.user_box is not None:
            made = [f"{'+' if lab == 1 else '-'}({x:.0f}, {y:.0f})" for x, y, lab in self.user_points]
            if self.user_box is not None:
                made.append("box ({:.0f}, {:.0f}, {:.0f}, {:.0f})".format(*self.user_box))
            parts.append("hand-made SAM prompts: " + " ".join(made))
        self.readout.value = " &middot; ".join(parts)
        ran = ", ".join(f"{k} {v}" for k, v in self.counts.items())
        self.status.value = f"done in {seconds:.2f} s &middot; <small>stages run so far: {ran}</small>"

    def figure(self, cell_size: float = 3.0):
        """A matplotlib figure of the four panels (for static notebooks and reports)."""
        s = self.state
        extra = f", Dice {s['dice']:.3f}" if s["dice"] is not None else ""
        titles = [f"{s['image']}: SAM prompts", f"saliency: {s['prompt']!r}", "coarse mask",
                  f"SAM mask (score {s['sam_score']:.2f}{extra})"]
        return sample_grid(list(self.panel_images().values()), titles, ncols=4, cell_size=cell_size)

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

    def compare(self, prompts: Sequence[str]) -> list[dict]:
        """Run each prompt on the current image with the current settings (hand-made clicks are
        not used) and show them side by side with Dice and prompt-sensitivity (and the text-alone
        segmenter's mask and Dice, ``text_dice``, when there is one). Returns the rows."""
        prompts = [p for p in prompts if p]
        if not prompts:
            raise ValueError("type at least one prompt to compare (one per line)")
        cfg = self.config()
        session = self._session()
        self._embed(session)
        rows, columns = [], []
        for i, prompt in enumerate(prompts):
            self._show_progress("compare", min(len(STAGES) - 1, i))
            sal = self._saliency_for(prompt, cfg)
            pr = self._sam_prompts_for(self._saliency_key(cfg, prompt), sal, cfg)
            res = session.predict_sam_prompts(pr, multimask=cfg.multimask, union=True)
            self.counts["sam_decode"] += 1
            gt = self.current.gt
            row = {"prompt": prompt, "dice": None if gt is None else dice_score(res.mask, gt),
                   "sam_score": res.score, "sensitivity": self.sensitivity(prompt),
                   "flags": list(pr.flags)}
            text_res = self._text_baseline_result(prompt)
            if text_res is not None:
                row["text_dice"] = None if gt is None else dice_score(text_res.mask, gt)
                row["text_score"], row["text_flags"] = text_res.sam_score, list(text_res.flags)
            rows.append(row)
            caption = [f"<b>{html.escape(prompt)}</b>"]
            if row["dice"] is not None:
                caption.append(f"Dice {row['dice']:.3f}")
            if row["sensitivity"] is not None:
                low = row["sensitivity"] < DEFAULT_THRESHOLD
                caption.append(f"sensitivity {row['sensitivity']:.2f}" + (
                    " <span style='color:#c00'>(barely depends on the prompt)</span>" if low else ""))
            layout = W.Layout(width="200px", height="auto")
            columns.append(W.VBox([
                W.HTML("<br>".join(caption)),
                W.Image(value=_png(overlay(self.current.image, saliency=sal)), format="png", layout=layout),
                W.Image(value=_png(overlay(self.current.image, res.mask, outline=gt,
                                           boxes=None if pr.boxes is None else list(pr.boxes))),
                        format="png", layout=layout),
            ]))
            if text_res is not None:
                label = "text alone" + ("" if row["text_dice"] is None else f": Dice {row['text_dice']:.3f}")
                columns[-1].children += (
                    W.HTML(f"<small>{html.escape(label)}</small>"),
                    W.Image(value=_png(overlay(self.current.image, text_res.mask, outline=gt,
                                               boxes=None if text_res.boxes is None else list(text_res.boxes))),
                            format="png", layout=layout),
                )
        self._show_progress(None)
        note = W.HTML(
            "<small>sensitivity: 1 - Pearson r between the prompt's map and the closest control "
            "prompt's map (empty, nonsense, another organ ...); below 0.1 the map barely depends "
            "on the prompt.</small>")
        self.compare_out.children = [W.HBox(columns), note]
        self.comparison = rows
        self.status.value = f"compared {len(rows)} prompts"
        return rows
