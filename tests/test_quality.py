"""Generation-quality figures on constructed cases with known answers, the weight-loading path with random
stand-in networks, and the stage + report on demo shards (crop-paste copies vs a noise 'generator')."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from anoaug.evaluation.quality import QualitySettings
from anoaug.evaluation.quality.alignment import changed_inside, mask_alignment
from anoaug.evaluation.quality.crops import crop_stack
from anoaug.evaluation.quality.diversity import cluster_diversity, l1_distance
from anoaug.evaluation.quality.features import texture_features
from anoaug.evaluation.quality.fidelity import fidelity_distance
from anoaug.evaluation.quality.memorisation import memorisation, nearest_training
from anoaug.png import encode_png

RNG = np.random.default_rng(0)


def _texture(rng: np.random.Generator, n: int, size: int = 48) -> np.ndarray:
    """Smooth striped 'real' texture crops: stripes of random phase and slight colour change, little noise."""
    y, x = np.mgrid[0:size, 0:size]
    out = []
    for _ in range(n):
        phase, freq = rng.uniform(0, 2 * np.pi), rng.uniform(0.25, 0.35)
        base = 0.5 + 0.3 * np.sin(freq * x + 0.3 * y + phase)
        tint = rng.uniform(0.8, 1.0, 3)
        img = base[..., None] * tint + rng.normal(0, 0.01, (size, size, 3))
        out.append(np.clip(img * 255, 0, 255).astype(np.uint8))
    return np.stack(out)


def _defects(rng: np.random.Generator, n: int, size: int = 48) -> list[tuple[np.ndarray, np.ndarray]]:
    """(image, mask) pairs: a dark textured blob of random place and shape on a grey background."""
    pairs = []
    for _ in range(n):
        img = np.full((size, size, 3), 180, np.uint8)
        mask = np.zeros((size, size), bool)
        y0, x0 = rng.integers(4, 24, 2)
        h, w = rng.integers(8, 20, 2)
        mask[y0 : y0 + h, x0 : x0 + w] = True
        img[mask] = rng.integers(20, 120, (int(mask.sum()), 3), dtype=np.uint8)
        pairs.append((img, mask))
    return pairs


def test_fidelity_identical_sets_near_zero_and_noise_far() -> None:
    real = texture_features(_texture(np.random.default_rng(1), 30))
    same_kind = texture_features(_texture(np.random.default_rng(2), 30))
    noise = texture_features(np.random.default_rng(3).integers(0, 256, (30, 48, 48, 3), dtype=np.uint8))
    identical = fidelity_distance(real, real.copy(), np.random.default_rng(0))
    close = fidelity_distance(real, same_kind, np.random.default_rng(0))
    far = fidelity_distance(real, noise, np.random.default_rng(0))
    assert identical is not None and close is not None and far is not None
    assert far > 10.0
    assert abs(identical) < 0.01 * far and abs(close) < 0.05 * far
    assert fidelity_distance(real[:1], noise, np.random.default_rng(0)) is None  # one sample: undefined


def test_copies_score_as_memorised_new_defects_do_not() -> None:
    train = _defects(np.random.default_rng(4), 5)
    flips = [(np.rot90(img, 1).copy(), np.rot90(m, 1).copy()) for img, m in train]  # a copy, turned
    flips += [(img[:, ::-1].copy(), m[:, ::-1].copy()) for img, m in train]  # a copy, mirrored
    d_copy, which = nearest_training(flips, train)
    assert memorisation(d_copy) == pytest.approx(0.0, abs=1e-9)
    assert list(which) == [0, 1, 2, 3, 4] * 2  # each copy is assigned to its own source
    d_new, _ = nearest_training(_defects(np.random.default_rng(5), 5), train)
    assert memorisation(d_new) > 0.05  # random-pixel blobs: ~0.1


def test_one_image_repeated_has_zero_diversity_and_the_cap_holds() -> None:
    crops = _texture(np.random.default_rng(6), 1)
    repeated = np.repeat(crops, 10, axis=0)
    value, used = cluster_diversity(repeated, np.zeros(10, int), l1_distance, np.random.default_rng(0))
    assert value == pytest.approx(0.0) and used == {"0": 10}
    varied = _texture(np.random.default_rng(7), 60)
    value, used = cluster_diversity(varied, np.repeat([0, 1], 30), l1_distance, np.random.default_rng(0), cap=7)
    assert value is not None and value > 0.05 and used == {"0": 7, "1": 7}
    single, _ = cluster_diversity(varied[:2], np.array([0, 1]), l1_distance, np.random.default_rng(0))
    assert single is None  # every cluster has one member: nothing to compare


def test_alignment_is_one_inside_the_mask_and_lower_outside() -> None:
    normal = np.full((32, 32, 3), 100, np.uint8)
    mask = np.zeros((32, 32), bool)
    mask[8:16, 8:16] = True
    inside = normal.copy()
    inside[10:14, 10:14] = 250
    outside = inside.copy()
    outside[20:28, 20:28] = 0
    assert changed_inside(normal, inside, mask, 12.0) == 1.0
    share = changed_inside(normal, outside, mask, 12.0)
    assert share is not None and share == pytest.approx(16 / (16 + 64))
    assert changed_inside(normal, normal, mask, 12.0) is None  # nothing changed
    assert mask_alignment([1.0, None, 0.5]) == 0.75


def test_crops_follow_the_mask() -> None:
    img = np.zeros((64, 64, 3), np.uint8)
    img[40:50, 10:20] = 255
    mask = np.zeros((64, 64), bool)
    mask[40:50, 10:20] = True
    crops, masks = crop_stack([(img, mask)], 32, context=1.0)
    assert crops.shape == (1, 32, 32, 3) and masks.all() and crops.min() == 255


# --- network figures: the loading path with random stand-ins ----------------------------------------


def test_network_figures_with_stand_in_weights_are_labelled_meaningless(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from anoaug.evaluation.quality.networks import load_networks, save_stand_in_weights
    from anoaug.evaluation.quality.stage import network_figures

    rng = np.random.default_rng(0)
    gen, real, train = _texture(rng, 4, 32), _texture(rng, 3, 32), _texture(rng, 2, 32)
    out: dict = {}
    missing = network_figures(out, gen, real, train, QualitySettings(weights_dir=str(tmp_path / "none")), 0, rng)
    assert missing["computed"] == [] and "does not exist" in missing["reason"] and out == {}
    monkeypatch.delenv("ANOAUG_WEIGHTS", raising=False)
    assert "no weights folder" in (load_networks(None).reason or "")

    weights = save_stand_in_weights(tmp_path / "weights")
    monkeypatch.setenv("ANOAUG_WEIGHTS", str(weights))  # found through the environment variable
    out = {}
    nets = network_figures(out, gen, real, train, QualitySettings(subsets=3, network_batch=4), 0, rng)
    assert nets["computed"] == ["kid", "is", "ic_lpips"] and nets["weights_dir"] == str(weights.resolve())
    assert nets["meaningless"] and "meaningless" in nets["reason"]
    assert set(nets["files"]) == {"inception", "lpips"}
    for key in ("kid", "is", "ic_lpips"):
        assert isinstance(out[key], float) and np.isfinite(out[key])
    assert out["is"] >= 1.0 - 1e-6  # an Inception Score is at least 1


# --- the stage on demo shards, and the report ---------------------------------------------------------


@pytest.fixture(scope="module")
def cap_shards(demo_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """crop-paste shards of demo/cap (4 per type) and the split they were made from."""
    from anoaug.data.formats import read_category
    from anoaug.data.split import make_split
    from anoaug.shards import generate_category
    from anoaug.spec import spec_for_root

    spec = spec_for_root(demo_root, "cap", dataset="demo")
    data = read_category(demo_root, "cap", "auto")
    split = make_split(data, 0)
    out = tmp_path_factory.mktemp("quality") / "crop-paste"
    generate_category(spec, data, split, "crop-paste", out, count_per_type=4, seed=0, shard_size=50)
    return out, split


def noise_shards(src: Path, root: Path, out: Path, seed: int = 0) -> Path:
    """A noise 'generator': each pair of ``src`` redone as its source normal with uniform noise inside the mask."""
    from anoaug.data.io import load_image
    from anoaug.shards.reader import iter_samples

    rng = np.random.default_rng(seed)
    out.mkdir(parents=True)
    with tarfile.open(out / "noise-000000.tar", "w") as tar:
        for s in iter_samples(src):
            img = load_image(root / s.meta["source_normal"])
            img[s.mask] = rng.integers(0, 256, (int(s.mask.sum()), 3), dtype=np.uint8)
            meta = {**s.meta, "generator": "noise"}
            for ext, data in (("png", encode_png(img)), ("mask.png", encode_png(s.mask)),
                              ("json", json.dumps(meta).encode())):  # fmt: skip
                info = tarfile.TarInfo(f"{s.key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return out


@pytest.mark.slow
def test_stage_orders_copies_and_noise_and_the_report_shows_the_table(
    cap_shards, demo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from anoaug.evaluation.quality.stage import run_quality
    from anoaug.report import Report, write_report
    from tests.test_report_build import _fake_run

    monkeypatch.delenv("ANOAUG_WEIGHTS", raising=False)
    shards, split = cap_shards
    settings = QualitySettings(subsets=5)
    paths = {}
    for name, src in (("crop-paste", shards), ("noise", noise_shards(shards, demo_root, tmp_path / "noise"))):
        paths[name] = run_quality(src, split, demo_root, tmp_path / "q" / name, settings, 0, name)
    q = {name: json.loads(p.read_text()) for name, p in paths.items()}
    cp, noise = q["crop-paste"], q["noise"]
    assert cp["producer"] == "crop-paste" and cp["counts"]["generated"] == 4 * len(split.defect_types())
    assert cp["counts"]["real_heldout"] > 0 and cp["counts"]["missing_normals"] == 0
    assert cp["memorisation"] < noise["memorisation"]  # crop-paste copies the training defects
    assert noise["fidelity_mmd"] > 2 * cp["fidelity_mmd"]  # noise is far from the real defects
    assert noise["mask_alignment"] == pytest.approx(1.0)  # the noise only painted inside the masks
    assert cp["kid"] is None and cp["networks"]["computed"] == [] and "no weights folder" in cp["networks"]["reason"]

    run = _fake_run(tmp_path / "run")  # arms none, real-few, cutpaste
    report_paths = write_report(run, quality={"cutpaste": paths["crop-paste"]})
    report = Report.model_validate_json(report_paths["json"].read_text())
    gq = report.generation_quality
    assert set(gq) == {"cutpaste"}
    keys = {"fidelity_mmd", "diversity", "mask_alignment", "memorisation", "kid", "is", "ic_lpips", "networks"}
    assert keys <= set(gq["cutpaste"]) and gq["cutpaste"]["memorisation"] == cp["memorisation"]
    assert {"weights_dir", "computed", "reason"} <= set(gq["cutpaste"]["networks"])
    md = report_paths["md"].read_text()
    assert "## Generation quality" in md and "| cutpaste | crop-paste |" in md
    assert any("no leakage" in n for n in report.notes)
    assert any("kid, is, ic_lpips not computed" in n for n in report.notes)
    assert report.figures["quality"] == "figures/quality.png" and (run / "figures" / "quality.png").is_file()
    assert 'src="figures/quality.png"' in report_paths["html"].read_text()
