"""Shared test set-up: offline, quiet, project-local Prefect home, and the demo dataset."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_HOME", str(REPO / ".prefect-test"))
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded demo dataset (both categories), made once per test session. Treat as read-only."""
    from anoaug.data.demo import make_demo_dataset

    root = tmp_path_factory.mktemp("demo-data")
    make_demo_dataset(root, seed=0)
    return root
