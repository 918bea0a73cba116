"""How many worker processes a generation job gets (``generation.workers: auto``).

A pool worker is a fresh spawned interpreter that imports the library and loads the generator before its
first sample, so on a small job the start-up costs more than the parallelism returns (300 demo samples: 2
workers were 4x slower than one). ``auto`` therefore first makes samples in the writing process, measures
what one sample costs there, and starts workers for the rest only when the predicted time with them,
start-up included, beats one process by a margin; never more workers than the cores this process may use
(its affinity mask) that the load average leaves idle (on a shared machine, workers on busy cores only add
their start-up).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

# Start-up of a spawned pool worker before its first sample, beyond loading the generator (which is measured):
# interpreter, imports of numpy/OpenCV/torch and the library: 4.3-4.6 s of CPU on a 2-core machine.
WORKER_START_S = 4.0
# Fraction of a core one worker turns into samples: the writing process shares the cores (tar, sha256,
# manifests) and results are pickled back (2 workers made 1.44x on 1,000 samples on 2 cores).
PARALLEL_EFFICIENCY = 0.75
# Start workers only when they are predicted to finish at least this much sooner (the estimate is rough).
MIN_GAIN = 1.25
# How long ``auto`` makes samples in the writing process before it decides (at least one job).
PROBE_S = 1.0


def idle_cores(cores: int) -> int:
    """Of ``cores``, how many other processes leave free (1-minute load average, this process counted as 1)."""
    try:
        busy = max(0.0, os.getloadavg()[0] - 1.0)
    except OSError:  # pragma: no cover - no load average on this platform
        busy = 0.0
    return max(1, min(cores, round(cores - busy)))


@dataclass
class WorkerChoice:
    """What ``workers`` a run used and why (stored in run.json and the stage's output)."""

    requested: int | str  # the setting: a number or "auto"
    chosen: int  # the largest number of processes that made samples (1 = the writing process only)
    cores: int  # CPUs this process may use (sched_getaffinity)
    reason: str
    idle_cores: int | None = None  # of those, how many the load average left free when auto decided
    probe_samples: int = 0  # samples made in the writing process before deciding (auto)
    sample_s: float | None = None  # measured seconds per sample in the writing process (auto)
    start_s: float | None = None  # estimated start-up of a worker (auto)
    predicted_gain: float | None = None  # predicted speed-up of ``chosen`` over one process (auto)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_workers(
    remaining: int, sample_s: float, cores: int, start_s: float, max_workers: int | None = None
) -> tuple[int, float]:
    """(workers, predicted speed-up) for ``remaining`` samples costing ``sample_s`` each in one process.

    k workers take ``start_s + remaining * sample_s / (k * PARALLEL_EFFICIENCY)``; the best k in
    2..cores wins if it beats one process by ``MIN_GAIN``, else 1.
    """
    limit = max(1, min(cores, max_workers if max_workers is not None else cores))
    one = remaining * max(sample_s, 0.0)
    best, best_gain = 1, 1.0
    for k in range(2, limit + 1):
        t_k = start_s + one / (k * PARALLEL_EFFICIENCY)
        gain = one / t_k if t_k > 0 else 1.0
        if gain > best_gain:
            best, best_gain = k, gain
    if best_gain < MIN_GAIN:
        return 1, round(best_gain, 3)
    return best, round(best_gain, 3)
