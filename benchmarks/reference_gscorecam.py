"""gScoreCAM computed the way the public reference code computes it, for timing side by side.

Written from a description of the reference's procedure (read closely and reproduced to 1e-6 on
a random-weight BiomedCLIP), not from its code. What it does,
step by step, including the work the package does not repeat:

1. one forward and backward pass of image *and* text with the input requiring a gradient (the
   backward runs through the whole image tower and the text tower, not only to the target layer);
2. channel importance = the spatial mean of the signed gradient, the k largest kept;
3. masks for **all** C channels, upsampled to the input size with corner-aligned bilinear
   interpolation and min-max normalised as ``(x - min) / (max - min + 1e-6)``, then the k kept;
4. the masked images scored in batches of 64 (the reference drops its ``batch_size`` argument),
   the text encoded again in every batch;
5. the k scores scattered into a zero vector of all C channels before the softmax, the map the
   weighted sum of all C channels, ReLU, min-max normalised, resized with half-pixel centres.

The package's ``gscorecam(..., convention="reference", weighting="reference")`` gives the same
map (``benchmarks/speed_report.py`` prints the largest difference); its default differs in the
two conventions named in steps 3 and 5.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

REFERENCE_BATCH = 64


def reference_gscorecam(model: torch.nn.Module, image: torch.Tensor, tokens: torch.Tensor, *,
                        k: int, target) -> torch.Tensor:
    """The map ``[S, S]`` in [0, 1] of one preprocessed image ``[1, 3, S, S]`` for one tokenised
    prompt ``[1, L]``; ``target``: a resolved :class:`~medclipsam.saliency.cam.TargetLayer`."""
    saved = {}

    def hook(_module, _inputs, out):
        out.retain_grad()
        saved["act"] = out

    scale = model.logit_scale.exp()
    handle = target.module.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            x = image.clone().requires_grad_(True)
            img = F.normalize(model.encode_image(x), dim=-1)
            txt = F.normalize(model.encode_text(tokens), dim=-1)
            logit = scale * (img * txt).sum()
            model.zero_grad(set_to_none=True)
            logit.backward()
    finally:
        handle.remove()
    act = target.to_grid(saved["act"].detach())[0].float()  # [C, h, w]
    grad = target.to_grid(saved["act"].grad)[0].float()
    order = grad.mean(dim=(1, 2)).argsort(descending=True)[:k]

    size = image.shape[-2:]
    up = torch.nn.UpsamplingBilinear2d(size=size)(act[None])[0]  # all C channels
    lo = up.flatten(1).min(1).values[:, None, None]
    hi = up.flatten(1).max(1).values[:, None, None]
    masks = ((up - lo) / (hi - lo + 1e-6))[order]
    del up

    scores = []
    with torch.no_grad():
        for i in range(0, len(order), REFERENCE_BATCH):
            m = masks[i:i + REFERENCE_BATCH, None]
            feats = F.normalize(model.encode_image(image * m), dim=-1)
            t = F.normalize(model.encode_text(tokens), dim=-1)  # again in every batch
            scores.append(scale * (feats @ t.T)[:, 0])
    full = torch.zeros(act.shape[0])
    full[order] = torch.cat(scores).float()
    weights = torch.softmax(full, dim=0)
    cam = F.relu((weights[:, None, None] * act).sum(0))
    cam = F.interpolate(cam[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    return (cam - cam.min()) / (cam.max() - cam.min())
