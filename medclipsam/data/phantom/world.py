"""The phantom world's shared parts: the tasks' classes and prompts, :class:`PhantomSample`, the
drawing helpers every task uses, and the caption writer.

Geometry is drawn on a :class:`Grid` in coordinates scaled by ``min(H, W)``, so non-square images
are wider or taller, not stretched. Randomness comes from :func:`make_rng` keyed by integers, so
every sample is a pure function of ``(task, seed, size, label)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "ALT_PROMPTS",
    "CLASSES",
    "GENERATOR_VERSION",
    "INTENSITY_RULE",
    "N_CAPTIONS",
    "PROMPTS",
    "TASK_CODE",
    "Grid",
    "PhantomSample",
    "blur",
    "component_boxes",
    "harmonics",
    "largest_component",
    "make_rng",
    "mask_bbox",
    "mask_centroid",
    "smooth_step",
    "smooth_noise",
    "soft_inside",
    "star_level",
    "unit_to_uint8",
    "wave",
    "write_captions",
]

CLASSES: dict[str, tuple[str, ...]] = {
    "breast": ("normal", "benign", "malignant"),
    "brain": ("normal", "glioma", "meningioma", "pituitary"),
    "xray": ("normal", "pneumonia"),
}
PROMPTS: dict[str, str] = {"breast": "breast tumor", "brain": "brain tumor", "xray": "lungs"}
ALT_PROMPTS: dict[str, tuple[str, ...]] = {
    "breast": ("breast tumor", "breast lesion", "hypoechoic breast mass", "breast mass"),
    "brain": ("brain tumor", "enhancing brain mass", "brain lesion", "intracranial tumor"),
    "xray": ("lungs", "lung fields", "both lungs", "left and right lung"),
}
# The naive baseline per task: where the finding would be if brightness alone decided (the lesion
# is dark in ultrasound, the tumour bright in MRI, the lungs dark on a radiograph). The decoys are
# built to defeat it.
INTENSITY_RULE: dict[str, str] = {"breast": "darkest", "brain": "brightest", "xray": "darkest"}
GENERATOR_VERSION = 1
"""Bumped whenever the pictures for a given seed change; stored in written folders."""

TASK_CODE = {"breast": 101, "brain": 102, "xray": 103}


# ============================================================================================
# public data types


@dataclass
class PhantomSample:
    """One phantom image with its mask, class, captions and generation details.

    ``image`` is ``(H, W)`` uint8; ``mask`` is ``(H, W)`` bool (empty for normal breast/brain,
    both lungs for xray). ``meta`` holds ``seed``, ``size``, ``centroid``/``bbox`` (row, col;
    ``bbox`` is ``(r0, c0, r1, c1)`` exclusive), ``boxes`` (one per connected component),
    ``location`` (the words used in the captions), ``decoys`` (kind, centre, bbox),
    ``decoy_mask``, ``fov`` (the field of view) and task-specific extras.
    """

    image: np.ndarray
    mask: np.ndarray
    task: str
    label: str
    captions: list[str]
    meta: dict = field(default_factory=dict)

    @property
    def rgb(self) -> np.ndarray:
        """The image as ``(H, W, 3)`` uint8 (grey replicated), what CLIP/SAM preprocessors expect."""
        return np.repeat(self.image[:, :, None], 3, axis=2)


# ============================================================================================
# small numeric helpers (all vectorised; loops only over a handful of structures)


class Grid:
    """Pixel-centre coordinates in units of ``min(H, W)``: X in [0, ax], Y in [0, ay]."""

    def __init__(self, h: int, w: int) -> None:
        self.H, self.W = h, w
        self.s = float(min(h, w))
        self.ax, self.ay = w / self.s, h / self.s
        self.X = ((np.arange(w, dtype=np.float32) + 0.5) / self.s)[None, :]
        self.Y = ((np.arange(h, dtype=np.float32) + 0.5) / self.s)[:, None]
        self.px = 1.0 / self.s

    def window(self, cx: float, cy: float, radius: float) -> tuple[slice, slice]:
        """The (rows, cols) slices of a square of half side ``radius`` around (cx, cy), clipped
        to the image."""
        r0 = max(0, int((cy - radius) * self.s) - 1)
        r1 = min(self.H, int((cy + radius) * self.s) + 2)
        c0 = max(0, int((cx - radius) * self.s) - 1)
        c1 = min(self.W, int((cx + radius) * self.s) + 2)
        return slice(r0, max(r0, r1)), slice(c0, max(c0, c1))

    def to_px(self, x: float, y: float) -> tuple[float, float]:
        """(x, y) in grid units -> (row, col) in pixels."""
        return (y * self.s - 0.5, x * self.s - 0.5)


def smooth_step(x: np.ndarray | float) -> np.ndarray:
    """A smooth step from 0 to 1 around ``x = 0``: ``(1 + tanh(x)) / 2``."""
    return 0.5 * (1.0 + np.tanh(np.asarray(x, dtype=np.float32)))


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale_px: float) -> np.ndarray:
    """Smooth Gaussian noise, zero mean and unit std, with features of about ``scale_px`` px.

    Drawn on a coarse grid, blurred there and upsampled, so large scales cost nothing.
    """
    h, w = shape
    f = max(1, int(scale_px // 3))
    sh, sw = -(-h // f) + 3, -(-w // f) + 3
    n = rng.standard_normal((sh, sw)).astype(np.float32)
    sigma = max(scale_px / f / 2.0, 0.0)
    if sigma > 0.3:
        n = ndi.gaussian_filter(n, sigma, mode="wrap")
    if f > 1:
        n = ndi.zoom(n, f, order=1, prefilter=False)
    o = f
    n = n[o:o + h, o:o + w]
    return (n - n.mean()) / (n.std() + 1e-6)


def blur(a: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian blur; large sigmas are done on a downsampled copy (fast, smooth anyway)."""
    if sigma_px < 0.3:
        return a
    f = int(sigma_px // 4)
    if f <= 1:
        return ndi.gaussian_filter(a, sigma_px, mode="nearest")
    h, w = a.shape
    small = ndi.zoom(a, 1.0 / f, order=1, prefilter=False, grid_mode=True, mode="nearest")
    small = ndi.gaussian_filter(small, sigma_px / f, mode="nearest")
    big = ndi.zoom(small, (h / small.shape[0], w / small.shape[1]), order=1,
                   prefilter=False, grid_mode=True, mode="nearest")
    return big[:h, :w]


def wave(rng: np.random.Generator, knots: int = 8, lo: float = -1.3, hi: float = 1.3):
    """A smooth random 1-D function (unit-ish amplitude) on [lo, hi]."""
    xs = np.linspace(lo, hi, knots)
    ys = ndi.gaussian_filter1d(rng.standard_normal(knots), 1.0, mode="nearest")
    ys = ys / (np.abs(ys).max() + 1e-6)
    return lambda t: np.interp(t, xs, ys).astype(np.float32)


def harmonics(rng: np.random.Generator, amp: float, kmax: int, decay: float = 1.0):
    """Random border harmonics ``(k, amplitude, phase)`` for k = 2..kmax, decaying with k."""
    return [
        (k, amp * rng.uniform(0.3, 1.0) / (k - 1) ** decay, rng.uniform(0, 2 * np.pi))
        for k in range(2, kmax + 1)
    ]


def star_level(
    g: Grid,
    cx: float,
    cy: float,
    rx: float,
    ry: float,
    angle: float = 0.0,
    harm: Sequence[tuple[int, float, float]] = (),
    spikes: Sequence[tuple[float, float, float]] = (),
) -> np.ndarray:
    """Level field of a star-shaped blob: < 1 inside, 1 on the border (10 far outside).

    ``harm`` are ``(k, amplitude, phase)`` border harmonics, ``spikes`` ``(angle, length,
    half-width)`` sharp spiculations, both relative to the radius.
    """
    extent = 1.0 + sum(abs(a) for _, a, _ in harm) + sum(max(a, 0) for _, a, _ in spikes)
    radius = max(rx, ry) * extent * 1.05 + 2 * g.px
    out = np.full((g.H, g.W), 10.0, dtype=np.float32)
    rs, cs = g.window(cx, cy, radius)
    if rs.stop <= rs.start or cs.stop <= cs.start:
        return out
    dx = g.X[:, cs] - cx
    dy = g.Y[rs, :] - cy
    c, s = math.cos(angle), math.sin(angle)
    u = (dx * c + dy * s) / rx
    v = (-dx * s + dy * c) / ry
    rho = np.hypot(u, v)
    th = np.arctan2(v, u)
    r = np.ones_like(rho)
    for k, a, p in harm:
        r += a * np.cos(k * th + p)
    for ang, length, width in spikes:
        d = np.abs((th - ang + np.pi) % (2 * np.pi) - np.pi)
        r += length * np.clip(1.0 - d / width, 0.0, None) ** 2
    out[rs, cs] = rho / np.maximum(r, 0.2)
    return out


def soft_inside(level: np.ndarray, edge: float) -> np.ndarray:
    """Soft 0..1 inside weight of a level field (edge = width in level units)."""
    return np.clip((1.0 - level) / max(edge, 1e-6) + 0.5, 0.0, 1.0)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest connected component of ``mask`` (the mask itself if it has one or none)."""
    lab, n = ndi.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == int(np.argmax(sizes))


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """``(r0, c0, r1, c1)`` (end exclusive) around ``mask``; None when it is empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return (int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1)


def mask_centroid(mask: np.ndarray) -> tuple[float, float] | None:
    """``(row, col)`` of ``mask``'s centre of mass; None when it is empty."""
    if not mask.any():
        return None
    r, c = np.nonzero(mask)
    return (float(r.mean()), float(c.mean()))


def component_boxes(mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    """One ``(r0, c0, r1, c1)`` box per connected component, left to right."""
    lab, n = ndi.label(mask)
    boxes = []
    for sl in ndi.find_objects(lab):
        if sl is not None:
            boxes.append((sl[0].start, sl[1].start, sl[0].stop, sl[1].stop))
    return sorted(boxes, key=lambda b: (b[1], b[0]))


def unit_to_uint8(v: np.ndarray) -> np.ndarray:
    """Values in [0, 1] as uint8 (rounded, clipped)."""
    return np.clip(np.rint(v * 255.0), 0, 255).astype(np.uint8)


def make_rng(*key: int) -> np.random.Generator:
    """A NumPy generator keyed by integers (task code, seed, purpose...)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(list(key))))


# ============================================================================================
# captions

_TEMPLATES = (
    "{m} showing {f} in the {l}",
    "{m} with {f} in the {l}",
    "{m}: {f} in the {l}",
    "{m} demonstrating {f} in the {l}",
    "{m} revealing {f} located in the {l}",
    "{m}, finding: {f} in the {l}",
)
_MODALITY = {
    "breast": ("breast ultrasound", "breast sonogram", "ultrasound image of the breast",
               "B-mode breast ultrasound"),
    "brain": ("brain MRI", "axial T1 contrast-enhanced MRI of the brain", "post-contrast T1 brain MRI",
              "axial brain MR image"),
    "xray": ("chest x-ray", "frontal chest radiograph", "PA chest X-ray", "chest radiograph"),
}
N_CAPTIONS = 5


def write_captions(
    task: str, seed: int, findings: Sequence[str], locations: Sequence[str], rng: np.random.Generator
) -> tuple[list[str], list[int]]:
    """Fill ``N_CAPTIONS`` templates. Template and modality choices depend on (task, seed) only,

    so a normal image and a finding drawn from the same seed share the caption skeleton.
    """
    skel = make_rng(TASK_CODE[task], seed, 7)
    ids = [int(i) for i in skel.permutation(len(_TEMPLATES))[:N_CAPTIONS]]
    mods = [str(_MODALITY[task][int(j)]) for j in skel.integers(0, len(_MODALITY[task]), N_CAPTIONS)]
    caps = []
    for i, m in zip(ids, mods):
        f = findings[int(rng.integers(len(findings)))]
        loc = locations[int(rng.integers(len(locations)))]
        caps.append(_TEMPLATES[i].format(m=m, f=f, l=loc))
    return caps, ids

