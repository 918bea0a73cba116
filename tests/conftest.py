"""Shared test set-up: offline, quiet, project-local Prefect home, and the demo dataset."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

if TYPE_CHECKING:
    from anoaug.generators import FitData, GenerationRequest

REPO = Path(__file__).resolve().parents[1]

# `anoaug run` overrides shared by the end-to-end flow tests: one generator, tiny counts and schedules.
FLOW_TINY = [
    "--set", "generator.name=cutpaste",
    "--set", "generation.count_per_type=3",
    "--set", "generation.shard_size=4",
    "--set", "evaluation.arms=[real-few, cutpaste]",
    "--set", "evaluation.seeds=[0]",
    "--set", "evaluation.epochs=1",
    "--set", "evaluation.image_size=64",
    "--set", "evaluation.batch_size=8",
    "--set", "evaluation.steps_per_epoch=2",  # the demo spec's 25 trains for its figures; the flow tests need none
    "--set", "evaluation.widths=[8, 16]",
]  # fmt: skip

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_HOME", str(REPO / ".prefect-test"))
# Before prefect is imported (its settings are read then): the ephemeral API server may take well over
# Prefect's default 20 s to start on a loaded 2-core machine (seen: a Dask fan-out timing out).
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded demo dataset (both categories), made once per test session. Treat as read-only."""
    from anoaug.data.demo import make_demo_dataset

    root = tmp_path_factory.mktemp("demo-data")
    make_demo_dataset(root, seed=0)
    return root


# -- SD-family generator tests (diffusion-sd, anomalydiffusion, dualanodiff, adabldm) -------------------------

WIDGET_SIZE = 48  # side of the synthetic widget images of `fit_data`


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny models on a shared CPU run many times faster on one thread; restored after the module.
    A module opts in with ``pytest.mark.usefixtures("one_torch_thread")`` in its ``pytestmark``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny text-to-image Stable Diffusion stand-in (diffusers layout), one per test module."""
    from anoaug.generators.diffusion.sd.tiny_stand_in import make_tiny_stable_diffusion

    return make_tiny_stable_diffusion(tmp_path_factory.mktemp("tiny-sd") / "model")


def widget_image(rng: np.random.Generator) -> np.ndarray:
    """A smooth gradient with noise: something a VAE can represent and a defect can differ from."""
    yy, xx = np.mgrid[0:WIDGET_SIZE, 0:WIDGET_SIZE]
    base = np.stack([yy * 3, xx * 3, (yy + xx) * 2], axis=-1).astype(np.float64) + 40
    return np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)


def widget_mask(y: int, x: int, h: int = 10, w: int = 12) -> np.ndarray:
    """A (WIDGET_SIZE, WIDGET_SIZE) mask with an h x w rectangle at (y, x)."""
    m = np.zeros((WIDGET_SIZE, WIDGET_SIZE), bool)
    m[y : y + h, x : x + w] = True
    return m


def widget_requests(seed: int = 1) -> list[GenerationRequest]:
    """Two generation requests on fresh widget images, one per defect type of `fit_data`."""
    from anoaug.generators import GenerationRequest

    rng = np.random.default_rng(5)
    return [
        GenerationRequest(normal=widget_image(rng), mask=widget_mask(20, 14), defect_type="scratch", seed=seed),
        GenerationRequest(
            normal=widget_image(rng), mask=widget_mask(4, 30, 8, 8), defect_type="Broken Large", seed=seed + 7
        ),
    ]


@pytest.fixture(scope="module")
def fit_data() -> FitData:
    """Three widget defects of two types, each a bright red rectangle the learned tokens can pick up."""
    from anoaug.generators import DefectExample, FitData

    rng = np.random.default_rng(0)
    defects = []
    for i, (t, y, x) in enumerate([("scratch", 8, 10), ("scratch", 25, 20), ("Broken Large", 15, 5)]):
        img = widget_image(rng)
        m = widget_mask(y, x)
        img[m] = (200, 30, 30)
        defects.append(DefectExample(image=img, mask=m, defect_type=t, relpath=f"{t}/{i:03d}.png"))
    return FitData(category="widget", kind="object", defects=defects, normal_paths=[])


@pytest.fixture(scope="module")
def cap(demo_root: Path) -> FitData:
    """The demo cap category's fit data (split seed 0)."""
    from anoaug.data.formats import read_category
    from anoaug.data.split import make_split
    from anoaug.generators import FitData

    data = read_category(demo_root, "cap", "auto")
    return FitData.from_split(data, make_split(data, 0), kind="object")


def write_tiny_mvtec(
    root: Path,
    category: str = "widget",
    n_train: int = 3,
    n_test_good: int = 2,
    defects: dict[str, int] | None = None,
    size: int = 32,
) -> Path:
    """Write a tiny, valid MVTec-AD-layout dataset under ``root`` and return ``root``.

    Defect images get a square 0/255 mask in ``ground_truth/<defect>/<stem>_mask.png``.
    """
    import numpy as np
    from PIL import Image

    defects = {"scratch": 2, "dent": 1} if defects is None else defects
    rng = np.random.default_rng(0)
    cat = root / category

    def image(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)

    for i in range(n_train):
        image(cat / "train" / "good" / f"{i:03d}.png")
    for i in range(n_test_good):
        image(cat / "test" / "good" / f"{i:03d}.png")
    for name, n in defects.items():
        for i in range(n):
            image(cat / "test" / name / f"{i:03d}.png")
            mask = np.zeros((size, size), np.uint8)
            mask[4:12, 4:12] = 255
            (cat / "ground_truth" / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(cat / "ground_truth" / name / f"{i:03d}_mask.png")
    return root


@pytest.fixture
def tiny_mvtec(tmp_path: Path) -> Path:
    """Tiny valid MVTec-layout dataset: category ``widget``, 3 train good, 2 test good, 2 scratch, 1 dent."""
    return write_tiny_mvtec(tmp_path / "mvtec")


@pytest.fixture
def make_mvtec() -> Callable[..., Path]:
    """The ``write_tiny_mvtec(root, category=..., n_train=..., defects={...})`` builder itself."""
    return write_tiny_mvtec


def run_cli(args: list[str]) -> tuple[int, str]:
    """`anoaug ARGS` (the flows CLI) in-process: exit code and all output; an unexpected exception is raised."""
    from typer.testing import CliRunner

    from flows.cli import app

    result = CliRunner().invoke(app, args)
    text = result.output + (result.stderr if result.stderr_bytes is not None else "")
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, text


def check_two_category_summary(out: Path, text: str) -> None:
    """The benchmark summary of a demo/cap + demo/fabric run: both rows, an average, nothing failed."""
    import json

    summary = json.loads((out / "summary" / "summary.json").read_text())
    rows = summary["tables"]["image_auroc"]["rows"]
    assert set(rows) == {"demo/cap", "demo/fabric"} and not summary["failed"]
    assert summary["tables"]["image_auroc"]["average"]
    assert "average" in (out / "summary" / "summary.csv").read_text()
    assert "summary:" in text


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Prefect's ephemeral API server logs 'Stopping temporary server' at interpreter exit, after pytest has
    closed the captured streams; keep that harmless message from printing a logging traceback after the summary."""
    import logging

    logging.raiseExceptions = False


@pytest.fixture(scope="session")
def pretrained_sd(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A minimal Stable Diffusion pretrained by `anoaug.generators.diffusion.pretrain` on the demo categories'
    normal training images (inpainting UNet, 32 px, VAE factor 4; seconds on one core). Treat as read-only."""
    import torch

    from anoaug.data.formats import read_category
    from anoaug.data.split import make_split
    from anoaug.generators.diffusion.pretrain import PretrainSettings, pretrain_base

    sources = []
    for name in ("cap", "fabric"):
        data = read_category(demo_root, name)
        sources.append((data, make_split(data, seed=0)))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on a shared CPU run faster on one thread
    try:
        return pretrain_base(PretrainSettings.minimal(), sources, tmp_path_factory.mktemp("pretrained") / "sd", None)
    finally:
        torch.set_num_threads(threads)
