"""DRÆM's anomaly source swapped for our defect pairs: the augmenter module (the networks stay anomalib's)."""

from __future__ import annotations

import torch
from torch import nn

from anoaug.errors import AnoaugError
from anoaug.evaluation.datasets import to_tensors
from anoaug.evaluation.protocol import Sample


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
