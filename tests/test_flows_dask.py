"""The benchmark flow fanned out on a local Dask cluster (2 categories, 2 worker processes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from tests.conftest import FLOW_TINY

TINY = FLOW_TINY

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]


def test_benchmark_on_dask_two_categories(tmp_path: Path, demo_root: Path) -> None:
    pytest.importorskip("prefect_dask")
    args = ["run", "demo/cap", "demo/fabric", "--runner", "dask", "--workers", "2"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path), "--data-root", str(demo_root), *TINY])
    text = result.output + result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, text
    for cat in ("cap", "fabric"):
        m = json.loads((tmp_path / "demo" / cat / "run.json").read_text())
        assert (tmp_path / "demo" / cat / m["report"]).is_file()
        assert m["orchestrator"]["prefect_flow_run_id"]  # ran as a (nested) Prefect flow in a worker
    summary = json.loads((tmp_path / "summary" / "summary.json").read_text())
    rows = summary["tables"]["image_auroc"]["rows"]
    assert set(rows) == {"demo/cap", "demo/fabric"} and not summary["failed"]
    assert summary["tables"]["image_auroc"]["average"]
    assert "average" in (tmp_path / "summary" / "summary.csv").read_text()
    assert "summary:" in text
