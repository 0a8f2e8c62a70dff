"""One entry point for saliency maps: any method, one image in any form, one or several prompts,
maps in the original image's coordinates.

``METHODS`` maps a name to a callable with the common signature
``(model, images [B,3,S,S], text_features [B|1, D], *, target=None, **kwargs) -> [B, S, S]`` in
[0, 1] at the model input. :func:`saliency_maps` prepares the image with the bundle's letterbox
(so non-square images are not misaligned), encodes the prompts once, runs the method and maps the
result back onto the image with :meth:`~medclipsam.models.clip.Geometry.to_image`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.io import read_image
from .gradcam import grad_cam
from .gscorecam import gscorecam, gscorecam_multi, resolve_target
from .targets import TargetLayer

__all__ = ["METHODS", "saliency_maps"]


def _gradcam(
    model: torch.nn.Module,
    images: torch.Tensor,
    text_features: torch.Tensor,
    *,
    target: TargetLayer | str | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    """GradCAM with the common signature (``target`` may also be a preset name or layer path)."""
    if kwargs:
        raise TypeError(f"gradcam takes no options besides target, got {sorted(kwargs)}")
    return grad_cam(model, images, text_features, target=resolve_target(model, target))


def _gscorecam(
    model: torch.nn.Module,
    images: torch.Tensor,
    text_features: torch.Tensor,
    *,
    target: TargetLayer | str | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    """gScoreCAM (:func:`~medclipsam.saliency.gscorecam.gscorecam`) with the common signature."""
    return gscorecam(model, images, text_features, target=target, **kwargs)


def _m2ib(
    model: torch.nn.Module,
    images: torch.Tensor,
    text_features: torch.Tensor,
    *,
    target: TargetLayer | str | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    """M2IB (``medclipsam.saliency.m2ib``), imported on first use."""
    try:
        from .m2ib import m2ib
    except ImportError as e:
        raise NotImplementedError(
            f"the 'm2ib' saliency method is not available in this installation ({e})"
        ) from e
    return m2ib(model, images, text_features, target=target, **kwargs)


#: Saliency methods by name, all with the signature
#: ``(model, images, text_features, *, target=None, **kwargs) -> [B, H, W]``.
METHODS: dict[str, Callable[..., torch.Tensor]] = {
    "gradcam": _gradcam,
    "gscorecam": _gscorecam,
    "m2ib": _m2ib,
}


def _load_if_path(image: Any) -> Any:
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"saliency_maps: image file not found: {path}")
        return read_image(path, mode="rgb")
    return image


def saliency_maps(
    bundle: Any,
    image: Any,
    prompts: str | Sequence[str],
    method: str | Callable[..., torch.Tensor] = "gscorecam",
    *,
    mode: str | None = None,
    **kwargs: Any,
) -> np.ndarray:
    """Saliency maps ``[P, H_img, W_img]`` (float32 in [0, 1]) of one image for P prompts.

    ``bundle``: a :class:`~medclipsam.models.clip.ClipBundle`. ``image``: a NumPy array (grey or
    RGB, any dtype), a PIL image, a tensor, or a path (read with
    :func:`~medclipsam.data.io.read_image`). ``prompts``: a string or a list of strings, encoded
    once. ``method``: a name in :data:`METHODS` or a callable with their signature; ``kwargs`` go to
    it (``k=``, ``precision=``, ``target=`` ...). ``mode`` overrides the bundle's preprocessing mode
    (``"pad"``, ``"resize"``, ``"crop"``).

    The model-input maps are mapped back onto the image's own pixel grid (padding cut off, the rest
    resized), then min-max normalised over the image, since padding the model saw is not part of
    it. With gScoreCAM and several prompts, :func:`~medclipsam.saliency.gscorecam.gscorecam_multi`
    shares the scoring between prompts.
    """
    single = isinstance(prompts, str)
    texts = [prompts] if single else list(prompts)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError("prompts must be a string or a non-empty list of strings")
    if isinstance(method, str):
        if method not in METHODS:
            raise ValueError(f"unknown saliency method {method!r}; known: {sorted(METHODS)}")
        fn = METHODS[method]
    else:
        fn = method
    x, geom = bundle.prepare(_load_if_path(image), mode)
    model = bundle.model
    x = x[None].to(bundle.device)
    with torch.no_grad():
        txt = model.encode_text(bundle.tokenize(texts)).float()
    if fn is _gscorecam and len(texts) > 1:
        maps = gscorecam_multi(model, x, txt, **kwargs)
    else:
        maps = fn(model, x.expand(len(texts), -1, -1, -1), txt, **kwargs)
    maps = geom.to_image(maps.detach().float().cpu())
    flat = maps.flatten(1)
    lo = flat.min(1).values[:, None, None]
    hi = flat.max(1).values[:, None, None]
    maps = torch.where(hi - lo > 1e-8, (maps - lo) / (hi - lo).clamp_min(1e-8), torch.zeros_like(maps))
    return maps.numpy().astype(np.float32)
