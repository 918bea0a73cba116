"""Run the downstream comparison: arms x seeds x models, writing metrics and predictions per run.

Layout of ``out_dir`` (read by ``anoaug.report``; documented in ``anoaug/report/SCHEMA.md``)::

    run.json                                  protocol, arms, config, leakage check, notes
    runs/<model>/<arm>/seed<k>/metrics.json   one run's metrics
    runs/<model>/<arm>/seed<k>/predictions.npz  scores, labels, anomaly maps (or class predictions)
    samples/<arm>.npz, samples/real.npz       a few training pairs per arm and held-out real defects
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from anoaug.atomic import atomic_write_text
from anoaug.data.records import CategoryData
from anoaug.data.split import SplitManifest
from anoaug.errors import AnoaugError, ManifestError
from anoaug.evaluation.baselines import ONE_CLASS_MODELS, fit_predict_one_class
from anoaug.evaluation.classifier import train_and_test_classifier
from anoaug.evaluation.datasets import balanced_loader, make_trainer, plain_loader, resize_sample
from anoaug.evaluation.draem_shards import DRAEM_MIN_SIZE, DRAEM_SIZE_MULTIPLE, fit_predict_draem
from anoaug.evaluation.metrics import classification_metrics, image_metrics, pixel_metrics
from anoaug.evaluation.protocol import (
    Arm,
    Protocol,
    Sample,
    check_no_leakage,
    load_rows,
    load_synthetic,
    parse_arm,
    source_for,
)
from anoaug.evaluation.segmenter import Segmenter
from anoaug.evaluation.supervised_anomalib import fit_predict_supersimplenet
from anoaug.spec import EvaluationSection, PipelineSpec

RUN_SCHEMA_VERSION = "1"
MODELS = ("segmenter", "classifier", "supersimplenet", "draem", *ONE_CLASS_MODELS)
SSN_MIN_SIZE = 128  # anomalib's feature-space Perlin generator fails on smaller feature maps
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
        else "Pretrained feature weights are present locally, but this version does not compute KID/IS/IC-LPIPS yet."
    )
    return {"computed": False, "feature_weights_found": inception + lpips, "note": note}


def _train_segmenter(train: list[Sample], cfg: EvaluationSection, seed: int) -> Segmenter:
    L.seed_everything(seed, verbose=False)
    model = Segmenter(cfg.widths, cfg.lr, cfg.focal_weight, cfg.dice_weight, cfg.epochs)
    draws = cfg.steps_per_epoch * cfg.batch_size if cfg.steps_per_epoch else None
    loader = balanced_loader(train, cfg.batch_size, seed, num_samples=draws)
    make_trainer(cfg.epochs, lightning_precision(cfg.precision)).fit(model, train_dataloaders=loader)
    return model.eval()


def lightning_precision(setting: str) -> str:
    """The segmenter's Lightning precision for the spec's ``evaluation.precision``."""
    from anoaug.cpu import native_bf16

    bf16 = setting == "bf16" or (setting == "auto" and native_bf16())
    return "bf16-mixed" if bf16 else "32-true"


def _predict_segmenter(model: Segmenter, eval_set: list[Sample], batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    scores, maps = [], []
    with torch.no_grad():
        for batch in plain_loader(eval_set, batch_size):
            out = model.model(batch.image)
            scores.append(out.pred_score)
            maps.append(out.anomaly_map)
    return torch.cat(scores).numpy(), torch.cat(maps).numpy()


def _ad_metrics(scores: np.ndarray, maps: np.ndarray, eval_set: list[Sample]) -> dict[str, float]:
    labels = np.array([s.label for s in eval_set])
    masks = np.stack([s.mask for s in eval_set])
    return {**image_metrics(scores, labels), **pixel_metrics(maps, masks)}


def _save_ad(run_dir: Path, scores: np.ndarray, maps: np.ndarray, eval_set: list[Sample]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        run_dir / "predictions.npz",
        ids=np.array([s.id for s in eval_set]),
        defect_types=np.array([s.defect_type for s in eval_set]),
        labels=np.array([s.label for s in eval_set], np.int8),
        scores=scores.astype(np.float32),
        maps=maps.astype(np.float16),
        masks=np.stack([s.mask for s in eval_set]),
    )


def _save_samples(path: Path, samples: list[Sample], per_type: int = 4) -> None:
    chosen: list[Sample] = []
    counts: dict[str, int] = {}
    for s in samples:
        if s.label and counts.get(s.defect_type, 0) < per_type:
            counts[s.defect_type] = counts.get(s.defect_type, 0) + 1
            chosen.append(s)
    if not chosen:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path,
        ids=np.array([s.id for s in chosen]),
        defect_types=np.array([s.defect_type for s in chosen]),
        images=np.stack([s.image for s in chosen]),
        masks=np.stack([s.mask for s in chosen]),
    )


def run_evaluation(
    spec: PipelineSpec,
    data: CategoryData,
    split: SplitManifest,
    arm_sources: dict[str, Any],
    out_dir: Path,
    seeds: list[int] | None = None,
    progress: Progress | None = None,
) -> Path:
    """Train every model of ``spec.evaluation.models`` for every arm and seed; write results to out_dir.

    ``arm_sources`` maps arm name -> synthetic source (a shard directory, or any iterable of
    ``SyntheticPair`` / ``(image, mask, defect_type)``) for generator arms, None for ``none`` and
    ``real-few``; its keys are the arms that run, in order. Raises ``LeakageError`` if an evaluation
    image reaches a training set. Returns ``out_dir``.
    """
    say = progress or (lambda _msg: None)
    cfg = spec.evaluation.for_profile(spec.profile)
    seeds = list(seeds if seeds is not None else cfg.seeds)
    unknown = [m for m in cfg.models if m not in MODELS]
    if unknown:
        raise AnoaugError(f"unknown evaluation model(s) {unknown}; known: {list(MODELS)}")
    if "supersimplenet" in cfg.models and cfg.image_size < SSN_MIN_SIZE:
        raise AnoaugError(f"supersimplenet needs evaluation.image_size >= {SSN_MIN_SIZE} (got {cfg.image_size})")
    if "draem" in cfg.models and (cfg.image_size < DRAEM_MIN_SIZE or cfg.image_size % DRAEM_SIZE_MULTIPLE):
        raise AnoaugError(
            f"draem needs evaluation.image_size >= {DRAEM_MIN_SIZE} and a multiple of {DRAEM_SIZE_MULTIPLE} "
            f"(got {cfg.image_size})"
        )
    if not arm_sources:
        raise AnoaugError("no arms to evaluate")
    if split.category != data.category:
        raise ManifestError(f"split manifest is for category {split.category!r}, data is {data.category!r}")
    torch.set_num_threads(cfg.num_threads)
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

    size = cfg.image_size
    eval_r = [resize_sample(s, size) for s in eval_set]
    normal_r = [resize_sample(s, size) for s in train_normal]
    defects_r = {arm.name: [resize_sample(s, size) for s in train_defects(arm)] for arm in arms}

    arm_info = []
    for arm in arms:
        src = arm_sources.get(arm.name)
        counts: dict[str, int] = {}
        for s in train_defects(arm):
            counts[f"{s.origin}:{s.defect_type}"] = counts.get(f"{s.origin}:{s.defect_type}", 0) + 1
        arm_info.append(
            {
                "name": arm.name,
                "generator": arm.generator,
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
        "segmenter_precision": lightning_precision(cfg.precision),  # as resolved on this machine
        "pre_trained": cfg.pre_trained,
        "none_arm": (
            f"The segmenter cannot learn without positive pixels, so in the 'none' arm it is replaced by the "
            f"one-class anomalib model '{cfg.none_baseline}' (pre_trained={cfg.pre_trained}) trained on the "
            f"same normal images at the same size. Gains over 'none' therefore compare supervised training "
            f"on the arm's defects with the one-class baseline; gains over 'real-few' compare like with like."
            + (
                " DRÆM ('draem') keeps anomalib's Perlin anomalies in 'none' (Perlin-noise textures unless "
                "params.draem_dtd_dir names a local DTD); in the other arms its anomalies are the arm's defect "
                "pairs, pasted under their masks onto normal training images, so gains over 'none' are Perlin vs ours."
                if "draem" in cfg.models
                else ""
            )
        ),
        "generation_quality": generation_quality_status(),
        "environment": {"torch": torch.__version__, "python": platform.python_version(), "device": "cpu"},
        "status": "running",
    }
    _json_dump(run_meta, out_dir / "run.json")

    runs_dir = out_dir / "runs"
    one_class_cache: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}

    def one_class(name: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
        if (name, seed) not in one_class_cache:
            L.seed_everything(seed, verbose=False)
            one_class_cache[name, seed] = fit_predict_one_class(
                name, normal_r, eval_r, cfg.pre_trained, cfg.batch_size, cfg.params
            )
        return one_class_cache[name, seed]

    def record(model: str, arm: str, seed: int, metrics: dict[str, Any], extra: dict[str, Any], t0: float) -> None:
        _json_dump(
            {
                "model": model,
                "arm": arm,
                "seed": seed,
                "category": data.category,
                "metrics": metrics,
                "seconds": round(time.time() - t0, 2),
                **extra,
            },
            runs_dir / model / arm / f"seed{seed}" / "metrics.json",
        )

    for seed in seeds:
        for model_name in cfg.models:
            if model_name in ONE_CLASS_MODELS:
                t0 = time.time()
                say(f"seed {seed}: {model_name} (one-class, normals only)")
                scores, maps = one_class(model_name, seed)
                _save_ad(runs_dir / model_name / "none" / f"seed{seed}", scores, maps, eval_r)
                impl = {"implementation": f"anomalib {model_name}", "pre_trained": cfg.pre_trained}
                record(model_name, "none", seed, _ad_metrics(scores, maps, eval_r), impl, t0)
                continue
            for arm in arms:
                t0 = time.time()
                run_dir = runs_dir / model_name / arm.name / f"seed{seed}"
                if model_name == "segmenter":
                    if not arm.has_defects:
                        say(f"seed {seed}: segmenter/{arm.name} -> one-class {cfg.none_baseline}")
                        scores, maps = one_class(cfg.none_baseline, seed)
                        impl = {"implementation": f"anomalib {cfg.none_baseline} (one-class fallback)"}
                    else:
                        say(f"seed {seed}: segmenter/{arm.name} ({len(defects_r[arm.name])} defect pairs)")
                        seg = _train_segmenter(normal_r + defects_r[arm.name], cfg, seed)
                        scores, maps = _predict_segmenter(seg, eval_r, cfg.batch_size)
                        impl = {"implementation": "anoaug segmenter (U-Net, focal + dice)"}
                    _save_ad(run_dir, scores, maps, eval_r)
                    record(model_name, arm.name, seed, _ad_metrics(scores, maps, eval_r), impl, t0)
                elif model_name == "supersimplenet":
                    say(f"seed {seed}: supersimplenet/{arm.name} (supervised={arm.has_defects})")
                    scores, maps, used = fit_predict_supersimplenet(
                        normal_r + defects_r[arm.name], eval_r, cfg.epochs, cfg.batch_size, seed,
                        cfg.pre_trained, cfg.params, cfg.steps_per_epoch,
                    )  # fmt: skip
                    impl = {
                        "implementation": f"anomalib supersimplenet (supervised={arm.has_defects})",
                        "pretrained_used": used,
                    }
                    _save_ad(run_dir, scores, maps, eval_r)
                    record(model_name, arm.name, seed, _ad_metrics(scores, maps, eval_r), impl, t0)
                elif model_name == "draem":
                    say(f"seed {seed}: draem/{arm.name} ({len(defects_r[arm.name])} defect pairs, else Perlin)")
                    scores, maps, source = fit_predict_draem(
                        normal_r, defects_r[arm.name], eval_r, cfg.epochs, cfg.batch_size, seed, cfg.params
                    )
                    impl = {"implementation": f"anomalib draem (anomalies: {source})", "anomaly_source": source}
                    _save_ad(run_dir, scores, maps, eval_r)
                    record(model_name, arm.name, seed, _ad_metrics(scores, maps, eval_r), impl, t0)
                elif model_name == "classifier":
                    if not arm.has_defects:
                        continue  # no defect examples: nothing to learn types from
                    say(f"seed {seed}: classifier/{arm.name}")
                    csize = cfg.classifier_image_size
                    train = [resize_sample(s, csize) for s in train_defects(arm)]
                    test = [resize_sample(s, csize) for s in eval_set if s.label]
                    pred, true, used = train_and_test_classifier(
                        train,
                        test,
                        defect_types,
                        cfg.classifier_epochs,
                        cfg.batch_size,
                        seed,
                        cfg.lr,
                        cfg.pre_trained,
                    )
                    run_dir.mkdir(parents=True, exist_ok=True)
                    np.savez_compressed(
                        run_dir / "predictions.npz", ids=np.array([s.id for s in test]), pred=pred, true=true
                    )
                    cm = classification_metrics(pred, true, defect_types)
                    record(
                        model_name,
                        arm.name,
                        seed,
                        {"ac_accuracy": cm.pop("ac_accuracy")},
                        {"implementation": "torchvision resnet18", "pretrained_used": used, **cm},
                        t0,
                    )
    run_meta["status"] = "complete"
    run_meta["seconds"] = round(time.time() - t_start, 1)
    _json_dump(run_meta, out_dir / "run.json")
    say(f"done in {run_meta['seconds']} s -> {out_dir}")
    return out_dir
