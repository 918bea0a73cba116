"""The embedded procedural demo dataset: layout, masks, object containment, determinism, refusals."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from anoaug.cli import app
from anoaug.data.demo import CATEGORIES, make_demo_dataset, render_sample
from anoaug.errors import DatasetError

N_TRAIN, N_TEST_GOOD, N_DEFECT, SIZE = 36, 12, 9, 256


def _gray(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), np.float32).mean(axis=2)


def _mask(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _threshold_foreground(gray: np.ndarray, thresh: float = 67.0) -> np.ndarray:
    """A naive foreground: bright pixels, largest blob, holes filled."""
    fg = (gray > thresh).astype(np.uint8)
    fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(fg)
    assert n > 1, "no foreground found"
    biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    blob = (labels == biggest).astype(np.uint8)
    contours, _ = cv2.findContours(blob, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    filled = np.zeros_like(blob)
    cv2.drawContours(filled, contours, -1, 1, thickness=-1)
    return filled.astype(bool)


def test_layout_and_counts(demo_root: Path) -> None:
    assert sorted(p.name for p in demo_root.iterdir()) == sorted(CATEGORIES)
    assert CATEGORIES == {"fabric": ("stain", "cut"), "cap": ("scratch", "crack")}
    for cat, defects in CATEGORIES.items():
        root = demo_root / cat
        assert sorted(p.name for p in root.iterdir()) == ["ground_truth", "test", "train"]
        assert [p.name for p in (root / "train").iterdir()] == ["good"]
        assert sorted(p.name for p in (root / "test").iterdir()) == sorted(["good", *defects])
        assert sorted(p.name for p in (root / "ground_truth").iterdir()) == sorted(defects)
        train = sorted(p.name for p in (root / "train" / "good").iterdir())
        assert train == [f"{i:03d}.png" for i in range(N_TRAIN)]
        assert len(list((root / "test" / "good").iterdir())) == N_TEST_GOOD
        for d in defects:
            imgs = sorted(p.name for p in (root / "test" / d).iterdir())
            masks = sorted(p.name for p in (root / "ground_truth" / d).iterdir())
            assert imgs == [f"{i:03d}.png" for i in range(N_DEFECT)]
            assert masks == [f"{i:03d}_mask.png" for i in range(N_DEFECT)]
    # no temporary files left behind by the write-then-rename
    assert not [p for p in demo_root.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]


def test_images_and_masks_are_well_formed(demo_root: Path) -> None:
    for cat, defects in CATEGORIES.items():
        for img_path in (demo_root / cat / "train" / "good").glob("00[0-3].png"):
            with Image.open(img_path) as im:
                assert im.mode == "RGB" and im.size == (SIZE, SIZE)
        for d in defects:
            for i in range(N_DEFECT):
                with Image.open(demo_root / cat / "test" / d / f"{i:03d}.png") as im:
                    assert im.mode == "RGB" and im.size == (SIZE, SIZE)
                with Image.open(demo_root / cat / "ground_truth" / d / f"{i:03d}_mask.png") as m:
                    assert m.mode == "L" and m.size == (SIZE, SIZE)
                    arr = np.asarray(m)
                assert set(np.unique(arr).tolist()) == {0, 255}, (cat, d, i)
                area = np.count_nonzero(arr) / arr.size
                assert 0.0005 < area < 0.25, (cat, d, i, area)


@pytest.mark.parametrize(("category", "defect"), [(c, d) for c, ds in CATEGORIES.items() for d in ds])
def test_masks_cover_the_visible_defect(category: str, defect: str) -> None:
    """The change a defect makes to its clean image is strong inside the mask and (almost) only there."""
    for i in range(N_DEFECT):
        sample = render_sample(category, defect, i, seed=0)
        assert sample.mask is not None
        diff = np.abs(sample.image.astype(np.float32) - sample.clean.astype(np.float32)).max(axis=2)
        inside = sample.mask > 0
        visible = diff > 12
        assert np.count_nonzero(visible & inside) >= 0.9 * np.count_nonzero(visible), (defect, i)
        assert diff[inside].sum() >= 0.9 * diff.sum(), (defect, i)
        assert diff[inside].mean() > (8 if defect == "scratch" else 20), (defect, i)
        # and the mask is not a blob around a thin defect: most mask pixels really changed
        assert np.count_nonzero(diff[inside] > 4) >= 0.5 * np.count_nonzero(inside), (defect, i)


def test_darkening_defects_are_darker_than_their_surroundings(demo_root: Path) -> None:
    ring_k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (9, 9))
    for cat, d in [("fabric", "stain"), ("fabric", "cut"), ("cap", "crack")]:
        for i in range(N_DEFECT):
            gray = _gray(demo_root / cat / "test" / d / f"{i:03d}.png")
            m = _mask(demo_root / cat / "ground_truth" / d / f"{i:03d}_mask.png")
            ring = (cv2.dilate(m, ring_k) > 0) & (m == 0)
            assert gray[m > 0].mean() < 0.9 * gray[ring].mean(), (cat, d, i)


def test_cap_defects_lie_inside_the_object(demo_root: Path) -> None:
    root = demo_root / "cap"
    for d in CATEGORIES["cap"]:
        for i in range(N_DEFECT):
            sample = render_sample("cap", d, i, seed=0)
            written = _mask(root / "ground_truth" / d / f"{i:03d}_mask.png")
            np.testing.assert_array_equal(written, sample.mask)
            assert not np.any((written > 0) & ~sample.object_mask)
            # independent check: a naive threshold of the bright cap on the dark background
            fg = _threshold_foreground(_gray(root / "test" / d / f"{i:03d}.png"))
            iou = np.count_nonzero(fg & sample.object_mask) / np.count_nonzero(fg | sample.object_mask)
            assert iou > 0.97, (d, i, iou)
            inner_fg = cv2.erode(fg.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
            assert not np.any((written > 0) & ~inner_fg), (d, i)


def test_cap_object_size_and_jitter(demo_root: Path) -> None:
    areas, centres = [], []
    for i in range(N_TRAIN):
        fg = _threshold_foreground(_gray(demo_root / "cap" / "train" / "good" / f"{i:03d}.png"))
        areas.append(fg.mean())
        ys, xs = np.nonzero(fg)
        centres.append((xs.mean(), ys.mean()))
    assert min(areas) >= 0.35 and max(areas) <= 0.60
    c = np.array(centres)
    assert np.all(np.abs(c - SIZE / 2) < 0.1 * SIZE)  # centred-ish...
    assert c.std(axis=0).min() > 1.0  # ...but not always at the same place


def test_fabric_object_mask_is_whole_image() -> None:
    sample = render_sample("fabric", "stain", 0, seed=0)
    assert sample.object_mask.all()
    assert sample.mask is not None and sample.mask.dtype == np.uint8


def test_normals_vary(demo_root: Path) -> None:
    for cat in CATEGORIES:
        imgs = [_gray(demo_root / cat / "train" / "good" / f"{i:03d}.png") for i in range(6)]
        for a in range(len(imgs)):
            for b in range(a + 1, len(imgs)):
                assert np.abs(imgs[a] - imgs[b]).mean() > 3.0, (cat, a, b)


def test_render_sample_matches_files(demo_root: Path) -> None:
    for cat, defects in CATEGORIES.items():
        good = render_sample(cat, "good", 5, seed=0, split="train")
        assert good.mask is None
        on_disk = np.asarray(Image.open(demo_root / cat / "train" / "good" / "005.png"))
        np.testing.assert_array_equal(on_disk, good.image)
        bad = render_sample(cat, defects[1], 2, seed=0)
        on_disk = np.asarray(Image.open(demo_root / cat / "test" / defects[1] / "002.png"))
        np.testing.assert_array_equal(on_disk, bad.image)


def test_same_seed_same_bytes_other_seed_differs(demo_root: Path, tmp_path: Path) -> None:
    # file names depend only on the index, so a smaller run must reproduce a subset byte for byte
    again = tmp_path / "again"
    assert make_demo_dataset(again, seed=0, n_train_good=4, n_test_good=2, n_per_defect=3) == ["fabric", "cap"]
    ref, same = _tree_digest(demo_root), _tree_digest(again)
    assert len(same) == 2 * (4 + 2 + 2 * 3 * 2)
    assert all(ref[k] == v for k, v in same.items())

    other = tmp_path / "other"
    make_demo_dataset(other, seed=1, n_train_good=2, n_test_good=1, n_per_defect=1)
    new = _tree_digest(other)
    assert set(new) <= set(ref)
    assert len(new) == 2 * (2 + 1 + 2 * 2)
    assert all(new[k] != ref[k] for k in new)


def test_category_selection_and_unknown_category(tmp_path: Path) -> None:
    out = tmp_path / "d"
    assert make_demo_dataset(out, categories=["cap"], n_train_good=1, n_test_good=1, n_per_defect=1) == ["cap"]
    assert [p.name for p in out.iterdir()] == ["cap"]
    with pytest.raises(DatasetError, match="unknown demo category"):
        make_demo_dataset(tmp_path / "e", categories=["bottle"])
    assert not (tmp_path / "e").exists()


def test_refuses_to_overwrite_unless_asked(tmp_path: Path) -> None:
    small = {"n_train_good": 1, "n_test_good": 1, "n_per_defect": 1}
    out = tmp_path / "d"
    (out / "fabric").mkdir(parents=True)  # an empty folder is fine
    make_demo_dataset(out, seed=0, categories=["fabric"], **small)
    before = _tree_digest(out)
    with pytest.raises(DatasetError) as info:
        make_demo_dataset(out, seed=1, categories=["fabric"], **small)
    assert info.value.path == out / "fabric"
    assert _tree_digest(out) == before  # nothing was touched

    stale = out / "fabric" / "train" / "good" / "999.png"
    stale.write_bytes(b"stale")
    make_demo_dataset(out, seed=1, categories=["fabric"], overwrite=True, **small)
    assert not stale.exists()
    after = _tree_digest(out)
    assert set(after) == set(before) and after != before


def test_cli_demo_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import anoaug.data.demo as demo

    small = functools.partial(demo.make_demo_dataset, n_train_good=2, n_test_good=1, n_per_defect=3)
    monkeypatch.setattr(demo, "make_demo_dataset", small)
    runner = CliRunner()
    out = tmp_path / "demo"
    result = runner.invoke(app, ["demo-data", str(out), "--category", "cap", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert "cap: 2 train good, 1 test good, 3 scratch, 3 crack" in result.output
    assert len(list((out / "cap" / "ground_truth" / "crack").glob("*_mask.png"))) == 3
    assert not (out / "fabric").exists()
    assert np.array_equal(
        np.asarray(Image.open(out / "cap" / "test" / "crack" / "001.png")),
        render_sample("cap", "crack", 1, seed=3).image,
    )

    again = runner.invoke(app, ["demo-data", str(out), "--category", "cap"])
    assert again.exit_code == 2
    assert "already exists" in again.output
    assert runner.invoke(app, ["demo-data", str(out), "-c", "cap", "--overwrite"]).exit_code == 0
    assert runner.invoke(app, ["demo-data", str(out), "-c", "bottle"]).exit_code == 2


@pytest.mark.parametrize("size", [64, 96, 128])
def test_small_sizes_work(tmp_path: Path, size: int) -> None:
    """Small demo images (used by quick tests and benchmarks) must not crash any defect drawer."""
    cats = make_demo_dataset(tmp_path, seed=1, size=size, n_train_good=3, n_test_good=2, n_per_defect=4)
    for cat in cats:
        masks = sorted((tmp_path / cat / "ground_truth").rglob("*_mask.png"))
        assert len(masks) == 8
        assert all(np.asarray(Image.open(m)).max() == 255 for m in masks)


def test_cli_demo_data_counts_and_size(tmp_path: Path) -> None:
    """--train-good / --test-good / --per-defect / --size reach both dataset makers; bad values exit 2 naming the
    option, before anything is written."""
    from anoaug.data.photographic import PHOTO_CATEGORIES

    runner = CliRunner()
    counts = ["--train-good", "2", "--test-good", "0", "--per-defect", "1", "--size", "64"]
    plain = runner.invoke(app, ["demo-data", str(tmp_path / "d"), "-c", "cap", *counts])
    assert plain.exit_code == 0, plain.output
    assert "cap: 2 train good, 0 test good, 1 scratch, 1 crack" in plain.output
    assert Image.open(tmp_path / "d" / "cap" / "train" / "good" / "001.png").size == (64, 64)

    photo = runner.invoke(app, ["demo-data", str(tmp_path / "p"), "--photographic", "-c", "washers", *counts])
    assert photo.exit_code == 0, photo.output
    defects = ", ".join(f"1 {d}" for d in PHOTO_CATEGORIES["washers"])
    assert f"washers: 2 train good, 0 test good, {defects}" in photo.output
    assert Image.open(tmp_path / "p" / "washers" / "train" / "good" / "000.png").size == (64, 64)

    for option, value in (("--train-good", "0"), ("--test-good", "-1"), ("--per-defect", "0"), ("--size", "32")):
        bad = runner.invoke(app, ["demo-data", str(tmp_path / "bad"), "-c", "cap", option, value])
        assert bad.exit_code == 2 and option in bad.output, bad.output
        assert not (tmp_path / "bad").exists()
