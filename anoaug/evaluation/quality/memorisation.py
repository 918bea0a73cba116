"""Memorisation: how close each generated defect is to its nearest generator-training defect.

The distance compares the tight defect crops (exactly the mask's bounding box, stretched to ``TIGHT_SIZE``
square, so a turned or mirrored copy gives the turned or mirrored crop) over the pixels
both masks cover, as a mean absolute difference in [0, 1], minimised over the 8 flips/quarter turns (a
copy pasted rotated or mirrored is still a copy). A copy scores ~0; a new defect scores higher.
"""

from __future__ import annotations

import numpy as np

from anoaug.generators.compositing import bbox
from anoaug.generators.diffusion.crops import resize_image, resize_mask

TIGHT_SIZE = 32
MIN_OVERLAP = 0.25  # below this share of the generated mask covered by both masks, all crop pixels count


def dihedral(x: np.ndarray) -> list[np.ndarray]:
    """The 8 flips / quarter turns of an (S, S, ...) array."""
    out = []
    for k in range(4):
        r = np.rot90(x, k, axes=(0, 1))
        out += [r, r[:, ::-1]]
    return out


def masked_distance(a: np.ndarray, am: np.ndarray, b: np.ndarray, bm: np.ndarray) -> float:
    """Mean |a - b| (images in [0, 1]) over the pixels both masks cover (all pixels when they barely overlap)."""
    both = am & bm
    use = both if both.sum() >= MIN_OVERLAP * max(am.sum(), 1) else np.ones_like(am)
    return float(np.abs(a - b)[use].mean())


def tight_crops(pairs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Crops of exactly the mask's bounding box (the whole image for an empty mask), stretched to
    (N, TIGHT_SIZE, TIGHT_SIZE, 3) float in [0, 1], and their masks."""
    crops, masks = [], []
    for image, mask in pairs:
        x, y, w, h = bbox(mask) or (0, 0, mask.shape[1], mask.shape[0])
        crops.append(resize_image(image[y : y + h, x : x + w], TIGHT_SIZE))
        masks.append(resize_mask(mask[y : y + h, x : x + w], TIGHT_SIZE))
    if not crops:
        return np.zeros((0, TIGHT_SIZE, TIGHT_SIZE, 3)), np.zeros((0, TIGHT_SIZE, TIGHT_SIZE), bool)
    return np.stack(crops).astype(np.float64) / 255.0, np.stack(masks)


def nearest_training(
    gen: tuple[np.ndarray, np.ndarray], train: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """(distance to the nearest training defect, its index) for every generated crop (`tight_crops` outputs)."""
    g, gm = gen
    t, tm = train
    if len(t) == 0:
        return np.full(len(g), np.nan), np.full(len(g), -1)
    variants = [(dihedral(t[j]), dihedral(tm[j])) for j in range(len(t))]
    dist = np.full((len(g), len(t)), np.inf)
    for i in range(len(g)):
        for j, (ts, tms) in enumerate(variants):
            dist[i, j] = min(masked_distance(g[i], gm[i], a, am) for a, am in zip(ts, tms, strict=True))
    return dist.min(1), dist.argmin(1)


def memorisation(distances: np.ndarray) -> float | None:
    """The memorisation figure: the mean nearest-training distance (0 for copies); None without samples."""
    d = distances[np.isfinite(distances)]
    return float(d.mean()) if len(d) else None
