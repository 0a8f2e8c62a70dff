"""LiteMedSAM, the offline world's SAM: how it follows its box, what points do, and the pipeline.

    python benchmarks/litemedsam_boxes.py [--n 20] [--split test] [--threads 1] [--sections all]

Sections (``--sections boxes,prompts,pipeline,stages``):

* ``boxes``: ground-truth boxes on ``--n`` held-out phantom images per task (normals left out),
  Dice with a 95 % bootstrap interval, then box faithfulness: the lesion's own box, a box over its
  top third, and the box enlarged 2x around its centre. "inside" is the share of SAM's mask that
  lies inside the box it was given. Beside LiteMedSAM, the small SAM stand-in the test suite uses
  for SAM-independent logic (``tests/toy_sam.py``, trained on phantoms), when the repository's
  tests/ folder is present: it shows why that stand-in must not teach what SAM does.
* ``prompts``: prompts made from the ground truth: a box, one positive point at the mask's most
  interior pixel, three positive points, and box + one point.
* ``pipeline``: the zero-shot pipeline (toy CLIP -> gScoreCAM -> coarse mask -> SAM prompts ->
  LiteMedSAM) at the offline world's defaults, each SAM prompt mode and the paired difference of
  each mode to the default (the same images). Run it on ``--split val`` to choose, ``test`` to report.
* ``stages``: seconds per image by stage of the default pipeline, with the SAM encoder's share.

Phantom images are generated from their seeds, so every number is reproducible.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import hardware_header, print_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def component_boxes(mask: np.ndarray, min_fraction: float = 0.02) -> np.ndarray:
    """One xyxy box per connected component (components under ``min_fraction`` of the mask
    dropped: the specks of spiculated lesions)."""
    lab, n = ndi.label(mask)
    out = []
    total = max(int(mask.sum()), 1)
    for i, sl in enumerate(ndi.find_objects(lab), start=1):
        if sl is None or (lab[sl] == i).sum() < min_fraction * total:
            continue
        ys, xs = sl
        out.append([xs.start, ys.start, xs.stop - 1, ys.stop - 1])
    return np.asarray(out, dtype=float)


def _top_third(b: np.ndarray) -> np.ndarray:
    b = b.copy()
    b[:, 3] = b[:, 1] + (b[:, 3] - b[:, 1]) / 3.0
    return b


def _enlarged(b: np.ndarray, shape: tuple[int, int], factor: float = 2.0) -> np.ndarray:
    c = (b[:, :2] + b[:, 2:]) / 2
    half = (b[:, 2:] - b[:, :2]) / 2 * factor
    out = np.concatenate([c - half, c + half], axis=1)
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, shape[1] - 1)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, shape[0] - 1)
    return out


def _inside(mask: np.ndarray, boxes: np.ndarray) -> float:
    if not mask.any():
        return float("nan")
    keep = np.zeros_like(mask)
    for x0, y0, x1, y1 in boxes:
        keep[int(np.floor(y0)): int(np.ceil(y1)) + 1, int(np.floor(x0)): int(np.ceil(x1)) + 1] = True
    return float((mask & keep).sum() / mask.sum())


def _interior_points(mask: np.ndarray, n: int) -> np.ndarray:
    """The n most interior pixels of the mask's largest component, spread apart, as (x, y)."""
    lab, k = ndi.label(mask)
    if k == 0:
        return np.zeros((0, 2))
    sizes = ndi.sum(mask, lab, range(1, k + 1))
    comp = lab == (1 + int(np.argmax(sizes)))
    dist = ndi.distance_transform_edt(comp)
    pts = []
    for _ in range(n):
        y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
        pts.append([x, y])
        yy, xx = np.ogrid[: dist.shape[0], : dist.shape[1]]
        dist = np.where((yy - y) ** 2 + (xx - x) ** 2 < (0.25 * np.sqrt(comp.sum())) ** 2, 0, dist)
    return np.asarray(pts, dtype=float)


def _fmt(stats: dict) -> str:
    return f"{stats['mean']:.3f} [{stats['ci_low']:.2f}, {stats['ci_high']:.2f}]"


def _stand_in() -> object | None:
    tests = ROOT / "tests"
    if not (tests / "toy_sam.py").is_file():
        return None
    sys.path.insert(0, str(tests))
    from toy_sam import load_toy_sam

    return load_toy_sam()


def section_boxes(data: dict, n_boot: int) -> None:
    from medclipsam.metrics import dice, summarize
    from medclipsam.models import load_sam
    from medclipsam.sam_session import SamSession

    sams = {"LiteMedSAM": load_sam("litemedsam", device="cpu")}
    stand_in = _stand_in()
    if stand_in is not None:
        sams["test stand-in (toy SAM)"] = stand_in
    gt_rows, faith_rows = [], []
    for name, predictor in sams.items():
        per = {"own box": [], "top third": [], "enlarged 2x": []}
        inside = {k: [] for k in per}
        own_by_task: dict[str, list[float]] = {}
        with SamSession(predictor) as session:
            for task, samples in data.items():
                for s in samples:
                    g = s.mask > 0
                    b = component_boxes(g)
                    session.set_image(s.rgb)
                    for label, boxes in (("own box", b), ("top third", _top_third(b)),
                                         ("enlarged 2x", _enlarged(b, g.shape))):
                        m = session.predict(boxes).mask
                        d = dice(m, g)
                        per[label].append(d)
                        inside[label].append(_inside(m, boxes))
                        if label == "own box":
                            own_by_task.setdefault(task, []).append(d)
        gt_rows.append({"SAM": name, **{t: _fmt(summarize([{"dice": v} for v in vals], ["dice"],
                                                          n_boot=n_boot)["dice"])
                                        for t, vals in own_by_task.items()}})
        for label in per:
            faith_rows.append({"SAM": name, "box given": label,
                               "Dice vs lesion": f"{np.mean(per[label]):.2f}",
                               "mask inside box": f"{np.nanmean(inside[label]):.2f}"})
    print("\nGround-truth boxes, Dice mean [95 % bootstrap CI]")
    print_table(gt_rows)
    print("\nBox faithfulness (all tasks together; X-ray: one box per lung)")
    print_table(faith_rows)


def section_prompts(data: dict) -> None:
    from medclipsam.metrics import dice
    from medclipsam.models import load_sam
    from medclipsam.sam_session import SamSession

    rows = []
    with SamSession(load_sam("litemedsam", device="cpu")) as session:
        res: dict[str, dict[str, list[float]]] = {}
        for task, samples in data.items():
            for s in samples:
                g = s.mask > 0
                b = component_boxes(g)
                session.set_image(s.rgb)
                p1, p3 = _interior_points(g, 1), _interior_points(g, 3)
                one = np.ones(len(p1), int)
                trials = {
                    "box": dict(boxes=b),
                    "1 point": dict(points=p1, point_labels=one, multimask=True),
                    "3 points": dict(points=p3, point_labels=np.ones(len(p3), int), multimask=True),
                    "box + 1 point": dict(boxes=b[:1], points=p1, point_labels=one),
                }
                for label, kw in trials.items():
                    res.setdefault(label, {}).setdefault(task, []).append(
                        dice(session.predict(**kw).mask, g))
        for label, by_task in res.items():
            rows.append({"prompt (from the ground truth)": label,
                         **{t: f"{np.mean(v):.3f}" for t, v in by_task.items()}})
    print("\nLiteMedSAM by prompt kind, mean Dice (X-ray: the box row has one box per lung, the "
          "point rows one lung's points)")
    print_table(rows)


def section_pipeline(data: dict, n_boot: int, split: str) -> None:
    from medclipsam.data.phantom import PROMPTS
    from medclipsam.metrics import dice, paired_difference, summarize
    from medclipsam.pipeline import MedCLIPSAM

    pipe = MedCLIPSAM.offline()
    default = pipe.config.sam_prompt_mode
    modes = [default, *[m for m in ("box", "box+points", "points") if m != default]]
    rows, paired_rows = [], []
    for task, samples in data.items():
        res = pipe.sweep([s.rgb for s in samples], PROMPTS[task],
                         [{"sam_prompt_mode": m} for m in modes], task=task)
        scores = {m: [dice(r.mask, s.mask > 0) for r, s in zip(rs, samples)] for m, rs in zip(modes, res)}
        rows.append({"task": task, **{f"{m}{' (default)' if m == default else ''}":
                                      _fmt(summarize([{"dice": v} for v in scores[m]], ["dice"],
                                                     n_boot=n_boot)["dice"]) for m in modes}})
        for m in modes[1:]:
            d = paired_difference(scores[m], scores[default], n_boot=n_boot)
            paired_rows.append({"task": task, "mode - default": f"{m} - {default}",
                                "paired mean [95 % CI]": f"{d['mean']:+.3f} [{d['ci_low']:+.3f}, "
                                                         f"{d['ci_high']:+.3f}]",
                                "wins/losses": f"{d['wins']}/{d['losses']}"})
    print(f"\nZero-shot pipeline with LiteMedSAM, {split} split, Dice mean [95 % bootstrap CI] by "
          "SAM prompt mode")
    print_table(rows)
    print("\nPaired differences to the default (same images)")
    print_table(paired_rows)
    pipe.close()


def section_stages(data: dict) -> None:
    from medclipsam.data.phantom import PROMPTS
    from medclipsam.pipeline import MedCLIPSAM

    pipe = MedCLIPSAM.offline()
    rows = []
    for task, samples in data.items():
        res = pipe.predict([s.rgb for s in samples], PROMPTS[task], task=task)
        t = {k: float(np.mean([r.timings[k] for r in res])) for k in res[0].timings}
        rows.append({"task": task, **{k: f"{v:.3f}" for k, v in t.items()},
                     "SAM share": f"{(t['sam_embed'] + t['sam_decode']) / t['total']:.0%}"})
    print("\nSeconds per image by stage (offline defaults)")
    print_table(rows)
    pipe.close()


def main(argv: list[str] | None = None) -> int:
    import torch

    from medclipsam.data.phantom import TASKS, PhantomDataset

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=20, help="images per task (normals left out)")
    p.add_argument("--split", default="test", choices=("val", "test"))
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--tasks", nargs="+", default=list(TASKS))
    p.add_argument("--sections", default="boxes,prompts,pipeline,stages")
    p.add_argument("--n-boot", type=int, default=2000)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    print(hardware_header())
    t0 = time.perf_counter()
    data = {t: list(PhantomDataset(t, a.n, split=a.split, normal_fraction=0.0)) for t in a.tasks}
    print(f"{a.n} {a.split} phantom images per task: {', '.join(a.tasks)}")
    sections = set(a.sections.split(","))
    if "boxes" in sections:
        section_boxes(data, a.n_boot)
    if "prompts" in sections:
        section_prompts(data)
    if "pipeline" in sections:
        section_pipeline(data, a.n_boot, a.split)
    if "stages" in sections:
        section_stages(data)
    print(f"\n({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
