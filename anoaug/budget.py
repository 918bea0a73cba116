"""Training budgets: steps planned by the spec, wall time only as an optional cap.

A training loop runs its planned steps; ``max_train_seconds`` (off by default) may stop it earlier. The
loop then records what it did as a *training record* (``record``), which travels from the artifact to
the stage record, the command's output and the report, so that a capped model is never taken for a
complete one. Cache keys leave the cap out (``without_cap``): a rerun without the cap, or with a larger
one, continues the same training from its checkpoint (``can_continue``).
"""

from __future__ import annotations

from typing import Any

from anoaug.cpu import usable_cores

CAP_SETTING = "max_train_seconds"
OLD_CAP_SETTING = "time_budget_s"  # the former name (a wall-clock budget); still read, with a warning
CAP_KEYS = (CAP_SETTING, OLD_CAP_SETTING)


def record(
    planned_steps: int, steps: int, stopped_by: str, max_train_seconds: float | None, **extra: Any
) -> dict[str, Any]:
    """The training record of an artifact: planned vs done steps, what stopped it ("steps" or "time") and,
    for a capped training only, the cap. No wall time and nothing a run's history changes: the record is
    hashed with the artifact, so the same weights give the same record (and the same shards' lineage)."""
    rec: dict[str, Any] = {"planned_steps": int(planned_steps), "steps": int(steps), "stopped_by": stopped_by}
    if stopped_by == "time":
        rec["max_train_seconds"] = None if max_train_seconds is None else float(max_train_seconds)
    return {**rec, **extra}


def is_capped(rec: dict[str, Any] | None) -> bool:
    """True when a training record says the time cap stopped training before its planned steps."""
    return bool(rec) and rec.get("stopped_by") == "time" and int(rec.get("steps", 0)) < int(rec.get("planned_steps", 0))


def can_continue(rec: dict[str, Any] | None, max_train_seconds: float | None) -> bool:
    """True when a capped training would get further under the cap ``max_train_seconds`` (None: no cap):
    the time already spent counts, so only no cap or a larger one helps."""
    if not is_capped(rec):
        return False
    assert rec is not None
    old = rec.get("max_train_seconds")
    return max_train_seconds is None or old is None or float(max_train_seconds) > float(old)


def cap_of(params: dict[str, Any] | None) -> float | None:
    """The time cap in a settings dict (new or old name), None when absent or null."""
    params = params or {}
    value = params.get(CAP_SETTING, params.get(OLD_CAP_SETTING))
    return None if value is None else float(value)


def without_cap(params: dict[str, Any] | None) -> dict[str, Any]:
    """``params`` without the time cap (under either name): what a cache key may depend on."""
    return {k: v for k, v in (params or {}).items() if k not in CAP_KEYS}


def note(rec: dict[str, Any]) -> str:
    """The report's note for a capped training, e.g. "trained 156 / 2500 steps (time cap)"."""
    return f"trained {rec['steps']} / {rec['planned_steps']} steps (time cap)"


def warning(name: str, rec: dict[str, Any]) -> str:
    """One warning line for a capped training, e.g.
    "warning: diffusion-tiny trained 156 / 2500 steps (time cap 420 s)"."""
    cap = rec.get("max_train_seconds")
    where = f"time cap {cap:g} s" if cap is not None else "time cap"
    return f"warning: {name} trained {rec['steps']} / {rec['planned_steps']} steps ({where})"


def thread_count(setting: int | str) -> int:
    """torch CPU threads for a ``threads`` setting: an int, or ``auto`` = the cores this process may use.
    Never measured from the machine's load, so the same setting gives the same count (and bytes) on a busy
    and an idle machine."""
    if setting == "auto":
        return usable_cores()
    return max(1, int(setting))
