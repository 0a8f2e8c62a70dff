"""Does the toy CLIP's gradient pick good channels? gScoreCAM's k channels chosen four ways.

    HF_HUB_OFFLINE=1 python benchmarks/toy_channel_picks.py [--n 20] [--k 48] [--split test]

gScoreCAM keeps the k channels with the largest mean gradient, then weights them by the softmax
of their masked-image scores. This benchmark keeps everything but the choice of channels and runs
the whole toy zero-shot pipeline (the shipped defaults: box+points SAM prompts, CRF) on held-out
phantom images with the k channels picked

* ``gradient``: the k largest mean gradients (gScoreCAM itself);
* ``random``: k channels at random (seeded per image);
* ``lowest gradient``: the k smallest mean gradients;
* ``best score``: the k best masked-image scores (an oracle: it needs every channel scored);
* ``all``: every channel (ScoreCAM).

If the gradient ranks channels usefully, ``gradient`` beats ``random``. Every channel's masked
image is scored once per image and the five maps are made from those scores.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

PICKS = ("gradient", "random", "lowest gradient", "best score", "all")


def picked_maps(clip, image_rgb, prompt: str, k: int, seed: int) -> dict[str, np.ndarray]:
    """The five maps of one image, in image coordinates."""
    from medclipsam.saliency import PromptBatch
    from medclipsam.saliency.cam import (
        cam_to_map,
        layer_activations_and_gradients,
        normalized_text,
        resolve_target,
    )
    from medclipsam.saliency.gscorecam_multi import gscorecam_multi

    batch = PromptBatch(clip, image_rgb, [prompt])
    model, x = clip.model, batch.image_input
    target = resolve_target(model, None)
    act, grad = layer_activations_and_gradients(model, x, normalized_text(batch.text_features, 1, x.device),
                                                target)
    det = gscorecam_multi(model, x, batch.text_features, k=None, return_details=True)
    n_channels = act.shape[1]
    scores = torch.empty(n_channels)
    scores[det.channels[0]] = det.scores[0].float()
    importance = grad[0].mean(dim=(1, 2))
    chosen = {
        "gradient": importance.topk(k).indices,
        "random": torch.from_numpy(np.random.default_rng(seed).choice(n_channels, k, replace=False)),
        "lowest gradient": (-importance).topk(k).indices,
        "best score": scores.topk(k).indices,
        "all": torch.arange(n_channels),
    }
    out = {}
    for name, idx in chosen.items():
        cam = (torch.softmax(scores[idx], 0)[:, None, None] * act[0, idx]).sum(0)
        out[name] = batch.on_image(cam_to_map(cam[None], x.shape[-2:]))[0]  # as saliency_maps gives it
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=20, help="phantom images per task (all with a finding)")
    p.add_argument("--k", type=int, default=48, help="channels kept (the toy default: 48 of 128)")
    p.add_argument("--split", default="test")
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    warnings.simplefilter("ignore")
    from _common import hardware_header, print_table

    from medclipsam import MedCLIPSAM
    from medclipsam.data.phantom import PROMPTS, TASKS, PhantomDataset
    from medclipsam.metrics import dice

    print(hardware_header())
    t0 = time.perf_counter()
    pipe = MedCLIPSAM.offline()
    print(f"toy pipeline: {pipe.config}\n{a.n} {a.split} images per task with a finding, k = {a.k}\n", flush=True)
    scores: dict[str, dict[str, list[float]]] = {name: {t: [] for t in TASKS} for name in PICKS}
    for task in TASKS:
        ds = PhantomDataset(task, a.n, seed=0, size=256, split=a.split, normal_fraction=0.0)
        for i in range(len(ds)):
            s = ds[i]
            for name, m in picked_maps(pipe.clip, s.rgb, PROMPTS[task], a.k, seed=i).items():
                res = pipe.predict(s.rgb, PROMPTS[task], task=task, maps=m)
                scores[name][task].append(dice(res.mask, s.mask))
        print(f"  {task} done", flush=True)
    rows = []
    for name in PICKS:
        row = {"channels picked by": name} | {t: float(np.mean(scores[name][t])) for t in TASKS}
        row["average"] = float(np.mean([row[t] for t in TASKS]))
        rows.append(row)
    print("\nmean Dice of the whole zero-shot pipeline")
    print_table(rows)
    print(f"\n{(time.perf_counter() - t0) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
