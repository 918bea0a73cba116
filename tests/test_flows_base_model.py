"""`model: base` in `anoaug run`: a cached pretrain stage learns the base model on the run's normal training
images before generation, and `diffusion-sd` runs on it (issue: anoaug pretrain, part 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from anoaug.generators.diffusion.pretrain import PretrainSettings
from tests.conftest import run_cli

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


def _pretrain_sets() -> list[str]:
    """The minimal pretrain settings of the test fixture, as `--set pretrain.KEY=VALUE` options."""
    minimal = PretrainSettings.minimal(vae_steps=30, unet_steps=20).model_dump(mode="json")
    default = PretrainSettings().model_dump(mode="json")
    out: list[str] = []
    for key, value in minimal.items():
        if value != default[key]:
            out += ["--set", f"pretrain.{key}={json.dumps(value)}"]
    return out


SD_TINY = [
    "--generator", "diffusion-sd",
    "--set", "generator.params={model: base, resolution: 32, train_steps: 2, lora_rank: 2, num_inference_steps: 3}",
    "--set", "generation.count_per_type=2",
    "--set", "generation.shard_size=4",
    "--set", "evaluation.arms=[real-few, diffusion-sd]",
    "--set", "evaluation.seeds=[0]",
    "--set", "evaluation.epochs=1",
    "--set", "evaluation.image_size=64",
    "--set", "evaluation.batch_size=8",
    "--set", "evaluation.steps_per_epoch=2",
    "--set", "evaluation.widths=[8, 16]",
]  # fmt: skip


def test_model_base_pretrains_then_generates_and_reruns_cached(tmp_path: Path, demo_root: Path) -> None:
    args = ["run", "demo/cap", "--out", str(tmp_path), "--data-root", str(demo_root), *SD_TINY, *_pretrain_sets()]
    code, text = run_cli(args)
    assert code == 0, text
    run_dir = tmp_path / "demo" / "cap"
    manifest = json.loads((run_dir / "run.json").read_text())
    assert list(manifest["stages"]) == [
        "split", "masks", "pretrain", "generate:diffusion-sd", "quality:diffusion-sd", "evaluate", "report"
    ]  # fmt: skip

    model = run_dir / "pretrain" / "model"
    card = json.loads((model / "model_card.json").read_text())
    split_rows = json.loads(json.dumps(card["images_used"]))
    assert card["categories"] == ["cap"] and sum(split_rows.values()) > 0
    record = json.loads((run_dir / "generate" / "diffusion-sd" / "run.json").read_text())
    assert record["generator"] == "diffusion-sd"
    assert Path(record["generator_params"]["model"]).resolve() == model.resolve()  # 'base' became the folder
    metrics = run_dir / "evaluate" / "runs" / "segmenter" / "diffusion-sd" / "seed0" / "metrics.json"
    assert metrics.is_file()

    code, text = run_cli(args)  # nothing changed: every stage, pretrain included, is reused
    assert code == 0 and "up to date" in text, text


def test_model_base_outside_a_run_is_a_clear_error(tmp_path: Path, demo_root: Path) -> None:
    code, text = run_cli(
        ["generate", str(demo_root), "-c", "cap", "-g", "diffusion-sd", "--param", "model=base",
         "-n", "1", "--out", str(tmp_path / "g")]
    )  # fmt: skip
    assert code == 2
    assert "anoaug pretrain" in " ".join(text.split())
