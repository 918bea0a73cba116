"""Benchmarks of the tiny diffusion profile; prints ratios (not run by the tests).

    python benchmarks/bench_diffusion.py overhead [--batch 8] [--steps 25] [--artifact DIR]
    python benchmarks/bench_diffusion.py steps --artifact DIR --demo-root ROOT --category cap
    python benchmarks/bench_diffusion.py train --demo-root ROOT --category cap [--out DIR]

overhead: wall time per generated image / (steps x one denoiser forward per image at the same batch);
          goal <= 1.15 (everything around the UNet - windowing, scheduler, blending, compositing - is cheap).
steps:    a cheap quality proxy at 10/25/50/100 inference steps: distance of the colour statistics inside
          the mask to those of the real generator-training defects of the type (lower is better), and the
          mean absolute difference to the 100-step result (convergence).
train:    training time per category with the default (CPU demo) settings; goal <= 600 s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _random_generator(params: dict) -> object:
    """A diffusion-tiny generator with random weights (timing does not depend on the weights)."""
    from anoaug.generators.diffusion.tiny.generator import TinyDiffusionGenerator
    from anoaug.generators.diffusion.tiny.training import make_noise_scheduler
    from anoaug.generators.diffusion.tiny.unet import build_tiny_unet

    gen = TinyDiffusionGenerator(params)
    gen.types = ["crack", "scratch"]
    gen.unet = build_tiny_unet(gen._unet_config()).eval()
    gen.noise_scheduler = make_noise_scheduler()
    return gen


def _synthetic_requests(n: int, types: list[str], size: int = 256) -> list:
    import cv2

    from anoaug.generators import GenerationRequest

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        normal = np.clip(rng.normal(150, 10, (size, size, 3)), 0, 255).astype(np.uint8)
        mask = np.zeros((size, size), np.uint8)
        p0 = rng.integers(60, 190, 2)
        cv2.line(mask, tuple(int(v) for v in p0), tuple(int(v) for v in p0 + rng.integers(-30, 30, 2)), 1, 3)
        out.append(GenerationRequest(normal, mask.astype(bool), types[i % len(types)], seed=i))
    return out


def bench_overhead(args: argparse.Namespace) -> None:
    import torch

    from anoaug.generators.diffusion.tiny.generator import cpu_threads
    from anoaug.generators.diffusion.tiny.unet import denoise, model_input

    params = {"num_inference_steps": args.steps, "scheduler": args.scheduler, "generation_batch_size": args.batch}
    if args.artifact:
        from anoaug.generators import get_generator

        gen = get_generator("diffusion-tiny").load(args.artifact)
        for key, value in params.items():
            setattr(gen.settings, key, value)
    else:
        gen = _random_generator(params)
    reqs = _synthetic_requests(args.batch, gen.types)
    crop = gen.settings.crop
    x = torch.randn(args.batch, 3, crop, crop)
    mch = torch.zeros(args.batch, 1, crop, crop)
    mch[:, :, crop // 3 : crop // 2] = 1
    labels = torch.zeros(args.batch, dtype=torch.long)
    t = torch.full((args.batch,), 500)

    def forward() -> None:
        with torch.no_grad():
            inp = model_input(x, x, mch).contiguous(memory_format=torch.channels_last)
            denoise(gen.unet, inp, t, labels)

    gen.generate(reqs)  # warm-up
    with cpu_threads(gen.settings.gen_threads):  # the same threads as generate()
        forward()
        t0 = time.perf_counter()
        for _ in range(args.repeat * args.steps):
            forward()
        t_fwd = (time.perf_counter() - t0) / (args.repeat * args.steps)
    t0 = time.perf_counter()
    for _ in range(args.repeat):
        gen.generate(reqs)
    t_gen = (time.perf_counter() - t0) / args.repeat
    ratio = t_gen / (args.steps * t_fwd)
    print(
        f"overhead: batch {args.batch}, {args.steps} {args.scheduler} steps: {t_gen / args.batch:.3f} s/image, "
        f"forward {t_fwd / args.batch * 1000:.1f} ms/image -> ratio {ratio:.3f} (goal <= 1.15)"
    )


def _stats(pixels: np.ndarray) -> np.ndarray:
    import cv2

    lab = cv2.cvtColor(pixels.reshape(-1, 1, 3), cv2.COLOR_RGB2LAB).reshape(-1, 3).astype(np.float32)
    return np.concatenate([lab.mean(0), lab.std(0)])


def bench_steps(args: argparse.Namespace) -> None:
    from anoaug.data.formats import read_category
    from anoaug.data.io import load_image, load_mask
    from anoaug.data.split import make_split
    from anoaug.generators import FitData, GenerationRequest, get_generator

    data = read_category(args.demo_root, args.category)
    split = make_split(data, seed=0)
    fd = FitData.from_split(data, split)
    gen = get_generator("diffusion-tiny").load(args.artifact)
    real = {t: _stats(np.concatenate([d.image[d.mask] for d in fd.defects if d.defect_type == t])) for t in gen.types}
    normals = [load_image(data.path(r["relpath"])) for r in split.rows("eval_normal")]
    reqs = [
        GenerationRequest(normals[i % len(normals)], load_mask(data.path(r["mask_relpath"])), r["label"], seed=i)
        for i, r in enumerate(split.rows("eval_defect")[: args.n])
    ]
    results = {}
    for steps in (10, 25, 50, 100):
        gen.settings.num_inference_steps = steps
        results[steps] = gen.generate(reqs)
    for steps, res in results.items():
        pairs = list(zip(reqs, res, results[100], strict=True))
        dist = np.mean([np.abs(_stats(r.image[q.mask]) - real[q.defect_type]).mean() for q, r, _ in pairs])
        conv = np.mean([np.abs(r.image.astype(float) - r100.image)[q.mask].mean() for q, r, r100 in pairs])
        print(f"steps {steps:3d}: Lab-stat distance to real defects {dist:6.2f}   |x - x_100| in mask {conv:6.2f}")


def bench_train(args: argparse.Namespace) -> None:
    from anoaug.data.formats import read_category
    from anoaug.data.split import make_split
    from anoaug.generators import FitData, get_generator

    data = read_category(args.demo_root, args.category)
    fd = FitData.from_split(data, make_split(data, seed=0), kind="texture" if args.category == "fabric" else "object")
    params = json.loads(args.params) if args.params else {}
    gen = get_generator("diffusion-tiny")(params)
    t0 = time.perf_counter()
    gen.fit(fd, args.out, seed=0)
    wall = time.perf_counter() - t0
    s = gen.train_summary
    first, last = (s["losses"][0], s["losses"][-1]) if s["losses"] else (float("nan"), float("nan"))
    print(
        f"train {args.category}: {wall:.0f} s wall ({wall / 600:.2f} of the 600 s goal), {s['steps']} steps "
        f"({s['steps'] / max(s['elapsed_s'], 1e-9):.2f} steps/s), stopped by {s['stopped_by']}, "
        f"loss {first:.3f} -> {last:.3f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["overhead", "steps", "train"])
    ap.add_argument("--artifact", type=Path)
    ap.add_argument("--demo-root", type=Path)
    ap.add_argument("--category", default="cap")
    ap.add_argument("--out", type=Path, default=Path("/tmp/anoaug-bench-tiny"))
    ap.add_argument("--params", help="JSON generator params for 'train'")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--scheduler", default="ddim", choices=["ddim", "dpm++"])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--n", type=int, default=8, help="requests for 'steps'")
    args = ap.parse_args()
    if args.what in ("steps", "train") and args.demo_root is None:
        from anoaug.data.demo import make_demo_dataset

        args.demo_root = Path("/tmp/anoaug-bench-demo")
        if not (args.demo_root / args.category).is_dir():
            make_demo_dataset(args.demo_root, seed=0)
    if args.what == "steps" and args.artifact is None:
        ap.error("steps needs --artifact (a fitted diffusion-tiny artifact)")
    {"overhead": bench_overhead, "steps": bench_steps, "train": bench_train}[args.what](args)


if __name__ == "__main__":
    main()
