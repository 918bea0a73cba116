"""Model-space helpers shared by training and sampling: prompts, text states, latents, UNet input."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from anoaug.generators.base import GeneratorError
from anoaug.generators.diffusion.sd.textual_inversion import placeholder_for

if TYPE_CHECKING:
    import torch

DEFAULT_TEMPLATE = "a photo of {category} with <{type}> defect"


def build_prompt(template: str, category: str, defect_type: str, learned_token: bool) -> str:
    """Fill `template`; ``<{type}>`` becomes the learned token, or the type's words when there is none."""
    if "{type}" not in template:
        raise GeneratorError(f"token_template must contain '{{type}}', got '{template}'")
    token = placeholder_for(defect_type)
    try:
        prompt = template.format(category=category.replace("_", " "), type=token[1:-1])
    except (KeyError, IndexError, ValueError) as exc:
        raise GeneratorError(
            f"bad token_template '{template}': only {{category}} and {{type}} are allowed ({exc})"
        ) from None
    if learned_token and token not in prompt:
        raise GeneratorError(
            f"token_template must contain '<{{type}}>' for textual inversion, got '{template}'"
        )
    if not learned_token:
        prompt = prompt.replace(token, defect_type.replace("_", " "))
    return prompt


def tokenize(tokenizer: Any, prompts: list[str], device: torch.device) -> torch.Tensor:
    """Token ids (B, model_max_length), padded and truncated as the text encoder was trained."""
    ids = tokenizer(
        prompts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    return ids.to(device)


def encode_text(text_encoder: Any, ids: torch.Tensor) -> torch.Tensor:
    """Per-token hidden states (B, L, D) of the text encoder's last layer (SD 1.x/2.x cross-attends to it)."""
    return text_encoder(ids)[0]


def images_to_tensor(images: list[np.ndarray], device: torch.device) -> torch.Tensor:
    """(H, W, 3) uint8 images -> (B, 3, H, W) float32 in [-1, 1]."""
    import torch

    arr = np.stack(images).astype(np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous().to(device)


def masks_to_tensor(masks: list[np.ndarray], device: torch.device) -> torch.Tensor:
    """(H, W) bool masks -> (B, 1, H, W) float32 in {0, 1}."""
    import torch

    return torch.from_numpy(np.stack(masks).astype(np.float32)[:, None]).to(device)


def tensor_to_images(x: torch.Tensor) -> list[np.ndarray]:
    """(B, 3, H, W) in [-1, 1] -> list of (H, W, 3) uint8."""
    arr = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    return list(arr)


def latent_mask(mask: torch.Tensor, factor: int, dilate: int = 0) -> torch.Tensor:
    """Pixel mask (B, 1, H, W) -> latent mask (B, 1, H/f, W/f): a latent cell is set if any pixel is,
    then dilated by `dilate` cells."""
    import torch.nn.functional as F

    m = F.max_pool2d(mask, kernel_size=factor, stride=factor) if factor > 1 else mask
    if dilate > 0:
        m = F.max_pool2d(m, kernel_size=2 * dilate + 1, stride=1, padding=dilate)
    return m


def encode_latents(vae: Any, images: torch.Tensor, sample: bool, generator: Any = None) -> torch.Tensor:
    """VAE latents in model space (scaled by the VAE's scaling_factor)."""
    dist = vae.encode(images.to(vae.dtype)).latent_dist
    z = dist.sample(generator=generator) if sample else dist.mode()
    return z * float(vae.config.scaling_factor)


def decode_latents(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """Model-space latents -> images (B, 3, H, W) in about [-1, 1]."""
    return vae.decode(latents.to(vae.dtype) / float(vae.config.scaling_factor)).sample


def unet_input(
    noisy: torch.Tensor, lat_mask: torch.Tensor | None, masked_latents: torch.Tensor | None
) -> Any:
    """The UNet's input: noisy latents, plus mask and masked-image latents for an inpainting UNet."""
    import torch

    if masked_latents is None:
        return noisy
    if lat_mask is None:
        raise ValueError("an inpainting UNet needs the latent mask")
    return torch.cat([noisy, lat_mask.to(noisy.dtype), masked_latents.to(noisy.dtype)], dim=1)
