"""Settings every diffusion generator shares, under diffusers' names.

``num_inference_steps``, ``guidance_scale`` and ``scheduler`` are named as in diffusers pipelines; the
generation chunk size is ``generation_batch_size`` (requests sampled together in one batch). The old
``diffusion-tiny`` names (``inference_steps``, ``guidance``, ``gen_batch``) still load, from specs and from
old artifacts, with a ``DeprecationWarning`` (`DIFFUSERS_NAMES`). Each generator sets its own defaults.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from anoaug.device import DEVICE_CHOICES
from anoaug.generators.base import GeneratorSettings

# Old setting name -> diffusers' name, for `Generator.renamed_settings`.
DIFFUSERS_NAMES: dict[str, str] = {
    "inference_steps": "num_inference_steps",
    "guidance": "guidance_scale",
    "gen_batch": "generation_batch_size",
}


class DiffusionSettings(GeneratorSettings):
    """Sampling and device settings of a diffusion generator (defaults are the generator's own)."""

    device: str = Field("auto", description=f"where training and sampling run: {DEVICE_CHOICES}; auto = CUDA if any")
    scheduler: Literal["ddim", "dpm++"] = Field("ddim", description="sampler: DDIM (eta 0) or DPM-Solver++ 2M")
    num_inference_steps: int = Field(25, ge=1, description="denoising steps per sample")
    guidance_scale: float = Field(1.0, description="classifier-free guidance scale; <= 1 disables guidance")
    generation_batch_size: int = Field(4, ge=1, description="requests sampled together in one batch")
    feather: int = Field(2, ge=0, description="px of inward feathering in the final pixel composite")
    change_threshold: float = Field(
        12.0, ge=0, description="final mask: pixels whose colour changed by more than this (0-255)"
    )
    change_blur: int = Field(1, ge=0, description="Gaussian radius applied before comparing (ignores fine texture)")
