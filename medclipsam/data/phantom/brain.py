"""The phantom brain MRI (task ``"brain"``): axial post-contrast T1 slices with scalp fat, skull,
grey and white matter and ventricles.

Classes ``glioma`` (irregular, ring enhancing, necrotic core, oedema; one hemisphere),
``meningioma`` (round, homogeneous, on the dura), ``pituitary`` (small, midline, near the skull
base, drawn at the centre-bottom) and ``normal``. Decoys: enhancing venous sinuses, choroid plexus,
vessels and scalp fat, brighter than any tumour, so "the brightest region" is usually *not* the
tumour. :func:`draw_brain` draws an image and its mask; :func:`brain_words` gives the words its
captions are written from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
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

__all__ = ["draw_brain", "brain_words"]


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


def _brain_head(g: Grid, rng: np.random.Generator) -> _Head:
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
    shape = 1.0 + sum(a * np.cos(k * th + p) for k, a, p in harmonics(rng, 0.025, 4))
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


def _brain_tissue(g: Grid, rng: np.random.Generator, h: _Head) -> tuple[
        np.ndarray, np.ndarray, list[tuple[float, float]], np.ndarray, np.ndarray]:
    """White and grey matter with radial sulci, the interhemispheric fissure, deep grey nuclei
    and the lateral ventricles. Returns the image (0..1), the ventricles, their atria (head
    frame) and two noise fields the tumours reuse."""
    H, W = g.H, g.W
    U, V, th, e, Rx, Ry, R, rot = h.U, h.V, h.th, h.e, h.Rx, h.Ry, h.R, h.rot
    n1 = smooth_noise(rng, (H, W), 0.03 * g.s)
    n2 = smooth_noise(rng, (H, W), 0.022 * g.s)
    n3 = smooth_noise(rng, (H, W), 0.01 * g.s)
    wm_v, gm_v, csf_v = rng.uniform(0.55, 0.6), rng.uniform(0.38, 0.43), rng.uniform(0.07, 0.13)
    gm_t = rng.uniform(0.018, 0.026)
    # radial sulci: zeros of a warped angular sine; grey matter lines the surface and each sulcus
    n_g = rng.uniform(26, 38)
    sphase = np.abs(np.sin(n_g * th / 2 + 1.3 * n1))
    s_depth = gm_t * (1.8 + 0.9 * n2)
    gm = np.maximum(smooth_step((gm_t - e) / (1.2 * g.px)),
                    smooth_step((0.45 - sphase) / 0.08) * smooth_step((s_depth + 0.8 * gm_t - e) / (1.2 * g.px)))
    img_f = wm_v + (gm_v - wm_v) * gm + 0.012 * n3
    sulci = smooth_step((0.12 - sphase) / 0.04) * smooth_step((s_depth - e) / g.px)
    img_f = img_f * (1 - 0.85 * sulci) + csf_v * 0.85 * sulci
    fiss = np.exp(-((U / (1.6 * g.px)) ** 2)) * (np.abs(V) > 0.3 * Ry)
    img_f = img_f * (1 - fiss) + csf_v * fiss
    # deep grey nuclei and lateral ventricles
    vc = rng.uniform(-0.06, 0.02) * Ry
    for sgn in (-1, 1):
        tl = star_level(g, *h.uv_to_xy(sgn * rng.uniform(0.17, 0.22) * Rx, vc + 0.14 * Ry),
                   0.11 * Rx, 0.13 * Ry, rot, harmonics(rng, 0.05, 3))
        w_t = soft_inside(tl, 4 * g.px / (0.12 * R)) * 0.8
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
        vent = np.maximum(vent, soft_inside(lev, 2.5 * g.px / vent_w))
        atria.append((sgn * (vent_u + kappa * (1.75 * vent_l) ** 2 / 2), vc + 0.75 * vent_l))
    img_f = img_f * (1 - vent) + csf_v * vent
    img_f = np.where(h.q < h.qb, img_f, csf_v)
    return img_f, vent, atria, n2, n3


def _brain_scalp_and_skull(g: Grid, rng: np.random.Generator, h: _Head, img_f: np.ndarray,
                           n3: np.ndarray) -> np.ndarray:
    """Scalp (bright fat of varying thickness) and skull (dark tables, grey diploe) around the
    brain; nothing outside the head."""
    q, th = h.q, h.th
    scalp_fat = rng.uniform(0.86, 0.95)
    fat_var = 1.0 + 0.25 * wave(rng, 10, -np.pi, np.pi)(th)
    r_s = (q - h.q_skull) / (h.scalp_t * fat_var)
    scalp = np.where(r_s > 0.8, 0.45, np.where(r_s > 0.25, scalp_fat, 0.35))
    r_k = (q - h.q_inner) / h.skull_t
    skull = np.where((r_k > 0.3) & (r_k < 0.72), rng.uniform(0.25, 0.4), 0.04)
    img_f = np.where(q >= h.q_inner, skull, img_f)
    img_f = np.where(q >= h.q_skull, scalp + 0.02 * n3, img_f)
    return np.where(q < 1.0, img_f, 0.0)


def _glioma(g: Grid, rng: np.random.Generator, h: _Head, img_f: np.ndarray, brain: np.ndarray,
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
    harm = harmonics(rng, rng.uniform(0.12, 0.22), 6, 0.7)
    lev = star_level(g, x, y, r_t, r_t * rng.uniform(0.75, 1.2), rng.uniform(0, np.pi), harm)
    core = star_level(g, x, y, r_t * rng.uniform(0.35, 0.55), r_t * rng.uniform(0.3, 0.5),
                 rng.uniform(0, np.pi), harmonics(rng, 0.15, 5))
    oed = star_level(g, x, y, r_t * rng.uniform(1.6, 2.2), r_t * rng.uniform(1.5, 2.1),
                rng.uniform(0, np.pi), harmonics(rng, 0.3, 7, 0.5))
    w_oed = soft_inside(oed + 0.25 * n2, 0.3) * brain * (1 - vent)
    img_f = img_f * (1 - 0.3 * w_oed)
    rim = rng.uniform(0.76, 0.84) + 0.025 * n3
    w_t = soft_inside(lev, 1.5 * g.px / r_t)
    w_c = soft_inside(core, 2.0 * g.px / (0.45 * r_t))
    tum = rim * (1 - w_c) + rng.uniform(0.22, 0.3) * w_c
    img_f = img_f * (1 - w_t) + tum * w_t
    return img_f, lev < 1.0, (ut, vt)


def _meningioma(g: Grid, rng: np.random.Generator, h: _Head, img_f: np.ndarray,
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
    lev = star_level(g, x, y, r_t, r_t * rng.uniform(0.8, 1.0), phi + rot,
                harmonics(rng, 0.04, 4))
    inner = q < h.q_inner
    w_t = soft_inside(lev, 1.2 * g.px / r_t) * inner
    val = rng.uniform(0.76, 0.84) + 0.02 * n3
    img_f = img_f * (1 - w_t) + val * w_t
    # dural tail: a thin enhancing strip along the inner table, beside the mass
    ang = np.abs((th - math.atan2(math.sin(phi), math.cos(phi)) + np.pi) % (2 * np.pi) - np.pi)
    tail = np.exp(-(((h.q_inner - q) / (2.5 * h.px_q)) ** 2)) * np.clip(1 - ang / 0.45, 0, 1) \
        * inner * (lev >= 1.0)
    img_f = img_f + (0.72 - img_f) * tail * 0.8
    return img_f, (lev < 1.0) & inner, (ut, vt)


def _pituitary(g: Grid, rng: np.random.Generator, h: _Head, img_f: np.ndarray,
               n3: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple]:
    """A small enhancing mass in the sella, on the midline behind the orbits."""
    r_t = rng.uniform(0.045, 0.065) * h.m
    ut, vt = rng.uniform(-0.012, 0.012), rng.uniform(0.3, 0.42) * h.Ry
    x, y = h.uv_to_xy(ut, vt)
    lev = star_level(g, x, y, r_t * rng.uniform(0.9, 1.2), r_t, h.rot, harmonics(rng, 0.05, 3))
    w_t = soft_inside(lev, 1.2 * g.px / r_t)
    val = rng.uniform(0.74, 0.82) + 0.02 * n3
    img_f = img_f * (1 - w_t) + val * w_t
    return img_f, lev < 1.0, (ut, vt)


def _brain_decoys(g: Grid, rng: np.random.Generator, h: _Head, img_f: np.ndarray,
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
        lev = star_level(g, x, y, rx, ry, h.rot, harm)
        w = soft_inside(lev, 1.2 * g.px / min(rx, ry)) * head
        img_f = img_f * (1 - w) + val * w
        dm = (lev < 1.0) & head
        decoy_mask |= dm
        decoys.append({"kind": kind, "centre": g.to_px(x, y), "bbox": mask_bbox(dm)})

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
                      rng.uniform(0.92, 1.0), harmonics(rng, 0.1, 4))
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


def _brain_acquisition(g: Grid, rng: np.random.Generator, img_f: np.ndarray) -> np.ndarray:
    """Bias field, Rician noise and the display window, to 8 bits."""
    H, W = g.H, g.W
    bias = 1.0 + 0.04 * smooth_noise(rng, (H, W), 0.4 * g.s)
    sig_n = rng.uniform(0.01, 0.025)
    img_f = img_f * bias
    img_f = np.hypot(img_f + sig_n * rng.standard_normal((H, W)), sig_n * rng.standard_normal((H, W)))
    lo, hi = rng.uniform(-0.02, 0.03), rng.uniform(0.97, 1.1)
    v = np.clip((img_f - lo) / (hi - lo), 0, 1) ** rng.uniform(0.9, 1.12)
    return unit_to_uint8(v)


def draw_brain(g: Grid, rng: np.random.Generator, label: str) -> dict[str, Any]:
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


def brain_words(s: dict, g: Grid) -> tuple[dict[str, str], list[str], list[str]]:
    """The location words of a drawn sample ``s``, and the finding and location phrases its
    captions are written from (``g`` may be None: only the mask and the label are read)."""
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
    r, c = mask_centroid(s["mask"])
    side = "right" if c < s["midline_col"] else "left"  # radiological convention
    hb = mask_bbox(s["fov"])
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

