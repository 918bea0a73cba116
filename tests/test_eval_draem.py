"""anomalib's DRÆM trained with our defect pairs as its anomaly source (Perlin only in the 'none' arm)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from anomalib.data import ImageBatch
from anomalib.data.utils.generators.perlin import PerlinAnomalyGenerator
from PIL import Image

from anoaug.data.formats import read_category
from anoaug.data.io import load_image, load_mask
from anoaug.data.split import make_split
from anoaug.errors import AnoaugError
from anoaug.evaluation import LeakageError, SyntheticPair, run_evaluation
from anoaug.evaluation.datasets import to_tensors
from anoaug.evaluation.detectors.draem.lightning_model import build_draem
from anoaug.evaluation.detectors.draem.torch_model import PairAugmenter
from anoaug.evaluation.protocol import Sample, load_synthetic
from anoaug.report import Report, write_report
from anoaug.spec import spec_for_root
from tests.test_eval_protocol import write_shards

SIZE = 64


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _shard_pairs(tmp_path: Path, n: int = 3) -> list[Sample]:
    """Synthetic pairs with irregular masks, written as webdataset shards and read back."""
    rng = np.random.default_rng(7)
    pairs = []
    for i in range(n):
        img = rng.integers(150, 255, (SIZE, SIZE, 3), dtype=np.uint8)
        mask = np.zeros((SIZE, SIZE), bool)
        y, x = 5 + 9 * i, 40 - 11 * i
        mask[y : y + 7 + 3 * i, x : x + 12 - i] = True
        mask[y + 2, x - 3 : x] = True  # asymmetric, so a flipped mask never equals another
        pairs.append((img, mask, "dent"))
    shards = write_shards(tmp_path / "shards", pairs, "widget")
    return load_synthetic("test", shards, "widget", ["dent"], max_per_type=10)


def _normals(n: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 100, (n, 3, SIZE, SIZE)).astype(np.float32) / 255.0)


def test_loss_gets_exactly_our_shard_masks(tmp_path: Path) -> None:
    pairs = _shard_pairs(tmp_path)
    shard_images, shard_masks, _ = to_tensors(pairs)
    torch.manual_seed(0)
    model, source = build_draem(pairs, flips=False)
    assert isinstance(model.augmenter, PairAugmenter) and source == "pairs (synthetic, 3)"
    model.augmenter.probability = 1.0  # every image anomalous, so every mask must be one of ours
    seen: dict[str, tuple] = {}
    model.loss.register_forward_hook(lambda _m, args, _out: seen.__setitem__("loss", args))
    model.model.register_forward_hook(lambda _m, args, _out: seen.__setitem__("model", args))
    model.log = lambda *a, **k: None  # training_step outside a Trainer
    clean = _normals(4)
    batch = ImageBatch(image=clean.clone(), gt_mask=torch.zeros(4, SIZE, SIZE, dtype=torch.bool))
    out = model.training_step(batch)  # anomalib's own training step, networks and loss
    assert torch.isfinite(out["loss"])

    target, _recon, masks, _pred = seen["loss"]
    (augmented,) = seen["model"]
    assert torch.equal(target, clean)  # DRÆM's reconstruction target stays the clean image
    assert masks.shape == (4, 1, SIZE, SIZE)
    for i in range(4):
        match = [k for k in range(len(pairs)) if torch.equal(masks[i, 0].bool(), shard_masks[k])]
        assert len(match) == 1, "the mask fed to the loss is not one of the shard masks"
        m = shard_masks[match[0]]
        assert torch.equal(augmented[i][:, m], shard_images[match[0]][:, m])  # our defect pixels ...
        assert torch.equal(augmented[i][:, ~m], clean[i][:, ~m])  # ... on the normal image


def test_pair_augmenter_probability_and_flips(tmp_path: Path) -> None:
    pairs = _shard_pairs(tmp_path)
    _, shard_masks, _ = to_tensors(pairs)
    variants = [m for k in shard_masks for m in (k, k.flip(-1), k.flip(-2), k.flip(-1).flip(-2))]
    torch.manual_seed(1)
    aug = PairAugmenter.from_samples(pairs, probability=0.5, flips=True)
    imgs = _normals(64, seed=1)
    out, masks = aug(imgs)
    empty = ~masks.flatten(1).any(1)
    assert 10 < int(empty.sum()) < 54  # about half stay normal, as with Draem's Perlin generator
    assert torch.equal(out[empty], imgs[empty])
    for m in masks[~empty, 0]:
        assert any(torch.equal(m.bool(), v) for v in variants)
    with pytest.raises(AnoaugError, match="non-empty mask"):
        PairAugmenter(torch.zeros(2, 3, 8, 8), torch.zeros(2, 1, 8, 8))


def test_none_arm_keeps_perlin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # Draem's default dtd_dir is ./datasets/dtd: nothing may be made or fetched
    model, source = build_draem([])
    assert type(model.augmenter) is PerlinAnomalyGenerator and not model.augmenter.anomaly_source_paths
    assert source == "perlin (Perlin-noise textures (no DTD))"
    assert not (tmp_path / "datasets").exists()
    torch.manual_seed(0)
    model.augmenter.probability = 1.0
    _, masks = model.augmenter(_normals(4))
    assert masks.flatten(1).any(1).all()
    _, shard_masks, _ = to_tensors(_shard_pairs(tmp_path))
    assert not any(torch.equal(m[0].bool(), k) for m in masks for k in shard_masks)

    dtd = tmp_path / "dtd" / "banded"
    dtd.mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(dtd / "t.jpg")
    model, source = build_draem([], str(tmp_path / "dtd"))
    assert source == "perlin (DTD textures)" and len(model.augmenter.anomaly_source_paths) == 1


@pytest.fixture
def widget(make_mvtec, tmp_path: Path):  # noqa: ANN001, ANN201
    root = make_mvtec(tmp_path / "mvtec", n_train=4, n_test_good=3, defects={"scratch": 4, "dent": 3}, size=SIZE)
    data = read_category(root, "widget")
    return data, make_split(data, seed=0)


def _paste(data, split) -> list[SyntheticPair]:  # noqa: ANN001
    """Generator-training defects pasted onto training normals (test-only synthetic pairs)."""
    normals = [load_image(data.path(r["relpath"])) for r in split.rows("train_normal")]
    out = []
    for k, r in enumerate(split.rows("gen_train_defect")):
        img, mask = load_image(data.path(r["relpath"])), load_mask(data.path(r["mask_relpath"]))
        base = normals[k % len(normals)].copy()
        base[mask] = img[mask]
        out.append(SyntheticPair(base, mask, r["label"], f"p{k}"))
    return out


def test_runner_guards(widget, tmp_path: Path) -> None:  # noqa: ANN001
    data, split = widget
    row = split.rows("eval_defect")[0]
    leaked = SyntheticPair(
        load_image(data.path(row["relpath"])), load_mask(data.path(row["mask_relpath"])), row["label"], "k0"
    )
    spec = spec_for_root(data.root, "widget", evaluation={"image_size": SIZE, "epochs": 1, "models": ["draem"]})
    with pytest.raises(LeakageError):
        run_evaluation(spec, data, split, {"none": None, "cutpaste": [leaked]}, tmp_path / "run", seeds=[0])
    assert not (tmp_path / "run" / "runs").exists()  # refused before any training
    spec = spec_for_root(data.root, "widget", evaluation={"image_size": 48, "models": ["draem"]})
    with pytest.raises(AnoaugError, match="draem needs"):
        run_evaluation(spec, data, split, {"none": None}, tmp_path / "run2", seeds=[0])


@pytest.mark.slow
def test_draem_end_to_end_in_runner_and_report(widget, tmp_path: Path) -> None:  # noqa: ANN001
    data, split = widget
    evaluation = {"image_size": SIZE, "epochs": 1, "batch_size": 4, "models": ["draem"], "seeds": [0]}
    spec = spec_for_root(data.root, "widget", evaluation=evaluation)
    arms = {"none": None, "real-few": None, "paste": _paste(data, split)}
    run_dir = run_evaluation(spec, data, split, arms, tmp_path / "run")

    n_eval = len(split.rows(("eval_normal", "eval_defect")))
    sources = {}
    for arm in arms:
        d = json.loads((run_dir / "runs" / "draem" / arm / "seed0" / "metrics.json").read_text())
        sources[arm] = d["anomaly_source"]
        assert {"image_auroc", "pixel_auroc", "pixel_aupro"} <= set(d["metrics"])
        assert all(np.isfinite(v) for v in d["metrics"].values())
        with np.load(run_dir / "runs" / "draem" / arm / "seed0" / "predictions.npz") as z:
            assert z["scores"].shape == (n_eval,) and z["maps"].shape == (n_eval, SIZE, SIZE)
            assert np.isfinite(z["scores"]).all() and np.isfinite(z["maps"].astype(np.float32)).all()
    n_real = len(split.rows("gen_train_defect"))
    assert sources == {
        "none": "perlin (Perlin-noise textures (no DTD))",
        "real-few": f"pairs (real, {n_real})",
        "paste": f"pairs (synthetic, {n_real})",
    }

    write_report(run_dir)
    report = Report.model_validate_json((run_dir / "report.json").read_text())
    assert {(r.model, r.arm) for r in report.runs} == {("draem", a) for a in arms}
    assert any(g.model == "draem" and g.arm == "paste" and g.baseline == "none" for g in report.gains)
    assert "draem" in (run_dir / "report.md").read_text()
    assert any("DRÆM" in n for n in report.notes)
