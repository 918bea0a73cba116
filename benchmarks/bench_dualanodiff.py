"""dualanodiff vs diffusion-sd on the same base model: cost, CPU fit memory and mask agreement (not run by tests).

    python benchmarks/bench_dualanodiff.py [--model DIR] [--category cap] [--steps 10] [--n 8] [--train-steps 30]
        [--repeats 3] [--arms 1,2,4] [--text-lora]
    python benchmarks/bench_dualanodiff.py --unet-step --model DIR [--repeats 15]
    python benchmarks/bench_dualanodiff.py --sd15-memory [--resolutions 256 512] [--mem-steps 3]

Without --model, a minimal base is pretrained on the demo data first (as the tests' `pretrained_sd`).
Prints per generator: fit seconds and the peak RSS of a fresh process that fits it (CPU), seconds per image at the same
inference steps / resolution / batch (repeats interleaved over the arms), the ratio to diffusion-sd (goal <= 2.2:
two branches per sample; arm 2 is arm 1 with the previous, separate background pass),
and for dualanodiff the mask agreement: IoU between the mask read from the part and the pixels of the whole
image that changed, the share of masks on the object's foreground, and how many draws fell back.

--unet-step: milliseconds of one denoising step's UNet call (4 requests with guidance: 16 dual rows, 4 backgrounds)
for the plain UNet and the dual model's pieces: processors, shared attention, routed branch LoRAs, background
compensation batched into the branches' call or as a separate pass (interleaved repeats).

--sd15-memory: peak memory and seconds per training step of the dual trainer (two LoRA r4 branches, shared
attention, background compensation, textual inversion; batch 1 = 2 branch rows + 1 background row) on
SD 1.5-shaped random weights (`bench_sd_memory.build_components`), bf16, gradient checkpointing off / on.
Goal on CUDA: <= 16 GB at 512 px. On CPU it runs one reduced step (widths / 8, 64 px) and says so.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _fit_in_child(name: str, params: dict, root: str, category: str, kind: str, out: str, threads: int) -> tuple:
    """Fit in a fresh process: (seconds, peak RSS MiB of that process: imports + base model + training)."""
    import resource

    import torch

    from anoaug.data.formats import read_category
    from anoaug.data.split import make_split
    from anoaug.generators import FitData, get_generator

    torch.set_num_threads(threads)
    data = read_category(Path(root), category)
    fd = FitData.from_split(data, make_split(data, 0), kind=kind)
    t0 = time.perf_counter()
    get_generator(name)(params).fit(fd, out, seed=0)
    return time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _requests(fd, n: int) -> list:
    import cv2

    from anoaug.generators import GenerationRequest
    from anoaug.masks.foreground import extract_foreground
    from anoaug.spec import ForegroundSection

    rng = np.random.default_rng(0)
    normals = fd.normal_images(limit=4)
    out = []
    for i in range(n):
        normal = normals[i % len(normals)]
        fg = extract_foreground(normal, ForegroundSection(), fd.kind)
        inner = cv2.erode(fg.astype(np.uint8), np.ones((21, 21), np.uint8)) > 0
        ys, xs = np.nonzero(inner if inner.any() else fg)
        k = int(rng.integers(len(ys)))
        mask = np.zeros(fg.shape, np.uint8)
        cv2.ellipse(
            mask,
            (int(xs[k]), int(ys[k])),
            (int(rng.integers(6, 16)), int(rng.integers(3, 8))),
            float(rng.uniform(0, 180)),
            0,
            360,
            1,
            -1,
        )
        mask = mask.astype(bool) & fg
        trimap = np.where(mask, 255, np.where(fg, 127, 0)).astype(np.uint8)
        out.append(GenerationRequest(normal, mask, fd.defect_types[i % len(fd.defect_types)], i, trimap))
    return out


def bench_sd15_memory(resolutions: list[int], steps: int) -> None:
    """Dual-trainer memory on SD 1.5 shapes (see module doc)."""
    import torch
    from bench_sd_memory import Peak, build_components, defects

    from anoaug.generators import FitData
    from anoaug.generators.diffusion.dualanodiff.training import DualTrainer, DualTrainSettings
    from anoaug.png import write_png

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    precision, shrink = ("bf16", 1) if cuda else ("no", 8)
    if not cuda:
        resolutions, steps = [64], 1
        print("no CUDA device: CPU smoke run at a REDUCED size (widths / 8, 64 px, 1 step, fp32); not SD 1.5 figures")
    tmp = Path(tempfile.mkdtemp(prefix="bench-dual-mem-"))
    print(f"{'dual train (TI + 2 LoRA r4 + SAIM + BCM)':<42}{'res':>5}{'grad ckpt':>10}{'peak GB':>10}{'s/step':>9}")
    for res in resolutions:
        normals = []
        for i, d in enumerate(defects(2, res * 2)):
            normals.append(tmp / f"normal{i}.png")
            write_png(normals[-1], np.where(d.mask[..., None], 128, d.image).astype(np.uint8))
        for ckpt in (False, True):
            comps = build_components(shrink, device)
            fd = FitData("widget", "object", defects(2, res * 2), normals, foreground_fn=lambda im: im[..., 0] > 0)
            settings = DualTrainSettings(resolution=res, batch_size=1, lora_rank=4, mixed_precision=precision,
                                         gradient_checkpointing=ckpt)  # fmt: skip
            with Peak(device) as peak:
                trainer = DualTrainer(comps, fd, settings, device, seed=0)
                trainer.step()  # warm-up
                if cuda:
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                for _ in range(steps):
                    trainer.step()
                if cuda:
                    torch.cuda.synchronize()
                per_step = (time.perf_counter() - t0) / steps
            note = f"  (goal <= 16 GB: {'met' if peak.gb <= 16 else 'NOT met'})" if cuda and res == 512 else ""
            print(f"{'':<42}{res:>5}{'on' if ckpt else 'off':>10}{peak.gb:>10.2f}{per_step:>9.3f}{note}", flush=True)
            del trainer, comps
            if cuda:
                torch.cuda.empty_cache()


def bench_unet_step(model: str, repeats: int) -> None:
    """Where a denoising step's time goes (see module doc)."""
    import torch

    from anoaug.generators.diffusion.dualanodiff import branches as br
    from anoaug.generators.diffusion.dualanodiff.training import DualUNet
    from anoaug.generators.diffusion.sd.loading import load_components

    def dual(shared: str, rank: int, background: bool, background_pass: str = "batched") -> DualUNet:
        comps = load_components(model)
        if rank:
            br.add_branch_adapters(comps.unet, rank)
        comps.unet.eval()
        return DualUNet(comps, shared, background, background_pass)

    plain = load_components(model).unet.eval()
    gen = torch.Generator().manual_seed(0)
    ch, size = plain.config.in_channels, plain.config.sample_size
    width = int(plain.config.cross_attention_dim)
    x, states = torch.randn(16, ch, size, size, generator=gen), torch.randn(16, 77, width, generator=gen)
    t = torch.tensor(500)
    bg = (torch.randn(4, ch, size, size, generator=gen), t, torch.randn(4, 77, width, generator=gen))
    models = {
        "dual processors only (off, no LoRA, no BCM)": (dual("off", 0, False), None),
        "+ shared attention position": (dual("position", 0, False), None),
        "+ two routed LoRA branches (off)": (dual("off", 4, False), None),
        "position + LoRA branches, no BCM": (dual("position", 4, False), None),
        "position + LoRA branches, BCM batched": (dual("position", 4, True), bg),
        "position + LoRA branches, BCM separate pass": (dual("position", 4, True, "separate"), bg),
    }
    cases = {"plain UNet, 8 rows (diffusion-sd's batch)": lambda: plain(x[:8], t, encoder_hidden_states=states[:8])}
    cases["plain UNet, 16 rows"] = lambda: plain(x, t, encoder_hidden_states=states)
    for label, (m, b) in models.items():
        cases[label] = lambda m=m, b=b: m(x, t, states, b)
    total = dict.fromkeys(cases, 0.0)
    with torch.no_grad():
        for f in cases.values():
            f()  # warm-up
        for _ in range(repeats):
            for label, f in cases.items():
                t0 = time.perf_counter()
                f()
                total[label] += time.perf_counter() - t0
    for label, v in total.items():
        print(f"{label:50s} {1000 * v / repeats:7.1f} ms/step", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--category", default="cap")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--train-steps", type=int, default=30)
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved timing repeats of every arm")
    ap.add_argument("--text-lora", action="store_true", help="also an arm with text_encoder_lora_rank 4")
    ap.add_argument("--arms", default="", help="comma-separated arm numbers to run (0 = diffusion-sd, always run)")
    ap.add_argument("--sd15-memory", action="store_true", help="dual-trainer memory on SD 1.5 shapes instead")
    ap.add_argument("--resolutions", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--mem-steps", type=int, default=3, help="--sd15-memory: timed training steps")
    ap.add_argument("--unet-step", action="store_true", help="one denoising step's UNet time by piece (needs --model)")
    args = ap.parse_args()
    if args.unet_step:
        import torch

        torch.set_num_threads(args.threads)
        if args.model is None:
            ap.error("--unet-step needs --model")
        bench_unet_step(args.model, args.repeats)
        return
    if args.sd15_memory:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        bench_sd15_memory(args.resolutions, args.mem_steps)
        return

    import torch

    from anoaug.data.demo import make_demo_dataset
    from anoaug.data.formats import read_category
    from anoaug.data.split import make_split
    from anoaug.generators import FitData, get_generator

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench-dual-"))
    root = tmp / "demo"
    make_demo_dataset(root, seed=0)
    model = args.model
    if model is None:
        from anoaug.generators.diffusion.pretrain import PretrainSettings, pretrain_base

        sources = []
        for name in ("cap", "fabric"):
            data = read_category(root, name)
            sources.append((data, make_split(data, seed=0)))
        t0 = time.perf_counter()
        model = str(pretrain_base(PretrainSettings.minimal(), sources, tmp / "sd", None))
        print(f"pretrained a minimal base in {time.perf_counter() - t0:.0f} s: {model}")
    data = read_category(root, args.category)
    fd = FitData.from_split(data, make_split(data, 0), kind="object" if args.category == "cap" else "texture")
    reqs = _requests(fd, args.n)
    common = {
        "model": model,
        "resolution": args.resolution,
        "train_steps": args.train_steps,
        "lora_rank": 4,
        "num_inference_steps": args.steps,
        "generation_batch_size": 4,
        "guidance_scale": 2.5,
    }
    arms = [
        ("diffusion-sd", "diffusion-sd", {}),
        ("dualanodiff (blended, position, bcm)", "dualanodiff", {}),
        ("  same, separate background pass", "dualanodiff", {}),  # the previous path, for the ratio
        (
            "dualanodiff (blended, off, no bcm)",
            "dualanodiff",
            {"shared_attention": "off", "background_compensation": False},
        ),
        ("dualanodiff (blended, position, no bcm)", "dualanodiff", {"background_compensation": False}),
        ("dualanodiff (blended, joint, bcm)", "dualanodiff", {"shared_attention": "joint"}),
        ("dualanodiff (whole, position, bcm)", "dualanodiff", {"mode": "whole"}),
    ]
    if args.text_lora:
        arms.append(("dualanodiff (blended, position, bcm, text LoRA)", "dualanodiff", {"text_encoder_lora_rank": 4}))
    if args.arms:
        keep = {0, *(int(x) for x in args.arms.split(","))}
        arms = [a for i, a in enumerate(arms) if i in keep]
    print(
        f"category {args.category}, {args.n} requests, {args.steps} steps, {args.resolution} px, "
        f"{args.train_steps} train steps, {args.threads} thread(s), {args.repeats} interleaved repeats"
    )
    fitted: dict[str, tuple] = {}
    gens = []
    for label, name, extra in arms:
        key = repr((name, sorted(extra.items())))
        if key not in fitted:
            art = tmp / f"art-{len(fitted)}-{name}"
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                job = pool.submit(_fit_in_child, name, {**common, **extra}, str(root), args.category, fd.kind,
                                  str(art), args.threads)  # fmt: skip
                fitted[key] = (art, *job.result())
        art, fit_s, peak_mib = fitted[key]
        gen = get_generator(name).load(art)
        if label.strip().startswith("same, separate"):
            gen._model.background_pass = "separate"
        gen.generate(reqs[:1])  # warm-up
        gens.append((label, name, gen, fit_s, peak_mib))
    # interleaved: every repeat times each arm once, so a load change on the machine hits all arms alike
    seconds = [0.0] * len(gens)
    results: list[list] = [[] for _ in gens]
    for _ in range(args.repeats):
        for k, (_, _, gen, _, _) in enumerate(gens):
            t0 = time.perf_counter()
            results[k] = gen.generate(reqs)
            seconds[k] += time.perf_counter() - t0
    base_spi = seconds[0] / (args.repeats * len(reqs))
    for k, (label, name, gen, fit_s, peak_mib) in enumerate(gens):
        spi = seconds[k] / (args.repeats * len(reqs))
        draws = sum(int(r.info.get("attempts", 1)) for r in results[k])
        spd = spi * len(reqs) / draws
        line = (
            f"{label:47s} fit {fit_s:5.1f} s, peak RSS {peak_mib:4.0f} MiB | "
            f"{spi:5.3f} s/image "
            f"(x{spi / base_spi:4.2f}), {draws / len(reqs):3.1f} draws/image, "
            f"{spd:5.3f} s/draw (x{spd / base_spi:4.2f})"
        )
        if name == "dualanodiff":
            infos = [r.info for r in results[k]]
            iou = np.mean([i["mask_agreement_iou"] for i in infos])
            on_fg = np.mean([i["on_foreground"] >= gen.settings.min_on_foreground for i in infos])
            fallback = sum(i["fallback"] for i in infos)
            line += (
                f" | mask IoU(part, changed) {iou:.3f}, on foreground {on_fg:.2f}, fallbacks {fallback}/{len(infos)}"
            )
        print(line, flush=True)


if __name__ == "__main__":
    main()
