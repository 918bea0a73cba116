"""diffusion-sd's blended sampling vs diffusers' StableDiffusionInpaintPipeline (benchmarks/bench_inpaint_peer.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("diffusers")

import torch  # noqa: E402

pytestmark = pytest.mark.slow
BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_inpaint_peer.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_inpaint_peer", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_both_sides_run_on_the_same_base_and_ours_is_exact_outside_the_mask(
    pretrained_sd: Path, demo_root: Path
) -> None:
    bench = _bench()
    cases = bench.demo_cases(demo_root, "cap", 2)
    assert len(cases) == 2 and all(c.mask.any() and not c.mask.all() for c in cases)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        params = {"resolution": 32, "num_inference_steps": 3, "guidance_scale": 3.0, "scheduler": "ddim"}
        r = bench.compare(str(pretrained_sd), cases, [0], params, repeats=0)
    finally:
        torch.set_num_threads(threads)
    assert r["ours_outside_diff"] == 0.0 and r["ours_outside_diff_window"] == 0.0
    for c, image in zip(cases, r["ours_images"], strict=True):
        assert np.array_equal(image[~c.mask], c.normal[~c.mask])
        assert not np.array_equal(image[c.mask], c.normal[c.mask])  # it did inpaint
    for c, image in zip(cases, r["peer_images"], strict=True):
        assert image.shape == c.normal.shape and image.dtype == np.uint8
        assert not np.array_equal(image[c.mask], c.normal[c.mask])
    assert np.isfinite(r["peer_outside_diff"]) and r["ours_s_per_image"] > 0 and r["peer_s_per_image"] > 0
