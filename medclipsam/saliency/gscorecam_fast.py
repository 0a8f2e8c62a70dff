"""How gScoreCAM's masked images are scored fast: the batch size and a low-precision image tower.

A speed-up a student can skip: :mod:`medclipsam.saliency.gscorecam` reads without it.

``precision="fast"`` scores with a copy of the image tower cast once to bfloat16 (CPUs with bf16
support) or float16 (CUDA), cached per model and rebuilt when its parameters change; the gradient
pass stays float32, so the channel choice and the masks are the exact ones. How fast each
precision and batch size runs on a machine: ``benchmarks/gscorecam_speed.py``.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Callable

import torch
from open_clip.model import CLIP, CustomTextCLIP

from .._utils import cpu_has_bf16
from ..vocab import SALIENCY_PRECISIONS

__all__ = [
    "cast_encoder",
    "clear_cast_cache",
    "default_batch_size",
    "fast_dtype",
    "parameter_signature",
    "scoring_dtype",
    "scoring_encoder",
]


def default_batch_size(device: torch.device | str) -> int:
    """Masked images scored per forward pass when ``batch_size=None``.

    CPU: 16 (larger batches ran no faster on a 2-core CPU with BiomedCLIP's ViT-B/16, and 16 holds
    the least memory; ``benchmarks/gscorecam_speed.py --batch-size`` compares them). CUDA: 64 per
    8 GiB of device memory, between 64 and 1024, so a k=300 map is a single batch on a large GPU.
    """
    device = torch.device(device)
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory / 2**30
        return int(max(64, min(1024, 64 * (total // 8))))
    return 16


def fast_dtype(device: torch.device | str) -> torch.dtype:
    """The scoring dtype of ``precision="fast"`` on ``device``: float16 on CUDA (more mantissa
    than bfloat16, the same speed there), bfloat16 on CPUs with bf16 support, else float32."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and cpu_has_bf16():
        return torch.bfloat16
    return torch.float32


def scoring_dtype(precision: str, device: torch.device | str) -> torch.dtype:
    """The dtype the masked images are scored in for ``precision`` (:data:`SALIENCY_PRECISIONS`)."""
    if precision not in SALIENCY_PRECISIONS:
        raise ValueError(f"precision must be one of {SALIENCY_PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return torch.float32
    if precision == "fast":
        return fast_dtype(device)
    return torch.bfloat16 if precision == "bf16" else torch.float16


def _visual_only(model: torch.nn.Module) -> bool:
    """True when ``model.encode_image`` is open_clip's plain ``visual(x)`` (so a copy of the image
    tower alone scores the same)."""
    fn = getattr(type(model), "encode_image", None)
    return hasattr(model, "visual") and fn in (CLIP.encode_image, CustomTextCLIP.encode_image)


def parameter_signature(module: torch.nn.Module) -> tuple:
    """What identifies a module's current weights: storage, version counter, dtype and device of
    every parameter and buffer (an in-place update, a load or a move changes it)."""
    return tuple(
        (t.data_ptr(), t._version, t.dtype, t.device)
        for t in (*module.parameters(), *module.buffers())
    )


_CAST_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def clear_cast_cache() -> None:
    """Drop the low-precision copies made by ``precision="fast"`` (they live as long as their
    model otherwise: about half the image tower's memory each)."""
    _CAST_CACHE.clear()


def cast_encoder(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """A copy of ``model``'s image tower (or of the whole model) in ``dtype``, made once per model
    and dtype and rebuilt when the model's parameters change (in-place updates, loading, moving)."""
    source = model.visual if _visual_only(model) else model
    sig = parameter_signature(source)
    entries = _CAST_CACHE.setdefault(model, {})
    hit = entries.get(dtype)
    if hit is not None and hit[0] == sig:
        return hit[1]
    entries.pop(dtype, None)  # free the stale copy before making the new one
    cast = copy.deepcopy(source).to(dtype)
    for p in cast.parameters():
        p.requires_grad_(False)
    entries[dtype] = (sig, cast)
    return cast


def scoring_encoder(
    model: torch.nn.Module, dtype: torch.dtype = torch.float32
) -> Callable[[torch.Tensor], torch.Tensor]:
    """x -> unnormalised image features, computed in ``dtype`` (the input is cast to it): the
    model's own ``encode_image`` in float32, else its cached copy from :func:`cast_encoder`."""
    if dtype == torch.float32 and next(model.parameters()).dtype == torch.float32:
        encode = model.encode_image
    else:
        cast = cast_encoder(model, dtype)
        encode = cast if _visual_only(model) else cast.encode_image

    def run(x: torch.Tensor) -> torch.Tensor:
        return encode(x.to(dtype))

    return run
