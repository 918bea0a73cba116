"""Training: masked textual inversion of k anomaly tokens per type + the shared spatial encoder, base frozen.

`ADTrainer` reuses the `sd` trainer's data sampling, precision handling, optimisation step (with the
frozen-row guarantee of textual inversion) and optional LoRA; it swaps in the anomaly vocabulary, the
feature-pyramid encoder, prompts drawn from several templates and the loss normalisation
(``mask``: mean over the latent mask's cells; ``all``: mean over every latent cell, the mask still zeroing
the rest).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from anoaug.generators.base import DefectExample, GeneratorError
from anoaug.generators.diffusion.anomalydiffusion import embedding as emb
from anoaug.generators.diffusion.anomalydiffusion import spatial_encoder as spatial
from anoaug.generators.diffusion.sd import conditioning as cond
from anoaug.generators.diffusion.sd import textual_inversion as ti
from anoaug.generators.diffusion.sd.loading import SDComponents, place
from anoaug.generators.diffusion.sd.training import SDTrainer, TrainSettings

if TYPE_CHECKING:
    import numpy as np
    import torch

TEMPLATES = (
    "a photo of {category} with <{type}> defect",
    "a close-up photo of a {category} with a <{type}>",
    "a cropped photo of the <{type}> on a {category}",
    "{category}, <{type}>",
)


@dataclass
class ADTrainSettings:
    """What `ADTrainer` learns on top of the `sd` training settings."""

    base: TrainSettings
    anomaly_tokens: int = 4
    spatial_tokens: int = 4
    spatial_backbone_weights: str = ""
    templates: tuple[str, ...] = TEMPLATES
    loss_normalisation: str = "mask"
    encoder_lr: float = 1e-3


class ADTrainer(SDTrainer):
    """The `sd` trainer with k anomaly tokens per type and the spatial encoder spliced at the placeholder."""

    def __init__(
        self,
        comps: SDComponents,
        defects: list[DefectExample],
        category: str,
        settings: ADTrainSettings,
        device: torch.device,
        seed: int = 0,
    ) -> None:
        import torch

        if not settings.templates:
            raise GeneratorError("prompt_templates must hold at least one template")
        if settings.loss_normalisation not in ("mask", "all"):
            raise GeneratorError(f"loss_normalisation must be mask or all, got '{settings.loss_normalisation}'")
        base = settings.base
        base.textual_inversion, base.spatial_tokens, base.background_weight = False, 0, 0.0
        base.template = settings.templates[0]
        super().__init__(comps, defects, category, base, device, seed)  # LoRA (if any), precision, scheduler
        self.ad = settings
        self.vocab = emb.add_tokens(
            comps.tokenizer,
            comps.text_encoder,
            self.types,
            settings.anomaly_tokens,
            settings.spatial_tokens,
            base.init_word,
        )
        for t in settings.templates:  # every template must expand for every type (fails early, names it)
            for d in self.types:
                self.vocab.prompt(t, category, d)
        self.prompts = {t: self.vocab.prompt(settings.templates[0], category, t) for t in self.types}
        place(comps.text_encoder, device, torch.float32)  # the embedding matrix is trained
        groups: list[dict[str, Any]] = []
        if self.optimizer is not None:  # the LoRA group the sd trainer built
            groups.extend(self.optimizer.param_groups)
        if settings.spatial_tokens > 0:
            weight = comps.text_encoder.get_input_embeddings().weight
            scale = float(weight[: min(self.vocab.spatial_ids)].detach().float().std())
            kind = "resnet50" if settings.spatial_backbone_weights else "small"
            self.encoder = spatial.build_spatial_encoder(
                settings.spatial_tokens,
                comps.text_encoder.config.hidden_size,
                scale,
                kind,
                settings.spatial_backbone_weights or None,
            ).to(device, dtype=torch.float32)
            params = [p for p in self.encoder.parameters() if p.requires_grad]
            groups.append({"params": params, "lr": settings.encoder_lr, "weight_decay": 1e-2})
        self.bank = self.vocab.bank
        emb_weight = ti.make_trainable(comps.text_encoder, self.bank)
        groups.append({"params": [emb_weight], "lr": base.ti_lr, "weight_decay": 0.0})
        self.optimizer = torch.optim.AdamW(groups)

    def sample_batch(self, rng: np.random.Generator | None = None, indices: list[int] | None = None) -> dict:
        """The `sd` batch; random batches draw each prompt's template, fixed ones use the first."""
        random = indices is None
        batch = super().sample_batch(rng, indices)
        if random:
            r = rng if rng is not None else self.rng
            chosen = r.integers(0, len(self.ad.templates), len(batch["prompts"]))
            by_prompt = {p: t for t, p in self.prompts.items()}  # the sd batch holds the first template's prompts
            types = [by_prompt[p] for p in batch["prompts"]]
            batch["prompts"] = [
                self.vocab.prompt(self.ad.templates[int(j)], self.category, t)
                for j, t in zip(chosen, types, strict=True)
            ]
        return batch

    def text_states(self, prompts: list[str], masks: torch.Tensor | None) -> torch.Tensor:
        """Text-encoder states with the spatial tokens spliced at the placeholder position."""
        ids = cond.tokenize(self.comps.tokenizer, prompts, self.device)
        _, positions = self.vocab.slots(ids)
        vectors = self.encoder(masks) if self.encoder is not None and masks is not None else None
        return emb.encode(self.comps.text_encoder, ids, positions, vectors)

    def loss(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        """Diffusion loss inside the latent mask (noise and timesteps from `generator`), normalised as set."""
        import torch

        c, dev = self.comps, self.device
        images = cond.images_to_tensor(batch["images"], dev)
        masks = cond.masks_to_tensor(batch["masks"], dev)
        with torch.no_grad():
            latents = cond.encode_latents(c.vae, images, sample=True, generator=generator)
            masked_latents = cond.encode_latents(c.vae, images * (1 - masks), sample=False) if c.inpainting else None
        lat_mask = cond.latent_mask(masks, c.vae_scale_factor)
        noise = torch.randn(latents.shape, generator=generator).to(dev)
        t = torch.randint(0, int(self.noise_sched.config.num_train_timesteps), (latents.shape[0],), generator=generator)
        t = t.to(dev)
        noisy = self.noise_sched.add_noise(latents, noise, t)
        target = noise if self.prediction_type == "epsilon" else self.noise_sched.get_velocity(latents, noise, t)
        with torch.autocast(dev.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            states = self.text_states(batch["prompts"], masks)
            x_in = cond.unet_input(noisy, lat_mask, masked_latents)
            pred = c.unet(x_in.to(self.dtype), t, encoder_hidden_states=states.to(self.dtype)).sample
        err = (pred.float() - target.float()).pow(2) * lat_mask
        if self.ad.loss_normalisation == "all":
            return err.mean()
        per_sample = err.sum(dim=(1, 2, 3)) / (lat_mask.sum(dim=(1, 2, 3)) * pred.shape[1]).clamp_min(1e-8)
        return per_sample.mean()
