"""Metrics against independent, brute-force computations, and the empty-mask conventions."""

from __future__ import annotations

import numpy as np
import pytest

from medclipsam.metrics import dice, iou, pointing_game, saliency_auc


def test_dice_and_iou_on_known_overlap():
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[0:4, 0:5] = True  # 20 px
    b[2:6, 0:5] = True  # 20 px, overlap 10
    assert dice(a, b) == pytest.approx(2 * 10 / 40)
    assert iou(a, b) == pytest.approx(10 / 30)


def test_empty_mask_conventions():
    e = np.zeros((5, 5), bool)
    f = e.copy()
    f[1, 1] = True
    assert dice(e, e) == 1.0 and iou(e, e) == 1.0
    assert dice(e, f) == 0.0 and dice(f, e) == 0.0 and iou(f, e) == 0.0
    assert np.isnan(saliency_auc(np.random.default_rng(0).random((5, 5)), e))
    assert np.isnan(pointing_game(np.ones((5, 5)), e))


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        dice(np.zeros((3, 3)), np.zeros((3, 4)))


def test_auc_equals_the_pairwise_definition():
    rng = np.random.default_rng(1)
    s = rng.integers(0, 5, size=(12, 12)).astype(float)  # many ties
    g = rng.random((12, 12)) < 0.3
    pos, neg = s[g], s[~g]
    brute = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert saliency_auc(s, g) == pytest.approx(brute)
    assert saliency_auc(g.astype(float), g) == 1.0
    assert saliency_auc(-g.astype(float), g) == 0.0


def test_pointing_game_with_tolerance():
    g = np.zeros((9, 9), bool)
    g[4, 4] = True
    s = np.zeros((9, 9))
    s[4, 6] = 1.0
    assert pointing_game(s, g) == 0.0
    assert pointing_game(s, g, tolerance_px=2) == 1.0
