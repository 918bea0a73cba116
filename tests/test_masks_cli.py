"""`anoaug masks` end to end on the demo dataset: N=500 deterministic masks inside the object."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image
from typer.testing import CliRunner

from anoaug.cli import app

runner = CliRunner()


def read_png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_demo_cap_500_deterministic_inside_object(demo_root: Path, tmp_path: Path) -> None:
    from anoaug.data.demo import render_sample
    from anoaug.masks.run import run_masks
    from anoaug.spec import resolve_spec

    out1, out2 = tmp_path / "a", tmp_path / "b"
    res = runner.invoke(
        app, ["masks", str(demo_root), "--category", "cap", "--count", "500", "--out", str(out1)]
    )
    assert res.exit_code == 0, res.output
    assert "kind: object" in res.output and "wrote 500 masks" in res.output
    run_masks(resolve_spec(demo_root, "cap"), 500, out2, seed=0)

    table = pq.read_table(out1 / "masks.parquet")
    assert table.num_rows == 500
    assert table.equals(pq.read_table(out2 / "masks.parquet"))
    rows = table.to_pylist()
    assert [r["index"] for r in rows] == list(range(500))
    assert {r["defect_type"] for r in rows} == {"crack", "scratch"}
    assert all(r["source_mask"].startswith("cap/ground_truth/") for r in rows)

    truth: dict[str, np.ndarray] = {}
    for r in rows:
        m1 = (out1 / r["mask_path"]).read_bytes()
        assert m1 == (out2 / r["mask_path"]).read_bytes()  # same seed: same masks bit for bit
        mask = read_png(out1 / r["mask_path"])
        assert set(np.unique(mask)) <= {0, 255}
        defect = mask == 255
        assert int(defect.sum()) == r["area"] > 0
        tri = read_png(out1 / r["trimap_path"])
        assert ((tri == 255) == defect).all()
        rel = r["normal_relpath"]  # cap/train/good/NNN.png
        if rel not in truth:
            truth[rel] = render_sample("cap", "good", int(Path(rel).stem), split="train").object_mask
        assert not (defect & ~truth[rel]).any(), f"sample {r['index']} leaves the object"

    summary = json.loads((out1 / "summary.json").read_text())
    assert summary == json.loads((out2 / "summary.json").read_text())
    assert summary["count_written"] == 500 and summary["kind"] == "object"
    assert 0.5 < summary["acceptance_rate"] <= 1.0
    assert summary["foreground"]["flagged"] == []
    assert len(summary["foreground"]["images"]) == 36
    for dtype in ("crack", "scratch"):
        t = summary["per_type"][dtype]
        assert t["synthesized"] == 250 and t["area_real"]["n"] == 3
        # synthesized areas follow the real ones (scale 0.85-1.15, so within about 0.7x-1.35x)
        assert 0.6 < t["area_synth"]["median"] / t["area_bank"]["median"] < 1.5
    sheet = Image.open(out1 / "contact_sheet.png")
    assert sheet.size[0] >= 8 * 128 and sheet.size[1] >= 4 * 128
    assert (tmp_path / "a" / "split-seed0.parquet").is_file()
    assert not list(demo_root.rglob("*.parquet"))  # nothing written into the dataset


def test_fabric_auto_texture_and_seed_changes_masks(demo_root: Path, tmp_path: Path) -> None:
    args = ["masks", str(demo_root), "-c", "fabric", "-n", "12"]
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "f0")])
    assert res.exit_code == 0, res.output
    assert "kind: texture" in res.output and "detected automatically" in res.output
    rows = pq.read_table(tmp_path / "f0" / "masks.parquet").to_pylist()
    assert {r["placement"] for r in rows} == {"free"} and len(rows) == 12
    tri = read_png(tmp_path / "f0" / rows[0]["trimap_path"])
    assert set(np.unique(tri)) == {127, 255}  # the whole texture is foreground
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "f1"), "--seed", "1"])
    assert res.exit_code == 0, res.output
    other = pq.read_table(tmp_path / "f1" / "masks.parquet").to_pylist()
    assert [r["tx"] for r in rows] != [r["tx"] for r in other]


def test_kind_override_and_spec_reference(demo_root: Path, tmp_path: Path, monkeypatch) -> None:
    res = runner.invoke(
        app,
        ["masks", str(demo_root), "-c", "cap", "-n", "4", "--kind", "texture", "--out", str(tmp_path / "o")],
    )
    assert res.exit_code == 0, res.output
    assert "kind: texture (set by the spec or --kind)" in res.output
    assert {r["placement"] for r in pq.read_table(tmp_path / "o" / "masks.parquet").to_pylist()} == {"free"}
    monkeypatch.setenv("ANOAUG_DEMO_ROOT", str(demo_root))
    res = runner.invoke(app, ["masks", "demo/cap", "-n", "4", "--out", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    assert "kind: object (set by the spec" in res.output
    res = runner.invoke(
        app, ["masks", str(demo_root), "-c", "cap", "--kind", "blob", "--out", str(tmp_path / "x")]
    )
    assert res.exit_code == 2 and "--kind must be object or texture" in res.output


def test_refuses_to_write_inside_the_dataset(demo_root: Path) -> None:
    res = runner.invoke(app, ["masks", str(demo_root), "-c", "cap", "-n", "2", "--out", str(demo_root / "x")])
    assert res.exit_code == 2 and "refusing to write inside the input dataset" in res.output
    assert not (demo_root / "x").exists()


def test_run_masks_reuses_given_data_and_split(demo_root: Path, tmp_path: Path) -> None:
    from anoaug.data.formats import read_category
    from anoaug.data.split import make_split
    from anoaug.masks.run import run_masks
    from anoaug.spec import resolve_spec

    data = read_category(demo_root, "fabric")
    split = make_split(data, seed=0)
    res = run_masks(resolve_spec(demo_root, "fabric"), 6, tmp_path / "o", seed=0, data=data, split=split)
    assert res.written == 6 and res.kind == "texture" and res.failures == []
    assert not (tmp_path / "o" / "split-seed0.parquet").exists()
    assert res.summary["split_manifest"] is None
    bank = {r["source_mask"] for r in pq.read_table(tmp_path / "o" / "masks.parquet").to_pylist()}
    assert bank <= {r.mask_relpath for r in split.records("gen_train_defect")}


def test_foreground_too_small_is_a_clear_error(tmp_path: Path, make_mvtec) -> None:
    root = make_mvtec(tmp_path / "ds", defects={"scratch": 3}, size=32)
    spec = tmp_path / "widget.yaml"
    spec.write_text(
        f"dataset: {{name: tiny, format: mvtec, root: '{root}', category: widget, kind: object}}\n"
        "masks: {erode: 20, max_attempts: 30, max_bad_share: 1.0}\n"  # bad images of noise: not this test's point
    )
    res = runner.invoke(app, ["masks", str(spec), "-n", "3", "--out", str(tmp_path / "out")])
    assert res.exit_code == 2, res.output
    assert "no mask could be synthesized for widget" in res.output
    assert "no placement for a 'scratch' mask after 30 attempt" in res.output
