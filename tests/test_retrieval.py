"""Retrieval accuracy against a direct loop, and the paper's batching protocol."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medclipsam.retrieval import retrieval_protocol, topk_accuracy


def _loop_topk(img, txt, k):
    img = torch.nn.functional.normalize(img, dim=-1)
    txt = torch.nn.functional.normalize(txt, dim=-1)
    n = img.shape[0]
    i2t = t2i = 0
    for i in range(n):
        sims = [float(img[i] @ txt[j]) for j in range(n)]
        i2t += i in sorted(range(n), key=lambda j: -sims[j])[:k]
        sims = [float(txt[i] @ img[j]) for j in range(n)]
        t2i += i in sorted(range(n), key=lambda j: -sims[j])[:k]
    return 100 * i2t / n, 100 * t2i / n


def test_topk_matches_a_loop():
    g = torch.Generator().manual_seed(0)
    img = torch.randn(30, 8, generator=g)
    txt = img + 1.2 * torch.randn(30, 8, generator=g)
    res = topk_accuracy(img, txt, ks=(1, 2))
    for k in (1, 2):
        i2t, t2i = _loop_topk(img, txt, k)
        assert res[f"i2t_top{k}"] == pytest.approx(i2t)
        assert res[f"t2i_top{k}"] == pytest.approx(t2i)
    assert 0 < res["i2t_top1"] < 100


def test_perfect_and_chance_levels():
    img = torch.eye(50)
    assert topk_accuracy(img, img)["i2t_top1"] == 100.0
    rnd = retrieval_protocol(torch.randn(500, 64), torch.randn(500, 64), batch=50, runs=3)
    mean, std = rnd["i2t_top1"]
    assert 0.0 <= mean < 8.0 and std >= 0.0  # chance is 2 % for batches of 50


def test_groups_make_identical_captions_not_errors():
    img = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    txt = img.clone()
    plain = topk_accuracy(img, txt, ks=(1,))
    grouped = topk_accuracy(img, txt, ks=(1,), groups=["a", "a", "b"])
    assert grouped["i2t_top1"] == 100.0 and plain["i2t_top1"] < 100.0


def test_protocol_needs_a_full_batch():
    with pytest.raises(ValueError, match="at least"):
        retrieval_protocol(torch.randn(10, 4), torch.randn(10, 4), batch=50)


def test_protocol_hits_keeps_the_protocol_per_query():
    from medclipsam.retrieval import protocol_hits, retrieval_protocol

    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(100, 8, generator=g), dim=1)
    txt = torch.nn.functional.normalize(img + 0.8 * torch.randn(100, 8, generator=g), dim=1)
    caps = [f"c{i % 90}" for i in range(100)]  # some captions repeat: identical ones count as matches
    hits = protocol_hits(img, txt, caps, runs=3, seed=4)
    ref = retrieval_protocol(img, txt, runs=3, seed=4, groups=caps)
    assert hits.shape == (200,) and set(np.unique(hits)) <= {0, 1 / 3, 2 / 3, 1}
    assert abs(100 * hits[:100].mean() - ref["i2t_top1"][0]) < 1e-4
    assert abs(100 * hits[100:].mean() - ref["t2i_top1"][0]) < 1e-4
