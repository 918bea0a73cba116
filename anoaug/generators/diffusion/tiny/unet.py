"""The tiny pixel-space defect UNet: a diffusers `UNet2DModel` conditioned on the defect type.

Input channels: noisy RGB (3) + masked normal context RGB (3) + mask channel (1: 1 = defect,
0.5 = band around it that is generated too; known context: 0.25 = object, 0 = background when the model
is conditioned on the trimap, else 0). With ``patch`` p > 1 the 7-channel
crop is pixel-unshuffled into 7·p² channels at 1/p resolution before the UNet and its 3·p² output
channels are shuffled back: every pixel still reaches the model (thin 1-2 px defects survive), but the
costly full-resolution levels disappear (p = 2: ~2.5x more training steps per second on CPU).
The defect type is a learned class embedding added to the time embedding (the "anomaly embedding"
of AnomalyDiffusion); class index ``n_types`` is the extra *normal* class, trained on normal crops
so that the model also learns to continue normal texture into a hole (and can serve as the
unconditional branch for guidance).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
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
    patch: int = 1  # pixel-unshuffle factor (see the module docstring)
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
    p = int(cfg.patch)
    if p < 1 or cfg.sample_size % p:
        raise ValueError(f"patch {p} must be >= 1 and divide the crop size {cfg.sample_size}")
    return UNet2DModel(
        sample_size=cfg.sample_size // p,
        in_channels=IN_CHANNELS * p * p,
        out_channels=3 * p * p,
        down_block_types=("DownBlock2D",) * n,
        up_block_types=("UpBlock2D",) * n,
        block_out_channels=widths,
        layers_per_block=cfg.layers_per_block,
        norm_num_groups=groups,
        add_attention=False,
        num_class_embeds=cfg.n_types + 1,
    )


def model_input(noisy: torch.Tensor, known: torch.Tensor, mask_channel: torch.Tensor) -> torch.Tensor:
    """Concatenate noisy image, masked context (known image where mask_channel < 0.5: object or background
    context) and mask channel."""
    context = known * (mask_channel < 0.5).to(known.dtype)
    return torch.cat([noisy, context, mask_channel.to(noisy.dtype)], dim=1)


def patch_size(unet: UNet2DModel) -> int:
    """The pixel-unshuffle factor a tiny UNet was built with (from its input channels)."""
    p = round((unet.config.in_channels / IN_CHANNELS) ** 0.5)
    if p < 1 or IN_CHANNELS * p * p != unet.config.in_channels or unet.config.out_channels != 3 * p * p:
        raise ValueError(
            f"not a tiny defect UNet: {unet.config.in_channels} -> {unet.config.out_channels} channels "
            f"(expected {IN_CHANNELS}·p² -> 3·p²)"
        )
    return p


def denoise(unet: UNet2DModel, inp: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The model output (v) for a full-resolution 7-channel input, unshuffling/shuffling when patched."""
    p = patch_size(unet)
    if p > 1:
        inp = F.pixel_unshuffle(inp, p).contiguous(memory_format=torch.channels_last)
    out = unet(inp, t, class_labels=labels).sample
    return F.pixel_shuffle(out, p) if p > 1 else out
