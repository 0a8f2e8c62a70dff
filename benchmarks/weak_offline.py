"""Stage 4 in the offline world: does the UNet trained on zero-shot pseudo-labels beat them?

    python benchmarks/weak_offline.py [--n 200] [--epochs 100] [--size 96] [--tasks breast brain xray]
                                      [--drop-uncertain 0.2] [--out runs/weak_offline] [--threads 1]
                                      [--ship breast]

Per task: a phantom data set of ``--n`` images (70 % train, 10 % val, 20 % test; 15 % without a
finding) is written, and :func:`medclipsam.reproduce.reproduce` runs the offline world's zero-shot
pipeline on it (pseudo-labels for train and val, masks for test), trains the Residual UNet on the
pseudo-labels (early stopping on the validation pseudo-labels: no ground truth), again without the
``--drop-uncertain`` share of least certain pseudo-labels, and on the real labels (the upper bound).
Printed: each setting's test Dice with its 95 % bootstrap interval, the paired difference of each
network to the zero-shot masks on the same test images (per task and over all tasks' images), the
share of test images each network leaves empty, and the pseudo-labels' own Dice against the real
labels (empty pseudo-labels counted). Every step resumes from ``--out``. ``--ship TASK`` writes that
task's weakly supervised network into the package (``medclipsam/weights/weak_unet_<task>.pt``, what
:func:`medclipsam.segmenter.load_segmenter` reads as ``"weak-<task>"`` and lesson 05 loads).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import hardware_header, print_table  # noqa: E402


def _fmt(d: dict, signed: bool = False) -> str:
    s = "+.3f" if signed else ".3f"
    return f"{d['mean']:{s}} [{d['ci_low']:{s}}, {d['ci_high']:{s}}]"


def per_image(out: Path, data: Path, table: list[dict]) -> dict[str, dict]:
    """{setting: {"dice": [...], "empty": [...]}} on the test split, and the pseudo-labels'."""
    from medclipsam.data.datasets import list_image_files, load_split
    from medclipsam.data.io import read_image, read_mask
    from medclipsam.metrics import dice
    from medclipsam.segmenter import load_segmenter, predict_masks

    splits = load_split(data / "splits.json")
    by_stem = {k: v[0] for k, v in list_image_files(data / "images")[0].items()}
    test = splits["test"]
    gt = [read_mask(data / "masks" / f"{s}.png") for s in test]
    images = [read_image(by_stem[s], mode="grey") for s in test]
    preds = {"zero-shot": [read_mask(out / "zeroshot_test" / "masks" / f"{s}.png") for s in test]}
    folders = {"weakly supervised": "weak", "fully supervised": "full"}
    for row in table:
        name = row["setting"]
        folder = folders.get(name, "weak_filtered" if name.startswith("weak,") else None)
        if folder:
            model, cfg = load_segmenter(out / folder / "model.pt")
            preds[name] = predict_masks(model, images, cfg)
    res = {k: {"dice": [dice(p, g) for p, g in zip(v, gt)], "empty": [not p.any() for p in v],
               "finding": [bool(g.any()) for g in gt]} for k, v in preds.items()}
    train = splits["train"]
    res["_pseudo"] = {"dice": [dice(read_mask(out / "pseudo" / "masks" / f"{s}.png"),
                                    read_mask(data / "masks" / f"{s}.png")) for s in train],
                      "empty": [not read_mask(out / "pseudo" / "masks" / f"{s}.png").any() for s in train]}
    return res


def main(argv: list[str] | None = None) -> int:
    import torch

    from medclipsam.config import WeakConfig
    from medclipsam.data.phantom import TASKS, write_phantom_folder
    from medclipsam.metrics import paired_difference, summarize
    from medclipsam.pipeline import MedCLIPSAM
    from medclipsam.reproduce import reproduce

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=200, help="phantom images per task (all splits)")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--tasks", nargs="+", default=list(TASKS))
    p.add_argument("--drop-uncertain", type=float, default=0.2)
    p.add_argument("--out", default="runs/weak_offline")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--n-boot", type=int, default=2000)
    p.add_argument("--ship", nargs="*", default=[], metavar="TASK",
                   help="write these tasks' weakly supervised networks into medclipsam/weights/")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    print(hardware_header())
    t0 = time.perf_counter()
    pipe = MedCLIPSAM.offline()
    print(pipe)
    config = WeakConfig(epochs=a.epochs, size=a.size, device="cpu")
    rows, paired, pools = [], [], {}
    for task in a.tasks:
        root = Path(a.out)
        data = write_phantom_folder(root / "data" / task, task, a.n, seed=0, size=256)
        t = time.perf_counter()
        table = reproduce(data, root / task, task=task, pipe=pipe, config=config,
                          drop_uncertain=a.drop_uncertain, n_boot=a.n_boot, progress=False)
        print(f"  {task}: reproduce done ({time.perf_counter() - t:.0f} s)", flush=True)
        res = per_image(root / task, data, table)
        pl = res.pop("_pseudo")
        print(f"  {task}: train pseudo-labels vs real labels: Dice {np.mean(pl['dice']):.3f}, "
              f"{sum(pl['empty'])} of {len(pl['empty'])} empty")
        for name, r in res.items():
            s = summarize([{"dice": v} for v in r["dice"]], ["dice"], n_boot=a.n_boot)["dice"]
            rows.append({"task": task, "setting": name, "test Dice": _fmt(s),
                         "empty masks": f"{sum(r['empty'])}/{len(r['empty'])}",
                         "images without a finding": f"{len(r['finding']) - sum(r['finding'])}"})
            pools.setdefault(name, []).extend(r["dice"])
            if name != "zero-shot":
                d = paired_difference(r["dice"], res["zero-shot"]["dice"], n_boot=a.n_boot)
                paired.append({"task": task, "setting - zero-shot": name, "paired [95 % CI]": _fmt(d, True),
                               "wins/losses": f"{d['wins']}/{d['losses']}"})
    for name, vals in pools.items():
        if name != "zero-shot":
            d = paired_difference(vals, pools["zero-shot"], n_boot=a.n_boot)
            paired.append({"task": "all", "setting - zero-shot": name, "paired [95 % CI]": _fmt(d, True),
                           "wins/losses": f"{d['wins']}/{d['losses']}"})
    print(f"\nTest split, {a.n} phantom images per task ({config.epochs} epochs at {config.size} px)")
    print_table(rows)
    print("\nPaired difference to the zero-shot masks on the same test images")
    print_table(paired)
    for task in a.ship:
        ship(Path(a.out) / task / "weak" / "model.pt", task)
    print(f"\n({time.perf_counter() - t0:.0f} s)")
    return 0


def ship(model_file: Path, task: str) -> Path:
    """Copy a trained ``model.pt`` into the package's weights as ``weak_unet_<task>.pt`` (its
    config's ``out_dir`` made relative, so the file names no folder of the machine that trained it)."""
    import torch

    from medclipsam._utils import atomic_path
    from medclipsam.segmenter import SHIPPED_SEGMENTERS, WEIGHTS_DIR

    obj = torch.load(model_file, map_location="cpu", weights_only=True)
    obj["config"] = dict(obj["config"], out_dir=f"runs/weak_offline/{task}/weak")
    out = WEIGHTS_DIR / SHIPPED_SEGMENTERS[task]
    with atomic_path(out) as tmp:
        torch.save(obj, tmp)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB; epoch {obj['epoch']}, validation Dice "
          f"against the validation pseudo-labels {obj['val_dice']:.3f})")
    return out


if __name__ == "__main__":
    raise SystemExit(main())
