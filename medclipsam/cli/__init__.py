"""The ``medclipsam`` command line.

Sub-commands:
  demo      the main job on the built-in offline (phantom) world; writes figures and a table
  segment   text prompt + a folder of images -> masks (zero-shot MedCLIP-SAM)
  evaluate  score a folder of predicted masks against ground truth (Dice, IoU, HD95, NSD)
  pseudo-label  zero-shot masks of a data set's split as pseudo-labels (with a manifest)
  train-weak    train a Residual UNet on (pseudo-)labels, early stopping on a validation split
  reproduce     zero-shot vs weakly vs fully supervised on a prepared data set, beside the paper
  compare   MedCLIP-SAM with SAM / MedSAM / SAM 2 beside SAM 3 from the text alone, one table
  phantom   write a phantom data set in the project's folder layout
  prepare   convert a public data set (BUSI, UDIAT, brain_figshare, covidqu, roco) to that layout
  finetune  contrastive fine-tuning of a CLIP model (InfoNCE, DCL, HN-NCE, DHN-NCE)
  info      versions, device and where weights are cached

Design notes. Every option says its default in ``--help``, and that default is the Python API's:
the settings come from :mod:`medclipsam.config` (the same dataclasses the API uses), the choices
from :mod:`medclipsam.vocab`, and an option the user leaves out is not passed at all, so the API's
own default applies (``segment`` and ``MedCLIPSAM.offline().predict`` give the same masks). Building the
parser imports neither torch nor the models (``medclipsam SUB --help`` answers at once): each
command imports the package's modules it needs when it runs (elsewhere only the top-level
``__init__`` and a few optional third-party dependencies are imported inside functions;
tests/test_structure.py lists them). Heavy commands take ``--threads N`` (torch's CPU threads).

Errors and exit codes: a wrong argument, a missing folder or file, an unreadable checkpoint or a
bad input file ends in one line ``error: ...`` on stderr and exit code 2; arguments and paths are
checked before any model loads. ``segment`` and ``pseudo-label`` record an image that cannot be
read as a failed row of results.csv and go on (``--strict``: stop at the first); they exit with 1
when any image failed (the failed files are named at the end), 0 when all succeeded. Ctrl-C
exits with 130 (rerun the same command to resume). ``MEDCLIPSAM_DEBUG=1`` shows the traceback
instead of the one-line error.

Layout: :mod:`.options` defines each group of options several commands share once (models,
pipeline settings, folder runs, scoring, the UNet's training, threads) and turns the parsed
namespace into the API's settings and a loaded pipeline; :mod:`.parser` declares each command's
options from those groups; :mod:`.checks` checks arguments before anything loads; :mod:`.commands`
runs each command.
"""

from __future__ import annotations

import os
import sys
import warnings

from .checks import need_positive, one_line, show_warning, user_error
from .parser import build_parser

__all__ = ["build_parser", "main"]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "threads", None) is not None:
            need_positive(threads=args.threads)
            import torch

            torch.set_num_threads(args.threads)
        with warnings.catch_warnings():
            warnings.showwarning = show_warning
            return args.func(args)
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as err:
        if os.environ.get("MEDCLIPSAM_DEBUG") or not user_error(err):
            raise
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2
