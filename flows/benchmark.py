"""The benchmark flow: many categories fanned out on a task runner, one summary across them.

Each category runs as the category flow (a nested flow run, with its cached stage tasks) inside a
task, so the same per-stage caching holds whether categories run one after another (default), on a
local Dask cluster, on a Dask cluster at an address, or on Ray.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task

from anoaug.errors import AnoaugError
from anoaug.pipeline.summary import write_summary
from flows.category import category_flow, resolve_spec_param
from flows.runtime import make_task_runner


class BenchmarkFailed(AnoaugError):
    """Some categories failed (the summary of the others is written)."""


@task(name="category", task_run_name="category-{name}")
def category_task(
    name: str, spec: dict[str, Any], out: str, data_root: str | None = None, force: bool = False
) -> dict[str, Any]:
    """One whole category (the category flow, as a nested flow run)."""
    return category_flow(spec, out=out, data_root=data_root, force=force)


@flow(name="anoaug-benchmark", persist_result=False)
def benchmark_flow(
    specs: list[str | dict[str, Any]],
    out: str = "runs",
    data_root: str | None = None,
    profile: str | None = None,
    seed: int | None = None,
    generator: str | None = None,
    sets: dict[str, Any] | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Run every category of `specs`; write `<out>/summary/`; raise BenchmarkFailed if any failed."""
    resolved = [resolve_spec_param(s, profile, seed, generator, sets) for s in specs]
    names = [f"{s.dataset.name}/{s.dataset.category}" for s in resolved]
    if len(set(names)) != len(names):
        raise AnoaugError(f"a category is listed twice: {names}")
    out_path = str(Path(out).resolve())
    futures = [
        category_task.submit(name, {**s.model_dump(mode="json"), "source": s.source}, out_path, data_root, force)
        for name, s in zip(names, resolved, strict=True)
    ]
    categories: list[dict[str, Any]] = []
    for name, fut in zip(names, futures, strict=True):
        fut.wait()
        value = fut.state.result(raise_on_failure=False)
        if fut.state.is_completed():
            run_dir = Path(value["run_dir"])
            report = value.get("report")
            categories.append(
                {
                    "name": name,
                    "status": "ok",
                    "run_dir": str(run_dir),
                    "report": str(run_dir / report) if report else None,
                    "report_json": str(run_dir / "report" / "report.json"),
                    "stages": {k: v["reused"] for k, v in value["stages"].items()},
                }
            )
        else:
            categories.append({"name": name, "status": "failed", "error": f"{type(value).__name__}: {value}"})
    paths = write_summary(Path(out_path) / "summary", categories)
    result = {"categories": categories, "summary": {k: str(v) for k, v in paths.items()}}
    failed = [c for c in categories if c["status"] != "ok"]
    if failed:
        lines = "; ".join(f"{c['name']}: {c['error']}" for c in failed)
        n = f"{len(failed)} of {len(categories)}"
        raise BenchmarkFailed(f"{n} categories failed: {lines} (summary: {paths['html']})")
    return result


def run_benchmark(
    specs: list[str | dict[str, Any]],
    runner: str = "sequential",
    address: str | None = None,
    workers: int | None = None,
    verbose: bool = False,
    **kwargs: Any,
) -> dict[str, Any]:
    """`benchmark_flow` on the named task runner (see flows.runtime.make_task_runner)."""
    task_runner = make_task_runner(runner, address, workers, verbose)
    return benchmark_flow.with_options(task_runner=task_runner)(specs, **kwargs)
