"""The supervised downstream segmenter (DRAEM / AnomalyDiffusion-style discriminative network)."""

from anoaug.evaluation.segmenter.lightning_model import Segmenter
from anoaug.evaluation.segmenter.torch_model import SegmenterModel

__all__ = ["Segmenter", "SegmenterModel"]
