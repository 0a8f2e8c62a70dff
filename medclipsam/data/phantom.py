"""The phantom world: deterministic procedural stand-ins for the paper's three data sets.

Used offline (notebooks, CI, tests) and to train the toy CLIP and SAM models. Three tasks:

- ``"breast"``: B-mode breast ultrasound (linear or sector field, Rayleigh speckle after log
  compression, skin / fat / fibroglandular / muscle layers, depth attenuation). Classes
  ``benign`` (oval, smooth, posterior enhancement), ``malignant`` (irregular or spiculated, may be
  taller than wide, posterior shadowing) and ``normal`` (empty mask). Decoys: anechoic cysts
  (darker than any lesion) and acoustic shadow bands, so "the darkest region" is usually *not*
  the lesion.
- ``"brain"``: axial post-contrast T1 MRI (scalp fat, skull, grey/white matter, ventricles).
  Classes ``glioma`` (irregular, ring enhancing, necrotic core, oedema; one hemisphere),
  ``meningioma`` (round, homogeneous, on the dura), ``pituitary`` (small, midline, near the
  skull base, drawn at the centre-bottom) and ``normal``. Decoys: enhancing venous sinuses,
  choroid plexus, vessels and scalp fat, brighter than any tumour, so "the brightest region" is
  usually *not* the tumour.
- ``"xray"``: PA chest X-ray. The mask is both lungs (two connected components, one each side
  of the midline: the multi-box case). Classes ``normal`` and ``pneumonia`` (patchy opacities
  inside the lungs; the mask stays the lungs).

Side convention (stated once, used in every caption and ``meta["location"]``):

- brain and chest X-ray use the **radiological convention**: the patient's right is on the
  image's left. A tumour whose centroid is in the left half of the image (column < W/2) is in
  the "right hemisphere"; the lung in the image's left half is the "right lung".
- breast ultrasound has no patient side in one frame: "left"/"right" there mean the image's
  left/right as displayed, and "upper"/"lower" mean shallow/deep.

Every sample is a pure function of ``(task, seed, size, label)``. Geometry is drawn in
coordinates scaled by ``min(H, W)``, so non-square images are wider or taller, not stretched.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from .._utils import atomic_path, atomic_write_text
from ..vocab import TASKS

__all__ = [
    "ALT_PROMPTS",
    "CLASSES",
    "GENERATOR_VERSION",
    "INTENSITY_RULE",
    "PROMPTS",
    "TASKS",
    "PhantomDataset",
    "PhantomPairs",
    "PhantomSample",
    "generate_sample",
    "intensity_rule_point",
    "pointing_hit",
    "write_phantom_folder",
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

_TASK_CODE = {"breast": 101, "brain": 102, "xray": 103}
_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}


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


class _Grid:
    """Pixel-centre coordinates in units of ``min(H, W)``: X in [0, ax], Y in [0, ay]."""

    def __init__(self, h: int, w: int) -> None:
        self.H, self.W = h, w
        self.s = float(min(h, w))
        self.ax, self.ay = w / self.s, h / self.s
        self.X = ((np.arange(w, dtype=np.float32) + 0.5) / self.s)[None, :]
        self.Y = ((np.arange(h, dtype=np.float32) + 0.5) / self.s)[:, None]
        self.px = 1.0 / self.s

    def window(self, cx: float, cy: float, radius: float) -> tuple[slice, slice]:
        r0 = max(0, int((cy - radius) * self.s) - 1)
        r1 = min(self.H, int((cy + radius) * self.s) + 2)
        c0 = max(0, int((cx - radius) * self.s) - 1)
        c1 = min(self.W, int((cx + radius) * self.s) + 2)
        return slice(r0, max(r0, r1)), slice(c0, max(c0, c1))

    def to_px(self, x: float, y: float) -> tuple[float, float]:
        """(x, y) in grid units -> (row, col) in pixels."""
        return (y * self.s - 0.5, x * self.s - 0.5)


def _sig(x: np.ndarray | float) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(np.asarray(x, dtype=np.float32)))


def _noise(rng: np.random.Generator, shape: tuple[int, int], scale_px: float) -> np.ndarray:
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


def _blur(a: np.ndarray, sigma_px: float) -> np.ndarray:
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


def _wave(rng: np.random.Generator, knots: int = 8, lo: float = -1.3, hi: float = 1.3):
    """A smooth random 1-D function (unit-ish amplitude) on [lo, hi]."""
    xs = np.linspace(lo, hi, knots)
    ys = ndi.gaussian_filter1d(rng.standard_normal(knots), 1.0, mode="nearest")
    ys = ys / (np.abs(ys).max() + 1e-6)
    return lambda t: np.interp(t, xs, ys).astype(np.float32)


def _harmonics(rng: np.random.Generator, amp: float, kmax: int, decay: float = 1.0):
    return [
        (k, amp * rng.uniform(0.3, 1.0) / (k - 1) ** decay, rng.uniform(0, 2 * np.pi))
        for k in range(2, kmax + 1)
    ]


def _star(
    g: _Grid,
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


def _inside(level: np.ndarray, edge: float) -> np.ndarray:
    """Soft 0..1 inside weight of a level field (edge = width in level units)."""
    return np.clip((1.0 - level) / max(edge, 1e-6) + 0.5, 0.0, 1.0)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    lab, n = ndi.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == int(np.argmax(sizes))


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return (int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1)


def _centroid(mask: np.ndarray) -> tuple[float, float] | None:
    if not mask.any():
        return None
    r, c = np.nonzero(mask)
    return (float(r.mean()), float(c.mean()))


def _component_boxes(mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    lab, n = ndi.label(mask)
    boxes = []
    for sl in ndi.find_objects(lab):
        if sl is not None:
            boxes.append((sl[0].start, sl[1].start, sl[0].stop, sl[1].stop))
    return sorted(boxes, key=lambda b: (b[1], b[0]))


def _to_uint8(v: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(v * 255.0), 0, 255).astype(np.uint8)


def _rng(*key: int) -> np.random.Generator:
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


def _captions(
    task: str, seed: int, findings: Sequence[str], locations: Sequence[str], rng: np.random.Generator
) -> tuple[list[str], list[int]]:
    """Fill ``N_CAPTIONS`` templates. Template and modality choices depend on (task, seed) only,

    so a normal image and a finding drawn from the same seed share the caption skeleton.
    """
    skel = _rng(_TASK_CODE[task], seed, 7)
    ids = [int(i) for i in skel.permutation(len(_TEMPLATES))[:N_CAPTIONS]]
    mods = [str(_MODALITY[task][int(j)]) for j in skel.integers(0, len(_MODALITY[task]), N_CAPTIONS)]
    caps = []
    for i, m in zip(ids, mods):
        f = findings[int(rng.integers(len(findings)))]
        loc = locations[int(rng.integers(len(locations)))]
        caps.append(_TEMPLATES[i].format(m=m, f=f, l=loc))
    return caps, ids


# ============================================================================================
# breast ultrasound


@dataclass
class _Probe:
    """Where an ultrasound probe looks: the depth ``d`` (0 at the skin, 1 at the bottom of the
    view) and lateral position ``lat`` (-1..1) of every pixel, for a linear probe (a rectangle) or
    a sector probe (a fan from an apex above the image), and the way back to grid coordinates."""

    sector: bool
    top: float
    depth: float
    cx0: float
    d: np.ndarray
    lat: np.ndarray
    fov: np.ndarray
    r_in: float = 0.0
    tmax: float = 0.0
    apex_y: float = 0.0
    hw: float = 0.0

    def to_xy(self, dd: float, ll: float) -> tuple[float, float]:
        """(depth, lateral) -> (x, y) in grid units."""
        if self.sector:
            th, r = ll * self.tmax, self.r_in + dd * self.depth
            return self.cx0 + r * math.sin(th), self.apex_y + r * math.cos(th)
        return self.cx0 + ll * self.hw, self.top + dd * self.depth

    def lat_scale(self, dd: float) -> float:
        """Grid units per unit of ``lat`` at depth ``dd``."""
        return (self.r_in + dd * self.depth) * self.tmax if self.sector else self.hw

    def column(self, lat_c: float, half: float, d_from: float, soft: float) -> np.ndarray:
        """A soft vertical band at ``lat_c`` (half width ``half``) from depth ``d_from`` down:
        where posterior enhancement or shadowing acts."""
        return (np.exp(-((np.abs(self.lat - lat_c) / half) ** 4))
                * _sig((self.d - d_from) / soft)).astype(np.float32)


def _breast_probe(g: _Grid, rng: np.random.Generator) -> _Probe:
    """A linear (60 %) or sector (40 %) probe's field of view."""
    H, W = g.H, g.W
    sector = bool(rng.random() < 0.4)
    top = rng.uniform(0.02, 0.06)
    bottom_margin = rng.uniform(0.01, 0.04)
    cx0 = g.ax / 2
    extra: dict[str, float] = {}
    if sector:
        r_in = rng.uniform(0.25, 0.6)
        depth = g.ay - top - bottom_margin
        apex_y = top - r_in
        tmax = min(rng.uniform(0.42, 0.65), math.asin(min(0.99, (g.ax / 2 - 0.02) / (r_in + depth))))
        dx = g.X - cx0
        dy = g.Y - apex_y
        rr = np.hypot(dx, dy)
        d = (rr - r_in) / depth
        lat = np.arctan2(dx, dy) / tmax
        extra = {"r_in": r_in, "tmax": tmax, "apex_y": apex_y}
    else:
        hw = g.ax / 2 - rng.uniform(0.03, 0.12)
        depth = g.ay - top - bottom_margin
        d = np.broadcast_to((g.Y - top) / depth, (H, W))
        lat = np.broadcast_to((g.X - cx0) / hw, (H, W))
        extra = {"hw": hw}
    d = np.asarray(d, dtype=np.float32)
    lat = np.asarray(lat, dtype=np.float32)
    fov = (d >= 0) & (d <= 1) & (np.abs(lat) <= 1)
    return _Probe(sector, top, depth, cx0, d, lat, fov, **extra)


def _breast_tissue(g: _Grid, rng: np.random.Generator, p: _Probe) -> tuple[np.ndarray, float, float]:
    """Echogenicity (dB; glandular tissue 0 dB) of skin, fat lobules with bright Cooper's
    ligaments, the glandular layer with fat islands, and pectoral muscle; returns it with the skin
    and fat thicknesses (in depth units)."""
    H, W = g.H, g.W
    d, lat, depth = p.d, p.lat, p.depth
    px_d = g.px / depth  # one pixel in depth units
    tw = 1.5 * px_d
    skin_t = rng.uniform(0.025, 0.05)
    fat_t = rng.uniform(0.07, 0.28)
    gland_t = rng.uniform(0.22, 0.45)
    w1, w2, w3 = _wave(rng), _wave(rng), _wave(rng)
    n_b = _noise(rng, (H, W), rng.uniform(0.03, 0.06) * g.s)
    b_fat = skin_t + fat_t + 0.035 * w1(lat) + 0.025 * n_b
    b_gland = b_fat + gland_t + 0.06 * w2(lat) + 0.03 * n_b
    b_muscle = b_gland + rng.uniform(0.03, 0.08) + 0.02 * w3(lat)
    fat_db = rng.uniform(-13, -9)
    n_lob = _noise(rng, (H, W), rng.uniform(0.04, 0.07) * g.s)
    n_tex = _noise(rng, (H, W), rng.uniform(0.015, 0.03) * g.s)
    E = fat_db + 2.0 * n_tex
    # fat lobules separated by bright Cooper's ligaments (iso-lines of a smooth field)
    septa = np.exp(-((n_lob / 0.13) ** 2))
    in_gland = _sig((d - b_fat) / tw) * (1 - _sig((d - b_gland) / tw))
    gland = rng.uniform(-2, 1) + 3.0 * n_tex + 2.5 * n_lob
    # fat islands inside the glandular layer
    isl = _sig((n_lob - 1.0) / 0.15)
    gland = gland * (1 - isl) + (fat_db + 1) * isl
    E = E + (1 - in_gland) * 9.0 * septa * (d < b_muscle)
    E = E * (1 - in_gland) + gland * in_gland
    in_muscle = _sig((d - b_muscle) / tw)
    stri = np.sin(2 * np.pi * d * depth / rng.uniform(0.02, 0.035) + 1.5 * n_lob)
    muscle = rng.uniform(-9, -6) + 5.0 * np.exp(-(((stri - 0.9) / 0.25) ** 2)) + 1.5 * n_tex
    E = E * (1 - in_muscle) + muscle * in_muscle
    skin = d < skin_t
    E = np.where(skin, 1.0 + 2 * n_tex, E)
    E = E + 10 * np.exp(-(((d - skin_t) / (1.2 * px_d)) ** 2)) + 8 * np.exp(-((d / (1.5 * px_d)) ** 2))
    return E, skin_t, fat_t


@dataclass
class _Lesion:
    """The finding drawn into an image: its mask, where it is, and what the captions may say."""

    mask: np.ndarray
    centre: tuple[float, float, float] | None = None  # (x, y, radius) in grid units
    lateral: tuple[float, float] = (0.0, 0.0)  # (lat, half width) of its posterior column
    info: dict[str, Any] = field(default_factory=dict)


def _breast_lesion(g: _Grid, rng: np.random.Generator, p: _Probe, label: str, E: np.ndarray,
                   post: np.ndarray, skin_t: float, fat_t: float) -> tuple[np.ndarray, _Lesion]:
    """A benign (oval, circumscribed, posterior enhancement) or malignant (irregular, spiculated,
    echogenic halo, posterior shadowing) hypoechoic lesion; ``post`` gets its column. Returns the
    echogenicity with the lesion drawn in, and the lesion (an empty mask for a normal image)."""
    H, W = g.H, g.W
    depth, fov = p.depth, p.fov
    if label == "normal":
        return E, _Lesion(np.zeros((H, W), dtype=bool))
    malignant = label == "malignant"
    rx = rng.uniform(0.08, 0.19)
    if malignant:
        ry = rx * rng.uniform(0.7, 1.45)
        ang = rng.uniform(-0.5, 0.5)
        harm = _harmonics(rng, rng.uniform(0.12, 0.25), 7, 0.6)
        n_sp = int(rng.integers(0, 12))
        spikes = [(rng.uniform(0, 2 * np.pi), rng.uniform(0.15, 0.45), rng.uniform(0.07, 0.16))
                  for _ in range(n_sp)]
    else:
        ry = rx * rng.uniform(0.5, 0.88)
        ang = rng.uniform(-0.25, 0.25)
        harm = _harmonics(rng, rng.uniform(0.02, 0.06), 4)
        spikes = []
    dc_lo = skin_t + 0.04 + ry / depth
    dc = rng.uniform(max(dc_lo, skin_t + fat_t * 0.5), max(dc_lo + 0.02, 0.72))
    latc = rng.uniform(-0.68, 0.68)
    cx, cy = p.to_xy(dc, latc)
    lev = _star(g, cx, cy, rx, ry, ang, harm, spikes)
    edge = (2.5 if malignant else 1.0) * g.px / rx
    inside = _inside(lev, edge)
    mask = (lev < 1.0) & fov
    n_in = _noise(rng, (H, W), 0.02 * g.s)
    if malignant:
        les_db = rng.uniform(-30, -22) + 3.5 * n_in
        halo = np.exp(-(((lev - 1.12) / 0.1) ** 2)) * rng.uniform(0, 6)
        E = E + halo * (lev > 1.0)
    else:
        les_db = rng.uniform(-27, -20) + 1.5 * n_in
    E = E * (1 - inside) + les_db * inside
    half = max(rx, ry) * 0.85 / p.lat_scale(dc)
    col = p.column(latc, half, dc + 0.4 * ry / depth, 0.04) * (1 - inside)
    post += col * (rng.uniform(-16, -7) if malignant else rng.uniform(3, 7))
    info = {"rx": rx, "ry": ry, "taller_than_wide": bool(ry > rx * 1.05),
            "spiculated": bool(malignant and len(spikes) >= 4)}
    return E, _Lesion(mask, (cx, cy, max(rx, ry)), (latc, half), info)


def _breast_decoys(g: _Grid, rng: np.random.Generator, p: _Probe, E: np.ndarray, post: np.ndarray,
                   skin_t: float, lesion: _Lesion) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Decoys a "darkest region" rule falls for: anechoic cysts (darker than any lesion) and
    acoustic shadow bands, placed away from the lesion. Returns the echogenicity, the decoys'
    mask and their descriptions."""
    H, W = g.H, g.W
    depth, fov = p.depth, p.fov
    decoy_mask = np.zeros((H, W), dtype=bool)
    decoys: list[dict[str, Any]] = []
    n_cyst = int(rng.choice([0, 1, 1, 1, 2]))
    placed: list[tuple[float, float, float]] = [lesion.centre] if lesion.centre else []
    for _ in range(n_cyst):
        for _try in range(25):
            rc = rng.uniform(0.03, 0.055)
            dcy = rng.uniform(skin_t + 0.06 + rc / depth, 0.85)
            lcy = rng.uniform(-0.78, 0.78)
            x, y = p.to_xy(dcy, lcy)
            if all(math.hypot(x - px_, y - py_) > pr * 1.35 + rc + 0.03 for px_, py_, pr in placed):
                break
        else:
            continue
        lev = _star(g, x, y, rc, rc * rng.uniform(0.7, 1.0), rng.uniform(0, np.pi),
                    _harmonics(rng, 0.03, 3))
        ins = _inside(lev, 0.8 * g.px / rc)
        wall = np.exp(-(((lev - 1.0) / (1.2 * g.px / rc)) ** 2)) * 8
        E = (E + wall) * (1 - ins) + (-60.0) * ins
        post += p.column(lcy, rc * 0.8 / p.lat_scale(dcy), dcy + 0.5 * rc / depth, 0.03) * (1 - ins) \
            * rng.uniform(4, 9)
        cm = (lev < 1.0) & fov
        decoy_mask |= cm
        placed.append((x, y, rc))
        decoys.append({"kind": "cyst", "centre": g.to_px(x, y), "bbox": _bbox(cm)})
    if rng.random() < 0.5:
        les_lat = lesion.lateral
        for _try in range(25):
            half = rng.uniform(0.035, 0.1)
            l0 = rng.uniform(-0.8, 0.8)
            if lesion.centre is None or abs(l0 - les_lat[0]) > les_lat[1] + half + 0.12:
                break
        else:
            half = 0.0
        if half > 0:
            d0 = rng.uniform(skin_t + 0.05, 0.45)
            band = p.column(l0, half, d0, 0.015)
            post += band * rng.uniform(-24, -14)
            x, y = p.to_xy(d0, l0)
            E = E + 12 * np.exp(-((np.hypot(g.X - x, g.Y - y) / (2.5 * g.px)) ** 2))
            bm = (band > 0.5) & fov
            decoy_mask |= bm
            decoys.append({"kind": "shadow", "centre": g.to_px(*p.to_xy((d0 + 1) / 2, l0)),
                           "bbox": _bbox(bm)})
    return E, decoy_mask, decoys


def _breast_acquisition(g: _Grid, rng: np.random.Generator, p: _Probe, E_tot: np.ndarray) -> np.ndarray:
    """What the scanner shows of echogenicity ``E_tot`` (dB): depth attenuation, Rayleigh speckle
    on a (depth, lateral) grid, electronic noise, gain and log compression to 8 bits."""
    H, W = g.H, g.W
    d, lat, fov = p.d, p.lat, p.fov
    att = -rng.uniform(3, 13) * np.clip(d, 0, 1) + 2.5 * np.exp(-d / 0.08)
    if p.sector:
        att = att - 4.0 * np.abs(lat) ** 4
    E_tot = E_tot + att
    amp = 10.0 ** (E_tot / 20.0)
    # speckle: complex Gaussian on a (depth, lateral) grid, interpolated -> Rayleigh grains
    grain = rng.uniform(0.9, 1.3) * g.s / 256.0
    nd = max(8, int(H / (1.3 * grain)))
    nl = max(8, int(W / (2.8 * grain)))
    cr = rng.standard_normal((2, nd + 2, nl + 2)).astype(np.float32)
    coords = np.stack([np.clip(d, 0, 1) * nd + 0.5, (np.clip(lat, -1, 1) + 1) / 2 * nl + 0.5])
    sr = ndi.map_coordinates(cr[0], coords, order=1, mode="nearest")
    si = ndi.map_coordinates(cr[1], coords, order=1, mode="nearest")
    sp = (sr + 1j * si) / math.sqrt(0.55 * 2)
    floor = 10 ** (rng.uniform(-50, -42) / 20.0)
    en = (rng.standard_normal((H, W)) + 1j * rng.standard_normal((H, W))) * floor / math.sqrt(2)
    db = 20 * np.log10(np.abs(amp * sp + en) + 1e-9)
    dyn = rng.uniform(42, 55)
    gain = rng.uniform(-14, -7)
    v = np.clip(1.0 + (db + gain) / dyn, 0.0, 1.0)
    v = ndi.gaussian_filter(v.astype(np.float32), 0.45 * grain) ** rng.uniform(0.85, 1.2)
    return np.where(fov, np.maximum(_to_uint8(v), 1), 0).astype(np.uint8)


def _breast(g: _Grid, rng: np.random.Generator, label: str) -> dict[str, Any]:
    """A breast ultrasound image: probe, tissue layers, the lesion, decoys, acquisition."""
    p = _breast_probe(g, rng)
    E, skin_t, fat_t = _breast_tissue(g, rng, p)
    post = np.zeros((g.H, g.W), dtype=np.float32)  # posterior enhancement (+) / shadowing (-) in dB
    info: dict[str, Any] = {"geometry": "sector" if p.sector else "linear"}
    E, lesion = _breast_lesion(g, rng, p, label, E, post, skin_t, fat_t)
    if lesion.info:
        info["lesion"] = lesion.info
    E, decoy_mask, decoys = _breast_decoys(g, rng, p, E, post, skin_t, lesion)
    img = _breast_acquisition(g, rng, p, E + post)
    info.update(image=img, mask=lesion.mask, fov=p.fov, decoys=decoys, decoy_mask=decoy_mask)
    return info


def _breast_words(s: dict, g: _Grid) -> tuple[dict[str, str], list[str], list[str]]:
    if not s["mask"].any():
        loc = {"vertical": "", "horizontal": ""}
        return loc, ["no focal lesion", "no mass", "no discrete lesion", "no suspicious mass"], [
            "imaged breast tissue", "scanned breast", "field of view", "visible tissue"]
    r, c = _centroid(s["mask"])
    fb = _bbox(s["fov"])
    fr = (r - fb[0]) / max(1, fb[2] - fb[0])
    fc = (c - fb[1]) / max(1, fb[3] - fb[1])
    vert = "upper" if fr < 1 / 3 else ("middle" if fr < 2 / 3 else "lower")
    horiz = "left" if fc < 1 / 3 else ("central" if fc < 2 / 3 else "right")
    depth = {"upper": "shallow", "middle": "mid-depth", "lower": "deep"}[vert]
    if horiz == "central":
        locs = ["central region" if vert == "middle" else f"{vert} central region",
                f"{vert} central part of the image", f"{depth} tissue at the centre"]
    else:
        locs = [f"{vert} {horiz} region", f"{vert} {horiz} part of the image",
                f"{depth} tissue on the {horiz}"]
    les = s["lesion"]
    if s["label"] == "benign":
        shapes = ["oval", "round", "well-circumscribed", "smooth-bordered", "oval circumscribed"]
        extra = ["", "", " with posterior acoustic enhancement", " with posterior enhancement"]
    else:
        shapes = ["irregular", "ill-defined", "angular", "irregular microlobulated"]
        if les["spiculated"]:
            shapes += ["spiculated", "spiculated irregular"]
        if les["taller_than_wide"]:
            shapes += ["taller-than-wide irregular"]
        extra = ["", "", " with posterior acoustic shadowing", " with posterior shadowing"]
    nouns = ["mass", "lesion", "nodule", "tumor"]
    echo = ["hypoechoic", "dark", "low-echo"]
    finds = [f"a {e} {sh} {n}{x}" for e in echo for sh in shapes for n in nouns for x in extra]
    return {"vertical": vert, "horizontal": horiz}, finds, locs


# ============================================================================================
# brain MRI (axial, post-contrast T1)


@dataclass
class _Head:
    """An axial head: centre, semi-axes and tilt; every pixel's coordinates in the head's frame
    (``U`` lateral, image right = patient left; ``V`` anterior at the top, negative), its angle
    ``th`` and normalised radius ``q`` (1 at the scalp); the radii of the skull tables and of the
    brain surface (``qb``) in units of ``q``; ``e`` the depth below the brain surface."""

    cx: float
    cy: float
    Rx: float
    Ry: float
    rot: float
    c: float
    s: float
    m: float
    U: np.ndarray
    V: np.ndarray
    th: np.ndarray
    q: np.ndarray
    scalp_t: float
    skull_t: float
    q_skull: float
    q_inner: float
    qb: float
    R: float
    px_q: float
    e: np.ndarray

    def uv_to_xy(self, u: float, v: float) -> tuple[float, float]:
        """Head frame -> grid units."""
        return self.cx + u * self.c - v * self.s, self.cy + u * self.s + v * self.c


def _brain_head(g: _Grid, rng: np.random.Generator) -> _Head:
    """The head's outline (an ellipse with a slightly wavy rim), tilt and layer radii."""
    m = min(g.ax, g.ay)
    cx = g.ax / 2 + rng.uniform(-0.025, 0.025)
    cy = g.ay / 2 + rng.uniform(-0.02, 0.02)
    Rx = m * rng.uniform(0.32, 0.38)
    Ry = m * rng.uniform(0.40, 0.455)
    rot = rng.uniform(-0.12, 0.12)
    c, s = math.cos(rot), math.sin(rot)
    dx, dy = g.X - cx, g.Y - cy
    U = dx * c + dy * s  # lateral (image right = patient left)
    V = -dx * s + dy * c  # anterior (top, negative) -> posterior (bottom, positive)
    th = np.arctan2(V / Ry, U / Rx)
    shape = 1.0 + sum(a * np.cos(k * th + p) for k, a, p in _harmonics(rng, 0.025, 4))
    q = np.hypot(U / Rx, V / Ry) / shape
    scalp_t = rng.uniform(0.05, 0.075)
    skull_t = rng.uniform(0.045, 0.07)
    q_skull = 1.0 - scalp_t
    q_inner = q_skull - skull_t
    qb = q_inner - rng.uniform(0.008, 0.018)  # brain surface
    R = (Rx + Ry) / 2
    px_q = g.px / R
    e = (qb - q) * R  # depth below the brain surface (grid units)
    return _Head(cx, cy, Rx, Ry, rot, c, s, m, U, V, th, q, scalp_t, skull_t, q_skull, q_inner,
                 qb, R, px_q, e)


def _brain_tissue(g: _Grid, rng: np.random.Generator, h: _Head) -> tuple[
        np.ndarray, np.ndarray, list[tuple[float, float]], np.ndarray, np.ndarray]:
    """White and grey matter with radial sulci, the interhemispheric fissure, deep grey nuclei
    and the lateral ventricles. Returns the image (0..1), the ventricles, their atria (head
    frame) and two noise fields the tumours reuse."""
    H, W = g.H, g.W
    U, V, th, e, Rx, Ry, R, rot = h.U, h.V, h.th, h.e, h.Rx, h.Ry, h.R, h.rot
    n1 = _noise(rng, (H, W), 0.03 * g.s)
    n2 = _noise(rng, (H, W), 0.022 * g.s)
    n3 = _noise(rng, (H, W), 0.01 * g.s)
    wm_v, gm_v, csf_v = rng.uniform(0.55, 0.6), rng.uniform(0.38, 0.43), rng.uniform(0.07, 0.13)
    gm_t = rng.uniform(0.018, 0.026)
    # radial sulci: zeros of a warped angular sine; grey matter lines the surface and each sulcus
    n_g = rng.uniform(26, 38)
    sphase = np.abs(np.sin(n_g * th / 2 + 1.3 * n1))
    s_depth = gm_t * (1.8 + 0.9 * n2)
    gm = np.maximum(_sig((gm_t - e) / (1.2 * g.px)),
                    _sig((0.45 - sphase) / 0.08) * _sig((s_depth + 0.8 * gm_t - e) / (1.2 * g.px)))
    img_f = wm_v + (gm_v - wm_v) * gm + 0.012 * n3
    sulci = _sig((0.12 - sphase) / 0.04) * _sig((s_depth - e) / g.px)
    img_f = img_f * (1 - 0.85 * sulci) + csf_v * 0.85 * sulci
    fiss = np.exp(-((U / (1.6 * g.px)) ** 2)) * (np.abs(V) > 0.3 * Ry)
    img_f = img_f * (1 - fiss) + csf_v * fiss
    # deep grey nuclei and lateral ventricles
    vc = rng.uniform(-0.06, 0.02) * Ry
    for sgn in (-1, 1):
        tl = _star(g, *h.uv_to_xy(sgn * rng.uniform(0.17, 0.22) * Rx, vc + 0.14 * Ry),
                   0.11 * Rx, 0.13 * Ry, rot, _harmonics(rng, 0.05, 3))
        w_t = _inside(tl, 4 * g.px / (0.12 * R)) * 0.8
        img_f = img_f * (1 - w_t) + (gm_v + 0.05) * w_t
    vent_w = rng.uniform(0.035, 0.075) * Rx
    vent_l = rng.uniform(0.22, 0.3) * Ry
    vent_u = rng.uniform(0.07, 0.11) * Rx
    kappa = rng.uniform(1.0, 2.2) / Ry
    vent = np.zeros((H, W), dtype=np.float32)
    atria: list[tuple[float, float]] = []
    for sgn in (-1, 1):
        a = rng.uniform(0.9, 1.1)
        vv = V - vc
        uu = sgn * U - vent_u - kappa * (vv + vent_l) ** 2 / 2
        wv = vent_w * a * (1 + 0.6 * np.clip(vv / vent_l, 0, 1))
        lev = np.hypot(uu / wv, vv / vent_l)
        vent = np.maximum(vent, _inside(lev, 2.5 * g.px / vent_w))
        atria.append((sgn * (vent_u + kappa * (1.75 * vent_l) ** 2 / 2), vc + 0.75 * vent_l))
    img_f = img_f * (1 - vent) + csf_v * vent
    img_f = np.where(h.q < h.qb, img_f, csf_v)
    return img_f, vent, atria, n2, n3


def _brain_scalp_and_skull(g: _Grid, rng: np.random.Generator, h: _Head, img_f: np.ndarray,
                           n3: np.ndarray) -> np.ndarray:
    """Scalp (bright fat of varying thickness) and skull (dark tables, grey diploe) around the
    brain; nothing outside the head."""
    q, th = h.q, h.th
    scalp_fat = rng.uniform(0.86, 0.95)
    fat_var = 1.0 + 0.25 * _wave(rng, 10, -np.pi, np.pi)(th)
    r_s = (q - h.q_skull) / (h.scalp_t * fat_var)
    scalp = np.where(r_s > 0.8, 0.45, np.where(r_s > 0.25, scalp_fat, 0.35))
    r_k = (q - h.q_inner) / h.skull_t
    skull = np.where((r_k > 0.3) & (r_k < 0.72), rng.uniform(0.25, 0.4), 0.04)
    img_f = np.where(q >= h.q_inner, skull, img_f)
    img_f = np.where(q >= h.q_skull, scalp + 0.02 * n3, img_f)
    return np.where(q < 1.0, img_f, 0.0)


def _glioma(g: _Grid, rng: np.random.Generator, h: _Head, img_f: np.ndarray, brain: np.ndarray,
            vent: np.ndarray, n2: np.ndarray, n3: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple]:
    """An intra-axial, ring-enhancing mass with a dark necrotic core and surrounding oedema."""
    Rx, Ry, qb, m = h.Rx, h.Ry, h.qb, h.m
    for _try in range(30):
        sgn = rng.choice([-1, 1])
        r_t = rng.uniform(0.08, 0.15) * m
        ut = sgn * rng.uniform(0.25, 0.58) * Rx * qb
        vt = rng.uniform(-0.55, 0.55) * Ry * qb
        if math.hypot(ut / Rx, vt / Ry) + 1.45 * r_t / h.R < qb - 0.05 and abs(ut) > 1.5 * r_t:
            break
    x, y = h.uv_to_xy(ut, vt)
    harm = _harmonics(rng, rng.uniform(0.12, 0.22), 6, 0.7)
    lev = _star(g, x, y, r_t, r_t * rng.uniform(0.75, 1.2), rng.uniform(0, np.pi), harm)
    core = _star(g, x, y, r_t * rng.uniform(0.35, 0.55), r_t * rng.uniform(0.3, 0.5),
                 rng.uniform(0, np.pi), _harmonics(rng, 0.15, 5))
    oed = _star(g, x, y, r_t * rng.uniform(1.6, 2.2), r_t * rng.uniform(1.5, 2.1),
                rng.uniform(0, np.pi), _harmonics(rng, 0.3, 7, 0.5))
    w_oed = _inside(oed + 0.25 * n2, 0.3) * brain * (1 - vent)
    img_f = img_f * (1 - 0.3 * w_oed)
    rim = rng.uniform(0.76, 0.84) + 0.025 * n3
    w_t = _inside(lev, 1.5 * g.px / r_t)
    w_c = _inside(core, 2.0 * g.px / (0.45 * r_t))
    tum = rim * (1 - w_c) + rng.uniform(0.22, 0.3) * w_c
    img_f = img_f * (1 - w_t) + tum * w_t
    return img_f, lev < 1.0, (ut, vt)


def _meningioma(g: _Grid, rng: np.random.Generator, h: _Head, img_f: np.ndarray,
                n3: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple]:
    """An extra-axial, homogeneously enhancing mass on the inner table, with a dural tail."""
    q, th, rot, m = h.q, h.th, h.rot, h.m
    phi = rng.uniform(0, 2 * np.pi)
    r_t = rng.uniform(0.075, 0.13) * m
    bx, by = math.cos(phi) * h.Rx * h.qb, math.sin(phi) * h.Ry * h.qb
    nrm = np.array([math.cos(phi) / h.Rx, math.sin(phi) / h.Ry])
    nrm /= np.linalg.norm(nrm)
    ut, vt = bx - 0.7 * r_t * nrm[0], by - 0.7 * r_t * nrm[1]
    x, y = h.uv_to_xy(ut, vt)
    lev = _star(g, x, y, r_t, r_t * rng.uniform(0.8, 1.0), phi + rot,
                _harmonics(rng, 0.04, 4))
    inner = q < h.q_inner
    w_t = _inside(lev, 1.2 * g.px / r_t) * inner
    val = rng.uniform(0.76, 0.84) + 0.02 * n3
    img_f = img_f * (1 - w_t) + val * w_t
    # dural tail: a thin enhancing strip along the inner table, beside the mass
    ang = np.abs((th - math.atan2(math.sin(phi), math.cos(phi)) + np.pi) % (2 * np.pi) - np.pi)
    tail = np.exp(-(((h.q_inner - q) / (2.5 * h.px_q)) ** 2)) * np.clip(1 - ang / 0.45, 0, 1) \
        * inner * (lev >= 1.0)
    img_f = img_f + (0.72 - img_f) * tail * 0.8
    return img_f, (lev < 1.0) & inner, (ut, vt)


def _pituitary(g: _Grid, rng: np.random.Generator, h: _Head, img_f: np.ndarray,
               n3: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple]:
    """A small enhancing mass in the sella, on the midline behind the orbits."""
    r_t = rng.uniform(0.045, 0.065) * h.m
    ut, vt = rng.uniform(-0.012, 0.012), rng.uniform(0.3, 0.42) * h.Ry
    x, y = h.uv_to_xy(ut, vt)
    lev = _star(g, x, y, r_t * rng.uniform(0.9, 1.2), r_t, h.rot, _harmonics(rng, 0.05, 3))
    w_t = _inside(lev, 1.2 * g.px / r_t)
    val = rng.uniform(0.74, 0.82) + 0.02 * n3
    img_f = img_f * (1 - w_t) + val * w_t
    return img_f, lev < 1.0, (ut, vt)


def _brain_decoys(g: _Grid, rng: np.random.Generator, h: _Head, img_f: np.ndarray,
                  head: np.ndarray, atria: list[tuple[float, float]],
                  tumour_uv: tuple | None) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Bright decoys a "brightest region" rule falls for: venous sinuses, choroid plexus, cortical
    vessels, a thick patch of scalp fat (none near the tumour). Returns the image, the decoys'
    mask and their descriptions."""
    H, W, m, Rx, Ry = g.H, g.W, h.m, h.Rx, h.Ry
    decoys: list[dict[str, Any]] = []
    decoy_mask = np.zeros((H, W), dtype=bool)

    def add_decoy(kind: str, u: float, v: float, rx: float, ry: float, val: float,
                  harm=()) -> None:
        nonlocal img_f, decoy_mask
        if tumour_uv is not None and math.hypot(u - tumour_uv[0], v - tumour_uv[1]) < 0.1 * m:
            return
        x, y = h.uv_to_xy(u, v)
        lev = _star(g, x, y, rx, ry, h.rot, harm)
        w = _inside(lev, 1.2 * g.px / min(rx, ry)) * head
        img_f = img_f * (1 - w) + val * w
        dm = (lev < 1.0) & head
        decoy_mask |= dm
        decoys.append({"kind": kind, "centre": g.to_px(x, y), "bbox": _bbox(dm)})

    if rng.random() < 0.85:  # superior sagittal sinus, posterior
        r = rng.uniform(0.024, 0.04) * m
        add_decoy("sinus", 0.0, (h.q_inner - 0.01) * Ry - r, r * 1.1, r,
                  rng.uniform(0.93, 1.02), [(3, 0.12, np.pi / 2)])
    if rng.random() < 0.5:  # superior sagittal sinus, anterior
        r = rng.uniform(0.02, 0.03) * m
        add_decoy("sinus", 0.0, -(h.q_inner - 0.01) * Ry + r, r, r, rng.uniform(0.92, 1.0))
    for au, av in atria:  # choroid plexus glomus in each atrium
        if rng.random() < 0.6:
            r = rng.uniform(0.022, 0.034) * m
            add_decoy("choroid plexus", au, av, r * rng.uniform(0.9, 1.3), r,
                      rng.uniform(0.92, 1.0), _harmonics(rng, 0.1, 4))
    for _ in range(int(rng.integers(1, 5))):  # cortical vessels (small)
        ang = rng.uniform(0, 2 * np.pi)
        qq = h.qb - rng.uniform(0.02, 0.08)
        r = rng.uniform(0.006, 0.012) * m
        add_decoy("vessel", math.cos(ang) * Rx * qq, math.sin(ang) * Ry * qq, r * 2, r,
                  rng.uniform(0.92, 1.0))
    if rng.random() < 0.35:  # thick subcutaneous fat patch
        ang = rng.uniform(0, 2 * np.pi)
        qq = 1.0 - h.scalp_t * 0.5
        r = rng.uniform(0.025, 0.035) * m
        add_decoy("scalp fat", math.cos(ang) * Rx * qq, math.sin(ang) * Ry * qq, r * 1.8, r,
                  rng.uniform(0.95, 1.02))
    return img_f, decoy_mask, decoys


def _brain_acquisition(g: _Grid, rng: np.random.Generator, img_f: np.ndarray) -> np.ndarray:
    """Bias field, Rician noise and the display window, to 8 bits."""
    H, W = g.H, g.W
    bias = 1.0 + 0.04 * _noise(rng, (H, W), 0.4 * g.s)
    sig_n = rng.uniform(0.01, 0.025)
    img_f = img_f * bias
    img_f = np.hypot(img_f + sig_n * rng.standard_normal((H, W)), sig_n * rng.standard_normal((H, W)))
    lo, hi = rng.uniform(-0.02, 0.03), rng.uniform(0.97, 1.1)
    v = np.clip((img_f - lo) / (hi - lo), 0, 1) ** rng.uniform(0.9, 1.12)
    return _to_uint8(v)


def _brain(g: _Grid, rng: np.random.Generator, label: str) -> dict[str, Any]:
    """An axial post-contrast T1 brain MRI: head, tissue, scalp and skull, the tumour (glioma,
    meningioma or pituitary), bright decoys, acquisition."""
    h = _brain_head(g, rng)
    img_f, vent, atria, n2, n3 = _brain_tissue(g, rng, h)
    brain = h.q < h.qb
    img_f = _brain_scalp_and_skull(g, rng, h, img_f, n3)
    head = h.q < 1.0
    mask = np.zeros((g.H, g.W), dtype=bool)
    tumour_uv: tuple[float, float] | None = None
    if label == "glioma":
        img_f, mask, tumour_uv = _glioma(g, rng, h, img_f, brain, vent, n2, n3)
    elif label == "meningioma":
        img_f, mask, tumour_uv = _meningioma(g, rng, h, img_f, n3)
    elif label == "pituitary":
        img_f, mask, tumour_uv = _pituitary(g, rng, h, img_f, n3)
    mask &= brain
    img_f, decoy_mask, decoys = _brain_decoys(g, rng, h, img_f, head, atria, tumour_uv)
    img = _brain_acquisition(g, rng, img_f)
    brain_tissue = brain & (vent < 0.5) & ~mask & ~decoy_mask
    return {"image": img, "mask": mask, "fov": ndi.binary_fill_holes(head), "decoys": decoys,
            "decoy_mask": decoy_mask, "brain_mask": brain_tissue,
            "midline_col": float(g.to_px(h.cx, h.cy)[1])}


def _brain_words(s: dict, g: _Grid) -> tuple[dict[str, str], list[str], list[str]]:
    label = s["label"]
    if label == "normal":
        return {"side": "", "lobe": ""}, [
            "no enhancing mass", "no tumor", "no focal enhancing lesion", "no mass lesion"], [
            "brain parenchyma", "cerebral hemispheres", "imaged brain", "visible brain tissue"]
    if label == "pituitary":
        loc = {"side": "midline", "lobe": "sellar"}
        finds = [f"a {a} {n}" for a in ("small enhancing", "small round enhancing",
                                        "small hyperintense", "small homogeneous enhancing")
                 for n in ("mass", "tumor", "lesion", "adenoma")]
        return loc, finds, ["midline sellar region near the skull base",
                            "pituitary region at the skull base", "midline near the skull base"]
    r, c = _centroid(s["mask"])
    side = "right" if c < s["midline_col"] else "left"  # radiological convention
    hb = _bbox(s["fov"])
    fr = (r - hb[0]) / max(1, hb[2] - hb[0])
    fc = abs(c - s["midline_col"]) / max(1, (hb[3] - hb[1]) / 2)
    lobe = "frontal" if fr < 0.38 else ("occipital" if fr > 0.68 else
                                        ("temporal" if fc > 0.55 else "parietal"))
    loc = {"side": side, "lobe": lobe}
    if label == "glioma":
        finds = [f"{a} {n}{x}" for a in ("an irregular ring-enhancing", "an irregular enhancing",
                                          "a heterogeneous ring-enhancing", "an ill-defined enhancing")
                 for n in ("mass", "tumor", "lesion")
                 for x in ("", " with central necrosis", " with surrounding edema")]
        locs = [f"{side} {lobe} lobe", f"{side} hemisphere", f"{lobe} lobe of the {side} hemisphere"]
    else:
        finds = [f"{a} {n}" for a in ("a round homogeneously enhancing extra-axial",
                                      "a well-defined dural-based enhancing", "a round hyperintense dural-based",
                                      "a smooth homogeneously enhancing")
                 for n in ("mass", "tumor", "lesion")]
        locs = [f"{side} {lobe} convexity", f"{side} hemisphere along the dura",
                f"{side} {lobe} region next to the skull"]
    return loc, finds, locs


# ============================================================================================
# chest X-ray (PA)


@dataclass
class _Chest:
    """A frontal chest film's frame: the midline ``mx``, coordinates ``Yc`` (0..1 over the
    central square) and ``dx`` (from the tilted midline, in units of the square), two noise
    fields, the base sizes the lungs vary around, and the heart (``heart < 1`` inside)."""

    sc: float
    mx: float
    Yc: np.ndarray
    dx: np.ndarray
    adx: np.ndarray
    n1: np.ndarray
    n2: np.ndarray
    lw_base: float
    yt_base: float
    yb_base: float
    mw: float
    dome: float
    hy: float
    heart: np.ndarray


def _xray_frame(g: _Grid, rng: np.random.Generator) -> _Chest:
    """The patient's position on the film and the heart's outline."""
    H, W = g.H, g.W
    sc = min(g.ax, g.ay)
    mx = g.ax / 2 + rng.uniform(-0.025, 0.025)
    y_off = (g.ay - sc) / 2
    Yc = (g.Y - y_off) / sc  # 0..1 over the central square
    dxs = (g.X - mx) / sc
    tilt = rng.uniform(-0.04, 0.04)
    dx = dxs + tilt * (Yc - 0.5)
    adx = np.abs(dx)
    n1 = _noise(rng, (H, W), 0.02 * g.s)
    n2 = _noise(rng, (H, W), 0.06 * g.s)
    lw_base = rng.uniform(0.3, 0.39)
    yt_base = rng.uniform(0.07, 0.15)
    yb_base = rng.uniform(0.68, 0.8)
    mw = rng.uniform(0.045, 0.07)
    dome = rng.uniform(0.05, 0.1)
    hcx = rng.uniform(0.035, 0.065)  # heart centre, right of the midline in the image
    hy = yb_base - rng.uniform(0.1, 0.15)
    ha, hb = rng.uniform(0.14, 0.18), rng.uniform(0.1, 0.13)
    hang = rng.uniform(0.35, 0.7)
    hu = (dx - hcx) * math.cos(hang) + (Yc - hy) * math.sin(hang)
    hv = -(dx - hcx) * math.sin(hang) + (Yc - hy) * math.cos(hang)
    heart = np.hypot(hu / ha, hv / hb)
    return _Chest(sc, mx, Yc, dx, adx, n1, n2, lw_base, yt_base, yb_base, mw, dome, hy, heart)


def _xray_lungs(g: _Grid, rng: np.random.Generator, c: _Chest) -> tuple[
        np.ndarray, np.ndarray, dict[str, dict[str, float]]]:
    """The two lungs (radiological: the patient's right on the image's left; the right
    hemidiaphragm higher), minus the heart. Returns the lungs' mask, the diaphragm's height per
    column and each lung's size."""
    H, W = g.H, g.W
    dx, Yc, mw = c.dx, c.Yc, c.mw
    heart_in = c.heart < 1.0
    lungs = np.zeros((H, W), dtype=bool)
    dia_y = np.zeros((H, W), dtype=np.float32)
    per_side: dict[str, dict[str, float]] = {}
    for side, sgn in (("right", -1), ("left", 1)):  # radiological: patient right = image left
        lw = c.lw_base * rng.uniform(0.94, 1.06)
        yt = c.yt_base + rng.uniform(-0.015, 0.015)
        yb = c.yb_base + (rng.uniform(-0.06, -0.01) if side == "right" else rng.uniform(0, 0.02))
        apex = mw + rng.uniform(0.3, 0.45) * (lw - mw)
        dist = sgn * dx
        t = (Yc - yt) / (yb - yt)
        tc = np.clip(t, 0, 1)
        dl = apex + (lw - apex) * np.sqrt(1 - (1 - np.minimum(tc / 0.7, 1)) ** 2)
        dm = apex - (apex - mw) * np.sqrt(1 - (1 - np.minimum(tc / 0.32, 1)) ** 2)
        dpk = mw + 0.45 * (lw - mw)
        ydia = yb - c.dome * np.clip(1 - ((dist - dpk) / (lw - dpk)) ** 2, 0, 1) * (
            1 if side == "right" else rng.uniform(0.8, 1.0))
        lung = (t >= 0) & (dist > dm) & (dist < dl) & (Yc < ydia) & ~heart_in
        lungs |= _largest_component(lung)
        dia_y = np.where(dist > 0, ydia, dia_y)
        per_side[side] = {"lw": lw, "yt": yt, "yb": yb}
    return lungs, dia_y, per_side


def _xray_soft_tissue(g: _Grid, rng: np.random.Generator, c: _Chest, lung_soft: np.ndarray,
                      depth_in: np.ndarray, dia_y: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """Density (soft-tissue equivalent thickness; higher = whiter) of the body, the air in the
    lungs, the abdomen with a gastric bubble, heart and mediastinum, aortic knob, trachea and
    spine. Returns it and the sizes the bones are drawn with."""
    dx, adx, Yc, mw, lw_base = c.dx, c.adx, c.Yc, c.mw, c.lw_base
    y_sh = rng.uniform(0.06, 0.1)
    neck = rng.uniform(0.08, 0.11)
    sh_w = lw_base + rng.uniform(0.12, 0.2)
    half_w = neck + (sh_w - neck) * _sig((Yc - y_sh) / 0.035)
    body = _sig((half_w - adx) / 0.01)
    chest_w = lw_base + rng.uniform(0.035, 0.06)
    D = body * (0.75 + 0.3 * np.clip(1 - (dx / chest_w) ** 2, 0, 1) + 0.03 * c.n2)
    # lungs: air removes density, more in the middle of the lung
    D = D - lung_soft * (0.42 + 0.25 * depth_in) * rng.uniform(0.9, 1.1)
    # abdomen below the diaphragm, fading downwards
    below = _sig((Yc - dia_y) / 0.006) * _sig((chest_w + 0.02 - adx) / 0.015)
    D = D + below * (0.32 - 0.25 * np.clip(Yc - dia_y, 0, 0.3)) * (
        1 - 0.5 * np.clip((adx - lw_base) / 0.05, 0, 1))
    if rng.random() < 0.75:  # gastric bubble under the left hemidiaphragm (image right)
        bx = rng.uniform(0.1, 0.22)
        by = c.yb_base + rng.uniform(0.03, 0.07)
        bub = _inside(np.hypot((dx - bx) / 0.05, (Yc - by) / 0.028), 0.15)
        D = D - 0.3 * bub * below
    # heart and mediastinum
    D = D + 0.3 * _inside(c.heart, 0.12) * (1 - 0.7 * below)
    med_w = mw * (1.0 + 0.3 * _sig((Yc - 0.3) / 0.05))
    D = D + 0.3 * _sig((med_w - adx) / 0.008) * _sig((c.hy - Yc) / 0.03) * _sig(
        (Yc - y_sh - 0.04) / 0.02)
    knob = np.hypot((dx - mw * 1.1) / 0.035, (Yc - rng.uniform(0.27, 0.33)) / 0.03)
    D = D + 0.2 * _inside(knob, 0.3)
    # trachea (air column) and spine
    y_car = rng.uniform(0.3, 0.36)
    trach = _sig((0.016 - np.abs(dx - 0.004)) / 0.004) * _sig((y_car - Yc) / 0.01)
    D = D - 0.18 * trach
    sp_w = rng.uniform(0.03, 0.04)
    period = rng.uniform(0.055, 0.07)
    vert = 0.7 + 0.3 * np.cos(np.pi * Yc / period) ** 2
    spine = _sig((sp_w - adx) / 0.006) * vert
    D = D + 0.18 * spine * body
    return D, {"body": body, "y_sh": y_sh, "sh_w": sh_w, "chest_w": chest_w, "sp_w": sp_w}


def _xray_bones_and_vessels(g: _Grid, rng: np.random.Generator, c: _Chest, D: np.ndarray,
                            lung_soft: np.ndarray, dia_y: np.ndarray, sizes: dict[str, Any]) -> np.ndarray:
    """Ribs (posterior arcs, faint anterior ones), clavicles, humeral heads and the vascular
    markings radiating from the hila, added to the density."""
    H, W = g.H, g.W
    dx, adx, Yc, mw = c.dx, c.adx, c.Yc, c.mw
    chest_w, sp_w, body = sizes["chest_w"], sizes["sp_w"], sizes["body"]
    # ribs: one vectorised pass over a family of arcs (posterior ribs, then faint anterior ones)
    alpha, beta = rng.uniform(0.4, 0.6), rng.uniform(1.1, 1.6)
    sp = rng.uniform(0.058, 0.07)
    y_r = Yc + alpha * adx - beta * adx**2 - rng.uniform(0.04, 0.08)
    ph = np.sign(y_r) * (np.abs(y_r) / sp) ** 0.93  # ribs spread a little towards the base
    fr = ph - np.floor(ph)
    th_r = rng.uniform(0.32, 0.4)
    prof = np.where(fr < th_r, 0.55 + 0.45 * ((2 * fr / th_r - 1) ** 2), 0.0)
    rib_zone = (ph > 0) & (ph < 10.5) & (adx > sp_w) & (adx < chest_w + 0.01)
    ph_a = (Yc - 0.4 * adx - rng.uniform(0.16, 0.2)) / (sp * 1.15)
    fa = ph_a - np.floor(ph_a)
    prof_a = (fa < 0.3) * (ph_a > 0) * (ph_a < 5) * (adx > 0.06) * (adx < chest_w)
    ribs = (0.14 * prof * rib_zone + 0.05 * prof_a) * _sig((dia_y + 0.04 - Yc) / 0.01)
    D = D + _blur(ribs.astype(np.float32), 0.8 * g.s / 256)
    # clavicles
    ycl = rng.uniform(0.12, 0.16)
    cl = ycl - 0.2 * (adx - 0.04) + 0.45 * (adx - 0.2) ** 2 - 0.45 * 0.16**2
    clav = np.exp(-((np.abs(Yc - cl) / rng.uniform(0.01, 0.013)) ** 3)) * _sig(
        (adx - 0.03) / 0.008) * _sig((c.lw_base + 0.06 - adx) / 0.01)
    D = D + 0.24 * clav
    # humeral heads at the top corners
    for sgn in (-1, 1):
        hh = np.hypot(dx - sgn * (sizes["sh_w"] - 0.02), Yc - sizes["y_sh"] - 0.06) / 0.065
        D = D + 0.3 * _inside(hh, 0.2) * body
    # vascular markings: wiggly lines radiating from the hila, fading to the periphery
    for sgn in (-1, 1):
        hx, hyl = sgn * (mw + 0.035), rng.uniform(0.38, 0.45)
        rr = np.hypot(dx - hx, Yc - hyl)
        ang = np.arctan2(Yc - hyl, dx - hx)
        sm = _noise(rng, (H, W), 0.03 * g.s)
        streak = np.exp(-(np.sin(ang * rng.uniform(9, 13) + 1.8 * sm) ** 2) / 0.06)
        fade = np.exp(-rr / 0.11)
        D = D + lung_soft * (sgn * dx > 0) * (0.16 * streak * fade
                                              + 0.2 * np.exp(-((rr / 0.045) ** 2)))
    return D


def _xray_pneumonia(g: _Grid, rng: np.random.Generator, c: _Chest, lungs: np.ndarray,
                    lung_soft: np.ndarray) -> np.ndarray:
    """Patchy opacities (0..1) of pneumonia, more often in the lower lungs, on one side (70 %) or
    both."""
    H, W = g.H, g.W
    opac = np.zeros((H, W), dtype=np.float32)
    rows, cols = np.nonzero(lungs)
    wgt = (rows - rows.min() + 5.0) ** 1.5
    wgt /= wgt.sum()
    n_p = int(rng.integers(1, 5))
    sides = rng.random() < 0.3  # bilateral disease
    first_side = None
    for _ in range(n_p):
        i = int(rng.choice(rows.size, p=wgt))
        if first_side is not None and not sides:
            same = (cols < g.W * c.mx / g.ax) == first_side
            i = int(rng.choice(np.flatnonzero(same), p=wgt[same] / wgt[same].sum()))
        r0, c0 = rows[i], cols[i]
        if first_side is None:
            first_side = c0 < g.W * c.mx / g.ax
        x, y = (c0 + 0.5) / g.s, (r0 + 0.5) / g.s
        rad = rng.uniform(0.05, 0.11) * c.sc
        lev = _star(g, x, y, rad, rad * rng.uniform(0.6, 1.1), rng.uniform(0, np.pi),
                    _harmonics(rng, 0.25, 6, 0.5))
        patch = _inside(lev + 0.3 * c.n2, 0.6) * np.clip(0.65 + 0.4 * c.n2, 0.25, 1.0)
        opac = np.maximum(opac, patch)
    return _blur(opac, 0.012 * g.s) * lung_soft


def _xray_acquisition(g: _Grid, rng: np.random.Generator, c: _Chest, D: np.ndarray) -> np.ndarray:
    """X-ray attenuation of the density, detector blur, the display window and noise, to 8 bits."""
    kappa = rng.uniform(0.85, 1.1)
    img_f = 1.0 - np.exp(-kappa * np.clip(D, 0, None))
    img_f = _blur(img_f.astype(np.float32), 0.6 * g.s / 256)
    lo = np.percentile(img_f, 0.5)
    hi = np.percentile(img_f, 99.8)
    v = np.clip((img_f - lo) / (hi - lo + 1e-6), 0, 1) ** rng.uniform(1.1, 1.6)
    v = v + rng.uniform(0.008, 0.025) * rng.standard_normal((g.H, g.W)) + 0.02 * c.n1 * rng.random()
    return _to_uint8(np.clip(v, 0, 1))


def _xray(g: _Grid, rng: np.random.Generator, label: str) -> dict[str, Any]:
    """A frontal chest X-ray: frame and heart, lungs, soft tissue, bones and vessels, pneumonia's
    opacities, acquisition."""
    H, W = g.H, g.W
    c = _xray_frame(g, rng)
    lungs, dia_y, per_side = _xray_lungs(g, rng, c)
    lung_f = lungs.astype(np.float32)
    lung_soft = _blur(lung_f, 1.0 * g.s / 256)
    depth_in = np.sqrt(np.clip(_blur(lung_f, 0.035 * g.s), 0, 1))
    D, sizes = _xray_soft_tissue(g, rng, c, lung_soft, depth_in, dia_y)
    D = _xray_bones_and_vessels(g, rng, c, D, lung_soft, dia_y, sizes)
    opac = np.zeros((H, W), dtype=np.float32)
    if label == "pneumonia":
        opac = _xray_pneumonia(g, rng, c, lungs, lung_soft)
        D = D + opac * rng.uniform(0.35, 0.6)
    img = _xray_acquisition(g, rng, c, D)
    return {"image": img, "mask": lungs, "fov": np.ones((H, W), dtype=bool), "decoys": [],
            "decoy_mask": np.zeros((H, W), dtype=bool), "opacity_mask": opac > 0.25,
            "midline_col": float(c.mx * g.s - 0.5), "lungs_info": per_side}


def _xray_words(s: dict, g: _Grid) -> tuple[dict[str, str], list[str], list[str]]:
    lungs_ph = ("both lungs", "the lungs", "both lung fields", "the lung fields")
    if s["label"] == "normal":
        finds = [f"{lp} with {n}" for lp in lungs_ph for n in (
            "no consolidation", "no focal opacity", "no airspace disease", "no infiltrate")]
        return {"side": "", "zone": ""}, finds, ["lung zones", "visible lung fields", "chest"]
    op = s["opacity_mask"]
    mid = s["midline_col"]
    cols = np.arange(op.shape[1])
    right = op[:, cols < mid].sum()  # image left = patient right
    left = op[:, cols >= mid].sum()
    tot = max(1, right + left)
    side = "both" if min(right, left) / tot > 0.2 else ("right" if right > left else "left")
    r, _ = _centroid(op) if op.any() else _centroid(s["mask"])
    lb = _bbox(s["mask"])
    fr = (r - lb[0]) / max(1, lb[2] - lb[0])
    zone = "upper" if fr < 1 / 3 else ("middle" if fr < 2 / 3 else "lower")
    finds = [f"{lp} with {n}" for lp in lungs_ph for n in (
        "patchy consolidation", "patchy airspace opacities", "ill-defined opacities",
        "pneumonic consolidation")]
    if side == "both":
        locs = [f"{zone} zones bilaterally", f"{zone} zones of both lungs"]
    else:
        locs = [f"{side} {zone} zone", f"{zone} zone of the {side} lung"]
    return {"side": side, "zone": zone}, finds, locs


# ============================================================================================
# public generator

_MAKERS = {"breast": (_breast, _breast_words), "brain": (_brain, _brain_words),
           "xray": (_xray, _xray_words)}


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown phantom task {task!r}; choose one of {', '.join(TASKS)}")


def _check_size(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        h = w = int(size)
    else:
        try:
            h, w = (int(v) for v in size)
        except (TypeError, ValueError):
            raise ValueError(f"size must be an int or (height, width), got {size!r}") from None
    if h < 32 or w < 32 or h > 4096 or w > 4096:
        raise ValueError(f"size must be between 32 and 4096 pixels per side, got {(h, w)}")
    return h, w


def generate_sample(
    task: str, seed: int, size: int | tuple[int, int] = 256, label: str | None = None
) -> PhantomSample:
    """Generate one phantom sample; a pure function of ``(task, seed, size, label)``.

    ``label=None`` draws the class uniformly from ``CLASSES[task]`` (from the seed).
    ``size`` is an int (square) or ``(height, width)``.
    """
    _check_task(task)
    h, w = _check_size(size)
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    seed = int(seed)
    if label is None:
        label = CLASSES[task][int(_rng(_TASK_CODE[task], seed, 3).integers(len(CLASSES[task])))]
    elif label not in CLASSES[task]:
        raise ValueError(
            f"unknown label {label!r} for task {task!r}; choose one of {', '.join(CLASSES[task])}"
        )
    g = _Grid(h, w)
    make, words = _MAKERS[task]
    rng = _rng(_TASK_CODE[task], seed, CLASSES[task].index(label), 1)
    info = make(g, rng, label)
    info["label"] = label
    loc, finds, locs = words(info, g)
    caps, ids = _captions(task, seed, finds, locs, _rng(_TASK_CODE[task], seed, 11))
    mask = np.ascontiguousarray(info.pop("mask"), dtype=bool)
    image = np.ascontiguousarray(info.pop("image"), dtype=np.uint8)
    info.pop("label")
    meta = {
        "seed": seed,
        "size": (h, w),
        "centroid": _centroid(mask),
        "bbox": _bbox(mask),
        "boxes": _component_boxes(mask),
        "location": loc,
        "side_convention": "image" if task == "breast" else "radiological",
        "caption_templates": ids,
        "generator_version": GENERATOR_VERSION,
        **info,
    }
    return PhantomSample(image=image, mask=mask, task=task, label=label, captions=caps, meta=meta)


# ============================================================================================
# pointing-game helpers (what a naive intensity rule would pick)


def _auto_fov(image: np.ndarray) -> np.ndarray:
    thr = max(1.0, 0.06 * float(np.percentile(image, 99)))
    fov = image >= thr
    fov = ndi.binary_closing(fov, iterations=2)
    return ndi.binary_fill_holes(fov)


def intensity_rule_point(
    image: np.ndarray,
    rule: str = "darkest",
    smooth_sigma: float | None = None,
    fov: np.ndarray | None = None,
) -> tuple[int, int]:
    """(row, col) of the darkest or brightest smoothed spot inside the field of view.

    The baseline a segmentation prompt must beat: if this rule found the lesion, a method could
    look good without reading the text. ``smooth_sigma`` defaults to 1 % of ``min(H, W)``;
    smoothing is normalised inside ``fov`` (default: the non-background region, holes filled),
    so the black surround never pulls border pixels down.
    """
    if rule not in ("darkest", "brightest"):
        raise ValueError(f"rule must be 'darkest' or 'brightest', got {rule!r}")
    img = np.asarray(image)
    if img.ndim == 3:
        img = img.mean(axis=2)
    if img.ndim != 2:
        raise ValueError(f"image must be (H, W) or (H, W, C), got shape {np.shape(image)}")
    img = img.astype(np.float32)
    if fov is None:
        fov = _auto_fov(img)
    fov = np.asarray(fov, dtype=bool)
    if fov.shape != img.shape:
        raise ValueError(f"fov shape {fov.shape} does not match image shape {img.shape}")
    if not fov.any():
        fov = np.ones_like(fov)
    sigma = 0.01 * min(img.shape) if smooth_sigma is None else float(smooth_sigma)
    f = fov.astype(np.float32)
    num = ndi.gaussian_filter(img * f, sigma)
    den = ndi.gaussian_filter(f, sigma)
    sm = num / np.maximum(den, 1e-6)
    sm = np.where(fov, sm, np.inf if rule == "darkest" else -np.inf)
    idx = int(np.argmin(sm) if rule == "darkest" else np.argmax(sm))
    r, c = divmod(idx, img.shape[1])
    return int(r), int(c)


def pointing_hit(point: tuple[int, int], mask: np.ndarray, tolerance_px: float = 0.0) -> bool:
    """True when ``point`` (row, col) is inside ``mask`` or within ``tolerance_px`` of it."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return False
    r, c = int(round(point[0])), int(round(point[1]))
    if 0 <= r < mask.shape[0] and 0 <= c < mask.shape[1] and mask[r, c]:
        return True
    rows, cols = np.nonzero(mask)
    return bool(np.min((rows - r) ** 2 + (cols - c) ** 2) <= tolerance_px**2)


# ============================================================================================
# data set and folder writer


def _split_code(split: str) -> int:
    if split in _SPLIT_CODE:
        return _SPLIT_CODE[split]
    return 3 + zlib.crc32(split.encode("utf-8")) % 253


_GOLD = (math.sqrt(5) - 1) / 2
_SQRT2 = math.sqrt(2) - 1


class PhantomDataset(Sequence):
    """``n`` phantom samples of one task, reproducible and torch-free.

    Sample ``i`` depends only on ``(task, seed, split, i)`` (and ``size``): its seed is
    ``seed * 2**40 + split_code * 2**32 + i``, so different splits never share seeds. Labels
    follow two low-discrepancy sequences: about ``normal_fraction`` normals at every length,
    the rest spread evenly over the finding classes.
    """

    def __init__(
        self,
        task: str,
        n: int,
        seed: int = 0,
        size: int | tuple[int, int] = 256,
        split: str = "train",
        normal_fraction: float = 0.15,
    ) -> None:
        _check_task(task)
        if int(n) < 0 or int(n) >= 2**32:
            raise ValueError(f"n must be between 0 and 2**32 - 1, got {n}")
        if int(seed) < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        if not 0.0 <= float(normal_fraction) <= 1.0:
            raise ValueError(f"normal_fraction must be in [0, 1], got {normal_fraction}")
        if not isinstance(split, str) or not split:
            raise ValueError(f"split must be a non-empty string, got {split!r}")
        self.task, self.n, self.seed = task, int(n), int(seed)
        self.size = _check_size(size)
        self.split = split
        self.normal_fraction = float(normal_fraction)
        self._offset = _rng(_TASK_CODE[task], self.seed, _split_code(split), 5).random(2)

    def seed_of(self, i: int) -> int:
        return self.seed * 2**40 + _split_code(self.split) * 2**32 + int(i)

    def label_of(self, i: int) -> str:
        """The class of sample ``i`` (cheap: no image is generated)."""
        findings = [c for c in CLASSES[self.task] if c != "normal"]
        u = (i * _GOLD + self._offset[0]) % 1.0
        if u < self.normal_fraction or not findings:
            return "normal"
        v = (i * _SQRT2 + self._offset[1]) % 1.0
        return findings[min(len(findings) - 1, int(v * len(findings)))]

    @property
    def labels(self) -> list[str]:
        return [self.label_of(i) for i in range(self.n)]

    def __len__(self) -> int:
        return self.n

    def _index(self, i: int) -> int:
        if not isinstance(i, (int, np.integer)):
            raise TypeError(f"index must be an int or a slice, got {type(i).__name__}")
        j = int(i) + self.n if i < 0 else int(i)
        if not 0 <= j < self.n:
            raise IndexError(f"index {i} out of range for a PhantomDataset of length {self.n}")
        return j

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.n))]
        j = self._index(i)
        return generate_sample(self.task, self.seed_of(j), self.size, self.label_of(j))

    def __iter__(self) -> Iterator[PhantomSample]:
        for j in range(self.n):
            yield self[j]

    def __repr__(self) -> str:
        return (f"PhantomDataset(task={self.task!r}, n={self.n}, seed={self.seed}, "
                f"size={self.size}, split={self.split!r})")


class PhantomPairs:
    """Image-caption pairs of phantom images from several tasks, for contrastive fine-tuning and
    retrieval (what :func:`medclipsam.finetune.finetune` and the retrieval protocol take).

    Images come from :class:`PhantomDataset` (``n_per_task`` per task, same ``seed``/``split``
    rules) and are generated once, at construction. ``captions="one"`` pairs each image with one
    of its captions, drawn reproducibly from ``seed``; ``"all"`` gives one pair per caption (the
    image repeated). ``transform`` (e.g. a :class:`~medclipsam.models.ClipBundle`'s ``preprocess``) is applied once per image
    and its output stored, so training epochs do not re-run it. Items are ``(image, caption)``;
    ``.captions``, ``.tasks`` and ``.labels`` list them per pair (``.captions`` doubles as the
    groups of identical captions in retrieval).
    """

    def __init__(
        self,
        tasks: Sequence[str] = TASKS,
        n_per_task: int = 100,
        *,
        seed: int = 0,
        split: str = "train",
        size: int | tuple[int, int] = 224,
        captions: str = "one",
        transform: Callable[[Any], Any] | None = None,
    ) -> None:
        if captions not in ("one", "all"):
            raise ValueError(f"captions must be 'one' or 'all', got {captions!r}")
        if isinstance(tasks, str):
            tasks = (tasks,)
        rng = np.random.default_rng([int(seed), _split_code(split), 17])
        self.images: list[Any] = []
        self.captions: list[str] = []
        self.tasks: list[str] = []
        self.labels: list[str] = []
        self.image_index: list[int] = []
        for task in tasks:
            ds = PhantomDataset(task, n_per_task, seed=seed, size=size, split=split)
            for s in ds:
                image = s.rgb if transform is None else transform(s.rgb)
                caps = s.captions if captions == "all" else [s.captions[int(rng.integers(len(s.captions)))]]
                self.images.append(image)
                for c in caps:
                    self.image_index.append(len(self.images) - 1)
                    self.captions.append(c)
                    self.tasks.append(task)
                    self.labels.append(s.label)

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i: int) -> tuple[Any, str]:
        return self.images[self.image_index[i]], self.captions[i]


def _png_ok(path: Path, size_wh: tuple[int, int]) -> bool:
    try:
        with Image.open(path) as im:
            if im.size != size_wh or im.mode != "L":
                return False
            im.verify()
        return True
    except (OSError, ValueError, SyntaxError):
        return False


def _write_png(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(array, mode="L").save(tmp, format="PNG")


def _write_if_changed(path: Path, text: str) -> None:
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    atomic_write_text(path, text)


def _split_counts(n: int, splits: dict[str, float]) -> dict[str, int]:
    raw = {k: n * f for k, f in splits.items()}
    counts = {k: int(math.floor(v)) for k, v in raw.items()}
    rest = n - sum(counts.values())
    for k in sorted(splits, key=lambda k: (-(raw[k] - counts[k]), list(splits).index(k)))[:rest]:
        counts[k] += 1
    return counts


def write_phantom_folder(
    out_dir: str | os.PathLike,
    task: str,
    n: int,
    seed: int = 0,
    size: int | tuple[int, int] = 256,
    splits: dict[str, float] | None = None,
    normal_fraction: float = 0.15,
) -> Path:
    """Write ``n`` phantom samples as a folder data set; resumable and atomic.

    Layout: ``images/<stem>.png`` (grey), ``masks/<stem>.png`` (0/255), ``captions.csv``
    (``image,caption,split``, one row per caption, paths relative to ``out_dir``), ``meta.csv``
    (``stem,task,label,split``), ``splits.json`` (``{"name", "seed", "rule", "splits"}``) and
    ``phantom.json`` (the parameters). Existing complete PNGs are kept untouched, so an
    interrupted call resumes; a folder written with other parameters is refused.
    Stems are ``<task>_<split>_<index:05d>``; split ``k`` holds ``PhantomDataset(task, n_k, seed,
    size, k)``.
    """
    _check_task(task)
    out_dir = Path(out_dir)
    hw = _check_size(size)
    splits = dict(splits) if splits is not None else {"train": 0.7, "val": 0.1, "test": 0.2}
    if not splits or any(not isinstance(k, str) or not k for k in splits):
        raise ValueError(f"splits must map non-empty split names to fractions, got {splits!r}")
    if any(f < 0 for f in splits.values()) or abs(sum(splits.values()) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must be non-negative and sum to 1, got {splits}")
    if int(n) < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    config = {
        "generator": "medclipsam.data.phantom",
        "generator_version": GENERATOR_VERSION,
        "task": task,
        "n": int(n),
        "seed": int(seed),
        "size": list(hw),
        "splits": splits,
        "normal_fraction": float(normal_fraction),
    }
    cfg_path = out_dir / "phantom.json"
    if cfg_path.is_file():
        try:
            old = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{cfg_path}: not valid JSON ({exc}); delete the folder or the file") \
                from exc
        if old != config:
            raise ValueError(
                f"{cfg_path}: this folder was written with other parameters ({old}); "
                f"refusing to mix it with {config}. Use another out_dir or delete it."
            )
    counts = _split_counts(int(n), splits)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_if_changed(cfg_path, json.dumps(config, indent=1) + "\n")
    cap_rows: list[tuple[str, str, str]] = []
    meta_rows: list[tuple[str, str, str, str]] = []
    split_stems: dict[str, list[str]] = {}
    size_wh = (hw[1], hw[0])
    for split_name, count in counts.items():
        ds = PhantomDataset(task, count, seed, hw, split_name, normal_fraction)
        split_stems[split_name] = []
        for i in range(count):
            stem = f"{task}_{split_name}_{i:05d}"
            sample = ds[i]
            img_path, mask_path = out_dir / "images" / f"{stem}.png", out_dir / "masks" / f"{stem}.png"
            if not _png_ok(img_path, size_wh):
                _write_png(img_path, sample.image)
            if not _png_ok(mask_path, size_wh):
                _write_png(mask_path, sample.mask.astype(np.uint8) * 255)
            split_stems[split_name].append(stem)
            meta_rows.append((stem, task, sample.label, split_name))
            for cap in sample.captions:
                cap_rows.append((f"images/{stem}.png", cap, split_name))

    def to_csv(header: Sequence[str], rows: list) -> str:
        buf = io.StringIO()
        wr = csv.writer(buf, lineterminator="\n")
        wr.writerow(header)
        wr.writerows(rows)
        return buf.getvalue()

    _write_if_changed(out_dir / "captions.csv", to_csv(("image", "caption", "split"), cap_rows))
    _write_if_changed(out_dir / "meta.csv", to_csv(("stem", "task", "label", "split"), meta_rows))
    doc = {
        "name": f"phantom-{task}",
        "seed": int(seed),
        "rule": (f"phantom world {task}, generator v{GENERATOR_VERSION}: split k holds "
                 f"PhantomDataset(task, n_k, seed, size, k); counts {counts}"),
        "splits": {k: sorted(v) for k, v in split_stems.items()},
    }
    _write_if_changed(out_dir / "splits.json", json.dumps(doc, indent=1) + "\n")
    return out_dir
