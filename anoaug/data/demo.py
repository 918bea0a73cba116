"""A small procedural demo dataset in MVTec AD layout, generated offline and deterministically.

Two categories:

* ``fabric`` -- a texture (denim-like 3/1 twill); defects ``stain`` and ``cut``.
* ``cap`` -- an object (a turned-metal cap on a dark background); defects ``scratch`` and ``crack``.

Every image is drawn from its own ``np.random.Generator`` derived, through ``np.random.SeedSequence``,
from the seed, the category name, the split/label and the index. One image can therefore be
re-rendered on its own (``render_sample``), and the same seed always gives byte-identical PNG files.
"""

from __future__ import annotations

import os
import shutil
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from anoaug.data.records import GOOD
from anoaug.errors import DatasetError
from anoaug.png import write_png

CATEGORIES: dict[str, tuple[str, ...]] = {
    "fabric": ("stain", "cut"),
    "cap": ("scratch", "crack"),
}
"""Demo category -> its defect types (other code and pipeline specs depend on these names)."""

TEXTURE_CATEGORIES: frozenset[str] = frozenset({"fabric"})
OBJECT_CATEGORIES: frozenset[str] = frozenset({"cap"})

_SS = 4  # supersampling factor for anti-aliased strokes
_MIN_MASK_PIXELS = 12


@dataclass(frozen=True)
class DemoSample:
    """One rendered demo image.

    ``image`` is HxWx3 uint8 RGB; ``mask`` is HxW uint8 0/255 (``None`` for good images);
    ``object_mask`` is HxW bool, the ground-truth foreground (all True for texture categories);
    ``clean`` is the same image before the defect was added (equal to ``image`` for good samples).
    """

    image: np.ndarray
    mask: np.ndarray | None
    object_mask: np.ndarray
    clean: np.ndarray


# --- randomness ---------------------------------------------------------------------------------


def _rng_for(seed: int, category: str, split: str, label: str, index: int) -> np.random.Generator:
    """The generator of one image: a pure function of (seed, category, split, label, index)."""
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    key = [seed, zlib.crc32(category.encode()), zlib.crc32(f"{split}/{label}".encode()), index]
    return np.random.default_rng(np.random.SeedSequence(key))


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell: float) -> np.ndarray:
    """Zero-mean, unit-std smooth noise with features of about ``cell`` pixels."""
    h, w = shape
    gh, gw = max(2, int(np.ceil(h / cell)) + 2), max(2, int(np.ceil(w / cell)) + 2)
    coarse = rng.standard_normal((gh, gw)).astype(np.float32)
    big = cv2.resize(coarse, (int(gw * cell), int(gh * cell)), interpolation=cv2.INTER_CUBIC)
    out = big[:h, :w]
    out = cv2.GaussianBlur(out, (0, 0), cell / 4)
    return (out - out.mean()) / (out.std() + 1e-6)


def _smooth_1d(rng: np.random.Generator, n: int, cell: float) -> np.ndarray:
    """Smooth zero-mean unit-std noise along a curve of ``n`` samples."""
    k = max(2, int(np.ceil(n / cell)) + 2)
    xs = np.linspace(0, k - 1, k)
    vals = rng.standard_normal(k)
    t = np.linspace(0, (n - 1) / cell, n)
    out = np.interp(t, xs, vals)
    return (out - out.mean()) / (out.std() + 1e-6)


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


# --- strokes ------------------------------------------------------------------------------------


def _bezier(ctrl: np.ndarray, n: int) -> np.ndarray:
    """Points of a cubic Bezier curve with 4 control points (4x2) -> (n, 2)."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    p0, p1, p2, p3 = ctrl
    return (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t**2 * p2 + t**3 * p3


def _draw_paths(size: int, paths: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray | None]]) -> np.ndarray:
    """Anti-aliased coverage (HxW float32 in [0, 1]) of polylines with per-point width and opacity.

    Each path is ``(points (n, 2), widths (n,), opacity (n,) or None)``; drawn at ``_SS`` times the
    resolution and area-averaged down, which gives smooth, anti-aliased edges.
    """
    canvas = np.zeros((size * _SS, size * _SS), np.uint8)
    for pts, widths, opacity in paths:
        op = np.ones(len(pts)) if opacity is None else opacity
        p = np.round(pts * _SS + (_SS - 1) / 2).astype(np.int32)
        for i in range(len(pts) - 1):
            th = max(1, int(round(0.5 * (widths[i] + widths[i + 1]) * _SS)))
            val = int(round(255 * 0.5 * (op[i] + op[i + 1])))
            if val > 0:
                cv2.line(canvas, (int(p[i, 0]), int(p[i, 1])), (int(p[i + 1, 0]), int(p[i + 1, 1])), val, th)
    return cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


def _draw_tube(size: int, pts: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage of the union of discs along a path (a tapered, ragged band)."""
    canvas = np.zeros((size * _SS, size * _SS), np.uint8)
    p = np.round(pts * _SS + (_SS - 1) / 2).astype(np.int32)
    for (x, y), r in zip(p, radii, strict=True):
        rr = int(round(r * _SS))
        if rr > 0:
            cv2.circle(canvas, (int(x), int(y)), rr, 255, -1, cv2.LINE_8)
    return cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


def _mask_from_alpha(alpha: np.ndarray, thresh: float, grow: int) -> np.ndarray:
    """Binary 0/255 mask of ``alpha > thresh`` grown by ``grow`` pixels (covers anti-aliased edges)."""
    m = (alpha > thresh).astype(np.uint8)
    if grow > 0:
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1))
        m = cv2.dilate(m, k)
    return m * 255


def _to_u8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


# --- fabric (texture) ---------------------------------------------------------------------------

_WARP_RGB = np.array([48.0, 70.0, 118.0])  # indigo-dyed warp
_WEFT_RGB = np.array([168.0, 170.0, 168.0])  # undyed, slightly grey weft
_GAP_RGB = np.array([20.0, 22.0, 30.0])


def _fabric_normal(rng: np.random.Generator, size: int) -> np.ndarray:
    """A denim-like 3/1 twill, randomly shifted/rotated and lit; float32 HxWx3 in 0..255."""
    period = max(5.0, 10.0 * size / 256.0)
    canvas = int(np.ceil(size * 1.13 + 4 * period)) + 2
    yy, xx = np.mgrid[0:canvas, 0:canvas].astype(np.float32)
    i = np.floor(xx / period).astype(np.int32)
    j = np.floor(yy / period).astype(np.int32)
    fx = xx / period - i
    fy = yy / period - j
    n_threads = canvas // int(period) + 2
    ii, jj = np.clip(i, 0, n_threads - 1), np.clip(j, 0, n_threads - 1)

    # yarns wander a little sideways, so the grid is not perfectly regular
    wob_x = 0.08 * rng.standard_normal(n_threads).astype(np.float32)
    wob_y = 0.08 * rng.standard_normal(n_threads).astype(np.float32)
    ex = fx - 0.5 - wob_x[ii]
    ey = fy - 0.5 - wob_y[jj]
    warp_cross = np.sqrt(np.clip(1.0 - (ex / 0.46) ** 2, 0.0, 1.0))  # round cross-sections
    weft_cross = np.sqrt(np.clip(1.0 - (ey / 0.44) ** 2, 0.0, 1.0))
    phase = (i - j) % 4  # 3/1 twill: along a warp (j increasing) the float covers phases 2, 1, 0
    warp_top = phase != 3
    s_float = np.clip(((2 - phase) + fy) / 3.0, 0.0, 1.0)
    along_warp = 0.55 + 0.45 * np.sin(np.pi * s_float) ** 0.5
    along_weft = 0.35 + 0.65 * np.sin(np.pi * fx) ** 0.8

    # twisted yarn: fine diagonal striations along each thread
    twist_w = 1 + 0.10 * np.sin(2 * np.pi * (yy / (period * 0.45) + 1.2 * fx))
    twist_f = 1 + 0.10 * np.sin(2 * np.pi * (xx / (period * 0.45) - 1.2 * fy))
    # per-yarn brightness, slubs, hairy fibres and indigo mottling
    warp_gain = 1.0 + 0.08 * rng.standard_normal(n_threads).astype(np.float32)
    weft_gain = 1.0 + 0.06 * rng.standard_normal(n_threads).astype(np.float32)
    fibre = rng.standard_normal((canvas, canvas)).astype(np.float32)
    warp_fibre = cv2.GaussianBlur(fibre, (0, 0), sigmaX=0.5, sigmaY=period * 0.5)
    weft_fibre = cv2.GaussianBlur(fibre, (0, 0), sigmaX=period * 0.5, sigmaY=0.5)
    warp_fibre /= warp_fibre.std() + 1e-6
    weft_fibre /= weft_fibre.std() + 1e-6
    mottle = _smooth_noise(rng, (canvas, canvas), period * 5)

    warp_shade = warp_cross * along_warp * warp_gain[ii] * twist_w * (1 + 0.12 * warp_fibre)
    weft_shade = weft_cross * along_weft * weft_gain[jj] * twist_f * (1 + 0.12 * weft_fibre)
    top_w = warp_top.astype(np.float32)
    under = 0.45
    warp_vis = top_w * _smoothstep(0.0, 0.45, warp_cross)
    weft_vis = (1 - top_w) * _smoothstep(0.0, 0.45, weft_cross)
    warp_vis += (1 - warp_vis - weft_vis).clip(0, 1) * under * _smoothstep(0.0, 0.6, warp_cross)
    weft_vis += (1 - warp_vis - weft_vis).clip(0, 1) * under * _smoothstep(0.0, 0.6, weft_cross)
    gap = np.clip(1.0 - warp_vis - weft_vis, 0.0, 1.0)
    warp_col = _WARP_RGB * (1 + 0.10 * mottle)[..., None]  # faded / darker patches of indigo
    img = (
        (warp_vis * (0.30 + 0.80 * warp_shade))[..., None] * warp_col
        + (weft_vis * (0.25 + 0.75 * weft_shade))[..., None] * _WEFT_RGB
        + gap[..., None] * _GAP_RGB
    )
    # fuzz: loose fibres soften the structure, indigo bleeds into the weft
    img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), 0.7)

    # random rotation/offset into the output frame
    angle = float(rng.uniform(-6.0, 6.0))
    cx = size * 0.565 + float(rng.uniform(0, 4 * period))
    cy = size * 0.565 + float(rng.uniform(0, 4 * period))
    m = cv2.getRotationMatrix2D((cx, cy), angle, 1.0)
    m[0, 2] -= cx - size / 2
    m[1, 2] -= cy - size / 2
    out = cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)

    # illumination: global gain, gentle gradient and vignetting, slight colour cast, sensor noise
    yy, xx = (np.mgrid[0:size, 0:size].astype(np.float32) / size) - 0.5
    g = float(rng.uniform(0.85, 1.15))
    gx, gy = rng.uniform(-0.25, 0.25, 2)
    light = g * (1 + gx * xx + gy * yy) * (1 - 0.25 * (xx**2 + yy**2))
    cast = 1 + rng.uniform(-0.04, 0.04, 3)
    out = out * light[..., None] * cast
    out += rng.normal(0, 2.0, out.shape).astype(np.float32)
    return out.astype(np.float32)


def _fabric_stain(rng: np.random.Generator, img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An oil/dirt stain: irregular soft blob, darkened and tinted, with a darker tide line."""
    size = img.shape[0]
    s = size / 256.0
    for _ in range(20):
        cx, cy = rng.uniform(0.2, 0.8, 2) * size
        a, b = rng.uniform(16, 46) * s, rng.uniform(12, 34) * s
        th = rng.uniform(0, np.pi)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        u = ((xx - cx) * np.cos(th) + (yy - cy) * np.sin(th)) / a
        v = (-(xx - cx) * np.sin(th) + (yy - cy) * np.cos(th)) / b
        d = np.sqrt(u * u + v * v)
        field = (
            1.0 - d + 0.35 * _smooth_noise(rng, (size, size), 14 * s) + 0.08 * _smooth_noise(rng, (size, size), 4 * s)
        )
        alpha = _smoothstep(-0.04, 0.22, field).astype(np.float32)
        mask = _mask_from_alpha(alpha, 0.3, 0)
        if np.count_nonzero(mask) >= 150 * s * s:
            break
    dark = rng.uniform(0.4, 0.65)
    tint = np.array([0.80, 0.92, 1.10]) if rng.random() < 0.6 else np.array([0.95, 0.98, 1.02])
    tide = np.exp(-(((field - 0.12) / 0.06) ** 2)) * rng.uniform(0.06, 0.18)  # darker rim just inside
    # fibres matted by the liquid: lower local contrast
    matted = cv2.GaussianBlur(img, (0, 0), 1.2)
    base = img * (1 - 0.35 * alpha[..., None]) + matted * (0.35 * alpha[..., None])
    factor = 1.0 - (dark * alpha)[..., None] * tint - tide[..., None]
    out = base * np.clip(factor, 0.15, 1.0)
    # a warm/brown cast of the dirt itself
    out += (alpha * rng.uniform(3, 10))[..., None] * np.array([1.0, 0.6, 0.2])
    return out, mask


def _fabric_cut(rng: np.random.Generator, img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A tear: thin curved dark gap, ragged, tapered, with shadowed lips and frayed loose fibres."""
    size = img.shape[0]
    s = size / 256.0
    length = rng.uniform(50, 120) * s
    ang = rng.uniform(0, np.pi)
    c = rng.uniform(0.3, 0.7, 2) * size
    d = np.array([np.cos(ang), np.sin(ang)])
    nrm = np.array([-d[1], d[0]])
    p0, p3 = c - d * length / 2, c + d * length / 2
    bend = rng.uniform(-0.25, 0.25, 2) * length
    ctrl = np.stack([p0, p0 + d * length / 3 + nrm * bend[0], p3 - d * length / 3 + nrm * bend[1], p3])
    n = int(length * 2)
    pts = _bezier(ctrl, n)
    t = np.linspace(0, 1, n)
    wmax = rng.uniform(3.5, 7.0) * s
    ragged = 0.25 * _smooth_1d(rng, n, 6) + 0.25 * _smooth_1d(rng, n, 1.5)
    half = wmax / 2 * np.sin(np.pi * t) ** 0.6 * (1 + ragged) + 0.2
    half = np.clip(half, 0.15, None)
    # ragged lips: jitter the centre-line sideways a little
    tang = np.gradient(pts, axis=0)
    tang /= np.linalg.norm(tang, axis=1, keepdims=True) + 1e-9
    side = np.stack([-tang[:, 1], tang[:, 0]], axis=1)
    pts_j = pts + side * (0.35 * _smooth_1d(rng, n, 4))[:, None] * s
    gap = _draw_tube(size, pts_j, half)
    lip = np.clip(cv2.GaussianBlur(gap, (0, 0), 1.6 * s) * 1.8 - gap, 0, 1)

    # loose fibres: short bright threads crossing the gap from both lips
    fibres: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]] = []
    for _ in range(int(rng.integers(14, 34))):
        k = int(rng.integers(int(0.1 * n), int(0.9 * n)))
        sd = 1 if rng.random() < 0.5 else -1
        start = pts_j[k] + side[k] * sd * (half[k] + rng.uniform(0.5, 2.0) * s)
        a = np.arctan2(-sd * side[k, 1], -sd * side[k, 0]) + rng.normal(0, 0.5)
        flen = rng.uniform(1.5, max(1.5, 2 * half[k] + 3 * s))  # tiny sizes: keep high >= low
        m = 6
        fpts = start + np.outer(np.linspace(0, flen, m), [np.cos(a), np.sin(a)])
        fpts += np.outer(np.linspace(0, 1, m) ** 2, rng.normal(0, 0.8, 2))  # a little curl
        fibres.append((fpts, np.full(m, rng.uniform(0.5, 0.9) * s), np.linspace(1, 0.5, m)))
    fib = _draw_paths(size, fibres)
    fib *= gap.clip(0.3, 1) ** 0.5  # fibres show mainly where they cross the dark gap

    # lips: shadowed, with broken light fibre ends sticking out (fuzz)
    fuzz = lip * np.clip(_smooth_noise(rng, (size, size), 1.5 * s), 0, None) * 0.35
    out = img * (1 - 0.45 * lip)[..., None] + (fuzz[..., None] * (_WEFT_RGB - img)).clip(0, None)
    hole = np.array([16.0, 16.0, 20.0]) + rng.normal(0, 3, (size, size, 1)).astype(np.float32)
    out = out * (1 - gap)[..., None] + hole * gap[..., None]
    fibre_rgb = _WEFT_RGB * rng.uniform(0.6, 0.9)
    out = out * (1 - 0.85 * fib)[..., None] + fibre_rgb * (0.85 * fib)[..., None]
    mask = np.maximum(_mask_from_alpha(gap, 0.1, 2), _mask_from_alpha(fib, 0.2, 1))
    return out, mask


# --- cap (object) -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _CapGeom:
    cx: float
    cy: float
    radius: float
    light: np.ndarray  # unit vector towards the main light


def _cap_normal(rng: np.random.Generator, size: int) -> tuple[np.ndarray, _CapGeom, np.ndarray]:
    """A turned-metal cap on a dark, noisy backdrop. Returns (image float32, geometry, object mask)."""
    s = size / 256.0
    radius = rng.uniform(0.36, 0.41) * size
    cx, cy = size / 2 + rng.uniform(-8, 8, 2) * s
    rot = rng.uniform(0, 2 * np.pi)
    az = rng.uniform(0, 2 * np.pi)
    el = np.deg2rad(rng.uniform(35, 55))
    light = np.array([np.cos(az) * np.sin(el), np.sin(az) * np.sin(el), np.cos(el)])

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dx, dy = xx - cx, yy - cy
    r = np.sqrt(dx * dx + dy * dy)
    rn = r / radius
    theta = np.arctan2(dy, dx) - rot

    # height field (pixels): flat top, groove, raised bead, rounded knurled skirt
    h = 2.0 * (1 - np.clip(rn, 0, 1) ** 2)  # slight dome
    h -= 2.5 * np.exp(-(((rn - 0.70) / 0.018) ** 2))  # groove
    h += 3.5 * np.exp(-(((rn - 0.79) / 0.040) ** 2))  # bead
    skirt = _smoothstep(0.86, 1.0, rn)
    h -= 14.0 * skirt**1.6  # rounded edge
    n_knurl = int(rng.integers(52, 64))
    h += 0.9 * np.cos(n_knurl * theta) * _smoothstep(0.87, 0.93, rn)
    turning = _smooth_1d(rng, 800, 3)[np.clip((rn * 400).astype(np.int32), 0, 799)]
    h += 0.05 * turning * (rn < 0.68)  # concentric turning marks
    gy, gx = np.gradient(h)
    nrm = np.stack([-gx, -gy, np.ones_like(h)], axis=-1)
    nrm /= np.linalg.norm(nrm, axis=-1, keepdims=True)

    diffuse = np.clip(nrm @ light, 0, 1)
    half = light + np.array([0.0, 0.0, 1.0])
    half /= np.linalg.norm(half)
    spec = np.clip(nrm @ half, 0, 1) ** rng.uniform(30, 60)
    # a broad environment reflection (soft-box above) makes it read as metal
    env = np.clip(nrm[..., 2], 0, 1) ** 8
    base = np.array([178.0, 182.0, 190.0]) * (1 + rng.uniform(-0.05, 0.05, 3))
    albedo_var = 1 + 0.03 * _smooth_noise(rng, (size, size), 30 * s)
    gain = rng.uniform(0.85, 1.15)
    shade = (0.50 + 0.40 * diffuse + 0.15 * env) * albedo_var * gain
    obj = base * shade[..., None] + (150 * spec * gain)[..., None]

    # background: dark, uniform-ish, sensor noise, soft shadow away from the light
    bg_level = rng.uniform(30, 46)
    bgcol = np.array([1.0, 1.0, 1.06]) * bg_level
    vign = 1 - 0.25 * ((xx / size - 0.5) ** 2 + (yy / size - 0.5) ** 2)
    sh_off = -light[:2] / max(light[2], 0.3) * 5 * s
    shadow_disc = (np.hypot(xx - cx - sh_off[0], yy - cy - sh_off[1]) < radius).astype(np.float32)
    shadow = cv2.GaussianBlur(shadow_disc, (0, 0), 5 * s)
    bg = bgcol * (vign * (1 - 0.45 * shadow))[..., None]
    bg = bg + 3 * _smooth_noise(rng, (size, size), 40 * s)[..., None]

    alpha = np.clip(radius - r + 0.5, 0, 1)[..., None]
    img = obj * alpha + bg * (1 - alpha)
    img = img + rng.normal(0, 2.5, img.shape).astype(np.float32)
    object_mask = r < radius - 0.5
    return img.astype(np.float32), _CapGeom(float(cx), float(cy), float(radius), light), object_mask


def _inside(pts: np.ndarray, g: _CapGeom, frac: float) -> bool:
    return bool(np.all(np.hypot(pts[:, 0] - g.cx, pts[:, 1] - g.cy) < frac * g.radius))


def _random_point(rng: np.random.Generator, g: _CapGeom, frac: float) -> np.ndarray:
    rr = g.radius * frac * np.sqrt(rng.uniform(0, 1))
    a = rng.uniform(0, 2 * np.pi)
    return np.array([g.cx + rr * np.cos(a), g.cy + rr * np.sin(a)])


def _cap_scratch(rng: np.random.Generator, img: np.ndarray, g: _CapGeom) -> tuple[np.ndarray, np.ndarray]:
    """One to three thin curved scratches, bright (fresh metal) or dark, fading in and out."""
    size = img.shape[0]
    s = size / 256.0
    alpha = np.zeros((size, size), np.float32)
    n_scr = int(rng.choice([1, 1, 2, 3]))
    base_ang = rng.uniform(0, np.pi)
    for _ in range(n_scr):
        for _try in range(50):
            length = rng.uniform(30, 95) * s
            c = _random_point(rng, g, 0.6)
            ang = base_ang + rng.normal(0, 0.25)
            d = np.array([np.cos(ang), np.sin(ang)])
            nrm = np.array([-d[1], d[0]])
            p0, p3 = c - d * length / 2, c + d * length / 2
            bend = rng.uniform(-0.2, 0.2) * length
            ctrl = np.stack([p0, p0 + d * length / 3 + nrm * bend, p3 - d * length / 3 + nrm * bend, p3])
            if _inside(ctrl, g, 0.84):
                break
        n = int(length * 2)
        pts = _bezier(ctrl, n)
        t = np.linspace(0, 1, n)
        width = rng.uniform(1.0, 1.9) * s * (0.6 + 0.4 * np.sin(np.pi * t) ** 0.5)
        op = np.sin(np.pi * t) ** 0.4 * np.clip(0.75 + 0.25 * _smooth_1d(rng, n, 10), 0.3, 1)
        alpha = np.maximum(alpha, _draw_paths(size, [(pts, width, op)]))
    if rng.random() < 0.5:  # a groove: the flank facing the light glints, the other one is in shadow
        off = g.light[:2] / (np.linalg.norm(g.light[:2]) + 1e-9) * 1.0 * s
        m = np.float32([[1, 0, off[0]], [0, 1, off[1]]])
        lit = np.clip(cv2.warpAffine(alpha, m, (size, size), flags=cv2.INTER_LINEAR) - 0.5 * alpha, 0, 1)
        out = img * (1 - rng.uniform(0.35, 0.55) * alpha)[..., None]
        out = out + (lit * rng.uniform(0.7, 0.95))[..., None] * (255.0 - out)
        alpha = np.maximum(alpha, lit)
    else:  # a dull, dark scuff
        out = img * (1 - rng.uniform(0.5, 0.7) * alpha)[..., None]
    return out, _mask_from_alpha(alpha, 0.12, 1)


def _walk(rng: np.random.Generator, start: np.ndarray, ang: float, steps: int, step: float, g: _CapGeom) -> np.ndarray:
    """A jagged random walk that stays on the cap (stops at 0.85 R)."""
    pts = [start]
    for _ in range(steps):
        ang += rng.normal(0, 0.12)  # the heading drifts slowly...
        zig = ang + rng.normal(0, 0.55)  # ...while each segment zig-zags around it
        nxt = pts[-1] + step * rng.uniform(0.5, 1.5) * np.array([np.cos(zig), np.sin(zig)])
        if not _inside(nxt[None], g, 0.85):
            break
        pts.append(nxt)
    return np.array(pts)


def _cap_crack(rng: np.random.Generator, img: np.ndarray, g: _CapGeom) -> tuple[np.ndarray, np.ndarray]:
    """A branching, jagged dark fracture with a thin lit edge, tapering towards its tips."""
    size = img.shape[0]
    s = size / 256.0
    for _ in range(30):
        start = _random_point(rng, g, 0.55)
        a0 = rng.uniform(0, 2 * np.pi)
        main = _walk(rng, start, a0, int(rng.integers(16, 34)), 2.6 * s, g)
        if len(main) >= 8:
            break
    # optionally grow the other way from the start too
    if rng.random() < 0.6:
        back = _walk(rng, start, a0 + np.pi, int(rng.integers(5, 14)), 2.6 * s, g)
        main = np.concatenate([back[::-1], main[1:]])
    t = np.linspace(0, 1, len(main))
    wmain = rng.uniform(1.3, 2.3) * s * (1 - 0.7 * np.abs(2 * t - 1) ** 1.5)
    paths: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]] = [(main, wmain, None)]
    for _ in range(int(rng.integers(1, 4))):
        k = int(rng.integers(1, max(2, len(main) - 1)))
        seg = main[min(k + 1, len(main) - 1)] - main[k - 1]
        a = np.arctan2(seg[1], seg[0]) + rng.choice([-1, 1]) * rng.uniform(0.5, 1.1)
        br = _walk(rng, main[k], a, int(rng.integers(4, 14)), 2.4 * s, g)
        if len(br) >= 2:
            wb = wmain[k] * 0.7 * np.linspace(1, 0.35, len(br))
            paths.append((br, wb, None))
    alpha = _draw_paths(size, paths)
    # lit edge: the fracture face towards the light catches it
    off = -g.light[:2] / (np.linalg.norm(g.light[:2]) + 1e-9) * 1.0 * s
    m = np.float32([[1, 0, off[0]], [0, 1, off[1]]])
    shifted = cv2.warpAffine(alpha, m, (size, size), flags=cv2.INTER_LINEAR)
    edge = np.clip(shifted - alpha, 0, 1)
    halo = cv2.GaussianBlur(alpha, (0, 0), 2.0 * s)
    out = img * (1 - 0.82 * alpha - 0.12 * halo)[..., None] + (edge * 70.0)[..., None]
    return out, _mask_from_alpha(np.maximum(alpha, edge), 0.12, 1)


# --- public API ---------------------------------------------------------------------------------


def render_sample(
    category: str, label: str, index: int, seed: int = 0, split: str = "test", size: int = 256
) -> DemoSample:
    """Render one demo image (exactly what ``make_demo_dataset`` writes for that file).

    ``label`` is ``"good"`` or one of ``CATEGORIES[category]``; ``split`` is ``"train"`` or ``"test"``.
    """
    if category not in CATEGORIES:
        raise DatasetError(f"unknown demo category {category!r}; choose from {sorted(CATEGORIES)}")
    if label != GOOD and label not in CATEGORIES[category]:
        raise DatasetError(f"unknown defect type {label!r} for demo category {category!r}")
    if size < 64:
        raise ValueError(f"size must be >= 64, got {size}")
    rng = _rng_for(seed, category, split, label, index)
    mask: np.ndarray | None = None
    if category == "fabric":
        img = clean = _fabric_normal(rng, size)
        obj = np.ones((size, size), bool)
        if label == "stain":
            img, mask = _fabric_stain(rng, img)
        elif label == "cut":
            img, mask = _fabric_cut(rng, img)
    else:
        img, geom, obj = _cap_normal(rng, size)
        clean = img
        if label == "scratch":
            img, mask = _cap_scratch(rng, img, geom)
        elif label == "crack":
            img, mask = _cap_crack(rng, img, geom)
    if mask is not None:
        mask = np.where(obj, mask, 0).astype(np.uint8)
        if np.count_nonzero(mask) < _MIN_MASK_PIXELS:  # pragma: no cover - generators avoid this
            raise RuntimeError(f"empty demo defect mask for {category}/{label}/{index}")
    return DemoSample(image=_to_u8(img), mask=mask, object_mask=obj, clean=_to_u8(clean))


def check_category_dirs(out_dir: Path, names: Sequence[str], overwrite: bool) -> None:
    """Refuse (``DatasetError``) a category folder of a dataset maker that is a file, or that exists and is
    not empty while ``overwrite`` is off."""
    for name in names:
        cat_dir = out_dir / name
        if cat_dir.exists() and not cat_dir.is_dir():
            raise DatasetError("exists and is not a directory", cat_dir)
        if cat_dir.is_dir() and any(cat_dir.iterdir()) and not overwrite:
            raise DatasetError(
                "already exists and is not empty (pass overwrite=True or --overwrite to replace it)", cat_dir
            )


def make_demo_dataset(
    out_dir: Path,
    seed: int = 0,
    categories: Sequence[str] | None = None,
    size: int = 256,
    n_train_good: int = 36,
    n_test_good: int = 12,
    n_per_defect: int = 9,
    overwrite: bool = False,
) -> list[str]:
    """Write the demo dataset in MVTec AD layout under ``out_dir``; return the categories written.

    Refuses (``DatasetError``) when ``out_dir/<category>`` exists and is not empty, unless
    ``overwrite`` is set, in which case that category folder is replaced.
    """
    out_dir = Path(out_dir)
    names = list(CATEGORIES) if categories is None else list(dict.fromkeys(categories))
    for name in names:
        if name not in CATEGORIES:
            raise DatasetError(f"unknown demo category {name!r}; choose from {sorted(CATEGORIES)}", out_dir)
    if seed < 0:
        raise DatasetError(f"seed must be >= 0, got {seed}", out_dir)
    if min(n_train_good, n_test_good, n_per_defect) < 0 or size < 64:
        raise DatasetError("counts must be >= 0 and size >= 64", out_dir)
    check_category_dirs(out_dir, names, overwrite)

    def write_one(job: tuple[str, str, str, int]) -> None:
        name, split, label, i = job
        sample = render_sample(name, label, i, seed=seed, split=split, size=size)
        write_png(out_dir / name / split / label / f"{i:03d}.png", sample.image)
        if sample.mask is not None:
            write_png(out_dir / name / "ground_truth" / label / f"{i:03d}_mask.png", sample.mask)

    jobs: list[tuple[str, str, str, int]] = []
    for name in names:
        cat_dir = out_dir / name
        if cat_dir.is_dir() and overwrite:
            shutil.rmtree(cat_dir)
        groups = [("train", GOOD, n_train_good), ("test", GOOD, n_test_good)]
        groups += [("test", d, n_per_defect) for d in CATEGORIES[name]]
        for split, label, count in groups:
            (cat_dir / split / label).mkdir(parents=True, exist_ok=True)
            if label != GOOD:
                (cat_dir / "ground_truth" / label).mkdir(parents=True, exist_ok=True)
            jobs += [(name, split, label, i) for i in range(count)]
    # every image has its own generator, so the order of rendering cannot change the output
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        list(pool.map(write_one, jobs))
    return names
