"""Downstream detectors behind one interface (see base.py); built-in ones register when first looked up.

Built-in: segmenter, classifier (defect type, AC), supersimplenet, draem, padim, patchcore. A third-party
detector subclasses ``Detector`` and registers with ``@register_detector`` (or through the entry-point
group ``anoaug.detectors``).
"""

from anoaug.evaluation.detectors.base import (
    BUILTIN_DETECTORS,
    DETECTORS,
    Detector,
    FitContext,
    Prediction,
    available_detectors,
    get_detector,
    register_detector,
)
from anoaug.evaluation.detectors.check import check_evaluation

__all__ = [
    "BUILTIN_DETECTORS",
    "DETECTORS",
    "Detector",
    "FitContext",
    "Prediction",
    "available_detectors",
    "check_evaluation",
    "get_detector",
    "register_detector",
]
