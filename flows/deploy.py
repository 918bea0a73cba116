"""Serve the category flow on the cron schedules of the specs (`anoaug serve`, or `python -m flows.deploy`).

One deployment per category, named `<dataset>-<category>`, with the spec's `schedule.cron` (and
`schedule.timezone`) or the --cron given here. Schedules need a Prefect server that outlives this
process: start one with `prefect server start` and point PREFECT_API_URL at it (see the README).
A scheduled run re-reads its spec file, so an edited spec takes effect at the next run.
"""

from __future__ import annotations

import argparse
from typing import Any

from anoaug.errors import SpecError
from anoaug.pipeline.config import expand_targets, prepare_spec


def build_deployments(
    targets: list[str],
    out: str = "runs",
    data_root: str | None = None,
    profile: str | None = None,
    cron: str | None = None,
    timezone: str | None = None,
) -> list[Any]:
    """RunnerDeployments of the category flow, one per category that has a schedule (or `cron`)."""
    from prefect.schedules import Cron

    from flows.category import category_flow

    deployments = []
    for ref in expand_targets(targets):
        spec = prepare_spec(ref, profile=profile)
        expr = cron or spec.schedule.cron
        if not expr:
            continue
        params: dict[str, Any] = {"spec": ref, "out": out, "data_root": data_root, "profile": profile}
        deployments.append(
            category_flow.to_deployment(
                name=f"{spec.dataset.name}-{spec.dataset.category}",
                schedules=[Cron(expr, timezone=timezone or spec.schedule.timezone)],
                parameters={k: v for k, v in params.items() if v is not None},
                tags=["anoaug", spec.dataset.name, spec.dataset.category],
                description=f"anoaug pipeline for {ref} ({spec.source})",
            )
        )
    if not deployments:
        raise SpecError(
            f"no schedule for {', '.join(targets)}: set schedule.cron in the spec or pass --cron '0 2 * * *'"
        )
    return deployments


def serve(targets: list[str], limit: int | None = None, **kwargs: Any) -> None:
    """Serve the deployments until interrupted (runs execute in this process)."""
    from prefect import serve as prefect_serve

    prefect_serve(*build_deployments(targets, **kwargs), limit=limit)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.deploy", description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="+", help="mvtec, mvtec/bottle or a .yaml spec")
    parser.add_argument("--out", default="runs")
    parser.add_argument("--data-root")
    parser.add_argument("--profile")
    parser.add_argument("--cron", help="overrides schedule.cron of every spec")
    parser.add_argument("--timezone")
    a = parser.parse_args(argv)
    serve(a.targets, out=a.out, data_root=a.data_root, profile=a.profile, cron=a.cron, timezone=a.timezone)


if __name__ == "__main__":  # pragma: no cover
    main()
