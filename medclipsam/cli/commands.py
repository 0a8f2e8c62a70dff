"""What each ``medclipsam`` sub-command does with its parsed arguments (``args.func``): its
arguments are checked first (:mod:`.checks`), then the package's modules it needs are imported and
run, so that a bad argument fails before any model loads and ``--help`` stays torch-free."""

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

from ..config import FinetuneConfig, WeakConfig
from ..vocab import TASKS
from .checks import (
    check_folder_run,
    check_model_args,
    check_prompt,
    need_dirs,
    need_positive,
    one_line,
)
from .options import config_from, is_offline, load_pipeline, pipeline_overrides


def cmd_demo(args: argparse.Namespace) -> int:
    need_positive(n=args.n, size=args.size)
    from ..demo import run_demo  # after the checks: a bad argument fails before models load

    run_demo(out_dir=Path(args.out), n=args.n, size=args.size, seed=args.seed, saliency=args.saliency)
    return 0


def cmd_segment(args: argparse.Namespace) -> int:
    check_folder_run(args)
    over = pipeline_overrides(args)  # a bad combination is refused before any model loads
    t0 = time.perf_counter()
    pipe = load_pipeline(args, **over)
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
    from ..data.datasets import load_split

    path = args.splits or str(Path(args.images).parent / "splits.json")
    splits = load_split(path)
    if name not in splits:
        raise ValueError(f"--split {name}: {path} has no split of that name; it has "
                         f"{', '.join(sorted(splits))}")
    return splits[name]


def cmd_pseudo_label(args: argparse.Namespace) -> int:
    check_folder_run(args)
    stems = _split_stems(args, args.split)
    over = pipeline_overrides(args)  # a bad combination is refused before any model loads
    # after the checks: a bad argument fails before models load
    from ..reproduce import pseudo_label

    pipe = load_pipeline(args, **over)
    rows = _run_quietly_failing(
        lambda: pseudo_label(pipe, args.images, args.out, args.prompt, task=args.task,
                             stems=stems, progress=not args.quiet, strict=args.strict)
    )
    failed = [r for r in rows if r.get("status") == "failed"]
    done = [r for r in rows if r.get("status") in ("ok", "")]
    print(f"{len(done)} pseudo-labels in {args.out}/masks; manifest {args.out}/results.csv")
    _report_skipped(rows, Path(args.out) / "results.csv")
    return _report_failures(failed, Path(args.out) / "results.csv")


def cmd_train_weak(args: argparse.Namespace) -> int:
    from ..data.datasets import load_split

    need_dirs(images=args.images, masks=args.masks, val_images=args.val_images,
              val_masks=args.val_masks)
    need_positive(epochs=args.epochs, batch_size=args.batch_size, size=args.size)
    from ..weak import train_segmenter  # after the checks: a bad argument fails before torch loads

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
    cfg = config_from(WeakConfig, args, out_dir=args.out, progress=not args.quiet)
    res = train_segmenter(args.images, args.masks, args.val_images or args.images,
                          args.val_masks or args.masks, cfg, stems=stems, resume=args.resume)
    print(f"best epoch {res['best_epoch']} (validation Dice {res['best_val_dice']:.3f}); "
          f"model {res['model_path']}")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    data = Path(args.data)
    need_dirs(data=data, images=data / "images", masks=data / "masks")
    if not (data / "splits.json").is_file():
        raise FileNotFoundError(f"{data / 'splits.json'}: split file not found (train/val/test "
                                "stems; medclipsam phantom and prepare write it)")
    if args.prompt is not None:
        check_prompt(args.prompt)
    need_positive(epochs=args.epochs, batch_size=args.batch_size, size=args.size)
    check_model_args(args)
    from ..reproduce import reproduce  # after the checks: a bad argument fails before models load

    cfg = config_from(WeakConfig, args)  # the UNet options and --device
    pipe = None if is_offline(args) else load_pipeline(args)
    reproduce(args.data, args.out, task=args.task, prompt=args.prompt, config=cfg, pipe=pipe,
              drop_uncertain=args.drop_uncertain, progress=not args.quiet)
    print((Path(args.out) / "table.md").read_text())
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if not backends:
        print("error: --backends lists no backend", file=sys.stderr)
        return 2
    from ..compare import compare_backends, format_table  # after the checks

    rows = compare_backends(
        args.data, args.prompt, backends, clip=args.clip, out_dir=args.out, split=args.split,
        limit=args.limit, task=args.task, device=args.device, nsd_tolerance=args.nsd_tolerance,
        n_boot=args.n_boot, progress=not args.quiet,
    )
    print(f"prompt {args.prompt!r}, {rows[0]['images']} images; mean [95 % bootstrap CI]")
    print(format_table(rows))
    print(f"tables: {args.out}/comparison.csv, {args.out}/per_image.csv; masks: {args.out}/<backend>/masks")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .._utils import atomic_path
    from ..data.datasets import PairingError
    from ..metrics import evaluate_folders, summarize

    try:
        rows, pairs = evaluate_folders(args.pred, args.gt, nsd_tolerance=args.nsd_tolerance,
                                       strict=not args.allow_missing)
    except PairingError as err:
        hint = "" if args.allow_missing else " (--allow-missing scores the pairs that exist)"
        print(f"error: {one_line(err)}{hint}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
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


def cmd_phantom(args: argparse.Namespace) -> int:
    from ..data.phantom import write_phantom_folder

    need_positive(n=args.n, size=args.size)
    tasks = TASKS if args.task == "all" else (args.task,)
    for task in tasks:
        root = Path(args.out) / task if len(tasks) > 1 else Path(args.out)
        t0 = time.perf_counter()
        write_phantom_folder(root, task, args.n, seed=args.seed, size=args.size)
        print(f"{task}: {args.n} images in {root} ({time.perf_counter() - t0:.1f} s)")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from ..data.sources import get_source

    return int(get_source(args.dataset).main(args.rest) or 0)


def cmd_finetune(args: argparse.Namespace) -> int:
    from ..data.datasets import CaptionDataset

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = config_from(FinetuneConfig, args, out_dir=args.out, eval_before=not args.no_eval_before,
                      progress=not args.no_progress)
    cfg.validate()
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
    from ..finetune import finetune  # after the checks above: a bad CSV fails before models load
    from ..models import load_clip

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


def cmd_info(args: argparse.Namespace) -> int:  # noqa: ARG001
    import torch

    from .. import __version__
    from .._utils import cache_dir, get_device

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
