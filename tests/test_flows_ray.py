"""The benchmark flow fanned out on a local Ray instance (2 categories, 2 CPUs), started by RayTaskRunner."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import FLOW_TINY, check_two_category_summary, run_cli

TINY = FLOW_TINY


def test_ray_runner_settings() -> None:
    """A local Ray is small and fresh; an address is passed through and starts no local API server."""
    from prefect_ray import RayTaskRunner

    from flows.runtime import make_task_runner, ray_local_init_kwargs

    local = ray_local_init_kwargs(2)
    assert local["address"] == "local" and local["num_cpus"] == 2 and local["include_dashboard"] is False
    assert local["log_to_driver"] is False and ray_local_init_kwargs(1, verbose=True)["log_to_driver"] is True
    before = os.environ.get("PREFECT_API_URL")
    remote = make_task_runner("ray", address="ray://10.0.0.5:10001")
    assert isinstance(remote, RayTaskRunner) and remote.address == "ray://10.0.0.5:10001"
    assert "num_cpus" not in remote.init_kwargs  # an existing cluster has its own resources
    assert os.environ.get("PREFECT_API_URL") == before


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_benchmark_on_ray_two_categories(tmp_path: Path, demo_root: Path) -> None:
    import ray

    args = ["run", "demo/cap", "demo/fabric", "--runner", "ray", "--workers", "2"]
    code, text = run_cli([*args, "--out", str(tmp_path), "--data-root", str(demo_root), *TINY])
    assert code == 0, text
    assert not ray.is_initialized()  # the local instance ended with the flow run
    for cat in ("cap", "fabric"):
        m = json.loads((tmp_path / "demo" / cat / "run.json").read_text())
        assert (tmp_path / "demo" / cat / m["report"]).is_file()
        assert m["orchestrator"]["prefect_flow_run_id"]  # ran as a (nested) Prefect flow in a Ray worker
        assert all(not s["reused"] for s in m["stages"].values())
    check_two_category_summary(tmp_path, text)
