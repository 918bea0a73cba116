"""`pretrain_base`: train a small Stable Diffusion (VAE, CLIP text encoder, UNet) on normal training images.

Two phases, each trained for its planned steps (or stopped by its share of the optional time cap): (1) the
VAE on random crops; (2) the UNet and the text encoder on the frozen VAE's latents, with an EMA of the UNet.
A checkpoint (``<out>/.pretrain/state.pt``: weights, optimisers, LR schedules, EMA, both RNG states, step counts,
seconds spent) is written every ``checkpoint_every_s`` seconds (and ``checkpoint_every_steps`` steps) and
at each phase end; the same call after a crash or kill resumes from it, and an uninterrupted run and an
interrupted-and-resumed one give the same bytes (CPU). The time cap counts time already spent; steps and
the cap may be raised between runs, other settings must match (a VAE phase cut short by the cap cannot
continue once the UNet phase has started: a rerun that allows it more time starts over). Every random choice comes
from ``settings.seed``. The result is saved in the diffusers Stable Diffusion layout with
``model_card.json`` (see `card.py`).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from anoaug import budget
from anoaug.atomic import atomic_path
from anoaug.generators.diffusion.pretrain import card as card_mod
from anoaug.generators.diffusion.pretrain import text as text_mod
from anoaug.generators.diffusion.pretrain import unet as unet_mod
from anoaug.generators.diffusion.pretrain import vae as vae_mod
from anoaug.generators.diffusion.pretrain.data import (
    NormalSet,
    PretrainError,
    Source,
    collect_normals,
    crop_batch,
    eval_crops,
)
from anoaug.generators.diffusion.pretrain.settings import PretrainSettings
from anoaug.generators.diffusion.sd import conditioning as cond

log = logging.getLogger("anoaug.pretrain")

STATE_DIR = ".pretrain"  # checkpoint and tokenizer work files; not part of the diffusers layout
CHECKPOINT = "state.pt"
EVAL_BATCH = 16


@dataclass
class PretrainProgress:
    """One progress report (after every optimisation step)."""

    phase: str  # "vae" or "unet"
    step: int  # steps done in this phase, earlier runs included
    total: int  # the phase's step limit
    loss: float
    elapsed_s: float  # seconds spent in this phase, earlier runs included
    eta_s: float  # seconds until the phase ends (step limit or its time budget, whichever is first)
    steps_per_s: float


Progress = Callable[[PretrainProgress], None]


def _log_progress(p: PretrainProgress) -> None:
    if p.step % 50 == 0 or p.step == p.total:
        log.info("%s step %d/%d loss %.4f  %.2f steps/s  ETA %.0fs", p.phase, p.step, p.total, p.loss,
                 p.steps_per_s, p.eta_s)  # fmt: skip


class BaseModelTrainer:
    """The models, optimisers and training state of one pretraining run (see the module docstring)."""

    def __init__(self, settings: PretrainSettings, normals: NormalSet, words: list[str], work_dir: Path) -> None:
        import torch
        from diffusers.optimization import get_scheduler

        from anoaug.device import resolve_device

        s = self.s = settings
        self.normals = normals
        self.words = words
        self.device = resolve_device(s.device)
        use_bf16 = s.mixed_precision == "bf16" or (s.mixed_precision == "auto" and self.device.type == "cuda")
        self.dtype = torch.bfloat16 if use_bf16 else torch.float32
        self.tokenizer = text_mod.build_tokenizer(work_dir / "tokenizer", words)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s.seed)
            self.vae = vae_mod.build_vae(s.vae_channels, s.vae_layers_per_block, s.latent_channels, s.resolution)
            self.text_encoder = text_mod.build_text_encoder(self.tokenizer, s.text_width, s.text_layers, s.text_heads)
            self.unet = unet_mod.build_unet(
                s.unet_kind, s.unet_channels, s.unet_layers_per_block, s.latent_channels, s.text_width,
                s.attention_head_dim, s.resolution // s.vae_factor,
            )  # fmt: skip
        for m in (self.vae, self.text_encoder, self.unet):
            m.to(self.device)
        self.noise = unet_mod.noise_scheduler()
        self.rng = np.random.default_rng(np.random.SeedSequence([s.seed, 1]))  # crops, masks, prompts
        self.gen = torch.Generator(device="cpu").manual_seed(s.seed)  # posterior samples, noise, timesteps
        self.vae_opt = torch.optim.AdamW(self.vae.parameters(), lr=s.vae_lr, weight_decay=0.0)
        self.vae_sched = get_scheduler("constant_with_warmup", self.vae_opt, num_warmup_steps=s.warmup_steps)
        self.unet_opt = torch.optim.AdamW(
            [
                {"params": list(self.unet.parameters()), "lr": s.unet_lr, "weight_decay": 1e-2},
                {"params": list(self.text_encoder.parameters()), "lr": s.text_lr, "weight_decay": 0.0},
            ]
        )
        self.unet_sched = get_scheduler("constant_with_warmup", self.unet_opt, num_warmup_steps=s.warmup_steps)
        self.ema = self._new_ema(self.unet, s.ema_decay)
        self.vae_ema = self._new_ema(self.vae, s.vae_ema_decay) if s.vae_ema_decay > 0 else None
        held = normals.held_out or normals.train
        # Native-scale crops (no zoom): resized-down crops are smoother and would flatter the PSNR.
        self.eval_images, self.eval_categories = eval_crops(held, s.eval_crops, s.resolution, s.seed, 0.0)
        self.state: dict[str, Any] = {
            "phase": "vae",
            "steps": {"vae": 0, "unet": 0},
            "elapsed_s": {"vae": 0.0, "unet": 0.0},
            "stopped_by": {"vae": None, "unet": None},
            "losses": {"vae": [], "unet": []},
            "scaling_factor": None,
            "vae_psnr_init_db": None,
            "unet_heldout_loss_init": None,
        }
        self.resumed_from: dict[str, int] | None = None

    @staticmethod
    def _new_ema(model: Any, decay: float) -> Any:
        from diffusers.training_utils import EMAModel

        return EMAModel(model.parameters(), decay=decay, use_ema_warmup=True, inv_gamma=1.0, power=2 / 3)

    # -- checkpoint ---------------------------------------------------------------------------------------

    def signature(self) -> dict[str, Any]:
        return {"settings": self.s.signature(), "data": self.normals.fingerprint(), "words": self.words}

    def save(self, path: Path) -> None:
        """Write the whole training state atomically."""
        import torch

        blob = {
            "signature": self.signature(),
            "state": self.state,
            "vae": self.vae.state_dict(),
            "text_encoder": self.text_encoder.state_dict(),
            "unet": self.unet.state_dict(),
            "vae_opt": self.vae_opt.state_dict(),
            "vae_sched": self.vae_sched.state_dict(),
            "unet_opt": self.unet_opt.state_dict(),
            "unet_sched": self.unet_sched.state_dict(),
            "ema": self.ema.state_dict(),
            "vae_ema": None if self.vae_ema is None else self.vae_ema.state_dict(),
            "rng": self.rng.bit_generator.state,
            "gen": self.gen.get_state(),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            torch.save(blob, tmp)

    def load(self, path: Path) -> None:
        """Restore a checkpoint written by `save` with the same signature; PretrainError otherwise."""
        import torch

        try:
            blob = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # noqa: BLE001  (pickle / zip errors vary)
            raise PretrainError(f"cannot read the pretraining checkpoint ({exc}); use --overwrite", path) from None
        if blob.get("signature") != self.signature():
            old, new = blob.get("signature") or {}, self.signature()
            what = [k for k in new if old.get(k) != new[k]]
            diff = ""
            if "settings" in what:
                o, n = old.get("settings", {}), new["settings"]
                diff = ": " + ", ".join(f"{k} {o.get(k)!r} -> {n[k]!r}" for k in n if o.get(k) != n[k])
            raise PretrainError(
                f"the output folder holds a pretraining run with different {' and '.join(what)}{diff}; "
                "use another --out or --overwrite to start over",
                path,
            )
        self.state = blob["state"]
        if self.state["scaling_factor"] is not None:
            self.vae.register_to_config(scaling_factor=self.state["scaling_factor"])
        self.vae.load_state_dict(blob["vae"])
        self.text_encoder.load_state_dict(blob["text_encoder"])
        self.unet.load_state_dict(blob["unet"])
        self.vae_opt.load_state_dict(blob["vae_opt"])
        self.vae_sched.load_state_dict(blob["vae_sched"])
        self.unet_opt.load_state_dict(blob["unet_opt"])
        self.unet_sched.load_state_dict(blob["unet_sched"])
        self.ema.load_state_dict(blob["ema"])
        self.ema.to(self.device)
        if self.vae_ema is not None:
            self.vae_ema.load_state_dict(blob["vae_ema"])
            self.vae_ema.to(self.device)
        self.rng.bit_generator.state = blob["rng"]
        self.gen.set_state(blob["gen"])
        self.resumed_from = dict(self.state["steps"])

    # -- tensors ------------------------------------------------------------------------------------------

    def _images(self, crops: np.ndarray) -> Any:
        return cond.images_to_tensor(list(crops), self.device)

    def _states(self, prompts: list[str]) -> Any:
        return cond.encode_text(self.text_encoder, cond.tokenize(self.tokenizer, prompts, self.device))

    def _inpaint_inputs(self, images: Any, masks: np.ndarray | None) -> tuple[Any, Any]:
        """Pixel masks (B, 1, H, W) and masked-image latents, or (None, None) for a text-to-image UNet."""
        import torch

        if masks is None or self.s.unet_kind != "inpainting":
            return None, None
        pix = cond.masks_to_tensor(list(masks), self.device)
        with torch.no_grad():
            masked = cond.encode_latents(self.vae, images * (1 - pix), sample=False)
        return pix, masked

    # -- phases -------------------------------------------------------------------------------------------

    def _run_phase(self, phase: str, limit: int, budget_s: float, step_fn: Callable[[], float],
                   checkpoint: Path, progress: Progress | None) -> None:  # fmt: skip
        """Call `step_fn` until the phase's step limit or time budget is reached, checkpointing as set."""
        st = self.state
        start_step, start_elapsed = st["steps"][phase], st["elapsed_s"][phase]
        t0 = last_ckpt = time.perf_counter()
        stopped_by = "steps"
        while st["steps"][phase] < limit:
            if start_elapsed + (time.perf_counter() - t0) >= budget_s:
                stopped_by = "time"
                break
            loss = step_fn()
            st["steps"][phase] += 1
            st["losses"][phase].append(loss)
            now = time.perf_counter()
            st["elapsed_s"][phase] = start_elapsed + (now - t0)
            step = st["steps"][phase]
            every = self.s.checkpoint_every_steps
            if (every and step % every == 0) or now - last_ckpt >= self.s.checkpoint_every_s:
                self.save(checkpoint)
                last_ckpt = time.perf_counter()
            if progress is not None:
                rate = (step - start_step) / max(now - t0, 1e-9)
                eta = min((limit - step) / max(rate, 1e-9), max(0.0, budget_s - st["elapsed_s"][phase]))
                progress(PretrainProgress(phase, step, limit, loss, st["elapsed_s"][phase], eta, rate))
        st["elapsed_s"][phase] = start_elapsed + (time.perf_counter() - t0)
        st["stopped_by"][phase] = stopped_by

    def vae_step(self) -> float:
        import torch

        s = self.s
        self.vae.train()
        crops, _ = crop_batch(self.normals.train, s.vae_batch_size, s.resolution, self.rng, s.vae_zoom)
        loss, _ = vae_mod.vae_loss(
            self.vae, self._images(crops), self.gen, s.ssim_weight, s.kl_weight, l2_weight=s.vae_l2_weight
        )
        if not torch.isfinite(loss):
            raise PretrainError(f"VAE loss is {loss.item()} at step {self.state['steps']['vae']} (lower vae_lr?)")
        self.vae_opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.vae.parameters(), 1.0)
        self.vae_opt.step()
        self.vae_sched.step()
        if self.vae_ema is not None:
            self.vae_ema.step(self.vae.parameters())
        return float(loss.detach())

    def unet_step(self) -> float:
        import torch

        s = self.s
        self.unet.train()
        self.text_encoder.train()
        crops, cats = crop_batch(self.normals.train, s.unet_batch_size, s.resolution, self.rng, s.zoom_prob)
        masks = None
        if s.unet_kind == "inpainting":
            masks = unet_mod.random_masks(len(crops), s.resolution, self.rng, s.full_mask_prob)
        prompts = [text_mod.category_prompt(c, self.rng, s.prompt_drop_prob) for c in cats]
        images = self._images(crops)
        with torch.no_grad():
            latents = cond.encode_latents(self.vae, images, sample=True, generator=self.gen)
        pix, masked = self._inpaint_inputs(images, masks)
        states = self._states(prompts)
        loss = unet_mod.unet_loss(self.unet, states, latents, pix, masked, self.noise, self.gen, s.vae_factor,
                                  self.dtype)  # fmt: skip
        if not torch.isfinite(loss):
            raise PretrainError(f"UNet loss is {loss.item()} at step {self.state['steps']['unet']} (lower unet_lr?)")
        self.unet_opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([*self.unet.parameters(), *self.text_encoder.parameters()], 1.0)
        self.unet_opt.step()
        self.unet_sched.step()
        self.ema.step(self.unet.parameters())
        return float(loss.detach())

    def start_unet_phase(self) -> None:
        """End of the VAE phase: put its EMA weights in place, freeze it, fix the latent scale, measure the
        untrained UNet's held-out loss."""
        s = self.s
        if self.vae_ema is not None:
            self.vae_ema.copy_to(self.vae.parameters())
        self.vae.eval()
        self.vae.requires_grad_(False)
        fit_crops, _ = eval_crops(self.normals.train, max(s.eval_crops, 64), s.resolution, s.seed + 1, s.zoom_prob)
        scale = vae_mod.latent_scaling_factor(self.vae, self._images(fit_crops))
        self.vae.register_to_config(scaling_factor=scale)
        self.state["scaling_factor"] = scale
        self.state["unet_heldout_loss_init"] = self.heldout_unet_loss()
        self.state["phase"] = "unet"

    # -- measurements -------------------------------------------------------------------------------------

    def vae_psnr(self, per_category: bool = False) -> Any:
        """PSNR (dB) of the VAE's reconstructions of the fixed held-out crops (or {category: dB})."""
        was_training = self.vae.training
        self.vae.eval()
        recon = np.stack(cond.tensor_to_images(vae_mod.reconstruct(self.vae, self._images(self.eval_images))))
        self.vae.train(was_training)
        if not per_category:
            return vae_mod.psnr_db(self.eval_images, recon)
        cats = np.array(self.eval_categories)
        return {c: vae_mod.psnr_db(self.eval_images[cats == c], recon[cats == c]) for c in sorted(set(cats))}

    def heldout_unet_loss(self, repeats: int = 2) -> float:
        """Denoising loss on the fixed held-out crops, masks, prompts, noise and timesteps (comparable over
        training); uses neither the training RNGs nor gradients."""
        import torch

        s = self.s
        rng = np.random.default_rng(np.random.SeedSequence([s.seed, 2]))
        gen = torch.Generator(device="cpu").manual_seed(s.seed + 2)
        masks = unet_mod.random_masks(len(self.eval_images), s.resolution, rng, s.full_mask_prob)
        prompts = [text_mod.TEMPLATES[0].format(category=c.replace("_", " ")) for c in self.eval_categories]
        modes = (self.unet.training, self.text_encoder.training)
        self.unet.eval()
        self.text_encoder.eval()
        total, n = 0.0, 0
        with torch.no_grad():
            for _ in range(repeats):
                for i in range(0, len(self.eval_images), EVAL_BATCH):
                    images = self._images(self.eval_images[i : i + EVAL_BATCH])
                    latents = cond.encode_latents(self.vae, images, sample=False)
                    pix, masked = self._inpaint_inputs(images, masks[i : i + EVAL_BATCH])
                    states = self._states(prompts[i : i + EVAL_BATCH])
                    loss = unet_mod.unet_loss(self.unet, states, latents, pix, masked, self.noise, gen, s.vae_factor,
                                              self.dtype)  # fmt: skip
                    total += float(loss) * len(images)
                    n += len(images)
        self.unet.train(modes[0])
        self.text_encoder.train(modes[1])
        return total / n

    # -- run ----------------------------------------------------------------------------------------------

    def run(self, checkpoint: Path, progress: Progress | None) -> None:
        """Both phases from wherever the state is, checkpointing at each phase end."""
        s, st = self.s, self.state
        cap = float("inf") if s.max_train_seconds is None else s.max_train_seconds
        if st["phase"] == "vae":
            if st["vae_psnr_init_db"] is None:
                st["vae_psnr_init_db"] = self.vae_psnr()
            self._run_phase("vae", s.vae_steps, cap * s.vae_share, self.vae_step, checkpoint, progress)
            self.start_unet_phase()
            self.save(checkpoint)
        else:
            self.vae.eval()
            self.vae.requires_grad_(False)
        budget = cap - st["elapsed_s"]["vae"]
        self._run_phase("unet", s.unet_steps, budget, self.unet_step, checkpoint, progress)
        self.save(checkpoint)

    def training_record(self) -> dict[str, Any]:
        """Planned vs done steps of both phases together (`anoaug.budget.record`), with each phase's."""
        s, st = self.s, self.state
        capped = any(v == "time" for v in st["stopped_by"].values())
        return budget.record(
            s.vae_steps + s.unet_steps, sum(st["steps"].values()), "time" if capped else "steps",
            s.max_train_seconds,
            phases={"vae": [st["steps"]["vae"], s.vae_steps], "unet": [st["steps"]["unet"], s.unet_steps]},
        )  # fmt: skip

    def vae_cut_short(self) -> bool:
        """True when the VAE phase ended before its planned steps and the cap now gives it more time."""
        s, st = self.s, self.state
        if st["phase"] != "unet" or st["steps"]["vae"] >= s.vae_steps:
            return False
        return s.max_train_seconds is None or s.max_train_seconds * s.vae_share > st["elapsed_s"]["vae"]

    def export(self, out_dir: Path, work_dir: Path, extra_card: dict[str, Any]) -> Path:
        """Put the EMA UNet in place, measure, and save the diffusers folder, then the model card."""
        import diffusers
        import torch
        import transformers
        from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline

        s, st = self.s, self.state
        self.ema.copy_to(self.unet.parameters())
        for m in (self.vae, self.text_encoder, self.unet):
            m.eval()
            m.requires_grad_(False)
        psnr = self.vae_psnr()
        psnr_per_category = self.vae_psnr(per_category=True)
        final_loss = self.heldout_unet_loss()
        pipe_cls = StableDiffusionInpaintPipeline if s.unet_kind == "inpainting" else StableDiffusionPipeline
        pipe = pipe_cls(
            vae=self.vae.to("cpu"),
            text_encoder=self.text_encoder.to("cpu"),
            tokenizer=self.tokenizer,
            unet=self.unet.to("cpu"),
            scheduler=unet_mod.sampling_scheduler(),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        staging = work_dir / "export"
        shutil.rmtree(staging, ignore_errors=True)
        bars = transformers.utils.logging.is_progress_bar_enabled()
        transformers.utils.logging.disable_progress_bar()  # its "Writing model shards" bar would break ours
        try:
            pipe.save_pretrained(str(staging), safe_serialization=True)
        finally:
            if bars:
                transformers.utils.logging.enable_progress_bar()
        for name in ("vocab.json", "merges.txt"):  # the hand-written BPE files, beside what the tokenizer wrote
            if not (staging / "tokenizer" / name).exists():
                shutil.copy2(work_dir / "tokenizer" / name, staging / "tokenizer" / name)
        (out_dir / card_mod.CARD).unlink(missing_ok=True)
        for entry in sorted(staging.iterdir()):
            target = out_dir / entry.name
            if target.is_dir():
                old = work_dir / f"old-{entry.name}"
                shutil.rmtree(old, ignore_errors=True)
                os.replace(target, old)
                shutil.rmtree(old)
            os.replace(entry, target)
        staging.rmdir()
        held = self.normals.counts("held_out")
        steps, secs = st["steps"], st["elapsed_s"]
        card = {
            "unet_kind": s.unet_kind,
            "categories": sorted({im.category for im in self.normals.train}),
            "images_used": self.normals.counts("train"),
            "images_held_out": held,
            "resolution": s.resolution,
            "vae_scale_factor": s.vae_factor,
            "latent_channels": s.latent_channels,
            "scaling_factor": st["scaling_factor"],
            "steps": dict(steps),
            "seconds": {k: round(v, 2) for k, v in secs.items()} | {"total": round(sum(secs.values()), 2)},
            "stopped_by": dict(st["stopped_by"]),
            "training": self.training_record(),
            "steps_per_s": {k: round(steps[k] / secs[k], 3) if secs[k] > 0 else None for k in steps},
            "batch_size": {"vae": s.vae_batch_size, "unet": s.unet_batch_size},
            "losses": {k: card_mod.thin(v) for k, v in st["losses"].items()},
            "vae_psnr_db": round(psnr, 3),
            "vae_psnr_db_per_category": {k: round(v, 3) for k, v in psnr_per_category.items()},
            "vae_psnr_init_db": round(st["vae_psnr_init_db"], 3),
            "unet_heldout_loss": {"init": round(st["unet_heldout_loss_init"], 6), "final": round(final_loss, 6)},
            "measured_on": (
                f"{len(self.eval_images)} native-scale crops of held-out normal training images (never trained on)"
                if held
                else f"{len(self.eval_images)} crops of training images (no category has 2+ normal training images)"
            ),
            "vae_loss": (
                "L1"
                + (f" + {s.vae_l2_weight} x L2" if s.vae_l2_weight > 0 else "")
                + f" + {s.ssim_weight} x (1 - SSIM) + {s.kl_weight} x KL; no perceptual or adversarial term"
            ),
            "vae_weights": f"EMA, decay {s.vae_ema_decay}" if s.vae_ema_decay > 0 else "last step",
            "prompt_templates": list(text_mod.TEMPLATES),
            "reserved_tokens": text_mod.reserved_words(s.reserved_tokens),
            "vocabulary_words": len(self.words),
            "resumed_from": self.resumed_from,
            "device": str(self.device),
            "versions": {
                "torch": torch.__version__,
                "diffusers": diffusers.__version__,
                "transformers": transformers.__version__,
            },  # fmt: skip
            "settings": s.model_dump(mode="json"),
            **extra_card,
        }
        card_mod.write_card(out_dir, card)
        return out_dir


def pretrain_base(
    settings: PretrainSettings,
    sources: Sequence[Source],
    out_dir: str | Path,
    progress: Progress | None = _log_progress,
    overwrite: bool = False,
) -> Path:
    """Pretrain a small Stable Diffusion on the ``train_normal`` images of `sources` ((CategoryData,
    SplitManifest) pairs) into `out_dir` (diffusers layout + model_card.json); resumes a run found there.

    `progress` is called after every step; `overwrite` discards a checkpoint of a different run.
    Returns `out_dir`."""
    out = Path(out_dir).resolve()
    for data, _ in sources:
        root = Path(data.root).resolve()
        if out == root or root in out.parents:
            raise PretrainError("refusing to write the model inside the input dataset", out)
    if out.exists() and not out.is_dir():
        raise PretrainError("output path exists and is not a folder", out)
    work = out / STATE_DIR
    checkpoint = work / CHECKPOINT
    if overwrite:
        shutil.rmtree(work, ignore_errors=True)
    normals = collect_normals(sources, settings.holdout_fraction, settings.seed, settings.max_image_side)
    if not normals.train:
        raise PretrainError("every normal training image was held out: lower holdout_fraction")
    categories = sorted(data.category for data, _ in sources)
    defect_types = sorted({t for _, split in sources for t in split.defect_types()})
    words = text_mod.vocabulary(categories, defect_types, settings.reserved_tokens)
    work.mkdir(parents=True, exist_ok=True)
    trainer = BaseModelTrainer(settings, normals, words, work)
    if checkpoint.is_file():
        trainer.load(checkpoint)
        log.info("resumed %s at steps %s", checkpoint, trainer.resumed_from)
        if trainer.vae_cut_short():  # its frozen VAE cannot train on: start over to reach the planned steps
            log.info("the VAE phase was cut short by the time cap; starting over")
            checkpoint.unlink()
            trainer = BaseModelTrainer(settings, normals, words, work)
    trainer.run(checkpoint, progress)
    images = [{"category": im.category, "relpath": im.relpath, "sha256": im.sha256} for im in normals.train]
    return trainer.export(out, work, {"defect_types": defect_types, "trained_images": images})
