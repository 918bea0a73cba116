"""The supervised segmenter: shapes, anomalib outputs, and that it learns an easy defect."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from anomalib.data import InferenceBatch

from anoaug.evaluation.metrics import image_metrics, pixel_metrics
from anoaug.evaluation.protocol import Sample
from anoaug.evaluation.segmenter import Segmenter, SegmenterModel
from anoaug.spec import EvaluationSection


def test_model_shapes_and_inference_batch() -> None:
    model = SegmenterModel([4, 8, 16])
    x = torch.rand(2, 3, 30, 30)  # not a multiple of the stride: padded and cropped back
    assert model(x).shape == (2, 1, 30, 30)
    model.eval()
    out = model(x)
    assert isinstance(out, InferenceBatch)
    assert out.anomaly_map.shape == (2, 30, 30) and out.pred_score.shape == (2,)
    assert float(out.anomaly_map.min()) >= 0.0 and float(out.anomaly_map.max()) <= 1.0


def _square_samples(n: int, size: int, rng: np.random.Generator, start: int = 0) -> list[Sample]:
    out = []
    for i in range(n):
        img = rng.integers(40, 90, (size, size, 3), dtype=np.uint8)
        mask = np.zeros((size, size), bool)
        if i % 2:
            y, x = rng.integers(2, size - 10, 2)
            mask[y : y + 8, x : x + 8] = True
            img[mask] = 230
        out.append(Sample(f"s{start + i}", img, mask, "square" if i % 2 else "good", "real"))
    return out


@pytest.mark.slow
def test_segmenter_learns_bright_squares() -> None:
    from anoaug.evaluation.runner import _predict_segmenter, _train_segmenter

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    train, test = _square_samples(24, 32, rng), _square_samples(12, 32, rng, start=100)
    cfg = EvaluationSection(image_size=32, epochs=6, batch_size=8, widths=[8, 16], lr=1e-2)
    model = _train_segmenter(train, cfg, seed=0)
    assert isinstance(model, Segmenter)
    scores, maps = _predict_segmenter(model, test, batch_size=8)
    labels = np.array([s.label for s in test])
    assert image_metrics(scores, labels)["image_auroc"] > 0.9
    assert pixel_metrics(maps, np.stack([s.mask for s in test]))["pixel_auroc"] > 0.9


def test_gpu_profile_overrides() -> None:
    cfg = EvaluationSection()
    assert cfg.for_profile("cpu-tiny") is cfg
    gpu = cfg.for_profile("gpu")
    assert gpu.image_size == 256 and gpu.widths == [32, 64, 128, 256]
    with pytest.raises(ValueError):
        EvaluationSection(gpu={"image_size": 4}).for_profile("gpu")
