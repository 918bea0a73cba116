"""anomalib's PatchCore as a one-class baseline (normals only; also the segmenter's 'none'-arm stand-in)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from anoaug.evaluation.detectors.base import register_detector
from anoaug.evaluation.detectors.one_class import OneClassDetector
from anoaug.registry import Settings


class PatchcoreSettings(Settings):
    """``evaluation.params.patchcore``."""

    backbone: str = "resnet18"
    layers: list[str] = ["layer2", "layer3"]
    coreset_ratio: float = Field(default=0.1, gt=0, le=1, description="Fraction of patch features kept.")


@register_detector
class PatchcoreDetector(OneClassDetector):
    """Nearest-neighbour distance to a coreset of the normal images' patch features."""

    name = "patchcore"
    Settings = PatchcoreSettings
    anomalib_class = "Patchcore"
    renamed = {
        "patchcore_backbone": "backbone",
        "patchcore_layers": "layers",
        "patchcore_coreset_ratio": "coreset_ratio",
    }

    def model_kwargs(self) -> dict[str, Any]:
        s = self.settings
        return {"backbone": s.backbone, "layers": list(s.layers), "coreset_sampling_ratio": float(s.coreset_ratio)}
