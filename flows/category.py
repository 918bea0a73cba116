"""The category flow: split -> masks -> generate + quality (one task each per generator or variant) -> evaluate
-> report.

Every task is a few lines over an ``anoaug.pipeline.stages`` function. Cache keys are the stages'
fingerprints (spec section + input content hashes, never a run id), results are persisted under
``<out>/.prefect-results``, and a cached result is used only while the stage directory still holds the
outputs it names (else the task reruns). The stages also skip finished work on their own, so a rerun
is near instant with or without Prefect's cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.client.schemas.objects import State, TaskRun
from prefect.context import TaskRunContext

from anoaug.errors import AnoaugError
from anoaug.pipeline import stages
from anoaug.pipeline.config import check_spec, prepare_spec
from anoaug.pipeline.fingerprint import fingerprint
from anoaug.pipeline.run_manifest import build_run_manifest, write_run_manifest
from anoaug.pipeline.stages import StageError, StageResult
from anoaug.spec import PipelineSpec

RESULTS_DIR = ".prefect-results"


# --- cache keys and retry policy ---------------------------------------------------------------------


def _key(stage: str, fp: str, run_dir: Any) -> str:
    # The run dir is part of the key because a cached result names files in it.
    return f"anoaug-{stage}-{fp}-{fingerprint(str(run_dir))[:8]}"


def split_key(ctx: TaskRunContext, p: dict[str, Any]) -> str:
    return _key("split", stages.split_fingerprint(p["spec"], p["root"]), p["run_dir"])


def masks_key(ctx: TaskRunContext, p: dict[str, Any]) -> str:
    return _key("masks", stages.masks_fingerprint(p["spec"], p["split"], p.get("base")), p["run_dir"])


def pretrain_key(ctx: TaskRunContext, p: dict[str, Any]) -> str:
    return _key("pretrain", stages.pretrain_fingerprint(p["spec"], p["split"]), p["run_dir"])


def generate_key(ctx: TaskRunContext, p: dict[str, Any]) -> str:
    fp = stages.generate_fingerprint(p["spec"], p["split"], p["masks"], p["generator"], p.get("base"))
    return _key(f"generate-{p['generator']}", fp, p["run_dir"])


def quality_key(ctx: TaskRunContext, p: dict[str, Any]) -> str:
    fp = stages.quality_fingerprint(p["spec"], p["split"], p["generated"])
    return _key(f"quality-{p['producer']}", fp, p["run_dir"])


def evaluate_key(ctx: TaskRunContext, p: dict[str, Any]) -> str:
    return _key("evaluate", stages.evaluate_fingerprint(p["spec"], p["split"], p["generated"]), p["run_dir"])


def report_key(ctx: TaskRunContext, p: dict[str, Any]) -> str:
    return _key("report", stages.report_fingerprint(p["spec"], p["evaluation"], p.get("quality")), p["run_dir"])


def retry_unless_bad_input(task: Any, task_run: TaskRun, state: State) -> bool:
    """Retry crashes and resource errors; never bad input (an AnoaugError cause), which would fail again."""
    try:
        state.result(raise_on_failure=True)
    except StageError as exc:
        return exc.retryable
    except AnoaugError:
        return False
    except Exception:
        return True
    return True


# --- tasks: each a few lines over a library stage ------------------------------------------------


@task(name="split", cache_key_fn=split_key, persist_result=True)
def split_task(spec: PipelineSpec, root: Path, run_dir: Path, force: bool = False) -> StageResult:
    """Leak-free split manifest."""
    return stages.stage_split(spec, root, run_dir, force=force)


@task(name="masks", cache_key_fn=masks_key, persist_result=True)
def masks_task(
    spec: PipelineSpec,
    root: Path,
    run_dir: Path,
    split: StageResult,
    force: bool = False,
    base: StageResult | None = None,
) -> StageResult:
    """Foreground + synthesized masks (QA sample); ``base``: the pretrain result for learned masks on it."""
    return stages.stage_masks(spec, root, run_dir, split, force=force, base=base)


@task(
    name="pretrain",
    cache_key_fn=pretrain_key,
    persist_result=True,
    retries=1,
    retry_delay_seconds=5,
    retry_condition_fn=retry_unless_bad_input,
)
def pretrain_task(
    spec: PipelineSpec, root: Path, run_dir: Path, split: StageResult, force: bool = False
) -> StageResult:
    """The base model of `model: base` (resumable: a retry continues from its checkpoint)."""
    return stages.stage_pretrain(spec, root, run_dir, split, force=force)


@task(
    name="generate",
    task_run_name="generate-{generator}",
    cache_key_fn=generate_key,
    persist_result=True,
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=retry_unless_bad_input,
)
def generate_task(
    spec: PipelineSpec,
    root: Path,
    run_dir: Path,
    split: StageResult,
    masks: StageResult | None,
    generator: str,
    force: bool = False,
    base: StageResult | None = None,
) -> StageResult:
    """Fit one producer (a generator or a variant) and write its shards (resumable: a retry continues them)."""
    return stages.stage_generate(spec, root, run_dir, split, masks, generator, force=force, base=base)


@task(name="quality", task_run_name="quality-{producer}", cache_key_fn=quality_key, persist_result=True)
def quality_task(
    spec: PipelineSpec,
    root: Path,
    run_dir: Path,
    split: StageResult,
    generated: StageResult,
    producer: str,
    force: bool = False,
) -> StageResult:
    """Generation-quality figures of one producer's shards (quality.json)."""
    return stages.stage_quality(spec, root, run_dir, split, generated, producer, force=force)


@task(
    name="evaluate",
    cache_key_fn=evaluate_key,
    persist_result=True,
    retries=1,
    retry_delay_seconds=5,
    retry_condition_fn=retry_unless_bad_input,
)
def evaluate_task(
    spec: PipelineSpec,
    root: Path,
    run_dir: Path,
    split: StageResult,
    generated: dict[str, StageResult],
    force: bool = False,
) -> StageResult:
    """Downstream training and evaluation of every arm and seed."""
    return stages.stage_evaluate(spec, root, run_dir, split, generated, force=force)


@task(name="report", cache_key_fn=report_key, persist_result=True)
def report_task(
    spec: PipelineSpec,
    run_dir: Path,
    evaluation: StageResult,
    force: bool = False,
    quality: dict[str, StageResult] | None = None,
) -> StageResult:
    """report.json/md/html and results.csv."""
    return stages.stage_report(spec, run_dir, evaluation, force=force, quality=quality)


# --- the flow ---------------------------------------------------------------------------------------


def _call(t: Any, storage: Path, out_dir: Path, fp: str, force: bool, **params: Any) -> StageResult:
    """Run task `t`; reuse Prefect's cached result only if `out_dir` still holds its outputs."""
    refresh = force or not stages.is_complete(out_dir, fp)
    stage = t.name if "generator" not in params else f"generate:{params['generator']}"
    stage = f"quality:{params['producer']}" if "producer" in params else stage
    stages.notify("start", stage, None)
    state = t.with_options(refresh_cache=refresh, result_storage=storage)(**params, force=force, return_state=True)
    result: StageResult = state.result()  # raises the stage's error on failure
    if state.name == "Cached":
        result = result.model_copy(update={"skipped": True, "seconds": 0.0})
    result.info = {**result.info, "prefect_state": state.name}
    stages.notify("done", stage, result)
    return result


def _run_name() -> str:
    from prefect.runtime import flow_run

    spec = flow_run.parameters.get("spec")
    if isinstance(spec, dict):
        return f"{spec['dataset']['name']}-{spec['dataset']['category']}"
    text = str(spec)
    if text.endswith((".yaml", ".yml")):  # a spec file: its name, not its whole path
        return Path(text).stem
    return text.replace("/", "-")


def resolve_spec_param(
    spec: str | dict[str, Any],
    profile: str | None = None,
    seed: int | None = None,
    generator: str | None = None,
    sets: dict[str, Any] | None = None,
) -> PipelineSpec:
    """A flow's `spec` parameter: a reference / .yaml path (options applied) or a full spec dict."""
    if isinstance(spec, dict):
        data = {k: v for k, v in spec.items() if k != "source"}
        s = PipelineSpec.model_validate(data)
        s.source = spec.get("source")
        return check_spec(s)
    return prepare_spec(spec, profile=profile, seed=seed, generator=generator, sets=sets)


def run_category_stages(
    spec: PipelineSpec, root: Path, out: Path, force: bool = False, skip_masks: bool = False
) -> tuple[Path, list[StageResult]]:
    """Call the stage tasks in order; return the run directory and the stage results."""
    run_dir = stages.run_dir_for(spec, out)
    stages.stage_validate(spec, root, run_dir)  # the input guard (cached; `anoaug run` has run it already)
    storage = out / RESULTS_DIR
    d = stages.stage_dir
    results: list[StageResult] = []
    split = _call(
        split_task, storage, d(run_dir, "split"), stages.split_fingerprint(spec, root), force,
        spec=spec, root=root, run_dir=run_dir,
    )  # fmt: skip
    results.append(split)
    base: StageResult | None = None

    def pretrain() -> StageResult:
        r = _call(
            pretrain_task, storage, d(run_dir, "pretrain"), stages.pretrain_fingerprint(spec, split), force,
            spec=spec, root=root, run_dir=run_dir, split=split,
        )  # fmt: skip
        results.append(r)
        return r

    if stages.masks_use_base_model(spec):  # learned masks on the base model: pretrain before masks
        base = pretrain()
    masks: StageResult | None = None
    if not skip_masks:
        masks = _call(
            masks_task, storage, d(run_dir, "masks"), stages.masks_fingerprint(spec, split, base), force,
            spec=spec, root=root, run_dir=run_dir, split=split, base=base,
        )  # fmt: skip
        results.append(masks)
    if base is None and stages.needs_base_model(spec):
        base = pretrain()
    generated: dict[str, StageResult] = {}
    quality: dict[str, StageResult] = {}
    for name in spec.producers():
        fp = stages.generate_fingerprint(spec, split, masks, name, base)
        generated[name] = _call(
            generate_task, storage, d(run_dir, "generate", name), fp, force,
            spec=spec, root=root, run_dir=run_dir, split=split, masks=masks, generator=name, base=base,
        )  # fmt: skip
        results.append(generated[name])
        qfp = stages.quality_fingerprint(spec, split, generated[name])
        quality[name] = _call(
            quality_task, storage, d(run_dir, "quality", name), qfp, force,
            spec=spec, root=root, run_dir=run_dir, split=split, generated=generated[name], producer=name,
        )  # fmt: skip
        results.append(quality[name])
    evaluation = _call(
        evaluate_task, storage, d(run_dir, "evaluate"), stages.evaluate_fingerprint(spec, split, generated), force,
        spec=spec, root=root, run_dir=run_dir, split=split, generated=generated,
    )  # fmt: skip
    results.append(evaluation)
    report = _call(
        report_task, storage, d(run_dir, "report"), stages.report_fingerprint(spec, evaluation, quality), force,
        spec=spec, run_dir=run_dir, evaluation=evaluation, quality=quality,
    )  # fmt: skip
    results.append(report)
    return run_dir, results


@flow(name="anoaug-category", flow_run_name=_run_name, persist_result=False)
def category_flow(
    spec: str | dict[str, Any],
    out: str = "runs",
    data_root: str | None = None,
    profile: str | None = None,
    seed: int | None = None,
    generator: str | None = None,
    sets: dict[str, Any] | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """One category end to end; returns the run manifest (as a dict) with `run_dir` and `manifest`.

    `spec` is `<dataset>/<category>`, a .yaml path, or a full spec dict (then the options that edit
    a spec are ignored). Outputs go to `<out>/<dataset>/<category>/`.
    """
    from prefect.runtime import flow_run

    s = resolve_spec_param(spec, profile, seed, generator, sets)
    out_path = Path(out).resolve()
    root = stages.resolve_data_root(s, data_root, out_path)
    run_dir, results = run_category_stages(s, root, out_path, force=force)
    manifest = build_run_manifest(s, root, run_dir, results, {"prefect_flow_run_id": str(flow_run.id)})
    path = write_run_manifest(run_dir, manifest)
    return {**manifest.model_dump(mode="json"), "run_dir": str(run_dir), "manifest": str(path)}
