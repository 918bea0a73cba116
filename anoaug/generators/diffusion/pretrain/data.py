"""The images a base model is pretrained on: the normal training images of each category, and nothing else.

Only rows of role ``train_normal`` of each split manifest are read; the leak guard of the evaluation
protocol (`check_no_leakage`) is run against the category's evaluation images (by path, file hash and
decoded pixels) before anything is trained. A few normal training images per category are held out
(never trained on) to measure the VAE (PSNR) and the UNet (denoising loss) on unseen normals.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from anoaug.data.io import load_image
from anoaug.data.records import CategoryData
from anoaug.data.split import SplitManifest
from anoaug.generators.base import GeneratorError
from anoaug.generators.diffusion.crops import resize_image

Source = tuple[CategoryData, SplitManifest]


class PretrainError(GeneratorError):
    """Pretraining cannot start or resume (bad sources, settings or output folder)."""


@dataclass
class NormalImage:
    """One normal training image, decoded, with its provenance."""

    category: str
    relpath: str
    sha256: str
    image: np.ndarray  # (H, W, 3) uint8


@dataclass
class NormalSet:
    """Training images, held-out images and per-category counts."""

    train: list[NormalImage]
    held_out: list[NormalImage]

    def counts(self, which: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for im in self.train if which == "train" else self.held_out:
            out[im.category] = out.get(im.category, 0) + 1
        return out

    def fingerprint(self) -> str:
        """sha256 over (category, relpath, file hash, role) of every image: a resume must see the same data."""
        h = hashlib.sha256()
        for role, ims in (("train", self.train), ("held_out", self.held_out)):
            for im in ims:
                h.update(f"{role}\0{im.category}\0{im.relpath}\0{im.sha256}\n".encode())
        return h.hexdigest()[:16]


def _holdout_count(n: int, fraction: float) -> int:
    """Images of a category held out: none below 2 images or at fraction 0, else at least 1."""
    if n < 2 or fraction <= 0:
        return 0
    return min(n - 1, max(1, int(round(n * fraction))))


def _shrink(image: np.ndarray, max_side: int | None) -> np.ndarray:
    """`image` resized (area) so that its long side is at most `max_side` (unchanged when None or smaller)."""
    import cv2

    h, w = image.shape[:2]
    if max_side is None or max(h, w) <= max_side:
        return image
    f = max_side / max(h, w)
    return cv2.resize(image, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)


def collect_normals(
    sources: Sequence[Source], holdout_fraction: float, seed: int, max_image_side: int | None = None
) -> NormalSet:
    """Read the ``train_normal`` images of every source, check them against the evaluation images with
    the leak guard, and split off the held-out ones (chosen from `seed` and the category name). Images
    are kept in memory, shrunk to `max_image_side` if given (after the leak check)."""
    from anoaug.evaluation.protocol import Sample, check_no_leakage, load_rows

    if not sources:
        raise PretrainError("no categories to pretrain on")
    seen: set[str] = set()
    train: list[NormalImage] = []
    held: list[NormalImage] = []
    for data, split in sources:
        if split.table.num_rows == 0 or split.category != data.category:
            raise PretrainError(
                f"split manifest of category {split.category!r} does not belong to {data.category!r}", data.root
            )
        if data.category in seen:
            raise PretrainError(f"category {data.category!r} given twice", data.root)
        seen.add(data.category)
        rows = sorted(split.rows("train_normal"), key=lambda r: r["relpath"])
        if not rows:
            raise PretrainError(f"category {data.category!r} has no train_normal images in its split", data.root)
        images = [
            NormalImage(data.category, r["relpath"], r["sha256"], load_image(data.path(r["relpath"]))) for r in rows
        ]
        as_samples = [
            Sample(im.relpath, im.image, np.zeros(im.image.shape[:2], bool), "good", "real", {"sha256": im.sha256})
            for im in images
        ]
        eval_set = load_rows(data, split.rows(("eval_normal", "eval_defect")))
        check_no_leakage(eval_set, {f"pretrain/{data.category}": as_samples})  # LeakageError names the image
        rng = np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(data.category.encode())]))
        k = _holdout_count(len(images), holdout_fraction)
        out = {int(i) for i in rng.permutation(len(images))[:k]}
        for i, im in enumerate(images):
            im.image = _shrink(im.image, max_image_side)
            (held if i in out else train).append(im)
    return NormalSet(train, held)


def random_crop(image: np.ndarray, resolution: int, rng: np.random.Generator, zoom_prob: float) -> np.ndarray:
    """A square crop resized to `resolution`: native scale, or with probability `zoom_prob` a larger
    window (up to the short side), as the `diffusion-sd` generator crops around large defects."""
    h, w = image.shape[:2]
    short = min(h, w)
    side = min(short, resolution)
    if short > resolution and rng.random() < zoom_prob:
        side = int(rng.integers(resolution, short + 1))
    y0 = int(rng.integers(0, h - side + 1))
    x0 = int(rng.integers(0, w - side + 1))
    return resize_image(image[y0 : y0 + side, x0 : x0 + side], resolution)


def crop_batch(
    images: Sequence[NormalImage], n: int, resolution: int, rng: np.random.Generator, zoom_prob: float
) -> tuple[np.ndarray, list[str]]:
    """`n` random crops (n, R, R, 3) uint8 of random images, and the category of each."""
    idx = rng.integers(0, len(images), n)
    crops = np.stack([random_crop(images[int(i)].image, resolution, rng, zoom_prob) for i in idx])
    return crops, [images[int(i)].category for i in idx]


def eval_crops(
    images: Sequence[NormalImage], n: int, resolution: int, seed: int, zoom_prob: float
) -> tuple[np.ndarray, list[str]]:
    """A fixed set of `n` crops of `images` (the same for a seed), spread over the images in turn."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED]))
    crops, cats = [], []
    for i in range(n):
        im = images[i % len(images)]
        crops.append(random_crop(im.image, resolution, rng, zoom_prob))
        cats.append(im.category)
    return np.stack(crops), cats
