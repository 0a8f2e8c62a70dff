"""How well a CLIP model localises findings on held-out phantom images (the toy world's check).

For each task, the saliency map of the task's segmentation prompt is compared with the ground-truth
mask (pointing game, pixel AUC), beside two baselines: the intensity rule the phantom world's decoys
are built to defeat (darkest region for the ultrasound lesion and the X-ray lungs, brightest for the
MRI tumour) and a random map. Masks are used only to score, never to make a map.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..metrics import pointing_game, saliency_auc
from .gradcam import grad_cam

__all__ = ["localisation_table"]


def _intensity_map(image: np.ndarray, rule: str, sigma: float) -> np.ndarray:
    from scipy import ndimage

    s = ndimage.gaussian_filter(image.astype(np.float32), sigma)
    return -s if rule == "darkest" else s


def localisation_table(
    bundle,
    tasks: Sequence[str] = ("breast", "brain", "xray"),
    *,
    n_per_task: int = 40,
    seed: int = 0,
    split: str = "test",
    size: int = 224,
    method: Callable | None = None,
    batch_size: int = 16,
) -> list[dict]:
    """Pointing game and AUC per task for ``method`` (default GradCAM) and the two baselines.

    ``bundle`` is a :class:`~medclipsam.models.clip.ClipBundle`. Images without a finding are
    skipped (nothing to point at). Returns one row per task.
    """
    from ..data.phantom import (
        INTENSITY_RULE,
        PROMPTS,
        PhantomDataset,
        intensity_rule_point,
        pointing_hit,
    )

    method = method or grad_cam
    device = bundle.device
    rng = np.random.default_rng(seed)
    rows = []
    for task in tasks:
        ds = PhantomDataset(task, n_per_task, seed=seed, size=size, split=split)
        samples = [s for s in (ds[i] for i in range(len(ds))) if s.mask.any()]
        with torch.no_grad():
            text = bundle.model.encode_text(bundle.tokenize([PROMPTS[task]]))
        pg, auc, pg_rule, auc_rule, pg_rand, auc_rand = [], [], [], [], [], []
        for b in range(0, len(samples), batch_size):
            chunk = samples[b : b + batch_size]
            prepared = [bundle.prepare(s.rgb) for s in chunk]
            x = torch.stack([p[0] for p in prepared]).to(device)
            maps = method(bundle.model, x, text.expand(len(chunk), -1))
            for s, (_, geom), m in zip(chunk, prepared, maps):
                sal = geom.to_image(m.detach().cpu()).numpy() if hasattr(geom, "to_image") else m.numpy()
                pg.append(pointing_game(sal, s.mask))
                auc.append(saliency_auc(sal, s.mask))
                rule = INTENSITY_RULE[task]
                pg_rule.append(float(pointing_hit(intensity_rule_point(s.image, rule), s.mask)))
                auc_rule.append(saliency_auc(_intensity_map(s.image, rule, 0.01 * min(s.image.shape)), s.mask))
                rnd = rng.random(s.mask.shape)
                pg_rand.append(pointing_game(rnd, s.mask))
                auc_rand.append(saliency_auc(rnd, s.mask))
        rows.append(
            {
                "task": task,
                "prompt": PROMPTS[task],
                "images": len(samples),
                "pointing": float(np.mean(pg)),
                "auc": float(np.nanmean(auc)),
                "pointing_intensity_rule": float(np.mean(pg_rule)),
                "auc_intensity_rule": float(np.nanmean(auc_rule)),
                "pointing_random": float(np.mean(pg_rand)),
                "auc_random": float(np.nanmean(auc_rand)),
            }
        )
    return rows
