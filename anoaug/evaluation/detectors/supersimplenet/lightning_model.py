"""anomalib's SuperSimpleNet over a torchvision ResNet-18 whose weights we control.

SuperSimpleNet builds a timm backbone with pretrained weights from a name; anomalib's
``TimmFeatureExtractor`` also accepts an ``nn.Module``, so we pass a torchvision ResNet-18 (random
offline, ImageNet when ``pre_trained`` and the weights are cached) -- no monkey-patching.
"""

from __future__ import annotations

from anomalib.models import Supersimplenet
from torchvision.models import ResNet18_Weights, resnet18

from anoaug.evaluation.detectors.common import resnet18_weights_available


def build_supersimplenet(
    supervised: bool, pre_trained: bool, perlin_threshold: float = 0.2, layers: list[str] | None = None
) -> tuple[Supersimplenet, bool]:
    """A SuperSimpleNet over a torchvision ResNet-18 module; returns it and whether ImageNet weights were used."""
    use_weights = pre_trained and resnet18_weights_available()
    backbone = resnet18(weights=ResNet18_Weights.DEFAULT if use_weights else None)
    model = Supersimplenet(
        perlin_threshold=float(perlin_threshold),
        backbone=backbone,
        layers=list(layers if layers is not None else ["layer2", "layer3"]),
        supervised=supervised,
        pre_processor=False,
        post_processor=False,
        evaluator=False,
        visualizer=False,
    )
    return model, use_weights
