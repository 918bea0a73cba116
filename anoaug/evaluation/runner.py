"""Run the downstream comparison: seeds x detectors x arms, writing metrics and predictions per run.

Layout of ``out_dir`` (read by ``anoaug.report``; documented in ``anoaug/report/SCHEMA.md``)::

    run.json                                  protocol, arms, config, leakage check, notes
    runs/<model>/<arm>/seed<k>/metrics.json   one run's metrics
    runs/<model>/<arm>/seed<k>/predictions.npz  scores, labels, anomaly maps (or class predictions)
    samples/<arm>.npz, samples/real.npz       a few training pairs per arm and held-out real defects

Every model is a registered detector (``anoaug.evaluation.detectors``): the loop below only calls its
interface, and one path turns every prediction into metrics and files (``anoaug.evaluation.results``).
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anoaug.atomic import atomic_write_text
from anoaug.budget import thread_count
from anoaug.data.records import CategoryData
from anoaug.data.split import SplitManifest
from anoaug.device import resolve_device
from anoaug.errors import AnoaugError, ManifestError
from anoaug.evaluation.datasets import lightning_precision, resize_sample
from anoaug.evaluation.detectors import (
    FitContext,
    Prediction,
    available_detectors,
    check_evaluation,
    get_detector,
)
from anoaug.evaluation.protocol import (
    NONE_ARM,
    Arm,
    Protocol,
    Sample,
    check_no_leakage,
    load_rows,
    load_synthetic,
    parse_arm,
    read_generation_record,
    source_for,
)
from anoaug.evaluation.results import prediction_metrics, save_npz, save_prediction
from anoaug.registry import Settings
from anoaug.spec import PipelineSpec

RUN_SCHEMA_VERSION = "1"
MODELS = tuple(available_detectors())  # the detectors registered at import (built-in + entry points)
Progress = Callable[[str], None]


def _json_dump(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(obj, indent=2, default=str))


def generation_quality_status() -> dict[str, Any]:
    """KID / IS / IC-LPIPS need pretrained feature networks; report whether any is present locally.

    Numbers from randomly initialised feature networks are meaningless, so none is computed then.
    """
    ckpt = Path(torch.hub.get_dir()) / "checkpoints"
    found = sorted(p.name for p in ckpt.glob("*")) if ckpt.is_dir() else []
    inception = [n for n in found if "inception" in n.lower()]
    lpips = [n for n in found if "lpips" in n.lower() or "alex" in n.lower() or "vgg" in n.lower()]
    available = bool(inception or lpips)
    note = (
        "KID, IS and IC-LPIPS were not computed: they need pretrained feature networks (Inception, "
        "AlexNet/VGG for LPIPS) and none is present locally (offline machine). A number computed with "
        "random weights would be meaningless, so none is reported."
        if not available
        else "Pretrained feature weights are present in the torch hub cache; the evaluation does not compute "
        "KID/IS/IC-LPIPS itself."
    )
    note += (
        " The pipeline's quality stage (anoaug.evaluation.quality) computes weight-free generation-quality figures, "
        "and KID/IS/IC-LPIPS from weights in $ANOAUG_WEIGHTS or the spec's quality.weights_dir."
    )
    return {"computed": False, "feature_weights_found": inception + lpips, "note": note}


def _save_samples(path: Path, samples: list[Sample], per_type: int = 4) -> None:
    chosen: list[Sample] = []
    counts: dict[str, int] = {}
    for s in samples:
        if s.label and counts.get(s.defect_type, 0) < per_type:
            counts[s.defect_type] = counts.get(s.defect_type, 0) + 1
            chosen.append(s)
    if not chosen:
        return
    save_npz(
        path,
        ids=np.array([s.id for s in chosen]),
        defect_types=np.array([s.defect_type for s in chosen]),
        images=np.stack([s.image for s in chosen]),
        masks=np.stack([s.mask for s in chosen]),
    )


class _ArmData:
    """The protocol's samples, resized once per image size a detector asks for."""

    def __init__(self, normals: list[Sample], defects: dict[str, list[Sample]], eval_set: list[Sample]) -> None:
        self.normals, self.defects, self.eval_set = normals, defects, eval_set
        self._sized: dict[int, tuple[list[Sample], dict[str, list[Sample]], list[Sample]]] = {}

    def at(self, size: int) -> tuple[list[Sample], dict[str, list[Sample]], list[Sample]]:
        """(normals, defects per arm, evaluation samples) at size x size."""
        if size not in self._sized:
            self._sized[size] = (
                [resize_sample(s, size) for s in self.normals],
                {arm: [resize_sample(s, size) for s in d] for arm, d in self.defects.items()},
                [resize_sample(s, size) for s in self.eval_set],
            )
        return self._sized[size]


def _arm_generator(arm: Arm, source: Any) -> dict[str, Any]:
    """run.json's generator fields of an arm: registered name, variant, params (from the shard record)."""
    if arm.generator is None:
        return {"generator": None, "variant": None, "generator_params": None}
    record = read_generation_record(source)
    out = {
        "generator": record.get("generator", arm.generator),
        "variant": record.get("variant"),
        "generator_params": record.get("generator_params", {}),
    }
    for key in ("training", "base_training"):  # planned vs done steps: the report marks a capped arm
        if key in record:
            out[key] = record[key]
    return out


def run_evaluation(
    spec: PipelineSpec,
    data: CategoryData,
    split: SplitManifest,
    arm_sources: dict[str, Any],
    out_dir: Path,
    seeds: list[int] | None = None,
    progress: Progress | None = None,
) -> Path:
    """Train every detector of ``spec.evaluation.models`` for every arm and seed; write results to out_dir.

    ``arm_sources`` maps arm name -> synthetic source (a shard directory, or any iterable of
    ``SyntheticPair`` / ``(image, mask, defect_type)``) for generator arms, None for ``none`` and
    ``real-few``; its keys are the arms that run, in order. Raises ``SpecError`` for a bad evaluation
    section (``check_evaluation``) and ``LeakageError`` if an evaluation image reaches a training set,
    both before any training. Returns ``out_dir``.
    """
    say = progress or (lambda _msg: None)
    settings: dict[str, Settings] = check_evaluation(spec)
    cfg = spec.evaluation.for_profile(spec.profile)
    seeds = list(seeds if seeds is not None else cfg.seeds)
    if not arm_sources:
        raise AnoaugError("no arms to evaluate")
    if split.category != data.category:
        raise ManifestError(f"split manifest is for category {split.category!r}, data is {data.category!r}")
    device = str(resolve_device(cfg.device))
    threads = thread_count(cfg.num_threads)  # auto: from the CPU affinity, never from the machine's load
    torch.set_num_threads(threads)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    protocol = Protocol.from_split(split)
    defect_types = split.defect_types()
    arms: list[Arm] = [parse_arm(a) for a in arm_sources]
    say(f"loading {data.category}: {protocol.counts()}")
    train_normal = load_rows(data, protocol.train_normal)
    real_defects = load_rows(data, protocol.train_defect)
    eval_set = load_rows(data, protocol.eval_rows)

    synthetic: dict[str, list[Sample]] = {}
    for arm in arms:
        if arm.generator is not None and arm.generator not in synthetic:
            src = source_for(arm, arm_sources)
            synthetic[arm.generator] = load_synthetic(
                arm.generator, src, data.category, defect_types, cfg.max_synthetic_per_type
            )
            say(f"arm {arm.name}: {len(synthetic[arm.generator])} synthetic pairs")

    def train_defects(arm: Arm) -> list[Sample]:
        return (real_defects if arm.use_real else []) + (synthetic[arm.generator] if arm.generator else [])

    train_sets = {arm.name: train_normal + train_defects(arm) for arm in arms}
    sizes = check_no_leakage(eval_set, train_sets)  # raises LeakageError

    samples = _ArmData(train_normal, {arm.name: train_defects(arm) for arm in arms}, eval_set)
    size = cfg.image_size
    _, defects_r, eval_r = samples.at(size)

    arm_info = []
    for arm in arms:
        src = arm_sources.get(arm.name)
        counts: dict[str, int] = {}
        for s in train_defects(arm):
            counts[f"{s.origin}:{s.defect_type}"] = counts.get(f"{s.origin}:{s.defect_type}", 0) + 1
        arm_info.append(
            {
                "name": arm.name,
                **_arm_generator(arm, source_for(arm, arm_sources)),
                "use_real": arm.use_real,
                "source": str(src) if isinstance(src, str | Path) else (None if src is None else "in-memory"),
                "train_size": sizes[arm.name],
                "train_defects": counts,
            }
        )
        if arm.generator:
            _save_samples(out_dir / "samples" / f"{arm.name}.npz", defects_r[arm.name])
    _save_samples(out_dir / "samples" / "real.npz", eval_r)
    _save_samples(out_dir / "samples" / "real-few.npz", [resize_sample(s, size) for s in real_defects])

    run_meta: dict[str, Any] = {
        "schema_version": RUN_SCHEMA_VERSION,
        "dataset": spec.dataset.name,
        "category": data.category,
        "split_seed": split.seed,
        "profile": spec.profile,
        "protocol": {
            **protocol.counts(),
            "defect_types": defect_types,
            "eval_roles": ["eval_normal", "eval_defect"],
            "train_roles": {"normal": "train_normal", "real-few": "gen_train_defect"},
            "selection": "fixed epochs from the spec; no validation on evaluation data; threshold-free metrics",
            "leakage_check": "passed",
        },
        "arms": arm_info,
        "seeds": seeds,
        "models": cfg.models,
        "config": cfg.model_dump(mode="json"),
        "detector_settings": {name: s.model_dump(mode="json") for name, s in settings.items()},
        "segmenter_precision": lightning_precision(cfg.precision, device),  # as resolved on this machine
        "pre_trained": cfg.pre_trained,
        "none_arm": (
            f"The segmenter cannot learn without positive pixels, so in the 'none' arm it is replaced by the "
            f"one-class anomalib model '{cfg.none_baseline}' (pre_trained={cfg.pre_trained}) trained on the "
            f"same normal images at the same size. Gains over 'none' therefore compare supervised training "
            f"on the arm's defects with the one-class baseline; gains over 'real-few' compare like with like."
            + "".join(get_detector(m).none_arm_note for m in dict.fromkeys(cfg.models))
        ),
        "generation_quality": generation_quality_status(),
        "environment": {
            "torch": torch.__version__, "python": platform.python_version(), "device": device, "num_threads": threads,
        },  # fmt: skip
        "status": "running",
    }
    _json_dump(run_meta, out_dir / "run.json")

    runs_dir = out_dir / "runs"
    one_class_cache: dict[tuple[str, int], tuple[Prediction, list[Sample]]] = {}

    def fit_predict(name: str, arm: Arm | None, seed: int) -> tuple[Prediction, list[Sample]]:
        """Fit detector ``name`` on the normals + the arm's defects (normals only for None); predict."""
        cls = get_detector(name)
        normals, defects, evals = samples.at(cls.image_size(cfg))
        detector = cls(settings[name])
        train = normals + (defects[arm.name] if arm is not None else [])
        detector.fit(train, FitContext(cfg, defect_types, device, spec.profile), seed)
        return detector.predict(evals), evals

    def one_class(name: str, seed: int) -> tuple[Prediction, list[Sample]]:
        """A one-class model's prediction (normals only): fitted once per seed, shared by the fallbacks."""
        if (name, seed) not in one_class_cache:
            one_class_cache[name, seed] = fit_predict(name, None, seed)
        return one_class_cache[name, seed]

    def record(name: str, arm: str, seed: int, pred: Prediction, evals: list[Sample], t0: float) -> None:
        task = get_detector(name).task
        run_dir = runs_dir / name / arm / f"seed{seed}"
        save_prediction(run_dir, task, pred, evals)
        metrics, extra = prediction_metrics(task, pred, evals, defect_types, name)
        _json_dump(
            {
                "model": name,
                "arm": arm,
                "seed": seed,
                "category": data.category,
                "metrics": metrics,
                "seconds": round(time.time() - t0, 2),
                **pred.info,
                **extra,
            },
            run_dir / "metrics.json",
        )

    for seed in seeds:
        for name in cfg.models:
            cls = get_detector(name)
            if not cls.uses_defects:
                t0 = time.time()
                say(f"seed {seed}: {name} (one-class, normals only)")
                record(name, NONE_ARM, seed, *one_class(name, seed), t0)
                continue
            for arm in arms:
                t0 = time.time()
                if not arm.has_defects and cls.needs_defects == "skip":
                    continue  # e.g. no defect examples: nothing to learn types from
                if not arm.has_defects and cls.needs_defects == "fallback":
                    say(f"seed {seed}: {name}/{arm.name} -> one-class {cfg.none_baseline}")
                    base, evals = one_class(cfg.none_baseline, seed)
                    info = {"implementation": f"anomalib {cfg.none_baseline} (one-class fallback)"}
                    record(name, arm.name, seed, Prediction(scores=base.scores, maps=base.maps, info=info), evals, t0)
                    continue
                n = len(train_defects(arm))
                say(f"seed {seed}: {name}/{arm.name} ({n} defect pairs{'' if n else ', one-class'})")
                pred, evals = fit_predict(name, arm, seed)
                record(name, arm.name, seed, pred, evals, t0)
    run_meta["status"] = "complete"
    run_meta["seconds"] = round(time.time() - t_start, 1)
    _json_dump(run_meta, out_dir / "run.json")
    say(f"done in {run_meta['seconds']} s -> {out_dir}")
    return out_dir
