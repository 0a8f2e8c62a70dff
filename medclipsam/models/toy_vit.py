"""The toy CLIP's image trunk as a timm model: a small ``VisionTransformer`` shaped like BiomedCLIP's.

BiomedCLIP's image tower is open_clip's ``TimmModel`` around timm's ``vit_base_patch16_224``. The
toy CLIP uses the same wrapper around a narrower, shallower ViT (224 px, 16 px patches, a CLS token
pooled after ``trunk.norm``), registered with timm under :data:`TOY_VIT` so that open_clip can build
it from a plain model config. Both the toy CLIP's trainer and the checkpoint loader call
:func:`register_toy_vit` (it is idempotent).
"""

from __future__ import annotations

import timm
from timm.models import register_model
from timm.models.vision_transformer import VisionTransformer

TOY_CLIP_SIZE = 224
PATCH = 16
GRID = TOY_CLIP_SIZE // PATCH
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

#: The timm name of the toy trunk (every name with the ``medclipsam_`` prefix is one of ours).
TOY_VIT = "medclipsam_toy_vit_patch16_224"
#: BiomedCLIP's trunk is 768 wide, 12 deep, 12 heads; the toy keeps its grid and CLS token.
TOY_VIT_SHAPE = {"embed_dim": 128, "depth": 4, "num_heads": 4}


def _toy_vit(pretrained: bool = False, **kwargs) -> VisionTransformer:
    if pretrained:
        raise ValueError(f"{TOY_VIT} has no pretrained weights in timm; load the toy CLIP instead")
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)  # timm's factory passes these; the plain class takes none
    kwargs = {"img_size": TOY_CLIP_SIZE, "patch_size": PATCH, "mlp_ratio": 4.0,
              "global_pool": "token", **TOY_VIT_SHAPE, **kwargs}
    model = VisionTransformer(**kwargs)
    # What timm's factory would attach from a pretrained config (open_clip reads it).
    model.pretrained_cfg = model.default_cfg = {
        "architecture": TOY_VIT, "input_size": (3, TOY_CLIP_SIZE, TOY_CLIP_SIZE),
        "mean": OPENAI_MEAN, "std": OPENAI_STD, "num_classes": 0,
    }
    return model


def register_toy_vit() -> None:
    """Register :data:`TOY_VIT` with timm (idempotent), so open_clip's ``TimmModel`` can build it."""
    if TOY_VIT in timm.list_models(TOY_VIT):
        return
    _toy_vit.__name__ = _toy_vit.__qualname__ = TOY_VIT  # timm registers a factory by its name
    register_model(_toy_vit)
