"""``medclipsam demo``: the README's main job on the built-in phantom world.

Until the zero-shot pipeline lands (toy CLIP + gScoreCAM + toy SAM), the demo generates and previews
the phantom world: one figure per task with each image, its ground-truth outline and the point an
intensity rule would pick (the rule the phantom world's decoys are built to defeat), and a table.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np

from ._utils import atomic_path

__all__ = ["run_demo"]


def run_demo(out: Path | str = "medclipsam-demo", n: int = 4, size: int = 256, seed: int = 0) -> list[dict]:
    """Generate ``n`` held-out phantom images per task, write figures and ``summary.csv`` to ``out``.

    Returns the table rows (one per task) that are also printed.
    """
    from .data.phantom import (
        INTENSITY_RULE,
        PROMPTS,
        TASKS,
        PhantomDataset,
        intensity_rule_point,
        pointing_hit,
    )
    from .viz import overlay, sample_grid, save_figure

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    panels, titles = [], []
    for task in TASKS:
        t0 = time.perf_counter()
        ds = PhantomDataset(task, n, seed=seed, size=size, split="test")
        samples = [ds[i] for i in range(len(ds))]
        gen_s = (time.perf_counter() - t0) / max(len(samples), 1)
        hits, with_finding = 0, 0
        for s in samples:
            point = intensity_rule_point(s.image, INTENSITY_RULE[task])
            if s.mask.any():
                with_finding += 1
                hits += int(pointing_hit(point, s.mask))
            r, c = point
            box = (c - 4, r - 4, c + 4, r + 4)
            panels.append(overlay(s.image, outline=s.mask, boxes=[box]))
            titles.append(f"{task} / {s.label}: {s.captions[0]}")
        labels = sorted({s.label for s in samples})
        area = [float(s.mask.mean()) for s in samples if s.mask.any()]
        rows.append(
            {
                "task": task,
                "prompt": PROMPTS[task],
                "images": len(samples),
                "classes": " ".join(labels),
                "mean_finding_area_pct": round(100 * float(np.mean(area)), 2) if area else 0.0,
                "intensity_rule": INTENSITY_RULE[task],
                "intensity_rule_hit_rate": round(hits / with_finding, 2) if with_finding else float("nan"),
                "seconds_per_image": round(gen_s, 4),
            }
        )
    fig = sample_grid(
        panels, titles, ncols=n, suptitle="Phantom world: green = ground truth, yellow = intensity rule's pick"
    )
    fig_path = save_figure(fig, out / "phantom_preview.png")
    csv_path = out / "summary.csv"
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    _print_table(rows)
    print(f"\nwrote {fig_path} and {csv_path}")
    print(
        "(The full text-to-mask pipeline replaces this preview when the zero-shot issue lands.)"
    )
    return rows


def _print_table(rows: list[dict]) -> None:
    cols = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    print("  ".join(c.ljust(widths[c]) for c in cols))
    for r in rows:
        print("  ".join(str(r[c]).ljust(widths[c]) for c in cols))
