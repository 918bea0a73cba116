"""Hand-made texture features of a defect crop: colour moments, LBP histogram, gradient orientations.

No pretrained network: the features describe colour, micro-texture and edge direction of the defect
itself (the crop's mask pixels, grown by ``GROW`` px to include the defect's edge), which is what
separates a plausible defect from noise or a flat blob.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from skimage.color import rgb2gray
from skimage.feature import local_binary_pattern

LBP_POINTS = 8
LBP_RADIUS = 1
LBP_BINS = LBP_POINTS + 2  # 'uniform' (rotation-invariant uniform) patterns: P + 2 codes
ORIENTATIONS = 8
GROW = 1  # px the mask is dilated by before the features are pooled


def colour_moments(pixels: np.ndarray) -> np.ndarray:
    """Mean, standard deviation and skewness of each RGB channel of (N, 3) uint8 pixels (in [0, 1]): 9 numbers."""
    x = pixels.astype(np.float64) / 255.0
    mean = x.mean(0)
    std = x.std(0)
    skew = ((x - mean) ** 3).mean(0) / np.maximum(std, 1e-6) ** 3
    return np.concatenate([mean, std, np.clip(skew, -10, 10)])


def lbp_histogram(gray: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Normalised histogram of rotation-invariant uniform local binary patterns (scikit-image) in ``region``."""
    codes = local_binary_pattern((gray * 255).astype(np.uint8), LBP_POINTS, LBP_RADIUS, method="uniform")
    hist = np.bincount(codes[region].astype(np.int64), minlength=LBP_BINS)[:LBP_BINS]
    return hist / max(hist.sum(), 1)


def gradient_histogram(gray: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Magnitude-weighted histogram of unsigned gradient orientations in ``region`` (normalised) and the mean
    gradient magnitude there: ORIENTATIONS + 1 numbers. By hand: scikit-image's HOG pools whole cells, not a
    mask."""
    gy, gx = np.gradient(gray)
    mag, ang = np.hypot(gx, gy)[region], np.mod(np.arctan2(gy, gx), np.pi)[region]
    bins = np.minimum((ang / np.pi * ORIENTATIONS).astype(int), ORIENTATIONS - 1)
    hist = np.bincount(bins, weights=mag, minlength=ORIENTATIONS)
    return np.concatenate([hist / max(hist.sum(), 1e-9), [mag.mean() if len(mag) else 0.0]])


def texture_features(crops: Sequence[np.ndarray], masks: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """(H, W, 3) uint8 crops of any sizes (and their (H, W) masks; None: whole crops) -> (N, D) float64."""
    rows = []
    kernel = np.ones((2 * GROW + 1, 2 * GROW + 1), np.uint8)
    for i, crop in enumerate(crops):
        region = np.ones(crop.shape[:2], bool)
        if masks is not None and masks[i].any():
            region = cv2.dilate(masks[i].astype(np.uint8), kernel) > 0
        gray = rgb2gray(crop)
        parts = [colour_moments(crop[region]), lbp_histogram(gray, region), gradient_histogram(gray, region)]
        rows.append(np.concatenate(parts))
    return np.asarray(rows, np.float64).reshape(len(crops), -1)
