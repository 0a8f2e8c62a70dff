"""SamSession over LiteMedSAM on phantom images: one embedding per image, batched prompts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from official_litemedsam import component_boxes
from scipy import ndimage as ndi

from medclipsam.data.phantom import PhantomDataset
from medclipsam.metrics import dice
from medclipsam.models.sam import load_sam
from medclipsam.prompting import make_sam_prompts
from medclipsam.sam_session import SamSession


@pytest.fixture(scope="module")
def predictor():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # a small model; more threads only contend on a busy CPU
    yield load_sam("litemedsam", device="cpu")
    torch.set_num_threads(old)


@pytest.fixture
def session(predictor):
    with SamSession(predictor) as s:
        yield s


def _samples(task, n):
    ds = PhantomDataset(task, 3 * n + 4, seed=0, size=256, split="test")
    return [ds[i] for i in range(len(ds)) if ds.label_of(i) != "normal"][:n]


def _blurred(mask):
    s = ndi.gaussian_filter(mask.astype(float), 4)
    return s / s.max()


@pytest.mark.parametrize("task", ["breast", "brain"])
def test_ground_truth_box_gives_the_lesion(session, task):
    for s in _samples(task, 2):
        session.set_image(s.image)  # grey uint8: converted to RGB for SAM
        (box,) = component_boxes(s.mask)[:1]
        r = session.predict(box)
        assert r.mask.shape == s.mask.shape and r.mask.dtype == bool
        assert r.masks.shape == (1, *s.mask.shape) and r.low_res_logits.shape == (1, 1, 256, 256)
        assert dice(r.mask, s.mask) > 0.85
        assert 0 < r.score <= 1.5


def test_two_boxes_in_one_call_equal_the_union_of_single_calls(session):
    (s,) = _samples("xray", 1)
    session.set_image(s.rgb)
    boxes = np.stack(component_boxes(s.mask))
    assert boxes.shape == (2, 4)
    both = session.predict(boxes)
    singles = [session.predict(b) for b in boxes]
    union = singles[0].mask | singles[1].mask
    # One batched call and two single calls run differently shaped matrix products, whose
    # rounding depends on the CPU's kernels: the masks agree up to pixels sitting on SAM's
    # threshold, not necessarily bit for bit.
    assert (both.mask != union).mean() < 1e-3
    assert (both.masks[0] != singles[0].mask).mean() < 1e-3
    assert both.scores == pytest.approx([r.scores[0] for r in singles], abs=1e-5)
    assert dice(both.mask, s.mask) > 0.9
    best = session.predict(boxes, union=False)  # the best-scoring lung alone
    assert np.array_equal(best.mask, both.masks[int(np.argmax(both.scores))])
    assert session.encoder_calls == 1


def test_the_embedding_is_computed_once_per_image(predictor):
    a, b = _samples("breast", 2)
    with SamSession(predictor) as sess:
        assert sess.encoder_calls == 0
        assert sess.set_image(a.image) is True
        assert sess.encoder_calls == 1
        box = component_boxes(a.mask)[0]
        m1 = sess.predict(box).mask
        sess.predict(box + np.array([-5, -5, 5, 5]))
        sess.predict(points=[[box[0] + 3, box[1] + 3]], point_labels=[1], multimask=True)
        assert sess.encoder_calls == 1  # new prompts, same embedding
        # the same pixels again (as RGB, or as floats in [0, 1]) reuse the embedding
        assert sess.set_image(a.rgb) is False and sess.set_image(a.image / 255.0) is False
        assert sess.encoder_calls == 1
        sess.set_image(b.image)
        assert sess.encoder_calls == 2  # a new image is encoded
        sess.set_image(a.image)
        assert sess.encoder_calls == 3
        assert np.array_equal(sess.predict(box).mask, m1)
        # someone else changes the predictor's image: the session notices
        predictor.set_image(b.rgb)
        with pytest.raises(RuntimeError, match="changed outside"):
            sess.predict(box)
    n = predictor.model.image_encoder._forward_hooks
    assert len(n) == 0  # the counting hook is gone after the session


def test_multimask_keeps_the_mask_with_the_highest_predicted_iou(session, predictor):
    (s,) = _samples("brain", 1)
    session.set_image(s.image)
    ys, xs = np.nonzero(s.mask)
    pt = np.array([[xs.mean(), ys.mean()]])
    r = session.predict(points=pt, point_labels=[1], multimask=True)
    masks, scores, _ = predictor.predict(point_coords=pt, point_labels=np.array([1]),
                                         multimask_output=True)
    k = int(np.argmax(scores))
    assert r.choice.tolist() == [k]
    assert r.scores[0] == pytest.approx(scores[k], abs=1e-5)
    assert np.array_equal(r.masks[0], masks[k])


def test_sam_prompts_from_a_saliency_map(session):
    (s,) = _samples("xray", 1)
    session.set_image(s.image)
    boxes = make_sam_prompts(_blurred(s.mask), box_mode="per_component", n_components=2)
    assert boxes.ok and boxes.n_sam_prompts == 2
    with_boxes = dice(session.predict_sam_prompts(boxes).mask, s.mask)
    assert with_boxes > 0.9
    pts = make_sam_prompts(_blurred(s.mask), box_mode="per_component", n_components=2,
                       mode="points", points=3, negatives=1)
    # LiteMedSAM was trained with boxes only: points alone give a poorer mask
    points_only = session.predict_sam_prompts(pts).mask
    assert points_only.shape == s.mask.shape and dice(points_only, s.mask) < with_boxes
    both = make_sam_prompts(_blurred(s.mask), box_mode="per_component", n_components=2,
                        mode="box+points", points=2, negatives=1)
    assert dice(session.predict_sam_prompts(both).mask, s.mask) > 0.75
    fallback = make_sam_prompts(np.zeros(s.mask.shape))
    assert "whole_image_box" in fallback.flags
    assert session.predict_sam_prompts(fallback).mask.shape == s.mask.shape
    with pytest.raises(ValueError, match="prompts were made for"):
        session.predict_sam_prompts(make_sam_prompts(np.zeros((64, 64))))


def test_bad_calls_fail_clearly(predictor):
    with SamSession(predictor) as sess:
        with pytest.raises(RuntimeError, match="set_image"):
            sess.predict([0, 0, 10, 10])
        sess.set_image(np.zeros((64, 80), np.uint8))
        with pytest.raises(ValueError, match="give boxes, points"):
            sess.predict()
        with pytest.raises(ValueError, match="x1 >= x0"):
            sess.predict([10, 0, 5, 10])
        with pytest.raises(ValueError, match="2 boxes but 1 point groups"):
            sess.predict([[0, 0, 5, 5], [6, 6, 9, 9]], points=[[1, 1]], point_labels=[1])
        with pytest.raises(ValueError, match="point_labels"):
            sess.predict(points=[[1, 1]])
    with pytest.raises(TypeError, match="SamPredictor"):
        SamSession(object())
