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
  ``evaluation.params.draem_dtd_dir`` to use a local DTD copy.
* ``real-few`` / generator / ``<gen>+real`` arms: :class:`PairAugmenter` over the arm's defect pairs.

The networks keep anomalib's widths (reconstructive 128, discriminative 64, ~97M parameters): a
64 px image costs roughly 30 GFLOP per training step on CPU, so keep CPU runs small.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from anomalib.data.utils.generators.perlin import PerlinAnomalyGenerator
from anomalib.models import Draem
from torch import nn

from anoaug.errors import AnoaugError
from anoaug.evaluation.datasets import balanced_loader, make_trainer, plain_loader, to_tensors
from anoaug.evaluation.protocol import Sample

DRAEM_SIZE_MULTIPLE = 32  # the discriminative U-Net pools 5 times and concatenates skips
DRAEM_MIN_SIZE = 64  # at 32 px its bottleneck is 1x1, where BatchNorm fails on a batch of one


class PairAugmenter(nn.Module):
    """Drop-in for ``Draem.augmenter``: ``images (B, 3, H, W) -> (augmented (B, 3, H, W), masks (B, 1, H, W))``.

    Like anomalib's Perlin generator, each image is made anomalous with ``probability`` (else it is
    returned unchanged with an empty mask). An anomalous image gets a random pair from the pool: the
    pair's defect pixels replace the image's under the pair's mask, and that mask is returned as the
    target. The clean image stays DRÆM's reconstruction target, so only defect pixels are taken from
    the pair (a whole synthetic image would make the L2/SSIM target a different picture).
    """

    def __init__(self, images: torch.Tensor, masks: torch.Tensor, probability: float = 0.5, flips: bool = True) -> None:
        super().__init__()
        if images.ndim != 4 or masks.shape != (images.shape[0], 1, *images.shape[-2:]):
            shapes = f"images {tuple(images.shape)}, masks {tuple(masks.shape)}"
            raise AnoaugError(f"pair pool shapes do not match: {shapes}")
        keep = masks.flatten(1).any(1)
        if not keep.any():
            raise AnoaugError("no defect pair with a non-empty mask to train DRÆM on")
        self.register_buffer("images", images[keep].float(), persistent=False)
        self.register_buffer("masks", masks[keep].float(), persistent=False)
        self.probability = probability
        self.flips = flips

    @classmethod
    def from_samples(cls, samples: list[Sample], probability: float = 0.5, flips: bool = True) -> PairAugmenter:
        images, masks, _ = to_tensors(samples)
        return cls(images, masks.unsqueeze(1), probability, flips)

    def forward(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if img.shape[-2:] != self.images.shape[-2:]:
            raise AnoaugError(f"images are {tuple(img.shape[-2:])}, defect pairs {tuple(self.images.shape[-2:])}")
        b, dev = img.shape[0], img.device
        idx = torch.randint(len(self.images), (b,), device=dev)
        src, mask = self.images[idx], self.masks[idx]
        if self.flips:
            for dim in (-1, -2):
                flip = (torch.rand(b, device=dev) < 0.5).view(-1, 1, 1, 1)
                src, mask = torch.where(flip, src.flip(dim), src), torch.where(flip, mask.flip(dim), mask)
        apply = (torch.rand(b, device=dev) < self.probability).view(-1, 1, 1, 1)
        mask = mask * apply
        return img * (1 - mask) + src * mask, mask


def build_draem(defects: list[Sample], params: dict[str, Any], flips: bool = True) -> tuple[Draem, str]:
    """anomalib's Draem (processors off); its augmenter swapped for our pairs when ``defects`` is non-empty.

    Returns the model and a short description of its anomaly source.
    """
    off = {"pre_processor": False, "post_processor": False, "evaluator": False, "visualizer": False}
    dtd = params.get("draem_dtd_dir")
    if dtd is not None and not Path(dtd).is_dir():
        raise AnoaugError("evaluation.params.draem_dtd_dir is not a directory", Path(dtd))
    with tempfile.TemporaryDirectory(prefix="anoaug-no-dtd-") as empty:
        # An existing directory stops Draem from downloading DTD; an empty one means Perlin-noise textures.
        model = Draem(dtd_dir=dtd or empty, **off)
    perlin = model.augmenter
    if not isinstance(perlin, PerlinAnomalyGenerator):  # anomalib changed; our swap would be unsafe
        raise AnoaugError(f"unexpected Draem augmenter {type(perlin).__name__}")
    if not defects:
        textures = "DTD textures" if perlin.anomaly_source_paths else "Perlin-noise textures (no DTD)"
        return model, f"perlin ({textures})"
    model.augmenter = PairAugmenter.from_samples(defects, perlin.probability, flips)
    kinds = sorted({s.origin for s in defects})
    return model, f"pairs ({'+'.join(kinds)}, {len(model.augmenter.images)})"


def fit_predict_draem(
    train_normal: list[Sample],
    defects: list[Sample],
    eval_set: list[Sample],
    epochs: int,
    batch_size: int,
    seed: int,
    params: dict[str, Any],
) -> tuple[np.ndarray, np.ndarray, str]:
    """Train DRÆM for a fixed number of epochs on normals (anomalies from ``defects``, else Perlin).

    Returns (scores (N,), maps (N, H, W), anomaly source). Nothing is selected on ``eval_set``.
    """
    size = train_normal[0].image.shape[0]
    if size % DRAEM_SIZE_MULTIPLE or size < DRAEM_MIN_SIZE:
        raise AnoaugError(f"draem needs an image size >= {DRAEM_MIN_SIZE} and a multiple of 32 (got {size})")
    L.seed_everything(seed, verbose=False)
    model, source = build_draem(defects, params)
    # Normals only (the augmenter adds the anomalies); 2 x n_normal draws per epoch, as the segmenter's loader.
    loader = balanced_loader([s for s in train_normal if not s.label], batch_size, seed)
    make_trainer(epochs).fit(model, train_dataloaders=loader)
    model.eval()
    scores, maps = [], []
    with torch.no_grad():
        for batch in plain_loader(eval_set, batch_size):
            out = model.model(batch.image)
            scores.append(out.pred_score.reshape(-1))
            maps.append(out.anomaly_map.reshape(len(batch.image), *batch.image.shape[-2:]))
    return torch.cat(scores).numpy(), torch.cat(maps).numpy(), source
