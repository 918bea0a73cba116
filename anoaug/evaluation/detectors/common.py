"""What the built-in detectors share: the one prediction loop over evaluation samples, ResNet-18 weights, and
the arm's defect pairs as an anomaly source (DRÆM, DiffusionAD)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from anoaug.evaluation.datasets import IMAGENET_MEAN, IMAGENET_STD, plain_loader
from anoaug.evaluation.detectors.base import Prediction
from anoaug.evaluation.protocol import Sample

if TYPE_CHECKING:
    from anoaug.evaluation.detectors.draem.torch_model import PairAugmenter


def resnet18_weights_available() -> bool:
    """True when torchvision's ResNet-18 ImageNet weights are already in the torch hub cache."""
    from torchvision.models import ResNet18_Weights

    name = ResNet18_Weights.DEFAULT.url.rsplit("/", 1)[-1]
    return (Path(torch.hub.get_dir()) / "checkpoints" / name).is_file()


def predict_maps(
    net: nn.Module, samples: list[Sample], batch_size: int, device: str = "cpu", normalise: bool = False
) -> Prediction:
    """Anomaly scores (N,) and maps (N, H, W) of an anomalib-style network (eval mode, ``InferenceBatch`` out).

    Batches go to ``device`` (the network is moved there), results come back to the CPU. ``normalise``:
    ImageNet normalisation first (what anomalib's backbones expect).
    """
    net = net.to(device).eval()
    scores, maps = [], []
    with torch.no_grad():
        for batch in plain_loader(samples, batch_size):
            x = batch.image.to(device)
            if normalise:
                x = (x - IMAGENET_MEAN.to(x)) / IMAGENET_STD.to(x)
            out = net(x)
            scores.append(out.pred_score.reshape(-1).float().cpu())
            maps.append(out.anomaly_map.reshape(len(x), *x.shape[-2:]).float().cpu())
    return Prediction(scores=torch.cat(scores).numpy(), maps=torch.cat(maps).numpy())


def pair_source(defects: list[Sample], probability: float, flips: bool = True) -> tuple[PairAugmenter, str]:
    """The arm's defect pairs as a training augmenter (each image made anomalous with `probability`) and the
    anomaly source's description, ``pairs (<origins>, <number of pairs with a mask>)``."""
    from anoaug.evaluation.detectors.draem.torch_model import PairAugmenter

    aug = PairAugmenter.from_samples(defects, probability, flips)
    kinds = sorted({s.origin for s in defects})
    return aug, f"pairs ({'+'.join(kinds)}, {len(aug.images)})"
