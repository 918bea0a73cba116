"""The VAE of a pretrained base model: a diffusers `AutoencoderKL` trained from scratch on normal crops.

Loss: L1 reconstruction (+ ``vae_l2_weight`` x squared error) + ``ssim_weight`` x (1 - SSIM) + ``kl_weight``
x KL (per latent element, relative to the per-pixel L1, as in the LDM autoencoders). Stable Diffusion's VAE
also uses an LPIPS perceptual loss and a patch discriminator; no pretrained perceptual network exists
offline, so the structural (SSIM, torchmetrics) term stands in for it and there is no adversarial term:
reconstructions are a bit softer than SD's, which PSNR on held-out normal crops measures. After training, the
latent ``scaling_factor`` is set to 1 / std of the training latents (SD: 0.18215), so the UNet sees
unit-variance latents.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from anoaug.generators.diffusion.pretrain.settings import norm_groups

if TYPE_CHECKING:
    import torch


def build_vae(channels: tuple[int, ...], layers_per_block: int, latent_channels: int, resolution: int) -> Any:
    """A randomly initialised `AutoencoderKL` (call under a seeded torch RNG); factor 2 ** (levels - 1)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(channels),
        up_block_types=("UpDecoderBlock2D",) * len(channels),
        block_out_channels=tuple(channels),
        layers_per_block=layers_per_block,
        latent_channels=latent_channels,
        norm_num_groups=norm_groups(tuple(channels)),
        sample_size=resolution,
    )


def vae_loss(
    vae: Any,
    images: torch.Tensor,
    generator: torch.Generator,
    ssim_weight: float,
    kl_weight: float,
    l2_weight: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The training loss of one batch of images in [-1, 1]; the posterior is sampled from `generator`.
    ``l2_weight`` adds the mean squared error (the loss PSNR measures) beside the L1."""
    import torch
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim

    posterior = vae.encode(images).latent_dist
    noise = torch.randn(posterior.mean.shape, generator=generator).to(images.device)
    z = posterior.mean + posterior.std * noise
    recon = vae.decode(z).sample
    err = recon.float() - images
    l1 = err.abs().mean()
    loss = l1
    parts = {"l1": float(l1.detach())}
    if l2_weight > 0:
        l2 = err.square().mean()
        loss = loss + l2_weight * l2
        parts["l2"] = float(l2.detach())
    if ssim_weight > 0:
        s = ssim(recon.float(), images, data_range=2.0)
        loss = loss + ssim_weight * (1 - s)
        parts["ssim"] = float(s.detach())
    if kl_weight > 0:
        kl = posterior.kl().sum() / images.numel()
        loss = loss + kl_weight * kl
        parts["kl"] = float(kl.detach())
    return loss, parts


def reconstruct(vae: Any, images: torch.Tensor, batch: int = 16) -> torch.Tensor:
    """Deterministic reconstructions (posterior mode) of images in [-1, 1], in batches."""
    import torch

    out = []
    with torch.no_grad():
        for i in range(0, images.shape[0], batch):
            x = images[i : i + batch]
            out.append(vae.decode(vae.encode(x).latent_dist.mode()).sample.float().clamp(-1, 1))
    return torch.cat(out)


def psnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """Mean PSNR (dB, peak 255) over images of two uint8 stacks (N, H, W, 3); 100 dB for identical ones."""
    ref = reference.astype(np.float64)
    mse = ((ref - test.astype(np.float64)) ** 2).reshape(len(ref), -1).mean(axis=1)
    return float(np.mean(10 * np.log10(255.0**2 / np.maximum(mse, 255.0**2 * 1e-10))))


def latent_scaling_factor(vae: Any, images: torch.Tensor, batch: int = 16) -> float:
    """1 / std of the posterior means of `images` (the latent scale the UNet will be trained in)."""
    import torch

    with torch.no_grad():
        z = torch.cat([vae.encode(images[i : i + batch]).latent_dist.mean for i in range(0, len(images), batch)])
    return float(1.0 / z.float().std().clamp_min(1e-6))
