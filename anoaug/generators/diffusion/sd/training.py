"""The training loop: masked diffusion loss on VAE latents of the training defects.

Per category, the learned parts are: one textual-inversion token per defect type, optionally a LoRA
on the UNet attention and optionally a mask encoder giving spatial tokens. The loss is the usual
noise (or v) regression, but counted only inside the latent-resized defect mask (plus an optional
small weight outside it), so the learned parts describe the defect and not the product around it.

Precision: frozen UNet / text-encoder weights are cast to bf16 (fp16 where bf16 is unsupported) on
CUDA and the forward runs under autocast, while trainable parameters (LoRA, mask encoder, the
embedding matrix) stay fp32; fp16 uses a gradient scaler. The VAE always stays fp32 (its fp16 encode
can overflow). Gradient checkpointing is on by default on CUDA. On CPU everything is fp32.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from anoaug.generators.base import DefectExample, GeneratorError
from anoaug.generators.diffusion.crops import crop_box, take_crop
from anoaug.generators.diffusion.sd import conditioning as cond
from anoaug.generators.diffusion.sd import lora as lora_mod
from anoaug.generators.diffusion.sd import spatial as spatial_mod
from anoaug.generators.diffusion.sd import textual_inversion as ti
from anoaug.generators.diffusion.sd.loading import SDComponents, check_resolution, place

if TYPE_CHECKING:
    import torch

T = TypeVar("T")


@dataclass
class TrainSettings:
    """What to learn and how; the generator fills it from GeneratorSection.params."""

    resolution: int = 256
    steps: int = 400
    batch_size: int = 1
    lr: float = 1e-4  # LoRA and mask encoder
    ti_lr: float = 5e-3  # textual-inversion embeddings
    lora_rank: int = 4  # 0 = no LoRA
    lora_alpha: float | None = None
    textual_inversion: bool = True
    spatial_tokens: int = 0  # 0 = no spatial tokens
    mixed_precision: str = "auto"  # auto | no | fp16 | bf16
    gradient_checkpointing: bool | str = "auto"
    background_weight: float = 0.0  # loss weight outside the mask (0 = loss only inside)
    context: float = 2.0
    template: str = cond.DEFAULT_TEMPLATE
    init_word: str = "defect"


def resolve_dtype(mixed_precision: str, device: torch.device) -> torch.dtype:
    """The compute dtype of frozen weights: bf16/fp16 on CUDA under 'auto', fp32 on CPU."""
    import torch

    mp = str(mixed_precision).lower()
    if mp in ("no", "fp32", "false", "none"):
        return torch.float32
    if mp not in ("auto", "fp16", "bf16"):
        raise GeneratorError(f"mixed_precision must be auto, no, fp16 or bf16, got '{mixed_precision}'")
    if device.type != "cuda":
        if mp == "fp16":
            raise GeneratorError("mixed_precision fp16 needs a CUDA device (use bf16 or no on CPU)")
        return torch.bfloat16 if mp == "bf16" else torch.float32
    if mp == "fp16" or (mp == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


@contextmanager
def seeded_init(seed: int) -> Iterator[None]:
    """Inside the block torch's global RNG is seeded with `seed`, so that new layers (LoRA, encoders, a
    ControlNet branch) initialise from the run's one seed; the caller's RNG state is restored after it."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def make_trainer(
    device: str, load: Callable[[], SDComponents], seed: int, build: Callable[[SDComponents, torch.device], T]
) -> tuple[torch.device, T]:
    """An SD-family generator's fit set-up: resolve `device`, load the base model (`load`), and build the
    trainer with `build(comps, device)` inside `seeded_init(seed)`. Returns (device, trainer)."""
    from anoaug.device import resolve_device

    dev = resolve_device(device)
    comps = load()
    with seeded_init(seed):
        return dev, build(comps, dev)


def optimise(
    loss: torch.Tensor,
    optimizer: Any,
    scaler: Any = None,
    step: int = 0,
    bank: ti.TokenBank | None = None,
    comps: SDComponents | None = None,
    what: str = "training",
) -> float:
    """One optimiser step on `loss`: zero the gradients, check the loss is finite (else GeneratorError naming
    `what` and `step`), backpropagate (through the fp16 gradient `scaler` if any), step, and restore the frozen
    embedding rows of `bank` in `comps`' text encoder (textual inversion). Returns the loss value."""
    import torch

    optimizer.zero_grad(set_to_none=True)
    if not torch.isfinite(loss):
        raise GeneratorError(f"{what} loss is {loss.item()} at step {step} (lower lr?)")
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    if bank is not None and comps is not None:
        ti.restore_frozen_rows(comps.text_encoder, bank)
    return float(loss.item())


def run_steps(trainer: Any, steps: int, callback: Callable[[int, float], None] | None = None) -> list[float]:
    """`steps` calls of `trainer.step()` (then `callback(step index, loss)`); the trainer's losses, [] when it
    has nothing to train."""
    if not trainer.trainable or steps <= 0:
        return []
    for i in range(steps):
        loss = trainer.step()
        if callback is not None:
            callback(i, loss)
    return trainer.losses


def end_training(comps: SDComponents, bank: ti.TokenBank | None, *modules: Any) -> None:
    """Freeze the UNet and the trained `modules` (None ones skipped) in inference mode: textual-inversion
    hooks removed and frozen rows restored (`bank`), gradient checkpointing off."""
    if bank is not None:
        ti.finish_training(comps.text_encoder, bank)
    comps.unet.requires_grad_(False)
    comps.unet.eval()
    if comps.unet.is_gradient_checkpointing:
        comps.unet.disable_gradient_checkpointing()
    for m in modules:
        if m is not None:
            m.requires_grad_(False)
            m.eval()


class SDTrainer:
    """Holds the learned parts of one category and trains them on its generator-training defects."""

    def __init__(
        self,
        comps: SDComponents,
        defects: list[DefectExample],
        category: str,
        settings: TrainSettings,
        device: torch.device,
        seed: int = 0,
    ) -> None:
        import torch

        defects = [d for d in defects if d.mask.any()]  # an empty mask has no pixel to learn from
        if not defects:
            raise GeneratorError(f"no generator-training defects with a non-empty mask for '{category}'")
        check_resolution(comps, settings.resolution)
        self.comps, self.defects, self.category, self.s, self.device = (
            comps,
            defects,
            category,
            settings,
            device,
        )
        self.rng = np.random.default_rng(seed)
        self.torch_gen = torch.Generator(device="cpu").manual_seed(seed)
        self.dtype = resolve_dtype(settings.mixed_precision, device)
        self.types = sorted({d.defect_type for d in defects})
        self.losses: list[float] = []

        self.bank: ti.TokenBank | None = None
        if settings.textual_inversion:
            self.bank = ti.add_placeholder_tokens(
                comps.tokenizer, comps.text_encoder, self.types, settings.init_word
            )
        self.prompts = {
            t: cond.build_prompt(settings.template, category, t, settings.textual_inversion)
            for t in self.types
        }
        self.encoder = None
        if settings.spatial_tokens > 0:
            self.encoder = spatial_mod.build_mask_encoder(
                settings.spatial_tokens, comps.text_encoder.config.hidden_size
            )

        # Precision: frozen weights in the compute dtype, trainable ones in fp32 (see module docstring).
        place(comps.vae, device, torch.float32)
        place(comps.unet, device, self.dtype)
        place(comps.text_encoder, device, torch.float32 if self.bank is not None else self.dtype)
        groups: list[dict[str, Any]] = []
        if settings.lora_rank > 0:
            params = lora_mod.add_lora(comps.unet, settings.lora_rank, settings.lora_alpha)
            for p in params:
                p.data = p.data.float()
            groups.append({"params": params, "lr": settings.lr, "weight_decay": 1e-2})
        if self.encoder is not None:
            self.encoder.to(device, dtype=torch.float32)
            groups.append(
                {"params": list(self.encoder.parameters()), "lr": settings.lr, "weight_decay": 1e-2}
            )
        if self.bank is not None:
            emb = ti.make_trainable(comps.text_encoder, self.bank)
            groups.append({"params": [emb], "lr": settings.ti_lr, "weight_decay": 0.0})
        self.optimizer = torch.optim.AdamW(groups) if groups else None
        gc = settings.gradient_checkpointing
        if gc is True or (gc == "auto" and device.type == "cuda"):
            comps.unet.enable_gradient_checkpointing()
        self.scaler = (
            torch.amp.GradScaler("cuda") if self.dtype == torch.float16 and device.type == "cuda" else None
        )

        from diffusers import DDPMScheduler

        self.noise_sched = DDPMScheduler.from_config(comps.scheduler_config)
        self.prediction_type = self.noise_sched.config.prediction_type

    @property
    def trainable(self) -> bool:
        return self.optimizer is not None

    # -- data -----------------------------------------------------------------------------------------

    def sample_batch(self, rng: np.random.Generator | None = None, indices: list[int] | None = None) -> dict:
        """A batch of crops: random defects with jittered crops if `rng`, else centred crops of `indices`."""
        r = self.s.resolution
        if indices is None:
            rng = rng if rng is not None else self.rng
            indices = list(rng.integers(0, len(self.defects), self.s.batch_size))
        images, masks, prompts = [], [], []
        for i in indices:
            d = self.defects[i]
            if d.mask.shape != d.image.shape[:2]:
                raise GeneratorError(f"mask size {d.mask.shape} != image size {d.image.shape[:2]}", d.relpath)
            img, m = take_crop(d.image, d.mask, crop_box(d.mask, r, self.s.context, rng), r)
            images.append(img)
            masks.append(m)
            prompts.append(self.prompts[d.defect_type])
        return {"images": images, "masks": masks, "prompts": prompts}

    # -- loss -----------------------------------------------------------------------------------------

    def text_states(self, prompts: list[str], masks: torch.Tensor | None) -> torch.Tensor:
        """Text-encoder states for `prompts`, with the mask encoder's spatial tokens appended."""
        states = cond.encode_text(
            self.comps.text_encoder, cond.tokenize(self.comps.tokenizer, prompts, self.device)
        )
        if self.encoder is not None and masks is not None:
            states = spatial_mod.append_tokens(states, self.encoder(masks))
        return states

    def loss(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        """Masked diffusion loss of one batch; noise and timesteps are drawn from `generator` (CPU)."""
        import torch

        c, dev = self.comps, self.device
        images = cond.images_to_tensor(batch["images"], dev)
        masks = cond.masks_to_tensor(batch["masks"], dev)
        with torch.no_grad():
            latents = cond.encode_latents(c.vae, images, sample=True, generator=generator)
            masked_latents = (
                cond.encode_latents(c.vae, images * (1 - masks), sample=False) if c.inpainting else None
            )
        lat_mask = cond.latent_mask(masks, c.vae_scale_factor)
        noise = torch.randn(latents.shape, generator=generator).to(dev)
        n_train = int(self.noise_sched.config.num_train_timesteps)
        t = torch.randint(0, n_train, (latents.shape[0],), generator=generator).to(dev)
        noisy = self.noise_sched.add_noise(latents, noise, t)
        target = (
            noise if self.prediction_type == "epsilon" else self.noise_sched.get_velocity(latents, noise, t)
        )
        with torch.autocast(dev.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            states = self.text_states(batch["prompts"], masks)
            x_in = cond.unet_input(noisy, lat_mask, masked_latents)
            pred = c.unet(x_in.to(self.dtype), t, encoder_hidden_states=states.to(self.dtype)).sample
        w = lat_mask + self.s.background_weight * (1 - lat_mask)
        err = (pred.float() - target.float()).pow(2) * w
        per_sample = err.sum(dim=(1, 2, 3)) / (w.sum(dim=(1, 2, 3)) * pred.shape[1]).clamp_min(1e-8)
        return per_sample.mean()

    def eval_loss(self, seed: int = 0, repeats: int = 4) -> float:
        """Loss on centred crops of every defect with fixed noise/timesteps (comparable across training)."""
        import torch

        gen = torch.Generator(device="cpu").manual_seed(seed)
        batch = self.sample_batch(indices=list(range(len(self.defects))))
        with torch.no_grad():
            return float(np.mean([self.loss(batch, gen).item() for _ in range(repeats)]))

    # -- loop -----------------------------------------------------------------------------------------

    def step(self) -> float:
        """One optimisation step; returns the loss."""
        assert self.optimizer is not None
        self.comps.unet.train()
        loss = self.loss(self.sample_batch(), self.torch_gen)
        self.losses.append(optimise(loss, self.optimizer, self.scaler, len(self.losses), self.bank, self.comps))
        return self.losses[-1]

    def train(
        self, steps: int | None = None, callback: Callable[[int, float], None] | None = None
    ) -> list[float]:
        """Run `steps` (default settings.steps) optimisation steps; returns the per-step losses."""
        return run_steps(self, self.s.steps if steps is None else steps, callback)

    def finish(self) -> None:
        """Freeze everything and switch to inference mode (`end_training`)."""
        end_training(self.comps, self.bank, self.encoder)
