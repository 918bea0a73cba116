"""The evaluation protocol comes from the split manifest, and the leakage guard refuses eval images in training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from anoaug.data.formats import read_category
from anoaug.data.io import load_image, load_mask
from anoaug.data.split import make_split
from anoaug.errors import AnoaugError
from anoaug.evaluation import LeakageError, Protocol, SyntheticPair, check_no_leakage, parse_arm, run_evaluation
from anoaug.evaluation.protocol import Sample, load_rows, load_synthetic
from anoaug.spec import spec_for_root


@pytest.fixture
def widget(make_mvtec, tmp_path: Path):  # noqa: ANN001, ANN201
    root = make_mvtec(tmp_path / "mvtec", n_train=4, n_test_good=3, defects={"scratch": 4, "dent": 3})
    data = read_category(root, "widget")
    return data, make_split(data, seed=0)


def test_protocol_roles_from_manifest(widget) -> None:  # noqa: ANN001
    data, split = widget
    p = Protocol.from_split(split)
    eval_paths = {r["relpath"] for r in p.eval_rows}
    assert {r["role"] for r in p.eval_rows} == {"eval_normal", "eval_defect"}
    assert eval_paths.isdisjoint(r["relpath"] for r in p.train_normal)
    assert eval_paths.isdisjoint(r["relpath"] for r in p.train_defect)  # nothing the generator saw is evaluated
    assert all(r["role"] == "gen_train_defect" for r in p.train_defect)
    assert p.counts() == {"train_normal": 4, "train_defect_real": 2, "eval_normal": 3, "eval_defect": 5}


def test_leakage_guard(widget) -> None:  # noqa: ANN001
    data, split = widget
    p = Protocol.from_split(split)
    eval_set = load_rows(data, p.eval_rows)
    train = load_rows(data, p.train_normal)
    assert check_no_leakage(eval_set, {"none": train}) == {"none": 4}
    # the same eval image (by relpath) in a train set
    with pytest.raises(LeakageError, match="real-few"):
        check_no_leakage(eval_set, {"real-few": train + [eval_set[-1]]})
    # an eval image's pixels under a synthetic name
    e = eval_set[-1]
    copy = Sample("cutpaste:000", e.image.copy(), e.mask, e.defect_type, "synthetic", {})
    with pytest.raises(LeakageError, match="same pixels"):
        check_no_leakage(eval_set, {"cutpaste": train + [copy]})
    # a synthetic sample made from an eval image (named in its lineage)
    made = Sample("cutpaste:001", np.zeros_like(e.image), e.mask, e.defect_type, "synthetic", {"src": [e.id]})
    with pytest.raises(LeakageError, match="made from"):
        check_no_leakage(eval_set, {"cutpaste": train + [made]})


def test_run_evaluation_refuses_leaky_shards(widget, tmp_path: Path) -> None:  # noqa: ANN001
    data, split = widget
    row = split.rows("eval_defect")[0]
    leaked = SyntheticPair(
        load_image(data.path(row["relpath"])), load_mask(data.path(row["mask_relpath"])), row["label"], "k0"
    )
    spec = spec_for_root(data.root, "widget", evaluation={"image_size": 16, "epochs": 1})
    with pytest.raises(LeakageError):
        run_evaluation(spec, data, split, {"none": None, "cutpaste": [leaked]}, tmp_path / "run", seeds=[0])
    assert not (tmp_path / "run" / "runs").exists()  # refused before any training


def test_parse_arm() -> None:
    assert parse_arm("none").has_defects is False
    assert parse_arm("real-few") == parse_arm("real-few") and parse_arm("real-few").use_real
    a = parse_arm("cutpaste+real")
    assert (a.generator, a.use_real) == ("cutpaste", True)
    assert parse_arm("perlin").generator == "perlin" and not parse_arm("perlin").use_real


def write_shards(shard_dir: Path, pairs: list[tuple[np.ndarray, np.ndarray, str]], category: str) -> Path:
    """Tiny webdataset shards in the anoaug layout (png, mask.png, json)."""
    import cv2
    import webdataset as wds

    shard_dir.mkdir(parents=True, exist_ok=True)
    with wds.TarWriter(str(shard_dir / "shard-000000.tar")) as sink:
        for i, (img, mask, dtype) in enumerate(pairs):
            sink.write(
                {
                    "__key__": f"s{i:05d}",
                    "png": cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))[1].tobytes(),
                    "mask.png": cv2.imencode(".png", mask.astype(np.uint8) * 255)[1].tobytes(),
                    "json": json.dumps({"defect_type": dtype, "generator": "test", "category": category}).encode(),
                }
            )
    return shard_dir


def test_load_synthetic_from_shards_and_checks(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pairs = [(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8), rng.random((20, 20)) > 0.7, t)
             for t in ("dent", "scratch", "dent", "dent")]  # fmt: skip
    d = write_shards(tmp_path / "shards", pairs, "widget")
    got = load_synthetic("x", d, "widget", ["dent", "scratch"], max_per_type=2)
    assert [s.defect_type for s in got] == ["dent", "scratch", "dent"]  # capped at 2 per type
    assert np.array_equal(got[1].image, pairs[1][0]) and np.array_equal(got[1].mask, pairs[1][1])
    with pytest.raises(AnoaugError, match="category"):
        load_synthetic("x", d, "other", ["dent", "scratch"], 5)
    with pytest.raises(AnoaugError, match="defect type"):
        load_synthetic("x", d, "widget", ["dent"], 5)
    # any iterable of (image, mask, type) tuples is a source too
    assert len(load_synthetic("x", [pairs[0]], "widget", ["dent"], 5)) == 1


def test_cli_shard_mapping(tmp_path: Path) -> None:
    from anoaug.cli import _shard_sources

    (tmp_path / "cutpaste").mkdir()
    got = _shard_sources(["none", "real-few", "cutpaste", "perlin+real"], [str(tmp_path), f"perlin={tmp_path}/p"])
    assert got == {"none": None, "real-few": None, "cutpaste": tmp_path / "cutpaste", "perlin+real": tmp_path / "p"}
    with pytest.raises(AnoaugError, match="no shards"):
        _shard_sources(["cutpaste", "perlin"], [str(tmp_path)])
