"""Stage 1: contrastive fine-tuning of an open_clip CLIP (BiomedCLIP, the toy CLIP, ...) on
image-caption pairs, with DHN-NCE or any loss of :mod:`medclipsam.losses`.

What the loop does, and why:

* **Loss.** ``config.loss`` names a loss of :data:`medclipsam.losses.LOSSES` (``"dhn_nce"``,
  ``"hn_nce"``, ``"dcl"``, ``"infonce"``). The temperature is fixed (``tau``, paper 0.6) unless
  ``learn_logit_scale=True``, which uses (and trains) the model's own logit scale instead. With a
  fixed ``tau`` the model's ``logit_scale`` is frozen, since nothing uses it.
* **Optimiser and schedule.** AdamW (betas 0.9/0.98, eps 1e-6, weight decay 0.1 on matrices only;
  biases, norms and the logit scale get none), linear warm-up then cosine decay to 0, optional
  gradient accumulation and gradient clipping.
* **Learning rate.** The MedCLIP-SAMv2 script uses lr 1e-3 with 1000 warm-up steps; the paper
  reports 1e-6. 1e-3 is far too high for AdamW on a pretrained ViT-B (it wrecks the pretrained
  features), 1e-6 barely moves it; the default here is 1e-5, a usual value for fine-tuning CLIP.
* **Mixed precision.** ``precision="auto"``: bf16 autocast on a GPU that supports it (else fp16
  with a gradient scaler), float32 on CPU. The losses always compute in float32.
* **Freezing.** ``freeze="text"`` or ``"image"`` freezes that tower; ``trainable_blocks=N``
  leaves only the last ``N`` blocks of each remaining tower trainable (plus what comes after them:
  final norms, pooling, projection heads); everything before them (patch/token/position
  embeddings, the first blocks) is frozen. See :func:`apply_freezing`.
* **Data order.** Batches come from a ``DistributedSampler(shuffle=True, seed=seed)`` set to the
  epoch, also with one process, so the order is a pure function of ``(seed, epoch)`` and does not
  depend on random numbers drawn elsewhere. ``batch_size`` is per process. The last short batch is
  dropped (``drop_last``; a batch of one pair is always dropped: it has no negatives).
* **Checkpoints and exact resume.** A checkpoint is written at the end of every epoch (and every
  ``checkpoint_every_steps`` optimiser steps, and when ``stop_after_steps`` stops the run) in
  ``out_dir/checkpoints/step_<step>.pt``: model, optimiser, scheduler, gradient scaler, epoch,
  batches done in the epoch, step, the Python/NumPy/torch RNG states of every process, the sampler
  state, the configuration and the log history. ``resume=True`` continues from the latest one; on
  CPU an interrupted and resumed run ends with bit-identical weights to an uninterrupted one.
  Only the last ``keep_checkpoints`` files are kept (each holds the model and two AdamW moments).
* **Logs.** ``out_dir/log.csv`` (one row per evaluation: epoch, step, losses, lr, retrieval
  top-1/top-2 both ways), ``out_dir/steps.csv`` (loss and lr per optimiser step) and
  ``out_dir/log.json`` (configuration and both tables). Retrieval on the validation set follows the
  paper (shuffled batches of 50 pairs, 5 runs, mean and std) when it has at least 50 pairs, else
  top-k over the whole set. By default a retrieved caption identical to the true one counts as
  correct (``group_identical_captions``), since templated captions repeat.
* **Result.** ``out_dir/model.pt``, written with :func:`~medclipsam.models.save_clip_checkpoint`:
  ``load_clip(out_dir / "model.pt")`` reads it back, tokenizer included.
* **Several GPUs.** Under ``torchrun`` (``WORLD_SIZE > 1``) the process group is initialised
  (NCCL on CUDA, Gloo on CPU), the model wrapped in ``DistributedDataParallel`` and the data split
  by the sampler; only rank 0 writes checkpoints and logs. The contrastive loss is computed on each
  process's local batch (negatives come from the local batch only; features are not gathered
  across processes), and DDP averages the gradients.

Command line: ``medclipsam finetune --clip biomedclip --captions pairs.csv --out runs/dhn``
(or ``python -m medclipsam.finetune ...``); see :func:`add_finetune_arguments`.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import logging
import math
import os
import re
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ._utils import (
    atomic_path,
    atomic_write_text,
    autocast,
    autocast_dtype,
    get_device,
    rng_state,
    seed_everything,
    set_rng_state,
    warmup_cosine,
)

__all__ = [
    "FinetuneConfig",
    "add_finetune_arguments",
    "apply_freezing",
    "evaluate_retrieval",
    "finetune",
    "latest_checkpoint",
    "main",
    "run_from_args",
]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "medclipsam-finetune/1"
FREEZE_CHOICES = ("none", "text", "image")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
EPOCH_COLUMNS = (
    "epoch", "step", "train_loss", "val_loss", "lr",
    "i2t_top1", "i2t_top2", "t2i_top1", "t2i_top2",
    "i2t_top1_std", "i2t_top2_std", "t2i_top1_std", "t2i_top2_std",
    "protocol", "n_val", "seconds",
)
STEP_COLUMNS = ("step", "epoch", "loss", "lr")
# Config fields that do not change the training trajectory (may differ when resuming).
_FREE_FIELDS = {
    "out_dir", "num_workers", "device", "eval_every", "eval_before", "group_identical_captions",
    "checkpoint_every_steps", "keep_checkpoints", "stop_after_steps", "progress",
}
# Parameter names (outside the block stack) that sit on the input side of a tower.
_INPUT_SIDE = re.compile(
    r"embed|conv1|ln_pre|norm_pre|cls_token|class_embedding|cls_emb|pos_|positional|reg_token"
)


@dataclass
class FinetuneConfig:
    """Settings of :func:`finetune` (defaults: the MedCLIP-SAMv2 recipe, except ``lr``)."""

    out_dir: str = "finetune_out"
    loss: str = "dhn_nce"
    tau: float = 0.6  # fixed temperature (ignored when learn_logit_scale)
    learn_logit_scale: bool = False  # use and train the model's logit scale instead of tau
    beta1: float = 0.15  # hard-negative weighting, image -> text
    beta2: float = 0.15  # hard-negative weighting, text -> image
    alpha: float = 1.0  # weight of the positive in hn_nce only (dhn_nce is hn_nce with alpha 0)
    batch_size: int = 16  # per process
    lr: float = 1e-5  # v2 script: 1e-3; paper: 1e-6 (see the module docstring)
    weight_decay: float = 0.1
    adam_betas: tuple[float, float] = (0.9, 0.98)
    adam_eps: float = 1e-6
    warmup_steps: int = 1000  # optimiser steps of linear warm-up, then cosine decay
    epochs: int = 32
    grad_accum_steps: int = 1
    max_grad_norm: float | None = None
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    freeze: str = "none"  # none | text | image
    trainable_blocks: int | None = None  # only the last N blocks of each unfrozen tower train
    seed: int = 0
    num_workers: int = 4
    device: str = "auto"
    drop_last: bool = True
    eval_every: int = 1  # epochs between validation passes (0: never)
    eval_before: bool = True  # evaluate the starting model too (epoch 0 row)
    group_identical_captions: bool = True
    checkpoint_every_steps: int | None = None  # extra mid-epoch checkpoints
    keep_checkpoints: int | None = 2  # None keeps all
    stop_after_steps: int | None = None  # stop cleanly (with a checkpoint) after N optimiser steps
    progress: bool = True

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad setting."""
        from .losses import LOSSES

        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {self.loss!r}")
        if self.freeze not in FREEZE_CHOICES:
            raise ValueError(f"freeze must be one of {FREEZE_CHOICES}, got {self.freeze!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        positive = {"batch_size": self.batch_size, "epochs": self.epochs,
                    "grad_accum_steps": self.grad_accum_steps}
        for name, value in positive.items():
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if not self.learn_logit_scale and not (self.tau > 0):
            raise ValueError(f"tau must be > 0, got {self.tau}")
        if self.lr <= 0 or self.warmup_steps < 0 or self.weight_decay < 0:
            raise ValueError("lr must be > 0, warmup_steps and weight_decay >= 0")
        if self.trainable_blocks is not None and self.trainable_blocks < 0:
            raise ValueError(f"trainable_blocks must be >= 0 or None, got {self.trainable_blocks}")
        if self.stop_after_steps is not None and self.stop_after_steps < 1:
            raise ValueError(f"stop_after_steps must be >= 1, got {self.stop_after_steps}")
        if self.keep_checkpoints is not None and self.keep_checkpoints < 1:
            raise ValueError(f"keep_checkpoints must be >= 1 or None, got {self.keep_checkpoints}")

    def to_dict(self) -> dict:
        """Plain JSON-compatible dict (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, d: dict) -> FinetuneConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown FinetuneConfig field(s): {unknown}")
        d = dict(d)
        if "adam_betas" in d:
            d["adam_betas"] = tuple(d["adam_betas"])
        return cls(**d)


# --------------------------------------------------------------------------------------------
# freezing


def _tower_of(name: str) -> str:
    if name.startswith("visual."):
        return "image"
    if name in ("logit_scale", "logit_bias"):
        return "scale"
    return "text"


def _block_stack(model: nn.Module, tower: str) -> tuple[str, nn.ModuleList] | None:
    """The longest ``nn.ModuleList`` inside ``tower``: the transformer blocks."""
    best: tuple[str, nn.ModuleList] | None = None
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.ModuleList) or not name or _tower_of(name + ".") != tower:
            continue
        if best is None or len(mod) > len(best[1]):
            best = (name, mod)
    return best


def apply_freezing(
    model: nn.Module,
    freeze: str = "none",
    trainable_blocks: int | None = None,
    learn_logit_scale: bool = False,
) -> dict[str, int]:
    """Set ``requires_grad`` on an open_clip CLIP; returns counts of trainable/frozen tensors.

    The image tower is everything under ``visual.``; the text tower everything else but
    ``logit_scale``/``logit_bias`` (which train only with ``learn_logit_scale``). ``freeze``:
    ``"none"``, ``"text"`` or ``"image"`` (that tower is frozen entirely). ``trainable_blocks=N``:
    in each unfrozen tower the block stack (its longest ``ModuleList``: ``resblocks``, timm
    ``blocks``, BERT ``encoder.layer``) keeps only its last ``N`` blocks trainable, and the
    input-side parameters outside the stack (patch, token, class and position embeddings, pre-norm)
    are frozen; the output side (final norm, pooling, projection) stays trainable.
    """
    if freeze not in FREEZE_CHOICES:
        raise ValueError(f"freeze must be one of {FREEZE_CHOICES}, got {freeze!r}")
    names = dict(model.named_parameters())
    for name, p in names.items():
        tower = _tower_of(name)
        p.requires_grad_(learn_logit_scale if tower == "scale" else tower != freeze)
    if trainable_blocks is not None:
        for tower in ("image", "text"):
            if tower == freeze:
                continue
            stack = _block_stack(model, tower)
            if stack is None:
                raise ValueError(
                    f"trainable_blocks={trainable_blocks}: found no block stack (ModuleList) in "
                    f"the {tower} tower of {type(model).__name__}"
                )
            stack_name, blocks = stack
            if trainable_blocks > len(blocks):
                raise ValueError(
                    f"trainable_blocks={trainable_blocks} but the {tower} tower has only "
                    f"{len(blocks)} blocks ({stack_name})"
                )
            n_frozen = len(blocks) - trainable_blocks
            for i, block in enumerate(blocks):
                for p in block.parameters():
                    p.requires_grad_(i >= n_frozen)
            for name, p in names.items():
                if (
                    _tower_of(name) == tower
                    and not name.startswith(stack_name + ".")
                    and _INPUT_SIDE.search(name)
                ):
                    p.requires_grad_(False)
    trainable = sum(p.requires_grad for p in names.values())
    if trainable == 0:
        raise ValueError("the freezing options leave no parameter to train")
    return {"trainable": trainable, "frozen": len(names) - trainable}


# --------------------------------------------------------------------------------------------
# data


class _Collate:
    """Batch (image, caption) items: images through ``preprocess`` unless already (3, S, S)
    tensors, captions through ``tokenizer`` unless already token tensors."""

    def __init__(self, preprocess: Callable, tokenizer: Callable) -> None:
        self.preprocess = preprocess
        self.tokenizer = tokenizer

    def __call__(self, items: Sequence[tuple[Any, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
        images, texts = [], []
        for image, text in items:
            if not (isinstance(image, torch.Tensor) and image.ndim == 3 and image.is_floating_point()):
                image = self.preprocess(image)
            if isinstance(text, str):
                text = self.tokenizer([text])[0]
            images.append(image)
            texts.append(torch.as_tensor(text))
        return torch.stack(images), torch.stack(texts)


def _epoch_batches(n: int, cfg: FinetuneConfig, epoch: int, world: int, rank: int) -> list[list[int]]:
    """This process's batches of epoch ``epoch``: a function of (seed, epoch, world, rank)."""
    from torch.utils.data.distributed import DistributedSampler

    sampler = DistributedSampler(
        range(n), num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed, drop_last=True
    )
    sampler.set_epoch(epoch)
    idx = list(sampler)
    b = cfg.batch_size
    batches = [idx[i : i + b] for i in range(0, len(idx), b)]
    if batches and (len(batches[-1]) < 2 or (cfg.drop_last and len(batches[-1]) < b)):
        batches.pop()
    return batches


def _worker_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) * 100_003 + int(epoch))


# --------------------------------------------------------------------------------------------
# distributed helpers


@dataclass
class _Dist:
    world: int = 1
    rank: int = 0
    local_rank: int = 0
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


def ddp_device(
    device_pref: str | None, local_rank: int, local_world: int, cuda_count: int
) -> torch.device:
    """The device of one process under torchrun (``LOCAL_RANK`` ``local_rank`` of
    ``local_world`` processes on this machine, ``cuda_count`` visible GPUs).

    ``"auto"``/``"cuda"``: ``cuda:LOCAL_RANK`` (the CPU when there is no GPU, for ``"auto"``).
    ``"cuda:N"``: GPU N when this machine runs one process; with several, each process takes
    ``cuda:LOCAL_RANK`` and a warning says that N was not used (choose GPUs with
    ``CUDA_VISIBLE_DEVICES``). ``"cpu"`` (or another device type): as given. A CUDA device that
    does not exist is an error, never a silent fall-back to the CPU.
    """
    pref = "auto" if device_pref in (None, "") else str(device_pref)
    asked = torch.device("cuda" if pref == "auto" and cuda_count else
                         "cpu" if pref == "auto" else pref)
    if asked.type != "cuda":
        return asked
    if cuda_count < 1:
        raise RuntimeError(f"device {pref!r} under torchrun, but this machine has no CUDA device")
    index = asked.index
    if index is None:
        index = local_rank
    elif local_world > 1 and index != local_rank:
        log.warning(
            "device %s ignored for process %d of %d on this machine: each process uses "
            "cuda:LOCAL_RANK (cuda:%d); choose the GPUs with CUDA_VISIBLE_DEVICES",
            pref, local_rank, local_world, local_rank,
        )
        index = local_rank
    if index >= cuda_count:
        raise RuntimeError(
            f"device cuda:{index} (from {pref!r}, LOCAL_RANK {local_rank}) does not exist: "
            f"{cuda_count} CUDA device(s) visible"
        )
    return torch.device("cuda", index)


def _init_distributed(device_pref: str) -> tuple[_Dist, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist(), get_device(device_pref)
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    cuda_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    device = ddp_device(device_pref, local_rank, local_world, cuda_count)
    want_cuda = device.type == "cuda"
    if want_cuda:
        torch.cuda.set_device(device)
    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if want_cuda else "gloo")
        owns = True
    return _Dist(dist.get_world_size(), dist.get_rank(), local_rank, owns), device


# --------------------------------------------------------------------------------------------
# checkpoints and logs


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The training checkpoint with the highest step in ``out_dir/checkpoints``, or None."""
    folder = Path(out_dir) / "checkpoints"
    best: tuple[int, Path] | None = None
    for p in folder.glob("step_*.pt"):
        m = re.fullmatch(r"step_(\d+)\.pt", p.name)
        if m and (best is None or int(m.group(1)) > best[0]):
            best = (int(m.group(1)), p)
    return best[1] if best else None


def _read_training_checkpoint(path: Path) -> dict:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(
            f"{path}: cannot read this training checkpoint ({type(e).__name__}: {str(e)[:200]}); "
            "delete it to resume from the previous one"
        ) from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a medclipsam fine-tuning checkpoint ({CHECKPOINT_FORMAT})")
    return ckpt


def _fmt(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return v


def _write_logs(out_dir: Path, cfg: FinetuneConfig, history: dict) -> None:
    for name, columns, rows in (
        ("log.csv", EPOCH_COLUMNS, history["epochs"]),
        ("steps.csv", STEP_COLUMNS, history["steps"]),
    ):
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(columns)
        for row in rows:
            w.writerow([_fmt(row.get(c)) for c in columns])
        atomic_write_text(out_dir / name, buf.getvalue())
    payload = {"config": cfg.to_dict(), "epochs": history["epochs"], "steps": history["steps"]}
    atomic_write_text(out_dir / "log.json", json.dumps(_no_nan(payload), indent=1) + "\n")


def _no_nan(obj: Any) -> Any:
    """NaN -> None, recursively (strict JSON)."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _no_nan(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_no_nan(v) for v in obj]
    return obj


# --------------------------------------------------------------------------------------------
# evaluation


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model, nn.Module) else model



@torch.no_grad()
def evaluate_retrieval(
    model: nn.Module,
    dataset: Any,
    collate: Callable,
    *,
    device: torch.device,
    batch_size: int = 64,
    criterion: nn.Module | None = None,
    loss_batch: int = 16,
    logit_scale: torch.Tensor | None = None,
    groups: Sequence | None = None,
    seed: int = 0,
    amp_dtype: torch.dtype | None = None,
) -> dict[str, Any]:
    """Embed ``dataset`` and measure retrieval (and the loss on consecutive ``loss_batch`` chunks).

    >= 50 pairs: the paper's protocol (batches of 50, 5 runs; ``*_std`` the spread over runs);
    fewer: top-1/top-2 over the whole set. Percentages.
    """
    from torch.utils.data import DataLoader

    from .retrieval import retrieval_protocol, topk_accuracy

    core = _unwrap(model)
    was_training = core.training
    core.eval()
    img_list, txt_list = [], []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    for images, texts in loader:
        with autocast(device, amp_dtype):
            img_list.append(core.encode_image(images.to(device), normalize=True).float().cpu())
            txt_list.append(core.encode_text(texts.to(device), normalize=True).float().cpu())
    core.train(was_training)
    img = torch.cat(img_list)
    txt = torch.cat(txt_list)
    n = img.shape[0]
    out: dict[str, Any] = {"n_val": n}
    if n >= 50:
        res = retrieval_protocol(img, txt, batch=50, runs=5, seed=seed, groups=groups)
        for k, (mean, std) in res.items():
            out[k], out[k + "_std"] = mean, std
        out["protocol"] = "batches50x5"
    elif n >= 2:
        out.update(topk_accuracy(img, txt, (1, 2), groups))
        out["protocol"] = f"all{n}"
    if criterion is not None:
        losses = []
        scale = None if logit_scale is None else logit_scale.detach().float().cpu()
        for i in range(0, n, loss_batch):
            if n - i >= 2:
                sl = slice(i, i + loss_batch)
                losses.append(float(criterion(img[sl], txt[sl], logit_scale=scale)))
        out["val_loss"] = float(np.mean(losses)) if losses else float("nan")
    return out


# --------------------------------------------------------------------------------------------
# the loop


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim < 2 or "logit_scale" in name or "logit_bias" in name
        (no_decay if skip else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]



def _features(out: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(image features, text features, exp logit scale) from an open_clip forward."""
    if isinstance(out, dict):
        return out["image_features"], out["text_features"], out["logit_scale"]
    return out[0], out[1], out[2]


def _check_compatible(saved: dict, cfg: FinetuneConfig, path: Path) -> None:
    now = cfg.to_dict()
    diffs = [
        f"{k}: checkpoint {saved.get(k)!r}, now {now[k]!r}"
        for k in now
        if k not in _FREE_FIELDS and saved.get(k) != now[k]
    ]
    if diffs:
        raise ValueError(
            f"{path}: cannot resume, the configuration differs from the interrupted run's ("
            + "; ".join(diffs) + "). Use the same settings or another out_dir."
        )


def finetune(
    bundle: Any,
    train_ds: Any,
    val_ds: Any = None,
    config: FinetuneConfig | None = None,
    *,
    resume: bool = False,
) -> dict[str, Any]:
    """Fine-tune ``bundle.model`` (in place) contrastively on ``train_ds``; see the module doc.

    ``bundle``: a :class:`~medclipsam.models.ClipBundle`. Datasets yield ``(image, caption)``
    items: an image in any form the bundle's preprocess takes (or an already prepared (3, S, S)
    tensor) and a caption string (or token ids), e.g. :class:`~medclipsam.data.CaptionDataset`.
    ``resume=True`` continues from the latest checkpoint in ``config.out_dir`` (a fresh start if
    there is none); without it an ``out_dir`` holding checkpoints is refused.
    Returns ``{"model_path", "out_dir", "global_step", "epochs_done", "interrupted",
    "checkpoint", "history", "final_metrics"}`` (``model_path`` is None when interrupted).
    """
    from torch.utils.data import DataLoader

    from .losses import ContrastiveLoss
    from .models import save_clip_checkpoint

    cfg = config or FinetuneConfig()
    cfg.validate()
    out_dir = Path(cfg.out_dir)
    n_train = len(train_ds)
    if n_train < 2:
        raise ValueError(f"the training set has {n_train} pair(s); contrastive training needs >= 2")

    dist_info, device = _init_distributed(cfg.device)
    try:
        model = bundle.model
        model.to(device)
        counts = apply_freezing(model, cfg.freeze, cfg.trainable_blocks, cfg.learn_logit_scale)
        batches_per_epoch = len(_epoch_batches(n_train, cfg, 0, dist_info.world, dist_info.rank))
        if batches_per_epoch == 0:
            raise ValueError(
                f"{n_train} training pairs give no batch of {cfg.batch_size} per process "
                f"({dist_info.world} process(es)); lower batch_size or set drop_last=False"
            )
        steps_per_epoch = math.ceil(batches_per_epoch / cfg.grad_accum_steps)
        total_steps = steps_per_epoch * cfg.epochs
        if cfg.warmup_steps >= total_steps and dist_info.main:
            warnings.warn(
                f"warmup_steps={cfg.warmup_steps} >= the {total_steps} optimiser steps of the "
                "run: the learning rate never reaches its peak",
                UserWarning,
                stacklevel=2,
            )

        criterion = ContrastiveLoss(
            cfg.loss,
            tau=None if cfg.learn_logit_scale else cfg.tau,
            beta1=cfg.beta1,
            beta2=cfg.beta2,
            alpha=cfg.alpha,
        )
        optimizer = torch.optim.AdamW(
            _param_groups(model, cfg.weight_decay),
            lr=cfg.lr,
            betas=tuple(cfg.adam_betas),
            eps=cfg.adam_eps,
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, partial(warmup_cosine, warmup=cfg.warmup_steps, total=total_steps)
        )
        amp_dtype = autocast_dtype(cfg.precision, device)
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

        # ---- start or resume
        epoch, batch_in_epoch, global_step = 0, 0, 0
        history: dict[str, list] = {"epochs": [], "steps": []}
        ckpt_path = latest_checkpoint(out_dir)
        if ckpt_path is not None and not resume:
            raise FileExistsError(
                f"{out_dir} already holds training checkpoints ({ckpt_path.name}); pass "
                "resume=True (--resume) to continue that run, or choose another out_dir"
            )
        if resume and ckpt_path is not None:
            ckpt = _read_training_checkpoint(ckpt_path)
            _check_compatible(json.loads(ckpt["config"]), cfg, ckpt_path)
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            if ckpt.get("scaler"):
                scaler.load_state_dict(ckpt["scaler"])
            epoch, batch_in_epoch = int(ckpt["epoch"]), int(ckpt["batch_in_epoch"])
            global_step = int(ckpt["global_step"])
            history = json.loads(ckpt["history"])
            states = ckpt["rng"]
            if len(states) != dist_info.world and dist_info.main:
                warnings.warn(
                    f"{ckpt_path}: saved with {len(states)} process(es), resumed with "
                    f"{dist_info.world}: random streams (dropout) are not exactly restored",
                    UserWarning,
                    stacklevel=2,
                )
            set_rng_state(states[min(dist_info.rank, len(states) - 1)])
            if dist_info.main:
                log.info("resuming from %s (epoch %d, step %d)", ckpt_path, epoch, global_step)
        else:
            seed_everything(cfg.seed + dist_info.rank)

        train_model: nn.Module = model
        if dist_info.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            train_model = DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None
            )

        collate = _Collate(bundle.preprocess, bundle.tokenizer)
        val_groups = None
        if val_ds is not None and cfg.group_identical_captions:
            val_groups = getattr(val_ds, "captions", None)

        def run_eval(row: dict) -> None:
            if val_ds is None or len(val_ds) < 2 or not dist_info.main:
                return
            scale = model.logit_scale.exp() if cfg.learn_logit_scale else None
            row.update(
                evaluate_retrieval(
                    model, val_ds, collate, device=device, batch_size=max(cfg.batch_size, 32),
                    criterion=criterion, loss_batch=cfg.batch_size, logit_scale=scale,
                    groups=val_groups, seed=cfg.seed, amp_dtype=amp_dtype,
                )
            )

        def save_checkpoint() -> Path | None:
            rng = [rng_state()]
            if dist_info.world > 1:
                gathered: list = [None] * dist_info.world
                torch.distributed.all_gather_object(gathered, rng[0])
                rng = gathered
            path = None
            if dist_info.main:
                payload = {
                    "format": CHECKPOINT_FORMAT,
                    "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict() if scaler.is_enabled() else {},
                    "epoch": epoch,
                    "batch_in_epoch": batch_in_epoch,
                    "global_step": global_step,
                    "rng": rng,
                    "sampler": {"kind": "DistributedSampler", "seed": cfg.seed, "epoch": epoch,
                                "batch_in_epoch": batch_in_epoch, "world_size": dist_info.world},
                    "config": json.dumps(cfg.to_dict()),
                    "history": json.dumps(history),
                }
                path = out_dir / "checkpoints" / f"step_{global_step:08d}.pt"
                with atomic_path(path) as tmp:
                    torch.save(payload, tmp)
                _write_logs(out_dir, cfg, history)
                if cfg.keep_checkpoints is not None:
                    olds = sorted((out_dir / "checkpoints").glob("step_*.pt"))
                    for old in olds[: -cfg.keep_checkpoints]:
                        with contextlib.suppress(FileNotFoundError):
                            old.unlink()
            dist_info.barrier()
            return path

        if dist_info.main:
            out_dir.mkdir(parents=True, exist_ok=True)
            log.info("fine-tuning: %d trainable / %d frozen tensors, %d steps",
                     counts["trainable"], counts["frozen"], total_steps)
        t_start = time.perf_counter()
        if global_step == 0 and batch_in_epoch == 0 and epoch == 0 and cfg.eval_before:
            row = {"epoch": 0, "step": 0, "lr": scheduler.get_last_lr()[0], "seconds": 0.0}
            run_eval(row)
            if dist_info.main:
                history["epochs"].append(row)
            dist_info.barrier()

        bar = None
        if dist_info.main and cfg.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total_steps, initial=global_step, desc="fine-tuning", unit="step",
                       dynamic_ncols=True)
        interrupted = False
        last_path: Path | None = ckpt_path if resume else None
        model.train()
        while epoch < cfg.epochs and not interrupted:
            batches = _epoch_batches(n_train, cfg, epoch, dist_info.world, dist_info.rank)
            loader = DataLoader(
                train_ds,
                batch_sampler=batches[batch_in_epoch:],
                collate_fn=collate,
                num_workers=cfg.num_workers,
                generator=_worker_generator(cfg.seed, epoch),
                pin_memory=device.type == "cuda",
            )
            it = iter(loader)
            epoch_losses = [r["loss"] for r in history["steps"] if r["epoch"] == epoch + 1]
            while batch_in_epoch < len(batches):
                group = min(cfg.grad_accum_steps, len(batches) - batch_in_epoch)
                optimizer.zero_grad(set_to_none=True)
                step_loss = 0.0
                for j in range(group):
                    images, texts = next(it)
                    images = images.to(device, non_blocking=True)
                    texts = texts.to(device, non_blocking=True)
                    sync = dist_info.world == 1 or j == group - 1
                    ctx = contextlib.nullcontext() if sync else train_model.no_sync()
                    with ctx:
                        with autocast(device, amp_dtype):
                            img_f, txt_f, scale = _features(train_model(images, texts))
                        loss = criterion(img_f, txt_f,
                                         logit_scale=scale if cfg.learn_logit_scale else None)
                        scaler.scale(loss / group).backward()
                    step_loss += float(loss.detach()) / group
                if cfg.max_grad_norm is not None:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(
                        [p for p in model.parameters() if p.requires_grad], cfg.max_grad_norm
                    )
                scaler.step(optimizer)
                scaler.update()
                lr_used = scheduler.get_last_lr()[0]
                scheduler.step()
                if cfg.learn_logit_scale:
                    with torch.no_grad():
                        model.logit_scale.clamp_(0, math.log(100))
                batch_in_epoch += group
                global_step += 1
                if dist_info.world > 1:
                    t = torch.tensor([step_loss], device=device)
                    torch.distributed.all_reduce(t)
                    step_loss = float(t) / dist_info.world
                epoch_losses.append(step_loss)
                if dist_info.main:
                    history["steps"].append(
                        {"step": global_step, "epoch": epoch + 1, "loss": step_loss, "lr": lr_used}
                    )
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(epoch=epoch + 1, loss=f"{step_loss:.4f}")
                stop = cfg.stop_after_steps is not None and global_step >= cfg.stop_after_steps
                every = cfg.checkpoint_every_steps
                mid_epoch = batch_in_epoch < len(batches)  # the epoch end saves one anyway
                if mid_epoch and (stop or (every and global_step % every == 0)):
                    last_path = save_checkpoint()
                if stop:
                    break
            if batch_in_epoch < len(batches):
                interrupted = True  # stopped mid-epoch, with a checkpoint
                break
            # ---- end of epoch
            del it, loader
            row = {
                "epoch": epoch + 1,
                "step": global_step,
                "train_loss": float(np.mean(epoch_losses)) if epoch_losses else float("nan"),
                "lr": scheduler.get_last_lr()[0],
                "seconds": time.perf_counter() - t_start,
            }
            if cfg.eval_every and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
                run_eval(row)
            if dist_info.main:
                history["epochs"].append(row)
            epoch, batch_in_epoch = epoch + 1, 0
            last_path = save_checkpoint()
            if cfg.stop_after_steps is not None and global_step >= cfg.stop_after_steps:
                interrupted = epoch < cfg.epochs
        if bar is not None:
            bar.close()
        model.eval()

        model_path = None
        if not interrupted and dist_info.main:
            final = history["epochs"][-1] if history["epochs"] else {}
            meta = {k: v for k, v in final.items() if isinstance(v, (int, float, str))
                    and not (isinstance(v, float) and math.isnan(v))}
            model_path = save_clip_checkpoint(
                bundle, out_dir / "model.pt", finetune_config=cfg.to_dict(),
                global_step=global_step, final_metrics=meta,
            )
            _write_logs(out_dir, cfg, history)
        dist_info.barrier()
        return {
            "model_path": model_path,
            "out_dir": out_dir,
            "global_step": global_step,
            "epochs_done": epoch,
            "interrupted": interrupted,
            "checkpoint": last_path,
            "history": history,
            "final_metrics": history["epochs"][-1] if history["epochs"] else {},
        }
    finally:
        if dist_info.owns_group:
            torch.distributed.destroy_process_group()


# --------------------------------------------------------------------------------------------
# command line


def add_finetune_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``finetune`` options to ``parser`` (used by ``medclipsam finetune``)."""
    d = FinetuneConfig()
    p = parser
    p.add_argument("--clip", default="biomedclip",
                   help="CLIP to fine-tune: biomedclip, toy, an open_clip name or a checkpoint "
                   "(default: %(default)s)")
    p.add_argument("--captions", required=True,
                   help="CSV with columns image,caption[,split] (paths relative to the CSV)")
    p.add_argument("--image-root", default=None, help="folder the CSV's image paths are under")
    p.add_argument("--val-captions", default=None,
                   help="separate validation CSV (default: the 'val' split of --captions)")
    p.add_argument("--train-split", default="train",
                   help="split used for training when the CSV has a split column (default: train)")
    p.add_argument("--val-split", default="val", help="validation split name (default: val)")
    p.add_argument("--min-caption-chars", type=int, default=0,
                   help="drop captions shorter than this (the MedPix recipe uses 20)")
    p.add_argument("--out", required=True, help="output folder (checkpoints, logs, model.pt)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    p.add_argument("--loss", default=d.loss, help="dhn_nce, hn_nce, dcl or infonce (default: %(default)s)")
    p.add_argument("--tau", type=float, default=d.tau, help="temperature (default: %(default)s)")
    p.add_argument("--learn-logit-scale", action="store_true",
                   help="use and train the model's logit scale instead of a fixed --tau")
    p.add_argument("--beta1", type=float, default=d.beta1)
    p.add_argument("--beta2", type=float, default=d.beta2)
    p.add_argument("--alpha", type=float, default=d.alpha, help="hn_nce only")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="per process")
    p.add_argument("--lr", type=float, default=d.lr,
                   help="peak learning rate (default: %(default)s; v2 script 1e-3, paper 1e-6)")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    p.add_argument("--grad-accum-steps", type=int, default=d.grad_accum_steps)
    p.add_argument("--max-grad-norm", type=float, default=None)
    p.add_argument("--precision", choices=PRECISIONS, default=d.precision)
    p.add_argument("--freeze", choices=FREEZE_CHOICES, default=d.freeze,
                   help="freeze a whole tower (default: %(default)s)")
    p.add_argument("--trainable-blocks", type=int, default=None,
                   help="train only the last N blocks of each unfrozen tower")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--num-workers", type=int, default=d.num_workers)
    p.add_argument("--device", default=d.device)
    p.add_argument("--eval-every", type=int, default=d.eval_every, help="epochs (0: never)")
    p.add_argument("--no-eval-before", action="store_true", help="skip evaluating the start model")
    p.add_argument("--checkpoint-every-steps", type=int, default=None)
    p.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints)
    p.add_argument("--stop-after-steps", type=int, default=None,
                   help="stop cleanly after N optimiser steps (resumable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _csv_has_split(path: Path) -> bool:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        header = next(csv.reader(fh), None) or []
    return "split" in [h.strip().lower() for h in header]


def run_from_args(args: argparse.Namespace) -> int:
    """Run :func:`finetune` from parsed :func:`add_finetune_arguments` options."""
    from .data import CaptionDataset
    from .models import load_clip

    cfg = FinetuneConfig(
        out_dir=args.out, loss=args.loss, tau=args.tau, learn_logit_scale=args.learn_logit_scale,
        beta1=args.beta1, beta2=args.beta2, alpha=args.alpha, batch_size=args.batch_size,
        lr=args.lr, weight_decay=args.weight_decay, warmup_steps=args.warmup_steps,
        epochs=args.epochs, grad_accum_steps=args.grad_accum_steps,
        max_grad_norm=args.max_grad_norm, precision=args.precision, freeze=args.freeze,
        trainable_blocks=args.trainable_blocks, seed=args.seed, num_workers=args.num_workers,
        device=args.device, eval_every=args.eval_every, eval_before=not args.no_eval_before,
        checkpoint_every_steps=args.checkpoint_every_steps,
        keep_checkpoints=args.keep_checkpoints, stop_after_steps=args.stop_after_steps,
        progress=not args.no_progress,
    )
    cfg.validate()
    captions = Path(args.captions)
    if not captions.is_file():
        raise FileNotFoundError(f"{captions}: caption CSV not found")
    has_split = _csv_has_split(captions)
    common = {"image_root": args.image_root, "min_caption_chars": args.min_caption_chars}
    train = CaptionDataset(captions, split=args.train_split if has_split else None, **common)
    if len(train) == 0:
        raise ValueError(f"{captions}: no training pairs (split {args.train_split!r})")
    val = None
    if args.val_captions:
        val = CaptionDataset(args.val_captions, **common)
    elif has_split:
        val = CaptionDataset(captions, split=args.val_split, **common)
        val = val if len(val) else None
    world = int(os.environ.get("WORLD_SIZE", "1"))
    bundle = load_clip(args.clip, device="cpu" if world > 1 else cfg.device)
    result = finetune(bundle, train, val, cfg, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        final = result["final_metrics"]
        shown = {k: round(v, 3) for k, v in final.items()
                 if k in ("train_loss", "val_loss", "i2t_top1", "t2i_top1")
                 and isinstance(v, float)}
        what = "stopped (resumable)" if result["interrupted"] else "done"
        print(f"{what}: step {result['global_step']}, {shown}; "
              f"model: {result['model_path'] or '-'}; logs: {Path(args.out) / 'log.csv'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m medclipsam.finetune ...`` (the same options as ``medclipsam finetune``)."""
    parser = argparse.ArgumentParser(
        prog="medclipsam finetune",
        description="Contrastive (DHN-NCE) fine-tuning of a CLIP model on image-caption pairs.",
    )
    add_finetune_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return run_from_args(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
