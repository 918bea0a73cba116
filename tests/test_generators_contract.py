"""Interface contract of every model-free generator, on the demo data with hand-made masks."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from anoaug.generators import FitData, GenerationRequest, get_generator
from anoaug.generators.base import GeneratorError, artifact_hash, validate_result
from anoaug.generators.compositing import blend, feather_alpha
from anoaug.generators.perlin import perlin_mask, perlin_noise

GENERATORS = ["crop-paste", "cutpaste", "perlin"]
CATEGORIES = ["cap", "fabric"]


@pytest.fixture(scope="module")
def fitdata(demo_root: Path) -> dict[str, FitData]:
    from anoaug.data.formats import read_category
    from anoaug.data.split import make_split

    out = {}
    for cat in CATEGORIES:
        data = read_category(demo_root, cat, "auto")
        out[cat] = FitData.from_split(data, make_split(data, 0), kind="object" if cat == "cap" else "texture")
    return out


@pytest.fixture(scope="module")
def fitted(fitdata: dict[str, FitData], tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    base = tmp_path_factory.mktemp("artifacts")
    arts = {}
    for cat in CATEGORIES:
        for name in GENERATORS:
            arts[(name, cat)] = get_generator(name)().fit(fitdata[cat], base / f"{name}-{cat}", seed=0)
    return arts


def _request(fd: FitData, defect_type: str, seed: int, thin: bool = False) -> GenerationRequest:
    """A hand-made ellipse (or thin line) mask near the centre, with a trimap from the bright object."""
    normal = fd.normal_images(limit=1)[0]
    h, w = normal.shape[:2]
    mask = np.zeros((h, w), np.uint8)
    if thin:
        cv2.line(mask, (w // 3, h // 2), (2 * w // 3, h // 2 + 10), 1, 1)
    else:
        cv2.ellipse(mask, (w // 2, h // 2), (18, 9), 30, 0, 360, 1, -1)
    mask = mask.astype(bool)
    obj = cv2.cvtColor(normal, cv2.COLOR_RGB2GRAY) > 60 if fd.kind == "object" else np.ones((h, w), bool)
    trimap = np.where(mask, 255, np.where(obj, 127, 0)).astype(np.uint8)
    return GenerationRequest(normal, mask, defect_type, seed, trimap, normal_key=str(fd.normal_paths[0]))


@pytest.mark.parametrize("cat", CATEGORIES)
@pytest.mark.parametrize("name", GENERATORS)
def test_contract(name: str, cat: str, fitdata: dict[str, FitData], fitted: dict[tuple[str, str], Path]) -> None:
    fd = fitdata[cat]
    gen = get_generator(name).load(fitted[(name, cat)])
    assert gen.artifact_hash == artifact_hash(fitted[(name, cat)])
    reqs = [_request(fd, t, seed) for seed, t in enumerate(fd.defect_types)]
    results = gen.generate(reqs)
    assert len(results) == len(reqs)
    for req, res in zip(reqs, results, strict=True):
        validate_result(req, res, name)
        assert res.image.shape == req.normal.shape and res.image.dtype == np.uint8
        assert res.mask.shape == req.mask.shape and res.mask.dtype == np.bool_ and res.mask.any()
        changed = np.any(res.image != req.normal, axis=2)
        assert changed.sum() > 0.3 * res.mask.sum(), "the defect must be visible"
        # Defect pixels only inside the final mask, plus the blending margin (feather).
        margin = int(np.ceil(float(gen.params.get("feather", 0)))) + 1
        grown = cv2.dilate(res.mask.astype(np.uint8), np.ones((2 * margin + 1,) * 2, np.uint8)) > 0
        assert not (changed & ~grown).any()
        if name == "cutpaste":
            assert np.array_equal(res.mask, req.mask)  # the blended region is the requested one
        elif not res.info.get("fallback"):
            assert not (res.mask & ~req.allowed).any()  # never off the object
        # Determinism per seed, and the seed matters.
        again = gen.generate([req])[0]
        assert np.array_equal(again.image, res.image) and np.array_equal(again.mask, res.mask)
        other = gen.generate([GenerationRequest(req.normal, req.mask, req.defect_type, req.seed + 101, req.trimap)])
        assert not np.array_equal(other[0].image, res.image)


@pytest.mark.parametrize("name", GENERATORS)
def test_fit_is_deterministic(name: str, fitdata: dict[str, FitData], fitted: dict, tmp_path: Path) -> None:
    again = get_generator(name)().fit(fitdata["cap"], tmp_path / "again", seed=0)
    assert artifact_hash(again) == artifact_hash(fitted[(name, "cap")])


@pytest.mark.parametrize("mode", ["poisson", "poisson-mixed", "none"])
def test_blend_modes_stay_inside(mode: str, fitdata: dict[str, FitData], fitted: dict) -> None:
    gen = get_generator("crop-paste").load(fitted[("crop-paste", "cap")])
    gen.params["blend"] = mode
    req = _request(fitdata["cap"], "scratch", 7)
    res = gen.generate([req])[0]
    changed = np.any(res.image != req.normal, axis=2)
    assert res.info["blend"] == mode and changed.any()
    assert not (changed & ~res.mask).any()  # Poisson and hard paste edit only the region


def test_poisson_on_thin_mask_falls_back(fitdata: dict[str, FitData], fitted: dict) -> None:
    gen = get_generator("cutpaste").load(fitted[("cutpaste", "fabric")])
    gen.params["blend"] = "poisson"
    res = gen.generate([_request(fitdata["fabric"], "cut", 3, thin=True)])[0]
    assert res.mask.any() and res.info["blend"] in ("poisson", "alpha")


def test_feather_alpha_threshold_is_the_region() -> None:
    rng = np.random.default_rng(0)
    for _ in range(5):
        region = cv2.GaussianBlur(rng.random((40, 50)).astype(np.float32), (0, 0), 3) > 0.5
        for f in (0.0, 1.0, 3.0):
            a = feather_alpha(region, f)
            assert np.array_equal(a >= 0.5, region)
            assert a.min() >= 0 and a.max() <= 1


def test_hard_blend_and_errors(fitdata: dict[str, FitData], fitted: dict) -> None:
    dst = np.zeros((10, 10, 3), np.uint8)
    src = np.full((10, 10, 3), 200, np.uint8)
    region = np.zeros((10, 10), bool)
    region[2:5, 3:7] = True
    out, mask, used = blend(dst, src, region, "none")
    assert used == "none" and np.array_equal(mask, region) and np.array_equal(out[..., 0] > 0, region)
    with pytest.raises(GeneratorError, match="unknown params"):
        get_generator("cutpaste")({"nope": 1})
    gen = get_generator("crop-paste").load(fitted[("crop-paste", "cap")])
    with pytest.raises(GeneratorError, match="no training crop"):
        gen.generate([_request(fitdata["cap"], "stain", 0)])
    with pytest.raises(GeneratorError, match="not fitted"):
        get_generator("perlin")().generate([_request(fitdata["cap"], "crack", 0)])
    with pytest.raises(GeneratorError, match="unknown generator"):
        get_generator("no-such")


def test_perlin_noise_and_mask() -> None:
    a = perlin_noise((64, 96), (4, 2), np.random.default_rng(1))
    b = perlin_noise((64, 96), (4, 2), np.random.default_rng(1))
    assert a.shape == (64, 96) and np.array_equal(a, b)
    assert -1.01 <= a.min() < 0 < a.max() <= 1.01
    masks = [perlin_mask((64, 64), np.random.default_rng(s)) for s in range(20)]
    assert any(m.any() for m in masks) and all(m.dtype == np.bool_ for m in masks)


def test_perlin_texture_dir(fitdata: dict[str, FitData], tmp_path: Path) -> None:
    tex = tmp_path / "textures"
    tex.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        cv2.imwrite(str(tex / f"t{i}.png"), rng.integers(0, 255, (40, 60, 3), dtype=np.uint8))
    gen = get_generator("perlin")({"texture_dir": str(tex), "mask_mode": "request"})
    gen.fit(fitdata["fabric"], tmp_path / "art")
    assert len(list((tmp_path / "art" / "textures").glob("*.png"))) == 3
    req = _request(fitdata["fabric"], "stain", 5)
    res = gen.generate([req])[0]
    assert np.array_equal(res.mask, req.mask)
    with pytest.raises(GeneratorError, match="not a directory"):
        get_generator("perlin")({"texture_dir": str(tmp_path / "missing")}).fit(fitdata["fabric"], tmp_path / "a2")
