"""The dual UNet (two branch adapters, dual processors, background pass) and its training loop.

Per category the learned parts are: rare tokens for the object and each defect type (textual inversion,
`sd.textual_inversion`), the two branch LoRAs, the shared-attention layers and the background fusion. Each
step takes defects (whole image resized, or a crop around the defect), their part images I x M, one noise
timestep per sample shared by both branches, and (with background compensation) a normal training image
with its object removed, noised to the same step. The loss is the plain noise (or v) regression over both
branches, as the method trains it. The base UNet, VAE and text encoder stay frozen.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from anoaug.generators.base import FitData, GeneratorError
from anoaug.generators.diffusion.dualanodiff import branches as br
from anoaug.generators.diffusion.dualanodiff import shared_attention as sa
from anoaug.generators.diffusion.dualanodiff.background import object_foreground, remove_object
from anoaug.generators.diffusion.dualanodiff.frame import Frame
from anoaug.generators.diffusion.sd import conditioning as cond
from anoaug.generators.diffusion.sd import textual_inversion as ti
from anoaug.generators.diffusion.sd.loading import SDComponents, check_resolution, place
from anoaug.generators.diffusion.sd.training import end_training, optimise, resolve_dtype, run_steps

if TYPE_CHECKING:
    import torch


@dataclass
class DualTrainSettings:
    """What to learn and how; the generator fills it from its settings."""

    resolution: int = 256
    steps: int = 400
    batch_size: int = 1
    lr: float = 1e-4  # LoRAs, shared attention, background fusion
    ti_lr: float = 5e-3
    lora_rank: int = 4
    lora_alpha: float | None = None
    text_encoder_lora_rank: int = 0  # LoRA on the text encoder's attention (0 = off)
    textual_inversion: bool = True
    init_word: str = "defect"
    shared_attention: str = "position"
    background: bool = True
    whole: bool = False  # True: whole images; False: crops around the defect
    whole_part: str = "request"  # whole: the part branch is given the defect mask (request) or not (free)
    context: float = 2.0
    whole_prompt: str = "a {obj} with {defect}"
    part_prompt: str = "{defect}"
    mixed_precision: str = "auto"
    gradient_checkpointing: bool | str = "auto"
    max_normals: int = 8  # normal images whose backgrounds are used


def object_key(category: str) -> str:
    """The token-bank key of the category's object token (``<cap-object>``)."""
    return f"{ti.type_slug(category)}-object"


def words(text: str) -> str:
    return text.replace("_", " ").replace("-", " ")


def make_prompts(whole_template: str, part_template: str, obj: str, defect: str) -> tuple[str, str]:
    """The nested prompts ("a {obj} with {defect}", "{defect}") for one defect type."""
    try:
        return whole_template.format(obj=obj, defect=defect), part_template.format(obj=obj, defect=defect)
    except (KeyError, IndexError, ValueError) as exc:
        raise GeneratorError(
            f"bad prompt template '{whole_template}' / '{part_template}': only {{obj}} and {{defect}} ({exc})"
        ) from None


class DualUNet:
    """The frozen UNet with the branch adapters (added by the caller), the dual processors and the router.

    Background compensation runs the background rows in the same UNet call as the two branches
    (``background_pass="batched"``: one forward of dual + background rows; the background rows go through
    the base model, self-attend to themselves, and each fusion layer reads their input in place). The
    ``"separate"`` pass (a write pass through the base model that stops after the last fusion layer, then the
    dual pass) computes the same thing with one more UNet call per step; it is kept as the reference."""

    def __init__(self, comps: SDComponents, shared: str, background: bool, background_pass: str = "batched") -> None:
        if background_pass not in ("batched", "separate"):
            raise ValueError(f"background_pass must be batched or separate, got {background_pass!r}")
        self.comps, self.shared, self.background = comps, shared, background
        self.background_pass = background_pass
        self.procs = sa.install(comps.unet, shared, background)  # type: ignore[arg-type]
        self.fusion_layers = sum(p.fusion is not None for p in self.procs.values())
        self.router = br.BranchRouter(comps.unet)

    def extras(self, latents: torch.Tensor, mask: torch.Tensor | None, masked: torch.Tensor | None) -> Any:
        """UNet input: latents plus (inpainting UNet) the latent mask and masked-image latents."""
        return cond.unet_input(latents, mask, masked) if self.comps.inpainting else latents

    def __call__(
        self,
        x_in: torch.Tensor,
        t: torch.Tensor,
        states: torch.Tensor,
        bg: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
        token: torch.Tensor | None = None,
        maps: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Model output of a ``(b f)`` dual batch; ``bg`` = (background UNet input, its timesteps, text states)
        for background compensation; with ``token`` (prompt token per row) every cross-attention layer appends
        that token's attention map to ``maps``."""
        import torch

        unet = self.comps.unet
        rows = x_in.shape[0]
        use_bg = bg is not None and self.background and self.fusion_layers > 0
        names = br.row_adapters(rows // 2)
        ctx = sa.DualContext(branches=2)
        if use_bg and self.background_pass == "batched":
            assert bg is not None
            x_bg, t_bg, s_bg = bg
            n = x_bg.shape[0]
            ctx = sa.DualContext(branches=2, background="batched", rows=rows)
            x_in = torch.cat([x_in, x_bg.to(x_in.dtype)])
            t = torch.cat([_per_row(t, rows), _per_row(t_bg, n).to(t.dtype)])
            states = torch.cat([states, s_bg.to(states.dtype)])
            names = names + br.row_adapters(n, dual=False)
        elif use_bg:
            assert bg is not None
            x_bg, t_bg, s_bg = bg
            ctx = sa.DualContext(branches=2, background="read")
            self.router.names = br.row_adapters(x_bg.shape[0], dual=False)
            write = sa.DualContext(branches=1, background="write", store=ctx.store, stop_after=self.fusion_layers)
            # every fusion layer has its input once BackgroundStored is raised: the rest of the pass is not needed
            with torch.no_grad(), contextlib.suppress(sa.BackgroundStored):
                unet(x_bg, t_bg, encoder_hidden_states=s_bg, cross_attention_kwargs={"dual": write})
        if token is not None:
            ctx.token, ctx.maps = token, maps if maps is not None else []
        self.router.names = names
        return unet(x_in, t, encoder_hidden_states=states, cross_attention_kwargs={"dual": ctx}).sample[:rows]


def _per_row(t: torch.Tensor, n: int) -> torch.Tensor:
    """Timesteps as a (n,) tensor (a scalar is repeated)."""
    return t.reshape(-1).expand(n) if t.numel() == 1 else t.reshape(n)


class DualTrainer:
    """Learns the dual model of one category from its generator-training defects."""

    def __init__(
        self, comps: SDComponents, data: FitData, settings: DualTrainSettings, device: torch.device, seed: int = 0
    ) -> None:
        import torch

        defects = [d for d in data.defects if d.mask.any()]
        if not defects:
            raise GeneratorError(f"no generator-training defects with a non-empty mask for '{data.category}'")
        check_resolution(comps, settings.resolution)
        self.comps, self.defects, self.category, self.s, self.device = comps, defects, data.category, settings, device
        self.rng = np.random.default_rng(seed)
        self.torch_gen = torch.Generator(device="cpu").manual_seed(seed)
        self.dtype = resolve_dtype(settings.mixed_precision, device)
        self.types = sorted({d.defect_type for d in defects})
        self.losses: list[float] = []

        self.bank: ti.TokenBank | None = None
        if settings.textual_inversion:
            self.bank = ti.add_placeholder_tokens(
                comps.tokenizer, comps.text_encoder, [*self.types, object_key(data.category)], settings.init_word
            )
            self._init_object_row(data.category)
        self.tokens = self.token_words()
        self.prompts = {
            t: make_prompts(settings.whole_prompt, settings.part_prompt, self.tokens["obj"], self.tokens[t])
            for t in self.types
        }
        place(comps.vae, device, torch.float32)
        place(comps.unet, device, self.dtype)
        text_trained = self.bank is not None or settings.text_encoder_lora_rank > 0
        place(comps.text_encoder, device, torch.float32 if text_trained else self.dtype)
        lora = br.add_branch_adapters(comps.unet, settings.lora_rank, settings.lora_alpha)
        self.model = DualUNet(comps, settings.shared_attention, settings.background)
        text_lora = br.add_text_adapter(comps.text_encoder, settings.text_encoder_lora_rank, settings.lora_alpha)
        new_layers = sa.trainable_parameters(comps.unet)
        trainable = lora + new_layers
        for p in trainable:
            p.data = p.data.float()
        groups: list[dict[str, Any]] = []
        if trainable:
            groups.append({"params": trainable, "lr": settings.lr, "weight_decay": 1e-2})
        if self.bank is not None:
            groups.append(
                {
                    "params": [ti.make_trainable(comps.text_encoder, self.bank)],
                    "lr": settings.ti_lr,
                    "weight_decay": 0.0,
                }
            )
        if text_lora:  # after make_trainable, which freezes the rest of the text encoder
            for p in text_lora:
                p.data = p.data.float()
                p.requires_grad_(True)
            groups.append({"params": text_lora, "lr": settings.lr, "weight_decay": 1e-2})
        self.optimizer = torch.optim.AdamW(groups) if groups else None
        gc = settings.gradient_checkpointing
        if gc is True or (gc == "auto" and device.type == "cuda"):
            comps.unet.enable_gradient_checkpointing()
        self.scaler = torch.amp.GradScaler("cuda") if self.dtype == torch.float16 and device.type == "cuda" else None
        from diffusers import DDPMScheduler

        self.noise_sched = DDPMScheduler.from_config(comps.scheduler_config)
        self.backgrounds: list[np.ndarray] = []
        if settings.background:
            for img in data.normal_images(limit=settings.max_normals):
                self.backgrounds.append(remove_object(img, object_foreground(img, data.kind, data.foreground_fn)))
            if not self.backgrounds:
                raise GeneratorError(f"background compensation needs normal training images for '{data.category}'")

    def _init_object_row(self, category: str) -> None:
        """The object token starts from the category's name (the defect tokens from ``init_word``)."""
        import torch

        assert self.bank is not None
        tok, te = self.comps.tokenizer, self.comps.text_encoder
        ids = tok(words(category), add_special_tokens=False).input_ids
        if ids:
            weight = te.get_input_embeddings().weight
            with torch.no_grad():
                weight[self.bank.ids[object_key(category)]] = weight[ids].mean(0)

    def token_words(self) -> dict[str, str]:
        """What fills {obj} ("obj") and {defect} (per type): the learned tokens, or plain words without them."""
        if self.bank is None:
            return {"obj": words(self.category), **{t: words(t) for t in self.types}}
        return {"obj": self.bank.tokens[object_key(self.category)], **{t: self.bank.tokens[t] for t in self.types}}

    @property
    def trainable(self) -> bool:
        return self.optimizer is not None

    # -- data -----------------------------------------------------------------------------------------

    def sample_batch(self, rng: np.random.Generator) -> dict[str, list[Any]]:
        """Defects (model view), their parts I x M, masks, prompts, and backgrounds at the same view."""
        out: dict[str, list[Any]] = {"images": [], "parts": [], "masks": [], "whole": [], "part": [], "bgs": []}
        for i in rng.integers(0, len(self.defects), self.s.batch_size):
            d = self.defects[int(i)]
            if d.mask.shape != d.image.shape[:2]:
                raise GeneratorError(f"mask size {d.mask.shape} != image size {d.image.shape[:2]}", d.relpath)
            frame = Frame.make(d.mask, self.s.resolution, self.s.whole, self.s.context, rng)
            img, m = frame.image(d.image), frame.mask(d.mask)
            out["images"].append(img)
            out["parts"].append(img * m[..., None].astype(np.uint8))
            out["masks"].append(m)
            out["whole"].append(self.prompts[d.defect_type][0])
            out["part"].append(self.prompts[d.defect_type][1])
            if self.backgrounds:
                out["bgs"].append(frame.image(self.backgrounds[int(rng.integers(len(self.backgrounds)))]))
        return out

    # -- loss -----------------------------------------------------------------------------------------

    def loss(self, batch: dict[str, list[Any]], generator: torch.Generator) -> torch.Tensor:
        """Plain diffusion loss over both branches of one batch (noise and timesteps from `generator`)."""
        import torch

        c, dev, m = self.comps, self.device, self.model
        b = len(batch["images"])
        images = cond.images_to_tensor(batch["images"], dev)
        parts = cond.images_to_tensor(batch["parts"], dev)
        masks = cond.masks_to_tensor(batch["masks"], dev)
        with torch.no_grad():
            latents = br.interleave(
                cond.encode_latents(c.vae, images, sample=True, generator=generator),
                cond.encode_latents(c.vae, parts, sample=True, generator=generator),
            )
            extra = self.conditioning(images, parts, masks)
        noise = torch.randn(latents.shape, generator=generator).to(dev)
        n_train = int(self.noise_sched.config.num_train_timesteps)
        t = torch.randint(0, n_train, (b,), generator=generator).to(dev)
        t2 = t.repeat_interleave(2)
        noisy = self.noise_sched.add_noise(latents, noise, t2)
        if self.noise_sched.config.prediction_type == "epsilon":
            target = noise
        else:
            target = self.noise_sched.get_velocity(latents, noise, t2)
        bg = None
        with torch.autocast(dev.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            states = self.text_states(br.interleave_lists(batch["whole"], batch["part"]))
            if batch["bgs"]:
                with torch.no_grad():
                    bg_lat = cond.encode_latents(c.vae, cond.images_to_tensor(batch["bgs"], dev), sample=False)
                    bg_noise = torch.randn(bg_lat.shape, generator=generator).to(dev)
                    bg_in = self.background_input(self.noise_sched.add_noise(bg_lat, bg_noise, t), bg_lat)
                    bg = (bg_in.to(self.dtype), t, self.text_states([""] * b).to(self.dtype))
            x_in = m.extras(noisy, *extra)
            pred = m(x_in.to(self.dtype), t2, states.to(self.dtype), bg)
        return (pred.float() - target.float()).pow(2).mean()

    def conditioning(
        self, images: torch.Tensor, parts: torch.Tensor, masks: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Inpainting UNet extras per dual row: (latent mask, masked-image latents); (None, None) otherwise.

        Crops: the defect mask, the image outside it known (the part's known area is black). Whole images: the
        whole branch generates everything (mask 1, nothing known); the part branch is given the defect mask
        (its black outside known), as at generation where it draws inside the request's mask, unless
        ``whole_part`` is free (mask 1: it must learn its black background from its LoRA alone)."""
        import torch

        c = self.comps
        if not c.inpainting:
            return None, None
        whole_masks = part_masks = masks
        if self.s.whole:
            whole_masks = torch.ones_like(masks)
            part_masks = whole_masks if self.s.whole_part == "free" else masks
        lat_mask = br.interleave(
            cond.latent_mask(whole_masks, c.vae_scale_factor), cond.latent_mask(part_masks, c.vae_scale_factor)
        )
        masked = br.interleave(
            cond.encode_latents(c.vae, images * (1 - whole_masks), sample=False),
            cond.encode_latents(c.vae, parts * (1 - part_masks), sample=False),
        )
        return lat_mask, masked

    def background_input(self, noisy_bg: torch.Tensor, bg_latents: torch.Tensor) -> torch.Tensor:
        """The background pass's UNet input; an inpainting UNet is told the whole background is known."""
        import torch

        if not self.comps.inpainting:
            return noisy_bg
        zero = torch.zeros_like(noisy_bg[:, :1])
        return cond.unet_input(noisy_bg, zero, bg_latents)

    def text_states(self, prompts: list[str]) -> torch.Tensor:
        return cond.encode_text(self.comps.text_encoder, cond.tokenize(self.comps.tokenizer, prompts, self.device))

    # -- loop -----------------------------------------------------------------------------------------

    def step(self) -> float:
        """One optimisation step (`sd.training.optimise`); returns the loss."""
        assert self.optimizer is not None
        self.comps.unet.train()
        loss = self.loss(self.sample_batch(self.rng), self.torch_gen)
        self.losses.append(optimise(loss, self.optimizer, self.scaler, len(self.losses), self.bank, self.comps))
        return self.losses[-1]

    def train(self, callback: Callable[[int, float], None] | None = None) -> list[float]:
        """Run settings.steps optimisation steps (`sd.training.run_steps`); returns the per-step losses."""
        return run_steps(self, self.s.steps, callback)

    def finish(self) -> None:
        """Freeze everything and switch to inference mode (`sd.training.end_training`)."""
        end_training(self.comps, self.bank)
