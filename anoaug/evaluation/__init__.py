"""Downstream evaluation: how much do synthetic defects help anomaly detection, localisation, typing?"""

from anoaug.evaluation.protocol import Arm, LeakageError, Protocol, SyntheticPair, check_no_leakage, parse_arm
from anoaug.evaluation.runner import MODELS, run_evaluation

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
