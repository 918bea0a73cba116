"""Square windows around a defect mask, shared by training and generation so both see the same scale.

``diffusion-sd`` (`Box`, `crop_box`, `take_crop`, `paste_crop`): the crop side is ``context`` times the
mask's bounding box, but never smaller than the model resolution (a small scratch on a 1024 px image is
modelled at native pixel scale, not blown up) and never larger than the image's short side.
Training jitters the crop position; generation centres it.

``diffusion-tiny`` (`window_side`, `piece_sides`, `crop_window`, `Window`): the window shows the mask at
native pixel scale unless the defect would not fit the model's crop; windows leaving the image are
reflect-padded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    import torch


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
    if image.shape[0] == size and image.shape[1] == size:
        return image.copy()
    interp = cv2.INTER_AREA if image.shape[0] > size else cv2.INTER_CUBIC
    return cv2.resize(image, (size, size), interpolation=interp)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """(S, S) bool -> (size, size) bool; a cell is set if any of the pixels it covers is."""
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


def window_side(mask: np.ndarray, crop: int, fill: float = 0.75) -> int:
    """Side of the square window (in image px) that shows ``mask`` at training scale.

    Native resolution (side = crop) unless the mask's bounding box would fill more than ``fill`` of the
    crop; then the window grows so the whole defect fits (and is resized down to ``crop``).
    """
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return crop
    extent = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)
    return max(crop, int(math.ceil(extent / fill)))


def piece_sides(mask: np.ndarray, crop: int, pixels: np.ndarray) -> np.ndarray:
    """`window_side` of the piece each of ``pixels`` belongs to. Pieces = connected components of the
    mask, joined when closer than a quarter crop: a defect made of far-apart pieces (two scratches) is
    learned piece by piece at native scale, not shrunk until all of it fits one window."""
    from anoaug.masks.synthesis import split_components

    sides = np.full(len(pixels), crop, np.int64)
    for piece in split_components(mask.astype(bool), max(1, crop // 4), min_area=1):
        sides[piece[pixels[:, 0], pixels[:, 1]]] = window_side(piece, crop)
    return sides


def crop_window(img: np.ndarray, cy: float, cx: float, side: int) -> np.ndarray:
    """A ``side`` x ``side`` window centred at (cy, cx), reflect-padded where it leaves the image."""
    y0, x0 = int(round(cy - side / 2)), int(round(cx - side / 2))
    h, w = img.shape[:2]
    pad = max(0, -y0, -x0, y0 + side - h, x0 + side - w)
    if pad:
        img = cv2.copyMakeBorder(img, pad, pad, pad, pad, cv2.BORDER_REFLECT_101)
    return img[y0 + pad : y0 + pad + side, x0 + pad : x0 + pad + side]


class Window:
    """A square window around a mask: image px [y0, y0+side) x [x0, x0+side), resized to ``crop``."""

    def __init__(self, y0: int, x0: int, side: int, crop: int) -> None:
        self.y0, self.x0, self.side, self.crop = y0, x0, side, crop

    @classmethod
    def around(cls, mask: np.ndarray, crop: int) -> Window:
        side = window_side(mask, crop)
        ys, xs = np.nonzero(mask)
        if len(ys) == 0:
            cy, cx = mask.shape[0] / 2, mask.shape[1] / 2
        else:
            cy, cx = (ys.min() + ys.max() + 1) / 2, (xs.min() + xs.max() + 1) / 2
        return cls(int(math.floor(cy - side / 2)), int(math.floor(cx - side / 2)), side, crop)

    def _cut(self, img: np.ndarray) -> np.ndarray:
        return crop_window(img, self.y0 + self.side / 2, self.x0 + self.side / 2, self.side)

    def to_crop_tensor(self, image: np.ndarray) -> torch.Tensor:
        import torch

        win = self._cut(image)
        if self.side != self.crop:
            win = cv2.resize(win, (self.crop, self.crop), interpolation=cv2.INTER_AREA)
        return torch.from_numpy(np.ascontiguousarray(win)).permute(2, 0, 1).float() / 127.5 - 1

    def crop_mask(self, mask: np.ndarray) -> np.ndarray:
        win = self._cut(mask.astype(np.uint8)).astype(np.float32)
        if self.side != self.crop:
            win = cv2.resize(win, (self.crop, self.crop), interpolation=cv2.INTER_AREA)
        return win > (0.5 if self.side == self.crop else 0.25)

    def paste(self, normal: np.ndarray, x0: torch.Tensor, region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The generated window pasted into a copy of ``normal``, and the edit region in image px."""
        import torch

        win = ((x0.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
        reg = region.astype(np.uint8)
        if self.side != self.crop:
            win = cv2.resize(win, (self.side, self.side), interpolation=cv2.INTER_CUBIC)
            reg = cv2.resize(reg, (self.side, self.side), interpolation=cv2.INTER_NEAREST)
        h, w = normal.shape[:2]
        ya, xa = max(self.y0, 0), max(self.x0, 0)
        yb, xb = min(self.y0 + self.side, h), min(self.x0 + self.side, w)
        full = normal.copy()
        edit = np.zeros((h, w), bool)
        full[ya:yb, xa:xb] = win[ya - self.y0 : yb - self.y0, xa - self.x0 : xb - self.x0]
        edit[ya:yb, xa:xb] = reg[ya - self.y0 : yb - self.y0, xa - self.x0 : xb - self.x0] > 0
        return full, edit
