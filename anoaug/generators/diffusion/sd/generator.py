"""The `diffusion-sd` generator: Stable Diffusion 1.x/2.x with learned defect tokens, blended in latent space.

fit: load the base model (local diffusers folder or cached hub id), learn per defect type a textual-
inversion token, optionally a UNet LoRA and a mask encoder (spatial tokens), with a loss counted only
inside the defect masks; save only the learned parts (safetensors) and a manifest of the base model's
identity. generate: crop around each requested mask at the training scale, sample in latent space with
blended sampling (outside the latent mask the forward-noised normal latent replaces the sample at each
step) and classifier-free guidance, decode, paste back and composite in pixel space so that the normal
image is exact outside the mask; the final mask is what actually changed inside the input mask.

Settings: see `StableDiffusionGenerator.Settings` (shared ones in `diffusion.settings`). torch / diffusers /
transformers / peft are imported only when a model is fitted, loaded or run, so registering this generator is cheap.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import Field

from anoaug.atomic import atomic_write_text
from anoaug.generators.base import (
    BoolOrAuto,
    FitData,
    GenerationRequest,
    GenerationResult,
    Generator,
    GeneratorError,
    register,
)
from anoaug.generators.diffusion.sd.settings import SDFamilySettings
from anoaug.generators.diffusion.settings import DIFFUSERS_NAMES

MANIFEST = "sd_manifest.json"
EMBEDDINGS = "embeddings.safetensors"
LORA = "lora.safetensors"
SPATIAL = "spatial.safetensors"


@register
class StableDiffusionGenerator(Generator):
    """Stable Diffusion (diffusers format) with per-category learned defect tokens (see module doc)."""

    name = "diffusion-sd"
    learned = True
    renamed_settings = DIFFUSERS_NAMES

    class Settings(SDFamilySettings):
        """diffusion-sd settings (the shared ones are documented in `SDFamilySettings`)."""

        inpainting: BoolOrAuto = Field(
            "auto", description="auto (from unet in_channels 9 vs 4) | true | false (asserted against the model)"
        )
        lr: float = Field(1e-4, gt=0, description="learning rate of the LoRA and the mask encoder")
        ti_lr: float = Field(5e-3, gt=0, description="learning rate of the textual-inversion embeddings")
        lora_rank: int = Field(4, ge=0, description="UNet attention LoRA rank; 0 = off")
        lora_alpha: float | None = Field(None, description="LoRA alpha; default: = rank")
        textual_inversion: bool = Field(True, description="learn one token per defect type")
        init_word: str = Field("defect", description="initial value of the learned tokens")
        spatial_tokens: int = Field(
            0, ge=0, description="0 = off; else K mask-encoder tokens appended to the text states"
        )
        background_weight: float = Field(0.0, ge=0, description="training loss weight outside the mask")
        gradient_checkpointing: BoolOrAuto = Field("auto", description="auto (on for cuda) | true | false")
        token_template: str = Field(
            "a photo of {category} with <{type}> defect", description="prompt; {category} and {type} are filled in"
        )

    settings: Settings

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        super().__init__(params)
        self._comps: Any = None
        self._encoder: Any = None
        self._prompts: dict[str, str] = {}
        self._category = ""
        self._device: Any = None
        self._dtype: Any = None
        self.train_losses: list[float] = []

    # -- fit / load -----------------------------------------------------------------------------------

    def _load_base(self) -> Any:
        from anoaug.generators.diffusion.sd.loading import load_components

        return load_components(self.settings.model, self.settings.inpainting)

    def _settings(self) -> Any:
        from anoaug.generators.diffusion.sd.training import TrainSettings

        c = self.settings
        return TrainSettings(
            resolution=c.resolution,
            steps=c.train_steps,
            batch_size=c.batch_size,
            lr=c.lr,
            ti_lr=c.ti_lr,
            lora_rank=c.lora_rank,
            lora_alpha=c.lora_alpha,
            textual_inversion=c.textual_inversion,
            spatial_tokens=c.spatial_tokens,
            mixed_precision=c.mixed_precision,
            gradient_checkpointing=c.gradient_checkpointing,
            background_weight=c.background_weight,
            context=c.context,
            template=c.token_template,
            init_word=c.init_word,
        )

    def make_trainer(self, data: FitData, seed: int = 0) -> Any:
        """Load the base model and build the trainer for `data` (used by `_fit`; handy for inspection)."""
        from anoaug.generators.diffusion.sd.training import SDTrainer, make_trainer

        self._device, trainer = make_trainer(
            self.settings.device,
            self._load_base,
            seed,
            lambda comps, dev: SDTrainer(comps, data.defects, data.category, self._settings(), dev, seed=seed),
        )
        return trainer

    def _fit(self, data: FitData, out_dir: Path, seed: int) -> None:
        from anoaug.generators.diffusion.sd import lora as lora_mod
        from anoaug.generators.diffusion.sd import spatial as spatial_mod
        from anoaug.generators.diffusion.sd import textual_inversion as ti
        from anoaug.generators.diffusion.sd.artifact import loss_record, manifest_header

        trainer = self.make_trainer(data, seed)
        self.train_losses = list(trainer.train())
        trainer.finish()
        comps = trainer.comps
        for name in (EMBEDDINGS, LORA, SPATIAL):
            (out_dir / name).unlink(missing_ok=True)
        if trainer.bank is not None:
            ti.save_embeddings(comps.text_encoder, trainer.bank, out_dir / EMBEDDINGS)
        if trainer.s.lora_rank > 0:
            lora_mod.save_lora(comps.unet, out_dir / LORA, trainer.s.lora_rank, trainer.s.lora_alpha)
        if trainer.encoder is not None:
            spatial_mod.save_mask_encoder(trainer.encoder, out_dir / SPATIAL)
        manifest = {
            **manifest_header(comps, data.category),
            "tokens": trainer.bank.tokens if trainer.bank is not None else {},
            "prompts": trainer.prompts,
            "learned": {
                "textual_inversion": trainer.bank is not None,
                "lora_rank": trainer.s.lora_rank,
                "spatial_tokens": trainer.s.spatial_tokens,
            },
            "train": loss_record(self.train_losses),
        }
        atomic_write_text(out_dir / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))
        self._ready(comps, trainer.encoder, trainer.prompts, data.category, trainer.dtype)

    def _load(self, artifact_dir: Path, meta: dict[str, Any]) -> None:
        from anoaug.device import resolve_device
        from anoaug.generators.diffusion.sd import lora as lora_mod
        from anoaug.generators.diffusion.sd import spatial as spatial_mod
        from anoaug.generators.diffusion.sd import textual_inversion as ti
        from anoaug.generators.diffusion.sd.artifact import open_artifact
        from anoaug.generators.diffusion.sd.training import resolve_dtype

        manifest, comps = open_artifact(artifact_dir, MANIFEST, self.name, self._load_base)
        if (artifact_dir / EMBEDDINGS).is_file():
            ti.load_embeddings(comps.tokenizer, comps.text_encoder, artifact_dir / EMBEDDINGS)
        if (artifact_dir / LORA).is_file():
            lora_mod.load_lora(comps.unet, artifact_dir / LORA)
        encoder = None
        if (artifact_dir / SPATIAL).is_file():
            encoder = spatial_mod.load_mask_encoder(artifact_dir / SPATIAL, comps.text_encoder.config.hidden_size)
        self._device = resolve_device(self.settings.device)
        dtype = resolve_dtype(self.settings.mixed_precision, self._device)
        self._ready(comps, encoder, dict(manifest.get("prompts", {})), str(meta.get("category", "")), dtype)

    def _ready(self, comps: Any, encoder: Any, prompts: dict[str, str], category: str, dtype: Any) -> None:
        """Put the models on the device in inference precision (VAE fp32, learned parts fp32)."""
        import torch

        from anoaug.generators.diffusion.sd.loading import place_for_inference

        place_for_inference(comps, self._device, dtype)
        if encoder is not None:
            encoder.to(self._device, dtype=torch.float32).eval()
        self._comps, self._encoder, self._prompts, self._category, self._dtype = (
            comps,
            encoder,
            prompts,
            category,
            dtype,
        )

    # -- generate -------------------------------------------------------------------------------------

    def prompt_for(self, defect_type: str) -> str:
        """The prompt used for `defect_type` (its learned token when textual inversion was trained)."""
        from anoaug.generators.diffusion.sd.conditioning import build_prompt

        if defect_type in self._prompts:
            return self._prompts[defect_type]
        if self.settings.textual_inversion:
            raise GeneratorError(
                f"no learned token for defect type '{defect_type}'; trained types: {', '.join(sorted(self._prompts))}"
            )
        return build_prompt(self.settings.token_template, self._category, defect_type, learned_token=False)

    def generate(self, batch: Sequence[GenerationRequest]) -> list[GenerationResult]:
        if self._comps is None:
            raise GeneratorError(f"{self.name}: call fit() or load() before generate()")
        size = self.settings.generation_batch_size
        out: list[GenerationResult] = []
        for i in range(0, len(batch), size):
            out.extend(self._generate_chunk(list(batch[i : i + size])))
        return out

    def _generate_chunk(self, reqs: list[GenerationRequest]) -> list[GenerationResult]:
        import torch

        from anoaug.generators.compositing import changed_mask, composite
        from anoaug.generators.diffusion.blending import blended_sample, make_scheduler
        from anoaug.generators.diffusion.crops import crop_box, paste_crop, take_crop
        from anoaug.generators.diffusion.sd import conditioning as cond
        from anoaug.generators.diffusion.sd import spatial as spatial_mod
        from anoaug.generators.diffusion.sd.artifact import sample_info

        c, dev, dtype, cfg = self._comps, self._device, self._dtype, self.settings
        res = cfg.resolution
        boxes, crops, cmasks, prompts = [], [], [], []
        for r in reqs:
            if r.normal.ndim != 3 or r.normal.shape[2] != 3 or r.mask.shape != r.normal.shape[:2]:
                raise GeneratorError(
                    f"request needs an (H, W, 3) image and an (H, W) mask; got {r.normal.shape} and {r.mask.shape}"
                )
            box = crop_box(r.mask.astype(bool), res, cfg.context)
            img, m = take_crop(r.normal, r.mask.astype(bool), box, res)
            boxes.append(box)
            crops.append(img)
            cmasks.append(m)
            prompts.append(self.prompt_for(r.defect_type))
        guidance = cfg.guidance_scale
        use_cfg = guidance > 1.0
        autocast = torch.autocast(dev.type, dtype=dtype, enabled=dtype != torch.float32)
        with torch.no_grad():
            images = cond.images_to_tensor(crops, dev)
            pix_mask = cond.masks_to_tensor(cmasks, dev)
            known = cond.encode_latents(c.vae, images, sample=False)
            blend_mask = cond.latent_mask(pix_mask, c.vae_scale_factor, dilate=cfg.mask_dilate)
            unet_mask = cond.latent_mask(pix_mask, c.vae_scale_factor) if c.inpainting else None
            masked = cond.encode_latents(c.vae, images * (1 - pix_mask), sample=False) if c.inpainting else None
            with autocast:
                ids = cond.tokenize(c.tokenizer, prompts, dev)
                states = cond.encode_text(c.text_encoder, ids)
                spatial = self._encoder(pix_mask) if self._encoder is not None else None
                states = spatial_mod.append_tokens(states, spatial)
                if use_cfg:
                    neg = cond.tokenize(c.tokenizer, [cfg.negative_prompt] * len(reqs), dev)
                    states = torch.cat(
                        [spatial_mod.append_tokens(cond.encode_text(c.text_encoder, neg), spatial), states]
                    )
            states = states.to(dtype)

            def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                n = 2 if use_cfg else 1
                x_in = cond.unet_input(
                    x.repeat(n, 1, 1, 1),
                    None if unet_mask is None else unet_mask.repeat(n, 1, 1, 1),
                    None if masked is None else masked.repeat(n, 1, 1, 1),
                )
                with autocast:
                    pred = c.unet(x_in.to(dtype), t, encoder_hidden_states=states).sample.float()
                if not use_cfg:
                    return pred
                uncond, text = pred.chunk(2)
                return uncond + guidance * (text - uncond)

            gens = [torch.Generator(device="cpu").manual_seed(int(r.seed)) for r in reqs]
            scheduler = make_scheduler(cfg.scheduler, c.scheduler_config)
            x0 = blended_sample(denoise, scheduler, known, blend_mask, cfg.num_inference_steps, generator=gens)
            decoded = cond.tensor_to_images(cond.decode_latents(c.vae, x0.float()))
        results = []
        for r, box, crop, prompt in zip(reqs, boxes, decoded, prompts, strict=True):
            mask = r.mask.astype(bool)
            full = paste_crop(r.normal, crop, box)
            image = composite(r.normal, full, mask, cfg.feather)
            final = changed_mask(r.normal, image, mask, cfg.change_threshold, 0, blur=cfg.change_blur)
            info = sample_info(
                self.name, cfg, prompt, r.seed, box, input_mask_area=int(mask.sum()), final_mask_area=int(final.sum())
            )
            results.append(GenerationResult(image=image, mask=final, info=info))
        return results
