"""Memory and speed of the SD-family generators at Stable Diffusion 1.5 scale, on random weights (nothing downloaded).

    python benchmarks/bench_sd_memory.py [--resolutions 256 512] [--steps 3] [--sample-steps 30] [--full-size]
        [--only sd anomalydiffusion dualanodiff adabldm] [--adapt-steps 20]

Builds a UNet2DConditionModel / AutoencoderKL / CLIP text encoder with the SD 1.5 configs (860M / 84M /
123M parameters) and random weights, then measures with the generator's own training code
(`sd.training.SDTrainer`: textual inversion + LoRA rank 4, batch 1, bf16) the peak memory and seconds per
step at each resolution with gradient checkpointing off and on, and seconds per image of blended sampling
(`diffusion-sd` generate, 30 DDIM steps, guidance on). Goal on CUDA: <= 12 GB peak at 256 px for LoRA+TI.

The other SD-family generators, each with its own trainer and generate on the same components:

* `anomalydiffusion`: k = 4 anomaly tokens per type + the spatial mask encoder (4 tokens), base frozen (no
  LoRA), checkpointing off / on; sampling with attention re-weighting off and `paper`.
* `dualanodiff`: the dual trainer (`bench_dualanodiff.bench_sd15_memory`: two LoRA r4 branches, shared
  attention, background compensation; goal <= 16 GB at 512 px).
* `adabldm`: the trimap ControlNet branch (`ControlNetModel.from_unet` over the UNet: a trainable copy of its
  encoder, ~360M parameters at SD 1.5 scale) trained alone by `adabldm.training.BranchTrainer` with the base
  frozen, checkpointing off / on (the benchmark switches it on for the UNet and the branch: the trainer has no
  setting for it); sampling = multi-stage T1/T2/T3 (26/20/5) with the branch + decoder adaptation per image
  (`--adapt-steps` iterations of a fp32 decoder copy).

On CUDA the figures are real (peak = torch.cuda.max_memory_allocated). On CPU the script says so and runs
one step at a reduced size (widths / 8, 64 px, fp32 unless --full-size) with peak = the process's max RSS:
only a check that the code paths run, not figures to compare with the goal.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GOAL_GB_256 = 12.0
SD15_UNET = {"block_out_channels": (320, 640, 1280, 1280), "layers_per_block": 2, "cross_attention_dim": 768,
             "attention_head_dim": 8}  # fmt: skip
SD15_VAE = {"block_out_channels": (128, 256, 512, 512), "layers_per_block": 2}
SD15_TEXT = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12}


def build_components(shrink: int, device: Any) -> Any:
    """SD 1.5-shaped components with random weights (every width divided by `shrink`), as `SDComponents`."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from anoaug.generators.diffusion.pretrain.text import build_tokenizer, vocabulary
    from anoaug.generators.diffusion.pretrain.unet import sampling_scheduler
    from anoaug.generators.diffusion.sd.loading import SDComponents

    tokenizer = build_tokenizer(Path(tempfile.mkdtemp(prefix="bench-sd-tok-")), vocabulary(["widget"], ["scratch"], 4))
    width = SD15_TEXT["hidden_size"] // shrink
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=width,
            intermediate_size=SD15_TEXT["intermediate_size"] // shrink,
            num_hidden_layers=SD15_TEXT["num_hidden_layers"],
            num_attention_heads=SD15_TEXT["num_attention_heads"],
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            projection_dim=width,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        block_out_channels=tuple(c // shrink for c in SD15_UNET["block_out_channels"]),
        layers_per_block=SD15_UNET["layers_per_block"],
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=width,
        attention_head_dim=SD15_UNET["attention_head_dim"],
        norm_num_groups=32 // shrink if shrink > 1 else 32,
    )
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=tuple(c // shrink for c in SD15_VAE["block_out_channels"]),
        layers_per_block=SD15_VAE["layers_per_block"],
        latent_channels=4,
        norm_num_groups=32 // shrink if shrink > 1 else 32,
        sample_size=512,
        scaling_factor=0.18215,
    )
    for m in (unet, vae, text_encoder):
        m.requires_grad_(False)
        m.eval()
    for m in (unet, vae, text_encoder):
        m.to(device)
    return SDComponents(unet, vae, text_encoder, tokenizer, dict(sampling_scheduler().config), Path("<random>"))


def defects(n: int, size: int) -> list:
    """`n` synthetic generator-training defects: noisy grey images with a red square."""
    from anoaug.generators.base import DefectExample

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        img = np.clip(rng.normal(128, 20, (size, size, 3)), 0, 255).astype(np.uint8)
        mask = np.zeros((size, size), bool)
        mask[size // 3 : size // 2, size // 3 : size // 2] = True
        img[mask] = (200, 30, 30)
        out.append(DefectExample(image=img, mask=mask, defect_type="scratch", relpath=f"scratch/{i}.png"))
    return out


class Peak:
    """Peak memory (GB) of what runs inside: CUDA allocator peak, or the process's max RSS on CPU."""

    def __init__(self, device: Any) -> None:
        self.device = device
        self.gb = 0.0

    def __enter__(self) -> Peak:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        return self

    def __exit__(self, *exc: object) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.gb = torch.cuda.max_memory_allocated() / 2**30
        else:
            self.gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def bench_training(res: int, checkpointing: bool, steps: int, shrink: int, precision: str, device: Any) -> dict:
    """Peak memory and s/step of TI + LoRA training with the generator's trainer."""
    import torch

    from anoaug.generators.diffusion.sd.training import SDTrainer, TrainSettings

    comps = build_components(shrink, device)
    settings = TrainSettings(resolution=res, batch_size=1, lora_rank=4, textual_inversion=True,
                             mixed_precision=precision, gradient_checkpointing=checkpointing)  # fmt: skip
    with Peak(device) as peak:
        trainer = SDTrainer(comps, defects(2, res * 2), "widget", settings, device, seed=0)
        trainer.train(1)  # warm-up (allocator, kernels)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        trainer.train(steps)
        if device.type == "cuda":
            torch.cuda.synchronize()
        per_step = (time.perf_counter() - t0) / steps
    del trainer, comps
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"peak_gb": peak.gb, "s_per_step": per_step}


def bench_sampling(res: int, sample_steps: int, shrink: int, precision: str, device: Any, n: int = 2) -> dict:
    """Seconds per image of `diffusion-sd` blended sampling (the generator's own generate)."""
    import torch

    from anoaug.generators import GenerationRequest, get_generator
    from anoaug.generators.diffusion.sd.training import resolve_dtype

    comps = build_components(shrink, device)
    params = {"model": "<random sd1.5-shaped>", "resolution": res, "num_inference_steps": sample_steps,
              "textual_inversion": False, "mixed_precision": precision, "generation_batch_size": n}  # fmt: skip
    gen = get_generator("diffusion-sd")(params)
    gen._device = device
    gen._ready(comps, None, {}, "widget", resolve_dtype(precision, device))
    reqs = [GenerationRequest(normal=d.image, mask=d.mask, defect_type="scratch", seed=i)
            for i, d in enumerate(defects(n, res * 2))]  # fmt: skip
    gen.generate(reqs[:1])  # warm-up
    with Peak(device) as peak:
        t0 = time.perf_counter()
        gen.generate(reqs)
        if device.type == "cuda":
            torch.cuda.synchronize()
        per_image = (time.perf_counter() - t0) / n
    return {"peak_gb": peak.gb, "s_per_image": per_image}


def _timed(step: Any, steps: int, device: Any) -> float:
    """Seconds per call of `step` over `steps` calls (CUDA synchronised)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def _release(device: Any) -> None:
    import gc

    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _object_trimap(mask: np.ndarray) -> np.ndarray:
    """uint8 trimap of `mask` on an object filling the image but a 4 px border (no foreground model needed)."""
    from anoaug.masks.synthesis import make_trimap

    obj = np.zeros_like(mask, bool)
    obj[4:-4, 4:-4] = True
    return make_trimap(mask, obj | mask)


def _fit_data(n: int, size: int) -> Any:
    from anoaug.generators import FitData

    return FitData("widget", "object", defects(n, size), [], foreground_fn=lambda im: np.ones(im.shape[:2], bool))


def bench_ad_training(res: int, checkpointing: bool, steps: int, shrink: int, precision: str, device: Any) -> dict:
    """Peak memory and s/step of `anomalydiffusion` training (its trainer, built by the generator)."""
    _release(device)  # the previous case's models
    from anoaug.generators import get_generator

    comps = build_components(shrink, device)
    params = {"model": "<random sd1.5-shaped>", "resolution": res, "mixed_precision": precision,
              "gradient_checkpointing": checkpointing}  # fmt: skip
    gen = get_generator("anomalydiffusion")(params)
    gen._load_base = lambda: comps  # the random SD 1.5-shaped components instead of a model folder
    with Peak(device) as peak:
        trainer = gen.make_trainer(_fit_data(2, res * 2), seed=0)
        trainer.step()  # warm-up
        per_step = _timed(trainer.step, steps, device)
    return {"peak_gb": peak.gb, "s_per_step": per_step}


def bench_ad_sampling(res: int, sample_steps: int, reweighting: str, shrink: int, precision: str, device: Any,
                      n: int = 2) -> dict:  # fmt: skip
    """Seconds per image of `anomalydiffusion` generate (untrained tokens and encoder: the cost is the same)."""
    _release(device)  # the previous case's models
    from anoaug.generators import GenerationRequest, get_generator

    comps = build_components(shrink, device)
    params = {"model": "<random sd1.5-shaped>", "resolution": res, "num_inference_steps": sample_steps,
              "mixed_precision": precision, "generation_batch_size": n,
              "attention_reweighting": reweighting}  # fmt: skip
    gen = get_generator("anomalydiffusion")(params)
    gen._load_base = lambda: comps
    trainer = gen.make_trainer(_fit_data(2, res * 2), seed=0)
    trainer.finish()
    gen._vocab = trainer.vocab
    gen._ready(comps, trainer.encoder, trainer.prompts, "widget", trainer.dtype)
    reqs = [GenerationRequest(normal=d.image, mask=d.mask, defect_type="scratch", seed=i)
            for i, d in enumerate(defects(n, res * 2))]  # fmt: skip
    gen.generate(reqs[:1])  # warm-up
    with Peak(device) as peak:
        per_image = _timed(lambda: gen.generate(reqs), 1, device) / n
    return {"peak_gb": peak.gb, "s_per_image": per_image}


def _controlnet(comps: Any) -> Any:
    from anoaug.generators.diffusion.adabldm.control import build_controlnet
    from anoaug.generators.diffusion.sd.training import seeded_init

    with seeded_init(0):
        return build_controlnet(comps.unet, comps.vae_scale_factor)


def bench_adabldm_training(res: int, checkpointing: bool, steps: int, shrink: int, precision: str,
                           device: Any) -> dict:  # fmt: skip
    """Peak memory and s/step of training the trimap ControlNet branch (`BranchTrainer`, base frozen)."""
    _release(device)  # the previous case's models
    from anoaug.generators.diffusion.adabldm.control import trimap_levels
    from anoaug.generators.diffusion.adabldm.training import BranchSettings, BranchTrainer, Example

    comps = build_components(shrink, device)
    controlnet = _controlnet(comps)
    if checkpointing:
        comps.unet.enable_gradient_checkpointing()
        controlnet.enable_gradient_checkpointing()
    examples = [Example(d.image, d.mask, trimap_levels(_object_trimap(d.mask)), d.defect_type, "real")
                for d in defects(2, res * 2)]  # fmt: skip
    settings = BranchSettings(resolution=res, batch_size=1, mixed_precision=precision)
    with Peak(device) as peak:
        trainer = BranchTrainer(comps, controlnet, examples, "widget", settings, device, seed=0)
        trainer.step()  # warm-up (`train` would freeze the branch at its end)
        per_step = _timed(trainer.step, steps, device)
    return {"peak_gb": peak.gb, "s_per_step": per_step}


def bench_adabldm_sampling(res: int, sample_steps: int, adapt_steps: int, shrink: int, precision: str,
                           device: Any, n: int = 2) -> dict:  # fmt: skip
    """Seconds per image of `adabldm` generate: branch on, multi-stage 26/20/5, decoder adaptation per image."""
    _release(device)  # the previous case's models
    from anoaug.generators import GenerationRequest, get_generator

    comps = build_components(shrink, device)
    controlnet = _controlnet(comps)
    params = {"model": "<random sd1.5-shaped>", "resolution": res, "num_inference_steps": sample_steps,
              "mixed_precision": precision, "generation_batch_size": n, "decoder_adaptation": "per_image",
              "adaptation_steps": adapt_steps}  # fmt: skip
    gen = get_generator("adabldm")(params)
    gen._device = device
    gen._ready(comps, controlnet, "widget", "object")
    reqs = [GenerationRequest(d.image, d.mask, "scratch", i, _object_trimap(d.mask))
            for i, d in enumerate(defects(n, res * 2))]  # fmt: skip
    gen.generate(reqs[:1])  # warm-up
    with Peak(device) as peak:
        per_image = _timed(lambda: gen.generate(reqs), 1, device) / n
    return {"peak_gb": peak.gb, "s_per_image": per_image}


CASES = ("sd", "anomalydiffusion", "dualanodiff", "adabldm")


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--resolutions", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--steps", type=int, default=3, help="timed training steps per configuration")
    ap.add_argument("--sample-steps", type=int, default=30)
    ap.add_argument("--full-size", action="store_true", help="on CPU too: SD 1.5 widths and the given resolutions")
    ap.add_argument("--only", nargs="+", choices=CASES, default=list(CASES), help="generators to measure")
    ap.add_argument("--adapt-steps", type=int, default=20, help="adabldm: decoder adaptation iterations per image")
    args = ap.parse_args()

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    precision = "bf16" if cuda else "no"
    shrink, resolutions, steps = 1, args.resolutions, args.steps
    if not cuda:
        print("no CUDA device: CPU smoke run", end="")
        if not args.full_size:
            shrink, resolutions, steps = 8, [64], 1
            print(" at a REDUCED size (widths / 8, 64 px, 1 step, fp32); figures are not SD 1.5 figures", end="")
        print("; peak = process max RSS (includes everything loaded so far)")
    else:
        print(f"device: {torch.cuda.get_device_name(0)}; bf16; SD 1.5 shapes, random weights")
    ss = args.sample_steps

    def row(what: str, res: int, ckpt: bool | None, r: dict, note: str = "") -> None:
        col = "-" if ckpt is None else "on" if ckpt else "off"
        per, unit = (r["s_per_step"], "/st") if "s_per_step" in r else (r["s_per_image"], "/im")
        print(f"{what:<44}{res:>5}{col:>10}{r['peak_gb']:>10.2f}{per:>9.3f}{unit}{note}", flush=True)

    print(f"{'what':<44}{'res':>5}{'grad ckpt':>10}{'peak GB':>10}{'seconds':>12}")
    if "sd" in args.only:
        print("diffusion-sd")
        for res in resolutions:
            for ckpt in (False, True):
                r = bench_training(res, ckpt, steps, shrink, precision, device)
                note = ""
                if cuda and res == 256:
                    note = "  (goal <= 12 GB: " + ("met)" if r["peak_gb"] <= GOAL_GB_256 else "NOT met)")
                row("  train TI + LoRA r4, batch 1", res, ckpt, r, note)
            row(f"  blended sampling, {ss} steps, CFG", res, None, bench_sampling(res, ss, shrink, precision, device))
    if "anomalydiffusion" in args.only:
        print("anomalydiffusion")
        for res in resolutions:
            for ckpt in (False, True):
                row("  train 4 tokens/type + spatial enc., batch 1", res, ckpt,
                    bench_ad_training(res, ckpt, steps, shrink, precision, device))  # fmt: skip
            for mode in ("off", "paper"):
                r = bench_ad_sampling(res, ss, mode, shrink, precision, device)
                row(f"  sampling, {ss} steps, re-weighting {mode}", res, None, r)
    if "adabldm" in args.only:
        print("adabldm")
        for res in resolutions:
            for ckpt in (False, True):
                row("  train trimap ControlNet, batch 1", res, ckpt,
                    bench_adabldm_training(res, ckpt, steps, shrink, precision, device))  # fmt: skip
            r = bench_adabldm_sampling(res, ss, args.adapt_steps, shrink, precision, device)
            row(f"  multi-stage {ss} steps + adapt. {args.adapt_steps}/im", res, None, r)
    if "dualanodiff" in args.only:
        print("dualanodiff")
        from bench_dualanodiff import bench_sd15_memory

        bench_sd15_memory(args.resolutions, args.steps)  # reduces itself on a CPU, as above


if __name__ == "__main__":
    main()
