"""Where to hook a CLIP image tower, and how to turn that layer's output into a 2D grid.

One place decides this for every architecture the project loads:

* open_clip's own ``VisionTransformer`` (``visual.transformer.resblocks``): tokens ``[B, N, C]``
  with ``N = prefix + g*g``;
* timm trunks inside open_clip (BiomedCLIP: ``visual.trunk.blocks``), same token layout;
* open_clip's ``ModifiedResNet``: a conv feature map ``[B, C, h, w]`` (no reshape needed).

The default layer is one whose patch tokens reach the output. With CLS-token pooling (BiomedCLIP,
open_clip's default ViTs) the patch tokens of the *last* block's output, and of its second
LayerNorm, never reach the image embedding: their gradient is exactly zero. The last block's first
LayerNorm (input to its attention, which the CLS token reads) does reach it; the toy CLIP is built
the same way (a timm trunk pooled at the CLS token), so the same layer is hooked on both. With
average pooling (open_clip ViTs with ``pool_type="avg"``) the last block's output is used directly.
``preset="reference"`` gives the public
reference code's layer (``visual.trunk.blocks[-1].norm2``) to reproduce the paper.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["TargetLayer", "resolve_target_layer", "tokens_to_grid"]


@dataclass
class TargetLayer:
    """A module to hook, the patch grid of its output and how many prefix tokens to drop."""

    module: torch.nn.Module
    name: str
    grid: tuple[int, int] | None  # None: the output already is a [B, C, h, w] map
    prefix_tokens: int = 0

    def to_grid(self, out: torch.Tensor) -> torch.Tensor:
        """This layer's output -> ``[B, C, h, w]``."""
        if self.grid is None:
            return out
        return tokens_to_grid(out, self.grid, self.prefix_tokens)


def tokens_to_grid(tokens: torch.Tensor, grid: tuple[int, int], prefix_tokens: int | None = None) -> torch.Tensor:
    """``[B, N, C]`` tokens -> ``[B, C, gh, gw]``, dropping the ``N - gh*gw`` prefix tokens
    (CLS, registers) at the front unless ``prefix_tokens`` says otherwise."""
    if tokens.ndim != 3:
        raise ValueError(f"expected tokens [B, N, C], got shape {tuple(tokens.shape)}")
    gh, gw = grid
    n = tokens.shape[1]
    prefix = n - gh * gw if prefix_tokens is None else prefix_tokens
    if prefix < 0 or n - prefix != gh * gw:
        raise ValueError(f"{n} tokens do not hold a {gh}x{gw} grid after {prefix} prefix tokens")
    t = tokens[:, prefix:]
    return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], gh, gw)


def _grid_of(size, patch) -> tuple[int, int]:
    size = (size, size) if isinstance(size, int) else tuple(size)
    patch = (patch, patch) if isinstance(patch, int) else tuple(patch)
    return size[0] // patch[0], size[1] // patch[1]


def resolve_target_layer(model: torch.nn.Module, layer: str | None = None, preset: str = "default") -> TargetLayer:
    """Find the layer to hook in a CLIP model's image tower.

    ``layer`` is a dotted path below the CLIP model (``"visual.transformer.resblocks.10"``);
    without it, ``preset`` chooses: ``"default"`` (patch tokens reach the output) or
    ``"reference"`` (the reference code's ``blocks[-1].norm2``, timm trunks only).
    """
    visual = getattr(model, "visual", model)
    if hasattr(visual, "trunk") and hasattr(visual.trunk, "blocks"):  # timm ViT (BiomedCLIP)
        trunk = visual.trunk
        grid = tuple(trunk.patch_embed.grid_size)
        prefix = int(getattr(trunk, "num_prefix_tokens", 1))
        if layer is None:
            if preset == "reference":
                name, module = "visual.trunk.blocks[-1].norm2", trunk.blocks[-1].norm2
            else:
                name, module = "visual.trunk.blocks[-1].norm1", trunk.blocks[-1].norm1
            return TargetLayer(module, name, grid, prefix)
    elif hasattr(visual, "transformer") and hasattr(visual.transformer, "resblocks"):  # open_clip ViT
        grid = _grid_of(visual.image_size, visual.patch_size)
        prefix = 1
        if layer is None:
            if preset == "reference":
                raise ValueError("the 'reference' preset names a timm layer; this is an open_clip ViT")
            last = visual.transformer.resblocks[-1]
            if getattr(visual, "pool_type", "tok") == "avg" and getattr(visual, "attn_pool", None) is None:
                return TargetLayer(last, "visual.transformer.resblocks[-1]", grid, prefix)
            return TargetLayer(last.ln_1, "visual.transformer.resblocks[-1].ln_1", grid, prefix)
    elif hasattr(visual, "layer4"):  # open_clip ModifiedResNet
        if layer is None:
            return TargetLayer(visual.layer4, "visual.layer4", None, 0)
        grid, prefix = None, 0
    else:
        raise ValueError(
            f"don't know where to hook a {type(visual).__name__} image tower; pass layer= with a "
            "dotted module path such as 'visual.transformer.resblocks.11.ln_1'"
        )
    module = model
    for part in layer.replace("[", ".").replace("]", "").split("."):
        if not part:
            continue
        module = module[int(part)] if part.lstrip("-").isdigit() else getattr(module, part)
    return TargetLayer(module, layer, grid, prefix)
