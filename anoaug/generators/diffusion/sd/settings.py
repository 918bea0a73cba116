"""Settings every generator on a Stable Diffusion-family base model shares (diffusion-sd, anomalydiffusion,
adabldm, dualanodiff); each method adds its own techniques and may change a default."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator

from anoaug.generators.diffusion.settings import DiffusionSettings


def _precision(value: Any) -> Any:
    """``mixed_precision``: YAML ``no``/``false`` (a bool) and the spellings of float32 mean ``no``."""
    if value is False or (isinstance(value, str) and value.strip().lower() in ("no", "fp32", "false", "none")):
        return "no"
    return value.strip().lower() if isinstance(value, str) else value


class SDFamilySettings(DiffusionSettings):
    """The base model, the crop window, training size and sampling of an SD-family generator."""

    model: str = Field(
        "",
        validate_default=True,
        description="local diffusers folder, cached hub id, or base (the model `anoaug pretrain` learns inside "
        "`anoaug run`); required",
    )
    resolution: int = Field(256, ge=8, description="crop side in pixels the model sees (multiple of 8 x VAE factor)")
    context: float = Field(
        2.0, gt=0, description="crop side = context x mask bounding box, >= `resolution`, <= the short side"
    )
    train_steps: int = Field(400, ge=0, description="training steps")
    batch_size: int = Field(1, ge=1, description="training batch size")
    negative_prompt: str = Field("", description="unconditional prompt of classifier-free guidance")
    guidance_scale: float = Field(5.0, description="classifier-free guidance scale; <= 1 disables guidance")
    num_inference_steps: int = Field(30, ge=1, description="denoising steps per sample")
    mask_dilate: int = Field(1, ge=0, description="latent cells added around the mask for blending")
    mixed_precision: Annotated[Literal["auto", "no", "fp16", "bf16"], BeforeValidator(_precision)] = Field(
        "auto", description="auto (bf16/fp16 on cuda, fp32 on cpu) | no | fp16 | bf16"
    )
    change_threshold: float = Field(6.0, ge=0, description="0-255: a pixel counts as changed above this difference")

    @field_validator("model")
    @classmethod
    def _model_given(cls, v: str) -> str:
        if not v.strip():
            raise ValueError(
                "needs param 'model': a diffusers Stable Diffusion folder, a cached hub id, or base (in anoaug run)"
            )
        return v
