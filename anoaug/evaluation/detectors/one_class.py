"""anomalib one-class baselines (Padim, Patchcore) with a configurable ``pre_trained`` backbone.

Fitted on normal images only (one epoch: a memory bank); the same fit stands in for the segmenter in
arms without defects. Offline (no weights on disk) they run with random initialisation, which the
report states: their numbers are then a floor, not the published baselines.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, ClassVar

from anoaug.evaluation.detectors.base import Detector, FitContext, Prediction

if TYPE_CHECKING:
    from torch import nn

    from anoaug.evaluation.protocol import Sample

PROCESSORS_OFF = {"pre_processor": False, "post_processor": False, "evaluator": False, "visualizer": False}


class OneClassDetector(Detector):
    """An anomalib one-class model fitted on the normal training images; subclasses build the model."""

    task = "ad"
    needs_defects = "one-class"
    uses_defects = False
    anomalib_class: ClassVar[str]  # e.g. "Padim"

    def build(self, pre_trained: bool) -> nn.Module:
        """The anomalib model, processors off (we feed resized, ImageNet-normalised tensors)."""
        import anomalib.models

        cls = getattr(anomalib.models, self.anomalib_class)
        return cls(pre_trained=pre_trained, **self.model_kwargs(), **PROCESSORS_OFF)

    def model_kwargs(self) -> dict[str, Any]:
        """Constructor arguments of the anomalib model from this detector's settings."""
        return self.settings.model_dump()

    def fit(self, train: list[Sample], context: FitContext, seed: int) -> None:
        import lightning as L

        from anoaug.evaluation.datasets import make_trainer, normalising, plain_loader

        L.seed_everything(seed, verbose=False)
        model = self.build(context.cfg.pre_trained)
        loader = plain_loader([s for s in train if not s.label], context.cfg.batch_size)
        loader.collate_fn = normalising(loader.collate_fn)
        old = os.environ.get("TQDM_DISABLE")
        os.environ["TQDM_DISABLE"] = "1"  # Patchcore's coreset selection draws a tqdm bar
        try:
            make_trainer(1, device=context.device).fit(model, train_dataloaders=loader)
        finally:
            if old is None:
                os.environ.pop("TQDM_DISABLE", None)
            else:
                os.environ["TQDM_DISABLE"] = old
        self.model = model.eval()
        self.context = context

    def predict(self, eval_samples: list[Sample]) -> Prediction:
        from anoaug.evaluation.detectors.common import predict_maps

        ctx = self._fitted()
        out = predict_maps(self.model.model, eval_samples, ctx.cfg.batch_size, ctx.device, normalise=True)
        out.info = {"implementation": f"anomalib {self.name}", "pre_trained": ctx.cfg.pre_trained}
        return out
