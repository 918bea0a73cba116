"""What `anoaug run` / `anoaug demo` do: resolve specs and data, run the flows, print a summary.

Prefect is imported only after the specs and dataset roots check out (a missing root fails in well
under a second with the flag or variable that sets it) and after PREFECT_HOME is settled. A rerun
whose every stage is already done for the same inputs stops before starting Prefect at all.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from anoaug.errors import AnoaugError
from anoaug.outputs import check_out, exclusive_lock
from anoaug.pipeline import stages
from anoaug.pipeline.config import expand_targets, prepare_spec
from anoaug.pipeline.run_manifest import (
    RUN_FILE,
    build_run_manifest,
    read_run_manifest,
    write_run_manifest,
)
from anoaug.pipeline.stages import StageResult
from anoaug.pipeline.summary import write_summary
from anoaug.spec import PipelineSpec

DEMO_CATEGORY = "demo/cap"
RUN_LOCK = ".lock"  # <out>/<dataset>/<category>/.lock, held by the `anoaug run` writing there
# Best first. diffusion-sd needs downloaded weights; the model-free ones always work offline.
DEMO_GENERATOR_PREFERENCE = ("diffusion-tiny", "crop-paste", "cutpaste", "perlin")
# Per-generator settings that keep `make demo` within 10 minutes on 2 idle CPU cores (--set overrides them).
# diffusion-tiny trains a fixed number of steps (same seed, same model, busy machine or not): 200 steps take
# 105-175 s on 2 idle cores (1.9 steps/s on a fast hour, 1.16 on a slow one, 2 threads); its time cap is only a
# guard that a very slow machine cannot pass unnoticed (the command, stage.json and the report then say
# "trained N / 200 steps").
DEMO_SETTINGS: dict[str, dict[str, Any]] = {
    "diffusion-tiny": {"generator": {"params": {"train_steps": 200, "max_train_seconds": 200}}},
}
# Settings of every demo run: the segmenter trains on the cores the process may use (its CPU affinity; the
# count is fixed per machine, so reruns give the same bytes) instead of 1 thread, which left 1 of 2 cores idle.
DEMO_COMMON: dict[str, Any] = {"evaluation": {"num_threads": "auto"}}


@dataclass
class RunOptions:
    """Command-line options of `anoaug run`."""

    out: Path = Path("runs")
    data_root: Path | None = None
    category: str | None = None
    seed: int | None = None
    generator: str | None = None
    profile: str | None = None
    sets: dict[str, Any] = field(default_factory=dict)
    runner: str = "sequential"
    address: str | None = None
    workers: int | None = None
    force: bool = False
    verbose: bool = False


@dataclass
class Target:
    ref: str
    spec: PipelineSpec
    root: Path

    @property
    def name(self) -> str:
        return f"{self.spec.dataset.name}/{self.spec.dataset.category}"


def best_demo_generator(preference: tuple[str, ...] = DEMO_GENERATOR_PREFERENCE) -> str:
    """The first generator of `preference` that is installed."""
    from anoaug.generators import available_generators

    have = set(available_generators())
    for name in preference:
        if name in have:
            return name
    raise AnoaugError(f"no demo generator available (wanted one of {preference}; have {sorted(have)})")


def demo_options(generator: str, sets: dict[str, Any], **kwargs: Any) -> RunOptions:
    """RunOptions of `anoaug demo`: demo/cap with `generator` and its demo settings under `sets`."""
    from anoaug.spec import deep_merge

    demo = deep_merge(DEMO_COMMON, DEMO_SETTINGS.get(generator, {}))
    return RunOptions(generator=generator, sets=deep_merge(demo, sets), **kwargs)


def prepare_targets(refs: list[str], opts: RunOptions, console: Console | None = None) -> list[Target]:
    """Specs and dataset roots of every target; raises SpecError/DatasetError before anything runs."""
    targets = []
    for ref in expand_targets(refs):
        spec = prepare_spec(
            ref,
            category=opts.category,
            profile=opts.profile,
            seed=opts.seed,
            generator=opts.generator,
            sets=opts.sets,
        )
        if spec.dataset.name == stages.DEMO_DATASET and console is not None:
            where = stages.demo_root_for(spec, opts.data_root, opts.out)
            if not (where / spec.dataset.category).is_dir():
                console.print(f"making demo data: {escape(str(where / spec.dataset.category))}", highlight=False)
        targets.append(Target(ref, spec, stages.resolve_data_root(spec, opts.data_root, opts.out)))
    return targets


# --- rich progress and stage lines ----------------------------------------------------------------


class _Display:
    """A rich progress display for long stages and one line per finished stage."""

    def __init__(self, console: Console) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.console = console
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )

    def reporter(self, description: str) -> stages.ProgressFn:
        task_id = self.progress.add_task(description, total=None)

        def report(*args: Any) -> None:
            if args and isinstance(args[0], str):
                self.progress.update(task_id, description=f"{description}: {escape(args[0])}")
                return
            advance = int(args[0]) if args else 0
            total = args[1] if len(args) > 1 else None
            self.progress.update(task_id, advance=advance, total=total)

        return report

    def stage(self, event: str, stage: str, result: StageResult | None) -> None:
        if event == "start":
            self._current = self.progress.add_task(f"{stage}", total=None)
            return
        if getattr(self, "_current", None) is not None:
            self.progress.remove_task(self._current)
            self._current = None
        for t in list(self.progress.tasks):  # stage progress bars end with their stage
            self.progress.remove_task(t.id)
        if result is not None:
            how = "[dim]reused[/dim]" if result.skipped else f"{result.seconds:.1f} s"
            self.console.print(f"  [green]✓[/green] {escape(stage):<24} {how}", highlight=False)

    def __enter__(self) -> _Display:
        self.progress.start()
        stages.set_progress_reporter(self.reporter)
        stages.set_stage_listener(self.stage)
        return self

    def __exit__(self, *exc: Any) -> None:
        stages.set_progress_reporter(None)
        stages.set_stage_listener(None)
        self.progress.stop()


# --- running ----------------------------------------------------------------------------------------


def _quiet_prefect(verbose: bool) -> None:
    """Call after importing prefect (its logging set-up resets levels)."""
    if not verbose:  # the CLI prints each stage and one line per error; Prefect's own logs only with -v
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        for name in ("prefect.flow_runs", "prefect.task_runs", "prefect.flow_engine", "prefect.task_engine"):
            logging.getLogger(name).setLevel(logging.CRITICAL)


def _shortcut(targets: list[Target], opts: RunOptions) -> list[dict[str, Any]] | None:
    """Run manifests of every target if all are up to date (no Prefect needed), else None."""
    done = []
    for t in targets:
        run_dir = stages.run_dir_for(t.spec, opts.out)
        results = stages.up_to_date(t.spec, t.root, run_dir)
        if results is None or not (run_dir / RUN_FILE).is_file():
            return None
        old = read_run_manifest(run_dir)
        manifest = build_run_manifest(t.spec, t.root, run_dir, results, old.orchestrator)
        path = write_run_manifest(run_dir, manifest)
        done.append({**manifest.model_dump(mode="json"), "run_dir": str(run_dir), "manifest": str(path)})
    return done


def run_targets(refs: list[str], opts: RunOptions, console: Console | None = None) -> dict[str, Any]:
    """Run one category (the category flow) or several (the benchmark flow); print progress and a summary.

    Returns {"categories": [run manifest dicts], "report": path, "summary": {...} (several)}.
    """
    console = console or Console()
    opts.out = Path(opts.out).resolve()
    targets = prepare_targets(refs, opts, console)
    guard_targets(targets, opts, console)  # nothing is written before the outputs and every input file check out
    with contextlib.ExitStack() as locks:  # one `anoaug run` per run directory (a second is refused)
        for run_dir in sorted({stages.run_dir_for(t.spec, opts.out) for t in targets}):
            run_dir.mkdir(parents=True, exist_ok=True)
            locks.enter_context(exclusive_lock(run_dir / RUN_LOCK, "anoaug run"))
        return _run_locked(targets, opts, console)


def guard_targets(targets: list[Target], opts: RunOptions, console: Console | None = None) -> None:
    """The output guard (--out and each run directory outside every input dataset, not a file, writable), then
    the validation stage of each target (cached by its listing hash): raises before anything is written."""
    inputs = [p for t in targets for p in (t.root, t.root / t.spec.dataset.category)]
    check_out(opts.out, inputs)
    for t in targets:
        check_out(stages.run_dir_for(t.spec, opts.out), inputs, "--out (run directory)")
    for t in targets:
        result = stages.stage_validate(t.spec, t.root, stages.run_dir_for(t.spec, opts.out), force=opts.force)
        if console is not None and not result.skipped:
            n = result.info.get("images", 0)
            console.print(f"  [green]✓[/green] {'validate ' + escape(t.name):<24} {n} images checked", highlight=False)


def _run_locked(targets: list[Target], opts: RunOptions, console: Console) -> dict[str, Any]:
    several = len(targets) > 1
    specs = [{**t.spec.model_dump(mode="json"), "source": t.spec.source} for t in targets]
    data_root = str(targets[0].root) if opts.data_root is not None else None

    cached = None if opts.force else _shortcut(targets, opts)
    if cached is not None:
        console.print("[green]up to date[/green]: every stage already done for these inputs", highlight=False)
        result: dict[str, Any] = {"categories": cached, "up_to_date": True}
        if several:
            result["summary"] = _write_summary_from(cached, opts.out)
    else:
        from flows import env

        env.configure(opts.out, opts.verbose)
        if several:
            console.print(
                f"running {len(targets)} categories ({opts.runner}) -> {escape(str(opts.out))}", highlight=False
            )
        else:
            console.print(f"running {escape(targets[0].name)} -> {escape(str(opts.out))}", highlight=False)
        import flows.category  # noqa: F401  (imports prefect, which sets up its logging)

        _quiet_prefect(opts.verbose)
        try:
            with _Display(console):
                result = _run_flows(targets, specs, data_root, opts)
        except AnoaugError:
            raise
        except Exception as exc:  # anything else: still one line that names the cause
            raise AnoaugError(f"pipeline failed: {type(exc).__name__}: {exc}") from exc
    print_summary(result, console)
    return result


def _run_flows(targets: list[Target], specs: list[dict[str, Any]], data_root: str | None, opts: RunOptions) -> dict:
    if len(targets) == 1 and opts.runner == "sequential":
        from flows.category import category_flow

        root = str(targets[0].root)
        value = category_flow(specs[0], out=str(opts.out), data_root=root, force=opts.force)
        return {"categories": [value]}
    from flows.benchmark import run_benchmark

    value = run_benchmark(
        specs,
        runner=opts.runner,
        address=opts.address,
        workers=opts.workers,
        verbose=opts.verbose,
        out=str(opts.out),
        data_root=data_root,
        force=opts.force,
    )
    cats = [
        read_run_manifest(c["run_dir"]).model_dump(mode="json") | {"run_dir": c["run_dir"]} for c in value["categories"]
    ]
    return {"categories": cats, "summary": value["summary"]}


def _write_summary_from(manifests: list[dict[str, Any]], out: Path) -> dict[str, str]:
    cats = []
    for m in manifests:
        run_dir = Path(m["run_dir"])
        cats.append(
            {
                "name": f"{m['dataset']}/{m['category']}",
                "status": "ok",
                "run_dir": str(run_dir),
                "report": str(run_dir / m["report"]) if m.get("report") else None,
                "report_json": str(run_dir / "report" / "report.json"),
            }
        )
    return {k: str(v) for k, v in write_summary(out / "summary", cats).items()}


def print_summary(result: dict[str, Any], console: Console) -> None:
    """A table per run (stage, ran/reused, seconds) and where the reports are."""
    cats = result["categories"]
    if len(cats) == 1:
        m = cats[0]
        table = Table(title=f"{m['dataset']}/{m['category']}", show_edge=False)
        for col in ("stage", "status", "seconds"):
            table.add_column(col)
        for name, s in m["stages"].items():
            table.add_row(name, "reused" if s["reused"] else "ran", f"{s['seconds']:.1f}")
        console.print(table)
    else:
        table = Table(title="categories", show_edge=False)
        for col in ("category", "stages run", "report"):
            table.add_column(col)
        for m in cats:
            ran = sum(not s["reused"] for s in m["stages"].values())
            report = str(Path(m["run_dir"]) / m["report"]) if m.get("report") else "-"
            table.add_row(f"{m['dataset']}/{m['category']}", f"{ran}/{len(m['stages'])}", report)
        console.print(table)
    for m in cats:
        for name, s in m["stages"].items():  # a training that its time cap stopped early: one line each
            warn = stages.training_warning(name, s.get("info") or {})
            if warn is not None:
                console.print(f"[yellow]{escape(warn)}[/yellow]", highlight=False, soft_wrap=True)
        console.print(f"run manifest: {escape(str(Path(m['run_dir']) / RUN_FILE))}", highlight=False, soft_wrap=True)
        if m.get("report"):
            path = Path(m["run_dir"]) / m["report"]
            console.print(f"[bold]HTML report:[/bold] {escape(str(path))}", highlight=False, soft_wrap=True)
    if result.get("summary"):
        console.print(f"[bold]summary:[/bold] {escape(result['summary']['html'])}", highlight=False, soft_wrap=True)
