"""Figures: overlays of masks, saliency maps and boxes on images, and sample grids.

Plain functions that return numpy images or matplotlib figures, so notebooks, the CLI and tests use
the same drawing code. Nothing here opens a window (the CLI uses the Agg backend).
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from ._utils import atomic_path
from .data.convert import to_unit_float

__all__ = ["mask_outline", "overlay", "result_figure", "result_panels", "sample_grid", "save_figure"]


def mask_outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """The boundary pixels of a binary mask (inside pixels that touch the outside), ``width`` thick."""
    m = np.asarray(mask, dtype=bool)
    if not m.any():
        return m
    eroded = ndimage.binary_erosion(m, iterations=width, border_value=0)
    return m & ~eroded


def overlay(
    image: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    saliency: np.ndarray | None = None,
    outline: np.ndarray | None = None,
    boxes: Sequence[Sequence[float]] | None = None,
    mask_color: tuple[int, int, int] = (255, 64, 64),
    outline_color: tuple[int, int, int] = (64, 255, 64),
    box_color: tuple[int, int, int] = (255, 215, 0),
    alpha: float = 0.35,
    saliency_alpha: float = 0.5,
) -> np.ndarray:
    """Draw a filled mask, a saliency heat map, a second mask's outline and boxes onto an image.

    ``image``: any array, PIL image or tensor, drawn as the picture every model sees
    (:func:`medclipsam.data.convert.to_unit_float`: a 16-bit scan from its percentile range, not
    divided by 65535); ``mask`` and ``outline`` are (H, W) bool;
    ``saliency`` is (H, W) float in [0, 1] (drawn with matplotlib's ``jet``); boxes are
    ``(x0, y0, x1, y1)`` in pixel coordinates. Returns an (H, W, 3) uint8 image.
    """
    out = to_unit_float(image, "rgb")
    h, w = out.shape[:2]
    if saliency is not None:
        from matplotlib import colormaps

        s = np.clip(np.asarray(saliency, dtype=np.float32), 0.0, 1.0)
        if s.shape != (h, w):
            raise ValueError(f"saliency has shape {s.shape}, image has {(h, w)}")
        heat = colormaps["jet"](s)[..., :3]
        out = (1 - saliency_alpha) * out + saliency_alpha * heat
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        if m.shape != (h, w):
            raise ValueError(f"mask has shape {m.shape}, image has {(h, w)}")
        col = np.array(mask_color, dtype=np.float32) / 255.0
        out[m] = (1 - alpha) * out[m] + alpha * col
        out[mask_outline(m)] = col
    if outline is not None:
        o = mask_outline(np.asarray(outline, dtype=bool), width=max(1, min(h, w) // 200))
        out[o] = np.array(outline_color, dtype=np.float32) / 255.0
    if boxes is not None:
        col = np.array(box_color, dtype=np.float32) / 255.0
        t = max(1, min(h, w) // 150)
        for box in boxes:
            x0, y0, x1, y1 = (int(round(v)) for v in box)
            x0, x1 = sorted((max(0, min(w - 1, x0)), max(0, min(w - 1, x1))))
            y0, y1 = sorted((max(0, min(h - 1, y0)), max(0, min(h - 1, y1))))
            out[y0 : y0 + t, x0 : x1 + 1] = col
            out[max(y1 - t + 1, 0) : y1 + 1, x0 : x1 + 1] = col
            out[y0 : y1 + 1, x0 : x0 + t] = col
            out[y0 : y1 + 1, max(x1 - t + 1, 0) : x1 + 1] = col
    return (np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8)


#: Colours of the figures (RGB 0-255), named for legends.
COLOURS = {
    "SAM mask": (255, 64, 64),
    "ground truth (outline)": (64, 255, 64),
    "box prompt": (255, 215, 0),
    "coarse mask": (64, 160, 255),
    "positive point": (0, 255, 255),
    "negative point": (255, 0, 255),
}
#: The legend of :func:`result_panels`' pictures.
PROMPT_LEGEND = tuple(COLOURS)


def _decorate(fig, colorbar: bool, legend: Sequence[str] | None, suptitle: str | None) -> None:
    """Room for, and then, a saliency colour bar (right) and a colour legend (bottom)."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    fig.tight_layout(rect=(0, 0.07 if legend else 0, 0.93 if colorbar else 1, 0.95 if suptitle else 1))
    if colorbar:
        cax = fig.add_axes((0.945, 0.2, 0.012, 0.6))
        sm = plt.cm.ScalarMappable(cmap="jet", norm=plt.Normalize(0, 1))
        fig.colorbar(sm, cax=cax).set_label("saliency (0 = low, 1 = high)", fontsize=8)
        cax.tick_params(labelsize=7)
    if legend:
        handles = [Patch(color=np.array(COLOURS[k]) / 255.0, label=k) for k in legend]
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8,
                   frameon=False)


def sample_grid(
    images: Sequence[np.ndarray],
    titles: Sequence[str] | None = None,
    *,
    ncols: int = 4,
    cell_size: float = 3.0,
    suptitle: str | None = None,
    wrap: int = 38,
    colorbar: bool = False,
    legend: Sequence[str] | None = None,
):
    """A matplotlib figure showing ``images`` in a grid with wrapped titles; returns the figure.

    ``colorbar``: add the saliency colour bar (``jet`` over [0, 1], as :func:`overlay` draws
    maps); ``legend``: names from :data:`COLOURS` to explain below the grid."""
    import matplotlib.pyplot as plt

    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = max(1, -(-n // ncols))
    wrapped = [textwrap.fill(t, wrap) for t in titles] if titles is not None else []
    lines = max((t.count("\n") + 1 for t in wrapped), default=0)
    # each row gets the image's height plus room for its tallest title (8 pt lines and a margin)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(cell_size * ncols, nrows * (cell_size + 0.15 * lines + 0.15)), squeeze=False
    )
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        img = np.asarray(images[i])
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255 if img.dtype == np.uint8 else None)
        if wrapped:
            ax.set_title(wrapped[i], fontsize=8)
    if suptitle:
        fig.suptitle(suptitle)
    _decorate(fig, colorbar, legend, suptitle)
    if lines and nrows > 1:  # tight_layout leaves too little room for titles above square images
        fig.subplots_adjust(hspace=(0.14 * lines + 0.12) / cell_size)
    return fig


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Save a figure atomically (PNG by suffix) and close it."""
    import matplotlib.pyplot as plt


    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path


def result_panels(image: np.ndarray, result, gt: np.ndarray | None = None) -> list[tuple[str, np.ndarray]]:
    """The stages of one :class:`~medclipsam.pipeline.SegmentationResult` as titled panels:
    image, saliency, coarse mask with SAM's boxes and points, SAM's mask (with the ground truth's outline
    when ``gt`` is given)."""
    boxes = None if result.boxes is None else list(result.boxes)
    sam_prompts = overlay(image, result.coarse_mask, boxes=boxes, mask_color=COLOURS["coarse mask"])
    if result.points is not None:
        h, w = sam_prompts.shape[:2]
        r = max(1, min(h, w) // 80)
        for group, labels in zip(result.points, result.point_labels):
            for (x, y), lab in zip(group, labels):
                if lab < 0:
                    continue
                col = COLOURS["positive point" if lab == 1 else "negative point"]
                yi, xi = int(round(y)), int(round(x))
                sam_prompts[max(0, yi - r) : yi + r + 1, max(0, xi - r) : xi + r + 1] = col
    final = overlay(image, result.mask, outline=gt, boxes=boxes)
    flags = f" [{' '.join(result.flags)}]" if result.flags else ""
    return [
        ("image", overlay(image)),
        (f"saliency: {result.prompt!r}", overlay(image, saliency=result.saliency)),
        ("coarse mask + SAM prompts" + flags, sam_prompts),
        (f"SAM mask (score {result.sam_score:.2f})" + (" vs ground truth" if gt is not None else ""), final),
    ]


def result_figure(image: np.ndarray, result, gt: np.ndarray | None = None, *, cell_size: float = 3.0):
    """A one-row figure of :func:`result_panels` (what ``medclipsam demo`` and notebooks draw)."""
    panels = result_panels(image, result, gt)
    legend = [k for k in PROMPT_LEGEND if gt is not None or k != "ground truth (outline)"]
    return sample_grid([p for _, p in panels], [t for t, _ in panels], ncols=len(panels),
                       cell_size=cell_size, colorbar=True, legend=legend)
