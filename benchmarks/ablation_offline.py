"""The whole method, stage by stage, in the offline world (toy CLIP + LiteMedSAM), on phantoms.

    python benchmarks/ablation_offline.py --split val   # to choose settings
    python benchmarks/ablation_offline.py --split test  # to report them (never tune on test)
        [--n 20] [--tasks breast brain xray] [--sections saliency,coarse,boxes,prompts,controls]
        [--clip-weights NAME=FILE ...] [--threads 1] [--n-boot 2000] [--csv FILE]

Every row is a change of one setting from the offline world's defaults (``MedCLIPSAM.offline()``
with the task's preset), scored on the same ``--n`` phantom images per task (all with a finding):
mean Dice with a 95 % bootstrap interval per task, and the **paired** difference to the default
(same images; the interval of the mean difference) per task and over all tasks' images together.
Rows of one CLIP share one SAM embedding per image (``MedCLIPSAM.sweep``). Sections:

* ``saliency``: gScoreCAM with the paper's share of channels (k = 48 of 128) picked by gradient
  and at random (three seeds), the default k = 112 at random, all channels (ScoreCAM); GradCAM;
  M2IB (v2's method).
* ``coarse``: dense CRF (v1), k-means (v2), a threshold of 0.3 (v2), Otsu.
* ``boxes``: the box margin off (the paper) and halved; the coarse mask not cut to the picture's
  content (the paper); one box around all kept components; one box per component.
* ``prompts``: SAM given points, box + points, and a second pass that boxes SAM's own first mask
  and asks again.
* ``controls``: the ground-truth box (the ceiling), a smooth random map and a flat map (text-blind).
* ``--clip-weights NAME=FILE``: the default pipeline with other CLIP weights (e.g.
  ``dhn_nce=toy-dhn-nce``, or a file that ``scripts/finetune_toy_clip.py --out FILE`` writes), each
  against the shipped toy CLIP on the same images.

Phantom images are generated from their seeds, so every number is reproducible. The README's
ablation table is this script's ``--split test`` output.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import hardware_header, print_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

#: section -> [(row name, PipelineConfig overrides)]; special rows are handled in code
SECTIONS: dict[str, list[tuple[str, dict]]] = {
    "saliency": [
        ("gScoreCAM k = 48 (the paper's 39 %)", {"k": 48}),
        *[(f"gScoreCAM k = 48 at random (seed {s})", {"k": 48, "saliency_kwargs": {"pick": "random", "pick_seed": s}})
          for s in (0, 1, 2)],
        ("gScoreCAM k = 112 at random", {"saliency_kwargs": {"pick": "random"}}),
        ("ScoreCAM (all 128 channels)", {"k": 128}),
        ("GradCAM", {"saliency": "gradcam"}),
        ("M2IB (v2)", {"saliency": "m2ib"}),
    ],
    "coarse": [(f"coarse mask: {p}", {"postprocess": p}) for p in ("crf", "kmeans", "threshold", "otsu")],
    "boxes": [
        ("no box margin (the paper)", {"box_margin": 0.0}),
        ("box margin 0.02", {"box_margin": 0.02}),
        ("coarse mask not cut to the content (the paper)", {"within_content": False}),
        ("one box around all kept (3)", {"box_mode": "union", "n_components": 3}),
        ("one box per component (3)", {"box_mode": "per_component", "n_components": 3}),
    ],
    "prompts": [
        ("SAM prompts: points", {"sam_prompt_mode": "points"}),
        ("SAM prompts: box + points", {"sam_prompt_mode": "box+points"}),
        ("second pass (box of SAM's mask)", {"_second_pass": True}),
    ],
    "controls": [
        ("ground-truth box (ceiling)", {"_gt_box": True}),
        ("random map (text-blind)", {"saliency": "random"}),
        ("flat map (text-blind)", {"saliency": "uniform"}),
    ],
}
DEFAULT = "default"


def _fmt(mean: float, lo: float, hi: float, signed: bool = False) -> str:
    s = "+.3f" if signed else ".3f"
    return f"{mean:{s}} [{lo:{s}}, {hi:{s}}]"


def _gt_boxes(mask: np.ndarray) -> np.ndarray:
    """One box per connected part of the ground truth (both lungs on an X-ray)."""
    from medclipsam.prompting import boxes_from_mask

    return boxes_from_mask(mask, mode="per_component", n_components=None)


def _second_pass(session, rgb: np.ndarray, first: np.ndarray, task: str) -> np.ndarray:
    """Box SAM's first mask (per component for the task's per-component preset) and ask again."""
    from medclipsam.config import TASK_PRESETS
    from medclipsam.prompting import boxes_from_mask

    if not first.any():
        return first
    pre = TASK_PRESETS[task]
    boxes = boxes_from_mask(first, mode=pre["box_mode"], n_components=pre["n_components"])
    session.set_image(rgb)  # a no-op when the session holds this image already
    return session.predict(boxes).mask


def run_clip(name: str, clip_file: str | None, data: dict, rows_wanted: list[tuple[str, dict]]) -> dict:
    """Dice per (row, task, image) for one CLIP: {row: {task: [dice, ...]}}."""
    from medclipsam.data.phantom import PROMPTS
    from medclipsam.metrics import dice
    from medclipsam.models import load_clip
    from medclipsam.pipeline import MedCLIPSAM

    pipe = MedCLIPSAM.offline()
    if clip_file:
        pipe = MedCLIPSAM(load_clip(clip_file, device="cpu"), pipe.sam, config=pipe.config, world="offline")
    plain = [(r, o) for r, o in rows_wanted if not any(k.startswith("_") for k in o)]
    settings = [{}] + [o for _, o in plain]
    names = [DEFAULT] + [r for r, _ in plain]
    out: dict[str, dict[str, list[float]]] = {n: {} for n in [DEFAULT] + [r for r, _ in rows_wanted]}
    for task, samples in data.items():
        t0 = time.perf_counter()
        res = pipe.sweep([s.rgb for s in samples], PROMPTS[task], settings, task=task)
        for n, rs in zip(names, res):
            out[n][task] = [dice(r.mask, s.mask > 0) for r, s in zip(rs, samples)]
        # the rows that prompt SAM directly: one more embedding per image serves all of them
        special = [(r, o) for r, o in rows_wanted if o.get("_gt_box") or o.get("_second_pass")]
        for r, _ in special:
            out[r][task] = []
        for s, first in zip(samples, res[0]) if special else ():
            gt = s.mask > 0
            pipe.session.set_image(s.rgb)
            for r, o in special:
                if o.get("_gt_box"):
                    mask = pipe.session.predict(_gt_boxes(gt)).mask
                else:
                    mask = _second_pass(pipe.session, s.rgb, first.mask, task)
                out[r][task].append(dice(mask, gt))
        print(f"  [{name}] {task}: {len(samples)} images, {len(settings)} settings "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    pipe.close()
    return out


def report(scores: dict, tasks: list[str], n_boot: int, title: str, csv_rows: list[dict]) -> None:
    from medclipsam.metrics import paired_difference, summarize

    base = scores[DEFAULT]
    rows, paired = [], []
    for name, per in scores.items():
        row = {"setting": name}
        for t in tasks:
            s = summarize([{"dice": v} for v in per[t]], ["dice"], n_boot=n_boot)["dice"]
            row[t] = _fmt(s["mean"], s["ci_low"], s["ci_high"])
            csv_rows.append({"clip": title, "setting": name, "task": t, "mean": s["mean"],
                             "ci_low": s["ci_low"], "ci_high": s["ci_high"], "n": s["n"]})
        row["mean of tasks"] = f"{np.mean([np.mean(per[t]) for t in tasks]):.3f}"
        rows.append(row)
        if name == DEFAULT:
            continue
        prow = {"setting - default": name}
        for t in tasks:
            d = paired_difference(per[t], base[t], n_boot=n_boot)
            prow[t] = _fmt(d["mean"], d["ci_low"], d["ci_high"], signed=True)
        every = paired_difference(sum((per[t] for t in tasks), []), sum((base[t] for t in tasks), []),
                                  n_boot=n_boot)
        prow["all images"] = _fmt(every["mean"], every["ci_low"], every["ci_high"], signed=True)
        prow["wins/losses"] = f"{every['wins']}/{every['losses']}"
        paired.append(prow)
    print(f"\n{title}: Dice, mean [95 % bootstrap CI]")
    print_table(rows)
    print(f"\n{title}: paired difference to the default on the same images, mean [95 % CI]")
    print_table(paired)


def main(argv: list[str] | None = None) -> int:
    import torch

    from medclipsam.config import OFFLINE_DEFAULTS, TASK_PRESETS, default_k
    from medclipsam.data.phantom import TASKS, PhantomDataset

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=20, help="images per task (all with a finding)")
    p.add_argument("--split", default="val", choices=("val", "test"))
    p.add_argument("--tasks", nargs="+", default=list(TASKS))
    p.add_argument("--sections", default="saliency,coarse,boxes,prompts,controls",
                   help=f"comma-separated, of {', '.join(SECTIONS)}")
    p.add_argument("--clip-weights", nargs="*", default=[], metavar="NAME=FILE",
                   help="other toy CLIP weights, each run through the default pipeline and the "
                        "chosen sections")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--n-boot", type=int, default=2000)
    p.add_argument("--csv", default=None, help="also write every row's numbers to this CSV file")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    print(hardware_header())
    print(f"offline defaults: gScoreCAM k = {default_k('offline')}, {OFFLINE_DEFAULTS}; "
          f"task presets: {TASK_PRESETS}")
    t0 = time.perf_counter()
    data = {t: list(PhantomDataset(t, a.n, split=a.split, normal_fraction=0.0)) for t in a.tasks}
    print(f"{a.n} {a.split} phantom images per task: {', '.join(a.tasks)}")
    wanted = [r for s in a.sections.split(",") if s in SECTIONS for r in SECTIONS[s]]
    csv_rows: list[dict] = []
    scores = run_clip("shipped toy CLIP", None, data, wanted)
    report(scores, a.tasks, a.n_boot, f"shipped toy CLIP, {a.split} split", csv_rows)
    if a.clip_weights:
        per_clip = {"shipped toy CLIP": scores[DEFAULT]}
        for item in a.clip_weights:
            name, _, file = item.partition("=")
            per_clip[name] = run_clip(name, file, data, [])[DEFAULT]
        report({DEFAULT if n == "shipped toy CLIP" else f"CLIP: {n}": v for n, v in per_clip.items()},
               a.tasks, a.n_boot, f"CLIP weights (default pipeline), {a.split} split", csv_rows)
    if a.csv:
        with open(a.csv, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(csv_rows[0]))
            w.writeheader()
            w.writerows(csv_rows)
    print(f"\n({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
