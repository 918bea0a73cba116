"""anomalydiffusion on the pretrained base: cost of attention re-weighting and mask alignment (not run by tests).

    python benchmarks/bench_anomalydiffusion.py [--model DIR] [--demo-root ROOT] [--category cap]
        [--train-steps 60] [--steps 20] [--images 8] [--batch 4] [--work DIR]

Without --model a minimal base is pretrained on the demo normals (`PretrainSettings.minimal()`, as the test
fixture does; 32 px, VAE factor 4); without --demo-root the demo data is made in --work. The generator is
fitted once on the category's generator-training defects, then the same requests (the real defect masks on
normal training images) are sampled with attention_reweighting off / paper / code at the same steps.

Prints per mode: CPU seconds of this process per image (best of --reps, interleaved; wall time is printed too
but depends on what else the machine runs) and the CPU-time ratio to off (goal <= 1.15), and
mask alignment: inside = share of the changed pixels (|image - normal| > change_threshold in any channel)
that lie inside the requested mask; covered = share of the requested mask that changed (the final mask's
area / the requested area); plus the mean absolute change inside the mask (0-255).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODES = ("off", "paper", "code")


def _data(args: argparse.Namespace, work: Path) -> tuple[Path, object, object]:
    from anoaug.data.formats import read_category
    from anoaug.data.split import make_split

    root = Path(args.demo_root) if args.demo_root else work / "demo"
    if not args.demo_root and not (root / args.category).is_dir():
        from anoaug.data.demo import make_demo_dataset

        make_demo_dataset(root, seed=0)
    data = read_category(root, args.category, "auto")
    return root, data, make_split(data, 0)


def _model(args: argparse.Namespace, work: Path, root: Path) -> Path:
    if args.model:
        return Path(args.model)
    out = work / "base"
    if (out / "model_index.json").is_file():
        return out
    from anoaug.data.formats import read_category
    from anoaug.data.split import make_split
    from anoaug.generators.diffusion.pretrain import PretrainSettings, pretrain_base

    sources = []
    for name in ("cap", "fabric"):
        d = read_category(root, name)
        sources.append((d, make_split(d, seed=0)))
    t0 = time.perf_counter()
    path = pretrain_base(PretrainSettings.minimal(), sources, out, None)
    print(f"pretrained a minimal base in {time.perf_counter() - t0:.0f} s -> {path}")
    return Path(path)


def _requests(fit: object, n: int) -> list:
    """The generator-training defect masks placed on normal training images (cycled), seeds 0..n-1."""
    from anoaug.generators import GenerationRequest

    normals = fit.normal_images(limit=n)
    reqs = []
    for i in range(n):
        d = fit.defects[i % len(fit.defects)]
        normal = normals[i % len(normals)]
        if normal.shape[:2] != d.mask.shape:
            continue
        reqs.append(GenerationRequest(normal, d.mask.astype(bool), d.defect_type, seed=i))
    return reqs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="")
    ap.add_argument("--demo-root", default="")
    ap.add_argument("--category", default="cap")
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--train-steps", type=int, default=60)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", default="")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from anoaug.generators import FitData, get_generator

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench-ad-"))
    work.mkdir(parents=True, exist_ok=True)
    root, data, split = _data(args, work)
    model = _model(args, work, root)
    fit = FitData.from_split(data, split, kind="object" if args.category == "cap" else "texture")
    params = {
        "model": str(model),
        "resolution": args.resolution,
        "train_steps": args.train_steps,
        "num_inference_steps": args.steps,
        "generation_batch_size": args.batch,
    }
    gen = get_generator("anomalydiffusion")(params)
    t0 = time.perf_counter()
    art = gen.fit(fit, work / "artifact", seed=0)
    print(f"fit: {args.train_steps} steps in {time.perf_counter() - t0:.1f} s ({art})")
    reqs = _requests(fit, args.images)
    gens = {m: get_generator("anomalydiffusion").load(art) for m in MODES}
    for m, g in gens.items():
        g.settings.attention_reweighting = m
        g.generate(reqs[:1])  # warm-up (processor installation, first-call allocations)
    best = {m: float("inf") for m in MODES}  # CPU seconds of this process (the machine may be shared)
    wall = {m: float("inf") for m in MODES}
    results = {}
    for _ in range(args.reps):
        for m in MODES:
            t0, c0 = time.perf_counter(), time.process_time()
            results[m] = gens[m].generate(reqs)
            best[m] = min(best[m], (time.process_time() - c0) / len(reqs))
            wall[m] = min(wall[m], (time.perf_counter() - t0) / len(reqs))
    thr = gens["off"].settings.change_threshold
    print(
        f"{args.category}: {len(reqs)} images, {args.steps} DDIM steps, resolution {args.resolution}, "
        f"batch {args.batch}, {args.threads} thread(s), best of {args.reps}"
    )
    head = f"{'mode':6} {'cpu s/img':>9} {'ratio':>6} {'wall s/img':>10} {'inside':>7} {'covered':>8}"
    print(f"{head} {'|chg| in mask':>14}")
    for m in MODES:
        inside, covered, change = [], [], []
        for req, res in zip(reqs, results[m], strict=True):
            diff = np.abs(res.image.astype(np.int16) - req.normal.astype(np.int16))
            changed = (diff > thr).any(axis=2)
            inside.append((changed & req.mask).sum() / max(1, changed.sum()))
            covered.append(res.mask.sum() / max(1, req.mask.sum()))
            change.append(diff[req.mask].mean())
        print(
            f"{m:6} {best[m]:9.3f} {best[m] / best['off']:6.3f} {wall[m]:10.3f} {np.mean(inside):7.3f} "
            f"{np.mean(covered):8.3f} {np.mean(change):14.1f}"
        )


if __name__ == "__main__":
    main()
