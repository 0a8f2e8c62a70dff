"""Models: the weight registry, CLIP loading (BiomedCLIP, open_clip, toy), SAM loading
(vit_b/l/h, MedSAM, LiteMedSAM, SAM 2), SAM 3 (text-prompted).

Importing this package imports torch, open_clip and segment_anything; the top-level
``import medclipsam`` does not import it.
"""

from __future__ import annotations

from ._hub import GatedModelError, HubModelError, HubModelMissingError
from .clip import (
    BIOMEDCLIP_HUB_ID,
    CheckpointError,
    ClipBundle,
    Geometry,
    HubFilesMissingError,
    LetterboxTransform,
    load_clip,
    prepare_image,
    save_clip_checkpoint,
)
from .litemedsam import LiteMedSamPredictor, load_litemedsam
from .registry import (
    REGISTRY,
    ManualDownloadError,
    WeightSpec,
    WeightVerificationError,
    get_spec,
    list_weights,
    weight_path,
    weights_dir,
)
from .sam import (
    SAM_ARCHS,
    MedSamPredictor,
    SamCheckpointError,
    build_sam,
    infer_sam_arch,
    load_sam,
    save_sam_checkpoint,
)
from .sam2 import SAM2_MODELS, Sam2Predictor, build_sam2, load_sam2
from .sam3 import Sam3TextModel, build_sam3, load_sam3

__all__ = [
    "BIOMEDCLIP_HUB_ID",
    "REGISTRY",
    "SAM2_MODELS",
    "SAM_ARCHS",
    "CheckpointError",
    "ClipBundle",
    "GatedModelError",
    "Geometry",
    "HubFilesMissingError",
    "HubModelError",
    "HubModelMissingError",
    "LetterboxTransform",
    "LiteMedSamPredictor",
    "ManualDownloadError",
    "MedSamPredictor",
    "Sam2Predictor",
    "Sam3TextModel",
    "SamCheckpointError",
    "WeightSpec",
    "WeightVerificationError",
    "build_sam",
    "build_sam2",
    "build_sam3",
    "get_spec",
    "infer_sam_arch",
    "list_weights",
    "load_clip",
    "load_litemedsam",
    "load_sam",
    "load_sam2",
    "load_sam3",
    "prepare_image",
    "save_clip_checkpoint",
    "save_sam_checkpoint",
    "weight_path",
    "weights_dir",
]
