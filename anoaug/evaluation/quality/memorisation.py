"""Memorisation: how close each generated defect is to its nearest generator-training defect.

Each training defect is turned (every ``ANGLE_STEP`` degrees, then to the degree) and mirrored; each
generated defect and each turned training defect is cut to exactly its mask's bounding box and stretched
to ``TIGHT_SIZE`` square (which also undoes a uniform rescale). The distance is the mean absolute
difference in [0, 1] over the pixels both masks cover, minimised over the turns: a copy pasted turned,
mirrored or rescaled (as crop-paste does) scores ~0; a new defect scores higher. Written by hand: no
library measures this.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from anoaug.generators.compositing import bbox
from anoaug.generators.diffusion.crops import resize_image, resize_mask

TIGHT_SIZE = 32
ANGLE_STEP = 15  # degrees between the turns of a training defect (multiples of 90 included)
REFINE_TOP = 3  # coarse best turns refined to 1 degree
MIN_OVERLAP = 0.25  # below this share of the generated mask covered by both masks, all crop pixels count


def tight_crop(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exactly the mask's bounding box (the whole image for an empty mask), stretched to TIGHT_SIZE square:
    (TIGHT_SIZE, TIGHT_SIZE, 3) float in [0, 1] and its mask."""
    x, y, w, h = bbox(mask) or (0, 0, mask.shape[1], mask.shape[0])
    crop = resize_image(image[y : y + h, x : x + w], TIGHT_SIZE).astype(np.float64) / 255.0
    return crop, resize_mask(mask[y : y + h, x : x + w], TIGHT_SIZE)


def tight_crops(pairs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """`tight_crop` of every pair: (N, TIGHT_SIZE, TIGHT_SIZE, 3) float and (N, TIGHT_SIZE, TIGHT_SIZE) bool."""
    if not pairs:
        return np.zeros((0, TIGHT_SIZE, TIGHT_SIZE, 3)), np.zeros((0, TIGHT_SIZE, TIGHT_SIZE), bool)
    crops = [tight_crop(img, m) for img, m in pairs]
    return np.stack([c for c, _ in crops]), np.stack([m for _, m in crops])


def window(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The defect's box plus a margin that keeps every turn of it inside (image reflect-padded), uint8 mask."""
    x, y, w, h = bbox(mask) or (0, 0, mask.shape[1], mask.shape[0])
    pad = int(np.ceil(0.5 * np.hypot(w, h)))
    img = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REFLECT)[y : y + h + 2 * pad, x : x + w + 2 * pad]
    m = np.pad(mask.astype(np.uint8), pad)[y : y + h + 2 * pad, x : x + w + 2 * pad]
    return img, m


def turn(img: np.ndarray, m: np.ndarray, mirror: bool, angle: float) -> tuple[np.ndarray, np.ndarray] | None:
    """`tight_crop` of a `window` mirrored (or not) and turned by ``angle`` degrees; None if the mask vanishes."""
    if mirror:
        img, m = img[:, ::-1].copy(), m[:, ::-1].copy()
    if angle % 90 == 0:  # quarter turns exactly (a warp about a half-pixel centre would resample)
        a, b = np.rot90(img, int(angle // 90) % 4), np.rot90(m, int(angle // 90) % 4) > 0
    else:
        size = (img.shape[1], img.shape[0])
        rot = cv2.getRotationMatrix2D(((size[0] - 1) / 2, (size[1] - 1) / 2), angle, 1.0)
        a = cv2.warpAffine(img, rot, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        b = cv2.warpAffine(m, rot, size, flags=cv2.INTER_NEAREST) > 0
    return tight_crop(a, b) if b.any() else None


Variant = tuple[int, bool, float]  # (training index, mirrored, angle)


def _distances(g: np.ndarray, gm: np.ndarray, v: np.ndarray, vm: np.ndarray) -> np.ndarray:
    """Masked mean |g - v| of one generated crop against K variant crops: (K,)."""
    diff = np.abs(v - g).mean(-1)  # (K, S, S)
    both = vm & gm
    enough = both.sum((1, 2)) >= MIN_OVERLAP * max(int(gm.sum()), 1)
    masked = (diff * both).sum((1, 2)) / np.maximum(both.sum((1, 2)), 1)
    return np.where(enough, masked, diff.mean((1, 2)))


def _stack(windows: list[tuple[np.ndarray, np.ndarray]], keys: list[Variant]) -> tuple[list[Variant], Any, Any]:
    crops, masks, kept = [], [], []
    for key in keys:
        t = turn(*windows[key[0]], key[1], key[2])
        if t is not None:
            crops.append(t[0])
            masks.append(t[1])
            kept.append(key)
    return kept, np.stack(crops) if crops else None, np.stack(masks) if masks else None


def nearest_training(
    generated: list[tuple[np.ndarray, np.ndarray]], train: list[tuple[np.ndarray, np.ndarray]]
) -> tuple[np.ndarray, np.ndarray]:
    """(distance to the nearest training defect, its index) of every generated (image, mask) pair; NaN and
    -1 when there is no training defect. Every training defect is tried mirrored or not at every
    ``ANGLE_STEP`` degrees; the best ``REFINE_TOP`` of those are refined to 1 degree (a thin defect turned a
    few degrees off no longer overlaps itself)."""
    g, gm = tight_crops(generated)
    windows = [window(img, m) for img, m in train]
    coarse = [
        (j, mirror, float(a)) for j in range(len(train)) for mirror in (False, True) for a in range(0, 360, ANGLE_STEP)
    ]
    keys, v, vm = _stack(windows, coarse)
    if v is None:
        return np.full(len(g), np.nan), np.full(len(g), -1)
    dist = np.empty(len(g))
    index = np.empty(len(g), int)
    half = ANGLE_STEP // 2
    for i in range(len(g)):
        d = _distances(g[i], gm[i], v, vm)
        best = [keys[k] for k in np.argsort(d)[:REFINE_TOP]]
        fine = [(j, mirror, a + delta) for j, mirror, a in best for delta in range(-half, half + 1) if delta]
        fkeys, fv, fvm = _stack(windows, fine)
        cand_keys = [keys[int(d.argmin())], *fkeys]
        cand_d = [float(d.min()), *(_distances(g[i], gm[i], fv, fvm) if fv is not None else [])]
        k = int(np.argmin(cand_d))
        dist[i], index[i] = cand_d[k], cand_keys[k][0]
    return dist, index


def memorisation(distances: np.ndarray) -> float | None:
    """The memorisation figure: the mean nearest-training distance (0 for copies); None without samples."""
    d = distances[np.isfinite(distances)]
    return float(d.mean()) if len(d) else None
