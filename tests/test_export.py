"""`anoaug export`: shards -> MVTec / Folder layout, read back by anomalib's Folder; a model trained on the pairs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from anoaug.shards import generate_category, iter_samples
from anoaug.shards.export import ExportError, export_shards, folder_kwargs
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def shards(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """crop-paste pairs of demo/cap: 2 per defect type (crack, scratch) in 1 shard."""
    from anoaug.data.formats import read_category
    from anoaug.data.split import make_split
    from anoaug.spec import spec_for_root

    spec = spec_for_root(demo_root, "cap", dataset="demo")
    data = read_category(demo_root, "cap", "auto")
    out = tmp_path_factory.mktemp("export-src") / "gen"
    generate_category(spec, data, make_split(data, 0), "crop-paste", out, count_per_type=2, seed=3)
    return out


def _by_key(shard_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray, dict]]:
    return {s.key: (s.image, s.mask, s.meta) for s in iter_samples(shard_dir)}


def _pixels(item: Any) -> tuple[np.ndarray, np.ndarray]:
    """uint8 HWC image and bool mask of an anomalib dataset item (images read as float in [0, 1])."""
    img = (item.image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return img, item.gt_mask.numpy().astype(bool)


def test_export_mvtec_round_trips_through_anomalib_folder(shards: Path, demo_root: Path, tmp_path: Path) -> None:
    from anomalib.data import Folder

    s = export_shards(shards, tmp_path / "out", "mvtec", normals_root=demo_root)
    cat = tmp_path / "out" / "cap"
    assert s.category_dir == cat and s.counts == {"crack": 2, "scratch": 2} and s.total == 4
    run = json.loads((shards / "run.json").read_text())
    assert s.normals == len(run["normals"]) == len(list((cat / "train" / "good").iterdir()))
    lineage = [json.loads(line) for line in (cat / "lineage.jsonl").read_text().splitlines()]
    assert sorted(r["image"] for r in lineage) == [f"test/{t}/00{i}.png" for t in ("crack", "scratch") for i in (0, 1)]
    samples = _by_key(shards)
    by_image = {str(cat / r["image"]): r["key"] for r in lineage}
    for n in json.loads((cat / "export.json").read_text())["normals"]:  # byte copies of the training normals
        assert (cat / n["image"]).read_bytes() == (demo_root / n["source"]).read_bytes()

    dm = Folder(**folder_kwargs(cat), num_workers=0, val_split_mode="none")
    dm.setup()
    rows = dm.test_data.samples
    abnormal = [i for i in range(len(rows)) if rows.iloc[i].label_index == 1]
    assert len(abnormal) == 4 and dm.test_data.task.value == "segmentation"
    for i in abnormal:
        image, mask, meta = samples[by_image[rows.iloc[i].image_path]]
        assert Path(rows.iloc[i].image_path).parent.name == meta["defect_type"]  # the type folder
        got_image, got_mask = _pixels(dm.test_data[i])
        assert np.array_equal(got_image, image) and np.array_equal(got_mask, mask) and mask.any()
    assert len(dm.train_data) + len(rows) - 4 == s.normals  # every normal is a normal (train or test split)


def test_export_folder_layout_and_refusals(shards: Path, demo_root: Path, tmp_path: Path) -> None:
    from anoaug.data.formats import read_category

    s = export_shards(shards, tmp_path / "f", "folder")
    cat = tmp_path / "f" / "cap"
    assert s.normals == 0 and not (cat / "normal").exists()
    assert sorted(p.relative_to(cat).as_posix() for p in (cat / "mask").rglob("*.png")) == [
        f"mask/{t}/00{i}_mask.png" for t in ("crack", "scratch") for i in (0, 1)
    ]
    data = read_category(tmp_path / "f", "cap", "folder")  # anoaug's own folder reader agrees
    assert sorted(r.label for r in data.defects) == ["crack", "crack", "scratch", "scratch"]
    assert all(r.mask_relpath for r in data.defects)
    with pytest.raises(ExportError, match="exported without --normals"):
        folder_kwargs(cat)
    assert folder_kwargs(cat, normal_dir="/x")["normal_dir"] == "/x"

    with pytest.raises(ExportError, match="not empty"):
        export_shards(shards, tmp_path / "f", "mvtec")
    for inside in (demo_root / "exported", demo_root / "cap" / "exported", shards / "exported", cat / "more"):
        with pytest.raises(ExportError, match="refusing to export inside"):
            export_shards(shards, inside, "mvtec")
        assert not inside.exists()
    with pytest.raises(ExportError, match="unknown layout"):
        export_shards(shards, tmp_path / "g", "coco")
    with pytest.raises(ExportError, match="not a generation directory"):
        export_shards(demo_root, tmp_path / "g")
    with pytest.raises(ExportError, match="found 0 of the generation's"):
        export_shards(shards, tmp_path / "g", normals_root=tmp_path / "f")
    (tmp_path / "empty").mkdir()
    export_shards(shards, tmp_path / "empty", "mvtec")  # an existing empty folder is fine
    assert (tmp_path / "empty" / "cap" / "test" / "crack" / "000.png").is_file()
    assert not [p for p in tmp_path.iterdir() if ".export-" in p.name]  # no temp folder left behind


def test_cli_export(shards: Path, tmp_path: Path) -> None:
    code, text = run_cli(["export", str(shards), "--out", str(tmp_path / "o"), "--layout", "folder"])
    assert code == 0, text
    assert "exported 4 pairs (crack 2, scratch 2)" in text and "folder layout" in text
    assert (tmp_path / "o" / "cap" / "defect" / "scratch" / "001.png").is_file()
    from typer.testing import CliRunner

    from flows.cli import app

    res = CliRunner().invoke(app, ["export", str(shards), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and res.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'o'}: already exists and is not empty; export into a new folder"
    ]


@pytest.mark.slow
def test_supervised_anomalib_model_trains_on_exported_pairs(shards: Path, demo_root: Path, tmp_path: Path) -> None:
    """The README snippet: PairsInTrainFolder puts our pairs in the training split; SuperSimpleNet (supervised,
    random-init ResNet-18, 128 px, 1 epoch, CPU) fits on them through anomalib's Engine and predicts."""
    import torch
    from anomalib.data import Folder
    from anomalib.engine import Engine
    from anomalib.models import Supersimplenet
    from torchvision.models import resnet18

    from anoaug.shards.pairs_datamodule import PairsInTrainFolder

    torch.set_num_threads(1)
    export_shards(shards, tmp_path / "out", "mvtec")
    cat = tmp_path / "out" / "cap"
    normals = tmp_path / "normals"  # a few normal images of the user's own
    normals.mkdir()
    for p in sorted((demo_root / "cap" / "train" / "good").iterdir())[:4]:
        shutil.copy(p, normals / p.name)

    data = PairsInTrainFolder(**folder_kwargs(cat, normal_dir=normals), train_batch_size=4, num_workers=0)
    data.setup()
    samples = _by_key(shards)
    records = [json.loads(line) for line in (cat / "lineage.jsonl").read_text().splitlines()]
    lineage = {str(cat / r["image"]): r["key"] for r in records}
    train = data.train_data
    labels = list(train.samples.label_index)
    assert sorted(labels) == [0] * 4 + [1] * 4 and len(data.test_data) == 0
    for i, label in enumerate(labels):
        if label == 1:
            image, mask, _ = samples[lineage[train.samples.iloc[i].image_path]]
            got_image, got_mask = _pixels(train[i])
            assert np.array_equal(got_image, image) and np.array_equal(got_mask, mask)

    model = Supersimplenet(
        backbone=resnet18(weights=None),
        layers=["layer2", "layer3"],
        supervised=True,
        pre_processor=Supersimplenet.configure_pre_processor(image_size=(128, 128)),
        evaluator=False,
        visualizer=False,
    )
    engine = Engine(max_epochs=1, accelerator="cpu", devices=1, logger=False, default_root_dir=tmp_path / "results")
    engine.fit(model, datamodule=data)
    test = Folder(**folder_kwargs(cat, normal_dir=normals), num_workers=0, eval_batch_size=4, val_split_mode="none")
    test.setup()
    preds = engine.predict(model, dataloaders=test.test_dataloader())
    maps = torch.cat([p.anomaly_map for p in preds])
    assert maps.shape[1:] == (128, 128) and len(maps) == len(test.test_data) >= 4
    assert torch.isfinite(maps).all() and torch.isfinite(torch.cat([p.pred_score for p in preds])).all()
