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


def ray_local_init_kwargs(workers: int, verbose: bool = False) -> dict[str, Any]:
    """`ray.init` kwargs of the local Ray that RayTaskRunner starts: `workers` CPUs, no dashboard.

    ``address="local"`` always starts a fresh instance (never joins one found on this machine, which would
    reject ``num_cpus``); it ends with the flow run. Its workers inherit this process's environment, so
    PREFECT_API_URL (the shared server). Unless `verbose`, Ray's own INFO/WARNING lines and the workers'
    stdout/stderr stay out of the CLI output (a failed category still reports its error in the summary).
    """
    import logging

    return {
        "address": "local",
        "num_cpus": workers,
        "include_dashboard": False,
        "log_to_driver": verbose,
        "logging_level": logging.INFO if verbose else logging.ERROR,
    }


def make_task_runner(
    runner: str = "sequential", address: str | None = None, workers: int | None = None, verbose: bool = False
) -> Any:
    """A Prefect task runner by name (`verbose`: let a local Ray print its own and its workers' logs).

    * ``sequential``: one category at a time, in this process (the default);
    * ``threads``: a thread pool of `workers` in this process;
    * ``dask``: prefect-dask: a local cluster of `workers` single-threaded processes, or the scheduler at
      `address` (e.g. ``tcp://10.0.0.5:8786``) for a real cluster;
    * ``ray``: prefect-ray (``pip install 'anoaug[ray]'``): a local Ray instance with `workers` CPUs, or the
      cluster at `address` (e.g. ``ray://10.0.0.5:10001``).
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
            raise AnoaugError("--runner ray needs pip install prefect-ray ray (or the extra: 'anoaug[ray]')") from None
        if address:
            return RayTaskRunner(address=address)
        share_ephemeral_server()
        return RayTaskRunner(init_kwargs=ray_local_init_kwargs(workers, verbose))
    raise AnoaugError(f"unknown runner {runner!r}; runners: {', '.join(RUNNERS)}")
