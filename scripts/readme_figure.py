"""Draw the README's picture of the phantom world, ``docs/figures/phantom_world.jpg``.

Four held-out phantom images per task (test split, seed 0, 256 px), the ground truth's outline,
and the point that a naive intensity rule picks (``phantom.INTENSITY_RULE``: the darkest region
for breast ultrasound and chest X-ray, the brightest for brain MRI; lesson 01's baseline), in the
colours of every other figure (``medclipsam.viz.COLOURS``). Run from the repository root:

    python scripts/readme_figure.py [--out docs/figures/phantom_world.jpg]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from medclipsam.data import phantom  # noqa: E402
from medclipsam.viz import overlay, sample_grid  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RULE = phantom.INTENSITY_RULE


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "figures" / "phantom_world.jpg")
    args = ap.parse_args(argv)
    panels, titles = [], []
    for task, rule in RULE.items():
        ds = phantom.PhantomDataset(task, 8, seed=0, size=256, split="test")
        for i in range(4):
            s = ds[i]
            r, c = phantom.intensity_rule_point(s.image, rule)
            panels.append(overlay(s.image, outline=s.mask, points=[(c, r)]))
            titles.append(f"{task} ({s.label}): {phantom.pointing_verdict((r, c), s.mask)}")
    fig = sample_grid(
        panels, titles, ncols=4, cell_size=2.6,
        suptitle="The phantom world, and the point a naive intensity rule picks",
        legend=[(f"the rule's pick ({', '.join(f'{r} for {t}' for t, r in RULE.items())})",
                 "positive point"), "ground truth (outline)"],
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=90, bbox_inches="tight", pil_kwargs={"quality": 88})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
