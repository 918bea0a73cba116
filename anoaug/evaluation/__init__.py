"""Downstream evaluation: how much do synthetic defects help anomaly detection, localisation, typing?

``run_evaluation`` and ``MODELS`` load the training stack (torch, anomalib) on first use, so the
protocol and ``detectors.check_evaluation`` stay light to import.
"""

from __future__ import annotations

from typing import Any

from anoaug.evaluation.protocol import Arm, LeakageError, Protocol, SyntheticPair, check_no_leakage, parse_arm

__all__ = [
    "MODELS",
    "Arm",
    "LeakageError",
    "Protocol",
    "SyntheticPair",
    "check_no_leakage",
    "parse_arm",
    "run_evaluation",
]


def __getattr__(name: str) -> Any:
    if name in ("MODELS", "run_evaluation"):
        from anoaug.evaluation import runner

        return getattr(runner, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
