"""Stage 4 (weak supervision): a Residual UNet trained on (pseudo-)label files of phantom images."""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from medclipsam.config import WeakConfig
from medclipsam.data.datasets import PairingError
from medclipsam.data.io import read_image, read_mask, write_image, write_mask
from medclipsam.data.phantom import write_phantom_folder
from medclipsam.metrics import dice
from medclipsam.segmenter import (
    build_unet,
    ensemble_uncertainty,
    load_segmenter,
    predict_masks,
    predict_probabilities,
    select_confident,
)
from medclipsam.weak import train_segmenter

SPLITS = {"train": 0.6, "val": 4 / 30, "test": 1 - 0.6 - 4 / 30}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> tuple[Path, dict[str, list[str]]]:
    """30 breast phantoms at 80 x 80 (18 train, 4 val, 8 test); trained at 64 x 64."""
    root = write_phantom_folder(tmp_path_factory.mktemp("breast"), "breast", 30, seed=0, size=80,
                                splits=SPLITS)
    splits = json.loads((root / "splits.json").read_text())["splits"]
    assert [len(splits[k]) for k in ("train", "val", "test")] == [18, 4, 8]
    return root, splits


def _cfg(out: Path, **kw) -> WeakConfig:
    base = dict(out_dir=str(out), epochs=30, lr=1e-2, size=64, channels=(8, 16, 32),
                strides=(2, 2), batch_size=8, patience=None, progress=False, device="cpu")
    base.update(kw)
    return WeakConfig(**base)


def _weights(path: str | Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _no_seconds(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


def _test_set(root: Path, stems: list[str]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    return ([read_image(root / "images" / f"{s}.png", mode="grey") for s in stems],
            [read_mask(root / "masks" / f"{s}.png") for s in stems])


@pytest.fixture(scope="module")
def trained(phantom, tmp_path_factory) -> dict:
    root, splits = phantom
    out = tmp_path_factory.mktemp("trained")
    cfg = _cfg(out)
    result = train_segmenter(root / "images", root / "masks", config=cfg,
                             stems={"train": splits["train"], "val": splits["val"]})
    return {"result": result, "config": cfg, "out": out}


def test_trained_network_beats_untrained_and_empty_on_held_out_images(phantom, trained):
    root, splits = phantom
    images, gts = _test_set(root, splits["test"])
    model, cfg = load_segmenter(trained["result"]["model_path"], device="cpu")
    learned = np.mean([dice(p, g) for p, g in zip(predict_masks(model, images, cfg), gts)])
    torch.manual_seed(0)
    untrained = build_unet(cfg).eval()
    raw = np.mean([dice(p, g) for p, g in zip(predict_masks(untrained, images, cfg), gts)])
    empty = np.mean([dice(np.zeros_like(g), g) for g in gts])
    assert learned > max(raw, empty) + 0.2, (learned, raw, empty)


def test_training_writes_logs_checkpoints_and_best_model(trained):
    res, out = trained["result"], trained["out"]
    assert res["epochs_done"] == 30 and not res["interrupted"]
    assert len(res["checkpoints"]) == 30
    assert [Path(p).name for p in res["checkpoints"]][:2] == ["epoch_001.pt", "epoch_002.pt"]
    with open(out / "log.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["epoch", "train_loss", "val_dice", "lr", "seconds"]
    assert [int(r["epoch"]) for r in rows] == list(range(1, 31))
    assert float(rows[-1]["lr"]) < float(rows[0]["lr"]) == pytest.approx(1e-2)  # cosine decay
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    log = json.loads((out / "log.json").read_text())
    assert log["best_epoch"] == res["best_epoch"] and log["config"]["size"] == 64
    dices = [r["val_dice"] for r in res["history"]]
    assert res["best_val_dice"] == max(dices) and dices.index(max(dices)) + 1 == res["best_epoch"]
    saved = torch.load(out / "model.pt", map_location="cpu", weights_only=True)
    assert saved["config"]["channels"] == [8, 16, 32]
    best_ckpt = out / "checkpoints" / f"epoch_{res['best_epoch']:03d}.pt"
    assert _same(saved["model"], _weights(best_ckpt))


def test_load_and_predict_at_original_sizes(trained, phantom):
    root, splits = phantom
    model, cfg = load_segmenter(trained["result"]["model_path"], device="cpu")
    assert isinstance(cfg, WeakConfig) and cfg.channels == (8, 16, 32) and not model.training
    again, _ = load_segmenter(trained["result"]["model_path"], device="cpu")
    assert _same(model.state_dict(), again.state_dict())
    grey = read_image(root / "images" / f"{splits['test'][0]}.png", mode="grey")
    rgb = np.repeat(grey[:, :, None], 3, axis=2)[:50, :70]
    images = [grey, rgb, np.zeros((33, 97), np.uint8)]
    probs = predict_probabilities(model, images, cfg)
    assert [p.shape for p in probs] == [(80, 80), (50, 70), (33, 97)]
    assert all(p.dtype == np.float32 and 0 <= p.min() and p.max() <= 1 for p in probs)
    masks = predict_masks(model, images, cfg, threshold=0.5)
    assert all(m.dtype == bool for m in masks) and np.array_equal(masks[0], probs[0] >= 0.5)
    # a colour copy is read as grey: same prediction as the grey image cropped the same way
    cropped = predict_probabilities(model, [grey[:50, :70]], cfg)[0]
    np.testing.assert_allclose(probs[1], cropped, atol=1e-5)
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        load_segmenter(trained["out"] / "nothing.pt")
    (trained["out"] / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        load_segmenter(trained["out"] / "junk.pt")


def test_interrupted_then_resumed_equals_uninterrupted(phantom, tmp_path):
    root, splits = phantom
    stems = {"train": splits["train"][:10], "val": splits["val"]}
    full = train_segmenter(root / "images", root / "masks",
                           config=_cfg(tmp_path / "full", epochs=4), stems=stems)
    part = train_segmenter(root / "images", root / "masks",
                           config=_cfg(tmp_path / "part", epochs=4, stop_after_epochs=2),
                           stems=stems)
    assert part["interrupted"] and part["epochs_done"] == 2
    with pytest.raises(FileExistsError, match="resume"):
        train_segmenter(root / "images", root / "masks", config=_cfg(tmp_path / "part", epochs=4),
                        stems=stems)
    done = train_segmenter(root / "images", root / "masks",
                           config=_cfg(tmp_path / "part", epochs=4), stems=stems, resume=True)
    assert not done["interrupted"] and done["epochs_done"] == 4
    assert _no_seconds(done["history"]) == _no_seconds(full["history"])
    assert done["best_epoch"] == full["best_epoch"]
    for name in ("model.pt", "checkpoints/epoch_004.pt"):
        assert _same(_weights(tmp_path / "full" / name), _weights(tmp_path / "part" / name)), name
    a = torch.load(tmp_path / "full/checkpoints/epoch_004.pt", weights_only=True)["optimizer"]
    b = torch.load(tmp_path / "part/checkpoints/epoch_004.pt", weights_only=True)["optimizer"]
    assert all(torch.equal(a["state"][k]["exp_avg_sq"], b["state"][k]["exp_avg_sq"])
               for k in a["state"])
    # resuming a finished run trains nothing more
    again = train_segmenter(root / "images", root / "masks",
                            config=_cfg(tmp_path / "part", epochs=4), stems=stems, resume=True)
    assert again["epochs_done"] == 4 and len(again["history"]) == 4


class _OpenAudit:
    """Paths opened or listed while active (``sys.addaudithook`` cannot be removed: it idles)."""

    hooked = False
    active: list[str] | None = None

    def __enter__(self) -> list[str]:
        if not _OpenAudit.hooked:
            sys.addaudithook(_OpenAudit._hook)
            _OpenAudit.hooked = True
        _OpenAudit.active = []
        return _OpenAudit.active

    def __exit__(self, *exc) -> None:
        _OpenAudit.active = None

    @staticmethod
    def _hook(event: str, args: tuple) -> None:
        seen = _OpenAudit.active
        if seen is None or event not in ("open", "os.listdir", "os.scandir") or not args:
            return
        if isinstance(args[0], (str, bytes, Path)):
            path = args[0].decode() if isinstance(args[0], bytes) else str(args[0])
            seen.append(str(Path(path).resolve()))


def test_weak_training_never_reads_ground_truth(tmp_path):
    root = write_phantom_folder(tmp_path / "data", "breast", 12, seed=3, size=64,
                                splits={"train": 2 / 3, "val": 1 / 3})
    splits = json.loads((root / "splits.json").read_text())["splits"]
    gt = (root / "masks").resolve()
    pseudo = tmp_path / "pseudo"
    for s in splits["train"] + splits["val"]:  # pseudo-labels: the truth shifted by 5 px
        write_mask(pseudo / f"{s}.png", np.roll(read_mask(gt / f"{s}.png"), (5, 5), axis=(0, 1)))
    stems = {"train": splits["train"], "val": splits["val"]}
    with _OpenAudit() as seen:
        first = train_segmenter(root / "images", pseudo, config=_cfg(tmp_path / "a", epochs=3),
                                stems=stems)
    assert any(p.startswith(str(pseudo.resolve())) for p in seen)  # the audit sees the reads
    leaked = [p for p in seen if p == str(gt) or p.startswith(str(gt) + "/")]
    assert leaked == []
    with _OpenAudit() as seen:  # control: reading a ground-truth file is caught
        read_mask(gt / f"{splits['val'][0]}.png")
    assert any(p.startswith(str(gt)) for p in seen)
    # without the ground-truth folder the run is bit-identical
    shutil.rmtree(gt)
    second = train_segmenter(root / "images", pseudo, config=_cfg(tmp_path / "b", epochs=3),
                             stems=stems)
    assert _same(_weights(first["model_path"]), _weights(second["model_path"]))
    assert _no_seconds(first["history"]) == _no_seconds(second["history"])


def test_early_stopping_keeps_the_best_epoch(phantom, tmp_path):
    root, splits = phantom
    # validation pseudo-labels that disagree more with the network the more it learns
    inverted = tmp_path / "inverted"
    for s in splits["val"]:
        write_mask(inverted / f"{s}.png", ~read_mask(root / "masks" / f"{s}.png"))
    res = train_segmenter(root / "images", root / "masks", root / "images", inverted,
                          _cfg(tmp_path / "out", epochs=15, patience=2, min_epochs=0),
                          stems={"train": splits["train"], "val": splits["val"]})
    dices = [r["val_dice"] for r in res["history"]]
    assert res["epochs_done"] < 15
    assert res["epochs_done"] == res["best_epoch"] + 2  # stopped after 2 epochs without progress
    assert res["best_val_dice"] == max(dices) > max(dices[res["best_epoch"]:])
    assert len(res["checkpoints"]) == res["epochs_done"]
    best = _weights(tmp_path / "out" / "checkpoints" / f"epoch_{res['best_epoch']:03d}.pt")
    assert _same(_weights(res["model_path"]), best)
    assert not _same(_weights(res["model_path"]), _weights(res["checkpoints"][-1]))


def test_corrupted_pseudo_labels_give_a_less_certain_ensemble(phantom, tmp_path):
    root, splits = phantom
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:80, :80]
    scores = {}
    for kind in ("clean", "corrupted"):
        folder = tmp_path / kind
        for i, s in enumerate(splits["train"]):
            mask = read_mask(root / "masks" / f"{s}.png")
            if kind == "corrupted" and i % 2 == 0:  # half: a random disk somewhere else
                cy, cx = rng.uniform(12, 68, 2)
                mask = (yy - cy) ** 2 + (xx - cx) ** 2 < rng.uniform(6, 12) ** 2
            write_mask(folder / f"{s}.png", mask)
        cfg = _cfg(tmp_path / f"out_{kind}", epochs=40)
        res = train_segmenter(root / "images", folder, config=cfg, stems={"train": splits["train"]})
        assert res["best_epoch"] == 40  # no validation set: the last epoch
        images, _ = _test_set(root, splits["test"])
        means, scores[kind] = ensemble_uncertainty(res["checkpoints"][-4:], images, cfg)
        assert [m.shape for m in means] == [(80, 80)] * 8 and scores[kind].shape == (8,)
        assert np.all((scores[kind] >= 0) & (scores[kind] <= 1))
    clean, corrupted = scores["clean"], scores["corrupted"]
    assert corrupted.mean() > clean.mean() + 0.05, (clean, corrupted)
    assert (corrupted > clean).sum() >= 6, (clean, corrupted)


def test_ensemble_of_one_model_is_its_own_prediction(trained, phantom):
    root, splits = phantom
    images, _ = _test_set(root, splits["test"][:3])
    model, cfg = load_segmenter(trained["result"]["model_path"], device="cpu")
    means, scores = ensemble_uncertainty([trained["result"]["model_path"]], images, cfg)
    for m, p in zip(means, predict_probabilities(model, images, cfg)):
        np.testing.assert_allclose(m, p, atol=1e-6)
    with pytest.raises(ValueError, match="at least one"):
        ensemble_uncertainty([], images, cfg)


def test_select_confident_drops_the_most_uncertain():
    ids = ["a", "b", "c", "d", "e"]
    scores = [0.1, 0.9, 0.5, 0.8, 0.2]
    assert select_confident(scores, ids, 0.4) == ["a", "c", "e"]
    assert select_confident(scores, ids, 0.0) == ids
    assert select_confident(scores, ids, 1.0) == []
    assert select_confident(scores, ids, 0.3) == ["a", "c", "d", "e"]  # floor(1.5) = 1 dropped
    tied = [0.5, 0.9, 0.5, 0.9, 0.5]  # ties: the larger id goes first, whatever the order
    assert select_confident(tied, ids, 0.2) == ["a", "b", "c", "e"]
    assert select_confident(tied[::-1], ids[::-1], 0.2) == ["e", "c", "b", "a"]
    with pytest.raises(ValueError, match="scores"):
        select_confident([0.1], ids, 0.2)
    with pytest.raises(ValueError, match="drop_fraction"):
        select_confident(scores, ids, 1.5)


def test_bad_folders_give_clear_errors_and_write_nothing(phantom, tmp_path):
    root, splits = phantom
    out = tmp_path / "out"
    cfg = _cfg(out, epochs=1)
    with pytest.raises(FileNotFoundError, match="no_masks"):
        train_segmenter(root / "images", tmp_path / "no_masks", config=cfg)
    with pytest.raises(FileNotFoundError, match="no_images"):
        train_segmenter(tmp_path / "no_images", root / "masks", config=cfg)
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    for s in splits["train"][:3]:
        shutil.copy(root / "images" / f"{s}.png", images / f"{s}.png")
        write_mask(masks / f"{s}.png", read_mask(root / "masks" / f"{s}.png"))
    write_image(images / "lonely.png", np.zeros((80, 80), np.uint8))
    with pytest.raises(PairingError, match="lonely"):
        train_segmenter(images, masks, config=cfg)
    with pytest.raises(PairingError, match="lonely"):
        train_segmenter(images, masks, config=cfg, stems={"train": ["lonely"]})
    with pytest.raises(ValueError, match="val_masks"):
        train_segmenter(images, masks, images, None, config=cfg)
    write_mask(masks / "lonely.png", np.zeros((40, 40), bool))
    with pytest.raises(ValueError, match=r"lonely.png: mask is 40x40 .* is 80x80"):
        train_segmenter(images, masks, config=cfg)
    with pytest.raises(ValueError, match="size"):
        train_segmenter(images, masks, config=_cfg(out, size=66))
    assert not out.exists()
