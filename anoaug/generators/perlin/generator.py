"""Perlin-noise anomalies with a blended-in texture, as in DRAEM (Zavrtanik, Kristan, Skocaj, ICCV 2021).

DRAEM thresholds 2-D Perlin noise (random power-of-two frequencies, random rotation, threshold 0.5) into
an anomaly mask ``M``, takes an anomaly source image ``A`` (a DTD texture) augmented by three random
operations out of {gamma, brightness, sharpness, hue/saturation, solarize, posterize, invert,
autocontrast, equalize, rotation}, and blends ``I' = (1 - M) I + (1 - b) M A + b M I`` with
``b ~ U(0, 0.8)``. No texture dataset can be downloaded here, so the texture source is either a local
folder (``texture_dir``) or the category's own normal training images; up to ``max_textures`` of them are
resized and copied into the artifact at fit time, so the artifact alone reproduces the samples.

``mask_mode``: "perlin" (default; DRAEM's own mask, restricted to the object when the request carries a
trimap; if the noise misses the object the synthesized mask is used) or "request" (the synthesized mask,
e.g. when the spec's ``masks.source`` is already "perlin"). The final mask is ``M``.

Settings: see `PerlinGenerator.Settings`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import albumentations as A
import cv2
import numpy as np
from pydantic import Field, field_validator

from anoaug.data.io import is_image_file, load_image
from anoaug.generators.base import (
    FitData,
    GenerationRequest,
    GenerationResult,
    Generator,
    GeneratorError,
    GeneratorSettings,
    register,
)
from anoaug.generators.compositing import seed_of
from anoaug.png import write_png

TEXTURES_INDEX = "textures.json"


def perlin_noise(shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """2-D gradient (Perlin) noise of ``shape`` with ``res`` = (periods along y, along x); values ~[-0.7, 0.7].

    Written by hand: neither OpenCV, scikit-image nor albumentations expose plain Perlin noise.
    """
    H, W = shape
    ry, rx = max(1, int(res[0])), max(1, int(res[1]))
    angles = rng.uniform(0.0, 2.0 * np.pi, (ry + 1, rx + 1))
    grad = np.stack([np.cos(angles), np.sin(angles)], axis=-1)  # (ry+1, rx+1, 2) as (gy, gx)
    ys = np.arange(H) * (ry / H)
    xs = np.arange(W) * (rx / W)
    iy, ix = ys.astype(int), xs.astype(int)
    fy, fx = (ys - iy)[:, None], (xs - ix)[None, :]

    def corner(dy: int, dx: int) -> np.ndarray:
        g = grad[iy[:, None] + dy, ix[None, :] + dx]
        return g[..., 0] * (fy - dy) + g[..., 1] * (fx - dx)

    def fade(t: np.ndarray) -> np.ndarray:
        return t * t * t * (t * (t * 6 - 15) + 10)

    uy, ux = fade(fy), fade(fx)
    top = corner(0, 0) * (1 - ux) + corner(0, 1) * ux
    bottom = corner(1, 0) * (1 - ux) + corner(1, 1) * ux
    return (top * (1 - uy) + bottom * uy) * np.sqrt(2)


def perlin_mask(
    shape: tuple[int, int], rng: np.random.Generator, perlin_scale: int = 6, threshold: float = 0.5
) -> np.ndarray:
    """DRAEM's anomaly mask: Perlin noise at random power-of-two frequencies, rotated, thresholded."""
    sy = 2 ** int(rng.integers(0, perlin_scale))
    sx = 2 ** int(rng.integers(0, perlin_scale))
    noise = perlin_noise(shape, (sy, sx), rng).astype(np.float32)
    angle = float(rng.uniform(-90, 90))
    H, W = shape
    rot = cv2.getRotationMatrix2D((W / 2, H / 2), angle, 1.0)
    noise = cv2.warpAffine(noise, rot, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    return noise > threshold


def _texture_augmenter() -> A.Compose:
    """DRAEM's augmentation list, three applied at random (albumentations equivalents of the imgaug ones)."""
    ops = [
        A.RandomGamma(gamma_limit=(50, 200), p=1.0),
        A.RandomBrightnessContrast(brightness_limit=0.3, contrast_limit=0.3, p=1.0),
        A.Sharpen(p=1.0),
        A.HueSaturationValue(hue_shift_limit=50, sat_shift_limit=50, val_shift_limit=0, p=1.0),
        A.Solarize(threshold_range=(0.5, 0.5), p=1.0),
        A.Posterize(num_bits=4, p=1.0),
        A.InvertImg(p=1.0),
        A.AutoContrast(p=1.0),
        A.Equalize(p=1.0),
        A.Affine(rotate=(-45, 45), border_mode=cv2.BORDER_REFLECT_101, p=1.0),
    ]
    return A.Compose([A.SomeOf(ops, n=3, replace=False, p=1.0)])


@register
class PerlinGenerator(Generator):
    """DRAEM-style: Perlin-noise mask, augmented texture blended in with random opacity."""

    name = "perlin"

    class Settings(GeneratorSettings):
        """perlin settings."""

        mask_mode: Literal["perlin", "request"] = Field(
            "perlin", description="DRAEM's Perlin mask (restricted to the object), or the synthesized mask"
        )
        texture_dir: str | None = Field(
            None, description="folder of texture images; default: the category's normal training images"
        )
        max_textures: int = Field(16, ge=1, description="textures copied into the artifact")
        texture_size: int = Field(256, ge=1, description="longest texture side in px (larger ones are shrunk)")
        perlin_scale: int = Field(6, ge=1, description="noise frequencies 2**0 .. 2**(perlin_scale - 1)")
        threshold: float = Field(0.5, description="noise threshold of the Perlin mask")
        beta: tuple[float, float] = Field(
            (0.0, 0.8), description="[low, high] within [0, 1): opacity of the normal image over the texture"
        )
        min_pixels: int = Field(16, ge=0, description="smallest Perlin mask kept (px); else retried")

        @field_validator("beta")
        @classmethod
        def _beta_range(cls, v: tuple[float, float]) -> tuple[float, float]:
            if not 0.0 <= v[0] <= v[1] < 1.0:
                raise ValueError(f"beta must be [low, high] within [0, 1), got {list(v)}")
            return v

    settings: Settings

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        super().__init__(params)
        self._aug = _texture_augmenter()
        self._textures: list[np.ndarray] = []
        self._texture_names: list[str] = []

    def _fit(self, data: FitData, out_dir: Path, seed: int) -> None:
        tdir = self.settings.texture_dir
        if tdir:
            root = Path(tdir).expanduser()
            if not root.is_dir():
                raise GeneratorError("perlin: texture_dir is not a directory", root)
            paths = sorted(p for p in root.rglob("*") if is_image_file(p))
            origin = str(root)
        else:
            paths = list(data.normal_paths)
            origin = "normal training images"
        if not paths:
            raise GeneratorError(f"perlin: no texture images found in {origin}")
        k = min(len(paths), self.settings.max_textures)
        picks = [paths[int(i)] for i in np.linspace(0, len(paths) - 1, k).round().astype(int)]
        picks = list(dict.fromkeys(picks))
        tex_dir = out_dir / "textures"
        tex_dir.mkdir(parents=True, exist_ok=True)
        size = self.settings.texture_size
        index = []
        for i, p in enumerate(picks):
            img = load_image(p)
            f = size / max(img.shape[:2])
            if f < 1:
                img = cv2.resize(img, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
            name = f"{i:03d}.png"
            write_png(tex_dir / name, img)
            index.append({"file": name, "source": "/".join(p.parts[-3:])})
        (out_dir / TEXTURES_INDEX).write_text(json.dumps({"origin": origin, "textures": index}, indent=1))
        self._load(out_dir, {})  # ready to generate, in the same state as a loaded artifact

    def _load(self, artifact_dir: Path, meta: dict[str, Any]) -> None:
        index_path = artifact_dir / TEXTURES_INDEX
        if not index_path.is_file():
            raise GeneratorError(f"perlin artifact has no {TEXTURES_INDEX}", artifact_dir)
        index = json.loads(index_path.read_text())["textures"]
        self._texture_names = [row["file"] for row in index]
        self._textures = [load_image(artifact_dir / "textures" / name) for name in self._texture_names]

    def generate(self, batch: Sequence[GenerationRequest]) -> list[GenerationResult]:
        if not self._textures:
            raise GeneratorError("perlin: not fitted (call fit or Generator.load first)")
        return [self._one(req) for req in batch]

    def _one(self, req: GenerationRequest) -> GenerationResult:
        rng = np.random.default_rng(req.seed)
        H, W = req.normal.shape[:2]
        fallback = False
        s = self.settings
        if s.mask_mode == "request":
            region = req.mask.astype(bool).copy()
        else:
            allowed = req.allowed
            region = np.zeros((H, W), bool)
            for _ in range(10):
                region = perlin_mask((H, W), rng, s.perlin_scale, s.threshold) & allowed
                if region.sum() >= s.min_pixels:
                    break
            else:
                region, fallback = req.mask.astype(bool).copy(), True
        if not region.any():
            raise GeneratorError("perlin: the requested mask is empty")
        t_i = int(rng.integers(len(self._textures)))
        tex = self._textures[t_i]
        if tex.shape[:2] != (H, W):
            tex = cv2.resize(tex, (W, H), interpolation=cv2.INTER_LINEAR)
        self._aug.set_random_seed(seed_of(rng))
        tex = self._aug(image=tex)["image"]
        b0, b1 = s.beta
        beta = float(rng.uniform(b0, b1))
        m = region[..., None]
        img = req.normal.astype(np.float32)
        blended = (1.0 - beta) * tex.astype(np.float32) + beta * img
        out = np.where(m, np.clip(np.rint(blended), 0, 255), img).astype(np.uint8)
        info = {"texture": self._texture_names[t_i], "beta": round(beta, 4), "fallback": fallback}
        return GenerationResult(image=out, mask=region, info=info)
