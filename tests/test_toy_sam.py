"""The shipped toy SAM: loads offline, follows box prompts on held-out phantoms, trains."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch

from medclipsam.data.phantom import TASKS, PhantomDataset, generate_sample
from medclipsam.metrics import dice
from medclipsam.models.sam import load_sam
from medclipsam.models.toy_sam import (
    TOY_SAM_CONFIG,
    TOY_SAM_PATH,
    component_boxes,
    evaluate_toy_sam,
    off_target_box,
    predict_boxes,
    train_toy_sam,
)


@pytest.fixture(scope="module")
def predictor():
    # One thread: this small model gains nothing from more, and a second thread competing with
    # other work on a 2-core runner makes it several times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_sam("toy", device="cpu")
    torch.set_num_threads(threads)


def _held_out(task: str, n: int, seed: int = 5):
    """The first ``n`` non-normal samples of the test split."""
    ds = PhantomDataset(task, 4 * n + 10, seed, 256, "test")
    return [ds[i] for i in range(len(ds)) if ds.label_of(i) != "normal"][:n]


def test_toy_checkpoint_is_small_and_loads_offline_into_float32(monkeypatch):
    size = TOY_SAM_PATH.stat().st_size
    print(f"toy SAM file: {size / 1e6:.2f} MB")
    assert size < 8_000_000

    def no_network(*args, **kwargs):
        raise OSError("network access attempted while loading the toy SAM")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    pred = load_sam("toy", device="cpu")
    model = pred.model
    assert model.image_encoder.img_size == TOY_SAM_CONFIG["image_size"]
    assert all(p.dtype == torch.float32 for p in model.parameters())
    meta = torch.load(TOY_SAM_PATH, map_location="cpu", weights_only=True)["meta"]
    assert meta["steps"] > 0 and "phantom" in meta["trained_on"]


def test_ground_truth_boxes_segment_held_out_phantoms(predictor):
    dice = evaluate_toy_sam(predictor, n_per_task=4, seed=5)
    print("toy SAM Dice with ground-truth boxes (4 held-out images per task):", dice)
    assert set(dice) == set(TASKS)
    for task, d in dice.items():
        assert d >= 0.8, f"{task}: mean Dice {d:.3f} < 0.8"


def test_a_box_on_the_wrong_place_does_not_find_the_target(predictor):
    right, wrong = [], []
    for task in TASKS:
        for s in _held_out(task, 2, seed=6):
            predictor.set_image(s.rgb)
            boxes = component_boxes(s.mask)
            right.append(dice(predict_boxes(predictor, np.stack(boxes)), s.mask))
            far = off_target_box(s.mask, boxes[0])
            x0, y0, x1, y1 = far.astype(int)
            assert s.mask[y0 : y1 + 1, x0 : x1 + 1].sum() <= 0.05 * (x1 - x0 + 1) * (y1 - y0 + 1), (
                "no place for an off-target box"
            )
            wrong_mask = predict_boxes(predictor, far[None])
            wrong.append(dice(wrong_mask, s.mask))
    print(f"Dice right boxes {np.round(right, 3)}, wrong boxes {np.round(wrong, 3)}")
    assert np.mean(wrong) < 0.2
    assert np.mean(right) - np.mean(wrong) > 0.5


def test_masks_have_the_shape_of_a_non_square_image(predictor):
    for task in TASKS:
        s = generate_sample(task, 2**34 + 17, (200, 300), None if task == "xray" else
                            ("malignant" if task == "breast" else "meningioma"))
        predictor.set_image(s.rgb)
        boxes = component_boxes(s.mask)
        masks, scores, low = predictor.predict(box=boxes[0], multimask_output=False)
        assert masks.shape == (1, 200, 300) and scores.shape == (1,)
        union = predict_boxes(predictor, np.stack(boxes))
        assert union.shape == (200, 300)
        d = dice(union, s.mask)
        print(f"{task} (200 x 300): Dice {d:.3f}")
        assert d > 0.6


def test_component_boxes_one_per_lung_and_none_for_specks():
    xray = generate_sample("xray", 123, 256)
    boxes = component_boxes(xray.mask)
    assert len(boxes) == 2 and boxes[0][2] < boxes[1][0]  # left lung box ends before the right
    mask = np.zeros((64, 64), bool)
    mask[10:40, 10:40] = True
    mask[60, 60] = True  # a one-pixel speck
    (box,) = component_boxes(mask)
    assert box.tolist() == [10, 10, 39, 39]
    assert component_boxes(np.zeros((8, 8), bool)) == []


def test_training_writes_a_checkpoint_that_load_sam_reads(tmp_path):
    out = tmp_path / "tiny.pt"
    threads = torch.get_num_threads()
    info = train_toy_sam(out, steps=2, batch_size=3, n_train_per_task=1, warmup=1,
                         threads=1, log=lambda _: None)
    assert info["steps"] == 2 and np.isfinite(info["final_loss"])
    assert torch.get_num_threads() == threads  # the thread setting is restored
    pred = load_sam(out, device="cpu")
    s = _held_out("brain", 1)[0]
    pred.set_image(s.rgb)
    masks, _, _ = pred.predict(box=component_boxes(s.mask)[0], multimask_output=False)
    assert masks.shape == (1, 256, 256)
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.pt"]  # nothing half-written left
    with pytest.raises(ValueError, match="positive"):
        train_toy_sam(tmp_path / "x.pt", steps=0)
