"""``diffusion-tiny``: a small pixel-space diffusion UNet trained from scratch per category (sized for a CPU;
the ``device`` setting picks where training and sampling run, ``auto`` = CUDA when available).

Fit: crops around the few generator-training defects (+ normal crops) train a 7-channel UNet2DModel
conditioned on the defect type (see `unet` and `training`). Generate: a window around each request's
mask at the training crop scale (`diffusion.crops.Window`) is sampled with the shared blended sampler
(`diffusion.blending.blended_sample`), pasted back with a feathered composite that keeps the normal image
exact outside the dilated mask, and the final mask is what actually changed (`generators.compositing`).

torch and diffusers are imported only when a model is fitted, loaded or run, so registering is cheap.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field

from anoaug import budget
from anoaug.budget import CAP_SETTING, OLD_CAP_SETTING, thread_count
from anoaug.generators.base import (
    BoolOrAuto,
    FitData,
    GenerationRequest,
    GenerationResult,
    Generator,
    GeneratorError,
    register,
)
from anoaug.generators.diffusion.crops import Window
from anoaug.generators.diffusion.settings import DIFFUSERS_NAMES, DiffusionSettings

if TYPE_CHECKING:
    import torch
    from diffusers import DDPMScheduler, UNet2DModel

    from anoaug.generators.diffusion.tiny.unet import TinyUNetConfig

TINY_FILE = "tiny.json"
RUN_FILE = ".train_run.json"  # leading dot: not part of the artifact hash (see base.artifact_hash)
RUN_ONLY_KEYS = ("elapsed_s", "resumed_from", "max_train_seconds", "losses")  # history of this fit


@register
class TinyDiffusionGenerator(Generator):
    """Pixel-space tiny UNet, trained per category, sampled with blended diffusion."""

    name = "diffusion-tiny"
    learned = True
    renamed_settings = {**DIFFUSERS_NAMES, OLD_CAP_SETTING: CAP_SETTING}

    class Settings(DiffusionSettings):
        """diffusion-tiny settings (the shared diffusion ones are documented in `DiffusionSettings`)."""

        # model
        crop: int = Field(
            64, ge=8, description="training/generation window in px (native scale unless the defect is larger)"
        )
        widths: list[int] = Field([16, 32, 64, 128], min_length=1, description="UNet channels per resolution level")
        layers_per_block: int = Field(1, ge=1, description="ResNet layers per UNet block")
        patch: int = Field(
            1, ge=1, description="pixel-unshuffle factor: 2 trains ~2.5x more steps/s at the same crop (see tiny.unet)"
        )
        trimap: bool = Field(True, description="condition on the trimap (object vs background around the mask)")
        # training
        train_steps: int = Field(2500, ge=0, description="training steps (the budget: same seed + steps, same weights)")
        max_train_seconds: float | None = Field(
            None,
            ge=0,
            description="optional cap: stop early when this much training time (cumulative over resumes) is spent; "
            "the artifact, stage and report then say 'trained N / train_steps steps'; null: no cap",
        )
        batch: int = Field(16, ge=1, description="training batch size")
        lr: float = Field(1e-3, gt=0, description="AdamW learning rate")
        ctx_weight: float = Field(0.1, ge=0, description="loss weight on the known context (mask weight is 1)")
        ema_decay: float = Field(0.999, ge=0, le=1, description="EMA decay of the weights that are saved")
        normal_fraction: float = Field(0.25, ge=0, le=1, description="share of normal crops in a training batch")
        max_normals: int = Field(64, ge=0, description="normal training images loaded for normal crops")
        bf16: BoolOrAuto = Field(
            "auto", description="bf16 autocast in training: auto = where the device has native bf16"
        )
        checkpoint_every_s: float = Field(60, gt=0, description="seconds between resumable training checkpoints")
        threads: int | Literal["auto"] = Field(
            "auto",
            description="torch CPU threads for fit; auto: the cores this process may use (its CPU affinity), "
            "recorded in the artifact; weights are byte-identical for the same seed, steps and thread count",
        )
        # sampling (scheduler, num_inference_steps, guidance_scale, generation_batch_size, device: DiffusionSettings)
        num_inference_steps: int = Field(25, ge=1, description="denoising steps per sample")
        guidance_scale: float = Field(
            1.0, description=">1: push away from the 'normal' class (costs a second forward per step)"
        )
        generation_batch_size: int = Field(32, ge=1, description="requests sampled together in one batch")
        # Band (px, crop scale) around the mask that is generated too; also trained on. Measured on demo/cap
        # (1000 steps): band 1 + paste_margin 1 gave downstream pixel AP 0.55; band 3 with the whole band kept
        # gave blurred, too-wide defects whose changed-pixel masks were twice the real defect's width.
        dilate: int = Field(1, ge=0, description="band (px, crop scale) around the mask generated and trained too")
        paste_margin: int | None = Field(
            1, ge=0, description="generated pixels kept up to this many px around the input mask; null: the whole band"
        )
        change_threshold: float = Field(12.0, ge=0, description="final mask: colour change (0-255) after `change_blur`")
        gen_threads: int | Literal["auto"] = Field(
            1, description="torch CPU threads for sampling; fixed so results do not depend on the machine's load"
        )

    settings: Settings

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        super().__init__(params)
        self.unet: UNet2DModel | None = None
        self.noise_scheduler: DDPMScheduler | None = None
        self.types: list[str] = []
        self.train_summary: dict[str, Any] = {}
        self.trimap = self.settings.trimap
        self._device: torch.device | None = None

    @property
    def device(self) -> torch.device:
        """The torch device of the ``device`` setting (resolved once; unavailable accelerators are errors)."""
        if self._device is None:
            from anoaug.device import resolve_device

            self._device = resolve_device(self.settings.device)
        return self._device

    # ------------------------------------------------------------------ fit / load

    def _fit(self, data: FitData, out_dir: Path, seed: int) -> None:
        import torch

        from anoaug.generators.diffusion.tiny.training import (
            CHECKPOINT_FILE,
            CropExample,
            CropSampler,
            TrainConfig,
            make_noise_scheduler,
            train_tiny,
        )
        from anoaug.generators.diffusion.tiny.unet import build_tiny_unet

        s = self.settings
        if not data.defects:
            raise GeneratorError(f"diffusion-tiny: category '{data.category}' has no generator-training defects")
        self.types = data.defect_types
        index = {t: i for i, t in enumerate(self.types)}
        normals = data.normal_images(limit=s.max_normals)
        fg = (data.foreground_fn or _everything) if self.trimap else None
        examples = [
            CropExample(d.image, d.mask.astype(bool), index[d.defect_type], fg(d.image) if fg else None)
            for d in data.defects
        ]
        sampler = CropSampler(
            examples,
            normals,
            crop=s.crop,
            band=s.dilate,
            kind=data.kind,
            normal_fraction=s.normal_fraction,
            seed=seed,
            normal_objs=[fg(n) for n in normals] if fg else None,
        )
        torch.manual_seed(seed)  # weight init
        unet = build_tiny_unet(self._unet_config())
        cfg = TrainConfig(
            train_steps=s.train_steps,
            max_train_seconds=None if s.max_train_seconds is None else float(s.max_train_seconds),
            batch=s.batch,
            lr=s.lr,
            ctx_weight=s.ctx_weight,
            ema_decay=s.ema_decay,
            checkpoint_every_s=float(s.checkpoint_every_s),
            bf16=resolve_bf16(s.bf16, self.device),
            seed=seed,
        )
        self.noise_scheduler = make_noise_scheduler()
        threads = thread_count(s.threads)
        try:
            with cpu_threads(threads):
                unet, result = train_tiny(
                    unet, sampler, self.noise_scheduler, cfg, out_dir / CHECKPOINT_FILE, device=self.device
                )
        except ValueError as exc:
            raise GeneratorError(f"diffusion-tiny: {exc}", out_dir) from None
        self.unet = unet
        self.train_summary = {
            "steps": result.steps,
            "elapsed_s": round(result.elapsed_s, 1),
            "planned_steps": cfg.train_steps,
            "stopped_by": result.stopped_by,
            "max_train_seconds": cfg.max_train_seconds,
            "resumed_from": result.resumed_from,
            "threads": threads,  # torch CPU threads of the fit (`threads` as resolved here)
            "losses": [round(x, 5) for x in result.losses],
            "bf16": cfg.bf16,  # as resolved on this machine (settings may say auto)
            "device": self.device.type,
        }
        self.training = budget.record(cfg.train_steps, result.steps, result.stopped_by, cfg.max_train_seconds,
                                      threads=threads)  # fmt: skip
        unet.save_pretrained(out_dir / "unet", safe_serialization=True)
        self.noise_scheduler.save_pretrained(out_dir / "scheduler")
        # Wall time and resume history go to a dot-file, outside the artifact hash: the same weights must give
        # the same artifact hash (and so the same shards), however long training took or how often it resumed.
        run_only = {k: self.train_summary[k] for k in RUN_ONLY_KEYS}
        meta = {
            "types": self.types,
            "unet": self._unet_config().to_dict(),
            "train": {k: v for k, v in self.train_summary.items() if k not in RUN_ONLY_KEYS},
            "trimap": self.trimap,
        }
        (out_dir / TINY_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
        (out_dir / RUN_FILE).write_text(json.dumps(run_only, indent=2, sort_keys=True))

    def _unet_config(self) -> TinyUNetConfig:
        from anoaug.generators.diffusion.tiny.unet import TinyUNetConfig

        s = self.settings
        return TinyUNetConfig(
            sample_size=s.crop,
            widths=tuple(s.widths),
            layers_per_block=s.layers_per_block,
            n_types=len(self.types),
            patch=s.patch,
        )

    def _load(self, artifact_dir: Path, meta: dict[str, Any]) -> None:
        tiny = artifact_dir / TINY_FILE
        if not tiny.is_file():
            raise GeneratorError(f"diffusion-tiny artifact is missing {TINY_FILE}", artifact_dir)
        from diffusers import DDPMScheduler

        info = json.loads(tiny.read_text())
        self.types = list(info["types"])
        self.train_summary = info.get("train", {})
        with contextlib.suppress(OSError, ValueError):  # wall time and resumes of the fit (not hashed)
            self.train_summary.update(json.loads((artifact_dir / RUN_FILE).read_text()))
        self.trimap = bool(info.get("trimap", False))  # artifacts from before trimap conditioning: none
        self.unet = load_tiny_unet(
            artifact_dir / "unet", n_types=len(self.types), crop=self.settings.crop, patch=self.settings.patch
        )
        try:
            self.noise_scheduler = DDPMScheduler.from_pretrained(artifact_dir / "scheduler")
        except (OSError, ValueError) as exc:
            raise GeneratorError(f"diffusion-tiny: cannot read the noise scheduler: {exc}", artifact_dir) from None

    # ------------------------------------------------------------------ generate

    def _crop_obj(self, w: Window, r: GenerationRequest) -> np.ndarray | None:
        """The request's trimap object (defect + object) in the window, or None without trimap conditioning."""
        if not self.trimap:
            return None
        return w.crop_mask(r.allowed)

    def generate(self, batch: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Bit-identical for the same requests, chunking (``generation_batch_size``), ``gen_threads`` and device;
        a request's pixels may differ by float rounding (rarely one grey level) when batched with other
        requests, and between devices."""
        if self.unet is None or self.noise_scheduler is None:
            raise GeneratorError("diffusion-tiny: generator is not fitted or loaded")
        for r in batch:
            if r.defect_type not in self.types:
                raise GeneratorError(
                    f"diffusion-tiny was trained on {self.types}, not on defect type '{r.defect_type}'"
                )
        out: list[GenerationResult] = []
        n = self.settings.generation_batch_size
        with cpu_threads(self.settings.gen_threads):
            for i in range(0, len(batch), n):
                out.extend(self._generate_chunk(batch[i : i + n]))
        return out

    def _generate_chunk(self, reqs: Sequence[GenerationRequest]) -> list[GenerationResult]:
        import torch

        from anoaug.generators.compositing import changed_mask, composite, dilate_mask
        from anoaug.generators.diffusion.blending import blended_sample, make_scheduler
        from anoaug.generators.diffusion.tiny.training import mask_channel
        from anoaug.generators.diffusion.tiny.unet import denoise as unet_denoise
        from anoaug.generators.diffusion.tiny.unet import model_input

        s, crop, dev = self.settings, self.settings.crop, self.device
        windows = [Window.around(r.mask, crop) for r in reqs]
        known = torch.stack([w.to_crop_tensor(r.normal) for w, r in zip(windows, reqs, strict=True)]).to(dev)
        mch = torch.stack(
            [
                torch.from_numpy(mask_channel(w.crop_mask(r.mask), s.dilate, self._crop_obj(w, r)))[None]
                for w, r in zip(windows, reqs, strict=True)
            ]
        ).to(dev)
        region = (mch >= 0.5).float()  # defect + band: generated; below: known context
        labels = torch.tensor([self.types.index(r.defect_type) for r in reqs], dtype=torch.long, device=dev)
        normal_label = torch.full_like(labels, len(self.types))
        guidance = s.guidance_scale
        unet = self.unet.to(dev, memory_format=torch.channels_last)  # ~2x faster oneDNN convolutions on CPU

        def denoise(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            inp = model_input(x_t, known, mch).contiguous(memory_format=torch.channels_last)
            tt = t.reshape(1).expand(x_t.shape[0])
            if guidance == 1.0:
                return unet_denoise(unet, inp, tt, labels)
            both = unet_denoise(unet, torch.cat([inp, inp]), torch.cat([tt, tt]), torch.cat([labels, normal_label]))
            cond, uncond = both.chunk(2)
            return uncond + guidance * (cond - uncond)

        scheduler = make_scheduler(s.scheduler, self.noise_scheduler.config)
        gens = [torch.Generator().manual_seed(int(r.seed)) for r in reqs]  # CPU noise: the same on every device
        x0 = blended_sample(denoise, scheduler, known, region, s.num_inference_steps, gens).cpu()
        region = region.cpu()
        results = []
        for k, (w, r) in enumerate(zip(windows, reqs, strict=True)):
            gen_full, edit = w.paste(r.normal, x0[k], region[k, 0].numpy() > 0)
            if s.paste_margin is not None:
                edit &= dilate_mask(r.mask, s.paste_margin)
            image = composite(r.normal, gen_full, edit, s.feather)
            # What actually changed anywhere in the edit region (mask + generated band), not only the input mask.
            final = changed_mask(r.normal, image, edit, s.change_threshold, 0, blur=s.change_blur)
            results.append(
                GenerationResult(
                    image=image,
                    mask=final,
                    info={
                        "generator": self.name,
                        "defect_type": r.defect_type,
                        "seed": int(r.seed),
                        "scheduler": s.scheduler,
                        "num_inference_steps": s.num_inference_steps,
                        "guidance_scale": guidance,
                        "window": [w.y0, w.x0, w.side],
                        "input_mask_px": int(r.mask.sum()),
                        "edit_px": int(edit.sum()),
                        "final_mask_px": int(final.sum()),
                    },
                )
            )
        return results


def resolve_bf16(setting: bool | str, device: torch.device | None = None) -> bool:
    """``auto``: bf16 autocast where the device has native bf16: on CPU where oneDNN has native kernels
    (AVX512-BF16 / AMX; elsewhere it is emulated and slower than float32), on CUDA where the GPU supports it."""
    if setting != "auto":
        return bool(setting)
    if device is not None and device.type == "cuda":
        import torch

        return bool(torch.cuda.is_bf16_supported())
    if device is not None and device.type != "cpu":
        return False
    from anoaug.cpu import native_bf16

    return native_bf16()


def _everything(image: np.ndarray) -> np.ndarray:
    """Object foreground when none is known: the whole image (as `GenerationRequest.allowed`)."""
    return np.ones(image.shape[:2], bool)


@contextmanager
def cpu_threads(setting: int | str) -> Iterator[None]:
    """Temporarily set torch's intra-op CPU threads: an int, or ``auto`` = the cores this process may use
    (`anoaug.budget.thread_count`: chosen from the CPU affinity, never from the machine's momentary load)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(thread_count(setting))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def load_tiny_unet(path: Path, n_types: int, crop: int, patch: int = 1) -> UNet2DModel:
    """Load the tiny UNet from ``path`` with clear errors for a bad path or incompatible weights."""
    from diffusers import UNet2DModel

    from anoaug.generators.diffusion.tiny.unet import IN_CHANNELS

    path = Path(path)
    if not (path / "config.json").is_file():
        raise GeneratorError("diffusion-tiny: no UNet here (expected config.json + safetensors)", path)
    try:
        unet = UNet2DModel.from_pretrained(path, low_cpu_mem_usage=False)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
        raise GeneratorError(f"diffusion-tiny: cannot load UNet weights: {str(exc).splitlines()[0]}", path) from None
    cfg = unet.config
    problems = []
    if cfg.in_channels != IN_CHANNELS * patch * patch or cfg.out_channels != 3 * patch * patch:
        problems.append(
            f"channels {cfg.in_channels}->{cfg.out_channels}, expected {IN_CHANNELS * patch * patch}->"
            f"{3 * patch * patch} (patch {patch})"
        )
    if cfg.num_class_embeds != n_types + 1:
        problems.append(f"{cfg.num_class_embeds} class embeddings, expected {n_types + 1} (types + normal)")
    if cfg.sample_size * patch != crop:
        problems.append(f"sample_size {cfg.sample_size} x patch {patch}, expected crop {crop}")
    if problems:
        raise GeneratorError(f"diffusion-tiny: incompatible UNet: {'; '.join(problems)}", path)
    return unet.eval()
