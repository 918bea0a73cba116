"""Multi-stage denoising with content editing: one DDIM (or DPM++) run split into three stages.

* T1, free denoising: the sampler runs unedited, so the defect and its surroundings can form together.
* T2, latent editing: after each step, outside the latent mask the forward-noised normal latent (one fixed
  noise for the whole run) replaces the sample, as in blended latent diffusion.
* T3, image editing: after each step the predicted x0 is decoded, composited with the normal image in
  pixel space under the pixel mask, re-encoded, and brought back to the step's noise level with the
  noise the model predicted (``x_prev = sqrt(a_prev) z0' + sqrt(1 - a_prev) eps``, the deterministic DDIM
  update applied to the edited x0), so the fine boundary is fixed at pixel resolution.

Stage lengths are fractions of ``num_inference_steps`` (`stage_lengths`); ``(0, 1, 0)`` is plain blended
sampling. The loop is written here because the shared `blending.blended_sample` has no per-step stages.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from diffusers import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

FREE, LATENT, IMAGE = "T1", "T2", "T3"


def stage_lengths(fractions: Sequence[float], steps: int) -> tuple[int, int, int]:
    """Step counts (T1, T2, T3) summing to `steps`: `fractions` normalised, largest remainders rounded up,
    and a stage with a positive fraction gets at least one step while `steps` allows."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise ValueError(f"stages must be three non-negative fractions with a positive sum, got {list(fractions)}")
    total = float(sum(fractions))
    exact = [f / total * steps for f in fractions]
    counts = [int(e) for e in exact]
    for i in sorted(range(3), key=lambda i: exact[i] - counts[i], reverse=True)[: steps - sum(counts)]:
        counts[i] += 1
    for i in (2, 1, 0):  # T3 first: a requested pixel-editing stage should not round away to nothing
        if fractions[i] > 0 and counts[i] == 0:
            donor = max(range(3), key=lambda j: counts[j])
            if counts[donor] > 1:
                counts[donor] -= 1
                counts[i] += 1
    return counts[0], counts[1], counts[2]


def stage_of(i: int, lengths: tuple[int, int, int]) -> str:
    """The stage of step `i` (0-based)."""
    return FREE if i < lengths[0] else LATENT if i < lengths[0] + lengths[1] else IMAGE


@torch.no_grad()
def multistage_sample(
    denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    scheduler: SchedulerMixin,
    known: torch.Tensor,
    mask: torch.Tensor,
    lengths: tuple[int, int, int],
    *,
    decode: Callable[[torch.Tensor], torch.Tensor],
    encode: Callable[[torch.Tensor], torch.Tensor],
    known_pixels: torch.Tensor,
    pixel_mask: torch.Tensor,
    generator: torch.Generator | list[torch.Generator] | None = None,
    on_step: Callable[[int, str, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Sample x0 in latent space with the stages T1 / T2 / T3 of `lengths` (their sum = the step count).

    Args:
        denoise: ``(x_t, t) -> model output`` (epsilon or v, as the scheduler's prediction type).
        known: ``(B, C, h, w)`` latents of the normal image; ``mask``: ``(B, 1, h, w)``, 1 = generate.
        decode / encode: model-space latents <-> pixels in [-1, 1] (the VAE), used only in T3.
        known_pixels: ``(B, 3, H, W)`` normal image in [-1, 1]; ``pixel_mask``: ``(B, 1, H, W)``, 1 = generate.
        generator: one generator or one per item; the initial noise and the known region's noise are drawn
            from it in that order.
        on_step: called after each step with ``(i, stage, x)`` (x = the sample after that step's edit).

    Returns the final latents; outside ``mask`` they equal ``known`` unless the run ends in T1 or T3.
    """
    steps = sum(lengths)
    if steps < 1 or min(lengths) < 0:
        raise ValueError(f"stage lengths must be >= 0 with a positive sum, got {lengths}")
    sched = scheduler.__class__.from_config(scheduler.config)
    sched.set_timesteps(steps, device=known.device)
    timesteps = sched.timesteps
    mask = mask.to(known.dtype).clamp(0, 1)
    pmask = pixel_mask.to(known_pixels.dtype).clamp(0, 1)
    shape, dev, dt = tuple(known.shape), known.device, known.dtype
    alphas = sched.alphas_cumprod.to(dev)

    def noised(t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return sched.add_noise(known, noise, t.reshape(1).expand(known.shape[0]))

    x = randn_tensor(shape, generator=generator, device=dev, dtype=dt) * sched.init_noise_sigma
    known_noise = randn_tensor(shape, generator=generator, device=dev, dtype=dt)
    if lengths[0] == 0:
        x = x * mask + noised(timesteps[0], known_noise) * (1 - mask)
    for i, t in enumerate(timesteps):
        stage = stage_of(i, lengths)
        last = i + 1 == len(timesteps)
        x_t = x
        out = denoise(sched.scale_model_input(x_t, t), t)
        step = sched.step(out, t, x_t, generator=generator)
        x = step.prev_sample
        if stage == LATENT:
            x = x * mask + (known if last else noised(timesteps[i + 1], known_noise)) * (1 - mask)
        elif stage == IMAGE:
            x0 = step.pred_original_sample
            if x0 is None:
                raise ValueError(f"{type(sched).__name__} gives no predicted x0: image editing needs DDIM")
            pix = decode(x0)
            edited = encode(pix * pmask + known_pixels * (1 - pmask)).to(dt)
            if last:
                x = edited
            else:
                a_t = alphas[int(t)]
                eps = (x_t - a_t.sqrt() * x0) / (1 - a_t).sqrt()
                x = sched.add_noise(edited, eps, timesteps[i + 1].reshape(1).expand(shape[0]))
        if on_step is not None:
            on_step(i, stage, x)
    return x
