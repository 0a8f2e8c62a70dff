"""GradCAM for CLIP: which regions raise the image-text similarity of a prompt.

The channel weights are the spatial mean of the gradient of the image-text logit with respect to
the target layer's activations; the map is ``ReLU(sum_c w_c A_c)``, resized to the model input
(bilinear, half-pixel centres) and min-max normalised. Hooks, the forward and backward pass, the
token grid and the map's ReLU/resize/normalise are the CAM core's (:mod:`medclipsam.saliency.cam`);
this module only says how GradCAM weighs the channels.
"""

from __future__ import annotations

import torch

from .cam import (
    cam_to_map,
    check_images,
    layer_activations_and_gradients,
    normalized_text,
    resolve_target,
)
from .targets import TargetLayer

__all__ = ["grad_cam"]


def grad_cam(
    model: torch.nn.Module,
    images: torch.Tensor,
    text_features: torch.Tensor,
    target: TargetLayer | str | None = None,
) -> torch.Tensor:
    """GradCAM maps ``[B, H, W]`` in [0, 1] at the input resolution.

    ``images``: preprocessed ``[B, 3, H, W]``; ``text_features``: ``[B, D]`` or ``[1, D]``
    (normalised or not), one prompt per image. ``target``: see
    :func:`~medclipsam.saliency.cam.resolve_target` (default: the layer whose patch tokens reach
    the output). The logit is the cosine similarity times the model's logit scale. No parameter
    gradient is made (the model's ``.grad`` fields are left as they were).
    """
    check_images(images)
    target = resolve_target(model, target)
    txt = normalized_text(text_features, images.shape[0], images.device)
    act, grad = layer_activations_and_gradients(model, images, txt, target)
    weights = grad.mean(dim=(2, 3), keepdim=True)
    return cam_to_map((weights * act).sum(1), images.shape[-2:])
