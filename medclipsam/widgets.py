"""The prompt explorer: MedCLIP-SAM as an ipywidgets application (JupyterLab, Colab, VS Code).

::

    from medclipsam.widgets import PromptExplorer
    ex = PromptExplorer.offline()      # toy CLIP + LiteMedSAM + a few phantom images of each task
    ex                                 # displays it (or display(ex.widget))

Choose an image (or upload one), type a prompt (Enter or the *segment* button applies it; an empty
one is refused), pick the saliency method, k, the post-processing, its threshold (shown only with
the threshold rule, the one rule that reads it), the SAM prompt mode and the SAM model: the four
panels show the saliency map, the coarse mask with the automatic SAM prompts (boxes, points), and
SAM's mask (against the ground truth's outline when there is one, with its Dice; an empty mask is
said to be empty). Click on the first panel to add a point (the "click adds" switch says positive,
negative, or box) and drag to draw a box: that re-runs only SAM's decoder, on the stored image
embedding. The "compare prompts" tab puts several prompts side by side on one image with each
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

This module is the view: it builds the widgets, forwards their changes to an
:class:`~medclipsam.explorer_model.ExplorerModel` (:attr:`PromptExplorer.model`, the state and
the computation, usable without ipywidgets) and draws the state the model returns.

Needs the ``notebooks`` extra (ipywidgets, and ipyevents for clicks on the image). In Colab, call
``google.colab.output.enable_custom_widget_manager()`` first (notebook 06 does) so that ipyevents'
third-party widget renders.
"""

from __future__ import annotations

import html
import io
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

try:
    import ipywidgets as W
except ImportError as e:  # pragma: no cover - depends on the installation
    raise ImportError(
        "medclipsam.widgets needs ipywidgets: pip install 'medclipsam[notebooks]'"
    ) from e

from PIL import Image

from .config import TASK_PRESETS, PipelineConfig
from .explorer_model import STAGES, ExplorerModel
from .explorer_sources import ExplorerBuilders, ExplorerImage, read_upload
from .explorer_state import ComparedPrompt, ExplorerState
from .pipeline import MedCLIPSAM
from .saliency.sensitivity import DEFAULT_THRESHOLD
from .viz import COLOURS, PROMPT_LEGEND, draw_points, legend_html, overlay, sample_grid
from .vocab import CONTROL_SALIENCY, POSTPROCESS_METHODS, SALIENCY_METHODS, SAM_PROMPT_MODES

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
#: What the threshold slider's place says when the coarse-mask rule reads no fixed threshold.
NO_THRESHOLD = {
    "crf": "the dense CRF draws the region",
    "kmeans": "k-means picks the cut on each map",
    "otsu": "Otsu's rule picks the cut on each map",
}
#: What the read-out and the mask panel's title say about a failed mask (see ExplorerState.mask_flags).
MASK_PROBLEMS = {
    "empty_mask": "SAM returned an empty mask",
    "mask_covers_image": "SAM's mask covers the whole image",
}
PANEL_TITLES = {"sam_prompts": "SAM prompts (click / drag)", "saliency": "saliency",
                "coarse": "coarse mask", "mask": "SAM mask vs ground truth"}

# colours of the drawings (RGB): the legend every lesson uses (medclipsam.viz.COLOURS); a box is
# a box prompt whether the pipeline made it or you dragged it (yours replaces the automatic one)
AUTO_BOX = USER_BOX = COLOURS["box prompt"]
POSITIVE = COLOURS["positive point"]
NEGATIVE = COLOURS["negative point"]


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


#: CSS keeping a title or caption on one line (cut with an ellipsis), so pictures below line up.
ONE_LINE = "white-space:nowrap;overflow:hidden;text-overflow:ellipsis"


def _title_html(text: str, colour: str | None = None) -> str:
    """A panel title on one line (cut with an ellipsis, whole on hover), so that every panel's
    image starts at the same height."""
    style = ONE_LINE
    if colour:
        style += f";color:{colour}"
    t = html.escape(text)
    return f"<div style='{style}' title='{t}'><b>{t}</b></div>"


def _from_model(name: str, doc: str) -> property:
    return property(lambda self: getattr(self.model, name), doc=doc)


class PromptExplorer(ExplorerBuilders):
    """An interactive view of one pipeline over a set of images (see the module doc).

    ``pipeline``, ``images``, ``sam_models``, ``sam_name``, ``prompt``, ``text_baseline`` and
    ``k`` are :class:`~medclipsam.explorer_model.ExplorerModel`'s (with a ``text_baseline`` the
    *compare prompts* tab shows its mask and Dice for each prompt beside MedCLIP-SAM's).
    ``display_size``: width in CSS pixels of each panel. ``compare_prompts``: the prompts the
    *compare prompts* tab starts with. Built also by :meth:`offline`, :meth:`for_world` and
    :meth:`from_folder`.
    """

    def __init__(self, pipeline: MedCLIPSAM, images: Mapping[str, ExplorerImage | np.ndarray], *,
                 sam_models: Mapping[str, Any] | None = None, sam_name: str = "pipeline SAM",
                 prompt: str | None = None, display_size: int = 256,
                 compare_prompts: Sequence[str] | None = None, text_baseline: Any = None,
                 k: int | None = None) -> None:
        self.model = ExplorerModel(pipeline, images, sam_models=sam_models, sam_name=sam_name,
                                   prompt=prompt, text_baseline=text_baseline, k=k)
        self._drag_start: tuple[float, float] | None = None
        self._silent = True  # no callbacks while the controls are being built
        self._build_widgets(display_size, compare_prompts)
        self.model.progress_listener = self._show_progress
        self._silent = False
        self._result_html = ""  # the read-out of the result shown (an error is put above it)
        if self.model.refusal(self.model.prompt) is None:
            self._draw(self.model.update())
        else:  # no prompt yet (an image without a suggested one): the image, and a request for one
            self._run()

    # what the model holds, read through the view
    pipeline = _from_model("pipeline", "The pipeline explored.")
    images = _from_model("images", "The images offered, by name (ExplorerImage).")
    current = _from_model("current", "The image shown now.")
    task = _from_model("task", 'The task preset in force (the image\'s own task with "from the image").')
    counts = _from_model("counts", "How often each stage really ran.")
    saliency = _from_model("saliency", "The saliency map shown.")
    sam_prompts = _from_model("sam_prompts", "The automatic SAM prompts (coarse mask, boxes ...).")
    mask = _from_model("mask", "SAM's mask shown.")
    sam_score = _from_model("sam_score", "SAM's score of its mask.")
    dice = _from_model("dice", "The mask's Dice against the ground truth (None without one).")
    user_points = _from_model("user_points", "The points added by hand (x, y, label).")
    user_box = _from_model("user_box", "The box drawn by hand (None without one).")
    last_error = _from_model("last_error", "The error of the last change (None when it worked).")
    feature_store = _from_model("feature_store", "gScoreCAM's features of the image shown.")
    progress_log = _from_model("progress_log", "The recent stages run, with their steps.")
    comparison = _from_model("comparison", "The rows of the last comparison of prompts.")

    def config(self) -> PipelineConfig:
        """The pipeline settings the controls describe now."""
        return self.model.config()

    def sensitivity(self, prompt: str) -> float | None:
        """See :meth:`ExplorerModel.sensitivity <medclipsam.explorer_model.ExplorerModel.sensitivity>`."""
        return self.model.sensitivity(prompt)

    @property
    def state(self) -> dict[str, Any]:
        """What is displayed now, as plain values (for tests and for printing)."""
        return self.model.snapshot().as_dict()

    # -- construction ---------------------------------------------------------------------------

    def _build_widgets(self, size: int, compare_prompts: Sequence[str] | None) -> None:
        m = self.model
        style = {"description_width": "90px"}
        wide = W.Layout(width="330px")
        self.image_picker = W.Dropdown(options=list(m.images), value=m.image, description="image",
                                       style=style, layout=wide)
        self.upload = W.FileUpload(accept=".png,.jpg,.jpeg,.bmp,.tif,.tiff,.dcm,.nii,.gz",
                                   multiple=False, description="upload image")
        self.prompt_box = W.Text(value=m.prompt, description="prompt", continuous_update=False,
                                 placeholder="what to segment, e.g. breast tumor",
                                 style=style, layout=wide)
        self.segment_button = W.Button(description="segment", icon="play", button_style="primary",
                                       tooltip="apply the prompt (as Enter in the prompt box)",
                                       layout=W.Layout(width="110px"))
        self.method = W.Dropdown(options=METHOD_CHOICES, value=m.method,
                                 description="saliency", style=style, layout=wide)
        self.k = W.IntSlider(value=m.k, min=1, max=m.channels,
                             description="k (channels)", style=style, continuous_update=False)
        self.postprocess = W.Dropdown(options=POSTPROCESS_CHOICES, value=m.postprocess,
                                      description="coarse mask", style=style, layout=wide)
        self.threshold = W.FloatSlider(value=m.threshold, min=0.05, max=0.95, step=0.05,
                                       description="threshold", style=style,
                                       continuous_update=False)
        self.threshold_note = W.HTML()  # in the slider's place when the rule reads no threshold
        self.mode = W.ToggleButtons(options=MODE_CHOICES, value=m.sam_prompt_mode,
                                    description="SAM prompts", style=style)
        self.preset = W.Dropdown(options=[("from the image", "auto"), ("none", "none")]
                                 + [(t, t) for t in TASK_PRESETS], value=m.preset,
                                 description="task preset", style=style, layout=wide)
        self.sam_picker = W.Dropdown(options=m.sam_names, value=m.sam, description="SAM model",
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
        self.panel_titles = {name: W.HTML(_title_html(PANEL_TITLES[name]),
                                          layout=W.Layout(width=f"{size}px"))
                             for name in self.panels}
        columns = [W.VBox([self.panel_titles[n], p]) for n, p in self.panels.items()]
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
        self.segment_button.on_click(self.on_segment)
        self.compare_button.on_click(self.on_compare)

        controls = W.VBox([
            W.HBox([self.image_picker, self.upload]),
            W.HBox([self.prompt_box, self.segment_button, self.preset]),
            W.HBox([self.method, self.k]),
            W.HBox([self.postprocess, self.threshold, self.threshold_note]),
            self.mode,
            W.HBox([self.sam_picker]),
            W.HBox([self.click_mode, self.clear_button, click_note]),
            W.HBox([self.progress, self.status]),
        ])
        explore = W.VBox([controls, W.HBox(columns), W.HTML(legend_html()), self.readout])
        compare = W.VBox([W.HBox([self.compare_text, self.compare_button]), self.compare_out])
        self.tabs = W.Tab(children=[explore, compare])
        self.tabs.set_title(0, "explore")
        self.tabs.set_title(1, "compare prompts")
        self.widget = self.tabs
        self._update_enabled()

    def _ipython_display_(self) -> None:  # pragma: no cover - needs a front end
        from IPython.display import display

        display(self.widget)

    def _update_enabled(self) -> None:
        """k is greyed out for a method without it; the threshold slider is shown only with the
        threshold rule (another rule reads no threshold: a note says what decides instead)."""
        self.k.disabled = not self.model.uses("k")
        used = self.model.uses("threshold")
        self.threshold.disabled = not used
        self.threshold.layout.display = None if used else "none"
        post = self.model.postprocess
        why = html.escape(NO_THRESHOLD.get(post, f"{post} reads none"), quote=False)
        self.threshold_note.value = "" if used else f"<i>no threshold: {why}</i>"
        self.threshold_note.layout.display = "none" if used else None

    def _sync_controls(self) -> None:
        """Show the settings in force (the model's), without calling back: a refused prompt is
        replaced by the one the panels show, a new image's suggested prompt appears ..."""
        m = self.model
        self._silent = True
        try:
            for widget, value in [(self.image_picker, m.image), (self.prompt_box, m.prompt),
                                  (self.method, m.method), (self.k, m.k), (self.preset, m.preset),
                                  (self.postprocess, m.postprocess), (self.threshold, m.threshold),
                                  (self.mode, m.sam_prompt_mode), (self.sam_picker, m.sam)]:
                if widget.value != value:
                    widget.value = value
        finally:
            self._silent = False
        self._update_enabled()

    # -- callbacks (ordinary methods: tests and notebooks call them too) ------------------------

    def _guarded(self, fn: Callable[[], None]) -> None:
        if self._silent:
            return
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - shown to the user instead of lost in a log
            refused = isinstance(e, ValueError)  # a refused input: its message is enough
            self.model.last_error = str(e) if refused else f"{type(e).__name__}: {e}"
            self._show_progress(None)
            error = f"<span style='color:#c00'>{html.escape(self.model.last_error)}</span>"
            self.status.value = error
            self._sync_controls()  # the controls show what is in force again
            if self.model.mask is None:  # nothing computed yet: at least the image
                for name, rgb in self.panel_images().items():
                    self.panels[name].value = _png(rgb)
                self.readout.value = error
            else:
                still = f"the panels still show {self.model.prompt!r} on {self.model.image}"
                self.readout.value = f"{error} <i>({html.escape(still)})</i><br>{self._result_html}"

    def _run(self, change: Callable[[], Any] = lambda: None) -> None:
        """Give the model a change, then draw what it recomputes (errors are shown, not raised)."""
        def apply() -> None:
            change()
            self._sync_controls()  # the model's prompt may follow a new image's suggestion
            if self.model.changed:  # else nothing to redraw (and a refusal's message stays)
                self._draw(self.model.update())

        self._guarded(apply)

    def on_image(self, change: Any = None) -> None:
        self._run(lambda: self.model.select(self.image_picker.value))

    def on_prompt(self, change: Any = None) -> None:
        self._run(lambda: self.model.set_prompt(self.prompt_box.value))

    def on_segment(self, _button: Any = None) -> None:
        """The *segment* button: apply the prompt box's text (as Enter does)."""
        self.on_prompt()

    def on_method(self, change: Any = None) -> None:
        self._run(lambda: self.model.set(method=self.method.value))

    def on_saliency_option(self, change: Any = None) -> None:
        self._run(lambda: self.model.set(k=self.k.value, preset=self.preset.value))

    def on_prompt_option(self, change: Any = None) -> None:
        self._run(lambda: self.model.set(postprocess=self.postprocess.value,
                                         threshold=self.threshold.value,
                                         sam_prompt_mode=self.mode.value))

    def on_sam(self, change: Any = None) -> None:
        self._run(lambda: self.model.set(sam=self.sam_picker.value))

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
        """Type ``prompt`` and press Enter (or *segment*); an empty prompt is refused: the
        read-out says so and the previous result stays (:attr:`last_error` holds the message)."""
        self.prompt_box.value = prompt

    def select(self, name: str) -> None:
        """Show the image called ``name``."""
        if name not in self.images:
            raise KeyError(f"no image {name!r}; known: {list(self.images)}")
        self.image_picker.value = name

    def add_image(self, name: str, image: Any, gt: np.ndarray | None = None, *,
                  task: str | None = None, prompt: str | None = None, show: bool = True) -> None:
        """Add an image (array, PIL image or path) to the picker and, with ``show``, display it."""
        shown = self.model.image
        self.model.add_image(name, image, gt, task=task, prompt=prompt, show=show)
        self._silent = True  # new options may move the selection: refresh once, below
        self.image_picker.options = list(self.images)
        self.image_picker.value = self.model.image
        self._silent = False
        if name == shown or self.model.image != shown:  # the image on screen was replaced or changed
            self._run()

    def add_upload(self, filename: str, content: bytes) -> str:
        """An uploaded file (any format the data layer reads: PNG, JPEG, TIFF, DICOM, NIfTI),
        added as ``"upload: <filename>"`` and shown. Unreadable files raise an error naming them."""
        rgb = read_upload(filename, content)
        name = f"upload: {filename}"
        self.add_image(name, rgb)
        return name

    def add_point(self, x: float, y: float, positive: bool = True) -> None:
        """Add a positive (or negative) point at pixel ``(x, y)``; only SAM's decoder re-runs."""
        self.model.add_point(x, y, positive)
        self._run()

    def set_box(self, x0: float, y0: float, x1: float, y1: float) -> None:
        """Prompt SAM with this box (any two opposite corners) instead of the automatic boxes."""
        self.model.set_box(x0, y0, x1, y1)
        self._run()

    def clear_clicks(self) -> None:
        """Forget the points and box added by hand (back to the automatic SAM prompts)."""
        self.model.clear_clicks()
        self._run()

    # -- drawing --------------------------------------------------------------------------------

    def _show_progress(self, stage: str | None, step: int = 0) -> None:
        if stage is None:
            self.progress.layout.visibility = "hidden"
            return
        self.progress.layout.visibility = "visible"
        self.progress.value = step
        label = {"saliency": f"running {self.method.label} on {self.prompt_box.value!r} ...",
                 "sam_prompts": "making SAM prompts ...", "sam_embed": "SAM: embedding the image ...",
                 "sam_decode": "SAM: decoding ...", "compare": "comparing prompts ..."}[stage]
        self.status.value = f"<i>{html.escape(label)}</i>"

    def _sam_prompt_panel(self) -> np.ndarray:
        img = self.current.image
        pr, user_box = self.sam_prompts, self.user_box
        auto_boxes = [] if pr is None or pr.boxes is None or user_box is not None else list(pr.boxes)
        out = overlay(img, boxes=auto_boxes, box_color=AUTO_BOX)
        if user_box is not None:
            out = overlay(out, boxes=[user_box], box_color=USER_BOX)
        shown = self.model.final_sam_prompts() if pr is not None else None
        if shown is not None and shown.points is not None:
            draw_points(out, shown.points[0], shown.point_labels[0])
        return out

    def panel_images(self) -> dict[str, np.ndarray]:
        """The four panels as RGB arrays (what the widget shows)."""
        img = self.current.image
        pr = self.sam_prompts
        return {
            "sam_prompts": self._sam_prompt_panel(),
            "saliency": overlay(img, saliency=self.saliency),
            "coarse": overlay(img, coarse=None if pr is None else pr.mask),
            "mask": overlay(img, self.mask, outline=self.current.gt),
        }

    def _draw(self, s: ExplorerState) -> None:
        self.progress.value = len(STAGES)
        for name, rgb in self.panel_images().items():
            self.panels[name].value = _png(rgb)
        problems = [MASK_PROBLEMS[f] for f in s.mask_flags if f in MASK_PROBLEMS]
        mask_title = PANEL_TITLES["mask"] if self.current.gt is not None else "SAM mask"
        self.panel_titles["mask"].value = (_title_html(problems[0], "#c00") if problems
                                           else _title_html(mask_title))
        parts = [f"<b style='color:#c00'>{html.escape(p)}</b>" for p in problems]
        parts += [f"SAM score <b>{s.sam_score:.2f}</b>", f"mask area {s.mask_area} px"]
        if s.dice is not None:
            parts.insert(len(problems), f"Dice vs ground truth <b>{s.dice:.3f}</b>")
        if s.flags:
            parts.append("flags: " + ", ".join(s.flags))
        if s.hand_made:
            parts.append("hand-made SAM prompts: " + " ".join(s.hand_made))
        self._result_html = self.readout.value = " &middot; ".join(parts)
        ran = ", ".join(f"{k} {v}" for k, v in self.counts.items())
        self.status.value = f"done in {s.seconds:.2f} s &middot; <small>stages run so far: {ran}</small>"

    def figure(self, cell_size: float = 3.0):
        """A matplotlib figure of the four panels (for static notebooks and reports)."""
        s = self.state
        extra = f", Dice {s['dice']:.3f}" if s["dice"] is not None else ""
        empty = ": empty" if "empty_mask" in s["mask_flags"] else ""
        titles = [f"{s['image']}: SAM prompts", f"saliency: {s['prompt']!r}", "coarse mask",
                  f"SAM mask{empty} (score {s['sam_score']:.2f}{extra})"]
        legend = [k for k in PROMPT_LEGEND if self.current.gt is not None or k != "ground truth (outline)"]
        return sample_grid(list(self.panel_images().values()), titles, ncols=4, cell_size=cell_size,
                           colorbar=True, legend=legend)

    # -- comparing prompts ----------------------------------------------------------------------

    @staticmethod
    def _caption_lines(item: ComparedPrompt) -> list[str]:
        row = item.row
        lines = [f"<b>{html.escape(row['prompt'])}</b>"]
        if row["dice"] is not None:
            lines.append(f"Dice {row['dice']:.3f}")
        if not item.mask.any():
            lines.append(f"<span style='color:#c00'>{MASK_PROBLEMS['empty_mask']}</span>")
        if row["sensitivity"] is not None:
            lines.append(f"sensitivity {row['sensitivity']:.2f}")
            if row["sensitivity"] < DEFAULT_THRESHOLD:
                lines.append("<span style='color:#c00'>barely depends on the prompt</span>")
        return lines

    def _compare_column(self, item: ComparedPrompt, caption: list[str], n_lines: int) -> W.VBox:
        """One prompt's column: its caption lines (padded to ``n_lines``, each kept on one line,
        so that every column's pictures start at the same height), its map and its mask."""
        row, img, gt = item.row, self.current.image, self.current.gt
        caption = caption + ["&nbsp;"] * (n_lines - len(caption))
        caption_html = f"<div style='{ONE_LINE}' title='{html.escape(row['prompt'])}'>{'<br>'.join(caption)}</div>"
        layout = W.Layout(width="200px", height="auto")
        column = W.VBox([
            W.HTML(caption_html, layout=W.Layout(width="200px")),
            W.Image(value=_png(overlay(img, saliency=item.saliency)), format="png", layout=layout),
            W.Image(value=_png(overlay(img, item.mask, outline=gt,
                                       boxes=None if item.boxes is None else list(item.boxes))),
                    format="png", layout=layout),
        ])
        if item.text_mask is not None:
            label = "text alone" + ("" if row["text_dice"] is None else f": Dice {row['text_dice']:.3f}")
            column.children += (
                W.HTML(f"<small>{html.escape(label)}</small>"),
                W.Image(value=_png(overlay(img, item.text_mask, outline=gt,
                                           boxes=None if item.text_boxes is None else list(item.text_boxes))),
                        format="png", layout=layout),
            )
        return column

    def compare(self, prompts: Sequence[str]) -> list[dict]:
        """Run each prompt on the current image with the current settings (hand-made clicks are
        not used) and show them side by side with Dice and prompt-sensitivity (and the text-alone
        segmenter's mask and Dice, ``text_dice``, when there is one). Returns the rows."""
        items = self.model.compare_prompts(prompts)
        note = W.HTML(
            "<small>sensitivity: 1 - Pearson r between the prompt's map and the closest control "
            "prompt's map (empty, nonsense, another organ ...); below 0.1 the map barely depends "
            "on the prompt.</small>")
        captions = [self._caption_lines(i) for i in items]
        n_lines = max(len(c) for c in captions)
        columns = [self._compare_column(i, c, n_lines) for i, c in zip(items, captions)]
        self.compare_out.children = [W.HBox(columns), note]
        self.status.value = f"compared {len(items)} prompts"
        return self.model.comparison
