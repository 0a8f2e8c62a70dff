"""A trial of an approximate gScoreCAM: drop the patch tokens a channel mask nearly zeroes.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/token_drop_trial.py \\
        --arch toy biomedclip --k 16 --thresholds 0.05 0.1 --images 2 --dice-images 4

Each masked image ``x * m_c`` goes through the ViT with only the CLS token and the patches whose
mean mask value over the 16 x 16 patch is at least the threshold (the CLS token attends to the
kept ones only; position embeddings are added before dropping, so the kept tokens keep their
places). To batch, each masked image keeps its top-L patches by mask value with L its kept count
rounded up to a multiple of 8, and masked images with the same L run together. Everything else is
exact gScoreCAM (the same channels, masks, softmax and map).

Printed per architecture and threshold, measured in the same run: the share of patch tokens
kept, CPU seconds of the exact and the approximate map and their ratio, the Pearson r of the two
maps, and (toy CLIP only: it has a pipeline whose Dice means something) the toy pipeline's mean
Dice with exact and approximate maps over a few held-out phantom images per task. The criteria
for shipping it as an option: r >= 0.99 on both architectures and |dDice| <= 0.01.
This lives in benchmarks/, not in the package: it is a measurement of an idea.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def _drop_encode(model, x: torch.Tensor, masks: torch.Tensor, threshold: float) -> torch.Tensor:
    """Image features [N, D] of masked images ``x`` [N, 3, S, S] keeping the patches whose mean
    mask value >= ``threshold`` (top-L by mask value, L = kept count rounded up to 8)."""
    trunk = model.visual.trunk
    p = trunk.patch_embed.patch_size[0]
    pm = F.avg_pool2d(masks[:, None], p)[:, 0].flatten(1)  # [N, T] mean mask per patch
    t = pm.shape[1]
    tok = trunk.norm_pre(trunk.patch_drop(trunk._pos_embed(trunk.patch_embed(x))))  # [N, 1+T, D]
    n_keep = (pm >= threshold).sum(1).clamp_min(1)
    lengths = ((n_keep + 7) // 8 * 8).clamp_max(t)
    feats = {}
    for length in lengths.unique().tolist():
        rows = (lengths == length).nonzero()[:, 0]
        idx = pm[rows].topk(length, dim=1).indices.sort(dim=1).values + 1  # skip CLS
        patches = tok[rows].gather(1, idx[:, :, None].expand(-1, -1, tok.shape[-1]))
        seq = torch.cat([tok[rows, :1], patches], 1)
        h = trunk.forward_head(trunk.norm(trunk.blocks(seq)))
        feats[length] = (rows, model.visual.head(h))
    out = torch.empty(x.shape[0], next(iter(feats.values()))[1].shape[-1])
    for rows, f in feats.values():
        out[rows] = f
    return out


def approx_gscorecam(model, images, text_features, *, target=None, k=16, threshold=0.05,
                     batch_size=16, stats=None):
    """gScoreCAM maps [B, S, S] with token dropping in the scoring (see the module doc)."""
    from medclipsam.saliency.cam import (
        exp_logit_scale,
        layer_activations_and_gradients,
        normalized_text,
        resolve_target,
    )
    from medclipsam.saliency.gscorecam import (
        channel_masks,
        combine_maps,
        gscorecam_weights,
        select_channels,
    )

    target = resolve_target(model, target)
    n = images.shape[0]
    txt = normalized_text(text_features, n, images.device)
    act, grads = layer_activations_and_gradients(model, images, txt, target)
    channels = select_channels(grads, k)
    kk = channels.shape[1]
    image_idx = torch.arange(n).repeat_interleave(kk)
    chan = channels.reshape(-1)
    feats, kept = [], []
    with torch.inference_mode():
        for s in range(0, image_idx.numel(), batch_size):
            b, c = image_idx[s:s + batch_size], chan[s:s + batch_size]
            masks = channel_masks(act[b, c], images.shape[-2:])
            x = images[b] * masks[:, None]
            feats.append(F.normalize(_drop_encode(model, x, masks, threshold).float(), dim=-1))
            p = model.visual.trunk.patch_embed.patch_size[0]
            kept.append((F.avg_pool2d(masks[:, None], p).flatten(1) >= threshold).float().mean(1))
    if stats is not None:
        stats.append(float(torch.cat(kept).mean()))
    scores = exp_logit_scale(model) * (torch.cat(feats).view(n, kk, -1) * txt[:, None]).sum(-1)
    return combine_maps(act, channels, gscorecam_weights(scores), images.shape[-2:])


def _cpu(fn, *a, **kw):
    t0 = time.process_time()
    out = fn(*a, **kw)
    return time.process_time() - t0, out


def compare_maps(clip, images, k, threshold) -> dict:
    from medclipsam.data.phantom import PROMPTS
    from medclipsam.saliency import saliency_maps

    te = ta = 0.0
    rs, kept = [], []
    for img in images:
        saliency_maps(clip, img, PROMPTS["breast"], "gscorecam", k=2)  # warm-up
        t1, exact = _cpu(saliency_maps, clip, img, PROMPTS["breast"], "gscorecam", k=k)
        t2, approx = _cpu(saliency_maps, clip, img, PROMPTS["breast"], approx_gscorecam, k=k,
                          threshold=threshold, stats=kept)
        te, ta = te + t1, ta + t2
        rs.append(float(np.corrcoef(exact.ravel(), approx.ravel())[0, 1]))
    return {"kept tokens": float(np.mean(kept)), "exact s": te / len(images),
            "approx s": ta / len(images), "speed-up": te / max(ta, 1e-9),
            "r mean": float(np.mean(rs)), "r min": float(np.min(rs))}


def toy_dice(k: int, threshold: float, per_task: int) -> dict:
    from medclipsam import MedCLIPSAM
    from medclipsam.data.phantom import PROMPTS, PhantomDataset
    from medclipsam.metrics import dice
    from medclipsam.saliency import saliency_maps

    pipe = MedCLIPSAM.offline()
    out = {"exact": [], "approx": []}
    for task in ("breast", "brain", "xray"):
        ds = PhantomDataset(task, per_task, seed=11, size=256, split="test")
        for i in range(len(ds)):
            s = ds[i]
            for name, method, kw in (("exact", "gscorecam", {}),
                                     ("approx", approx_gscorecam, {"threshold": threshold})):
                m = saliency_maps(pipe.clip, s.rgb, PROMPTS[task], method, k=k, **kw)[0]
                res = pipe.predict(s.rgb, PROMPTS[task], task=task, maps=m)
                out[name].append(dice(res.mask, s.mask))
    e, a = float(np.mean(out["exact"])), float(np.mean(out["approx"]))
    return {"Dice exact": e, "Dice approx": a, "dDice": a - e}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", nargs="+", default=["toy", "biomedclip"])
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.05, 0.1])
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--dice-images", type=int, default=4, help="toy phantom images per task")
    a = p.parse_args(argv)
    if "biomedclip" in a.arch:
        from shared_scoring_speed import write_hub_cache

        write_hub_cache()
    torch.set_num_threads(1)
    from _common import hardware_header, print_table
    from shared_scoring_speed import load

    from medclipsam.data.phantom import PhantomDataset

    warnings.simplefilter("ignore")
    print(hardware_header(), flush=True)
    imgs = [PhantomDataset("breast", a.images, seed=0, size=256, split="test")[i].rgb
            for i in range(a.images)]
    rows = []
    for arch in a.arch:
        clip = load(arch)
        for thr in a.thresholds:
            row = {"arch": arch, "k": a.k, "threshold": thr} | compare_maps(clip, imgs, a.k, thr)
            if arch == "toy" and a.dice_images:
                k_pipe = 48  # the toy pipeline's own k
                row |= toy_dice(k_pipe, thr, a.dice_images)
            rows.append(row)
            print(row, flush=True)
    print()
    print_table(rows, floatfmt="{:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
