"""Fine-tune the shipped toy CLIP with DHN-NCE (or another loss) at full settings, and measure it.

    python scripts/finetune_toy_clip.py [--loss dhn_nce] [--n-train 500] [--epochs 3] [--lr 2e-4]
                                        [--out medclipsam/weights/toy_clip_dhn_nce.pt] [--threads 1]

Stage 1 of MedCLIP-SAM on the phantom world: the shipped toy CLIP (``load_clip("toy")``) is
fine-tuned with :func:`medclipsam.finetune.finetune` on phantom image-caption pairs of the *train*
split (``--n-train`` images per task, each with its five captions, the three tasks mixed; batch 32;
the model's learned temperature; linear warm-up over the first tenth of the steps, then cosine
decay), and written to ``--out`` in half precision (what ``load_clip(path)`` and
``load_clip("toy-dhn-nce")`` read). Printed: image-to-text and text-to-image top-1 retrieval on
held-out pairs (validation and test splits, ``--n-test`` images per task, one caption each) in the paper's
protocol (batches of 50, five shuffles), before and after, with the paired difference over the
same queries and its 95 % bootstrap interval (each query's hit rate averaged over the shuffles).
Deterministic for one machine and thread count. Lesson 02 loads the file this writes.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def query_hits(clip, pairs) -> np.ndarray:
    """Per query (images first, then captions): top-1 hit rate over the protocol's five shuffles."""
    from medclipsam.loss_comparison import embed_pairs
    from medclipsam.retrieval import protocol_hits

    return protocol_hits(*embed_pairs(clip, pairs), pairs.captions)


def main(argv: list[str] | None = None) -> int:
    import torch

    from medclipsam.config import FinetuneConfig
    from medclipsam.data import PhantomPairs
    from medclipsam.finetune import finetune
    from medclipsam.metrics import paired_difference
    from medclipsam.models import load_clip, save_clip_checkpoint

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--loss", default="dhn_nce")
    p.add_argument("--n-train", type=int, default=500, help="train images per task (5 captions each)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--n-test", type=int, default=500, help="held-out images per task (one caption each)")
    p.add_argument("--out", default=str(ROOT / "medclipsam" / "weights" / "toy_clip_dhn_nce.pt"))
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    clip = load_clip("toy", device="cpu")
    train = PhantomPairs(n_per_task=a.n_train, split="train", captions="all", transform=clip.preprocess)
    held = {s: PhantomPairs(n_per_task=a.n_test, split=s, captions="one", transform=clip.preprocess)
            for s in ("val", "test")}
    before = {s: query_hits(clip, pairs) for s, pairs in held.items()}
    steps = a.epochs * (len(train) // a.batch_size)
    with tempfile.TemporaryDirectory(prefix="finetune_toy_") as work:
        cfg = FinetuneConfig(out_dir=work, loss=a.loss, lr=a.lr, batch_size=a.batch_size, epochs=a.epochs,
                             warmup_steps=max(1, steps // 10), learn_logit_scale=True, device="cpu",
                             num_workers=0, eval_every=0, eval_before=False, progress=False, seed=0)
        finetune(clip, train, None, cfg)
    minutes = (time.perf_counter() - t0) / 60
    print(f"{a.loss}: {len(train)} pairs, {steps} optimiser steps, {minutes:.1f} min on "
          f"{a.threads} thread(s)")
    for split, pairs in held.items():
        after = query_hits(clip, pairs)
        n = len(pairs)
        for label, sl in (("image-to-text", slice(0, n)), ("text-to-image", slice(n, 2 * n)),
                          ("both", slice(0, 2 * n))):
            d = paired_difference(after[sl], before[split][sl], n_boot=2000)
            print(f"  {split:4s} {label:13s} top-1 {100 * before[split][sl].mean():5.1f} -> "
                  f"{100 * after[sl].mean():5.1f} %, paired {100 * d['mean']:+.1f} "
                  f"[{100 * d['ci_low']:+.1f}, {100 * d['ci_high']:+.1f}] points")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    clip.model.half()
    tmp = out.with_suffix(".tmp")
    save_clip_checkpoint(clip, tmp, loss=a.loss, n_train_per_task=a.n_train, epochs=a.epochs, lr=a.lr,
                         steps=steps, base="toy")
    shutil.move(tmp, out)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
