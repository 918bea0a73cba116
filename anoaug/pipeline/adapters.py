"""Thin calls from the pipeline stages into the stage libraries (masks, shards, evaluation, report).

Kept in one module so that the pipeline's contract with each library is in one place. Each function
returns a ``StageOutput``: the paths the stage wrote and a little JSON for the run manifest.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from anoaug.errors import AnoaugError
from anoaug.pipeline.stages import ProgressFn, StageOutput
from anoaug.spec import PipelineSpec

MASKS_QA_COUNT = 32  # masks written by the masks stage: a contact sheet and statistics, not the bulk


class StageUnavailable(AnoaugError):
    """A stage's library is not installed in this version of anoaug."""


def _module(name: str, stage: str) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and name.startswith(exc.name):
            raise StageUnavailable(f"the {stage} stage needs {name}, which this anoaug does not have") from None
        raise


def _jsonable(obj: Any) -> Any:
    """A small JSON view of a library's summary object (dataclass, pydantic model or dict)."""
    import dataclasses

    if hasattr(obj, "model_dump"):
        obj = obj.model_dump(mode="json")
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj[:50]]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def run_masks(spec: PipelineSpec, data: Any, split: Any, out: Path) -> StageOutput:
    """Foreground + a QA sample of synthesized masks, trimaps, contact sheet (anoaug.masks.run)."""
    mod = _module("anoaug.masks.run", "masks")
    res = mod.run_masks(spec, MASKS_QA_COUNT, out, seed=spec.seed, data_root=data.root)
    outputs = {"masks": out / "masks.parquet", "summary": out / "summary.json"}
    if (out / "contact_sheet.png").is_file():
        outputs["contact_sheet"] = out / "contact_sheet.png"
    info = {"kind": res.kind, "kind_reason": res.kind_reason, "written": res.written, "failures": len(res.failures)}
    return StageOutput(outputs, info)


def run_generate(
    spec: PipelineSpec,
    data: Any,
    split: Any,
    generator: str,
    out: Path,
    resume: bool,
    progress: ProgressFn | None,
) -> StageOutput:
    """Fit `generator` and write its WebDataset shards + samples/shards manifests (anoaug.shards)."""
    mod = _module("anoaug.shards", "generate")
    gen_spec = spec.model_copy(deep=True)
    if generator != spec.generator.name:
        gen_spec.generator.name = generator
        gen_spec.generator.params = {}
    summary = mod.generate_category(
        gen_spec,
        data,
        split,
        generator,
        out,
        count_per_type=spec.generation.count_per_type,
        seed=spec.seed,
        workers=spec.generation.workers,
        overwrite=not resume,
        progress=progress,
    )
    outputs: dict[str, Path] = {}
    for name, p in (("samples", summary.samples_manifest), ("shards", summary.shards_manifest)):
        if p is not None:
            outputs[name] = Path(p)
    outputs["artifact"] = Path(summary.artifact_dir)
    info = {
        "generator": generator,
        "artifact_hash": summary.artifact_hash,
        "total": summary.total,
        "written": summary.written,
        "kept": summary.kept,
        "shards": len(summary.shards),
        "defect_types": list(summary.defect_types),
    }
    return StageOutput(outputs, info)


def run_evaluate(
    spec: PipelineSpec,
    data: Any,
    split: Any,
    sources: dict[str, Path],
    out: Path,
    progress: ProgressFn | None,
) -> StageOutput:
    """Train and evaluate every arm and seed (anoaug.evaluation.run_evaluation)."""
    mod = _module("anoaug.evaluation", "evaluate")
    from anoaug.pipeline.stages import arm_generator

    arm_sources: dict[str, Path | None] = {}
    for arm in spec.evaluation.arms:
        gen = arm_generator(arm)
        arm_sources[arm] = sources[gen] if gen is not None else None
    result = Path(mod.run_evaluation(spec, data, split, arm_sources, out, progress=progress))
    outputs = {"run": result / "run.json", "runs": result / "runs"}
    return StageOutput(outputs, {"arms": list(arm_sources), "models": spec.evaluation.models})


def run_report(spec: PipelineSpec, evaluation_dir: Path, out: Path) -> StageOutput:
    """report.json/md/html + results.csv + figures/ from an evaluation directory (anoaug.report)."""
    mod = _module("anoaug.report", "report")
    paths = {str(k): Path(v) for k, v in mod.write_report(evaluation_dir, out).items()}
    if (out / "figures").is_dir():
        paths["figures"] = out / "figures"
    return StageOutput(paths, {})
