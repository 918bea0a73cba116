"""Split manifests: the 1/3 rule, disjointness, byte-identical determinism, change detection."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from anoaug.cli import app
from anoaug.data.formats import read_category
from anoaug.data.split import (
    SplitManifest,
    check_disjoint,
    ensure_split,
    make_split,
    n_gen_train,
    read_split,
    write_split,
)
from anoaug.errors import DatasetError, ManifestError
from tests.conftest import write_tiny_mvtec


@pytest.mark.parametrize(("n", "k"), [(2, 1), (3, 1), (5, 1), (6, 2), (9, 3), (10, 3), (30, 10), (31, 10)])
def test_rounding_rule(n: int, k: int) -> None:
    assert n_gen_train(n) == k


def test_roles_and_counts(demo_root: Path) -> None:
    data = read_category(demo_root, "cap")
    m = make_split(data, seed=0)
    roles = m.table.column("role").to_pylist()
    assert roles.count("train_normal") == len(data.normal_train)
    assert roles.count("eval_normal") == len(data.normal_test)
    for t in data.defect_types:
        n = sum(r.label == t for r in data.defects)
        gen = [r for r in m.rows("gen_train_defect") if r["label"] == t]
        ev = [r for r in m.rows("eval_defect") if r["label"] == t]
        assert len(gen) == n_gen_train(n) and len(gen) + len(ev) == n
        assert all(r["mask_relpath"] and r["mask_sha256"] for r in gen + ev)


def test_disjoint_for_many_seeds(demo_root: Path) -> None:
    data = read_category(demo_root, "fabric")
    seen_gen = set()
    for seed in range(20):
        m = make_split(data, seed=seed)
        gen = {r["relpath"] for r in m.rows("gen_train_defect")}
        ev = {r["relpath"] for r in m.rows(["eval_defect", "eval_normal"])}
        assert gen and ev and not gen & ev
        seen_gen.add(frozenset(gen))
    assert len(seen_gen) > 1  # the seed really changes the split


def test_leak_guard_rejects_overlap(demo_root: Path) -> None:
    m = make_split(read_category(demo_root, "cap"), seed=0)
    rows = m.table.to_pylist()
    leaked = dict(next(r for r in rows if r["role"] == "gen_train_defect"), role="eval_defect")
    with pytest.raises(ManifestError, match="both generator training and evaluation"):
        SplitManifest(pa.Table.from_pylist([*rows, leaked], schema=m.table.schema))
    # Same content under another name is a leak too.
    copy = dict(leaked, relpath="cap/test/elsewhere/copy.png")
    with pytest.raises(ManifestError, match="same content"):
        check_disjoint(pa.Table.from_pylist([*rows, copy], schema=m.table.schema))


def test_byte_identical_and_seed_recorded(demo_root: Path, tmp_path: Path) -> None:
    data = read_category(demo_root, "cap")
    a = write_split(make_split(data, seed=7), tmp_path / "a.parquet")
    b = write_split(make_split(data, seed=7), tmp_path / "b.parquet")
    c = write_split(make_split(data, seed=8), tmp_path / "c.parquet")
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    assert read_split(a).seed == 7


def test_changed_dataset_is_detected(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_tiny_mvtec(root, defects={"scratch": 6})
    data = read_category(root, "widget")
    out = tmp_path / "m" / "split.parquet"
    _, written = ensure_split(data, 0, out)
    assert written
    _, written = ensure_split(read_category(root, "widget"), 0, out)
    assert not written
    victim = root / data.defects[0].relpath
    victim.write_bytes(victim.read_bytes() + b"\0")  # changed bytes, same path
    with pytest.raises(ManifestError, match="sha256 differs"):
        ensure_split(read_category(root, "widget"), 0, out)
    with pytest.raises(ManifestError, match="seed 0, not 1"):
        ensure_split(read_category(root, "widget"), 1, out)


def test_added_image_is_detected(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_tiny_mvtec(root, defects={"scratch": 6})
    out = tmp_path / "split.parquet"
    ensure_split(read_category(root, "widget"), 0, out)
    good = sorted((root / "widget" / "train" / "good").iterdir())[0]
    shutil.copy(good, good.with_name("zzz_extra.png"))
    with pytest.raises(ManifestError, match="added or removed"):
        ensure_split(read_category(root, "widget"), 0, out)


def test_too_few_defects(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_tiny_mvtec(root, defects={"scratch": 1})
    with pytest.raises(DatasetError, match="defect type 'scratch' has 1 image"):
        make_split(read_category(root, "widget"), 0)


def test_never_writes_inside_dataset(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_tiny_mvtec(root, defects={"scratch": 3})
    m = make_split(read_category(root, "widget"), 0)
    with pytest.raises(ManifestError, match="inside the input dataset"):
        write_split(m, root / "widget" / "split.parquet", root=root)


def test_cli_split(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_tiny_mvtec(root, defects={"scratch": 3, "dent": 4})
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    out = tmp_path / "out" / "split.parquet"
    result = CliRunner().invoke(app, ["split", str(root), "--category", "widget", "--seed", "5", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "gen_train_defect=2" in result.output
    assert read_split(out).seed == 5
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before  # nothing written in the input
    bad = CliRunner().invoke(app, ["split", str(tmp_path / "missing"), "--category", "widget"])
    assert bad.exit_code != 0 and "Traceback" not in bad.output
