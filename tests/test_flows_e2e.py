"""THE end-to-end test: `anoaug run demo/cap` through the Prefect category flow on tiny settings.

The tests of this module share one run directory and run in order: first run, rerun (no work),
changed generator setting (generation, evaluation and report rerun), failing stage (exit code).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from tests.conftest import FLOW_TINY, run_cli

TINY = FLOW_TINY
STAGES = ["split", "masks", "generate:cutpaste", "quality:cutpaste", "evaluate", "report"]

pytestmark = pytest.mark.timeout(1200)


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("flow-run")


def _run(out: Path, demo_root: Path, *extra: str) -> tuple[int, str]:
    return run_cli(["run", "demo/cap", "--out", str(out), "--data-root", str(demo_root), *TINY, *extra])


def _manifest(out: Path) -> dict:
    return json.loads((out / "demo" / "cap" / "run.json").read_text())


def _stage_mtimes(out: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in (out / "demo" / "cap").rglob("stage.json")}


def test_full_flow_produces_the_report(out: Path, demo_root: Path) -> None:
    code, text = _run(out, demo_root)
    assert code == 0, text
    m = _manifest(out)
    assert list(m["stages"]) == STAGES
    assert not any(s["reused"] for s in m["stages"].values())
    report = out / "demo" / "cap" / m["report"]
    assert report.name == "report.html" and report.is_file()
    assert f"HTML report: {report}" in " ".join(text.split()) or str(report) in text.replace("\n", "")
    run_dir = out / "demo" / "cap"
    for s in m["stages"].values():  # the manifest links real files
        for rel in s["outputs"].values():
            assert (run_dir / rel).exists(), rel
    assert (run_dir / "generate" / "cutpaste" / "samples.parquet").is_file()
    assert m["orchestrator"]["prefect_flow_run_id"]
    assert (out / ".prefect-results").is_dir()  # Prefect results persisted under the run dir
    assert json.loads((report.parent / "report.json").read_text())["category"] == "cap"
    quality = json.loads((report.parent / "report.json").read_text())["generation_quality"]
    assert set(quality) == {"cutpaste"} and quality["cutpaste"]["fidelity_mmd"] is not None
    assert "## Generation quality" in (report.parent / "report.md").read_text()


def test_rerun_does_no_work(out: Path, demo_root: Path) -> None:
    before = _stage_mtimes(out)
    code, text = _run(out, demo_root)
    assert code == 0, text
    assert "up to date" in text
    assert _stage_mtimes(out) == before
    assert all(s["reused"] for s in _manifest(out)["stages"].values())

    # The same rerun through Prefect itself (no shortcut): every task is a cache hit.
    from flows.category import category_flow

    result = category_flow("demo/cap", out=str(out), data_root=str(demo_root), sets=_sets())
    states = {name: s["info"].get("prefect_state") for name, s in result["stages"].items()}
    assert states == dict.fromkeys(STAGES, "Cached")
    assert _stage_mtimes(out) == before


def _sets() -> dict:
    from anoaug.pipeline.config import parse_sets

    return parse_sets([v for i, v in enumerate(TINY) if i % 2 == 1])


def test_changed_generator_setting_reruns_generation_and_downstream_only(out: Path, demo_root: Path) -> None:
    old = _manifest(out)["stages"]
    code, text = _run(out, demo_root, "--set", "generator.params.jitter=0.3")
    assert code == 0, text
    new = _manifest(out)["stages"]
    assert new["split"]["reused"] and new["masks"]["reused"]
    assert new["split"]["fingerprint"] == old["split"]["fingerprint"]
    for stage in ("generate:cutpaste", "quality:cutpaste", "evaluate", "report"):
        assert not new[stage]["reused"], stage
        assert new[stage]["fingerprint"] != old[stage]["fingerprint"], stage


def test_bad_generator_param_stops_before_any_stage(out: Path, demo_root: Path) -> None:
    before = _stage_mtimes(out)
    code, text = _run(out, demo_root, "--set", "generator.params.no_such_param=1")
    assert code == 2
    flat = " ".join(text.split())
    assert "no_such_param" in flat and "cutpaste" in flat and "stage '" not in flat
    assert _stage_mtimes(out) == before  # checked when the spec loads: nothing ran


def test_failing_stage_exits_nonzero_naming_stage_and_cause(out: Path, demo_root: Path, tmp_path: Path) -> None:
    not_an_artifact = tmp_path / "no-artifact"
    not_an_artifact.mkdir()
    code, text = _run(out, demo_root, "--set", f"generator.artifact={not_an_artifact}")
    assert code != 0
    flat = " ".join(text.split())
    assert "stage 'generate:cutpaste' failed" in flat and "not a generator artifact" in flat
    assert (out / "demo" / "cap" / "generate" / "cutpaste" / "error.log").is_file()


def test_missing_dataset_root_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANOAUG_MVTEC_ROOT", raising=False)
    result = CliRunner().invoke(app, ["run", "mvtec/bottle", "--out", str(tmp_path)])
    assert result.exit_code == 2
    flat = " ".join((result.output + result.stderr).split())
    assert "--data-root" in flat and "$ANOAUG_MVTEC_ROOT" in flat
    assert not (tmp_path / ".prefect").exists()  # failed before Prefect started


def test_run_accepts_an_mvtec_layout_spec_file(tmp_path: Path, demo_root: Path) -> None:
    """A spec file pointing at an MVTec-layout folder resolves like a named spec (up to the root check)."""
    from anoaug.pipeline import stages
    from anoaug.pipeline.config import prepare_spec

    spec_file = tmp_path / "cap.yaml"
    spec_file.write_text(f"dataset:\n  name: mine\n  format: mvtec\n  category: cap\n  root: {demo_root}\n")
    spec = prepare_spec(spec_file)
    assert stages.resolve_data_root(spec, None, tmp_path) == demo_root
    assert stages.run_dir_for(spec, tmp_path) == tmp_path.resolve() / "mine" / "cap"


@pytest.mark.slow
def test_a_variant_arm_runs_end_to_end_and_is_labelled_by_its_name(tmp_path: Path, demo_root: Path) -> None:
    """A model-free variant (crop-paste without feathering) is fitted, sampled into generate/<variant>/,
    evaluated as its own arm and shown in the report under its name with its generator and params."""
    variant = ["--set", "variants.cp-sharp={generator: crop-paste, params: {feather: 0}}",
               "--set", "evaluation.arms=[real-few, cutpaste, cp-sharp]"]  # fmt: skip
    code, text = run_cli(["run", "demo/cap", "--out", str(tmp_path), "--data-root", str(demo_root), *TINY, *variant])
    assert code == 0, text
    run_dir = tmp_path / "demo" / "cap"
    m = json.loads((run_dir / "run.json").read_text())
    assert list(m["stages"]) == [*STAGES[:4], "generate:cp-sharp", "quality:cp-sharp", *STAGES[4:]]
    assert m["stages"]["generate:cp-sharp"]["info"]["variant"] == "cp-sharp"
    record = json.loads((run_dir / "generate" / "cp-sharp" / "run.json").read_text())
    assert (record["generator"], record["variant"]) == ("crop-paste", "cp-sharp")
    assert record["generator_params"] == {"feather": 0}
    assert json.loads((run_dir / "generate" / "cutpaste" / "run.json").read_text())["variant"] is None
    assert not (run_dir / "masks" / "split-seed0.parquet").exists()  # the masks stage used the split stage's manifest
    report = json.loads((run_dir / "report" / "report.json").read_text())
    assert [a["name"] for a in report["arms"]] == ["real-few", "cutpaste", "cp-sharp"]
    assert report["dataset"] == "demo" and {r["arm"] for r in report["runs"]} == {"real-few", "cutpaste", "cp-sharp"}
    md = (run_dir / "report" / "report.md").read_text()
    assert md.startswith("# anoaug evaluation: demo / cap")
    assert '| cp-sharp | crop-paste | cp-sharp | {"feather": 0} | no |' in md
    assert "| segmenter | cp-sharp |" in md
