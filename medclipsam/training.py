"""The scaffold both training loops stand on: checkpoints, resume, logs, mixed precision, schedule.

Fine-tuning CLIP (:mod:`medclipsam.finetune`, one checkpoint per optimiser step it saves at) and
training the Residual UNet on pseudo-labels (:mod:`medclipsam.weak`, one per epoch) differ in what
they learn, not in how a run is kept:

* :class:`Checkpoints`: ``out_dir/checkpoints/<prefix>_<number>.pt`` files, written atomically,
  found by number (:meth:`Checkpoints.latest`), pruned to the last ``keep``, read back with
  ``torch.load(weights_only=True)`` and checked for their ``format`` entry.
* :func:`start_or_resume`: a folder holding checkpoints is only continued when asked
  (``resume=True``), and only with the settings that shape the run (:func:`check_same_settings`);
  temporaries left by a run killed mid-write are removed first.
* :func:`training_state` / :func:`restore_training_state`: model, optimiser, schedule and gradient
  scaler in one dict and back; with the RNG states (:func:`medclipsam._utils.rng_state`) this is
  what makes an interrupted and resumed CPU run end bit-identical to an uninterrupted one.
* :func:`write_table` / :func:`write_json`: ``log.csv``-style tables (numbers to 6 significant
  digits, NaN and None empty) and strict JSON (NaN becomes null), both written atomically.
* :func:`autocast_dtype`, :func:`autocast` and :func:`grad_scaler`: bf16 or fp16 autocast on a GPU
  (fp16 with a gradient scaler), fp32 on the CPU.
* :func:`cosine_schedule`: linear warm-up, then cosine decay to a floor
  (:func:`medclipsam._utils.warmup_cosine`), stepped per optimiser step or per epoch.
* :func:`progress_bar`: a ``tqdm.auto`` bar, or None when progress is off.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import re
from collections.abc import Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ._utils import (
    atomic_path,
    atomic_write_text,
    checkpoint_error_detail,
    progress_wanted,
    remove_stale_temporaries,
    warmup_cosine,
)

__all__ = [
    "Checkpoints",
    "autocast",
    "autocast_dtype",
    "check_same_settings",
    "cosine_schedule",
    "fmt",
    "grad_scaler",
    "no_nan",
    "progress_bar",
    "read_checkpoint",
    "restore_training_state",
    "start_or_resume",
    "training_state",
    "write_json",
    "write_table",
]


class Checkpoints:
    """The numbered checkpoint files ``<out_dir>/checkpoints/<prefix>_<number>.pt`` of one run.

    ``digits`` pads the number (so names sort like numbers); ``format`` is the value every
    checkpoint's ``"format"`` entry must have; ``what`` names the kind in error messages.
    """

    def __init__(self, out_dir: str | Path, prefix: str, digits: int, format: str, what: str) -> None:
        self.folder = Path(out_dir) / "checkpoints"
        self.prefix = prefix
        self.digits = digits
        self.format = format
        self.what = what
        self._name = re.compile(rf"{re.escape(prefix)}_(\d+)\.pt")

    def path(self, number: int) -> Path:
        """Where checkpoint ``number`` goes."""
        return self.folder / f"{self.prefix}_{int(number):0{self.digits}d}.pt"

    def files(self) -> list[Path]:
        """The checkpoints present, by increasing number."""
        found = []
        for p in self.folder.glob(f"{self.prefix}_*.pt"):
            m = self._name.fullmatch(p.name)
            if m:
                found.append((int(m.group(1)), p))
        return [p for _, p in sorted(found)]

    def latest(self) -> Path | None:
        """The checkpoint with the highest number, or None."""
        files = self.files()
        return files[-1] if files else None

    def save(self, payload: dict, number: int, keep: int | None = None) -> Path:
        """Write ``payload`` (with this kind's ``format``) atomically as checkpoint ``number``,
        then delete all but the last ``keep`` checkpoints (None keeps all)."""
        path = self.path(number)
        with atomic_path(path) as tmp:
            torch.save({"format": self.format, **payload}, tmp)
        if keep is not None:
            for old in self.files()[:-keep]:
                with contextlib.suppress(FileNotFoundError):
                    old.unlink()
        return path

    def read(self, path: str | Path) -> dict:
        """A checkpoint of this kind; a clear error for a file that cannot be read or is another
        kind (the message says to delete it to resume from the previous one)."""
        return read_checkpoint(path, (self.format,), self.what,
                               hint="; delete it to resume from the previous one")


def read_checkpoint(path: str | Path, formats: Sequence[str], what: str, hint: str = "") -> dict:
    """``torch.load(path, weights_only=True)`` of a dict whose ``format`` is one of ``formats``;
    ``FileNotFoundError`` or ``ValueError`` naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: cannot read this file ({checkpoint_error_detail(e, path)}){hint}") from None
    if not isinstance(obj, dict) or obj.get("format") not in formats:
        raise ValueError(f"{path}: not a medclipsam {what} file ({' or '.join(formats)})")
    return obj


def start_or_resume(checkpoints: Checkpoints, resume: bool, out_dir: str | Path,
                    clean: bool = True) -> Path | None:
    """The checkpoint to resume from (None: start fresh). A folder that holds checkpoints is
    refused unless ``resume`` (``FileExistsError``), so a finished or interrupted run is never
    overwritten by accident. With ``clean`` the temporary files a run killed mid-write left in
    ``out_dir`` and its checkpoint folder are removed first (only the process that writes should
    clean)."""
    if clean:
        remove_stale_temporaries(out_dir, checkpoints.folder)
    latest = checkpoints.latest()
    if latest is not None and not resume:
        raise FileExistsError(
            f"{out_dir} already holds training checkpoints ({latest.name}); pass resume=True "
            "(--resume) to continue that run, or choose another out_dir"
        )
    return latest if resume else None


def check_same_settings(saved: dict, now: dict, free: Iterable[str], path: str | Path) -> None:
    """Refuse to resume (``ValueError`` listing the differences) when a setting outside ``free``
    (those that do not change the trajectory: output folder, progress bar, ...) differs."""
    free = set(free)
    diffs = [f"{k}: checkpoint {saved.get(k)!r}, now {now[k]!r}"
             for k in now if k not in free and saved.get(k) != now[k]]
    if diffs:
        raise ValueError(
            f"{path}: cannot resume, the configuration differs from the interrupted run's ("
            + "; ".join(diffs) + "). Use the same settings or another out_dir."
        )


def training_state(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                   scaler: torch.amp.GradScaler) -> dict:
    """Model (on the CPU), optimiser, schedule and gradient-scaler states, ready for a checkpoint."""
    return {
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),  # {} when the scaler is disabled (no fp16)
    }


def restore_training_state(ckpt: dict, model: nn.Module, optimizer: torch.optim.Optimizer,
                           scheduler: Any, scaler: torch.amp.GradScaler) -> None:
    """Inverse of :func:`training_state`: load the four states from a checkpoint."""
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    if ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``: ``"auto"`` is bf16 on a GPU that has it
    (else fp16) and none (full precision) off the GPU; ``"fp32"``, ``"bf16"``, ``"fp16"`` as named."""
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    """``torch.autocast`` on ``device`` with ``dtype``, or a no-op context when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device, amp_dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """A gradient scaler, enabled only for float16 autocast (bf16 and fp32 need none)."""
    return torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)


def cosine_schedule(optimizer: torch.optim.Optimizer, total: int, warmup: int = 0,
                    floor: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """Learning rate = ``lr * warmup_cosine(step, warmup, total, floor)``: linear warm-up over
    ``warmup`` steps, then a cosine decay to ``lr * floor`` at ``total`` (the scheduler is stepped
    once per optimiser step or once per epoch, as the loop counts)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, partial(warmup_cosine, warmup=warmup, total=total, floor=floor)
    )


def fmt(v: Any) -> Any:
    """A table cell: None and NaN empty, floats to 6 significant digits, anything else as is."""
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return v


def no_nan(obj: Any) -> Any:
    """NaN -> None, recursively (strict JSON)."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: no_nan(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [no_nan(v) for v in obj]
    return obj


def write_table(path: str | Path, columns: Sequence[str], rows: Iterable[dict]) -> None:
    """A CSV file with ``columns`` (cells through :func:`fmt`), written atomically."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for row in rows:
        w.writerow([fmt(row.get(c)) for c in columns])
    atomic_write_text(path, buf.getvalue())


def write_json(path: str | Path, payload: Any) -> None:
    """Strict, indented JSON (NaN as null), written atomically."""
    atomic_write_text(path, json.dumps(no_nan(payload), indent=1) + "\n")


def progress_bar(total: int, initial: int, desc: str, unit: str, show: bool = True) -> Any:
    """A ``tqdm.auto`` progress bar (a widget in notebooks), or None when ``show`` is False (or
    ``TQDM_DISABLE`` is set: :func:`progress_wanted`)."""
    if not progress_wanted(show):
        return None
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True)
