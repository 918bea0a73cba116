"""Defect-type classifier (AC): a torchvision ResNet-18 trained on an arm's defects, tested on real ones.

Trained on the arm's defect images only (synthetic pairs per type, or the real few), evaluated on the
held-out real defects (role ``eval_defect``): accuracy and a confusion matrix. Random initialisation
(``weights=None``) unless ``pre_trained`` and torchvision weights are already cached locally.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torchvision.models import ResNet18_Weights, resnet18

from anoaug.evaluation.datasets import IMAGENET_MEAN, IMAGENET_STD, PairDataset, make_trainer
from anoaug.evaluation.protocol import Sample


def weights_available() -> bool:
    """True when torchvision's ResNet-18 ImageNet weights are already in the torch hub cache."""
    name = ResNet18_Weights.DEFAULT.url.rsplit("/", 1)[-1]
    return (Path(torch.hub.get_dir()) / "checkpoints" / name).is_file()


class DefectTypeClassifier(L.LightningModule):
    """ResNet-18 over ImageNet-normalised images; cross-entropy, Adam, fixed epochs."""

    def __init__(self, num_classes: int, lr: float = 1e-3, pre_trained: bool = False) -> None:
        super().__init__()
        weights = ResNet18_Weights.DEFAULT if pre_trained and weights_available() else None
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


def train_and_test_classifier(
    train: list[Sample],
    test: list[Sample],
    classes: list[str],
    epochs: int,
    batch_size: int,
    seed: int,
    lr: float = 1e-3,
    pre_trained: bool = False,
    draws_per_epoch: int = 64,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Train on `train` (defects only) and return (predicted, true) class indices on `test`.

    Each epoch draws ``draws_per_epoch`` samples, class-balanced, so every arm gets the same number of
    steps however many defects it has. Returns also whether pretrained weights were used.
    """
    index = {c: i for i, c in enumerate(classes)}
    y = [index[s.defect_type] for s in train]
    counts = np.bincount(y, minlength=len(classes)).astype(float)
    weights = torch.as_tensor([1.0 / counts[c] for c in y], dtype=torch.double)
    gen = torch.Generator().manual_seed(seed)
    sampler = torch.utils.data.WeightedRandomSampler(weights, draws_per_epoch, True, generator=gen)
    loader = torch.utils.data.DataLoader(
        PairDataset(train, flips=True, targets=y), batch_size=batch_size, sampler=sampler
    )
    L.seed_everything(seed, verbose=False)
    model = DefectTypeClassifier(len(classes), lr, pre_trained)
    make_trainer(epochs).fit(model, train_dataloaders=loader)
    model.eval()
    ds = PairDataset(test, targets=[index[s.defect_type] for s in test])
    with torch.no_grad():
        pred = model(ds.images).argmax(1).numpy()
    return pred, ds.targets.numpy(), model.pretrained_used
