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
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from .config import OFFLINE_DEFAULTS, FinetuneConfig, PipelineConfig, WeakConfig, default_k
from .vocab import (
    BOX_MODES,
    DATA_SOURCES,
    FREEZE_MODES,
    LOSS_NAMES,
    POSTPROCESS_METHODS,
    SALIENCY_METHODS,
    SALIENCY_OPTIONS,
    SALIENCY_PRECISIONS,
    SAM2_MODELS,
    SAM_MODELS,
    SAM_PROMPT_MODES,
    TASKS,
    TEXT_BACKENDS,
    TRAINING_PRECISIONS,
)

__all__ = ["build_parser", "main"]

_PIPE = PipelineConfig()
_WEAK = WeakConfig()
_FT = FinetuneConfig()


# --------------------------------------------------------------------------------------------
# commands


def _cmd_demo(args: argparse.Namespace) -> int:
    _need_positive(n=args.n, size=args.size)
    from .demo import run_demo  # after the checks: a bad argument fails before models load

    run_demo(out_dir=Path(args.out), n=args.n, size=args.size, seed=args.seed, saliency=args.saliency)
    return 0


def _process_device(device: str) -> str:
    """``device`` as given; under torchrun (``WORLD_SIZE`` > 1) each process's own device
    (``cuda:LOCAL_RANK`` for "auto"/"cuda", :func:`~medclipsam.finetune.ddp_device`), so that a
    folder run sharded over N processes uses N GPUs."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device
    import torch

    from .finetune import ddp_device

    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return str(ddp_device(device, int(os.environ.get("LOCAL_RANK", "0")),
                          int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"])), cuda))


def _offline(args: argparse.Namespace) -> bool:
    """Whether the models named are the offline world's (the toy CLIP with LiteMedSAM, no file of
    one's own)."""
    return (args.clip == "toy" and str(args.sam).lower() == "litemedsam"
            and not getattr(args, "sam_checkpoint", None))


def _pipeline(args: argparse.Namespace, **overrides: Any):
    """The offline world for ``--clip toy --sam litemedsam`` (the defaults), else the named
    models (real ones downloaded once);
    ``--sam sam3-text[:FOLDER]`` is SAM 3 segmenting from the text alone."""
    from .compare import is_text_backend
    from .pipeline import MedCLIPSAM

    if is_text_backend(args.sam):  # SAM 3 from the text alone: no CLIP, no saliency settings
        from .text_baselines import Sam3TextBaseline

        return Sam3TextBaseline.from_pretrained(args.sam.partition(":")[2] or "facebook/sam3",
                                                device=args.device)
    device = _process_device(args.device)
    if _offline(args):
        return MedCLIPSAM.offline(device=device, **overrides)
    return MedCLIPSAM.from_pretrained(args.clip, args.sam, device=device,
                                      sam_checkpoint=getattr(args, "sam_checkpoint", None),
                                      **overrides)


def _saliency_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """--saliency, --k, --precision and --postprocess as PipelineConfig overrides (options left
    out keep the API's defaults, and the offline world's k)."""
    over: dict[str, Any] = {k: v for k, v in (("saliency", args.saliency), ("postprocess", args.postprocess))
                            if v is not None}
    given = {name: v for name, v in (("k", args.k), ("precision", args.precision)) if v is not None}
    method = over.get("saliency", _PIPE.saliency)
    foreign = [f"--{name}" for name in given if name not in SALIENCY_OPTIONS[method]]
    if foreign:
        raise ValueError(f"{' and '.join(foreign)}: not an option of --saliency {method} "
                         f"(its options: {', '.join(SALIENCY_OPTIONS[method]) or 'none'})")
    if "k" in given:
        over["k"] = given.pop("k")
    if given:
        over["saliency_kwargs"] = given
    return over


def _segment_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`~medclipsam.config.PipelineConfig` fields the user set (others keep the API's
    defaults, and the offline world's where it has its own)."""
    names = {"threshold": "threshold", "components": "n_components", "box_mode": "box_mode",
             "sam_prompt_mode": "sam_prompt_mode", "points": "points", "negatives": "negatives",
             "seed": "seed"}
    over = _saliency_overrides(args)
    over.update({field: getattr(args, opt) for opt, field in names.items() if getattr(args, opt) is not None})
    if args.multimask:
        over["multimask"] = True
    return over


def _cmd_segment(args: argparse.Namespace) -> int:
    _check_folder_run(args)
    over = _segment_overrides(args)
    PipelineConfig(**over).validate()  # refuse a bad combination before loading any model
    t0 = time.perf_counter()
    pipe = _pipeline(args, **over)
    rows = _run_quietly_failing(
        lambda: pipe.run_folder(
            args.images, args.prompt, args.out, task=args.task, resume=not args.restart,
            overlays=args.overlays, limit=args.limit, progress=not args.quiet, strict=args.strict,
        )
    )
    failed = [r for r in rows if r.get("status") == "failed"]
    done = [r for r in rows if r.get("status") in ("ok", "")]
    flagged = sum(1 for r in done if r.get("flags"))
    empty = sum(1 for r in done if "empty_mask" in str(r.get("flags", "")).split())
    print(f"{len(done)} images segmented into {args.out}/masks ({flagged} flagged"
          + (f", {empty} with an empty mask" if empty else "")
          + f"; see {args.out}/results.csv) in {time.perf_counter() - t0:.1f} s")
    _report_skipped(rows, Path(args.out) / "results.csv")
    return _report_failures(failed, Path(args.out) / "results.csv")


def _run_quietly_failing(run):
    """Run a folder job; its end-of-run warnings about failed images and skipped files are
    replaced by the CLI's own summary (:func:`_report_failures`, :func:`_report_skipped`)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*image\(s\) failed and were skipped")
        warnings.filterwarnings("ignore", message=r".*file\(s\) in .* skipped, unsupported format")
        return run()


def _report_skipped(rows: list[dict], csv_path: Path) -> None:
    """One summary line on stderr naming the files a folder run did not read (unsupported
    formats), so that a folder is never taken as wholly processed when it was not."""
    skipped = [r for r in rows if str(r.get("status", "")).startswith("skipped")]
    if not skipped:
        return
    names = ", ".join(r["id"] for r in skipped[:10])
    more = f", ... and {len(skipped) - 10} more" if len(skipped) > 10 else ""
    kinds = sorted({r["status"].rpartition(" ")[2] for r in skipped if "format" in r["status"]})
    parts = [f"unsupported format {', '.join(kinds)}"] if kinds else []
    if any(r["status"] == "skipped: subfolder" for r in skipped):
        parts.append("subfolder (not searched: run on it as well)")
    print(f"{len(skipped)} file(s) skipped, {'; '.join(parts)} (status 'skipped' in {csv_path}; "
          f"convert them to .png to include them): {names}{more}", file=sys.stderr)


def _report_failures(failed: list[dict], csv_path: Path) -> int:
    """Name the failed images on stderr; exit code 1 if any, else 0."""
    if not failed:
        return 0
    print(f"{len(failed)} image(s) failed (status 'failed' in {csv_path}; rerun to retry them, "
          "--strict stops at the first):", file=sys.stderr)
    for r in failed:
        print(f"  {r['error']}", file=sys.stderr)
    return 1


def _split_stems(args: argparse.Namespace, name: str | None) -> list[str] | None:
    if not name:
        return None
    from .data.datasets import load_split

    path = args.splits or str(Path(args.images).parent / "splits.json")
    splits = load_split(path)
    if name not in splits:
        raise ValueError(f"--split {name}: {path} has no split of that name; it has "
                         f"{', '.join(sorted(splits))}")
    return splits[name]


def _cmd_pseudo_label(args: argparse.Namespace) -> int:
    _check_folder_run(args)
    stems = _split_stems(args, args.split)
    over = _saliency_overrides(args)
    PipelineConfig(**over).validate()  # refuse a bad combination before loading any model
    from .reproduce import pseudo_label  # after the checks: a bad argument fails before models load

    pipe = _pipeline(args, **over)
    rows = _run_quietly_failing(
        lambda: pseudo_label(pipe, args.images, args.out, args.prompt, task=args.task,
                             stems=stems, progress=not args.quiet, strict=args.strict)
    )
    failed = [r for r in rows if r.get("status") == "failed"]
    done = [r for r in rows if r.get("status") in ("ok", "")]
    print(f"{len(done)} pseudo-labels in {args.out}/masks; manifest {args.out}/results.csv")
    _report_skipped(rows, Path(args.out) / "results.csv")
    return _report_failures(failed, Path(args.out) / "results.csv")


def _cmd_train_weak(args: argparse.Namespace) -> int:
    from .data.datasets import load_split

    _need_dirs(images=args.images, masks=args.masks, val_images=args.val_images,
               val_masks=args.val_masks)
    _need_positive(epochs=args.epochs, batch_size=args.batch_size, size=args.size)
    from .weak import train_segmenter  # after the checks: a bad argument fails before torch loads

    stems = None
    split_file = Path(args.splits) if args.splits else Path(args.images).parent / "splits.json"
    if args.val_images is None:
        # validation comes from the same folders, by split: never the training images themselves
        if not split_file.is_file():
            print("error: give --val-images and --val-masks, or a split file (--splits, or "
                  f"splits.json beside the images folder: {split_file} not found)", file=sys.stderr)
            return 2
        sp = load_split(split_file)
        stems = {"train": sp[args.train_split], "val": sp[args.val_split]}
    cfg = WeakConfig(out_dir=args.out, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                     size=args.size, patience=args.patience, min_epochs=args.min_epochs,
                     seed=args.seed, device=args.device, progress=not args.quiet)
    res = train_segmenter(args.images, args.masks, args.val_images or args.images,
                          args.val_masks or args.masks, cfg, stems=stems, resume=args.resume)
    print(f"best epoch {res['best_epoch']} (validation Dice {res['best_val_dice']:.3f}); "
          f"model {res['model_path']}")
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    data = Path(args.data)
    _need_dirs(data=data, images=data / "images", masks=data / "masks")
    if not (data / "splits.json").is_file():
        raise FileNotFoundError(f"{data / 'splits.json'}: split file not found (train/val/test "
                                "stems; medclipsam phantom and prepare write it)")
    if args.prompt is not None:
        _check_prompt(args.prompt)
    _need_positive(epochs=args.epochs, batch_size=args.batch_size, size=args.size)
    _check_model_args(args)
    from .reproduce import reproduce  # after the checks: a bad argument fails before models load

    cfg = WeakConfig(epochs=args.epochs, size=args.size, batch_size=args.batch_size, device=args.device)
    pipe = None if _offline(args) else _pipeline(args)
    reproduce(args.data, args.out, task=args.task, prompt=args.prompt, config=cfg, pipe=pipe,
              drop_uncertain=args.drop_uncertain, progress=not args.quiet)
    print((Path(args.out) / "table.md").read_text())
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if not backends:
        print("error: --backends lists no backend", file=sys.stderr)
        return 2
    from .compare import compare_backends, format_table  # after the checks

    rows = compare_backends(
        args.data, args.prompt, backends, clip=args.clip, out_dir=args.out, split=args.split,
        limit=args.limit, task=args.task, device=args.device, nsd_tolerance=args.nsd_tolerance,
        n_boot=args.n_boot, progress=not args.quiet,
    )
    print(f"prompt {args.prompt!r}, {rows[0]['images']} images; mean [95 % bootstrap CI]")
    print(format_table(rows))
    print(f"tables: {args.out}/comparison.csv, {args.out}/per_image.csv; masks: {args.out}/<backend>/masks")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from ._utils import atomic_path
    from .data.datasets import PairingError
    from .metrics import evaluate_folders, summarize

    try:
        rows, pairs = evaluate_folders(args.pred, args.gt, nsd_tolerance=args.nsd_tolerance,
                                       strict=not args.allow_missing)
    except PairingError as err:
        hint = "" if args.allow_missing else " (--allow-missing scores the pairs that exist)"
        print(f"error: {_one_line(err)}{hint}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 2
    problem = pairs.problems()
    if problem:
        print(f"warning: {problem}", file=sys.stderr)
    if not rows:
        print("no prediction/ground-truth pairs to score", file=sys.stderr)
        return 1
    stats = summarize(rows, n_boot=args.n_boot, seed=0)
    print(f"{len(rows)} images; mean [95 % bootstrap CI]")
    for m, s in stats.items():
        extra = f"  ({s['n_infinite']} infinite: one mask empty)" if s.get("n_infinite") else ""
        print(f"  {m:5s} {s['mean']:.4f} [{s['ci_low']:.4f}, {s['ci_high']:.4f}]{extra}")
    if args.csv:
        with atomic_path(Path(args.csv)) as tmp, open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        print(f"per-image table: {args.csv}")
    return 0


def _cmd_phantom(args: argparse.Namespace) -> int:
    from .data.phantom import write_phantom_folder

    _need_positive(n=args.n, size=args.size)
    tasks = TASKS if args.task == "all" else (args.task,)
    for task in tasks:
        root = Path(args.out) / task if len(tasks) > 1 else Path(args.out)
        t0 = time.perf_counter()
        write_phantom_folder(root, task, args.n, seed=args.seed, size=args.size)
        print(f"{task}: {args.n} images in {root} ({time.perf_counter() - t0:.1f} s)")
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    from .data.sources import get_source

    return int(get_source(args.dataset).main(args.rest) or 0)


def _finetune_config(args: argparse.Namespace) -> FinetuneConfig:
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
    return cfg


def _cmd_finetune(args: argparse.Namespace) -> int:
    from .data.datasets import CaptionDataset

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = _finetune_config(args)
    captions = Path(args.captions)
    if not captions.is_file():
        raise FileNotFoundError(f"{captions}: caption CSV not found")
    has_split = CaptionDataset.has_split_column(captions)
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
    from .finetune import finetune  # after the checks above: a bad CSV fails before models load
    from .models import load_clip

    clip = load_clip(args.clip, device="cpu" if world > 1 else cfg.device)
    result = finetune(clip, train, val, cfg, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        final = result["final_metrics"]
        shown = {k: round(v, 3) for k, v in final.items()
                 if k in ("train_loss", "val_loss", "i2t_top1", "t2i_top1") and isinstance(v, float)}
        what = "stopped (resumable)" if result["interrupted"] else "done"
        print(f"{what}: step {result['global_step']}, {shown}; "
              f"model: {result['model_path'] or '-'}; logs: {Path(args.out) / 'log.csv'}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:  # noqa: ARG001
    import torch

    from . import __version__
    from ._utils import cache_dir, get_device

    print(f"medclipsam {__version__}")
    print(f"python     {platform.python_version()} ({platform.machine()})")
    print(f"torch      {torch.__version__} (cuda available: {torch.cuda.is_available()})")
    for name in ("open_clip", "segment_anything", "monai"):
        try:
            mod = __import__(name)
            print(f"{name:<10s} {getattr(mod, '__version__', 'installed')}")
        except ImportError:
            print(f"{name:<10s} NOT INSTALLED")
    print(f"device     {get_device('auto')} (auto)")
    print(f"cache      {cache_dir()} (set MEDCLIPSAM_CACHE to move it)")
    return 0


# --------------------------------------------------------------------------------------------
# checks before anything heavy loads, and one-line errors

# Model names the loaders know without a file (medclipsam.vocab); anything else that looks like a
# path must exist. Checked here, so that checking them does not import torch.
_SAM_NAMES = (*SAM_MODELS, *SAM2_MODELS)
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _check_prompt(prompt: str) -> None:
    if not prompt.strip():
        raise ValueError(f"--prompt {prompt!r} is empty; say what to segment, e.g. "
                         "--prompt \"breast tumor\"")


def _need_dirs(**folders: Any) -> None:
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


def _need_positive(**values: Any) -> None:
    for name, value in values.items():
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {value}")


def _check_model_args(args: argparse.Namespace) -> None:
    clip, sam = str(args.clip), str(args.sam)
    if clip.startswith("local-dir:"):
        _need_dirs(clip=clip[len("local-dir:"):])
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


def _check_folder_run(args: argparse.Namespace) -> None:
    """segment / pseudo-label: prompt, folders, numbers and model files, before models load."""
    from .data.datasets import broken_links, list_image_files
    from .data.io import SUPPORTED_SUFFIXES

    _check_prompt(args.prompt)
    _need_dirs(images=args.images)
    by_stem, other = list_image_files(args.images)
    if not by_stem and not broken_links(args.images):
        holds = (f"; it holds {len(other)} other file(s) or subfolder(s): {', '.join(other[:5])}"
                 if other else "")
        raise FileNotFoundError(f"--images {args.images}: no image files in this folder "
                                f"(supported: {', '.join(SUPPORTED_SUFFIXES)}{holds})")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out}: exists and is not a folder")
    _need_positive(limit=getattr(args, "limit", None), k=getattr(args, "k", None),
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
    _check_model_args(args)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ARG001
    """Warnings on the command line: one line each, ``warning: ...``, without source lines."""
    print(f"warning: {_one_line(message)}", file=sys.stderr if file is None else file)


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (``error: ...``, exit code 2) instead of the usage block."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


# Errors a user can fix (bad arguments, paths, files, checkpoints): one line, exit code 2.
_USER_ERRORS = (ValueError, OSError, ImportError)


# --------------------------------------------------------------------------------------------
# options


def _threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads torch may use (default: torch's own choice, usually one per core)")


def _models(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clip", default="toy",
                   help="toy | biomedclip | an open_clip name | a checkpoint file | a model folder (a "
                   "Hugging Face snapshot) | local-dir:PATH (default: %(default)s)")
    p.add_argument("--sam", default="litemedsam",
                   help="litemedsam (ships with the package, no download) | vit_b | vit_l | vit_h | medsam | "
                   "sam2-hiera-tiny/small/base-plus/large | "
                   "a checkpoint or model folder | sam3-text[:FOLDER] (SAM 3 from the text alone) "
                   "(default: %(default)s)")
    p.add_argument("--sam-checkpoint", metavar="PATH",
                   help="your own file for --sam litemedsam|vit_b|vit_l|vit_h|medsam (--sam medsam --sam-checkpoint "
                   "medsam_vit_b.pth: MedSAM with MedSAM's preprocessing) (default: the registry's "
                   "verified download)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps (default: %(default)s)")


def _saliency_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--saliency", choices=SALIENCY_METHODS,
                   help=f"saliency method (default: {_PIPE.saliency})")
    p.add_argument("--k", type=int,
                   help=f"gScoreCAM channels (default: {default_k('real')} as in the paper, "
                   f"{default_k('offline')} in the offline world); each channel costs one image forward "
                   "(benchmarks/real_path_times.py)")
    p.add_argument("--precision", choices=SALIENCY_PRECISIONS, help="gScoreCAM scoring precision (default: fp32)")
    p.add_argument("--postprocess", choices=POSTPROCESS_METHODS,
                   help=f"saliency -> coarse mask (default: {_PIPE.postprocess}; without the crf extra "
                   "the pipeline uses kmeans and flags each result)")


def _add_demo(sub: Any) -> None:
    d = sub.add_parser("demo", help="run the main job on the built-in phantom world")
    d.add_argument("--out", default="medclipsam-demo", help="output folder (default: %(default)s)")
    d.add_argument("--n", type=int, default=6, help="images per task (default: %(default)s)")
    d.add_argument("--size", type=int, default=256, help="image size in pixels (default: %(default)s)")
    d.add_argument("--seed", type=int, default=0, help="phantom seed (default: %(default)s)")
    d.add_argument("--saliency", default=_PIPE.saliency, choices=SALIENCY_METHODS,
                   help="saliency method (default: %(default)s)")
    _threads(d)
    d.set_defaults(func=_cmd_demo)


def _add_segment(sub: Any) -> None:
    sg = sub.add_parser(
        "segment",
        help="segment what a text prompt names in every image of a folder",
        description="Zero-shot MedCLIP-SAM over a folder: CLIP saliency of the prompt -> coarse mask "
        "-> box/point prompts -> SAM. Writes OUT/masks/<stem>.png, OUT/results.csv (one row per "
        "image, written as it goes) and OUT/run.json; an interrupted run resumes. Options left out "
        "keep the Python API's defaults (MedCLIPSAM / PipelineConfig), so the CLI and "
        "MedCLIPSAM.offline().predict give the same masks.",
    )
    sg.add_argument("--images", required=True, help="folder of images (PNG/JPEG/TIFF/DICOM/NIfTI)")
    sg.add_argument("--prompt", required=True, help='what to segment, e.g. "breast tumor"')
    sg.add_argument("--out", required=True, help="output folder")
    _models(sg)
    sg.add_argument("--task", choices=TASKS,
                    help="apply the task's preset, e.g. xray: two lungs, one box each (default: none)")
    _saliency_options(sg)
    sg.add_argument("--threshold", type=float,
                    help=f"for --postprocess threshold (default: {_PIPE.threshold})")
    sg.add_argument("--components", type=int,
                    help=f"largest connected components kept (default: {_PIPE.n_components}; the task's preset with --task)")
    sg.add_argument("--box-mode", choices=BOX_MODES,
                    help=f"boxes from the kept components (default: {_PIPE.box_mode}; the task's preset with --task)")
    sg.add_argument("--sam-prompt-mode", choices=SAM_PROMPT_MODES,
                    help=f"what SAM is given (default: {OFFLINE_DEFAULTS['sam_prompt_mode']} in the offline world, "
                    f"{_PIPE.sam_prompt_mode} otherwise)")
    sg.add_argument("--points", type=int, help=f"positive points per region (default: {_PIPE.points})")
    sg.add_argument("--negatives", type=int, help=f"negative points per region (default: {_PIPE.negatives})")
    sg.add_argument("--multimask", action="store_true",
                    help="best of SAM's three masks by predicted IoU for every prompt (default: only for "
                    "points without a box)")
    sg.add_argument("--overlays", action="store_true", help="also write OUT/overlays/<stem>.png (default: off)")
    sg.add_argument("--limit", type=int, help="only the first N images, sorted by name (default: all)")
    sg.add_argument("--restart", action="store_true",
                    help="recompute images already done (default: off, an interrupted run resumes)")
    sg.add_argument("--strict", action="store_true",
                    help="stop at the first image that cannot be read (default: off: record it as a "
                    "failed row in results.csv and go on; exit code 1 if any failed)")
    sg.add_argument("--seed", type=int, help=f"seed of point sampling and control maps (default: {_PIPE.seed})")
    sg.add_argument("--quiet", action="store_true", help="no progress bar (default: off)")
    _threads(sg)
    sg.set_defaults(func=_cmd_segment)


def _add_evaluate(sub: Any) -> None:
    ev = sub.add_parser(
        "evaluate",
        help="Dice, IoU, HD95 and NSD of predicted masks against ground truth (paired by file stem)",
    )
    ev.add_argument("--pred", required=True, help="folder of predicted masks (e.g. OUT/masks)")
    ev.add_argument("--gt", required=True, help="folder of ground-truth masks (<stem>.png or <stem>_mask.png)")
    ev.add_argument("--nsd-tolerance", type=float, default=2.0,
                    help="NSD tolerance in pixels (default: %(default)s)")
    ev.add_argument("--n-boot", type=int, default=1000,
                    help="bootstrap resamples for the CIs (default: %(default)s)")
    ev.add_argument("--csv", help="write the per-image table here (default: not written)")
    ev.add_argument("--allow-missing", action="store_true",
                    help="score the pairs that exist instead of refusing missing/extra files (default: off)")
    ev.set_defaults(func=_cmd_evaluate)


def _add_phantom(sub: Any) -> None:
    ph = sub.add_parser("phantom", help="write a phantom data set (images/, masks/, captions.csv, splits.json)")
    ph.add_argument("--task", choices=(*TASKS, "all"), default="all", help="which task (default: %(default)s)")
    ph.add_argument("--n", type=int, default=100, help="images per task (default: %(default)s)")
    ph.add_argument("--size", type=int, default=256, help="image size in pixels (default: %(default)s)")
    ph.add_argument("--seed", type=int, default=0, help="phantom seed (default: %(default)s)")
    ph.add_argument("--out", required=True, help="output folder (one sub-folder per task with --task all)")
    ph.set_defaults(func=_cmd_phantom)


def _add_prepare(sub: Any) -> None:
    pr = sub.add_parser(
        "prepare",
        help="convert a public data set to the folder layout (see data_scripts/README.md)",
        description="Convert a public data set. Arguments after the data set name go to its "
        "converter: `medclipsam prepare busi --help`.",
    )
    pr.add_argument("dataset", choices=DATA_SOURCES, help="which data set")
    pr.add_argument("rest", nargs=argparse.REMAINDER, help="arguments for the converter")
    pr.set_defaults(func=_cmd_prepare)


def _add_finetune(sub: Any) -> None:
    d = _FT
    p = sub.add_parser(
        "finetune",
        help="contrastive fine-tuning of a CLIP model on image-caption pairs (DHN-NCE by default)",
        description="Fine-tune a CLIP model (toy, biomedclip, an open_clip name or a checkpoint) on a "
        "captions CSV with InfoNCE, DCL, HN-NCE or DHN-NCE; checkpoints every epoch, --resume "
        "continues exactly; `torchrun --nproc_per_node N -m medclipsam finetune ...` for several GPUs.",
    )
    p.add_argument("--clip", default="biomedclip",
                   help="CLIP to fine-tune: biomedclip, toy, an open_clip name or a checkpoint "
                   "(default: %(default)s)")
    p.add_argument("--captions", required=True,
                   help="CSV with columns image,caption[,split] (paths relative to the CSV)")
    p.add_argument("--image-root", default=None,
                   help="folder the CSV's image paths are under (default: the CSV's folder)")
    p.add_argument("--val-captions", default=None,
                   help="separate validation CSV (default: the --val-split split of --captions)")
    p.add_argument("--train-split", default="train",
                   help="split used for training when the CSV has a split column (default: %(default)s)")
    p.add_argument("--val-split", default="val", help="validation split name (default: %(default)s)")
    p.add_argument("--min-caption-chars", type=int, default=0,
                   help="drop captions shorter than this; the MedPix recipe uses 20 (default: %(default)s)")
    p.add_argument("--out", required=True, help="output folder (checkpoints, logs, model.pt)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint (default: off)")
    p.add_argument("--loss", default=d.loss, choices=LOSS_NAMES, help="contrastive loss (default: %(default)s)")
    p.add_argument("--tau", type=float, default=d.tau, help="fixed temperature (default: %(default)s)")
    p.add_argument("--learn-logit-scale", action="store_true",
                   help="use and train the model's logit scale instead of a fixed --tau (default: off)")
    p.add_argument("--beta1", type=float, default=d.beta1,
                   help="hard-negative weighting, image -> text (default: %(default)s)")
    p.add_argument("--beta2", type=float, default=d.beta2,
                   help="hard-negative weighting, text -> image (default: %(default)s)")
    p.add_argument("--alpha", type=float, default=d.alpha,
                   help="weight of the positive, hn_nce only (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=d.epochs, help="epochs (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="pairs per process (default: %(default)s)")
    p.add_argument("--lr", type=float, default=d.lr,
                   help="peak learning rate; v2 script 1e-3, paper 1e-6 (default: %(default)s)")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay,
                   help="AdamW weight decay on matrices (default: %(default)s)")
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps,
                   help="optimiser steps of linear warm-up before the cosine decay (default: %(default)s)")
    p.add_argument("--grad-accum-steps", type=int, default=d.grad_accum_steps,
                   help="batches per optimiser step (default: %(default)s)")
    p.add_argument("--max-grad-norm", type=float, default=d.max_grad_norm,
                   help="gradient clipping (default: none)")
    p.add_argument("--precision", choices=TRAINING_PRECISIONS, default=d.precision,
                   help="mixed precision; auto is bf16/fp16 on a GPU, fp32 on the CPU (default: %(default)s)")
    p.add_argument("--freeze", choices=FREEZE_MODES, default=d.freeze,
                   help="freeze a whole tower (default: %(default)s)")
    p.add_argument("--trainable-blocks", type=int, default=d.trainable_blocks,
                   help="train only the last N blocks of each unfrozen tower (default: all)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed (default: %(default)s)")
    p.add_argument("--num-workers", type=int, default=d.num_workers,
                   help="data-loading processes (default: %(default)s)")
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda, mps (default: %(default)s)")
    p.add_argument("--eval-every", type=int, default=d.eval_every,
                   help="epochs between validation passes, 0: never (default: %(default)s)")
    p.add_argument("--no-eval-before", action="store_true",
                   help="skip evaluating the starting model (default: evaluated)")
    p.add_argument("--checkpoint-every-steps", type=int, default=d.checkpoint_every_steps,
                   help="extra mid-epoch checkpoints (default: one per epoch only)")
    p.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints,
                   help="checkpoints kept (default: %(default)s)")
    p.add_argument("--stop-after-steps", type=int, default=d.stop_after_steps,
                   help="stop cleanly after N optimiser steps, resumable (default: run to the end)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (default: shown)")
    _threads(p)
    p.set_defaults(func=_cmd_finetune)


def _add_pseudo_label(sub: Any) -> None:
    pl = sub.add_parser("pseudo-label", help="zero-shot masks of a split as pseudo-labels (resumable)")
    pl.add_argument("--images", required=True, help="images folder of a prepared data set")
    pl.add_argument("--prompt", required=True, help='what to segment, e.g. "breast tumor"')
    pl.add_argument("--out", required=True, help="writes OUT/masks, OUT/results.csv (manifest), OUT/run.json")
    pl.add_argument("--task", choices=TASKS, help="apply the task's preset (default: none)")
    pl.add_argument("--split", help="only this split's stems, e.g. train (default: every image)")
    pl.add_argument("--splits", help="split file (default: splits.json beside the images folder)")
    _models(pl)
    _saliency_options(pl)
    pl.add_argument("--strict", action="store_true",
                    help="stop at the first image that cannot be read (default: off: record it as "
                    "failed and go on; exit code 1 if any failed)")
    pl.add_argument("--quiet", action="store_true", help="no progress bar (default: off)")
    _threads(pl)
    pl.set_defaults(func=_cmd_pseudo_label)


def _add_train_weak(sub: Any) -> None:
    w = _WEAK
    tw = sub.add_parser("train-weak", help="train a Residual UNet (MONAI) on pseudo-labels or labels")
    tw.add_argument("--images", required=True, help="training images folder")
    tw.add_argument("--masks", required=True, help="training masks (pseudo-labels for weak training)")
    tw.add_argument("--val-images", help="validation images (default: --images with --val-split)")
    tw.add_argument("--val-masks", help="validation masks, pseudo-labels, never ground truth (default: --masks)")
    tw.add_argument("--splits", help="split file restricting train/val stems (default: splits.json beside --images)")
    tw.add_argument("--train-split", default="train", help="split name for training (default: %(default)s)")
    tw.add_argument("--val-split", default="val", help="split name for validation (default: %(default)s)")
    tw.add_argument("--out", required=True, help="output folder (checkpoints, logs, model.pt)")
    tw.add_argument("--epochs", type=int, default=w.epochs, help="epochs at most (default: %(default)s)")
    tw.add_argument("--batch-size", type=int, default=w.batch_size, help="images per batch (default: %(default)s)")
    tw.add_argument("--lr", type=float, default=w.lr, help="learning rate (default: %(default)s)")
    tw.add_argument("--size", type=int, default=w.size, help="training resolution (default: %(default)s)")
    tw.add_argument("--patience", type=int, default=w.patience,
                    help="early stopping after --min-epochs (default: %(default)s)")
    tw.add_argument("--min-epochs", type=int, default=w.min_epochs,
                    help="epochs before early stopping may stop (default: %(default)s)")
    tw.add_argument("--seed", type=int, default=w.seed, help="seed (default: %(default)s)")
    tw.add_argument("--device", default=w.device, help="auto, cpu, cuda, mps (default: %(default)s)")
    tw.add_argument("--resume", action="store_true", help="continue from the latest checkpoint (default: off)")
    tw.add_argument("--quiet", action="store_true", help="no progress bar (default: off)")
    _threads(tw)
    tw.set_defaults(func=_cmd_train_weak)


def _add_reproduce(sub: Any) -> None:
    w = _WEAK
    rp = sub.add_parser(
        "reproduce",
        help="the whole method on a prepared data set: zero-shot, weakly and fully supervised",
        description="Pseudo-labels from the zero-shot pipeline (train/val), a Residual UNet trained on "
        "them, the same network on the real labels, all scored on the test split beside the paper's "
        "numbers. DATA holds images/, masks/ and splits.json (medclipsam phantom / prepare write it).",
    )
    rp.add_argument("--task", required=True, choices=TASKS, help="which task")
    rp.add_argument("--data", required=True, help="prepared data set folder")
    rp.add_argument("--out", required=True, help="output folder")
    rp.add_argument("--prompt", help="text prompt (default: the task's prompt)")
    rp.add_argument("--epochs", type=int, default=w.epochs, help="UNet epochs at most (default: %(default)s)")
    rp.add_argument("--size", type=int, default=w.size, help="UNet resolution (default: %(default)s)")
    rp.add_argument("--batch-size", type=int, default=w.batch_size, help="UNet batch size (default: %(default)s)")
    rp.add_argument("--drop-uncertain", type=float, default=0.0,
                    help="also retrain without this share of the most uncertain pseudo-labels (default: %(default)s)")
    _models(rp)
    rp.add_argument("--quiet", action="store_true", help="no progress bars (default: off)")
    _threads(rp)
    rp.set_defaults(func=_cmd_reproduce)


def _add_compare(sub: Any) -> None:
    cp = sub.add_parser(
        "compare",
        help="MedCLIP-SAM with several SAMs beside SAM 3 from the text alone, on one data set",
        description="Score each backend on the same images: MedCLIP-SAM (CLIP saliency -> boxes) "
        "with SAM / MedSAM / SAM 2 as the segmenter (the saliency maps are computed once and "
        "shared), and SAM 3 segmenting from the text alone. Prints one table (Dice, IoU, NSD, "
        "seconds per image) and writes OUT/comparison.csv, OUT/per_image.csv and each backend's "
        "masks (OUT/<backend>/masks).",
    )
    cp.add_argument("--data", required=True, help="data set folder with images/ and masks/")
    cp.add_argument("--prompt", required=True, help='the text prompt, e.g. "breast tumor"')
    cp.add_argument("--backends", required=True,
                    help="comma-separated: litemedsam, sam (= vit_b), vit_l, vit_h, medsam, "
                    "sam2-hiera-tiny/small/base-plus/large, a checkpoint or model folder, "
                    "sam3-text (facebook/sam3) or sam3-text:FOLDER")
    cp.add_argument("--out", required=True, help="output folder")
    cp.add_argument("--clip", default="biomedclip",
                    help="CLIP for the MedCLIP-SAM rows (default: %(default)s)")
    cp.add_argument("--split", help="only this split of DATA/splits.json, e.g. test (default: all images)")
    cp.add_argument("--limit", type=int, help="only the first N images (default: all)")
    cp.add_argument("--task", choices=TASKS, help="the task's preset, e.g. xray: two lungs (default: none)")
    cp.add_argument("--nsd-tolerance", type=float, default=2.0,
                    help="NSD tolerance in pixels (default: %(default)s)")
    cp.add_argument("--n-boot", type=int, default=1000,
                    help="bootstrap resamples for the CIs (default: %(default)s)")
    cp.add_argument("--device", default="auto", help="auto, cpu, cuda, mps (default: %(default)s)")
    cp.add_argument("--quiet", action="store_true", help="no progress bars (default: off)")
    _threads(cp)
    cp.set_defaults(func=_cmd_compare)


def build_parser() -> argparse.ArgumentParser:
    """The ``medclipsam`` parser (imports neither torch nor the models)."""
    p = _Parser(
        prog="medclipsam",
        description="MedCLIP-SAM: text-prompted medical image segmentation.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_add_demo, _add_segment, _add_evaluate, _add_phantom, _add_prepare, _add_finetune,
                _add_pseudo_label, _add_train_weak, _add_reproduce, _add_compare):
        add(sub)
    i = sub.add_parser("info", help="versions, device and cache folder")
    i.set_defaults(func=_cmd_info)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "threads", None) is not None:
            _need_positive(threads=args.threads)
            import torch

            torch.set_num_threads(args.threads)
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return args.func(args)
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as err:
        if os.environ.get("MEDCLIPSAM_DEBUG") or not _user_error(err):
            raise
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 2


def _user_error(err: BaseException) -> bool:
    """Whether ``err`` is about the user's input or setup (one line, exit code 2): ValueError,
    OSError, ImportError, or any of the package's own error types (``LiteMedSamError``,
    ``DownloadError``), whatever their base; anything else is a bug and keeps its traceback."""
    if isinstance(err, _USER_ERRORS):
        return True
    return any(k.__module__.startswith("medclipsam.") and k.__name__.endswith("Error")
               for k in type(err).__mro__)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
