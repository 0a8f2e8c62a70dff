"""Stage 4, weak supervision: a Residual UNet trained on pseudo-labels (or on labels).

The zero-shot masks of a training split become the training targets of an ordinary segmentation
network, which then segments unseen images. Choices:

* **Network.** :func:`build_unet`: MONAI ``UNet`` with residual units (``num_res_units``),
  instance norm and PReLU, one input channel (grey) and one output logit (foreground).
* **Input.** Images are read grey (``read_image(mode="grey")``: colour is reduced with the
  ITU-R 601 luma weights), scaled to [0, 1], resized to ``size x size`` (bilinear, antialiased;
  masks nearest), then **z-score normalised per image** (mean 0, std 1; a constant image becomes
  0). Z-scoring makes the network indifferent to each scanner's gain and offset. Predictions are
  resized back to every image's original size bilinearly.
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
* **Ensemble uncertainty.** :func:`ensemble_uncertainty` averages the probability maps of several
  checkpoints; an image's score is the mean binary entropy (bits) of the averaged probability
  over the pixels where at least one member gives foreground probability >= 0.1. Pixels that
  every member calls background with confidence are left out, so the score measures the members'
  doubt about the object rather than the (large, easy) background and the image size; when no
  pixel qualifies the members agree the image is empty and the score is 0.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._utils import (
    atomic_path,
    atomic_write_text,
    autocast,
    autocast_dtype,
    checkpoint_error_detail,
    get_device,
    remove_stale_temporaries,
    rng_state,
    set_rng_state,
)

__all__ = [
    "WeakConfig",
    "build_unet",
    "ensemble_uncertainty",
    "latest_checkpoint",
    "load_segmenter",
    "predict_masks",
    "predict_probabilities",
    "select_confident",
    "train_segmenter",
]

CHECKPOINT_FORMAT = "medclipsam-weak-checkpoint-v1"
MODEL_FORMAT = "medclipsam-weak-model-v1"
LOG_COLUMNS = ("epoch", "train_loss", "val_dice", "lr", "seconds")
UNCERTAINTY_REGION_THRESHOLD = 0.1  # a pixel counts when any member's probability reaches this
_LR_FLOOR = 0.01  # the cosine schedule ends at lr * _LR_FLOOR
# fields that may differ between an interrupted run and its resumption
_FREE_FIELDS = {"out_dir", "progress", "stop_after_epochs", "device", "keep_checkpoints", "patience",
                "min_epochs"}
_PRECISIONS = ("auto", "fp32", "bf16", "fp16")

PathLike = str | Path


@dataclass
class WeakConfig:
    """Settings of :func:`train_segmenter` (and of prediction with a trained network)."""

    out_dir: str = "weak_out"
    epochs: int = 100
    batch_size: int = 8
    lr: float = 3e-3
    weight_decay: float = 1e-5
    patience: int | None = 20  # early stopping: epochs without a better validation Dice (None: off)
    min_epochs: int = 50  # patience counts from here at the earliest (small-target Dice stays flat at first)
    size: int = 96  # training/inference resolution (images resized, square; masks nearest)
    channels: tuple[int, ...] = (16, 32, 64, 128)
    strides: tuple[int, ...] = (2, 2, 2)
    num_res_units: int = 2
    augment: bool = True
    precision: str = "auto"  # auto: bf16/fp16 autocast on CUDA, fp32 on CPU
    seed: int = 0
    device: str = "auto"
    keep_checkpoints: int | None = None  # None keeps every epoch's weights (the ensemble needs them)
    stop_after_epochs: int | None = None  # stop cleanly after N epochs (to test/emulate interruption)
    progress: bool = True

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        self.strides = tuple(int(s) for s in self.strides)

    def validate(self) -> None:
        """Raise ValueError naming the first setting that cannot work."""
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be >= 1 or None, got {self.patience}")
        if len(self.channels) < 2 or len(self.strides) != len(self.channels) - 1:
            raise ValueError(
                f"need len(strides) == len(channels) - 1 >= 1, got channels {self.channels}, "
                f"strides {self.strides}"
            )
        factor = math.prod(self.strides)
        if self.size < 1 or self.size % factor:
            raise ValueError(f"size must be a positive multiple of {factor} "
                             f"(the product of strides {self.strides}), got {self.size}")
        if self.precision not in _PRECISIONS:
            raise ValueError(f"precision must be one of {_PRECISIONS}, got {self.precision!r}")
        for name in ("keep_checkpoints", "stop_after_epochs"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {v}")

    def to_dict(self) -> dict:
        """Plain JSON-able values (tuples become lists)."""
        d = asdict(self)
        d["channels"], d["strides"] = list(self.channels), list(self.strides)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> WeakConfig:
        """Inverse of :meth:`to_dict`; unknown keys are ignored (newer files load in older code)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def build_unet(config: WeakConfig) -> nn.Module:
    """The Residual UNet: MONAI ``UNet`` (2D, 1 channel in, 1 logit out, residual units)."""
    from monai.networks.nets import UNet

    return UNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=1,
        channels=tuple(config.channels),
        strides=tuple(config.strides),
        num_res_units=int(config.num_res_units),
    )


# --------------------------------------------------------------------------------------------
# preprocessing


def _to_unit_grey(image: np.ndarray, where: str = "image") -> np.ndarray:
    """(H, W) float32 in [0, 1] (integers divided by their maximum; floats kept) from grey/RGB(A)."""
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        arr = arr[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        if np.asarray(image).dtype.kind in "ui":
            arr = arr / np.iinfo(np.asarray(image).dtype).max
    elif arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise ValueError(f"{where}: expected a grey (H, W) or colour (H, W, 3) image, "
                         f"got shape {np.asarray(image).shape}")
    if arr.dtype == bool:
        arr = arr.astype(np.float32)
    elif arr.dtype.kind in "ui":
        arr = arr.astype(np.float32) / np.iinfo(arr.dtype).max
    arr = np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"{where}: empty image of shape {arr.shape}")
    return arr


def _resize_image(arr: np.ndarray, size: int) -> torch.Tensor:
    """(1, size, size) float32 tensor, bilinear with antialiasing."""
    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))[None, None]
    if t.shape[-2:] != (size, size):
        t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=True)
    return t[0]


def _resize_mask(mask: np.ndarray, size: int) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
    if t.shape[-2:] != (size, size):
        t = F.interpolate(t, size=(size, size), mode="nearest-exact")
    return t[0]


def _zscore(x: torch.Tensor) -> torch.Tensor:
    """Per-image z-score of a (B, 1, H, W) batch."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    std = x.std(dim=(1, 2, 3), keepdim=True, unbiased=False)
    return (x - mean) / std.clamp_min(1e-6)


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
    from .data.datasets import PairingError, pair_by_stem
    from .data.io import file_stem

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
    from .data.datasets import list_image_files

    return stem in list_image_files(folder)[0]


def _read_pairs(pairs: list[tuple[str, Path, Path]]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    from .data.io import read_image, read_mask

    images, masks = [], []
    for _, ip, mp in pairs:
        img = read_image(ip, mode="grey")
        mask = read_mask(mp)
        if img.shape != mask.shape:
            raise ValueError(f"{mp}: mask has shape {mask.shape} but image {ip} has {img.shape}")
        images.append(img)
        masks.append(mask)
    return images, masks


# --------------------------------------------------------------------------------------------
# checkpoints, RNG state and logs


def _checkpoint_files(out_dir: PathLike) -> list[Path]:
    folder = Path(out_dir) / "checkpoints"
    found = []
    for p in folder.glob("epoch_*.pt"):
        m = re.fullmatch(r"epoch_(\d+)\.pt", p.name)
        if m:
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(out_dir: PathLike) -> Path | None:
    """The epoch checkpoint with the highest epoch in ``out_dir/checkpoints``, or None."""
    files = _checkpoint_files(out_dir)
    return files[-1] if files else None


def _load(path: PathLike, formats: tuple[str, ...]) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: cannot read this file ({checkpoint_error_detail(e)})") from None
    if not isinstance(obj, dict) or obj.get("format") not in formats:
        raise ValueError(f"{path}: not a medclipsam weak-supervision file ({' or '.join(formats)})")
    return obj


def _save(obj: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _fmt(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return v


def _write_logs(out_dir: Path, cfg: WeakConfig, history: list[dict], best_epoch: int | None,
                best: float | None, data: dict | None = None) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(LOG_COLUMNS)
    for row in history:
        w.writerow([_fmt(row.get(c)) for c in LOG_COLUMNS])
    atomic_write_text(out_dir / "log.csv", buf.getvalue())
    doc = {"config": cfg.to_dict(), "data": data or {}, "best_epoch": best_epoch,
           "best_val_dice": best, "epochs": history}
    atomic_write_text(out_dir / "log.json", json.dumps(doc, indent=1) + "\n")


def _state_cpu(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------------------------
# training


def _dice(pred: np.ndarray, gt: np.ndarray) -> float:
    total = int(pred.sum()) + int(gt.sum())
    return 1.0 if total == 0 else float(2 * np.logical_and(pred, gt).sum() / total)


def _lr_factor(epoch: int, epochs: int) -> float:
    """Cosine decay from 1 (epoch 0) to ``_LR_FLOOR`` (epoch ``epochs``)."""
    t = min(1.0, epoch / max(1, epochs))
    return _LR_FLOOR + (1 - _LR_FLOOR) * 0.5 * (1 + math.cos(math.pi * t))


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))


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
                      "selection will favour memorisation", stacklevel=2)

    # Provenance in log.json: which images and labels this network learned from and was selected on.
    data_sources = {
        "train_images": str(train_images), "train_masks": str(train_masks),
        "val_images": None if val_images is None else str(val_images),
        "val_masks": None if val_masks is None else str(val_masks),
        "n_train": len(train_pairs), "n_val": 0 if val_pairs is None else len(val_pairs),
    }
    out_dir = Path(cfg.out_dir)
    remove_stale_temporaries(out_dir, out_dir / "checkpoints")  # left by a kill mid-write
    ckpt_path = latest_checkpoint(out_dir)
    if ckpt_path is not None and not resume:
        raise FileExistsError(f"{out_dir} already holds training checkpoints ({ckpt_path.name}); "
                              "pass resume=True to continue, or use another out_dir")
    device = get_device(cfg.device)
    amp_dtype = autocast_dtype(cfg.precision, device)

    tr_imgs, tr_masks = _read_pairs(train_pairs)
    x_train = torch.stack([_resize_image(_to_unit_grey(im), cfg.size) for im in tr_imgs])
    y_train = torch.stack([_resize_mask(m, cfg.size) for m in tr_masks])
    del tr_imgs, tr_masks
    va_imgs, va_masks = _read_pairs(val_pairs) if val_pairs is not None else ([], [])

    torch.manual_seed(cfg.seed)
    model = build_unet(cfg).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda e: _lr_factor(e, cfg.epochs))
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    from monai.losses import DiceLoss

    dice_loss = DiceLoss(sigmoid=True, batch=True)
    bce = nn.BCEWithLogitsLoss()

    history: list[dict] = []
    epoch = 0
    best: float | None = None
    best_epoch: int | None = None
    finished = False
    if ckpt_path is not None:
        ckpt = _load(ckpt_path, (CHECKPOINT_FORMAT,))
        saved = ckpt["config"]
        now = cfg.to_dict()
        diffs = [f"{k}: checkpoint {saved.get(k)!r}, now {now[k]!r}"
                 for k in now if k not in _FREE_FIELDS and saved.get(k) != now[k]]
        if diffs:
            raise ValueError(f"{ckpt_path}: cannot resume with other settings ({'; '.join(diffs)})")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        epoch, best, best_epoch = int(ckpt["epoch"]), ckpt["best_val_dice"], ckpt["best_epoch"]
        history = list(ckpt["history"])
        finished = bool(ckpt["finished"])
        set_rng_state(ckpt["rng"])

    def stop_early() -> bool:
        return (cfg.patience is not None and val_pairs is not None and best_epoch is not None
                and epoch - max(best_epoch, cfg.min_epochs) >= cfg.patience)

    bar = None
    if cfg.progress and not finished:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.epochs, initial=epoch, desc="weak training", unit="epoch",
                   dynamic_ncols=True)
    interrupted = False
    n = len(x_train)
    try:
        while not finished:
            if cfg.stop_after_epochs is not None and epoch >= cfg.stop_after_epochs:
                interrupted = True
                break
            t0 = time.perf_counter()
            g = _epoch_generator(cfg.seed, epoch)
            order = torch.randperm(n, generator=g)
            lr_now = optimizer.param_groups[0]["lr"]
            model.train()
            total, count = 0.0, 0
            for start in range(0, n, cfg.batch_size):
                idx = order[start : start + cfg.batch_size]
                x, y = x_train[idx].to(device), y_train[idx].to(device)
                if cfg.augment:
                    x, y = _augment(x, y, g)
                x = _zscore(x)
                optimizer.zero_grad(set_to_none=True)
                with autocast(device, amp_dtype):
                    logits = model(x)
                logits = logits.float()
                loss = dice_loss(logits, y) + bce(logits, y)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                total += float(loss.detach()) * len(idx)
                count += len(idx)
            scheduler.step()
            epoch += 1
            val_dice = None
            if val_pairs is not None:
                probs = predict_probabilities(model, va_imgs, cfg)
                val_dice = float(np.mean([_dice(p >= 0.5, m) for p, m in zip(probs, va_masks)]))
            improved = val_dice is None or best is None or val_dice > best
            if improved:
                best, best_epoch = val_dice, epoch
            history.append({"epoch": epoch, "train_loss": total / max(1, count),
                            "val_dice": val_dice, "lr": lr_now,
                            "seconds": time.perf_counter() - t0})
            finished = epoch >= cfg.epochs or stop_early()
            state = _state_cpu(model)
            if improved:
                _save({"format": MODEL_FORMAT, "model": state, "config": cfg.to_dict(),
                       "epoch": epoch, "val_dice": val_dice}, out_dir / "model.pt")
            _save({"format": CHECKPOINT_FORMAT, "model": state,
                   "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                   "scaler": scaler.state_dict(), "epoch": epoch, "best_val_dice": best,
                   "best_epoch": best_epoch, "finished": finished, "rng": rng_state(),
                   "history": history, "config": cfg.to_dict()},
                  out_dir / "checkpoints" / f"epoch_{epoch:03d}.pt")
            if cfg.keep_checkpoints is not None:
                for old in _checkpoint_files(out_dir)[: -cfg.keep_checkpoints]:
                    old.unlink(missing_ok=True)
            _write_logs(out_dir, cfg, history, best_epoch, best, data_sources)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{history[-1]['train_loss']:.4f}",
                                val_dice="-" if val_dice is None else f"{val_dice:.4f}")
    finally:
        if bar is not None:
            bar.close()
    return {
        "model_path": str(out_dir / "model.pt") if best_epoch is not None else None,
        "best_epoch": best_epoch,
        "best_val_dice": best,
        "epochs_done": epoch,
        "history": history,
        "interrupted": interrupted,
        "seconds": time.perf_counter() - t_start,
        "checkpoints": [str(p) for p in _checkpoint_files(out_dir)],
    }


# --------------------------------------------------------------------------------------------
# inference


def load_segmenter(path: PathLike, device: str = "auto") -> tuple[nn.Module, WeakConfig]:
    """A trained network (``model.pt`` or an epoch checkpoint) in eval mode, and its config."""
    obj = _load(path, (MODEL_FORMAT, CHECKPOINT_FORMAT))
    cfg = WeakConfig.from_dict(obj["config"])
    model = build_unet(cfg)
    try:
        model.load_state_dict(obj["model"])
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not fit the network in its config ({e})") from e
    cfg.device = device
    return model.to(get_device(device)).eval(), cfg


@torch.no_grad()
def predict_probabilities(model: nn.Module, images: Sequence[np.ndarray],
                          config: WeakConfig) -> list[np.ndarray]:
    """Foreground probability maps, float32 (H, W) at each image's original size.

    Each image is reduced to grey, scaled to [0, 1], resized to ``config.size`` and z-scored as in
    training; the predicted probabilities are resized back bilinearly.
    """
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters())
        device = param.device
        amp_dtype = autocast_dtype(config.precision, device)
        out: list[np.ndarray] = []
        batch = max(1, int(config.batch_size))
        for start in range(0, len(images), batch):
            chunk = [_to_unit_grey(im, f"images[{start + i}]")
                     for i, im in enumerate(images[start : start + batch])]
            x = torch.stack([_resize_image(a, config.size) for a in chunk]).to(device)
            with autocast(device, amp_dtype):
                logits = model(_zscore(x))
            probs = torch.sigmoid(logits.float())
            for a, p in zip(chunk, probs):
                if tuple(p.shape[-2:]) != a.shape:
                    p = F.interpolate(p[None], size=a.shape, mode="bilinear",
                                      align_corners=False)[0]
                out.append(p[0].clamp(0, 1).cpu().numpy().astype(np.float32))
        return out
    finally:
        model.train(was_training)


def predict_masks(model: nn.Module, images: Sequence[np.ndarray], config: WeakConfig,
                  threshold: float = 0.5) -> list[np.ndarray]:
    """Boolean masks at each image's original size: probability >= ``threshold``."""
    return [p >= threshold for p in predict_probabilities(model, images, config)]


def _entropy_bits(p: np.ndarray) -> np.ndarray:
    q = np.clip(p.astype(np.float64), 1e-12, 1 - 1e-12)
    return -(q * np.log2(q) + (1 - q) * np.log2(1 - q))


def ensemble_uncertainty(checkpoints: Sequence[PathLike], images: Sequence[np.ndarray],
                         config: WeakConfig) -> tuple[list[np.ndarray], np.ndarray]:
    """Average the probability maps of several saved networks; score each image's uncertainty.

    Each member is built from the config stored with it (size, architecture); ``config`` gives
    the device, precision and batch size. The score is the mean binary entropy (bits, 0..1) of
    the averaged probability over the pixels where any member's probability is >= 0.1 (0 when
    there are none). Returns ``(mean_prob_maps, scores)``.
    """
    if len(checkpoints) == 0:
        raise ValueError("ensemble_uncertainty needs at least one checkpoint")
    sums: list[np.ndarray] | None = None
    region: list[np.ndarray] | None = None
    for path in checkpoints:
        model, cfg = load_segmenter(path, device=config.device)
        cfg.batch_size, cfg.precision = config.batch_size, config.precision
        probs = predict_probabilities(model, images, cfg)
        if sums is None:
            sums = [p.astype(np.float64) for p in probs]
            region = [p >= UNCERTAINTY_REGION_THRESHOLD for p in probs]
        else:
            for i, p in enumerate(probs):
                sums[i] += p
                region[i] |= p >= UNCERTAINTY_REGION_THRESHOLD
        del model
    assert sums is not None and region is not None
    means = [(s / len(checkpoints)).astype(np.float32) for s in sums]
    scores = np.array([float(_entropy_bits(m)[r].mean()) if r.any() else 0.0
                       for m, r in zip(means, region)], dtype=np.float64)
    return means, scores


def select_confident(scores: Sequence[float], ids: Sequence[str],
                     drop_fraction: float) -> list[str]:
    """The ids to keep after dropping the ``floor(drop_fraction * N)`` highest scores.

    Ties are broken by id (among equal scores the larger id is dropped first, so the result does
    not depend on input order); the kept ids are returned in their input order.
    """
    scores = [float(s) for s in scores]
    ids = [str(i) for i in ids]
    if len(scores) != len(ids):
        raise ValueError(f"got {len(scores)} scores for {len(ids)} ids")
    if len(set(ids)) != len(ids):
        raise ValueError("ids must be unique")
    if any(math.isnan(s) for s in scores):
        bad = [i for i, s in zip(ids, scores) if math.isnan(s)]
        raise ValueError(f"NaN uncertainty score for: {', '.join(bad[:10])}")
    if not 0.0 <= drop_fraction <= 1.0:
        raise ValueError(f"drop_fraction must be in [0, 1], got {drop_fraction}")
    n_drop = int(math.floor(drop_fraction * len(ids) + 1e-9))
    ranked = sorted(zip(scores, ids))  # most certain first; equal scores by id
    kept = {i for _, i in ranked[: len(ids) - n_drop]}
    return [i for i in ids if i in kept]
