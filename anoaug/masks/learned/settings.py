"""``masks.learned.*``: the typed settings of the learned mask generator (checked when the spec loads).

Only pydantic and the registry's ``Settings`` base are imported here: ``anoaug.spec`` embeds this model in
``MasksSection``, so this module must not import the spec (or torch).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from anoaug.device import DEVICE_CHOICES
from anoaug.registry import Settings

BASE_MODEL = "base"  # = anoaug.spec.BASE_MODEL (not imported: the spec imports this module)


class LearnedMasksSettings(Settings):
    """How the mask embeddings are learned (textual inversion of real masks) and how masks are sampled.

    The CPU defaults are sized for the base model ``anoaug pretrain`` learns (tens of seconds per defect
    type on a CPU core); on a GPU with Stable Diffusion raise ``tokens`` (the authors' code uses 16),
    ``train_steps`` and ``num_inference_steps``.
    """

    model: str = Field(
        BASE_MODEL,
        description="SD-family model: 'base' (the run's pretrained base model) or a diffusers folder / cached hub id",
    )
    tokens: int = Field(
        4,
        ge=1,
        le=32,
        description="k': learned vectors per defect type (paper 4, authors' code 16; 4 on CPU: fewer parameters "
        "converge in a short step budget and fit the small text encoder's context)",
    )
    template: str = Field("a photo of a {tokens}", description="prompt; {tokens} becomes the type's k' tokens")
    init_word: str = Field("defect", description="initial value of the learned vectors")
    resolution: int | None = Field(
        None, ge=8, description="side (px) masks are learned and sampled at; None = the model's native size"
    )
    train_steps: int = Field(300, ge=0, description="textual-inversion steps (all defect types together)")
    batch_size: int = Field(4, ge=1, description="training batch size")
    lr: float = Field(5e-3, gt=0, description="learning rate of the mask embeddings")
    flip: bool = Field(True, description="random horizontal / vertical flips of the training masks")
    scheduler: Literal["ddim", "dpm++"] = Field("ddim", description="sampler (DDIM eta 0 as the authors)")
    num_inference_steps: int = Field(25, ge=1, description="denoising steps per mask (authors: 100)")
    guidance_scale: float = Field(5.0, description="classifier-free guidance scale (authors: 5.0)")
    negative_prompt: str = Field("", description="unconditional prompt of classifier-free guidance")
    threshold: float = Field(0.8, gt=0, lt=1, description="a pixel is defect where mean RGB (0..1) > threshold")
    min_component_area: int = Field(
        16, ge=0, description="cleanup: drop components smaller than this (px at the real masks' resolution)"
    )
    max_border_fraction: float = Field(
        1 / 3, ge=0, le=1, description="reject a mask with more than this share of any image side on that border"
    )
    pool_per_type: int = Field(16, ge=1, description="accepted learned masks kept per defect type")
    max_samples_per_type: int = Field(64, ge=1, description="sampling budget per type (accepted + rejected)")
    sample_batch_size: int = Field(8, ge=1, description="masks sampled together in one batch")
    device: str = Field("auto", description=f"where training and sampling run: {DEVICE_CHOICES}")
    cache_dir: str | None = Field(
        None,
        description="where learned embeddings and sampled masks are cached; None = $ANOAUG_CACHE_DIR, else "
        "$XDG_CACHE_HOME/anoaug, else ~/.cache/anoaug (a subfolder masks-learned/<key>)",
    )

    @field_validator("template")
    @classmethod
    def _has_tokens(cls, v: str) -> str:
        if "{tokens}" not in v:
            raise ValueError(f"template must contain '{{tokens}}', got {v!r}")
        return v

    @field_validator("model")
    @classmethod
    def _model_given(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("model is empty: 'base' or a diffusers folder / hub id")
        return v

    def training_key(self) -> dict[str, object]:
        """The settings that change the learned embeddings (the cache key of training)."""
        return self.model_dump(
            include={"tokens", "template", "init_word", "resolution", "train_steps", "batch_size", "lr", "flip"}
        )

    def sampling_key(self) -> dict[str, object]:
        """The settings that change the sampled masks, given the embeddings."""
        return self.model_dump(
            include={
                "scheduler", "num_inference_steps", "guidance_scale", "negative_prompt", "threshold",
                "min_component_area", "max_border_fraction", "pool_per_type", "max_samples_per_type",
                "sample_batch_size",
            }
        )  # fmt: skip
