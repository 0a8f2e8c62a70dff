"""Loading CLIP models (BiomedCLIP, other open_clip models, our own checkpoints) and preparing
images for them without misaligning non-square images.

``load_clip(name_or_path)`` accepts

* ``"biomedclip"``: ``hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224`` through
  open_clip (the Hugging Face hub, or its local cache when ``HF_HUB_OFFLINE=1``);
* any ``"hf-hub:org/repo"`` open_clip identifier;
* a local open_clip / Hugging Face snapshot folder (``open_clip_config.json`` beside
  ``open_clip_model.safetensors`` or ``open_clip_pytorch_model.bin``: what ``hf download
  microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224 --local-dir DIR`` writes), given as the
  folder's path or as ``"local-dir:PATH"`` (open_clip's spelling). BiomedCLIP's text tower still
  needs its text encoder's config and vocabulary from the Hugging Face cache (or a folder named
  by ``hf_model_name`` in the config);
* an open_clip built-in name, optionally with a pretrained tag: ``"ViT-B-16"``,
  ``"ViT-B-16:openai"``;
* a checkpoint file: ours (written by :func:`save_clip_checkpoint`: a dict with ``model_config``
  and/or ``model_name``, ``state_dict``, ``preprocess_cfg`` and ``meta``) or a plain state dict for
  the BiomedCLIP architecture, e.g. the MedCLIP-SAM authors' fine-tuned weights (an open_clip
  training checkpoint's ``{"state_dict": ...}`` wrapper and DDP ``module.`` prefixes are handled);
* ``"toy"``: the small model trained on the phantom world (``medclipsam/weights/toy_clip.pt``).
* ``"toy-dhn-nce"``: that model fine-tuned with DHN-NCE on phantom pairs (``medclipsam/weights/toy_clip_dhn_nce.pt``,
  made by ``scripts/finetune_toy_clip.py``).

Preprocessing. open_clip's evaluation transform resizes the short side and centre-crops, and the
reference implementation stretches the saliency map of that crop back over the whole image: on a
non-square image every map is then misplaced. :func:`prepare_image` letterboxes instead (``"pad"``:
the whole image, scaled to fit, centred on black) or stretches (``"resize"``), or crops like
open_clip (``"crop"``), and returns a :class:`Geometry` that maps model-space maps, boxes and
points back to the original image exactly.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Callable, Sequence
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from huggingface_hub import constants as hf_constants
from huggingface_hub import hf_hub_download
from open_clip import get_model_preprocess_cfg
from open_clip.coca_model import CoCa
from open_clip.model import CLIP, CustomTextCLIP
from open_clip.tokenizer import HFTokenizer
from safetensors.torch import load_file as load_safetensors

from .._utils import atomic_path, checkpoint_error_detail, get_device
from ..data.convert import to_unit_float
from ._state import state_mismatch
from .tokenizer import WordTokenizer
from .toy_vit import register_toy_vit

__all__ = [
    "BIOMEDCLIP_HUB_ID",
    "CHECKPOINT_FORMAT",
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "CheckpointError",
    "ClipBundle",
    "Geometry",
    "HubFilesMissingError",
    "LetterboxTransform",
    "load_clip",
    "prepare_image",
    "save_clip_checkpoint",
]

log = logging.getLogger(__name__)

BIOMEDCLIP_REPO = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
BIOMEDCLIP_HUB_ID = "hf-hub:" + BIOMEDCLIP_REPO
#: OpenAI CLIP's normalisation, which BiomedCLIP's ``preprocess_cfg`` uses too.
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: The ``format`` entry of checkpoints written by :func:`save_clip_checkpoint`.
CHECKPOINT_FORMAT = "medclipsam-clip/1"
_ALIASES = {"biomedclip": BIOMEDCLIP_HUB_ID}
#: The CLIPs shipped in the package (the offline world): name -> (file in medclipsam/weights, the
#: script that makes it). ``toy``: trained on phantom captions; ``toy-dhn-nce``: ``toy`` fine-tuned
#: with DHN-NCE (stage 1 of the method, lesson 02).
TOY_CLIPS = {"toy": ("toy_clip.pt", "scripts/train_toy_models.py"),
             "toy-dhn-nce": ("toy_clip_dhn_nce.pt", "scripts/finetune_toy_clip.py")}
_WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
_HUB_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
_MODES = ("pad", "resize", "crop")


class CheckpointError(ValueError):
    """A checkpoint file cannot be read or does not fit the architecture (the message names it)."""


class HubFilesMissingError(FileNotFoundError):
    """Files of a Hugging Face hub model are neither in the local cache nor downloadable."""


# --------------------------------------------------------------------------------------------
# images and geometry


@dataclass(frozen=True)
class Geometry:
    """How an (H, W) image was placed in the S x S model input, and the way back.

    A point (x, y) of the image (pixel units, edges at integers) sits at
    ``(x * scale_x + offset_x, y * scale_y + offset_y)`` in the model input. ``content_box`` is
    the part of the model input that shows the image (x0, y0, x1, y1); outside it is padding.
    """

    image_size: tuple[int, int]  # (H, W) of the original image
    model_size: int  # S
    mode: str  # "pad", "resize" or "crop"
    scale_x: float
    scale_y: float
    offset_x: float
    offset_y: float

    @property
    def content_box(self) -> tuple[float, float, float, float]:
        """The image's area in model coordinates, clipped to the model input."""
        h, w = self.image_size
        s = float(self.model_size)
        x0, y0 = self.offset_x, self.offset_y
        x1, y1 = x0 + w * self.scale_x, y0 + h * self.scale_y
        return (max(x0, 0.0), max(y0, 0.0), min(x1, s), min(y1, s))

    def points_to_image(self, points: Any) -> np.ndarray:
        """(N, 2) model-space (x, y) points -> image-space points (not clipped)."""
        p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        return np.stack(
            [(p[:, 0] - self.offset_x) / self.scale_x, (p[:, 1] - self.offset_y) / self.scale_y],
            axis=1,
        )

    def points_to_model(self, points: Any) -> np.ndarray:
        """(N, 2) image-space (x, y) points -> model-space points."""
        p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        return np.stack(
            [p[:, 0] * self.scale_x + self.offset_x, p[:, 1] * self.scale_y + self.offset_y],
            axis=1,
        )

    def box_to_image(self, box: Any) -> np.ndarray:
        """Model-space box(es) (x0, y0, x1, y1) -> image-space boxes clipped to the image."""
        b = np.asarray(box, dtype=np.float64)
        single = b.ndim == 1
        b = b.reshape(-1, 4)
        p0 = self.points_to_image(b[:, :2])
        p1 = self.points_to_image(b[:, 2:])
        h, w = self.image_size
        out = np.concatenate([p0, p1], axis=1)
        out[:, [0, 2]] = out[:, [0, 2]].clip(0, w)
        out[:, [1, 3]] = out[:, [1, 3]].clip(0, h)
        return out[0] if single else out

    def box_to_model(self, box: Any) -> np.ndarray:
        """Image-space box(es) (x0, y0, x1, y1) -> model-space boxes."""
        b = np.asarray(box, dtype=np.float64)
        single = b.ndim == 1
        b = b.reshape(-1, 4)
        out = np.concatenate([self.points_to_model(b[:, :2]), self.points_to_model(b[:, 2:])], 1)
        return out[0] if single else out

    def to_image(self, map_2d: Any, mode: str = "bilinear", fill: float = 0.0) -> Any:
        """Resample a model-space map onto the original (H, W) image grid.

        ``map_2d`` (h, w) or (..., h, w), NumPy or torch, at any resolution (a 14 x 14 token grid
        or a 224 x 224 map): it is taken to cover the whole S x S model input. Padding is cut off
        and the rest resized back; image pixels the model never saw (``"crop"`` mode) get
        ``fill``. ``mode``: ``"bilinear"`` or ``"nearest"`` (for label maps). Returns the same
        type as given, float32.
        """
        if mode not in ("bilinear", "nearest"):
            raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
        is_numpy = not isinstance(map_2d, torch.Tensor)
        t = torch.as_tensor(np.asarray(map_2d) if is_numpy else map_2d).float()
        if t.ndim < 2:
            raise ValueError(f"expected a map of shape (h, w) or (..., h, w), got {tuple(t.shape)}")
        lead = t.shape[:-2]
        t = t.reshape(1, -1, *t.shape[-2:])
        h, w = self.image_size
        s = float(self.model_size)
        # Centres of the image's pixels, in model coordinates, then in grid_sample's [-1, 1].
        xs = ((torch.arange(w, dtype=torch.float64) + 0.5) * self.scale_x + self.offset_x) / s
        ys = ((torch.arange(h, dtype=torch.float64) + 0.5) * self.scale_y + self.offset_y) / s
        gy, gx = torch.meshgrid(ys * 2 - 1, xs * 2 - 1, indexing="ij")
        grid = torch.stack([gx, gy], dim=-1).float()[None].to(t.device)
        out = F.grid_sample(t, grid, mode=mode, padding_mode="border", align_corners=False)
        outside = (grid[..., 0].abs() > 1) | (grid[..., 1].abs() > 1)
        if bool(outside.any()):
            out = out.masked_fill(outside[:, None], float(fill))
        out = out.reshape(*lead, h, w)
        return out.cpu().numpy() if is_numpy else out


def _geometry(height: int, width: int, size: int, mode: str) -> tuple[Geometry, int, int]:
    """Geometry for an (height, width) image, and the size (h', w') it is resized to first."""
    if mode == "resize":
        return Geometry((height, width), size, mode, size / width, size / height, 0, 0), size, size
    scale = size / (max(height, width) if mode == "pad" else min(height, width))
    new_h = max(1, round(height * scale))
    new_w = max(1, round(width * scale))
    if mode == "pad":
        ox, oy = (size - new_w) // 2, (size - new_h) // 2
    else:  # crop, rounded like torchvision's CenterCrop
        ox, oy = -round((new_w - size) / 2.0), -round((new_h - size) / 2.0)
    geom = Geometry((height, width), size, mode, new_w / width, new_h / height, ox, oy)
    return geom, new_h, new_w


def prepare_image(
    image: Any,
    size: int,
    mode: str = "pad",
    mean: Sequence[float] = OPENAI_CLIP_MEAN,
    std: Sequence[float] = OPENAI_CLIP_STD,
) -> tuple[torch.Tensor, Geometry]:
    """Image -> normalised model input (3, size, size) and the :class:`Geometry` to map back.

    ``mode``: ``"pad"`` (default) scales the longer side to ``size`` and centres the image on
    black, so nothing is cut or distorted; ``"resize"`` stretches to a square; ``"crop"`` is
    open_clip's resize-short-side-then-centre-crop (parts of the image are not seen).
    ``image``: an array, PIL image or tensor, made a [0, 1] RGB picture by the package's one rule
    (:func:`medclipsam.data.convert.to_unit_float`: uint8 / 255, other types from their
    percentile range).
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    rgb = torch.from_numpy(to_unit_float(image, "rgb")).permute(2, 0, 1).contiguous()
    _, height, width = rgb.shape
    geom, new_h, new_w = _geometry(height, width, int(size), mode)
    x = rgb[None]
    if (new_h, new_w) != (height, width):
        x = F.interpolate(
            x, size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False
        ).clamp_(0.0, 1.0)
    canvas = x.new_zeros(1, 3, size, size)
    ox, oy = int(geom.offset_x), int(geom.offset_y)
    # Paste the resized image at (ox, oy), cutting what falls outside (crop mode).
    sx0, sy0 = max(0, -ox), max(0, -oy)
    dx0, dy0 = max(0, ox), max(0, oy)
    cw, ch = min(new_w - sx0, size - dx0), min(new_h - sy0, size - dy0)
    canvas[..., dy0 : dy0 + ch, dx0 : dx0 + cw] = x[..., sy0 : sy0 + ch, sx0 : sx0 + cw]
    m = torch.tensor(mean, dtype=canvas.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=canvas.dtype).view(1, 3, 1, 1)
    return ((canvas - m) / s)[0], geom


class LetterboxTransform:
    """A callable preprocessing transform (image -> (3, S, S) tensor) that keeps the geometry.

    Drop-in for open_clip's ``preprocess`` (``preprocess(img).unsqueeze(0)``); use
    :meth:`prepare` to also get the :class:`Geometry` for mapping saliency maps back.
    """

    def __init__(
        self,
        size: int,
        mean: Sequence[float] = OPENAI_CLIP_MEAN,
        std: Sequence[float] = OPENAI_CLIP_STD,
        mode: str = "pad",
    ) -> None:
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
        self.size = int(size)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.mode = mode

    def prepare(self, image: Any, mode: str | None = None) -> tuple[torch.Tensor, Geometry]:
        """(tensor, geometry) for ``image``; ``mode`` overrides the transform's own."""
        return prepare_image(image, self.size, mode or self.mode, self.mean, self.std)

    def __call__(self, image: Any) -> torch.Tensor:
        return self.prepare(image)[0]

    def __repr__(self) -> str:
        return f"LetterboxTransform(size={self.size}, mode={self.mode!r})"


# --------------------------------------------------------------------------------------------
# the ClipBundle: a CLIP model with everything needed to feed it (called ``clip`` everywhere)


@dataclass
class ClipBundle:
    """A CLIP model with everything needed to feed it.

    ``preprocess`` is a :class:`LetterboxTransform`; ``tokenizer(texts)`` gives a (B,
    ``context_length``) LongTensor. ``model_config`` is the open_clip model config the model was
    built from (saved in checkpoints so they rebuild without the hub); ``source`` the open_clip
    identifier; ``pretrained`` says whether real weights were loaded (False: random weights).
    The ``encode_*`` helpers follow the caller's grad mode (wrap them in ``torch.no_grad()`` for
    inference).
    """

    model: torch.nn.Module
    preprocess: LetterboxTransform
    tokenizer: Callable[..., torch.Tensor]
    name: str
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    context_length: int
    model_config: dict | None = None
    source: str | None = None
    pretrained: bool = True
    preprocess_cfg: dict = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def prepare(self, image: Any, mode: str | None = None) -> tuple[torch.Tensor, Geometry]:
        """One image -> (model input (3, S, S), :class:`Geometry`)."""
        return self.preprocess.prepare(image, mode)

    def tokenize(self, texts: str | Sequence[str]) -> torch.Tensor:
        """Text(s) -> token ids (B, context_length) on the model's device."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        return self.tokenizer(texts).to(self.device)

    def encode_image(self, images: Any, normalize: bool = True) -> torch.Tensor:
        """Image features (B, D). ``images``: a preprocessed (B, 3, S, S) tensor, or one image or
        a list of images in any form :func:`medclipsam.data.convert.as_array` accepts."""
        if isinstance(images, torch.Tensor) and images.ndim == 4:
            batch = images
        else:
            items = images if isinstance(images, (list, tuple)) else [images]
            batch = torch.stack([self.preprocess(im) for im in items])
        return self.model.encode_image(batch.to(self.device), normalize=normalize)

    def encode_text(self, texts: str | Sequence[str], normalize: bool = True) -> torch.Tensor:
        """Text features (B, D) (padding trimmed where that changes nothing: :func:`trim_padding`)."""
        return self.model.encode_text(trim_padding(self.model, self.tokenize(texts)), normalize=normalize)


def trim_padding(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """``tokens`` without the trailing columns that are padding in every row, for text towers
    whose attention mask makes padding inert (open_clip's Hugging Face towers, such as
    BiomedCLIP's PubMedBERT): the same features to float rounding for a fraction of the work (a
    short prompt uses a handful of BiomedCLIP's 256 context positions). Other towers (open_clip's
    own text transformer, the toy's) get ``tokens`` unchanged."""
    text = getattr(model, "text", None)
    pad = getattr(getattr(text, "config", None), "pad_token_id", None)
    if type(text).__name__ != "HFTextEncoder" or pad is None or tokens.ndim != 2:
        return tokens
    used = (tokens != pad).any(0).nonzero()
    return tokens[:, : int(used.max()) + 1 if len(used) else 1]


# --------------------------------------------------------------------------------------------
# Hugging Face hub helpers


def _hub_cache_folder() -> str:
    return str(hf_constants.HF_HUB_CACHE)


def _hub_offline() -> bool:
    return bool(hf_constants.HF_HUB_OFFLINE)


def _hub_file(repo_id: str, filename: str) -> str | None:
    """Local path of ``filename`` of hub repo ``repo_id`` (from the cache, or downloaded); None if
    it cannot be had (offline and not cached, missing upstream, no network)."""
    try:
        return hf_hub_download(repo_id=repo_id, filename=filename)
    except Exception as e:  # offline, not found, network: all mean "not available here"
        log.info("hub file %s/%s not available: %s", repo_id, filename, e)
        return None


def _hub_help(repo_id: str, filename: str, purpose: str) -> str:
    how = (
        "HF_HUB_OFFLINE=1 forbids downloading it (unset it on a machine with network access)"
        if _hub_offline()
        else "downloading it failed (no network, or no access to huggingface.co)"
    )
    return (
        f"{purpose}: {filename} of the Hugging Face repo {repo_id!r} is not in the local "
        f"Hugging Face cache ({_hub_cache_folder()}) and {how}.\n"
        f"To fix: on a machine with network access run `hf download {repo_id}` (or load the "
        "model once there), then copy its Hugging Face cache folder (HF_HOME, default "
        "~/.cache/huggingface) to this machine, or point HF_HOME / HF_HUB_CACHE at a copy."
    )


def _hf_text_repos(model_cfg: dict) -> list[str]:
    text_cfg = model_cfg.get("text_cfg", {})
    names = [text_cfg.get("hf_model_name"), text_cfg.get("hf_tokenizer_name")]
    return list(dict.fromkeys(n for n in names if n))


def _check_text_tower_files(model_cfg: dict, model_label: str) -> None:
    """The HF text tower needs its repo's config.json even for random weights: check it first."""
    for repo in _hf_text_repos(model_cfg):
        if not os.path.isdir(repo) and _hub_file(repo, "config.json") is None:
            raise HubFilesMissingError(
                _hub_help(repo, "config.json", f"{model_label}'s text encoder ({repo})")
            )


def _make_tokenizer(model_cfg: dict, fallback_name: str | None = None) -> Callable:
    """The tokenizer a model config asks for (HF tokenizer or open_clip's SimpleTokenizer)."""
    text_cfg = model_cfg.get("text_cfg", {})
    context_length = int(text_cfg.get("context_length", 77))
    hf_name = text_cfg.get("hf_tokenizer_name")
    if hf_name:
        try:
            kwargs = dict(text_cfg.get("tokenizer_kwargs") or {})
            if text_cfg.get("tokenizer_mode"):
                kwargs["tokenizer_mode"] = text_cfg["tokenizer_mode"]
            return HFTokenizer(hf_name, context_length=context_length, **kwargs)
        except Exception as e:
            raise HubFilesMissingError(
                _hub_help(hf_name, "the tokenizer files (vocab.txt, ...)", "The text tokenizer")
                + f"\n(transformers said: {type(e).__name__}: {e})"
            ) from e
    if fallback_name:
        return open_clip.get_tokenizer(fallback_name, context_length=context_length)
    return open_clip.SimpleTokenizer(context_length=context_length)


# --------------------------------------------------------------------------------------------
# building and loading


def _build_from_config(model_cfg: dict) -> torch.nn.Module:
    """Instantiate an open_clip model (random weights) from a model config dict."""
    cfg = deepcopy(model_cfg)
    vision_cfg = cfg.setdefault("vision_cfg", {})
    text_cfg = cfg.setdefault("text_cfg", {})
    if "timm_model_name" in vision_cfg:
        vision_cfg["timm_model_pretrained"] = False
        if str(vision_cfg["timm_model_name"]).startswith("medclipsam_"):
            register_toy_vit()  # the toy CLIP's trunk is not one of timm's own models
    hf_text = "hf_model_name" in text_cfg
    if hf_text:
        text_cfg["hf_model_pretrained"] = False
    custom_text = cfg.pop("custom_text", False) or hf_text
    cls = CoCa if "multimodal_cfg" in cfg else CustomTextCLIP if custom_text else CLIP
    return cls(**cfg)


def _clean_state_dict(obj: Any, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Unwrap {"state_dict"|"model": ...}, strip DDP/compile prefixes, fit small shape quirks."""
    sd = obj
    for key in ("state_dict", "model", "module"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise TypeError("not a state dict (a mapping of parameter names to tensors)")
    out = {}
    for k, v in sd.items():
        for prefix in ("module.", "_orig_mod."):
            while k.startswith(prefix):
                k = k[len(prefix) :]
        out[k] = v
    own = model.state_dict()
    pos_key = "text.transformer.embeddings.position_ids"
    if pos_key in out and pos_key not in own:
        del out[pos_key]  # a buffer newer transformers versions no longer save
    for key in ("logit_scale", "logit_bias"):
        if key in out and key in own and out[key].shape != own[key].shape:
            out[key] = out[key].reshape(own[key].shape)
    return out


def _load_state(model: torch.nn.Module, sd: dict, path: Path, what: str) -> None:
    problem = state_mismatch(model, sd)
    if problem:
        raise CheckpointError(f"{path}: the weights do not fit {what}: {problem} parameters.")
    model.load_state_dict(sd, strict=True)


def _read_checkpoint(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        detail = checkpoint_error_detail(e, path)
        if detail.startswith("it holds pickled"):
            raise CheckpointError(f"{path}: refused: {detail}.") from None
        if detail.startswith("torch.load(weights_only=True)"):
            raise CheckpointError(f"{path}: cannot read this checkpoint: {detail}.") from None
        raise CheckpointError(
            f"{path}: cannot read this checkpoint ({detail}). "
            "The file may be truncated or corrupt, or not a PyTorch checkpoint; checkpoints are "
            "loaded with torch.load(weights_only=True), which refuses pickled code."
        ) from e


def _unreadable_weights(files: Sequence[Path], label: str) -> CheckpointError | None:
    """Why the first of ``files`` (the one open_clip loads: ``.safetensors`` before ``.bin``)
    cannot be read safely, as a :class:`CheckpointError` naming it; None when it reads. Called
    after open_clip failed, to tell a refused or corrupt file from weights that do not fit."""
    if not files:
        return None
    path = Path(files[0])
    try:
        if path.suffix == ".safetensors":
            load_safetensors(str(path))
        else:
            _read_checkpoint(path)
    except CheckpointError as e:
        return CheckpointError(f"{e} (the weights of {label})")
    except Exception as e:  # noqa: BLE001 - safetensors' own error type, OSError, ...
        return CheckpointError(
            f"{path}: cannot read this weight file ({checkpoint_error_detail(e, path)}); it is truncated "
            f"or corrupt, or not a .safetensors file (the weights of {label}). Download it again, "
            "or delete it to use the other weight file"
        )
    return None


def _create_open_clip(spec: str, load_weights: bool, weights: Sequence[Path], label: str) -> torch.nn.Module:
    """``open_clip.create_model(spec)`` with its failures in the user's words: a weight file that
    is refused (pickled code) or unreadable is named with what to do instead; weights that do not
    fit the configuration say so."""
    try:
        return open_clip.create_model(spec, load_weights=load_weights, pretrained_text=False)
    except Exception as e:
        problem = _unreadable_weights(weights, label) if load_weights else None
        if problem is not None:
            raise problem from None
        if not isinstance(e, (RuntimeError, ValueError, KeyError)):
            raise
        if load_weights and weights:
            raise CheckpointError(
                f"{weights[0]}: the weights do not fit the architecture of {label} in its "
                f"open_clip_config.json ({type(e).__name__}: {str(e)[:300]})"
            ) from e
        raise CheckpointError(
            f"cannot build {label} from its open_clip_config.json ({type(e).__name__}: "
            f"{str(e)[:300]})"
        ) from e


def _preprocess_values(model: torch.nn.Module, preprocess_cfg: dict | None) -> dict:
    cfg = dict(get_model_preprocess_cfg(model))
    cfg.update(preprocess_cfg or {})
    size = cfg.get("size", getattr(getattr(model, "visual", None), "image_size", 224))
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise ValueError(f"non-square model input size {size} is not supported")
        size = size[0]
    cfg["size"] = int(size)
    cfg["mean"] = tuple(float(v) for v in cfg.get("mean", OPENAI_CLIP_MEAN))
    cfg["std"] = tuple(float(v) for v in cfg.get("std", OPENAI_CLIP_STD))
    return cfg


def _bundle(
    model: torch.nn.Module,
    tokenizer: Callable,
    name: str,
    device: Any,
    model_config: dict | None,
    source: str | None,
    pretrained: bool,
    preprocess_cfg: dict | None = None,
    mode: str = "pad",
) -> ClipBundle:
    cfg = _preprocess_values(model, preprocess_cfg)
    model = model.to(get_device(device)).eval()
    context_length = int(
        getattr(tokenizer, "context_length", None)
        or (model_config or {}).get("text_cfg", {}).get("context_length", 77)
    )
    return ClipBundle(
        model=model,
        preprocess=LetterboxTransform(cfg["size"], cfg["mean"], cfg["std"], mode=mode),
        tokenizer=tokenizer,
        name=name,
        image_size=cfg["size"],
        mean=cfg["mean"],
        std=cfg["std"],
        context_length=context_length,
        model_config=deepcopy(model_config) if model_config is not None else None,
        source=source,
        pretrained=pretrained,
        preprocess_cfg=_jsonable(cfg),
    )


def _jsonable(obj: Any) -> Any:
    """Round-trip through JSON: plain lists/dicts/str/numbers only (safe for weights_only)."""
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def _load_hub(repo_id: str, name: str, device: Any, pretrained: bool, mode: str) -> ClipBundle:
    label = f"CLIP model {name!r}" if name != repo_id else f"hf-hub:{repo_id}"
    config_path = _hub_file(repo_id, "open_clip_config.json")
    if config_path is None:
        raise HubFilesMissingError(
            _hub_help(repo_id, "open_clip_config.json", f"Cannot build {label}")
        )
    try:
        hub_cfg = json.loads(Path(config_path).read_text(encoding="utf-8"))
        model_cfg = hub_cfg["model_cfg"]
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{config_path}: not a valid open_clip_config.json ({e})") from e
    _check_text_tower_files(model_cfg, label)

    cached = [Path(f) for f in (_hub_file(repo_id, n) for n in _HUB_WEIGHT_FILES) if f]
    have_weights = pretrained and bool(cached)
    if pretrained and not have_weights:
        warnings.warn(
            f"The weights of {label} ({' or '.join(_HUB_WEIGHT_FILES)} in the Hugging Face repo "
            f"{repo_id!r}) are not in the local cache ({_hub_cache_folder()}) and could not be "
            "downloaded: the model has RANDOM weights, so its scores and saliency maps mean "
            "nothing. Run once with network access (or copy the Hugging Face cache) to fix this.",
            UserWarning,
            stacklevel=3,
        )
    model = _create_open_clip(f"hf-hub:{repo_id}", have_weights, cached, label)
    tokenizer = _make_tokenizer(model_cfg, fallback_name=f"hf-hub:{repo_id}")
    return _bundle(
        model,
        tokenizer,
        name,
        device,
        model_cfg,
        f"hf-hub:{repo_id}",
        bool(have_weights),
        hub_cfg.get("preprocess_cfg"),
        mode,
    )


def _load_local_dir(folder: Path, name: str, device: Any, pretrained: bool, mode: str) -> ClipBundle:
    """An open_clip model from a local folder (a hub snapshot): config + weights, no network."""
    config_path = folder / "open_clip_config.json"
    if not config_path.is_file():
        present = sorted(p.name for p in folder.iterdir())[:12]
        raise CheckpointError(
            f"{folder}: not an open_clip model folder: it has no open_clip_config.json "
            f"(it holds {present or 'nothing'}). A Hugging Face snapshot of an open_clip model "
            "(e.g. `hf download microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224 "
            "--local-dir DIR`) has one; a checkpoint file is passed by its own path."
        )
    try:
        folder_cfg = json.loads(config_path.read_text(encoding="utf-8"))
        model_cfg = folder_cfg["model_cfg"]
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{config_path}: not a valid open_clip_config.json ({e})") from e
    label = f"the CLIP model in {folder}"
    _check_text_tower_files(model_cfg, label)
    weights = [folder / f for f in _HUB_WEIGHT_FILES if (folder / f).is_file()]
    have_weights = pretrained and bool(weights)
    if pretrained and not weights:
        warnings.warn(
            f"{folder} has open_clip_config.json but no weights ({' or '.join(_HUB_WEIGHT_FILES)}): "
            "the model has RANDOM weights, so its scores and saliency maps mean nothing. Copy "
            "the weight file into the folder to fix this.",
            UserWarning,
            stacklevel=3,
        )
    spec = f"local-dir:{folder}"
    model = _create_open_clip(spec, have_weights, weights, label)
    tokenizer = _make_tokenizer(model_cfg, fallback_name=spec)
    return _bundle(
        model, tokenizer, name, device, model_cfg, spec, bool(have_weights),
        folder_cfg.get("preprocess_cfg"), mode,
    )


def _load_builtin(spec: str, name: str, device: Any, pretrained: bool, mode: str) -> ClipBundle:
    model_name, _, tag = spec.partition(":")
    model_cfg = open_clip.get_model_config(model_name)
    if model_cfg is None:
        raise ValueError(
            f"unknown CLIP model {spec!r}: not 'biomedclip', 'toy', an 'hf-hub:' id, an "
            f"existing checkpoint file or model folder ('local-dir:PATH'), or an open_clip "
            f"model name (open_clip.list_models())"
        )
    tags = open_clip.list_pretrained_tags_by_model(model_name)
    if pretrained and not tag:
        if not tags:
            raise ValueError(
                f"open_clip has no pretrained weights for {model_name!r}; "
                "use pretrained=False for random weights"
            )
        tag = "openai" if "openai" in tags else tags[0]
        log.info("no pretrained tag given for %s: using %r", model_name, tag)
    quick_gelu = bool(model_cfg.get("quick_gelu", False))
    if pretrained:
        tag_cfg = open_clip.get_pretrained_cfg(model_name, tag)
        if not tag_cfg:
            raise ValueError(f"{model_name!r} has no pretrained tag {tag!r}; known: {tags}")
        quick_gelu = bool(tag_cfg.get("quick_gelu", quick_gelu))
        try:
            model = open_clip.create_model(
                model_name, pretrained=tag, force_quick_gelu=quick_gelu, pretrained_text=False
            )
        except RuntimeError as e:
            raise HubFilesMissingError(
                f"Cannot get the {model_name}:{tag} weights ({e}). open_clip downloads them from "
                f"the Hugging Face hub ({tag_cfg.get('hf_hub') or tag_cfg.get('url')}); run once "
                "with network access, or copy the Hugging Face cache folder to this machine."
            ) from e
        name = f"{model_name}:{tag}"
    else:
        model = open_clip.create_model(model_name, pretrained=None, pretrained_text=False)
    model_cfg["quick_gelu"] = quick_gelu
    _check_text_tower_files(model_cfg, model_name)
    tokenizer = _make_tokenizer(model_cfg, fallback_name=model_name)
    return _bundle(model, tokenizer, name, device, model_cfg, model_name, pretrained, None, mode)


def _load_file(
    path: Path, device: Any, pretrained: bool, arch: str, mode: str, name: str | None = None
) -> ClipBundle:
    obj = _read_checkpoint(path)
    ours = (
        isinstance(obj, dict)
        and "state_dict" in obj
        and ("model_config" in obj or "model_name" in obj)
    )
    if ours:
        model_cfg = obj.get("model_config")
        source = obj.get("model_name")
        if model_cfg is not None:
            _check_text_tower_files(model_cfg, f"the checkpoint {path}")
            model = _build_from_config(model_cfg)
        else:
            model = open_clip.create_model(
                source, pretrained=None, load_weights=False, pretrained_text=False
            )
            model_cfg = open_clip.get_model_config(source)
        try:
            sd = _clean_state_dict(obj["state_dict"], model)
        except TypeError as e:
            raise CheckpointError(f"{path}: 'state_dict' entry is {e}") from e
        _load_state(model, sd, path, f"the architecture saved in {path.name}")
        if isinstance(obj.get("tokenizer"), dict):
            tokenizer = WordTokenizer.from_config(obj["tokenizer"])
        else:
            tokenizer = _make_tokenizer(model_cfg or {}, fallback_name=source)
        return _bundle(
            model,
            tokenizer,
            name or path.stem,
            device,
            model_cfg,
            source,
            True,
            obj.get("preprocess_cfg"),
            mode,
        )

    # A plain state dict (or a training checkpoint wrapping one) for the ``arch`` architecture.
    neither = (f"{path}: neither a medclipsam CLIP checkpoint (a dict with 'model_config' or "
               f"'model_name' and 'state_dict') nor a state dict for {arch!r}")
    try:
        _clean_state_dict(obj, torch.nn.Module())  # the shape of the file, before building arch
    except TypeError as e:
        raise CheckpointError(f"{neither}: {e}") from e
    try:
        base = load_clip(arch, device="cpu", pretrained=False, preprocess_mode=mode)
    except (FileNotFoundError, ValueError) as e:
        raise CheckpointError(
            f"{path}: a plain state dict without its architecture, read as {arch!r} (pass arch= "
            f"for another), which cannot be built here: {e}"
        ) from e
    sd = _clean_state_dict(obj, base.model)
    _load_state(base.model, sd, path, f"the {arch} architecture")
    base.model.to(get_device(device))
    base.name = name or path.stem
    base.pretrained = True
    return base


def load_clip(
    name_or_path: str | os.PathLike,
    *,
    device: Any = "auto",
    pretrained: bool = True,
    arch: str = "biomedclip",
    preprocess_mode: str = "pad",
) -> ClipBundle:
    """Load a CLIP model and everything needed to feed it; see the module docstring for names.

    ``pretrained=False`` builds the architecture with random weights (no weight download).
    ``arch`` is the architecture a plain state-dict file is loaded into. ``preprocess_mode`` is
    the default of the clip's :class:`LetterboxTransform` (``"pad"``, ``"resize"``, ``"crop"``).
    Raises :class:`HubFilesMissingError` when hub configuration files are neither cached nor
    downloadable, and :class:`CheckpointError` for unreadable or mismatching checkpoint files.
    Hub weights that are missing while the configuration is there give random weights and a
    warning (``clip.pretrained`` is then False).
    """
    if preprocess_mode not in _MODES:
        raise ValueError(f"preprocess_mode must be one of {_MODES}, got {preprocess_mode!r}")
    text = os.fspath(name_or_path)
    if text in TOY_CLIPS:
        toy = _WEIGHTS_DIR / TOY_CLIPS[text][0]
        if not toy.is_file():
            raise FileNotFoundError(
                f"the {text!r} CLIP weights are missing from this installation (expected {toy}); "
                f"reinstall medclipsam, or make them again with {TOY_CLIPS[text][1]}"
            )
        return _load_file(toy, device, True, arch, preprocess_mode, name=text)
    if text.startswith("local-dir:"):
        folder = Path(text[len("local-dir:") :]).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"CLIP model folder not found: {folder} (from {text!r})")
        return _load_local_dir(folder, folder.name, device, pretrained, preprocess_mode)
    path = Path(text).expanduser()
    if path.is_file():
        return _load_file(path, device, pretrained, arch, preprocess_mode)
    key = _ALIASES.get(text.lower(), text)
    if key.startswith("hf-hub:"):
        name = text.lower() if text.lower() in _ALIASES else key
        return _load_hub(key[len("hf-hub:") :], name, device, pretrained, preprocess_mode)
    if path.is_dir():  # after the aliases: a folder named "biomedclip" does not shadow the hub id
        return _load_local_dir(path, path.name, device, pretrained, preprocess_mode)
    if os.sep in text or path.suffix in (".pt", ".pth", ".bin", ".ckpt", ".safetensors"):
        raise FileNotFoundError(f"CLIP checkpoint not found: {path}")
    return _load_builtin(text, text, device, pretrained, preprocess_mode)


def save_clip_checkpoint(
    clip_or_model: ClipBundle | torch.nn.Module,
    path: str | os.PathLike,
    *,
    model_name: str | None = None,
    model_config: dict | None = None,
    preprocess_cfg: dict | None = None,
    tokenizer: Any = None,
    **meta: Any,
) -> Path:
    """Write a self-describing CLIP checkpoint that :func:`load_clip` reads back.

    The file is a dict: ``format`` (``CHECKPOINT_FORMAT``), ``model_name`` (the open_clip
    identifier, informative), ``model_config`` (the open_clip model config, used to rebuild the
    architecture without the hub), ``preprocess_cfg`` (size, mean, std), ``state_dict`` (CPU
    tensors) and ``meta`` (``**meta``: JSON-compatible values such as epoch or loss). A bare
    model needs ``model_name`` or ``model_config``. Written atomically; loadable with
    ``torch.load(weights_only=True)``. A tokenizer with a ``to_config()`` (the toy CLIP's
    :class:`~medclipsam.models.tokenizer.WordTokenizer`) is stored too and used when loading.
    """
    if isinstance(clip_or_model, ClipBundle):
        model = clip_or_model.model
        tokenizer = tokenizer or clip_or_model.tokenizer
        model_name = model_name or clip_or_model.source
        model_config = model_config or clip_or_model.model_config
        preprocess_cfg = preprocess_cfg or clip_or_model.preprocess_cfg
    elif isinstance(clip_or_model, torch.nn.Module):
        model = clip_or_model
        if model_config is None and model_name is not None:
            if not model_name.startswith("hf-hub:"):
                model_config = open_clip.get_model_config(model_name)
    else:
        raise TypeError(f"expected a ClipBundle or a torch module, got {type(clip_or_model)}")
    if model_config is None and model_name is None:
        raise ValueError("save_clip_checkpoint: a bare model needs model_name= or model_config=")
    try:
        json.dumps(meta)
        json.dumps(model_config)
    except TypeError as e:
        raise TypeError(
            f"save_clip_checkpoint: meta and model_config must be JSON-compatible ({e})"
        ) from e
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model_name": model_name,
        "model_config": deepcopy(model_config),
        "preprocess_cfg": _jsonable(_preprocess_values(model, preprocess_cfg)),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "meta": meta,
    }
    if payload["model_config"] is None:
        del payload["model_config"]
    if hasattr(tokenizer, "to_config"):
        payload["tokenizer"] = tokenizer.to_config()
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path
