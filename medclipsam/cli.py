"""The ``medclipsam`` command line.

Sub-commands:
  demo      the main job on the built-in toy (phantom) world; writes figures and a table
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

Heavy imports happen inside each command (``finetune`` builds its options from
``medclipsam.finetune``, which imports torch: about 2 s for ``--help``).

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
import os
import sys
import time
from pathlib import Path

SOURCES = ("busi", "udiat", "brain_figshare", "covidqu", "roco")


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    _need_positive(n=args.n, size=args.size)
    run_demo(out=Path(args.out), n=args.n, size=args.size, seed=args.seed, saliency=args.saliency)
    return 0


def _pipeline(args: argparse.Namespace, **overrides):
    """The toy world when both models are "toy", else the named real models (downloaded);
    ``--sam sam3-text[:FOLDER]`` is SAM 3 segmenting from the text alone."""
    from .compare import is_text_backend
    from .pipeline import MedCLIPSAM

    if is_text_backend(args.sam):  # SAM 3 from the text alone: no CLIP, no saliency settings
        from .text_baselines import Sam3TextBaseline

        return Sam3TextBaseline.from_pretrained(args.sam.partition(":")[2] or "facebook/sam3",
                                                device=args.device)
    if args.clip == "toy" and args.sam == "toy":
        return MedCLIPSAM.toy(device=args.device, **overrides)
    return MedCLIPSAM.from_pretrained(args.clip, args.sam, device=args.device, **overrides)


def _cmd_segment(args: argparse.Namespace) -> int:
    from .pipeline import PipelineConfig

    _check_folder_run(args)
    kwargs = {}
    if args.k is not None:
        kwargs["k"] = args.k
    if args.precision:
        kwargs["precision"] = args.precision
    over = dict(
        saliency=args.saliency, postprocess=args.postprocess,
        threshold=args.threshold, n_components=args.components, box_mode=args.box_mode,
        points=args.points, negatives=args.negatives,
        multimask=True if args.multimask else None, seed=args.seed,
    )
    # Options left unset keep the world's defaults (the toy world's k and box+points prompts).
    if kwargs:
        over["saliency_kwargs"] = kwargs
    if args.prompt_mode:
        over["prompt_mode"] = args.prompt_mode
    PipelineConfig(**over)  # validates the combination early
    t0 = time.perf_counter()
    pipe = _pipeline(args, **over)
    rows = _run_quietly_failing(
        lambda: pipe.run_folder(
            args.images, args.prompt, args.out, task=args.task, resume=not args.restart,
            overlays=args.overlays, limit=args.limit, progress=not args.quiet, strict=args.strict,
        )
    )
    failed = [r for r in rows if r.get("status") == "failed"]
    flagged = sum(1 for r in rows if r.get("flags") and r.get("status") != "failed")
    print(f"{len(rows) - len(failed)} images segmented into {args.out}/masks ({flagged} flagged; see "
          f"{args.out}/results.csv) in {time.perf_counter() - t0:.1f} s")
    return _report_failures(failed, Path(args.out) / "results.csv")


def _run_quietly_failing(run):
    """Run a folder job; its end-of-run warning about failed images is replaced by the CLI's own
    summary (:func:`_report_failures`)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*image\(s\) failed and were skipped")
        return run()


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
    from .reproduce import pseudo_label

    _check_folder_run(args)
    stems = _split_stems(args, args.split)
    pipe = _pipeline(args)
    rows = _run_quietly_failing(
        lambda: pseudo_label(pipe, args.images, args.out, args.prompt, task=args.task,
                             stems=stems, progress=not args.quiet, strict=args.strict)
    )
    failed = [r for r in rows if r.get("status") == "failed"]
    print(f"{len(rows) - len(failed)} pseudo-labels in {args.out}/masks; manifest "
          f"{args.out}/results.csv")
    return _report_failures(failed, Path(args.out) / "results.csv")


def _cmd_train_weak(args: argparse.Namespace) -> int:
    from .weak import WeakConfig, train_segmenter

    _need_dirs(images=args.images, masks=args.masks, val_images=args.val_images,
               val_masks=args.val_masks)
    _need_positive(epochs=args.epochs, batch_size=args.batch_size, size=args.size)
    stems = None
    split_file = Path(args.splits) if args.splits else Path(args.images).parent / "splits.json"
    if args.val_images is None:
        # validation comes from the same folders, by split: never the training images themselves
        if not split_file.is_file():
            print("error: give --val-images and --val-masks, or a split file (--splits, or "
                  f"splits.json beside the images folder: {split_file} not found)", file=sys.stderr)
            return 2
        from .data.datasets import load_split

        sp = load_split(split_file)
        stems = {"train": sp[args.train_split or "train"], "val": sp[args.val_split]}
    cfg = WeakConfig(out_dir=args.out, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                     size=args.size, patience=args.patience, min_epochs=args.min_epochs,
                     seed=args.seed, device=args.device,
                     progress=not args.quiet)
    res = train_segmenter(args.images, args.masks, args.val_images or args.images,
                          args.val_masks or args.masks, cfg, stems=stems, resume=args.resume)
    print(f"best epoch {res['best_epoch']} (validation Dice {res['best_val_dice']:.3f}); "
          f"model {res['model_path']}")
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from .reproduce import reproduce
    from .weak import WeakConfig

    data = Path(args.data)
    _need_dirs(data=data, images=data / "images", masks=data / "masks")
    if not (data / "splits.json").is_file():
        raise FileNotFoundError(f"{data / 'splits.json'}: split file not found (train/val/test "
                                "stems; medclipsam phantom and prepare write it)")
    if args.prompt is not None:
        _check_prompt(args.prompt)
    _need_positive(epochs=args.epochs, batch_size=args.batch_size, size=args.size)
    cfg = WeakConfig(epochs=args.epochs, size=args.size, batch_size=args.batch_size, device=args.device)
    pipe = None if args.clip == "toy" and args.sam == "toy" else _pipeline(args)
    reproduce(args.data, args.out, task=args.task, prompt=args.prompt, config=cfg, pipe=pipe,
              drop_uncertain=args.drop_uncertain, progress=not args.quiet)
    print((Path(args.out) / "table.md").read_text())
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from .compare import compare_backends, format_table

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if not backends:
        print("error: --backends lists no backend", file=sys.stderr)
        return 2
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
    import csv

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
    from .data.phantom import TASKS, write_phantom_folder

    _need_positive(n=args.n, size=args.size)
    tasks = TASKS if args.task == "all" else (args.task,)
    for task in tasks:
        root = Path(args.out) / task if len(tasks) > 1 else Path(args.out)
        t0 = time.perf_counter()
        write_phantom_folder(root, task, args.n, seed=args.seed, size=args.size)
        print(f"{task}: {args.n} images in {root} ({time.perf_counter() - t0:.1f} s)")
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    import importlib

    module = importlib.import_module(f"medclipsam.data.sources.{args.dataset}")
    return int(module.main(args.rest) or 0)


def _cmd_info(args: argparse.Namespace) -> int:  # noqa: ARG001
    import platform

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

# Model names the loaders know without a file (see medclipsam.models); anything else that looks
# like a path must exist. Kept here so that checking them does not import torch.
_SAM_NAMES = ("toy", "vit_b", "vit_l", "vit_h", "medsam")
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _check_prompt(prompt: str) -> None:
    if not prompt.strip():
        raise ValueError(f"--prompt {prompt!r} is empty; say what to segment, e.g. "
                         "--prompt \"breast tumor\"")


def _need_dirs(**folders) -> None:
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


def _need_positive(**values) -> None:
    for name, value in values.items():
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {value}")


def _check_model_args(args: argparse.Namespace) -> None:
    clip, sam = str(args.clip), str(args.sam)
    if not clip.startswith("hf-hub:") and (
        "/" in clip or os.sep in clip or clip.lower().endswith(_CHECKPOINT_SUFFIXES)
    ) and not Path(clip).expanduser().is_file():
        raise FileNotFoundError(f"--clip {clip}: checkpoint file not found")
    if sam.lower() not in _SAM_NAMES and not Path(sam).expanduser().is_file():
        raise FileNotFoundError(
            f"--sam {sam}: neither a SAM model name ({', '.join(_SAM_NAMES)}) nor an existing "
            "checkpoint file"
        )


def _check_folder_run(args: argparse.Namespace) -> None:
    """segment / pseudo-label: prompt, folders, numbers and model files, before models load."""
    from .data.datasets import broken_links, list_image_files

    _check_prompt(args.prompt)
    _need_dirs(images=args.images)
    by_stem, _ = list_image_files(args.images)
    if not by_stem and not broken_links(args.images):
        from .data.io import SUPPORTED_SUFFIXES

        raise FileNotFoundError(f"--images {args.images}: no image files in this folder "
                                f"(supported: {', '.join(SUPPORTED_SUFFIXES)})")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out}: exists and is not a folder")
    _need_positive(limit=getattr(args, "limit", None), k=getattr(args, "k", None),
                   components=getattr(args, "components", None),
                   points=getattr(args, "points", None))
    if getattr(args, "negatives", 0) < 0:
        raise ValueError(f"--negatives must be 0 or more, got {args.negatives}")
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


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="medclipsam",
        description="MedCLIP-SAM: text-prompted medical image segmentation.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="run the main job on the built-in phantom world")
    d.add_argument("--out", default="medclipsam-demo", help="output folder (default: %(default)s)")
    d.add_argument("--n", type=int, default=6, help="images per task (default: %(default)s)")
    d.add_argument("--size", type=int, default=256, help="image size in pixels (default: %(default)s)")
    d.add_argument("--seed", type=int, default=0, help="phantom seed (default: %(default)s)")
    d.add_argument("--saliency", default="gscorecam", choices=("gscorecam", "gradcam", "m2ib"))
    d.set_defaults(func=_cmd_demo)

    sg = sub.add_parser(
        "segment",
        help="segment what a text prompt names in every image of a folder",
        description="Zero-shot MedCLIP-SAM over a folder: CLIP saliency of the prompt -> coarse mask "
        "-> box/point prompts -> SAM. Writes OUT/masks/<stem>.png, OUT/results.csv (one row per "
        "image, written as it goes) and OUT/run.json; an interrupted run resumes.",
    )
    sg.add_argument("--images", required=True, help="folder of images (PNG/JPEG/TIFF/DICOM/NIfTI)")
    sg.add_argument("--prompt", required=True, help='what to segment, e.g. "breast tumor"')
    sg.add_argument("--out", required=True, help="output folder")
    sg.add_argument("--clip", default="toy", help="toy | biomedclip | open_clip name | checkpoint path")
    sg.add_argument("--sam", default="toy",
                    help="toy | vit_b | vit_l | vit_h | medsam | sam2-hiera-tiny/small/base-plus/large | "
                    "checkpoint or model folder | sam3-text[:FOLDER] (SAM 3 from the text alone)")
    sg.add_argument("--task", choices=("breast", "brain", "xray"), help="apply the task's preset (xray: two lungs)")
    sg.add_argument("--saliency", default="gscorecam", choices=("gscorecam", "gradcam", "m2ib"))
    sg.add_argument("--k", type=int, help="gScoreCAM channels (default: the method's)")
    sg.add_argument("--precision", choices=("fp32", "fast"), help="gScoreCAM precision")
    sg.add_argument("--postprocess", default="kmeans", choices=("crf", "kmeans", "threshold", "otsu"))
    sg.add_argument("--threshold", type=float, default=0.3, help="for --postprocess threshold")
    sg.add_argument("--components", type=int, default=1, help="largest connected components kept")
    sg.add_argument("--box-mode", default="largest", choices=("largest", "per_component", "union"))
    sg.add_argument("--prompt-mode", choices=("box", "points", "box+points"),
                    help="default: box+points in the toy world, box (paper v1) otherwise")
    sg.add_argument("--points", type=int, default=1, help="positive points per region")
    sg.add_argument("--negatives", type=int, default=0, help="negative points per region")
    sg.add_argument("--multimask", action="store_true", help="best of SAM's three masks by predicted IoU")
    sg.add_argument("--overlays", action="store_true", help="also write OUT/overlays/<stem>.png")
    sg.add_argument("--limit", type=int, help="only the first N images (sorted by name)")
    sg.add_argument("--restart", action="store_true", help="recompute images already done")
    sg.add_argument("--strict", action="store_true",
                    help="stop at the first image that cannot be read (default: record it as a "
                    "failed row in results.csv and go on; exit code 1 if any failed)")
    sg.add_argument("--device", default="auto")
    sg.add_argument("--seed", type=int, default=0)
    sg.add_argument("--quiet", action="store_true", help="no progress bar")
    sg.set_defaults(func=_cmd_segment)

    ev = sub.add_parser(
        "evaluate",
        help="Dice, IoU, HD95 and NSD of predicted masks against ground truth (paired by file stem)",
    )
    ev.add_argument("--pred", required=True, help="folder of predicted masks (e.g. OUT/masks)")
    ev.add_argument("--gt", required=True, help="folder of ground-truth masks (<stem>.png or <stem>_mask.png)")
    ev.add_argument("--nsd-tolerance", type=float, default=2.0, help="NSD tolerance in pixels (default: 2)")
    ev.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the CIs")
    ev.add_argument("--csv", help="write the per-image table here")
    ev.add_argument("--allow-missing", action="store_true",
                    help="score the pairs that exist instead of refusing missing/extra files")
    ev.set_defaults(func=_cmd_evaluate)

    ph = sub.add_parser("phantom", help="write a phantom data set (images/, masks/, captions.csv, splits.json)")
    ph.add_argument("--task", choices=("breast", "brain", "xray", "all"), default="all")
    ph.add_argument("--n", type=int, default=100, help="images per task (default: %(default)s)")
    ph.add_argument("--size", type=int, default=256)
    ph.add_argument("--seed", type=int, default=0)
    ph.add_argument("--out", required=True, help="output folder (one sub-folder per task with --task all)")
    ph.set_defaults(func=_cmd_phantom)

    pr = sub.add_parser(
        "prepare",
        help="convert a public data set to the folder layout (see data_scripts/README.md)",
        description="Convert a public data set. Arguments after the data set name go to its "
        "converter: `medclipsam prepare busi --help`.",
    )
    pr.add_argument("dataset", choices=SOURCES)
    pr.add_argument("rest", nargs=argparse.REMAINDER, help="arguments for the converter")
    pr.set_defaults(func=_cmd_prepare)

    from .finetune import add_finetune_arguments, run_from_args

    f = sub.add_parser(
        "finetune",
        help="contrastive fine-tuning of a CLIP model on image-caption pairs (DHN-NCE by default)",
        description="Fine-tune a CLIP model (toy, biomedclip, an open_clip name or a checkpoint) on a "
        "captions CSV with InfoNCE, DCL, HN-NCE or DHN-NCE; checkpoints every epoch, --resume "
        "continues exactly; torchrun --nproc_per_node N -m medclipsam.finetune ... for several GPUs.",
    )
    add_finetune_arguments(f)
    f.set_defaults(func=run_from_args)

    pl = sub.add_parser("pseudo-label", help="zero-shot masks of a split as pseudo-labels (resumable)")
    pl.add_argument("--images", required=True, help="images folder of a prepared data set")
    pl.add_argument("--prompt", required=True)
    pl.add_argument("--out", required=True, help="writes OUT/masks, OUT/results.csv (manifest), OUT/run.json")
    pl.add_argument("--task", choices=("breast", "brain", "xray"))
    pl.add_argument("--split", help="only this split's stems (e.g. train)")
    pl.add_argument("--splits", help="split file (default: splits.json beside the images folder)")
    pl.add_argument("--clip", default="toy")
    pl.add_argument("--sam", default="toy")
    pl.add_argument("--device", default="auto")
    pl.add_argument("--strict", action="store_true",
                    help="stop at the first image that cannot be read (default: record it as "
                    "failed and go on; exit code 1 if any failed)")
    pl.add_argument("--quiet", action="store_true")
    pl.set_defaults(func=_cmd_pseudo_label)

    tw = sub.add_parser("train-weak", help="train a Residual UNet (MONAI) on pseudo-labels or labels")
    tw.add_argument("--images", required=True)
    tw.add_argument("--masks", required=True, help="training masks (pseudo-labels for weak training)")
    tw.add_argument("--val-images", help="validation images (default: --images with --val-split)")
    tw.add_argument("--val-masks", help="validation masks (default: --masks): pseudo-labels, never ground truth")
    tw.add_argument("--splits", help="split file restricting train/val stems")
    tw.add_argument("--train-split", help="split name for training (default: train)")
    tw.add_argument("--val-split", default="val")
    tw.add_argument("--out", required=True)
    tw.add_argument("--epochs", type=int, default=100)
    tw.add_argument("--batch-size", type=int, default=8)
    tw.add_argument("--lr", type=float, default=3e-3)
    tw.add_argument("--size", type=int, default=96)
    tw.add_argument("--patience", type=int, default=20, help="early stopping (after --min-epochs)")
    tw.add_argument("--min-epochs", type=int, default=50)
    tw.add_argument("--seed", type=int, default=0)
    tw.add_argument("--device", default="auto")
    tw.add_argument("--resume", action="store_true")
    tw.add_argument("--quiet", action="store_true")
    tw.set_defaults(func=_cmd_train_weak)

    rp = sub.add_parser(
        "reproduce",
        help="the whole method on a prepared data set: zero-shot, weakly and fully supervised",
        description="Pseudo-labels from the zero-shot pipeline (train/val), a Residual UNet trained on "
        "them, the same network on the real labels, all scored on the test split beside the paper's "
        "numbers. DATA holds images/, masks/ and splits.json (medclipsam phantom / prepare write it).",
    )
    rp.add_argument("--task", required=True, choices=("breast", "brain", "xray"))
    rp.add_argument("--data", required=True)
    rp.add_argument("--out", required=True)
    rp.add_argument("--prompt", help="default: the task's prompt")
    rp.add_argument("--epochs", type=int, default=100)
    rp.add_argument("--size", type=int, default=96)
    rp.add_argument("--batch-size", type=int, default=8)
    rp.add_argument("--drop-uncertain", type=float, default=0.0,
                    help="also retrain without this share of the most uncertain pseudo-labels")
    rp.add_argument("--clip", default="toy", help="the zero-shot stage's CLIP (default: toy)")
    rp.add_argument("--sam", default="toy",
                    help="its segmenter: toy | vit_b | medsam | sam2-hiera-tiny | ... | sam3-text")
    rp.add_argument("--device", default="auto")
    rp.add_argument("--quiet", action="store_true")
    rp.set_defaults(func=_cmd_reproduce)

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
                    help="comma-separated: toy, sam (= vit_b), vit_l, vit_h, medsam, "
                    "sam2-hiera-tiny/small/base-plus/large, a checkpoint or model folder, "
                    "sam3-text (facebook/sam3) or sam3-text:FOLDER")
    cp.add_argument("--out", required=True, help="output folder")
    cp.add_argument("--clip", default="biomedclip", help="CLIP for the MedCLIP-SAM rows (default: %(default)s)")
    cp.add_argument("--split", help="only this split of DATA/splits.json (e.g. test)")
    cp.add_argument("--limit", type=int, help="only the first N images")
    cp.add_argument("--task", choices=("breast", "brain", "xray"), help="the task's preset (xray: two lungs)")
    cp.add_argument("--nsd-tolerance", type=float, default=2.0)
    cp.add_argument("--n-boot", type=int, default=1000)
    cp.add_argument("--device", default="auto")
    cp.add_argument("--quiet", action="store_true")
    cp.set_defaults(func=_cmd_compare)

    i = sub.add_parser("info", help="versions, device and cache folder")
    i.set_defaults(func=_cmd_info)
    return p


def main(argv: list[str] | None = None) -> int:
    import warnings

    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return args.func(args)
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except _USER_ERRORS as err:
        if os.environ.get("MEDCLIPSAM_DEBUG"):
            raise
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
