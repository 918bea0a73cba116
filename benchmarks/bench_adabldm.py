"""What each AdaBLDM stage costs and what decoder adaptation buys (prints figures; not run by the tests).

    python benchmarks/bench_adabldm.py [--out DIR] [--demo-root ROOT] [-n N] [--steps S] [--adapt-steps A]

Pretrains the minimal base model on the demo normals (as tests/conftest.py does; cached in --out), fits
`adabldm` on demo/cap (trimap ControlNet on), then samples the same N requests (masks synthesized from the
real cap masks, with trimaps) under each setting and prints:

* seconds per image of: plain blended sampling; T1 + T2 only; T1 + T2 + T3 (the T3 image editing adds a
  decode + encode per step); and the decoder adaptation per image vs per batch on top;
* the seam error: mean |generated - normal| (0-255) in a 3 px band just outside the mask, BEFORE the final
  pixel composite (which makes the outside exact anyway), without and with adaptation; and how much the
  adaptation changes the defect region itself (mean |adapted - not adapted| inside the mask).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("/tmp/anoaug-bench-adabldm"))
    ap.add_argument("--demo-root", type=Path, default=Path("/tmp/anoaug-bench-demo"))
    ap.add_argument("-n", type=int, default=8, help="requests per setting")
    ap.add_argument("--steps", type=int, default=20, help="num_inference_steps")
    ap.add_argument("--adapt-steps", type=int, default=20, help="decoder adaptation iterations")
    ap.add_argument("--train-steps", type=int, default=40, help="branch training steps")
    args = ap.parse_args()

    import cv2
    import numpy as np
    import torch

    from anoaug.data.demo import make_demo_dataset
    from anoaug.data.formats import read_category
    from anoaug.data.split import make_split
    from anoaug.generators import FitData, GenerationRequest, get_generator
    from anoaug.generators.diffusion.pretrain import PretrainSettings, pretrain_base
    from anoaug.masks.synthesis import MaskSynthesizer
    from anoaug.spec import MasksSection

    torch.set_num_threads(1)
    if not all((args.demo_root / c).is_dir() for c in ("cap", "fabric")):
        make_demo_dataset(args.demo_root, seed=0)
    sources = []
    for name in ("cap", "fabric"):
        data = read_category(args.demo_root, name)
        sources.append((data, make_split(data, seed=0)))
    base = args.out / "base"
    if not (base / "model_card.json").is_file():
        pretrain_base(PretrainSettings.minimal(), sources, base, None)
    data, split = sources[0]
    fd = FitData.from_split(data, split, kind="object")
    params = {
        "model": str(base),
        "resolution": 32,
        "train_steps": args.train_steps,
        "composites_per_type": 4,
        "num_inference_steps": args.steps,
        "adaptation_steps": args.adapt_steps,
        "generation_batch_size": 4,
    }
    gen = get_generator("adabldm")(params)
    t0 = time.perf_counter()
    gen.fit(fd, args.out / "artifact", seed=0)
    print(f"base: {base} (minimal pretrained, 32 px, VAE factor 4); fit on demo/cap: {time.perf_counter() - t0:.1f} s, "
          f"{gen.examples_used}, branch loss {gen.train_losses[0]:.4f} -> {gen.train_losses[-1]:.4f}")  # fmt: skip

    masks = MasksSection(placement="foreground")
    synth = MaskSynthesizer.from_split(data, split, masks, "object")
    rng = np.random.default_rng(0)
    normals = fd.normal_images(limit=args.n)
    reqs = []
    for i in range(args.n):
        normal = normals[i % len(normals)]
        t = fd.defect_types[i % len(fd.defect_types)]
        sm = synth.synthesize(normal, t, rng, str(fd.normal_paths[i % len(normals)]))
        reqs.append(GenerationRequest(normal, sm.mask, t, 1000 + i, sm.trimap))
    band = [cv2.dilate(r.mask.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool) & ~r.mask for r in reqs]

    def diff(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float:
        return float(np.abs(a.astype(float) - b.astype(float))[where].mean())

    def run(label: str, **settings: object) -> list[np.ndarray]:
        for k, v in settings.items():
            setattr(gen.settings, k, v)
        gen.sample(reqs[:1])  # warm-up
        t1 = time.perf_counter()
        out = [s["pasted"] for s in gen.sample(reqs)]
        dt = (time.perf_counter() - t1) / len(reqs)
        seam = np.mean([diff(p, r.normal, b) for p, r, b in zip(out, reqs, band, strict=True)])
        lengths = gen.stage_lengths()
        print(f"  {label:<34} {dt:7.3f} s/image   seam error {seam:6.2f}   stages T1/T2/T3 = {lengths}")
        return out

    print(f"{args.n} requests, {args.steps} DDIM steps, guidance {gen.settings.guidance_scale}, "
          f"adaptation {args.adapt_steps} iterations:")  # fmt: skip
    run("plain blended sampling", multistage=False, decoder_adaptation="off")
    run("T1 + T2 (no image editing)", multistage=True, stages=(26.0, 20.0, 0.0))
    off = run("T1 + T2 + T3 (26/20/5)", stages=(26.0, 20.0, 5.0))
    per_image = run("  + decoder adaptation per image", decoder_adaptation="per_image")
    per_batch = run("  + decoder adaptation per batch (4)", decoder_adaptation="per_batch")
    for label, adapted in (("per image", per_image), ("per batch", per_batch)):
        inside = np.mean([diff(a, o, r.mask) for a, o, r in zip(adapted, off, reqs, strict=True)])
        print(f"  adaptation {label}: mean |adapted - not adapted| inside the mask {inside:.2f} (0-255)")


if __name__ == "__main__":
    main()
