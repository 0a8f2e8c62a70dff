"""The ``medclipsam`` command line.

Sub-commands:
  demo      the main job on the built-in toy (phantom) world; writes figures and a table
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

    run_demo(out=Path(args.out), n=args.n, size=args.size, seed=args.seed)
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
    d.add_argument("--n", type=int, default=4, help="images per task (default: %(default)s)")
    d.add_argument("--size", type=int, default=256, help="image size in pixels (default: %(default)s)")
    d.add_argument("--seed", type=int, default=0, help="phantom seed (default: %(default)s)")
    d.set_defaults(func=_cmd_demo)

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

    i = sub.add_parser("info", help="versions, device and cache folder")
    i.set_defaults(func=_cmd_info)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
