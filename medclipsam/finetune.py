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

The loop, step by step (:class:`_Run`'s methods, in the order :func:`finetune` calls them):
set up (model on the device, freezing, loss, AdamW, schedule, precision), ``start_or_resume``,
``wrap_for_processes``, ``evaluate_start``, then per epoch ``train_epoch`` (each
``optimiser_step``: accumulate, clip, step, schedule) and ``end_epoch`` (log row, validation,
``save_checkpoint``), and ``finish`` (``model.pt``). Checkpoints, resume checks, logs, mixed
precision and the schedule come from the scaffold weak supervision uses too
(:mod:`medclipsam.training`).

Command line: ``medclipsam finetune --clip biomedclip --captions pairs.csv --out runs/dhn``
(``torchrun --nproc_per_node N -m medclipsam finetune ...`` on several GPUs); its options are the
fields of :class:`~medclipsam.config.FinetuneConfig` (``medclipsam finetune --help``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from ._utils import get_device, outside_stacklevel, rng_state, seed_everything, set_rng_state
from .config import FinetuneConfig
from .losses import ContrastiveLoss
from .models import save_clip_checkpoint
from .models.clip import trim_padding
from .retrieval import retrieval_protocol, topk_accuracy
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
from .vocab import FREEZE_MODES

__all__ = [
    "apply_freezing",
    "evaluate_retrieval",
    "finetune",
    "latest_checkpoint",
]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "medclipsam-finetune/1"
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


# --------------------------------------------------------------------------------------------
# freezing


def _tower_of(name: str) -> str:
    if name.startswith("visual."):
        return "image"
    if name in ("logit_scale", "logit_bias"):
        return "scale"
    return "text"


def _block_stack(model: nn.Module, tower: str) -> tuple[str, nn.Module] | None:
    """The longest list of same-type blocks inside ``tower``: the transformer blocks (an
    ``nn.ModuleList`` in open_clip and BERT, an ``nn.Sequential`` in timm's ViTs: BiomedCLIP's
    and the toy CLIP's ``visual.trunk.blocks``)."""
    best: tuple[str, nn.Module] | None = None
    for name, mod in model.named_modules():
        if not isinstance(mod, (nn.ModuleList, nn.Sequential)) or not name or _tower_of(name + ".") != tower:
            continue
        if len({type(m) for m in mod}) != 1:  # a stack of blocks repeats one block type
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
    if freeze not in FREEZE_MODES:
        raise ValueError(f"freeze must be one of {FREEZE_MODES}, got {freeze!r}")
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
    dist = torch.distributed
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
# checkpoints and logs (the shared scaffold: medclipsam.training)


def _checkpoints(out_dir: str | os.PathLike) -> Checkpoints:
    return Checkpoints(out_dir, "step", 8, CHECKPOINT_FORMAT, "fine-tuning checkpoint")


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The training checkpoint with the highest step in ``out_dir/checkpoints``, or None."""
    return _checkpoints(out_dir).latest()


def _write_logs(out_dir: Path, cfg: FinetuneConfig, history: dict) -> None:
    write_table(out_dir / "log.csv", EPOCH_COLUMNS, history["epochs"])
    write_table(out_dir / "steps.csv", STEP_COLUMNS, history["steps"])
    write_json(out_dir / "log.json",
               {"config": cfg.to_dict(), "epochs": history["epochs"], "steps": history["steps"]})


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
    core = _unwrap(model)
    was_training = core.training
    core.eval()
    img_list, txt_list = [], []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    for images, texts in loader:
        with autocast(device, amp_dtype):
            img_list.append(core.encode_image(images.to(device), normalize=True).float().cpu())
            tokens = trim_padding(core, texts.to(device))
            txt_list.append(core.encode_text(tokens, normalize=True).float().cpu())
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


class _Run:
    """One fine-tuning run: its model, optimiser and counters, and the named steps that
    :func:`finetune` takes in order (set up, start or resume, evaluate, train epoch after epoch,
    finish). Every step is a method, so a reader can follow the loop one step at a time."""

    def __init__(self, clip: Any, train_ds: Any, val_ds: Any, cfg: FinetuneConfig,
                 dist_info: _Dist, device: torch.device) -> None:
        self.clip, self.cfg, self.dist, self.device = clip, cfg, dist_info, device
        self.train_ds, self.val_ds = train_ds, val_ds
        self.out_dir = Path(cfg.out_dir)
        self.checkpoints = _checkpoints(self.out_dir)
        self.model: nn.Module = clip.model
        self.model.to(device)
        self.counts = apply_freezing(self.model, cfg.freeze, cfg.trainable_blocks,
                                     cfg.learn_logit_scale)
        self.total_steps = self._count_steps()
        self.criterion = ContrastiveLoss(
            cfg.loss, tau=None if cfg.learn_logit_scale else cfg.tau,
            beta1=cfg.beta1, beta2=cfg.beta2, alpha=cfg.alpha,
        )
        self.optimizer = torch.optim.AdamW(
            _param_groups(self.model, cfg.weight_decay), lr=cfg.lr,
            betas=tuple(cfg.adam_betas), eps=cfg.adam_eps,
        )
        self.scheduler = cosine_schedule(self.optimizer, self.total_steps, cfg.warmup_steps)
        self.amp_dtype = autocast_dtype(cfg.precision, device)
        self.scaler = grad_scaler(device, self.amp_dtype)
        self.collate = _Collate(clip.preprocess, clip.tokenizer)
        self.val_groups = None
        if val_ds is not None and cfg.group_identical_captions:
            self.val_groups = getattr(val_ds, "captions", None)
        self.train_model: nn.Module = self.model  # the DDP wrapper under torchrun
        self.epoch = self.batch_in_epoch = self.global_step = 0
        self.history: dict[str, list] = {"epochs": [], "steps": []}
        self.interrupted = False
        self.last_path: Path | None = None
        self.t_start = 0.0
        self.bar: Any = None

    # -- set up ------------------------------------------------------------------------------

    def _count_steps(self) -> int:
        """Optimiser steps of the whole run (warns when the warm-up is longer than that)."""
        cfg, n_train = self.cfg, len(self.train_ds)
        batches_per_epoch = len(_epoch_batches(n_train, cfg, 0, self.dist.world, self.dist.rank))
        if batches_per_epoch == 0:
            raise ValueError(
                f"{n_train} training pairs give no batch of {cfg.batch_size} per process "
                f"({self.dist.world} process(es)); lower batch_size or set drop_last=False"
            )
        total = math.ceil(batches_per_epoch / cfg.grad_accum_steps) * cfg.epochs
        if cfg.warmup_steps >= total and self.dist.main:
            warnings.warn(
                f"warmup_steps={cfg.warmup_steps} >= the {total} optimiser steps of the "
                "run: the learning rate never reaches its peak",
                UserWarning,
                stacklevel=outside_stacklevel(),
            )
        return total

    def start_or_resume(self, resume: bool) -> None:
        """A fresh start (seeded per process), or the latest checkpoint's full state: weights,
        optimiser, schedule, scaler, counters, log history and random streams."""
        # only rank 0 writes, so only it removes what a killed write left behind
        path = start_or_resume(self.checkpoints, resume, self.out_dir, clean=self.dist.main)
        if path is None:
            seed_everything(self.cfg.seed + self.dist.rank)
            return
        ckpt = self.checkpoints.read(path)
        check_same_settings(json.loads(ckpt["config"]), self.cfg.to_dict(), _FREE_FIELDS, path)
        restore_training_state(ckpt, self.model, self.optimizer, self.scheduler, self.scaler)
        self.epoch, self.batch_in_epoch = int(ckpt["epoch"]), int(ckpt["batch_in_epoch"])
        self.global_step = int(ckpt["global_step"])
        self.history = json.loads(ckpt["history"])
        states = ckpt["rng"]
        if len(states) != self.dist.world and self.dist.main:
            warnings.warn(
                f"{path}: saved with {len(states)} process(es), resumed with "
                f"{self.dist.world}: random streams (dropout) are not exactly restored",
                UserWarning,
                stacklevel=outside_stacklevel(),
            )
        set_rng_state(states[min(self.dist.rank, len(states) - 1)])
        self.last_path = path
        if self.dist.main:
            log.info("resuming from %s (epoch %d, step %d)", path, self.epoch, self.global_step)

    def wrap_for_processes(self) -> None:
        """Under torchrun: the model in ``DistributedDataParallel`` (gradients averaged)."""
        if self.dist.world > 1:
            self.train_model = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )

    # -- evaluation --------------------------------------------------------------------------

    def evaluate(self, row: dict) -> None:
        """Add validation loss and retrieval (rank 0, when there is a validation set) to ``row``."""
        cfg = self.cfg
        if self.val_ds is None or len(self.val_ds) < 2 or not self.dist.main:
            return
        scale = self.model.logit_scale.exp() if cfg.learn_logit_scale else None
        row.update(
            evaluate_retrieval(
                self.model, self.val_ds, self.collate, device=self.device,
                batch_size=max(cfg.batch_size, 32), criterion=self.criterion,
                loss_batch=cfg.batch_size, logit_scale=scale, groups=self.val_groups,
                seed=cfg.seed, amp_dtype=self.amp_dtype,
            )
        )

    def evaluate_start(self) -> None:
        """The epoch-0 row: the model before any training (fresh runs with ``eval_before``)."""
        if self.dist.main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            log.info("fine-tuning: %d trainable / %d frozen tensors, %d steps",
                     self.counts["trainable"], self.counts["frozen"], self.total_steps)
        self.t_start = time.perf_counter()
        fresh = self.global_step == 0 and self.batch_in_epoch == 0 and self.epoch == 0
        if fresh and self.cfg.eval_before:
            row = {"epoch": 0, "step": 0, "lr": self.scheduler.get_last_lr()[0], "seconds": 0.0}
            self.evaluate(row)
            if self.dist.main:
                self.history["epochs"].append(row)
            self.dist.barrier()

    # -- training ----------------------------------------------------------------------------

    def train_epoch(self) -> None:
        """The optimiser steps left in this epoch (from ``batch_in_epoch`` on: a resumed epoch
        continues where it stopped); mid-epoch checkpoints; ``stop_after_steps`` stops here."""
        cfg = self.cfg
        batches = _epoch_batches(len(self.train_ds), cfg, self.epoch, self.dist.world, self.dist.rank)
        loader = DataLoader(
            self.train_ds,
            batch_sampler=batches[self.batch_in_epoch:],
            collate_fn=self.collate,
            num_workers=cfg.num_workers,
            generator=_worker_generator(cfg.seed, self.epoch),
            pin_memory=self.device.type == "cuda",
        )
        it = iter(loader)
        self.epoch_losses = [r["loss"] for r in self.history["steps"] if r["epoch"] == self.epoch + 1]
        while self.batch_in_epoch < len(batches):
            group = min(cfg.grad_accum_steps, len(batches) - self.batch_in_epoch)
            self.optimiser_step(it, group)
            stop = cfg.stop_after_steps is not None and self.global_step >= cfg.stop_after_steps
            every = cfg.checkpoint_every_steps
            mid_epoch = self.batch_in_epoch < len(batches)  # the epoch end saves one anyway
            if mid_epoch and (stop or (every and self.global_step % every == 0)):
                self.last_path = self.save_checkpoint()
            if stop:
                break
        self.interrupted = self.batch_in_epoch < len(batches)  # stopped mid-epoch, with a checkpoint

    def optimiser_step(self, batches: Iterator, group: int) -> None:
        """One optimiser step over the next ``group`` batches (gradient accumulation): forward,
        loss, backward (DDP synchronises on the last batch only), clipping, step, schedule, log."""
        cfg, device = self.cfg, self.device
        self.optimizer.zero_grad(set_to_none=True)
        step_loss = 0.0
        for j in range(group):
            images, texts = next(batches)
            images = images.to(device, non_blocking=True)
            # trailing padding columns change no feature (the attention mask hides them) but cost most
            # of a 256-token text tower's work
            texts = trim_padding(_unwrap(self.train_model), texts.to(device, non_blocking=True))
            sync = self.dist.world == 1 or j == group - 1
            with contextlib.nullcontext() if sync else self.train_model.no_sync():
                with autocast(device, self.amp_dtype):
                    img_f, txt_f, scale = _features(self.train_model(images, texts))
                loss = self.criterion(img_f, txt_f,
                                      logit_scale=scale if cfg.learn_logit_scale else None)
                self.scaler.scale(loss / group).backward()
            step_loss += float(loss.detach()) / group
        if cfg.max_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(
                [p for p in self.model.parameters() if p.requires_grad], cfg.max_grad_norm
            )
        self.scaler.step(self.optimizer)
        self.scaler.update()
        lr_used = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        if cfg.learn_logit_scale:
            with torch.no_grad():
                self.model.logit_scale.clamp_(0, math.log(100))
        self.batch_in_epoch += group
        self.global_step += 1
        step_loss = self._mean_over_processes(step_loss)
        self.epoch_losses.append(step_loss)
        if self.dist.main:
            self.history["steps"].append(
                {"step": self.global_step, "epoch": self.epoch + 1, "loss": step_loss, "lr": lr_used}
            )
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(epoch=self.epoch + 1, loss=f"{step_loss:.4f}")

    def _mean_over_processes(self, value: float) -> float:
        if self.dist.world == 1:
            return value
        t = torch.tensor([value], device=self.device)
        torch.distributed.all_reduce(t)
        return float(t) / self.dist.world

    def end_epoch(self) -> None:
        """The epoch's log row (mean training loss, validation when due), a checkpoint, and the
        ``stop_after_steps`` check at an epoch boundary."""
        cfg = self.cfg
        row = {
            "epoch": self.epoch + 1,
            "step": self.global_step,
            "train_loss": float(np.mean(self.epoch_losses)) if self.epoch_losses else float("nan"),
            "lr": self.scheduler.get_last_lr()[0],
            "seconds": time.perf_counter() - self.t_start,
        }
        if cfg.eval_every and ((self.epoch + 1) % cfg.eval_every == 0 or self.epoch + 1 == cfg.epochs):
            self.evaluate(row)
        if self.dist.main:
            self.history["epochs"].append(row)
        self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        self.last_path = self.save_checkpoint()
        if cfg.stop_after_steps is not None and self.global_step >= cfg.stop_after_steps:
            self.interrupted = self.epoch < cfg.epochs

    # -- checkpoints and the end -------------------------------------------------------------

    def save_checkpoint(self) -> Path | None:
        """Everything needed to continue exactly (rank 0 writes; every rank's RNG state is
        gathered), the logs so far, and pruning to ``keep_checkpoints``."""
        cfg, dist_info = self.cfg, self.dist
        rng = [rng_state()]
        if dist_info.world > 1:
            gathered: list = [None] * dist_info.world
            torch.distributed.all_gather_object(gathered, rng[0])
            rng = gathered
        path = None
        if dist_info.main:
            payload = {
                **training_state(self.model, self.optimizer, self.scheduler, self.scaler),
                "epoch": self.epoch,
                "batch_in_epoch": self.batch_in_epoch,
                "global_step": self.global_step,
                "rng": rng,
                "sampler": {"kind": "DistributedSampler", "seed": cfg.seed, "epoch": self.epoch,
                            "batch_in_epoch": self.batch_in_epoch, "world_size": dist_info.world},
                "config": json.dumps(cfg.to_dict()),
                "history": json.dumps(self.history),
            }
            path = self.checkpoints.save(payload, self.global_step, cfg.keep_checkpoints)
            _write_logs(self.out_dir, cfg, self.history)
        dist_info.barrier()
        return path

    def finish(self) -> dict[str, Any]:
        """``model.pt`` (a CLIP checkpoint :func:`~medclipsam.models.load_clip` reads) and the
        final logs, unless the run was interrupted; the result dict of :func:`finetune`."""
        self.model.eval()
        model_path = None
        if not self.interrupted and self.dist.main:
            final = self.history["epochs"][-1] if self.history["epochs"] else {}
            meta = {k: v for k, v in final.items() if isinstance(v, (int, float, str))
                    and not (isinstance(v, float) and math.isnan(v))}
            model_path = save_clip_checkpoint(
                self.clip, self.out_dir / "model.pt", finetune_config=self.cfg.to_dict(),
                global_step=self.global_step, final_metrics=meta,
            )
            _write_logs(self.out_dir, self.cfg, self.history)
        self.dist.barrier()
        return {
            "model_path": model_path,
            "out_dir": self.out_dir,
            "global_step": self.global_step,
            "epochs_done": self.epoch,
            "interrupted": self.interrupted,
            "checkpoint": self.last_path,
            "history": self.history,
            "final_metrics": self.history["epochs"][-1] if self.history["epochs"] else {},
        }


def finetune(
    clip: Any,
    train_ds: Any,
    val_ds: Any = None,
    config: FinetuneConfig | None = None,
    *,
    resume: bool = False,
) -> dict[str, Any]:
    """Fine-tune ``clip.model`` (in place) contrastively on ``train_ds``; see the module doc.

    ``clip``: a :class:`~medclipsam.models.ClipBundle`. Datasets yield ``(image, caption)``
    items: an image in any form the clip's preprocess takes (or an already prepared (3, S, S)
    tensor) and a caption string (or token ids), e.g. :class:`~medclipsam.data.CaptionDataset`.
    ``resume=True`` continues from the latest checkpoint in ``config.out_dir`` (a fresh start if
    there is none); without it an ``out_dir`` holding checkpoints is refused.
    Returns ``{"model_path", "out_dir", "global_step", "epochs_done", "interrupted",
    "checkpoint", "history", "final_metrics"}`` (``model_path`` is None when interrupted).
    """
    cfg = config or FinetuneConfig()
    cfg.validate()
    n_train = len(train_ds)
    if n_train < 2:
        raise ValueError(f"the training set has {n_train} pair(s); contrastive training needs >= 2")
    dist_info, device = _init_distributed(cfg.device)
    try:
        run = _Run(clip, train_ds, val_ds, cfg, dist_info, device)
        run.start_or_resume(resume)
        run.wrap_for_processes()
        run.evaluate_start()
        run.bar = progress_bar(run.total_steps, run.global_step, "fine-tuning", "step",
                               show=dist_info.main and cfg.progress)
        run.model.train()
        try:
            while run.epoch < cfg.epochs and not run.interrupted:
                run.train_epoch()
                if not run.interrupted:
                    run.end_epoch()
        finally:
            if run.bar is not None:
                run.bar.close()
        return run.finish()
    finally:
        if dist_info.owns_group:
            torch.distributed.destroy_process_group()
