"""Blending a source image into a normal image through a region mask, shared by the model-free generators.

Every function returns the blended image and the *final mask*: the pixels where the defect is drawn.

* ``alpha``: feathered alpha compositing. The alpha is a ramp on the signed distance to the region
  boundary, 0.5 exactly on it, so ``alpha >= 0.5`` is the region itself and pixels change at most
  ``feather`` pixels outside it (the blending margin).
* ``poisson`` / ``poisson-mixed``: gradient-domain (Poisson) blending, Perez et al. 2003, via OpenCV's
  ``seamlessClone`` (``NORMAL_CLONE`` / ``MIXED_CLONE``); pixels change only inside the region.
* ``none``: hard paste.
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
