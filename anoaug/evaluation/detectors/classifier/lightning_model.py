"""The defect-type classifier's training: a torchvision ResNet-18 as a Lightning module.

Random initialisation (``weights=None``) unless ``pre_trained`` and torchvision's weights are already
cached locally.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torchvision.models import ResNet18_Weights, resnet18

from anoaug.evaluation.datasets import IMAGENET_MEAN, IMAGENET_STD
from anoaug.evaluation.detectors.common import resnet18_weights_available


class DefectTypeClassifier(L.LightningModule):
    """ResNet-18 over ImageNet-normalised images; cross-entropy, Adam, fixed epochs."""

    def __init__(self, num_classes: int, lr: float = 1e-3, pre_trained: bool = False) -> None:
        super().__init__()
        weights = ResNet18_Weights.DEFAULT if pre_trained and resnet18_weights_available() else None
        self.net = resnet18(weights=weights)
        self.net.fc = torch.nn.Linear(self.net.fc.in_features, num_classes)
        self.lr = lr
        self.pretrained_used = weights is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - IMAGENET_MEAN.to(x)) / IMAGENET_STD.to(x))

    def training_step(self, batch: tuple[torch.Tensor, ...], *args: Any) -> torch.Tensor:
        images, _masks, targets = batch
        return F.cross_entropy(self(images), targets)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)
