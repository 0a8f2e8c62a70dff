"""gScoreCAM: the layer it hooks gets a real gradient, the options do what they say (k, batch
size, the two weightings, fast mode, several prompts), maps come back in the image's coordinates,
and on the toy CLIP the maps find the phantom findings.

The default layer's gradient on the toy CLIP and on small random open_clip ViTs (CLS and average
pooling) is checked in test_toy_clip.py and test_saliency_targets.py; here BiomedCLIP's image tower
(timm ViT-B/16 from its published config, random weights; the text tower is irrelevant to the
saliency, so a tiny one stands in) is added.
"""

from __future__ import annotations

import copy
import math
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hf_cache import BIOMEDCLIP_CONFIG
from open_clip.model import CustomTextCLIP

from medclipsam.data.io import write_image
from medclipsam.data.phantom import PROMPTS, PhantomDataset, generate_sample
from medclipsam.metrics import pointing_game, saliency_auc
from medclipsam.models import load_clip
from medclipsam.saliency import normalize_maps, resolve_target_layer
from medclipsam.saliency.api import METHODS, saliency_maps
from medclipsam.saliency.evaluate import localisation_table, saliency_dice
from medclipsam.saliency.gscorecam import gscorecam, gscorecam_details
from medclipsam.saliency.gscorecam_fast import cast_encoder, fast_dtype
from medclipsam.saliency.gscorecam_multi import gscorecam_multi


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(np.corrcoef(a.flatten().numpy(), b.flatten().numpy())[0, 1])


@pytest.fixture(scope="module")
def toy():
    return load_clip("toy", device="cpu")


@pytest.fixture(scope="module")
def breast(toy):
    """Three preprocessed breast phantoms with a lesion, and the prompt's text feature."""
    ds = PhantomDataset("breast", 4, seed=1, size=224, split="test")
    samples = [s for s in (ds[i] for i in range(len(ds))) if s.mask.any()][:3]
    x = torch.stack([toy.prepare(s.rgb)[0] for s in samples])
    with torch.no_grad():
        text = toy.model.encode_text(toy.tokenize([PROMPTS["breast"]]))
    return x, text, samples


@pytest.fixture(scope="module")
def biomedclip_tower():
    cfg = BIOMEDCLIP_CONFIG["model_cfg"]
    torch.manual_seed(0)
    tiny_text = {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}
    return CustomTextCLIP(
        embed_dim=cfg["embed_dim"], vision_cfg=cfg["vision_cfg"], text_cfg=tiny_text
    ).eval()


# --------------------------------------------------------------------------------------------
# the hooked layer


def test_biomedclip_default_layer_has_a_gradient_and_the_reference_layer_has_none(biomedclip_tower):
    model = biomedclip_tower
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    prompts = torch.randn(2, 512, generator=torch.Generator().manual_seed(1))
    default = gscorecam_multi(model, x, prompts, k=2, return_details=True)
    reference = gscorecam_multi(model, x, prompts, k=2, target="reference", return_details=True)
    assert default.layer == "visual.trunk.blocks[-1].norm1"
    assert reference.layer == "visual.trunk.blocks[-1].norm2"
    assert default.importance.shape == reference.importance.shape == (2, 768)
    assert default.importance.abs().amax(1).min() > 0
    # The paper's layer: the patch tokens never reach the CLS-pooled output, every channel's
    # gradient is exactly zero, so "top k by gradient" is an arbitrary pick, the same for any
    # prompt; the default layer picks by prompt.
    assert reference.importance.abs().max().item() == 0.0
    assert torch.equal(reference.channels[0], reference.channels[1])
    assert not torch.equal(default.channels[0], default.channels[1])
    assert reference.maps.shape == (2, 224, 224)


# --------------------------------------------------------------------------------------------
# options


def test_k_is_clipped_to_the_channel_count_and_may_be_a_share(toy, breast):
    x, text, _ = breast
    c = resolve_target_layer(toy.model).to_grid(torch.zeros(1, 197, 128)).shape[1]
    big = gscorecam_details(toy.model, x[:1], text, k=10 * c)
    assert big.channels.shape == (1, c)
    assert torch.equal(big.maps, gscorecam(toy.model, x[:1], text, k=None))
    assert gscorecam_details(toy.model, x[:1], text, k=0.25).channels.shape == (1, c // 4)
    for bad in (0, -3, 1.5):
        with pytest.raises(ValueError, match="k"):
            gscorecam(toy.model, x[:1], text, k=bad)


def test_batch_size_does_not_change_the_maps(toy, breast):
    x, text, _ = breast
    a = gscorecam(toy.model, x, text, k=20, batch_size=3)
    b = gscorecam(toy.model, x, text, k=20, batch_size=64)
    assert a.shape == (3, 224, 224)
    assert (a - b).abs().max().item() < 1e-5


def test_one_prompt_per_image_or_one_for_all(toy, breast):
    x, text, _ = breast
    shared = gscorecam(toy.model, x, text, k=16)
    per_image = gscorecam(toy.model, x, text.expand(3, -1), k=16)
    assert torch.equal(shared, per_image)
    with pytest.raises(ValueError, match="text_features"):
        gscorecam(toy.model, x, text.expand(2, -1), k=16)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        gscorecam(toy.model, x[0], text, k=16)
    with pytest.raises(ValueError, match="weighting"):
        gscorecam(toy.model, x, text, k=16, weighting="paper")
    with pytest.raises(ValueError, match="precision"):
        gscorecam(toy.model, x, text, k=16, precision="int8")


def _scaled_copy(model: torch.nn.Module, logit_scale: float) -> torch.nn.Module:
    m = copy.deepcopy(model)
    with torch.no_grad():
        m.logit_scale.fill_(math.log(logit_scale))
    return m


def test_the_two_weightings(toy, breast):
    """Selected: softmax over the k scores. Reference: the k scores scattered into zeros over all C
    channels. A well-matched prompt (its best score >> 0) makes them agree; a poorly matched one (scores
    << 0) turns the reference map into the uniform sum of the channels it did NOT select,
    whatever the scores: the prompt barely matters any more."""
    x, _, _ = breast
    model = _scaled_copy(toy.model, 1000.0)  # scores of size ~30-500: far from exp(0)
    target = resolve_target_layer(model)
    with torch.no_grad():
        img = model.encode_image(x[:1])
    store = {}
    h = target.module.register_forward_hook(lambda _m, _i, out: store.__setitem__("a", out))
    with torch.no_grad():
        model.encode_image(x[:1])
    h.remove()
    acts = target.to_grid(store["a"])[0]  # [C, h, w]
    k = 8

    good = {w: gscorecam_details(model, x[:1], img, k=k, weighting=w) for w in ("selected", "reference")}
    # the precondition: a well-matched prompt, whose best channel's score is far above exp(0)'s
    # weight for the zeros the reference scatters in, so both softmaxes are ruled by it
    assert good["selected"].scores.max() > 20
    assert (good["selected"].maps - good["reference"].maps).abs().max() < 1e-5
    assert good["selected"].weights.shape == (1, k) and good["reference"].weights.shape == (1, 128)

    # a poorly matched "prompt": the direction opposite to the mean feature of the image masked by
    # each of its channels, so that every masked view scores far below zero
    from medclipsam.saliency.gscorecam import masked_image_features

    c = acts.shape[0]
    views = masked_image_features(model.encode_image, x[:1], acts[None], torch.zeros(c, dtype=torch.long),
                                  torch.arange(c), batch_size=32)
    opposite = -views.mean(0, keepdim=True)
    bad = {w: gscorecam_details(model, x[:1], opposite, k=k, weighting=w)
           for w in ("selected", "reference")}
    assert bad["selected"].scores.max() < -20  # a poorly matched prompt
    unselected = torch.ones(acts.shape[0], dtype=torch.bool)
    unselected[bad["reference"].channels[0]] = False
    limit = F.relu(acts[unselected].mean(0))
    limit = normalize_maps(F.interpolate(limit[None, None], size=(224, 224), mode="bilinear")[:, 0])
    assert (bad["reference"].maps - limit).abs().max() < 1e-5
    w = bad["reference"].weights[0]
    assert torch.allclose(w[unselected], torch.full_like(w[unselected], 1 / (128 - k)), rtol=1e-5)
    assert (bad["selected"].maps - bad["reference"].maps).abs().max() > 0.5


def test_several_prompts_share_the_work_and_equal_one_by_one(toy, breast):
    x, _, _ = breast
    with torch.no_grad():
        texts = toy.model.encode_text(toy.tokenize([PROMPTS["breast"], "liver", "lungs"]))
    for weighting in ("selected", "reference"):
        multi = gscorecam_multi(toy.model, x[:1], texts, k=12, weighting=weighting)
        assert multi.shape == (3, 224, 224)
        for p in range(3):
            one = gscorecam(toy.model, x[:1], texts[p : p + 1], k=12, weighting=weighting)
            assert (multi[p] - one[0]).abs().max() < 1e-5
    with pytest.raises(ValueError, match="one image"):
        gscorecam_multi(toy.model, x, texts, k=12)


def test_fast_mode_matches_fp32_and_follows_weight_changes(toy, breast):
    dtype = fast_dtype("cpu")
    if dtype == torch.float32:
        pytest.skip("this CPU has no bfloat16 support: fast mode is fp32 here")
    x, text, _ = breast
    model = copy.deepcopy(toy.model)
    exact = gscorecam(model, x, text, k=32)
    fast = gscorecam(model, x, text, k=32, precision="fast")
    assert gscorecam_details(model, x[:1], text, k=2, precision="fast").dtype == torch.bfloat16
    for e, f in zip(exact, fast):
        assert _corr(e, f) >= 0.99
    cast = cast_encoder(model, dtype)
    assert cast_encoder(model, dtype) is cast  # cast once, reused
    with torch.no_grad():  # an in-place update (as an optimiser step does) invalidates the copy
        for p in model.visual.trunk.blocks[-1].parameters():
            p.mul_(-1.0)
    assert cast_encoder(model, dtype) is not cast
    exact2 = gscorecam(model, x, text, k=32)
    fast2 = gscorecam(model, x, text, k=32, precision="fast")
    assert min(_corr(e, f) for e, f in zip(exact2, fast2)) >= 0.99
    assert max(_corr(e, f) for e, f in zip(exact2, fast)) < 0.99


# --------------------------------------------------------------------------------------------
# the API: any image, any prompts, maps in the image's coordinates


def test_saliency_maps_land_on_the_finding_of_a_non_square_image(toy, tmp_path):
    sample = generate_sample("brain", 1, size=(176, 288))
    assert sample.mask.any()
    maps = saliency_maps(toy, sample.image, [PROMPTS["brain"], "liver"], k=48)
    assert maps.shape == (2, 176, 288) and maps.dtype == np.float32
    assert maps.min() >= 0.0 and maps.max() == pytest.approx(1.0)
    assert pointing_game(maps[0], sample.mask) == 1.0
    assert saliency_auc(maps[0], sample.mask) > 0.98
    # Stretching the letterboxed map over the image (the reference's mistake) misses the finding.
    x = toy.prepare(sample.image)[0][None]
    with torch.no_grad():
        text = toy.model.encode_text(toy.tokenize([PROMPTS["brain"]]))
    raw = gscorecam(toy.model, x, text, k=48)
    stretched = F.interpolate(raw[None], size=(176, 288), mode="bilinear")[0, 0].numpy()
    assert pointing_game(stretched, sample.mask) == 0.0
    # One prompt alone gives the same map as in the pair; a file path the same as the array.
    single = saliency_maps(toy, sample.image, PROMPTS["brain"], k=48)
    assert single.shape == (1, 176, 288) and np.abs(single[0] - maps[0]).max() < 1e-5
    path = write_image(tmp_path / "brain.png", sample.image)
    assert np.abs(saliency_maps(toy, path, PROMPTS["brain"], k=48) - single).max() < 1e-6
    # GradCAM's map is in the image's coordinates too (on this CLS-pooled toy, as on BiomedCLIP, it
    # localises poorly: the point here is the geometry, not its quality).
    grad = saliency_maps(toy, sample.rgb, PROMPTS["brain"], method="gradcam")
    assert grad.shape == (1, 176, 288) and 0.0 <= grad.min() and grad.max() <= 1.0


def test_saliency_maps_errors_name_the_problem(toy, tmp_path):
    image = np.zeros((64, 80), dtype=np.uint8)
    assert set(METHODS) >= {"gradcam", "gscorecam", "m2ib"}
    with pytest.raises(ValueError, match="unknown saliency method 'scorecam'"):
        saliency_maps(toy, image, "lungs", method="scorecam")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        saliency_maps(toy, tmp_path / "missing.png", "lungs")
    with pytest.raises(ValueError, match="prompts"):
        saliency_maps(toy, image, [])
    with pytest.raises(TypeError, match="gradcam takes no options"):
        saliency_maps(toy, image, "lungs", method="gradcam", k=3)


# --------------------------------------------------------------------------------------------
# localisation on the toy world


def test_saliency_dice_thresholds_the_normalised_map():
    gt = np.zeros((10, 10), dtype=bool)
    gt[2:5, 3:7] = True
    assert saliency_dice(gt.astype(np.float32) * 7 + 3, gt) == 1.0  # any scale: min-max first
    assert saliency_dice(np.full((10, 10), 0.9), gt) == 0.0  # a constant map says nothing
    ramp = np.tile(np.linspace(0, 1, 10), (10, 1))  # columns 5..9 are >= 0.5
    assert saliency_dice(ramp, gt) == pytest.approx(2 * 6 / (12 + 50))


def test_gscorecam_finds_the_phantom_findings(toy):
    rows = localisation_table(
        toy,
        n_per_task=5,
        seed=5,
        methods={"gscorecam": partial(gscorecam, k=48), "gradcam": "gradcam"},
    )
    for r in rows:
        print(r["task"], {k: round(v, 2) for k, v in r.items() if isinstance(v, float)})
        assert r["auc_gscorecam"] > 0.75 and r["auc_gscorecam"] > r["auc_random"] + 0.25
        assert r["dice_gscorecam"] > r["dice_random"]
        assert 0.0 <= r["dice_gradcam"] <= 1.0 and "pointing_gradcam" in r


# --------------------------------------------------------------------------------------------
# the random-pick control


def test_random_pick_scores_seeded_random_channels_and_otherwise_is_gscorecam(toy, breast):
    x, text, _ = breast
    k = 6
    grad = gscorecam_details(toy.model, x, text, k=k)
    rand = gscorecam_details(toy.model, x, text, k=k, pick="random", pick_seed=3)
    c = grad.importance.shape[1]
    for b in range(len(x)):  # image b draws with pick_seed + b, independently of the gradient
        drawn = torch.randperm(c, generator=torch.Generator().manual_seed(3 + b))[:k]
        assert torch.equal(rand.channels[b], drawn)
    assert not torch.equal(rand.channels, grad.channels)
    again = gscorecam(toy.model, x, text, k=k, pick="random", pick_seed=3)
    assert torch.equal(again, rand.maps)  # seeded: the same maps on a rerun
    other = gscorecam(toy.model, x, text, k=k, pick="random", pick_seed=4)
    assert (other - rand.maps).abs().max() > 1e-3
    # everything but the pick is gScoreCAM: with k = C both picks keep every channel
    full_g = gscorecam(toy.model, x[:1], text, k=None)
    full_r = gscorecam(toy.model, x[:1], text, k=None, pick="random")
    assert (full_g - full_r).abs().max() < 1e-5
    with pytest.raises(ValueError, match="pick must be one of"):
        gscorecam(toy.model, x[:1], text, k=k, pick="best")


def test_random_pick_with_several_prompts_equals_one_prompt_at_a_time(toy, breast):
    x, _, _ = breast
    with torch.no_grad():
        texts = toy.model.encode_text(toy.tokenize([PROMPTS["breast"], PROMPTS["brain"]]))
    multi = gscorecam_multi(toy.model, x[:1], texts, k=5, pick="random", pick_seed=2)
    for i in range(2):
        one = gscorecam(toy.model, x[:1], texts[i : i + 1], k=5, pick="random", pick_seed=2)[0]
        assert (multi[i] - one).abs().max() < 1e-5
