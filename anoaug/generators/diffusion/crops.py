"""Square crops around a defect mask, shared by training and generation so both see the same scale.

The crop side is ``context`` times the mask's bounding box, but never smaller than the model
resolution (a small scratch on a 1024 px image is modelled at native pixel scale, not blown up) and
never larger than the image's short side. Training jitters the crop position; generation centres it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Box:
    y0: int
    x0: int
    side: int

    def slices(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y0 + self.side), slice(self.x0, self.x0 + self.side)


def crop_box(
    mask: np.ndarray, resolution: int, context: float = 2.0, rng: np.random.Generator | None = None
) -> Box:
    """The square crop for `mask` (H, W) bool; random position (defect kept inside when it fits) if `rng`."""
    h, w = mask.shape[:2]
    short = min(h, w)
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        cy, cx, extent = h / 2, w / 2, 0
    else:
        cy, cx = (ys.min() + ys.max() + 1) / 2, (xs.min() + xs.max() + 1) / 2
        extent = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)
    side = int(min(short, max(np.ceil(extent * context), resolution)))
    if rng is not None:
        slack = max(0.0, (side - extent) / 2)
        cy += rng.uniform(-slack, slack)
        cx += rng.uniform(-slack, slack)
    y0 = int(np.clip(round(cy - side / 2), 0, h - side))
    x0 = int(np.clip(round(cx - side / 2), 0, w - side))
    return Box(y0, x0, side)


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """(S, S, 3) uint8 -> (size, size, 3) uint8 (area when shrinking, cubic when enlarging)."""
    import cv2

    if image.shape[0] == size and image.shape[1] == size:
        return image.copy()
    interp = cv2.INTER_AREA if image.shape[0] > size else cv2.INTER_CUBIC
    return cv2.resize(image, (size, size), interpolation=interp)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """(S, S) bool -> (size, size) bool; a cell is set if any of the pixels it covers is."""
    import cv2

    if mask.shape[0] == size and mask.shape[1] == size:
        return mask.astype(bool).copy()
    return cv2.resize(mask.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA) > 0


def take_crop(
    image: np.ndarray, mask: np.ndarray, box: Box, resolution: int
) -> tuple[np.ndarray, np.ndarray]:
    """Crop `box` from image and mask and resize both to `resolution`."""
    sy, sx = box.slices()
    return resize_image(image[sy, sx], resolution), resize_mask(mask[sy, sx], resolution)


def paste_crop(full: np.ndarray, crop: np.ndarray, box: Box) -> np.ndarray:
    """A copy of `full` with `crop` resized to the box side and written into it."""
    out = full.copy()
    sy, sx = box.slices()
    out[sy, sx] = resize_image(crop, box.side)
    return out
