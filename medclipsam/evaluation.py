"""Scoring the pipeline against ground-truth masks (used only to score, never to segment).

* :func:`evaluate_predictions`: per-image Dice, IoU, HD95 and NSD of one prompt on given images;
* :func:`evaluate_settings`: an ablation, several settings on the same images (one SAM embedding
  per image, through :meth:`~medclipsam.pipeline.MedCLIPSAM.sweep`);
* :func:`evaluate_phantom`: the zero-shot quality on held-out phantom images, one row per task.

Each takes the pipeline (or anything with the same ``predict``/``sweep``, e.g.
:class:`~medclipsam.text_baselines.Sam3TextBaseline` for :func:`evaluate_predictions`)::

    from medclipsam.evaluation import evaluate_phantom
    evaluate_phantom(MedCLIPSAM.offline(), n=20)     # [{"task": "breast", "dice": ..., ...}, ...]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .data.phantom import PROMPTS, PhantomDataset
from .metrics import evaluate_masks, summarize
from .vocab import TASKS

if TYPE_CHECKING:
    from .pipeline import MedCLIPSAM, SegmentationResult

__all__ = ["evaluate_phantom", "evaluate_predictions", "evaluate_settings"]



def evaluate_predictions(
    pipe: MedCLIPSAM,
    images: Sequence[Any],
    masks: Sequence[np.ndarray],
    prompt: str,
    *,
    task: str | None = None,
    ids: Sequence[str] | None = None,
    nsd_tolerance: float = 2.0,
    **overrides: Any,
) -> tuple[list[dict], list[SegmentationResult]]:
    """Run ``pipe`` on ``images`` and score each mask against ``masks`` (used only to score).

    Returns per-image rows (id, dice, iou, hd95, nsd, areas, SAM score, flags, seconds) and the
    results themselves."""
    results = pipe.predict(list(images), prompt, task=task, ids=ids, **overrides)
    rows = evaluate_masks([r.mask for r in results], list(masks), ids=[r.id for r in results],
                          nsd_tolerance=nsd_tolerance)
    for row, r in zip(rows, results):
        row.update(sam_score=r.sam_score, flags=" ".join(r.flags), seconds=r.timings["total"])
    return rows, results


def evaluate_settings(
    pipe: MedCLIPSAM,
    images: Sequence[Any],
    masks: Sequence[np.ndarray],
    prompt: str,
    settings: Sequence[dict[str, Any]],
    *,
    task: str | None = None,
    maps: Sequence[Any] | None = None,
    nsd_tolerance: float = 2.0,
    n_boot: int = 1000,
    seed: int = 0,
) -> list[dict]:
    """An ablation: each of ``settings`` (dicts of :class:`~medclipsam.config.PipelineConfig` overrides) scored on
    ``images`` against ``masks`` (used only to score), through :meth:`~medclipsam.pipeline.MedCLIPSAM.sweep` (one SAM
    embedding per image, each saliency setting once per image). Returns one
    :func:`~medclipsam.metrics.summarize` dict per setting (mean and bootstrap interval of
    Dice, IoU, HD95, NSD), with ``"setting"``, ``"flagged"`` (images with a flag) and
    ``"results"`` (the :class:`SegmentationResult` list) added."""
    gts = list(masks)
    per_setting = pipe.sweep(list(images), prompt, settings, task=task, maps=maps)
    out = []
    for over, results in zip(settings, per_setting):
        rows = evaluate_masks([r.mask for r in results], gts, nsd_tolerance=nsd_tolerance)
        summ = summarize(rows, n_boot=n_boot, seed=seed)
        summ.update(setting=dict(over), flagged=sum(bool(r.flags) for r in results),
                    results=results)
        out.append(summ)
    return out


def evaluate_phantom(
    pipe: MedCLIPSAM,
    tasks: Sequence[str] = TASKS,
    *,
    n: int = 20,
    seed: int = 0,
    size: int = 256,
    split: str = "test",
    prompts: dict[str, str] | None = None,
    with_normals: bool = False,
    n_boot: int = 1000,
    **overrides: Any,
) -> list[dict]:
    """Zero-shot quality on held-out phantom images: one row per task with the mean and 95 %
    bootstrap interval of Dice, IoU, HD95 and NSD (2 px), SAM score and seconds per image.

    All ``n`` images have a finding unless ``with_normals`` (the data set's usual share of normal
    images is then included; a prompt for a finding that is not there has no right box). Each task uses its :data:`~medclipsam.config.TASK_PRESETS`;
    ``overrides`` change :class:`~medclipsam.config.PipelineConfig` fields (e.g. ``saliency="random"``)."""
    out = []
    for task in tasks:
        ds = PhantomDataset(task, n, seed=seed, size=size, split=split,
                            **({} if with_normals else {"normal_fraction": 0.0}))
        samples = list(ds)
        prompt = (prompts or {}).get(task, PROMPTS[task])
        rows, _ = evaluate_predictions(
            pipe, [s.rgb for s in samples], [s.mask for s in samples], prompt, task=task,
            ids=[f"{task}_{i:03d}" for i in range(len(samples))], **overrides,
        )
        summ = summarize(rows, n_boot=n_boot, seed=seed)
        row = {"task": task, "prompt": prompt, "images": len(rows)}
        for m in ("dice", "iou", "hd95", "nsd"):
            row[m] = summ[m]["mean"]
            row[m + "_ci"] = (summ[m]["ci_low"], summ[m]["ci_high"])
        row["hd95_infinite"] = summ["hd95"]["n_infinite"]
        row["sam_score"] = float(np.mean([r["sam_score"] for r in rows]))
        row["flagged"] = sum(bool(r["flags"]) for r in rows)
        row["s_per_image"] = float(np.mean([r["seconds"] for r in rows]))
        out.append(row)
    return out
