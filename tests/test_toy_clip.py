"""The shipped toy CLIP: loads offline, retrieves captions, and knows where findings are.

Loose bounds (the benchmark, benchmarks/toy_clip_quality.py, reports the real figures on more
images); each would fail for an untrained or a brightness-following model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medclipsam.models import load_clip
from medclipsam.models.tokenizer import WordTokenizer
from medclipsam.retrieval import retrieval_protocol
from medclipsam.saliency import resolve_target_layer
from medclipsam.saliency.evaluate import localisation_table

WEIGHTS = Path(__file__).resolve().parents[1] / "medclipsam" / "weights"


@pytest.fixture(scope="module")
def toy():
    return load_clip("toy", device="cpu")


def test_loads_offline_with_its_word_tokenizer(toy):
    assert isinstance(toy.tokenizer, WordTokenizer)
    assert toy.image_size == 224 and toy.model.visual.pool_type == "avg"
    assert (WEIGHTS / "toy_clip.pt").stat().st_size < 8e6
    assert toy.tokenize(["breast tumor"]).shape == (1, toy.context_length)


def test_the_cam_layer_gets_a_real_gradient(toy):
    target = resolve_target_layer(toy.model)
    store = {}

    def hook(_m, _i, out):
        out.retain_grad()
        store["a"] = out

    h = target.module.register_forward_hook(hook)
    from medclipsam.data.phantom import generate_sample

    x = toy.prepare(generate_sample("breast", 3, size=224, label="malignant").rgb)[0][None]
    with torch.no_grad():
        t = toy.model.encode_text(toy.tokenize(["breast tumor"]))
    (toy.model.encode_image(x) @ t.t()).sum().backward()
    h.remove()
    assert target.to_grid(store["a"].grad).abs().max() > 0


def test_retrieval_is_far_above_chance(toy):
    from medclipsam.data.phantom import TASKS, PhantomDataset

    samples = [PhantomDataset(t, 40, seed=7, size=224, split="test")[i] for t in TASKS for i in range(40)]
    captions = [s.captions[0] for s in samples]
    with torch.no_grad():
        img = toy.model.encode_image(torch.stack([toy.prepare(s.rgb)[0] for s in samples]))
        txt = toy.model.encode_text(toy.tokenize(captions))
    res = retrieval_protocol(img, txt, batch=50, runs=3, groups=captions)
    print("retrieval, 120 held-out pairs in batches of 50:", res)
    assert res["i2t_top1"][0] > 10.0 and res["t2i_top1"][0] > 10.0  # chance: 2 %
    assert res["i2t_top2"][0] > 20.0 and res["t2i_top2"][0] > 20.0  # chance: 4 %


def test_gradcam_of_the_prompt_finds_the_finding_and_beats_the_intensity_rule(toy):
    rows = {r["task"]: r for r in localisation_table(toy, n_per_task=20, seed=3)}
    for task, r in rows.items():
        print(task, {k: round(v, 2) for k, v in r.items() if isinstance(v, float)})
    for task in ("breast", "brain"):
        assert rows[task]["pointing"] >= 0.7, rows[task]
        assert rows[task]["pointing"] > rows[task]["pointing_intensity_rule"] + 0.3
    assert rows["xray"]["auc"] >= 0.8 and rows["xray"]["pointing"] >= 0.8
    assert all(r["auc"] > r["auc_random"] + 0.2 for r in rows.values())


def test_training_script_runs_and_writes_a_loadable_checkpoint(tmp_path):
    from medclipsam.models.toy_clip import train_toy_clip

    out = tmp_path / "tiny.pt"
    summary = train_toy_clip(out, steps=2, batch_size=4, n_train_per_task=6, warmup=1, log=lambda *_: None)
    clip = load_clip(out, device="cpu")
    assert summary["steps"] == 2 and isinstance(clip.tokenizer, WordTokenizer)
    with torch.no_grad():
        f = clip.model.encode_text(clip.tokenize(["lungs"]))
    assert np.isfinite(f.numpy()).all()
