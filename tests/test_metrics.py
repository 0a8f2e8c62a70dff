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


# ---------------------------------------------------------------------------------------------
# surface metrics (HD95, NSD), summaries, folders

import warnings  # noqa: E402
from itertools import product  # noqa: E402

from scipy import ndimage as ndi  # noqa: E402

from medclipsam.data import PairingError, write_mask  # noqa: E402
from medclipsam.metrics import (  # noqa: E402
    evaluate_folders,
    evaluate_masks,
    hd95,
    nsd,
    pair_mask_folders,
    summarize,
)


def _blob(rng, h, w, smooth=3.0):
    m = ndi.gaussian_filter(rng.random((h, w)), smooth)
    return m > np.quantile(m, rng.uniform(0.6, 0.95))


def _brute_surface(m):
    """Pixels of m with a 4-neighbour outside m (or outside the image), by explicit loops."""
    h, w = m.shape
    out = []
    for r, c in product(range(h), range(w)):
        if not m[r, c]:
            continue
        for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            rr, cc = r + dr, c + dc
            if not (0 <= rr < h and 0 <= cc < w) or not m[rr, cc]:
                out.append((r, c))
                break
    return np.array(out, dtype=float).reshape(-1, 2)


def _brute_hd95_nsd(a, b, tol, spacing=(1.0, 1.0)):
    sa, sb = _brute_surface(a) * spacing, _brute_surface(b) * spacing
    d = np.sqrt(((sa[:, None, :] - sb[None, :, :]) ** 2).sum(-1))
    d_ab, d_ba = d.min(1), d.min(0)
    h = max(np.percentile(d_ab, 95), np.percentile(d_ba, 95))
    n = ((d_ab <= tol).sum() + (d_ba <= tol).sum()) / (len(d_ab) + len(d_ba))
    return h, n


def test_hd95_and_nsd_match_a_brute_force_computation_on_tiny_masks():
    rng = np.random.default_rng(3)
    for k in range(25):
        h, w = rng.integers(4, 12, 2)
        a, b = rng.random((h, w)) < 0.4, rng.random((h, w)) < 0.4
        if not a.any() or not b.any():
            continue
        spacing = (1.0, 1.0) if k % 2 else (0.7, 1.6)
        bh, bn = _brute_hd95_nsd(a, b, 1.5, spacing)
        assert hd95(a, b, spacing=spacing) == pytest.approx(bh, abs=1e-9)
        assert nsd(a, b, tolerance=1.5, spacing=spacing) == pytest.approx(bn, abs=1e-12)


def test_hd95_and_nsd_of_a_shifted_square():
    a = np.zeros((30, 30), bool)
    a[5:15, 5:15] = True
    b = np.roll(a, 4, axis=1)  # 4 px to the right
    # every vertical edge is 4 px from its partner; the horizontal edges overlap in part
    assert hd95(a, b) == pytest.approx(4.0)
    assert hd95(a, b, spacing=0.5) == pytest.approx(2.0)
    assert nsd(a, b, tolerance=4.0) == 1.0
    assert 0.0 < nsd(a, b, tolerance=2.0) < 1.0
    assert hd95(a, a) == 0.0 and nsd(a, a, tolerance=0.0) == 1.0


def test_hd95_and_nsd_agree_with_monai_on_random_blobs():
    torch = pytest.importorskip("torch")
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    def t(m):
        return torch.from_numpy(m[None, None].astype(np.float32))

    rng = np.random.default_rng(0)
    for k in range(12):
        h, w = (int(v) for v in rng.integers(24, 72, 2))
        a, b = _blob(rng, h, w), _blob(rng, h, w)
        if k % 3 == 0:
            a[0, :] = True  # touching the image border: the border is surface too
        spacing = None if k % 2 else (0.5, 1.5)
        sp = 1.0 if spacing is None else spacing
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref_h = float(compute_hausdorff_distance(
                t(a), t(b), include_background=True, percentile=95, spacing=spacing))
            ref_n = float(compute_surface_dice(
                t(a), t(b), [2.0], include_background=True, spacing=spacing))
        assert hd95(a, b, spacing=sp) == pytest.approx(ref_h, abs=1e-4)
        assert nsd(a, b, tolerance=2.0, spacing=sp) == pytest.approx(ref_n, abs=1e-6)


def test_surface_metric_empty_mask_conventions():
    e = np.zeros((6, 6), bool)
    f = e.copy()
    f[2:4, 2:4] = True
    assert hd95(e, e) == 0.0 and nsd(e, e) == 1.0
    assert hd95(e, f) == float("inf") and hd95(f, e) == float("inf")
    assert nsd(e, f) == 0.0 and nsd(f, e) == 0.0


def test_surface_metrics_reject_bad_arguments():
    a = np.ones((4, 4), bool)
    with pytest.raises(ValueError, match="shape"):
        hd95(a, np.ones((4, 5), bool))
    with pytest.raises(ValueError, match="spacing"):
        hd95(a, a, spacing=(1.0, 0.0))
    with pytest.raises(ValueError, match="tolerance"):
        nsd(a, a, tolerance=-1)


def test_evaluate_masks_gives_one_row_per_image():
    g = np.zeros((20, 20), bool)
    g[5:10, 5:10] = True
    p = np.roll(g, 2, axis=0)
    rows = evaluate_masks([g, p, np.zeros_like(g)], [g, g, g], ids=["same", "shifted", "empty"])
    assert [r["id"] for r in rows] == ["same", "shifted", "empty"]
    assert rows[0]["dice"] == 1.0 and rows[0]["hd95"] == 0.0 and rows[0]["nsd"] == 1.0
    assert rows[1]["dice"] == pytest.approx(dice(p, g)) and rows[1]["hd95"] == pytest.approx(2.0)
    assert rows[2]["hd95"] == float("inf") and rows[2]["nsd"] == 0.0 and rows[2]["pred_area"] == 0
    assert rows[1]["gt_area"] == 25
    with pytest.raises(ValueError, match="shifted"):
        evaluate_masks([g, p[:, :10]], [g, g], ids=["same", "shifted"])
    with pytest.raises(ValueError, match="2 predicted masks but 1"):
        evaluate_masks([g, g], [g])


def test_summary_bootstrap_interval():
    rng = np.random.default_rng(0)
    rows = [{"dice": v} for v in rng.beta(8, 2, size=40)]
    s = summarize(rows, metrics=("dice",), n_boot=2000, seed=1)["dice"]
    values = np.array([r["dice"] for r in rows])
    assert s["mean"] == pytest.approx(values.mean())
    assert s["std"] == pytest.approx(values.std(ddof=1))
    assert s["ci_low"] < s["mean"] < s["ci_high"]
    assert s["n"] == 40 and s["n_excluded"] == 0
    # reproducible with the seed, different with another seed
    assert summarize(rows, metrics=("dice",), n_boot=2000, seed=1)["dice"] == s
    other = summarize(rows, metrics=("dice",), n_boot=2000, seed=2)["dice"]
    assert (other["ci_low"], other["ci_high"]) != (s["ci_low"], s["ci_high"])
    # a wider confidence level gives a wider interval; more images a narrower one
    wide = summarize(rows, metrics=("dice",), n_boot=2000, ci=0.99, seed=1)["dice"]
    assert wide["ci_high"] - wide["ci_low"] > s["ci_high"] - s["ci_low"]
    many = [{"dice": v} for v in rng.beta(8, 2, size=640)]
    m = summarize(many, metrics=("dice",), n_boot=2000, seed=1)["dice"]
    assert m["ci_high"] - m["ci_low"] < 0.5 * (s["ci_high"] - s["ci_low"])


def test_summary_excludes_and_counts_infinite_hd95():
    rows = [{"hd95": 1.0}, {"hd95": 3.0}, {"hd95": float("inf")}, {"hd95": float("nan")}]
    s = summarize(rows, metrics=("hd95",), n_boot=200)["hd95"]
    assert s["mean"] == pytest.approx(2.0)
    assert s["n"] == 2 and s["n_excluded"] == 2 and s["n_infinite"] == 1
    only_inf = summarize([{"hd95": float("inf")}], metrics=("hd95",), n_boot=50)["hd95"]
    assert np.isnan(only_inf["mean"]) and only_inf["n"] == 0 and only_inf["n_infinite"] == 1
    with pytest.raises(KeyError, match="nsd"):
        summarize(rows, metrics=("nsd",))


def _write_pairs(tmp_path, names, size=(16, 16), gt_suffix=""):
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    rng = np.random.default_rng(0)
    masks = {}
    for n in names:
        g = rng.random(size) < 0.3
        masks[n] = g
        write_mask(gt_dir / f"{n}{gt_suffix}.png", g)
        write_mask(pred_dir / f"{n}.png", g)
    return pred_dir, gt_dir, masks


def test_evaluate_folders_pairs_by_stem(tmp_path):
    pred_dir, gt_dir, masks = _write_pairs(tmp_path, ["b", "a", "c"], gt_suffix="_mask")
    write_mask(pred_dir / "c.png", np.zeros((16, 16), bool))  # a wrong (empty) prediction
    (gt_dir / "notes.txt").write_text("not a mask")
    rows, pairs = evaluate_folders(pred_dir, gt_dir)
    assert [r["id"] for r in rows] == ["a", "b", "c"] and pairs.ignored == ["masks/notes.txt"]
    by_id = {r["id"]: r for r in rows}
    assert by_id["a"]["dice"] == 1.0 and by_id["b"]["nsd"] == 1.0
    assert by_id["c"]["dice"] == 0.0 and by_id["c"]["gt_area"] == int(masks["c"].sum())


def test_evaluate_folders_reports_missing_and_extra_files(tmp_path):
    pred_dir, gt_dir, _ = _write_pairs(tmp_path, ["a", "b", "c"])
    (pred_dir / "b.png").unlink()  # a ground truth without a prediction
    write_mask(pred_dir / "zz.png", np.ones((16, 16), bool))  # a prediction without ground truth
    with pytest.raises(PairingError) as err:
        evaluate_folders(pred_dir, gt_dir)
    msg = str(err.value)
    assert "1 prediction(s) without a ground-truth mask: zz" in msg
    assert "1 ground-truth mask(s) without a prediction: b" in msg
    rows, pairs = evaluate_folders(pred_dir, gt_dir, strict=False)
    assert [r["id"] for r in rows] == ["a", "c"]
    assert pairs.missing_predictions == ["b"] and pairs.missing_ground_truth == ["zz"]


def test_evaluate_folders_errors_name_the_files(tmp_path):
    pred_dir, gt_dir, _ = _write_pairs(tmp_path, ["a"])
    write_mask(pred_dir / "a.png", np.zeros((16, 12), bool))
    with pytest.raises(ValueError, match=r"a\.png.*16x12.*16x16"):
        evaluate_folders(pred_dir, gt_dir)
    with pytest.raises(FileNotFoundError, match="prediction folder"):
        pair_mask_folders(tmp_path / "nope", gt_dir)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PairingError, match="no prediction pairs"):
        pair_mask_folders(empty, gt_dir, strict=False)
