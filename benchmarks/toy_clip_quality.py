"""How good is the toy CLIP? Retrieval and localisation on held-out phantom images.

    python benchmarks/toy_clip_quality.py [--clip toy|PATH] [--n 100] [--n-loc 40]

Prints top-1/top-2 retrieval in both directions (the paper's protocol: shuffled batches of 50, five
runs; within one task, so captions are hard negatives of the same modality; and over all tasks
mixed), then the localisation table: GradCAM of each task's prompt versus the intensity rule and a
random map (pointing game, pixel AUC).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import hardware_header, print_table  # noqa: E402


def embed_pairs(clip, task: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    from medclipsam.data.phantom import PhantomDataset

    ds = PhantomDataset(task, n, seed=seed, size=clip.image_size, split="test")
    rng = np.random.default_rng(seed)
    images, captions = [], []
    for i in range(len(ds)):
        s = ds[i]
        images.append(clip.prepare(s.rgb)[0])
        captions.append(s.captions[int(rng.integers(len(s.captions)))])
    with torch.no_grad():
        img = torch.cat([clip.model.encode_image(torch.stack(images[b : b + 64]).to(clip.device))
                         for b in range(0, len(images), 64)])
        txt = torch.cat([clip.model.encode_text(clip.tokenize(captions[b : b + 64]))
                         for b in range(0, len(captions), 64)])
    return img.cpu(), txt.cpu(), captions


def main(argv: list[str] | None = None) -> int:
    from medclipsam.data.phantom import TASKS
    from medclipsam.models import load_clip
    from medclipsam.retrieval import retrieval_protocol
    from medclipsam.saliency.evaluate import localisation_table

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clip", default="toy", help="'toy' or a CLIP checkpoint path")
    p.add_argument("--n", type=int, default=100, help="held-out pairs per task for retrieval")
    p.add_argument("--n-loc", type=int, default=40, help="held-out images per task for localisation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    a = p.parse_args(argv)

    print(hardware_header())
    t0 = time.perf_counter()
    clip = load_clip(a.clip, device=a.device)
    print(f"CLIP: {a.clip} ({sum(p.numel() for p in clip.model.parameters()) / 1e6:.2f} M parameters)\n")

    rows, all_img, all_txt, all_cap = [], [], [], []
    for task in TASKS:
        img, txt, caps = embed_pairs(clip, task, a.n, a.seed)
        all_img.append(img)
        all_txt.append(txt)
        all_cap += caps
        res = retrieval_protocol(img, txt, batch=50, runs=5, seed=a.seed, groups=caps)
        rows.append({"pairs": f"{task} ({len(caps)})", **{k: f"{m:.1f} ± {s:.1f}" for k, (m, s) in res.items()}})
    res = retrieval_protocol(torch.cat(all_img), torch.cat(all_txt), batch=50, runs=5, seed=a.seed, groups=all_cap)
    rows.append({"pairs": f"all tasks mixed ({len(all_cap)})", **{k: f"{m:.1f} ± {s:.1f}" for k, (m, s) in res.items()}})
    print("Retrieval, % (batches of 50: chance is 2 % top-1, 4 % top-2)")
    print_table(rows)

    print("\nLocalisation: GradCAM of the task prompt vs the intensity rule and a random map")
    print_table([{k: v for k, v in r.items() if k != "dice_per_image"}
                 for r in localisation_table(clip, TASKS, n_per_task=a.n_loc, seed=a.seed)], floatfmt="{:.2f}")
    print(f"\n({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
