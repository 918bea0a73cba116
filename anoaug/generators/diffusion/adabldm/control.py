"""The trimap conditioning branch: a diffusers ControlNet copied from the base UNet's encoder.

``ControlNetModel.from_unet`` makes a trainable copy of the UNet's down and middle blocks, a small conv
embedding of the conditioning image (the trimap, one channel: 1 defect, 0.5 object, 0 background) and
zero-initialised output convolutions; its residuals are added to the frozen UNet's decoder skips and
middle block (``down_block_additional_residuals``, ``mid_block_additional_residual``). Before training
the zero convolutions make the branch an exact no-op.

The conditioning embedding must bring the pixel-space trimap down to the latent grid, so it has one
stride-2 stage per factor 2 of the VAE (SD: 3 stages for factor 8; the pretrained base: 2 for factor 4).
The branch's ``conv_in`` takes what the UNet takes: for an inpainting UNet (9 channels) the noisy
latents + latent mask + masked-image latents, copied from the UNet's own ``conv_in``. The branch
cross-attends to the same text states as the UNet (the diffusers ControlNet convention; AdaBLDM's code gives
it the empty prompt), so under classifier-free guidance its unconditional half sees the negative prompt.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from anoaug.atomic import atomic_path
from anoaug.generators.base import GeneratorError
from anoaug.generators.diffusion.crops import Box
from anoaug.masks.synthesis import BACKGROUND

if TYPE_CHECKING:
    import torch

# ControlNet's default embedding widths (SD, VAE factor 8); truncated for smaller VAE factors.
EMBEDDING_WIDTHS = (16, 32, 96, 256)


def embedding_widths(vae_scale_factor: int) -> tuple[int, ...]:
    """Conditioning-embedding widths: one stride-2 stage per factor 2 of the VAE."""
    stages = int(round(math.log2(vae_scale_factor)))
    if 2**stages != vae_scale_factor or stages + 1 > len(EMBEDDING_WIDTHS):
        raise GeneratorError(f"VAE scale factor {vae_scale_factor} is not 1, 2, 4 or 8: no trimap embedding for it")
    return EMBEDDING_WIDTHS[: stages + 1]


def build_controlnet(unet: Any, vae_scale_factor: int, widths: tuple[int, ...] | None = None) -> Any:
    """A ControlNet branch for `unet` (weights copied from its encoder) taking a 1-channel trimap."""
    from diffusers import ControlNetModel

    return ControlNetModel.from_unet(
        unet,
        conditioning_embedding_out_channels=tuple(widths or embedding_widths(vae_scale_factor)),
        conditioning_channels=1,
    )


def empty_controlnet(unet: Any, widths: tuple[int, ...]) -> Any:
    """The branch's architecture without copying weights (they come from a saved branch)."""
    from diffusers import ControlNetModel

    return ControlNetModel.from_unet(
        unet, conditioning_embedding_out_channels=tuple(widths), load_weights_from_unet=False, conditioning_channels=1
    )


def controlled_unet(
    unet: Any,
    controlnet: Any | None,
    x_in: torch.Tensor,
    t: Any,
    states: torch.Tensor,
    trimap: torch.Tensor | None,
    scale: float = 1.0,
) -> torch.Tensor:
    """The base UNet's prediction, with the branch's residuals (times `scale`) added when `controlnet` is given."""
    if controlnet is None or trimap is None:
        return unet(x_in, t, encoder_hidden_states=states).sample
    down, mid = controlnet(
        x_in,
        t,
        encoder_hidden_states=states,
        controlnet_cond=trimap.to(x_in.dtype),
        conditioning_scale=scale,
        return_dict=False,
    )
    return unet(
        x_in,
        t,
        encoder_hidden_states=states,
        down_block_additional_residuals=down,
        mid_block_additional_residual=mid,
    ).sample


def trimap_levels(trimap: np.ndarray) -> np.ndarray:
    """uint8 trimap (255 defect / 127 object / 0 background) -> float32 1 / 0.5 / 0 (split half-way)."""
    t = np.asarray(trimap)
    return np.where(t >= 192, 1.0, np.where(t > BACKGROUND, 0.5, 0.0)).astype(np.float32)


def crop_trimap(levels: np.ndarray, mask_crop: np.ndarray, box: Box, resolution: int) -> np.ndarray:
    """The trimap levels in `box`, resized to `resolution` (area average), 1 wherever the mask crop is set."""
    sy, sx = box.slices()
    win = levels[sy, sx]
    if win.shape[0] != resolution:
        interp = cv2.INTER_AREA if win.shape[0] > resolution else cv2.INTER_LINEAR
        win = cv2.resize(win, (resolution, resolution), interpolation=interp)
    return np.maximum(win, mask_crop.astype(np.float32)).astype(np.float32)


def trimaps_to_tensor(trimaps: list[np.ndarray], device: torch.device) -> torch.Tensor:
    """(H, W) float32 trimap levels -> (B, 1, H, W) float32."""
    import torch

    return torch.from_numpy(np.stack(trimaps).astype(np.float32)[:, None]).to(device)


def trimap_stats(levels: np.ndarray) -> dict[str, float]:
    """Fractions of defect / object / background pixels of a trimap (levels 1 / 0.5 / 0), for lineage."""
    n = max(levels.size, 1)
    return {
        "defect": round(float(np.count_nonzero(levels >= 0.75)) / n, 5),
        "object": round(float(np.count_nonzero((levels > 0) & (levels < 0.75))) / n, 5),
        "background": round(float(np.count_nonzero(levels == 0)) / n, 5),
    }


def save_branch(controlnet: Any, path: Path) -> None:
    """The branch's weights as safetensors (written atomically)."""
    from safetensors.torch import save_file

    state = {k: v.detach().float().cpu().contiguous() for k, v in controlnet.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, tmp)


def load_branch(unet: Any, widths: tuple[int, ...], path: Path) -> Any:
    """Rebuild the branch for `unet` and load its saved weights; a mismatch is a GeneratorError."""
    from safetensors.torch import load_file

    controlnet = empty_controlnet(unet, widths)
    try:
        controlnet.load_state_dict(load_file(str(path)), strict=True)
    except (RuntimeError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GeneratorError(f"cannot load the trimap ControlNet branch: {first}", path) from None
    return controlnet
