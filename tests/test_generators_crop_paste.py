"""Crop&Paste's matched path: the mask's own source defect, warped with the mask synthesizer's transform."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from anoaug.generators import FitData, GenerationRequest, get_generator
from anoaug.masks.synthesis import AFFINE_PAD, MaskSynthesizer, SynthesizedMask, affine_warp, split_components
from anoaug.spec import MasksSection


def _setup(root: Path, category: str, kind: str, out: Path) -> tuple[FitData, MaskSynthesizer, Path]:
    """(FitData, synthesizer, fitted artifact dir) for a demo category."""
    from anoaug.data.formats import read_category
    from anoaug.data.split import make_split

    data = read_category(root, category, "auto")
    split = make_split(data, 0)
    fd = FitData.from_split(data, split, kind=kind)
    synth = MaskSynthesizer.from_split(data, split, MasksSection(), kind)
    return fd, synth, get_generator("crop-paste")().fit(fd, out, seed=0)


@pytest.fixture(scope="module")
def cap(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[FitData, MaskSynthesizer, Path]:
    return _setup(demo_root, "cap", "object", tmp_path_factory.mktemp("cp") / "art")


def _masks(
    fd: FitData, synth: MaskSynthesizer, n: int = 8, types: list[str] | None = None
) -> list[tuple[np.ndarray, SynthesizedMask]]:
    normal = fd.normal_images(limit=1)[0]
    types = types or fd.defect_types
    return [(normal, synth.synthesize(normal, types[s % len(types)], np.random.default_rng(s))) for s in range(n)]


def _close(image: np.ndarray, expected: np.ndarray, where: np.ndarray) -> None:
    """Equal up to interpolation rounding (a 1 px misalignment gives mean differences of 9-50 here)."""
    diff = np.abs(image.astype(int) - expected.astype(int)).max(axis=2)[where]
    assert diff.max() <= 8 and diff.mean() <= 1.5, (diff.max(), diff.mean())


def _request(normal: np.ndarray, sm: SynthesizedMask, seed: int = 0, **params) -> GenerationRequest:
    return GenerationRequest(normal, sm.mask, sm.defect_type, seed, sm.trimap, None, {**sm.params, **params})


def _expected(fd: FitData, sm: SynthesizedMask) -> np.ndarray:
    """The real defect image resampled where the synthesizer's transform maps each pixel of the mask.

    Independent of the generator's placement code: the transform is applied to a map of source
    coordinates (bilinear interpolation of a linear map is exact), then the image is sampled there.
    """
    p = sm.params
    ex = next(d for d in fd.defects if d.relpath == p["source_image"])
    part = ex.mask if p["component"] < 0 else split_components(ex.mask, 3, 8)[p["component"]]
    ys, xs = np.nonzero(part)
    y0, x0 = ys.min() - AFFINE_PAD, xs.min() - AFFINE_PAD
    h, w = ys.max() - ys.min() + 1 + 2 * AFFINE_PAD, xs.max() - xs.min() + 1 + 2 * AFFINE_PAD
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    coords = np.dstack([xx + x0, yy + y0, np.ones_like(xx)])
    scale = p["scale"] * p["resolution_scale"]
    frame = affine_warp(coords, p["angle"], scale)
    fmask = affine_warp(np.pad(part[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].astype(np.uint8) * 255,
                               AFFINE_PAD), p["angle"], scale) >= 128
    fy, fx = (int(v.min()) for v in np.nonzero(fmask))
    H, W = sm.mask.shape
    mapx, mapy = np.zeros((H, W), np.float32) - 1, np.zeros((H, W), np.float32) - 1
    fh, fw = frame.shape[:2]
    oy, ox = p["ty"] - fy, p["tx"] - fx
    sy0, sx0, sy1, sx1 = max(0, oy), max(0, ox), min(H, oy + fh), min(W, ox + fw)
    mapx[sy0:sy1, sx0:sx1] = frame[sy0 - oy : sy1 - oy, sx0 - ox : sx1 - ox, 0]
    mapy[sy0:sy1, sx0:sx1] = frame[sy0 - oy : sy1 - oy, sx0 - ox : sx1 - ox, 1]
    return cv2.remap(ex.image, mapx, mapy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _check_hard_paste(fd: FitData, synth: MaskSynthesizer, art: Path, masks: list) -> None:
    gen = get_generator("crop-paste").load(art)  # a loaded artifact has what the matched path needs
    gen.settings.blend = "none"
    for normal, sm in masks:
        res = gen.generate([_request(normal, sm)])[0]
        assert res.info["source"] == "matched" and res.info["crop_source"] == sm.params["source_image"]
        assert np.array_equal(res.mask, sm.mask)
        _close(res.image, _expected(fd, sm), sm.mask)  # inside the mask: the warped real defect
        assert np.array_equal(res.image[~sm.mask], normal[~sm.mask]), "outside the mask: untouched"


def test_matched_pastes_the_warped_source_defect(cap) -> None:
    _check_hard_paste(*cap, _masks(cap[0], cap[1]))


def test_matched_component_group(demo_root: Path, tmp_path: Path) -> None:
    """Demo fabric 'stain' has a mask split into component groups: the group's own pixels are pasted."""
    fd, synth, art = _setup(demo_root, "fabric", "texture", tmp_path / "art")
    masks = [m for m in _masks(fd, synth, 10, ["stain"]) if m[1].params["component"] >= 0]
    assert masks, "the demo fabric masks should exercise a component group"
    _check_hard_paste(fd, synth, art, masks[:3])


def test_matched_alpha_blend_and_determinism(cap) -> None:
    fd, synth, art = cap
    gen = get_generator("crop-paste").load(art)
    for normal, sm in _masks(fd, synth, 4):
        res = gen.generate([_request(normal, sm, seed=1)])[0]
        assert res.info["source"] == "matched" and res.info["blend"] == "alpha"
        assert np.array_equal(res.mask, sm.mask)
        core = cv2.erode(sm.mask.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0  # alpha == 1 (feather 2)
        if core.any():
            _close(res.image, _expected(fd, sm), core)
        grown = cv2.dilate(sm.mask.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
        assert np.array_equal(res.image[~grown], normal[~grown])
        again = gen.generate([_request(normal, sm, seed=1)])[0]
        assert np.array_equal(again.image, res.image) and again.info == res.info


def test_fallback_to_rescaled(cap, tmp_path: Path) -> None:
    fd, synth, art = cap
    gen = get_generator("crop-paste").load(art)
    normal, sm = _masks(fd, synth, 1)[0]
    no_params = GenerationRequest(normal, sm.mask, sm.defect_type, 3, sm.trimap)
    res = gen.generate([no_params])[0]
    assert res.info["source"] == "rescaled" and "match_miss" not in res.info
    unknown = gen.generate([_request(normal, sm, 3, source_image="elsewhere/x.png")])[0]
    assert unknown.info["source"] == "rescaled" and "not a fitted" in unknown.info["match_miss"]
    assert np.array_equal(unknown.image, res.image)  # same seed, same rescaled crop
    moved = gen.generate([_request(normal, sm, 3, tx=sm.params["tx"] + 1)])[0]  # params that do not fit the mask
    assert moved.info["source"] == "rescaled" and "differs" in moved.info["match_miss"]
    off = get_generator("crop-paste")({"match": False})
    off._load(art, {})
    assert off.generate([_request(normal, sm, 3)])[0].info["source"] == "rescaled"
    # An artifact from before the matched paste (no sources) still loads and uses the rescaled crop.
    old = tmp_path / "old"
    shutil.copytree(art, old)
    (old / "sources.json").unlink()
    shutil.rmtree(old / "sources")
    old_gen = get_generator("crop-paste").load(old)
    assert old_gen.generate([_request(normal, sm, 3)])[0].info["source"] == "rescaled"


def test_generation_fills_mask_params(demo_root: Path, tmp_path: Path) -> None:
    from anoaug.data.formats import read_category
    from anoaug.data.split import make_split
    from anoaug.shards import generate_category, iter_samples
    from anoaug.spec import spec_for_root

    spec = spec_for_root(demo_root, "cap", dataset="demo")
    data = read_category(demo_root, "cap", "auto")
    s = generate_category(
        spec, data, make_split(data, 0), "crop-paste", tmp_path / "gen", count_per_type=2, seed=1, kind="object"
    )
    metas = [json.loads(json.dumps(x.meta)) for x in iter_samples(s.out_dir)]
    assert metas and all(m["generator_info"]["source"] == "matched" for m in metas)
    assert all("split" not in m["mask_params"] for m in metas)  # the lineage keeps the synthesizer's params
