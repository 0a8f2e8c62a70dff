"""The prompt-sensitivity check: a map that depends on the prompt passes, a map that ignores the
text is flagged (report and PromptInsensitiveWarning), and the distance behaves like one."""

from __future__ import annotations

import warnings
from functools import partial

import numpy as np
import pytest
import torch

from medclipsam.data.phantom import PROMPTS, PhantomDataset
from medclipsam.models import load_clip
from medclipsam.saliency import grad_cam
from medclipsam.saliency.cam import normalize_maps
from medclipsam.saliency.gscorecam import gscorecam
from medclipsam.saliency.m2ib import m2ib
from medclipsam.saliency.sensitivity import (
    DEFAULT_THRESHOLD,
    PromptInsensitiveWarning,
    control_prompts,
    map_distance,
    prompt_sensitivity,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def toy():
    return load_clip("toy", device="cpu")


def image_only_saliency(model, images, text_features, *, target=None):
    """A broken saliency stage: a smoothed-brightness map that never looks at the text."""
    grey = images.mean(1, keepdim=True)
    return normalize_maps(torch.nn.functional.avg_pool2d(grey, 15, stride=1, padding=7)[:, 0])


def seeded_noise_saliency(model, images, text_features, *, target=None, seed=0):
    """Another broken stage: maps that are pure noise (different for every prompt and seed)."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(images.shape[0], *images.shape[-2:], generator=g)


def test_distance_is_bounded_symmetric_and_zero_for_the_same_map():
    rng = np.random.default_rng(0)
    a, b = rng.random((32, 32)), rng.random((32, 32))
    assert map_distance(a, a) == 0.0
    assert map_distance(a, 3 * a + 1) == pytest.approx(0.0, abs=1e-12)  # brightness/contrast ignored
    assert map_distance(a, b) == map_distance(b, a)
    assert 0.0 <= map_distance(a, b) <= 1.0
    assert map_distance(a, b) > 0.8  # unrelated maps are far apart
    assert map_distance(a, -a) == 1.0  # opposite maps: as far as it gets
    assert map_distance(np.zeros((8, 8)), np.zeros((8, 8))) == 0.0
    assert map_distance(np.zeros((8, 8)), a[:8, :8]) == 1.0
    with pytest.raises(ValueError, match="size"):
        map_distance(a, b[:16])
    with pytest.raises(ValueError, match="NaN"):
        map_distance(np.full((4, 4), np.nan), a[:4, :4])


def test_default_controls_include_another_organ_and_never_the_prompt():
    c = control_prompts("breast tumor", task="breast")
    assert c["empty"] == "" and "nonsense" in c and c["another organ"] == "liver"
    assert control_prompts("liver lesion")["another organ"] != "liver"
    assert "normal tissue" not in control_prompts("Normal tissue")


@pytest.mark.parametrize("index", [1, 3])  # a meningioma and a glioma
def test_gscorecam_on_toy_brain_tumours_depends_on_the_prompt(toy, index):
    sample = PhantomDataset("brain", 4, seed=0, split="test")[index]
    with warnings.catch_warnings():
        warnings.simplefilter("error", PromptInsensitiveWarning)
        # the paper's share of channels (k = 48 of 128): with many more (the offline default 112)
        # the toy CLIP's brain maps follow the image more than the words, and this check flags them
        # (sensitivity 0.06-0.07 on these images; README, "How the offline world compares")
        report = prompt_sensitivity(toy, sample.rgb, PROMPTS["brain"], gscorecam, task="brain", k=48)
    assert report.sensitivity > DEFAULT_THRESHOLD + 0.05
    assert report.warning is None and not report.insensitive
    assert report.noise_floor is None  # gscorecam takes no seed: deterministic
    assert report.prompt_map.shape == sample.image.shape
    assert set(report.control_maps) == set(report.distances) == set(report.controls)
    text = str(report)
    assert "kidney" in text and f"{report.sensitivity:.3f}" in text and "ok" in text


def test_a_saliency_stage_that_ignores_the_text_is_flagged(toy):
    sample = PhantomDataset("xray", 1, seed=0, split="test", size=(192, 256))[0]
    with pytest.warns(PromptInsensitiveWarning, match="almost the same"):
        report = prompt_sensitivity(toy, sample.rgb, PROMPTS["xray"], image_only_saliency, task="xray")
    assert report.sensitivity == pytest.approx(0.0, abs=1e-6)
    assert report.insensitive and "almost the same" in report.warning
    assert report.prompt_map.shape == (192, 256)  # compared on the image's own grid
    assert "INSENSITIVE" in report.table()
    assert report.to_dict()["sensitivity"] == report.sensitivity


def test_noise_is_not_mistaken_for_prompt_sensitivity(toy):
    sample = PhantomDataset("breast", 1, seed=0, split="test")[0]
    with pytest.warns(PromptInsensitiveWarning, match="noise"):
        report = prompt_sensitivity(toy, sample.rgb, PROMPTS["breast"], seeded_noise_saliency)
    assert report.sensitivity > 0.5  # every map differs ...
    assert report.noise_floor > 0.5  # ... but so do two runs of the same prompt
    assert report.insensitive


def test_custom_controls_and_a_stochastic_method(toy):
    sample = PhantomDataset("brain", 4, seed=0, split="test")[3]
    method = partial(m2ib, noise_samples=2, steps=5)
    report = prompt_sensitivity(toy, sample.rgb, "brain tumor", method, controls=["", "kidney"], warn=False)
    assert list(report.controls) == ["empty", "kidney"] and report.method == "m2ib"
    assert report.noise_floor is not None and 0.0 <= report.noise_floor < 0.1
    named = prompt_sensitivity(toy, sample.rgb, "brain tumor", grad_cam, controls={"organ": "kidney"})
    assert list(named.distances) == ["organ"]
    with pytest.raises(TypeError, match="list"):
        prompt_sensitivity(toy, sample.rgb, "brain tumor", grad_cam, controls="kidney")
    with pytest.raises(ValueError, match=r"expected \[2, H, W\]"):
        prompt_sensitivity(toy, sample.rgb, "brain tumor", lambda m, i, t, **k: i[:1, 0], controls=["x"])


def test_identical_maps_are_exactly_zero_apart_whatever_the_rounding():
    # The Pearson product of a map with itself rounds differently with the CPU's vector width
    # (2.2e-16 on an AVX2-only machine): identical maps, and maps equal up to brightness and
    # contrast, must still be exactly 0 apart.
    rng = np.random.default_rng(0)
    for shape in [(7, 9), (64, 64), (224, 224), (3, 1000)]:
        for _ in range(5):
            a = rng.random(shape) ** 3
            assert map_distance(a, a.copy()) == 0.0
            assert map_distance(a, 2.5 * a + 0.3) == 0.0
            assert map_distance(a.astype(np.float32), a.astype(np.float32)) == 0.0
