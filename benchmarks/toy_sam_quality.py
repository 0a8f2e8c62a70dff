"""Quality of the toy SAM on held-out phantom images: mean Dice per task for box prompts.

Every image of the "test" split with a non-empty mask is prompted with one box per connected
component (both lungs for the chest X-ray; masks unioned), first the exact ground-truth boxes,
then boxes jittered by ``--jitter`` x their side per coordinate (what a saliency-derived box
looks like), and last a box of half the target's size placed away from the target, near the image
centre (Dice should collapse: the model must follow the box, not find the lesion by itself).
The acceptance criterion for the shipped weights is Dice >= 0.85 per task with the
ground-truth boxes.

    python benchmarks/toy_sam_quality.py --n-per-task 50
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from medclipsam.data.phantom import TASKS
from medclipsam.models.sam import load_sam
from medclipsam.models.toy_sam import evaluate_toy_sam

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import hardware_header  # noqa: E402


def _size(text: str) -> int | tuple[int, int]:
    parts = [int(p) for p in text.lower().replace("x", ",").split(",") if p]
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        return (parts[0], parts[1])
    raise argparse.ArgumentTypeError(f"size must be N or HxW, got {text!r}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default="toy", help="'toy' or a SAM checkpoint path")
    ap.add_argument("--n-per-task", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0, help="seed of the test phantoms")
    ap.add_argument("--size", type=_size, default=256, help="phantom size: N or HxW")
    ap.add_argument("--jitter", type=float, default=0.1,
                    help="box noise, a fraction of the box side per coordinate")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    print(hardware_header())
    print(f"device {args.device}")
    t0 = time.time()
    pred = load_sam(args.weights, device=args.device)
    print(f"weights: {args.weights}; phantoms: split 'test', seed {args.seed}, size {args.size}, "
          f"{args.n_per_task} images per task (non-empty masks)")
    rows = {}
    for name, noise in (("GT box", 0.0), (f"jittered box ({args.jitter:g})", args.jitter)):
        t = time.time()
        rows[name] = evaluate_toy_sam(pred, n_per_task=args.n_per_task, seed=args.seed,
                                      size=args.size, box_noise=noise)
        rows[name]["_s"] = time.time() - t
    t = time.time()
    rows["off-target box"] = evaluate_toy_sam(pred, n_per_task=args.n_per_task, seed=args.seed,
                                              size=args.size, off_target=True)
    rows["off-target box"]["_s"] = time.time() - t
    head = f"{'prompt':<24s}" + "".join(f"{t:>9s}" for t in TASKS) + f"{'mean':>9s}{'time':>9s}"
    print(head)
    print("-" * len(head))
    for name, d in rows.items():
        vals = [d[t] for t in TASKS]
        print(f"{name:<24s}" + "".join(f"{v:9.3f}" for v in vals)
              + f"{sum(vals) / len(vals):9.3f}{d['_s']:8.1f}s")
    print(f"total {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
