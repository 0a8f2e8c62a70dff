"""Stage 1's experiment: phantom caption pairs and the per-loss fine-tuning comparison."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medclipsam.config import FinetuneConfig
from medclipsam.data import PhantomDataset, PhantomPairs
from medclipsam.loss_comparison import PAPER_RETRIEVAL, compare_losses, retrieval_scores
from medclipsam.models import load_clip


def test_pairs_follow_the_phantom_dataset_and_are_reproducible():
    pairs = PhantomPairs(("breast", "xray"), 3, seed=4, split="val", size=64, captions="all")
    assert len(pairs) == 2 * 3 * 5
    ds = PhantomDataset("xray", 3, seed=4, split="val", size=64)
    image, caption = pairs[15]  # first caption of the first X-ray image
    assert np.array_equal(image, ds[0].rgb) and caption == ds[0].captions[0]
    assert pairs.tasks[:15] == ["breast"] * 15 and pairs.labels[15] == ds[0].label
    one = PhantomPairs(("breast", "xray"), 3, seed=4, split="val", size=64)
    again = PhantomPairs(("breast", "xray"), 3, seed=4, split="val", size=64)
    assert len(one) == 6 and one.captions == again.captions
    assert all(c in PhantomDataset(t, 3, seed=4, split="val", size=64)[i % 3].captions
               for i, (t, c) in enumerate(zip(one.tasks, one.captions)))
    with pytest.raises(ValueError, match="captions must be"):
        PhantomPairs(("breast",), 1, captions="some")


def test_transform_runs_once_per_image():
    calls = []

    def transform(im):
        calls.append(1)
        return torch.from_numpy(im).permute(2, 0, 1).float() / 255

    pairs = PhantomPairs(("brain",), 4, size=48, captions="all", transform=transform)
    assert len(calls) == 4 and len(pairs) == 20
    assert pairs[0][0] is pairs[4][0] and pairs[0][0].shape == (3, 48, 48)


def test_compare_losses_trains_each_loss_from_the_same_start_and_resumes(tmp_path):
    torch.manual_seed(0)
    clip = load_clip("toy")
    train = PhantomPairs(n_per_task=6, split="train", captions="all", transform=clip.preprocess)
    test = PhantomPairs(n_per_task=20, split="test", transform=clip.preprocess)
    cfg = FinetuneConfig(lr=1e-4, epochs=1, batch_size=30, warmup_steps=1, learn_logit_scale=True,
                         device="cpu", num_workers=0, eval_every=0, eval_before=False, progress=False)
    before = retrieval_scores(clip, test)
    rows = compare_losses(train, test, losses=("infonce", "dhn_nce"), config=cfg,
                          out_dir=tmp_path, device="cpu")
    assert [r["model"] for r in rows] == ["toy (before)", "+ InfoNCE", "+ DHN-NCE"]
    assert rows[0]["i2t_top1"] == pytest.approx(before["i2t_top1"])  # the starting model is the shipped one
    assert all(r["steps"] == 3 for r in rows[1:])  # 90 pairs, batches of 30
    for r in rows:
        assert all(0 <= r[k] <= 100 for k in ("i2t_top1", "i2t_top2", "t2i_top1", "t2i_top2"))
        assert r["i2t_top2"] >= r["i2t_top1"]
    assert (tmp_path / "dhn_nce" / "model.pt").is_file()
    # Training moved the weights: the fine-tuned models embed differently from the start.
    tuned = load_clip(tmp_path / "dhn_nce" / "model.pt")
    x = torch.stack([test[i][0] for i in range(4)])
    with torch.no_grad():
        assert not torch.allclose(tuned.model.encode_image(x), clip.model.encode_image(x), atol=1e-4)
    # A second call reuses the finished runs (same numbers, nothing retrained).
    again = compare_losses(train, test, losses=("dhn_nce",), config=cfg, out_dir=tmp_path, device="cpu")
    assert again[1]["i2t_top1"] == pytest.approx(rows[2]["i2t_top1"]) and again[1]["steps"] == 3


def test_paper_table_is_the_one_in_the_method_notes():
    by = {r["model"]: r for r in PAPER_RETRIEVAL}
    assert by["+ DHN-NCE"]["i2t_top1"] == 84.70 and by["BiomedCLIP"]["t2i_top2"] == 92.27
    assert max(PAPER_RETRIEVAL, key=lambda r: r["i2t_top1"])["model"] == "+ DHN-NCE"
