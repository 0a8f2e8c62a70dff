"""SAM 3 (Segment Anything with Concepts, Meta 2025): a short text phrase in, masks out.

SAM 3 detects and segments every instance of a *concept* named by a noun phrase ("lesion",
"lung"), with no box or point: the baseline MedCLIP-SAM's saliency-to-box chain has to beat.
:class:`Sam3TextModel` wraps transformers' ``Sam3Model`` (the image detector; the video tracker
is not loaded): ``set_image`` runs the vision encoder once per image (cached, counted in
``encoder_calls``), ``segment(text)`` returns every instance SAM 3 scores above ``threshold``
with masks and boxes in image pixels, plus its semantic-segmentation map.

Conventions (those of SAM 3's processor): the image is resized to 1008 x 1008 without keeping the
aspect ratio and normalised with mean 0.5 and std 0.5; the text is CLIP-tokenised to 32 tokens; an
instance's score is ``sigmoid(logit) * sigmoid(presence)`` (the presence head says whether the
concept is in the image at all); masks are upsampled (bilinear) to the image size and cut at
probability 0.5. The detection threshold defaults to 0.5, SAM 3's own
(``score_threshold_detection``).

The weights are **gated** on the Hugging Face hub (``facebook/sam3``): request access there
first (see :data:`SAM3_GATED_HELP`); :func:`load_sam3` says so when the files are missing.
:func:`build_sam3` makes the same architecture with random weights (``"test"``: a tiny one), with
open_clip's copy of the CLIP tokenizer (the vocabulary SAM 3's text encoder uses), for tests and
smoke runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
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

__all__ = [
    "SAM3_ARCHS",
    "SAM3_GATED_HELP",
    "SAM3_REPO",
    "Sam3Output",
    "Sam3TextModel",
    "build_sam3",
    "load_sam3",
    "sam3_config",
]

SAM3_REPO = "facebook/sam3"
SAM3_GATED_HELP = (
    "SAM 3's weights are gated: open https://huggingface.co/facebook/sam3 in a browser while "
    "logged in to Hugging Face, accept the SAM licence and wait until access is granted (the "
    "page says so). Then, on a machine with network access, log in with `hf auth login` (or set "
    "HF_TOKEN to an access token) and the files download on first use."
)
TEXT_LENGTH = 32  # SAM 3's processor pads every phrase to 32 CLIP tokens

#: ``"full"``: SAM 3 as published (Sam3Config's defaults); ``"test"``: the same architecture
#: shrunk to a 224 x 224 input and a few layers (random weights only: tests, smoke runs).
SAM3_ARCHS: dict[str, dict[str, Any]] = {
    "full": {},
    "test": {
        "vision_config": {
            "backbone_config": {
                "model_type": "sam3_vit_model", "hidden_size": 64, "intermediate_size": 128,
                "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 224,
                "patch_size": 14, "window_size": 8, "global_attn_indexes": [1],
                "pretrain_image_size": 224,
            },
            "fpn_hidden_size": 32,
            "backbone_feature_sizes": [[64, 64], [32, 32], [16, 16]],
        },
        "text_config": {
            "model_type": "clip_text_model", "vocab_size": 49408, "hidden_size": 32,
            "intermediate_size": 64, "projection_dim": 32, "num_hidden_layers": 1,
            "num_attention_heads": 2, "max_position_embeddings": TEXT_LENGTH,
        },
        "geometry_encoder_config": {"hidden_size": 32, "num_layers": 1, "num_attention_heads": 2,
                                    "intermediate_size": 64},
        "detr_encoder_config": {"hidden_size": 32, "num_layers": 1, "num_attention_heads": 2,
                                "intermediate_size": 64},
        "detr_decoder_config": {"hidden_size": 32, "num_layers": 1, "num_attention_heads": 2,
                                "intermediate_size": 64, "num_queries": 10},
        "mask_decoder_config": {"hidden_size": 32, "num_attention_heads": 2},
    },
}


def sam3_config(arch: str | dict = "full"):
    """A transformers ``Sam3Config`` for one of :data:`SAM3_ARCHS` (or a dict of its fields)."""
    Sam3Config = transformers_class("Sam3Config")

    if isinstance(arch, str):
        if arch not in SAM3_ARCHS:
            raise ValueError(f"unknown SAM 3 architecture {arch!r}; known: {list(SAM3_ARCHS)}")
        arch = SAM3_ARCHS[arch]
    return Sam3Config(**json.loads(json.dumps(arch)))


@dataclass
class Sam3Output:
    """What SAM 3 found for one phrase in one image (image pixel coordinates).

    ``masks``: ``(K, H, W)`` bool, the K instances scored above the threshold, best first;
    ``scores``: ``(K,)``; ``boxes``: ``(K, 4)`` xyxy; ``semantic``: ``(H, W)`` float32 in [0, 1],
    SAM 3's semantic-segmentation map for the phrase; ``presence``: SAM 3's probability that the
    concept is in the image; ``best_score``: the highest instance score, kept or not."""

    masks: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray
    semantic: np.ndarray
    presence: float
    best_score: float
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def mask(self) -> np.ndarray:
        """The union of the kept instances (all False when none was kept)."""
        if len(self.masks) == 0:
            return np.zeros(self.semantic.shape, dtype=bool)
        return self.masks.any(axis=0)


class _Tokenizer:
    """Texts -> (input_ids, attention_mask), 32 tokens, from a transformers tokenizer or
    open_clip's CLIP tokenizer."""

    def __init__(self, hf_tokenizer: Any = None) -> None:
        self.hf = hf_tokenizer
        if hf_tokenizer is None:
            self.oc = open_clip.SimpleTokenizer(context_length=TEXT_LENGTH)

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.hf is not None:
            enc = self.hf(texts, padding="max_length", max_length=TEXT_LENGTH, truncation=True,
                          return_tensors="pt")
            return enc["input_ids"], enc["attention_mask"]
        ids = self.oc(texts)
        return ids, (ids != 0).long()


class Sam3TextModel:
    """SAM 3 as a text-prompted segmenter (see the module doc). ``set_image`` then ``segment``."""

    def __init__(self, hf_model: torch.nn.Module, tokenizer: Callable | None = None, *,
                 image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5), name: str = "sam3") -> None:
        self.hf = hf_model.eval()
        self.tokenize = tokenizer if tokenizer is not None else _Tokenizer()
        self.name = name
        size = self.hf.config.vision_config.backbone_config.image_size
        self.image_size = int(size[0] if isinstance(size, (list, tuple)) else size)
        self._mean = torch.tensor(image_mean, dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.tensor(image_std, dtype=torch.float32).view(1, 3, 1, 1)
        self.encoder_calls = 0
        self._key: str | None = None
        self._vision: Any = None
        self._shape: tuple[int, int] | None = None
        self._text_cache: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"Sam3TextModel({self.name!r}, image_size={self.image_size})"

    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    @property
    def image_shape(self) -> tuple[int, int] | None:
        return self._shape

    @torch.no_grad()
    def set_image(self, image: np.ndarray) -> bool:
        """Run the vision encoder on an ``(H, W, 3)`` uint8 RGB image (grey is replicated) and
        keep its features; returns False, computing nothing, for the pixels already set."""
        img = np.asarray(image)
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=-1)
        if img.ndim != 3 or img.shape[-1] not in (3, 4) or img.dtype != np.uint8 or 0 in img.shape:
            raise ValueError(f"expected an (H, W) or (H, W, 3) uint8 image, got {img.shape} {img.dtype}")
        img = np.ascontiguousarray(img[..., :3])
        digest = hashlib.blake2b(img.tobytes(), digest_size=16)
        digest.update(repr(img.shape).encode())
        key = digest.hexdigest()
        if key == self._key:
            return False
        s = self.image_size
        x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255.0
        x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        x = (x - self._mean) / self._std
        param = next(self.hf.parameters())
        self._vision = self.hf.get_vision_features(pixel_values=x.to(param.device, param.dtype))
        self.encoder_calls += 1
        self._key, self._shape = key, (int(img.shape[0]), int(img.shape[1]))
        return True

    @torch.no_grad()
    def _text(self, text: str) -> tuple[Any, torch.Tensor]:
        if text not in self._text_cache:
            ids, mask = self.tokenize([text])
            ids, mask = ids.to(self.device), mask.to(self.device)
            emb = self.hf.get_text_features(input_ids=ids, attention_mask=mask, return_dict=True)
            if len(self._text_cache) >= 64:
                self._text_cache.clear()
            self._text_cache[text] = (emb, mask)
        return self._text_cache[text]

    @torch.no_grad()
    def segment(self, text: str, *, threshold: float = 0.5, mask_threshold: float = 0.5) -> Sam3Output:
        """Every instance of ``text`` in the image set, scored above ``threshold``."""
        if self._shape is None:
            raise RuntimeError("no image set: call set_image(image) first")
        if not isinstance(text, str) or not text.strip():
            raise ValueError("SAM 3 needs a non-empty text phrase")
        t0 = time.perf_counter()
        emb, mask = self._text(text.strip())
        t1 = time.perf_counter()
        out = self.hf(vision_embeds=self._vision, text_embeds=emb, attention_mask=mask)
        h, w = self._shape
        scores = out.pred_logits[0].float().sigmoid()
        presence = torch.ones((), device=scores.device)
        if out.presence_logits is not None:
            presence = out.presence_logits[0].float().sigmoid().reshape(-1)[0]
        scores = scores * presence
        order = torch.argsort(scores, descending=True)
        keep = order[scores[order] > threshold]
        masks = out.pred_masks[0, keep].float()
        if len(keep):
            masks = F.interpolate(masks[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        masks_np = (masks.sigmoid() > mask_threshold).cpu().numpy().reshape(len(keep), h, w)
        boxes = out.pred_boxes[0, keep].float().cpu().numpy().reshape(-1, 4)
        boxes = np.clip(boxes * np.array([w, h, w, h], dtype=np.float32), 0, [w, h, w, h])
        sem = F.interpolate(out.semantic_seg.float(), size=(h, w), mode="bilinear", align_corners=False)
        sem_np = sem[0, 0].sigmoid().cpu().numpy().astype(np.float32)
        t2 = time.perf_counter()
        return Sam3Output(
            masks=masks_np, scores=scores[keep].cpu().numpy(), boxes=boxes, semantic=sem_np,
            presence=float(presence), best_score=float(scores.max()) if scores.numel() else 0.0,
            timings={"text": t1 - t0, "decode": t2 - t1},
        )


# --------------------------------------------------------------------------------------------
# building and loading


def build_sam3(arch: str | dict = "test", *, device: Any = "cpu", seed: int | None = 0) -> Sam3TextModel:
    """SAM 3 with **random** weights (tests, smoke runs, timing) and open_clip's CLIP tokenizer."""
    Sam3Model = transformers_class("Sam3Model")

    if seed is not None:
        torch.manual_seed(seed)
    model = Sam3Model(sam3_config(arch)).eval().to(get_device(device))
    return Sam3TextModel(model, name=f"sam3-{arch}-random" if isinstance(arch, str) else "sam3-random")


def _read_config(folder: Path):
    """The folder's config as a ``Sam3Config``; a ``sam3_video`` config (the hub repository)
    contributes its detector part."""
    Sam3Config = transformers_class("Sam3Config")

    raw = json.loads((folder / "config.json").read_text())
    kind = raw.get("model_type")
    if kind == "sam3_video":
        raw = dict(raw.get("detector_config") or {})
    elif kind != "sam3":
        raise HubModelError(f"{folder / 'config.json'}: model_type {kind!r} is not SAM 3 ('sam3' or 'sam3_video')")
    raw.pop("model_type", None)
    raw.pop("architectures", None)
    return Sam3Config(**{k: v for k, v in raw.items() if not k.startswith("_")})


def load_sam3(
    name_or_path: str | os.PathLike = SAM3_REPO,
    *,
    device: Any = "auto",
    revision: str | None = None,
    download: bool = True,
) -> Sam3TextModel:
    """Load SAM 3 (``facebook/sam3`` on the hub by default, or a local transformers-format folder
    with its tokenizer files), verified (see :mod:`medclipsam.models._hub`). A missing or
    refused download raises an error with :data:`SAM3_GATED_HELP` and where to put the files."""
    from transformers import AutoTokenizer

    Sam3Model = transformers_class("Sam3Model")

    text = os.fspath(name_or_path)
    repo = SAM3_REPO if text.lower() in ("sam3", "sam3-text") else text
    folder = model_folder(repo, revision=revision, gated=SAM3_GATED_HELP, download=download)
    config = _read_config(folder)
    for f in weight_files(folder):
        verify_weight_file(f)
    model, info = Sam3Model.from_pretrained(folder, config=config, output_loading_info=True)
    check_loading_info(info, f"SAM 3 {repo}")
    try:
        tok = AutoTokenizer.from_pretrained(folder)
    except Exception as e:
        raise HubModelError(
            f"{folder}: SAM 3's tokenizer files (tokenizer.json or vocab.json + merges.txt) "
            f"cannot be read ({type(e).__name__}: {e})"
        ) from e
    mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    pre = folder / "preprocessor_config.json"
    if pre.is_file():
        p = json.loads(pre.read_text())
        p = p.get("image_processor", p)
        mean, std = tuple(p.get("image_mean", mean)), tuple(p.get("image_std", std))
    return Sam3TextModel(model.to(get_device(device)).eval(), _Tokenizer(tok), image_mean=mean,
                         image_std=std, name=text)

