"""Foreground (object region) extraction for normal images, without any weights by default.

Methods (``ForegroundSection.method``), with their cost per 256x256 image, CPU time of one thread (median
over 10 images of the photographic categories of ``anoaug.data.photographic``; see the README section
"Choosing a foreground method"):

* ``whole`` -- every pixel (textures); free;
* ``border`` -- a Gaussian colour model (Lab) of the image border, robustly fitted; pixels further than
  ``border_threshold`` Mahalanobis units from it are object (~21 ms); fails on uneven light;
* ``threshold`` -- Otsu on one channel (``channel``; ``auto`` picks the channel whose histogram
  separates best), the side that holds most of the border is background (~7 ms);
* ``grabcut`` -- OpenCV GrabCut seeded with the border strip as background and the ``border`` result
  (~130 ms);
* ``region`` -- border-seeded region growing on an illumination-corrected, shadow-tolerant distance
  (``_surface_distance``: a quadratic light surface fitted to the border, log chromaticity); neighbours cut
  by the border are dropped by ``_central_component`` (~32 ms);
* ``kmeans`` -- OpenCV k-means on the same distance, colour and local texture; the object clusters'
  central component (~62 ms);
* ``grabcut_center`` -- GrabCut seeded at the centre by ``region`` (or a central ellipse)
  (~163 ms);
* ``model`` -- a local segmentation model from ``model_path`` (TorchScript or torch.export ``.pt2``), e.g. a
  U2-Net or a SAM-style mask decoder exported by the user; its cost is the model's;
* ``auto`` -- ``whole`` for textures; for objects ``region``, then ``kmeans``, ``grabcut_center``,
  ``threshold``, ``border``, whichever first gives a plausible foreground (see ``foreground_flags``)
  (~26 ms: usually ``region`` alone).

Every classical result is cleaned with opening, closing, hole filling and the largest (for the new
methods: the most central, not border-cut) component.
"""

from __future__ import annotations

import hashlib
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from scipy import ndimage

from anoaug.masks import ForegroundError
from anoaug.spec import ForegroundSection

KINDS = ("object", "texture")


# --- helpers ------------------------------------------------------------------------------------


def _as_rgb(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (3, 4) or img.shape[0] < 1 or img.shape[1] < 1:
        raise ForegroundError(f"expected an (H, W, 3) image, got shape {img.shape}")
    img = img[..., :3]
    if img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(img)


def _ellipse(size: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))


def _odd(n: int) -> int:
    return n if n % 2 else n + 1


def _blur(img: np.ndarray, k: int) -> np.ndarray:
    """Median blur: removes noise without moving edges (a Gaussian would grow the object by ~k/2 px)."""
    return cv2.medianBlur(img, _odd(k)) if k > 1 else img


def _border_strip(shape: tuple[int, int], width: int) -> np.ndarray:
    h, w = shape
    width = max(1, min(width, h // 4 or 1, w // 4 or 1))
    strip = np.zeros((h, w), bool)
    strip[:width, :] = strip[-width:, :] = True
    strip[:, :width] = strip[:, -width:] = True
    return strip


def erode(mask: np.ndarray, radius: int) -> np.ndarray:
    """Erode a bool mask by ``radius`` pixels (disc); pixels outside the image count as background."""
    if radius <= 0:
        return mask.copy()
    out = cv2.erode(
        mask.astype(np.uint8), _ellipse(2 * radius + 1), borderType=cv2.BORDER_CONSTANT, borderValue=0
    )
    return out.astype(bool)


def clean(mask: np.ndarray, spec: ForegroundSection) -> np.ndarray:
    """Opening, closing, hole filling and largest component, as the spec asks."""
    m = mask.astype(np.uint8)
    if spec.opening > 1:
        m = cv2.morphologyEx(m, cv2.MORPH_OPEN, _ellipse(spec.opening))
    if spec.closing > 1:
        m = cv2.morphologyEx(m, cv2.MORPH_CLOSE, _ellipse(spec.closing))
    if spec.largest_component and m.any():
        n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
        if n > 2:
            m = (labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))).astype(np.uint8)
    out = m.astype(bool)
    if spec.fill_holes:
        out = ndimage.binary_fill_holes(out)
    return out


# --- methods ------------------------------------------------------------------------------------


def _border_distance(img: np.ndarray, spec: ForegroundSection) -> tuple[np.ndarray, np.ndarray]:
    """Mahalanobis distance (Lab) of every pixel to the border colour model, and the border strip."""
    lab = cv2.cvtColor(_blur(img, spec.blur), cv2.COLOR_RGB2LAB).astype(np.float32)
    strip = _border_strip(lab.shape[:2], spec.border_width)
    samples = lab[strip].astype(np.float64)
    keep = np.ones(len(samples), bool)
    d2 = np.zeros(len(samples))
    for _ in range(2):  # one trimming pass: an object touching the border must not widen the model
        mean = samples[keep].mean(axis=0)
        cov = np.cov(samples[keep].T) + np.eye(3) * 1.0  # floor: a perfectly flat border stays invertible
        inv = np.linalg.inv(cov)
        diff = samples - mean
        d2 = np.einsum("ij,jk,ik->i", diff, inv, diff)
        keep = d2 <= np.quantile(d2, 0.9)
    diff = lab.reshape(-1, 3).astype(np.float64) - mean
    dist = np.sqrt(np.einsum("ij,jk,ik->i", diff, inv, diff)).reshape(lab.shape[:2])
    return dist, strip


def _border_cut(dist: np.ndarray, strip: np.ndarray, spec: ForegroundSection) -> float:
    """The object/background distance cut: the spec's, or more for a background noisier than Gaussian.

    Twice the border's 90th percentile (not a high quantile): an object reaching into the strip
    must not push the cut up.
    """
    return max(spec.border_threshold, 2.0 * float(np.quantile(dist[strip], 0.9)))


def _border_fg(img: np.ndarray, spec: ForegroundSection) -> np.ndarray:
    dist, strip = _border_distance(img, spec)
    return dist > _border_cut(dist, strip, spec)


def _channel(img: np.ndarray, name: str) -> np.ndarray:
    if name == "gray":
        return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    if name in ("saturation", "value"):
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
        return hsv[..., 1 if name == "saturation" else 2]
    if name == "lab_l":
        return cv2.cvtColor(img, cv2.COLOR_RGB2LAB)[..., 0]
    raise ForegroundError(f"unknown channel {name!r}")


def _otsu(ch: np.ndarray) -> tuple[float, float]:
    """Otsu threshold (OpenCV) and its separability, between-class / total variance (0..1)."""
    thr, _ = cv2.threshold(ch, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    total = float(ch.var())
    if total < 1e-9:
        return thr, 0.0
    hi = ch > thr
    w1 = float(hi.mean())
    if w1 in (0.0, 1.0):
        return thr, 0.0
    m0, m1 = float(ch[~hi].mean()), float(ch[hi].mean())
    return thr, w1 * (1 - w1) * (m1 - m0) ** 2 / total


def _threshold_fg(img: np.ndarray, spec: ForegroundSection) -> np.ndarray:
    names = ["gray", "saturation", "value", "lab_l"] if spec.channel == "auto" else [spec.channel]
    best: tuple[float, np.ndarray, float] | None = None
    for name in names:
        ch = _blur(_channel(img, name), spec.blur)
        thr, sep = _otsu(ch)
        if best is None or sep > best[0]:
            best = (sep, ch, thr)
    assert best is not None
    _, ch, thr = best
    fg = ch > thr
    if fg[_border_strip(fg.shape, spec.border_width)].mean() > 0.5:  # the border is background
        fg = ~fg
    return fg


def _grabcut_fg(img: np.ndarray, spec: ForegroundSection, prior: np.ndarray | None = None) -> np.ndarray:
    h, w = img.shape[:2]
    f = min(1.0, 256.0 / max(h, w))  # GrabCut is slow; a 256-px version is plenty for a region mask
    small = cv2.resize(img, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    if prior is None:
        prior = _border_fg(img, spec)
    prior_s = cv2.resize(prior.astype(np.uint8), small.shape[1::-1], interpolation=cv2.INTER_NEAREST).astype(
        bool
    )
    gc = np.where(prior_s, cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
    gc[_border_strip(gc.shape, max(1, round(spec.border_width * f)))] = cv2.GC_BGD
    if not (gc == cv2.GC_PR_FGD).any():
        return np.zeros((h, w), bool)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)  # GrabCut's k-means init draws from OpenCV's global RNG: pin it for determinism
    cv2.grabCut(
        cv2.cvtColor(small, cv2.COLOR_RGB2BGR), gc, None, bgd, fgd, spec.grabcut_iters, cv2.GC_INIT_WITH_MASK
    )
    fg = ((gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)).astype(np.uint8)
    return cv2.resize(fg, (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)


# --- photograph-robust methods: an illumination surface, region growing, clustering, centred GrabCut -----


_SURFACE_TERMS = 6  # 1, x, y, x^2, xy, y^2


def _design(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    x, y = 2 * xx.ravel() / max(w - 1, 1) - 1, 2 * yy.ravel() / max(h - 1, 1) - 1
    return np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], axis=1)


def _surface_distance(img: np.ndarray, spec: ForegroundSection) -> tuple[np.ndarray, np.ndarray, float]:
    """Distance of every pixel to the background, with uneven light and soft shadows taken out.

    Features: log chromaticity (log R/G, log B/G, which a shadow or a light gradient leaves alone) and log
    brightness. A quadratic surface per feature is fitted (robust, trimmed least squares in NumPy) to the
    border strip, so a light gradient or vignetting is background; residuals are scaled by the strip's
    robust spread (MAD). Darkening by up to ``shadow_depth`` without a change of chromaticity is shadow,
    not object. Returns (distance map, border strip, the object cut).
    """
    rgb = _blur(img, spec.blur).astype(np.float64) + 8.0  # offset: dark pixels' chromaticity stays finite
    feat = np.stack(
        [np.log(rgb[..., 0] / rgb[..., 1]), np.log(rgb[..., 2] / rgb[..., 1]), np.log(rgb.mean(axis=2))], axis=-1
    )
    h, w = feat.shape[:2]
    strip = _border_strip((h, w), spec.border_width)
    design = _design(h, w)
    a_s, v_s = design[strip.ravel()], feat[strip].reshape(-1, 3)
    coef = np.zeros((_SURFACE_TERMS, 3))
    coef[0] = np.median(v_s, axis=0)  # start from a flat background: robust to border-cut neighbours
    keep = np.ones(len(v_s), bool)
    scale = np.ones(3)
    for it in range(4):
        res = v_s - a_s @ coef
        scale = np.maximum(1.4826 * np.median(np.abs(res[keep] - np.median(res[keep], axis=0)), axis=0), 1e-3)
        norm = np.sqrt(((res / scale) ** 2).sum(axis=1))
        keep = norm <= max(3.5, float(np.quantile(norm, 0.3)))
        if it < 3 and keep.sum() > 3 * _SURFACE_TERMS:
            coef, *_ = np.linalg.lstsq(a_s[keep], v_s[keep], rcond=None)
    r = feat - (design @ coef).reshape(h, w, 3)
    r_v = r[..., 2]
    r_v = np.where(r_v < 0, np.minimum(r_v - np.log1p(-min(spec.shadow_depth, 0.99)), 0.0), r_v)
    dist = np.sqrt((r[..., 0] / scale[0]) ** 2 + (r[..., 1] / scale[1]) ** 2 + (r_v / scale[2]) ** 2)
    cut = max(4.0, 2.0 * float(np.quantile(dist[strip][keep], 0.9)))
    return dist, strip, cut


def _central_component(mask: np.ndarray) -> np.ndarray:
    """The component most likely the object: large, near the centre, not a neighbour cut by the border.

    Score = area x (1 - 0.6 x centre distance) x (1 - 2.5 x the share of its outline on the image edge);
    a part cut in half by the border has about 45% of its outline there, a part touching it a few %.
    """
    m = mask.astype(np.uint8)
    n, labels, stats, cents = cv2.connectedComponentsWithStats(m, connectivity=8)
    if n <= 2:
        return mask.astype(bool)
    h, w = mask.shape
    edge = np.zeros((h, w), bool)
    edge[0, :] = edge[-1, :] = edge[:, 0] = edge[:, -1] = True
    on_edge = np.bincount(labels[edge], minlength=n)
    best, best_score = 0, -1.0
    for k in range(1, n):
        area = float(stats[k, cv2.CC_STAT_AREA])
        dc = float(np.hypot(cents[k, 0] - (w - 1) / 2, cents[k, 1] - (h - 1) / 2) / (0.5 * np.hypot(h, w)))
        outline = 2 * np.sqrt(np.pi * area)  # perimeter of a disc of the same area
        score = area * (1 - 0.6 * dc) * max(0.02, 1 - 2.5 * on_edge[k] / outline)
        if score > best_score:
            best, best_score = k, score
    return labels == best


def _finish(mask: np.ndarray, spec: ForegroundSection) -> np.ndarray:
    """Opening / closing as the spec asks, the central component, holes filled, and the outline pixel
    dropped (an edge pixel mixes object and background colour: placement wants only sure object)."""
    m = mask.astype(np.uint8)
    if spec.opening > 1:
        m = cv2.morphologyEx(m, cv2.MORPH_OPEN, _ellipse(spec.opening))
    if spec.closing > 1:
        m = cv2.morphologyEx(m, cv2.MORPH_CLOSE, _ellipse(spec.closing))
    out = _central_component(m.astype(bool)) if spec.largest_component else m.astype(bool)
    return erode(ndimage.binary_fill_holes(out) if spec.fill_holes else out, 1)


def _region_fg(img: np.ndarray, spec: ForegroundSection) -> np.ndarray:
    """Border-seeded region growing: the background is every background-like pixel connected to the border.

    Objects inside the image are what the border flood cannot reach; neighbours cut by the border are left
    to ``_central_component``.
    """
    dist, strip, cut = _surface_distance(img, spec)
    bgish = (dist <= cut).astype(np.uint8)
    _, labels = cv2.connectedComponents(bgish, connectivity=4)
    seeds = np.unique(labels[strip & (bgish > 0)])
    background = np.isin(labels, seeds[seeds > 0])
    return _finish(~background, spec)


def _kmeans_fg(img: np.ndarray, spec: ForegroundSection, k: int = 4) -> np.ndarray:
    """k-means (OpenCV) on colour and texture; clusters whose centre is far from the background are object.

    Features: the Lab residuals of ``_surface_distance`` (light and shadow removed) and the local
    standard deviation of lightness (texture); the central component of the object clusters is returned.
    """
    dist, _, cut = _surface_distance(img, spec)
    lab = cv2.cvtColor(_blur(img, spec.blur), cv2.COLOR_RGB2LAB).astype(np.float32)
    lum = lab[..., 0]
    local_sd = np.sqrt(np.maximum(cv2.blur(lum * lum, (7, 7)) - cv2.blur(lum, (7, 7)) ** 2, 0))
    feats = np.stack([np.minimum(dist, 4 * cut), lab[..., 1] / 4, lab[..., 2] / 4, local_sd / 2], axis=-1)
    data = feats.reshape(-1, 4).astype(np.float32)
    cv2.setRNGSeed(0)  # k-means++ seeding draws from OpenCV's global RNG: pin it for determinism
    crit = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 20, 0.5)
    _, labels, _ = cv2.kmeans(data, k, None, crit, 2, cv2.KMEANS_PP_CENTERS)
    labels = labels.reshape(dist.shape)
    mean_dist = ndimage.mean(dist, labels, index=np.arange(k))
    fg = np.isin(labels, np.flatnonzero(np.asarray(mean_dist) > cut))
    return _finish(fg, spec)


def _grabcut_center_fg(img: np.ndarray, spec: ForegroundSection) -> np.ndarray:
    """GrabCut (OpenCV) seeded at the centre: the region-growing object (or a central ellipse) is probable
    object, the border strip background except where that object reaches it."""
    h, w = img.shape[:2]
    prior = _region_fg(img, spec)
    seeded = not foreground_flags(prior, "object", spec)
    if not seeded:
        prior = np.zeros((h, w), np.uint8)
        cv2.ellipse(prior, (w // 2, h // 2), (w // 4, h // 4), 0, 0, 360, 1, -1)
        prior = prior.astype(bool)
    f = min(1.0, 256.0 / max(h, w))
    small = cv2.resize(img, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    size = small.shape[1::-1]
    prior_s = cv2.resize(prior.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
    gc = np.where(prior_s, cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
    gc[_border_strip(gc.shape, max(1, round(spec.border_width * f))) & ~prior_s] = cv2.GC_BGD
    if seeded:
        gc[erode(prior_s, max(2, round(min(size) * 0.04)))] = cv2.GC_FGD
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)
    cv2.grabCut(
        cv2.cvtColor(small, cv2.COLOR_RGB2BGR), gc, None, bgd, fgd, spec.grabcut_iters, cv2.GC_INIT_WITH_MASK
    )
    fg = ((gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)).astype(np.uint8)
    out = _finish(cv2.resize(fg, (w, h), interpolation=cv2.INTER_NEAREST).astype(bool), spec)
    if not seeded and out.any():  # from the bare ellipse: keep it only if it differs from the background
        dist, _, cut = _surface_distance(img, spec)
        if float(np.median(dist[out])) <= cut:
            return np.zeros((h, w), bool)
    return out


_MODELS: dict[tuple[str, float], Any] = {}


def _model_fg(img: np.ndarray, spec: ForegroundSection) -> np.ndarray:
    """Run a local model (TorchScript ``.pt``/``.ts``, or ``torch.export`` ``.pt2``).

    Input (1, 3, H, W) float RGB in [0, 1]; output logits (1, 1, h, w) (object where > 0) or (1, C, h, w)
    (object where the argmax is not class 0), resized to the image.
    """
    if not spec.model_path:
        raise ForegroundError("foreground.method is 'model' but foreground.model_path is not set")
    path = Path(spec.model_path).expanduser()
    if not path.is_file():
        raise ForegroundError("foreground model file not found", path)
    import torch  # heavy: only for this method

    key = (str(path.resolve()), path.stat().st_mtime)
    model = _MODELS.get(key)
    if model is None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still supported
                if path.suffix == ".pt2":
                    model = torch.export.load(str(path)).module()
                else:
                    model = torch.jit.load(str(path), map_location="cpu").eval()
        except Exception as exc:  # torch raises RuntimeError/ValueError variants for bad files
            raise ForegroundError(
                f"cannot load segmentation model ({type(exc).__name__}: {exc})"[:300], path
            ) from None
        _MODELS[key] = model
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255.0
    with torch.no_grad():
        out = model(x)
    if isinstance(out, (tuple, list)):
        out = out[0]
    if isinstance(out, dict):
        out = out.get("out", next(iter(out.values())))
    out = out.detach().float().cpu()
    while out.ndim < 4:
        out = out[None]
    fg = (out[0, 0] > 0) if out.shape[1] == 1 else (out[0].argmax(0) != 0)
    h, w = img.shape[:2]
    return cv2.resize(fg.numpy().astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)


# --- public API ---------------------------------------------------------------------------------


def foreground_flags(fg: np.ndarray, kind: str, spec: ForegroundSection | None = None) -> list[str]:
    """Why a foreground looks wrong: ``empty``, ``whole_image``, ``touches_all_borders``, ``many_components``
    (the last three for objects only)."""
    spec = spec or ForegroundSection()
    frac = float(fg.mean()) if fg.size else 0.0
    flags = []
    if frac == 0 or (kind == "object" and frac < spec.min_fraction):
        flags.append("empty")
    if kind == "object" and frac > spec.max_fraction:
        flags.append("whole_image")
    if kind == "object" and fg.any() and fg[0].any() and fg[-1].any() and fg[:, 0].any() and fg[:, -1].any():
        flags.append("touches_all_borders")
    if kind == "object" and fg.any():
        n = cv2.connectedComponents(fg.astype(np.uint8), connectivity=8)[0] - 1
        if n > spec.max_components:
            flags.append("many_components")
    return flags


def extract_foreground(image: np.ndarray, spec: ForegroundSection, kind: str) -> np.ndarray:
    """The (H, W) bool foreground of a normal image; all True for textures (unless a method is forced)."""
    if kind not in KINDS:
        raise ForegroundError(f"kind must be one of {KINDS}, got {kind!r}")
    img = _as_rgb(image)
    shape = img.shape[:2]
    method = spec.method
    if method == "whole" or (method == "auto" and kind == "texture"):
        return np.ones(shape, bool)
    if method == "model":
        return _model_fg(img, spec)
    if method == "border":
        return clean(_border_fg(img, spec), spec)
    if method == "threshold":
        return clean(_threshold_fg(img, spec), spec)
    if method == "grabcut":
        return clean(_grabcut_fg(img, spec), spec)
    if method == "region":
        return _region_fg(img, spec)
    if method == "kmeans":
        return _kmeans_fg(img, spec)
    if method == "grabcut_center":
        return _grabcut_center_fg(img, spec)
    # auto on an object: the first plausible of region, kmeans, grabcut_center, threshold, border
    first = None
    for fn in (_region_fg, _kmeans_fg, _grabcut_center_fg):
        fg = fn(img, spec)
        if not foreground_flags(fg, kind, spec):
            return fg
        first = fg if first is None else first
    for fn in (_threshold_fg, _border_fg):
        fg = clean(fn(img, spec), spec)
        if not foreground_flags(fg, kind, spec):
            return fg
    assert first is not None
    return first


@dataclass(frozen=True)
class KindEvidence:
    """What ``kind_report`` saw: the kind, how sure (0.5 = a coin toss, 1 = every image agrees), and why."""

    kind: str
    confidence: float
    reason: str
    votes: int  # images with one plausible, compact object region
    images: int
    fractions: tuple[float, ...]  # that region's share of each image (0 where none was found)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "confidence": round(self.confidence, 3),
            "reason": self.reason,
            "votes": self.votes,
            "images": self.images,
            "fractions": [round(f, 4) for f in self.fractions],
        }


def kind_report(images: Sequence[np.ndarray]) -> KindEvidence:
    """Decide object vs texture, say why and how sure.

    An object image has one compact region unlike its background (``region`` growing from the border,
    light and shadow taken out) covering 5-90% of the image and not touching every border; a texture's
    unusual pixels are scattered or everywhere. More than half of the images with such a region is
    ``object``; mixed evidence (at least a quarter) with a region found is ``object`` too, since placing
    masks on an object's foreground is safe on a texture-like object and the opposite is not. The
    confidence is the share of images whose evidence agrees with the decision.
    """
    if not images:
        raise ForegroundError("cannot decide object vs texture without images")
    spec = ForegroundSection()
    fracs = []
    for image in images:
        img = _as_rgb(image)
        fg = _region_fg(img, spec)
        frac = float(fg.mean())
        plausible = not foreground_flags(fg, "object", spec) and 0.05 <= frac <= 0.9
        fracs.append(frac if plausible else 0.0)
    n = len(fracs)
    votes = sum(f > 0 for f in fracs)
    share = votes / n
    mixed = 0.25 <= share <= 0.5
    kind = "object" if share > 0.5 or (mixed and votes > 0) else "texture"
    confidence = share if kind == "object" else 1 - share
    reason = (
        f"{votes}/{n} images show one compact region unlike their border "
        f"(median {float(np.median(fracs)):.0%} of the image; 5-90% counts)"
        + ("; mixed evidence with a foreground found: object" if mixed and votes else "")
        + f"; confidence {confidence:.0%}"
    )
    return KindEvidence(kind, confidence, reason, votes, n, tuple(fracs))


def kind_evidence(images: Sequence[np.ndarray]) -> tuple[str, str]:
    """(kind, reason) of ``kind_report``."""
    rep = kind_report(images)
    return rep.kind, rep.reason


def detect_kind(images: Sequence[np.ndarray]) -> str:
    """``"object"`` or ``"texture"`` for a category's normal images (see ``kind_report``)."""
    return kind_report(images).kind


def image_sha256(image: np.ndarray) -> str:
    """Hex sha256 of an array's shape, dtype and bytes (the cache key of its foreground)."""
    arr = np.ascontiguousarray(image)
    h = hashlib.sha256(f"{arr.shape}|{arr.dtype}|".encode())
    h.update(arr.tobytes())
    return h.hexdigest()


class ForegroundCache:
    """Foregrounds by (image key, spec, kind): bit-packed in memory (LRU), optionally PNGs in a directory."""

    def __init__(
        self, spec: ForegroundSection, kind: str, directory: str | Path | None = None, size: int = 512
    ):
        self.spec, self.kind = spec, kind
        self.directory = Path(directory) if directory is not None else None
        self.size = size
        self._mem: OrderedDict[str, tuple[np.ndarray, tuple[int, int]]] = OrderedDict()
        self._spec_key = hashlib.sha256(f"{spec.model_dump_json()}|{kind}".encode()).hexdigest()[:16]
        self.hits = self.misses = 0

    def get(self, image: np.ndarray, key: str | None = None) -> np.ndarray:
        """The foreground of ``image``; ``key`` (e.g. its file sha256 or relpath) skips hashing the pixels."""
        base = key if key is not None else image_sha256(image)
        full = hashlib.sha256(f"{base}|{image.shape[:2]}|{self._spec_key}".encode()).hexdigest()
        if full in self._mem:
            self.hits += 1
            self._mem.move_to_end(full)
            bits, shape = self._mem[full]
            return np.unpackbits(bits, count=shape[0] * shape[1]).reshape(shape).astype(bool)
        self.misses += 1
        fg = None
        png = self.directory / f"{full}.png" if self.directory is not None else None
        if png is not None and png.is_file():
            raw = cv2.imread(str(png), cv2.IMREAD_GRAYSCALE)
            if raw is not None and raw.shape == image.shape[:2]:
                fg = raw > 127
        if fg is None:
            fg = extract_foreground(image, self.spec, self.kind)
            if png is not None:
                png.parent.mkdir(parents=True, exist_ok=True)
                tmp = png.with_name(f".{png.name}.tmp.png")
                cv2.imwrite(str(tmp), fg.astype(np.uint8) * 255)
                tmp.replace(png)
        self._mem[full] = (np.packbits(fg.ravel()), fg.shape)
        if len(self._mem) > self.size:
            self._mem.popitem(last=False)
        return fg
