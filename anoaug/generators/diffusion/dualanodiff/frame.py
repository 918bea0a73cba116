"""What the model sees of an image: a square crop around the defect (``blended``) or the whole image (``whole``).

``blended`` uses diffusion-sd's crops (`diffusion.crops`: context x the mask's bounding box, at least the model
resolution); ``whole`` resizes the full image to ``resolution`` x ``resolution`` (aspect not kept) and back.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from anoaug.generators.diffusion.crops import Box, crop_box, paste_crop, resize_mask, take_crop


@dataclass(frozen=True)
class Frame:
    shape: tuple[int, int]  # (H, W) of the full image
    resolution: int
    box: Box | None = None  # None: the whole image

    @classmethod
    def make(
        cls, mask: np.ndarray, resolution: int, whole: bool, context: float, rng: np.random.Generator | None = None
    ) -> Frame:
        shape = (int(mask.shape[0]), int(mask.shape[1]))
        return cls(shape, resolution, None if whole else crop_box(mask.astype(bool), resolution, context, rng))

    def image(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 full image -> (r, r, 3) model view."""
        if image.shape[:2] != self.shape:
            image = cv2.resize(image, (self.shape[1], self.shape[0]), interpolation=cv2.INTER_AREA)
        if self.box is not None:
            return take_crop(image, np.zeros(self.shape, bool), self.box, self.resolution)[0]
        r = self.resolution
        return cv2.resize(image, (r, r), interpolation=cv2.INTER_AREA if min(self.shape) > r else cv2.INTER_CUBIC)

    def mask(self, mask: np.ndarray) -> np.ndarray:
        """(H, W) bool -> (r, r) bool (a model pixel is set if any full pixel it covers is)."""
        if self.box is not None:
            sy, sx = self.box.slices()
            return resize_mask(mask[sy, sx], self.resolution)
        r = self.resolution
        return cv2.resize(mask.astype(np.float32), (r, r), interpolation=cv2.INTER_AREA) > 0

    def paste(self, full: np.ndarray, view: np.ndarray) -> np.ndarray:
        """A copy of `full` with the (r, r, 3) model view written back where it came from."""
        if self.box is not None:
            return paste_crop(full, view, self.box)
        h, w = self.shape
        return cv2.resize(view, (w, h), interpolation=cv2.INTER_CUBIC)

    def paste_mask(self, view: np.ndarray) -> np.ndarray:
        """(r, r) bool model-view mask -> (H, W) bool (False outside the crop)."""
        h, w = self.shape
        if self.box is not None:
            out = np.zeros(self.shape, bool)
            sy, sx = self.box.slices()
            side = self.box.side
            out[sy, sx] = cv2.resize(view.astype(np.uint8), (side, side), interpolation=cv2.INTER_NEAREST) > 0
            return out
        return cv2.resize(view.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
