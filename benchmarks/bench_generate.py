"""Benchmark of bulk generation (anoaug.shards): the shard writer side by side, memory with scale, workers.

1. Shard writer side by side, on the same arrays, same PNG settings (compression 1), same shard size:
   bare PNG encoding (one thread, and the writer's encoding threads), ``webdataset.ShardWriter`` as a user
   would drive it (encode each sample, write; timed without and with an fsync per shard), and ours
   (``encode_ordered`` + ``write_shard`` + ``ShardCommitter`` + manifests, as generate_category drives it),
   with encoding inline and in its threads. Goal: ours >= 0.95x of webdataset's writer and of bare encoding,
   while ours also hashes every PNG and shard, fsyncs and renames each shard and writes Parquet manifests.
   ``--profile`` adds a cProfile of ours.
2. Peak memory (max RSS of a fresh process) of ``generate_category`` for 1,000 vs 10,000 samples on small
   demo images. Goal: ratio ~1 (streaming: nothing grows with the number of samples).
3. ``workers``: samples/s of ``generate_category`` with 1, 2 and ``auto`` workers at 300 and 1,000 samples
   (5,000 with ``--with-5000``), and what ``auto`` chose. Goal: auto never slower than 1.

    python benchmarks/bench_generate.py            # all three (a few minutes on 2 cores)
    python benchmarks/bench_generate.py --quick    # smaller counts (writer 300, memory 300 vs 3,000)

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


def bench_writer(n: int, size: int, shard_size: int, repeats: int = 3, profile: bool = False) -> None:
    """Side by side on the same arrays, same PNG settings, same shard size: bare encoding, webdataset's
    ShardWriter (without and with an fsync per shard), and ours (inline and with its encoding threads).

    Best of ``repeats`` for each, interleaved, after a warm-up (the machine is shared and noisy)."""
    from concurrent.futures import ThreadPoolExecutor

    import webdataset as wds

    from anoaug.png import encode_png
    from anoaug.shards.writer import encode_threads_for

    arrays = _arrays(n, size)
    threads = encode_threads_for("auto")

    def bare() -> tuple[float, float]:
        t0 = _clock()
        for img, mask in arrays:
            encode_png(img, compression=1)
            encode_png(mask, compression=1)
        return _rates(n, t0)

    def bare_threads() -> tuple[float, float]:
        def enc(a: tuple[np.ndarray, np.ndarray]) -> tuple[bytes, bytes]:
            return encode_png(a[0], compression=1), encode_png(a[1], compression=1)

        t0 = _clock()
        with ThreadPoolExecutor(threads) as pool:
            for _ in pool.map(enc, arrays):
                pass
        return _rates(n, t0)

    def webdataset(fsync: bool) -> tuple[float, float]:
        """What a user would write: encode each sample, ShardWriter rolls shards every shard_size samples."""
        tmp = Path(tempfile.mkdtemp(prefix="bench-wds-"))

        def sync(fname: str) -> None:
            fd = os.open(fname, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

        try:
            t0 = _clock()
            post = sync if fsync else None
            with wds.ShardWriter(str(tmp / "wds-%06d.tar"), maxcount=shard_size, post=post, verbose=0) as sink:
                for g, (img, mask) in enumerate(arrays):
                    meta = {**LINEAGE, "key": f"blob_{g:06d}", "index": g}
                    sink.write(
                        {
                            "__key__": f"blob_{g:06d}",
                            "png": encode_png(img, compression=1),
                            "mask.png": encode_png(mask, compression=1),
                            "json": json.dumps(meta, sort_keys=True, separators=(",", ":")).encode(),
                        }
                    )
            return _rates(n, t0)
        finally:
            shutil.rmtree(tmp)

    def ours(count: int, n_threads: int) -> tuple[float, float]:
        tmp = Path(tempfile.mkdtemp(prefix="bench-writer-"))
        try:
            t0 = _clock()
            _ours(tmp, arrays[:count], shard_size, n_threads)
            return _rates(count, t0)
        finally:
            shutil.rmtree(tmp)

    ours(min(n, 2 * shard_size), threads)  # warm-up: first-use imports and caches
    webdataset(False)
    sides = {
        "bare": bare,
        "bare_threads": bare_threads,
        "wds": lambda: webdataset(False),
        "wds_fsync": lambda: webdataset(True),
        "ours_inline": lambda: ours(n, 0),
        "ours": lambda: ours(n, threads),
    }
    best = {name: [0.0, 0.0] for name in sides}  # best wall-clock and best CPU-time rate
    for _ in range(repeats):
        for name, fn in sides.items():
            wall, cpu = fn()
            best[name] = [max(best[name][0], wall), max(best[name][1], cpu)]
    print(f"[writer] {n} samples {size}x{size} (image + mask PNG, compression 1), shards of {shard_size}, "
          f"best of {repeats}; {threads} encoding thread(s) on {_cores()} usable core(s)")  # fmt: skip
    labels = {
        "bare": "bare PNG encode, one thread",
        "bare_threads": f"bare PNG encode, {threads} threads",
        "wds": "webdataset.ShardWriter, no fsync",
        "wds_fsync": "webdataset.ShardWriter + fsync per shard",
        "ours_inline": "ours, encoding inline (encode_threads=0)",
        "ours": f"ours, {threads} encoding threads (auto)",
    }
    print(f"  {'':<44s} {'wall':>8s}   {'CPU':>8s}  (samples per second of wall clock / of process CPU time)")
    for name, label in labels.items():
        print(f"  {label:<44s} {best[name][0]:8.1f}   {best[name][1]:8.1f}")
    print("  (ours: + sha256 of every PNG and of each shard, fsync + rename per shard, Parquet manifest parts,")
    print("   samples.parquet; webdataset's ShardWriter does none of these)")
    for mine in ("ours", "ours_inline"):
        for base in ("wds", "wds_fsync", "bare", "bare_threads"):
            goal = "   (goal >= 0.95)" if base in ("wds", "bare") and mine == "ours" else ""
            wall, cpu = best[mine][0] / best[base][0], best[mine][1] / best[base][1]
            print(f"  ratio {mine:<11s} / {base:<12s} = {wall:.3f} wall, {cpu:.3f} CPU{goal}")
    print("  (CPU-time ratios compare the work done and hardly move with other processes' load; wall-clock ratios")
    print("   also count threads running in parallel and fsync waits, and on a shared machine the load)")
    if profile:
        import cProfile
        import pstats

        for n_threads in (0, threads):
            tmp = Path(tempfile.mkdtemp(prefix="bench-prof-"))
            prof = cProfile.Profile()
            try:
                prof.runcall(_ours, tmp, arrays, shard_size, n_threads)
            finally:
                shutil.rmtree(tmp)
            print(f"[profile] ours, encode_threads={n_threads} (main thread; the encoding threads are not seen)")
            pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(12)


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _rates(n: int, t0: tuple[float, float]) -> tuple[float, float]:
    """(samples per wall-clock second, samples per CPU second of this process, all its threads) since ``t0``."""
    wall, cpu = time.perf_counter() - t0[0], time.process_time() - t0[1]
    return n / wall, n / max(cpu, 1e-9)


LINEAGE = {"category": "bench", "defect_type": "blob", "generator": "none", "mask_params": {"a": 1}}


def _ours(tmp: Path, arrays: list[tuple[np.ndarray, np.ndarray]], shard_size: int, threads: int) -> None:
    """Our writer as generate_category drives it: ordered encoding in ``threads`` threads, background commit."""
    import functools
    from concurrent.futures import ThreadPoolExecutor

    from anoaug.shards.manifest import GenerationManifest
    from anoaug.shards.writer import RawSample, ShardCommitter, encode_ordered, write_shard

    manifest = GenerationManifest(tmp)

    def listed(j: int, row: dict, rows: list[dict]) -> None:
        row["shard_index"] = j
        manifest.add(row, [_row(j, r) for r in rows])

    raw = (
        RawSample(f"blob_{g:06d}", g, img, mask, {**LINEAGE, "key": f"blob_{g:06d}", "index": g})
        for g, (img, mask) in enumerate(arrays)
    )
    pool = ThreadPoolExecutor(threads) if threads else None
    try:
        samples = encode_ordered(raw, pool, window=max(4, 4 * threads))
        with ShardCommitter() as committer:
            for j, start in enumerate(range(0, len(arrays), shard_size)):
                count = min(len(arrays), start + shard_size) - start
                write_shard(
                    tmp / f"bench-{j:06d}.tar", (next(samples) for _ in range(count)),
                    committer=committer, on_commit=functools.partial(listed, j),
                )  # fmt: skip
        manifest.write_samples()
    finally:
        if pool is not None:
            pool.shutdown()


def _cores() -> int:
    from anoaug.cpu import usable_cores

    return usable_cores()


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


def _generate(root: Path, out: Path, count_per_type: int, workers: int | str, generator: str = "cutpaste"):
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


def bench_workers(workers: list[int | str], totals: list[int], size: int) -> None:
    """samples/s of generate_category (cutpaste, one category) per ``workers`` setting and job size; ``auto``
    prints what it chose. Worker start-up is included: it is what a user pays."""
    root = _demo(size)
    warm = Path(tempfile.mkdtemp(prefix="bench-workers-warm-"))
    try:
        _generate(root, warm, 20, workers=1)  # first-use imports and caches, so the first setting timed pays none
    finally:
        shutil.rmtree(warm)
    print(f"[workers] generate_category, cutpaste, {size}x{size} demo fabric, {_cores()} usable core(s), "
          f"load average {os.getloadavg()[0]:.2f}; worker start-up included")  # fmt: skip
    for total in totals:
        rates, chosen = {}, ""
        for k in workers:
            out = Path(tempfile.mkdtemp(prefix="bench-workers-"))
            try:
                t0 = time.perf_counter()
                s = _generate(root, out, total // 2, workers=k)
                rates[k] = s.total / (time.perf_counter() - t0)
                if k == "auto" and s.workers:
                    w = s.workers
                    chosen = f"auto chose {w['chosen']} ({w['reason']}; probe {w['probe_samples']} samples, "
                    chosen += f"{w['sample_s']} s/sample)" if w.get("sample_s") else ")"
            finally:
                shutil.rmtree(out)
        base = rates[workers[0]]
        line = "   ".join(f"workers={k}: {r:6.1f}/s x{r / base:.2f}" for k, r in rates.items())
        print(f"  {total:5d} samples   {line}")
        if chosen:
            print(f"                  {chosen}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller counts")
    ap.add_argument("--size", type=int, default=128, help="demo image size for memory/workers")
    ap.add_argument("--only", choices=["writer", "memory", "workers"], default=None)
    ap.add_argument("--workers", nargs="+", default=["1", "2", "auto"], help="worker settings to compare")
    ap.add_argument("--with-5000", action="store_true", help="also time the workers at 5,000 samples (slow)")
    ap.add_argument("--profile", action="store_true", help="cProfile our writer after the side-by-side")
    ap.add_argument("--child-memory", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_memory is not None:
        child_memory(args.child_memory, args.size)
        return
    if args.only in (None, "writer"):
        bench_writer(300 if args.quick else 1000, 256, 100, profile=args.profile)
    if args.only in (None, "memory"):
        bench_memory([300, 3000] if args.quick else [1000, 10000], args.size)
    if args.only in (None, "workers"):
        totals = [300, 1000] + ([5000] if args.with_5000 else [])
        bench_workers([w if w == "auto" else int(w) for w in args.workers], totals, args.size)


if __name__ == "__main__":
    main()
