"""The `anoaug` console script: the library's commands (anoaug.cli) plus the orchestration commands
`run`, `demo` and `serve`, which need Prefect and so live here, outside the library."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from anoaug.cli import app, console, user_errors

_RUN_TARGETS_HELP = (
    "<dataset>/<category> (mvtec/bottle), a dataset (mvtec: all its categories), a .yaml spec, "
    "or a dataset root with --category. Several run as a benchmark with one summary."
)


@app.command("run")
@user_errors
def run_cmd(
    targets: Annotated[list[str], typer.Argument(help=_RUN_TARGETS_HELP)],
    data_root: Annotated[
        Path | None, typer.Option("--data-root", help="Dataset root (else $<dataset.root_env>, else the spec).")
    ] = None,
    category: Annotated[str | None, typer.Option("--category", "-c", help="Category, with a dataset root.")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory: <out>/<dataset>/<category>/.")] = Path(
        "runs"
    ),
    seed: Annotated[int | None, typer.Option(min=0, help="Seed (split, generation, training).")] = None,
    generator: Annotated[
        str | None, typer.Option(help="Generator or spec variant to fit and evaluate (added as an arm).")
    ] = None,
    profile: Annotated[str | None, typer.Option(help="cpu-tiny (small, CPU) or gpu (the spec's full scale).")] = None,
    sets: Annotated[
        list[str] | None, typer.Option("--set", help="Override a spec key: --set evaluation.epochs=2 (repeatable).")
    ] = None,
    runner: Annotated[str, typer.Option(help="Several categories: sequential, threads, dask or ray.")] = "sequential",
    address: Annotated[
        str | None, typer.Option(help="Scheduler of an existing Dask/Ray cluster (e.g. tcp://host:8786).")
    ] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="Workers of a local cluster / thread pool.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Redo every stage, ignoring caches.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Prefect's logs.")] = False,
) -> None:
    """Run the pipeline (split, masks, generation, evaluation, report) as Prefect flows; reruns reuse done stages."""
    from anoaug.pipeline.config import parse_sets
    from flows.driver import RunOptions, run_targets

    opts = RunOptions(
        out=out,
        data_root=data_root,
        category=category,
        seed=seed,
        generator=generator,
        profile=profile,
        sets=parse_sets(sets),
        runner=runner,
        address=address,
        workers=workers,
        force=force,
        verbose=verbose,
    )
    run_targets(targets, opts, console)


@app.command("demo")
@user_errors
def demo_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory (demo data goes to <out>/data).")] = Path(
        "runs/demo"
    ),
    generator: Annotated[str | None, typer.Option(help="Generator (default: the best one installed).")] = None,
    sets: Annotated[list[str] | None, typer.Option("--set", help="Override a spec key (repeatable).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Redo every stage.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Prefect's logs.")] = False,
) -> None:
    """The whole pipeline on the embedded demo data (demo/cap), then the path of the HTML report."""
    from anoaug.pipeline.config import parse_sets
    from flows.driver import DEMO_CATEGORY, best_demo_generator, demo_options, run_targets

    gen = generator or best_demo_generator()
    console.print(f"demo: {DEMO_CATEGORY} with generator {gen}", highlight=False)
    opts = demo_options(gen, parse_sets(sets), out=out, force=force, verbose=verbose)
    run_targets([DEMO_CATEGORY], opts, console)


@app.command("serve")
@user_errors
def serve_cmd(
    targets: Annotated[list[str], typer.Argument(help="mvtec, mvtec/bottle or .yaml specs to schedule.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory of the scheduled runs.")] = Path("runs"),
    data_root: Annotated[Path | None, typer.Option("--data-root", help="Dataset root.")] = None,
    profile: Annotated[str | None, typer.Option(help="cpu-tiny or gpu.")] = None,
    cron: Annotated[
        str | None, typer.Option(help="Cron schedule for all (default: schedule.cron of each spec).")
    ] = None,
    timezone: Annotated[str | None, typer.Option(help="IANA timezone of the cron (default: the spec's).")] = None,
    limit: Annotated[int | None, typer.Option(help="Most runs at once.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Prefect's logs (runs picked up).")] = False,
) -> None:
    """Serve the category flow on a cron schedule (needs a Prefect server: see README, Scheduling)."""
    from flows import env

    env.configure(out, verbose=verbose)
    from flows.deploy import serve

    root = str(data_root.resolve()) if data_root else None
    serve(targets, limit=limit, out=str(out.resolve()), data_root=root, profile=profile, cron=cron, timezone=timezone)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="anoaug")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
