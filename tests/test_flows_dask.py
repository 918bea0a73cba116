"""The benchmark flow fanned out on a local Dask cluster (2 categories, 2 worker processes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import FLOW_TINY, check_two_category_summary, run_cli

TINY = FLOW_TINY

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]


def test_benchmark_on_dask_two_categories(tmp_path: Path, demo_root: Path) -> None:
    pytest.importorskip("prefect_dask")
    args = ["run", "demo/cap", "demo/fabric", "--runner", "dask", "--workers", "2"]
    code, text = run_cli([*args, "--out", str(tmp_path), "--data-root", str(demo_root), *TINY])
    assert code == 0, text
    for cat in ("cap", "fabric"):
        m = json.loads((tmp_path / "demo" / cat / "run.json").read_text())
        assert (tmp_path / "demo" / cat / m["report"]).is_file()
        assert m["orchestrator"]["prefect_flow_run_id"]  # ran as a (nested) Prefect flow in a worker
    check_two_category_summary(tmp_path, text)
