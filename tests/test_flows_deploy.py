"""Schedules: one deployment per category with the spec's cron (building them needs no server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from anoaug.errors import SpecError


def _spec_dir(tmp_path: Path, cron: str | None) -> Path:
    d = tmp_path / "pipelines" / "shop"
    d.mkdir(parents=True)
    sched = f"schedule:\n  cron: '{cron}'\n  timezone: Europe/Berlin\n" if cron else ""
    (d / "defaults.yaml").write_text(f"dataset:\n  name: shop\n  format: mvtec\n{sched}")
    (d / "widget.yaml").write_text("dataset:\n  category: widget\n")
    (d / "gadget.yaml").write_text("dataset:\n  category: gadget\n")
    return tmp_path / "pipelines"


def test_deployments_carry_the_spec_cron(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANOAUG_PIPELINES", str(_spec_dir(tmp_path, "0 2 * * *")))
    from flows.deploy import build_deployments

    deps = build_deployments(["shop"], out=str(tmp_path / "runs"))
    assert sorted(d.name for d in deps) == ["shop-gadget", "shop-widget"]
    for d in deps:
        (sched,) = d.schedules
        assert sched.schedule.cron == "0 2 * * *" and sched.schedule.timezone == "Europe/Berlin"
        assert d.parameters["spec"] in ("shop/widget", "shop/gadget") and d.parameters["out"].endswith("runs")
    (dep,) = build_deployments(["shop/widget"], cron="*/5 * * * *", timezone="UTC")
    assert dep.schedules[0].schedule.cron == "*/5 * * * *"


def test_no_schedule_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANOAUG_PIPELINES", str(_spec_dir(tmp_path, None)))
    from flows.deploy import build_deployments

    with pytest.raises(SpecError, match="schedule.cron"):
        build_deployments(["shop/widget"])


def test_library_never_imports_prefect_or_flows() -> None:
    import subprocess
    import sys

    code = (
        "import sys, anoaug.cli, anoaug.pipeline.stages, anoaug.pipeline.config, anoaug.pipeline.run_manifest, "
        "anoaug.pipeline.summary, flows.env, flows.driver; "
        "bad = [m for m in sys.modules if m == 'prefect' or m.startswith('prefect.') or m == 'flows.category']; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_task_runners_by_name() -> None:
    import importlib.util

    from anoaug.errors import AnoaugError
    from flows.runtime import make_task_runner

    assert make_task_runner("sequential")._max_workers == 1
    assert make_task_runner("threads", workers=3)._max_workers == 3
    assert type(make_task_runner("dask", address="tcp://10.0.0.5:8786")).__name__ == "DaskTaskRunner"
    with pytest.raises(AnoaugError, match="unknown runner"):
        make_task_runner("slurm")
    if importlib.util.find_spec("prefect_ray") is None:
        with pytest.raises(AnoaugError, match="pip install prefect-ray"):
            make_task_runner("ray")
