"""Blended sampling: generate only inside a mask, keep the known image outside it.

Shared by every diffusion backend (pixel-space tiny UNet, latent-space Stable Diffusion). At each
step the region outside the mask is replaced by the forward-noised known image at the next noise
level, so only the mask region is generated (Blended Diffusion / Blended Latent Diffusion):

    x_{t-1} = step(denoise(x_t), x_t) * m + q(y_{t-1} | y_0) * (1 - m)

and the last step returns the known image exactly outside the mask. A final pixel-space
`composite` keeps the normal image bit-exact outside the (feathered) edit region, and
`changed_mask` reports what was actually changed.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np
import torch
from diffusers import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

__all__ = ["blended_sample", "changed_mask", "composite", "make_scheduler"]


def make_scheduler(kind: str, config: dict | None = None) -> SchedulerMixin:
    """A fresh diffusers scheduler: ``ddim`` (eta 0) or ``dpm++`` (DPM-Solver++ 2M), from a model's scheduler
    config (betas, prediction type and timestep spacing carry over)."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    config = dict(config or {})
    if kind == "ddim":
        return DDIMScheduler.from_config(config, clip_sample=False)
    if kind in ("dpm++", "dpmpp", "dpm-solver++"):
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2)
    raise ValueError(f"unknown scheduler '{kind}' (use 'ddim' or 'dpm++')")


@torch.no_grad()
def blended_sample(
    denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    scheduler: SchedulerMixin,
    known: torch.Tensor,
    mask: torch.Tensor,
    num_inference_steps: int,
    generator: torch.Generator | list[torch.Generator] | None = None,
    *,
    renoise_each_step: bool = False,
) -> torch.Tensor:
    """Sample x_0 in model space, generating only where ``mask`` is 1.

    Args:
        denoise: ``(x_t, t) -> model output`` (epsilon or v, matching ``scheduler.config.prediction_type``);
            ``t`` is a 0-d timestep tensor. Conditioning (class, text, masked context) is the caller's closure.
        scheduler: a diffusers scheduler; it is not mutated (a fresh copy is made from its config).
        known: ``(B, C, h, w)`` clean known image in model space.
        mask: ``(B, 1, h, w)`` in [0, 1], 1 = generate (soft values blend).
        num_inference_steps: number of denoising steps.
        generator: one generator, or one per batch item (then each item depends only on its own).
        renoise_each_step: draw fresh noise for the known region at every step (RePaint style) instead of
            one fixed noise for the whole trajectory (default; consistent with deterministic DDIM/DPM++).

    Returns:
        ``(B, C, h, w)`` x_0 in model space; equal to ``known`` wherever ``mask`` is 0.
    """
    if known.ndim != 4 or mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[0] != known.shape[0]:
        raise ValueError(f"known must be (B,C,h,w) and mask (B,1,h,w); got {tuple(known.shape)}, {tuple(mask.shape)}")
    if mask.shape[-2:] != known.shape[-2:]:
        raise ValueError(f"mask size {tuple(mask.shape[-2:])} != known size {tuple(known.shape[-2:])}")
    if num_inference_steps < 1:
        raise ValueError("num_inference_steps must be >= 1")
    sched = scheduler.__class__.from_config(scheduler.config)  # own state: DPM++ keeps a history
    sched.set_timesteps(num_inference_steps, device=known.device)
    timesteps = sched.timesteps
    mask = mask.to(known.dtype).clamp(0, 1)
    shape, dev, dt = tuple(known.shape), known.device, known.dtype

    def noised(t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return sched.add_noise(known, noise, t.reshape(1).expand(known.shape[0]))

    x = randn_tensor(shape, generator=generator, device=dev, dtype=dt) * sched.init_noise_sigma
    known_noise = randn_tensor(shape, generator=generator, device=dev, dtype=dt)
    x = x * mask + noised(timesteps[0], known_noise) * (1 - mask)
    for i, t in enumerate(timesteps):
        model_in = sched.scale_model_input(x, t)
        out = denoise(model_in, t)
        x = sched.step(out, t, x, generator=generator).prev_sample
        if i + 1 < len(timesteps):
            if renoise_each_step:
                known_noise = randn_tensor(shape, generator=generator, device=dev, dtype=dt)
            x = x * mask + noised(timesteps[i + 1], known_noise) * (1 - mask)
        else:
            x = x * mask + known * (1 - mask)
    return x


def _feather_alpha(mask: np.ndarray, feather: int) -> np.ndarray:
    """Alpha in [0, 1] that is 0 outside ``mask`` and ramps to 1 over ``feather`` px inside it."""
    m = mask.astype(bool)
    if feather <= 0:
        return m.astype(np.float32)
    # Distance to the nearest outside pixel: the ramp stays inside the mask, so outside stays exact.
    dist = cv2.distanceTransform(m.astype(np.uint8), cv2.DIST_L2, 3)
    return np.clip(dist / float(feather), 0.0, 1.0).astype(np.float32) * m


def composite(normal: np.ndarray, generated: np.ndarray, mask: np.ndarray, feather: int) -> np.ndarray:
    """Paste ``generated`` into ``normal`` inside ``mask`` with an inward feathered seam.

    Pixels where ``mask`` is False are bit-exact copies of ``normal``. Images are (H, W, 3) uint8.
    """
    if normal.shape != generated.shape or normal.shape[:2] != mask.shape[:2]:
        raise ValueError(f"shape mismatch: normal {normal.shape}, generated {generated.shape}, mask {mask.shape}")
    alpha = _feather_alpha(mask, feather)[..., None]
    out = normal.astype(np.float32) * (1 - alpha) + generated.astype(np.float32) * alpha
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    outside = ~mask.astype(bool)
    out[outside] = normal[outside]
    return out


def dilate_mask(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation by a disk of ``radius`` px (identity for radius <= 0)."""
    m = mask.astype(bool)
    if radius <= 0:
        return m
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.dilate(m.astype(np.uint8), k).astype(bool)


def changed_mask(
    normal: np.ndarray,
    generated: np.ndarray,
    input_mask: np.ndarray,
    threshold: float,
    dilate: int,
    *,
    blur: int = 0,
) -> np.ndarray:
    """The final mask: pixels whose colour changed by more than ``threshold`` (0-255, max over channels)
    inside ``input_mask`` dilated by ``dilate`` px. ``blur`` > 0 compares Gaussian-smoothed images so that
    re-synthesised fine texture is not counted as a defect. Returns (H, W) bool."""
    a = normal.astype(np.float32)
    b = generated.astype(np.float32)
    if blur > 0:
        k = 2 * blur + 1
        a = cv2.GaussianBlur(a, (k, k), 0)
        b = cv2.GaussianBlur(b, (k, k), 0)
    diff = np.abs(a - b)
    if diff.ndim == 3:
        diff = diff.max(axis=2)
    return (diff > threshold) & dilate_mask(input_mask, dilate)
