"""Typed settings of `anoaug pretrain` (and of the library entry point `pretrain_base`)."""

from __future__ import annotations

import warnings
from typing import Any, Literal

from pydantic import Field, model_validator

from anoaug.budget import CAP_SETTING, OLD_CAP_SETTING
from anoaug.registry import Settings

UnetKind = Literal["inpainting", "text-to-image"]
# Planned steps of the CPU defaults: what 2 idle cores trained in the former 900 s budget, 450 s per phase
# (README: 1,939 VAE steps at 4.3/s, 909 UNet steps at 2.0/s, demo cap + fabric).
VAE_STEPS = 1900
UNET_STEPS = 900


def norm_groups(widths: tuple[int, ...]) -> int:
    """GroupNorm groups of a VAE or UNet with these block widths: min(32, smallest width / 2)."""
    return max(1, min(32, min(widths) // 2))


class PretrainSettings(Settings):
    """What to train and for how long. Each phase trains its planned steps (the same seed gives the same
    weights whatever the machine's load); ``max_train_seconds`` is an optional cap of both phases (the VAE
    phase gets ``vae_share`` of it, the UNet phase the rest), off by default: a capped model's card says
    how many of its planned steps it trained (``training``).

    The defaults are sized for a CPU (64 px crops, a few M parameters, about 15 minutes on 2 idle cores); on
    a GPU raise the widths, the resolution and the steps (e.g. ``--param unet_channels=[128,256,512]``)."""

    max_train_seconds: float | None = Field(
        None, gt=0, description="optional wall-clock cap of both phases (resumes count it); null: no cap"
    )
    vae_share: float = Field(0.5, gt=0, lt=1, description="share of the time cap given to the VAE phase")
    vae_steps: int = Field(VAE_STEPS, ge=0, description="planned steps of the VAE phase")
    unet_steps: int = Field(UNET_STEPS, ge=0, description="planned steps of the UNet phase")
    resolution: int = Field(64, ge=16, description="crop side in pixels (multiple of VAE factor x UNet factor)")
    seed: int = Field(0, ge=0)
    device: str = "auto"  # auto | cpu | cuda | cuda:N (anoaug.device)
    mixed_precision: Literal["auto", "no", "bf16"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU

    # VAE (AutoencoderKL): downsampling factor = 2 ** (len(vae_channels) - 1)
    vae_channels: tuple[int, ...] = (16, 32, 64)
    vae_layers_per_block: int = Field(1, ge=1)
    latent_channels: int = Field(4, ge=1)
    vae_batch_size: int = Field(8, ge=1)
    vae_lr: float = Field(1e-3, gt=0)
    ssim_weight: float = Field(0.2, ge=0, description="weight of (1 - SSIM) beside the L1 reconstruction loss")
    kl_weight: float = Field(1e-6, ge=0, description="KL weight per latent element relative to per-pixel L1")
    vae_ema_decay: float = Field(
        0.998, ge=0, lt=1, description="EMA of the VAE weights (the exported VAE); 0 = the last weights"
    )
    vae_l2_weight: float = Field(0.0, ge=0, description="weight of a squared-error term beside the L1 (PSNR's loss)")
    # Native-scale crops for the VAE (0.0): PSNR is measured on native-scale crops, and zoomed (downscaled) crops
    # are smoother ones it reconstructs anyway; +0.4 dB (seed 0) at 300 VAE steps vs zoom_prob 0.5 (README).
    vae_zoom_prob: float | None = Field(
        0.0, ge=0, le=1, description="zoom_prob of the VAE's training crops; None: zoom_prob (as the UNet's)"
    )

    # Text encoder (CLIP, trained with the UNet) and tokenizer (local vocabulary)
    text_width: int = Field(64, ge=8)
    text_layers: int = Field(2, ge=1)
    text_heads: int = Field(4, ge=1)
    text_lr: float = Field(2e-4, gt=0)
    reserved_tokens: int = Field(16, ge=0, le=26 * 26, description="rare whole-word tokens kept for new concepts")

    # UNet (UNet2DConditionModel): downsampling factor = 2 ** (len(unet_channels) - 1)
    unet_kind: UnetKind = "inpainting"
    unet_channels: tuple[int, ...] = (32, 64, 128)
    unet_layers_per_block: int = Field(1, ge=1)
    attention_head_dim: int = Field(8, ge=1)
    unet_batch_size: int = Field(16, ge=1)
    unet_lr: float = Field(4e-4, gt=0)
    full_mask_prob: float = Field(0.3, ge=0, le=1, description="inpainting: share of masks covering the image")
    prompt_drop_prob: float = Field(0.1, ge=0, le=1, description="share of empty prompts (classifier-free guidance)")
    ema_decay: float = Field(0.999, ge=0, lt=1)

    # Shared
    warmup_steps: int = Field(50, ge=0)
    zoom_prob: float = Field(0.5, ge=0, le=1, description="share of crops taken larger than native and resized")
    holdout_fraction: float = Field(0.1, ge=0, lt=1, description="normals per category kept out for measuring")
    max_image_side: int | None = Field(None, ge=16, description="shrink larger images on load (memory); None: keep")
    eval_crops: int = Field(64, ge=1, description="held-out crops for PSNR / held-out loss")
    checkpoint_every_s: float = Field(60.0, gt=0)
    checkpoint_every_steps: int = Field(0, ge=0, description="also checkpoint every N steps of a phase (0 = off)")

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        """The cap's former name ``time_budget_s`` still loads, with a DeprecationWarning."""
        if isinstance(data, dict) and OLD_CAP_SETTING in data:
            warnings.warn(
                f"pretrain: setting '{OLD_CAP_SETTING}' is deprecated, use '{CAP_SETTING}' (a cap: steps are planned)",
                DeprecationWarning,
                stacklevel=2,
            )
            data = dict(data)
            value = data.pop(OLD_CAP_SETTING)
            data.setdefault(CAP_SETTING, value)
        return data

    @model_validator(mode="after")
    def _shapes(self) -> PretrainSettings:
        if len(self.vae_channels) < 1 or len(self.unet_channels) < 2:
            raise ValueError("vae_channels needs >= 1 level and unet_channels >= 2 levels")
        multiple = self.vae_factor * self.unet_factor
        if self.resolution % multiple:
            raise ValueError(f"resolution {self.resolution} must be a multiple of {multiple} (VAE x UNet factor)")
        if self.text_width % self.text_heads:
            raise ValueError(f"text_width {self.text_width} must be a multiple of text_heads {self.text_heads}")
        for key in ("vae_channels", "unet_channels"):
            widths = getattr(self, key)
            groups = norm_groups(widths)
            if min(widths) < 2 or any(w % groups for w in widths):
                raise ValueError(f"{key} {list(widths)} must all be multiples of {groups} (GroupNorm groups)")
        if any(w % self.attention_head_dim for w in self.unet_channels):
            raise ValueError(f"unet_channels must be multiples of attention_head_dim {self.attention_head_dim}")
        return self

    @property
    def vae_factor(self) -> int:
        return 2 ** (len(self.vae_channels) - 1)

    @property
    def vae_zoom(self) -> float:
        """The zoom probability of the VAE's training crops (``vae_zoom_prob``, else ``zoom_prob``)."""
        return self.zoom_prob if self.vae_zoom_prob is None else self.vae_zoom_prob

    @property
    def unet_factor(self) -> int:
        return 2 ** (len(self.unet_channels) - 1)

    def signature(self) -> dict[str, Any]:
        """Settings that must match to resume a checkpoint (budgets, step limits and checkpointing may change)."""
        free = {
            "max_train_seconds", "vae_steps", "unet_steps", "checkpoint_every_s", "checkpoint_every_steps", "device",
        }  # fmt: skip
        return self.model_dump(mode="json", exclude=free)

    @classmethod
    def minimal(cls, **overrides: Any) -> PretrainSettings:
        """A very small model for tests and smoke runs (seconds on a CPU core): 32 px, VAE factor 4."""
        base: dict[str, Any] = {
            "resolution": 32,
            "vae_channels": (16, 32, 32),
            "unet_channels": (32, 64),
            "text_width": 32,
            "text_layers": 1,
            "text_heads": 2,
            "reserved_tokens": 4,
            "vae_steps": 60,
            "unet_steps": 40,
            "vae_batch_size": 8,
            "unet_batch_size": 8,
            "vae_lr": 2e-3,
            "unet_lr": 1e-3,
            "warmup_steps": 5,
            "eval_crops": 16,
            "ema_decay": 0.9,
            "vae_zoom_prob": 0.5,  # zoomed crops as the UNet's: the fixture's 60 steps learn faster on smoother crops
        }
        return cls.model_validate({**base, **overrides})
