"""``diffusion-tiny``: a small pixel-space diffusion UNet trained from scratch per category on CPU.

Fit: crops around the few generator-training defects (+ normal crops) train a 7-channel UNet2DModel
conditioned on the defect type (see `unet` and `training`). Generate: a window around
each request's mask at the training crop scale is sampled with the shared blended sampler
(`blending.blended_sample`), pasted back with a feathered composite that keeps the normal image
exact outside the dilated mask, and the final mask is what actually changed.

torch and diffusers are imported only when a model is fitted, loaded or run, so registering is cheap.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from anoaug.generators.base import (
    FitData,
    GenerationRequest,
    GenerationResult,
    Generator,
    GeneratorError,
    bool_or_auto,
    register,
)
from anoaug.generators.diffusion.crops import Window

if TYPE_CHECKING:
    import torch
    from diffusers import DDPMScheduler, UNet2DModel

    from anoaug.generators.diffusion.tiny.unet import TinyUNetConfig

TINY_FILE = "tiny.json"

DEFAULT_PARAMS: dict[str, Any] = {
    # model
    "crop": 64,  # training/generation window in px (native scale unless the defect is larger)
    "widths": [16, 32, 64, 128],
    "layers_per_block": 1,
    "patch": 1,  # pixel-unshuffle factor: 2 trains ~2.5x more steps/s at the same crop (see tiny.unet)
    # condition on the trimap (object vs background around the mask, from the masks stage's foreground)
    "trimap": True,
    # training
    "train_steps": 2500,
    "time_budget_s": 420,  # stop earlier when this much training time (cumulative over resumes) is spent
    "batch": 16,
    "lr": 1e-3,
    "ctx_weight": 0.1,
    "ema_decay": 0.999,
    "normal_fraction": 0.25,
    "max_normals": 64,
    "bf16": "auto",  # bf16 autocast in training: auto = where the CPU has native bf16 (~1.3x steps/s here)
    "checkpoint_every_s": 60,
    "threads": "auto",  # torch CPU threads for fit; auto: 1 on a busy machine (OpenMP spin waste)
    # sampling
    "scheduler": "ddim",  # ddim | dpm++
    "inference_steps": 25,
    "guidance": 1.0,  # >1: push away from the 'normal' class (costs a second forward per step)
    # Band (px, crop scale) around the mask that is generated too; also trained on. Measured on demo/cap
    # (1000 steps): band 1 + paste_margin 1 gave downstream pixel AP 0.55; band 3 with the whole band kept
    # gave blurred, too-wide defects whose changed-pixel masks were twice the real defect's width.
    "dilate": 1,
    "feather": 2,
    # generated pixels kept up to this many image px around the input mask (null: the whole generated band)
    "paste_margin": 1,
    "change_threshold": 12.0,  # final mask: colour change (0-255) after a `change_blur` Gaussian
    "change_blur": 1,
    "gen_batch": 32,
    # fixed (not auto) so results do not depend on the machine's load: float sums differ by thread count
    "gen_threads": 1,
}


def _params(params: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(params) - set(DEFAULT_PARAMS))
    if unknown:
        raise GeneratorError(f"unknown diffusion-tiny params {unknown}; known: {', '.join(sorted(DEFAULT_PARAMS))}")
    p = {**DEFAULT_PARAMS, **params}
    if p["scheduler"] not in ("ddim", "dpm++"):
        raise GeneratorError(f"diffusion-tiny: scheduler must be 'ddim' or 'dpm++', got '{p['scheduler']}'")
    return p


@register
class TinyDiffusionGenerator(Generator):
    """Pixel-space tiny UNet, trained per category on CPU, sampled with blended diffusion."""

    name = "diffusion-tiny"
    learned = True

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        super().__init__(params)
        self.p = _params(self.params)
        self.unet: UNet2DModel | None = None
        self.noise_scheduler: DDPMScheduler | None = None
        self.types: list[str] = []
        self.train_summary: dict[str, Any] = {}
        self.trimap = bool(self.p["trimap"])

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

        p = self.p
        if not data.defects:
            raise GeneratorError(f"diffusion-tiny: category '{data.category}' has no generator-training defects")
        self.types = data.defect_types
        index = {t: i for i, t in enumerate(self.types)}
        normals = data.normal_images(limit=int(p["max_normals"]))
        fg = (data.foreground_fn or _everything) if self.trimap else None
        examples = [
            CropExample(d.image, d.mask.astype(bool), index[d.defect_type], fg(d.image) if fg else None)
            for d in data.defects
        ]
        sampler = CropSampler(
            examples,
            normals,
            crop=int(p["crop"]),
            band=int(p["dilate"]),
            kind=data.kind,
            normal_fraction=float(p["normal_fraction"]),
            seed=seed,
            normal_objs=[fg(n) for n in normals] if fg else None,
        )
        torch.manual_seed(seed)  # weight init
        unet = build_tiny_unet(self._unet_config())
        cfg = TrainConfig(
            train_steps=int(p["train_steps"]),
            time_budget_s=None if p["time_budget_s"] is None else float(p["time_budget_s"]),
            batch=int(p["batch"]),
            lr=float(p["lr"]),
            ctx_weight=float(p["ctx_weight"]),
            ema_decay=float(p["ema_decay"]),
            checkpoint_every_s=float(p["checkpoint_every_s"]),
            bf16=resolve_bf16(p["bf16"]),
            seed=seed,
        )
        self.noise_scheduler = make_noise_scheduler()
        try:
            with cpu_threads(p["threads"]):
                unet, result = train_tiny(unet, sampler, self.noise_scheduler, cfg, out_dir / CHECKPOINT_FILE)
        except ValueError as exc:
            raise GeneratorError(f"diffusion-tiny: {exc}", out_dir) from None
        self.unet = unet
        self.train_summary = {
            "steps": result.steps,
            "elapsed_s": round(result.elapsed_s, 1),
            "stopped_by": result.stopped_by,
            "resumed_from": result.resumed_from,
            "losses": [round(x, 5) for x in result.losses],
            "bf16": cfg.bf16,  # as resolved on this machine (params may say auto)
        }
        unet.save_pretrained(out_dir / "unet", safe_serialization=True)
        self.noise_scheduler.save_pretrained(out_dir / "scheduler")
        meta = {
            "types": self.types,
            "unet": self._unet_config().to_dict(),
            "train": self.train_summary,
            "trimap": self.trimap,
        }
        (out_dir / TINY_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))

    def _unet_config(self) -> TinyUNetConfig:
        from anoaug.generators.diffusion.tiny.unet import TinyUNetConfig

        return TinyUNetConfig(
            sample_size=int(self.p["crop"]),
            widths=tuple(int(w) for w in self.p["widths"]),
            layers_per_block=int(self.p["layers_per_block"]),
            n_types=len(self.types),
            patch=int(self.p["patch"]),
        )

    def _load(self, artifact_dir: Path, meta: dict[str, Any]) -> None:
        tiny = artifact_dir / TINY_FILE
        if not tiny.is_file():
            raise GeneratorError(f"diffusion-tiny artifact is missing {TINY_FILE}", artifact_dir)
        from diffusers import DDPMScheduler

        info = json.loads(tiny.read_text())
        self.types = list(info["types"])
        self.train_summary = info.get("train", {})
        self.trimap = bool(info.get("trimap", False))  # artifacts from before trimap conditioning: none
        self.unet = load_tiny_unet(
            artifact_dir / "unet", n_types=len(self.types), crop=int(self.p["crop"]), patch=int(self.p["patch"])
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
        """Bit-identical for the same requests, chunking (``gen_batch``) and ``gen_threads``; a request's
        pixels may differ by float rounding (rarely one grey level) when batched with other requests."""
        if self.unet is None or self.noise_scheduler is None:
            raise GeneratorError("diffusion-tiny: generator is not fitted or loaded")
        for r in batch:
            if r.defect_type not in self.types:
                raise GeneratorError(
                    f"diffusion-tiny was trained on {self.types}, not on defect type '{r.defect_type}'"
                )
        out: list[GenerationResult] = []
        n = max(1, int(self.p["gen_batch"]))
        with cpu_threads(self.p["gen_threads"]):
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

        p, crop = self.p, int(self.p["crop"])
        windows = [Window.around(r.mask, crop) for r in reqs]
        known = torch.stack([w.to_crop_tensor(r.normal) for w, r in zip(windows, reqs, strict=True)])
        mch = torch.stack(
            [
                torch.from_numpy(mask_channel(w.crop_mask(r.mask), int(p["dilate"]), self._crop_obj(w, r)))[None]
                for w, r in zip(windows, reqs, strict=True)
            ]
        )
        region = (mch >= 0.5).float()  # defect + band: generated; below: known context
        labels = torch.tensor([self.types.index(r.defect_type) for r in reqs], dtype=torch.long)
        normal_label = torch.full_like(labels, len(self.types))
        guidance = float(p["guidance"])
        unet = self.unet.to(memory_format=torch.channels_last)  # ~2x faster oneDNN convolutions on CPU

        def denoise(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            inp = model_input(x_t, known, mch).contiguous(memory_format=torch.channels_last)
            tt = t.reshape(1).expand(x_t.shape[0])
            if guidance == 1.0:
                return unet_denoise(unet, inp, tt, labels)
            both = unet_denoise(unet, torch.cat([inp, inp]), torch.cat([tt, tt]), torch.cat([labels, normal_label]))
            cond, uncond = both.chunk(2)
            return uncond + guidance * (cond - uncond)

        scheduler = make_scheduler(str(p["scheduler"]), self.noise_scheduler.config)
        gens = [torch.Generator().manual_seed(int(r.seed)) for r in reqs]
        x0 = blended_sample(denoise, scheduler, known, region, int(p["inference_steps"]), gens)
        results = []
        for k, (w, r) in enumerate(zip(windows, reqs, strict=True)):
            gen_full, edit = w.paste(r.normal, x0[k], region[k, 0].numpy() > 0)
            if p["paste_margin"] is not None:
                edit &= dilate_mask(r.mask, int(p["paste_margin"]))
            image = composite(r.normal, gen_full, edit, int(p["feather"]))
            # What actually changed anywhere in the edit region (mask + generated band), not only the input mask.
            final = changed_mask(r.normal, image, edit, float(p["change_threshold"]), 0, blur=int(p["change_blur"]))
            results.append(
                GenerationResult(
                    image=image,
                    mask=final,
                    info={
                        "generator": self.name,
                        "defect_type": r.defect_type,
                        "seed": int(r.seed),
                        "scheduler": p["scheduler"],
                        "inference_steps": int(p["inference_steps"]),
                        "guidance": guidance,
                        "window": [w.y0, w.x0, w.side],
                        "input_mask_px": int(r.mask.sum()),
                        "edit_px": int(edit.sum()),
                        "final_mask_px": int(final.sum()),
                    },
                )
            )
        return results


def resolve_bf16(setting: bool | str) -> bool:
    """``auto``: bf16 autocast where oneDNN has native bf16 kernels (AVX512-BF16 / AMX); elsewhere it is
    emulated and slower than float32."""
    from anoaug.cpu import native_bf16

    value = bool_or_auto(setting, "diffusion-tiny", "bf16")
    return native_bf16() if value == "auto" else value


def _everything(image: np.ndarray) -> np.ndarray:
    """Object foreground when none is known: the whole image (as `GenerationRequest.allowed`)."""
    return np.ones(image.shape[:2], bool)


@contextmanager
def cpu_threads(setting: int | str) -> Iterator[None]:
    """Temporarily set torch's intra-op CPU threads: an int, or ``auto`` = 1 thread when other processes
    keep the machine busy (>= 75% of the cores), where OpenMP threads mostly spin-wait for each other
    (measured ~4x more CPU per training step with 2 threads than with 1 on a loaded 2-core box)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(_thread_count(setting, before))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _thread_count(setting: int | str, current: int) -> int:
    if setting != "auto":
        return max(1, int(setting))
    return 1 if _busy_cores() >= 0.75 * (os.cpu_count() or 1) else current


def _busy_cores(window_s: float = 0.5) -> float:
    """Cores kept busy by *other* processes right now: CPU time of the whole machine over a short window
    (Linux /proc/stat) minus this process's own. Elsewhere the 1-minute load average, which also counts
    this process's own recent work (a stage that just finished would make the machine look busy)."""
    import time

    def machine_busy_s() -> float | None:
        try:
            fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        except OSError:
            return None
        ticks = [int(x) for x in fields]
        idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
        return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    a, own_a, t_a = machine_busy_s(), time.process_time(), time.perf_counter()
    if a is None:
        return os.getloadavg()[0]
    time.sleep(window_s)
    b, own_b, t_b = machine_busy_s() or a, time.process_time(), time.perf_counter()
    return max(0.0, (b - a) - (own_b - own_a)) / (t_b - t_a)


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
