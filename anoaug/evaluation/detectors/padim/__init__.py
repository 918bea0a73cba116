"""anomalib's PaDiM as a one-class baseline (normals only; also the segmenter's 'none'-arm stand-in)."""

from __future__ import annotations

from typing import Any

from anoaug.evaluation.detectors.base import register_detector
from anoaug.evaluation.detectors.one_class import OneClassDetector
from anoaug.registry import Settings


class PadimSettings(Settings):
    """``evaluation.params.padim``."""

    backbone: str = "resnet18"
    layers: list[str] = ["layer1", "layer2", "layer3"]


@register_detector
class PadimDetector(OneClassDetector):
    """Gaussian per-patch feature statistics of the normal images."""

    name = "padim"
    Settings = PadimSettings
    anomalib_class = "Padim"
    renamed = {"padim_backbone": "backbone", "padim_layers": "layers"}

    def model_kwargs(self) -> dict[str, Any]:
        return {"backbone": self.settings.backbone, "layers": list(self.settings.layers)}
