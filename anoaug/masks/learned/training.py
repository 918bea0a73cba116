"""Textual inversion of mask images: k' new tokens per defect type, the only weights that change.

A training example is one real generator-training mask of the type, the whole frame resized to the model's
resolution, white defect on black as a 3-channel image. The model (UNet, VAE, text encoder) stays frozen;
the placeholder rows of the text encoder's input embedding are learned with the plain diffusion loss over
the whole image (a mask image has no background to leave out). An inpainting UNet generates from scratch
with a full mask and a blank masked image, as the base model learned with its full-mask share.
The token bookkeeping (new rows only, frozen rows restored after each step) is
``anoaug.generators.diffusion.sd.textual_inversion``: each of the k' tokens of a type is one of its entries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from anoaug.generators.diffusion.sd import conditioning as cond
from anoaug.generators.diffusion.sd import textual_inversion as ti
from anoaug.generators.diffusion.sd.loading import SDComponents, place
from anoaug.masks import MaskError
from anoaug.masks.learned.settings import LearnedMasksSettings

if TYPE_CHECKING:
    import torch


def token_names(defect_type: str, k: int) -> list[str]:
    """The k' entry names of a type's tokens (``ti.placeholder_for`` turns each into ``<mask-<type>-<j>>``)."""
    return [f"mask {defect_type} {j}" for j in range(k)]


def mask_prompt(template: str, tokens: list[str]) -> str:
    """``template`` with ``{tokens}`` replaced by the type's placeholder tokens, space separated."""
    try:
        return template.format(tokens=" ".join(tokens))
    except (KeyError, IndexError, ValueError) as exc:
        raise MaskError(f"bad masks.learned.template {template!r}: only {{tokens}} is allowed ({exc})") from None


def model_resolution(comps: SDComponents, settings: LearnedMasksSettings) -> int:
    """The side masks are learned and sampled at: the setting, else the UNet's sample size x VAE factor."""
    res = settings.resolution or int(comps.unet.config.sample_size) * comps.vae_scale_factor
    multiple = comps.vae_scale_factor * 2 ** (len(comps.unet.config.block_out_channels) - 1)
    if res % multiple:
        raise MaskError(f"masks.learned.resolution {res} must be a multiple of {multiple} (VAE x UNet factor)")
    return res


def mask_image(mask: np.ndarray, resolution: int) -> np.ndarray:
    """A bool (H, W) mask as a float (resolution, resolution) image in [0, 1] (area-averaged: thin defects
    stay visible as grey instead of vanishing)."""
    return cv2.resize(mask.astype(np.float32), (resolution, resolution), interpolation=cv2.INTER_AREA)


def blank_inputs(comps: SDComponents, n: int, resolution: int, device: torch.device) -> tuple[Any, Any]:
    """(latent mask, masked-image latents) of 'generate everything' for an inpainting UNet, else (None, None)."""
    import torch

    if not comps.inpainting:
        return None, None
    pix = torch.ones(1, 1, resolution, resolution, device=device)
    with torch.no_grad():
        masked = cond.encode_latents(comps.vae, torch.zeros(1, 3, resolution, resolution, device=device), False)
    lat = cond.latent_mask(pix, comps.vae_scale_factor)
    return lat.expand(n, -1, -1, -1), masked.expand(n, -1, -1, -1)


@dataclass
class MaskTokens:
    """The learned tokens: per defect type its k' placeholder tokens and its prompt."""

    bank: ti.TokenBank
    tokens: dict[str, list[str]]
    prompts: dict[str, str]


def add_mask_tokens(comps: SDComponents, types: list[str], settings: LearnedMasksSettings) -> MaskTokens:
    """Add k' placeholder tokens per type to the tokenizer / text encoder (rows start at ``init_word``)."""
    names = {t: token_names(t, settings.tokens) for t in types}
    bank = ti.add_placeholder_tokens(
        comps.tokenizer, comps.text_encoder, [n for t in types for n in names[t]], settings.init_word
    )
    tokens = {t: [bank.tokens[n] for n in names[t]] for t in types}
    return MaskTokens(bank, tokens, {t: mask_prompt(settings.template, tokens[t]) for t in types})


class MaskTrainer:
    """Learns the mask tokens of every defect type of a category on its real generator-training masks."""

    def __init__(
        self,
        comps: SDComponents,
        masks: dict[str, list[np.ndarray]],
        settings: LearnedMasksSettings,
        device: torch.device,
        seed: int = 0,
    ) -> None:
        import torch
        from diffusers import DDPMScheduler

        from anoaug.generators.diffusion.sd.training import resolve_dtype

        self.types = sorted(t for t, ms in masks.items() if any(m.any() for m in ms))
        if not self.types:
            raise MaskError("no generator-training mask to learn masks from")
        self.comps, self.s, self.device = comps, settings, device
        self.resolution = model_resolution(comps, settings)
        self.images = {t: [mask_image(m, self.resolution) for m in masks[t] if m.any()] for t in self.types}
        self.rng = np.random.default_rng(np.random.SeedSequence([int(seed), 1]))
        self.gen = torch.Generator(device="cpu").manual_seed(int(seed))
        self.dtype = resolve_dtype("auto", device)
        self.learned = add_mask_tokens(comps, self.types, settings)
        place(comps.vae, device, torch.float32)
        place(comps.unet, device, self.dtype)
        place(comps.text_encoder, device, torch.float32)
        for m in (comps.unet, comps.vae, comps.text_encoder):
            m.requires_grad_(False)
            m.eval()
        emb = ti.make_trainable(comps.text_encoder, self.learned.bank)
        self.optimizer = torch.optim.AdamW([emb], lr=settings.lr, weight_decay=0.0)
        self.noise_sched = DDPMScheduler.from_config(comps.scheduler_config)
        self.lat_mask, self.masked = blank_inputs(comps, settings.batch_size, self.resolution, device)
        self.losses: list[float] = []

    def batch(self) -> tuple[list[np.ndarray], list[str]]:
        """Random (type, mask) pairs, types in equal shares, with random flips."""
        images, prompts = [], []
        for _ in range(self.s.batch_size):
            t = self.types[int(self.rng.integers(len(self.types)))]
            img = self.images[t][int(self.rng.integers(len(self.images[t])))]
            if self.s.flip:
                if self.rng.random() < 0.5:
                    img = img[:, ::-1]
                if self.rng.random() < 0.5:
                    img = img[::-1]
            images.append(np.ascontiguousarray(img))
            prompts.append(self.learned.prompts[t])
        return images, prompts

    def loss(self, images: list[np.ndarray], prompts: list[str]) -> torch.Tensor:
        """Diffusion loss (epsilon or v, as the model's scheduler) over whole mask images."""
        import torch

        c, dev = self.comps, self.device
        x = torch.from_numpy(np.stack(images)[:, None]).to(dev).repeat(1, 3, 1, 1) * 2 - 1
        with torch.no_grad():
            latents = cond.encode_latents(c.vae, x, sample=True, generator=self.gen)
        noise = torch.randn(latents.shape, generator=self.gen).to(dev)
        t = torch.randint(0, int(self.noise_sched.config.num_train_timesteps), (len(images),), generator=self.gen)
        t = t.to(dev)
        noisy = self.noise_sched.add_noise(latents, noise, t)
        pred_type = self.noise_sched.config.prediction_type
        target = noise if pred_type == "epsilon" else self.noise_sched.get_velocity(latents, noise, t)
        n = len(images)
        x_in = cond.unet_input(
            noisy,
            None if self.lat_mask is None else self.lat_mask[:n],
            None if self.masked is None else self.masked[:n],
        )
        states = cond.encode_text(c.text_encoder, cond.tokenize(c.tokenizer, prompts, dev))
        with torch.autocast(dev.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            pred = c.unet(x_in.to(self.dtype), t, encoder_hidden_states=states.to(self.dtype)).sample
        return (pred.float() - target.float()).pow(2).mean()

    def step(self) -> float:
        """One optimisation step of the token rows; returns the loss."""
        import torch

        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(*self.batch())
        if not torch.isfinite(loss):
            raise MaskError(f"mask textual-inversion loss is {loss.item()} at step {len(self.losses)} (lower lr?)")
        loss.backward()
        self.optimizer.step()
        ti.restore_frozen_rows(self.comps.text_encoder, self.learned.bank)
        self.losses.append(float(loss.item()))
        return self.losses[-1]

    def train(self, steps: int | None = None) -> list[float]:
        """Run ``steps`` (default: ``train_steps``) steps, then freeze the tokens again."""
        for _ in range(self.s.train_steps if steps is None else steps):
            self.step()
        return self.losses

    def finish(self) -> None:
        """Remove the gradient hooks and freeze the embedding (frozen rows restored)."""
        ti.finish_training(self.comps.text_encoder, self.learned.bank)
