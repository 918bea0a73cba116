"""The UNet of a pretrained base model: a diffusers `UNet2DConditionModel` cross-attending to the text states.

Default kind ``inpainting`` (9 input channels with 4 latent channels: noisy latents + latent mask +
masked-image latents, the SD-inpainting layout). It is what the defect generators need (they repaint a
masked region of a normal image and must continue the product around it), and because a share
(``full_mask_prob``) of its training masks cover the whole crop (masked image all grey), it also
generates from scratch: `StableDiffusionInpaintPipeline` with a full mask. ``text-to-image`` (latent
channels in) is the plain SD layout, for `StableDiffusionPipeline`. Training is the usual epsilon
regression on VAE latents with SD's DDPM noise schedule, over the whole crop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from anoaug.generators.diffusion.pretrain.settings import norm_groups
from anoaug.generators.diffusion.sd import conditioning as cond

if TYPE_CHECKING:
    import torch

# Stable Diffusion's noise schedule (scaled-linear betas, 1000 steps, epsilon prediction).
NOISE_SCHEDULE: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "clip_sample": False,
}


def build_unet(
    kind: str,
    channels: tuple[int, ...],
    layers_per_block: int,
    latent_channels: int,
    cross_attention_dim: int,
    attention_head_dim: int,
    sample_size: int,
) -> Any:
    """A randomly initialised `UNet2DConditionModel` (call under a seeded torch RNG): cross-attention at
    every level but the lowest, as in SD."""
    from diffusers import UNet2DConditionModel

    n = len(channels)
    down = ("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",)
    up = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1)
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=2 * latent_channels + 1 if kind == "inpainting" else latent_channels,
        out_channels=latent_channels,
        block_out_channels=tuple(channels),
        layers_per_block=layers_per_block,
        down_block_types=down,
        up_block_types=up,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=attention_head_dim,
        norm_num_groups=norm_groups(tuple(channels)),
    )


def noise_scheduler() -> Any:
    """The training scheduler (`DDPMScheduler` with `NOISE_SCHEDULE`)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(**NOISE_SCHEDULE)


def sampling_scheduler() -> Any:
    """The scheduler saved with the model (DDIM over the training schedule), as the SD stand-in saves."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(**NOISE_SCHEDULE, set_alpha_to_one=False, steps_offset=1)


def random_masks(n: int, size: int, rng: np.random.Generator, full_prob: float) -> np.ndarray:
    """`n` inpainting training masks (n, size, size) bool: the whole crop with probability `full_prob`,
    else a rectangle or ellipse, or DRAEM's Perlin blobs (`anoaug.generators.perlin`)."""
    import cv2

    from anoaug.generators.perlin import perlin_mask

    out = np.zeros((n, size, size), bool)
    for i in range(n):
        kind = rng.random()
        if kind < full_prob:
            out[i] = True
            continue
        kind = rng.integers(3)
        if kind == 2:
            m = perlin_mask((size, size), rng, perlin_scale=4)
            if m.any():
                out[i] = m
                continue
        h, w = (rng.uniform(0.1, 0.7, 2) * size).astype(int) + 1
        cy, cx = rng.uniform(0, size, 2).astype(int)
        canvas = np.zeros((size, size), np.uint8)
        if kind == 0:
            canvas[max(0, cy - h // 2) : cy + h // 2 + 1, max(0, cx - w // 2) : cx + w // 2 + 1] = 1
        else:
            angle = float(rng.uniform(0, 180))
            cv2.ellipse(canvas, (int(cx), int(cy)), (int(w // 2) + 1, int(h // 2) + 1), angle, 0, 360, 1, -1)
        out[i] = canvas.astype(bool)
    return out


def unet_loss(
    unet: Any,
    states: torch.Tensor,
    latents: torch.Tensor,
    masks: torch.Tensor | None,
    masked_latents: torch.Tensor | None,
    scheduler: Any,
    generator: torch.Generator,
    factor: int,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Epsilon-prediction MSE of one batch; noise and timesteps are drawn from `generator` (CPU).

    `masks` are pixel masks (B, 1, H, W) for an inpainting UNet (None for text-to-image)."""
    import torch

    dev = latents.device
    noise = torch.randn(latents.shape, generator=generator).to(dev)
    t = torch.randint(0, int(scheduler.config.num_train_timesteps), (latents.shape[0],), generator=generator).to(dev)
    noisy = scheduler.add_noise(latents, noise, t)
    lat_mask = cond.latent_mask(masks, factor) if masks is not None else None
    x_in = cond.unet_input(noisy, lat_mask, masked_latents)
    with torch.autocast(dev.type, dtype=dtype, enabled=dtype != torch.float32):
        pred = unet(x_in, t, encoder_hidden_states=states).sample
    return (pred.float() - noise).pow(2).mean()
