"""Defect crops: the mask's bounding box, padded to a square and resized to a fixed size."""

from __future__ import annotations

import numpy as np

from anoaug.generators.diffusion.crops import crop_box, take_crop

MIN_SIDE = 8  # px: a crop around a tiny defect is at least this large before resizing


def defect_crop(image: np.ndarray, mask: np.ndarray, size: int, context: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """(crop (size, size, 3) uint8, mask crop (size, size) bool) centred on the mask's bounding box."""
    short = min(mask.shape[:2])
    box = crop_box(mask.astype(bool), min(MIN_SIDE, short), context)
    return take_crop(image, mask.astype(bool), box, size)


def native_crops(
    pairs: list[tuple[np.ndarray, np.ndarray]], context: float = 1.5
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The same square windows at the image's own resolution (no resizing: texture statistics such as noise
    survive, which a downscale would average away)."""
    out = []
    for img, m in pairs:
        m = m.astype(bool)
        sy, sx = crop_box(m, min(MIN_SIDE, min(m.shape[:2])), context).slices()
        out.append((img[sy, sx], m[sy, sx]))
    return out


def crop_stack(
    pairs: list[tuple[np.ndarray, np.ndarray]], size: int, context: float = 1.5
) -> tuple[np.ndarray, np.ndarray]:
    """Crops of many (image, mask) pairs: (N, size, size, 3) uint8 and (N, size, size) bool."""
    if not pairs:
        return np.zeros((0, size, size, 3), np.uint8), np.zeros((0, size, size), bool)
    crops = [defect_crop(img, m, size, context) for img, m in pairs]
    return np.stack([c for c, _ in crops]), np.stack([m for _, m in crops])
