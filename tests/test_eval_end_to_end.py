"""End to end on the demo data with tiny settings: `anoaug evaluate` then `anoaug report`."""

from __future__ import annotations

import csv
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from anoaug.cli import app
from anoaug.data.formats import read_category
from anoaug.data.io import load_image, load_mask
from anoaug.data.split import make_split, write_split
from anoaug.report import Report
from tests.test_eval_protocol import write_shards


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        if tag == "img":
            self.images.append(dict(attrs)["src"] or "")


def _paste_pairs(data, split, per_defect: int = 3) -> list[tuple[np.ndarray, np.ndarray, str]]:  # noqa: ANN001
    """Test-only synthetic pairs: generator-training defect pixels pasted onto training normals."""
    normals = [load_image(data.path(r["relpath"])) for r in split.rows("train_normal")]
    out = []
    for k, r in enumerate(split.rows("gen_train_defect")):
        img, mask = load_image(data.path(r["relpath"])), load_mask(data.path(r["mask_relpath"]))
        for j in range(per_defect):
            base = normals[(k * per_defect + j) % len(normals)].copy()
            base[mask] = img[mask]
            out.append((base, mask, r["label"]))
    return out


@pytest.mark.slow
def test_evaluate_and_report_on_demo(demo_root: Path, tmp_path: Path) -> None:
    data = read_category(demo_root, "fabric", "auto")
    split = make_split(data, seed=0)
    split_path = write_split(split, tmp_path / "split.parquet")
    shards = write_shards(tmp_path / "shards" / "paste", _paste_pairs(data, split), "fabric")
    spec = {
        "dataset": {"name": "demo", "format": "auto", "root": str(demo_root), "category": "fabric"},
        "evaluation": {
            "arms": ["none", "real-few", "paste"],
            "seeds": [0, 1],
            "models": ["segmenter", "classifier", "padim"],
            "image_size": 32,
            "epochs": 1,
            "batch_size": 8,
            "widths": [8, 16],
            "classifier_image_size": 32,
            "classifier_epochs": 1,
            "max_synthetic_per_type": 6,
        },
    }
    spec_path = tmp_path / "spec" / "fabric.yaml"
    spec_path.parent.mkdir()
    spec_path.write_text(yaml.safe_dump(spec))
    run_dir = tmp_path / "run"
    runner = CliRunner()
    args = ["evaluate", str(spec_path), "--out", str(run_dir), "--split", str(split_path),
            "--shards", f"paste={shards}", "--no-report"]  # fmt: skip
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output

    # Only held-out images were evaluated, and all of them.
    eval_paths = {r["relpath"] for r in split.rows(("eval_normal", "eval_defect"))}
    with np.load(run_dir / "runs" / "segmenter" / "paste" / "seed1" / "predictions.npz") as z:
        assert set(z["ids"].tolist()) == eval_paths
        assert z["maps"].shape == (len(eval_paths), 32, 32)

    res = runner.invoke(app, ["report", str(run_dir)])
    assert res.exit_code == 0, res.output
    report = Report.model_validate_json((run_dir / "report.json").read_text())
    # segmenter 3 arms + classifier 2 arms (no defects in 'none') + padim 1, each for 2 seeds
    assert len(report.runs) == 2 * (3 + 2 + 1)
    assert {(r.model, r.arm) for r in report.runs} >= {("segmenter", "none"), ("segmenter", "paste"),
                                                       ("classifier", "paste"), ("padim", "none")}  # fmt: skip
    seg_none = [r for r in report.runs if r.model == "segmenter" and r.arm == "none"]
    assert all("padim" in r.implementation for r in seg_none)  # documented one-class fallback
    for r in report.runs:
        for value in r.metrics.values():
            assert 0.0 <= value <= 1.0
    by_seed = {(r.model, r.arm, r.seed): r.metrics for r in report.runs}
    gain = next(g for g in report.gains if (g.model, g.arm, g.baseline, g.metric)
                == ("segmenter", "paste", "real-few", "image_auroc"))  # fmt: skip
    expect = [by_seed["segmenter", "paste", s]["image_auroc"] - by_seed["segmenter", "real-few", s]["image_auroc"]
              for s in (0, 1)]  # fmt: skip
    assert gain.differences == pytest.approx(expect)
    assert gain.stat.n == 2 and gain.stat.half_width is not None
    assert any(g.baseline == "none" and g.arm == "paste" for g in report.gains)
    assert any(s.metric == "ac_accuracy" and s.arm == "paste" for s in report.summary)

    # HTML renders: it parses, has the tables, and every image it links exists.
    parser = _Links()
    parser.feed((run_dir / "report.html").read_text())
    assert "table" in parser.tags
    assert parser.images, "the report links no figures"
    for src in parser.images:
        assert (run_dir / src).is_file(), src
    for prefix in ("gain_segmenter_vs_none", "gain_segmenter_vs_real-few", "pr_segmenter", "samples_paste",
                   "samples_real", "maps_segmenter_paste", "confusion_paste"):  # fmt: skip
        assert prefix in report.figures
        assert any(src == report.figures[prefix] for src in parser.images)
    assert "Gain over 'none'" in (run_dir / "report.md").read_text()

    with (run_dir / "results.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(report.runs)
    assert {"model", "arm", "seed", "image_AUROC", "pixel_AUPRO", "AC_accuracy"} <= set(rows[0])
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["status"] == "complete" and meta["protocol"]["leakage_check"] == "passed"
    assert meta["generation_quality"]["computed"] is False
