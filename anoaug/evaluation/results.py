"""The one metrics + saving path of every detector run: metrics.json's numbers and predictions.npz."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from anoaug.atomic import atomic_path
from anoaug.errors import AnoaugError
from anoaug.evaluation.detectors.base import Prediction, Task
from anoaug.evaluation.metrics import classification_metrics, image_metrics, pixel_metrics
from anoaug.evaluation.protocol import Sample

RUN_FIELDS = ("model", "arm", "seed", "category", "metrics", "seconds")  # metrics.json fields of the runner
AD_ARRAYS = ("ids", "defect_types", "labels", "scores", "maps", "masks")  # predictions.npz fields of an 'ad' run


def _check(task: Task, pred: Prediction, samples: list[Sample], who: str) -> None:
    clash = sorted(set(pred.info) & set(RUN_FIELDS))
    if clash or "implementation" not in pred.info:
        raise AnoaugError(f"detector {who!r}: prediction info must name 'implementation' and not set {clash}")
    if task == "ad":
        if pred.scores is None or pred.maps is None:
            raise AnoaugError(f"detector {who!r} (task 'ad') returned no scores or maps")
        size = samples[0].mask.shape if samples else ()
        if pred.scores.shape != (len(samples),) or pred.maps.shape != (len(samples), *size):
            raise AnoaugError(
                f"detector {who!r}: scores {pred.scores.shape} / maps {pred.maps.shape} do not match "
                f"{len(samples)} evaluation samples of {size}"
            )
        bad = [k for k, v in pred.arrays.items() if k in AD_ARRAYS or len(v) != len(samples)]
        if bad:
            raise AnoaugError(f"detector {who!r}: extra arrays {bad} clash with {AD_ARRAYS} or are not one per sample")
    elif pred.classes is None or pred.targets is None or pred.ids is None or len(pred.classes) != len(pred.ids):
        raise AnoaugError(f"detector {who!r} (task 'ac') returned no classes, targets and ids of one length")


def prediction_metrics(
    task: Task, pred: Prediction, samples: list[Sample], defect_types: list[str], who: str = "?"
) -> tuple[dict[str, float], dict[str, Any]]:
    """(metrics, extra metrics.json fields): AD/AL metrics of scores and maps, or AC accuracy (+ confusion)."""
    _check(task, pred, samples, who)
    if task == "ad":
        labels = np.array([s.label for s in samples])
        masks = np.stack([s.mask for s in samples])
        return {**image_metrics(pred.scores, labels), **pixel_metrics(pred.maps, masks)}, {}
    cm = classification_metrics(pred.classes, pred.targets, defect_types)
    return {"ac_accuracy": cm.pop("ac_accuracy")}, cm


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    """``np.savez_compressed`` written atomically (a crash leaves no half-written file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)


def save_prediction(run_dir: Path, task: Task, pred: Prediction, samples: list[Sample]) -> None:
    """``run_dir/predictions.npz``: ids, labels, scores, maps, masks ('ad') or ids, pred, true ('ac')."""
    if task == "ad":
        save_npz(
            run_dir / "predictions.npz",
            ids=np.array([s.id for s in samples]),
            defect_types=np.array([s.defect_type for s in samples]),
            labels=np.array([s.label for s in samples], np.int8),
            scores=pred.scores.astype(np.float32),
            maps=pred.maps.astype(np.float16),
            masks=np.stack([s.mask for s in samples]),
            **pred.arrays,
        )
    else:
        save_npz(run_dir / "predictions.npz", ids=np.array(pred.ids), pred=pred.classes, true=pred.targets)
