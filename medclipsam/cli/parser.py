"""The ``medclipsam`` parser: each sub-command's options, the shared groups from :mod:`.options`
(imports neither torch nor the models: ``medclipsam SUB --help`` answers at once)."""

from __future__ import annotations

import argparse
from typing import Any

from ..config import FinetuneConfig, PipelineConfig, WeakConfig
from ..vocab import (
    DATA_SOURCES,
    FREEZE_MODES,
    LOSS_NAMES,
    SALIENCY_METHODS,
    TASKS,
    TRAINING_PRECISIONS,
)
from . import commands
from .checks import Parser
from .options import (
    add_device,
    add_folder_run,
    add_models,
    add_prompting,
    add_quiet,
    add_resume,
    add_saliency,
    add_scoring,
    add_threads,
    add_unet,
)

__all__ = ["build_parser"]

_PIPE = PipelineConfig()
_WEAK = WeakConfig()
_FT = FinetuneConfig()


def _add_demo(sub: Any) -> None:
    d = sub.add_parser("demo", help="run the main job on the built-in phantom world")
    d.add_argument("--out", default="medclipsam-demo", help="output folder (default: %(default)s)")
    d.add_argument("--n", type=int, default=6, help="images per task (default: %(default)s)")
    d.add_argument("--size", type=int, default=256, help="image size in pixels (default: %(default)s)")
    d.add_argument("--seed", type=int, default=0, help="phantom seed (default: %(default)s)")
    d.add_argument("--saliency", default=_PIPE.saliency, choices=SALIENCY_METHODS,
                   help="saliency method (default: %(default)s)")
    add_threads(d)
    d.set_defaults(func=commands.cmd_demo)


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
    add_folder_run(sg, images="folder of images (PNG/JPEG/TIFF/DICOM/NIfTI)", out="output folder",
                   task="apply the task's preset, e.g. xray: two lungs, one box each (default: none)",
                   failed="a failed row in results.csv")
    sg.add_argument("--overlays", action="store_true", help="also write OUT/overlays/<stem>.png (default: off)")
    sg.add_argument("--limit", type=int, help="only the first N images, sorted by name (default: all)")
    sg.add_argument("--restart", action="store_true",
                    help="recompute images already done (default: off, an interrupted run resumes)")
    add_threads(sg)
    add_models(sg)
    add_saliency(sg)
    add_prompting(sg)
    sg.set_defaults(func=commands.cmd_segment)


def _add_evaluate(sub: Any) -> None:
    ev = sub.add_parser(
        "evaluate",
        help="Dice, IoU, HD95 and NSD of predicted masks against ground truth (paired by file stem)",
    )
    ev.add_argument("--pred", required=True, help="folder of predicted masks (e.g. OUT/masks)")
    ev.add_argument("--gt", required=True, help="folder of ground-truth masks (<stem>.png or <stem>_mask.png)")
    add_scoring(ev)
    ev.add_argument("--csv", help="write the per-image table here (default: not written)")
    ev.add_argument("--allow-missing", action="store_true",
                    help="score the pairs that exist instead of refusing missing/extra files (default: off)")
    ev.set_defaults(func=commands.cmd_evaluate)


def _add_phantom(sub: Any) -> None:
    ph = sub.add_parser("phantom", help="write a phantom data set (images/, masks/, captions.csv, splits.json)")
    ph.add_argument("--task", choices=(*TASKS, "all"), default="all", help="which task (default: %(default)s)")
    ph.add_argument("--n", type=int, default=100, help="images per task (default: %(default)s)")
    ph.add_argument("--size", type=int, default=256, help="image size in pixels (default: %(default)s)")
    ph.add_argument("--seed", type=int, default=0, help="phantom seed (default: %(default)s)")
    ph.add_argument("--out", required=True, help="output folder (one sub-folder per task with --task all)")
    ph.set_defaults(func=commands.cmd_phantom)


def _add_prepare(sub: Any) -> None:
    pr = sub.add_parser(
        "prepare",
        help="convert a public data set to the folder layout (see data_scripts/README.md)",
        description="Convert a public data set. Arguments after the data set name go to its "
        "converter: `medclipsam prepare busi --help`.",
    )
    pr.add_argument("dataset", choices=DATA_SOURCES, help="which data set")
    pr.add_argument("rest", nargs=argparse.REMAINDER, help="arguments for the converter")
    pr.set_defaults(func=commands.cmd_prepare)


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
    add_resume(p)
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
    add_device(p, default=d.device)
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
    add_threads(p)
    p.set_defaults(func=commands.cmd_finetune)




def _add_pseudo_label(sub: Any) -> None:
    pl = sub.add_parser("pseudo-label", help="zero-shot masks of a split as pseudo-labels (resumable)")
    add_folder_run(pl, images="images folder of a prepared data set",
                   out="writes OUT/masks, OUT/results.csv (manifest), OUT/run.json",
                   task="apply the task's preset (default: none)", failed="failed")
    pl.add_argument("--split", help="only this split's stems, e.g. train (default: every image)")
    pl.add_argument("--splits", help="split file (default: splits.json beside the images folder)")
    add_threads(pl)
    add_models(pl)
    add_saliency(pl)
    pl.set_defaults(func=commands.cmd_pseudo_label)


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
    add_unet(tw, epochs="epochs at most", batch_size="images per batch", size="training resolution")
    tw.add_argument("--lr", type=float, default=w.lr, help="learning rate (default: %(default)s)")
    tw.add_argument("--patience", type=int, default=w.patience,
                    help="early stopping after --min-epochs (default: %(default)s)")
    tw.add_argument("--min-epochs", type=int, default=w.min_epochs,
                    help="epochs before early stopping may stop (default: %(default)s)")
    tw.add_argument("--seed", type=int, default=w.seed, help="seed (default: %(default)s)")
    add_device(tw, default=w.device)
    add_resume(tw)
    add_quiet(tw)
    add_threads(tw)
    tw.set_defaults(func=commands.cmd_train_weak)


def _add_reproduce(sub: Any) -> None:
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
    add_unet(rp, epochs="UNet epochs at most", batch_size="UNet batch size", size="UNet resolution")
    rp.add_argument("--drop-uncertain", type=float, default=0.0,
                    help="also retrain without this share of the most uncertain pseudo-labels (default: %(default)s)")
    add_quiet(rp, bars=True)
    add_threads(rp)
    add_models(rp)
    rp.set_defaults(func=commands.cmd_reproduce)


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
    add_scoring(cp)
    add_device(cp)
    add_quiet(cp, bars=True)
    add_threads(cp)
    cp.set_defaults(func=commands.cmd_compare)


def build_parser() -> argparse.ArgumentParser:
    """The ``medclipsam`` parser (imports neither torch nor the models)."""
    p = Parser(
        prog="medclipsam",
        description="MedCLIP-SAM: text-prompted medical image segmentation.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_add_demo, _add_segment, _add_evaluate, _add_phantom, _add_prepare, _add_finetune,
                _add_pseudo_label, _add_train_weak, _add_reproduce, _add_compare):
        add(sub)
    i = sub.add_parser("info", help="versions, device and cache folder")
    i.set_defaults(func=commands.cmd_info)
    return p
