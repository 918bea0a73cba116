"""`anoaug serve` against a live Prefect server (`prefect server start` on loopback, its own sqlite DB).

The serve process registers the spec's cron deployment; the server's scheduler must create runs on
that cron (in the spec's timezone), and a run the server creates from the deployment (as the UI's
"Run" button does) must be executed by the serve process and write the run directory. The cron is
03:00 Europe/Berlin, so no scheduled run fires during the test and the one we start runs alone.
Prefect 3.8's scheduler fails on SQLAlchemy 2.1 (no scheduled run is ever made): see pyproject.toml.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tests.conftest import REPO, write_tiny_mvtec

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

CRON, TZ = "0 3 * * *", "Europe/Berlin"
DEPLOYMENT = "anoaug-category/tiny-widget"

# A tiny spec with its own schedule: a few 32 px images, one 1-step epoch of a 2-level segmenter.
SPEC = f"""\
dataset:
  name: tiny
  format: mvtec
  category: widget
schedule:
  cron: "{CRON}"
  timezone: {TZ}
masks:
  placement: free
  foreground:
    method: whole
generator:
  name: cutpaste
generation:
  count_per_type: 2
  shard_size: 4
evaluation:
  arms: [real-few]
  seeds: [0]
  epochs: 1
  steps_per_epoch: 1
  image_size: 32
  batch_size: 4
  widths: [4, 8]
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(log: Path, n: int = 6000) -> str:
    return log.read_text(errors="replace")[-n:] if log.exists() else "(no log)"


@contextmanager
def _process(cmd: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run `cmd` in its own process group (it may spawn children); always end the whole group."""
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield proc
        finally:
            try:  # terminate (serve pauses its schedules, the server shuts down), then kill what is left
                os.killpg(proc.pid, signal.SIGTERM)  # the group id is the leader's pid (start_new_session)
                proc.wait(15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # a stuck leader, or children it left behind
            proc.wait(10)


def _wait(
    what: str, check: Callable[[], Any], timeout: float, logs: dict[str, Path], procs: list[subprocess.Popen[bytes]]
) -> Any:
    """Poll `check` until it returns something truthy; fail with the logs if a process dies or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except Exception as exc:  # not up yet: connection refused, 404, ...
            result, last = None, exc
        else:
            last = None
        if result:
            return result
        dead = [p.args[:4] for p in procs if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            why = f"process exited: {dead}" if dead else f"timed out after {timeout:.0f} s (last error: {last!r})"
            tails = "\n".join(f"--- {name} log ---\n{_tail(log)}" for name, log in logs.items())
            pytest.fail(f"waiting for {what}: {why}\n{tails}")
        time.sleep(0.5)


def _health(url: str) -> bool:
    with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
        return r.status == 200 and json.loads(r.read()) is True


def test_serve_runs_on_a_live_server(tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.settings import PREFECT_API_URL, temporary_settings

    t0 = time.monotonic()
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    base = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}  # no test-session settings
    base.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", NO_ALBUMENTATIONS_UPDATE="1", HF_HUB_OFFLINE="1")
    server_env = dict(
        base,
        PREFECT_HOME=str(tmp_path / "server-home"),
        PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{tmp_path / 'prefect.db'}",
        PREFECT_SERVER_UI_ENABLED="false",
    )
    serve_env = dict(
        base,
        PREFECT_API_URL=api,
        PREFECT_HOME=str(tmp_path / "serve-home"),
        PREFECT_RUNNER_POLL_FREQUENCY="1",  # pick up runs within a second, not the default 10 s
        PREFECT_LOGGING_LEVEL="INFO",  # `serve` defaults to WARNING; INFO makes a failure's log useful
    )
    logs = {"server": tmp_path / "server.log", "serve": tmp_path / "serve.log"}

    server_cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with _process(server_cmd, server_env, logs["server"]) as server:
        data = write_tiny_mvtec(tmp_path / "data", defects={"scratch": 2})
        spec = tmp_path / "specs" / "widget.yaml"
        spec.parent.mkdir()
        spec.write_text(SPEC)
        out = tmp_path / "runs"
        _wait("the server's health endpoint", lambda: _health(api), 90, logs, [server])
        t_server = time.monotonic() - t0

        serve_cmd = [sys.executable, "-m", "flows.cli", "serve", str(spec), "--out", str(out)]
        with (
            _process([*serve_cmd, "--data-root", str(data), "--limit", "1"], serve_env, logs["serve"]) as serve,
            temporary_settings({PREFECT_API_URL: api}),
            get_client(sync_client=True) as client,
        ):
            procs = [server, serve]
            dep = _wait("the deployment", lambda: client.read_deployment_by_name(DEPLOYMENT), 90, logs, procs)
            (sched,) = dep.schedules
            assert sched.active and (sched.schedule.cron, sched.schedule.timezone) == (CRON, TZ)
            assert dep.parameters == {"spec": str(spec), "out": str(out.resolve()), "data_root": str(data.resolve())}

            run = client.create_flow_run_from_deployment(dep.id)  # what the UI's "Run" button does

            def finished() -> Any:
                state = client.read_flow_run(run.id).state
                return state if state and state.is_final() else None

            state = _wait("the flow run to finish", finished, 120, logs, procs)
            assert state.is_completed(), f"{state!r}\n--- serve log ---\n{_tail(logs['serve'])}"

            # The server's scheduler made runs on the spec's cron, at 03:00 in the spec's timezone.
            # (The sync client sends limit/sort as null unless given, which the server rejects with a 422.)
            dep_filter = DeploymentFilter(id=DeploymentFilterId(any_=[dep.id]))
            sort = FlowRunSort.EXPECTED_START_TIME_ASC

            def auto_scheduled() -> list[Any]:
                runs = client.read_flow_runs(deployment_filter=dep_filter, sort=sort, limit=20)
                return [r for r in runs if r.auto_scheduled]

            scheduled = _wait("auto-scheduled runs", auto_scheduled, 30, logs, procs)
            for r in scheduled:
                local = r.expected_start_time.astimezone(ZoneInfo(TZ))
                assert (local.hour, local.minute) == (3, 0) and r.expected_start_time > datetime.now(ZoneInfo(TZ))

    run_dir = out / "tiny" / "widget"
    manifest = json.loads((run_dir / "run.json").read_text())
    assert manifest["orchestrator"]["prefect_flow_run_id"] == str(run.id)
    assert json.loads((run_dir / "report" / "report.json").read_text())["category"] == "widget"
    assert (run_dir / manifest["report"]).is_file()
    print(f"server up in {t_server:.1f} s; whole test {time.monotonic() - t0:.1f} s")
