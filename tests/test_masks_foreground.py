"""Foreground extraction, object/texture detection and the foreground cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from anoaug.masks import ForegroundError
from anoaug.masks.foreground import (
    ForegroundCache,
    detect_kind,
    erode,
    extract_foreground,
    foreground_flags,
    kind_evidence,
)
from anoaug.spec import ForegroundSection


def object_image(size: int = 96, seed: int = 0, radius: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """A bright textured disc on a dark noisy background, and its true mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    cy, cx = size / 2 + rng.uniform(-4, 4, 2)
    disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= (radius * size) ** 2
    img = rng.normal(35, 4, (size, size, 3))
    img[disc] = rng.normal(170, 15, (int(disc.sum()), 3)) + np.array([10, 0, -20])
    return np.clip(img, 0, 255).astype(np.uint8), disc


def texture_image(size: int = 96, seed: int = 0) -> np.ndarray:
    """A periodic woven-looking texture with noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    base = 120 + 60 * np.sign(np.sin((xx + yy) / 2.5)) + rng.normal(0, 10, (size, size))
    img = np.stack([base * 0.5, base * 0.7, base], axis=-1)
    return np.clip(img, 0, 255).astype(np.uint8)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


@pytest.mark.parametrize("method", ["border", "threshold", "grabcut", "auto"])
def test_object_methods_find_the_disc(method: str) -> None:
    img, truth = object_image()
    fg = extract_foreground(img, ForegroundSection(method=method), "object")
    assert fg.shape == truth.shape and fg.dtype == bool
    assert iou(fg, truth) > 0.9
    assert foreground_flags(fg, "object") == []


def test_texture_is_whole_image_and_whole_method() -> None:
    img = texture_image()
    assert extract_foreground(img, ForegroundSection(), "texture").all()
    obj, _ = object_image()
    assert extract_foreground(obj, ForegroundSection(method="whole"), "object").all()


def test_grey_and_rgba_inputs_and_bad_shape() -> None:
    img, truth = object_image()
    grey = img.mean(axis=2).astype(np.uint8)
    assert iou(extract_foreground(grey, ForegroundSection(method="border"), "object"), truth) > 0.9
    rgba = np.concatenate([img, np.full(img.shape[:2] + (1,), 255, np.uint8)], axis=2)
    assert extract_foreground(rgba, ForegroundSection(method="border"), "object").any()
    with pytest.raises(ForegroundError):
        extract_foreground(np.zeros((4, 4, 2), np.uint8), ForegroundSection(), "object")
    with pytest.raises(ForegroundError):
        extract_foreground(img, ForegroundSection(), "thing")


def test_flags() -> None:
    empty = np.zeros((50, 50), bool)
    assert foreground_flags(empty, "object") == ["empty"]
    full = np.ones((50, 50), bool)
    assert set(foreground_flags(full, "object")) == {"whole_image", "touches_all_borders"}
    assert foreground_flags(full, "texture") == []
    cross = np.zeros((50, 50), bool)
    cross[25, :] = cross[:, 25] = True
    cross[20:30, 20:30] = True
    assert "touches_all_borders" in foreground_flags(cross, "object")
    disc = object_image(50)[1]
    assert foreground_flags(disc, "object") == []


def test_blank_image_gives_flagged_not_crash() -> None:
    blank = np.full((64, 64, 3), 90, np.uint8)
    fg = extract_foreground(blank, ForegroundSection(), "object")
    assert fg.shape == (64, 64)
    assert foreground_flags(fg, "object")  # nothing plausible: it must be flagged


def test_detect_kind() -> None:
    objects = [object_image(seed=s)[0] for s in range(3)]
    textures = [texture_image(seed=s) for s in range(3)]
    assert detect_kind(objects) == "object"
    assert detect_kind(textures) == "texture"
    kind, reason = kind_evidence(textures)
    assert kind == "texture" and "0/3" in reason
    with pytest.raises(ForegroundError):
        detect_kind([])


def test_detect_kind_on_demo(demo_root: Path) -> None:
    from anoaug.data.io import load_image

    for category, expected in (("cap", "object"), ("fabric", "texture")):
        imgs = [load_image(demo_root / category / "train" / "good" / f"{i:03d}.png") for i in (0, 7, 14)]
        assert detect_kind(imgs) == expected


def test_demo_cap_foreground_matches_true_object() -> None:
    from anoaug.data.demo import render_sample

    for i in range(3):
        s = render_sample("cap", "good", i, split="train")
        fg = extract_foreground(s.image, ForegroundSection(), "object")
        assert iou(fg, s.object_mask) > 0.95
        assert not (erode(fg, 2) & ~s.object_mask).any()  # the eroded foreground is all object


def test_erode() -> None:
    m = np.zeros((20, 20), bool)
    m[5:15, 5:15] = True
    e = erode(m, 2)
    assert e.sum() == 36 and e[7:13, 7:13].all()
    assert erode(np.ones((10, 10), bool), 1).sum() == 64  # outside the image is background
    assert erode(m, 0).sum() == 100


def test_cache_hits_and_directory(tmp_path: Path) -> None:
    img, _ = object_image()
    cache = ForegroundCache(ForegroundSection(method="border"), "object", directory=tmp_path / "fg")
    a = cache.get(img)
    b = cache.get(img)
    assert (a == b).all() and cache.hits == 1 and cache.misses == 1
    assert len(list((tmp_path / "fg").glob("*.png"))) == 1
    fresh = ForegroundCache(ForegroundSection(method="border"), "object", directory=tmp_path / "fg")
    assert (fresh.get(img) == a).all()  # read back from disk
    other = ForegroundCache(ForegroundSection(method="whole"), "object", directory=tmp_path / "fg")
    assert other.get(img).all()  # a different spec is a different cache entry


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_model_method(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")

    class Bright(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x.mean(dim=1, keepdim=True) - 0.4) * 10.0

    path = tmp_path / "seg.pt"
    torch.jit.script(Bright()).save(str(path))
    img, truth = object_image()
    fg = extract_foreground(img, ForegroundSection(method="model", model_path=str(path)), "object")
    assert iou(fg, truth) > 0.9
    with pytest.raises(ForegroundError, match="not found"):
        extract_foreground(
            img, ForegroundSection(method="model", model_path=str(tmp_path / "no.pt")), "object"
        )
    with pytest.raises(ForegroundError, match="model_path"):
        extract_foreground(img, ForegroundSection(method="model"), "object")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(ForegroundError, match="cannot load"):
        extract_foreground(img, ForegroundSection(method="model", model_path=str(bad)), "object")
