"""A variant's own ``masks`` (e.g. learned vs bank masks as two arms of one run): validation, the merge over the
run's masks section, cache keys, the base model rule, and one small `anoaug run` with the two arms."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from anoaug.errors import SpecError
from anoaug.pipeline import stages
from anoaug.pipeline.config import check_spec, prepare_spec
from anoaug.spec import load_spec
from tests.conftest import FLOW_TINY, run_cli

LEARNED_ARM = {"generator": "cutpaste", "masks": {"source": "learned", "learned": {"tokens": 3}}}


def _spec(**variants: dict) -> object:
    """demo/cap with these variants, each an arm."""
    arms = ["real-few", "cutpaste", *variants]
    return load_spec("demo/cap", {"masks": {"scale": [0.3, 0.5]}, "variants": variants, "evaluation": {"arms": arms}})


def test_variant_masks_are_checked_and_merged_over_the_run_masks(tmp_path: Path, demo_root: Path) -> None:
    spec = _spec(**{"cp-learned": LEARNED_ARM, "cp-plain": {"generator": "cutpaste"}})
    own = spec.masks_for("cp-learned")
    assert own.source == "learned" and own.learned.tokens == 3
    assert own.scale == (0.3, 0.5) and own.foreground == spec.masks.foreground  # the rest is the run's
    assert spec.masks.source == "bank" and spec.masks_for("cp-plain") is spec.masks
    assert spec.masks_for("cutpaste") is spec.masks and spec.variant_masks("cp-plain") is None
    assert spec.variant_masks("cp-learned") == LEARNED_ARM["masks"]
    # Kept as a partial override through the command-line path (dump + validate), so it still merges.
    again = check_spec(prepare_spec("demo/cap", sets={"variants": {"cp-learned": LEARNED_ARM}}))
    assert again.variants["cp-learned"].masks == LEARNED_ARM["masks"]
    assert again.masks_for("cp-learned").model_dump() == load_spec(
        "demo/cap", {"masks": {"source": "learned", "learned": {"tokens": 3}}}
    ).masks.model_dump()

    with pytest.raises(SpecError, match=r"variants\.cp-bad\.masks.*unknown key 'sorce'"):
        _spec(**{"cp-bad": {"generator": "cutpaste", "masks": {"sorce": "learned"}}})
    with pytest.raises(SpecError, match=r"variants\.cp-bad\.masks.*learned\.tokens"):
        _spec(**{"cp-bad": {"generator": "cutpaste", "masks": {"learned": {"tokens": 0}}}})
    with pytest.raises(SpecError, match=r"variants\.cp-bad\.masks.*source"):
        _spec(**{"cp-bad": {"generator": "cutpaste", "masks": {"source": "painted"}}})

    # Cache keys: the producer's own masks count; every other producer keeps the key it had.
    split = stages.stage_split(spec, demo_root, tmp_path / "run")
    plain = _spec(**{"cp-plain": {"generator": "cutpaste"}})
    key = stages.generate_fingerprint
    assert key(spec, split, None, "cutpaste") == key(plain, split, None, "cutpaste")
    assert key(spec, split, None, "cp-plain") == key(plain, split, None, "cp-plain")
    assert stages.masks_section(spec, "cp-plain") == stages.masks_section(spec)
    assert stages.masks_fingerprint(spec, split) == stages.masks_fingerprint(plain, split)  # the run's masks stage
    assert key(spec, split, None, "cp-learned") != key(spec, split, None, "cp-plain")
    tuned = _spec(**{"cp-learned": {**LEARNED_ARM, "masks": {"source": "learned", "learned": {"tokens": 4}}}})
    assert key(tuned, split, None, "cp-learned") != key(spec, split, None, "cp-learned")


def test_variant_masks_on_the_base_model_need_the_pretrain_stage(tmp_path: Path) -> None:
    spec = _spec(**{"cp-learned": LEARNED_ARM})  # masks.learned.model defaults to base
    assert not stages.masks_use_base_model(spec) and stages.masks_use_base_model(spec, "cp-learned")
    assert stages.needs_base_model(spec) and not stages.needs_base_model(_spec())
    with pytest.raises(SpecError, match="variant 'cp-learned': masks.learned.model is base.*no pretrain stage"):
        stages.with_base_masks(spec, None, "cp-learned")
    assert stages.with_base_masks(spec, None) is spec and stages.with_base_masks(spec, None, "cutpaste") is spec
    (tmp_path / "model").mkdir()
    base = stages.StageResult(stage="pretrain", fingerprint="f", out_dir=str(tmp_path), outputs={"model": "model"})
    resolved = stages.with_base_masks(spec, base, "cp-learned")
    assert resolved.masks_for("cp-learned").learned.model == str(tmp_path / "model")
    assert spec.masks_for("cp-learned").learned.model == "base"  # a copy: the spec is unchanged
    # The override's own `model: base` is resolved too (the run's masks do not use it).
    own = {"generator": "cutpaste", "masks": {"source": "learned", "learned": {"model": "base"}}}
    resolved = stages.with_base_masks(_spec(**{"cp-own": own}), base, "cp-own")
    assert resolved.masks_for("cp-own").learned.model == str(tmp_path / "model")
    split = stages.StageResult(stage="split", fingerprint="s", out_dir=str(tmp_path), content_hash="h")
    assert stages.generate_fingerprint(spec, split, None, "cp-learned", base) != stages.generate_fingerprint(
        spec, split, None, "cp-learned", None
    )


def _lineage(run_dir: Path, producer: str) -> list[dict]:
    rows = pq.read_table(run_dir / "generate" / producer / "samples.parquet").to_pylist()
    return [json.loads(r["lineage"]) for r in rows]


@pytest.mark.slow
def test_learned_and_bank_masks_as_two_arms_of_one_run(
    tmp_path: Path, demo_root: Path, pretrained_sd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`anoaug run` with two cutpaste arms differing only in masks source: each arm's shards carry masks
    from its own source (the bank's real masks vs the learned pool)."""
    pytest.importorskip("diffusers")
    from anoaug.masks.learned import artifact as art
    from tests.test_masks_learned import _learned

    monkeypatch.setenv(art.CACHE_ENV, str(tmp_path / "cache"))
    variant = {"generator": "cutpaste", "masks": {"source": "learned", "learned": _learned(pretrained_sd)}}
    args = ["run", "demo/cap", "--out", str(tmp_path / "runs"), "--data-root", str(demo_root), *FLOW_TINY,
            "--set", "generation.count_per_type=2", "--set", "masks.scale=[0.3,0.5]",
            "--set", f"variants.cp-learned={json.dumps(variant)}",
            "--set", "evaluation.arms=[cutpaste, cp-learned]"]  # fmt: skip
    code, text = run_cli(args)
    assert code == 0, text
    run_dir = tmp_path / "runs" / "demo" / "cap"
    manifest = json.loads((run_dir / "run.json").read_text())
    assert "pretrain" not in manifest["stages"]  # a model folder: no base model to pretrain
    assert manifest["stages"]["generate:cp-learned"]["info"]["masks_source"] == "learned"
    assert manifest["stages"]["generate:cutpaste"]["info"]["masks_source"] == "bank"
    bank, learned = _lineage(run_dir, "cutpaste"), _lineage(run_dir, "cp-learned")
    assert len(bank) == len(learned) == 4
    assert all(not r["mask_params"]["source_mask"].startswith("learned:") for r in bank)
    assert all(r["mask_params"]["source_mask"].startswith("learned:") for r in learned)
    assert all(r["variant_masks"]["source"] == "learned" for r in learned) and "variant_masks" not in bank[0]
    record = json.loads((run_dir / "generate" / "cp-learned" / "run.json").read_text())
    assert record["masks"]["source"] == "learned" and record["variant_masks"]["source"] == "learned"
    plain = json.loads((run_dir / "generate" / "cutpaste" / "run.json").read_text())
    assert plain["masks"]["source"] == "bank" and "variant_masks" not in plain
    assert {a["name"] for a in json.loads((run_dir / "report" / "report.json").read_text())["arms"]} == {
        "cutpaste", "cp-learned"
    }
