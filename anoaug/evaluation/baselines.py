"""anomalib one-class baselines (Padim, Patchcore) with a configurable ``pre_trained`` backbone.

Offline (no weights on disk) they run with random initialisation, which the report states: their
numbers are then a floor, not the published baselines.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from anomalib.data import ImageBatch
from anomalib.models import Padim, Patchcore

from anoaug.evaluation.datasets import IMAGENET_MEAN, IMAGENET_STD, make_trainer, plain_loader
from anoaug.evaluation.protocol import Sample

ONE_CLASS_MODELS = ("padim", "patchcore")


def build_one_class(name: str, pre_trained: bool, params: dict[str, Any]) -> torch.nn.Module:
    """An anomalib one-class model; processors off (we feed resized, ImageNet-normalised tensors)."""
    off = {"pre_processor": False, "post_processor": False, "evaluator": False, "visualizer": False}
    if name == "padim":
        return Padim(
            backbone=params.get("padim_backbone", "resnet18"),
            layers=params.get("padim_layers", ["layer1", "layer2", "layer3"]),
            pre_trained=pre_trained,
            **off,
        )
    if name == "patchcore":
        return Patchcore(
            backbone=params.get("patchcore_backbone", "resnet18"),
            layers=params.get("patchcore_layers", ["layer2", "layer3"]),
            pre_trained=pre_trained,
            coreset_sampling_ratio=float(params.get("patchcore_coreset_ratio", 0.1)),
            **off,
        )
    raise ValueError(f"unknown one-class model {name!r}; known: {ONE_CLASS_MODELS}")


def fit_predict_one_class(
    name: str,
    train_normal: list[Sample],
    eval_set: list[Sample],
    pre_trained: bool,
    batch_size: int,
    params: dict[str, Any],
) -> tuple[np.ndarray, np.ndarray]:
    """Fit on normal images only (one epoch, memory bank), return (scores (N,), maps (N, H, W))."""
    model = build_one_class(name, pre_trained, params)
    loader = plain_loader(train_normal, batch_size)
    loader.collate_fn = _normalising(loader.collate_fn)
    old = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"  # Patchcore's coreset selection draws a tqdm bar
    try:
        make_trainer(1).fit(model, train_dataloaders=loader)
    finally:
        if old is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = old
    model.eval()
    scores, maps = [], []
    with torch.no_grad():
        for batch in plain_loader(eval_set, batch_size):
            out = model.model((batch.image - IMAGENET_MEAN) / IMAGENET_STD)
            amap = out.anomaly_map.reshape(len(batch.image), *batch.image.shape[-2:])
            scores.append(out.pred_score.reshape(-1))
            maps.append(amap)
    return torch.cat(scores).numpy(), torch.cat(maps).numpy()


def _normalising(collate: Callable[[list], ImageBatch]) -> Callable[[list], ImageBatch]:
    """Wrap a collate function to apply ImageNet normalisation (what anomalib backbones expect)."""

    def wrapped(items: list) -> ImageBatch:
        batch = collate(items)
        batch.image = (batch.image - IMAGENET_MEAN) / IMAGENET_STD
        return batch

    return wrapped
