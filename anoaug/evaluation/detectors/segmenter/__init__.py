"""The supervised downstream segmenter (DRAEM / AnomalyDiffusion-style discriminative network).

The network is ``torch_model.SegmenterModel`` (a small U-Net), its training ``lightning_model.Segmenter``.
Its widths, learning rate and loss weights are section-level settings (``evaluation.widths``, ``lr``,
``focal_weight``, ``dice_weight``): the same for every arm. It cannot learn without positive pixels, so
in an arm without defects the one-class model ``evaluation.none_baseline`` stands in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from anoaug.evaluation.detectors.base import Detector, FitContext, Prediction, register_detector

if TYPE_CHECKING:
    from anoaug.evaluation.detectors.segmenter.lightning_model import Segmenter
    from anoaug.evaluation.protocol import Sample

IMPLEMENTATION = "anoaug segmenter (U-Net, focal + dice)"


@register_detector
class SegmenterDetector(Detector):
    """Focal + dice U-Net trained on normal images and the arm's defect pairs (balanced batches)."""

    name = "segmenter"
    task = "ad"
    needs_defects = "fallback"

    def fit(self, train: list[Sample], context: FitContext, seed: int) -> None:
        import lightning as L

        from anoaug.evaluation.datasets import balanced_loader, lightning_precision, make_trainer
        from anoaug.evaluation.detectors.segmenter.lightning_model import Segmenter

        cfg = context.cfg
        L.seed_everything(seed, verbose=False)
        model = Segmenter(cfg.widths, cfg.lr, cfg.focal_weight, cfg.dice_weight, cfg.epochs)
        draws = cfg.steps_per_epoch * cfg.batch_size if cfg.steps_per_epoch else None
        loader = balanced_loader(train, cfg.batch_size, seed, num_samples=draws)
        trainer = make_trainer(cfg.epochs, lightning_precision(cfg.precision, context.device), context.device)
        trainer.fit(model, train_dataloaders=loader)
        self.model: Segmenter = model.eval()
        self.context = context

    def predict(self, eval_samples: list[Sample]) -> Prediction:
        from anoaug.evaluation.detectors.common import predict_maps

        ctx = self._fitted()
        out = predict_maps(self.model.model, eval_samples, ctx.cfg.batch_size, ctx.device)
        out.info = {"implementation": IMPLEMENTATION}
        return out
