"""The mask bank and MaskSynthesizer: placement inside the foreground, scale, determinism, failures."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anoaug.data.formats import read_category
from anoaug.data.split import make_split
from anoaug.masks import MaskError
from anoaug.masks.foreground import erode
from anoaug.masks.synthesis import (
    BankMask,
    MaskBank,
    MaskSynthesizer,
    affine_mask,
    make_trimap,
    resolve_kind,
    split_components,
    valid_positions,
)
from anoaug.spec import ForegroundSection, MasksSection

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def disc_image(
    size: int, radius: float, center: tuple[float, float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """A flat bright disc on a flat dark background (the border method finds it exactly)."""
    yy, xx = np.mgrid[0:size, 0:size]
    cy, cx = center or (size / 2, size / 2)
    disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    img = np.full((size, size, 3), 30, np.uint8)
    img[disc] = (200, 180, 160)
    return img, disc


def blob(h: int, w: int, size: int) -> np.ndarray:
    """A full-size bool mask holding an axis-aligned ellipse of h x w px."""
    yy, xx = np.mgrid[0:size, 0:size]
    return ((yy - size / 2) / (h / 2)) ** 2 + ((xx - size / 2) / (w / 2)) ** 2 <= 1


def bank_of(masks: dict[str, list[np.ndarray]], spec: MasksSection) -> MaskBank:
    bank = MaskBank()
    for dtype, lst in masks.items():
        for i, m in enumerate(lst):
            bank.add(dtype, m, f"gt/{dtype}/{i}.png", f"img/{dtype}/{i}.png", spec)
    return bank


SPEC = MasksSection(foreground=ForegroundSection(method="border"))


@FAST
@given(
    h=st.integers(4, 30),
    w=st.integers(4, 30),
    radius=st.integers(20, 45),
    erode_px=st.integers(0, 4),
    seed=st.integers(0, 2**32 - 1),
    s_lo=st.floats(0.5, 1.0),
    s_span=st.floats(0.0, 0.6),
)
def test_placed_inside_foreground_binary_and_area_bounded(
    h: int, w: int, radius: int, erode_px: int, seed: int, s_lo: float, s_span: float
) -> None:
    spec = SPEC.model_copy(update={"erode": erode_px, "scale": (s_lo, s_lo + s_span)})
    src = blob(h, w, 64)
    synth = MaskSynthesizer(bank_of({"dent": [src]}, spec), spec, "object")
    img, _ = disc_image(100, radius)
    try:
        res = synth.synthesize(img, "dent", np.random.default_rng(seed))
    except MaskError:
        # An ellipse with semi-axes a >= b fits a disc of radius R iff a <= R: when even the largest scale
        # fits with a 3-px margin, every attempt must succeed, so a failure is a bug.
        assert max(h, w) / 2 * (s_lo + s_span) * 100 / 64 > radius - erode_px - 3
        return
    fg = synth.foreground(img)
    assert res.mask.dtype == bool and res.mask.shape == fg.shape
    assert res.mask.any()
    assert not (res.mask & ~erode(fg, erode_px)).any()
    assert set(np.unique(res.trimap)) <= {0, 127, 255}
    assert ((res.trimap == 255) == res.mask).all()
    assert ((res.trimap == 127) == (fg & ~res.mask)).all()
    # area within the scale bounds, up to one pixel of rasterisation along the boundary
    entry = synth.source.candidates("dent")[0]
    a0, p0 = entry.area, entry.perimeter
    r = res.params["resolution_scale"]
    assert r == pytest.approx(100 / 64)  # bank masks come from 64-px images, the normal is 100 px
    lo, hi = spec.scale[0] * r, spec.scale[1] * r
    area = res.params["area"]
    assert area == int(res.mask.sum())
    assert lo**2 * a0 - 1.5 * p0 * hi - 2 <= area <= hi**2 * a0 + 1.5 * p0 * hi + 2
    assert spec.scale[0] <= res.params["scale"] <= spec.scale[1]


def test_params_are_json_and_complete() -> None:
    import json

    img, _ = disc_image(96, 40)
    synth = MaskSynthesizer(bank_of({"dent": [blob(10, 20, 64)]}, SPEC), SPEC, "object")
    res = synth.synthesize(img, "dent", np.random.default_rng(1))
    json.dumps(res.params)
    for key in ("source_mask", "component", "angle", "scale", "tx", "ty", "attempts", "placement"):
        assert key in res.params
    assert res.params["placement"] == "foreground" and res.params["source_mask"] == "gt/dent/0.png"
    h, w = res.params["height"], res.params["width"]
    ys, xs = np.nonzero(res.mask)
    assert (ys.min(), xs.min(), ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) == (
        res.params["ty"],
        res.params["tx"],
        h,
        w,
    )


@FAST
@given(seed=st.integers(0, 2**63))
def test_same_rng_same_mask_bit_for_bit(seed: int) -> None:
    img, _ = disc_image(96, 40)
    bank = bank_of({"dent": [blob(10, 20, 64), blob(6, 6, 64)], "cut": [blob(4, 25, 64)]}, SPEC)
    a = MaskSynthesizer(bank, SPEC, "object")
    b = MaskSynthesizer(bank, SPEC, "object")
    b.synthesize(img, "cut", np.random.default_rng(seed + 1))  # other calls leave no state behind
    r1 = a.synthesize(img, "dent", np.random.default_rng(seed))
    r2 = b.synthesize(img, "dent", np.random.default_rng(seed))
    assert np.array_equal(r1.mask, r2.mask) and np.array_equal(r1.trimap, r2.trimap)
    assert r1.params == r2.params


def test_different_seeds_differ() -> None:
    img, _ = disc_image(96, 40)
    synth = MaskSynthesizer(bank_of({"dent": [blob(10, 20, 64)]}, SPEC), SPEC, "object")
    masks = {synth.synthesize(img, "dent", np.random.default_rng(s)).mask.tobytes() for s in range(8)}
    assert len(masks) == 8


def test_too_small_foreground_is_a_clear_error_not_a_hang() -> None:
    img, _ = disc_image(96, 5)  # a tiny object; the bank mask is much larger
    spec = SPEC.model_copy(update={"max_attempts": 40})
    synth = MaskSynthesizer(bank_of({"dent": [blob(30, 30, 64), blob(20, 28, 64)]}, spec), spec, "object")
    t0 = time.perf_counter()
    with pytest.raises(MaskError, match="no placement for a 'dent' mask after 40 attempt"):
        synth.synthesize(img, "dent", np.random.default_rng(0))
    assert time.perf_counter() - t0 < 10
    empty = np.full((96, 96, 3), 60, np.uint8)  # no object at all
    with pytest.raises(MaskError, match="eroded foreground has 0 px"):
        synth.synthesize(empty, "dent", np.random.default_rng(0))


def test_unknown_type_and_empty_bank() -> None:
    img, _ = disc_image(96, 40)
    synth = MaskSynthesizer(bank_of({"dent": [blob(10, 10, 64)]}, SPEC), SPEC, "object")
    with pytest.raises(MaskError, match="no generator-training masks for defect type 'hole'"):
        synth.synthesize(img, "hole", np.random.default_rng(0))
    with pytest.raises(MaskError, match="bank is empty"):
        MaskSynthesizer(MaskBank(), SPEC, "object")
    with pytest.raises(MaskError):
        MaskSynthesizer(bank_of({"dent": [blob(10, 10, 64)]}, SPEC), SPEC, "blob")


def test_texture_free_placement_covers_the_image() -> None:
    rng = np.random.default_rng(0)
    tex = rng.integers(0, 255, (80, 80, 3), dtype=np.uint8)
    spec = MasksSection()  # placement auto -> free for textures, foreground auto -> whole image
    synth = MaskSynthesizer(bank_of({"stain": [blob(20, 12, 64)]}, spec), spec, "texture")
    assert synth.placement == "free"
    hits = np.zeros((80, 80), int)
    for s in range(30):
        res = synth.synthesize(tex, "stain", np.random.default_rng(s))
        assert res.params["placement"] == "free" and res.params["erode"] == 0
        assert set(np.unique(res.trimap)) == {127, 255}
        hits += res.mask
    assert hits[:20].any() and hits[-20:].any() and hits[:, :20].any() and hits[:, -20:].any()


def test_free_placement_on_object_may_leave_the_object() -> None:
    img, disc = disc_image(96, 20)
    spec = SPEC.model_copy(update={"placement": "free"})
    synth = MaskSynthesizer(bank_of({"dent": [blob(8, 8, 64)]}, spec), spec, "object")
    outside = sum(
        (synth.synthesize(img, "dent", np.random.default_rng(s)).mask & ~disc).any() for s in range(20)
    )
    assert outside > 0
    res = synth.synthesize(img, "dent", np.random.default_rng(0))
    fg = synth.foreground(img)
    assert (fg == disc).mean() > 0.99
    assert ((res.trimap == 0) == (~fg & ~res.mask)).all()


def test_resolution_of_source_mask_is_matched() -> None:
    spec = SPEC.model_copy(update={"scale": (1.0, 1.0), "rotation": (0.0, 0.0)})
    src = blob(10, 16, 64)  # from a 64-px image
    synth = MaskSynthesizer(bank_of({"dent": [src]}, spec), spec, "object")
    img, _ = disc_image(128, 55)  # twice the resolution
    res = synth.synthesize(img, "dent", np.random.default_rng(0))
    assert res.params["resolution_scale"] == pytest.approx(2.0)
    assert res.params["area"] == pytest.approx(4 * src.sum(), rel=0.15)
    ch, cw = synth.source.candidates("dent")[0].crop.shape
    assert abs(res.params["height"] - 2 * ch) <= 2 and abs(res.params["width"] - 2 * cw) <= 2


def test_split_components_groups_near_parts() -> None:
    m = np.zeros((60, 60), bool)
    m[5:15, 5:15] = True  # A
    m[5:15, 17:25] = True  # B, 2 px from A: same group with gap 3
    m[40:50, 40:55] = True  # C, far away
    m[30, 5] = True  # a speck, dropped by min_area
    parts = split_components(m, gap=3, min_area=8)
    assert sorted(int(p.sum()) for p in parts) == [150, 180]
    assert len(split_components(m, gap=0, min_area=8)) == 3
    speck = np.zeros((10, 10), bool)
    speck[2, 2] = True
    assert len(split_components(speck, gap=0, min_area=8)) == 1  # the largest survives
    bank = bank_of({"x": [m]}, MasksSection())
    assert [e.component for e in bank.candidates("x")] == [0, 1]
    assert bank.real_areas["x"] == [int(m.sum())]
    whole = bank_of({"x": [m]}, MasksSection(split_components=False))
    assert [e.component for e in whole.candidates("x")] == [-1]
    empty = MaskBank()
    empty.add("x", np.zeros((5, 5), bool), "gt/e.png", "img/e.png", MasksSection())
    assert empty.defect_types == [] and "empty" in empty.skipped[0]


@FAST
@given(
    fh=st.integers(8, 24),
    fw=st.integers(8, 24),
    mh=st.integers(1, 8),
    mw=st.integers(1, 8),
    seed=st.integers(0, 1000),
)
def test_valid_positions_matches_brute_force(fh: int, fw: int, mh: int, mw: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    allowed = rng.random((fh, fw)) < 0.8
    shape = rng.random((mh, mw)) < 0.6
    shape[0, 0] = True
    got = valid_positions(allowed, shape)
    want = np.zeros((fh - mh + 1, fw - mw + 1), bool)
    for y in range(want.shape[0]):
        for x in range(want.shape[1]):
            want[y, x] = not (shape & ~allowed[y : y + mh, x : x + mw]).any()
    assert np.array_equal(got, want)


def test_affine_mask_rotation_and_scale() -> None:
    crop = np.ones((10, 30), bool)
    r = affine_mask(crop, 90.0, 1.0)
    assert abs(r.shape[0] - 30) <= 1 and abs(r.shape[1] - 10) <= 1
    s = affine_mask(crop, 0.0, 2.0)
    assert abs(int(s.sum()) - 1200) <= 0.1 * 1200
    assert affine_mask(np.ones((10, 10), bool), 45.0, 0.1).sum() <= 2  # about one pixel, or nothing
    assert affine_mask(np.zeros((3, 3), bool), 0.0, 1.0).size == 0  # nothing left: an empty crop


def test_trimap_values() -> None:
    fg = np.zeros((4, 4), bool)
    fg[1:3, 1:3] = True
    m = np.zeros((4, 4), bool)
    m[1, 1] = True
    t = make_trimap(m, fg)
    assert t.dtype == np.uint8 and t[1, 1] == 255 and t[2, 2] == 127 and t[0, 0] == 0


def test_bank_never_reads_an_evaluation_mask(tmp_path: Path, make_mvtec, monkeypatch) -> None:
    root = make_mvtec(tmp_path / "ds", defects={"scratch": 6, "dent": 3}, size=32)
    data = read_category(root, "widget")
    split = make_split(data, seed=3)
    read: list[str] = []
    import anoaug.masks.synthesis as synthesis_mod

    real_load = synthesis_mod.load_mask

    def spy(path, *a, **k):  # record every mask file the bank opens
        read.append(Path(path).relative_to(root).as_posix())
        return real_load(path, *a, **k)

    monkeypatch.setattr(synthesis_mod, "load_mask", spy)
    synth = MaskSynthesizer.from_split(data, split, MasksSection(), "texture")
    gen = {r.mask_relpath for r in split.records("gen_train_defect")}
    evals = {r.mask_relpath for r in split.records("eval_defect")}
    assert read and set(read) == gen
    assert not set(read) & evals
    in_bank = {e.mask_relpath for t in synth.defect_types for e in synth.source.candidates(t)}
    assert in_bank == gen and not in_bank & evals
    assert synth.defect_types == ["dent", "scratch"]
    assert len(synth.source.candidates("scratch")) == 2 and len(synth.source.candidates("dent")) == 1


def test_from_split_rejects_unimplemented_source_and_wrong_category(tmp_path: Path, make_mvtec) -> None:
    root = make_mvtec(tmp_path / "ds", defects={"scratch": 3})
    data = read_category(root, "widget")
    split = make_split(data, seed=0)
    with pytest.raises(MaskError, match="not implemented"):
        MaskSynthesizer.from_split(data, split, MasksSection(source="perlin"), "object")
    other = make_mvtec(tmp_path / "ds2", category="gadget", defects={"scratch": 3})
    with pytest.raises(MaskError, match="category"):
        MaskSynthesizer.from_split(read_category(other, "gadget"), split, MasksSection(), "object")


def test_resolve_kind(demo_root: Path) -> None:
    cap = read_category(demo_root, "cap")
    assert resolve_kind("texture", cap)[0] == "texture"
    kind, reason = resolve_kind("auto", cap)
    assert kind == "object" and "detected automatically" in reason
    assert resolve_kind("auto", read_category(demo_root, "fabric"))[0] == "texture"


def test_bank_mask_properties() -> None:
    e = BankMask("x", "m.png", "i.png", -1, np.ones((4, 5), bool), (64, 64))
    assert e.area == 20 and e.perimeter == 14
