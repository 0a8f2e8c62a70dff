"""The phantom chest X-ray (task ``"xray"``): PA radiographs whose mask is both lungs (two
connected components, one each side of the midline: the multi-box case).

Classes ``normal`` and ``pneumonia`` (patchy opacities inside the lungs; the mask stays the lungs).
:func:`draw_xray` draws an image and its mask; :func:`xray_words` gives the words its captions are
written from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .world import (
    Grid,
    blur,
    harmonics,
    largest_component,
    mask_bbox,
    mask_centroid,
    smooth_noise,
    smooth_step,
    soft_inside,
    star_level,
    unit_to_uint8,
)

__all__ = ["draw_xray", "xray_words"]


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


def _xray_frame(g: Grid, rng: np.random.Generator) -> _Chest:
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
    n1 = smooth_noise(rng, (H, W), 0.02 * g.s)
    n2 = smooth_noise(rng, (H, W), 0.06 * g.s)
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


def _xray_lungs(g: Grid, rng: np.random.Generator, c: _Chest) -> tuple[
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
        lungs |= largest_component(lung)
        dia_y = np.where(dist > 0, ydia, dia_y)
        per_side[side] = {"lw": lw, "yt": yt, "yb": yb}
    return lungs, dia_y, per_side


def _xray_soft_tissue(g: Grid, rng: np.random.Generator, c: _Chest, lung_soft: np.ndarray,
                      depth_in: np.ndarray, dia_y: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """Density (soft-tissue equivalent thickness; higher = whiter) of the body, the air in the
    lungs, the abdomen with a gastric bubble, heart and mediastinum, aortic knob, trachea and
    spine. Returns it and the sizes the bones are drawn with."""
    dx, adx, Yc, mw, lw_base = c.dx, c.adx, c.Yc, c.mw, c.lw_base
    y_sh = rng.uniform(0.06, 0.1)
    neck = rng.uniform(0.08, 0.11)
    sh_w = lw_base + rng.uniform(0.12, 0.2)
    half_w = neck + (sh_w - neck) * smooth_step((Yc - y_sh) / 0.035)
    body = smooth_step((half_w - adx) / 0.01)
    chest_w = lw_base + rng.uniform(0.035, 0.06)
    D = body * (0.75 + 0.3 * np.clip(1 - (dx / chest_w) ** 2, 0, 1) + 0.03 * c.n2)
    # lungs: air removes density, more in the middle of the lung
    D = D - lung_soft * (0.42 + 0.25 * depth_in) * rng.uniform(0.9, 1.1)
    # abdomen below the diaphragm, fading downwards
    below = smooth_step((Yc - dia_y) / 0.006) * smooth_step((chest_w + 0.02 - adx) / 0.015)
    D = D + below * (0.32 - 0.25 * np.clip(Yc - dia_y, 0, 0.3)) * (
        1 - 0.5 * np.clip((adx - lw_base) / 0.05, 0, 1))
    if rng.random() < 0.75:  # gastric bubble under the left hemidiaphragm (image right)
        bx = rng.uniform(0.1, 0.22)
        by = c.yb_base + rng.uniform(0.03, 0.07)
        bub = soft_inside(np.hypot((dx - bx) / 0.05, (Yc - by) / 0.028), 0.15)
        D = D - 0.3 * bub * below
    # heart and mediastinum
    D = D + 0.3 * soft_inside(c.heart, 0.12) * (1 - 0.7 * below)
    med_w = mw * (1.0 + 0.3 * smooth_step((Yc - 0.3) / 0.05))
    D = D + 0.3 * smooth_step((med_w - adx) / 0.008) * smooth_step((c.hy - Yc) / 0.03) * smooth_step(
        (Yc - y_sh - 0.04) / 0.02)
    knob = np.hypot((dx - mw * 1.1) / 0.035, (Yc - rng.uniform(0.27, 0.33)) / 0.03)
    D = D + 0.2 * soft_inside(knob, 0.3)
    # trachea (air column) and spine
    y_car = rng.uniform(0.3, 0.36)
    trach = smooth_step((0.016 - np.abs(dx - 0.004)) / 0.004) * smooth_step((y_car - Yc) / 0.01)
    D = D - 0.18 * trach
    sp_w = rng.uniform(0.03, 0.04)
    period = rng.uniform(0.055, 0.07)
    vert = 0.7 + 0.3 * np.cos(np.pi * Yc / period) ** 2
    spine = smooth_step((sp_w - adx) / 0.006) * vert
    D = D + 0.18 * spine * body
    return D, {"body": body, "y_sh": y_sh, "sh_w": sh_w, "chest_w": chest_w, "sp_w": sp_w}


def _xray_bones_and_vessels(g: Grid, rng: np.random.Generator, c: _Chest, D: np.ndarray,
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
    ribs = (0.14 * prof * rib_zone + 0.05 * prof_a) * smooth_step((dia_y + 0.04 - Yc) / 0.01)
    D = D + blur(ribs.astype(np.float32), 0.8 * g.s / 256)
    # clavicles
    ycl = rng.uniform(0.12, 0.16)
    cl = ycl - 0.2 * (adx - 0.04) + 0.45 * (adx - 0.2) ** 2 - 0.45 * 0.16**2
    clav = np.exp(-((np.abs(Yc - cl) / rng.uniform(0.01, 0.013)) ** 3)) * smooth_step(
        (adx - 0.03) / 0.008) * smooth_step((c.lw_base + 0.06 - adx) / 0.01)
    D = D + 0.24 * clav
    # humeral heads at the top corners
    for sgn in (-1, 1):
        hh = np.hypot(dx - sgn * (sizes["sh_w"] - 0.02), Yc - sizes["y_sh"] - 0.06) / 0.065
        D = D + 0.3 * soft_inside(hh, 0.2) * body
    # vascular markings: wiggly lines radiating from the hila, fading to the periphery
    for sgn in (-1, 1):
        hx, hyl = sgn * (mw + 0.035), rng.uniform(0.38, 0.45)
        rr = np.hypot(dx - hx, Yc - hyl)
        ang = np.arctan2(Yc - hyl, dx - hx)
        sm = smooth_noise(rng, (H, W), 0.03 * g.s)
        streak = np.exp(-(np.sin(ang * rng.uniform(9, 13) + 1.8 * sm) ** 2) / 0.06)
        fade = np.exp(-rr / 0.11)
        D = D + lung_soft * (sgn * dx > 0) * (0.16 * streak * fade
                                              + 0.2 * np.exp(-((rr / 0.045) ** 2)))
    return D


def _xray_pneumonia(g: Grid, rng: np.random.Generator, c: _Chest, lungs: np.ndarray,
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
        lev = star_level(g, x, y, rad, rad * rng.uniform(0.6, 1.1), rng.uniform(0, np.pi),
                    harmonics(rng, 0.25, 6, 0.5))
        patch = soft_inside(lev + 0.3 * c.n2, 0.6) * np.clip(0.65 + 0.4 * c.n2, 0.25, 1.0)
        opac = np.maximum(opac, patch)
    return blur(opac, 0.012 * g.s) * lung_soft


def _xray_acquisition(g: Grid, rng: np.random.Generator, c: _Chest, D: np.ndarray) -> np.ndarray:
    """X-ray attenuation of the density, detector blur, the display window and noise, to 8 bits."""
    kappa = rng.uniform(0.85, 1.1)
    img_f = 1.0 - np.exp(-kappa * np.clip(D, 0, None))
    img_f = blur(img_f.astype(np.float32), 0.6 * g.s / 256)
    lo = np.percentile(img_f, 0.5)
    hi = np.percentile(img_f, 99.8)
    v = np.clip((img_f - lo) / (hi - lo + 1e-6), 0, 1) ** rng.uniform(1.1, 1.6)
    v = v + rng.uniform(0.008, 0.025) * rng.standard_normal((g.H, g.W)) + 0.02 * c.n1 * rng.random()
    return unit_to_uint8(np.clip(v, 0, 1))


def draw_xray(g: Grid, rng: np.random.Generator, label: str) -> dict[str, Any]:
    """A frontal chest X-ray: frame and heart, lungs, soft tissue, bones and vessels, pneumonia's
    opacities, acquisition."""
    H, W = g.H, g.W
    c = _xray_frame(g, rng)
    lungs, dia_y, per_side = _xray_lungs(g, rng, c)
    lung_f = lungs.astype(np.float32)
    lung_soft = blur(lung_f, 1.0 * g.s / 256)
    depth_in = np.sqrt(np.clip(blur(lung_f, 0.035 * g.s), 0, 1))
    D, sizes = _xray_soft_tissue(g, rng, c, lung_soft, depth_in, dia_y)
    D = _xray_bones_and_vessels(g, rng, c, D, lung_soft, dia_y, sizes)
    opac = np.zeros((H, W), dtype=np.float32)
    if label == "pneumonia":
        opac = _xray_pneumonia(g, rng, c, lungs, lung_soft)
        D = D + opac * rng.uniform(0.35, 0.6)
    img = _xray_acquisition(g, rng, c, D)
    return {"image": img, "mask": lungs, "fov": np.ones((H, W), dtype=bool), "decoys": [],
            "decoy_mask": np.zeros((H, W), dtype=bool), "opacity_mask": opac > 0.25,
            "heart_mask": c.heart < 1.0, "midline_col": float(c.mx * g.s - 0.5), "lungs_info": per_side}


def xray_words(s: dict, g: Grid) -> tuple[dict[str, str], list[str], list[str]]:
    """The location words of a drawn sample ``s``, and the finding and location phrases its
    captions are written from (``g`` may be None: only the mask and the label are read)."""
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
    r, _ = mask_centroid(op) if op.any() else mask_centroid(s["mask"])
    lb = mask_bbox(s["mask"])
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

