"""M2IB saliency: maps of the right size and range, reproducible, the model left as it was, working
on open_clip ViTs, timm trunks and ResNets, and finding the phantom findings on the toy CLIP."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from open_clip.model import CLIP

from medclipsam.data.phantom import PROMPTS, TASKS, PhantomDataset
from medclipsam.metrics import saliency_auc
from medclipsam.models import load_clip
from medclipsam.saliency.m2ib import default_layer_index, m2ib, m2ib_target

TEXT = {"context_length": 8, "vocab_size": 50, "width": 32, "heads": 2, "layers": 1}
FAST = {"noise_samples": 2}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def toy():
    return load_clip("toy", device="cpu")


def _vit(pool: str = "tok", layers: int = 2) -> CLIP:
    torch.manual_seed(0)
    vision = {"image_size": 64, "patch_size": 16, "width": 32, "layers": layers, "head_width": 16,
              "pool_type": pool}
    return CLIP(embed_dim=16, vision_cfg=vision, text_cfg=TEXT).eval()


def _inputs(n: int = 2, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, size, size, generator=g), torch.randn(1, 16, generator=g)


def test_default_layer_is_three_quarters_deep_and_never_a_dead_last_block():
    assert default_layer_index(12, cls_pooled=True) == 9  # BiomedCLIP / MedCLIP-SAMv2's layer 9
    assert default_layer_index(24, cls_pooled=True) == 18
    assert default_layer_index(4, cls_pooled=False) == 3  # toy CLIP: average pooling, last block is live
    assert default_layer_index(4, cls_pooled=True) == 2
    assert default_layer_index(1, cls_pooled=True) == 0
    assert m2ib_target(_vit("tok", layers=4)).name == "visual.transformer.resblocks.2"
    assert m2ib_target(_vit("avg", layers=4)).name == "visual.transformer.resblocks.3"
    with pytest.raises(ValueError, match="out of range"):
        m2ib_target(_vit(), layer_index=5)


def test_toy_maps_are_input_sized_normalised_and_reproducible(toy):
    ds = PhantomDataset("breast", 2, seed=3, split="test")
    x = torch.stack([toy.prepare(ds[i].rgb)[0] for i in range(2)])
    text = toy.encode_text([PROMPTS["breast"]]).detach()
    a = m2ib(toy.model, x, text, seed=0, **FAST)
    assert a.shape == (2, 224, 224)
    assert float(a.min()) == 0.0 and float(a.max()) == pytest.approx(1.0, abs=1e-5)
    assert torch.equal(a, m2ib(toy.model, x, text, seed=0, **FAST))
    c = m2ib(toy.model, x, text, seed=1, **FAST)
    assert not torch.equal(a, c)  # the seed drives the noise
    # ... but two seeds agree on the picture
    assert np.corrcoef(a[0].flatten().numpy(), c[0].flatten().numpy())[0, 1] > 0.9


def test_each_image_is_explained_on_its_own(toy):
    ds = PhantomDataset("brain", 2, seed=5, split="test")
    x = torch.stack([toy.prepare(ds[i].rgb)[0] for i in range(2)])
    text = toy.encode_text([PROMPTS["brain"]]).detach()
    both = m2ib(toy.model, x, text, **FAST)
    one = m2ib(toy.model, x[1:], text, **FAST)
    assert np.corrcoef(both[1].flatten().numpy(), one[0].flatten().numpy())[0, 1] > 0.95


def test_model_is_left_as_it_was():
    model = _vit("tok")
    model.train()
    model.visual.transformer.resblocks[0].eval()
    frozen = model.visual.conv1.weight
    frozen.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = {n: m.training for n, m in model.named_modules()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    x, t = _inputs()
    m2ib(model, x, t, steps=3, **FAST)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert {n: m.training for n, m in model.named_modules()} == modes


def test_runs_inside_no_grad_and_checks_its_inputs():
    model = _vit("avg")
    x, t = _inputs(3)
    with torch.no_grad():
        maps = m2ib(model, x, t.expand(3, -1), steps=2, **FAST)
    assert maps.shape == (3, 64, 64) and torch.isfinite(maps).all()
    with pytest.raises(ValueError, match="noise"):
        m2ib(model, x, t, noise="gaussian")
    with pytest.raises(ValueError, match="text_features"):
        m2ib(model, x, torch.randn(2, 16))
    with pytest.raises(ValueError, match="not both"):
        m2ib(model, x, t, target=m2ib_target(model), layer_index=0)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        m2ib(model, x[0], t)


@pytest.mark.parametrize("noise", ["standardized", "reference"])
def test_open_clip_vit_with_cls_pooling(noise):
    model = _vit("tok", layers=3)
    x, t = _inputs()
    maps = m2ib(model, x, t, steps=3, noise=noise, **FAST)
    assert maps.shape == (2, 64, 64)
    assert float(maps.max()) > 0.99  # a real map, not the all-zero map of a constant


def test_timm_trunk_like_biomedclip():
    pytest.importorskip("timm")
    torch.manual_seed(0)
    vision = {"timm_model_name": "vit_tiny_patch16_224", "timm_model_pretrained": False, "timm_pool": "",
              "timm_proj": "linear", "image_size": 224}
    model = CLIP(embed_dim=16, vision_cfg=vision, text_cfg=TEXT).eval()
    assert m2ib_target(model).name == "visual.trunk.blocks.9"
    x, t = _inputs(1, 224)
    maps = m2ib(model, x, t, steps=2, noise_samples=1)
    assert maps.shape == (1, 224, 224) and float(maps.max()) > 0.99


def test_modified_resnet_conv_maps():
    torch.manual_seed(0)
    vision = {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "head_width": 16}
    model = CLIP(embed_dim=16, vision_cfg=vision, text_cfg=TEXT).eval()
    assert m2ib_target(model).name == "visual.layer3"
    x, t = _inputs()
    maps = m2ib(model, x, t, steps=2, **FAST)
    assert maps.shape == (2, 64, 64) and float(maps.max()) > 0.99


def test_toy_clip_m2ib_finds_the_phantom_findings(toy):
    """Pixel AUC of the map against the mask, beside a random map (AUC 0.5): 0.82-0.95 per task
    on these three images (benchmarks/toy_world_vs_paper.py --m2ib reports the whole pipeline)."""
    rng = np.random.default_rng(0)
    for task in TASKS:
        ds = PhantomDataset(task, 6, seed=11, split="test")
        samples = [s for s in (ds[i] for i in range(len(ds))) if s.mask.any()][:3]
        prepared = [toy.prepare(s.rgb) for s in samples]
        x = torch.stack([p[0] for p in prepared])
        text = toy.encode_text([PROMPTS[task]]).detach()
        maps = m2ib(toy.model, x, text, **FAST)
        auc = [saliency_auc(g.to_image(m.numpy()), s.mask) for (_, g), m, s in zip(prepared, maps, samples)]
        rand = [saliency_auc(rng.random(s.mask.shape), s.mask) for s in samples]
        assert np.mean(auc) > 0.75 and np.mean(auc) > np.mean(rand) + 0.25, (task, auc)
