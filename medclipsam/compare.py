"""Segmenters side by side on one data set: MedCLIP-SAM with SAM / MedSAM / SAM 2 as its box
segmenter, and SAM 3 from the text alone, scored on the same images with the same metrics.

::

    from medclipsam.compare import compare_backends
    rows = compare_backends("data/busi", "breast tumor",
                            ["vit_b", "medsam", "sam2-hiera-tiny", "sam3-text"],
                            clip="biomedclip", split="test", out_dir="compare-busi")

or ``medclipsam compare --data data/busi --prompt "breast tumor" --backends
vit_b,medsam,sam2-hiera-tiny,sam3-text --out compare-busi``.

For the MedCLIP-SAM rows the CLIP saliency map of each image is computed **once** and reused by
every SAM backend, so their rows differ only in the segmenter (same boxes and points). Each
row's ``s_per_image`` is what one image costs with that method (for MedCLIP-SAM: the shared
saliency plus that SAM's embedding and decoding); ``s_segmenter`` is the segmenter's part alone.
Backends are loaded one at a time and released before the next (large models on small machines).

Writes to ``out_dir``: ``<backend>/masks/<stem>.png`` (so ``medclipsam evaluate --pred
OUT/<backend>/masks --gt DATA/masks`` scores them again), ``per_image.csv`` (one row per image
and backend), ``comparison.csv`` and ``comparison.md`` (one row per backend).
"""

from __future__ import annotations

import csv
import gc
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._utils import atomic_path, atomic_write_text
from .config import OFFLINE_DEFAULTS, PipelineConfig
from .data.datasets import FolderDataset
from .data.io import read_mask, write_mask
from .metrics import dice, evaluate_masks, summarize
from .models import load_clip, load_sam
from .pipeline import MedCLIPSAM
from .text_baselines import Sam3TextBaseline
from .viz import overlay
from .vocab import TEXT_BACKENDS

__all__ = [
    "BACKEND_ALIASES", "backend_folder", "compare_backends", "comparison_figure", "example_panels",
    "format_table", "is_text_backend", "resolve_backend",
]

#: Short names accepted for backends (anything else goes to ``load_sam`` as it is).
BACKEND_ALIASES: dict[str, str] = {"sam": "vit_b", "sam2": "sam2-hiera-tiny"}


def _describe(name: str, obj: Any) -> str:
    if _is_text_segmenter(obj):
        return "SAM 3, text only"
    return f"MedCLIP-SAM + {name}"


def is_text_backend(spec: Any) -> bool:
    """True for a SAM 3 text-only backend name (``"sam3-text"``, ``"sam3-text:PATH"``)."""
    return isinstance(spec, str) and spec.partition(":")[0].lower() in TEXT_BACKENDS \
        and not Path(spec).exists()


def _is_text_segmenter(obj: Any) -> bool:
    return isinstance(obj, Sam3TextBaseline)


def resolve_backend(spec: Any, *, device: Any = "auto") -> Any:
    """A backend from its spec: a name (``"sam3-text"`` or ``"sam3-text:PATH"`` for SAM 3 from a
    local folder; ``"sam"`` = ``"vit_b"``; any other ``load_sam`` name or path), a SAM predictor,
    a :class:`~medclipsam.models.sam3.Sam3TextModel`, a
    :class:`~medclipsam.text_baselines.Sam3TextBaseline`, or a no-argument callable returning one
    of these (loaded when its turn comes). Returns a predictor or a ``Sam3TextBaseline``."""
    if isinstance(spec, str):
        if is_text_backend(spec):
            path = spec.partition(":")[2]
            return Sam3TextBaseline.from_pretrained(path or "facebook/sam3", device=device)
        return load_sam(BACKEND_ALIASES.get(spec.lower(), spec), device=device)
    if callable(spec) and not hasattr(spec, "set_image") and not hasattr(spec, "predict"):
        return resolve_backend(spec(), device=device)
    if hasattr(spec, "segment") and hasattr(spec, "set_image"):  # a Sam3TextModel
        return Sam3TextBaseline(spec)
    return spec


def compare_backends(
    data: str | Path,
    prompt: str,
    backends: Sequence[Any] | Mapping[str, Any],
    *,
    clip: Any = "biomedclip",
    out_dir: str | Path | None = None,
    split: str | None = None,
    limit: int | None = None,
    task: str | None = None,
    device: Any = "auto",
    config: Any = None,
    nsd_tolerance: float = 2.0,
    n_boot: int = 1000,
    progress: bool = True,
    on_row: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Score each backend on the images of ``data`` (a folder with ``images/`` and ``masks/``;
    ``split`` picks a ``splits.json`` split, ``limit`` the first N stems). ``backends``: a list
    of specs (see :func:`resolve_backend`; a spec's name is its own text) or a mapping of
    names to specs. ``clip``: a :class:`~medclipsam.models.clip.ClipBundle` or a ``load_clip``
    name (loaded only when a SAM backend needs it); ``config``: the MedCLIP-SAM
    :class:`~medclipsam.pipeline.PipelineConfig` (default: its defaults, with ``task``'s preset).
    Returns one row per backend (see :func:`format_table`); ``on_row`` is called with each row as
    soon as it is done."""
    if not prompt or not str(prompt).strip():
        raise ValueError("compare_backends needs a text prompt")
    named = dict(backends) if isinstance(backends, Mapping) else {str(b): b for b in backends}
    if not named:
        raise ValueError("no backends to compare")
    ds = FolderDataset(data, split=split)
    if not ds.has_masks:
        raise FileNotFoundError(f"{data}: no masks/ folder; the comparison needs ground truth")
    samples = [ds[i] for i in range(len(ds) if limit is None else min(limit, len(ds)))]
    if not samples:
        raise ValueError(f"{data}: no images{f' in split {split!r}' if split else ''}")
    images = [s["image"] for s in samples]
    gts = [s["mask"] for s in samples]
    stems = [s["stem"] for s in samples]
    out = Path(out_dir) if out_dir is not None else None

    toy = clip == "toy"
    maps: list[np.ndarray] | None = None
    t_saliency: list[float] = []
    rows: list[dict] = []
    per_image: list[dict] = []
    for name, spec in named.items():
        backend = resolve_backend(spec, device=device)
        text_only = _is_text_segmenter(backend)
        if text_only:
            results = backend.predict(images, prompt, task=task, ids=stems, progress=progress)
            seconds = [r.timings["total"] for r in results]
            own = seconds
        else:
            if isinstance(clip, str):  # loaded once, when the first MedCLIP-SAM row needs it
                clip = load_clip(clip, device=device)
            if config is None:  # the offline world's defaults for the toy CLIP (see MedCLIPSAM.offline)
                config = PipelineConfig(**(OFFLINE_DEFAULTS if toy else {}))
            pipe = MedCLIPSAM(clip, backend, config, world="offline" if toy else "custom")
            try:
                if maps is None:
                    results = pipe.predict(images, prompt, task=task, ids=stems, progress=progress)
                    maps = [r.saliency for r in results]
                    t_saliency = [r.timings["saliency"] for r in results]
                else:
                    results = pipe.predict(images, prompt, task=task, ids=stems, maps=maps,
                                           progress=progress)
            finally:
                pipe.close()
            own = [r.timings["total"] - r.timings["saliency"] for r in results]
            seconds = [o + s for o, s in zip(own, t_saliency)]
        metric_rows = evaluate_masks([r.mask for r in results], gts, ids=stems,
                                     nsd_tolerance=nsd_tolerance)
        for mr, r, sec in zip(metric_rows, results, seconds):
            per_image.append({"backend": name, **mr, "score": round(float(r.sam_score), 4),
                              "flags": " ".join(r.flags), "seconds": round(sec, 4)})
        summ = summarize(metric_rows, n_boot=n_boot, seed=0)
        row = {"backend": name, "method": _describe(name, backend), "images": len(results)}
        for m in ("dice", "iou", "nsd", "hd95"):
            row[m] = float(summ[m]["mean"])
            row[f"{m}_ci"] = (float(summ[m]["ci_low"]), float(summ[m]["ci_high"]))
        row["s_per_image"] = float(np.mean(seconds))
        row["s_segmenter"] = float(np.mean(own))
        row["flagged"] = sum(bool(r.flags) for r in results)
        row["dice_per_image"] = [float(mr["dice"]) for mr in metric_rows]  # the same images for every backend
        rows.append(row)
        if out is not None:
            _write_masks(out / backend_folder(name) / "masks", stems, [r.mask for r in results])
            _write_outputs(out, rows, per_image, prompt)
        if on_row is not None:
            on_row(row)
        del backend, results
        gc.collect()
    return rows


def backend_folder(name: str) -> str:
    """The folder under ``out_dir`` holding a backend's masks (its name, made file-safe)."""
    return re.sub(r"[^\w.+-]+", "_", name).strip("_") or "backend"


def _write_masks(folder: Path, stems: list[str], masks: list[np.ndarray]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for stem, m in zip(stems, masks):
        write_mask(folder / f"{stem}.png", m)


def _csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _write_outputs(out_dir: Path, rows: list[dict], per_image: list[dict], prompt: str) -> None:
    flat = []
    for r in rows:
        d = {k: v for k, v in r.items() if not k.endswith(("_ci", "_per_image"))}
        for m in ("dice", "iou", "nsd", "hd95"):
            d[m] = round(r[m], 4)
            d[f"{m}_ci_low"], d[f"{m}_ci_high"] = (round(x, 4) for x in r[f"{m}_ci"])
        d["s_per_image"], d["s_segmenter"] = round(r["s_per_image"], 3), round(r["s_segmenter"], 3)
        flat.append(d)
    _csv(out_dir / "comparison.csv", flat)
    _csv(out_dir / "per_image.csv", per_image)
    atomic_write_text(out_dir / "comparison.md", f"Prompt: {prompt!r}\n\n" + format_table(rows) + "\n")


def format_table(rows: Sequence[dict]) -> str:
    """The comparison as a Markdown table: Dice and NSD with 95 % bootstrap intervals, IoU,
    seconds per image (whole method, and the segmenter alone)."""
    lines = [
        "| backend | method | images | Dice [95 % CI] | IoU | NSD (2 px) [95 % CI] | s / image | segmenter s / image |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['backend']} | {r['method']} | {r['images']} | "
            f"{r['dice']:.3f} [{r['dice_ci'][0]:.3f}, {r['dice_ci'][1]:.3f}] | {r['iou']:.3f} | "
            f"{r['nsd']:.3f} [{r['nsd_ci'][0]:.3f}, {r['nsd_ci'][1]:.3f}] | "
            f"{r['s_per_image']:.2f} | {r['s_segmenter']:.2f} |"
        )
    return "\n".join(lines)



def comparison_figure(rows: Sequence[dict], title: str = ""):
    """Two panels: mean Dice with its 95 % interval per backend, and seconds per image (log
    scale; the MedCLIP-SAM bars split into the shared saliency and the segmenter). Every row's
    total is written beside its bar, and a time of 0 (which a log axis cannot draw) is written
    as "0 s" at the axis' left edge."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    from matplotlib.ticker import NullFormatter

    names = [r["backend"] for r in rows]
    y = np.arange(len(rows))
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 0.6 * len(rows) + 1.9), sharey=True)
    dice = np.array([r["dice"] for r in rows])
    lo = dice - np.array([r["dice_ci"][0] for r in rows])
    hi = np.array([r["dice_ci"][1] for r in rows]) - dice
    text_only = [r["method"].startswith("SAM 3") for r in rows]
    colors = ["tab:orange" if t else "tab:blue" for t in text_only]
    a.barh(y, dice, xerr=[lo, hi], color=colors, capsize=3)
    a.set_yticks(y, names)
    a.invert_yaxis()
    a.set_xlim(0, 1)
    a.set_xlabel("Dice (mean, 95 % CI)")
    a.set_title("segmentation quality", fontsize=10)
    total = np.maximum(np.array([r["s_per_image"] for r in rows], dtype=float), 0.0)
    seg = np.clip(np.array([r["s_segmenter"] for r in rows], dtype=float), 0.0, None)
    seg = np.minimum(seg, total)
    sal = total - seg  # never negative: a rounding difference would draw a bar backwards
    positive = np.concatenate([seg[seg > 0], total[total > 0]])
    left = positive.min() / 3 if positive.size else 1e-3
    right = max(positive.max() if positive.size else 1.0, left * 10) * 4  # room for the labels
    b.set_xscale("log")
    b.set_xlim(left, right)
    # a bar on a log axis starts at the axis' left edge (0 has no place on it)
    b.barh(y, np.where(seg > 0, seg - left, 0), left=left, color=colors)
    b.barh(y, sal, left=np.maximum(seg, left), color="lightgrey")
    for yi, t in zip(y, total):
        if t > 0:
            b.text(t * 1.1, yi, f"{t:.2f} s" if t >= 0.01 else f"{t:.3f} s", va="center", fontsize=8)
        else:
            b.text(left * 1.1, yi, "0 s", va="center", fontsize=8)
    b.xaxis.set_minor_formatter(NullFormatter())
    b.set_xlabel("seconds per image (log scale; total written)")
    b.set_title("time", fontsize=10)
    handles = [Patch(color="tab:blue", label="segmenter (MedCLIP-SAM)")]
    if any(text_only):
        handles.append(Patch(color="tab:orange", label="segmenter (SAM 3, text only: no saliency)"))
    handles.append(Patch(color="lightgrey", label="CLIP saliency (shared)"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return fig


def example_panels(data: str | Path, out_dir: str | Path, rows: Sequence[dict], stem: str,
                   *, split: str | None = None) -> tuple[list[np.ndarray], list[str]]:
    """Panels for :func:`~medclipsam.viz.sample_grid`: image ``stem`` of ``data`` with its ground
    truth (green outline), then each backend's mask from ``out_dir`` with its Dice."""
    ds = FolderDataset(data, split=split)
    sample = ds[ds.stems.index(stem)]
    panels, titles = [overlay(sample["image"], outline=sample["mask"])], [f"{stem}: ground truth"]
    for r in rows:
        m = read_mask(Path(out_dir) / backend_folder(r["backend"]) / "masks" / f"{stem}.png")
        panels.append(overlay(sample["image"], m, outline=sample["mask"]))
        titles.append(f"{r['backend']}: Dice {dice(m, sample['mask']):.2f}")
    return panels, titles
