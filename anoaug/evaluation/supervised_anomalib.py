"""anomalib's SuperSimpleNet trained *supervised* on our defect pairs (real few or synthetic).

anomalib has no supervised learning type and its Folder datamodule puts every abnormal image in the
test set, so we feed the model our own balanced (normal + defect pair) batches; its
``training_step`` reads ``image``, ``gt_mask`` and ``gt_label`` from them. SuperSimpleNet builds a timm
backbone with pretrained weights from a name; anomalib's ``TimmFeatureExtractor`` also accepts an
``nn.Module``, so we pass a torchvision ResNet-18 whose weights we control (random offline, ImageNet
when ``pre_trained`` and the weights are cached) -- no monkey-patching. In the ``none`` arm the model
runs unsupervised (its own feature-space Perlin noise only), which is SuperSimpleNet's one-class mode.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
from anomalib.models import Supersimplenet
from torchvision.models import ResNet18_Weights, resnet18

from anoaug.evaluation.baselines import _normalising
from anoaug.evaluation.classifier import weights_available
from anoaug.evaluation.datasets import IMAGENET_MEAN, IMAGENET_STD, balanced_loader, make_trainer, plain_loader
from anoaug.evaluation.protocol import Sample


def build_supersimplenet(supervised: bool, pre_trained: bool, params: dict[str, Any]) -> tuple[Supersimplenet, bool]:
    """A SuperSimpleNet over a torchvision ResNet-18 module; returns it and whether ImageNet weights were used."""
    use_weights = pre_trained and weights_available()
    backbone = resnet18(weights=ResNet18_Weights.DEFAULT if use_weights else None)
    model = Supersimplenet(
        perlin_threshold=float(params.get("ssn_perlin_threshold", 0.2)),
        backbone=backbone,
        layers=list(params.get("ssn_layers", ["layer2", "layer3"])),
        supervised=supervised,
        pre_processor=False,
        post_processor=False,
        evaluator=False,
        visualizer=False,
    )
    return model, use_weights


def fit_predict_supersimplenet(
    train: list[Sample],
    eval_set: list[Sample],
    epochs: int,
    batch_size: int,
    seed: int,
    pre_trained: bool,
    params: dict[str, Any],
    steps_per_epoch: int | None = None,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Train (supervised iff `train` holds defects) and return (scores, maps, pretrained weights used)."""
    supervised = any(s.label for s in train)
    L.seed_everything(seed, verbose=False)
    model, used = build_supersimplenet(supervised, pre_trained, params)
    draws = steps_per_epoch * batch_size if steps_per_epoch else None
    loader = balanced_loader(train, batch_size, seed, num_samples=draws)
    loader.collate_fn = _normalising(loader.collate_fn)
    make_trainer(epochs).fit(model, train_dataloaders=loader)
    model.eval()
    scores, maps = [], []
    with torch.no_grad():
        for batch in plain_loader(eval_set, batch_size):
            out = model.model((batch.image - IMAGENET_MEAN) / IMAGENET_STD)
            scores.append(out.pred_score.reshape(-1))
            maps.append(out.anomaly_map.reshape(len(batch.image), *batch.image.shape[-2:]))
    return torch.cat(scores).numpy(), torch.cat(maps).numpy(), used
