"""gScoreCAM as a plain loop, one channel at a time and one prompt at a time, exactly as the
method is written down (Chen et al., ACCV 2022; the steps in medclipsam/saliency/gscorecam.py's
docstring): the independent computation the package's batched and shared gScoreCAM is tested
against (tests/test_shared_scoring.py, tests/test_saliency_parity.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medclipsam.saliency import resolve_target_layer


def loop_gscorecam(model, image, text, k, *, convention="package", preset="default",
                   weighting="selected"):
    """One image [1, 3, S, S], one prompt [1, D]: gScoreCAM one channel at a time."""
    target = resolve_target_layer(model, preset=preset)
    store = {}

    def hook(_m, _i, out):
        out.retain_grad()
        store["a"] = out

    handle = target.module.register_forward_hook(hook)
    scale = model.logit_scale.exp().item()
    t = F.normalize(text.float(), dim=-1)[0]
    with torch.enable_grad():
        # the input requires grad so that the graph exists whatever the parameters' flags
        logit = scale * F.normalize(model.encode_image(image.clone().requires_grad_(True)), dim=-1)[0] @ t
        logit.backward()
    handle.remove()
    acts = target.to_grid(store["a"].detach())[0]  # [C, h, w]
    importance = target.to_grid(store["a"].grad)[0].mean(dim=(1, 2))
    kept = importance.topk(k).indices.tolist()  # ties (a zero gradient) broken as torch does
    scores = []
    for c in kept:
        if convention == "reference":  # nn.UpsamplingBilinear2d, (x - min) / (max - min + 1e-6)
            mask = torch.nn.UpsamplingBilinear2d(size=image.shape[-2:])(acts[c][None, None])[0, 0]
            mask = (mask - mask.min()) / (mask.max() - mask.min() + 1e-6)
        else:
            mask = F.interpolate(acts[c][None, None], size=image.shape[-2:], mode="bilinear",
                                 align_corners=False)[0, 0]
            span = mask.max() - mask.min()
            mask = (mask - mask.min()) / span if span > 1e-8 else torch.zeros_like(mask)
        with torch.no_grad():
            feat = F.normalize(model.encode_image(image * mask), dim=-1)[0]
        scores.append(scale * float(feat @ t))
    scores = torch.tensor(scores)
    cam = torch.zeros_like(acts[0])
    if weighting == "selected":
        for w, c in zip(torch.softmax(scores, 0).tolist(), kept):
            cam += w * acts[c]
    else:
        full = torch.zeros(acts.shape[0])
        full[kept] = scores
        for c, w in enumerate(torch.softmax(full, 0).tolist()):
            cam += w * acts[c]
    cam = F.interpolate(F.relu(cam)[None, None], size=image.shape[-2:], mode="bilinear",
                        align_corners=False)[0, 0]
    return (cam - cam.min()) / (cam.max() - cam.min())
