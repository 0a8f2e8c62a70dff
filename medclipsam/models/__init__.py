"""Models: the weight registry, CLIP loading (BiomedCLIP, open_clip, toy), SAM loading
(vit_b/l/h, MedSAM, LiteMedSAM, SAM 2), SAM 3 (text-prompted).

Names are imported lazily, so ``import medclipsam.models`` stays cheap and the registry works
without importing torch, open_clip or segment_anything.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    # registry
    "REGISTRY": "registry",
    "ManualDownloadError": "registry",
    "WeightSpec": "registry",
    "WeightVerificationError": "registry",
    "get_spec": "registry",
    "list_weights": "registry",
    "weight_path": "registry",
    "weights_dir": "registry",
    # CLIP
    "BIOMEDCLIP_HUB_ID": "clip",
    "CheckpointError": "clip",
    "ClipBundle": "clip",
    "Geometry": "clip",
    "HubFilesMissingError": "clip",
    "LetterboxTransform": "clip",
    "load_clip": "clip",
    "prepare_image": "clip",
    "save_clip_checkpoint": "clip",
    # SAM
    "SAM_ARCHS": "sam",
    "MedSamPredictor": "sam",
    "LiteMedSamPredictor": "litemedsam",
    "load_litemedsam": "litemedsam",
    "SamCheckpointError": "sam",
    "build_sam": "sam",
    "infer_sam_arch": "sam",
    "load_sam": "sam",
    "save_sam_checkpoint": "sam",
    # SAM 2 and SAM 3 (transformers format, Hugging Face hub)
    "GatedModelError": "_hub",
    "HubModelError": "_hub",
    "HubModelMissingError": "_hub",
    "SAM2_MODELS": "sam2",
    "Sam2Predictor": "sam2",
    "build_sam2": "sam2",
    "load_sam2": "sam2",
    "Sam3TextModel": "sam3",
    "build_sam3": "sam3",
    "load_sam3": "sam3",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
