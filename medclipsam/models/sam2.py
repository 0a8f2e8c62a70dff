"""SAM 2 (Segment Anything 2, Meta 2024) as a box/point backend with ``SamPredictor``'s interface.

``load_sam("sam2-hiera-tiny")`` (or ``load_sam2``) returns a :class:`Sam2Predictor`: the same
small stateful object as segment_anything's ``SamPredictor`` (``set_image`` once per image,
``predict`` / ``predict_torch`` for any number of prompts), so :class:`~medclipsam.sam_session.SamSession`,
the pipeline and the explorer use SAM 2 exactly as they use SAM and MedSAM. The model is
transformers' ``Sam2Model`` (the image part of SAM 2; the video memory modules are not loaded).

Names (:data:`SAM2_MODELS`) point at Meta's official SAM 2.1 repositories on the Hugging Face hub,
which carry transformers-format weights (``config.json`` + ``model.safetensors``; the repositories'
``sam2_video`` configuration is read as its image part). A local folder in the same format works
too (``hf download facebook/sam2.1-hiera-tiny --local-dir DIR``, or ``model.save_pretrained(DIR)``).
How the files are verified: see :mod:`medclipsam.models._hub`.

Input conventions, those of SAM 2's own image predictor:

* the image is resized to 1024 x 1024 **without** keeping its aspect ratio (SAM 1 letterboxes);
  box and point coordinates are scaled per axis accordingly (:attr:`Sam2Predictor.transform`);
* intensities are scaled to [0, 1] and normalised with ImageNet's mean and std (the repository's
  ``preprocessor_config.json`` is read when present);
* masks are the 256 x 256 low-resolution logits upsampled (bilinear) straight to the image size
  and cut at 0.
* with ``multimask_output=False`` SAM 2 itself falls back to the best of its three masks when
  its single mask is unstable (its ``dynamic_multimask_via_stability``).

**MedSAM2** (Ma et al. 2025, SAM 2.1 tiny fine-tuned on medical images) is published only as a
checkpoint of SAM 2's original code base (``MedSAM2_latest.pt``, other parameter names, trained at
512 x 512). This package does not convert that format: no reference implementation is available
here to check a conversion against, and an unchecked one could load into the wrong places
silently. Once converted to the transformers format (a folder with ``config.json`` and
``model.safetensors``), it loads like any SAM 2 folder: ``load_sam("path/to/medsam2-hf")``.
"""

from __future__ import annotations

import json
import os
from copy import deepcopy
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .._utils import get_device
from ._hub import (
    HubModelError,
    check_loading_info,
    model_folder,
    transformers_class,
    verify_weight_file,
    weight_files,
)
from ._transforms import StretchTransform

__all__ = [
    "MEDSAM2_HELP",
    "SAM2_ARCHS",
    "SAM2_MODELS",
    "Sam2Predictor",
    "build_sam2",
    "is_sam2",
    "load_sam2",
    "sam2_config",
]

#: ``load_sam`` names -> Meta's SAM 2.1 repositories on the Hugging Face hub (Apache-2.0).
SAM2_MODELS: dict[str, str] = {
    "sam2-hiera-tiny": "facebook/sam2.1-hiera-tiny",
    "sam2-hiera-small": "facebook/sam2.1-hiera-small",
    "sam2-hiera-base-plus": "facebook/sam2.1-hiera-base-plus",
    "sam2-hiera-large": "facebook/sam2.1-hiera-large",
}

MEDSAM2_HELP = (
    "MedSAM2 (bowang-lab/MedSAM2) is published as a checkpoint of SAM 2's original code base "
    "(MedSAM2_latest.pt), which medclipsam does not convert. Convert it to the transformers "
    "format (a folder with config.json and model.safetensors, e.g. with transformers' SAM 2 "
    "conversion script and a 512 x 512 configuration) and pass that folder: "
    "load_sam('path/to/folder')."
)

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _hiera(dims: list[int], heads: list[int], blocks: list[int], global_blocks: list[int],
           background: list[int], windows: list[int], size: int = 1024) -> dict[str, Any]:
    return {
        "image_size": size,
        "backbone": {
            "model_type": "sam2_hiera_det_model", "image_size": [size, size], "hidden_size": dims[0],
            "embed_dim_per_stage": dims, "num_attention_heads_per_stage": heads,
            "blocks_per_stage": blocks, "global_attention_blocks": global_blocks,
            "window_positional_embedding_background_size": background,
            "window_size_per_stage": windows,
        },
        "backbone_channel_list": dims[::-1],
    }


#: The image encoders of SAM 2.1's four sizes (the numbers of SAM 2's model configurations), and
#: ``"test"``: a tiny SAM 2 at 256 x 256 for tests and smoke runs (random weights only).
SAM2_ARCHS: dict[str, dict[str, Any]] = {
    "tiny": _hiera([96, 192, 384, 768], [1, 2, 4, 8], [1, 2, 7, 2], [5, 7, 9], [7, 7], [8, 4, 14, 7]),
    "small": _hiera([96, 192, 384, 768], [1, 2, 4, 8], [1, 2, 11, 2], [7, 10, 13], [7, 7],
                    [8, 4, 14, 7]),
    "base-plus": _hiera([112, 224, 448, 896], [2, 4, 8, 16], [2, 3, 16, 3], [12, 16, 20],
                        [14, 14], [8, 4, 14, 7]),
    "large": _hiera([144, 288, 576, 1152], [2, 4, 8, 16], [2, 6, 36, 4], [23, 33, 43], [7, 7],
                    [8, 4, 16, 8]),
    "test": {
        **_hiera([16, 32, 64, 128], [1, 1, 2, 2], [1, 1, 2, 1], [3], [4, 4], [4, 4, 4, 2], size=256),
        "fpn_hidden_size": 64, "decoder_mlp_dim": 128, "decoder_heads": 2, "iou_hidden": 64,
    },
}


def sam2_config(arch: str | dict = "tiny"):
    """A transformers ``Sam2Config`` for one of :data:`SAM2_ARCHS` (or such a dict)."""
    Sam2Config = transformers_class("Sam2Config")

    if isinstance(arch, str):
        if arch not in SAM2_ARCHS:
            raise ValueError(f"unknown SAM 2 architecture {arch!r}; known: {list(SAM2_ARCHS)}")
        arch = SAM2_ARCHS[arch]
    a = deepcopy(arch)
    size = int(a["image_size"])
    fpn = int(a.get("fpn_hidden_size", 256))
    return Sam2Config(
        vision_config={
            "model_type": "sam2_vision_model",
            "backbone_config": a["backbone"],
            "backbone_channel_list": a["backbone_channel_list"],
            "backbone_feature_sizes": [[size // s, size // s] for s in (4, 8, 16)],
            "fpn_hidden_size": fpn,
        },
        prompt_encoder_config={"hidden_size": fpn, "image_size": size, "patch_size": 16},
        mask_decoder_config={
            "hidden_size": fpn,
            "mlp_dim": int(a.get("decoder_mlp_dim", 2048)),
            "num_attention_heads": int(a.get("decoder_heads", 8)),
            "iou_head_hidden_dim": int(a.get("iou_hidden", 256)),
        },
    )


class _Sam2Model(torch.nn.Module):
    """What ``SamPredictor.model`` offers that the package uses: ``image_encoder`` (hooked by
    :class:`~medclipsam.sam_session.SamSession` to count encoder runs) and ``image_format``."""

    image_format = "RGB"

    def __init__(self, hf_model: torch.nn.Module) -> None:
        super().__init__()
        self.hf = hf_model

    @property
    def image_encoder(self) -> torch.nn.Module:
        return self.hf.vision_encoder


class Sam2Predictor:
    """SAM 2 with segment_anything's ``SamPredictor`` interface.

    ``set_image(image)``: an ``(H, W, 3)`` uint8 RGB image (grey ``(H, W)`` is replicated); runs
    the image encoder once and keeps its features. ``predict(point_coords=(P, 2), point_labels=(P,),
    box=(4,), multimask_output=True)``: NumPy in, NumPy out, coordinates in image pixels; returns
    masks ``(C, H, W)`` bool, predicted IoU ``(C,)`` and low-resolution logits ``(C, 256, 256)``
    (C = 3 with ``multimask_output``, else 1). ``predict_torch`` takes batched prompts already in
    the model's input coordinates (``transform.apply_coords_torch`` / ``apply_boxes_torch``):
    coords ``(N, P, 2)``, labels ``(N, P)``, boxes ``(N, 4)``; returns ``(N, C, H, W)``,
    ``(N, C)``, ``(N, C, 256, 256)``. Label 1 positive, 0 negative, -1 padding.
    """

    def __init__(self, hf_model: torch.nn.Module, *, image_mean=_IMAGENET_MEAN,
                 image_std=_IMAGENET_STD, name: str = "sam2") -> None:
        self.hf = hf_model.eval()
        self.model = _Sam2Model(self.hf)
        self.name = name
        self.image_size = int(self.hf.config.prompt_encoder_config.image_size)
        self.transform = StretchTransform(self.image_size)  # MedSAM's per-axis resize: SAM 2's too
        self._mean = torch.tensor(image_mean, dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.tensor(image_std, dtype=torch.float32).view(1, 3, 1, 1)
        self.reset_image()

    def __repr__(self) -> str:
        return f"Sam2Predictor({self.name!r}, image_size={self.image_size})"

    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    def to(self, device: Any) -> Sam2Predictor:
        self.hf.to(get_device(device))
        self.reset_image()
        return self

    def reset_image(self) -> None:
        self.features: list[torch.Tensor] | None = None
        self.is_image_set = False
        self.original_size: tuple[int, int] | None = None
        self.input_size: tuple[int, int] | None = None

    @torch.no_grad()
    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        img = np.asarray(image)
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=-1)
        if img.ndim != 3 or img.shape[-1] not in (3, 4) or img.shape[0] == 0 or img.shape[1] == 0:
            raise ValueError(f"expected an (H, W) or (H, W, 3) image, got shape {img.shape}")
        img = img[..., :3]
        if image_format.upper() == "BGR":
            img = img[..., ::-1]
        if img.dtype != np.uint8:
            raise ValueError(f"expected a uint8 image, got {img.dtype} (see medclipsam.data.convert.to_uint8)")
        s = self.image_size
        x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float() / 255.0
        x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        x = (x - self._mean) / self._std
        param = next(self.hf.parameters())
        self.features = self.hf.get_image_embeddings(x.to(param.device, param.dtype))
        self.original_size = (int(img.shape[0]), int(img.shape[1]))
        self.input_size = (s, s)
        self.is_image_set = True

    def get_image_embedding(self) -> torch.Tensor:
        """The lowest-resolution image embedding ``(1, 256, 64, 64)`` (SAM 2 also keeps two
        higher-resolution feature maps for its mask decoder)."""
        if not self.is_image_set:
            raise RuntimeError("no image set: call set_image(image) first")
        return self.features[-1]

    @torch.no_grad()
    def predict_torch(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not self.is_image_set:
            raise RuntimeError("no image set: call set_image(image) before predict")
        if mask_input is not None:
            raise NotImplementedError("mask_input (a refinement pass) is not supported for SAM 2 here")
        if point_coords is None and boxes is None:
            raise ValueError("give point_coords (with point_labels), boxes, or both")
        dev = self.device
        kwargs: dict[str, Any] = {}
        if point_coords is not None:
            if point_labels is None:
                raise ValueError("point_coords need point_labels")
            kwargs["input_points"] = point_coords.to(dev, torch.float32)[None]
            kwargs["input_labels"] = point_labels.to(dev, torch.int64)[None]
        if boxes is not None:
            kwargs["input_boxes"] = boxes.to(dev, torch.float32).reshape(1, -1, 4)
        out = self.hf(image_embeddings=self.features, multimask_output=bool(multimask_output), **kwargs)
        low = out.pred_masks[0].float()  # (N, C, 4g, 4g)
        iou = out.iou_scores[0].float()  # (N, C)
        masks = F.interpolate(low, size=self.original_size, mode="bilinear", align_corners=False)
        if not return_logits:
            masks = masks > 0.0
        return masks, iou, low

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One prompt (points and/or one box) in image pixels; see the class doc."""
        if not self.is_image_set:
            raise RuntimeError("no image set: call set_image(image) before predict")
        coords = labels = boxes = None
        if point_coords is not None:
            if point_labels is None:
                raise ValueError("point_coords need point_labels")
            c = torch.as_tensor(np.asarray(point_coords, dtype=np.float32))
            coords = self.transform.apply_coords_torch(c, self.original_size)[None]
            labels = torch.as_tensor(np.asarray(point_labels, dtype=np.int64))[None]
        if box is not None:
            b = torch.as_tensor(np.asarray(box, dtype=np.float32)).reshape(-1, 4)
            boxes = self.transform.apply_boxes_torch(b, self.original_size)[:1]
        masks, iou, low = self.predict_torch(
            coords, labels, boxes, mask_input if mask_input is None else torch.as_tensor(mask_input),
            multimask_output, return_logits,
        )
        return masks[0].cpu().numpy(), iou[0].cpu().numpy(), low[0].cpu().numpy()


# --------------------------------------------------------------------------------------------
# building and loading


def build_sam2(arch: str | dict = "tiny", *, device: Any = "cpu", seed: int | None = 0) -> Sam2Predictor:
    """A SAM 2 predictor with **random** weights (tests, smoke runs, timing): ``arch`` is one of
    :data:`SAM2_ARCHS` (``"test"`` is a tiny 256 x 256 model) or such a dict."""
    Sam2Model = transformers_class("Sam2Model")

    if seed is not None:
        torch.manual_seed(seed)
    model = Sam2Model(sam2_config(arch)).eval()
    return Sam2Predictor(model.to(get_device(device)), name=f"sam2-{arch}-random"
                         if isinstance(arch, str) else "sam2-random")


def is_sam2(name_or_path: str | os.PathLike) -> bool:
    """True for a :data:`SAM2_MODELS` name, ``"medsam2"``, a ``facebook/sam2...`` hub id, or a
    folder whose ``config.json`` is a SAM 2 one."""
    text = os.fspath(name_or_path)
    if text.lower() in SAM2_MODELS or text.lower() == "medsam2":
        return True
    path = Path(text).expanduser()
    if path.is_dir():
        cfg = path / "config.json"
        if cfg.is_file():
            try:
                return json.loads(cfg.read_text()).get("model_type") in ("sam2", "sam2_video")
            except (ValueError, OSError):
                return False
        return False
    return text.startswith("facebook/sam2")


def _read_config(folder: Path):
    """The folder's config as a ``Sam2Config``: a ``sam2_video`` config (Meta's repositories)
    contributes its image part (vision, prompt encoder, mask decoder)."""
    Sam2Config = transformers_class("Sam2Config")


    raw = json.loads((folder / "config.json").read_text())
    kind = raw.get("model_type")
    if kind not in ("sam2", "sam2_video"):
        raise HubModelError(
            f"{folder / 'config.json'}: model_type {kind!r} is not SAM 2 ('sam2' or 'sam2_video')"
        )

    def part(key: str) -> dict:
        d = dict(raw.get(key) or {})
        if key != "vision_config":
            d.pop("model_type", None)  # sam2_video_prompt_encoder -> the image model's own
        return d

    return Sam2Config(
        vision_config=part("vision_config"),
        prompt_encoder_config=part("prompt_encoder_config"),
        mask_decoder_config=part("mask_decoder_config"),
    )


def _normalisation(folder: Path) -> tuple[tuple, tuple]:
    p = folder / "preprocessor_config.json"
    if p.is_file():
        cfg = json.loads(p.read_text())
        return tuple(cfg.get("image_mean", _IMAGENET_MEAN)), tuple(cfg.get("image_std", _IMAGENET_STD))
    return _IMAGENET_MEAN, _IMAGENET_STD


def load_sam2(
    name_or_path: str | os.PathLike = "sam2-hiera-tiny",
    *,
    device: Any = "auto",
    revision: str | None = None,
    download: bool = True,
) -> Sam2Predictor:
    """Load SAM 2 weights (a :data:`SAM2_MODELS` name, a hub repository id, or a local
    transformers-format folder), verified (see :mod:`medclipsam.models._hub`), as a
    :class:`Sam2Predictor`. ``download=False`` (or ``HF_HUB_OFFLINE`` / ``MEDCLIPSAM_OFFLINE``)
    uses only the local Hugging Face cache; the error then says what to fetch and where."""
    Sam2Model = transformers_class("Sam2Model")

    text = os.fspath(name_or_path)
    if text.lower() == "medsam2":
        raise FileNotFoundError(MEDSAM2_HELP)
    repo = SAM2_MODELS.get(text.lower(), text)
    folder = model_folder(repo, revision=revision, download=download)
    config = _read_config(folder)
    for f in weight_files(folder):
        verify_weight_file(f)
    model, info = Sam2Model.from_pretrained(folder, config=config, output_loading_info=True)
    check_loading_info(info, f"SAM 2 {repo}")
    mean, std = _normalisation(folder)
    return Sam2Predictor(model.to(get_device(device)).eval(), image_mean=mean, image_std=std,
                         name=text)
