"""Memory and speed of `diffusion-sd` at Stable Diffusion 1.5 scale, on random weights (nothing downloaded).

    python benchmarks/bench_sd_memory.py [--resolutions 256 512] [--steps 3] [--sample-steps 30] [--full-size]

Builds a UNet2DConditionModel / AutoencoderKL / CLIP text encoder with the SD 1.5 configs (860M / 84M /
123M parameters) and random weights, then measures with the generator's own training code
(`sd.training.SDTrainer`: textual inversion + LoRA rank 4, batch 1, bf16) the peak memory and seconds per
step at each resolution with gradient checkpointing off and on, and seconds per image of blended sampling
(`diffusion-sd` generate, 30 DDIM steps, guidance on). Goal on CUDA: <= 12 GB peak at 256 px for LoRA+TI.

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


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--resolutions", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--steps", type=int, default=3, help="timed training steps per configuration")
    ap.add_argument("--sample-steps", type=int, default=30)
    ap.add_argument("--full-size", action="store_true", help="on CPU too: SD 1.5 widths and the given resolutions")
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
    print(f"{'what':<34}{'res':>5}{'grad ckpt':>10}{'peak GB':>10}{'seconds':>12}")
    for res in resolutions:
        for ckpt in (False, True):
            r = bench_training(res, ckpt, steps, shrink, precision, device)
            note = ""
            if cuda and res == 256:
                note = "  (goal <= 12 GB: " + ("met)" if r["peak_gb"] <= GOAL_GB_256 else "NOT met)")
            line = f"{'train TI + LoRA r4, batch 1':<34}{res:>5}{'on' if ckpt else 'off':>10}"
            print(f"{line}{r['peak_gb']:>10.2f}{r['s_per_step']:>9.3f}/st{note}", flush=True)
        r = bench_sampling(res, args.sample_steps, shrink, precision, device)
        line = f"{f'blended sampling, {args.sample_steps} steps, CFG':<34}{res:>5}{'-':>10}"
        print(f"{line}{r['peak_gb']:>10.2f}{r['s_per_image']:>9.3f}/im", flush=True)


if __name__ == "__main__":
    main()
