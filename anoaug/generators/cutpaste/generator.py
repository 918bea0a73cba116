"""CutPaste (Li, Sohn, Yoon, Pfister, CVPR 2021): a patch of the *same* normal image, transformed, pasted.

The paper cuts a random rectangle (or a thin "scar"), applies colour jitter and pastes it at another
random location. Here the location and shape come from the synthesized mask: a patch of the mask's
bounding-box size is cut from elsewhere in the same normal image, colour-jittered and flipped
(albumentations), and pasted through the mask with alpha feathering (default), Poisson blending, or
a hard edge. Nothing is learned; the artifact holds only the parameters.

Settings: see `CutPasteGenerator.Settings`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import albumentations as A
import numpy as np
from pydantic import Field

from anoaug.generators.base import (
    FitData,
    GenerationRequest,
    GenerationResult,
    Generator,
    GeneratorError,
    GeneratorSettings,
    register,
)
from anoaug.generators.compositing import BlendMode, bbox, blend, seed_of


@register
class CutPasteGenerator(Generator):
    """CutPaste: self-similar patches with colour jitter, pasted through the synthesized mask."""

    name = "cutpaste"

    class Settings(GeneratorSettings):
        """cutpaste settings."""

        blend: BlendMode = Field("alpha", description="alpha feathering, Poisson (OpenCV seamlessClone) or none")
        feather: float = Field(1.5, ge=0, description="alpha ramp half-width in px (blend alpha)")
        jitter: float = Field(0.1, ge=0, description="colour-jitter strength (0.1 as in the paper)")
        source: Literal["any", "object"] = Field(
            "any", description="where the patch is cut: anywhere, or only where the trimap marks the object"
        )

    settings: Settings

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        super().__init__(params)
        j = self.settings.jitter
        self._aug = A.Compose(
            [
                A.ColorJitter(brightness=j, contrast=j, saturation=j, hue=min(j, 0.5), p=1.0),
                A.HorizontalFlip(p=0.5),
                A.VerticalFlip(p=0.5),
            ]
        )

    def _fit(self, data: FitData, out_dir: Path, seed: int) -> None:
        """Nothing to learn: CutPaste only uses the normal image it draws on."""

    def _load(self, artifact_dir: Path, meta: dict[str, Any]) -> None:
        """Nothing to load beyond the params."""

    def generate(self, batch: Sequence[GenerationRequest]) -> list[GenerationResult]:
        return [self._one(req) for req in batch]

    def _one(self, req: GenerationRequest) -> GenerationResult:
        rng = np.random.default_rng(req.seed)
        box = bbox(req.mask)
        if box is None:
            raise GeneratorError("cutpaste: the requested mask is empty")
        x, y, w, h = box
        img = req.normal
        sx, sy = self._source_xy(req, box, rng)
        patch = np.ascontiguousarray(img[sy : sy + h, sx : sx + w])
        self._aug.set_random_seed(seed_of(rng))
        patch = self._aug(image=patch)["image"]
        src = img.copy()
        src[y : y + h, x : x + w] = patch
        region = req.mask.astype(bool)
        out, final, used = blend(img, src, region, self.settings.blend, self.settings.feather)
        info = {"source_xy": [sx, sy], "target_box": [x, y, w, h], "blend": used}
        return GenerationResult(image=out, mask=final, info=info)

    def _source_xy(
        self, req: GenerationRequest, box: tuple[int, int, int, int], rng: np.random.Generator
    ) -> tuple[int, int]:
        """Top-left of a patch of the box's size elsewhere in the image (away from the box when possible)."""
        x, y, w, h = box
        H, W = req.normal.shape[:2]
        want_object = self.settings.source == "object" and req.trimap is not None
        best: tuple[float, int, int] | None = None
        for _ in range(30):
            sx = int(rng.integers(0, W - w + 1))
            sy = int(rng.integers(0, H - h + 1))
            # Prefer patches that do not overlap the target box (so the paste is visible) ...
            overlap = max(0, min(x + w, sx + w) - max(x, sx)) * max(0, min(y + h, sy + h) - max(y, sy)) / (w * h)
            # ... and, with source="object", that lie on the object.
            off_object = 0.0
            if want_object:
                off_object = 1.0 - float(np.mean(req.trimap[sy : sy + h, sx : sx + w] > 0))
            score = overlap + off_object
            if best is None or score < best[0]:
                best = (score, sx, sy)
            if score == 0:
                break
        assert best is not None
        return best[1], best[2]
