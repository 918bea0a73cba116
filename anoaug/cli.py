"""The `anoaug` command line: one command per pipeline stage, each a thin layer over the library."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from anoaug.errors import AnoaugError

app = typer.Typer(
    name="anoaug",
    help="Few-shot synthetic defects for industrial inspection, and the measured gain they bring.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
spec_app = typer.Typer(help="Pipeline specs (pipelines/<dataset>/<category>.yaml).", no_args_is_help=True)
app.add_typer(spec_app, name="spec")

console = Console()
err_console = Console(stderr=True)


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn AnoaugError, and an OSError of the place written to (disk full, read-only, permission: named by
    its path, else the command's --out), into one red line on stderr and exit code 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except AnoaugError as exc:
            err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=2) from None
        except OSError as exc:
            from anoaug.outputs import os_error_message

            line = os_error_message(exc, kwargs.get("out"))
            if line is None:
                raise
            from rich.markup import escape

            err_console.print(f"[red]error:[/red] {escape(line)}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=2) from None

    return wrapper


def _spec_data_split(spec_or_root: str, category: str | None, data_root: Path | None, split: Path | None) -> tuple:
    """The spec, the category's records and its split manifest: --split if given, else the default manifest
    when it exists (checked against the data), else a fresh split in memory."""
    from anoaug.data.formats import read_category
    from anoaug.data.guard import guard_category
    from anoaug.data.split import default_split_path, ensure_split, make_split, read_split
    from anoaug.pipeline.config import check_spec
    from anoaug.spec import resolve_spec

    spec = resolve_spec(spec_or_root, category)
    data = read_category(spec.resolve_root(data_root), spec.dataset.category, spec.dataset.format)
    guard_category(data, spec.dataset.mask_tolerance)  # the checks of `validate`, before anything is written
    spec = check_spec(spec, arms=False)  # loads the generator registry (heavy): after the cheap checks
    default = default_split_path(data.dataset, data.category, spec.seed)
    if split is not None:
        manifest = read_split(split)
    elif default.is_file():
        manifest, _ = ensure_split(data, spec.seed, default)
    else:
        s = spec.split
        manifest = make_split(data, spec.seed, s.gen_train_fraction, s.min_gen_train, s.min_eval)
    return spec, data, manifest


def _inputs(data: Any) -> list[Path]:
    """The dataset folders a command reads (its root and category folder): no output may lie inside them."""
    return [Path(data.root), Path(data.root) / data.category]


def _fraction(value: float) -> float:
    if not 0 < value < 1:
        raise typer.BadParameter(f"must be between 0 and 1 (exclusive), got {value}")
    return value


def _seed_list(text: str | None) -> list[int] | None:
    """``--seeds 0,1,2`` as ints >= 0; a BadParameter naming the option otherwise."""
    if not text:
        return None
    try:
        seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        seeds = []
    if not seeds or min(seeds) < 0:
        raise typer.BadParameter(f"expected a comma list of integers >= 0, got {text!r}", param_hint="'--seeds'")
    return seeds


# --- commands ---------------------------------------------------------------------------------
# Each stage adds its command below, as a few lines over a library function.


@app.command("validate")
@user_errors
def validate_cmd(
    root: Annotated[Path, typer.Argument(help="Dataset root.")],
    category: Annotated[str | None, typer.Option("--category", "-c", help="Only this category.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="mvtec, visa, folder or auto.")] = "auto",
    mask_tolerance: Annotated[
        int,
        typer.Option("--mask-tolerance", min=0, max=127, help="Mask values within N of 0 or 255 count as binary."),
    ] = 10,  # = anoaug.data.validation.DEFAULT_MASK_TOLERANCE (not imported here: keeps start-up fast)
) -> None:
    """Check a dataset: one line per problem on stderr and exit 1, else a summary line per category."""
    from rich.markup import escape

    from anoaug.data.formats import list_categories, read_category, resolve_format
    from anoaug.data.validation import summarize, validate_dataset
    from anoaug.errors import DatasetError

    fmt = resolve_format(root, fmt)  # missing root / unknown layout: one line, exit 2
    categories = list_categories(root, fmt)
    if category is not None:
        if category not in categories:
            known = ", ".join(categories) or "none"
            raise DatasetError(f"category {category!r} not found ({fmt} layout; categories: {known})", root)
        categories = [category]
    problems = validate_dataset(root, category, fmt, mask_threshold=mask_tolerance)
    for problem in problems:
        err_console.print(str(problem), markup=False, highlight=False, soft_wrap=True)
    errors = sum(p.is_error for p in problems)
    if errors:
        summary = f"[red]{errors} problem(s)[/red] in {escape(str(root))}"
        err_console.print(summary, highlight=False, soft_wrap=True)
        raise typer.Exit(code=1)
    for name in categories:
        counts = summarize(read_category(root, name, fmt))
        text = ", ".join(f"{n} {escape(k)}" for k, n in counts.items())
        line = f"[green]ok[/green] [bold]{escape(name)}[/bold] ({fmt}): {text}"
        console.print(line, highlight=False, soft_wrap=True)


@spec_app.command("show")
@user_errors
def spec_show(
    spec: Annotated[str, typer.Argument(help="<dataset>/<category> (e.g. mvtec/bottle) or a .yaml path.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of YAML.")] = False,
) -> None:
    """Print the merged, validated spec."""
    import json

    import yaml

    from anoaug.pipeline.config import check_spec
    from anoaug.spec import load_spec

    s = check_spec(load_spec(spec), arms=False)
    data = s.model_dump(mode="json")
    if as_json:
        print(json.dumps(data, indent=2))
    else:
        console.print(f"[dim]# from {s.source}[/dim]", highlight=False, soft_wrap=True)
        print(yaml.safe_dump(data, sort_keys=False), end="")


@app.command("split")
@user_errors
def split_cmd(
    root: Annotated[Path, typer.Argument(help="Dataset root.")],
    category: Annotated[str, typer.Option("--category", "-c", help="Category to split.")],
    seed: Annotated[int, typer.Option(min=0, help="Seed of the split.")] = 0,
    out: Annotated[Path | None, typer.Option(help="Manifest path (default data_manifests/...).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="mvtec, visa, folder or auto.")] = "auto",
    fraction: Annotated[
        float, typer.Option(callback=_fraction, help="Share of each defect type for generator training, in (0, 1).")
    ] = 1 / 3,
    mask_tolerance: Annotated[
        int, typer.Option("--mask-tolerance", min=0, max=127, help="Mask values within N of 0 or 255 count as binary.")
    ] = 10,
) -> None:
    """Write the leak-free split manifest (Parquet) of one category.

    Every image and mask is first checked as `anoaug validate` does (decodes, mode, size, binary masks).
    """
    from anoaug.data.formats import read_category
    from anoaug.data.guard import guard_category
    from anoaug.data.split import default_split_path, ensure_split
    from anoaug.outputs import check_out, new_folder, undo_on_failure

    data = guard_category(read_category(root, category, fmt), mask_tolerance)
    path = out or default_split_path(data.dataset, category, seed)
    check_out(path, _inputs(data), "--out", kind="file")
    with undo_on_failure(new_folder(path.parent)):  # the manifest itself is written atomically
        manifest, written = ensure_split(data, seed, path, fraction=fraction)
    counts: dict[str, int] = {}
    for role in manifest.table.column("role").to_pylist():
        counts[role] = counts.get(role, 0) + 1
    verb = "wrote" if written else "reused (unchanged dataset)"
    console.print(f"{verb} {path}: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())), highlight=False)


@app.command("demo-data")
@user_errors
def demo_data_cmd(
    out_dir: Annotated[Path, typer.Argument(help="Dataset root to write (MVTec AD layout).")],
    seed: Annotated[int, typer.Option(min=0, help="Seed; the same seed gives byte-identical files.")] = 0,
    category: Annotated[
        list[str] | None, typer.Option("--category", "-c", help="Only this category (repeatable).")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace existing, non-empty category folders.")] = False,
    photographic: Annotated[
        bool,
        typer.Option(
            "--photographic",
            help="Photograph-like categories instead (washers, plates, walnut: uneven light, shadows, neighbours "
            "cut by the border), with true object masks in <out>/.object_masks.",
        ),
    ] = False,
    train_good: Annotated[
        int | None,
        typer.Option("--train-good", min=1, help="Normal training images per category (default 36; photographic 12)."),
    ] = None,
    test_good: Annotated[
        int | None,
        typer.Option("--test-good", min=0, help="Normal test images per category (default 12; photographic 4)."),
    ] = None,
    per_defect: Annotated[
        int | None,
        typer.Option("--per-defect", min=1, help="Test images per defect type (default 9; photographic 4)."),
    ] = None,
    size: Annotated[
        int | None,
        typer.Option("--size", min=64, max=2048, help="Image side in pixels (default 256; photographic 128)."),
    ] = None,
) -> None:
    """Write the embedded procedural demo dataset (fabric, cap); nothing is downloaded."""
    from rich.markup import escape

    from anoaug.data.demo import CATEGORIES, make_demo_dataset

    given = {"n_train_good": train_good, "n_test_good": test_good, "n_per_defect": per_defect, "size": size}
    counts: dict[str, int] = {k: v for k, v in given.items() if v is not None}  # unset: the maker's default
    table: dict[str, tuple[str, ...]] = CATEGORIES  # defect types per category, for the lines below
    if photographic:
        from anoaug.data.photographic import PHOTO_CATEGORIES, make_photographic_dataset

        table = PHOTO_CATEGORIES
        written = make_photographic_dataset(
            out_dir, seed=seed, categories=category or None, overwrite=overwrite, **counts
        )
    else:
        written = make_demo_dataset(out_dir, seed=seed, categories=category or None, overwrite=overwrite, **counts)
    for name in written:
        cat = out_dir / name
        train = len(list((cat / "train" / "good").glob("*.png")))
        test = len(list((cat / "test" / "good").glob("*.png")))
        defects = ", ".join(f"{len(list((cat / 'test' / d).glob('*.png')))} {d}" for d in table[name])
        line = f"[green]wrote[/green] [bold]{escape(name)}[/bold]: {train} train good, {test} test good"
        console.print(f"{line}, {defects}", highlight=False, soft_wrap=True)
    console.print(f"dataset root: {escape(str(out_dir))}", highlight=False, soft_wrap=True)


@app.command("masks")
@user_errors
def masks_cmd(
    spec_or_root: Annotated[str, typer.Argument(help="<dataset>/<category>, a .yaml, or a dataset root.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (never inside the dataset).")],
    category: Annotated[str | None, typer.Option("--category", "-c", help="Category (with a root).")] = None,
    count: Annotated[int, typer.Option("--count", "-n", min=1, help="Masks to make (types in turn).")] = 100,
    seed: Annotated[int | None, typer.Option(min=0, help="Seed (default: the spec's).")] = None,
    kind: Annotated[str | None, typer.Option("--kind", help="object or texture (default: spec).")] = None,
    data_root: Annotated[Path | None, typer.Option("--data-root", help="Dataset root for a spec.")] = None,
    sets: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a spec key: --set masks.source=learned (repeatable)."),
    ] = None,
) -> None:
    """Synthesize defect masks in the foreground: masks, trimaps, masks.parquet, summary, contact sheet."""
    from rich.markup import escape

    from anoaug.masks import MaskError
    from anoaug.spec import resolve_spec

    if kind is not None and kind not in ("object", "texture"):
        raise MaskError(f"--kind must be object or texture, got {kind!r}")
    if sets:
        from anoaug.pipeline.config import parse_sets, prepare_spec

        spec = prepare_spec(spec_or_root, category=category, sets=parse_sets(sets))
    else:
        spec = resolve_spec(spec_or_root, category)
    from anoaug.data.formats import read_category
    from anoaug.data.guard import guard_category
    from anoaug.outputs import check_out, undo_on_failure

    data = read_category(spec.resolve_root(data_root), spec.dataset.category, spec.dataset.format)
    guard_category(data, spec.dataset.mask_tolerance)
    check_out(out, _inputs(data))
    from anoaug.masks.run import run_masks  # heavy: after the guards, so bad input fails at once

    with undo_on_failure(out):
        result = run_masks(spec, count, out, seed=seed, kind=kind, data_root=data_root, data=data)
    s = result.summary
    console.print(f"kind: [bold]{result.kind}[/bold] ({escape(result.kind_reason)})", highlight=False)
    for bad in result.summary.get("bad_images", []):
        console.print(
            f"  excluded from placement: {escape(bad['relpath'])} ({escape(bad['reason'])})", highlight=False
        )
    for dtype, t in s["per_type"].items():
        synth_area, real_area = t["area_synth"].get("median", 0), t["area_real"].get("median", 0)
        console.print(
            f"  {escape(dtype)}: {t['synthesized']} masks, acceptance {t['acceptance_rate']:.1%}, "
            f"median area {synth_area:.0f} px (real {real_area:.0f})",
            highlight=False,
        )
    if "learned" in s:
        lr = s["learned"]
        console.print(
            f"learned masks: {lr['accepted']} of {lr['sampled']} sampled accepted ({lr['acceptance_rate']:.1%}), "
            f"artifact {escape(lr['artifact'])}",
            highlight=False,
            soft_wrap=True,
        )
    flagged = s["foreground"]["flagged"]
    if flagged:
        err_console.print(
            f"[yellow]warning:[/yellow] {len(flagged)} normal image(s) have a suspicious foreground, excluded "
            f"from mask placement (see bad_images in summary.json), e.g. {escape(flagged[0]['relpath'])}: "
            f"{', '.join(flagged[0]['flags'])}",
            highlight=False,
        )
    if result.failures:
        first = escape(result.failures[0]["error"])
        err_console.print(
            f"[yellow]warning:[/yellow] {len(result.failures)} sample(s) failed: {first}",
            highlight=False,
            soft_wrap=True,
        )
    console.print(
        f"wrote {result.written} masks, acceptance {s['acceptance_rate']:.1%}, to {escape(str(result.out))}",
        highlight=False,
    )


@app.command("generate")
@user_errors
def generate_cmd(
    spec_or_root: Annotated[str, typer.Argument(help="<dataset>/<category>, a spec .yaml, or a dataset root.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder for shards (never inside the dataset).")],
    category: Annotated[str | None, typer.Option("--category", "-c", help="Category (needed with a root).")] = None,
    generator: Annotated[
        str | None,
        typer.Option("--generator", "-g", help="crop-paste, cutpaste, perlin, ... or a variant (default: spec's)."),
    ] = None,
    count: Annotated[int | None, typer.Option("--count", "-n", min=1, help="Samples per defect type.")] = None,
    seed: Annotated[int | None, typer.Option(min=0, help="Generation seed (default: the spec's).")] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="Generating processes (one writer).")] = None,
    shard_size: Annotated[int | None, typer.Option(min=1, help="Samples per shard.")] = None,
    artifact: Annotated[Path | None, typer.Option(help="Reuse this fitted generator artifact directory.")] = None,
    split: Annotated[Path | None, typer.Option(help="Split manifest (default: data_manifests/..., else made).")] = None,
    data_root: Annotated[Path | None, typer.Option("--data-root", help="Dataset root for a spec.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a different run in --out instead of refusing.")] = False,
    params: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", help="Generator setting KEY=VALUE (YAML value), over the spec's; repeatable."),
    ] = None,
) -> None:
    """Fit a generator and write N synthetic (image, mask) pairs per defect type as resumable WebDataset shards.

    Run the same command again after an interruption (even kill -9) to finish the run exactly.
    `--param model=/path/to/sd15 --param lora_rank=8` sets generator params (e.g. diffusion-sd's weights).
    """
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from anoaug.outputs import check_out, undo_on_failure

    spec, data, manifest = _spec_data_split(spec_or_root, category, data_root, split)
    name = generator or spec.generator.name
    if params:
        spec = _with_producer_params(spec, name, params)
    check_out(out, _inputs(data))
    from anoaug.shards import generate_category  # heavy: after the guards

    columns = ("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    # Bad input fails before anything is written. A failure in a new --out removes it; an interruption or a
    # full disk keeps the shards to resume, and an existing --out (an earlier run's shards) is left to resume.
    with (
        undo_on_failure(None if out.exists() else out, keep=(KeyboardInterrupt, OSError)),
        Progress(*columns, console=err_console, transient=True) as bar,
    ):
        task = bar.add_task(f"{data.category} / {name}", total=None)

        def progress(advance: int, total: int | None) -> None:
            bar.update(task, advance=advance, total=total)

        summary = generate_category(
            spec, data, manifest, name, out, count_per_type=count, seed=seed, workers=workers,
            overwrite=overwrite, progress=progress, artifact_dir=artifact, shard_size=shard_size,
        )  # fmt: skip
    kept = f", kept {summary.kept} from an earlier run" if summary.kept else ""
    console.print(
        f"[green]wrote[/green] {summary.written} samples{kept}: {summary.total} = {summary.count_per_type} x "
        f"{len(summary.defect_types)} type(s) ({escape(', '.join(summary.defect_types))}) in "
        f"{len(summary.shards)} shard(s), {summary.seconds:.1f} s",
        highlight=False,
        soft_wrap=True,
    )
    console.print(
        f"{escape(name if name == summary.generator else f'variant {name} of ' + summary.generator)}, "
        f"artifact {summary.artifact_hash} "
        f"({escape(str(summary.artifact_dir))}); manifests in {escape(str(summary.out_dir))}",
        highlight=False,
        soft_wrap=True,
    )
    from anoaug.budget import is_capped, warning

    if is_capped(summary.training):
        err_console.print(f"[yellow]{escape(warning(name, summary.training or {}))}[/yellow]", highlight=False)


def _with_producer_params(spec: Any, name: str, items: list[str]) -> Any:
    """The spec with producer ``name``'s params updated from ``--param KEY=VALUE`` items: a variant's own
    params, else generator.params (the spec's generator becomes ``name``, over its params per spec.producer)."""
    from anoaug.errors import SpecError
    from anoaug.pipeline.config import parse_sets

    dotted = [i for i in items if "." in i.partition("=")[0]]
    if dotted:
        raise SpecError(f"--param takes generator settings KEY=VALUE, not dotted keys: {', '.join(dotted)}")
    given = parse_sets(items)
    _, base = spec.producer(name)
    if name in spec.variants:
        variant = spec.variants[name].model_copy(update={"params": {**base, **given}})
        return spec.model_copy(update={"variants": {**spec.variants, name: variant}})
    artifact = spec.generator.artifact if name == spec.generator.name else None
    section = spec.generator.model_copy(update={"name": name, "params": {**base, **given}, "artifact": artifact})
    return spec.model_copy(update={"generator": section})


def _shard_sources(arms: list[str], shards: list[str]) -> dict[str, Path | None]:
    """Map each arm to its shard dir from `--shards NAME=DIR` pairs or one bare DIR (see `evaluate`)."""
    from anoaug.errors import AnoaugError
    from anoaug.evaluation import parse_arm

    named: dict[str, Path] = {}
    bare: list[Path] = []
    for item in shards:
        name, sep, path = item.partition("=")
        if sep and name and path:
            named[name] = Path(path)
        else:
            bare.append(Path(item))
    if len(bare) > 1:
        raise AnoaugError("give several shard dirs as --shards NAME=DIR")
    gens = [parse_arm(a).generator for a in arms]
    sources: dict[str, Path | None] = {}
    for arm, gen in zip(arms, gens, strict=True):
        if gen is None:
            sources[arm] = None
        elif arm in named or gen in named:
            sources[arm] = named.get(arm, named.get(gen))
        elif bare and (bare[0] / gen).is_dir():
            sources[arm] = bare[0] / gen
        elif bare and len({g for g in gens if g}) == 1:
            sources[arm] = bare[0]
        else:
            raise AnoaugError(f"arm {arm!r} has no shards: pass --shards {gen}=DIR (or a DIR holding {gen}/)")
    return sources


@app.command("evaluate")
@user_errors
def evaluate_cmd(
    spec_or_root: Annotated[str, typer.Argument(help="<dataset>/<category>, a spec .yaml, or a dataset root.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory to write.")],
    category: Annotated[str | None, typer.Option("--category", "-c", help="Category (needed with a root).")] = None,
    arms: Annotated[
        str | None, typer.Option(help="Comma list: none,real-few,cutpaste,crop-paste+real,... (default: spec's).")
    ] = None,
    shards: Annotated[
        list[str] | None,
        typer.Option("--shards", help="NAME=DIR per generator arm (repeatable), or one DIR holding NAME/ dirs."),
    ] = None,
    seeds: Annotated[str | None, typer.Option(help="Comma list of seeds >= 0 (default: spec's).")] = None,
    models: Annotated[
        str | None,
        typer.Option(
            help="Comma list of segmenter,classifier,padim,patchcore,supersimplenet,draem,diffusionad "
            "(default: spec's)."
        ),
    ] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Override evaluation.epochs.")] = None,
    image_size: Annotated[int | None, typer.Option(min=16, help="Override evaluation.image_size.")] = None,
    split: Annotated[Path | None, typer.Option(help="Split manifest (default: data_manifests/..., else made).")] = None,
    data_root: Annotated[Path | None, typer.Option("--data-root", help="Dataset root for a spec.")] = None,
    report: Annotated[bool, typer.Option(help="Also write the report into the run directory.")] = True,
) -> None:
    """Measure the augmentation gain: train downstream models per arm and seed, test on held-out real defects."""
    from rich.markup import escape

    from anoaug.outputs import check_out, undo_on_failure
    from anoaug.spec import EvaluationSection

    seed_list = _seed_list(seeds)
    spec, data, manifest = _spec_data_split(spec_or_root, category, data_root, split)
    check_out(out, _inputs(data))
    update: dict[str, Any] = {}
    if models:
        update["models"] = [m.strip() for m in models.split(",") if m.strip()]
    if epochs is not None:
        update["epochs"] = epochs
    if image_size is not None:
        update["image_size"] = image_size
    if update:
        spec.evaluation = EvaluationSection.model_validate({**spec.evaluation.model_dump(), **update})
    arm_list = [a.strip() for a in arms.split(",") if a.strip()] if arms else list(spec.evaluation.arms)
    sources = _shard_sources(arm_list, shards or [])

    def progress(msg: str) -> None:
        err_console.print(f"[dim]{escape(msg)}[/dim]", highlight=False, soft_wrap=True)

    from anoaug.evaluation import run_evaluation  # heavy (torch, anomalib): after the guards

    with undo_on_failure(out):  # a failure removes what it made: run.json, samples/, runs/, the report
        run_dir = run_evaluation(spec, data, manifest, sources, out, seeds=seed_list, progress=progress)
        written: dict[str, Any] = {}
        if report:
            from anoaug.report import write_report

            written = write_report(run_dir)
    console.print(f"[green]evaluated[/green] {escape(data.category)}: {escape(str(run_dir))}", highlight=False)
    for kind, path in written.items():
        console.print(f"{kind}: {escape(str(path))}", highlight=False, soft_wrap=True)


@app.command("report")
@user_errors
def report_cmd(
    run_dir: Annotated[Path, typer.Argument(help="Run directory written by `anoaug evaluate`.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Report directory (default: RUN_DIR).")] = None,
) -> None:
    """Write report.json, report.md, report.html (+ figures/) and results.csv for an evaluation run."""
    from rich.markup import escape

    from anoaug.report import write_report

    for kind, path in write_report(run_dir, out).items():
        console.print(f"{kind}: {escape(str(path))}", highlight=False, soft_wrap=True)


# --- pretrain: a small Stable Diffusion learned from normal training images (anoaug.generators.diffusion.pretrain) ---


@app.command("pretrain")
@user_errors
def pretrain_cmd(
    spec_or_root: Annotated[str, typer.Argument(help="<dataset>/<category>, a spec .yaml, or a dataset root.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Model folder (diffusers layout; never inside the data).")],
    category: Annotated[
        list[str] | None,
        typer.Option("--category", "-c", help="Category (repeatable; default with a root: all of them)."),
    ] = None,
    max_train_seconds: Annotated[
        float | None,
        typer.Option(
            "--max-train-seconds", "--time-budget", min=1, help="Optional time cap of both phases (seconds)."
        ),
    ] = None,
    resolution: Annotated[int | None, typer.Option(min=16, help="Crop side in pixels.")] = None,
    seed: Annotated[int | None, typer.Option(min=0, help="Training seed (the split uses the spec's).")] = None,
    data_root: Annotated[Path | None, typer.Option("--data-root", help="Dataset root for a spec.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Discard a different run's checkpoint in --out.")] = False,
    params: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", help="Pretrain setting KEY=VALUE (YAML value), e.g. unet_steps=500; repeatable."),
    ] = None,
) -> None:
    """Pretrain a small Stable Diffusion (VAE, CLIP text encoder, UNet) on the categories' normal training images.

    Only `train_normal` images of each split are used (checked by the leak guard). Progress shows an ETA;
    the run checkpoints, and the same command after a crash or kill resumes it. The folder loads with
    `diffusion-sd --param model=OUT` and the diffusers Stable Diffusion pipelines; model_card.json has the figures.
    """
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from anoaug.errors import SpecError
    from anoaug.generators.diffusion.pretrain import PretrainSettings, pretrain_base
    from anoaug.pipeline.config import parse_sets
    from anoaug.registry import validate_settings

    given: dict[str, Any] = parse_sets(params)
    dotted = [k for k, v in given.items() if isinstance(v, dict)]
    if dotted:
        raise SpecError(f"--param takes pretrain settings KEY=VALUE, not dotted keys: {', '.join(dotted)}")
    for key, value in (("max_train_seconds", max_train_seconds), ("resolution", resolution), ("seed", seed)):
        if value is not None:
            given[key] = value
    settings = validate_settings(PretrainSettings, given, "pretrain", None)
    names: list[str | None] = list(dict.fromkeys(category or []))
    if not names and Path(spec_or_root).is_dir():
        from anoaug.data.formats import list_categories

        names = list(list_categories(spec_or_root))
    names = names or [None]  # a spec: its own category
    sources = []
    for name in names:
        _, data, manifest = _spec_data_split(spec_or_root, name, data_root, None)
        sources.append((data, manifest))
    from anoaug.outputs import check_out

    check_out(out, [p for data, _ in sources for p in _inputs(data)])

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"))
    with Progress(*columns, console=err_console, transient=True) as bar:
        tasks: dict[str, Any] = {}

        def progress(p: Any) -> None:
            if p.phase not in tasks:
                tasks[p.phase] = bar.add_task(p.phase.upper(), total=p.total, info="")
            eta = f"{int(p.eta_s // 60)}:{int(p.eta_s % 60):02d}"
            info = f"loss {p.loss:.4f}  {p.steps_per_s:.2f} steps/s  ETA {eta}"
            bar.update(tasks[p.phase], completed=p.step, total=p.total, info=info)

        folder = pretrain_base(settings, sources, out, progress=progress, overwrite=overwrite)
    from anoaug.generators.diffusion.pretrain import read_card

    card = read_card(folder)
    resumed = card.get("resumed_from")
    if resumed:
        console.print(f"resumed from VAE step {resumed['vae']}, UNet step {resumed['unet']}", highlight=False)
    steps, secs, stop = card["steps"], card["seconds"], card["stopped_by"]
    used = ", ".join(f"{escape(k)} {v}" for k, v in card["images_used"].items())
    console.print(
        f"[green]pretrained[/green] {card['unet_kind']} model on {used} normal image(s), {card['resolution']} px: "
        f"VAE {steps['vae']} steps ({stop['vae']}), UNet {steps['unet']} steps ({stop['unet']}, "
        f"{card['steps_per_s']['unet'] or 0:.2f} steps/s at batch {card['batch_size']['unet']}), {secs['total']:.0f} s",
        highlight=False,
        soft_wrap=True,
    )
    loss = card["unet_heldout_loss"]
    per_cat = ", ".join(f"{escape(k)} {v:.2f}" for k, v in card["vae_psnr_db_per_category"].items())
    console.print(
        f"VAE PSNR {card['vae_psnr_db']:.2f} dB on held-out normal crops ({per_cat}; untrained: "
        f"{card['vae_psnr_init_db']:.2f}); UNet held-out loss {loss['init']:.4f} -> {loss['final']:.4f}",
        highlight=False,
        soft_wrap=True,
    )
    console.print(f"model: {escape(str(folder))}", highlight=False, soft_wrap=True)
    from anoaug.budget import is_capped, warning

    if is_capped(card.get("training")):
        err_console.print(f"[yellow]{escape(warning('pretrain', card['training']))}[/yellow]", highlight=False)


@app.command("export")
@user_errors
def export_cmd(
    shards: Annotated[Path, typer.Argument(help="Generation directory (shards + manifests of `anoaug generate`).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="New folder (refused if non-empty or inside a dataset).")],
    layout: Annotated[str, typer.Option(help="mvtec (test/, ground_truth/) or folder (defect/, mask/).")] = "mvtec",
    normals: Annotated[
        Path | None,
        typer.Option("--normals", help="Dataset root the shards came from: copy its training normals too."),
    ] = None,
) -> None:
    """Write generated pairs as an MVTec-layout or Folder-layout dataset (for anomalib's Folder or your trainer)."""
    from rich.markup import escape

    from anoaug.shards.export import export_shards

    s = export_shards(shards, out, layout, normals)
    types = ", ".join(f"{t} {n}" for t, n in s.counts.items())
    normal_note = f" and {s.normals} training normals" if s.normals else " (no normals: see --normals)"
    console.print(
        f"[green]exported[/green] {s.total} pairs ({escape(types)}){normal_note} in the {s.layout} layout: "
        f"{escape(str(s.category_dir))}",
        highlight=False,
        soft_wrap=True,
    )


# --- pipeline: `anoaug run`, `anoaug demo`, `anoaug serve` (Prefect flows in flows/, imported lazily) ---


def main() -> None:
    """Console-script entry point."""
    app(prog_name="anoaug")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
