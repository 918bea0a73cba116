"""Training budgets in steps (issue 19): same seed + steps -> same weights and shards on a busy machine; the
time cap `max_train_seconds` is visible (artifact, stage.json, command output, report) and a capped run
continues from its checkpoint to the planned steps when the cap is lifted."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from anoaug import budget
from anoaug.cpu import usable_cores
from anoaug.pipeline import stages
from anoaug.pipeline.config import prepare_spec
from anoaug.pipeline.run_manifest import build_run_manifest
from anoaug.spec import PipelineSpec

TINY = {
    "crop": 32,
    "widths": [8, 16],
    "batch": 4,
    "train_steps": 6,
    "num_inference_steps": 3,
    "max_normals": 4,
    "checkpoint_every_s": 3600,
}
CHEAP_EVAL = {
    "arms": ["real-few", "diffusion-tiny"],
    "seeds": [0],
    "epochs": 1,
    "steps_per_epoch": 2,
    "image_size": 64,
    "batch_size": 4,
}


def _spec(**params: Any) -> PipelineSpec:
    sets = {
        "generator": {"params": {**TINY, **params}},
        "generation": {"count_per_type": 2, "shard_size": 4},
        "evaluation": CHEAP_EVAL,
    }
    return prepare_spec("demo/cap", generator="diffusion-tiny", sets=sets)


def _generate(spec: PipelineSpec, root: Path, run_dir: Path) -> tuple[stages.StageResult, ...]:
    """split, masks and generate:diffusion-tiny stages of a run."""
    split = stages.stage_split(spec, root, run_dir)
    masks = stages.stage_masks(spec, root, run_dir, split)
    return split, masks, stages.stage_generate(spec, root, run_dir, split, masks, "diffusion-tiny")


def _weights(gen: stages.StageResult) -> str:
    unet = gen.path("artifact") / "unet" / "diffusion_pytorch_model.safetensors"
    return hashlib.sha256(unet.read_bytes()).hexdigest()


def _shards(gen: stages.StageResult) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(gen.out_dir).glob("*.tar"))}


@contextlib.contextmanager
def _busy_cpu() -> Iterator[None]:
    """A competing process that keeps a core busy meanwhile."""
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        child.kill()
        child.wait()


@pytest.fixture()
def fake_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """diffusion-tiny's training clock advances 1 s per reading, so a time cap stops it at a fixed step."""
    from anoaug.generators.diffusion.tiny import training

    now = [0.0]

    def perf_counter() -> float:
        now[0] += 1.0
        return now[0]

    monkeypatch.setattr(training, "time", types.SimpleNamespace(perf_counter=perf_counter))


def test_threads_auto_follows_the_affinity_not_the_load() -> None:
    with _busy_cpu():
        assert budget.thread_count("auto") == len(os.sched_getaffinity(0))
    assert budget.thread_count(3) == 3


def test_same_seed_and_steps_give_the_same_model_and_shards_on_a_busy_machine(demo_root: Path, tmp_path: Path) -> None:
    spec = _spec(threads=1)  # a fixed count (`auto` is one too: see the capped test); 2 threads beside a busy
    # loop on a 2-core machine spin-wait for each other (slow, same bytes)
    split, masks, idle = _generate(spec, demo_root, tmp_path / "idle")
    with _busy_cpu():
        busy = stages.stage_generate(spec, demo_root, tmp_path / "busy", split, masks, "diffusion-tiny")
    assert _weights(busy) == _weights(idle)
    assert _shards(busy) == _shards(idle) and _shards(idle)
    art = json.loads((busy.path("artifact") / "artifact.json").read_text())
    assert art["training"]["steps"] == art["training"]["planned_steps"] == 6
    assert art["training"]["threads"] == 1
    assert busy.path("artifact").name == "artifact" and busy.info["artifact_hash"] == idle.info["artifact_hash"]
    assert busy.info["training"]["stopped_by"] == "steps" and stages.training_warning("g", busy.info) is None


def test_pretrain_same_seed_and_steps_same_weights_on_a_busy_machine(demo_root: Path, tmp_path: Path) -> None:
    from anoaug.data.formats import read_category
    from anoaug.data.split import make_split
    from anoaug.generators.diffusion.pretrain import PretrainSettings, pretrain_base, read_card

    data = read_category(demo_root, "cap")
    sources = [(data, make_split(data, seed=0))]
    s = PretrainSettings.minimal(vae_steps=4, unet_steps=4, eval_crops=4)
    idle = pretrain_base(s, sources, tmp_path / "idle", None)
    with _busy_cpu():
        busy = pretrain_base(s, sources, tmp_path / "busy", None)
    for part in ("vae", "unet", "text_encoder"):
        (a,) = sorted((idle / part).glob("*.safetensors"))
        assert a.read_bytes() == (busy / part / a.name).read_bytes(), part
    training = read_card(busy)["training"]
    assert training["steps"] == training["planned_steps"] == 8 and "max_train_seconds" not in training


@pytest.mark.slow  # end to end: split, masks, generate (capped, resumed, uncapped), evaluate, report
def test_time_cap_is_marked_everywhere_and_a_rerun_without_it_resumes(
    demo_root: Path, tmp_path: Path, fake_clock: None
) -> None:
    capped_spec = _spec(threads="auto", max_train_seconds=8)
    split, masks, gen = _generate(capped_spec, demo_root, tmp_path / "run")
    done = gen.info["training"]["steps"]
    assert 0 < done < 6 and gen.info["training"]["planned_steps"] == 6
    record = json.loads((Path(gen.out_dir) / stages.STAGE_FILE).read_text())  # stage.json: planned vs done
    assert record["info"]["training"] == gen.info["training"] and record["info"]["training"]["stopped_by"] == "time"
    art = json.loads((gen.path("artifact") / "artifact.json").read_text())
    assert art["training"]["steps"] == done and art["training"]["max_train_seconds"] == 8
    assert art["training"]["threads"] == usable_cores()  # `threads: auto`, as resolved and recorded

    # The command's output: one warning line.
    from flows.driver import print_summary

    ev = stages.stage_evaluate(capped_spec, demo_root, tmp_path / "run", split, {"diffusion-tiny": gen})
    rep = stages.stage_report(capped_spec, tmp_path / "run", ev)
    manifest = build_run_manifest(capped_spec, demo_root, tmp_path / "run", [split, masks, gen, ev, rep])
    console = Console(record=True, width=200)
    print_summary({"categories": [manifest.model_dump(mode="json") | {"run_dir": str(tmp_path / "run")}]}, console)
    text = console.export_text()
    assert f"warning: diffusion-tiny trained {done} / 6 steps (time cap 8 s)" in text
    assert text.count("warning:") == 1

    # The report: the arm's rows are marked, with the note; the uncapped arm is not.
    md = rep.path("md").read_text()
    assert f"diffusion-tiny †: trained {done} / 6 steps (time cap)" in md
    assert "| diffusion-tiny † |" in md and "real-few †" not in md
    report = json.loads(rep.path("json").read_text())
    assert any(a["name"] == "diffusion-tiny" and a["training"]["steps"] == done for a in report["arms"])

    # The same cap again: complete as far as that cap goes (reused, nothing retrained).
    again = stages.stage_generate(capped_spec, demo_root, tmp_path / "run", split, masks, "diffusion-tiny")
    assert again.skipped and again.fingerprint == gen.fingerprint

    # No cap: the same cache key, not reused as complete; training continues from the checkpoint.
    free_spec = _spec(threads="auto")
    resumed = stages.stage_generate(free_spec, demo_root, tmp_path / "run", split, masks, "diffusion-tiny")
    assert resumed.fingerprint == gen.fingerprint and not resumed.skipped
    assert resumed.info["training"]["steps"] == 6 and resumed.info["training"]["stopped_by"] == "steps"
    run = json.loads((resumed.path("artifact") / ".train_run.json").read_text())  # outside the artifact hash
    assert run["resumed_from"] == done and stages.training_warning("g", resumed.info) is None

    # ... to the weights of a run that was never capped (the checkpoint holds optimizer, EMA and RNG states).
    *_, uncapped = _generate(free_spec, demo_root, tmp_path / "uncapped")
    assert _weights(resumed) == _weights(uncapped)
    assert resumed.info["artifact_hash"] == uncapped.info["artifact_hash"]
    assert _shards(resumed) == _shards(uncapped)


def test_old_cap_name_still_loads_with_a_warning_and_cache_keys_ignore_the_cap() -> None:
    from anoaug.errors import SpecError
    from anoaug.generators import get_generator
    from anoaug.generators.diffusion.pretrain import PretrainSettings

    with pytest.warns(DeprecationWarning, match="time_budget_s"):
        gen = get_generator("diffusion-tiny")({"time_budget_s": 99})
    assert gen.settings.max_train_seconds == 99
    with pytest.warns(DeprecationWarning, match="time_budget_s"):
        assert PretrainSettings(time_budget_s=120).max_train_seconds == 120
    assert PretrainSettings().max_train_seconds is None and gen.Settings().max_train_seconds is None

    split = stages.StageResult(stage="split", fingerprint="f", out_dir="/x", content_hash="h")
    with pytest.warns(DeprecationWarning, match="time_budget_s"):
        old_name = _spec(time_budget_s=7)
    specs = [_spec(), _spec(max_train_seconds=5), old_name]
    keys = {stages.generate_fingerprint(spec, split, None, "diffusion-tiny") for spec in specs}
    assert len(keys) == 1
    assert stages.generate_fingerprint(_spec(train_steps=7), split, None, "diffusion-tiny") not in keys
    with pytest.raises(SpecError, match="num_threads"):
        prepare_spec("demo/cap", sets={"evaluation": {"num_threads": 0}})


def test_demo_plans_steps_with_a_guard_cap_and_evaluates_on_the_available_cores() -> None:
    from anoaug.generators import get_generator
    from flows.driver import DEMO_CATEGORY, demo_options

    opts = demo_options("diffusion-tiny", {})
    spec = prepare_spec(DEMO_CATEGORY, generator="diffusion-tiny", sets=opts.sets)
    params = spec.generator.params
    default = get_generator("diffusion-tiny").Settings()
    # The demo plans fewer steps than the default (to hold its 10 minutes), and keeps a cap only as a guard.
    assert 0 < params["train_steps"] < default.train_steps and default.max_train_seconds is None
    assert params["max_train_seconds"] is not None and params["max_train_seconds"] > 0
    assert spec.evaluation.num_threads == "auto"


def test_an_arm_on_a_capped_base_model_is_marked(tmp_path: Path) -> None:
    """A generator on a pretrained base model whose time cap stopped it carries the base's record into the
    generation record, and the report marks the arm with both notes; a complete base marks nothing."""
    from anoaug.generators.diffusion.pretrain.card import write_card
    from anoaug.report.build import capped_arms
    from anoaug.shards.generate import _capped_base_training

    capped = budget.record(2800, 700, "time", 120.0)
    for name in ("capped", "full"):
        (tmp_path / name).mkdir()
    write_card(tmp_path / "capped", {"training": capped})
    write_card(tmp_path / "full", {"training": budget.record(2800, 2800, "steps", None)})
    assert _capped_base_training({"model": str(tmp_path / "capped")}) == capped
    assert _capped_base_training({"model": str(tmp_path / "full")}) is None
    assert _capped_base_training({"model": "base"}) is None and _capped_base_training({}) is None

    arms = [
        {"name": "adabldm", "base_training": capped},
        {"name": "tiny", "training": budget.record(10, 4, "time", 5.0), "base_training": capped},
        {"name": "crop-paste"},
    ]
    notes = capped_arms(arms)
    assert notes == {
        "adabldm": "base model trained 700 / 2800 steps (time cap)",
        "tiny": "trained 4 / 10 steps (time cap); base model trained 700 / 2800 steps (time cap)",
    }
