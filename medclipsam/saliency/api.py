"""One entry point for saliency maps: any method, one image in any form, one or several prompts,
maps in the original image's coordinates.

``METHODS`` maps a name to a callable with the common signature
``(model, images [B,3,S,S], text_features [B|1, D], *, target=None, **kwargs) -> [B, S, S]`` in
[0, 1] at the model input. :class:`PromptBatch` holds the steps every caller shares (prepare the
image with the clip's letterbox, so non-square images are not misaligned; encode the prompts
once; run a method; map the result back onto the image with
:meth:`~medclipsam.models.clip.Geometry.to_image`): :func:`saliency_maps` and the prompt-sensitivity
check (:func:`~medclipsam.saliency.sensitivity.prompt_sensitivity`) both stand on it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.io import read_image
from .cam import resolve_target
from .gradcam import grad_cam
from .gscorecam import gscorecam
from .gscorecam_multi import gscorecam_multi
from .m2ib import m2ib
from .targets import TargetLayer

__all__ = ["METHODS", "PromptBatch", "is_gscorecam", "method_name", "saliency_maps"]


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
    """M2IB (:func:`~medclipsam.saliency.m2ib.m2ib`) with the common signature."""
    if target is not None:
        target = resolve_target(model, target)
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


class PromptBatch:
    """One image prepared for a CLIP model and P prompts encoded once: what every saliency method
    runs on, and the way back to the image.

    ``clip``: a :class:`~medclipsam.models.clip.ClipBundle`; ``image``: an array (grey or RGB, any
    dtype), a PIL image, a tensor or a path (read with :func:`~medclipsam.data.io.read_image`);
    ``mode`` overrides the clip's preprocessing mode (``"pad"``, ``"resize"``, ``"crop"``).
    ``image_input`` is ``[1, 3, S, S]`` on the model's device, ``text_features`` ``[P, D]`` float32,
    ``geometry`` maps model-space maps back to the image.
    """

    def __init__(self, clip: Any, image: Any, prompts: Sequence[str], mode: str | None = None) -> None:
        x, self.geometry = clip.prepare(_load_if_path(image), mode)
        self.model = clip.model
        self.image_input = x[None].to(clip.device)
        self.prompts = list(prompts)
        with torch.no_grad():
            self.text_features = clip.encode_text(self.prompts, normalize=False).float()

    def run(self, method: Callable[..., torch.Tensor], rows: slice | None = None,
            **kwargs: Any) -> torch.Tensor:
        """``method`` on the image repeated once per prompt (one batch; ``rows`` selects
        prompts): model-space maps ``[P, S, S]``, float32 on the CPU.

        gScoreCAM with several prompts (or with a ``store=``) goes through
        :func:`~medclipsam.saliency.gscorecam_multi.gscorecam_multi`: one image, so the masked images
        are scored once for all prompts (the same maps as one prompt at a time)."""
        txt = self.text_features if rows is None else self.text_features[rows]
        n = txt.shape[0]
        if is_gscorecam(method) and (n > 1 or kwargs.get("store") is not None):
            maps = gscorecam_multi(self.model, self.image_input, txt, **kwargs)
            return maps.detach().float().cpu()
        if is_gscorecam(method):
            kwargs.pop("store", None)  # None here: one prompt without a store, the plain path
        images = self.image_input.expand(n, -1, -1, -1).contiguous()
        maps = method(self.model, images, txt, **kwargs)
        if not isinstance(maps, torch.Tensor) or maps.ndim != 3 or maps.shape[0] != n:
            raise ValueError(
                f"{method_name(method)} returned {getattr(maps, 'shape', type(maps))}; "
                f"expected [{n}, H, W]"
            )
        return maps.detach().float().cpu()

    def on_image(self, maps: torch.Tensor, normalize: bool = True) -> np.ndarray:
        """Model-space maps ``[P, S, S]`` on the image's own grid ``[P, H, W]`` (padding cut off,
        the rest resized), float32; with ``normalize`` min-max normalised over the image, since
        padding the model saw is not part of it."""
        maps = self.geometry.to_image(maps.detach().float().cpu())
        if normalize:
            flat = maps.flatten(1)
            lo = flat.min(1).values[:, None, None]
            hi = flat.max(1).values[:, None, None]
            maps = torch.where(hi - lo > 1e-8, (maps - lo) / (hi - lo).clamp_min(1e-8),
                               torch.zeros_like(maps))
        return maps.numpy().astype(np.float32)


def is_gscorecam(method: Any) -> bool:
    """True for gScoreCAM by name, its :data:`METHODS` entry or the function itself."""
    return method in ("gscorecam", _gscorecam, gscorecam)


def method_name(method: Callable) -> str:
    """A saliency callable's name (through ``functools.partial``), for messages and reports."""
    inner = getattr(method, "func", method)
    return getattr(inner, "__name__", type(inner).__name__)


def saliency_maps(
    clip: Any,
    image: Any,
    prompts: str | Sequence[str],
    method: str | Callable[..., torch.Tensor] = "gscorecam",
    *,
    mode: str | None = None,
    **kwargs: Any,
) -> np.ndarray:
    """Saliency maps ``[P, H_img, W_img]`` (float32 in [0, 1]) of one image for P prompts.

    ``clip``: a :class:`~medclipsam.models.clip.ClipBundle`. ``image``: a NumPy array (grey or
    RGB, any dtype), a PIL image, a tensor, or a path (read with
    :func:`~medclipsam.data.io.read_image`). ``prompts``: a string or a list of strings, encoded
    once. ``method``: a name in :data:`METHODS` or a callable with their signature; ``kwargs`` go to
    it (``k=``, ``precision=``, ``target=`` ...). ``mode`` overrides the clip's preprocessing mode
    (``"pad"``, ``"resize"``, ``"crop"``).

    The model-input maps are mapped back onto the image's own pixel grid and min-max normalised
    over the image (:meth:`PromptBatch.on_image`). With gScoreCAM and several prompts,
    :func:`~medclipsam.saliency.gscorecam_multi.gscorecam_multi` shares the scoring between prompts;
    ``store=`` (a :class:`~medclipsam.saliency.gscorecam_multi.MaskedFeatureStore` the caller keeps)
    shares it with earlier calls on the same image too.
    """
    texts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError("prompts must be a string or a non-empty list of strings")
    if isinstance(method, str):
        if method not in METHODS:
            raise ValueError(f"unknown saliency method {method!r}; known: {sorted(METHODS)}")
        fn = METHODS[method]
    else:
        fn = method
    batch = PromptBatch(clip, image, texts, mode)
    return batch.on_image(batch.run(fn, **kwargs))
