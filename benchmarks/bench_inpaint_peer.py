"""`diffusion-sd`'s windowed blended sampling vs diffusers' `StableDiffusionInpaintPipeline` on the same base.

    python benchmarks/bench_inpaint_peer.py [--model DIR] [--demo-root ROOT] [-n 8] [--steps 25] [--seeds 0 1]

Both sides run the SAME pretrained base model (a diffusers Stable Diffusion folder with an inpainting UNet;
default: a minimal one pretrained here with ``PretrainSettings.minimal()`` on the demo normals, as the tests'
``pretrained_sd`` fixture does), the same scheduler (DDIM), number of steps, guidance scale, prompt, seeds,
normal images (demo/cap normal training images) and defect masks (demo/cap ground-truth masks). The
diffusers pipeline is the peer a user would pick: it crops around the mask (``padding_mask_crop``, the
padding chosen so its crop has the side of ours), inpaints at the model resolution and pastes the result
back over the mask. ``diffusion-sd`` is used with nothing learned (textual inversion, LoRA and spatial
tokens off, 0 training steps), so both sample from the base model alone.

Prints seconds per image of each side and their ratio (best of the repeats, after a warm-up; the machine
may be shared), and the mean |difference| (0-255) to the normal image outside the mask (ours must be 0),
over all pixels outside the mask and over the outside-mask pixels of the crop window. Asserts nothing
(tests/test_inpaint_peer.py asserts the exact zero).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@dataclass
class Case:
    """One inpainting request: a normal image, a defect mask and its type."""

    normal: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) bool
    defect_type: str


@dataclass
class SideResult:
    """What one side produced: images (one per case and seed) and seconds per image."""

    images: list[np.ndarray]
    seconds_per_image: float


def demo_cases(root: Path, category: str, n: int) -> list[Case]:
    """`n` cases: the category's normal training images paired in turn with its ground-truth defect masks."""
    from anoaug.data.formats import read_category
    from anoaug.data.io import load_image, load_mask
    from anoaug.data.split import make_split

    data = read_category(root, category)
    split = make_split(data, seed=0)
    normals = sorted(split.rows("train_normal"), key=lambda r: r["relpath"])
    defects = sorted((r for r in data.defects if r.mask_relpath), key=lambda r: r.relpath)
    cases = []
    for i in range(n):
        d = defects[i % len(defects)]
        mask = load_mask(data.path(d.mask_relpath)).astype(bool)
        cases.append(Case(load_image(data.path(normals[i % len(normals)]["relpath"])), mask, d.label))
    return cases


def ours(model: str, category: str, cases: list[Case], seeds: list[int], params: dict[str, Any]) -> tuple[Any, Any]:
    """A fitted `diffusion-sd` with nothing learned, and a function running it on the cases."""
    from anoaug.generators import DefectExample, FitData, GenerationRequest, get_generator

    gen = get_generator("diffusion-sd")(
        {
            "model": model,
            "textual_inversion": False,
            "lora_rank": 0,
            "spatial_tokens": 0,
            "train_steps": 0,
            "generation_batch_size": 1,
            **params,
        }  # fmt: skip
    )
    example = DefectExample(image=cases[0].normal, mask=cases[0].mask, defect_type=cases[0].defect_type,
                            relpath="bench")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        gen.fit(FitData(category=category, kind="object", defects=[example], normal_paths=[]), Path(tmp), seed=0)

    def run() -> list[np.ndarray]:
        reqs = [GenerationRequest(normal=c.normal, mask=c.mask.astype(np.uint8), defect_type=c.defect_type, seed=s)
                for s in seeds for c in cases]  # fmt: skip
        return [r.image for r in gen.generate(reqs)]

    return gen, run


def peer(model: str, gen: Any, cases: list[Case], seeds: list[int]) -> Any:
    """A function running `StableDiffusionInpaintPipeline` (``padding_mask_crop``) like `gen` on the cases."""
    import torch
    from diffusers import StableDiffusionInpaintPipeline
    from PIL import Image

    from anoaug.generators.diffusion.blending import make_scheduler
    from anoaug.generators.diffusion.crops import crop_box

    cfg = gen.settings
    pipe = StableDiffusionInpaintPipeline.from_pretrained(model, local_files_only=True, safety_checker=None)
    pipe.scheduler = make_scheduler(cfg.scheduler, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    res = cfg.resolution

    def pad_for(mask: np.ndarray) -> int:
        """Padding that makes the pipeline's crop about as large as ours (crop side minus mask extent, halved)."""
        ys, xs = np.nonzero(mask)
        extent = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)
        return max(0, int(np.ceil((crop_box(mask, res, cfg.context).side - extent) / 2)))

    def run() -> list[np.ndarray]:
        out = []
        for s in seeds:
            for c in cases:
                result = pipe(
                    gen.prompt_for(c.defect_type),
                    image=Image.fromarray(c.normal),
                    mask_image=Image.fromarray(c.mask.astype(np.uint8) * 255),
                    height=res,
                    width=res,
                    padding_mask_crop=pad_for(c.mask),
                    num_inference_steps=cfg.num_inference_steps,
                    guidance_scale=cfg.guidance_scale,
                    negative_prompt=cfg.negative_prompt or None,
                    generator=torch.Generator(device="cpu").manual_seed(s),
                )
                out.append(np.asarray(result.images[0].convert("RGB")))
        return out

    return run


def outside_diff(cases: list[Case], seeds: list[int], images: list[np.ndarray], window: int | None = None) -> float:
    """Mean |image - normal| (0-255) over the pixels outside the masks (only inside each crop window if given)."""
    from anoaug.generators.diffusion.crops import crop_box

    total, count = 0.0, 0
    i = 0
    for _ in seeds:
        for c in cases:
            sel = ~c.mask
            if window is not None:
                box = crop_box(c.mask, window, 2.0)
                inside = np.zeros_like(sel)
                inside[box.y0 : box.y0 + box.side, box.x0 : box.x0 + box.side] = True
                sel = sel & inside
            d = np.abs(images[i].astype(np.int16) - c.normal.astype(np.int16))[sel]
            total += float(d.sum())
            count += d.size
            i += 1
    return total / max(count, 1)


def timed(runs: list[Any], repeats: int, n_images: int) -> list[SideResult]:
    """Best seconds per image of each of `runs` over 1 + `repeats` rounds (the first warms up; the sides
    alternate within a round, so that a change in machine load hits both), and the last images of each."""
    best = [float("inf")] * len(runs)
    images: list[list[np.ndarray]] = [[] for _ in runs]
    for _ in range(1 + repeats):
        for k, run in enumerate(runs):
            t0 = time.perf_counter()
            images[k] = run()
            best[k] = min(best[k], time.perf_counter() - t0)
    return [SideResult(im, b / n_images) for im, b in zip(images, best, strict=True)]


def compare(model: str, cases: list[Case], seeds: list[int], params: dict[str, Any], repeats: int = 1,
            category: str = "cap") -> dict[str, Any]:  # fmt: skip
    """Both sides on the cases: seconds per image, their ratio and the outside-mask differences."""
    gen, run_ours = ours(model, category, cases, seeds, params)
    run_peer = peer(model, gen, cases, seeds)
    n = len(cases) * len(seeds)
    a, b = timed([run_ours, run_peer], repeats, n)
    res = gen.settings.resolution
    return {
        "ours_s_per_image": a.seconds_per_image,
        "peer_s_per_image": b.seconds_per_image,
        "ratio_peer_over_ours": b.seconds_per_image / a.seconds_per_image,
        "ours_outside_diff": outside_diff(cases, seeds, a.images),
        "peer_outside_diff": outside_diff(cases, seeds, b.images),
        "ours_outside_diff_window": outside_diff(cases, seeds, a.images, res),
        "peer_outside_diff_window": outside_diff(cases, seeds, b.images, res),
        "ours_images": a.images,
        "peer_images": b.images,
        "settings": {
            k: getattr(gen.settings, k)
            for k in ("resolution", "context", "scheduler", "num_inference_steps", "guidance_scale")
        },  # fmt: skip
    }


def minimal_base(demo_root: Path, out: Path) -> Path:
    """A minimal base model pretrained on the demo normals (as tests/conftest.py `pretrained_sd`)."""
    from anoaug.data.formats import read_category
    from anoaug.data.split import make_split
    from anoaug.generators.diffusion.pretrain import PretrainSettings, pretrain_base

    sources = []
    for name in ("cap", "fabric"):
        data = read_category(demo_root, name)
        sources.append((data, make_split(data, seed=0)))
    return pretrain_base(PretrainSettings.minimal(), sources, out, None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="diffusers SD folder (default: pretrain a minimal one)")
    ap.add_argument("--demo-root", type=Path, default=Path("/tmp/anoaug-bench-demo"))
    ap.add_argument("--category", default="cap")
    ap.add_argument("-n", type=int, default=8, help="normal images / masks")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--steps", type=int, default=25, help="num_inference_steps of both sides")
    ap.add_argument("--guidance", type=float, default=5.0, help="guidance_scale of both sides")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    args = ap.parse_args()

    import torch

    from anoaug.data.demo import make_demo_dataset
    from anoaug.generators.diffusion.pretrain import read_card

    torch.set_num_threads(args.threads)
    if not all((args.demo_root / c).is_dir() for c in ("cap", "fabric")):
        make_demo_dataset(args.demo_root, seed=0)
    model = args.model or minimal_base(args.demo_root, Path(tempfile.mkdtemp(prefix="anoaug-peer-")) / "sd")
    res = int(read_card(model)["resolution"])
    cases = demo_cases(args.demo_root, args.category, args.n)
    params = {"resolution": res, "num_inference_steps": args.steps, "guidance_scale": args.guidance,
              "scheduler": "ddim"}  # fmt: skip
    r = compare(str(model), cases, list(args.seeds), params, args.repeats, args.category)
    n = len(cases) * len(args.seeds)
    print(f"model {model} ({res} px); demo/{args.category}: {len(cases)} normals x masks, seeds {args.seeds} "
          f"= {n} images; {r['settings']}; torch threads {args.threads}")  # fmt: skip
    print(f"seconds per image: diffusion-sd {r['ours_s_per_image']:.3f}, StableDiffusionInpaintPipeline "
          f"{r['peer_s_per_image']:.3f}; ratio pipeline / ours = {r['ratio_peer_over_ours']:.2f}")  # fmt: skip
    print(f"mean |difference| to the normal outside the mask (0-255): diffusion-sd {r['ours_outside_diff']:.4f}, "
          f"pipeline {r['peer_outside_diff']:.4f}")  # fmt: skip
    print(f"  within the crop window only: diffusion-sd {r['ours_outside_diff_window']:.4f}, "
          f"pipeline {r['peer_outside_diff_window']:.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
