"""The whole method on one prepared data set: zero-shot, weakly supervised, fully supervised.

A prepared data set is a folder with ``images/``, ``masks/`` and ``splits.json`` (train / val /
test stems): what ``medclipsam phantom`` and the ``medclipsam prepare`` converters write.
:func:`reproduce` then

1. runs the zero-shot pipeline on the train and val images: the **pseudo-labels**
   (``pseudo/masks/*.png`` with ``pseudo/results.csv``: SAM score and flags per image, and
   ``pseudo/run.json``: prompt and settings), and on the test images (``zeroshot_test/``);
2. trains a Residual UNet on the train pseudo-labels with early stopping on the val
   pseudo-labels: **weak supervision** (ground truth never enters this run);
3. optionally scores each train pseudo-label's uncertainty with an ensemble of the weak run's
   epoch checkpoints, drops the least certain share and retrains (MedCLIP-SAMv2's idea, light);
4. trains the same network on the real train/val labels: the **fully supervised** upper bound;
5. scores the zero-shot masks and every network on the test split against the real labels:
   Dice, IoU, HD95, NSD (2 px), mean and 95 % bootstrap interval, beside the paper's numbers.

Every step resumes: finished pseudo-labels are skipped, training continues from its last
checkpoint and a finished run is read back.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ._utils import atomic_path, atomic_write_text
from .config import WeakConfig
from .data.datasets import list_image_files, load_split
from .data.io import read_image, read_mask
from .data.phantom import PROMPTS
from .metrics import evaluate_masks, summarize
from .pipeline import MedCLIPSAM
from .segmenter import ensemble_uncertainty, load_segmenter, predict_masks, select_confident
from .weak import train_segmenter

__all__ = ["PAPER_V2", "pseudo_label", "reproduce"]

#: MedCLIP-SAMv2's results (DSC / NSD %, third-party transcription), per task.
PAPER_V2: dict[str, dict[str, tuple[float, float]]] = {
    "breast": {"zero-shot": (77.76, 81.11), "weakly supervised": (78.87, 84.58)},
    "brain": {"zero-shot": (76.52, 82.23), "weakly supervised": (80.03, 88.25)},
    "xray": {"zero-shot": (75.79, 80.88), "weakly supervised": (80.77, 84.53)},
}


def pseudo_label(
    pipe: Any, images_dir: str | Path, out_dir: str | Path, prompt: str, *,
    task: str | None = None, stems: list[str] | None = None, progress: bool = True,
    strict: bool = False,
) -> list[dict]:
    """Zero-shot masks of ``images_dir`` (optionally only ``stems``) as pseudo-labels in
    ``out_dir/masks``, with the manifest ``out_dir/results.csv`` (prompt, SAM score, flags per
    image) and ``out_dir/run.json`` (settings). Resumable: finished images are skipped. An
    unreadable image is a failed row (``status``) and the run goes on, unless ``strict``."""
    return pipe.run_folder(images_dir, prompt, out_dir, task=task, stems=stems, progress=progress,
                           strict=strict)


def _read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _score(pred: list[np.ndarray], gt: list[np.ndarray], ids: list[str], n_boot: int) -> dict:
    rows = evaluate_masks(pred, gt, ids=ids)
    return {**summarize(rows, n_boot=n_boot, seed=0), "dice_per_image": [float(r["dice"]) for r in rows]}


def reproduce(
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    task: str,
    prompt: str | None = None,
    pipe: Any = None,
    config: Any = None,
    drop_uncertain: float = 0.0,
    n_boot: int = 1000,
    progress: bool = True,
) -> list[dict]:
    """Run the method on ``data_dir`` (see the module doc) and write ``out_dir/table.csv`` and
    ``out_dir/table.md``. ``pipe`` defaults to :meth:`MedCLIPSAM.offline`, ``config`` (a
    :class:`~medclipsam.config.WeakConfig`) to its defaults; ``drop_uncertain`` > 0 adds the
    uncertainty-filtered weak run. Returns the table rows (one per setting; ``dice_per_image``:
    each test image's Dice, the same images in the same order for every setting, for paired
    comparisons such as :func:`medclipsam.teaching.compare`)."""
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    images_dir, masks_dir = data_dir / "images", data_dir / "masks"
    splits = load_split(data_dir / "splits.json")
    for name in ("train", "val", "test"):
        if not splits.get(name):
            raise ValueError(f"{data_dir / 'splits.json'}: the {name!r} split is missing or empty")
    prompt = prompt or PROMPTS[task]
    if pipe is None:
        pipe = MedCLIPSAM.offline()
    base = config or WeakConfig()
    out_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    # 1. zero-shot: pseudo-labels for train + val, masks for test
    t0 = time.perf_counter()
    # strict: every later step needs every pseudo-label and test mask
    pseudo_label(pipe, images_dir, out_dir / "pseudo", prompt, task=task,
                 stems=splits["train"] + splits["val"], progress=progress, strict=True)
    pseudo_label(pipe, images_dir, out_dir / "zeroshot_test", prompt, task=task,
                 stems=splits["test"], progress=progress, strict=True)
    timings["zero-shot (all splits)"] = time.perf_counter() - t0

    by_stem = {k: v[0] for k, v in list_image_files(images_dir)[0].items()}
    trainval = {"train": splits["train"], "val": splits["val"]}

    def fit(name: str, labels: Path, stems: dict[str, list[str]]) -> Path:
        cfg = replace(base, out_dir=str(out_dir / name), progress=progress)
        t = time.perf_counter()
        result = train_segmenter(images_dir, labels, images_dir, labels, cfg, stems=stems, resume=True)
        timings[name] = time.perf_counter() - t
        return Path(result["model_path"])

    # 2. weak supervision: pseudo-labels only
    weak_model = fit("weak", out_dir / "pseudo" / "masks", trainval)
    models = {"weakly supervised": weak_model}

    # 3. uncertainty filtering (optional)
    if drop_uncertain > 0:
        ckpts = sorted((out_dir / "weak" / "checkpoints").glob("*.pt"))
        train_images = [read_image(by_stem[s], mode="grey") for s in splits["train"]]
        _, scores = ensemble_uncertainty(ckpts, train_images, replace(base, out_dir=str(out_dir / "weak")))
        keep = select_confident(scores, splits["train"], drop_uncertain)
        with atomic_path(out_dir / "uncertainty.csv") as tmp, open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["id", "uncertainty", "kept"])
            for s, u in zip(splits["train"], scores):
                w.writerow([s, f"{float(u):.6f}", int(s in keep)])
        models[f"weak, {drop_uncertain:.0%} most uncertain dropped"] = fit(
            "weak_filtered", out_dir / "pseudo" / "masks", {"train": keep, "val": splits["val"]}
        )

    # 4. fully supervised upper bound: the real labels
    models["fully supervised"] = fit("full", masks_dir, trainval)

    # 5. score everything on the test split against the real labels
    test = splits["test"]
    gt = [read_mask(p) for p in (_mask_path(masks_dir, s) for s in test)]
    test_images = [read_image(by_stem[s], mode="grey") for s in test]
    zs = [read_mask(out_dir / "zeroshot_test" / "masks" / f"{s}.png") for s in test]
    results = {"zero-shot": _score(zs, gt, test, n_boot)}
    for name, path in models.items():
        model, cfg = load_segmenter(path)
        results[name] = _score(predict_masks(model, test_images, cfg), gt, test, n_boot)
    table = []
    for name, st in results.items():
        row = {"task": task, "setting": name, "test_images": len(test)}
        for m in ("dice", "iou", "hd95", "nsd"):
            row[m] = round(st[m]["mean"], 4)
            row[f"{m}_ci"] = f"{st[m]['ci_low']:.3f}-{st[m]['ci_high']:.3f}"
        paper = PAPER_V2.get(task, {}).get(name)
        row["paper_v2_dsc_nsd"] = f"{paper[0]:.2f} / {paper[1]:.2f}" if paper else ""
        row["dice_per_image"] = st["dice_per_image"]  # the test images in the order of the split
        table.append(row)
    with atomic_path(out_dir / "table.csv") as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=[k for k in table[0] if k != "dice_per_image"],
                           extrasaction="ignore")
        w.writeheader()
        w.writerows(table)
    atomic_write_text(out_dir / "table.md", _markdown(table, timings))
    atomic_write_text(out_dir / "timings.json", json.dumps(timings, indent=1) + "\n")
    return table


def _mask_path(masks_dir: Path, stem: str) -> Path:
    for name in (f"{stem}.png", f"{stem}_mask.png"):
        if (masks_dir / name).is_file():
            return masks_dir / name
    hits = sorted(masks_dir.glob(f"{stem}.*")) + sorted(masks_dir.glob(f"{stem}_mask.*"))
    if not hits:
        raise FileNotFoundError(f"{masks_dir}: no ground-truth mask for {stem!r}")
    return hits[0]


def _markdown(table: list[dict], timings: dict[str, float]) -> str:
    lines = [
        f"# {table[0]['task']}: zero-shot vs weakly vs fully supervised ({table[0]['test_images']} test images)",
        "",
        "| setting | Dice | IoU | HD95 (px) | NSD (2 px) | paper v2 DSC / NSD (%) |",
        "|---|---|---|---|---|---|",
    ]
    for r in table:
        lines.append(
            f"| {r['setting']} | {r['dice']:.3f} [{r['dice_ci']}] | {r['iou']:.3f} | {r['hd95']:.1f} | "
            f"{r['nsd']:.3f} [{r['nsd_ci']}] | {r['paper_v2_dsc_nsd']} |"
        )
    lines += ["", "Seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()), ""]
    return "\n".join(lines)
