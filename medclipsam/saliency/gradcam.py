"""GradCAM for CLIP: which regions raise the image-text similarity of a prompt.

The channel weights are the spatial mean of the gradient of the image-text logit with respect to
the target layer's activations; the map is ``ReLU(sum_c w_c A_c)``, min-max normalised and resized
to the model input (bilinear, half-pixel centres).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .targets import TargetLayer, resolve_target_layer

__all__ = ["grad_cam", "normalize_maps"]


def normalize_maps(maps: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Min-max normalise each map of ``[B, H, W]`` to [0, 1] (a constant map becomes 0)."""
    flat = maps.flatten(1)
    lo = flat.min(1).values.view(-1, 1, 1)
    hi = flat.max(1).values.view(-1, 1, 1)
    return torch.where(hi - lo > eps, (maps - lo) / (hi - lo + eps), torch.zeros_like(maps))


def grad_cam(
    model: torch.nn.Module,
    images: torch.Tensor,
    text_features: torch.Tensor,
    target: TargetLayer | None = None,
) -> torch.Tensor:
    """GradCAM maps ``[B, H, W]`` in [0, 1] at the input resolution.

    ``images``: preprocessed ``[B, 3, H, W]``; ``text_features``: ``[B, D]`` or ``[1, D]``
    (normalised or not), one prompt per image. ``target`` defaults to
    :func:`resolve_target_layer`'s choice. The logit is the cosine similarity times the model's
    logit scale.
    """
    target = target or resolve_target_layer(model)
    store: dict[str, torch.Tensor] = {}

    def hook(_m, _i, out):
        out = out[0] if isinstance(out, tuple) else out
        out.retain_grad()
        store["act"] = out

    handle = target.module.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            images = images.detach().requires_grad_(False)
            img = F.normalize(model.encode_image(images), dim=-1)
            txt = F.normalize(text_features.detach().to(img.device, img.dtype), dim=-1)
            logits = model.logit_scale.exp() * (img * txt).sum(-1)
            model.zero_grad(set_to_none=True)
            logits.sum().backward()
    finally:
        handle.remove()
    act = target.to_grid(store["act"].detach())
    grad = target.to_grid(store["act"].grad)
    weights = grad.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * act).sum(1))
    cam = F.interpolate(cam[:, None], size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return normalize_maps(cam)
