"""The CAM core every saliency method stands on (in the spirit of pytorch-grad-cam's ``BaseCAM``).

One place does what GradCAM, gScoreCAM, M2IB and the prompt-sensitivity check share:

* **which layer** (:func:`resolve_target`: a preset, a dotted path or a :class:`TargetLayer`) and
  **tokens to grid** (:meth:`TargetLayer.to_grid`, from :mod:`medclipsam.saliency.targets`);
* **hooks**: :func:`hooked` registers a forward hook for the length of a ``with`` block;
  :func:`frozen` freezes a model's parameters and puts it in eval mode, restoring both after;
* **forward and backward**: :func:`layer_activations_and_gradients` runs the image tower once
  with the target layer's output replaced by a leaf tensor, and takes the gradient of each image's
  image-text logit (``logit_scale.exp() * cosine``) with respect to it alone
  (``torch.autograd.grad``): parameters never get a ``.grad``, the layers before the target build
  no graph, and the caller's own gradients are left alone;
* **maps**: :func:`cam_to_map` (ReLU, bilinear upsampling with half-pixel centres, min-max
  normalisation to [0, 1], a flat map giving zeros), :func:`upsample_and_normalize` (the same
  without the ReLU: gScoreCAM's channel masks, maps that are non-negative by construction) and
  :func:`normalize_maps`.

Each method then only says how it weighs channels: GradCAM by the mean gradient
(:func:`medclipsam.saliency.gradcam.grad_cam`), gScoreCAM by the softmax of masked-image scores of
the top-k channels by gradient, M2IB by an information bottleneck trained on the layer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from .targets import TargetLayer, resolve_target_layer

__all__ = [
    "cam_to_map",
    "check_images",
    "exp_logit_scale",
    "frozen",
    "gradients_per_logit",
    "hooked",
    "layer_activations_and_gradients",
    "layer_outputs_and_logits",
    "normalize_maps",
    "normalized_text",
    "resolve_target",
    "upsample_and_normalize",
]


def resolve_target(model: torch.nn.Module, target: TargetLayer | str | None) -> TargetLayer:
    """``target`` as a :class:`TargetLayer`: None or ``"default"`` (the layer whose patch tokens
    reach the output), ``"reference"`` (the reference code's layer), a dotted module path, or a
    :class:`TargetLayer` as is."""
    if target is None or isinstance(target, TargetLayer):
        return target or resolve_target_layer(model)
    if isinstance(target, str):
        if target in ("default", "reference"):
            return resolve_target_layer(model, preset=target)
        return resolve_target_layer(model, layer=target)
    raise TypeError(f"target must be a TargetLayer, a preset name or a layer path, got {type(target)}")


# --------------------------------------------------------------------------------------------
# inputs


def check_images(images: torch.Tensor) -> None:
    """``images`` must be a preprocessed ``[B, 3, H, W]`` tensor (a clear error otherwise)."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images)
        raise ValueError(f"images must be a preprocessed [B, 3, H, W] tensor, got {shape}")


def normalized_text(text_features: torch.Tensor, n: int, device: torch.device) -> torch.Tensor:
    """Text features ``[n, D]`` or ``[1, D]`` (one prompt per image) as ``n`` L2-normalised
    float32 rows on ``device``."""
    t = text_features.detach().to(device=device, dtype=torch.float32)
    if t.ndim == 1:
        t = t[None]
    if t.ndim != 2 or t.shape[0] not in (1, n):
        raise ValueError(
            f"text_features must be [{n}, D] or [1, D] (one prompt per image), got {tuple(t.shape)}"
        )
    return F.normalize(t, dim=-1).expand(n, -1)


def exp_logit_scale(model: torch.nn.Module) -> float:
    """The model's ``logit_scale.exp()`` (1 for a model without one)."""
    scale = getattr(model, "logit_scale", None)
    return 1.0 if scale is None else float(torch.as_tensor(scale).detach().float().exp())


def _exp_logit_scale_on_device(model: torch.nn.Module) -> torch.Tensor | float:
    """:func:`exp_logit_scale` as a float32 0-dim tensor where the model keeps it: the same value,
    without copying it to the host (no GPU synchronisation; a model on ``meta`` works too)."""
    scale = getattr(model, "logit_scale", None)
    return 1.0 if scale is None else torch.as_tensor(scale).detach().float().exp()


# --------------------------------------------------------------------------------------------
# hooks


@contextlib.contextmanager
def hooked(module: torch.nn.Module, hook: Callable) -> Iterator[None]:
    """``module.register_forward_hook(hook)`` for the length of the ``with`` block."""
    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def frozen(model: torch.nn.Module) -> Iterator[None]:
    """The model's parameters frozen (no ``.grad`` is ever made) and the model in eval mode for
    the block; ``requires_grad`` flags and train/eval modes are put back afterwards."""
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    modes = [(m, m.training) for m in model.modules()]
    try:
        for p in params:
            p.requires_grad_(False)
        model.eval()
        yield
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)
        for m, t in modes:
            m.training = t


# --------------------------------------------------------------------------------------------
# forward and backward


def _activations_and_image_features(
    model: torch.nn.Module, images: torch.Tensor, target: TargetLayer
) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass: the target layer's output (a leaf that requires grad, so gradients can be
    taken with respect to it whatever the parameters' ``requires_grad``) and the unnormalised
    image features that depend on it."""
    store: dict[str, torch.Tensor] = {}

    def leaf_hook(_m, _i, out):
        torch.set_grad_enabled(True)  # from here on: the layers after the target need a graph
        first = out[0] if isinstance(out, tuple) else out
        leaf = first.detach().float().requires_grad_(True)
        store["act"] = leaf
        cast = leaf.to(first.dtype)
        return (cast, *out[1:]) if isinstance(out, tuple) else cast

    grad_mode = torch.is_grad_enabled()
    try:
        torch.set_grad_enabled(False)  # no graph for the layers before the target
        with hooked(target.module, leaf_hook):
            feats = model.encode_image(images.detach())
    finally:
        torch.set_grad_enabled(grad_mode)
    if "act" not in store:
        raise RuntimeError(f"the target layer {target.name} was not called by encode_image")
    return store["act"], feats


def gradients_per_logit(logits: torch.Tensor, act: torch.Tensor) -> list[torch.Tensor]:
    """Gradient of each logit (one per row of ``logits``) with respect to ``act`` alone."""
    grads = []
    for i in range(logits.shape[0]):
        (g,) = torch.autograd.grad(
            logits[i], act, retain_graph=i < logits.shape[0] - 1, allow_unused=True
        )
        grads.append(torch.zeros_like(act) if g is None else g)
    return grads


def layer_outputs_and_logits(
    model: torch.nn.Module, images: torch.Tensor, txt: torch.Tensor, target: TargetLayer
) -> tuple[torch.Tensor, torch.Tensor]:
    """The target layer's raw output (the leaf of the graph) and the image-text logits ``[Q]`` of
    each image with each normalised text row ``txt [Q, D]`` (broadcast against the images)."""
    act_raw, feats = _activations_and_image_features(model, images, target)
    logits = _exp_logit_scale_on_device(model) * (F.normalize(feats.float(), dim=-1) * txt).sum(-1)
    return act_raw, logits


def layer_activations_and_gradients(
    model: torch.nn.Module, images: torch.Tensor, txt: torch.Tensor, target: TargetLayer
) -> tuple[torch.Tensor, torch.Tensor]:
    """The target layer's activations ``A`` and the gradients ``d logit / d A`` of each image's
    logit with its (normalised) text feature row of ``txt``, both ``[B, C, h, w]`` float32: what
    GradCAM and gScoreCAM start from (one forward and one backward pass)."""
    act_raw, logits = layer_outputs_and_logits(model, images, txt, target)
    # The images are independent, so the gradient of the summed logits holds each image's own.
    (grad_raw,) = gradients_per_logit(logits.sum()[None], act_raw)
    act = target.to_grid(act_raw.detach()).float().contiguous()
    return act, target.to_grid(grad_raw).float().contiguous()


# --------------------------------------------------------------------------------------------
# maps


def normalize_maps(maps: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Min-max normalise each map of ``[B, H, W]`` to [0, 1] (a constant map becomes 0)."""
    flat = maps.flatten(1)
    lo = flat.min(1).values.view(-1, 1, 1)
    hi = flat.max(1).values.view(-1, 1, 1)
    return torch.where(hi - lo > eps, (maps - lo) / (hi - lo + eps), torch.zeros_like(maps))


def upsample_and_normalize(maps: torch.Tensor, size) -> torch.Tensor:
    """Maps ``[Q, h, w]`` upsampled to ``size`` (bilinear, half-pixel centres: the one
    interpolation convention of the package) and min-max normalised each to [0, 1]."""
    up = F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)
    return normalize_maps(up[:, 0])


def cam_to_map(cam: torch.Tensor, size) -> torch.Tensor:
    """A weighted sum of channels ``[Q, h, w]`` as the final map: ReLU, upsampled to ``size``
    (bilinear, half-pixel centres), min-max normalised to [0, 1]."""
    return upsample_and_normalize(F.relu(cam), size)
