"""Stage 1 in the toy world: fine-tune the toy CLIP with each loss, compare held-out retrieval.

    python benchmarks/dhn_nce_toy.py [--n-train 100] [--n-test 100] [--epochs 2] [--lr 1e-4]
                                     [--tau learned|0.6|...] [--out runs/dhn_nce_toy]

Each loss starts from the shipped toy CLIP, trains on phantom pairs of the train split (five captions
per image, the three tasks mixed) with identical settings and data order, and is scored on held-out
test pairs in the paper's protocol (batches of 50, five shuffles; mean and spread). The paper's table
is printed beside it. Finished runs in --out are reused (delete the folder to retrain).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import hardware_header, print_table  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    import torch

    from medclipsam.config import FinetuneConfig
    from medclipsam.data import PhantomPairs
    from medclipsam.loss_comparison import PAPER_RETRIEVAL, compare_losses
    from medclipsam.models import load_clip
    from medclipsam.vocab import LOSS_NAMES

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-train", type=int, default=100, help="train images per task (5 pairs each)")
    p.add_argument("--n-test", type=int, default=100, help="held-out images per task (1 pair each)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--tau", default="learned", help="'learned' (the model's logit scale) or a number")
    p.add_argument("--beta", type=float, default=0.15)
    p.add_argument("--losses", nargs="+", default=list(LOSS_NAMES))
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="runs/dhn_nce_toy")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)

    print(hardware_header())
    t0 = time.perf_counter()
    preprocess = load_clip("toy").preprocess
    train = PhantomPairs(n_per_task=a.n_train, split="train", seed=a.seed, captions="all", transform=preprocess)
    test = PhantomPairs(n_per_task=a.n_test, split="test", seed=a.seed, captions="one", transform=preprocess)
    learned = a.tau == "learned"
    cfg = FinetuneConfig(
        lr=a.lr, epochs=a.epochs, batch_size=a.batch_size, warmup_steps=20, beta1=a.beta, beta2=a.beta,
        tau=0.6 if learned else float(a.tau), learn_logit_scale=learned, device=a.device, num_workers=0,
        eval_every=0, eval_before=False, progress=False, seed=a.seed,
    )
    print(f"{len(train)} train pairs, {len(test)} held-out pairs; lr {a.lr}, {a.epochs} epochs of batch "
          f"{a.batch_size}, tau {a.tau}, beta {a.beta}\n")
    rows = compare_losses(train, test, clip="toy", losses=a.losses, config=cfg, out_dir=a.out, device=a.device)
    cols = ("i2t_top1", "i2t_top2", "t2i_top1", "t2i_top2")
    print("Toy world: held-out phantom pairs, % (batches of 50; chance 2 % top-1), mean ± spread over 5 shuffles")
    print_table([{"model": r["model"], **{c: f"{r[c]:.1f} ± {r[c + '_std']:.1f}" for c in cols},
                  "steps": r["steps"], "train s": f"{r['seconds']:.0f}"} for r in rows])
    print("\nThe paper: ROCO, BiomedCLIP fine-tuned on MedPix, %")
    print_table([{"model": r["model"], **{c: f"{r[c]:.2f}" for c in cols}} for r in PAPER_RETRIEVAL])
    print(f"\n({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
