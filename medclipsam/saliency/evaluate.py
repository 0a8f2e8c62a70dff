"""How well a CLIP model localises findings on held-out phantom images (the toy world's check).

For each task, the saliency map of the task's segmentation prompt is compared with the ground-truth
mask (pointing game, pixel AUC, Dice of the map thresholded at 0.5), for one or several saliency
methods, beside two baselines: the intensity rule the phantom world's decoys are built to defeat
(darkest region for the ultrasound lesion and the X-ray lungs, brightest for the MRI tumour) and a
random map. Masks are used only to score, never to make a map.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from scipy import ndimage

from ..data.phantom import (
    INTENSITY_RULE,
    PROMPTS,
    PhantomDataset,
    intensity_rule_point,
    pointing_hit,
)
from ..metrics import dice, pointing_game, saliency_auc
from ..vocab import TASKS
from .api import METHODS
from .gradcam import grad_cam

__all__ = ["localisation_table", "saliency_dice"]


def saliency_dice(saliency: np.ndarray, gt: np.ndarray, threshold: float = 0.5) -> float:
    """Dice of the saliency map, min-max normalised to [0, 1] and thresholded at ``threshold``
    (pixels ``>= threshold`` are foreground), against the boolean mask ``gt``.

    A constant map has no foreground (it says nothing); Dice conventions follow
    :func:`medclipsam.metrics.dice`.
    """
    s = np.asarray(saliency, dtype=np.float64)
    lo, hi = float(s.min()), float(s.max())
    if hi - lo <= 1e-12:
        pred = np.zeros(s.shape, dtype=bool)
    else:
        pred = (s - lo) / (hi - lo) >= threshold
    return dice(pred, gt)


def _intensity_map(image: np.ndarray, rule: str, sigma: float) -> np.ndarray:
    s = ndimage.gaussian_filter(image.astype(np.float32), sigma)
    return -s if rule == "darkest" else s


def _as_callable(method: Callable | str) -> Callable:
    if isinstance(method, str):
        if method not in METHODS:
            raise ValueError(f"unknown saliency method {method!r}; known: {sorted(METHODS)}")
        return METHODS[method]
    return method


def localisation_table(
    clip,
    tasks: Sequence[str] = TASKS,
    *,
    n_per_task: int = 40,
    seed: int = 0,
    split: str = "test",
    size: int = 224,
    method: Callable | str | None = None,
    methods: Mapping[str, Callable | str] | None = None,
    batch_size: int = 16,
    threshold: float = 0.5,
) -> list[dict]:
    """Pointing game, AUC and Dice per task for saliency methods and the two baselines.

    ``clip`` is a :class:`~medclipsam.models.clip.ClipBundle`. One method (``method``, default
    GradCAM) gives the columns ``pointing``, ``auc``, ``dice``; several (``methods={"gscorecam":
    gscorecam, "gradcam": "gradcam"}``, callables with the common saliency signature
    ``(model, images, text_features) -> [B, H, W]`` or names in
    :data:`medclipsam.saliency.api.METHODS`) give ``pointing_<name>``, ``auc_<name>``,
    ``dice_<name>`` for each. Baseline columns end in ``_intensity_rule`` and ``_random``. Dice is
    :func:`saliency_dice` at ``threshold``. Images without a finding are skipped (nothing to point
    at). Returns one row per task; its ``dice_per_image`` maps each method's name to the Dice of
    every image (the same images for every method, for paired comparisons).
    """
    if method is not None and methods is not None:
        raise ValueError("pass either method= or methods=, not both")
    if methods is None:
        named = {"": _as_callable(method or grad_cam)}
    else:
        if not methods:
            raise ValueError("methods= must name at least one saliency method")
        named = {name: _as_callable(m) for name, m in methods.items()}
    device = clip.device
    rng = np.random.default_rng(seed)
    rows = []
    for task in tasks:
        ds = PhantomDataset(task, n_per_task, seed=seed, size=size, split=split)
        samples = [s for s in (ds[i] for i in range(len(ds))) if s.mask.any()]
        with torch.no_grad():
            text = clip.encode_text([PROMPTS[task]], normalize=False)
        scores: dict[str, list[float]] = defaultdict(list)
        for b in range(0, len(samples), batch_size):
            chunk = samples[b : b + batch_size]
            prepared = [clip.prepare(s.rgb) for s in chunk]
            x = torch.stack([p[0] for p in prepared]).to(device)
            for name, fn in named.items():
                suffix = f"_{name}" if name else ""
                maps = fn(clip.model, x, text.expand(len(chunk), -1))
                for s, (_, geom), m in zip(chunk, prepared, maps):
                    sal = geom.to_image(m.detach().float().cpu()).numpy()
                    scores["pointing" + suffix].append(pointing_game(sal, s.mask))
                    scores["auc" + suffix].append(saliency_auc(sal, s.mask))
                    scores["dice" + suffix].append(saliency_dice(sal, s.mask, threshold))
            for s in chunk:
                rule = INTENSITY_RULE[task]
                hit = pointing_hit(intensity_rule_point(s.image, rule), s.mask)
                scores["pointing_intensity_rule"].append(float(hit))
                imap = _intensity_map(s.image, rule, 0.01 * min(s.image.shape))
                scores["auc_intensity_rule"].append(saliency_auc(imap, s.mask))
                scores["dice_intensity_rule"].append(saliency_dice(imap, s.mask, threshold))
                rnd = rng.random(s.mask.shape)
                scores["pointing_random"].append(pointing_game(rnd, s.mask))
                scores["auc_random"].append(saliency_auc(rnd, s.mask))
                scores["dice_random"].append(saliency_dice(rnd, s.mask, threshold))
        row: dict = {"task": task, "prompt": PROMPTS[task], "images": len(samples), "dice_per_image": {}}
        for name in named:
            suffix = f"_{name}" if name else ""
            for metric in ("pointing", "auc", "dice"):
                row[metric + suffix] = float(np.nanmean(scores[metric + suffix]))
            row["dice_per_image"][name] = [float(v) for v in scores["dice" + suffix]]
        for base in ("intensity_rule", "random"):
            for metric in ("pointing", "auc", "dice"):
                row[f"{metric}_{base}"] = float(np.nanmean(scores[f"{metric}_{base}"]))
        rows.append(row)
    return rows
