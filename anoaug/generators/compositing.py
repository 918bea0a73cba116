"""Pixel compositing and the final mask, shared by every generator.

Model-free generators blend a source image into a normal image through a region mask; each blending
function returns the blended image and the *final mask*: the pixels where the defect is drawn.

* ``alpha``: feathered alpha compositing. The alpha is a ramp on the signed distance to the region
  boundary, 0.5 exactly on it, so ``alpha >= 0.5`` is the region itself and pixels change at most
  ``feather`` pixels outside it (the blending margin).
* ``poisson`` / ``poisson-mixed``: gradient-domain (Poisson) blending, Perez et al. 2003, via OpenCV's
  ``seamlessClone`` (``NORMAL_CLONE`` / ``MIXED_CLONE``); pixels change only inside the region.
* ``none``: hard paste.

Diffusion generators paste their generated window back with `composite` (an inward feathered seam that
keeps the normal image bit-exact outside the edit region) and report `changed_mask`: the pixels whose
colour actually changed.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np

BlendMode = Literal["alpha", "poisson", "poisson-mixed", "none"]
BLEND_MODES: tuple[str, ...] = ("alpha", "poisson", "poisson-mixed", "none")


def feather_alpha(region: np.ndarray, feather: float) -> np.ndarray:
    """(H, W) float32 alpha in [0, 1]: 0.5 + signed distance to the boundary / (2 * feather).

    OpenCV gives the two distance transforms; the ramp itself is one line, so it is written here.
    """
    region = region.astype(bool)
    if feather <= 0:
        return region.astype(np.float32)
    u8 = region.astype(np.uint8)
    d_in = cv2.distanceTransform(u8, cv2.DIST_L2, 5)
    d_out = cv2.distanceTransform(1 - u8, cv2.DIST_L2, 5)
    # Pixel centres: the first pixel inside is at distance 1, the first outside at 1; the boundary is half-way.
    signed = np.where(region, d_in - 0.5, -(d_out - 0.5))
    return np.clip(0.5 + signed / (2.0 * feather), 0.0, 1.0).astype(np.float32)


def alpha_blend(
    dst: np.ndarray, src: np.ndarray, region: np.ndarray, feather: float = 2.0, opacity: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Composite ``src`` over ``dst`` with a feathered alpha; final mask = ``alpha >= 0.5`` (the region)."""
    alpha = feather_alpha(region, feather)
    a = (alpha * float(opacity))[..., None]
    out = dst.astype(np.float32) * (1.0 - a) + src.astype(np.float32) * a
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), alpha >= 0.5


def poisson_blend(
    dst: np.ndarray, src: np.ndarray, region: np.ndarray, mixed: bool = False
) -> tuple[np.ndarray, np.ndarray] | None:
    """Poisson-blend ``src`` (same size and alignment as ``dst``) into ``dst`` inside ``region``.

    Returns None when OpenCV cannot blend this region (e.g. a one-pixel-thin mask); callers fall back.
    The images are padded (reflect) so regions touching the border work; the mask is dilated by one
    pixel because ``seamlessClone`` leaves the outermost pixel ring of its mask unchanged.
    """
    region = region.astype(bool)
    if not region.any():
        return None
    pad = 4
    d = cv2.copyMakeBorder(dst, pad, pad, pad, pad, cv2.BORDER_REFLECT_101)
    s = cv2.copyMakeBorder(src, pad, pad, pad, pad, cv2.BORDER_REFLECT_101)
    m = np.zeros(d.shape[:2], np.uint8)
    m[pad:-pad, pad:-pad] = region.astype(np.uint8) * 255
    m = cv2.dilate(m, np.ones((3, 3), np.uint8))
    x, y, w, h = cv2.boundingRect(m)
    if w < 3 or h < 3:
        return None
    # (x + w // 2, y + h // 2) is the centre that keeps src and dst aligned pixel for pixel (checked).
    flags = cv2.MIXED_CLONE if mixed else cv2.NORMAL_CLONE
    try:
        out = cv2.seamlessClone(s, d, m, (x + w // 2, y + h // 2), flags)
    except cv2.error:
        return None
    out = out[pad:-pad, pad:-pad]
    # Keep pixels outside the region untouched (seamlessClone only edits its mask, but be exact).
    out = np.where(region[..., None], out, dst)
    return np.ascontiguousarray(out), region.copy()


def blend(
    dst: np.ndarray, src: np.ndarray, region: np.ndarray, mode: str = "alpha", feather: float = 2.0
) -> tuple[np.ndarray, np.ndarray, str]:
    """Blend with ``mode`` (see module docstring); returns (image, final mask, mode actually used)."""
    if mode not in BLEND_MODES:
        raise ValueError(f"unknown blend mode {mode!r}; choose one of {', '.join(BLEND_MODES)}")
    if mode.startswith("poisson"):
        res = poisson_blend(dst, src, region, mixed=mode == "poisson-mixed")
        if res is not None:
            return res[0], res[1], mode
        mode = "alpha"  # region too thin for OpenCV's Poisson solver
    if mode == "none":
        out = np.where(region[..., None], src, dst).astype(np.uint8)
        return out, region.astype(bool).copy(), "none"
    out, mask = alpha_blend(dst, src, region, feather)
    return out, mask, "alpha"


def bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x, y, w, h) of the True pixels, or None when there are none."""
    if not mask.any():
        return None
    x, y, w, h = cv2.boundingRect(mask.astype(np.uint8))
    return int(x), int(y), int(w), int(h)


def seed_of(rng: np.random.Generator) -> int:
    """A non-negative 31-bit int drawn from ``rng``, for libraries that take an int seed (albumentations)."""
    return int(rng.integers(0, 2**31 - 1))


def _inward_alpha(mask: np.ndarray, feather: int) -> np.ndarray:
    """Alpha in [0, 1] that is 0 outside ``mask`` and ramps to 1 over ``feather`` px inside it."""
    m = mask.astype(bool)
    if feather <= 0:
        return m.astype(np.float32)
    # Distance to the nearest outside pixel: the ramp stays inside the mask, so outside stays exact.
    dist = cv2.distanceTransform(m.astype(np.uint8), cv2.DIST_L2, 3)
    return np.clip(dist / float(feather), 0.0, 1.0).astype(np.float32) * m


def composite(normal: np.ndarray, generated: np.ndarray, mask: np.ndarray, feather: int) -> np.ndarray:
    """Paste ``generated`` into ``normal`` inside ``mask`` with an inward feathered seam.

    Pixels where ``mask`` is False are bit-exact copies of ``normal``. Images are (H, W, 3) uint8.
    """
    if normal.shape != generated.shape or normal.shape[:2] != mask.shape[:2]:
        raise ValueError(f"shape mismatch: normal {normal.shape}, generated {generated.shape}, mask {mask.shape}")
    alpha = _inward_alpha(mask, feather)[..., None]
    out = normal.astype(np.float32) * (1 - alpha) + generated.astype(np.float32) * alpha
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    outside = ~mask.astype(bool)
    out[outside] = normal[outside]
    return out


def dilate_mask(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation by a disk of ``radius`` px (identity for radius <= 0)."""
    m = mask.astype(bool)
    if radius <= 0:
        return m
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.dilate(m.astype(np.uint8), k).astype(bool)


def changed_mask(
    normal: np.ndarray,
    generated: np.ndarray,
    input_mask: np.ndarray,
    threshold: float,
    dilate: int,
    *,
    blur: int = 0,
) -> np.ndarray:
    """The final mask: pixels whose colour changed by more than ``threshold`` (0-255, max over channels)
    inside ``input_mask`` dilated by ``dilate`` px. ``blur`` > 0 compares Gaussian-smoothed images so that
    re-synthesised fine texture is not counted as a defect. Returns (H, W) bool."""
    a = normal.astype(np.float32)
    b = generated.astype(np.float32)
    if blur > 0:
        k = 2 * blur + 1
        a = cv2.GaussianBlur(a, (k, k), 0)
        b = cv2.GaussianBlur(b, (k, k), 0)
    diff = np.abs(a - b)
    if diff.ndim == 3:
        diff = diff.max(axis=2)
    return (diff > threshold) & dilate_mask(input_mask, dilate)
