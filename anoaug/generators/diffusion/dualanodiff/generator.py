"""The `dualanodiff` generator: DualAnoDiff's two interrelated branches on any Stable Diffusion 1.x/2.x base.

fit: on one frozen base model, learn rare tokens for the object and each defect type, two branch LoRAs
(whole image I, defect part I x M on black; `branches`), the shared attention between them
(``shared_attention``; `shared_attention`) and the background compensation (``background_compensation``;
`background`); see `training`. generate: both branches are sampled together in one batch; the final mask is
read from the generated part (`part_mask`) and must lie on the object's foreground, else the sample is
drawn again with a seed derived from the request's (at most ``max_attempts`` times; then the strongest part
pixels on the foreground are used and ``fallback`` is recorded). ``mode``:

* ``blended`` (default): the defect is drawn on the request's normal image inside its mask (crop around the
  mask, blended sampling of both branches: outside the mask the whole branch keeps the normal image and the
  part branch black), then composited so the normal image is exact outside the final mask;
* ``whole``: the whole image is generated (as the method does; background compensation keeps the normal
  image's background), at ``resolution`` and resized back. ``whole_part``: the part branch draws inside the
  request's mask with black known around it (``request``, default), or anywhere (``free``, the paper: its black
  background must then be learned by its LoRA alone, which a short CPU training does not achieve).

Each sample records the mode, both prompts and the part image (``part.png`` in the shard sample).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

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

MANIFEST = "dual_manifest.json"
EMBEDDINGS = "embeddings.safetensors"
BRANCHES = "branches.safetensors"
LAYERS = "dual_layers.safetensors"
TEXT_LORA = "text_lora.safetensors"


@register
class DualAnoDiffGenerator(Generator):
    """DualAnoDiff: whole-image and part branches with shared attention and background compensation."""

    name = "dualanodiff"
    learned = True
    renamed_settings = DIFFUSERS_NAMES

    class Settings(SDFamilySettings):
        """dualanodiff settings (the shared ones are documented in `SDFamilySettings`)."""

        mode: Literal["blended", "whole"] = Field(
            "blended", description="blended: draw inside the request mask on the normal image | whole: whole image"
        )
        shared_attention: Literal["off", "position", "joint"] = Field(
            "position", description="attention between the branches: off | position (per pixel) | joint (all tokens)"
        )
        background_compensation: bool = Field(True, description="fuse the normal background into the whole branch")
        whole_part: Literal["request", "free"] = Field(
            "request",
            description="whole mode: the part branch draws inside the request's mask, black known elsewhere "
            "(request) | anywhere, its black background learned by its LoRA alone (free, the paper)",
        )
        context: float = Field(2.0, gt=0, description="blended: crop side = context x mask bounding box")
        batch_size: int = Field(1, ge=1, description="training batch size (samples; two branches each)")
        lr: float = Field(1e-4, gt=0, description="learning rate of the LoRAs, shared attention and fusion")
        ti_lr: float = Field(5e-3, gt=0, description="learning rate of the object and defect tokens")
        lora_rank: int = Field(4, ge=0, description="rank of each branch's attention LoRA; 0 = no LoRA")
        lora_alpha: float | None = Field(None, description="LoRA alpha; default: = rank")
        text_encoder_lora_rank: int = Field(
            0, ge=0, description="rank of a LoRA on the text encoder's attention, trained with the branches; 0 = off"
        )
        textual_inversion: bool = Field(True, description="learn rare tokens for {obj} and {defect}")
        init_word: str = Field("defect", description="initial value of the defect tokens")
        whole_prompt: str = Field("a {obj} with {defect}", description="whole-image branch prompt")
        part_prompt: str = Field("{defect}", description="part branch prompt")
        guidance_scale: float = Field(2.5, description="classifier-free guidance scale; <= 1 disables guidance")
        generation_batch_size: int = Field(4, ge=1, description="requests sampled together (two branches each)")
        mask_dilate: int = Field(1, ge=0, description="blended: latent cells added around the mask for blending")
        change_threshold: float = Field(
            12.0, ge=0, description="0-255: a pixel of the whole image counts as changed above this difference"
        )
        part_threshold: float = Field(24.0, ge=0, le=255, description="0-255: a part pixel above this is defect")
        min_part_area: int = Field(4, ge=1, description="px: smaller mask components are dropped; minimum mask")
        min_on_foreground: float = Field(0.9, ge=0, le=1, description="share of the mask that must be on the object")
        mask_source: Literal["part", "part+attention"] = Field(
            "part", description="part: threshold the part image | part+attention: also the defect token's attention"
        )
        attention_threshold: float = Field(
            0.3, ge=0, le=1, description="part+attention: keep where the averaged map is >= this x its maximum"
        )
        max_attempts: int = Field(3, ge=1, description="samples drawn per request until the mask is accepted")
        max_normals: int = Field(8, ge=1, description="normal images whose backgrounds train the compensation")
        gradient_checkpointing: BoolOrAuto = Field("auto", description="auto (on for cuda) | true | false")

    settings: Settings

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        super().__init__(params)
        self._comps: Any = None
        self._model: Any = None
        self._prompts: dict[str, tuple[str, str]] = {}
        self._learned_tokens: set[str] = set()
        self._category = ""
        self._kind = "object"
        self._device: Any = None
        self._dtype: Any = None
        self.train_losses: list[float] = []

    # -- fit / load -----------------------------------------------------------------------------------

    def _train_settings(self) -> Any:
        from anoaug.generators.diffusion.dualanodiff.training import DualTrainSettings

        c = self.settings
        return DualTrainSettings(
            resolution=c.resolution,
            steps=c.train_steps,
            batch_size=c.batch_size,
            lr=c.lr,
            ti_lr=c.ti_lr,
            lora_rank=c.lora_rank,
            lora_alpha=c.lora_alpha,
            text_encoder_lora_rank=c.text_encoder_lora_rank,
            textual_inversion=c.textual_inversion,
            init_word=c.init_word,
            shared_attention=c.shared_attention,
            background=c.background_compensation,
            whole=c.mode == "whole",
            whole_part=c.whole_part,
            context=c.context,
            whole_prompt=c.whole_prompt,
            part_prompt=c.part_prompt,
            mixed_precision=c.mixed_precision,
            gradient_checkpointing=c.gradient_checkpointing,
            max_normals=c.max_normals,
        )

    def make_trainer(self, data: FitData, seed: int = 0) -> Any:
        """Load the base model and build the trainer for `data` (used by `_fit`; handy for inspection)."""
        from anoaug.generators.diffusion.dualanodiff.training import DualTrainer
        from anoaug.generators.diffusion.sd.loading import load_components
        from anoaug.generators.diffusion.sd.training import make_trainer

        self._device, trainer = make_trainer(
            self.settings.device,
            lambda: load_components(self.settings.model),
            seed,
            lambda comps, dev: DualTrainer(comps, data, self._train_settings(), dev, seed=seed),
        )
        return trainer

    def _fit(self, data: FitData, out_dir: Path, seed: int) -> None:
        from safetensors.torch import save_file

        from anoaug.atomic import atomic_write_text
        from anoaug.generators.diffusion.dualanodiff import branches as br
        from anoaug.generators.diffusion.dualanodiff import shared_attention as sa
        from anoaug.generators.diffusion.dualanodiff.training import object_key
        from anoaug.generators.diffusion.sd import textual_inversion as ti
        from anoaug.generators.diffusion.sd.artifact import loss_record, manifest_header

        trainer = self.make_trainer(data, seed)
        self.train_losses = list(trainer.train())
        trainer.finish()
        comps = trainer.comps
        for name in (EMBEDDINGS, BRANCHES, LAYERS, TEXT_LORA):
            (out_dir / name).unlink(missing_ok=True)
        if trainer.bank is not None:
            ti.save_embeddings(comps.text_encoder, trainer.bank, out_dir / EMBEDDINGS)
        if trainer.s.lora_rank > 0:
            br.save_branches(comps.unet, out_dir / BRANCHES, trainer.s.lora_rank, trainer.s.lora_alpha)
        if trainer.s.text_encoder_lora_rank > 0:
            br.save_text_adapter(
                comps.text_encoder, out_dir / TEXT_LORA, trainer.s.text_encoder_lora_rank, trainer.s.lora_alpha
            )
        layers = sa.processor_state_dict(comps.unet)
        if layers:
            save_file(layers, str(out_dir / LAYERS), metadata={"format": "anoaug-dual-layers"})
        manifest = {
            **manifest_header(comps, data.category),
            "kind": data.kind,
            "object_key": object_key(data.category) if trainer.bank is not None else None,
            "prompts": trainer.prompts,
            "learned": {
                "textual_inversion": trainer.bank is not None,
                "lora_rank": trainer.s.lora_rank,
                "text_encoder_lora_rank": trainer.s.text_encoder_lora_rank,
                "shared_attention": trainer.s.shared_attention,
                "background_compensation": trainer.s.background,
                "mode": self.settings.mode,
                "whole_part": self.settings.whole_part,
            },
            "train": loss_record(self.train_losses),
        }
        atomic_write_text(out_dir / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))
        self._ready(comps, trainer.model, trainer.prompts, data.category, data.kind, trainer.dtype)

    def _load(self, artifact_dir: Path, meta: dict[str, Any]) -> None:
        from safetensors.torch import load_file

        from anoaug.device import resolve_device
        from anoaug.generators.diffusion.dualanodiff import branches as br
        from anoaug.generators.diffusion.dualanodiff import shared_attention as sa
        from anoaug.generators.diffusion.dualanodiff.training import DualUNet
        from anoaug.generators.diffusion.sd import textual_inversion as ti
        from anoaug.generators.diffusion.sd.artifact import open_artifact
        from anoaug.generators.diffusion.sd.loading import load_components
        from anoaug.generators.diffusion.sd.training import resolve_dtype

        manifest, comps = open_artifact(artifact_dir, MANIFEST, self.name, lambda: load_components(self.settings.model))
        if (artifact_dir / EMBEDDINGS).is_file():
            ti.load_embeddings(comps.tokenizer, comps.text_encoder, artifact_dir / EMBEDDINGS)
        if (artifact_dir / BRANCHES).is_file():
            br.load_branches(comps.unet, artifact_dir / BRANCHES)
        if (artifact_dir / TEXT_LORA).is_file():
            br.load_text_adapter(comps.text_encoder, artifact_dir / TEXT_LORA)
        learned = manifest.get("learned", {})
        model = DualUNet(comps, learned.get("shared_attention", "off"), bool(learned.get("background_compensation")))
        if (artifact_dir / LAYERS).is_file():
            missing = sa.load_processor_state_dict(comps.unet, load_file(str(artifact_dir / LAYERS)))
            if missing:
                raise GeneratorError(f"shared-attention / fusion weights missing: {missing[:2]}", artifact_dir / LAYERS)
        self._device = resolve_device(self.settings.device)
        dtype = resolve_dtype(self.settings.mixed_precision, self._device)
        prompts = {t: (p[0], p[1]) for t, p in manifest.get("prompts", {}).items()}
        self._ready(
            comps, model, prompts, str(manifest.get("category", "")), str(manifest.get("kind", "object")), dtype
        )

    def _ready(self, comps: Any, model: Any, prompts: Any, category: str, kind: str, dtype: Any) -> None:
        """Models on the device in inference precision (VAE fp32), frozen, eval mode."""
        from anoaug.generators.diffusion.sd.loading import place_for_inference

        place_for_inference(comps, self._device, dtype)
        self._comps, self._model, self._category, self._kind, self._dtype = comps, model, category, kind, dtype
        self._prompts = {t: (p[0], p[1]) for t, p in dict(prompts).items()}
        self._learned_tokens = {tok for p in self._prompts.values() for tok in p[1].split() if tok.startswith("<")}

    # -- generate -------------------------------------------------------------------------------------

    def prompts_for(self, defect_type: str) -> tuple[str, str]:
        """(whole-image prompt, part prompt) of `defect_type`."""
        if defect_type not in self._prompts:
            raise GeneratorError(
                f"no learned tokens for defect type '{defect_type}'; trained types: {', '.join(sorted(self._prompts))}"
            )
        return self._prompts[defect_type]

    def generate(self, batch: Sequence[GenerationRequest]) -> list[GenerationResult]:
        if self._comps is None:
            raise GeneratorError(f"{self.name}: call fit() or load() before generate()")
        size = self.settings.generation_batch_size
        out: list[GenerationResult] = []
        for i in range(0, len(batch), size):
            out.extend(self._generate_chunk(list(batch[i : i + size])))
        return out

    def _foreground(self, r: GenerationRequest) -> np.ndarray:
        """Where the object is on the request's normal image (its trimap, else anoaug's foreground)."""
        from anoaug.generators.diffusion.dualanodiff.background import object_foreground

        if r.trimap is not None:
            return r.trimap > 0
        return object_foreground(r.normal, self._kind)

    def _generate_chunk(self, reqs: list[GenerationRequest]) -> list[GenerationResult]:
        from anoaug.generators.diffusion.dualanodiff import part_mask as pm

        cfg = self.settings
        for r in reqs:
            if r.normal.ndim != 3 or r.normal.shape[2] != 3 or r.mask.shape != r.normal.shape[:2]:
                raise GeneratorError(
                    f"request needs an (H, W, 3) image and an (H, W) mask; got {r.normal.shape} and {r.mask.shape}"
                )
        fgs = [self._foreground(r) for r in reqs]
        # where the mask may lie: the object (whole), the request mask on the object (blended)
        regions = [
            fg if cfg.mode == "whole" else (r.mask.astype(bool) & r.allowed) for r, fg in zip(reqs, fgs, strict=True)
        ]
        results: list[GenerationResult | None] = [None] * len(reqs)
        pending = list(range(len(reqs)))
        for attempt in range(cfg.max_attempts):
            drawn = self._sample([reqs[i] for i in pending], [fgs[i] for i in pending], attempt)
            still = []
            for i, d in zip(pending, drawn, strict=True):
                ok = pm.accept(d["mask"], regions[i], cfg.min_part_area, cfg.min_on_foreground)
                if ok or attempt == cfg.max_attempts - 1:
                    results[i] = self._finish(reqs[i], d, regions[i], attempt, fallback=not ok)
                else:
                    still.append(i)
            pending = still
            if not pending:
                break
        return [r for r in results if r is not None]

    def _sample(self, reqs: list[GenerationRequest], fgs: list[np.ndarray], attempt: int) -> list[dict[str, Any]]:
        """Both branches of every request sampled in one batch; per request the views, part and part mask."""
        import torch

        from anoaug.generators.diffusion.blending import blended_sample, make_scheduler
        from anoaug.generators.diffusion.dualanodiff import branches as br
        from anoaug.generators.diffusion.dualanodiff import part_mask as pm
        from anoaug.generators.diffusion.dualanodiff import shared_attention as sa
        from anoaug.generators.diffusion.dualanodiff.background import remove_object
        from anoaug.generators.diffusion.dualanodiff.frame import Frame
        from anoaug.generators.diffusion.sd import conditioning as cond

        c, dev, dtype, cfg, model = self._comps, self._device, self._dtype, self.settings, self._model
        whole = cfg.mode == "whole"
        frames = [Frame.make(r.mask, cfg.resolution, whole, cfg.context) for r in reqs]
        views = [f.image(r.normal) for f, r in zip(frames, reqs, strict=True)]
        request_masks = [f.mask(r.mask) for f, r in zip(frames, reqs, strict=True)]
        everywhere = np.ones((cfg.resolution,) * 2, bool)
        # where each branch draws: the whole branch everywhere (whole) or in the request mask (blended); the part
        # branch in the request mask unless whole mode lets it draw anywhere (free)
        vmasks = [everywhere if whole else m for m in request_masks]
        part_free = whole and cfg.whole_part == "free"
        pmasks = [everywhere if part_free else m for m in request_masks]
        prompts = [self.prompts_for(r.defect_type) for r in reqs]
        seeds = [_attempt_seed(int(r.seed), attempt) for r in reqs]
        guidance = cfg.guidance_scale
        use_cfg = guidance > 1.0
        n = 2 if use_cfg else 1
        autocast = torch.autocast(dev.type, dtype=dtype, enabled=dtype != torch.float32)
        with torch.no_grad():
            images = cond.images_to_tensor(views, dev)
            masks = cond.masks_to_tensor(vmasks, dev)
            part_masks = cond.masks_to_tensor(pmasks, dev)
            black = torch.full_like(images, -1.0)
            known = br.interleave(
                cond.encode_latents(c.vae, images, sample=False), cond.encode_latents(c.vae, black, sample=False)
            )
            blend = br.interleave(
                cond.latent_mask(masks, c.vae_scale_factor, dilate=0 if whole else cfg.mask_dilate),
                cond.latent_mask(part_masks, c.vae_scale_factor, dilate=0 if part_free else cfg.mask_dilate),
            )
            lat_mask = masked = None
            if c.inpainting:
                lat_mask = br.interleave(
                    cond.latent_mask(masks, c.vae_scale_factor), cond.latent_mask(part_masks, c.vae_scale_factor)
                )
                # as in training: the known part of each branch, the generated region set to 0
                masked = br.interleave(
                    cond.encode_latents(c.vae, images * (1 - masks), sample=False),
                    cond.encode_latents(c.vae, black * (1 - part_masks), sample=False),
                )
            with autocast:
                text = cond.tokenize(
                    c.tokenizer, br.interleave_lists([p[0] for p in prompts], [p[1] for p in prompts]), dev
                )
                states = cond.encode_text(c.text_encoder, text)
                if use_cfg:
                    neg = cond.tokenize(c.tokenizer, [cfg.negative_prompt] * (2 * len(reqs)), dev)
                    states = torch.cat([cond.encode_text(c.text_encoder, neg), states])
                bg_states = None
                if model.background:
                    bg_states = cond.encode_text(c.text_encoder, cond.tokenize(c.tokenizer, [""] * len(reqs), dev))
            states = states.to(dtype)
            scheduler = make_scheduler(cfg.scheduler, c.scheduler_config)
            bg_lat = bg_noise = None
            if model.background:
                bgs = [f.image(remove_object(r.normal, fg)) for f, r, fg in zip(frames, reqs, fgs, strict=True)]
                bg_lat = cond.encode_latents(c.vae, cond.images_to_tensor(bgs, dev), sample=False)
                bg_gens = [torch.Generator(device="cpu").manual_seed(_attempt_seed(s, 1 << 20)) for s in seeds]
                bg_noise = torch.stack([torch.randn(bg_lat.shape[1:], generator=g) for g in bg_gens]).to(
                    dev, bg_lat.dtype
                )

            token = self._token_rows(prompts, n) if cfg.mask_source == "part+attention" else None
            maps: list[torch.Tensor] = []
            attention: list[torch.Tensor] = []  # per step: (rows, r, r) map averaged over the layers

            # what does not change with the step: the guidance copies of the inpainting extras, the background's
            # inpainting extras (all known) and text states
            mask_rep = None if lat_mask is None else lat_mask.repeat(n, 1, 1, 1)
            masked_rep = None if masked is None else masked.repeat(n, 1, 1, 1)
            bg_known = None
            if bg_lat is not None and c.inpainting:
                bg_known = torch.cat([torch.zeros_like(bg_lat[:, :1]), bg_lat], dim=1)
            bg_text = None if bg_states is None else bg_states.to(dtype)

            def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                x_in = model.extras(x.repeat(n, 1, 1, 1), mask_rep, masked_rep)
                bg = None
                if bg_lat is not None:
                    noisy_bg = scheduler.add_noise(bg_lat, bg_noise, t.reshape(1).expand(bg_lat.shape[0]))
                    if bg_known is not None:
                        noisy_bg = torch.cat([noisy_bg, bg_known], dim=1)
                    bg = (noisy_bg.to(dtype), t, bg_text)
                with autocast:
                    pred = model(x_in.to(dtype), t, states, bg, token, maps).float()
                if maps:
                    attention.append(sa.average_map(maps, cfg.resolution).cpu())
                    maps.clear()
                if not use_cfg:
                    return pred
                uncond, cond_pred = pred.chunk(2)
                return uncond + guidance * (cond_pred - uncond)

            gens = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]
            rows = [g for g in gens for _ in range(2)]  # both branches of a request draw from its generator
            x0 = blended_sample(denoise, scheduler, known, blend, cfg.num_inference_steps, generator=rows)
            decoded = cond.tensor_to_images(cond.decode_latents(c.vae, x0.float()))
            black_ref = cond.tensor_to_images(cond.decode_latents(c.vae, known[1:2].float()))[0]
        att = None
        if attention:  # the conditional rows of the last (guided) block: whole and part maps, averaged
            rows = torch.stack(attention).mean(0)[(n - 1) * 2 * len(reqs) :]
            att = ((rows[0::2] + rows[1::2]) / 2).numpy()
        out = []
        for k, (f, r) in enumerate(zip(frames, reqs, strict=True)):
            whole_view, part_view = decoded[2 * k], decoded[2 * k + 1]
            view_mask = pm.read_part_mask(part_view, cfg.part_threshold, 1, black_ref) & pmasks[k]
            if att is not None:
                view_mask &= att[k] >= cfg.attention_threshold * max(float(att[k].max()), 1e-12)
            full_mask = f.paste_mask(view_mask)
            if not part_free:  # the part branch drew inside the request mask; resizing back may add a rim
                full_mask &= r.mask.astype(bool)
            full_mask = pm.read_part_mask(full_mask[..., None].astype(np.uint8) * 255, 127, cfg.min_part_area)
            out.append(
                {
                    "frame": f,
                    "whole": f.paste(r.normal, whole_view),
                    "part": f.paste(np.zeros_like(r.normal), part_view),
                    "mask": full_mask,
                    "prompts": prompts[k],
                    "seed": seeds[k],
                }
            )
        return out

    def _token_rows(self, prompts: list[tuple[str, str]], copies: int) -> Any:
        """Per dual-batch row (guidance copies x (whole, part) per request) the position of the defect token
        in its prompt: the learned token when there is one, else the prompt's last word."""
        import torch

        tok = self._comps.tokenizer
        out = []
        for whole, part in prompts:
            for text in (whole, part):
                ids = tok(text).input_ids  # with the start token, as the text encoder sees it
                learned = [i for i, x in enumerate(ids) if tok.convert_ids_to_tokens(x) in self._learned_tokens]
                out.append(learned[-1] if learned else max(1, len(ids) - 2))
        return torch.tensor(out * copies)

    def _finish(
        self, r: GenerationRequest, d: dict[str, Any], region: np.ndarray, attempt: int, fallback: bool
    ) -> GenerationResult:
        """The result of one accepted (or last) draw: composite (blended), final mask, lineage."""
        from anoaug.generators.compositing import changed_mask, composite, dilate_mask
        from anoaug.generators.diffusion.dualanodiff import part_mask as pm
        from anoaug.generators.diffusion.sd.artifact import sample_info

        cfg = self.settings
        final = d["mask"] & region
        if fallback or not final.any():
            # no accepted draw: blended draws in the whole request region, whole takes the strongest part pixels
            fallback = True
            if cfg.mode == "blended":
                final = region.copy() if region.any() else r.mask.astype(bool)
            else:
                area = max(cfg.min_part_area, int(r.mask.sum()))
                final = pm.strongest_pixels(d["part"], region if region.any() else np.ones_like(region), area)
        if cfg.mode == "blended":
            image = composite(r.normal, d["whole"], dilate_mask(final, cfg.feather) & r.mask.astype(bool), cfg.feather)
            changed = changed_mask(
                r.normal, d["whole"], r.mask.astype(bool), cfg.change_threshold, 0, blur=cfg.change_blur
            )
        else:
            image = d["whole"]
            changed = changed_mask(
                r.normal, image, np.ones(final.shape, bool), cfg.change_threshold, 0, blur=cfg.change_blur
            )
        info = sample_info(
            self.name,
            cfg,
            d["prompts"][0],
            r.seed,
            d["frame"].box,
            mode=cfg.mode,
            part_prompt=d["prompts"][1],
            sample_seed=int(d["seed"]),
            attempts=attempt + 1,
            fallback=bool(fallback),
            part_mask_area=int(d["mask"].sum()),
            final_mask_area=int(final.sum()),
            on_foreground=round(pm.on_foreground_share(d["mask"], region), 4),
            mask_agreement_iou=round(pm.iou(d["mask"], changed), 4),
            shared_attention=self._model.shared,
            background_compensation=bool(self._model.background),
            mask_source=cfg.mask_source,
        )
        return GenerationResult(image=image, mask=final, info=info, extras={"part": d["part"]})


def _attempt_seed(seed: int, attempt: int) -> int:
    """The seed of draw `attempt` of a request (attempt 0 = the request's own seed)."""
    if attempt == 0:
        return seed
    return int(np.random.SeedSequence([seed, attempt]).generate_state(1, np.uint64)[0] & ((1 << 63) - 1))
