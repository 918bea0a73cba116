"""Benchmark of bulk generation (anoaug.shards): writer overhead, memory with scale, worker scaling.

1. Shard writer vs bare PNG encoding of the same arrays: samples/s of ``write_shard`` (PNG encoding, tar,
   sha256, fsync, rename, per-shard manifest parts, final samples.parquet) divided by samples/s of only
   PNG-encoding image + mask. Goal: ratio >= 0.9 (the writer adds < 10 % over the unavoidable encoding).
2. Peak memory (max RSS of a fresh process) of ``generate_category`` for 1,000 vs 10,000 samples on small
   demo images. Goal: ratio ~1 (streaming: nothing grows with the number of samples).
3. Scaling with ``workers``: samples/s of ``generate_category`` for 1, 2, 4 workers, and the speed-up.

    python benchmarks/bench_generate.py            # all three (a few minutes on 2 cores)
    python benchmarks/bench_generate.py --quick    # smaller counts (memory: 300 vs 3,000)

It prints numbers and ratios only; it asserts nothing (tests never time anything).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def _arrays(n: int, size: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Image-like arrays (smooth noise + texture, so PNG does real work) and blob masks."""
    import cv2

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        low = cv2.resize(rng.integers(0, 255, (size // 8, size // 8, 3), dtype=np.uint8), (size, size))
        img = np.clip(low.astype(np.int16) + rng.integers(-12, 12, (size, size, 3)), 0, 255).astype(np.uint8)
        mask = np.zeros((size, size), np.uint8)
        cv2.ellipse(mask, (int(rng.integers(20, size - 20)),) * 2, (15, 7), float(rng.uniform(0, 180)), 0, 360, 1, -1)
        out.append((img, mask.astype(bool)))
    return out


def bench_writer(n: int, size: int, shard_size: int, repeats: int = 3) -> None:
    """Best of ``repeats`` for each side, alternating, after a warm-up (the machine is shared and noisy)."""
    from anoaug.png import encode_png
    from anoaug.shards.manifest import GenerationManifest
    from anoaug.shards.writer import encode_sample, write_shard

    arrays = _arrays(n, size)
    lineage = {"category": "bench", "defect_type": "blob", "generator": "none", "mask_params": {"a": 1}}

    def bare() -> float:
        t0 = time.perf_counter()
        for img, mask in arrays:
            encode_png(img, compression=1)
            encode_png(mask, compression=1)
        return n / (time.perf_counter() - t0)

    def writer(count: int) -> float:
        tmp = Path(tempfile.mkdtemp(prefix="bench-writer-"))
        try:
            t0 = time.perf_counter()
            manifest = GenerationManifest(tmp)
            for j, start in enumerate(range(0, count, shard_size)):
                samples = (
                    encode_sample(f"blob_{g:06d}", g, *arrays[g], {**lineage, "key": f"blob_{g:06d}", "index": g})
                    for g in range(start, min(count, start + shard_size))
                )
                row, rows = write_shard(tmp / f"bench-{j:06d}.tar", samples)
                row["shard_index"] = j
                manifest.add(row, [_row(j, r) for r in rows])
            manifest.write_samples()
            return count / (time.perf_counter() - t0)
        finally:
            shutil.rmtree(tmp)

    writer(min(n, 2 * shard_size))  # warm-up: first-use imports and caches
    bare_rate, writer_rate = 0.0, 0.0
    for _ in range(repeats):
        bare_rate = max(bare_rate, bare())
        writer_rate = max(writer_rate, writer(n))
    print(f"[writer] {n} samples {size}x{size}, shards of {shard_size}, best of {repeats}")
    print(f"  bare PNG encode (image + mask):                  {bare_rate:8.1f} samples/s")
    print(f"  shard writer (encode+tar+sha256+fsync+manifest): {writer_rate:8.1f} samples/s")
    print(f"  ratio writer / bare encode = {writer_rate / bare_rate:.3f}   (goal >= 0.9)")


def _row(j: int, r: dict) -> dict:
    lin = r["lineage"]
    return {
        "shard": r["shard"], "shard_index": j, "key": r["key"], "index": lin["index"],
        "global_index": r["global_index"], "category": "bench", "defect_type": "blob", "generator": "none",
        "artifact_hash": "-", "source_normal": "-", "seed": 0, "sample_seed": 0,
        "image_sha256": r["image_sha256"], "mask_sha256": r["mask_sha256"], "mask_pixels": r["mask_pixels"],
        "lineage": json.dumps(lin),
    }  # fmt: skip


def _demo(size: int) -> Path:
    from anoaug.data.demo import make_demo_dataset

    root = Path(tempfile.gettempdir()) / f"anoaug-bench-demo-{size}"
    if not (root / "fabric").is_dir():
        make_demo_dataset(root, seed=0, categories=["fabric"], size=size, n_train_good=12, n_test_good=2)
    return root


def _generate(root: Path, out: Path, count_per_type: int, workers: int, generator: str = "cutpaste"):
    from anoaug.data.formats import read_category
    from anoaug.data.split import make_split
    from anoaug.shards import generate_category
    from anoaug.spec import spec_for_root

    spec = spec_for_root(root, "fabric", dataset="demo")
    data = read_category(root, "fabric", "auto")
    return generate_category(
        spec, data, make_split(data, 0), generator, out, count_per_type=count_per_type, seed=0,
        workers=workers, shard_size=500, kind="texture", overwrite=True,
    )  # fmt: skip


def child_memory(total: int, size: int) -> None:
    """Run in a fresh process: generate `total` samples, print seconds and max RSS as JSON."""
    root = _demo(size)
    out = Path(tempfile.mkdtemp(prefix="bench-mem-"))
    try:
        t0 = time.perf_counter()
        s = _generate(root, out, total // 2, workers=1)
        secs = time.perf_counter() - t0
    finally:
        shutil.rmtree(out)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"total": s.total, "seconds": secs, "max_rss_mb": rss_mb}))


def bench_memory(counts: list[int], size: int) -> None:
    _demo(size)
    results = []
    for n in counts:
        cmd = [sys.executable, __file__, "--child-memory", str(n), "--size", str(size)]
        line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        results.append(json.loads(line))
    print(f"[memory] generate_category, cutpaste, {size}x{size}, one process")
    for r in results:
        rate = r["total"] / r["seconds"]
        print(f"  {r['total']:6d} samples: max RSS {r['max_rss_mb']:7.1f} MiB, {rate:7.1f} samples/s")
    a, b = results[0], results[-1]
    ratio = b["max_rss_mb"] / a["max_rss_mb"]
    print(f"  peak ratio {b['total']} / {a['total']} samples = {ratio:.3f}   (goal ~1: flat)")


def bench_workers(workers: list[int], count_per_type: int, size: int) -> None:
    root = _demo(size)
    rates = {}
    for k in workers:
        out = Path(tempfile.mkdtemp(prefix="bench-workers-"))
        try:
            t0 = time.perf_counter()
            s = _generate(root, out, count_per_type, workers=k)
            rates[k] = s.total / (time.perf_counter() - t0)
        finally:
            shutil.rmtree(out)
    print(f"[workers] generate_category, cutpaste, {2 * count_per_type} samples {size}x{size} "
          f"({os.cpu_count()} CPUs; worker start-up included)")  # fmt: skip
    for k, r in rates.items():
        print(f"  workers={k}: {r:7.1f} samples/s   speed-up x{r / rates[workers[0]]:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller counts")
    ap.add_argument("--size", type=int, default=128, help="demo image size for memory/workers")
    ap.add_argument("--only", choices=["writer", "memory", "workers"], default=None)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--child-memory", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_memory is not None:
        child_memory(args.child_memory, args.size)
        return
    if args.only in (None, "writer"):
        bench_writer(300 if args.quick else 1000, 256, 100)
    if args.only in (None, "memory"):
        bench_memory([300, 3000] if args.quick else [1000, 10000], args.size)
    if args.only in (None, "workers"):
        bench_workers(args.workers, 150 if args.quick else 500, args.size)


if __name__ == "__main__":
    main()
