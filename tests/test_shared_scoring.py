"""gScoreCAM's masked images scored once and shared: by the prompts of one call, by the
prompt-sensitivity check, by later calls on the same image (``MaskedFeatureStore``, the explorer);
and the reference mode's masks made exactly as the reference makes them.

Every map is checked against an independent plain loop written here (one channel at a time, one
prompt at a time, exactly as the method is written down), with either mask convention.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cam_loops import loop_gscorecam
from pytorch_grad_cam import ScoreCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from medclipsam.data.phantom import PROMPTS, PhantomDataset
from medclipsam.models import load_clip
from medclipsam.saliency import PromptBatch, prompt_sensitivity, resolve_target_layer, saliency_maps
from medclipsam.saliency.api import METHODS
from medclipsam.saliency.gscorecam import gscorecam
from medclipsam.saliency.gscorecam_multi import MaskedFeatureStore, gscorecam_multi
from medclipsam.saliency.sensitivity import control_prompts
from medclipsam.widgets import PromptExplorer

pytestmark = pytest.mark.usefixtures("one_thread")

K = 10


@pytest.fixture(scope="module")
def toy():
    return load_clip("toy", device="cpu")


@pytest.fixture(scope="module")
def breast_image():
    return PhantomDataset("breast", 1, seed=5, size=200, split="test")[0].rgb


def _union_size(model, image, texts, k):
    """How many distinct channels the prompts' top-k sets hold (computed independently)."""
    target = resolve_target_layer(model)
    chans = set()
    store = {}

    def hook(_m, _i, out):
        out.retain_grad()
        store["a"] = out

    for t in texts:
        h = target.module.register_forward_hook(hook)
        with torch.enable_grad():
            f = F.normalize(model.encode_image(image.clone().requires_grad_(True)), dim=-1)[0]
            (f @ F.normalize(t.float(), dim=-1)).backward()
        h.remove()
        imp = target.to_grid(store["a"].grad)[0].mean(dim=(1, 2))
        chans |= set(imp.topk(k).indices.tolist())
    return len(chans)


def test_the_sensitivity_check_scores_each_channel_once_and_keeps_every_map(toy, breast_image):
    prompt = PROMPTS["breast"]
    ctrl = control_prompts(prompt, "breast")
    batch = PromptBatch(toy, breast_image, [prompt, *ctrl.values()])
    store = MaskedFeatureStore()
    rep = prompt_sensitivity(toy, breast_image, prompt, METHODS["gscorecam"], task="breast",
                             warn=False, k=K, store=store)
    texts = batch.text_features
    # scored once: exactly the union of the five prompts' top-k channels, not 5 * k
    assert store.scored == _union_size(toy.model, batch.image_input, texts, K) < len(texts) * K
    # each map is the one-prompt map of an independent loop
    loops = torch.stack([loop_gscorecam(toy.model, batch.image_input, texts[i : i + 1], K)
                         for i in range(len(texts))])
    expect = batch.on_image(loops, normalize=False)
    got = np.stack([rep.prompt_map, *rep.control_maps.values()])
    assert np.abs(got - expect).max() < 1e-4
    # without a store: the same maps (the shared path is the default for gScoreCAM)
    again = prompt_sensitivity(toy, breast_image, prompt, METHODS["gscorecam"], task="breast",
                               warn=False, k=K)
    assert np.abs(again.prompt_map - rep.prompt_map).max() < 1e-5
    # a second prompt on the same image: only its own new channels are scored
    before = store.scored
    other = "a round lesion"
    prompt_sensitivity(toy, breast_image, other, METHODS["gscorecam"], task="breast", warn=False,
                       k=K, store=store)
    all_texts = torch.cat([texts, toy.model.encode_text(toy.tokenize([other])).detach()])
    assert store.scored == _union_size(toy.model, batch.image_input, all_texts, K)
    assert store.scored - before <= K


def test_a_store_refuses_features_of_another_image_or_setting(toy, breast_image):
    batch = PromptBatch(toy, breast_image, ["a breast tumor"])
    x, t = batch.image_input, batch.text_features
    store = MaskedFeatureStore()
    first = gscorecam_multi(toy.model, x, t, k=K, store=store)
    assert store.scored == K
    assert (gscorecam_multi(toy.model, x, t, k=K, store=store) - first).abs().max() == 0
    assert store.scored == K  # nothing scored again
    y = x.flip(-1)
    flipped = gscorecam_multi(toy.model, y, t, k=K, store=store)
    assert store.scored == 2 * K and (flipped - gscorecam(toy.model, y, t, k=K)).abs().max() < 1e-5
    ref = gscorecam_multi(toy.model, y, t, k=K, store=store, convention="reference")
    assert store.scored == 3 * K  # another mask convention: other masked images
    assert (ref - gscorecam(toy.model, y, t, k=K, convention="reference")).abs().max() < 1e-5


def test_saliency_maps_with_several_prompts_equal_the_loop(toy, breast_image):
    prompts = [PROMPTS["breast"], "normal tissue", "liver"]
    batch = PromptBatch(toy, breast_image, prompts)
    maps = saliency_maps(toy, breast_image, prompts, "gscorecam", k=K)
    loops = torch.stack([loop_gscorecam(toy.model, batch.image_input, batch.text_features[i : i + 1], K)
                         for i in range(len(prompts))])
    assert np.abs(maps - batch.on_image(loops)).max() < 1e-4


@pytest.mark.parametrize("weighting", ["selected", "reference"])
@pytest.mark.parametrize("preset", ["default", "reference"])
def test_reference_convention_equals_a_loop_with_the_references_masks(toy, breast_image, weighting, preset):
    batch = PromptBatch(toy, breast_image, [PROMPTS["breast"]])
    x, t = batch.image_input, batch.text_features
    ours = gscorecam(toy.model, x, t, k=K, target=preset, weighting=weighting, convention="reference")
    ref = loop_gscorecam(toy.model, x, t, K, convention="reference", preset=preset, weighting=weighting)
    assert (ours[0] - ref).abs().max().item() < 1e-5
    package = gscorecam(toy.model, x, t, k=K, target=preset, weighting=weighting)
    assert (package[0] - ref).abs().max().item() > 1e-3  # the convention is visible


def test_reference_convention_is_the_unpatched_librarys_scorecam(toy, breast_image):
    """pytorch-grad-cam's ScoreCAM (the reference's base) as is: corner-aligned masks."""
    batch = PromptBatch(toy, breast_image, [PROMPTS["breast"]])
    x, t = batch.image_input, batch.text_features
    model = toy.model
    target = resolve_target_layer(model)

    class ClipLogits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, z):
            img = F.normalize(self.model.encode_image(z), dim=-1)
            return self.model.logit_scale.exp() * img @ F.normalize(t.float(), dim=-1).T

    cam = ScoreCAM(ClipLogits(), [target.module], reshape_transform=target.to_grid)
    cam.batch_size = 64
    lib = cam(x, [ClassifierOutputTarget(0)])
    ours = gscorecam(model, x, t, k=None, convention="reference").numpy()
    assert np.abs(ours - lib).max() < 1e-5  # the library's eps is 1e-8, the reference's 1e-6


def test_the_explorer_scores_only_channels_it_has_not_scored_on_the_image_it_shows():
    ex = PromptExplorer.offline(per_task=1, k=K)
    name = next(n for n in ex.images if n.startswith("breast"))
    ex.select(name)
    assert ex.method.value == "gscorecam" and ex.k.value == K
    first = ex.prompt_box.value
    clip = ex.pipeline.clip
    store = ex.feature_store

    def union(prompts):
        batch = PromptBatch(clip, ex.current.image, prompts)
        return _union_size(clip.model, batch.image_input, batch.text_features, K)

    def check(prompts):
        """The store holds the prompts' channels, and scored each of them once."""
        assert ex.last_error is None, ex.last_error
        assert len(store.features) == union(prompts)
        assert store.scored - start == len(store.features)

    start = store.scored - len(store.features)  # what earlier images cost
    check([first])
    ex.set_prompt("a round lesion")
    check([first, "a round lesion"])
    # the compare view with its sensitivity checks: every control scored once, nothing twice
    ex.compare([first, "a round lesion"])
    check([first, "a round lesion", *control_prompts(first, "breast").values()])
    before = store.scored
    ex.compare(["normal tissue"])  # a control already scored: nothing new
    assert store.scored == before
    # its maps are the one-prompt path's
    row_map = ex.model.saliency_for("a round lesion", ex.config())
    alone = saliency_maps(clip, ex.current.image, ["a round lesion"], "gscorecam", k=K)[0]
    assert np.abs(row_map - alone).max() < 1e-5
