"""Blended sampling: generate only inside a mask, keep the known image outside it.

Shared by every diffusion backend (pixel-space tiny UNet, latent-space Stable Diffusion). At each
step the region outside the mask is replaced by the forward-noised known image at the next noise
level, so only the mask region is generated (Blended Diffusion / Blended Latent Diffusion):

    x_{t-1} = step(denoise(x_t), x_t) * m + q(y_{t-1} | y_0) * (1 - m)

and the last step returns the known image exactly outside the mask. The pixel-space
`anoaug.generators.compositing.composite` then keeps the normal image bit-exact outside the (feathered)
edit region, and `compositing.changed_mask` reports what was actually changed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

__all__ = ["blended_sample", "make_scheduler"]


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
