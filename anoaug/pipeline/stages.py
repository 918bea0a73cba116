"""The pipeline of one category as plain, idempotent stage functions.

Each ``stage_*`` function computes its fingerprint (``*_fingerprint``: the spec section it reads plus
the content hashes of its inputs), and skips its work when ``<stage dir>/stage.json`` records that
fingerprint as done and the outputs are still there. Otherwise it clears the stage directory (unless
an interrupted run with the same fingerprint can be resumed), runs, hashes its outputs and records
them. A failure is raised as ``StageError`` naming the stage and the cause, with the traceback in
``<stage dir>/error.log``. The stage bodies call the stage libraries (masks, shards, evaluation, report)
directly; those are imported inside the bodies so that importing the pipeline stays light.

Layout of a run directory (``<out>/<dataset>/<category>/``)::

    split/split.parquet        masks/...        generate/<producer>/...  (a generator or a variant)
    quality/<producer>/quality.json   (generation-quality figures of each producer's shards)
    evaluate/...               report/report.html ...          run.json
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from anoaug.atomic import atomic_write_text
from anoaug.budget import can_continue, cap_of, is_capped, warning, without_cap
from anoaug.errors import AnoaugError, SpecError
from anoaug.pipeline.fingerprint import files_hash, fingerprint, listing_hash
from anoaug.spec import BASE_MODEL, PipelineSpec, arm_producer

STAGE_FILE = "stage.json"
ERROR_FILE = "error.log"
STAGES = ("split", "masks", "pretrain", "generate", "quality", "evaluate", "report", "validate")
MASKS_QA_COUNT = 32  # masks written by the masks stage: a contact sheet and statistics, not the bulk


class StageError(AnoaugError):
    """A stage failed; ``stage`` names it and ``cause`` is the original exception."""

    def __init__(self, stage: str, cause: BaseException, log: Path | None = None) -> None:
        self.stage = stage
        self.cause = cause
        self.log = log
        where = f" (traceback: {log})" if log is not None else ""
        super().__init__(f"stage '{stage}' failed: {type(cause).__name__}: {cause}{where}")

    @property
    def retryable(self) -> bool:
        """False for bad input (AnoaugError): retrying cannot help. True for anything else (I/O, memory)."""
        return not isinstance(self.cause, AnoaugError)

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across Dask workers and Prefect results
        return (type(self), (self.stage, self.cause, self.log))


class StageResult(BaseModel):
    """What a stage produced: where, under which fingerprint, and the hash of its outputs."""

    stage: str
    fingerprint: str
    out_dir: str
    outputs: dict[str, str] = Field(default_factory=dict, description="name -> path relative to out_dir")
    content_hash: str = ""
    status: Literal["running", "done"] = "done"
    skipped: bool = False
    seconds: float = 0.0
    info: dict[str, Any] = Field(default_factory=dict)

    def path(self, name: str) -> Path:
        """Absolute path of the output called `name`."""
        return Path(self.out_dir) / self.outputs[name]

    def outputs_exist(self) -> bool:
        return all((Path(self.out_dir) / rel).exists() for rel in self.outputs.values())


@dataclass
class StageOutput:
    """What a stage body returns: its outputs (paths under the stage dir) and small JSON info."""

    outputs: dict[str, Path]
    info: dict[str, Any] = field(default_factory=dict)


# --- progress (the CLI installs a rich reporter; library code stays UI-free) ----------------------

ProgressFn = Callable[..., None]  # progress(advance, total) for counted work, progress("message") for status
_reporter: Callable[[str], ProgressFn] | None = None


def set_progress_reporter(factory: Callable[[str], ProgressFn] | None) -> None:
    """Install `factory(description) -> progress`; None turns progress off.

    A progress callback is called as ``progress(advance, total)`` (samples done, total or None) or
    ``progress("message")`` (a status line: evaluation reports what it is training).
    """
    global _reporter
    _reporter = factory


def progress_for(description: str) -> ProgressFn | None:
    """The progress callback for a long stage, or None when no reporter is installed."""
    return _reporter(description) if _reporter is not None else None


StageListener = Callable[[str, str, "StageResult | None"], None]  # (event "start"|"done", stage, result)
_listener: StageListener | None = None


def set_stage_listener(listener: StageListener | None) -> None:
    """Install a callback told when each stage starts and finishes (the CLI prints a line)."""
    global _listener
    _listener = listener


def notify(event: str, stage: str, result: StageResult | None) -> None:
    """Tell the installed listener (if any) about a stage event; never raises."""
    if _listener is not None:
        with contextlib.suppress(Exception):  # a display problem must not fail the pipeline
            _listener(event, stage, result)


# --- the idempotent stage runner --------------------------------------------------------------------


def read_stage(out_dir: str | Path) -> StageResult | None:
    """The stage record in `out_dir`, or None if absent or unreadable."""
    path = Path(out_dir) / STAGE_FILE
    try:
        return StageResult.model_validate_json(path.read_text())
    except (OSError, ValueError):
        return None


def is_complete(out_dir: str | Path, fp: str, cap: float | None = None) -> bool:
    """True when `out_dir` holds finished outputs for fingerprint `fp`; a training that a time cap stopped
    early (``info["training"]``) is complete only while the cap ``cap`` (None: none) would not get further."""
    rec = read_stage(out_dir)
    return (
        rec is not None
        and rec.status == "done"
        and rec.fingerprint == fp
        and rec.outputs_exist()
        and not can_continue(rec.info.get("training"), cap)
    )


def training_warning(stage: str, info: dict[str, Any]) -> str | None:
    """The one-line warning for a stage (its name and ``info``) whose training the time cap stopped early,
    e.g. "warning: diffusion-tiny trained 156 / 2500 steps (time cap 420 s)"; None otherwise."""
    rec = info.get("training")
    if not is_capped(rec):
        return None
    name = info.get("variant") or info.get("generator") or stage
    return warning(str(name), rec)


def _write_stage(out_dir: Path, result: StageResult) -> None:
    atomic_write_text(out_dir / STAGE_FILE, result.model_dump_json(indent=2))


def _clear(out_dir: Path) -> None:
    """Empty a stage directory this package made (it holds a stage record); leave others alone."""
    if (out_dir / STAGE_FILE).is_file():
        for child in out_dir.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()


def run_stage(
    stage: str,
    fp: str,
    out_dir: str | Path,
    body: Callable[[Path, bool], StageOutput],
    force: bool = False,
    cap: float | None = None,
) -> StageResult:
    """Run `body(out_dir, resume)` unless `out_dir` already holds its outputs for fingerprint `fp`.

    `resume` is True when an interrupted run with the same fingerprint left partial outputs (a
    resumable body, like shard writing, continues from them), or when a training stopped early by its
    time cap can get further under ``cap`` (the body continues it from its checkpoint); otherwise the
    directory is cleared.
    """
    out_dir = Path(out_dir).resolve()
    existing = read_stage(out_dir)
    if not force and existing is not None and is_complete(out_dir, fp, cap):
        return existing.model_copy(update={"skipped": True, "seconds": 0.0})
    resume = not force and existing is not None and existing.fingerprint == fp and existing.status == "running"
    resume = resume or (
        not force and existing is not None and existing.fingerprint == fp and existing.status == "done"
        and can_continue(existing.info.get("training"), cap)
    )  # fmt: skip
    if out_dir.exists() and not resume:
        _clear(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / ERROR_FILE).unlink(missing_ok=True)
    _write_stage(out_dir, StageResult(stage=stage, fingerprint=fp, out_dir=str(out_dir), status="running"))
    t0 = time.perf_counter()
    try:
        produced = body(out_dir, resume)
    except StageError:
        raise
    except Exception as exc:
        log = out_dir / ERROR_FILE
        log.write_text("".join(traceback.format_exception(exc)))
        raise StageError(stage, exc, log) from exc
    outputs = {name: _rel(p, out_dir) for name, p in produced.outputs.items()}
    result = StageResult(
        stage=stage,
        fingerprint=fp,
        out_dir=str(out_dir),
        outputs=outputs,
        content_hash=files_hash(out_dir, sorted(outputs.values())),
        status="done",
        seconds=round(time.perf_counter() - t0, 3),
        info=json.loads(json.dumps(produced.info, default=str)),
    )
    missing = [n for n, rel in outputs.items() if not (out_dir / rel).exists()]
    if missing:
        raise StageError(stage, AnoaugError(f"stage did not write its outputs {missing}", out_dir))
    _write_stage(out_dir, result)
    return result


def _rel(path: Path, base: Path) -> str:
    path = Path(path)
    path = path if path.is_absolute() else base / path
    try:
        return path.resolve().relative_to(base).as_posix()
    except ValueError:
        return str(path.resolve())  # outside the stage dir: kept absolute


# --- run context -----------------------------------------------------------------------------------


def run_dir_for(spec: PipelineSpec, out: str | Path) -> Path:
    """`<out>/<dataset>/<category>`: where one category's stages write."""
    return Path(out).resolve() / spec.dataset.name / spec.dataset.category


def stage_dir(run_dir: str | Path, stage: str, producer: str | None = None) -> Path:
    """`<run_dir>/<stage>`, or `<run_dir>/{generate,quality}/<producer>` for one generator or variant."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages are {STAGES}")
    base = Path(run_dir) / stage
    return base / producer if producer else base


def _read_data(spec: PipelineSpec, root: str | Path):  # -> CategoryData
    from anoaug.data.formats import read_category

    return read_category(root, spec.dataset.category, spec.dataset.format)


def _read_split(split: StageResult):  # -> SplitManifest
    from anoaug.data.split import read_split

    return read_split(split.path("split"))


# --- validate (the input guard, before any stage writes) ---------------------------------------------


def validate_fingerprint(spec: PipelineSpec, root: str | Path) -> str:
    """Mask tolerance + the dataset listing (paths, sizes, mtimes): a rerun on unchanged data costs a stat."""
    data = _read_data(spec, root)
    rels = [r.relpath for r in data.records] + [r.mask_relpath for r in data.records if r.mask_relpath]
    tol = spec.dataset.mask_tolerance
    return fingerprint("validate", spec.dataset.name, spec.dataset.category, tol, listing_hash(root, rels))


def stage_validate(spec: PipelineSpec, root: str | Path, run_dir: str | Path, force: bool = False) -> StageResult:
    """The checks of `anoaug validate` on every file of the category (anoaug.data.guard), cached by the
    listing's hash in `validate/stage.json`. Unlike the other stages nothing is written unless it passes:
    a bad file raises its DatasetError (one line naming it) and leaves the run directory as it was."""
    from anoaug.data.guard import guard_category

    out_dir = stage_dir(Path(run_dir).resolve(), "validate")
    fp = validate_fingerprint(spec, root)
    existing = read_stage(out_dir)
    if not force and existing is not None and is_complete(out_dir, fp):
        return existing.model_copy(update={"skipped": True, "seconds": 0.0})
    t0 = time.perf_counter()
    data = guard_category(_read_data(spec, root), spec.dataset.mask_tolerance)
    out_dir.mkdir(parents=True, exist_ok=True)
    info = {"images": len(data.records), "masks": sum(r.mask_relpath is not None for r in data.records)}
    atomic_write_text(out_dir / "report.json", json.dumps({"problems": [], **info}, indent=2))
    result = StageResult(
        stage="validate", fingerprint=fp, out_dir=str(out_dir), outputs={"report": "report.json"},
        content_hash=files_hash(out_dir, ["report.json"]), seconds=round(time.perf_counter() - t0, 3), info=info,
    )  # fmt: skip
    _write_stage(out_dir, result)
    return result


# --- split ------------------------------------------------------------------------------------------


def split_fingerprint(spec: PipelineSpec, root: str | Path) -> str:
    """Split section + seed + the dataset listing (paths, sizes, mtimes: no file is read)."""
    data = _read_data(spec, root)
    rels = [r.relpath for r in data.records] + [r.mask_relpath for r in data.records if r.mask_relpath]
    return fingerprint(
        "split", spec.dataset.name, spec.dataset.category, spec.seed, spec.split, listing_hash(root, rels)
    )


def stage_split(spec: PipelineSpec, root: str | Path, run_dir: str | Path, force: bool = False) -> StageResult:
    """Write the leak-free split manifest of the category (`split/split.parquet`)."""

    def body(out: Path, resume: bool) -> StageOutput:
        from anoaug.data.split import make_split, write_split

        data = _read_data(spec, root)
        s = spec.split
        manifest = make_split(data, spec.seed, s.gen_train_fraction, s.min_gen_train, s.min_eval)
        path = write_split(manifest, out / "split.parquet", root=root)
        counts: dict[str, int] = {}
        for role in manifest.table.column("role").to_pylist():
            counts[role] = counts.get(role, 0) + 1
        return StageOutput({"split": path}, {"counts": counts, "defect_types": manifest.defect_types()})

    return run_stage("split", split_fingerprint(spec, root), stage_dir(run_dir, "split"), body, force)


# --- masks ------------------------------------------------------------------------------------------


def masks_section(spec: PipelineSpec, producer: str | None = None) -> dict[str, Any]:
    """The masks section as fingerprinted: ``masks.learned`` only counts when ``source: learned`` (so tuning
    it never invalidates bank runs, whose keys stay what they were before the learned source existed). With
    ``producer``: that producer's masks (a variant's own ``masks`` merged over the run's, ``spec.masks_for``)."""
    masks = spec.masks_for(producer)
    learned = masks.source == "learned"
    return masks.model_dump(mode="json", exclude=None if learned else {"learned"})


def masks_fingerprint(spec: PipelineSpec, split: StageResult, base: StageResult | None = None) -> str:
    """Masks section (``masks.learned`` included) + kind + seed + split hash (+ the base model's hash when
    learned masks run on ``model: base``)."""
    parts: list[Any] = ["masks", spec.dataset.kind, spec.seed, masks_section(spec), split.content_hash]
    if masks_use_base_model(spec):
        parts.append({"base_model": base.content_hash if base is not None else None})
    return fingerprint(*parts)


def stage_masks(
    spec: PipelineSpec,
    root: str | Path,
    run_dir: str | Path,
    split: StageResult,
    force: bool = False,
    base: StageResult | None = None,
) -> StageResult:
    """Foreground + synthesized masks (a QA sample of what generation will place), on the split stage's
    manifest; ``base`` is the pretrain stage's result when learned masks run on ``model: base``."""

    def body(out: Path, resume: bool) -> StageOutput:
        from anoaug.masks.run import run_masks

        data, manifest = _read_data(spec, root), _read_split(split)
        res = run_masks(with_base_masks(spec, base), MASKS_QA_COUNT, out, data=data, split=manifest)
        outputs = {"masks": out / "masks.parquet", "summary": out / "summary.json"}
        if (out / "contact_sheet.png").is_file():
            outputs["contact_sheet"] = out / "contact_sheet.png"
        info = {"kind": res.kind, "kind_reason": res.kind_reason, "written": res.written, "failures": len(res.failures)}
        info["acceptance_rate"] = res.summary.get("acceptance_rate")
        info["kind_confidence"] = res.summary.get("kind_confidence")
        info["kind_evidence"] = res.summary.get("kind_evidence")
        info["bad_images"] = res.summary.get("bad_images", [])
        if "learned" in res.summary:
            learned = res.summary["learned"]
            info["learned"] = {k: learned[k] for k in ("sampled", "accepted", "acceptance_rate", "train")}
        return StageOutput(outputs, info)

    fp = masks_fingerprint(spec, split, base)
    return run_stage("masks", fp, stage_dir(run_dir, "masks"), body, force)


# --- pretrain (the base model of `model: base`) -----------------------------------------------------

PRETRAIN_MODEL_DIR = "model"


def masks_use_base_model(spec: PipelineSpec, producer: str | None = None) -> bool:
    """True when the run's masks (with ``producer``: that producer's, a variant's own ``masks`` merged over
    the run's) are learned on the base model (``masks.source: learned``, ``model: base``)."""
    masks = spec.masks_for(producer)
    return masks.source == "learned" and masks.learned.model == BASE_MODEL


def needs_base_model(spec: PipelineSpec) -> bool:
    """True when some producer of the run, the run's learned masks, or a variant's own learned masks have
    ``model: base``. The pretrain stage then runs before the masks stage when the run's masks need it, else
    after it (a variant's masks are learned in its generate stage, after pretrain)."""
    names = spec.producers()
    return (
        masks_use_base_model(spec)
        or any(spec.uses_base_model(name) for name in names)
        or any(masks_use_base_model(spec, name) for name in names)
    )


def with_base_masks(spec: PipelineSpec, base: StageResult | None, producer: str | None = None) -> PipelineSpec:
    """``spec`` with ``masks.learned.model: base`` replaced by the pretrain stage's model folder (a copy): in
    the run's masks, and with ``producer`` in that variant's own masks too."""
    if not (masks_use_base_model(spec) or (producer is not None and masks_use_base_model(spec, producer))):
        return spec
    if base is None:
        where = f"variant '{producer}': " if not masks_use_base_model(spec) else ""
        raise SpecError(f"{where}masks.learned.model is base, but no pretrain stage ran for it", spec.source)
    out = spec.model_copy(deep=True)
    model = str(base.path("model"))
    if out.masks.learned.model == BASE_MODEL:
        out.masks.learned.model = model
    own = out.variants[producer].masks if producer in out.variants else None
    learned = own.get("learned") if own is not None else None
    if isinstance(learned, dict) and learned.get("model") == BASE_MODEL:
        learned["model"] = model
    return out


def pretrain_settings(spec: PipelineSpec) -> Any:  # -> PretrainSettings
    """The spec's ``pretrain`` section as typed settings; the seed defaults to the spec's seed."""
    from anoaug.generators.diffusion.pretrain import PretrainSettings
    from anoaug.registry import validate_settings

    return validate_settings(PretrainSettings, {"seed": spec.seed, **spec.pretrain}, "pretrain", spec.source)


def pretrain_fingerprint(spec: PipelineSpec, split: StageResult) -> str:
    """Pretrain settings (seed and planned steps included, the time cap not) + the split's hash (which normal
    images it learns from)."""
    section = {"seed": spec.seed, **without_cap(spec.pretrain)}
    return fingerprint("pretrain", section, spec.dataset.category, split.content_hash)


def stage_pretrain(
    spec: PipelineSpec, root: str | Path, run_dir: str | Path, split: StageResult, force: bool = False
) -> StageResult:
    """Pretrain the base model on the category's normal training images (`pretrain/model/`, diffusers layout);
    an interrupted run resumes from its checkpoint."""

    def body(out: Path, resume: bool) -> StageOutput:
        from anoaug.generators.diffusion.pretrain import pretrain_base, read_card

        bar = progress_for("pretrain")

        def progress(p: Any) -> None:
            if bar is not None:
                bar(f"pretrain {p.phase}: step {p.step}/{p.total}, loss {p.loss:.4f}, ETA {int(p.eta_s)} s")

        model = pretrain_base(
            pretrain_settings(spec), [(_read_data(spec, root), _read_split(split))], out / PRETRAIN_MODEL_DIR,
            progress=progress,
        )  # fmt: skip
        card = read_card(model)
        keys = ("vae_psnr_db", "steps", "seconds", "stopped_by", "resolution", "unet_kind", "training")
        return StageOutput({"model": model}, {k: card[k] for k in keys if k in card})

    fp = pretrain_fingerprint(spec, split)
    return run_stage("pretrain", fp, stage_dir(run_dir, "pretrain"), body, force, cap_of(spec.pretrain))


def with_base_model(spec: PipelineSpec, producer: str, base: StageResult | None) -> PipelineSpec:
    """``spec`` with producer's ``model: base`` replaced by the pretrain stage's model folder (a copy)."""
    if not spec.uses_base_model(producer):
        return spec
    if base is None:
        raise SpecError(f"producer '{producer}' has model: base, but no pretrain stage ran for it", spec.source)
    out = spec.model_copy(deep=True)
    params = out.variants[producer].params if producer in out.variants else out.generator.params
    params["model"] = str(base.path("model"))
    return out


# --- generate ---------------------------------------------------------------------------------------


def generate_fingerprint(
    spec: PipelineSpec,
    split: StageResult,
    masks: StageResult | None,
    producer: str,
    base: StageResult | None = None,
) -> str:
    """The producer's generator + params (spec.producer; planned steps included, the time cap not) +
    generation section + the producer's masks section (a variant's own ``masks`` merged over the run's; the
    run's unchanged without one) + seed + split and masks hashes (+ the pretrained base model's hash when
    the producer or its learned masks run on ``model: base``)."""
    generator, params = spec.producer(producer)
    parts: list[Any] = [
        "generate",
        generator,
        without_cap(params),
        spec.generation.model_dump(mode="json", exclude={"workers", "encode_threads"}),  # speed only, not bytes
        masks_section(spec, producer),
        spec.dataset.kind,
        spec.seed,
        split.content_hash,
        masks.content_hash if masks is not None else None,
    ]
    if spec.uses_base_model(producer) or masks_use_base_model(spec) or masks_use_base_model(spec, producer):
        parts.append({"base_model": base.content_hash if base is not None else None})
    return fingerprint(*parts)


def stage_generate(
    spec: PipelineSpec,
    root: str | Path,
    run_dir: str | Path,
    split: StageResult,
    masks: StageResult | None,
    producer: str,
    force: bool = False,
    base: StageResult | None = None,
) -> StageResult:
    """Fit `producer` (a generator or a variant) on the generator-training split and write resumable shards
    into `generate/<producer>/`; ``base`` is the pretrain stage's result when the producer has ``model: base``."""

    def body(out: Path, resume: bool) -> StageOutput:
        from anoaug.shards import generate_category

        summary = generate_category(
            with_base_masks(with_base_model(spec, producer, base), base, producer),
            _read_data(spec, root),
            _read_split(split),
            producer,
            out,
            count_per_type=spec.generation.count_per_type,
            seed=spec.seed,
            workers=spec.generation.workers,
            overwrite=not resume,
            progress=progress_for(f"generate {producer}"),
        )
        outputs: dict[str, Path] = {}
        for name, p in (("samples", summary.samples_manifest), ("shards", summary.shards_manifest)):
            if p is not None:
                outputs[name] = Path(p)
        outputs["artifact"] = Path(summary.artifact_dir)
        info = {
            "generator": summary.generator,
            "variant": producer if producer in spec.variants else None,
            "masks_source": spec.masks_for(producer).source,
            "artifact_hash": summary.artifact_hash,
            "total": summary.total,
            "written": summary.written,
            "kept": summary.kept,
            "shards": len(summary.shards),
            "defect_types": list(summary.defect_types),
            "workers": summary.workers,
            "encode_threads": summary.encode_threads,
        }
        if summary.training is not None:
            info["training"] = summary.training  # planned vs done steps (anoaug.budget)
        return StageOutput(outputs, info)

    fp = generate_fingerprint(spec, split, masks, producer, base)
    cap = producer_cap(spec, producer)
    return run_stage(f"generate:{producer}", fp, stage_dir(run_dir, "generate", producer), body, force, cap)


def producer_cap(spec: PipelineSpec, producer: str) -> float | None:
    """The time cap (``max_train_seconds``) of a producer's training, None when it has none."""
    return cap_of(spec.producer(producer)[1])


# --- quality (generation quality of one producer's shards) ------------------------------------------

QUALITY_VERSION = "1"  # bump when the figures' definitions change (cached quality.json files are then redone)


def quality_settings(spec: PipelineSpec) -> Any:  # -> QualitySettings
    """The spec's ``quality`` section as typed settings."""
    from anoaug.evaluation.quality import QualitySettings
    from anoaug.registry import validate_settings

    return validate_settings(QualitySettings, dict(spec.quality), "quality", spec.source)


def quality_fingerprint(spec: PipelineSpec, split: StageResult, generated: StageResult) -> str:
    """Quality settings + seed + split hash + the producer's shard hash + the weights folder's listing."""
    from anoaug.evaluation.quality.networks import weights_dir_for, weights_listing

    settings = quality_settings(spec)
    weights = weights_dir_for(settings.weights_dir)
    return fingerprint(
        "quality",
        QUALITY_VERSION,
        settings.model_dump(mode="json"),
        spec.seed,
        split.content_hash,
        generated.content_hash,
        {"weights_dir": str(weights) if weights else None, "files": weights_listing(weights)},
    )


def stage_quality(
    spec: PipelineSpec,
    root: str | Path,
    run_dir: str | Path,
    split: StageResult,
    generated: StageResult,
    producer: str,
    force: bool = False,
) -> StageResult:
    """Generation-quality figures of `producer`'s shards against the split's real defects
    (`quality/<producer>/quality.json`)."""

    def body(out: Path, resume: bool) -> StageOutput:
        from anoaug.evaluation.quality.stage import FIGURES, NETWORK_FIGURES, run_quality

        path = run_quality(
            Path(generated.out_dir), _read_split(split), Path(root), out, quality_settings(spec), spec.seed, producer
        )
        q = json.loads(path.read_text())
        info = {k: q.get(k) for k in (*FIGURES, *NETWORK_FIGURES)}
        info["networks_computed"] = q["networks"]["computed"]
        return StageOutput({"quality": path}, info)

    fp = quality_fingerprint(spec, split, generated)
    return run_stage(f"quality:{producer}", fp, stage_dir(run_dir, "quality", producer), body, force)


# --- evaluate ---------------------------------------------------------------------------------------


def evaluate_fingerprint(spec: PipelineSpec, split: StageResult, generated: dict[str, StageResult]) -> str:
    """Evaluation section + seed + split hash + the output hash of every producer it trains on."""
    return fingerprint(
        "evaluate",
        spec.evaluation,
        spec.seed,
        split.content_hash,
        {name: r.content_hash for name, r in sorted(generated.items())},
    )


def stage_evaluate(
    spec: PipelineSpec,
    root: str | Path,
    run_dir: str | Path,
    split: StageResult,
    generated: dict[str, StageResult],
    force: bool = False,
) -> StageResult:
    """Train the downstream models per arm and seed; evaluate on the held-out real images."""

    def body(out: Path, resume: bool) -> StageOutput:
        from anoaug.evaluation import run_evaluation

        arm_sources: dict[str, Path | None] = {}
        for arm in spec.evaluation.arms:
            producer = arm_producer(arm)
            arm_sources[arm] = Path(generated[producer].out_dir) if producer is not None else None
        data, manifest = _read_data(spec, root), _read_split(split)
        result = Path(run_evaluation(spec, data, manifest, arm_sources, out, progress=progress_for("evaluate")))
        outputs = {"run": result / "run.json", "runs": result / "runs"}
        return StageOutput(outputs, {"arms": list(arm_sources), "models": spec.evaluation.models})

    fp = evaluate_fingerprint(spec, split, generated)
    return run_stage("evaluate", fp, stage_dir(run_dir, "evaluate"), body, force)


# --- report -----------------------------------------------------------------------------------------


def report_fingerprint(
    spec: PipelineSpec, evaluation: StageResult, quality: dict[str, StageResult] | None = None
) -> str:
    """Dataset + category + the evaluation's hash (+ each producer's quality hash when the quality stage ran)."""
    parts: list[Any] = ["report", spec.dataset.name, spec.dataset.category, evaluation.content_hash]
    if quality:
        parts.append({name: r.content_hash for name, r in sorted(quality.items())})
    return fingerprint(*parts)


def stage_report(
    spec: PipelineSpec,
    run_dir: str | Path,
    evaluation: StageResult,
    force: bool = False,
    quality: dict[str, StageResult] | None = None,
) -> StageResult:
    """report.json/md/html and results.csv from the evaluation outputs (and the producers' quality.json)."""

    def body(out: Path, resume: bool) -> StageOutput:
        from anoaug.report import write_report

        masks_summary = stage_dir(run_dir, "masks") / "summary.json"
        masks = json.loads(masks_summary.read_text()) if masks_summary.is_file() else None
        qpaths = {name: r.path("quality") for name, r in (quality or {}).items()}
        written = write_report(Path(evaluation.out_dir), out, quality=qpaths, masks_summary=masks)
        paths = {str(k): Path(v) for k, v in written.items()}
        if (out / "figures").is_dir():
            paths["figures"] = out / "figures"
        return StageOutput(paths, {})

    fp = report_fingerprint(spec, evaluation, quality)
    return run_stage("report", fp, stage_dir(run_dir, "report"), body, force)


# --- whole-pipeline status --------------------------------------------------------------------------


def up_to_date(spec: PipelineSpec, root: str | Path, run_dir: str | Path) -> list[StageResult] | None:
    """The recorded results of every stage, in order, if all are complete for this spec and data.

    Walks the fingerprint chain using the recorded output hashes (nothing is recomputed). None as
    soon as one stage would run: a rerun with unchanged inputs can then stop here, before any
    orchestration starts.
    """

    def done(out_dir: Path, fp: str, cap: float | None = None) -> StageResult | None:
        rec = read_stage(out_dir)
        ok = rec is not None and is_complete(out_dir, fp, cap)
        return rec.model_copy(update={"skipped": True, "seconds": 0.0}) if ok and rec is not None else None

    try:
        split = done(stage_dir(run_dir, "split"), split_fingerprint(spec, root))
        if split is None:
            return None
        base = None
        if needs_base_model(spec):
            base = done(stage_dir(run_dir, "pretrain"), pretrain_fingerprint(spec, split), cap_of(spec.pretrain))
            if base is None:
                return None
        masks = done(stage_dir(run_dir, "masks"), masks_fingerprint(spec, split, base))
        if masks is None:
            return None
        # Stage order as run: pretrain first when learned masks need the base model, else after masks.
        early = base is not None and masks_use_base_model(spec)
        results = [split, base, masks] if early else [split, masks] + ([base] if base is not None else [])
        generated: dict[str, StageResult] = {}
        quality: dict[str, StageResult] = {}
        for name in spec.producers():
            fp = generate_fingerprint(spec, split, masks, name, base)
            g = done(stage_dir(run_dir, "generate", name), fp, producer_cap(spec, name))
            if g is None:
                return None
            generated[name] = g
            results.append(g)
            q = done(stage_dir(run_dir, "quality", name), quality_fingerprint(spec, split, g))
            if q is None:
                return None
            quality[name] = q
            results.append(q)
        ev = done(stage_dir(run_dir, "evaluate"), evaluate_fingerprint(spec, split, generated))
        if ev is None:
            return None
        rep = done(stage_dir(run_dir, "report"), report_fingerprint(spec, ev, quality))
        return None if rep is None else [*results, ev, rep]
    except AnoaugError:
        return None  # let the real run report the problem


# --- dataset root -----------------------------------------------------------------------------------

DEMO_DATASET = "demo"


def resolve_data_root(spec: PipelineSpec, data_root: str | Path | None, out: str | Path) -> Path:
    """The dataset root (see PipelineSpec.resolve_root); for the demo dataset, made if missing.

    Demo data goes to --data-root, else $<dataset.root_env> (ANOAUG_DEMO_ROOT), else `<out>/data/demo`.
    """
    if spec.dataset.name != DEMO_DATASET:
        return spec.resolve_root(data_root)
    return ensure_demo_data(demo_root_for(spec, data_root, out), spec.dataset.category)


def demo_root_for(spec: PipelineSpec, data_root: str | Path | None, out: str | Path) -> Path:
    """Where the demo data of a run lives (see resolve_data_root)."""
    root = data_root or os.environ.get(spec.dataset.root_env) or spec.dataset.root or Path(out) / "data" / "demo"
    return Path(root).expanduser().resolve()


def ensure_demo_data(root: str | Path, category: str, seed: int = 0) -> Path:
    """Write demo category `category` under `root` unless present (atomically: temp dir + rename)."""
    from anoaug.data.demo import CATEGORIES, make_demo_dataset

    root = Path(root).expanduser().resolve()
    if category not in CATEGORIES:
        raise SpecError(f"unknown demo category {category!r}; demo categories: {', '.join(sorted(CATEGORIES))}")
    target = root / category
    if target.is_dir() and any(target.iterdir()):
        return root
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{category}.", dir=root))
    try:
        make_demo_dataset(tmp, seed=seed, categories=[category])
        if target.is_dir():
            target.rmdir()  # empty (checked above)
        try:
            os.replace(tmp / category, target)
        except OSError:
            if not (target.is_dir() and any(target.iterdir())):  # lost a race to another writer: fine
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root
