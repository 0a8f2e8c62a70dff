"""The prompt explorer's model without widgets: settings in, an ExplorerState of arrays, numbers and
text out, only what a change affects recomputed (``counts``).

The toy CLIP with the small SAM stand-in (``standin_pipe``; the explorer's drawings with the real
LiteMedSAM are tests/test_widgets.py's), small phantom images, gScoreCAM at k = 4: cheap. The
stand-in finds the lungs of the 96-pixel x-ray phantom (Dice 0.68), so most tests look at it.
"""

from __future__ import annotations

import numpy as np
import pytest

from medclipsam.explorer_model import SETTING_STAGES, ExplorerModel, ExplorerState
from medclipsam.explorer_sources import phantom_images
from medclipsam.metrics import dice

K = 4


@pytest.fixture(scope="module")
def model(standin_pipe):
    m = ExplorerModel(standin_pipe, phantom_images(per_task=1, size=96, seed=0),
                      sam_name="stand-in", k=K)
    m.defaults = {name: getattr(m, name) for name in SETTING_STAGES}
    return m


def _delta(before: dict, after: dict) -> dict:
    return {k: after[k] - before[k] for k in before}


def _reset(m: ExplorerModel, image: str = "xray") -> ExplorerState:
    m.select(next(n for n in m.images if n.startswith(image)))
    m.set_prompt(m.current.prompt)
    m.set(**m.defaults)
    m.clear_clicks()
    state = m.update()
    assert state.error is None, state.error
    return state


def test_update_returns_every_stage_and_the_dice_of_its_mask(model):
    state = _reset(model)
    img = model.current
    assert img.task == "xray" and state.prompt == "lungs" and state.k == K
    assert state.saliency.shape == img.image.shape[:2] == state.mask.shape
    assert state.coarse.dtype == bool and state.coarse.any() and state.n_boxes == 2  # two lungs
    assert state.dice == pytest.approx(dice(state.mask, img.gt))  # against an independent Dice
    assert state.dice > 0.5
    assert state.as_dict()["mask_area"] == int(state.mask.sum()) > 0
    stages = [s for s, _ in model.progress_log]
    assert stages.index("saliency") < stages.index("sam_decode")
    before = dict(model.counts)
    model.update()  # nothing changed: nothing recomputed
    assert model.counts == before


def test_a_new_prompt_changes_the_saliency_and_a_seen_one_comes_from_the_cache(model):
    first = _reset(model)
    before = dict(model.counts)
    model.set_prompt("a bright round blob")
    other = model.update()
    assert other.prompt == "a bright round blob"
    assert not np.allclose(other.saliency, first.saliency)
    assert _delta(before, model.counts) == {"saliency": 1, "sam_prompts": 1, "sam_embed": 0,
                                            "sam_decode": 1, "sensitivity": 0}
    before = dict(model.counts)
    model.set_prompt("lungs")
    model.set(method="gradcam")
    model.update()
    model.set(method="gscorecam")
    back = model.update()
    assert np.array_equal(back.saliency, first.saliency)
    assert _delta(before, model.counts)["saliency"] == 1  # GradCAM's map only


def test_each_setting_recomputes_from_its_own_stage(model):
    _reset(model)
    before = dict(model.counts)
    model.set(postprocess="threshold", threshold=0.3)
    low = model.update()
    model.set(threshold=0.7)
    high = model.update()
    d = _delta(before, model.counts)
    assert d["saliency"] == 0 and d["sam_embed"] == 0 and d["sam_prompts"] == 2
    assert high.coarse.sum() < low.coarse.sum()
    assert not np.any(high.coarse & (high.saliency < 0.7 - 1e-6))  # inside {saliency >= 0.7}
    model.set(preset="none")  # without the x-ray preset's two lung boxes: one box
    state = model.update()
    assert state.task is None and state.n_boxes == 1


def test_bad_settings_and_inputs_are_refused_with_what_is_allowed(model):
    _reset(model)
    for settings, match in [({"method": "magic"}, "unknown method 'magic'"),
                            ({"preset": "liver"}, "unknown preset 'liver'"),
                            ({"sam": "no such SAM"}, "unknown sam"),
                            ({"k": 0}, "k must be in 1.."), ({"threshold": 1.5}, r"\[0, 1\]"),
                            ({"method": "gradcam", "k": 10**6}, "k must be in")]:
        with pytest.raises(ValueError, match=match):
            model.set(**settings)
    assert model.method == "gscorecam"  # a refused set() changes nothing
    with pytest.raises(TypeError, match="unknown setting 'colour'"):
        model.set(colour="red")
    with pytest.raises(KeyError, match="no image"):
        model.select("no such image")
    with pytest.raises(ValueError, match="unknown task 'liver'"):
        model.add_image("scan", np.zeros((16, 16), np.uint8), task="liver")
    with pytest.raises(ValueError, match="does not match"):
        model.add_image("scan", np.zeros((16, 16), np.uint8), np.zeros((8, 8), bool))
    with pytest.raises(ValueError, match="cannot read the uploaded file 'x.png'"):
        model.add_upload("x.png", b"not a png")
    with pytest.raises(ValueError, match="outside"):
        model.add_point(-1, 0)
    with pytest.raises(ValueError, match="at least one prompt"):
        model.compare(["", " \t"])
    assert "scan" not in model.images
    before = dict(model.counts)
    assert model.update().error is None and model.counts == before  # nothing was changed


def test_an_empty_prompt_is_refused_and_the_result_stays(model):
    """The command line refuses an empty prompt; so does the explorer: its map would be the
    image's own salience, and its Dice would look like the prompt's."""
    shown = _reset(model)
    before = dict(model.counts)
    for blank in ("", "   ", "\t\n"):
        with pytest.raises(ValueError, match="empty prompt .* refused: type what to segment, e.g. 'lungs'"):
            model.set_prompt(blank)
    state = model.update()
    assert state.prompt == "lungs" and state.dice == shown.dice and model.counts == before
    assert np.array_equal(state.mask, shown.mask)
    # an image without a suggested prompt, and no prompt given: nothing is computed until one is typed
    scan = ExplorerModel(model.pipeline, {"scan": model.current.image}, sam_name="stand-in", k=K)
    with pytest.raises(ValueError, match="no prompt yet: type what to segment"):
        scan.update()
    assert scan.mask is None and scan.counts["saliency"] == 0
    scan.set_prompt("lungs")
    assert scan.update().mask.shape == model.current.image.shape[:2]


def test_an_empty_sam_mask_is_flagged(model):
    state = _reset(model)
    assert state.mask_flags == [] and state.as_dict()["mask_flags"] == []
    # a box on the black corner outside the x-ray's body: the stand-in SAM finds nothing there
    model.set_box(0, 0, 2, 2)
    state = model.update()
    assert not state.mask.any(), "the stand-in SAM found something in the corner"
    assert state.mask_flags == ["empty_mask"] and state.mask_area == 0
    model.clear_clicks()
    assert model.update().mask_flags == []


def test_clicks_rerun_the_decoder_and_a_new_image_forgets_them(model):
    auto = _reset(model)
    before = dict(model.counts)
    ys, xs = np.nonzero(auto.mask)
    cx, cy = float(np.median(xs)), float(np.median(ys))
    model.add_point(cx, cy, positive=False)
    model.set_box(90, 90, 2, 2)  # any two opposite corners
    state = model.update()
    assert state.user_points == [(cx, cy, 0)] and state.user_box.tolist() == [2, 2, 90, 90]
    assert state.hand_made == [f"-({cx:.0f}, {cy:.0f})", "box (2, 2, 90, 90)"]
    assert _delta(before, model.counts)["sam_decode"] == 1 == sum(_delta(before, model.counts).values())
    assert state.dice == pytest.approx(dice(state.mask, model.current.gt))
    brain = next(n for n in model.images if n.startswith("brain"))
    model.select(brain)
    state = model.update()
    assert state.image == brain and state.prompt == "brain tumor"  # the suggestion follows the image
    assert state.user_points == [] and state.user_box is None
    model.set_prompt("my own words")
    model.select(next(n for n in model.images if n.startswith("breast")))
    assert model.update().prompt == "my own words"  # a typed prompt is kept


def test_compare_gives_each_prompt_its_mask_dice_and_sensitivity(model):
    _reset(model)
    items = model.compare_prompts(["lungs", "normal tissue"])
    gt = model.current.gt
    assert [i.row["prompt"] for i in items] == ["lungs", "normal tissue"] == [
        r["prompt"] for r in model.comparison]
    for item in items:
        assert item.row["dice"] == pytest.approx(dice(item.mask, gt))
        assert 0.0 <= item.row["sensitivity"] <= 1.0
        assert item.saliency.shape == gt.shape
    before = dict(model.counts)
    assert model.compare(["lungs", "normal tissue"]) == model.comparison  # all from the caches
    assert _delta(before, model.counts)["saliency"] == 0 and _delta(before, model.counts)["sensitivity"] == 0


def test_a_long_session_keeps_its_caches_bounded(model):
    """Many new prompts (the soak benchmark's memory growth per click): each cache keeps only its
    most recent entries, and what it keeps is still reused."""
    _reset(model)
    old = model._saliency_cache.maxsize
    model._saliency_cache.maxsize = 3
    try:
        for i in range(6):
            model.set_prompt(f"lungs {i}")
            model.update()
            assert len(model._saliency_cache) <= 3
        before = dict(model.counts)
        model.set_prompt("lungs 4")  # among the three kept: not computed again
        model.update()
        assert _delta(before, model.counts)["saliency"] == 0
        model.set_prompt("lungs 0")  # dropped long ago: computed again
        model.update()
        assert _delta(before, model.counts)["saliency"] == 1
    finally:
        model._saliency_cache.maxsize = old
