"""The zero-shot pipeline in the offline world (toy CLIP + LiteMedSAM): results, quality against
controls; folders and resume (with the test suite's SAM stand-in)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from medclipsam.config import default_k
from medclipsam.data import PhantomDataset
from medclipsam.data.phantom import PROMPTS
from medclipsam.metrics import dice
from medclipsam.pipeline import MedCLIPSAM, SegmentationResult


def test_one_image_gives_every_intermediate_in_image_coordinates(offline_pipe):
    s = PhantomDataset("breast", 1, seed=3, size=(200, 300), split="test", normal_fraction=0.0)[0]
    res = offline_pipe.predict(s.rgb, PROMPTS["breast"])
    assert isinstance(res, SegmentationResult)
    assert res.saliency.shape == res.coarse_mask.shape == res.mask.shape == (200, 300)
    assert res.saliency.dtype == np.float32 and 0 <= res.saliency.min() and res.saliency.max() <= 1
    assert res.boxes.shape == (1, 4) and res.points is None and res.flags == ()  # box prompts
    assert set(res.timings) == {"saliency", "sam_prompts", "sam_embed", "sam_decode", "total"}
    # The box sits on the finding and SAM's mask covers it: the stages line up on a non-square image.
    x0, y0, x1, y1 = res.boxes[0]
    r, c = np.argwhere(s.mask).mean(0)
    assert x0 <= c <= x1 and y0 <= r <= y1
    assert dice(res.mask, s.mask) > 0.3  # LiteMedSAM keeps to the box the map gave


@pytest.mark.heavy
def test_zero_shot_dice_drops_with_a_prompt_blind_map(offline_pipe):
    # Held-out test images (6 per task, all with a finding) through the offline world's default
    # pipeline with LiteMedSAM; a random or flat map instead of the prompt's saliency must lose.
    # A gross-regression check (measured on these images: 0.64 / 0.85 / 0.90, controls 0.37-0.83
    # lower); benchmarks/ablation_offline.py reports the Dice on 20 images per task.
    from medclipsam.metrics import paired_difference

    settings = [{}, {"saliency": "random"}, {"saliency": "uniform"}]
    for task, floor in {"breast": 0.4, "brain": 0.6, "xray": 0.7}.items():
        samples = list(PhantomDataset(task, 6, seed=0, split="test", normal_fraction=0.0))
        calls = offline_pipe.session.encoder_calls
        runs = offline_pipe.sweep([x.rgb for x in samples], PROMPTS[task], settings, task=task)
        assert offline_pipe.session.encoder_calls - calls == len(samples)  # one embedding each
        scores = [[dice(r.mask, x.mask) for r, x in zip(rs, samples)] for rs in runs]
        assert np.mean(scores[0]) >= floor, (task, np.mean(scores[0]))
        for control in scores[1:]:
            d = paired_difference(scores[0], control, n_boot=500)
            assert d["mean"] >= 0.2, (task, d)


def test_the_box_margin_widens_the_coarse_masks_box_by_a_share_of_the_image_side(standin_pipe):
    s = PhantomDataset("breast", 1, seed=1, size=(160, 200), split="test", normal_fraction=0.0)[0]
    own, wide = standin_pipe.sweep([s.rgb], PROMPTS["breast"], [{"box_margin": 0.0}, {"box_margin": 0.05}])
    assert standin_pipe.config.box_margin == 0.04  # the offline world's default
    (x0, y0, x1, y1), got = own[0].boxes[0], wide[0].boxes[0]
    assert np.array_equal(own[0].coarse_mask, wide[0].coarse_mask)  # only the box changes
    assert np.allclose(got, [max(x0 - 10, 0), max(y0 - 10, 0), min(x1 + 10, 199), min(y1 + 10, 159)])
    with pytest.raises(ValueError, match="box_margin"):
        standin_pipe.predict(s.rgb, "breast tumor", box_margin=0.7)


def test_within_content_cuts_the_coarse_mask_to_the_pictures_content(standin_pipe):
    from medclipsam.prompting import content_mask

    s = PhantomDataset("breast", 1, seed=1, size=(160, 200), split="test", normal_fraction=0.0)[0]
    assert standin_pipe.config.within_content is True  # the offline world's default
    whole, cut = standin_pipe.sweep([s.rgb], PROMPTS["breast"], [{"within_content": False}, {}])
    content = content_mask(s.rgb)
    assert not content.all()  # the fan's black frame is outside
    assert not (cut[0].coarse_mask & ~content).any()
    with pytest.raises(ValueError, match="within_content"):
        standin_pipe.predict(s.rgb, "breast tumor", within_content="yes")


def test_sam_embedding_is_computed_once_per_image(standin_pipe):
    s = PhantomDataset("brain", 1, seed=2, size=160, split="test", normal_fraction=0.0)[0]
    before = standin_pipe.session.encoder_calls
    standin_pipe.predict([s.rgb, s.rgb], ["brain tumor", "tumor in the brain"])
    assert standin_pipe.session.encoder_calls == before + 1
    other = PhantomDataset("brain", 2, seed=2, size=160, split="test", normal_fraction=0.0)[1]
    standin_pipe.predict(other.rgb, "brain tumor")
    assert standin_pipe.session.encoder_calls == before + 2


def test_a_map_without_contrast_is_flagged_not_silently_segmented(standin_pipe):
    s = PhantomDataset("breast", 1, seed=0, size=128, split="test")[0]
    res = standin_pipe.predict(s.rgb, "breast tumor", saliency="uniform")
    assert "empty_saliency" in res.flags and "whole_image_box" in res.flags
    assert res.boxes[0].tolist() == [0, 0, 127, 127]


def test_xray_preset_gives_one_box_per_lung(standin_pipe):
    s = PhantomDataset("xray", 1, seed=5, size=256, split="test")[0]
    res = standin_pipe.predict(s.rgb, PROMPTS["xray"], task="xray")
    assert len(res.boxes) == 2
    left, right = sorted(res.boxes, key=lambda b: b[0])
    assert left[2] < right[0]  # two separate boxes, side by side


def test_inputs_of_any_layout(standin_pipe, tmp_path):
    s = PhantomDataset("brain", 1, seed=4, size=128, split="test", normal_fraction=0.0)[0]
    p16 = tmp_path / "mr16.png"
    Image.fromarray(s.image.astype(np.uint16) * 257).save(p16)
    rgba = np.dstack([s.rgb, np.full(s.image.shape, 255, np.uint8)])
    masks = [standin_pipe.predict(x, "brain tumor").mask for x in (s.image, s.rgb, rgba, Image.fromarray(s.image))]
    for m in masks[1:]:
        assert np.array_equal(m, masks[0])
    # A 16-bit file goes through the data layer's windowing (percentile range), like read_image.
    from medclipsam.data import read_image

    m16 = standin_pipe.predict(str(p16), "brain tumor").mask
    assert m16.shape == s.mask.shape
    assert np.array_equal(m16, standin_pipe.predict(read_image(p16), "brain tumor").mask)
    with pytest.raises(ValueError, match="2 images but 3 prompts"):
        standin_pipe.predict([s.rgb, s.rgb], ["a", "b", "c"])


def test_unknown_settings_are_refused():
    with pytest.raises(ValueError, match="unknown postprocess 'blur'"):
        MedCLIPSAM(None, None, postprocess="blur")


def _phantom_images(folder, n=4):
    folder.mkdir()
    ds = PhantomDataset("breast", n, seed=7, size=128, split="test", normal_fraction=0.0)
    for i, s in enumerate(ds):
        Image.fromarray(s.image).save(folder / f"case{i}.png")
    return ds


def test_folder_run_writes_as_it_goes_and_resumes(standin_pipe, tmp_path):
    _phantom_images(tmp_path / "images")
    out = tmp_path / "out"
    calls = standin_pipe.session.encoder_calls
    first = standin_pipe.run_folder(tmp_path / "images", "breast tumor", out, limit=2, progress=False)
    assert [r["id"] for r in first] == ["case0", "case1"]
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["case0.png", "case1.png"]
    rows = standin_pipe.run_folder(tmp_path / "images", "breast tumor", out, progress=False)
    assert [r["id"] for r in rows] == ["case0", "case1", "case2", "case3"]
    assert standin_pipe.session.encoder_calls == calls + 4  # the two finished images were not redone
    with open(out / "results.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [r["id"] for r in table] == ["case0", "case1", "case2", "case3"]
    assert json.loads((out / "run.json").read_text())["prompt"] == "breast tumor"
    with pytest.raises(ValueError, match="other settings"):
        standin_pipe.run_folder(tmp_path / "images", "liver", out, progress=False)


def test_switching_the_saliency_method_per_call_drops_the_other_methods_options(standin_pipe):
    s = PhantomDataset("xray", 1, seed=1, size=128, split="test")[0]
    assert standin_pipe.config.k == default_k("offline") == 112  # the offline world's gScoreCAM setting
    assert standin_pipe.config.saliency_kwargs == {}
    res = standin_pipe.predict(s.rgb, "lungs", task="xray", saliency="gradcam",
                               sam_prompt_mode="box+points")
    # GradCAM ran (without gScoreCAM's k): its map is GradCAM's, computed independently here
    from medclipsam.saliency.api import saliency_maps

    direct = np.asarray(saliency_maps(standin_pipe.clip, s.rgb, ["lungs"], method="gradcam"))[0]
    assert np.abs(res.saliency - direct).max() < 1e-5 and res.mask.any()
