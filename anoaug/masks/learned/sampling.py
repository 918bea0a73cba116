"""Sampling learned masks: DDIM + classifier-free guidance from a type's tokens, then threshold, cleanup and
the rejection rules.

A sampled image is a whole frame at the model's resolution; a pixel is defect where its mean RGB (0..1)
exceeds ``threshold`` (0.8, as the authors' code). The map is resized (bilinear) to the real masks' frame
before thresholding, components smaller than ``min_component_area`` are dropped, and the mask is rejected
when it is empty or has more than ``max_border_fraction`` of an image side on that border (a mask cut by
the frame is not a whole defect). Each sample has its own seed, so a mask does not depend on the batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import cv2
import numpy as np

from anoaug.generators.diffusion.sd import conditioning as cond
from anoaug.generators.diffusion.sd.loading import SDComponents
from anoaug.masks.learned.settings import LearnedMasksSettings
from anoaug.masks.learned.training import blank_inputs

if TYPE_CHECKING:
    import torch


def sample_maps(
    comps: SDComponents,
    prompt: str,
    seeds: list[int],
    resolution: int,
    settings: LearnedMasksSettings,
    device: torch.device,
) -> np.ndarray:
    """(B, resolution, resolution) float maps in [0, 1]: the mean RGB of one sampled image per seed."""
    import torch

    from anoaug.generators.diffusion.blending import blended_sample, make_scheduler

    n, guidance = len(seeds), settings.guidance_scale
    use_cfg = guidance > 1.0
    k = 2 if use_cfg else 1
    lat_res = resolution // comps.vae_scale_factor
    lat_ch = int(comps.vae.config.latent_channels)
    lat_mask, masked = blank_inputs(comps, n * k, resolution, device)
    dtype = comps.unet.dtype
    with torch.no_grad():
        states = cond.encode_text(comps.text_encoder, cond.tokenize(comps.tokenizer, [prompt] * n, device))
        if use_cfg:
            neg = cond.tokenize(comps.tokenizer, [settings.negative_prompt] * n, device)
            states = torch.cat([cond.encode_text(comps.text_encoder, neg), states])
        states = states.to(dtype)

        def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            x_in = cond.unet_input(x.repeat(k, 1, 1, 1), lat_mask, masked)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                pred = comps.unet(x_in.to(dtype), t, encoder_hidden_states=states).sample.float()
            if not use_cfg:
                return pred
            uncond, text = pred.chunk(2)
            return uncond + guidance * (text - uncond)

        # Generating everywhere: blended sampling with a full mask is plain sampling (the known part is unused).
        known = torch.zeros(n, lat_ch, lat_res, lat_res, device=device)
        full = torch.ones(n, 1, lat_res, lat_res, device=device)
        gens = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
        scheduler = make_scheduler(settings.scheduler, comps.scheduler_config)
        x0 = blended_sample(denoise, scheduler, known, full, settings.num_inference_steps, generator=gens)
        images = cond.decode_latents(comps.vae, x0.float()).float().clamp(-1, 1)
    return ((images.mean(dim=1) + 1) / 2).cpu().numpy()


def remove_small(mask: np.ndarray, min_area: int) -> np.ndarray:
    """``mask`` without its 8-connected components smaller than ``min_area`` pixels."""
    if min_area <= 1 or not mask.any():
        return mask
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    keep = np.zeros(n, bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_area
    return keep[labels]


def border_excess(mask: np.ndarray, max_fraction: float) -> bool:
    """True when some border row / column holds more than ``max_fraction`` of its length in mask pixels."""
    H, W = mask.shape
    rows = (mask[0].sum(), mask[-1].sum())
    cols = (mask[:, 0].sum(), mask[:, -1].sum())
    return max(rows) > max_fraction * W or max(cols) > max_fraction * H


def to_mask(
    prob: np.ndarray, shape: tuple[int, int], settings: LearnedMasksSettings
) -> tuple[np.ndarray | None, str]:
    """(bool mask of ``shape``, "accepted") or (None, the rejection: "empty" or "border")."""
    H, W = shape
    up = cv2.resize(prob.astype(np.float32), (W, H), interpolation=cv2.INTER_LINEAR)
    mask = remove_small(up > settings.threshold, settings.min_component_area)
    if not mask.any():
        return None, "empty"
    if border_excess(mask, settings.max_border_fraction):
        return None, "border"
    return mask, "accepted"
