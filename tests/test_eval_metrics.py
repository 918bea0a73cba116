"""Metric values on constructed cases (anomalib metric implementations) and seed statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from anoaug.evaluation.metrics import classification_metrics, image_metrics, mean_ci, pixel_metrics

LABELS = np.array([0, 0, 0, 1, 1, 1])
SCORES = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])


def _masks() -> np.ndarray:
    m = np.zeros((3, 16, 16), bool)
    m[0, 2:6, 2:6] = True
    m[1, 8:12, 3:14] = True
    m[2, 0:3, 0:3] = True
    m[2, 10:15, 10:15] = True  # two regions in one image (AUPRO averages per region)
    return m


def test_image_metrics_perfect_inverted_constant() -> None:
    perfect = image_metrics(SCORES, LABELS)
    assert perfect == pytest.approx({"image_auroc": 1.0, "image_ap": 1.0, "image_f1max": 1.0}, abs=1e-6)
    assert image_metrics(-SCORES, LABELS)["image_auroc"] == pytest.approx(0.0, abs=1e-6)
    constant = image_metrics(np.full(6, 0.4), LABELS)
    assert constant["image_auroc"] == pytest.approx(0.5, abs=1e-6)
    assert constant["image_ap"] == pytest.approx(0.5, abs=1e-6)  # = prevalence


def test_image_metrics_partial_order() -> None:
    # one normal above one anomaly: 8 of 9 pairs ordered -> AUROC 8/9
    scores = np.array([0.1, 0.2, 0.75, 0.7, 0.8, 0.9])
    assert image_metrics(scores, LABELS)["image_auroc"] == pytest.approx(8 / 9, abs=1e-6)


def test_pixel_metrics_perfect_inverted_constant() -> None:
    masks = _masks()
    perfect = pixel_metrics(masks.astype(np.float32), masks)
    assert perfect["pixel_auroc"] == pytest.approx(1.0, abs=1e-6)
    assert perfect["pixel_ap"] == pytest.approx(1.0, abs=1e-6)
    assert perfect["pixel_f1max"] == pytest.approx(1.0, abs=1e-6)
    assert perfect["pixel_aupro"] == pytest.approx(1.0, abs=1e-4)
    inverted = pixel_metrics(1.0 - masks, masks)
    assert inverted["pixel_auroc"] == pytest.approx(0.0, abs=1e-6)
    assert inverted["pixel_aupro"] == pytest.approx(0.0, abs=1e-4)
    constant = pixel_metrics(np.full(masks.shape, 0.3, np.float32), masks)
    assert constant["pixel_auroc"] == pytest.approx(0.5, abs=1e-6)
    assert constant["pixel_ap"] == pytest.approx(masks.mean(), abs=1e-6)


def test_metrics_need_both_classes() -> None:
    with pytest.raises(ValueError, match="both"):
        image_metrics(SCORES, np.zeros(6, int))
    with pytest.raises(ValueError, match="both"):
        pixel_metrics(np.zeros((2, 4, 4)), np.zeros((2, 4, 4), bool))


def test_mean_ci_t_interval() -> None:
    s = mean_ci([0.8, 0.9, 0.85])
    assert s["mean"] == pytest.approx(0.85)
    assert s["std"] == pytest.approx(0.05)
    # t(0.975, df=2) = 4.302653
    assert s["half_width"] == pytest.approx(4.302653 * 0.05 / math.sqrt(3), rel=1e-5)
    assert s["ci_low"] < s["mean"] < s["ci_high"]
    one = mean_ci([0.7])
    assert one["mean"] == 0.7 and one["half_width"] is None and one["n"] == 1
    assert mean_ci([])["n"] == 0


def test_classification_metrics_confusion() -> None:
    out = classification_metrics(np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0]), ["cut", "stain"])
    assert out["ac_accuracy"] == pytest.approx(0.75)
    assert out["confusion_matrix"] == [[2, 1], [0, 1]]
