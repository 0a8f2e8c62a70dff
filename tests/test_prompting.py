"""Saliency map -> coarse mask -> components -> box and point prompts, on hand-made maps."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from scipy import ndimage as ndi

from medclipsam.coarse import CrfParams, coarse_mask, crf_mask, kmeans_threshold
from medclipsam.metrics import dice
from medclipsam.prompting import (
    boxes_from_mask,
    keep_largest_components,
    make_sam_prompts,
    sample_points,
    widen_boxes,
)
from medclipsam.vocab import POSTPROCESS_METHODS


def _disc(h, w, cy, cx, r):
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 < r**2


def _saliency_of(mask, blur=4.0, noise=0.1, seed=0):
    """A blurred, noisy map in [0, 1] that peaks on ``mask``."""
    rng = np.random.default_rng(seed)
    s = ndi.gaussian_filter(mask.astype(float), blur) + noise * rng.random(mask.shape)
    return (s - s.min()) / (s.max() - s.min())


@pytest.fixture
def blob_case():
    blob = _disc(96, 128, 50, 70, 22)
    rng = np.random.default_rng(1)
    image = (60 + 90 * blob + rng.normal(0, 8, blob.shape)).clip(0, 255).astype(np.uint8)
    return blob, _saliency_of(blob), image


@pytest.mark.parametrize("method", POSTPROCESS_METHODS)
def test_every_coarse_method_recovers_a_salient_blob(method, blob_case):
    blob, s, image = blob_case
    m = coarse_mask(s, method, image=image)
    assert m.dtype == bool and m.shape == blob.shape
    assert dice(m, blob) > 0.9


def test_crf_follows_the_image_edges():
    """The bilateral term pulls a blurred, shifted, noisy map onto the object in the image."""
    rng = np.random.default_rng(0)
    obj = _disc(128, 128, 64, 64, 30)
    off = _disc(128, 128, 70, 72, 30)
    s = np.clip(ndi.gaussian_filter(off.astype(float), 8) + 0.15 * rng.standard_normal(obj.shape),
                0, 1)
    image = (60 + 120 * obj + rng.normal(0, 5, obj.shape)).clip(0, 255).astype(np.uint8)
    flat = np.full(obj.shape, 128, np.uint8)
    with_edges, without = crf_mask(s, image), crf_mask(s, flat)
    assert dice(with_edges, obj) > dice(without, obj) + 0.1
    assert dice(with_edges, obj) > dice(s > 0.5, obj) + 0.05
    # more mean-field iterations follow the edges further; RGB and grey inputs agree
    assert dice(crf_mask(s, image, CrfParams(iterations=5)), obj) > 0.95
    assert np.array_equal(crf_mask(s, np.repeat(image[..., None], 3, 2)), with_edges)


def test_crf_needs_the_image_and_a_matching_size(blob_case):
    _, s, image = blob_case
    with pytest.raises(ValueError, match="needs the image"):
        coarse_mask(s, "crf")
    with pytest.raises(ValueError, match="saliency map is"):
        crf_mask(s, image[:-1])


def test_crf_without_the_package_says_how_to_install_it(monkeypatch, blob_case):
    _, s, image = blob_case
    monkeypatch.setitem(sys.modules, "pydensecrf", None)
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    with pytest.raises(ImportError, match=r'pip install "medclipsam\[crf\]".*method="kmeans"'):
        coarse_mask(s, "crf", image=image)
    assert coarse_mask(s, "kmeans").any()  # the other methods need nothing


def test_saliency_input_is_checked():
    s = np.random.default_rng(0).random((8, 8))
    with pytest.raises(ValueError, match="coloured image"):
        coarse_mask(np.repeat(s[..., None], 3, 2))
    with pytest.raises(ValueError, match=r"\[0, 1\].*normalise"):
        coarse_mask(s * 255)
    with pytest.raises(ValueError, match="NaN"):
        coarse_mask(np.full((4, 4), np.nan))
    with pytest.raises(ValueError, match="unknown method"):
        coarse_mask(s, "watershed")
    assert coarse_mask(s[None], "threshold").shape == (8, 8)  # (1, H, W) is a grey map


def test_kmeans_and_threshold_rules():
    v = np.array([0.0, 0.1, 0.1, 0.2, 0.7, 0.8, 0.9])
    t = kmeans_threshold(v)
    # centres 0.1 and 0.8: boundary at their midpoint; the high cluster is foreground
    assert t == pytest.approx(0.45)
    assert kmeans_threshold(np.full(5, 0.3)) is None
    s = v.reshape(1, -1)
    assert coarse_mask(s, "kmeans").tolist() == [[False] * 4 + [True] * 3]
    assert coarse_mask(s, "threshold", threshold=0.1).tolist() == [[False] * 3 + [True] * 4]
    assert not coarse_mask(np.full((4, 4), 0.5), "kmeans").any()
    assert not coarse_mask(np.full((4, 4), 0.5), "otsu").any()


def test_keep_largest_components_and_connectivity():
    m = np.zeros((12, 12), bool)
    m[0:4, 0:4] = True  # 16 px
    m[6:9, 6:9] = True  # 9 px
    m[11, 0:2] = True  # 2 px
    big = np.zeros_like(m)
    big[0:4, 0:4] = True
    assert np.array_equal(keep_largest_components(m, 1), big)
    assert keep_largest_components(m, 2).sum() == 25
    assert keep_largest_components(m, None).sum() == 27
    assert keep_largest_components(m, None, min_area=3).sum() == 25
    diag = np.eye(4, dtype=bool)  # touching only at corners
    assert keep_largest_components(diag, 1, connectivity=2).sum() == 4
    assert keep_largest_components(diag, 1, connectivity=1).sum() == 1
    assert not keep_largest_components(np.zeros((3, 3), bool)).any()


def test_boxes_from_two_blobs():
    m = np.zeros((20, 30), bool)
    m[2:6, 20:28] = True  # right blob, 32 px: x 20..27, y 2..5
    m[10:18, 3:8] = True  # left blob, 40 px: x 3..7, y 10..17
    assert boxes_from_mask(m, "largest").tolist() == [[3, 10, 7, 17]]
    assert boxes_from_mask(m, "per_component", n_components=2).tolist() == [
        [3, 10, 7, 17], [20, 2, 27, 5]]  # left to right
    assert boxes_from_mask(m, "per_component", n_components=1).tolist() == [[3, 10, 7, 17]]
    assert boxes_from_mask(m, "union", n_components=2).tolist() == [[3, 2, 27, 17]]
    assert boxes_from_mask(m, "largest", margin=5).tolist() == [[0, 5, 12, 19]]  # clipped
    one = np.zeros((5, 5), bool)
    one[2, 3] = True
    assert boxes_from_mask(one).tolist() == [[3, 2, 3, 2]]  # inclusive: a pixel is a point box
    assert boxes_from_mask(np.zeros((5, 5), bool)).shape == (0, 4)


def test_empty_or_flat_maps_give_a_flagged_whole_image_box():
    p = make_sam_prompts(np.zeros((40, 50)))
    assert p.boxes.tolist() == [[0, 0, 49, 39]]
    assert {"empty_saliency", "no_component", "whole_image_box"} <= set(p.flags)
    assert not p.ok
    p = make_sam_prompts(np.full((40, 50), 0.7), mode="points")
    assert p.boxes is None and p.points.tolist() == [[[24, 19]]] and p.point_labels.tolist() == [[1]]
    assert "fallback_point" in p.flags
    # contrast, but nothing above the threshold: no component, not an empty map
    s = np.zeros((40, 50))
    s[10, 30] = 0.2
    p = make_sam_prompts(s, postprocess="threshold", mode="box+points")
    assert "no_component" in p.flags and "empty_saliency" not in p.flags
    assert p.points.tolist() == [[[30, 10]]]  # the fallback point sits at the maximum


def test_make_prompts_on_a_blob(blob_case):
    blob, s, image = blob_case
    p = make_sam_prompts(s, image=image, postprocess="crf")
    assert p.ok and p.n_sam_prompts == 1 and p.points is None
    (x0, y0, x1, y1), = p.boxes
    rows, cols = np.nonzero(blob)
    assert abs(x0 - cols.min()) <= 2 and abs(x1 - cols.max()) <= 2
    assert abs(y0 - rows.min()) <= 2 and abs(y1 - rows.max()) <= 2


def test_two_lungs_give_two_boxes_and_aligned_point_groups():
    m = _disc(80, 100, 40, 25, 15) | _disc(80, 100, 40, 75, 12)
    s = _saliency_of(m, blur=2.0, noise=0.05)
    p = make_sam_prompts(s, box_mode="per_component", n_components=2, mode="box+points",
                     points=3, negatives=2)
    assert p.ok and p.boxes.shape == (2, 4) and p.points.shape == (2, 5, 2)
    assert p.boxes[0, 0] < p.boxes[1, 0]  # left lung first
    for box, pts, lbl in zip(p.boxes, p.points, p.point_labels):
        pos, neg = pts[lbl == 1], pts[lbl == 0]
        assert len(pos) == 3 and len(neg) == 2
        assert np.all((pos[:, 0] >= box[0]) & (pos[:, 0] <= box[2]))
        assert np.all((pos[:, 1] >= box[1]) & (pos[:, 1] <= box[3]))
        assert m[pos[:, 1].astype(int), pos[:, 0].astype(int)].all()
        assert not m[neg[:, 1].astype(int), neg[:, 0].astype(int)].any()
    one = make_sam_prompts(s, box_mode="largest", n_components=2)
    assert one.boxes.shape == (1, 4) and one.boxes[0, 0] < 20  # the larger, left lung
    union = make_sam_prompts(s, box_mode="union", n_components=2)
    assert union.boxes[0, 0] == p.boxes[0, 0] and union.boxes[0, 2] == p.boxes[1, 2]
    lone = make_sam_prompts(_saliency_of(_disc(80, 100, 40, 25, 15)), box_mode="per_component",
                        n_components=2)
    assert "fewer_components" in lone.flags and lone.boxes.shape == (1, 4)


def test_point_sampling_geometry_and_determinism():
    region = np.zeros((21, 31), bool)
    region[5:16, 10:21] = True  # an 11 x 11 square centred on (x=15, y=10)
    pts, lbl = sample_points(region, 1, 0, strategy="interior")
    assert pts.tolist() == [[15, 10]] and lbl.tolist() == [1]
    s = np.zeros(region.shape)
    s[6, 12] = 1.0
    pts, _ = sample_points(region, 2, 0, saliency=s, strategy="peak", min_distance=3)
    assert pts[0].tolist() == [12, 6]
    assert np.hypot(*(pts[1] - pts[0])) >= 3
    a = sample_points(region, 4, 6, strategy="random", seed=7)
    b = sample_points(region, 4, 6, strategy="random", seed=7)
    c = sample_points(region, 4, 6, strategy="random", seed=8)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    pts, lbl = a
    assert lbl.tolist() == [1] * 4 + [0] * 6
    grown = ndi.binary_dilation(region, iterations=5)
    assert region[pts[lbl == 1, 1].astype(int), pts[lbl == 1, 0].astype(int)].all()
    assert not grown[pts[lbl == 0, 1].astype(int), pts[lbl == 0, 0].astype(int)].any()
    # no room: fewer points, flagged by make_sam_prompts; short groups are padded with label -1
    two = np.zeros((10, 20))
    two[4, 4] = 1.0  # one pixel
    two[2:8, 10:16] = 1.0  # 36 pixels
    p = make_sam_prompts(two, postprocess="threshold", box_mode="per_component", n_components=2,
                     mode="points", points=3)
    assert "fewer_points" in p.flags and p.point_labels.tolist() == [[1, -1, -1], [1, 1, 1]]
    assert p.points[0, 0].tolist() == [4, 4]
    with pytest.raises(ValueError, match="needs the saliency"):
        sample_points(region, 1, strategy="peak")


def test_make_prompts_is_deterministic_by_seed(blob_case):
    _, s, _ = blob_case
    kw = dict(mode="points", points=4, negatives=3)
    a, b = make_sam_prompts(s, seed=3, **kw), make_sam_prompts(s, seed=3, **kw)
    assert np.array_equal(a.points, b.points)
    assert not np.array_equal(a.points, make_sam_prompts(s, seed=4, **kw).points)
    assert a.to_dict()["point_labels"] == [[1, 1, 1, 1, 0, 0, 0]]


def test_crf_accepts_a_read_only_image():
    from medclipsam.coarse import coarse_mask

    yy, xx = np.mgrid[:40, :40]
    sal = np.exp(-((yy - 20) ** 2 + (xx - 20) ** 2) / 50.0)
    image = (sal * 255).astype(np.uint8)
    image.flags.writeable = False  # e.g. np.asarray(PIL image)
    assert coarse_mask(sal, "crf", image=image)[20, 20]


def test_box_margin_widens_each_box_by_a_share_of_the_image_side():
    # two blobs of different sizes: each box grows by 0.05 x 120 = 6 px per side, clipped to the image
    m = np.zeros((100, 120), bool)
    m[10:30, 20:60] = True  # inclusive box x 20..59, y 10..29
    m[60:90, 105:119] = True  # next to the right edge
    kw = dict(postprocess="threshold", threshold=0.5, box_mode="per_component", n_components=2)
    pr = make_sam_prompts(m.astype(float), box_margin=0.05, **kw)
    own = make_sam_prompts(m.astype(float), **kw)
    for got, b in zip(pr.boxes, own.boxes):
        want = [max(b[0] - 6, 0), max(b[1] - 6, 0), min(b[2] + 6, 119), min(b[3] + 6, 99)]
        assert np.allclose(got, want)
    assert pr.boxes[0].tolist() == [14, 4, 65, 35] and pr.boxes[1][2] == 119  # clipped to the image
    assert np.array_equal(widen_boxes(own.boxes, 0.0, m.shape), own.boxes)
    with pytest.raises(ValueError, match="longer side"):
        widen_boxes(own.boxes, 0.6, m.shape)


def test_within_content_keeps_the_box_off_the_black_frame():
    # an ultrasound-like picture: grey content inside, a black frame 12 px wide around it; the map's
    # largest bright region lies on the frame (left edge), a smaller one on the content
    image = np.zeros((100, 120, 3), np.uint8)
    image[12:88, 12:108] = 90
    sal = np.zeros((100, 120))
    sal[20:80, 0:10] = 1.0  # 600 px on the frame
    sal[40:55, 60:80] = 0.9  # 300 px inside
    kw = dict(image=image, postprocess="threshold", threshold=0.5)
    plain = make_sam_prompts(sal, **kw)
    inside = make_sam_prompts(sal, within_content=True, **kw)
    assert plain.boxes[0].tolist() == [0, 20, 9, 79]  # the frame wins without the rule
    assert inside.boxes[0].tolist() == [60, 40, 79, 54]
    assert not inside.mask[:, :12].any()
    # the content is independent of the map: an image without a frame changes nothing
    bare = np.full((100, 120, 3), 90, np.uint8)
    assert make_sam_prompts(sal, image=bare, within_content=True, postprocess="threshold",
                            threshold=0.5).boxes[0].tolist() == [0, 20, 9, 79]
    with pytest.raises(ValueError, match="needs the image"):
        make_sam_prompts(sal, within_content=True, postprocess="threshold", threshold=0.5)
