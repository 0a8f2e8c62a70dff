"""Figures: overlays of masks, saliency maps and boxes on images, and sample grids.

Plain functions that return numpy images or matplotlib figures, so notebooks, the CLI and tests use
the same drawing code. Nothing here opens a window (the CLI uses the Agg backend).
"""

from __future__ import annotations

import html
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from ._utils import atomic_path
from .data.convert import to_unit_float

__all__ = [
    "COLOURS", "PROMPT_LEGEND", "SALIENCY_CMAP", "SALIENCY_LABEL", "draw_points", "legend_handles", "legend_html",
    "mask_outline", "overlay", "result_figure", "result_panels", "sample_grid", "save_figure",
]

#: The one colour legend of every figure (RGB 0-255): a SAM mask is a filled region, the ground truth
#: an outline, a coarse mask a hatched region with its outline, a box prompt a rectangle and a point
#: prompt a square with a black rim. Saliency maps use :data:`SALIENCY_CMAP` over [0, 1].
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
#: The colour map of saliency maps (:func:`overlay`) and of the colour bar (:func:`sample_grid`).
SALIENCY_CMAP = "jet"
#: The label of the saliency colour bar.
SALIENCY_LABEL = "saliency (0 = low, 1 = high)"


def mask_outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """The boundary pixels of a binary mask (inside pixels that touch the outside), ``width`` thick."""
    m = np.asarray(mask, dtype=bool)
    if not m.any():
        return m
    eroded = ndimage.binary_erosion(m, iterations=width, border_value=0)
    return m & ~eroded


def _rgb(colour: Sequence[int]) -> np.ndarray:
    return np.asarray(colour, dtype=np.float32) / 255.0


def _fill(out: np.ndarray, mask, colour, alpha: float, *, hatch: bool = False,
          width: int = 1, what: str = "mask") -> None:
    """Tint ``mask``'s pixels of ``out`` (float RGB) with ``colour`` and draw its outline, ``width``
    thick; ``hatch`` adds diagonal stripes in the full colour (visible on a black background too)."""
    h, w = out.shape[:2]
    m = np.asarray(mask, dtype=bool)
    if m.shape != (h, w):
        raise ValueError(f"{what} has shape {m.shape}, image has {(h, w)}")
    col = _rgb(colour)
    out[m] = (1 - alpha) * out[m] + alpha * col
    if hatch:
        period = max(4, min(h, w) // 40)
        rr, cc = np.mgrid[:h, :w]
        out[m & ((rr + cc) % period < max(1, period // 3))] = col
    out[mask_outline(m, width)] = col


def draw_points(
    image: np.ndarray,
    points: Sequence[Sequence[float]],
    labels: Sequence[int] | None = None,
    *,
    radius: int | None = None,
) -> np.ndarray:
    """Draw point prompts onto an (H, W, 3) uint8 image, in place, and return it.

    ``points`` are ``(x, y)`` pixel coordinates; ``labels`` 1 (positive, the default), 0 (negative)
    or -1 (padding, not drawn), as SAM takes them. Each point is a square in
    ``COLOURS["positive point"]`` or ``COLOURS["negative point"]`` with a black rim, so it shows
    on any background."""
    h, w = image.shape[:2]
    r = max(2, min(h, w) // 64) if radius is None else int(radius)
    labels = [1] * len(points) if labels is None else list(labels)
    for (x, y), lab in zip(points, labels):
        if lab < 0:
            continue
        xi = int(round(min(max(float(x), 0), w - 1)))
        yi = int(round(min(max(float(y), 0), h - 1)))
        image[max(0, yi - r) : yi + r + 1, max(0, xi - r) : xi + r + 1] = (0, 0, 0)
        r2 = max(0, r - 1)
        image[max(0, yi - r2) : yi + r2 + 1, max(0, xi - r2) : xi + r2 + 1] = COLOURS[
            "positive point" if lab == 1 else "negative point"]
    return image


def overlay(
    image: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    saliency: np.ndarray | None = None,
    outline: np.ndarray | None = None,
    boxes: Sequence[Sequence[float]] | None = None,
    coarse: np.ndarray | None = None,
    points: Sequence[Sequence[float]] | None = None,
    point_labels: Sequence[int] | None = None,
    mask_color: tuple[int, int, int] = COLOURS["SAM mask"],
    outline_color: tuple[int, int, int] = COLOURS["ground truth (outline)"],
    box_color: tuple[int, int, int] = COLOURS["box prompt"],
    alpha: float = 0.35,
    saliency_alpha: float = 0.5,
) -> np.ndarray:
    """Draw a saliency heat map, a coarse mask, a filled mask, a second mask's outline, boxes and
    points onto an image, in the colours of :data:`COLOURS`.

    ``image``: any array, PIL image or tensor, drawn as the picture every model sees
    (:func:`medclipsam.data.convert.to_unit_float`: a 16-bit scan from its percentile range, not
    divided by 65535); ``mask`` (SAM's mask: filled), ``coarse`` (a coarse mask: hatched, with its
    outline) and ``outline`` (the ground truth: its outline only) are (H, W) bool;
    ``saliency`` is (H, W) float in [0, 1] (drawn with :data:`SALIENCY_CMAP`); boxes are
    ``(x0, y0, x1, y1)`` in pixel coordinates; ``points`` and ``point_labels`` as
    :func:`draw_points` takes them. Returns an (H, W, 3) uint8 image.
    """
    out = to_unit_float(image, "rgb")
    h, w = out.shape[:2]
    if saliency is not None:
        from matplotlib import colormaps

        s = np.clip(np.asarray(saliency, dtype=np.float32), 0.0, 1.0)
        if s.shape != (h, w):
            raise ValueError(f"saliency has shape {s.shape}, image has {(h, w)}")
        heat = colormaps[SALIENCY_CMAP](s)[..., :3]
        out = (1 - saliency_alpha) * out + saliency_alpha * heat
    if coarse is not None:
        _fill(out, coarse, COLOURS["coarse mask"], 0.3, hatch=True,
              width=max(1, min(h, w) // 128), what="coarse")
    if mask is not None:
        _fill(out, mask, mask_color, alpha)
    if outline is not None:
        o = mask_outline(np.asarray(outline, dtype=bool), width=max(1, min(h, w) // 200))
        out[o] = _rgb(outline_color)
    if boxes is not None:
        col = _rgb(box_color)
        t = max(1, min(h, w) // 150)
        for box in boxes:
            x0, y0, x1, y1 = (int(round(v)) for v in box)
            x0, x1 = sorted((max(0, min(w - 1, x0)), max(0, min(w - 1, x1))))
            y0, y1 = sorted((max(0, min(h - 1, y0)), max(0, min(h - 1, y1))))
            out[y0 : y0 + t, x0 : x1 + 1] = col
            out[max(y1 - t + 1, 0) : y1 + 1, x0 : x1 + 1] = col
            out[y0 : y1 + 1, x0 : x0 + t] = col
            out[y0 : y1 + 1, max(x1 - t + 1, 0) : x1 + 1] = col
    rgb = (np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8)
    if points is not None and len(points):
        draw_points(rgb, points, point_labels)
    return rgb


def legend_handles(legend: Sequence[str | tuple[str, str]]) -> list:
    """Matplotlib legend handles drawn the way :func:`overlay` draws each thing: a filled patch for
    the SAM mask, an outline for the ground truth and the box, a hatched patch for the coarse mask,
    a square with a black rim for a point. Each item is a name of :data:`COLOURS` or a pair
    ``(label, name)``: that thing's look under another label (a pseudo-label is a SAM mask)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = []
    for label, key, look in _legend_entries(legend):
        col = _rgb(COLOURS[key])
        if look == "point":
            handles.append(Line2D([], [], ls="none", marker="s", markersize=8, markerfacecolor=col,
                                  markeredgecolor="black", markeredgewidth=1.2, label=label))
        elif look == "hatched":
            handles.append(Patch(facecolor=(*col, 0.3), edgecolor=col, hatch="////", lw=1.5, label=label))
        elif look == "outline":
            handles.append(Patch(facecolor="none", edgecolor=col, lw=2, label=label))
        else:
            handles.append(Patch(facecolor=(*col, 0.6), edgecolor=col, lw=1.5, label=label))
    return handles


def _legend_entries(legend: Sequence[str | tuple[str, str]]) -> list[tuple[str, str, str]]:
    """``(label, name of COLOURS, look)`` for each legend item, the look being how :func:`overlay`
    draws that thing: ``"point"``, ``"hatched"`` (the coarse mask), ``"outline"`` (the ground
    truth, a box) or ``"filled"`` (the SAM mask)."""
    entries = []
    for item in legend:
        label, key = (item, item) if isinstance(item, str) else item
        if key not in COLOURS:
            raise ValueError(f"unknown legend entry {key!r}; choose from {list(COLOURS)}")
        look = ("point" if key.endswith("point") else "hatched" if key == "coarse mask"
                else "outline" if key in ("ground truth (outline)", "box prompt") else "filled")
        entries.append((label, key, look))
    return entries


def legend_html(legend: Sequence[str | tuple[str, str]] = PROMPT_LEGEND, *, saliency: bool = True) -> str:
    """The legend of :func:`legend_handles` as one line of HTML (for widgets), with the saliency
    colour scale first when ``saliency``."""
    from matplotlib import colormaps

    def swatch(style: str) -> str:
        return (f"<span style='display:inline-block;width:14px;height:11px;vertical-align:middle;"
                f"margin:0 4px 0 10px;{style}'></span>")

    parts = []
    if saliency:
        stops = ", ".join(
            "#" + "".join(f"{int(255 * c):02x}" for c in colormaps[SALIENCY_CMAP](v)[:3])
            for v in np.linspace(0, 1, 6)
        )
        parts.append(swatch(f"width:60px;background:linear-gradient(to right, {stops})")
                     + "saliency 0 &rarr; 1")
    for label, key, look in _legend_entries(legend):
        r, g, b = COLOURS[key]
        rgb = f"rgb({r},{g},{b})"
        if look == "point":
            style = f"background:{rgb};border:1.5px solid black;width:10px;height:10px"
        elif look == "hatched":
            style = (f"border:2px solid {rgb};background:repeating-linear-gradient("
                     f"45deg, {rgb} 0 2px, rgba({r},{g},{b},0.3) 2px 5px)")
        elif look == "outline":
            style = f"border:2px solid {rgb}"
        else:
            style = f"border:2px solid {rgb};background:rgba({r},{g},{b},0.6)"
        parts.append(swatch(style) + html.escape(label))
    return "<small>" + "".join(parts) + "</small>"


def _decorate(fig, colorbar: bool | str, legend: Sequence | None, suptitle: str | None) -> None:
    """Room for, and then, a saliency colour bar (right) and a colour legend (bottom)."""
    import matplotlib.pyplot as plt

    fig.tight_layout(rect=(0, 0.07 if legend else 0, 0.93 if colorbar else 1, 0.95 if suptitle else 1))
    if colorbar:
        cax = fig.add_axes((0.945, 0.2, 0.012, 0.6))
        sm = plt.cm.ScalarMappable(cmap=SALIENCY_CMAP, norm=plt.Normalize(0, 1))
        label = colorbar if isinstance(colorbar, str) else SALIENCY_LABEL
        fig.colorbar(sm, cax=cax).set_label(label, fontsize=9)
        cax.tick_params(labelsize=8)
    if legend:
        handles = legend_handles(legend)
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=9,
                   frameon=False, handlelength=1.8)


def sample_grid(
    images: Sequence[np.ndarray | None],
    titles: Sequence[str] | None = None,
    *,
    ncols: int = 4,
    cell_size: float = 3.0,
    suptitle: str | None = None,
    wrap: int | None = None,
    colorbar: bool | str = False,
    legend: Sequence[str | tuple[str, str]] | None = None,
):
    """A matplotlib figure showing ``images`` in a grid with titles (each line wrapped at ``wrap``
    characters, by default what fits the cell's width); returns the figure.

    An image ``None`` leaves its cell empty and writes its title in the middle (a result that was
    not computed, rather than a copy of another panel). ``colorbar``: add the saliency colour bar
    (:data:`SALIENCY_CMAP` over [0, 1], as :func:`overlay` draws maps); a string is its label, e.g.
    to say which panels show maps. ``legend``: items of :data:`COLOURS` to explain below the grid
    (:func:`legend_handles`)."""
    import matplotlib.pyplot as plt

    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = max(1, -(-n // ncols))
    if wrap is None:  # what fits above a picture in 9 pt type
        wrap = max(12, int(cell_size * 13))
    # each line of a title wrapped on its own: a title's own line breaks are kept
    wrapped = ["\n".join(textwrap.fill(line, wrap) for line in t.split("\n")) for t in titles] if titles is not None else []
    lines = max((t.count("\n") + 1 for t, im in zip(wrapped, images) if im is not None), default=0)
    # each row gets the image's height plus room for its tallest title (9 pt lines and a margin)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(cell_size * ncols, nrows * (cell_size + 0.17 * lines + 0.15)), squeeze=False
    )
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        if images[i] is None:
            if titles is not None:  # wrapped to the cell's width, and no say in the layout
                ax.text(0.5, 0.5, textwrap.fill(titles[i], max(12, int(cell_size * 10))), ha="center",
                        va="center", fontsize=9, color="0.4", transform=ax.transAxes).set_in_layout(False)
            continue
        img = np.asarray(images[i])
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255 if img.dtype == np.uint8 else None)
        if wrapped:
            ax.set_title(wrapped[i], fontsize=9)
    if suptitle:
        fig.suptitle(suptitle)
    _decorate(fig, colorbar, legend, suptitle)
    if lines and nrows > 1:  # tight_layout leaves too little room for titles above square images
        fig.subplots_adjust(hspace=(0.16 * lines + 0.12) / cell_size)
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
    sam_prompts = overlay(image, coarse=result.coarse_mask, boxes=boxes)
    if result.points is not None:
        for group, labels in zip(result.points, result.point_labels):
            draw_points(sam_prompts, group, labels)
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
