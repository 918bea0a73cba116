"""Tensors and dataloaders for the downstream models (anomalib ``ImageBatch`` batches)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable

import cv2
import lightning as L
import numpy as np
import torch
from anomalib.data import ImageBatch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from anoaug.device import lightning_accelerator
from anoaug.evaluation.protocol import Sample

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def resize_sample(s: Sample, size: int) -> Sample:
    """Image resized with area interpolation, mask with nearest neighbour, to size x size."""
    if s.image.shape[:2] == (size, size):
        return s
    img = cv2.resize(s.image, (size, size), interpolation=cv2.INTER_AREA)
    mask = cv2.resize(s.mask.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST).astype(bool)
    return Sample(s.id, img, mask, s.defect_type, s.origin, s.meta)


def to_tensors(samples: list[Sample]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N, 3, H, W) float images in [0, 1], (N, H, W) bool masks, (N,) long labels."""
    images = torch.from_numpy(np.stack([s.image for s in samples])).permute(0, 3, 1, 2).float() / 255.0
    masks = torch.from_numpy(np.stack([s.mask for s in samples]))
    labels = torch.tensor([s.label for s in samples], dtype=torch.long)
    return images, masks, labels


class PairDataset(Dataset):
    """Image/mask/label tensors with optional random flips (applied to image and mask together)."""

    def __init__(self, samples: list[Sample], flips: bool = False, targets: list[int] | None = None) -> None:
        self.images, self.masks, self.labels = to_tensors(samples)
        self.targets = torch.tensor(targets) if targets is not None else self.labels
        self.flips = flips

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        img, mask = self.images[i], self.masks[i]
        if self.flips:
            if torch.rand(()) < 0.5:
                img, mask = img.flip(-1), mask.flip(-1)
            if torch.rand(()) < 0.5:
                img, mask = img.flip(-2), mask.flip(-2)
        return img, mask, self.targets[i]


def collate(items: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> ImageBatch:
    imgs, masks, labels = zip(*items, strict=True)
    return ImageBatch(image=torch.stack(imgs), gt_mask=torch.stack(masks), gt_label=torch.stack(labels))


def balanced_loader(
    samples: list[Sample], batch_size: int, seed: int, flips: bool = True, num_samples: int | None = None
) -> DataLoader:
    """Sample normals and defects with equal probability, a fixed number of draws per epoch.

    Every arm thus gets the same number of optimisation steps and the same normal/defect balance; only
    what its defects look like differs (a fair comparison between 6 real and 120 synthetic defects).
    """
    labels = np.array([s.label for s in samples])
    n_def, n_norm = int(labels.sum()), int((1 - labels).sum())
    one_class = n_def == 0 or n_norm == 0
    weights = np.ones(len(samples)) if one_class else np.where(labels == 1, 0.5 / n_def, 0.5 / n_norm)
    draws = num_samples or 2 * max(n_norm, 1)
    gen = torch.Generator().manual_seed(seed)
    sampler = WeightedRandomSampler(torch.as_tensor(weights, dtype=torch.double), draws, True, generator=gen)
    return DataLoader(PairDataset(samples, flips), batch_size=batch_size, sampler=sampler, collate_fn=collate)


def normalising(collate: Callable[[list], ImageBatch]) -> Callable[[list], ImageBatch]:
    """Wrap a collate function to apply ImageNet normalisation (what anomalib backbones expect)."""

    def wrapped(items: list) -> ImageBatch:
        batch = collate(items)
        batch.image = (batch.image - IMAGENET_MEAN) / IMAGENET_STD
        return batch

    return wrapped


def plain_loader(samples: list[Sample], batch_size: int, targets: list[int] | None = None) -> DataLoader:
    return DataLoader(PairDataset(samples, False, targets), batch_size=batch_size, shuffle=False, collate_fn=collate)


def lightning_precision(setting: str, device: str = "cpu") -> str:
    """The segmenter's Lightning precision for the spec's ``evaluation.precision`` on the resolved ``device``:
    ``auto`` is bf16 autocast where the hardware has native bf16 (CUDA: ``torch.cuda.is_bf16_supported``;
    CPU: oneDNN's AVX512-BF16/AMX kernels), else float32."""
    from anoaug.cpu import native_bf16

    if setting != "auto":
        return "bf16-mixed" if setting == "bf16" else "32-true"
    if device.startswith("cuda"):
        import torch

        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true"
    return "bf16-mixed" if device == "cpu" and native_bf16() else "32-true"


def make_trainer(epochs: int, precision: str = "32-true", device: str = "auto") -> L.Trainer:
    """A Lightning trainer with a fixed schedule: no validation, no checkpoint selection, no logger.

    ``precision``: Lightning's setting, e.g. ``bf16-mixed`` (autocast) or ``32-true``. ``device``: the
    ``evaluation.device`` setting (auto | cpu | cuda | cuda:N | mps), resolved by ``anoaug.device``."""
    accelerator, devices = lightning_accelerator(device)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("lightning.fabric").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*`training_step` returned.*")
    warnings.filterwarnings("ignore", message=".*configure_optimizers.*")
    warnings.filterwarnings("ignore", message=".*no `val_dataloader`.*")
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module` and is already saved.*")
    warnings.filterwarnings("ignore", message=".*but have no logger configured.*")
    warnings.filterwarnings("ignore", message=".*infer the `batch_size`.*")
    return L.Trainer(
        max_epochs=epochs,
        accelerator=accelerator,
        devices=devices,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        precision=precision,
    )
