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
import os
import platform
import sys
import time

import numpy as np
import torch

from medclipsam.data.phantom import TASKS, PhantomDataset
from medclipsam.models.sam import load_sam
from medclipsam.models.toy_sam import component_boxes, dice_score, evaluate_toy_sam, predict_boxes


def _size(text: str) -> int | tuple[int, int]:
    parts = [int(p) for p in text.lower().replace("x", ",").split(",") if p]
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        return (parts[0], parts[1])
    raise argparse.ArgumentTypeError(f"size must be N or HxW, got {text!r}")


def _off_target_box(mask: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Half ``box``'s size, covering the fewest mask pixels, nearest the image centre."""
    h, w = mask.shape
    bw, bh = max(12, int((box[2] - box[0]) / 2)), max(12, int((box[3] - box[1]) / 2))
    cover = np.lib.stride_tricks.sliding_window_view(mask, (bh, bw)).sum(axis=(2, 3))
    ys, xs = np.mgrid[: cover.shape[0], : cover.shape[1]]
    dist = (ys + bh / 2 - h / 2) ** 2 + (xs + bw / 2 - w / 2) ** 2
    y, x = np.unravel_index(np.lexsort((dist.ravel(), cover.ravel()))[0], cover.shape)
    return np.array([x, y, x + bw - 1, y + bh - 1], dtype=float)


def off_target_dice(pred, n_per_task: int, seed: int, size) -> dict[str, float]:
    """Mean Dice against the target when the box sits on another part of the image."""
    out = {}
    for task in TASKS:
        ds = PhantomDataset(task, 4 * n_per_task + 10, seed, size, "test")
        scores = []
        for i in range(len(ds)):
            if len(scores) >= n_per_task:
                break
            if ds.label_of(i) == "normal":
                continue
            s = ds[i]
            boxes = component_boxes(s.mask)
            pred.set_image(s.rgb)
            far = _off_target_box(s.mask, boxes[0])
            scores.append(dice_score(predict_boxes(pred, far[None]), s.mask))
        out[task] = float(np.mean(scores))
    return out


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
    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, {platform.platform()}")
    print(f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{torch.get_num_threads()} torch threads, device {args.device}")
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
    rows["off-target box"] = off_target_dice(pred, args.n_per_task, args.seed, args.size)
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
