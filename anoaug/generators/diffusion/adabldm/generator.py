"""The ``adabldm`` generator: trimap-conditioned blended latent diffusion (AdaBLDM) on any SD-family model.

fit: load the base model (a diffusers folder, a cached hub id, or ``base`` resolved by ``anoaug run``);
with ``controlnet`` on, build a ControlNet branch from its UNet (`control`) and train only the branch on
the category's real defects plus ``composites_per_type`` crop-paste composites per type (`training`),
prompts "{obj}, a {obj} with a {def}" with a share of empty ones. The artifact holds the branch
(safetensors) and a manifest with the base model's identity, as ``diffusion-sd``.

generate: crop around each requested mask (the ``diffusion-sd`` crops), condition the branch on the
request's trimap (or one made from the mask and the normal image's foreground), sample with the
multi-stage sampler (`multistage`: T1 free, T2 latent editing, T3 image editing; ``multistage: false`` =
plain blended sampling), decode with online decoder adaptation (`decoder_adaptation`), paste back,
composite in pixel space (the normal image exact outside the mask) and report what changed inside the
mask as the final mask. Each sample's info records the trimap, the stage lengths and the adaptation.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

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
from anoaug.generators.diffusion.adabldm.training import DEFAULT_PROMPT
from anoaug.generators.diffusion.sd.settings import SDFamilySettings
from anoaug.generators.diffusion.settings import DIFFUSERS_NAMES

MANIFEST = "adabldm_manifest.json"
BRANCH = "controlnet.safetensors"


@register
class AdaBLDMGenerator(Generator):
    """Trimap ControlNet + multi-stage blended latent diffusion + decoder adaptation (see module doc)."""

    name = "adabldm"
    learned = True
    renamed_settings = DIFFUSERS_NAMES

    class Settings(SDFamilySettings):
        """adabldm settings (the shared ones are documented in `SDFamilySettings`)."""

        inpainting: BoolOrAuto = Field("auto", description="auto (from unet in_channels) | true | false (asserted)")
        controlnet: bool = Field(True, description="train and use the trimap ControlNet branch")
        conditioning_scale: float = Field(1.0, ge=0, description="weight of the branch's residuals at generation")
        composites_per_type: int = Field(8, ge=0, description="crop-paste composites per defect type (0 = real only)")
        train_steps: int = Field(200, ge=0, description="branch training steps")
        lr: float = Field(1e-4, gt=0, description="AdamW learning rate of the branch (the authors: 1e-5, many steps)")
        prompt_template: str = Field(DEFAULT_PROMPT, description="prompt; {obj} = category, {def} = defect type")
        empty_prompt_probability: float = Field(0.1, ge=0, le=1, description="share of empty training prompts")
        multistage: bool = Field(True, description="T1/T2/T3 multi-stage denoising; false = plain blended sampling")
        stages: tuple[float, float, float] = Field(
            (26.0, 20.0, 5.0),
            description="T1 free / T2 latent editing / T3 image editing, in proportion of num_inference_steps "
            "(default: the authors' 26/20/5 of 50; the paper's 50/30/5 also works)",
        )
        decoder_adaptation: Literal["off", "per_image", "per_batch"] = Field(
            "per_image", description="fine-tune a decoder copy per sample, per generation batch, or not at all"
        )
        adaptation_steps: int = Field(20, ge=0, description="decoder adaptation iterations (the paper: 200)")
        adaptation_lr: float = Field(1e-4, gt=0, description="decoder adaptation learning rate (AdamW)")
        lambda_con: float = Field(100.0, ge=0, description="weight of the background (outside-mask) loss")
        mask_dilate: int = Field(1, ge=0, description="latent cells added around the mask for latent editing")

        @field_validator("stages")
        @classmethod
        def _stages(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
            if min(v) < 0 or sum(v) <= 0:
                raise ValueError(f"stages must be three non-negative numbers with a positive sum, got {list(v)}")
            return v

        @model_validator(mode="after")
        def _image_editing_needs_ddim(self) -> AdaBLDMGenerator.Settings:
            if self.multistage and self.stages[2] > 0 and self.scheduler != "ddim":
                raise ValueError("image editing (stages T3 > 0) needs scheduler: ddim (it decodes DDIM's predicted x0)")
            return self

    settings: Settings

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        super().__init__(params)
        self._comps: Any = None
        self._controlnet: Any = None
        self._category = ""
        self._kind = "object"
        self._device: Any = None
        self._dtype: Any = None
        self._foreground: Any = None
        self.train_losses: list[float] = []
        self.examples_used: dict[str, int] = {}

    # -- fit / load -----------------------------------------------------------------------------------

    def _load_base(self) -> Any:
        from anoaug.generators.diffusion.sd.loading import check_resolution, load_components

        comps = load_components(self.settings.model, self.settings.inpainting)
        check_resolution(comps, self.settings.resolution)
        return comps

    def _fit(self, data: FitData, out_dir: Path, seed: int) -> None:
        from anoaug.device import resolve_device
        from anoaug.generators.diffusion.adabldm import control
        from anoaug.generators.diffusion.adabldm import training as tr
        from anoaug.generators.diffusion.sd.artifact import loss_record, manifest_header
        from anoaug.generators.diffusion.sd.training import seeded_init

        s = self.settings
        self._device = resolve_device(s.device)
        comps = self._load_base()
        (out_dir / BRANCH).unlink(missing_ok=True)
        fg = tr.foreground_function(data)
        real = tr.real_examples(data, fg)
        if not real:
            raise GeneratorError(f"adabldm: category '{data.category}' has no generator-training defect with a mask")
        controlnet, widths, losses, composites = None, None, [], []
        if s.controlnet:
            composites = tr.composite_examples(data, s.composites_per_type, seed)
            widths = control.embedding_widths(comps.vae_scale_factor)
            with seeded_init(seed):  # the embedding's random init
                controlnet = control.build_controlnet(comps.unet, comps.vae_scale_factor, widths)
            bs = tr.BranchSettings(
                resolution=s.resolution,
                context=s.context,
                steps=s.train_steps,
                batch_size=s.batch_size,
                lr=s.lr,
                empty_prompt_probability=s.empty_prompt_probability,
                template=s.prompt_template,
                mixed_precision=s.mixed_precision,
            )
            trainer = tr.BranchTrainer(comps, controlnet, real + composites, data.category, bs, self._device, seed)
            losses = trainer.train()
            control.save_branch(controlnet, out_dir / BRANCH)
        self.train_losses = list(losses)
        self.examples_used = {"real": len(real), "composite": len(composites)}
        manifest = {
            **manifest_header(comps, data.category),
            "kind": data.kind,
            "prompts": {t: tr.build_prompt(s.prompt_template, data.category, t) for t in data.defect_types},
            "controlnet": None
            if controlnet is None
            else {
                "embedding_widths": list(widths or ()),
                "conditioning_channels": 1,
                "in_channels": int(controlnet.config.in_channels),
            },
            "train": {
                "examples": self.examples_used,
                **loss_record(losses),
            },
        }
        atomic_write_text(out_dir / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))
        self._ready(comps, controlnet, data.category, data.kind)

    def _load(self, artifact_dir: Path, meta: dict[str, Any]) -> None:
        from anoaug.device import resolve_device
        from anoaug.generators.diffusion.adabldm import control
        from anoaug.generators.diffusion.sd.artifact import open_artifact

        self._device = resolve_device(self.settings.device)
        manifest, comps = open_artifact(artifact_dir, MANIFEST, self.name, self._load_base)
        controlnet = None
        if manifest.get("controlnet"):
            if not (artifact_dir / BRANCH).is_file():
                raise GeneratorError(f"{self.name} artifact lacks {BRANCH}", artifact_dir)
            widths = tuple(int(w) for w in manifest["controlnet"]["embedding_widths"])
            controlnet = control.load_branch(comps.unet, widths, artifact_dir / BRANCH)
        self._ready(comps, controlnet, str(meta.get("category", "")), str(manifest.get("kind", "object")))

    def _ready(self, comps: Any, controlnet: Any, category: str, kind: str) -> None:
        """Models on the device in inference precision (VAE and branch fp32), frozen, eval mode."""
        import torch

        from anoaug.generators.diffusion.sd.loading import place, place_for_inference
        from anoaug.generators.diffusion.sd.training import resolve_dtype

        self._dtype = resolve_dtype(self.settings.mixed_precision, self._device)
        place_for_inference(comps, self._device, self._dtype)
        if controlnet is not None:
            controlnet.requires_grad_(False)
            controlnet.eval()
            place(controlnet, self._device, torch.float32)
        self._comps, self._controlnet, self._category, self._kind = comps, controlnet, category, kind

    # -- generate -------------------------------------------------------------------------------------

    def prompt_for(self, defect_type: str) -> str:
        """The prompt for `defect_type` ("{obj}, a {obj} with a {def}" by default)."""
        from anoaug.generators.diffusion.adabldm.training import build_prompt

        return build_prompt(self.settings.prompt_template, self._category, defect_type)

    def stage_lengths(self) -> tuple[int, int, int]:
        """(T1, T2, T3) step counts of one run; plain blended sampling is (0, steps, 0)."""
        from anoaug.generators.diffusion.adabldm.multistage import stage_lengths

        n = self.settings.num_inference_steps
        return stage_lengths(self.settings.stages, n) if self.settings.multistage else (0, n, 0)

    def _trimap(self, req: GenerationRequest) -> tuple[np.ndarray, str]:
        """The request's trimap levels, or ones made from its mask and the normal image's foreground."""
        from anoaug.generators.diffusion.adabldm.control import trimap_levels
        from anoaug.masks.synthesis import make_trimap

        mask = req.mask.astype(bool)
        if req.trimap is not None:
            if req.trimap.shape != mask.shape:
                raise GeneratorError(f"request trimap {req.trimap.shape} does not match its mask {mask.shape}")
            return np.maximum(trimap_levels(req.trimap), mask.astype(np.float32)), "request"
        if self._foreground is None:
            from anoaug.masks.foreground import ForegroundCache
            from anoaug.spec import ForegroundSection

            self._foreground = ForegroundCache(ForegroundSection(), self._kind)
        fg = self._foreground.get(req.normal, req.normal_key)
        return trimap_levels(make_trimap(mask, fg | mask)), "foreground"

    def generate(self, batch: Sequence[GenerationRequest]) -> list[GenerationResult]:
        from anoaug.generators.compositing import changed_mask, composite

        out: list[GenerationResult] = []
        for sample in self.sample(batch):
            r: GenerationRequest = sample.pop("request")
            mask = r.mask.astype(bool)
            image = composite(r.normal, sample.pop("pasted"), mask, self.settings.feather)
            s = self.settings
            final = changed_mask(r.normal, image, mask, s.change_threshold, 0, blur=s.change_blur)
            info = {**sample, "input_mask_area": int(mask.sum()), "final_mask_area": int(final.sum())}
            out.append(GenerationResult(image=image, mask=final, info=info))
        return out

    def sample(self, batch: Sequence[GenerationRequest]) -> list[dict[str, Any]]:
        """Per request: the decoded crop pasted into the normal image BEFORE the final pixel composite
        (``pasted``), the request, and the lineage info. `generate` composites these."""
        if self._comps is None:
            raise GeneratorError(f"{self.name}: call fit() or load() before generate()")
        size = self.settings.generation_batch_size
        out: list[dict[str, Any]] = []
        for i in range(0, len(batch), size):
            out.extend(self._sample_chunk(list(batch[i : i + size])))
        return out

    def _sample_chunk(self, reqs: list[GenerationRequest]) -> list[dict[str, Any]]:
        import torch

        from anoaug.generators.diffusion.adabldm import control
        from anoaug.generators.diffusion.adabldm.decoder_adaptation import decode_adapted
        from anoaug.generators.diffusion.adabldm.multistage import multistage_sample
        from anoaug.generators.diffusion.blending import blended_sample, make_scheduler
        from anoaug.generators.diffusion.crops import crop_box, paste_crop, take_crop
        from anoaug.generators.diffusion.sd import conditioning as cond
        from anoaug.generators.diffusion.sd.artifact import sample_info

        c, dev, dtype, cfg = self._comps, self._device, self._dtype, self.settings
        res = cfg.resolution
        boxes, crops, cmasks, ctris, prompts, tri_info = [], [], [], [], [], []
        for r in reqs:
            if r.normal.ndim != 3 or r.normal.shape[2] != 3 or r.mask.shape != r.normal.shape[:2]:
                raise GeneratorError(
                    f"request needs an (H, W, 3) image and an (H, W) mask; got {r.normal.shape} and {r.mask.shape}"
                )
            levels, source = self._trimap(r)
            box = crop_box(r.mask.astype(bool), res, cfg.context)
            img, m = take_crop(r.normal, r.mask.astype(bool), box, res)
            tri = control.crop_trimap(levels, m, box, res)
            boxes.append(box)
            crops.append(img)
            cmasks.append(m)
            ctris.append(tri)
            prompts.append(self.prompt_for(r.defect_type))
            tri_info.append({"source": source, **control.trimap_stats(tri)})
        guidance = cfg.guidance_scale
        use_cfg = guidance > 1.0
        n = 2 if use_cfg else 1
        autocast = torch.autocast(dev.type, dtype=dtype, enabled=dtype != torch.float32)
        lengths = self.stage_lengths()
        with torch.no_grad():
            images = cond.images_to_tensor(crops, dev)
            pix_mask = cond.masks_to_tensor(cmasks, dev)
            trimaps = control.trimaps_to_tensor(ctris, dev).repeat(n, 1, 1, 1)
            known = cond.encode_latents(c.vae, images, sample=False)
            blend_mask = cond.latent_mask(pix_mask, c.vae_scale_factor, dilate=cfg.mask_dilate)
            unet_mask = cond.latent_mask(pix_mask, c.vae_scale_factor) if c.inpainting else None
            masked = cond.encode_latents(c.vae, images * (1 - pix_mask), sample=False) if c.inpainting else None
            with autocast:
                states = cond.encode_text(c.text_encoder, cond.tokenize(c.tokenizer, prompts, dev))
                if use_cfg:
                    neg = cond.tokenize(c.tokenizer, [cfg.negative_prompt] * len(reqs), dev)
                    states = torch.cat([cond.encode_text(c.text_encoder, neg), states])
            states = states.to(dtype)

            def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                x_in = cond.unet_input(
                    x.repeat(n, 1, 1, 1),
                    None if unet_mask is None else unet_mask.repeat(n, 1, 1, 1),
                    None if masked is None else masked.repeat(n, 1, 1, 1),
                )
                with autocast:
                    pred = control.controlled_unet(
                        c.unet, self._controlnet, x_in.to(dtype), t, states, trimaps, cfg.conditioning_scale
                    ).float()
                if not use_cfg:
                    return pred
                uncond, text = pred.chunk(2)
                return uncond + guidance * (text - uncond)

            gens = [torch.Generator(device="cpu").manual_seed(int(r.seed)) for r in reqs]
            scheduler = make_scheduler(cfg.scheduler, c.scheduler_config)
            if cfg.multistage:
                z0 = multistage_sample(
                    denoise,
                    scheduler,
                    known,
                    blend_mask,
                    lengths,
                    decode=lambda z: cond.decode_latents(c.vae, z.float()).float(),
                    encode=lambda p: cond.encode_latents(c.vae, p, sample=False),
                    known_pixels=images,
                    pixel_mask=pix_mask,
                    generator=gens,
                )
            else:
                z0 = blended_sample(denoise, scheduler, known, blend_mask, cfg.num_inference_steps, generator=gens)
        decoded, hists = decode_adapted(
            c.vae, z0, images, pix_mask, cfg.decoder_adaptation, cfg.adaptation_steps, cfg.adaptation_lr, cfg.lambda_con
        )
        out = []
        for r, box, crop, prompt, tri, hist in zip(
            reqs, boxes, cond.tensor_to_images(decoded), prompts, tri_info, hists, strict=True
        ):
            adaptation = {k: v for k, v in hist.items() if k != "total"}
            if hist.get("total"):
                adaptation["first_loss"], adaptation["last_loss"] = hist["total"][0], hist["total"][-1]
            out.append(
                {
                    "request": r,
                    "pasted": paste_crop(r.normal, crop, box),
                    **sample_info(
                        self.name,
                        cfg,
                        prompt,
                        r.seed,
                        box,
                        controlnet=self._controlnet is not None,
                        multistage=cfg.multistage,
                        stages=dict(zip(("T1", "T2", "T3"), lengths, strict=True)),
                        trimap=tri,
                        decoder_adaptation=adaptation,
                    ),
                }
            )
        return out
