"""The tiny pixel-space defect UNet: a diffusers `UNet2DModel` conditioned on the defect type.

Input channels: noisy RGB (3) + masked normal context RGB (3) + mask channel (1: 1 = defect,
0.5 = band around it that is generated too, 0 = known context). The defect type is a learned class
embedding added to the time embedding (the "anomaly embedding" of AnomalyDiffusion); class index
``n_types`` is the extra *normal* class, trained on normal crops so that the model also learns to
continue normal texture into a hole (and can serve as the unconditional branch for guidance).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from diffusers import UNet2DModel

IN_CHANNELS = 7


@dataclass
class TinyUNetConfig:
    """Architecture settings that the spec's ``generator.params`` may override."""

    sample_size: int = 64
    widths: tuple[int, ...] = (16, 32, 64, 128)
    layers_per_block: int = 1
    norm_num_groups: int = 8
    n_types: int = 1  # defect types; the model gets n_types + 1 class embeddings (last = normal)
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def build_tiny_unet(cfg: TinyUNetConfig) -> UNet2DModel:
    """A UNet2DModel without attention, with one class embedding per defect type plus one for normal."""
    widths = tuple(int(w) for w in cfg.widths)
    groups = min(cfg.norm_num_groups, min(widths))
    if any(w % groups for w in widths):
        raise ValueError(f"every width in {widths} must be divisible by norm_num_groups={groups}")
    n = len(widths)
    return UNet2DModel(
        sample_size=cfg.sample_size,
        in_channels=IN_CHANNELS,
        out_channels=3,
        down_block_types=("DownBlock2D",) * n,
        up_block_types=("UpBlock2D",) * n,
        block_out_channels=widths,
        layers_per_block=cfg.layers_per_block,
        norm_num_groups=groups,
        add_attention=False,
        num_class_embeds=cfg.n_types + 1,
    )


def model_input(noisy: torch.Tensor, known: torch.Tensor, mask_channel: torch.Tensor) -> torch.Tensor:
    """Concatenate noisy image, masked context (known image where mask_channel == 0) and mask channel."""
    context = known * (mask_channel == 0).to(known.dtype)
    return torch.cat([noisy, context, mask_channel.to(noisy.dtype)], dim=1)
