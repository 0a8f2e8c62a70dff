"""Zero-shot segmentation in the toy world: quality per task and setting, controls, and stage timings.

    python benchmarks/zeroshot_toy.py [--n 30] [--size 256] [--threads 2] [--skip-ablation]

1. The default pipeline (toy CLIP -> gScoreCAM -> coarse mask -> box -> LiteMedSAM) per task: Dice, IoU,
   HD95, NSD (2 px) with 95 % bootstrap intervals; then the same with the saliency map replaced by
   a random and by a uniform map (controls: what the text prompt contributes), and with GradCAM
   and M2IB instead of gScoreCAM.
2. The paper's ablation: every post-processing choice (CRF, k-means, threshold 0.3, Otsu) x every
   prompt mode (box, points, box+points), reusing each image's saliency map and SAM embedding.
3. Seconds per image for each stage.

Held-out phantom images with a finding (the test split); ground truth is used only to score.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import hardware_header, print_table  # noqa: E402


def _fmt(stats: dict, m: str) -> str:
    s = stats[m]
    return f"{s['mean']:.3f} [{s['ci_low']:.2f}, {s['ci_high']:.2f}]"


def main(argv: list[str] | None = None) -> int:
    import torch

    from medclipsam.data.phantom import PROMPTS, TASKS, PhantomDataset
    from medclipsam.metrics import evaluate_masks, summarize
    from medclipsam.pipeline import MedCLIPSAM

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=30, help="images per task (normals are left out)")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--tasks", nargs="+", default=list(TASKS))
    p.add_argument("--skip-ablation", action="store_true")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    print(hardware_header())
    t_all = time.perf_counter()
    pipe = MedCLIPSAM.offline()
    data = {}
    for task in a.tasks:
        ds = PhantomDataset(task, a.n, seed=a.seed, size=a.size, split="test", normal_fraction=0.0)
        data[task] = list(ds)

    def score(results, samples):
        rows = evaluate_masks([r.mask for r in results], [s.mask for s in samples])
        return summarize(rows, n_boot=1000, seed=a.seed)

    main_rows, timing_rows, maps = [], [], {}
    for task in a.tasks:
        samples, prompt = data[task], PROMPTS[task]
        images = [s.rgb for s in samples]
        res = pipe.predict(images, prompt, task=task)
        maps[task] = [r.saliency for r in res]
        st = score(res, samples)
        main_rows.append({"task": task, "setting": "gScoreCAM (default)", "dice": _fmt(st, "dice"),
                          "iou": _fmt(st, "iou"), "hd95": _fmt(st, "hd95"), "nsd": _fmt(st, "nsd")})
        timing_rows.append({"task": task, **{k: f"{np.mean([r.timings[k] for r in res]):.3f}"
                                             for k in res[0].timings}})
        for setting, kw in (("random map (control)", {"saliency": "random"}),
                            ("uniform map (control)", {"saliency": "uniform"}),
                            ("GradCAM", {"saliency": "gradcam"}), ("M2IB", {"saliency": "m2ib"})):
            r2 = pipe.predict(images, prompt, task=task, **kw)
            st = score(r2, samples)
            main_rows.append({"task": task, "setting": setting, "dice": _fmt(st, "dice"),
                              "iou": _fmt(st, "iou"), "hd95": _fmt(st, "hd95"), "nsd": _fmt(st, "nsd")})
    print(f"\nZero-shot, held-out phantom images ({a.n} per task), mean [95 % bootstrap CI]; "
          "HD95 in pixels, NSD at 2 px")
    print_table(main_rows)
    print("\nSeconds per image by stage (default pipeline)")
    print_table(timing_rows)

    if not a.skip_ablation:
        abl = []
        for task in a.tasks:
            samples, prompt = data[task], PROMPTS[task]
            images = [s.rgb for s in samples]
            row = {"task": task}
            for post in ("crf", "kmeans", "threshold", "otsu"):
                for mode in ("box", "points", "box+points"):
                    res = pipe.predict(images, prompt, task=task, maps=maps[task], postprocess=post,
                                       sam_prompt_mode=mode)
                    st = score(res, samples)
                    row[f"{post}/{mode}"] = f"{st['dice']['mean']:.3f}"
            abl.append(row)
        print("\nAblation (Dice): post-processing / prompt mode, same gScoreCAM maps")
        cols = [k for k in abl[0] if k != "task"]
        print_table([{"setting": c, **{r["task"]: r[c] for r in abl}} for c in cols])
    print(f"\n({time.perf_counter() - t_all:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
