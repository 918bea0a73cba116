"""anomalib's DRÆM with its anomaly source replaced by our defect pairs (synthetic shards or the real few).

DRÆM trains on normal images only: ``Draem.training_step`` calls ``self.augmenter(image)`` to get an
(anomalous image, mask) pair, runs the reconstructive + discriminative sub-networks on it and applies
``DraemLoss`` (L2 + SSIM between the reconstruction and the *clean* image, focal loss between the
predicted and the returned mask). anomalib's only way to change the anomaly source is a DTD texture
directory for ``PerlinAnomalyGenerator``; there is no hook for (image, mask) pairs. So we swap the
``augmenter`` object for :class:`PairAugmenter`, which has the same call signature and returns our
pairs; anomalib's training step, networks, loss and optimiser are used unchanged.

* ``none`` arm: Draem keeps its own Perlin augmenter (the one-class DRÆM baseline). Offline there is
  no DTD, so Perlin masks are filled with Perlin-noise textures (anomalib's fallback); give
  ``evaluation.params.draem.dtd_dir`` to use a local DTD copy.
* ``real-few`` / generator / ``<gen>+real`` arms: :class:`PairAugmenter` over the arm's defect pairs.

The networks keep anomalib's widths (reconstructive 128, discriminative 64, ~97M parameters): a
64 px image costs roughly 30 GFLOP per training step on CPU, so keep CPU runs small.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from anomalib.data.utils.generators.perlin import PerlinAnomalyGenerator
from anomalib.models import Draem

from anoaug.errors import AnoaugError
from anoaug.evaluation.detectors.common import pair_source
from anoaug.evaluation.protocol import Sample


def build_draem(defects: list[Sample], dtd_dir: str | None = None, flips: bool = True) -> tuple[Draem, str]:
    """anomalib's Draem (processors off); its augmenter swapped for our pairs when ``defects`` is non-empty.

    Returns the model and a short description of its anomaly source.
    """
    off = {"pre_processor": False, "post_processor": False, "evaluator": False, "visualizer": False}
    if dtd_dir is not None and not Path(dtd_dir).is_dir():
        raise AnoaugError("evaluation.params.draem.dtd_dir is not a directory", Path(dtd_dir))
    with tempfile.TemporaryDirectory(prefix="anoaug-no-dtd-") as empty:
        # An existing directory stops Draem from downloading DTD; an empty one means Perlin-noise textures.
        model = Draem(dtd_dir=dtd_dir or empty, **off)
    perlin = model.augmenter
    if not isinstance(perlin, PerlinAnomalyGenerator):  # anomalib changed; our swap would be unsafe
        raise AnoaugError(f"unexpected Draem augmenter {type(perlin).__name__}")
    if not defects:
        textures = "DTD textures" if perlin.anomaly_source_paths else "Perlin-noise textures (no DTD)"
        return model, f"perlin ({textures})"
    model.augmenter, source = pair_source(defects, perlin.probability, flips)
    return model, source
