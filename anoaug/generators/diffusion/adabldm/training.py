"""Training data and loop of the trimap ControlNet branch.

Examples: the category's few real defects, plus ``composites_per_type`` crop-paste composites per defect
type made with anoaug's own ``crop-paste`` generator: a training mask re-posed inside a normal image's
foreground by `MaskSynthesizer` (random rotation and scale, as the masks stage does), the defect's own
pixels warped with the same transform and blended in. Each example carries its trimap (1 defect,
0.5 object, 0 background). The loop is the usual noise regression over the whole crop with the base
model frozen and only the branch trained (AdamW); a share of prompts is empty so classifier-free
guidance works at generation.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from anoaug.errors import AnoaugError
from anoaug.generators.base import FitData, GenerationRequest, GeneratorError
from anoaug.generators.diffusion.adabldm.control import controlled_unet, crop_trimap, trimap_levels, trimaps_to_tensor
from anoaug.generators.diffusion.crops import crop_box, take_crop
from anoaug.generators.diffusion.sd import conditioning as cond
from anoaug.generators.diffusion.sd.loading import SDComponents, place
from anoaug.generators.diffusion.sd.training import optimise, resolve_dtype
from anoaug.masks.synthesis import make_trimap

if TYPE_CHECKING:
    import torch

DEFAULT_PROMPT = "{obj}, a {obj} with a {def}"


def build_prompt(template: str, category: str, defect_type: str) -> str:
    """``template`` with {obj} = the category's words and {def} = the defect type's words."""
    words = {"obj": category.replace("_", " "), "def": defect_type.replace("_", " ")}
    try:
        return template.replace("{obj}", words["obj"]).replace("{def}", words["def"]).format()
    except (KeyError, IndexError, ValueError) as exc:
        raise GeneratorError(
            f"bad prompt_template '{template}': only {{obj}} and {{def}} are allowed ({exc})"
        ) from None


@dataclass
class Example:
    """One training image with its defect mask and trimap levels."""

    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) bool
    trimap: np.ndarray  # (H, W) float32: 1 defect, 0.5 object, 0 background
    defect_type: str
    source: str  # "real" or "composite"


def foreground_function(data: FitData) -> Callable[[np.ndarray], np.ndarray]:
    """The category's foreground (image -> bool): the masks stage's when given, else anoaug's default one."""
    if data.foreground_fn is not None:
        return data.foreground_fn
    from anoaug.masks.foreground import ForegroundCache
    from anoaug.spec import ForegroundSection

    return ForegroundCache(ForegroundSection(), data.kind).get


def real_examples(data: FitData, fg: Callable[[np.ndarray], np.ndarray]) -> list[Example]:
    """The real defects (non-empty masks) with their trimaps."""
    out = []
    for d in data.defects:
        if not d.mask.any():
            continue
        if d.mask.shape != d.image.shape[:2]:
            raise GeneratorError(f"mask size {d.mask.shape} != image size {d.image.shape[:2]}", d.relpath)
        mask = d.mask.astype(bool)
        out.append(Example(d.image, mask, trimap_levels(make_trimap(mask, fg(d.image) | mask)), d.defect_type, "real"))
    return out


def composite_examples(data: FitData, per_type: int, seed: int, max_normals: int = 16) -> list[Example]:
    """``per_type`` crop-paste composites per defect type on the normal training images (fewer where a mask
    finds no place); none without normals."""
    from anoaug.generators.crop_paste import CropPasteGenerator
    from anoaug.masks.synthesis import MaskBank, MaskSynthesizer
    from anoaug.spec import MasksSection

    if per_type <= 0 or not data.normal_paths or not data.defects:
        return []
    spec = MasksSection()
    bank = MaskBank()
    for d in sorted(data.defects, key=lambda d: d.relpath):
        bank.add(d.defect_type, d.mask.astype(bool), d.relpath, d.relpath, spec)
    if not bank.defect_types:
        return []
    synth = MaskSynthesizer(bank, spec, data.kind)
    keys = [str(p) for p in data.normal_paths[:max_normals]]
    normals = data.normal_images(limit=max_normals)
    rng = np.random.default_rng(seed)
    out: list[Example] = []
    with tempfile.TemporaryDirectory(prefix="adabldm-crop-paste-") as tmp:
        paster = CropPasteGenerator()
        paster.fit(data, Path(tmp) / "crop-paste", seed=seed)
        for dtype in bank.defect_types:
            for _ in range(per_type):
                j = int(rng.integers(len(normals)))
                try:
                    sm = synth.synthesize(normals[j], dtype, rng, keys[j])
                    req = GenerationRequest(
                        normals[j], sm.mask, dtype, int(rng.integers(2**31 - 1)), sm.trimap, keys[j], sm.params
                    )
                    res = paster.generate([req])[0]
                except AnoaugError:
                    continue  # no place for this mask on this normal: one composite fewer
                mask = res.mask.astype(bool)
                if mask.any():
                    tri = make_trimap(mask, (sm.trimap > 0) | mask)
                    out.append(Example(res.image, mask, trimap_levels(tri), dtype, "composite"))
    return out


@dataclass
class BranchSettings:
    """How the branch is trained (filled from the generator's settings)."""

    resolution: int = 256
    context: float = 2.0
    steps: int = 200
    batch_size: int = 1
    lr: float = 1e-4
    empty_prompt_probability: float = 0.1
    template: str = DEFAULT_PROMPT
    mixed_precision: str = "auto"


class BranchTrainer:
    """Trains the ControlNet branch on the examples with the base model frozen."""

    def __init__(
        self,
        comps: SDComponents,
        controlnet: Any,
        examples: list[Example],
        category: str,
        settings: BranchSettings,
        device: torch.device,
        seed: int = 0,
    ) -> None:
        import torch
        from diffusers import DDPMScheduler

        if not examples:
            raise GeneratorError(f"no training examples with a non-empty mask for '{category}'")
        self.comps, self.controlnet, self.examples = comps, controlnet, examples
        self.category, self.s, self.device = category, settings, device
        self.dtype = resolve_dtype(settings.mixed_precision, device)
        self.rng = np.random.default_rng(seed)
        self.torch_gen = torch.Generator(device="cpu").manual_seed(seed)
        self.losses: list[float] = []
        place(comps.vae, device, torch.float32)
        place(comps.unet, device, self.dtype)
        place(comps.text_encoder, device, self.dtype)
        place(controlnet, device, torch.float32)
        controlnet.requires_grad_(True)
        self.optimizer = torch.optim.AdamW(controlnet.parameters(), lr=settings.lr, weight_decay=1e-2)
        self.noise_sched = DDPMScheduler.from_config(comps.scheduler_config)
        self.prediction_type = self.noise_sched.config.prediction_type

    def prompt(self, defect_type: str) -> str:
        return build_prompt(self.s.template, self.category, defect_type)

    def sample_batch(self, rng: np.random.Generator) -> dict[str, list[Any]]:
        """Random examples, jittered crops, prompts (empty with ``empty_prompt_probability``)."""
        r = self.s.resolution
        images, masks, trimaps, prompts = [], [], [], []
        for i in rng.integers(0, len(self.examples), self.s.batch_size):
            ex = self.examples[int(i)]
            box = crop_box(ex.mask, r, self.s.context, rng)
            img, m = take_crop(ex.image, ex.mask, box, r)
            images.append(img)
            masks.append(m)
            trimaps.append(crop_trimap(ex.trimap, m, box, r))
            prompts.append("" if rng.random() < self.s.empty_prompt_probability else self.prompt(ex.defect_type))
        return {"images": images, "masks": masks, "trimaps": trimaps, "prompts": prompts}

    def loss(self, batch: dict[str, list[Any]], generator: torch.Generator) -> torch.Tensor:
        """Noise-regression loss over the whole crop; noise and timesteps from `generator` (CPU)."""
        import torch

        c, dev = self.comps, self.device
        images = cond.images_to_tensor(batch["images"], dev)
        masks = cond.masks_to_tensor(batch["masks"], dev)
        trimaps = trimaps_to_tensor(batch["trimaps"], dev)
        with torch.no_grad():
            latents = cond.encode_latents(c.vae, images, sample=True, generator=generator)
            masked = cond.encode_latents(c.vae, images * (1 - masks), sample=False) if c.inpainting else None
            states = cond.encode_text(c.text_encoder, cond.tokenize(c.tokenizer, batch["prompts"], dev))
        lat_mask = cond.latent_mask(masks, c.vae_scale_factor)
        noise = torch.randn(latents.shape, generator=generator).to(dev)
        n_train = int(self.noise_sched.config.num_train_timesteps)
        t = torch.randint(0, n_train, (latents.shape[0],), generator=generator).to(dev)
        noisy = self.noise_sched.add_noise(latents, noise, t)
        target = noise if self.prediction_type == "epsilon" else self.noise_sched.get_velocity(latents, noise, t)
        x_in = cond.unet_input(noisy, lat_mask if c.inpainting else None, masked)
        with torch.autocast(dev.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            pred = controlled_unet(c.unet, self.controlnet, x_in.to(self.dtype), t, states.to(self.dtype), trimaps)
        return (pred.float() - target.float()).pow(2).mean()

    def step(self) -> float:
        """One optimisation step of the branch; returns the loss."""
        self.controlnet.train()
        loss = self.loss(self.sample_batch(self.rng), self.torch_gen)
        self.losses.append(optimise(loss, self.optimizer, step=len(self.losses), what="branch training"))
        return self.losses[-1]

    def train(self, steps: int | None = None) -> list[float]:
        """Run `steps` (default: settings.steps) steps; then the branch is frozen in eval mode."""
        for _ in range(self.s.steps if steps is None else steps):
            self.step()
        self.controlnet.requires_grad_(False)
        self.controlnet.eval()
        return self.losses
