"""anomalib's SuperSimpleNet trained *supervised* on our defect pairs (real few or synthetic).

anomalib has no supervised learning type and its Folder datamodule puts every abnormal image in the
test set, so we feed the model our own balanced (normal + defect pair) batches; its ``training_step``
reads ``image``, ``gt_mask`` and ``gt_label`` from them. In an arm without defects the model runs
unsupervised (its own feature-space Perlin noise only), which is SuperSimpleNet's one-class mode.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from anoaug.evaluation.detectors.base import Detector, FitContext, Prediction, register_detector
from anoaug.registry import Settings

if TYPE_CHECKING:
    from anoaug.evaluation.protocol import Sample
    from anoaug.spec import EvaluationSection

SSN_MIN_SIZE = 128  # anomalib's feature-space Perlin generator fails on smaller feature maps


class SupersimplenetSettings(Settings):
    """``evaluation.params.supersimplenet``."""

    perlin_threshold: float = Field(default=0.2, ge=0, le=1, description="Feature-space Perlin mask threshold.")
    layers: list[str] = ["layer2", "layer3"]


@register_detector
class SupersimplenetDetector(Detector):
    """SuperSimpleNet: supervised on the arm's defect pairs, unsupervised (its own Perlin) without them."""

    name = "supersimplenet"
    Settings = SupersimplenetSettings
    task = "ad"
    needs_defects = "one-class"
    renamed = {"ssn_perlin_threshold": "perlin_threshold", "ssn_layers": "layers"}

    @classmethod
    def check(cls, cfg: EvaluationSection) -> list[str]:
        if cfg.image_size < SSN_MIN_SIZE:
            return [f"supersimplenet needs evaluation.image_size >= {SSN_MIN_SIZE} (got {cfg.image_size})"]
        return []

    def fit(self, train: list[Sample], context: FitContext, seed: int) -> None:
        """Supervised iff ``train`` holds defects; ``evaluation.steps_per_epoch`` as the segmenter."""
        import lightning as L

        from anoaug.evaluation.datasets import balanced_loader, make_trainer, normalising
        from anoaug.evaluation.detectors.supersimplenet.lightning_model import build_supersimplenet

        cfg = context.cfg
        self.supervised = any(s.label for s in train)
        L.seed_everything(seed, verbose=False)
        s = self.settings
        model, self.pretrained_used = build_supersimplenet(
            self.supervised, cfg.pre_trained, s.perlin_threshold, s.layers
        )
        draws = cfg.steps_per_epoch * cfg.batch_size if cfg.steps_per_epoch else None
        loader = balanced_loader(train, cfg.batch_size, seed, num_samples=draws)
        loader.collate_fn = normalising(loader.collate_fn)
        make_trainer(cfg.epochs, device=context.device).fit(model, train_dataloaders=loader)
        self.model = model.eval()
        self.context = context

    def predict(self, eval_samples: list[Sample]) -> Prediction:
        from anoaug.evaluation.detectors.common import predict_maps

        ctx = self._fitted()
        out = predict_maps(self.model.model, eval_samples, ctx.cfg.batch_size, ctx.device, normalise=True)
        out.info = {
            "implementation": f"anomalib supersimplenet (supervised={self.supervised})",
            "pretrained_used": self.pretrained_used,
        }
        return out
