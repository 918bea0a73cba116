"""Training of the segmenter as an anomalib ``AnomalibModule``.

It subclasses ``AnomalibModule`` so it shares anomalib's ``InferenceBatch`` outputs, export and
visualisation, and can be given to ``anomalib.engine.Engine``. anoaug trains it with a plain Lightning
``Trainer`` and a fixed number of epochs instead: the Engine's post-processor would fit a threshold
and normalisation on the validation set, and our protocol chooses nothing on evaluation data (all
reported metrics are threshold-free). Pre/post-processing are off by default for the same reason; the
dataloaders feed images already resized and scaled to [0, 1].
"""

from __future__ import annotations

from typing import Any

import torch
from anomalib import LearningType
from anomalib.data import Batch
from anomalib.models.components import AnomalibModule
from torchvision.ops import sigmoid_focal_loss

from anoaug.evaluation.detectors.segmenter.torch_model import SegmenterModel


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice over each image (written here: torchvision/torchmetrics have no binary dice loss)."""
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    inter = (p * t).sum(1)
    return (1 - (2 * inter + eps) / (p.sum(1) + t.sum(1) + eps)).mean()


class Segmenter(AnomalibModule):
    """Supervised discriminative segmenter: focal + dice loss on (image, mask) pairs."""

    def __init__(
        self,
        widths: tuple[int, ...] | list[int] = (16, 32, 64),
        lr: float = 1e-3,
        focal_weight: float = 1.0,
        dice_weight: float = 1.0,
        epochs: int = 10,
        pre_processor: bool = False,
        post_processor: bool = False,
        evaluator: bool = False,
        visualizer: bool = False,
    ) -> None:
        super().__init__(
            pre_processor=pre_processor, post_processor=post_processor, evaluator=evaluator, visualizer=visualizer
        )
        # channels_last: ~1.4x faster oneDNN convolutions on CPU (SegmenterModel converts its input to match)
        self.model = SegmenterModel(widths).to(memory_format=torch.channels_last)
        self.lr = lr
        self.focal_weight = focal_weight
        self.dice_weight = dice_weight
        self.epochs = epochs

    def loss(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        target = mask.float().unsqueeze(1) if mask.ndim == 3 else mask.float()
        logits = logits.float()  # the losses in float32 also under bf16 autocast
        focal = sigmoid_focal_loss(logits, target, alpha=-1, gamma=2.0, reduction="mean")
        return self.focal_weight * focal + self.dice_weight * soft_dice_loss(logits, target)

    def training_step(self, batch: Batch, *args: Any, **kwargs: Any) -> torch.Tensor:
        del args, kwargs
        loss = self.loss(self.model(batch.image), batch.gt_mask)
        self.log("train_loss", loss, prog_bar=False, batch_size=len(batch.image))
        return loss

    def validation_step(self, batch: Batch, *args: Any, **kwargs: Any) -> Batch:
        del args, kwargs
        return batch.update(**self.model(batch.image)._asdict())

    def configure_optimizers(self) -> dict[str, Any]:
        opt = torch.optim.Adam(self.model.parameters(), lr=self.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, self.epochs))
        return {"optimizer": opt, "lr_scheduler": sched}

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        return {"max_epochs": self.epochs, "num_sanity_val_steps": 0}

    @property
    def learning_type(self) -> LearningType:
        # anomalib has no "supervised" type; FEW_SHOT is the closest: it learns from a few labelled defects.
        return LearningType.FEW_SHOT
