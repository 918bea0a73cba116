"""The final mask read from the generated part image (the defect alone on black).

The part branch draws the defect on a black background, so the defect is where the part image is not black
(compared with the VAE's rendering of black): the largest channel difference above ``threshold`` (0-255),
then a cleanup (opening with a 3 px cross, holes filled, components under ``min_area`` pixels dropped). The
mask must lie on the object's foreground; `accept` says whether a read mask is usable (big enough, at least
``min_on_foreground`` of it on the foreground).
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage


def part_strength(part: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
    """(H, W) float32: how far each pixel of the part image is from black, or from ``reference`` (what the
    model's VAE makes of a black image, which a weak VAE does not return as pure black); max over channels."""
    diff = part.astype(np.float32)
    if reference is not None:
        diff = np.abs(diff - reference.astype(np.float32))
    return diff.max(axis=2) if diff.ndim == 3 else diff


def read_part_mask(
    part: np.ndarray, threshold: float, min_area: int = 1, reference: np.ndarray | None = None
) -> np.ndarray:
    """(H, W) bool mask of the defect in a part image: not-black (not-``reference``) pixels, cleaned."""
    raw = part_strength(part, reference) > float(threshold)
    opened = cv2.morphologyEx(raw.astype(np.uint8), cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3)))
    mask = ndimage.binary_fill_holes(opened > 0)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    keep = np.zeros(n, bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= max(1, int(min_area))
    return keep[labels]


def on_foreground_share(mask: np.ndarray, foreground: np.ndarray) -> float:
    """Share of the mask's pixels that lie on the foreground (0 for an empty mask)."""
    area = int(mask.sum())
    return float((mask & foreground).sum()) / area if area else 0.0


def accept(mask: np.ndarray, foreground: np.ndarray, min_area: int, min_on_foreground: float) -> bool:
    """A usable mask: at least ``min_area`` pixels on the foreground and ``min_on_foreground`` of it there."""
    return int((mask & foreground).sum()) >= max(1, min_area) and on_foreground_share(mask, foreground) >= (
        min_on_foreground
    )


def strongest_pixels(part: np.ndarray, region: np.ndarray, count: int) -> np.ndarray:
    """Fallback mask: the ``count`` brightest part pixels inside ``region`` (ties broken by position)."""
    out = np.zeros(region.shape, bool)
    idx = np.flatnonzero(region)
    if idx.size == 0:
        return out
    strength = part_strength(part).ravel()[idx]
    order = np.argsort(-strength, kind="stable")[: max(1, min(count, idx.size))]
    out.ravel()[idx[order]] = True
    return out


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two bool masks (1.0 when both are empty)."""
    union = int((a | b).sum())
    return float((a & b).sum()) / union if union else 1.0
