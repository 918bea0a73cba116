"""The benchmark summary across categories in the papers' layout, on hand-made report.json files."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from anoaug.evaluation.metrics import mean_ci
from anoaug.pipeline.summary import BENCHMARK_METRICS, build_summary, write_summary

SEEDS = [0, 1, 2]
AD_METRICS = [m for m in BENCHMARK_METRICS if m != "ac_accuracy"]


def _report(path: Path, base: float, quality: dict[str, Any] | None) -> Path:
    """A report.json with arms none/real-few/crop-paste, a segmenter (AD metrics) and a classifier (AC)."""
    summary = []
    for i, arm in enumerate(["none", "real-few", "crop-paste"]):
        for j, metric in enumerate(BENCHMARK_METRICS):
            model = "classifier" if metric == "ac_accuracy" else "segmenter"
            if model == "classifier" and arm == "none":
                continue
            values = [base + 0.05 * i + 0.01 * j + 0.02 * s for s in SEEDS]
            summary.append(
                {"model": model, "arm": arm, "metric": metric, "values": values, "seeds": SEEDS,
                 "stat": mean_ci(values)}
            )  # fmt: skip
    report = {
        "models": ["segmenter", "classifier"],
        "arms": [{"name": a} for a in ("none", "real-few", "crop-paste")],
        "summary": summary,
        "generation_quality": quality if quality is not None else {"computed": False, "note": "no weights"},
    }
    path.write_text(json.dumps(report))
    return path


QUALITY = {
    "crop-paste": {"fidelity_mmd": 0.12, "diversity": 0.3, "mask_alignment": 0.97, "memorisation": 0.01,
                   "kid": None, "is": None, "ic_lpips": None, "networks": {"computed": [], "reason": "no weights"}},
    "note": "network-based figures not computed",
}  # fmt: skip


def _categories(tmp_path: Path, quality_a: dict[str, Any] | None) -> list[dict[str, Any]]:
    return [
        {"name": "demo/cap", "status": "ok", "report_json": str(_report(tmp_path / "a.json", 0.5, quality_a))},
        {"name": "demo/fabric", "status": "ok", "report_json": str(_report(tmp_path / "b.json", 0.7, None))},
        {"name": "demo/broken", "status": "failed", "error": "stage 'evaluate' failed: boom"},
        {"name": "demo/lost", "status": "ok", "report_json": str(tmp_path / "missing.json")},
    ]


def test_average_row_is_the_mean_with_a_ci_over_seeds(tmp_path: Path) -> None:
    b = build_summary(_categories(tmp_path, QUALITY))["benchmark"]
    assert b["arms"] == ["none", "real-few", "crop-paste"] and b["metrics"] == list(BENCHMARK_METRICS)
    rows = {r["category"]: r for r in b["rows"]}
    for arm in b["arms"]:
        for m in BENCHMARK_METRICS:
            if arm == "none" and m == "ac_accuracy":
                assert m not in b["average"]["cells"].get(arm, {})
                continue
            a, f = rows["demo/cap"]["cells"][arm][m], rows["demo/fabric"]["cells"][arm][m]
            avg = b["average"]["cells"][arm][m]
            assert avg["mean"] == pytest.approx((a["mean"] + f["mean"]) / 2)
            per_seed = (np.array(a["values"]) + np.array(f["values"])) / 2
            assert avg["half_width"] == pytest.approx(mean_ci(list(per_seed))["half_width"])
            assert avg["categories"] == 2
    # AC accuracy comes from the classifier, the AD metrics from the segmenter
    assert rows["demo/cap"]["cells"]["crop-paste"]["ac_accuracy"]["model"] == "classifier"
    assert rows["demo/cap"]["cells"]["crop-paste"]["image_auroc"]["model"] == "segmenter"


def test_failed_and_missing_categories_are_rows(tmp_path: Path) -> None:
    s = build_summary(_categories(tmp_path, QUALITY))
    rows = {r["category"]: r for r in s["benchmark"]["rows"]}
    broken = {"category": "demo/broken", "status": "failed", "error": "stage 'evaluate' failed: boom"}
    assert rows["demo/broken"] == broken
    assert rows["demo/lost"]["status"] == "failed" and "no report.json" in rows["demo/lost"]["error"]
    assert [f["category"] for f in s["failed"]] == ["demo/broken", "demo/lost"]
    paths = write_summary(tmp_path / "summary", _categories(tmp_path, QUALITY))
    md = paths["md"].read_text()
    assert "| demo/broken | run failed: stage 'evaluate' failed: boom |" in md
    assert "run failed: stage &#x27;evaluate&#x27; failed: boom</td>" in paths["html"].read_text()
    table = list(csv.DictReader(paths["csv"].open()))
    assert [r["category"] for r in table] == ["demo/cap", "demo/fabric", "demo/broken", "demo/lost", "average"]
    assert table[2]["status"] == "failed" and table[2]["crop-paste/image_auroc"] == ""


def test_quality_columns_present_where_reported(tmp_path: Path) -> None:
    paths = write_summary(tmp_path / "summary", _categories(tmp_path, QUALITY))
    s = json.loads(paths["json"].read_text())
    b = s["benchmark"]
    assert b["quality"] == ["fidelity_mmd", "diversity", "mask_alignment", "memorisation", "kid", "is", "ic_lpips"]
    rows = {r["category"]: r for r in b["rows"]}
    assert rows["demo/cap"]["quality"]["crop-paste"]["fidelity_mmd"] == 0.12
    assert rows["demo/fabric"]["quality"] == {}  # its generation_quality holds no arm
    assert b["average"]["quality"]["crop-paste"]["fidelity_mmd"] == pytest.approx(0.12)  # mean of the one value
    assert b["average"]["quality"]["none"]["fidelity_mmd"] is None
    md = paths["md"].read_text()
    header = next(line for line in md.splitlines() if line.startswith("| category | image AUROC"))
    assert header.endswith("| memorisation | KID | IS | IC-LPIPS |")
    cap = next(line for line in md.split("## Arm `crop-paste`")[1].splitlines() if line.startswith("| demo/cap |"))
    cells = [c.strip() for c in cap.strip("|").split("|")]
    assert len(cells) == 1 + 8 + 7
    assert cells[9:13] == ["0.12", "0.3", "0.97", "0.01"] and cells[13:] == ["—", "—", "—"]
    # image AUROC of demo/cap, crop-paste: values 0.6, 0.62, 0.64 -> 62.0 ± t(2) * 0.02 / sqrt(3) = 5.0
    assert cells[1] == "62.0 ± 5.0"
    fab = next(line for line in md.split("## Arm `crop-paste`")[1].splitlines() if line.startswith("| demo/fabric |"))
    assert fab.rstrip(" |").endswith("— | — | — | — | — | — | —")
    table = {r["category"]: r for r in csv.DictReader(paths["csv"].open())}
    assert float(table["average"]["crop-paste/image_auroc"]) == pytest.approx(0.72)
    assert float(table["demo/cap"]["crop-paste/fidelity_mmd"]) == pytest.approx(0.12)
    assert table["demo/fabric"]["crop-paste/fidelity_mmd"] == ""
    assert "<th>IC-LPIPS</th>" in paths["html"].read_text()


def test_quality_columns_absent_without_any_quality(tmp_path: Path) -> None:
    paths = write_summary(tmp_path / "summary", _categories(tmp_path, None))
    s = json.loads(paths["json"].read_text())
    assert s["benchmark"]["quality"] == []
    md = paths["md"].read_text()
    assert "fidelity" not in md and "| category | image AUROC | image AP | image F1-max |" in md
    assert "| AUPRO | AC accuracy |\n" in md
    assert "crop-paste/fidelity_mmd" not in paths["csv"].read_text()
    # the older per-metric tables stay in summary.json
    assert s["tables"]["image_auroc"]["average"]["crop-paste"] == pytest.approx(0.72)
    assert not list((tmp_path / "summary").glob(".*.tmp"))
