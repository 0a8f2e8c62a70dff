"""Stage 4, weak supervision: a Residual UNet trained on pseudo-labels (or on labels).

The zero-shot masks of a training split become the training targets of an ordinary segmentation
network, which then segments unseen images. Choices:

* **Network and input.** The Residual UNet and how an image is prepared for it (grey [0, 1] by the
  package's one picture rule, resized, z-scored per image) live in :mod:`medclipsam.segmenter`,
  with prediction and the checkpoint-ensemble uncertainty.
* **Loss and optimiser.** soft Dice (MONAI ``DiceLoss(sigmoid=True, batch=True)``: one Dice over the
  whole batch, so images with an empty mask do not blow up) + ``BCEWithLogitsLoss``; AdamW;
  **cosine** decay of the learning rate per epoch from ``lr`` to ``lr / 100`` at ``epochs``
  (no warm-up).
* **Augmentation** (seeded by ``(seed, epoch)`` through a private ``torch.Generator``, so the
  same run gives the same batches whether it was interrupted or not): horizontal flip, rotation
  +-15 degrees, scale 0.85-1.15, shift +-5 %, gamma, contrast, brightness and Gaussian noise.
* **Validation** Dice is computed at the original resolution, against the masks of the
  validation folder only (for weak training those are pseudo-labels: the ground truth is never
  read). Dice of two empty masks is 1.
* **Checkpoints** ``out_dir/checkpoints/epoch_XXX.pt`` after every epoch (model, optimiser,
  scheduler, gradient scaler, epoch, best metric, RNG states, history, config), all readable with
  ``torch.load(weights_only=True)``. ``resume=True`` continues from the latest; on CPU the result is
  bit-identical to an uninterrupted run. ``out_dir/model.pt`` holds the best epoch's weights (by
  validation Dice; the last epoch when there is no validation set).
* **The loop, step by step.** :func:`train_segmenter` pairs and reads the data once, builds the
  network (:class:`_Run`), resumes if asked, then per epoch calls ``train_epoch``, ``validate``
  and ``end_epoch`` (log row, best model, checkpoint, logs). Checkpoints, resume checks, logs,
  mixed precision and the cosine schedule (:func:`medclipsam._utils.warmup_cosine`) are the
  scaffold fine-tuning uses too (:mod:`medclipsam.training`); Dice is :func:`medclipsam.metrics.dice`.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import nn

from ._utils import atomic_path, get_device, rng_state, set_rng_state
from .config import WeakConfig
from .data.datasets import PairingError, list_image_files, pair_by_stem
from .data.io import SizeMismatchError, file_stem, read_image, read_mask
from .metrics import dice
from .segmenter import (
    CHECKPOINT_FORMAT,
    MODEL_FORMAT,
    build_unet,
    predict_probabilities,
    resize_image,
    resize_mask,
    to_unit_grey,
    zscore,
)
from .training import (
    Checkpoints,
    autocast,
    autocast_dtype,
    check_same_settings,
    cosine_schedule,
    grad_scaler,
    progress_bar,
    restore_training_state,
    start_or_resume,
    training_state,
    write_json,
    write_table,
)

__all__ = ["latest_checkpoint", "train_segmenter"]

LOG_COLUMNS = ("epoch", "train_loss", "val_dice", "lr", "seconds")
_LR_FLOOR = 0.01  # the cosine schedule ends at lr * _LR_FLOOR
# fields that may differ between an interrupted run and its resumption
_FREE_FIELDS = {"out_dir", "progress", "stop_after_epochs", "device", "keep_checkpoints", "patience",
                "min_epochs"}

PathLike = str | Path


def _augment(x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random flip, rotation/scale/shift, gamma, contrast, brightness and noise (images in [0, 1])."""
    b = x.shape[0]
    dev = x.device

    def u(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return (lo + (hi - lo) * torch.rand(shape or (b,), generator=g)).to(dev)

    flip = u(0, 1) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    y = torch.where(flip[:, None, None, None], y.flip(-1), y)
    # affine: rotation, isotropic scale, shift (grid coordinates are in [-1, 1])
    angle = u(-15, 15) * math.pi / 180
    scale = u(0.85, 1.15)
    shift = u(-0.1, 0.1, b, 2)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                         torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    y = (F.grid_sample(y, grid, mode="bilinear", padding_mode="zeros", align_corners=False) > 0.5)
    y = y.to(x.dtype)
    # intensity
    gamma = torch.exp(u(-0.3, 0.3))[:, None, None, None]
    x = x.clamp(0, 1) ** gamma
    contrast = u(0.85, 1.15)[:, None, None, None]
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * contrast + mean + u(-0.08, 0.08)[:, None, None, None]
    sigma = u(0, 0.03)[:, None, None, None]
    noise = torch.randn(x.shape, generator=g).to(dev)
    return x + sigma * noise, y




# --------------------------------------------------------------------------------------------
# data


def _pairs(images_dir: PathLike, masks_dir: PathLike, stems: Sequence[str] | None,
           what: str) -> list[tuple[str, Path, Path]]:
    """(stem, image, mask) for every stem (all of the folder's when ``stems`` is None)."""
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"{images_dir}: {what} image folder not found")
    if not masks_dir.is_dir():
        raise FileNotFoundError(f"{masks_dir}: {what} mask folder not found")
    if stems is None:
        pairs, _ = pair_by_stem(images_dir, masks_dir, strict=True)
        return [(file_stem(i), i, m) for i, m in pairs]
    stems = [str(s) for s in stems]
    dup = sorted({s for s in stems if stems.count(s) > 1})
    if dup:
        raise ValueError(f"{what} stems listed more than once: {', '.join(dup[:10])}")
    pairs, report = pair_by_stem(images_dir, masks_dir, strict=False)
    found = {file_stem(i): (i, m) for i, m in pairs}
    missing = [s for s in stems if s not in found]
    if missing:
        dups = set(report.get("duplicates", []))
        shown = ", ".join(
            f"{s} ({'several files' if s in dups else 'no image' if not _has_image(images_dir, s) else 'no mask'})"
            for s in missing[:10]
        )
        more = f", ... and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise PairingError(
            f"{len(missing)} {what} stem(s) without exactly one image in {images_dir} and one mask "
            f"in {masks_dir}: {shown}{more}", report
        )
    return [(s, *found[s]) for s in stems]


def _has_image(folder: Path, stem: str) -> bool:
    return stem in list_image_files(folder)[0]


def _read_pairs(pairs: list[tuple[str, Path, Path]]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    images, masks = [], []
    for _, ip, mp in pairs:
        img = read_image(ip, mode="grey")
        mask = read_mask(mp)
        if img.shape != mask.shape:
            raise SizeMismatchError(mp, mask.shape, ip, img.shape)
        images.append(img)
        masks.append(mask)
    return images, masks


# --------------------------------------------------------------------------------------------
# checkpoints and logs (the shared scaffold: medclipsam.training)


def _checkpoints(out_dir: PathLike) -> Checkpoints:
    return Checkpoints(out_dir, "epoch", 3, CHECKPOINT_FORMAT, "weak-supervision checkpoint")


def latest_checkpoint(out_dir: PathLike) -> Path | None:
    """The epoch checkpoint with the highest epoch in ``out_dir/checkpoints``, or None."""
    return _checkpoints(out_dir).latest()


# --------------------------------------------------------------------------------------------
# training


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))


@dataclass
class _TrainingData:
    """The pairs a run learns from and is selected on, read once: training images resized and
    stacked (``x``, ``y``), validation images and masks at their own sizes, and where they came
    from (written to ``log.json``)."""

    x: torch.Tensor
    y: torch.Tensor
    val_images: list[np.ndarray]
    val_masks: list[np.ndarray]
    has_val: bool
    sources: dict


Pairs = list[tuple[str, Path, Path]]


def _training_pairs(train_images: PathLike, train_masks: PathLike, val_images: PathLike | None,
                    val_masks: PathLike | None, stems: dict[str, list[str]] | None,
                    ) -> tuple[Pairs, Pairs | None, dict]:
    """The (stem, image, mask) pairs to train and validate on, checked (see
    :func:`train_segmenter`), and where they come from."""
    stems = dict(stems or {})
    unknown = set(stems) - {"train", "val"}
    if unknown:
        raise ValueError(f"stems may only hold 'train' and 'val', got {sorted(unknown)}")
    if (val_images is None) != (val_masks is None):
        raise ValueError("give both val_images and val_masks, or neither")
    if val_images is None and stems.get("val") is not None:
        val_images, val_masks = train_images, train_masks
    if stems.get("train") is not None and stems.get("val") is not None:
        overlap = sorted(set(stems["train"]) & set(stems["val"]))
        if overlap and Path(val_images) == Path(train_images):
            raise ValueError(f"{len(overlap)} stem(s) are in both train and val: "
                             f"{', '.join(overlap[:10])}")
    train_pairs = _pairs(train_images, train_masks, stems.get("train"), "training")
    val_pairs = (None if val_images is None
                 else _pairs(val_images, val_masks, stems.get("val"), "validation"))
    if val_pairs is not None and [p[1:] for p in val_pairs] == [p[1:] for p in train_pairs]:
        warnings.warn("the validation set is the training set: early stopping and model "
                      "selection will favour memorisation", stacklevel=3)
    # Provenance in log.json: which images and labels this network learned from and was selected on.
    sources = {
        "train_images": str(train_images), "train_masks": str(train_masks),
        "val_images": None if val_images is None else str(val_images),
        "val_masks": None if val_masks is None else str(val_masks),
        "n_train": len(train_pairs), "n_val": 0 if val_pairs is None else len(val_pairs),
    }
    return train_pairs, val_pairs, sources


def _read_training_data(train_pairs: Pairs, val_pairs: Pairs | None, sources: dict,
                        size: int) -> _TrainingData:
    """Read the pairs: training images as [0, 1] pictures resized to ``size`` (masks nearest),
    validation pairs at their own sizes."""
    tr_imgs, tr_masks = _read_pairs(train_pairs)
    x = torch.stack([resize_image(to_unit_grey(im), size) for im in tr_imgs])
    y = torch.stack([resize_mask(m, size) for m in tr_masks])
    del tr_imgs, tr_masks
    va_imgs, va_masks = _read_pairs(val_pairs) if val_pairs is not None else ([], [])
    return _TrainingData(x, y, va_imgs, va_masks, val_pairs is not None, sources)


class _Run:
    """One weak-supervision run: the network, its optimiser, the epoch counter and the best
    validation Dice, and the named steps :func:`train_segmenter` takes each epoch (train an
    epoch, validate, keep the best model, checkpoint)."""

    def __init__(self, cfg: WeakConfig, data: _TrainingData) -> None:
        self.cfg, self.data = cfg, data
        self.out_dir = Path(cfg.out_dir)
        self.checkpoints = _checkpoints(self.out_dir)
        self.device = get_device(cfg.device)
        self.amp_dtype = autocast_dtype(cfg.precision, self.device)
        torch.manual_seed(cfg.seed)
        self.model = build_unet(cfg).to(self.device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr,
                                           weight_decay=cfg.weight_decay)
        # cosine decay per epoch from lr to lr * _LR_FLOOR at the last epoch, no warm-up
        self.scheduler = cosine_schedule(self.optimizer, cfg.epochs, floor=_LR_FLOOR)
        self.scaler = grad_scaler(self.device, self.amp_dtype)
        self.dice_loss = DiceLoss(sigmoid=True, batch=True)
        self.bce = nn.BCEWithLogitsLoss()
        self.history: list[dict] = []
        self.epoch = 0
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.finished = False
        self.interrupted = False

    def resume_from(self, path: Path | None) -> None:
        """Continue from checkpoint ``path`` (None: a fresh start): weights, optimiser, schedule,
        scaler, epoch, best so far, history and random streams."""
        if path is None:
            return
        ckpt = self.checkpoints.read(path)
        check_same_settings(ckpt["config"], self.cfg.to_dict(), _FREE_FIELDS, path)
        restore_training_state(ckpt, self.model, self.optimizer, self.scheduler, self.scaler)
        self.epoch, self.best, self.best_epoch = int(ckpt["epoch"]), ckpt["best_val_dice"], ckpt["best_epoch"]
        self.history = list(ckpt["history"])
        self.finished = bool(ckpt["finished"])
        set_rng_state(ckpt["rng"])

    def train_epoch(self) -> tuple[float, float]:
        """One pass over the training images in a seeded order, augmented; returns the mean
        loss and the learning rate used."""
        cfg, device, model = self.cfg, self.device, self.model
        g = _epoch_generator(cfg.seed, self.epoch)
        n = len(self.data.x)
        order = torch.randperm(n, generator=g)
        lr_now = self.optimizer.param_groups[0]["lr"]
        model.train()
        total, count = 0.0, 0
        for start in range(0, n, cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            x, y = self.data.x[idx].to(device), self.data.y[idx].to(device)
            if cfg.augment:
                x, y = _augment(x, y, g)
            x = zscore(x)
            self.optimizer.zero_grad(set_to_none=True)
            with autocast(device, self.amp_dtype):
                logits = model(x)
            logits = logits.float()
            loss = self.dice_loss(logits, y) + self.bce(logits, y)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        self.scheduler.step()
        self.epoch += 1
        return total / max(1, count), lr_now

    def validate(self) -> float | None:
        """Mean Dice on the validation set at its own resolution (None without one)."""
        if not self.data.has_val:
            return None
        probs = predict_probabilities(self.model, self.data.val_images, self.cfg)
        return float(np.mean([dice(p >= 0.5, m) for p, m in zip(probs, self.data.val_masks)]))

    def _stop_early(self) -> bool:
        cfg = self.cfg
        return (cfg.patience is not None and self.data.has_val and self.best_epoch is not None
                and self.epoch - max(self.best_epoch, cfg.min_epochs) >= cfg.patience)

    def end_epoch(self, train_loss: float, lr_used: float, val_dice: float | None,
                  seconds: float) -> None:
        """Log the epoch, keep the best model (``model.pt``), write the epoch's checkpoint and
        the logs; the run is finished after the last epoch or when early stopping says so."""
        cfg = self.cfg
        improved = val_dice is None or self.best is None or val_dice > self.best
        if improved:
            self.best, self.best_epoch = val_dice, self.epoch
        self.history.append({"epoch": self.epoch, "train_loss": train_loss, "val_dice": val_dice,
                             "lr": lr_used, "seconds": seconds})
        self.finished = self.epoch >= cfg.epochs or self._stop_early()
        state = training_state(self.model, self.optimizer, self.scheduler, self.scaler)
        if improved:
            _save({"format": MODEL_FORMAT, "model": state["model"], "config": cfg.to_dict(),
                   "epoch": self.epoch, "val_dice": val_dice}, self.out_dir / "model.pt")
        self.checkpoints.save(
            {**state, "epoch": self.epoch, "best_val_dice": self.best,
             "best_epoch": self.best_epoch, "finished": self.finished, "rng": rng_state(),
             "history": self.history, "config": cfg.to_dict()},
            self.epoch, cfg.keep_checkpoints,
        )
        write_table(self.out_dir / "log.csv", LOG_COLUMNS, self.history)
        write_json(self.out_dir / "log.json",
                   {"config": cfg.to_dict(), "data": self.data.sources, "best_epoch": self.best_epoch,
                    "best_val_dice": self.best, "epochs": self.history})


def _save(obj: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def train_segmenter(
    train_images: PathLike,
    train_masks: PathLike,
    val_images: PathLike | None = None,
    val_masks: PathLike | None = None,
    config: WeakConfig | None = None,
    *,
    stems: dict[str, list[str]] | None = None,
    resume: bool = False,
) -> dict:
    """Train the Residual UNet on ``train_images`` + ``train_masks`` (paired by file stem).

    ``val_images``/``val_masks`` (both or neither) give the validation set for early stopping and
    model selection; for weak training its masks are pseudo-labels, and nothing else is read.
    ``stems`` (``{"train": [...], "val": [...]}``, both optional) restricts which stems of the
    folders are used; with a ``"val"`` list and no ``val_images``, validation pairs come from the
    training folders. ``resume=True`` continues from the latest checkpoint in ``out_dir`` (a fresh
    start if there is none); without it, an ``out_dir`` holding checkpoints is refused.

    Returns ``{"model_path", "best_epoch", "best_val_dice", "epochs_done", "history",
    "interrupted", "seconds", "checkpoints"}``; ``model_path`` (``out_dir/model.pt``) holds the
    best weights so far even when the run was interrupted (``interrupted=True``).
    """
    t_start = time.perf_counter()
    cfg = WeakConfig() if config is None else WeakConfig.from_dict(config.to_dict())
    cfg.validate()
    train_pairs, val_pairs, sources = _training_pairs(
        train_images, train_masks, val_images, val_masks, stems)
    resume_path = start_or_resume(_checkpoints(cfg.out_dir), resume, cfg.out_dir)
    data = _read_training_data(train_pairs, val_pairs, sources, cfg.size)
    run = _Run(cfg, data)
    run.resume_from(resume_path)
    bar = progress_bar(cfg.epochs, run.epoch, "weak training", "epoch",
                       show=cfg.progress and not run.finished)
    try:
        while not run.finished:
            if cfg.stop_after_epochs is not None and run.epoch >= cfg.stop_after_epochs:
                run.interrupted = True
                break
            t0 = time.perf_counter()
            train_loss, lr_used = run.train_epoch()
            val_dice = run.validate()
            run.end_epoch(train_loss, lr_used, val_dice, time.perf_counter() - t0)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{train_loss:.4f}",
                                val_dice="-" if val_dice is None else f"{val_dice:.4f}")
    finally:
        if bar is not None:
            bar.close()
    return {
        "model_path": str(run.out_dir / "model.pt") if run.best_epoch is not None else None,
        "best_epoch": run.best_epoch,
        "best_val_dice": run.best,
        "epochs_done": run.epoch,
        "history": run.history,
        "interrupted": run.interrupted,
        "seconds": time.perf_counter() - t_start,
        "checkpoints": [str(p) for p in run.checkpoints.files()],
    }


