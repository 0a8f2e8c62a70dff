"""The phantom breast ultrasound (task ``"breast"``): B-mode images with a linear or sector
field, Rayleigh speckle after log compression, skin / fat / fibroglandular / muscle layers and depth
attenuation.

Classes ``benign`` (oval, smooth, posterior enhancement), ``malignant`` (irregular or spiculated,
may be taller than wide, posterior shadowing) and ``normal`` (empty mask). Decoys: anechoic cysts
(darker than any lesion) and acoustic shadow bands, so "the darkest region" is usually *not* the
lesion. :func:`draw_breast` draws an image and its mask; :func:`breast_words` gives the words its
captions are written from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from .world import (
    Grid,
    harmonics,
    mask_bbox,
    mask_centroid,
    smooth_noise,
    smooth_step,
    soft_inside,
    star_level,
    unit_to_uint8,
    wave,
)

__all__ = ["draw_breast", "breast_words"]


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
                * smooth_step((self.d - d_from) / soft)).astype(np.float32)


def _breast_probe(g: Grid, rng: np.random.Generator) -> _Probe:
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


def _breast_tissue(g: Grid, rng: np.random.Generator, p: _Probe) -> tuple[np.ndarray, float, float]:
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
    w1, w2, w3 = wave(rng), wave(rng), wave(rng)
    n_b = smooth_noise(rng, (H, W), rng.uniform(0.03, 0.06) * g.s)
    b_fat = skin_t + fat_t + 0.035 * w1(lat) + 0.025 * n_b
    b_gland = b_fat + gland_t + 0.06 * w2(lat) + 0.03 * n_b
    b_muscle = b_gland + rng.uniform(0.03, 0.08) + 0.02 * w3(lat)
    fat_db = rng.uniform(-13, -9)
    n_lob = smooth_noise(rng, (H, W), rng.uniform(0.04, 0.07) * g.s)
    n_tex = smooth_noise(rng, (H, W), rng.uniform(0.015, 0.03) * g.s)
    E = fat_db + 2.0 * n_tex
    # fat lobules separated by bright Cooper's ligaments (iso-lines of a smooth field)
    septa = np.exp(-((n_lob / 0.13) ** 2))
    in_gland = smooth_step((d - b_fat) / tw) * (1 - smooth_step((d - b_gland) / tw))
    gland = rng.uniform(-2, 1) + 3.0 * n_tex + 2.5 * n_lob
    # fat islands inside the glandular layer
    isl = smooth_step((n_lob - 1.0) / 0.15)
    gland = gland * (1 - isl) + (fat_db + 1) * isl
    E = E + (1 - in_gland) * 9.0 * septa * (d < b_muscle)
    E = E * (1 - in_gland) + gland * in_gland
    in_muscle = smooth_step((d - b_muscle) / tw)
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


def _breast_lesion(g: Grid, rng: np.random.Generator, p: _Probe, label: str, E: np.ndarray,
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
        harm = harmonics(rng, rng.uniform(0.12, 0.25), 7, 0.6)
        n_sp = int(rng.integers(0, 12))
        spikes = [(rng.uniform(0, 2 * np.pi), rng.uniform(0.15, 0.45), rng.uniform(0.07, 0.16))
                  for _ in range(n_sp)]
    else:
        ry = rx * rng.uniform(0.5, 0.88)
        ang = rng.uniform(-0.25, 0.25)
        harm = harmonics(rng, rng.uniform(0.02, 0.06), 4)
        spikes = []
    dc_lo = skin_t + 0.04 + ry / depth
    dc = rng.uniform(max(dc_lo, skin_t + fat_t * 0.5), max(dc_lo + 0.02, 0.72))
    latc = rng.uniform(-0.68, 0.68)
    cx, cy = p.to_xy(dc, latc)
    lev = star_level(g, cx, cy, rx, ry, ang, harm, spikes)
    edge = (2.5 if malignant else 1.0) * g.px / rx
    inside = soft_inside(lev, edge)
    mask = (lev < 1.0) & fov
    n_in = smooth_noise(rng, (H, W), 0.02 * g.s)
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


def _breast_decoys(g: Grid, rng: np.random.Generator, p: _Probe, E: np.ndarray, post: np.ndarray,
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
        lev = star_level(g, x, y, rc, rc * rng.uniform(0.7, 1.0), rng.uniform(0, np.pi),
                    harmonics(rng, 0.03, 3))
        ins = soft_inside(lev, 0.8 * g.px / rc)
        wall = np.exp(-(((lev - 1.0) / (1.2 * g.px / rc)) ** 2)) * 8
        E = (E + wall) * (1 - ins) + (-60.0) * ins
        post += p.column(lcy, rc * 0.8 / p.lat_scale(dcy), dcy + 0.5 * rc / depth, 0.03) * (1 - ins) \
            * rng.uniform(4, 9)
        cm = (lev < 1.0) & fov
        decoy_mask |= cm
        placed.append((x, y, rc))
        decoys.append({"kind": "cyst", "centre": g.to_px(x, y), "bbox": mask_bbox(cm)})
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
                           "bbox": mask_bbox(bm)})
    return E, decoy_mask, decoys


def _breast_acquisition(g: Grid, rng: np.random.Generator, p: _Probe, E_tot: np.ndarray) -> np.ndarray:
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
    return np.where(fov, np.maximum(unit_to_uint8(v), 1), 0).astype(np.uint8)


def draw_breast(g: Grid, rng: np.random.Generator, label: str) -> dict[str, Any]:
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


def breast_words(s: dict, g: Grid) -> tuple[dict[str, str], list[str], list[str]]:
    """The location words of a drawn sample ``s``, and the finding and location phrases its
    captions are written from (``g`` may be None: only the mask and the label are read)."""
    if not s["mask"].any():
        loc = {"vertical": "", "horizontal": ""}
        return loc, ["no focal lesion", "no mass", "no discrete lesion", "no suspicious mass"], [
            "imaged breast tissue", "scanned breast", "field of view", "visible tissue"]
    r, c = mask_centroid(s["mask"])
    fb = mask_bbox(s["fov"])
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

