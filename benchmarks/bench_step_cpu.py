"""CPU seconds per training step (user + sys of this process, all threads) of diffusion-tiny at its demo
settings and of the demo segmenter, at a given torch thread count: the difference of two runs that differ only
in their step count, so set-up and prediction cancel out. CPU time, not wall time, so it can be measured on a
shared machine (niced); with more threads than free cores it also shows the threads' spin-waiting.

    nice -n 10 python benchmarks/bench_step_cpu.py {tiny|segmenter} THREADS [--demo-root ROOT]
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["tiny", "segmenter"])
    ap.add_argument("threads", type=int)
    ap.add_argument("--demo-root", type=Path, default=Path(tempfile.gettempdir()) / "anoaug-demo")
    args = ap.parse_args()

    from anoaug.data.demo import make_demo_dataset
    from anoaug.data.formats import read_category
    from anoaug.data.split import make_split

    if not (args.demo_root / "cap").is_dir():
        make_demo_dataset(args.demo_root, seed=0, categories=["cap"])
    data = read_category(args.demo_root, "cap")
    split = make_split(data, seed=0)
    runs: dict[int, tuple[float, float]] = {}
    if args.what == "tiny":
        from anoaug.generators import get_generator
        from anoaug.generators.base import FitData

        fit_data = FitData.from_split(data, split, kind="object")
        counts, per = (2, 12), 10
        for n in counts:
            gen = get_generator("diffusion-tiny")({"train_steps": n, "threads": args.threads})
            with tempfile.TemporaryDirectory() as d:
                c0, w0 = _cpu(), time.perf_counter()
                gen.fit(fit_data, Path(d) / "artifact", seed=0)
                runs[n] = (_cpu() - c0, time.perf_counter() - w0)
    else:
        from anoaug.evaluation import run_evaluation
        from anoaug.pipeline.config import prepare_spec

        counts = (1, 2)  # epochs of the demo's 25 steps
        per = 25
        for epochs in counts:
            sets = {"evaluation": {"arms": ["real-few"], "seeds": [0], "epochs": epochs, "num_threads": args.threads}}
            spec = prepare_spec("demo/cap", sets=sets)
            with tempfile.TemporaryDirectory() as d:
                c0, w0 = _cpu(), time.perf_counter()
                run_evaluation(spec, data, split, {"real-few": None}, Path(d) / "evaluation")
                runs[epochs] = (_cpu() - c0, time.perf_counter() - w0)
    a, b = counts
    result = {
        "what": args.what,
        "threads": args.threads,
        "cpu_s_per_step": round((runs[b][0] - runs[a][0]) / per, 4),
        "wall_s_per_step": round((runs[b][1] - runs[a][1]) / per, 4),
        "load_average": Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else None,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
