"""AD / AL / AC metrics through anomalib's metric classes (themselves torchmetrics), plus seed statistics.

anomalib's metrics take a batch object and read the named ``fields`` from it; we pass a tiny namespace
holding our arrays, so the numbers are exactly anomalib's (step-wise AP, F1-max over the PR curve,
AUPRO with FPR limit 0.3 and connected components of the ground truth).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import torch
from anomalib.metrics import AUPR, AUPRO, AUROC, F1Max
from torchmetrics.classification import BinaryPrecisionRecallCurve, MulticlassConfusionMatrix

IMAGE_METRICS = ("image_auroc", "image_ap", "image_f1max")
PIXEL_METRICS = ("pixel_auroc", "pixel_ap", "pixel_f1max", "pixel_aupro")
CLASS_METRICS = ("ac_accuracy",)
ALL_METRICS = IMAGE_METRICS + PIXEL_METRICS + CLASS_METRICS
FIELDS = ["preds", "target"]


def _anomalib(metric_cls: type, preds: torch.Tensor, target: torch.Tensor, **kw: object) -> float:
    metric = metric_cls(fields=FIELDS, **kw)
    metric.update(SimpleNamespace(preds=preds, target=target))
    return float(metric.compute())


def image_metrics(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Image AUROC, AP, F1-max. Needs both classes present."""
    p = torch.as_tensor(np.asarray(scores, np.float32))
    t = torch.as_tensor(np.asarray(labels)).long()
    if t.unique().numel() < 2:
        raise ValueError("image metrics need both normal and anomalous images")
    return {
        "image_auroc": _anomalib(AUROC, p, t),
        "image_ap": _anomalib(AUPR, p, t),
        "image_f1max": _anomalib(F1Max, p, t),
    }


def pixel_metrics(maps: np.ndarray, masks: np.ndarray, aupro: bool = True) -> dict[str, float]:
    """Pixel AUROC, AP, F1-max and AUPRO of (N, H, W) anomaly maps against (N, H, W) bool masks."""
    p = torch.as_tensor(np.asarray(maps, np.float32))
    t = torch.as_tensor(np.asarray(masks, bool))
    if not t.any() or t.all():
        raise ValueError("pixel metrics need both normal and anomalous pixels")
    out = {
        "pixel_auroc": _anomalib(AUROC, p, t.long()),
        "pixel_ap": _anomalib(AUPR, p, t.long()),
        "pixel_f1max": _anomalib(F1Max, p, t.long()),
    }
    if aupro:
        out["pixel_aupro"] = _anomalib(AUPRO, p, t.int())
    return out


def pr_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(precision, recall) of the image-level PR curve (torchmetrics)."""
    metric = BinaryPrecisionRecallCurve()
    prec, rec, _ = metric(torch.as_tensor(np.asarray(scores, np.float32)), torch.as_tensor(labels).long())
    return prec.numpy(), rec.numpy()


def classification_metrics(pred: np.ndarray, target: np.ndarray, classes: list[str]) -> dict[str, object]:
    """AC accuracy and the confusion matrix (rows: true type, columns: predicted type)."""
    pred_t, target_t = torch.as_tensor(pred).long(), torch.as_tensor(target).long()
    cm = MulticlassConfusionMatrix(num_classes=len(classes))(pred_t, target_t)
    acc = float((pred_t == target_t).float().mean()) if len(target_t) else float("nan")
    return {"ac_accuracy": acc, "confusion_matrix": cm.tolist(), "classes": list(classes)}


def mean_ci(values: list[float], level: float = 0.95) -> dict[str, float | int | None]:
    """Mean and t-distribution confidence interval over seeds (half-width None for n < 2)."""
    from scipy import stats

    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], np.float64)
    n = int(v.size)
    if n == 0:
        return {"mean": None, "std": None, "ci_low": None, "ci_high": None, "half_width": None, "n": 0}
    mean = float(v.mean())
    if n < 2:
        return {"mean": mean, "std": None, "ci_low": None, "ci_high": None, "half_width": None, "n": 1}
    std = float(v.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * std / math.sqrt(n))
    return {"mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half, "half_width": half, "n": n}
