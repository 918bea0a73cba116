"""Task runners and the shared ephemeral API server for multi-process runners."""

from __future__ import annotations

import os
from typing import Any

from anoaug.errors import AnoaugError

RUNNERS = ("sequential", "threads", "dask", "ray")


def share_ephemeral_server() -> str | None:
    """Start Prefect's ephemeral API server here and export its URL, so worker processes use it.

    Without this, every Dask or Ray worker process starts a server of its own. Returns the URL, or
    None when PREFECT_API_URL already names a server (`prefect server start` or Prefect Cloud).
    """
    from prefect.settings import get_current_settings

    if os.environ.get("PREFECT_API_URL") or get_current_settings().api.url:
        return None
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start()
    os.environ["PREFECT_API_URL"] = server.api_url
    return server.api_url


def make_task_runner(runner: str = "sequential", address: str | None = None, workers: int | None = None) -> Any:
    """A Prefect task runner by name.

    * ``sequential``: one category at a time, in this process (the default);
    * ``threads``: a thread pool of `workers` in this process;
    * ``dask``: prefect-dask: a local cluster of `workers` single-threaded processes, or the scheduler at
      `address` (e.g. ``tcp://10.0.0.5:8786``) for a real cluster;
    * ``ray``: prefect-ray (``pip install prefect-ray``): a local Ray, or the cluster at `address`.
    """
    from prefect.task_runners import ThreadPoolTaskRunner

    workers = workers or max(1, min(2, os.cpu_count() or 1))
    if runner == "sequential":
        return ThreadPoolTaskRunner(max_workers=1)
    if runner == "threads":
        return ThreadPoolTaskRunner(max_workers=workers)
    if runner == "dask":
        from prefect_dask import DaskTaskRunner

        if address:
            return DaskTaskRunner(address=address)
        share_ephemeral_server()
        kwargs = {"n_workers": workers, "threads_per_worker": 1, "processes": True, "dashboard_address": None}
        return DaskTaskRunner(cluster_kwargs=kwargs)
    if runner == "ray":
        try:
            from prefect_ray import RayTaskRunner
        except ImportError:
            raise AnoaugError("--runner ray needs prefect-ray: pip install prefect-ray") from None
        share_ephemeral_server()
        return RayTaskRunner(address=address) if address else RayTaskRunner()
    raise AnoaugError(f"unknown runner {runner!r}; runners: {', '.join(RUNNERS)}")
