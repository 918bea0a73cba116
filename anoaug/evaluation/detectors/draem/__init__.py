"""anomalib's DRÆM with the arm's defect pairs as its anomaly source (its own Perlin in an arm without defects).

``torch_model.PairAugmenter`` replaces Draem's Perlin augmenter; ``lightning_model.build_draem`` builds the
anomalib module with it (see there for why and how).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from anoaug.evaluation.detectors.base import Detector, FitContext, Prediction, register_detector
from anoaug.registry import Settings

if TYPE_CHECKING:
    from anoaug.evaluation.protocol import Sample
    from anoaug.spec import EvaluationSection

DRAEM_SIZE_MULTIPLE = 32  # the discriminative U-Net pools 5 times and concatenates skips
DRAEM_MIN_SIZE = 64  # at 32 px its bottleneck is 1x1, where BatchNorm fails on a batch of one


def discriminative_unet_size_problems(detector: str, image_size: int) -> list[str]:
    """What is wrong with `image_size` for DRÆM's discriminative U-Net (also DiffusionAD's segmentation
    subnetwork); empty when it fits. Kept torch-free: spec checks call it."""
    if image_size < DRAEM_MIN_SIZE or image_size % DRAEM_SIZE_MULTIPLE:
        return [
            f"{detector} needs evaluation.image_size >= {DRAEM_MIN_SIZE} and a multiple of {DRAEM_SIZE_MULTIPLE} "
            f"(got {image_size})"
        ]
    return []


class DraemSettings(Settings):
    """``evaluation.params.draem``."""

    dtd_dir: str | None = None  # a local DTD copy for the Perlin anomalies of the 'none' arm


@register_detector
class DraemDetector(Detector):
    """DRÆM trained on normals; anomalies pasted from the arm's defect pairs (else anomalib's Perlin)."""

    name = "draem"
    Settings = DraemSettings
    task = "ad"
    needs_defects = "one-class"
    renamed = {"draem_dtd_dir": "dtd_dir"}
    none_arm_note = (
        " DRÆM ('draem') keeps anomalib's Perlin anomalies in 'none' (Perlin-noise textures unless "
        "params.draem.dtd_dir names a local DTD); in the other arms its anomalies are the arm's defect "
        "pairs, pasted under their masks onto normal training images, so gains over 'none' are Perlin vs ours."
    )

    @classmethod
    def check(cls, cfg: EvaluationSection) -> list[str]:
        return discriminative_unet_size_problems(cls.name, cfg.image_size)

    def fit(self, train: list[Sample], context: FitContext, seed: int) -> None:
        """A fixed number of epochs over the normals of ``train``; its defects are the anomaly source."""
        import lightning as L

        from anoaug.evaluation.datasets import balanced_loader, make_trainer
        from anoaug.evaluation.detectors.draem.lightning_model import build_draem

        cfg = context.cfg
        normals = [s for s in train if not s.label]
        defects = [s for s in train if s.label]
        L.seed_everything(seed, verbose=False)
        model, self.source = build_draem(defects, self.settings.dtd_dir)
        # Normals only (the augmenter adds the anomalies); 2 x n_normal draws per epoch, as the segmenter's loader.
        loader = balanced_loader(normals, cfg.batch_size, seed)
        make_trainer(cfg.epochs, device=context.device).fit(model, train_dataloaders=loader)
        self.model = model.eval()
        self.context = context

    def predict(self, eval_samples: list[Sample]) -> Prediction:
        from anoaug.evaluation.detectors.common import predict_maps

        ctx = self._fitted()
        out = predict_maps(self.model.model, eval_samples, ctx.cfg.batch_size, ctx.device)
        out.info = {"implementation": f"anomalib draem (anomalies: {self.source})", "anomaly_source": self.source}
        return out
