"""The run manifest: `<run dir>/run.json` links every stage output of one category run."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from anoaug.atomic import atomic_write_text
from anoaug.pipeline.stages import StageResult
from anoaug.spec import PipelineSpec

RUN_FILE = "run.json"


class StageLink(BaseModel):
    """One stage as the manifest records it: paths relative to the run directory."""

    stage: str
    fingerprint: str
    content_hash: str
    dir: str
    outputs: dict[str, str]
    reused: bool
    seconds: float
    info: dict[str, Any] = Field(default_factory=dict)


class RunManifest(BaseModel):
    """What one category run produced and from which spec."""

    dataset: str
    category: str
    profile: str
    seed: int
    data_root: str
    spec_source: str | None
    spec: dict[str, Any]
    stages: dict[str, StageLink]
    report: str | None = None
    updated: str = ""
    orchestrator: dict[str, Any] = Field(default_factory=dict, description="e.g. the Prefect flow run id")

    def report_path(self, run_dir: str | Path) -> Path | None:
        """Absolute path of the HTML report, if the run got that far."""
        return Path(run_dir) / self.report if self.report else None


def _rel(path: str | Path, base: Path) -> str:
    try:
        return Path(path).resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return str(path)


def build_run_manifest(
    spec: PipelineSpec,
    data_root: str | Path,
    run_dir: str | Path,
    results: list[StageResult],
    orchestrator: dict[str, Any] | None = None,
) -> RunManifest:
    """Link the stage results (in pipeline order) into a manifest; the HTML report if there is one."""
    run_dir = Path(run_dir)
    stages: dict[str, StageLink] = {}
    report: str | None = None
    for r in results:
        d = _rel(r.out_dir, run_dir)
        outputs = {k: f"{d}/{v}" if not Path(v).is_absolute() else v for k, v in r.outputs.items()}
        stages[r.stage] = StageLink(
            stage=r.stage,
            fingerprint=r.fingerprint,
            content_hash=r.content_hash,
            dir=d,
            outputs=outputs,
            reused=r.skipped,
            seconds=r.seconds,
            info=r.info,
        )
        if r.stage == "report":
            html = [v for k, v in outputs.items() if v.endswith(".html")]
            report = html[0] if html else next(iter(outputs.values()), None)
    return RunManifest(
        dataset=spec.dataset.name,
        category=spec.dataset.category,
        profile=spec.profile,
        seed=spec.seed,
        data_root=str(Path(data_root).resolve()),
        spec_source=spec.source,
        spec=spec.model_dump(mode="json", exclude={"source"}),
        stages=stages,
        report=report,
        updated=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        orchestrator=orchestrator or {},
    )


def write_run_manifest(run_dir: str | Path, manifest: RunManifest) -> Path:
    """Write `<run_dir>/run.json` atomically."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / RUN_FILE, manifest.model_dump_json(indent=2))
    return run_dir / RUN_FILE


def read_run_manifest(run_dir: str | Path) -> RunManifest:
    return RunManifest.model_validate_json((Path(run_dir) / RUN_FILE).read_text())
