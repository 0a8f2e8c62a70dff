"""Checks of the command line's arguments before anything heavy loads, and its one-line errors:
a wrong argument, a missing folder or file ends in ``error: ...`` on stderr and exit code 2."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from ..vocab import SAM2_MODELS, SAM_MODELS, TEXT_BACKENDS

__all__ = ["Parser", "check_folder_run", "check_model_args", "check_prompt", "need_dirs",
           "need_positive", "one_line", "show_warning", "user_error"]

# Model names the loaders know without a file (medclipsam.vocab); anything else that looks like a
# path must exist. Checked here, so that checking them does not import torch.
_SAM_NAMES = (*SAM_MODELS, *SAM2_MODELS)
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")

# Errors a user can fix (bad arguments, paths, files, checkpoints): one line, exit code 2.
_USER_ERRORS = (ValueError, OSError, ImportError)


def one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def user_error(err: BaseException) -> bool:
    """Whether ``err`` is about the user's input or setup (one line, exit code 2): ValueError,
    OSError, ImportError, or any of the package's own error types (``LiteMedSamError``,
    ``DownloadError``), whatever their base; anything else is a bug and keeps its traceback."""
    if isinstance(err, _USER_ERRORS):
        return True
    return any(k.__module__.startswith("medclipsam.") and k.__name__.endswith("Error")
               for k in type(err).__mro__)


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ARG001
    """Warnings on the command line: one line each, ``warning: ...``, without source lines."""
    print(f"warning: {one_line(message)}", file=sys.stderr if file is None else file)


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (``error: ...``, exit code 2) instead of the usage block."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def check_prompt(prompt: str) -> None:
    if not prompt.strip():
        raise ValueError(f"--prompt {prompt!r} is empty; say what to segment, e.g. "
                         "--prompt \"breast tumor\"")


def need_dirs(**folders: Any) -> None:
    """Each given folder (None: not given) must exist and be a folder."""
    for name, folder in folders.items():
        if folder is None:
            continue
        folder = Path(folder)
        flag = "--" + name.replace("_", "-")
        if not folder.exists():
            raise FileNotFoundError(f"{flag} {folder}: folder not found")
        if not folder.is_dir():
            raise NotADirectoryError(f"{flag} {folder}: not a folder")


def need_positive(**values: Any) -> None:
    for name, value in values.items():
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {value}")


def check_model_args(args: argparse.Namespace) -> None:
    """--clip, --sam and --sam-checkpoint name models the loaders know or files that exist."""
    clip, sam = str(args.clip), str(args.sam)
    if clip.startswith("local-dir:"):
        need_dirs(clip=clip[len("local-dir:"):])
    elif not clip.startswith("hf-hub:") and (
        "/" in clip or os.sep in clip or clip.lower().endswith(_CHECKPOINT_SUFFIXES)
    ) and not Path(clip).expanduser().exists():
        raise FileNotFoundError(f"--clip {clip}: checkpoint file or model folder not found")
    _check_sam_checkpoint(sam, getattr(args, "sam_checkpoint", None))
    if sam.partition(":")[0].lower() in TEXT_BACKENDS:
        return
    if sam.lower() not in _SAM_NAMES and not Path(sam).expanduser().exists():
        raise FileNotFoundError(
            f"--sam {sam}: neither a SAM model name ({', '.join(_SAM_NAMES)}, "
            f"{TEXT_BACKENDS[0]}) nor an existing checkpoint file or model folder"
        )


def _check_sam_checkpoint(sam: str, checkpoint: str | None) -> None:
    """--sam-checkpoint replaces the file of a named SAM; it must exist."""
    if checkpoint is None:
        return
    named = list(SAM_MODELS)
    if sam.lower() not in named:
        raise ValueError(f"--sam-checkpoint is the file for --sam {'|'.join(named)}, not --sam {sam} "
                         "(e.g. --sam medsam --sam-checkpoint medsam_vit_b.pth)")
    if not Path(checkpoint).expanduser().is_file():
        raise FileNotFoundError(f"--sam-checkpoint {checkpoint}: file not found")


def check_folder_run(args: argparse.Namespace) -> None:
    """segment / pseudo-label: prompt, folders, numbers and model files, before models load."""
    from ..data.datasets import broken_links, list_image_files
    from ..data.io import SUPPORTED_SUFFIXES

    check_prompt(args.prompt)
    need_dirs(images=args.images)
    by_stem, other = list_image_files(args.images)
    if not by_stem and not broken_links(args.images):
        holds = (f"; it holds {len(other)} other file(s) or subfolder(s): {', '.join(other[:5])}"
                 if other else "")
        raise FileNotFoundError(f"--images {args.images}: no image files in this folder "
                                f"(supported: {', '.join(SUPPORTED_SUFFIXES)}{holds})")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out}: exists and is not a folder")
    need_positive(limit=getattr(args, "limit", None), k=getattr(args, "k", None),
                  components=getattr(args, "components", None),
                  points=getattr(args, "points", None))
    negatives = getattr(args, "negatives", None)
    if negatives is not None and negatives < 0:
        raise ValueError(f"--negatives must be 0 or more, got {negatives}")
    threshold = getattr(args, "threshold", None)
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ValueError(f"--threshold must be between 0 and 1, got {threshold}")
    if getattr(args, "split", None):
        split_file = Path(args.splits) if args.splits else Path(args.images).parent / "splits.json"
        if not split_file.is_file():
            raise FileNotFoundError(f"--split {args.split}: split file {split_file} not found "
                                    "(give --splits)")
    check_model_args(args)
