"""The `anomalydiffusion` generator: AnomalyDiffusion's anomaly + spatial embeddings and attention re-weighting.

fit: on a frozen SD-family base model (the pretrained ``base`` on CPU, SD 1.x/2.x inpainting or
text-to-image on a GPU), learn per defect type k anomaly tokens by masked textual inversion and one
feature-pyramid mask encoder giving n spatial tokens spliced right after them at the placeholder
(`embedding`, `spatial_encoder`, `training`); optionally a UNet LoRA (off by default). Save only the
learned parts (safetensors) and a manifest of the base model's identity. generate: crop around each
requested mask, windowed blended sampling in latent space (the normal image exact outside the mask),
optionally with adaptive attention re-weighting of the placeholder tokens (`reweighting`), paste back,
composite; the final mask is what changed inside the requested mask.

Defaults, paper vs code: anomaly_tokens 4 (code; paper 8: fewer vectors fit faster in a CPU budget),
spatial_tokens 4 (both), loss_normalisation ``mask`` (paper: the loss is an average over the mask; the code
averages over all latent cells, ``all``), attention_reweighting ``off`` (code: opt-in; the authors recommend
it for texture-like defects only). Torch / diffusers are imported only when a model is fitted, loaded or run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from anoaug.atomic import atomic_write_text
from anoaug.generators.base import BoolOrAuto, FitData, GenerationRequest, GenerationResult, GeneratorError, register
from anoaug.generators.diffusion.anomalydiffusion.training import TEMPLATES
from anoaug.generators.diffusion.sd.generator import StableDiffusionGenerator
from anoaug.generators.diffusion.sd.settings import SDFamilySettings

MANIFEST = "ad_manifest.json"
TOKENS = "anomaly_tokens.safetensors"
SPATIAL = "spatial_encoder.safetensors"
LORA = "lora.safetensors"
REWEIGHT_STREAM = 0x5EED_0000_0000  # the code form's noised-normal noise: its own stream of each request's seed


@register
class AnomalyDiffusionGenerator(StableDiffusionGenerator):
    """AnomalyDiffusion on any SD-family model (see module doc); reuses diffusion-sd's loading and placing."""

    name = "anomalydiffusion"
    learned = True

    class Settings(SDFamilySettings):
        """anomalydiffusion settings (the shared ones are documented in `SDFamilySettings`)."""

        inpainting: BoolOrAuto = Field("auto", description="auto (from unet in_channels) | true | false (checked)")
        anomaly_tokens: int = Field(4, ge=1, description="k learned vectors per defect type (code 4, paper 8)")
        spatial_tokens: int = Field(4, ge=0, description="n mask-encoder tokens after the anomaly tokens; 0 = off")
        spatial_backbone_weights: str = Field(
            "",
            description="local torchvision ResNet-50 state dict for the mask encoder; "
            "empty = a small ResNet from scratch",
        )
        prompt_templates: list[str] = Field(
            list(TEMPLATES),
            min_length=1,
            description="training prompts ({category}, <{type}>); the first one generates",
        )
        loss_normalisation: Literal["mask", "all"] = Field(
            "mask", description="mask = mean over the latent mask (paper) | all = mean over all latent cells (code)"
        )
        ti_lr: float = Field(5e-3, gt=0, description="learning rate of the anomaly tokens")
        lr: float = Field(1e-3, gt=0, description="learning rate of the spatial encoder (and the LoRA if any)")
        lora_rank: int = Field(0, ge=0, description="UNet attention LoRA rank; 0 = base model frozen (the method)")
        lora_alpha: float | None = Field(None, description="LoRA alpha; default: = rank")
        init_word: str = Field("defect", description="initial value of the learned tokens")
        attention_reweighting: Literal["off", "paper", "code"] = Field(
            "off",
            description="adaptive attention re-weighting: off | paper (x0-hat, probabilities) | code (x_t, logits)",
        )
        reweighting_layers: list[Literal["down", "mid", "up"]] = Field(
            ["down", "mid", "up"], min_length=1, description="UNet cross-attention groups that are re-weighted"
        )
        reweighting_strength: float = Field(1.0, ge=0, description="w -> 1 + strength x (w - 1); 0 = no effect")
        reweighting_max: float = Field(1.5, ge=1, description="code form: upper clamp of the weights")
        gradient_checkpointing: BoolOrAuto = Field("auto", description="auto (on for cuda) | true | false")

        @field_validator("prompt_templates")
        @classmethod
        def _placeholder(cls, v: list[str]) -> list[str]:
            bad = [t for t in v if t.count("<{type}>") != 1]
            if bad:
                raise ValueError(f"each prompt template must hold '<{{type}}>' exactly once: {bad}")
            return v

    settings: Settings  # type: ignore[assignment]

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        super().__init__(params)
        self._vocab: Any = None
        self._reweighting_on: tuple[str, ...] = ()  # the layer groups whose processors are installed

    # -- fit / load -----------------------------------------------------------------------------------

    def make_trainer(self, data: FitData, seed: int = 0) -> Any:
        """Load the base model and build the trainer for `data` (used by `_fit`; handy for inspection)."""
        from anoaug.generators.diffusion.anomalydiffusion.training import ADTrainer, ADTrainSettings
        from anoaug.generators.diffusion.sd.training import TrainSettings, make_trainer

        c = self.settings
        base = TrainSettings(
            resolution=c.resolution,
            steps=c.train_steps,
            batch_size=c.batch_size,
            lr=c.lr,
            ti_lr=c.ti_lr,
            lora_rank=c.lora_rank,
            lora_alpha=c.lora_alpha,
            mixed_precision=c.mixed_precision,
            gradient_checkpointing=c.gradient_checkpointing,
            context=c.context,
            init_word=c.init_word,
        )
        settings = ADTrainSettings(
            base=base,
            anomaly_tokens=c.anomaly_tokens,
            spatial_tokens=c.spatial_tokens,
            spatial_backbone_weights=c.spatial_backbone_weights,
            templates=tuple(c.prompt_templates),
            loss_normalisation=c.loss_normalisation,
            encoder_lr=c.lr,
        )
        self._device, trainer = make_trainer(
            c.device,
            self._load_base,
            seed,
            lambda comps, dev: ADTrainer(comps, data.defects, data.category, settings, dev, seed=seed),
        )
        return trainer

    def _fit(self, data: FitData, out_dir: Path, seed: int) -> None:
        from anoaug.generators.diffusion.anomalydiffusion import embedding as emb
        from anoaug.generators.diffusion.anomalydiffusion import spatial_encoder as spatial
        from anoaug.generators.diffusion.sd import lora as lora_mod
        from anoaug.generators.diffusion.sd.artifact import loss_record, manifest_header

        trainer = self.make_trainer(data, seed)
        self.train_losses = list(trainer.train())
        trainer.finish()
        comps = trainer.comps
        for name in (TOKENS, SPATIAL, LORA):
            (out_dir / name).unlink(missing_ok=True)
        emb.save(comps.text_encoder, trainer.vocab, out_dir / TOKENS)
        if trainer.encoder is not None:
            spatial.save_spatial_encoder(trainer.encoder, out_dir / SPATIAL)
        if trainer.s.lora_rank > 0:
            lora_mod.save_lora(comps.unet, out_dir / LORA, trainer.s.lora_rank, trainer.s.lora_alpha)
        manifest = {
            **manifest_header(comps, data.category),
            "tokens": trainer.vocab.tokens,
            "prompts": trainer.prompts,
            "learned": {
                "anomaly_tokens": trainer.vocab.k,
                "spatial_tokens": trainer.vocab.n,
                "spatial_backbone": getattr(trainer.encoder, "backbone", None),
                "lora_rank": trainer.s.lora_rank,
                "loss_normalisation": self.settings.loss_normalisation,
            },
            "train": loss_record(self.train_losses),
        }
        atomic_write_text(out_dir / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))
        self._vocab = trainer.vocab
        self._ready(comps, trainer.encoder, trainer.prompts, data.category, trainer.dtype)

    def _load(self, artifact_dir: Path, meta: dict[str, Any]) -> None:
        from anoaug.device import resolve_device
        from anoaug.generators.diffusion.anomalydiffusion import embedding as emb
        from anoaug.generators.diffusion.anomalydiffusion import spatial_encoder as spatial
        from anoaug.generators.diffusion.sd import lora as lora_mod
        from anoaug.generators.diffusion.sd.artifact import open_artifact
        from anoaug.generators.diffusion.sd.training import resolve_dtype

        if not (artifact_dir / MANIFEST).is_file() or not (artifact_dir / TOKENS).is_file():
            raise GeneratorError(f"{self.name} artifact lacks {MANIFEST} or {TOKENS}", artifact_dir)
        manifest, comps = open_artifact(artifact_dir, MANIFEST, self.name, self._load_base)
        self._vocab = emb.load(comps.tokenizer, comps.text_encoder, artifact_dir / TOKENS, self.settings.init_word)
        encoder = None
        if (artifact_dir / SPATIAL).is_file():
            encoder = spatial.load_spatial_encoder(artifact_dir / SPATIAL, comps.text_encoder.config.hidden_size)
        if (artifact_dir / LORA).is_file():
            lora_mod.load_lora(comps.unet, artifact_dir / LORA)
        self._device = resolve_device(self.settings.device)
        dtype = resolve_dtype(self.settings.mixed_precision, self._device)
        category = str(meta.get("category", manifest.get("category", "")))
        prompts = {t: self._vocab.prompt(self.settings.prompt_templates[0], category, t) for t in self._vocab.tokens}
        self._ready(comps, encoder, prompts, category, dtype)

    # -- generate -------------------------------------------------------------------------------------

    def prompt_for(self, defect_type: str) -> str:
        """The expanded prompt for `defect_type`: the first template with its anomaly and spatial tokens."""
        if self._vocab is None:
            raise GeneratorError(f"{self.name}: call fit() or load() before generate()")
        return self._vocab.prompt(self.settings.prompt_templates[0], self._category, defect_type)

    def _generate_chunk(self, reqs: list[GenerationRequest]) -> list[GenerationResult]:
        import torch

        from anoaug.generators.compositing import changed_mask, composite
        from anoaug.generators.diffusion.anomalydiffusion import embedding as emb
        from anoaug.generators.diffusion.anomalydiffusion import reweighting as rw
        from anoaug.generators.diffusion.blending import blended_sample, make_scheduler
        from anoaug.generators.diffusion.crops import crop_box, paste_crop, take_crop
        from anoaug.generators.diffusion.sd import conditioning as cond
        from anoaug.generators.diffusion.sd.artifact import sample_info

        c, dev, dtype, cfg = self._comps, self._device, self._dtype, self.settings
        mode = cfg.attention_reweighting
        if mode != "off" and self._reweighting_on != tuple(cfg.reweighting_layers):
            rw.install(c.unet, cfg.reweighting_layers)
            self._reweighting_on = tuple(cfg.reweighting_layers)
        boxes, crops, cmasks, prompts = [], [], [], []
        for r in reqs:
            if r.normal.ndim != 3 or r.normal.shape[2] != 3 or r.mask.shape != r.normal.shape[:2]:
                raise GeneratorError(
                    f"request needs an (H, W, 3) image and an (H, W) mask; got {r.normal.shape} and {r.mask.shape}"
                )
            box = crop_box(r.mask.astype(bool), cfg.resolution, cfg.context)
            img, m = take_crop(r.normal, r.mask.astype(bool), box, cfg.resolution)
            boxes.append(box)
            crops.append(img)
            cmasks.append(m)
            prompts.append(self.prompt_for(r.defect_type))
        guidance = cfg.guidance_scale
        use_cfg = guidance > 1.0
        autocast = torch.autocast(dev.type, dtype=dtype, enabled=dtype != torch.float32)
        scheduler = make_scheduler(cfg.scheduler, c.scheduler_config)
        with torch.no_grad():
            images = cond.images_to_tensor(crops, dev)
            pix_mask = cond.masks_to_tensor(cmasks, dev)
            known = cond.encode_latents(c.vae, images, sample=False)
            blend_mask = cond.latent_mask(pix_mask, c.vae_scale_factor, dilate=cfg.mask_dilate)
            unet_mask = cond.latent_mask(pix_mask, c.vae_scale_factor) if c.inpainting else None
            masked = cond.encode_latents(c.vae, images * (1 - pix_mask), sample=False) if c.inpainting else None
            ids = cond.tokenize(c.tokenizer, prompts, dev)
            columns, positions = self._vocab.slots(ids)
            with autocast:
                vectors = self._encoder(pix_mask) if self._encoder is not None else None
                states = emb.encode(c.text_encoder, ids, positions, vectors)
                if use_cfg:
                    neg = cond.tokenize(c.tokenizer, [cfg.negative_prompt] * len(reqs), dev)
                    states = torch.cat([cond.encode_text(c.text_encoder, neg), states])
                    columns = torch.cat([torch.zeros_like(columns), columns])
            states = states.to(dtype)
            reweighter = None
            if mode != "off":
                noise = torch.cat(
                    [
                        torch.randn(
                            known.shape[1:], generator=torch.Generator().manual_seed(int(r.seed) ^ REWEIGHT_STREAM)
                        )[None]
                        for r in reqs
                    ]
                ).to(dev)
                reweighter = rw.Reweighter(
                    mode,
                    known,
                    blend_mask,
                    columns,
                    scheduler,
                    noise,
                    2 if use_cfg else 1,
                    cfg.reweighting_strength,
                    cfg.reweighting_max,
                )

            def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                n = 2 if use_cfg else 1
                x_in = cond.unet_input(
                    x.repeat(n, 1, 1, 1),
                    None if unet_mask is None else unet_mask.repeat(n, 1, 1, 1),
                    None if masked is None else masked.repeat(n, 1, 1, 1),
                )
                weights = reweighter.inputs(x, t) if reweighter is not None else None
                kwargs = {"reweight": weights} if weights is not None else None
                with autocast:
                    pred = c.unet(x_in.to(dtype), t, encoder_hidden_states=states, cross_attention_kwargs=kwargs)
                pred = pred.sample.float()
                if use_cfg:
                    uncond, text = pred.chunk(2)
                    pred = uncond + guidance * (text - uncond)
                if reweighter is not None:
                    reweighter.observe(x, t, pred)
                return pred

            gens = [torch.Generator(device="cpu").manual_seed(int(r.seed)) for r in reqs]
            with rw.quiet_unused_kwargs():
                x0 = blended_sample(denoise, scheduler, known, blend_mask, cfg.num_inference_steps, generator=gens)
            decoded = cond.tensor_to_images(cond.decode_latents(c.vae, x0.float()))
        results = []
        for r, box, crop, prompt in zip(reqs, boxes, decoded, prompts, strict=True):
            mask = r.mask.astype(bool)
            image = composite(r.normal, paste_crop(r.normal, crop, box), mask, cfg.feather)
            final = changed_mask(r.normal, image, mask, cfg.change_threshold, 0, blur=cfg.change_blur)
            info = sample_info(
                self.name,
                cfg,
                prompt,
                r.seed,
                box,
                anomaly_tokens=self._vocab.tokens[r.defect_type],
                spatial_tokens=self._vocab.n,
                attention_reweighting=mode,
                input_mask_area=int(mask.sum()),
                final_mask_area=int(final.sum()),
            )
            results.append(GenerationResult(image=image, mask=final, info=info))
        return results
