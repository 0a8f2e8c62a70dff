"""The prompt explorer, driven without a browser through its ordinary methods and widget values.

The offline world (toy CLIP, the real LiteMedSAM), real phantom images; the ``counts`` of the stages that ran
show what a change recomputed, and the displayed values (panels, read-out) are checked against
independent computations. What the explorer computes and caches without its widgets (the cache of
prompts and methods seen, the bounded caches) is tests/test_explorer_model.py's.
"""

from __future__ import annotations

import io
from datetime import datetime, timezone

import numpy as np
import pytest
from PIL import Image

from medclipsam.config import OFFLINE_DEFAULTS, default_k
from medclipsam.data.phantom import PhantomDataset
from medclipsam.metrics import dice
from medclipsam.models import load_sam
from medclipsam.saliency.sensitivity import DEFAULT_THRESHOLD
from medclipsam.widgets import ExplorerImage, PromptExplorer

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def explorer():
    # a second SAM (the same LiteMedSAM weights, another instance) loaded only when first chosen
    return PromptExplorer.offline(per_task=1,
                                  sam_models={"LiteMedSAM (copy)": lambda: load_sam("litemedsam")})


def _png_shape(data: bytes) -> tuple[int, ...]:
    return np.asarray(Image.open(io.BytesIO(data))).shape


def _delta(before: dict, after: dict) -> dict:
    return {k: after[k] - before[k] for k in before}


def _reset(ex: PromptExplorer, image: str = "breast 1") -> None:
    name = next(n for n in ex.images if n.startswith(image))
    ex.select(name)
    ex.set_prompt(ex.images[name].prompt)
    ex.method.value = "gscorecam"
    ex.k.value = default_k("offline")
    ex.postprocess.value = "crf"
    ex.mode.value = OFFLINE_DEFAULTS["sam_prompt_mode"]
    ex.preset.value = "auto"
    ex.sam_picker.value = "LiteMedSAM"
    ex.clear_clicks()
    assert ex.last_error is None, ex.last_error


def test_first_view_shows_every_stage_and_the_dice_against_the_ground_truth(explorer):
    ex = explorer
    _reset(ex)
    img = ex.current
    assert img.gt is not None and img.task == "breast"
    s = ex.state
    assert s["prompt"] == "breast tumor" and s["error"] is None
    for name, panel in ex.panels.items():
        assert _png_shape(panel.value) == (*img.image.shape[:2], 3), name
    assert s["dice"] == pytest.approx(dice(ex.mask, img.gt))
    assert f"{s['dice']:.3f}" in ex.readout.value
    assert s["mask_area"] == int(ex.mask.sum()) > 0
    # the progress bar went through the stages in order and is hidden when done
    stages = [st for st, _ in ex.progress_log]
    assert stages.index("saliency") < stages.index("sam_decode")
    assert ex.progress.layout.visibility == "hidden"
    assert "done in" in ex.status.value


def test_the_static_figure_and_the_widget_explain_the_lessons_colours(explorer):
    import matplotlib.pyplot as plt

    from medclipsam.viz import PROMPT_LEGEND, SALIENCY_LABEL

    ex = explorer
    _reset(ex)
    fig = ex.figure()
    try:
        assert [t.get_text() for lg in fig.legends for t in lg.get_texts()] == list(PROMPT_LEGEND)
        assert SALIENCY_LABEL in [ax.get_ylabel() for ax in fig.axes]
    finally:
        plt.close(fig)
    legend = [w for w in ex.widget.children[0].children if "positive point" in getattr(w, "value", "")]
    assert legend and "saliency" in legend[0].value


def test_threshold_reruns_only_the_prompts_and_the_coarse_mask_shrinks(explorer):
    ex = explorer
    _reset(ex)
    ex.postprocess.value = "threshold"
    assert not ex.threshold.disabled and ex.k.disabled is False
    before = dict(ex.counts)
    areas = []
    for t in np.arange(ex.threshold.min, ex.threshold.max + 1e-9, 0.15):
        ex.threshold.value = float(t)
        assert ex.last_error is None, ex.last_error
        areas.append(int(ex.sam_prompts.mask.sum()))
        # independent check: the kept component lies inside {saliency >= t}
        assert not np.any(ex.sam_prompts.mask & (ex.saliency < t - 1e-6))
    d = _delta(before, ex.counts)
    assert d["saliency"] == 0 and d["sam_embed"] == 0
    assert d["sam_prompts"] >= len(areas) - 1 and d["sam_decode"] >= len(areas) - 1
    assert all(a >= b for a, b in zip(areas, areas[1:])), areas  # monotone in the threshold
    assert areas[0] > areas[-1]
    # with another rule the threshold is not read: moving it recomputes nothing new
    ex.postprocess.value = "kmeans"
    assert ex.threshold.disabled
    assert ex.threshold.layout.display == "none"  # hidden: no value left over from the sweep
    assert "no threshold: k-means picks the cut" in ex.threshold_note.value
    before = dict(ex.counts)
    ex.threshold.value = 0.5
    ex.threshold.value = 0.35
    assert _delta(before, ex.counts)["sam_prompts"] == 0


def test_the_threshold_slider_shows_only_the_threshold_in_force(explorer):
    """After a sweep the notebook goes back to the dense CRF: the slider, left at the sweep's last
    value, is not shown, and a note says what draws the region; back to the threshold rule, the
    slider is shown with the threshold the coarse mask is cut at."""
    ex = explorer
    _reset(ex)
    assert ex.threshold.layout.display == "none" and ex.threshold_note.layout.display is None
    assert "no threshold: the dense CRF draws the region" in ex.threshold_note.value
    ex.postprocess.value = "threshold"
    ex.threshold.value = 0.9
    assert ex.threshold.layout.display is None and ex.threshold_note.layout.display == "none"
    assert ex.state["threshold"] == 0.9 and not ex.threshold.disabled
    ex.postprocess.value = "crf"
    assert ex.threshold.layout.display == "none" and ex.threshold.disabled
    for post, says in (("otsu", "Otsu's rule picks the cut"), ("kmeans", "k-means picks the cut")):
        ex.postprocess.value = post
        assert ex.threshold.layout.display == "none" and says in ex.threshold_note.value
    # a threshold set on the model is what the slider shows at the next redraw
    ex.model.set(postprocess="threshold", threshold=0.4)
    ex.clear_clicks()
    assert ex.threshold.value == pytest.approx(0.4) and ex.postprocess.value == "threshold"
    assert ex.threshold.layout.display is None
    assert not np.any(ex.sam_prompts.mask & (ex.saliency <= 0.4))  # the cut in force
    ex.postprocess.value = "crf"


def test_the_segment_button_applies_the_typed_prompt(explorer):
    """Enter or leaving the box applies a prompt; so does the *segment* button beside the box."""
    ex = explorer
    _reset(ex)
    row = next(r for r in ex.widget.children[0].children[0].children if ex.prompt_box in r.children)
    assert ex.segment_button in row.children and ex.segment_button.description == "segment"
    # text typed in the browser and not yet sent with Enter: the box holds it, nothing is applied
    ex.prompt_box.unobserve(ex.on_prompt, names="value")
    try:
        ex.prompt_box.value = "brain tumor"
    finally:
        ex.prompt_box.observe(ex.on_prompt, names="value")
    assert ex.state["prompt"] == "breast tumor"
    dice_before = ex.state["dice"]
    ex.segment_button.click()
    assert ex.state["prompt"] == "brain tumor" and ex.last_error is None
    assert ex.state["dice"] == pytest.approx(dice(ex.mask, ex.current.gt)) != dice_before
    assert f"{ex.state['dice']:.3f}" in ex.readout.value


def test_an_empty_prompt_is_refused_in_the_read_out_and_the_result_stays(explorer):
    ex = explorer
    _reset(ex)
    shown = ex.state
    panels = {n: p.value for n, p in ex.panels.items()}
    before = dict(ex.counts)
    for blank in ("", "   "):
        ex.set_prompt(blank)
        assert "empty prompt" in ex.readout.value and "refused" in ex.readout.value
        assert "type what to segment, e.g. &#x27;breast tumor&#x27;" in ex.readout.value
        assert "the panels still show &#x27;breast tumor&#x27;" in ex.readout.value
        assert f"Dice vs ground truth <b>{shown['dice']:.3f}</b>" in ex.readout.value  # still there
        assert ex.prompt_box.value == "breast tumor"  # the box shows the prompt in force again
        assert ex.state == shown | {"error": ex.last_error} and "empty prompt" in ex.last_error
    # the segment button on an emptied box: refused too, and the message stays
    ex.prompt_box.unobserve(ex.on_prompt, names="value")
    ex.prompt_box.value = " "
    ex.prompt_box.observe(ex.on_prompt, names="value")
    ex.segment_button.click()
    assert "refused" in ex.readout.value
    assert ex.counts == before and {n: p.value for n, p in ex.panels.items()} == panels
    ex.set_prompt("breast tumor")
    ex.set_prompt("benign breast lesion")
    assert "refused" not in ex.readout.value and ex.last_error is None
    # an image without a suggested prompt: the image is shown, and the read-out asks for a prompt
    bare = PromptExplorer(ex.pipeline, {"scan": ex.current.image})
    assert "no prompt yet: type what to segment" in bare.readout.value
    assert _png_shape(bare.panels["saliency"].value) == ex.current.image.shape
    assert bare.mask is None and bare.counts["saliency"] == 0
    bare.set_prompt("breast tumor")
    assert bare.mask is not None and "SAM score" in bare.readout.value


def test_an_empty_sam_mask_is_said_to_be_empty(explorer):
    ex = explorer
    _reset(ex)
    assert "empty" not in ex.readout.value and "SAM mask vs ground truth" in ex.panel_titles["mask"].value
    # on this breast image, point prompts alone give LiteMedSAM nothing to draw
    ex.mode.value = "points"
    assert not ex.mask.any(), "LiteMedSAM found a region from the points: pick another empty case"
    assert ex.readout.value.startswith("<b style='color:#c00'>SAM returned an empty mask</b>")
    assert "mask area 0 px" in ex.readout.value
    assert "SAM returned an empty mask" in ex.panel_titles["mask"].value
    assert ex.state["mask_flags"] == ["empty_mask"]
    import matplotlib.pyplot as plt

    fig = ex.figure()
    try:
        assert fig.axes[3].get_title().startswith("SAM mask: empty")
    finally:
        plt.close(fig)
    ex.mode.value = "box"
    assert ex.mask.any() and "empty" not in ex.readout.value
    assert "SAM mask vs ground truth" in ex.panel_titles["mask"].value


def test_the_panel_titles_stay_on_one_line_above_their_images(explorer):
    """A title that wrapped pushed its image below the others': each title is one line of the
    panel's width (a long one is cut, whole on hover)."""
    ex = explorer
    _reset(ex)
    for name, title in ex.panel_titles.items():
        assert title.layout.width == ex.panels[name].layout.width
        assert "white-space:nowrap" in title.value and "text-overflow:ellipsis" in title.value
    assert "SAM prompts (click / drag)" in ex.panel_titles["sam_prompts"].value


def test_every_control_across_its_range(explorer):
    ex = explorer
    _reset(ex)
    seen = {}
    for method in ("gradcam", "m2ib", "random", "uniform", "gscorecam"):
        before = dict(ex.counts)
        ex.method.value = method
        assert ex.last_error is None, ex.last_error
        d = _delta(before, ex.counts)
        assert d["sam_embed"] == 0
        seen[method] = ex.saliency.copy()
        assert ex.k.disabled == (method != "gscorecam")
    assert np.ptp(seen["uniform"]) == 0 and np.ptp(seen["gradcam"]) > 0.5
    assert not np.allclose(seen["gradcam"], seen["gscorecam"])
    for k in (1, 64, ex.k.max):
        ex.k.value = k
        assert ex.state["k"] == k and ex.last_error is None
    for post in ("crf", "kmeans", "threshold", "otsu"):
        ex.postprocess.value = post
        assert ex.last_error is None and ex.sam_prompts.mask.any()
    for mode, boxes in (("points", 0), ("box", 1), ("box+points", 1)):
        ex.mode.value = mode
        assert ex.state["n_boxes"] == boxes and ex.last_error is None
        assert (ex.sam_prompts.points is None) == (mode == "box")
    # the x-ray preset asks for two lung boxes
    _reset(ex, "xray")
    assert ex.state["task"] == "xray" and ex.state["n_boxes"] == 2
    ex.preset.value = "none"
    assert ex.state["task"] is None and ex.state["n_boxes"] == 1
    ex.preset.value = "auto"


def test_switching_images_reembeds_once_and_follows_the_suggested_prompt(explorer):
    ex = explorer
    _reset(ex)
    before = dict(ex.counts)
    brain = next(n for n in ex.images if n.startswith("brain"))
    ex.select(brain)
    assert ex.state["prompt"] == "brain tumor"  # the suggestion follows the image
    assert _delta(before, ex.counts)["sam_embed"] == 1
    assert ex.state["dice"] == pytest.approx(dice(ex.mask, ex.current.gt))
    ex.set_prompt("my own words")
    ex.select(next(n for n in ex.images if n.startswith("breast")))
    assert ex.state["prompt"] == "my own words"  # a typed prompt is kept


def test_a_second_sam_model_is_loaded_on_demand_and_each_keeps_its_embedding(explorer):
    ex = explorer
    _reset(ex)
    mask = ex.mask.copy()
    before = dict(ex.counts)
    ex.sam_picker.value = "LiteMedSAM (copy)"
    assert ex.last_error is None, ex.last_error
    d = _delta(before, ex.counts)
    assert d["sam_embed"] == 1 and d["saliency"] == 0 and d["sam_prompts"] == 0
    assert np.array_equal(ex.mask, mask)  # same weights, same prompts: same mask
    before = dict(ex.counts)
    ex.sam_picker.value = "LiteMedSAM"
    ex.sam_picker.value = "LiteMedSAM (copy)"
    assert _delta(before, ex.counts)["sam_embed"] == 0


def test_clicks_and_drags_rerun_only_the_sam_decoder(explorer):
    ex = explorer
    _reset(ex)
    ex.mode.value = "box"
    auto = ex.mask.copy()
    gt = ex.current.gt
    before = dict(ex.counts)
    # a negative click in the middle of the found lesion carves it
    ys, xs = np.nonzero(auto)
    cy, cx = float(np.median(ys)), float(np.median(xs))
    ex.click_mode.value = "negative"
    ex.on_mouse({"type": "mousedown", "dataX": cx, "dataY": cy})
    ex.on_mouse({"type": "mouseup", "dataX": cx, "dataY": cy})
    assert ex.state["user_points"] == [(cx, cy, 0)]
    assert ex.mask.sum() < auto.sum()
    assert f"hand-made SAM prompts: -({cx:.0f}, {cy:.0f})" in ex.readout.value
    # a box dragged around the ground truth (bottom-right to top-left) replaces the automatic box
    rs, cs = np.nonzero(gt)
    ex.clear_clicks()
    ex.click_mode.value = "box"
    ex.on_mouse({"type": "mousedown", "dataX": cs.max() + 2, "dataY": rs.max() + 2})
    ex.on_mouse({"type": "mouseup", "dataX": cs.min() - 2, "dataY": rs.min() - 2})
    assert ex.state["user_box"] == [cs.min() - 2, rs.min() - 2, cs.max() + 2, rs.max() + 2]
    assert ex.state["dice"] > 0.8  # LiteMedSAM follows a good box
    d = _delta(before, ex.counts)
    assert d["saliency"] == 0 and d["sam_prompts"] == 0 and d["sam_embed"] == 0
    assert d["sam_decode"] == 3
    # the drawn box is what the first panel shows, in the user-box colour
    panel = np.asarray(Image.open(io.BytesIO(ex.panels["sam_prompts"].value)).convert("RGB"))
    assert np.all(panel[rs.min() - 2, cs.min() - 2 + 3] == (255, 215, 0))
    ex.clear_clicks()
    assert np.array_equal(ex.mask, auto)
    with pytest.raises(ValueError, match="outside"):
        ex.add_point(-5, 3)
    # a click on the panel's very edge (the browser may report x = width) lands on the last pixel
    w = ex.current.image.shape[1]
    ex.click_mode.value = "positive"
    ex.on_mouse({"type": "mousedown", "dataX": w, "dataY": 10})
    ex.on_mouse({"type": "mouseup", "dataX": w, "dataY": 10})
    assert ex.state["user_points"] == [(w - 1.0, 10.0, 1)] and ex.last_error is None
    ex.clear_clicks()


def test_uploads_are_read_and_bad_ones_are_reported_by_name(explorer, tmp_path):
    ex = explorer
    _reset(ex)
    def png(sample) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(sample.image).save(buf, format="PNG")
        return buf.getvalue()

    sample = PhantomDataset("brain", 2, seed=5, size=(160, 200), split="test")[0]
    name = ex.add_upload("my scan.png", png(sample))
    assert ex.state["image"] == name and ex.current.gt is None
    assert ex.state["dice"] is None and "Dice" not in ex.readout.value
    ex.set_prompt("brain tumor")
    assert _png_shape(ex.panels["mask"].value) == (160, 200, 3)  # non-square stays as it is
    first = ex.saliency.copy()
    # another file under the same name: nothing cached for the old one may be shown
    before = dict(ex.counts)
    other = PhantomDataset("brain", 2, seed=5, size=(160, 200), split="test")[1]
    assert ex.add_upload("my scan.png", png(other)) == name
    assert _delta(before, ex.counts)["saliency"] == 1 and _delta(before, ex.counts)["sam_embed"] == 1
    assert not np.allclose(ex.saliency, first)
    # a broken file through the upload widget's callback: shown, not raised
    ex.upload.value = ({"name": "broken.png", "type": "image/png", "size": 7,
                        "content": memoryview(b"not png"),
                        "last_modified": datetime.now(timezone.utc)},)
    assert ex.last_error and "broken.png" in ex.last_error
    assert "broken.png" in ex.status.value
    assert ex.upload.value == ()  # emptied, so the same file can be chosen again
    assert ex.state["image"] == name  # still showing the last good image


def test_compare_view_puts_prompts_side_by_side_with_their_sensitivity(explorer):
    ex = explorer
    _reset(ex, "xray")  # where the offline pipeline finds its target (the lungs)
    # the paper's share of channels: at the offline default (112 of 128) the toy CLIP's maps follow
    # the image more than the words, and "lungs" is no longer the more prompt-sensitive of the two
    ex.k.value = 48
    rows = ex.compare(["lungs", "normal tissue"])
    assert [r["prompt"] for r in rows] == ["lungs", "normal tissue"]
    assert rows[0]["dice"] > rows[1]["dice"] + 0.5  # the right prompt segments the lesion
    # the lesion's prompt depends on the text more than "normal tissue" (a prompt near its controls)
    assert rows[1]["sensitivity"] < rows[0]["sensitivity"] <= 1.0 and rows[0]["sensitivity"] > 0.1
    cols = ex.compare_out.children[0].children
    assert len(cols) == 2 and "sensitivity" in cols[0].children[0].value
    for row, col in zip(rows, cols):  # the warning shows exactly when the number is under the threshold
        assert ("barely depends" in col.children[0].value) == (row["sensitivity"] < DEFAULT_THRESHOLD)
    # the captions have as many lines each, so that the pictures under them start at one height
    assert len({col.children[0].value.count("<br>") for col in cols}) == 1
    # independent: the number is prompt_sensitivity's for this image and method
    from medclipsam.saliency import METHODS, prompt_sensitivity

    rep = prompt_sensitivity(ex.pipeline.clip, ex.current.image, "lungs",
                             METHODS["gscorecam"], task="xray", warn=False, k=48)
    assert rows[0]["sensitivity"] == pytest.approx(rep.sensitivity, abs=1e-6)
    before = dict(ex.counts)
    ex.compare_text.value = "lungs\n\nnormal tissue\n"
    ex.on_compare()
    assert _delta(before, ex.counts)["sensitivity"] == 0 and _delta(before, ex.counts)["saliency"] == 0
    with pytest.raises(ValueError, match="at least one prompt"):
        ex.compare([])


def test_bad_construction_is_refused(explorer):
    with pytest.raises(ValueError, match="at least one image"):
        PromptExplorer(explorer.pipeline, {})
    img = np.zeros((32, 32), np.uint8)
    with pytest.raises(ValueError, match="does not match"):
        PromptExplorer(explorer.pipeline, {"a": ExplorerImage(img, np.zeros((8, 8), bool))})
    with pytest.raises(ValueError, match="unknown task"):
        PromptExplorer(explorer.pipeline, {"a": ExplorerImage(img, task="liver")})


def test_an_explorer_over_a_folder_of_images_and_masks(explorer, tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for i in range(2):
        sample = PhantomDataset("breast", 4, seed=9, size=160, split="test", normal_fraction=0.0)[i]
        Image.fromarray(sample.image).save(tmp_path / "images" / f"case{i}.png")
        Image.fromarray(sample.mask.astype(np.uint8) * 255).save(tmp_path / "masks" / f"case{i}.png")
    ex = PromptExplorer.from_folder(explorer.pipeline, tmp_path, prompt="breast tumor", task="breast")
    assert list(ex.images) == ["case0", "case1"]
    assert ex.state["prompt"] == "breast tumor" and ex.state["task"] == "breast"
    gt = np.asarray(Image.open(tmp_path / "masks" / "case0.png")) > 0
    assert ex.state["dice"] == pytest.approx(dice(ex.mask, gt))


def test_the_explorer_over_the_real_biomedclip_architecture(explorer, tmp_path, monkeypatch):
    """BiomedCLIP's real ViT-B/16 tower (random weights, from a hub cache written here) with the
    offline world's LiteMedSAM: the k slider spans its 768 channels and maps come back on a non-square image."""
    from hf_cache import use_hf_cache, write_biomedclip_cache

    from medclipsam import MedCLIPSAM
    from medclipsam.models import load_clip

    use_hf_cache(monkeypatch, write_biomedclip_cache(tmp_path / "hf"))
    pipe = MedCLIPSAM(load_clip("biomedclip", device="cpu"), explorer.pipeline.sam,
                      k=4, postprocess="threshold")
    image = PhantomDataset("breast", 1, seed=2, size=(150, 210), split="test")[0]
    try:
        ex = PromptExplorer(pipe, {"scan": ExplorerImage(image.rgb, image.mask, "breast", "breast tumor")})
        assert ex.last_error is None, ex.last_error
        assert ex.k.max == 768 and ex.state["k"] == 4
        assert ex.saliency.shape == (150, 210)
        before = dict(ex.counts)
        ex.threshold.value = 0.6
        ex.k.value = 6
        d = _delta(before, ex.counts)
        assert d["saliency"] == 1 and d["sam_embed"] == 0 and ex.last_error is None
    finally:
        pipe.close()  # its SAM session's hook on the shared LiteMedSAM
