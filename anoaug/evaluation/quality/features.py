"""Hand-made texture features of a defect crop: colour moments, LBP histogram, gradient orientations.

No pretrained network: the features describe colour, micro-texture and edge direction, which is what
separates a plausible defect from noise or a flat blob.
"""

from __future__ import annotations

import numpy as np
from skimage.color import rgb2gray
from skimage.feature import hog, local_binary_pattern

LBP_POINTS = 8
LBP_RADIUS = 1
LBP_BINS = LBP_POINTS + 2  # 'uniform' (rotation-invariant uniform) patterns: P + 2 codes
ORIENTATIONS = 8


def colour_moments(crop: np.ndarray) -> np.ndarray:
    """Mean, standard deviation and skewness of each RGB channel (values in [0, 1]): 9 numbers."""
    x = crop.reshape(-1, 3).astype(np.float64) / 255.0
    mean = x.mean(0)
    std = x.std(0)
    skew = ((x - mean) ** 3).mean(0) / np.maximum(std, 1e-6) ** 3
    return np.concatenate([mean, std, np.clip(skew, -10, 10)])


def lbp_histogram(gray: np.ndarray) -> np.ndarray:
    """Normalised histogram of rotation-invariant uniform local binary patterns (scikit-image)."""
    codes = local_binary_pattern((gray * 255).astype(np.uint8), LBP_POINTS, LBP_RADIUS, method="uniform")
    hist = np.bincount(codes.astype(np.int64).ravel(), minlength=LBP_BINS)[:LBP_BINS]
    return hist / max(hist.sum(), 1)


def gradient_histogram(gray: np.ndarray) -> np.ndarray:
    """Orientation histogram of the gradients over the whole crop (scikit-image HOG, one cell) and the mean
    gradient magnitude (HOG normalises its histogram away): ORIENTATIONS + 1 numbers."""
    h = hog(gray, orientations=ORIENTATIONS, pixels_per_cell=gray.shape, cells_per_block=(1, 1), feature_vector=True)
    gy, gx = np.gradient(gray)
    return np.concatenate([h, [np.hypot(gx, gy).mean()]])


def texture_features(crops: np.ndarray) -> np.ndarray:
    """(N, S, S, 3) uint8 crops -> (N, D) float64 features (colour moments, LBP, gradient histogram)."""
    rows = []
    for crop in crops:
        gray = rgb2gray(crop)
        rows.append(np.concatenate([colour_moments(crop), lbp_histogram(gray), gradient_histogram(gray)]))
    return np.asarray(rows, np.float64).reshape(len(crops), -1)
