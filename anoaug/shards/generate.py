"""Bulk generation of one category into resumable WebDataset shards (the `anoaug generate` stage).

``generate_category`` fits the generator (or loads a given artifact), then writes every missing shard:
each sample is (normal image chosen by the per-sample rng, mask from the mask synthesizer, generator
output), PNG-encoded, with its lineage. Counts are per defect type. Shards are written under a
temporary name and renamed when complete; after each shard both Parquet manifests are rewritten
atomically. Running the same call again after a crash (even kill -9) keeps the complete shards whose
sha256 matches, deletes partial and unlisted files and writes the rest, byte-identical to an
uninterrupted run. A lock file (``flock``, released by the kernel when the process dies) stops a second
concurrent run on the same directory.
"""

from __future__ import annotations

import contextlib
import functools
import json
import multiprocessing as mp
import os
import shutil
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from anoaug.budget import can_continue, cap_of, is_capped, without_cap
from anoaug.cpu import usable_cores
from anoaug.data.io import load_image
from anoaug.data.records import CategoryData
from anoaug.data.split import SplitManifest
from anoaug.errors import AnoaugError
from anoaug.generators.base import (
    FitData,
    GenerationRequest,
    Generator,
    artifact_hash,
    get_generator,
    validate_result,
)
from anoaug.hashing import sha256_file
from anoaug.jsonable import to_jsonable
from anoaug.outputs import die_with_parent, exclusive_lock, is_inside
from anoaug.shards.format import (
    ARTIFACT_DIR,
    FORMAT_VERSION,
    LOCK_FILE,
    PARTS_DIR,
    RUN_FILE,
    SAMPLES_MANIFEST,
    SHARDS_MANIFEST,
    TMP_SUFFIX,
    check_type_keys,
    int_seed,
    sample_at,
    sample_key,
    sample_seeds,
    shard_name,
    shard_pattern,
    shard_ranges,
)
from anoaug.shards.manifest import GenerationManifest
from anoaug.shards.workers import PROBE_S, WORKER_START_S, WorkerChoice, idle_cores, plan_workers
from anoaug.shards.writer import (
    EncodedSample,
    RawSample,
    ShardCommitter,
    encode_ordered,
    encode_threads_for,
    tmp_path,
    write_shard,
)
from anoaug.spec import MasksSection, PipelineSpec

ProgressFn = Callable[[int, "int | None"], None]  # (advance, total), as anoaug.pipeline.stages.ProgressFn


class ShardError(AnoaugError):
    """A generation directory cannot be written (locked, foreign contents, inside the dataset)."""


class MaskSource(Protocol):
    """What generation needs from a mask synthesizer (anoaug.masks.synthesis.MaskSynthesizer fits)."""

    def synthesize(
        self, normal: np.ndarray, defect_type: str, rng: np.random.Generator, normal_key: str | None = None
    ) -> Any: ...


@dataclass
class GenerationSummary:
    """What a generate_category call did."""

    out_dir: Path
    category: str
    generator: str
    artifact_dir: Path
    artifact_hash: str
    defect_types: list[str]
    count_per_type: int
    total: int  # samples in the directory now
    written: int  # samples written by this call
    kept: int  # samples kept from an earlier (interrupted) run
    shards: list[Path] = field(default_factory=list)
    samples_manifest: Path | None = None
    shards_manifest: Path | None = None
    seconds: float = 0.0
    training: dict[str, Any] | None = None  # the artifact's training record (anoaug.budget): planned vs done
    workers: dict[str, Any] | None = None  # WorkerChoice.as_dict(): requested, chosen, cores, reason, estimates
    encode_threads: int = 0  # PNG-encoding threads of the writing process


# --- locking and directory safety -----------------------------------------------------------------


@contextlib.contextmanager
def output_lock(out_dir: Path) -> Iterator[None]:
    """Hold an exclusive flock on ``<out>/.lock``; ShardError at once when another process holds it."""
    with exclusive_lock(out_dir / LOCK_FILE, "anoaug generate", ShardError):
        yield


def check_output_dir(out_dir: Path, data_root: Path) -> None:
    """Refuse an output directory inside the input dataset (or containing it)."""
    out, root = out_dir.resolve(), data_root.resolve()
    if is_inside(out, root):
        raise ShardError(f"refusing to write generated samples inside the input dataset {root}", out_dir)
    if is_inside(root, out):
        raise ShardError(f"refusing to write into a directory that contains the input dataset {root}", out_dir)


def _owned(path: Path, out_dir: Path, pattern_prefix: str) -> bool:
    """Whether a file in the output directory is one this module writes (and may delete on --overwrite)."""
    name = path.name
    return (
        name in (SAMPLES_MANIFEST, SHARDS_MANIFEST, RUN_FILE, LOCK_FILE, ARTIFACT_DIR, PARTS_DIR)
        or name == f".{ARTIFACT_DIR}{TMP_SUFFIX}"
        or (name.endswith(".tar") and name.startswith(pattern_prefix))
        or (name.startswith(".") and name.endswith(TMP_SUFFIX))
    )


def _temp(path: Path) -> bool:
    return path.name.startswith(".") and path.name.endswith(TMP_SUFFIX)


def _clear(out_dir: Path, pattern_prefix: str, keep_artifact: bool = False) -> None:
    for p in out_dir.iterdir():
        if p.name == LOCK_FILE or (keep_artifact and p.name == ARTIFACT_DIR):
            continue
        if _owned(p, out_dir, pattern_prefix):
            shutil.rmtree(p) if p.is_dir() else p.unlink()


# --- the run configuration --------------------------------------------------------------------------


def _run_config(
    spec: PipelineSpec,
    data: CategoryData,
    generator: str,
    variant: str | None,
    params: dict[str, Any],
    defect_types: list[str],
    count_per_type: int,
    seed: int,
    shard_size: int,
    split: SplitManifest,
    kind: str,
    artifact: str | None,
    masks: MasksSection | None = None,
    variant_masks: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything that decides the samples' bytes; a resume must match it exactly. ``masks``: the producer's
    masks section (default the run's); ``variant_masks``: a variant's own masks override, recorded only when
    there is one (so the records of other runs stay what they were)."""
    normals = split.rows("train_normal")
    extra = {"variant_masks": variant_masks} if variant_masks is not None else {}
    return {
        "format_version": FORMAT_VERSION,
        "dataset": data.dataset,
        "category": data.category,
        "generator": generator,
        "variant": variant,
        "generator_params": params,
        "artifact": artifact,
        "defect_types": defect_types,
        "count_per_type": count_per_type,
        "seed": seed,
        "shard_size": shard_size,
        "masks": (masks or spec.masks).model_dump(mode="json"),
        "kind": kind,
        "split_seed": split.seed,
        "normals": sorted(r["sha256"] for r in normals),
        "gen_train_defects": sorted(r["sha256"] for r in split.rows("gen_train_defect")),
        **extra,
    }


def _config_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = sorted(set(old) | set(new))
    diffs = []
    for k in keys:
        if k in ("artifact_hash", "created", "training", "base_training", "workers", "encode_threads"):
            continue
        if k == "generator_params":  # the time cap is no part of the run: a capped run continues under another
            if without_cap(old.get(k)) != without_cap(new.get(k)):
                diffs.append(f"{k}: {json.dumps(old.get(k))[:40]} -> {json.dumps(new.get(k))[:40]}")
            continue
        if old.get(k) != new.get(k):
            a, b = json.dumps(old.get(k))[:40], json.dumps(new.get(k))[:40]
            diffs.append(f"{k}: {a} -> {b}")
    return diffs


def _capped_base_training(params: dict[str, Any]) -> dict[str, Any] | None:
    """The training record of the base model a generator runs on (``model``: a folder `anoaug pretrain`
    wrote) when its time cap stopped it early, so the arm built on it is marked too; None otherwise."""
    model = params.get("model")
    card = Path(str(model)) / "model_card.json" if isinstance(model, str) and model else None
    if card is None or not card.is_file():
        return None
    try:
        rec = json.loads(card.read_text()).get("training")
    except (OSError, ValueError, AttributeError):
        return None
    return rec if isinstance(rec, dict) and is_capped(rec) else None


def _read_run(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ShardError(f"unreadable run file ({exc}); use --overwrite to start again", path) from None
    if not isinstance(obj, dict) or "category" not in obj or "generator" not in obj:
        raise ShardError("not an anoaug generation run file; use --overwrite to start again", path)
    return obj


def _workers_setting(value: int | str) -> int | str:
    """``"auto"`` or a number of worker processes >= 1."""
    if value == "auto":
        return "auto"
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if n < 1 or isinstance(value, bool):
        raise ShardError(f"workers must be 'auto' or a number >= 1, got {value!r}")
    return n


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    tmp = tmp_path(path)
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, default=str))
    os.replace(tmp, path)


# --- per-sample work (runs in the main process or in pool workers) --------------------------------


@dataclass
class _Context:
    """Everything a process needs to make samples; built once per process."""

    generator: Generator
    synthesizer: MaskSource
    data_root: Path
    normals: list[dict[str, Any]]  # train_normal split rows
    defect_types: list[str]
    seed: int
    lineage: dict[str, Any]  # constant lineage fields
    batch_size: int
    cache_size: int = 64
    _cache: OrderedDict[str, np.ndarray] = field(default_factory=OrderedDict)
    _usable_cache: dict[str, bool] = field(default_factory=dict)

    def normal(self, relpath: str) -> np.ndarray:
        img = self._cache.get(relpath)
        if img is None:
            img = load_image(self.data_root / relpath)
            self._cache[relpath] = img
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(relpath)
        return img

    def _usable(self, row: dict[str, Any], normal: np.ndarray) -> bool:
        """False for a normal whose foreground cannot take masks (empty, implausible: see
        ``MaskSynthesizer.image_flags``); remembered per image."""
        ok = self._usable_cache.get(row["relpath"])
        if ok is None:
            flags_of = getattr(self.synthesizer, "image_flags", None)
            ok = not (flags_of(normal, row["relpath"]) if flags_of is not None else [])
            self._usable_cache[row["relpath"]] = ok
        return ok

    def _mask_for(
        self, defect_type: str, pick: np.random.Generator, mask_rng: np.random.Generator, attempts: int = 5
    ) -> tuple[dict[str, Any], np.ndarray, Any]:
        """(normal row, normal image, synthesized mask); another normal when a mask fits nowhere on one.

        Normals with an unusable foreground are skipped: the next draw of ``pick`` replaces them (so the
        choice stays a function of the seed), and they do not count as attempts.
        """
        draws = 0
        for attempt in range(attempts):
            while True:
                draws += 1
                row = self.normals[int(pick.integers(len(self.normals)))]
                normal = self.normal(row["relpath"])
                if self._usable(row, normal):
                    break
                if draws > 20 * len(self.normals) and len(self._usable_cache) == len(self.normals):
                    bad = sorted(k for k, v in self._usable_cache.items() if not v)
                    raise AnoaugError(
                        f"no normal image has a usable foreground for masks ({len(bad)} excluded: "
                        + ", ".join(bad[:5]) + "); check masks.foreground"
                    )
            try:
                return row, normal, self.synthesizer.synthesize(normal, defect_type, mask_rng, row["relpath"])
            except AnoaugError:
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def make(self, gs: Sequence[int]) -> list[EncodedSample]:
        """Encoded samples for global indices ``gs`` (what a pool worker sends back)."""
        return [r.encode() for r in self.produce(gs)]

    def produce(self, gs: Sequence[int]) -> list[RawSample]:
        """Samples (arrays, not yet encoded) for global indices ``gs`` (one generator call per ``batch_size``)."""
        out: list[RawSample] = []
        for start in range(0, len(gs), self.batch_size):
            chunk = gs[start : start + self.batch_size]
            reqs, metas = [], []
            for g in chunk:
                t, i = sample_at(g, self.defect_types)
                ss_pick, ss_mask, ss_gen = sample_seeds(self.seed, t, i)
                row, normal, sm = self._mask_for(t, np.random.default_rng(ss_pick), np.random.default_rng(ss_mask))
                gen_seed = int_seed(ss_gen)
                reqs.append(
                    GenerationRequest(
                        normal, sm.mask, t, gen_seed, sm.trimap, row["relpath"], _mask_params(sm, self.synthesizer)
                    )
                )
                metas.append((g, t, i, row, gen_seed, sm.params))
            results = self.generator.generate(reqs)
            if len(results) != len(reqs):
                raise AnoaugError(f"generator returned {len(results)} results for {len(reqs)} requests")
            for req, res, (g, t, i, row, gen_seed, mparams) in zip(reqs, results, metas, strict=True):
                validate_result(req, res, self.generator.name)
                key = sample_key(t, i)
                lineage = {
                    **self.lineage,
                    "key": key,
                    "index": i,
                    "defect_type": t,
                    "source_normal": row["relpath"],
                    "source_normal_sha256": row["sha256"],
                    "mask_params": mparams,
                    "sample_seed": gen_seed,
                    "generator_info": res.info,
                }
                out.append(RawSample(key, g, res.image, res.mask, to_jsonable(lineage), res.extras))
        return out


def _mask_params(sm: Any, synthesizer: Any) -> dict[str, Any] | None:
    """The request's ``mask_params``: the synthesized mask's params, plus how the bank split its components.

    A copy, so generators cannot change the lineage. ``split`` (gap, min_area) is added when the synthesizer
    has a masks spec, so a generator can recover the exact component group a mask was made from.
    """
    params = getattr(sm, "params", None)
    if not isinstance(params, dict):
        return None
    out = dict(params)
    spec = getattr(synthesizer, "spec", None)
    if spec is not None and hasattr(spec, "component_gap") and "split" not in out:
        out["split"] = {"gap": int(spec.component_gap), "min_area": int(spec.min_component_area)}
    return out


_WORKER: _Context | None = None


def _worker_init(build: Callable[[], _Context]) -> None:
    global _WORKER
    import cv2

    cv2.setNumThreads(1)
    die_with_parent()  # a killed `anoaug generate` (even kill -9) takes its workers with it
    _WORKER = build()


def _worker_make(gs: list[int]) -> list[EncodedSample]:
    assert _WORKER is not None, "worker not initialised"
    return _WORKER.make(gs)


@dataclass
class _ContextBuilder:
    """Picklable recipe for a _Context (pool workers rebuild generator and synthesizer from it)."""

    generator_name: str
    artifact_dir: Path
    synthesizer: MaskSource | None
    spec: PipelineSpec
    data: CategoryData
    split: SplitManifest
    kind: str
    defect_types: list[str]
    seed: int
    lineage: dict[str, Any]
    batch_size: int
    masks: MasksSection  # the producer's masks section (spec.masks_for)

    def __call__(self) -> _Context:
        gen = get_generator(self.generator_name).load(self.artifact_dir)
        synth = self.synthesizer
        if synth is None:
            from anoaug.masks.sources import make_synthesizer

            synth = make_synthesizer(self.data, self.split, self.masks, self.kind, self.seed)
        normals = sorted(self.split.rows("train_normal"), key=lambda r: r["relpath"])
        return _Context(
            gen, synth, self.data.root, normals, self.defect_types, self.seed, self.lineage, self.batch_size
        )


# --- the library entry point -------------------------------------------------------------------------


def generate_category(
    spec: PipelineSpec,
    data: CategoryData,
    split: SplitManifest,
    generator_name: str | None,
    out_dir: str | Path,
    count_per_type: int | None = None,
    seed: int | None = None,
    workers: int | str | None = None,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
    *,
    artifact_dir: str | Path | None = None,
    shard_size: int | None = None,
    defect_types: Sequence[str] | None = None,
    synthesizer: MaskSource | None = None,
    kind: str | None = None,
    batch_size: int | None = None,
    encode_threads: int | str | None = None,
) -> GenerationSummary:
    """Fit ``generator_name`` (or load ``artifact_dir``) and write ``count_per_type`` samples per defect type.

    ``generator_name`` names a producer: a registered generator or one of the spec's variants; its generator
    and params come from ``spec.producer`` (generator.artifact applies to the spec's own generator only), and
    the run record names the variant (``"variant"``, null for a plain generator). Masks come from the
    producer's masks section (``spec.masks_for``: a variant's own ``masks`` merged over the run's); a variant
    with its own masks has them recorded as ``"variant_masks"`` in the run record and in each sample's lineage.
    Unset arguments come from the spec (generator.name, generation.*, seed). Resumes an
    interrupted run with the same arguments; a directory written with other arguments needs
    ``overwrite=True``. ``synthesizer`` replaces the spec's mask synthesizer (tests, custom masks).
    ``progress(advance, total)`` is called as samples are done (first with the samples kept).
    ``workers`` (a number or ``"auto"``, see anoaug.shards.workers) and ``encode_threads`` (a number, 0 =
    inline, or ``"auto"``) change the speed only: the bytes written are the same for any of them.
    """
    t0 = time.perf_counter()
    producer = generator_name or spec.generator.name
    gen_name, params = spec.producer(producer)
    variant = producer if producer in spec.variants else None
    masks_spec, own_masks = spec.masks_for(producer), spec.variant_masks(producer)
    gen_cls = get_generator(gen_name)  # unknown name: GeneratorError listing the available ones
    n_per_type = int(count_per_type if count_per_type is not None else spec.generation.count_per_type)
    run_seed = int(seed if seed is not None else spec.seed)
    requested = _workers_setting(workers if workers is not None else spec.generation.workers)
    try:
        threads = encode_threads_for(encode_threads if encode_threads is not None else spec.generation.encode_threads)
    except (TypeError, ValueError):
        raise ShardError(f"encode_threads must be 'auto' or a number >= 0, got {encode_threads!r}") from None
    size = int(shard_size if shard_size is not None else spec.generation.shard_size)
    batch = int(batch_size if batch_size is not None else spec.generation.batch_size)
    own_artifact = spec.generator.artifact if producer == spec.generator.name else None
    given_artifact = artifact_dir if artifact_dir is not None else own_artifact
    if n_per_type < 1 or size < 1 or batch < 1:
        raise ShardError("count per type, shard size and batch size must be >= 1")

    types = sorted(defect_types) if defect_types else sorted({r["label"] for r in split.rows("gen_train_defect")})
    if not types:
        raise ShardError(f"category '{data.category}' has no generator-training defects to generate from")
    try:
        check_type_keys(types)
    except ValueError as exc:
        raise ShardError(str(exc)) from None
    if not split.rows("train_normal"):
        raise ShardError(f"category '{data.category}' has no normal training images to draw defects on")

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ShardError("output exists and is not a directory", out)
    check_output_dir(out, data.root)
    if kind is None:
        from anoaug.masks.synthesis import resolve_kind

        kind, _ = resolve_kind(spec.dataset.kind, data)
    out.mkdir(parents=True, exist_ok=True)
    prefix = shard_pattern(data.category, gen_name).split("%")[0]
    total = n_per_type * len(types)
    ranges = shard_ranges(total, size)

    with output_lock(out):
        ext_artifact = Path(given_artifact).resolve() if given_artifact else None
        config = _run_config(
            spec, data, gen_name, variant, params, types, n_per_type, run_seed, size, split, kind,
            str(ext_artifact) if ext_artifact else None, masks_spec, own_masks,
        )  # fmt: skip
        run_path = out / RUN_FILE
        old = _read_run(run_path)
        if overwrite:
            # Only files this module writes are removed (also those of the run being replaced).
            old_prefix = shard_pattern(old["category"], old["generator"]).split("%")[0] if old else prefix
            _clear(out, prefix)
            _clear(out, old_prefix)
            old = None
        elif old is None:
            # Files of ours without a run record (other files are left alone and do not block).
            present = sorted(
                p.name for p in out.iterdir() if _owned(p, out, prefix) and p.name != LOCK_FILE and not _temp(p)
            )
            if present:
                raise ShardError(
                    f"output directory holds generation files of an unknown run ({', '.join(present[:3])}); "
                    "use an empty directory or --overwrite",
                    out,
                )
        else:
            diffs = _config_diff(old, config)
            if diffs:
                raise ShardError(
                    "output directory holds a different generation run (" + "; ".join(diffs[:4]) + "); "
                    "use another --out or --overwrite to replace it",
                    out,
                )

        # Record the run before fitting, so that a crash during the fit resumes (and refits).
        _write_json(run_path, {**config, "artifact_hash": old.get("artifact_hash") if old else None})

        # The generator artifact: given, reused (same hash as recorded), or fitted now.
        if ext_artifact is not None:
            generator = gen_cls.load(ext_artifact)
            art_dir = ext_artifact
        else:
            art_dir = out / ARTIFACT_DIR
            generator = None
            if old is not None and art_dir.is_dir() and old.get("artifact_hash"):
                with contextlib.suppress(AnoaugError, OSError, ValueError):
                    if artifact_hash(art_dir) == old["artifact_hash"]:
                        generator = gen_cls.load(art_dir)
            # A training the time cap stopped early continues from its checkpoint when the cap now allows more.
            resume_fit = generator is not None and can_continue(generator.training, cap_of(params))
            if generator is None or resume_fit:
                from anoaug.masks.foreground import extract_foreground

                fg_spec = masks_spec.foreground
                generator = _fit(
                    gen_cls, params, data, split, kind, out, run_seed,
                    foreground_fn=functools.partial(extract_foreground, spec=fg_spec, kind=kind), resume=resume_fit,
                )  # fmt: skip
        assert generator.artifact_hash is not None
        if old is not None and old.get("artifact_hash") != generator.artifact_hash:
            _clear(out, prefix, keep_artifact=True)  # samples of another artifact cannot be kept
            old = None
        config["artifact_hash"] = generator.artifact_hash
        if generator.training is not None:
            config["training"] = generator.training
        base_training = _capped_base_training(params)
        if base_training is not None:
            config["base_training"] = base_training
        _write_json(run_path, config)

        manifest = _reconcile(out, prefix, ranges, data.category, gen_name)
        kept = manifest.n_samples
        if progress is not None:
            progress(kept, total)

        lineage = {
            "dataset": data.dataset,
            "category": data.category,
            "generator": gen_name,
            "variant": variant,
            "generator_params": params,
            "artifact_hash": generator.artifact_hash,
            "seed": run_seed,
            "format_version": FORMAT_VERSION,
        }
        if own_masks is not None:
            lineage["variant_masks"] = own_masks
        builder = _ContextBuilder(
            gen_name, art_dir, synthesizer, spec, data, split, kind, types, run_seed, lineage, batch, masks_spec
        )
        missing = [j for j in range(len(ranges)) if j not in manifest.shards]
        if missing and synthesizer is None and own_masks is not None and masks_spec.source == "learned":
            # A variant's own learned masks (no masks stage learned them): learned (or read from the cache) once
            # here, not in each worker process.
            from anoaug.masks.learned.source import learned_source

            learned_source(data, split, masks_spec, run_seed)
        written = 0
        choice = WorkerChoice(requested, 1, usable_cores(), "nothing left to generate")
        if missing:
            written, choice = _write_missing(
                out, data.category, gen_name, ranges, missing, manifest, builder, requested, threads, batch,
                progress, total,
            )  # fmt: skip
        # How this call made its samples (not part of what a resume must match: bytes never depend on it).
        _write_json(run_path, {**config, "workers": choice.as_dict(), "encode_threads": threads})

        if written or not manifest.samples_current():
            manifest.write_samples()

    shards = [out / manifest.shards[j]["shard"] for j in sorted(manifest.shards)]
    return GenerationSummary(
        out_dir=out,
        category=data.category,
        generator=gen_name,
        artifact_dir=art_dir,
        artifact_hash=generator.artifact_hash,
        defect_types=types,
        count_per_type=n_per_type,
        total=manifest.n_samples,
        written=written,
        kept=kept,
        shards=shards,
        samples_manifest=out / SAMPLES_MANIFEST,
        shards_manifest=out / SHARDS_MANIFEST,
        seconds=round(time.perf_counter() - t0, 3),
        training=generator.training,
        workers=choice.as_dict(),
        encode_threads=threads,
    )


def _fit(
    gen_cls: type[Generator],
    params: dict[str, Any],
    data: CategoryData,
    split: SplitManifest,
    kind: str,
    out: Path,
    seed: int,
    foreground_fn: Callable[[np.ndarray], np.ndarray] | None = None,
    resume: bool = False,
) -> Generator:
    """Fit into ``.artifact.tmp`` and rename to ``artifact`` (a crash never leaves a half artifact).
    ``foreground_fn`` (the masks stage's foreground, image -> bool) lets generators learn trimaps.
    ``resume``: the fit starts in the old artifact's folder, so a training checkpoint there is continued."""
    final = out / ARTIFACT_DIR
    tmp = out / f".{ARTIFACT_DIR}{TMP_SUFFIX}"
    if resume and final.is_dir():
        if tmp.exists():
            shutil.rmtree(tmp)
        os.replace(final, tmp)
    for p in (tmp, final) if not resume else (final,):
        if p.exists():
            shutil.rmtree(p)
    gen = gen_cls(params)
    fit_data = FitData.from_split(data, split, kind=kind)
    fit_data.foreground_fn = foreground_fn
    gen.fit(fit_data, tmp, seed=seed)
    os.replace(tmp, final)
    return gen_cls.load(final)


def _reconcile(out: Path, prefix: str, ranges: list[range], category: str, generator: str) -> GenerationManifest:
    """Keep listed shards that are intact and complete; delete everything else we wrote."""
    manifest = GenerationManifest.load(out)
    changed = False
    for j in list(manifest.shards):
        row = manifest.shards[j]
        p = out / row["shard"]
        ok = (
            j < len(ranges)
            and row["shard"] == shard_name(category, generator, j)
            and int(row["count"]) == len(ranges[j])
            and p.is_file()
            and sha256_file(p) == row["sha256"]
        )
        if not ok:
            manifest.drop(j)
            changed = True
    keep = {manifest.shards[j]["shard"] for j in manifest.shards}
    for p in out.iterdir():
        stale_tar = p.name.endswith(".tar") and p.name.startswith(prefix) and p.name not in keep
        if stale_tar or (_temp(p) and p.is_file()):
            p.unlink()
    keep_parts = {manifest.part_path(name).name for name in keep}
    if manifest.parts_dir.is_dir():
        for p in manifest.parts_dir.iterdir():
            if p.name not in keep_parts:
                p.unlink()
    if changed or not (out / SHARDS_MANIFEST).is_file():
        manifest.save_shards()
    return manifest


def _write_missing(
    out: Path,
    category: str,
    gen_name: str,
    ranges: list[range],
    missing: list[int],
    manifest: GenerationManifest,
    builder: _ContextBuilder,
    requested: int | str,
    threads: int,
    batch: int,
    progress: ProgressFn | None,
    total: int,
) -> tuple[int, WorkerChoice]:
    """Generate and write the missing shards in order; returns (samples written, the workers used).

    Samples made in this process are encoded by ``threads`` threads (0: inline); samples of pool workers
    arrive encoded. Either way the writer sees them in global order, so the bytes never depend on either.
    """
    written = 0

    def on_sample(_: EncodedSample) -> None:
        nonlocal written
        written += 1
        if progress is not None:
            progress(1, total)

    chunk = max(batch, 8)
    jobs = [list(ranges[j])[k : k + chunk] for j in missing for k in range(0, len(ranges[j]), chunk)]
    choice = WorkerChoice(requested, 1, usable_cores(), "")
    pool = ThreadPoolExecutor(threads, thread_name_prefix="anoaug-encode") if threads > 0 else None
    samples = encode_ordered(_sample_stream(builder, jobs, choice), pool, window=max(4, 4 * threads))
    try:
        _write_shards(out, category, gen_name, ranges, missing, manifest, samples, on_sample)
        if next(samples, None) is not None:  # also runs the stream to its end (auto records its choice there)
            raise AnoaugError("generation made more samples than its shards hold")
    finally:
        samples.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return written, choice


def _sample_stream(builder: _ContextBuilder, jobs: list[list[int]], choice: WorkerChoice) -> Iterator[Any]:
    """The jobs' samples in order: from this process, a worker pool, or (``auto``) this process first and a
    pool for the rest when measuring says it pays (see anoaug.shards.workers); ``choice`` records which."""
    requested = choice.requested
    if requested != "auto" and int(requested) > 1:
        choice.chosen, choice.reason = int(requested), "set explicitly"
        yield from _pool_stream(builder, jobs, int(requested))
        return
    t0 = time.perf_counter()
    ctx = builder()
    build_s = time.perf_counter() - t0
    if requested != "auto":
        choice.reason = "set explicitly"
        for job in jobs:
            yield from ctx.produce(job)
        return
    daemon = mp.current_process().daemon  # e.g. a Dask worker: it may not start child processes
    if choice.cores < 2 or len(jobs) < 2 or daemon:
        choice.reason = "one usable core" if choice.cores < 2 else "a single job"
        choice.reason = "a daemonic process (no child processes)" if daemon else choice.reason
        for job in jobs:
            yield from ctx.produce(job)
        return
    # Probe: make samples here for PROBE_S (at least one job); they are real samples, nothing is wasted.
    i = done = 0
    t1 = time.perf_counter()
    while i < len(jobs) and (i == 0 or time.perf_counter() - t1 < PROBE_S):
        yield from ctx.produce(jobs[i])
        done += len(jobs[i])
        i += 1
    sample_s = (time.perf_counter() - t1) / max(1, done)
    rest = jobs[i:]
    remaining = sum(len(j) for j in rest)
    start_s = WORKER_START_S + build_s
    choice.idle_cores = idle_cores(choice.cores)
    k, gain = plan_workers(remaining, sample_s, choice.idle_cores, start_s) if remaining else (1, 1.0)
    choice.probe_samples, choice.sample_s = done, round(sample_s, 6)
    choice.start_s, choice.predicted_gain = round(start_s, 3), gain
    if k == 1:
        if not remaining:
            choice.reason = "done while probing"
        elif choice.idle_cores < 2:
            choice.reason = f"measured: the load average leaves {choice.idle_cores} of {choice.cores} cores idle"
        else:
            choice.reason = "measured: workers would not pay for their start-up"
        for job in rest:
            yield from ctx.produce(job)
        return
    choice.chosen = k
    choice.reason = f"measured: {k} workers predicted {gain:.2f}x faster than one process, start-up included"
    # While the workers start, this process goes on with the next jobs (about start_s worth).
    n_local, local_s = 0, 0.0
    while n_local < len(rest) - 1 and local_s < start_s:
        local_s += len(rest[n_local]) * sample_s
        n_local += 1
    yield from _pool_stream(builder, rest[n_local:], k, local=(ctx, rest[:n_local]))


def _pool_stream(
    builder: _ContextBuilder,
    jobs: list[list[int]],
    n_workers: int,
    local: tuple[_Context, list[list[int]]] | None = None,
) -> Iterator[Any]:
    """Samples of ``local`` jobs (made here, first) then of ``jobs`` from a pool of ``n_workers`` processes,
    in order; the pool starts before the local jobs are made, so its start-up overlaps them."""
    # spawn, not fork: a forked child inherits OpenCV's/torch's thread pools mid-state and can deadlock.
    mp_ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(n_workers, mp_context=mp_ctx, initializer=_worker_init, initargs=(builder,)) as pool:
        results = _bounded_map(pool, jobs, 2 * n_workers)
        if local is not None:
            ctx, local_jobs = local
            for job in local_jobs:
                yield from ctx.produce(job)
        for res in results:
            yield from res


def _bounded_map(pool: ProcessPoolExecutor, jobs: list[list[int]], window: int) -> Iterator[list[EncodedSample]]:
    """Results in job order with at most ``window`` jobs in flight (memory stays flat); the first ``window``
    are submitted at once (the workers start now, not when the results are first asked for)."""
    pending: deque[Future[list[EncodedSample]]] = deque()
    it = iter(jobs)
    for job in it:
        pending.append(pool.submit(_worker_make, job))
        if len(pending) >= window:
            break

    def drain() -> Iterator[list[EncodedSample]]:
        while pending:
            res = pending.popleft().result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(_worker_make, nxt))
            yield res

    return drain()


def _write_shards(
    out: Path,
    category: str,
    gen_name: str,
    ranges: list[range],
    missing: list[int],
    manifest: GenerationManifest,
    samples: Iterator[EncodedSample],
    on_sample: Callable[[EncodedSample], None],
) -> None:
    """Write the shards in order; each is committed (fsync, rename, listed) in the background while the
    next is written, and listed in the manifest only once its file is in place."""

    def listed(j: int, shard_row: dict[str, Any], rows: list[dict[str, Any]]) -> None:
        if shard_row["count"] != len(ranges[j]) or [r["global_index"] for r in rows] != list(ranges[j]):
            first = rows[0]["global_index"] if rows else None
            raise AnoaugError(f"shard {j} got samples {first}.. instead of {ranges[j]}")
        shard_row["shard_index"] = j
        manifest.add(shard_row, [_sample_row(j, r) for r in rows])

    with ShardCommitter() as committer:
        for j in missing:
            n = len(ranges[j])
            shard_samples = (next(samples) for _ in range(n))
            write_shard(
                out / shard_name(category, gen_name, j), shard_samples, on_sample,
                committer=committer, on_commit=functools.partial(listed, j),
            )  # fmt: skip


def _sample_row(shard_index: int, r: dict[str, Any]) -> dict[str, Any]:
    lin = r["lineage"]
    return {
        "shard": r["shard"],
        "shard_index": shard_index,
        "key": r["key"],
        "index": lin["index"],
        "global_index": r["global_index"],
        "category": lin["category"],
        "defect_type": lin["defect_type"],
        "generator": lin["generator"],
        "artifact_hash": lin["artifact_hash"],
        "source_normal": lin["source_normal"],
        "seed": lin["seed"],
        "sample_seed": lin["sample_seed"],
        "image_sha256": r["image_sha256"],
        "mask_sha256": r["mask_sha256"],
        "mask_pixels": r["mask_pixels"],
        "lineage": json.dumps(lin, sort_keys=True, separators=(",", ":")),
    }
