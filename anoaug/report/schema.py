"""The schema of ``report.json`` as pydantic models (documented in ``anoaug/report/SCHEMA.md``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

REPORT_SCHEMA_VERSION = "1"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Stat(_Model):
    """Mean over seeds with a two-sided 95% t-interval (None where fewer than two seeds)."""

    mean: float | None
    std: float | None
    ci_low: float | None
    ci_high: float | None
    half_width: float | None
    n: int


class RunResult(_Model):
    """One (model, arm, seed) run."""

    model: str
    arm: str
    seed: int
    implementation: str
    metrics: dict[str, float]
    seconds: float
    confusion_matrix: list[list[int]] | None = None
    classes: list[str] | None = None


class Summary(_Model):
    """A metric of one (model, arm) over its seeds."""

    model: str
    arm: str
    metric: str
    values: list[float]
    seeds: list[int]
    stat: Stat


class Gain(_Model):
    """Paired (same seed) difference arm - baseline of one metric; its CI is over the seed differences."""

    model: str
    arm: str
    baseline: str
    metric: str
    seeds: list[int]
    differences: list[float]
    stat: Stat
    significant: bool = Field(description="The 95% CI excludes 0 (False with fewer than two seeds).")


class Report(_Model):
    schema_version: str = REPORT_SCHEMA_VERSION
    dataset: str
    category: str
    profile: str
    seeds: list[int]
    models: list[str]
    arms: list[dict[str, Any]]
    protocol: dict[str, Any]
    config: dict[str, Any]
    notes: list[str]
    generation_quality: dict[str, Any] = Field(
        description="{arm: {fidelity_mmd, diversity, mask_alignment, memorisation, kid, is, ic_lpips, networks: "
        "{weights_dir, files, computed, meaningless, reason}, producer, generator, counts}} from the quality stage "
        "(empty when it did not run); kid / is / ic_lpips are null unless listed in networks.computed."
    )
    runs: list[RunResult]
    summary: list[Summary]
    gains: list[Gain]
    figures: dict[str, str] = Field(description="Figure name -> path relative to the report directory.")
