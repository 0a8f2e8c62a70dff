"""The shipped toy CLIP: shaped like BiomedCLIP's image tower, loads offline, retrieves captions,
localises with gScoreCAM, and is reproducible from its seed.

Loose bounds (benchmarks/toy_clip_quality.py and benchmarks/toy_world_vs_paper.py report the real
figures on more images); each would fail for an untrained model or one whose gradients carry the
segmentation (the old toy, pooled by averaging and trained with a loss on its patch tokens).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from open_clip.timm_model import TimmModel

from medclipsam.data.phantom import TASKS, PhantomDataset, generate_sample
from medclipsam.models import load_clip
from medclipsam.models.tokenizer import WordTokenizer
from medclipsam.models.toy_clip import train_toy_clip
from medclipsam.retrieval import retrieval_protocol
from medclipsam.saliency import resolve_target_layer
from medclipsam.saliency.evaluate import localisation_table

WEIGHTS = Path(__file__).resolve().parents[1] / "medclipsam" / "weights"


@pytest.fixture(scope="module")
def toy():
    return load_clip("toy", device="cpu")


def test_shaped_like_biomedclip_and_small(toy):
    visual = toy.model.visual
    assert isinstance(toy.tokenizer, WordTokenizer)
    assert isinstance(visual, TimmModel) and toy.image_size == 224
    trunk = visual.trunk
    assert trunk.global_pool == "token" and trunk.num_prefix_tokens == 1  # pooled at the CLS token
    assert tuple(trunk.patch_embed.grid_size) == (14, 14)
    for block in trunk.blocks:
        assert {"norm1", "attn", "norm2", "mlp"} <= {n for n, _ in block.named_children()}
    assert isinstance(trunk.norm, torch.nn.LayerNorm) and isinstance(visual.head.proj, torch.nn.Linear)
    assert visual.head.proj.bias is None  # BiomedCLIP's timm_proj="linear", bias-free
    assert (WEIGHTS / "toy_clip.pt").stat().st_size <= 10e6  # the package ships only the toy CLIP
    # the package ships the toy CLIP, its DHN-NCE fine-tuned copy and one weakly supervised UNet, all small
    assert sorted(p.name for p in WEIGHTS.glob("*.pt")) == ["toy_clip.pt", "toy_clip_dhn_nce.pt",
                                                           "weak_unet_breast.pt"]
    assert sum(p.stat().st_size for p in WEIGHTS.glob("*.pt")) <= 10e6
    assert toy.tokenize(["breast tumor"]).shape == (1, toy.context_length)


def _patch_gradient(toy, preset: str) -> torch.Tensor:
    target = resolve_target_layer(toy.model, preset=preset)
    store = {}

    def hook(_m, _i, out):
        out.retain_grad()
        store["a"] = out

    h = target.module.register_forward_hook(hook)
    try:
        x = toy.prepare(generate_sample("breast", 3, size=224, label="malignant").rgb)[0][None]
        with torch.no_grad():
            t = toy.model.encode_text(toy.tokenize(["breast tumor"]))
        (toy.model.encode_image(x) @ t.t()).sum().backward()
    finally:
        h.remove()
        toy.model.zero_grad(set_to_none=True)
    return target.to_grid(store["a"].grad)


def test_the_reference_layer_gets_exactly_zero_patch_gradient_and_the_default_layer_a_real_one(toy):
    # As on BiomedCLIP: the last block's norm2 feeds only its MLP, whose patch outputs never reach
    # the CLS token; the last block's norm1 feeds the attention that the CLS token reads.
    assert resolve_target_layer(toy.model, preset="reference").name == "visual.trunk.blocks[-1].norm2"
    assert torch.count_nonzero(_patch_gradient(toy, "reference")) == 0
    assert _patch_gradient(toy, "default").abs().max() > 0


def test_retrieval_is_far_above_chance(toy):
    samples = [PhantomDataset(t, 40, seed=7, size=224, split="test")[i] for t in TASKS for i in range(40)]
    captions = [s.captions[0] for s in samples]
    with torch.no_grad():
        img = toy.model.encode_image(torch.stack([toy.prepare(s.rgb)[0] for s in samples]))
        txt = toy.model.encode_text(toy.tokenize(captions))
    res = retrieval_protocol(img, txt, batch=50, runs=3, groups=captions)
    print("retrieval, 120 held-out pairs in batches of 50:", res)
    assert res["i2t_top1"][0] > 10.0 and res["t2i_top1"][0] > 10.0  # chance: 2 %
    assert res["i2t_top2"][0] > 20.0 and res["t2i_top2"][0] > 20.0  # chance: 4 %


def test_gscorecam_of_the_prompt_localises_better_than_a_random_map(toy):
    rows = localisation_table(toy, n_per_task=5, seed=3, methods={"gscorecam": "gscorecam"})
    for r in rows:
        print(r["task"], {k: round(v, 2) for k, v in r.items() if isinstance(v, float)})
        assert r["auc_gscorecam"] > r["auc_random"] + 0.15, r


def _digest(path: Path) -> str:
    state = torch.load(path, map_location="cpu", weights_only=False)
    state = state.get("state_dict", state)
    h = hashlib.sha256()
    for key in sorted(state):
        if torch.is_tensor(state[key]):
            h.update(key.encode())
            h.update(state[key].float().numpy().tobytes())
    return h.hexdigest()


def test_training_is_reproducible_from_its_seed_and_writes_a_loadable_checkpoint(tmp_path):
    kw = {"steps": 3, "batch_size": 6, "n_train_per_task": 8, "warmup": 1, "half_every": 2,
          "threads": 1, "log": lambda *_: None}
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    summary = train_toy_clip(a, **kw)
    train_toy_clip(b, **kw)
    assert _digest(a) == _digest(b)  # bit-identical on rerun (same machine, same thread count)
    assert _digest(a) != _digest(WEIGHTS / "toy_clip.pt")
    clip = load_clip(a, device="cpu")
    assert summary["steps"] == 3 and isinstance(clip.tokenizer, WordTokenizer)
    with torch.no_grad():
        f = clip.model.encode_text(clip.tokenize(["lungs"]))
    assert np.isfinite(f.numpy()).all()
