"""dualanodiff vs diffusion-sd on the same base model: cost, CPU fit memory and mask agreement (not run by tests).

    python benchmarks/bench_dualanodiff.py [--model DIR] [--category cap] [--steps 10] [--n 8] [--train-steps 30]

Without --model, a minimal base is pretrained on the demo data first (as the tests' `pretrained_sd`).
Prints per generator: fit seconds and peak RSS growth during fit (CPU), seconds per image at the same
inference steps / resolution / batch, the ratio to diffusion-sd (goal <= 2.2: two branches per sample),
and for dualanodiff the mask agreement: IoU between the mask read from the part and the pixels of the whole
image that changed, the share of masks on the object's foreground, and how many draws fell back.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Peak resident memory growth (bytes) while the block runs, sampled every 10 ms."""

    def __enter__(self) -> PeakRSS:
        self.start = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.start) / 2**20


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--category", default="cap")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--train-steps", type=int, default=30)
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

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
        (
            "dualanodiff (blended, off, no bcm)",
            "dualanodiff",
            {"shared_attention": "off", "background_compensation": False},
        ),
        ("dualanodiff (blended, position, no bcm)", "dualanodiff", {"background_compensation": False}),
        ("dualanodiff (blended, joint, bcm)", "dualanodiff", {"shared_attention": "joint"}),
        ("dualanodiff (whole, position, bcm)", "dualanodiff", {"mode": "whole"}),
    ]
    print(
        f"category {args.category}, {args.n} requests, {args.steps} steps, {args.resolution} px, "
        f"{args.train_steps} train steps, {args.threads} thread(s)"
    )
    base_spi = None
    for label, name, extra in arms:
        gen = get_generator(name)({**common, **extra})
        t0 = time.perf_counter()
        with PeakRSS() as mem:
            gen.fit(fd, tmp / f"art-{len(label)}-{name}", seed=0)
        fit_s = time.perf_counter() - t0
        gen.generate(reqs[:1])  # warm-up
        t0 = time.perf_counter()
        results = gen.generate(reqs)
        spi = (time.perf_counter() - t0) / len(reqs)
        draws = sum(int(r.info.get("attempts", 1)) for r in results)
        spd = spi * len(reqs) / draws
        base_spi = spi if base_spi is None else base_spi
        line = (
            f"{label:38s} fit {fit_s:5.1f} s, peak RSS {mem.peak / 2**20:4.0f} MiB (+{mem.growth_mb:3.0f}) | "
            f"{spi:5.3f} s/image "
            f"(x{spi / base_spi:4.2f}), {draws / len(reqs):3.1f} draws/image, "
            f"{spd:5.3f} s/draw (x{spd / base_spi:4.2f})"
        )
        if name == "dualanodiff":
            infos = [r.info for r in results]
            iou = np.mean([i["mask_agreement_iou"] for i in infos])
            on_fg = np.mean([i["on_foreground"] >= gen.settings.min_on_foreground for i in infos])
            fallback = sum(i["fallback"] for i in infos)
            line += (
                f" | mask IoU(part, changed) {iou:.3f}, on foreground {on_fg:.2f}, fallbacks {fallback}/{len(infos)}"
            )
        print(line, flush=True)


if __name__ == "__main__":
    main()
