"""Defect-type classifier (AC): a torchvision ResNet-18 trained on an arm's defects, tested on real ones.

Trained on the arm's defect images only (synthetic pairs per type, or the real few) at
``evaluation.classifier_image_size`` for ``evaluation.classifier_epochs``; evaluated on the held-out
real defects (role ``eval_defect``): accuracy and a confusion matrix. No run in an arm without defects.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from pydantic import Field

from anoaug.evaluation.detectors.base import Detector, FitContext, Prediction, register_detector
from anoaug.registry import Settings

if TYPE_CHECKING:
    from anoaug.evaluation.detectors.classifier.lightning_model import DefectTypeClassifier
    from anoaug.evaluation.protocol import Sample
    from anoaug.spec import EvaluationSection


class ClassifierSettings(Settings):
    """``evaluation.params.classifier``."""

    draws_per_epoch: int = Field(
        default=64, ge=1, description="Class-balanced draws per epoch: the same number of steps for every arm."
    )


@register_detector
class ClassifierDetector(Detector):
    """ResNet-18 defect-type classifier (task 'ac')."""

    name = "classifier"
    Settings = ClassifierSettings
    task = "ac"
    needs_defects = "skip"

    @classmethod
    def image_size(cls, cfg: EvaluationSection) -> int:
        return cfg.classifier_image_size

    def fit(self, train: list[Sample], context: FitContext, seed: int) -> None:
        """Train on the defects of ``train``; each epoch draws ``draws_per_epoch`` samples, class-balanced,
        so every arm gets the same number of steps however many defects it has."""
        import lightning as L
        import torch

        from anoaug.evaluation.datasets import PairDataset, make_trainer
        from anoaug.evaluation.detectors.classifier.lightning_model import DefectTypeClassifier

        cfg, classes = context.cfg, context.defect_types
        defects = [s for s in train if s.label]
        index = {c: i for i, c in enumerate(classes)}
        y = [index[s.defect_type] for s in defects]
        counts = np.bincount(y, minlength=len(classes)).astype(float)
        weights = torch.as_tensor([1.0 / counts[c] for c in y], dtype=torch.double)
        gen = torch.Generator().manual_seed(seed)
        draws = self.settings.draws_per_epoch
        sampler = torch.utils.data.WeightedRandomSampler(weights, draws, True, generator=gen)
        loader = torch.utils.data.DataLoader(
            PairDataset(defects, flips=True, targets=y), batch_size=cfg.batch_size, sampler=sampler
        )
        L.seed_everything(seed, verbose=False)
        model = DefectTypeClassifier(len(classes), cfg.lr, cfg.pre_trained)
        make_trainer(cfg.classifier_epochs, device=context.device).fit(model, train_dataloaders=loader)
        self.model: DefectTypeClassifier = model.eval()
        self.context = context

    def predict(self, eval_samples: list[Sample]) -> Prediction:
        """Defect types of the defective evaluation samples (predicted, true)."""
        import torch

        from anoaug.evaluation.datasets import PairDataset

        ctx = self._fitted()
        index = {c: i for i, c in enumerate(ctx.defect_types)}
        test = [s for s in eval_samples if s.label]
        ds = PairDataset(test, targets=[index[s.defect_type] for s in test])
        model = self.model.to(ctx.device)
        with torch.no_grad():
            pred = model(ds.images.to(ctx.device)).argmax(1).cpu().numpy()
        info = {"implementation": "torchvision resnet18", "pretrained_used": self.model.pretrained_used}
        return Prediction(classes=pred, targets=ds.targets.numpy(), ids=[s.id for s in test], info=info)
