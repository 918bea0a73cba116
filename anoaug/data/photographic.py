"""Procedural categories that look like photographs, with their true object masks (``demo-data --photographic``).

The clean demo renders (``anoaug.data.demo``) have a flat, centred object; real photographs do not.
These categories have what breaks foreground extraction in practice:

* ``washers`` (object) -- round brass parts on a matte, noisy backdrop; uneven light (a gradient and
  vignetting), a soft cast shadow, the part off-centre and sometimes touching the border, and
  neighbouring parts cut by the image border; defects ``dent`` and ``scratch``;
* ``plates`` (object) -- a rotated brushed-steel plate on a wood-grain table, lit from one side, with a
  shadow; defects ``dent`` and ``scratch``;
* ``walnut`` (texture) -- wood grain filling the frame, unevenly lit; defects ``stain`` and ``hole``.

The true object mask of every image is written beside the dataset, in the dot folder
``<root>/.object_masks/<category>/<split>/<label>/<stem>.png`` that the dataset readers skip (see
``object_mask_path``): tests measure against it how many synthesized defect pixels land on the object.
Every image has its own generator from (seed, category, split, label, index), as in ``anoaug.data.demo``.
"""

from __future__ import annotations

import shutil
import zlib
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from anoaug.data.demo import _smooth_noise, _to_u8, check_category_dirs
from anoaug.data.records import GOOD
from anoaug.errors import DatasetError
from anoaug.png import write_png

PHOTO_CATEGORIES: dict[str, tuple[str, ...]] = {
    "washers": ("dent", "scratch"),
    "plates": ("dent", "scratch"),
    "walnut": ("stain", "hole"),
}
"""Photographic category -> its defect types."""

PHOTO_OBJECT_CATEGORIES: frozenset[str] = frozenset({"washers", "plates"})
PHOTO_TEXTURE_CATEGORIES: frozenset[str] = frozenset({"walnut"})
OBJECT_MASKS_DIR = ".object_masks"


def object_mask_path(root: str | Path, relpath: str) -> Path:
    """Where the maker saved the true object mask of the image ``<root>/<relpath>`` (``relpath`` as the
    dataset records have it, e.g. ``washers/train/good/000.png``), in a dot folder the readers skip."""
    return Path(root) / OBJECT_MASKS_DIR / Path(relpath).with_suffix(".png")


def _rng(seed: int, category: str, split: str, label: str, index: int) -> np.random.Generator:
    key = [seed, zlib.crc32(f"photo/{category}".encode()), zlib.crc32(f"{split}/{label}".encode()), index]
    return np.random.default_rng(np.random.SeedSequence(key))


def _lighting(rng: np.random.Generator, size: int) -> np.ndarray:
    """Uneven light: a linear gradient in a random direction times a vignette (HxW, around 1)."""
    yy, xx = (np.mgrid[0:size, 0:size].astype(np.float32) + 0.5) / size - 0.5
    a = rng.uniform(0, 2 * np.pi)
    grad = 1 + rng.uniform(0.25, 0.45) * (np.cos(a) * xx + np.sin(a) * yy) * 2
    vign = 1 - rng.uniform(0.25, 0.45) * (xx**2 + yy**2) * 2
    return (grad * vign).astype(np.float32)


def _disc_alpha(size: int, cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    return np.clip(r - np.hypot(xx - cx, yy - cy) + 0.5, 0, 1)


def _shadow(alpha: np.ndarray, dx: float, dy: float, blur: float) -> np.ndarray:
    """Soft cast shadow of a coverage map, shifted away from the light (0 = none, 1 = full)."""
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    moved = cv2.warpAffine(alpha, m, alpha.shape[::-1], borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return cv2.GaussianBlur(moved, (0, 0), blur)


def _wood(rng: np.random.Generator, size: int, base: np.ndarray, scale: float) -> np.ndarray:
    """Wood grain: rings along a random direction, bent by smooth noise; float RGB (HxWx3)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    a = rng.uniform(0, np.pi)
    u = np.cos(a) * xx + np.sin(a) * yy
    bend = 6 * scale * _smooth_noise(rng, (size, size), 40 * scale)
    rings = 0.5 + 0.5 * np.sin((u + bend) / (3.2 * scale))
    grain = rings**3 * 0.22 + 0.06 * _smooth_noise(rng, (size, size), 3 * scale)
    tone = 1 - grain + 0.05 * _smooth_noise(rng, (size, size), 25 * scale)
    return base * tone[..., None]


def _washers(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    s = size / 128.0
    light = _lighting(rng, size)
    backdrop = np.array([150.0, 146.0, 138.0]) * rng.uniform(0.9, 1.1)
    mottle = 0.05 * _smooth_noise(rng, (size, size), 6 * s) + 0.03 * _smooth_noise(rng, (size, size), 30 * s)
    bg = backdrop * (1 + mottle)[..., None]
    r = rng.uniform(0.22, 0.28) * size
    touch = rng.uniform() < 0.3  # some parts touch the border
    off = (0.5 - r / size + rng.uniform(0.0, 0.03)) if touch else rng.uniform(0.0, 0.18)
    ang = rng.uniform(0, 2 * np.pi)
    cx, cy = size / 2 + off * size * np.cos(ang), size / 2 + off * size * np.sin(ang)
    # neighbours: centres beyond the image edges, so only a cut-off part shows
    parts = [(cx, cy, r, True)]
    for k in range(int(rng.integers(1, 3))):
        side = (k + int(rng.integers(4))) % 4
        t = rng.uniform(0.2, 0.8) * size
        rr = r * rng.uniform(0.9, 1.1)
        depth = rr * rng.uniform(0.35, 0.8)  # visible depth
        nx, ny = [(t, depth - rr), (size - depth + rr, t), (t, size - depth + rr), (depth - rr, t)][side]
        if np.hypot(nx - cx, ny - cy) > r + rr + 4 * s:
            parts.append((nx, ny, rr, False))
    sdx, sdy = rng.uniform(2, 5, 2) * s * rng.choice([-1, 1], 2)
    img = bg.copy()
    alphas = [_disc_alpha(size, px, py, pr) for px, py, pr, _ in parts]
    shadow = np.clip(sum(_shadow(a, sdx, sdy, 2.5 * s) for a in alphas), 0, 1)
    img = img * (1 - 0.45 * shadow)[..., None]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    brass = np.array([196.0, 160.0, 88.0]) * rng.uniform(0.9, 1.08)
    for (px, py, pr, _), a in zip(parts, alphas, strict=True):
        rn = np.hypot(xx - px, yy - py) / pr
        turned = 1 + 0.06 * np.sin(rn * 60 + rng.uniform(0, 6)) + 0.04 * _smooth_noise(rng, (size, size), 4 * s)
        dome = 1.05 - 0.25 * rn**2 + 0.25 * np.exp(-((rn - 0.45) / 0.15) ** 2) * rng.uniform(0.5, 1)
        part = brass * (turned * dome)[..., None]
        img = part * a[..., None] + img * (1 - a[..., None])
    img = img * light[..., None] + rng.normal(0, 3.0, img.shape)
    return img.astype(np.float32), alphas[0] > 0.5, (cx, cy, r)


def _plates(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    s = size / 128.0
    light = _lighting(rng, size)
    bg = _wood(rng, size, np.array([150.0, 100.0, 62.0]) * rng.uniform(0.9, 1.1), s)
    w, h = rng.uniform(0.42, 0.55) * size, rng.uniform(0.3, 0.42) * size
    cx, cy = size / 2 + rng.uniform(-0.14, 0.14, 2) * size
    box = ((float(cx), float(cy)), (float(w), float(h)), float(rng.uniform(0, 180)))
    ss = 4  # supersampled polygon coverage: anti-aliased edges
    canvas = np.zeros((size * ss, size * ss), np.uint8)
    cv2.fillPoly(canvas, [np.round(cv2.boxPoints(box) * ss).astype(np.int32)], 255)
    alpha = cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    sdx, sdy = rng.uniform(3, 6, 2) * s * rng.choice([-1, 1], 2)
    img = bg * (1 - 0.5 * _shadow(alpha, sdx, sdy, 3 * s))[..., None]
    # brushed steel: noise stretched along the plate's long axis
    streak = cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), sigmaX=9 * s, sigmaY=0.6)
    m = cv2.getRotationMatrix2D((size / 2, size / 2), -box[2], 1.0)
    streak = cv2.warpAffine(streak / (streak.std() + 1e-6), m, (size, size), borderMode=cv2.BORDER_REFLECT)
    steel = np.array([188.0, 194.0, 204.0]) * rng.uniform(0.95, 1.08)
    plate = steel * (1 + 0.07 * streak + 0.04 * _smooth_noise(rng, (size, size), 20 * s))[..., None]
    img = plate * alpha[..., None] + img * (1 - alpha[..., None])
    img = img * light[..., None] + rng.normal(0, 3.0, img.shape)
    return img.astype(np.float32), alpha > 0.5, (float(cx), float(cy), float(min(w, h) / 2))


def _walnut(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    s = size / 128.0
    img = _wood(rng, size, np.array([120.0, 80.0, 52.0]) * rng.uniform(0.9, 1.1), s) * _lighting(rng, size)[..., None]
    img = img + rng.normal(0, 3.0, img.shape)
    return img.astype(np.float32), np.ones((size, size), bool), (size / 2, size / 2, size / 2)


def _defect(
    rng: np.random.Generator, img: np.ndarray, obj: np.ndarray, geom: tuple[float, float, float], label: str
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one defect well inside the object; (image, 0/255 mask)."""
    size = img.shape[0]
    s = size / 128.0
    cx, cy, r = geom
    inner = cv2.erode(obj.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (9, 9))).astype(bool)
    inner &= np.hypot(*(np.mgrid[0:size, 0:size] - np.array([cy, cx])[:, None, None])) < 0.8 * r
    ys, xs = np.nonzero(inner if inner.any() else obj)
    k = int(rng.integers(len(ys)))
    px, py = float(xs[k]), float(ys[k])
    canvas = np.zeros((size, size), np.float32)
    if label in ("scratch",):
        a = rng.uniform(0, np.pi)
        ln = rng.uniform(8, 16) * s
        p0 = (round(px - ln * np.cos(a)), round(py - ln * np.sin(a)))
        p1 = (round(px + ln * np.cos(a)), round(py + ln * np.sin(a)))
        cv2.line(canvas, p0, p1, 1.0, max(1, round(1.5 * s)))
        tone = 0.55
    elif label == "stain":
        cv2.ellipse(canvas, (round(px), round(py)), (round(rng.uniform(5, 9) * s), round(rng.uniform(3, 6) * s)),
                    float(rng.uniform(0, 180)), 0, 360, 1.0, -1)  # fmt: skip
        tone = 0.6
    else:  # dent, hole
        cv2.circle(canvas, (round(px), round(py)), max(2, round(rng.uniform(3, 5) * s)), 1.0, -1)
        tone = 0.35 if label == "hole" else 0.7
    canvas *= obj
    alpha = cv2.GaussianBlur(canvas, (0, 0), 0.7)
    img = img * (1 - (1 - tone) * alpha[..., None])
    return img, ((canvas > 0.5) * 255).astype(np.uint8)


_MAKERS = {"washers": _washers, "plates": _plates, "walnut": _walnut}


def render_photo_sample(
    category: str, label: str, index: int, seed: int = 0, split: str = "test", size: int = 128
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """(RGB uint8 image, 0/255 defect mask or None, bool true object mask) of one photographic image."""
    if category not in PHOTO_CATEGORIES:
        raise DatasetError(f"unknown photographic category {category!r}; choose from {sorted(PHOTO_CATEGORIES)}")
    if label != GOOD and label not in PHOTO_CATEGORIES[category]:
        raise DatasetError(f"unknown defect type {label!r} for photographic category {category!r}")
    if size < 64:
        raise ValueError(f"size must be >= 64, got {size}")
    rng = _rng(seed, category, split, label, index)
    img, obj, geom = _MAKERS[category](rng, size)
    mask = None
    if label != GOOD:
        img, mask = _defect(rng, img, obj, geom, label)
    return _to_u8(img), mask, obj


def make_photographic_dataset(
    out_dir: str | Path,
    seed: int = 0,
    categories: Sequence[str] | None = None,
    size: int = 128,
    n_train_good: int = 12,
    n_test_good: int = 4,
    n_per_defect: int = 4,
    overwrite: bool = False,
) -> list[str]:
    """Write the photographic categories (MVTec AD layout) and their true object masks; return the names."""
    out_dir = Path(out_dir)
    names = list(PHOTO_CATEGORIES) if categories is None else list(dict.fromkeys(categories))
    for name in names:
        if name not in PHOTO_CATEGORIES:
            known = sorted(PHOTO_CATEGORIES)
            raise DatasetError(f"unknown photographic category {name!r}; choose from {known}", out_dir)
    if seed < 0 or min(n_train_good, n_test_good, n_per_defect) < 0 or size < 64:
        raise DatasetError("seed and counts must be >= 0 and size >= 64", out_dir)
    check_category_dirs(out_dir, names, overwrite)
    for name in names:
        for d in (out_dir / name, out_dir / OBJECT_MASKS_DIR / name):
            if d.is_dir():
                shutil.rmtree(d)
        groups = [("train", GOOD, n_train_good), ("test", GOOD, n_test_good)]
        groups += [("test", d, n_per_defect) for d in PHOTO_CATEGORIES[name]]
        for split, label, count in groups:
            for i in range(count):
                img, mask, obj = render_photo_sample(name, label, i, seed=seed, split=split, size=size)
                rel = f"{split}/{label}/{i:03d}.png"
                write_png(out_dir / name / rel, img)
                write_png(object_mask_path(out_dir, f"{name}/{rel}"), obj)
                if mask is not None:
                    write_png(out_dir / name / "ground_truth" / label / f"{i:03d}_mask.png", mask)
    return names
