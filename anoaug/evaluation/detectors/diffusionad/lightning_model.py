"""DiffusionAD's training step as a Lightning module: augment the normals, one joint loss, Adam, last epoch.

The loader yields normal training images only (as for the DRÆM detector); ``augmenter`` makes about half
of them anomalous: the arm's defect pairs (the DRÆM detector's ``PairAugmenter``) or, in the 'none' arm,
DiffusionAD's own Perlin anomalies (``PerlinAugmenter``). No validation, no checkpoint selection.
"""

from __future__ import annotations

import lightning as L
import torch
from anomalib.data import ImageBatch
from torch import nn

from anoaug.evaluation.detectors.diffusionad.torch_model import DiffusionADModel


class DiffusionADModule(L.LightningModule):
    """Trains ``model`` (UNet + segmentation subnetwork jointly) on ``augmenter(normal images)``."""

    def __init__(
        self,
        model: DiffusionADModel,
        augmenter: nn.Module,
        lr: float = 1e-4,
        less_t_range: int = 300,
        focal_weight: float = 5.0,
        smooth_l1_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.model, self.augmenter = model, augmenter
        self.lr, self.less_t_range = lr, less_t_range
        self.focal_weight, self.smooth_l1_weight = focal_weight, smooth_l1_weight
        self.last_losses: dict[str, float] = {}

    def training_step(self, batch: ImageBatch, batch_idx: int = 0) -> torch.Tensor:
        del batch_idx
        images, masks = self.augmenter(batch.image)
        loss, parts = self.model.training_loss(
            images, masks, self.less_t_range, self.focal_weight, self.smooth_l1_weight
        )
        self.last_losses = {"loss": float(loss.detach()), **{k: float(v) for k, v in parts.items()}}
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.model.parameters(), lr=self.lr)
