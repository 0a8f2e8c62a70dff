"""The ``medclipsam`` command line.

Sub-commands:
  demo      the main job on the built-in toy (phantom) world; writes figures and a table
  segment   text prompt + a folder of images -> masks (zero-shot MedCLIP-SAM)
  evaluate  score a folder of predicted masks against ground truth (Dice, IoU, HD95, NSD)
  pseudo-label  zero-shot masks of a data set's split as pseudo-labels (with a manifest)
  train-weak    train a Residual UNet on (pseudo-)labels, early stopping on a validation split
  reproduce     zero-shot vs weakly vs fully supervised on a prepared data set, beside the paper
  phantom   write a phantom data set in the project's folder layout
  prepare   convert a public data set (BUSI, UDIAT, brain_figshare, covidqu, roco) to that layout
  finetune  contrastive fine-tuning of a CLIP model (InfoNCE, DCL, HN-NCE, DHN-NCE)
  info      versions, device and where weights are cached

Heavy imports happen inside each command (``finetune`` builds its options from
``medclipsam.finetune``, which imports torch: about 2 s for ``--help``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

SOURCES = ("busi", "udiat", "brain_figshare", "covidqu", "roco")


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(out=Path(args.out), n=args.n, size=args.size, seed=args.seed, saliency=args.saliency)
    return 0


def _pipeline(args: argparse.Namespace, **overrides):
    """The toy world when both models are "toy", else the named real models (downloaded)."""
    from .pipeline import MedCLIPSAM

    checkpoint = getattr(args, "sam_checkpoint", None)
    if checkpoint and args.sam == "toy":
        raise SystemExit("error: --sam-checkpoint is the file for --sam vit_b|vit_l|vit_h|medsam "
                         "(e.g. --sam medsam --sam-checkpoint medsam_vit_b.pth)")
    if args.clip == "toy" and args.sam == "toy":
        return MedCLIPSAM.toy(device=args.device, **overrides)
    return MedCLIPSAM.from_pretrained(args.clip, args.sam, device=args.device,
                                      sam_checkpoint=checkpoint, **overrides)


def _saliency_overrides(args: argparse.Namespace) -> dict:
    """--saliency, --k, --precision and --postprocess as PipelineConfig overrides (options left
    unset keep the world's defaults, e.g. the toy world's k)."""
    over: dict = {k: v for k, v in (("saliency", args.saliency), ("postprocess", args.postprocess))
                  if v is not None}
    kwargs = {}
    if args.k is not None:
        if over.get("saliency", "gscorecam") != "gscorecam":
            raise SystemExit(f"error: --k is gScoreCAM's number of channels; --saliency is {args.saliency}")
        kwargs["k"] = args.k
    if args.precision:
        kwargs["precision"] = args.precision
    if kwargs:
        over["saliency_kwargs"] = kwargs
    return over


def _cmd_segment(args: argparse.Namespace) -> int:
    from .pipeline import PipelineConfig

    over = dict(
        _saliency_overrides(args),
        threshold=args.threshold, n_components=args.components, box_mode=args.box_mode,
        points=args.points, negatives=args.negatives,
        multimask=True if args.multimask else None, seed=args.seed,
    )
    # Options left unset keep the world's defaults (the toy world's k and box+points prompts).
    if args.prompt_mode:
        over["prompt_mode"] = args.prompt_mode
    PipelineConfig(**over)  # validates the combination early
    t0 = time.perf_counter()
    pipe = _pipeline(args, **over)
    rows = pipe.run_folder(
        args.images, args.prompt, args.out, task=args.task, resume=not args.restart,
        overlays=args.overlays, limit=args.limit, progress=not args.quiet,
    )
    flagged = sum(1 for r in rows if r.get("flags"))
    print(f"{len(rows)} images segmented into {args.out}/masks ({flagged} flagged; see "
          f"{args.out}/results.csv) in {time.perf_counter() - t0:.1f} s")
    return 0


def _split_stems(args: argparse.Namespace, name: str | None) -> list[str] | None:
    if not name:
        return None
    from .data.datasets import load_split

    path = args.splits or str(Path(args.images).parent / "splits.json")
    return load_split(path)[name]


def _cmd_pseudo_label(args: argparse.Namespace) -> int:
    from .pipeline import PipelineConfig
    from .reproduce import pseudo_label

    over = _saliency_overrides(args)
    PipelineConfig(**over)  # validates the combination early
    pipe = _pipeline(args, **over)
    rows = pseudo_label(pipe, args.images, args.out, args.prompt, task=args.task,
                        stems=_split_stems(args, args.split), progress=not args.quiet)
    print(f"{len(rows)} pseudo-labels in {args.out}/masks; manifest {args.out}/results.csv")
    return 0


def _cmd_train_weak(args: argparse.Namespace) -> int:
    from .weak import WeakConfig, train_segmenter

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

    cfg = WeakConfig(epochs=args.epochs, size=args.size, batch_size=args.batch_size, device=args.device)
    reproduce(args.data, args.out, task=args.task, prompt=args.prompt, config=cfg,
              drop_uncertain=args.drop_uncertain, progress=not args.quiet)
    print((Path(args.out) / "table.md").read_text())
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import csv

    from ._utils import atomic_path
    from .data.datasets import PairingError
    from .metrics import evaluate_folders, summarize

    try:
        rows, pairs = evaluate_folders(args.pred, args.gt, nsd_tolerance=args.nsd_tolerance,
                                       strict=not args.allow_missing)
    except (PairingError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
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
    sg.add_argument("--clip", default="toy", help="toy | biomedclip | open_clip name | checkpoint "
                    "file | model folder (a Hugging Face snapshot) | local-dir:PATH")
    sg.add_argument("--sam", default="toy", help="toy | vit_b | vit_l | vit_h | medsam | checkpoint path")
    sg.add_argument("--sam-checkpoint", metavar="PATH",
                    help="your own file for --sam vit_b|vit_l|vit_h|medsam (--sam medsam "
                    "--sam-checkpoint medsam_vit_b.pth: MedSAM with MedSAM's preprocessing)")
    sg.add_argument("--task", choices=("breast", "brain", "xray"), help="apply the task's preset (xray: two lungs)")
    sg.add_argument("--saliency", default="gscorecam", choices=("gscorecam", "gradcam", "m2ib"))
    sg.add_argument("--k", type=int, help="gScoreCAM channels (default: 300, the paper's; 24 in the "
                    "toy world); on one CPU thread with BiomedCLIP about 0.6 s per channel per image")
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
    pl.add_argument("--clip", default="toy", help="toy | biomedclip | open_clip name | checkpoint "
                    "file | model folder")
    pl.add_argument("--sam", default="toy", help="toy | vit_b | vit_l | vit_h | medsam | checkpoint path")
    pl.add_argument("--sam-checkpoint", metavar="PATH",
                    help="your own file for --sam vit_b|vit_l|vit_h|medsam")
    pl.add_argument("--saliency", choices=("gscorecam", "gradcam", "m2ib"),
                    help="default: gscorecam")
    pl.add_argument("--k", type=int, help="gScoreCAM channels (default: 300, the paper's; 24 in the "
                    "toy world)")
    pl.add_argument("--precision", choices=("fp32", "fast"), help="gScoreCAM precision")
    pl.add_argument("--postprocess", choices=("crf", "kmeans", "threshold", "otsu"),
                    help="default: crf (k-means, flagged, without the crf extra)")
    pl.add_argument("--device", default="auto")
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
    rp.add_argument("--device", default="auto")
    rp.add_argument("--quiet", action="store_true")
    rp.set_defaults(func=_cmd_reproduce)

    i = sub.add_parser("info", help="versions, device and cache folder")
    i.set_defaults(func=_cmd_info)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
