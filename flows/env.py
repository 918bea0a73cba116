"""Process environment for Prefect, set before prefect is imported (it reads settings at import)."""

from __future__ import annotations

import os
from pathlib import Path

EPHEMERAL_TIMEOUT_S = "180"  # the ephemeral API server takes 10-25 s to start on a busy 2-core machine


def configure(out: str | Path | None = None, verbose: bool = False) -> None:
    """PREFECT_HOME under `out` unless the user set one; quiet Prefect logs unless `verbose`; no telemetry."""
    if out is not None and not os.environ.get("PREFECT_HOME"):
        os.environ["PREFECT_HOME"] = str(Path(out).resolve() / ".prefect")
    if os.environ.get("PREFECT_HOME"):
        Path(os.environ["PREFECT_HOME"]).expanduser().mkdir(parents=True, exist_ok=True)  # sqlite needs the dir
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", EPHEMERAL_TIMEOUT_S)
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
