"""Declarative pipeline specs: `pipelines/<dataset>/<category>.yaml` merged over `defaults.yaml`.

A spec names the dataset, the category, one seed, and a section per stage. Unknown keys are
errors (a typo must never be silently ignored), reported with the key path and the file.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from anoaug.errors import SpecError
from anoaug.masks.learned.settings import LearnedMasksSettings

PIPELINES_ENV = "ANOAUG_PIPELINES"
BASE_MODEL = "base"  # a generator's `model` setting that names the model the pipeline's pretrain stage learns
NONE_ARM = "none"  # the same arm names as anoaug.evaluation.protocol (not imported: no training stack here)
REAL_ARM = "real-few"
REAL_SUFFIX = "+real"
DATA_ROOT_ENV = "ANOAUG_DATA_ROOT"
REPO_PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"


class Section(BaseModel):
    """Base of every spec section: unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DatasetSection(Section):
    name: str = Field(description="Dataset name: mvtec, visa, demo, or your own.")
    format: Literal["mvtec", "visa", "folder", "auto"] = "auto"
    root: str | None = Field(
        default=None,
        description="Dataset root. Overridden by the env var named in root_env, then by --data-root.",
    )
    root_env: str = Field(default=DATA_ROOT_ENV, description="Environment variable that sets the root.")
    category: str = ""
    kind: Literal["object", "texture", "auto"] = "auto"
    mask_tolerance: int = Field(
        default=10, ge=0, le=127, description="Mask values within N of 0 or 255 count as binary (input guard)."
    )

    @field_validator("name", "category")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        """A dataset or category name becomes a folder of the run: one plain path component."""
        from anoaug.errors import DatasetError
        from anoaug.outputs import check_name

        if v:
            try:
                check_name(v, "name")
            except DatasetError as exc:
                raise ValueError(exc.message) from None
        return v


class SplitSection(Section):
    gen_train_fraction: float = Field(default=1 / 3, gt=0, lt=1)
    min_gen_train: int = Field(default=1, ge=1)
    min_eval: int = Field(default=1, ge=1)


class ForegroundSection(Section):
    """Where a normal image's object is (anoaug.masks.foreground); textures use the whole image."""

    method: Literal[
        "auto", "threshold", "border", "grabcut", "whole", "model", "region", "kmeans", "grabcut_center"
    ] = "auto"
    channel: Literal["gray", "saturation", "value", "lab_l", "auto"] = "auto"
    blur: int = Field(default=5, ge=0, description="Median blur kernel (px, 0 = off) before thresholding.")
    closing: int = Field(default=7, ge=0, description="Morphological closing kernel (px, 0 = off).")
    opening: int = Field(default=3, ge=0, description="Morphological opening kernel (px, 0 = off).")
    fill_holes: bool = True
    largest_component: bool = True
    border_width: int = Field(default=8, ge=1, description="Border strip (px) that models the background.")
    border_threshold: float = Field(
        default=8.0, gt=0, description="Mahalanobis distance (in Lab) from the border colour that is object."
    )
    grabcut_iters: int = Field(default=3, ge=1, le=20)
    model_path: str | None = Field(
        default=None, description="TorchScript / .pt2 segmentation model (method: model)."
    )
    min_fraction: float = Field(default=0.02, ge=0, le=1, description="Flag objects covering less.")
    max_fraction: float = Field(default=0.97, ge=0, le=1, description="Flag objects covering more.")
    max_components: int = Field(default=4, ge=1, description="Flag foregrounds split into more components.")
    shadow_depth: float = Field(
        default=0.6, ge=0, le=1, description="Darkening of the background (share of its lightness) taken as shadow."
    )


class MasksSection(Section):
    source: Literal["bank", "perlin", "learned"] = "bank"
    placement: Literal["foreground", "free", "auto"] = "auto"
    rotation: tuple[float, float] = (0.0, 360.0)
    scale: tuple[float, float] = (0.85, 1.15)
    erode: int = Field(default=2, ge=0, description="Erode the foreground by this many pixels first.")
    max_attempts: int = Field(default=50, ge=1, description="Random affines tried per synthesized mask.")
    attempts_per_mask: int = Field(default=10, ge=1, description="Affines tried before the next bank mask.")
    split_components: bool = Field(
        default=True, description="Split bank masks into connected components (see component_gap)."
    )
    component_gap: int = Field(default=3, ge=0, description="Components closer than this (px) stay together.")
    min_component_area: int = Field(default=8, ge=1, description="Drop split components smaller than this.")
    foreground: ForegroundSection = Field(default_factory=ForegroundSection)
    max_bad_share: float = Field(
        default=0.5, ge=0, le=1, description="Fail when more normal images than this share have an unusable foreground."
    )
    learned: LearnedMasksSettings = Field(
        default_factory=LearnedMasksSettings, description="source: learned (anoaug.masks.learned.settings)."
    )

    @field_validator("rotation", "scale")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if v[0] > v[1]:
            raise ValueError(f"range must be (low, high), got {v}")
        return v

    @field_validator("scale")
    @classmethod
    def _positive_scale(cls, v: tuple[float, float]) -> tuple[float, float]:
        if v[0] <= 0:
            raise ValueError(f"scale must be > 0, got {v}")
        return v


class GeneratorSection(Section):
    name: str = Field(default="cutpaste", description="Registered generator: crop-paste, cutpaste, perlin, ...")
    params: dict[str, Any] = Field(default_factory=dict, description="Generator-specific settings.")
    artifact: str | None = Field(
        default=None, description="Reuse this fitted artifact directory instead of fitting into <out>/artifact."
    )


class VariantSection(Section):
    """A named producer for ablations: a registered generator with its own params (and, optionally, masks)."""

    generator: str = Field(description="Registered generator this variant runs.")
    params: dict[str, Any] = Field(default_factory=dict, description="Its settings (over the generator's defaults).")
    masks: dict[str, Any] | None = Field(
        default=None,
        description="Its own masks settings, merged over the run's `masks` section for this producer's generation "
        "only (e.g. {source: learned}); None = the run's masks.",
    )

    @field_validator("masks")
    @classmethod
    def _masks_keys(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        """Keys and values as the masks section checks them (all its fields have defaults, so a partial
        override validates on its own; the merged section is checked again in ``PipelineSpec``)."""
        if v is not None:
            try:
                MasksSection.model_validate(v)
            except ValidationError as exc:
                raise ValueError(_format_validation_error(exc)) from None
        return v


class GenerationSection(Section):
    count_per_type: int = Field(default=100, ge=1, description="Samples per defect type.")
    shard_size: int = Field(default=500, ge=1, description="Samples per WebDataset shard.")
    workers: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        default="auto",
        description="Processes generating samples (one writer). 'auto': measured on the job, more than one only "
        "when they pay for their start-up, at most the usable cores (anoaug.shards.workers).",
    )
    batch_size: int = Field(default=8, ge=1, description="Requests per generator.generate call.")
    encode_threads: Annotated[int, Field(ge=0)] | Literal["auto"] = Field(
        default="auto",
        description="Threads PNG-encoding samples made in the writing process (0: inline; 'auto': usable cores, "
        "at most 4). Speed only: the shards are byte-identical for any value.",
    )


class EvaluationSection(Section):
    """Downstream evaluation (anoaug.evaluation): arms x seeds x models, fixed schedules, no eval-set tuning."""

    arms: list[str] = Field(
        default_factory=lambda: ["none", "real-few", "cutpaste"],
        description="'none' (one-class), 'real-few' (the gen_train_defect images), a generator name "
        "(its shards), or '<generator>+real' (its shards plus the real few).",
    )
    seeds: list[Annotated[int, Field(ge=0)]] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    models: list[str] = Field(
        default_factory=lambda: ["segmenter"],
        description="Registered detectors (anoaug.evaluation.detectors): segmenter, classifier (defect type, AC), "
        "supersimplenet (supervised), draem (anomalib DRÆM with the arm's defect pairs as anomaly source; Perlin in "
        "'none'), diffusionad (norm-guided one-step denoising + segmentation subnetwork, fed like draem), padim, "
        "patchcore (one-class baselines). Unknown names are errors.",
    )
    image_size: int = Field(default=128, ge=16)
    epochs: int = Field(default=10, ge=1)
    batch_size: int = Field(default=16, ge=1)
    steps_per_epoch: int | None = Field(
        default=None,
        ge=1,
        description="Optimisation steps per epoch of the supervised models (segmenter, supersimplenet). Default: "
        "2 x normal images / batch size. A few-shot training set is tiny, so an 'epoch' over it is a handful "
        "of steps; set this to train long enough with a fixed, evaluation-free schedule.",
    )
    widths: list[int] = Field(default_factory=lambda: [16, 32, 64], description="Segmenter U-Net widths.")
    lr: float = Field(default=1e-3, gt=0)
    focal_weight: float = Field(default=1.0, ge=0)
    dice_weight: float = Field(default=1.0, ge=0)
    max_synthetic_per_type: int = Field(default=60, ge=1, description="Synthetic pairs used per defect type.")
    none_baseline: Literal["padim", "patchcore"] = Field(
        default="padim", description="One-class model standing in for the segmenter in the 'none' arm."
    )
    pre_trained: bool = Field(
        default=False, description="Pretrained backbones for anomalib models (needs weights on disk)."
    )
    classifier_image_size: int = Field(default=64, ge=16)
    classifier_epochs: int = Field(default=8, ge=1)
    num_threads: int | Literal["auto"] = Field(
        default=1,
        description="torch CPU threads: a number (results are byte-identical for the same seeds and count), or "
        "auto = the cores this process may use (its CPU affinity; run.json records the count).",
    )

    @field_validator("num_threads")
    @classmethod
    def _threads_positive(cls, v: int | str) -> int | str:
        if v != "auto" and int(v) < 1:
            raise ValueError("num_threads must be >= 1 or auto")
        return v
    precision: Literal["auto", "32", "bf16"] = Field(
        default="auto",
        description="Segmenter training precision: bf16 autocast (~1.7x faster on CPUs with native bf16), 32, or "
        "auto (bf16 where the CPU has it natively). The same for every arm, so comparisons stay fair.",
    )
    gpu: dict[str, Any] = Field(
        default_factory=lambda: {
            "image_size": 256,
            "epochs": 60,
            "widths": [32, 64, 128, 256],
            "classifier_image_size": 224,
            "classifier_epochs": 30,
            "max_synthetic_per_type": 500,
        },
        description="Overrides applied to this section when the spec's profile is 'gpu'.",
    )
    device: str = Field(
        default="auto",
        pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$",
        description="Where the detectors train and predict: auto (CUDA when available, else CPU), cpu, cuda, "
        "cuda:N or mps.",
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="Per-detector settings, {<detector>: {key: value}} (e.g. {padim: {backbone: resnet18}}), "
        "validated by each detector's Settings (anoaug.evaluation.detectors.check_evaluation). The old flat keys "
        "(padim_backbone, draem_dtd_dir, ...) still load, with a DeprecationWarning.",
    )

    def for_profile(self, profile: str) -> EvaluationSection:
        """This section with the `gpu` overrides applied when profile == 'gpu' (validated)."""
        if profile != "gpu" or not self.gpu:
            return self
        return EvaluationSection.model_validate({**self.model_dump(), **self.gpu})


class ScheduleSection(Section):
    cron: str | None = None
    timezone: str = "UTC"


class PipelineSpec(Section):
    """A whole per-category pipeline."""

    dataset: DatasetSection
    seed: int = Field(default=0, ge=0)
    profile: Literal["cpu-tiny", "gpu"] = "cpu-tiny"
    split: SplitSection = Field(default_factory=SplitSection)
    masks: MasksSection = Field(default_factory=MasksSection)
    generator: GeneratorSection = Field(default_factory=GeneratorSection)
    variants: dict[str, VariantSection] = Field(
        default_factory=dict,
        description="Named producers for ablations: <name>: {generator, params}; an arm names one like a generator.",
    )
    pretrain: dict[str, Any] = Field(
        default_factory=dict,
        description="Settings of the base model `anoaug pretrain` learns on this run's normal training images when "
        "a generator's `model` is `base` (PretrainSettings in anoaug.generators.diffusion.pretrain; its seed "
        "defaults to the spec's).",
    )
    generation: GenerationSection = Field(default_factory=GenerationSection)
    quality: dict[str, Any] = Field(
        default_factory=dict,
        description="Settings of the generation-quality stage (QualitySettings in anoaug.evaluation.quality: "
        "weights_dir for KID/IS/IC-LPIPS, crop_size, cluster_cap, ...).",
    )
    evaluation: EvaluationSection = Field(default_factory=EvaluationSection)
    schedule: ScheduleSection = Field(default_factory=ScheduleSection)
    source: str | None = Field(default=None, description="Files the spec was read from (set by the loader).")

    @model_validator(mode="after")
    def _category_set(self) -> PipelineSpec:
        if not self.dataset.category:
            raise ValueError("dataset.category must be set")
        return self

    @field_validator("variants")
    @classmethod
    def _variant_names(cls, v: dict[str, VariantSection]) -> dict[str, VariantSection]:
        for name in v:
            reserved = name in (NONE_ARM, REAL_ARM) or name.endswith(REAL_SUFFIX)
            if reserved or not name or any(c in name for c in "./ "):
                raise ValueError(
                    f"variant name {name!r} is not allowed (not 'none', 'real-few', '<name>+real', empty, "
                    "or with '.', '/' or spaces)"
                )
        return v

    @model_validator(mode="after")
    def _variant_masks_merge(self) -> PipelineSpec:
        for name in self.variants:
            try:
                self.masks_for(name)
            except ValidationError as exc:
                raise ValueError(f"variants.{name}.masks over masks: {_format_validation_error(exc)}") from None
        return self

    # --- producers: who generates an arm's shards ---------------------------------------------------

    def producer(self, name: str) -> tuple[str, dict[str, Any]]:
        """(generator, params) that producer ``name`` runs: a variant's generator and params; the spec's
        generator with generator.params; any other registered generator with its defaults."""
        if name in self.variants:
            variant = self.variants[name]
            return variant.generator, dict(variant.params)
        if name == self.generator.name:
            return name, dict(self.generator.params)
        return name, {}

    def masks_for(self, name: str | None) -> MasksSection:
        """The masks section producer ``name`` generates with: the run's ``masks``, with a variant's own
        ``masks`` merged over it (mappings merge, other values replace); the run's for any other producer."""
        variant = self.variants.get(name) if name is not None else None
        if variant is None or variant.masks is None:
            return self.masks
        return MasksSection.model_validate(deep_merge(self.masks.model_dump(mode="json"), variant.masks))

    def variant_masks(self, name: str | None) -> dict[str, Any] | None:
        """A variant's own ``masks`` override (None for a producer without one)."""
        variant = self.variants.get(name) if name is not None else None
        return None if variant is None or variant.masks is None else dict(variant.masks)

    def uses_base_model(self, name: str) -> bool:
        """True when producer ``name`` runs on the base model pretrained on this run (``model: base``)."""
        return self.producer(name)[1].get("model") == BASE_MODEL

    def producers(self) -> list[str]:
        """Producers to fit and sample: generator.name, then every generator or variant an arm names."""
        names = [self.generator.name]
        for arm in self.evaluation.arms:
            name = arm_producer(arm)
            if name is not None and name not in names:
                names.append(name)
        return names

    def check_producers(self, generators: Collection[str], arms: bool = True) -> None:
        """SpecError unless every variant runs one of ``generators`` (the registered names) without taking
        one's name, and (with ``arms``; a pipeline run generates every arm) every arm names a generator or
        a variant. The registry is passed in: generators import this module."""
        for name, variant in self.variants.items():
            where = self.holder(("variants", name))
            if name in generators:
                raise SpecError(f"variant '{name}' has the name of a registered generator; rename it", where)
            if variant.generator not in generators:
                known = ", ".join(sorted(generators)) or "none"
                raise SpecError(f"variant '{name}': unknown generator '{variant.generator}'; available: {known}", where)
        for arm in self.evaluation.arms if arms else []:
            name = arm_producer(arm)
            if name is not None and name not in self.variants and name not in generators:
                known = ", ".join(sorted([*generators, *self.variants])) or "none"
                raise SpecError(
                    f"evaluation arm '{arm}': unknown generator or variant '{name}'; available: {known}",
                    self.holder(("evaluation", "arms")),
                )

    def holder(self, loc: tuple[str, ...]) -> str | None:
        """The last spec file that sets ``loc`` (else all of them, as recorded in ``source``)."""
        files = [Path(f) for f in (self.source or "").split(" + ") if f.endswith((".yaml", ".yml"))]
        holders = [f for f in files if f.is_file() and _has_path(_read_yaml(f), loc)]
        return str(holders[-1]) if holders else self.source

    def resolve_root(self, override: str | Path | None = None) -> Path:
        """The dataset root: --data-root, else the env var in dataset.root_env, else dataset.root."""
        for candidate, origin in (
            (override, "--data-root"),
            (os.environ.get(self.dataset.root_env), f"${self.dataset.root_env}"),
            (self.dataset.root, f"dataset.root in {self.source}"),
        ):
            if candidate:
                path = Path(os.path.expanduser(str(candidate)))
                if not path.is_dir():
                    raise SpecError(f"dataset root does not exist (set by {origin})", path)
                return path
        raise SpecError(
            f"no dataset root for {self.dataset.name}/{self.dataset.category}: pass --data-root, "
            f"set ${self.dataset.root_env}, or set dataset.root in {self.source}"
        )


def arm_producer(arm: str) -> str | None:
    """The producer (generator or variant) whose shards an evaluation arm trains on: none for 'none' and
    'real-few', X for 'X' and 'X+real' (the rule of anoaug.evaluation.protocol.parse_arm)."""
    if arm in (NONE_ARM, REAL_ARM):
        return None
    return arm[: -len(REAL_SUFFIX)] if arm.endswith(REAL_SUFFIX) else arm


def pipelines_dir() -> Path:
    """Where specs live: $ANOAUG_PIPELINES, else ./pipelines, else the repository's pipelines/."""
    env = os.environ.get(PIPELINES_ENV)
    if env:
        return Path(env)
    cwd = Path.cwd() / "pipelines"
    if cwd.is_dir():
        return cwd
    return REPO_PIPELINES


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge `override` into a copy of `base` (mappings merge, everything else replaces)."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SpecError(f"invalid YAML: {exc}", path) from None
    except OSError as exc:
        raise SpecError(f"cannot read spec: {exc.strerror}", path) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SpecError("a spec must be a mapping at the top level", path)
    return data


def _format_validation_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown key '{loc}'")
        else:
            parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def spec_files(name_or_path: str | Path) -> list[Path]:
    """The files a spec reference resolves to, lowest precedence first."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise SpecError("spec file not found", path)
        defaults = path.parent / "defaults.yaml"
        return [defaults, path] if defaults.is_file() and defaults != path else [path]
    parts = str(name_or_path).strip("/").split("/")
    if len(parts) != 2:
        raise SpecError(f"spec reference must be <dataset>/<category> or a .yaml path, got '{name_or_path}'")
    root = pipelines_dir()
    file = root / parts[0] / f"{parts[1]}.yaml"
    if not file.is_file():
        raise SpecError(f"no spec for '{name_or_path}' (looked in {root}; set ${PIPELINES_ENV})", file)
    defaults = root / parts[0] / "defaults.yaml"
    return [defaults, file] if defaults.is_file() else [file]


def load_spec(name_or_path: str | Path, overrides: dict[str, Any] | None = None) -> PipelineSpec:
    """Load, merge and validate a spec; `overrides` is a nested dict applied last."""
    files = spec_files(name_or_path)
    merged: dict[str, Any] = {}
    for file in files:
        merged = deep_merge(merged, _read_yaml(file))
    if overrides:
        merged = deep_merge(merged, overrides)
    merged.pop("source", None)
    try:
        spec = PipelineSpec.model_validate(merged)
    except ValidationError as exc:
        # Attribute the error to the file that holds the offending key (last one wins).
        loc = exc.errors()[0]["loc"]
        holders = [f for f in files if _has_path(_read_yaml(f), loc)]
        culprit = holders[-1] if holders else files[-1]
        raise SpecError(_format_validation_error(exc), culprit) from None
    spec.source = " + ".join(str(f) for f in files)
    return spec


def _has_path(data: Any, loc: tuple[Any, ...]) -> bool:
    for key in loc:
        in_dict = isinstance(data, dict) and key in data
        in_list = isinstance(data, list) and isinstance(key, int) and key < len(data)
        if in_dict or in_list:
            data = data[key]
        else:
            return False
    return True


def spec_for_root(root: str | Path, category: str, dataset: str = "folder", **sections: Any) -> PipelineSpec:
    """A spec for a bare dataset root given on the command line (no YAML file)."""
    data = deep_merge({"dataset": {"name": dataset, "root": str(root), "category": category}}, sections)
    try:
        spec = PipelineSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(_format_validation_error(exc)) from None
    spec.source = f"<root {root}>"
    return spec


def resolve_spec(spec_or_root: str | Path, category: str | None = None) -> PipelineSpec:
    """Commands accept a spec reference (`mvtec/bottle`, a .yaml) or a dataset root + --category."""
    p = Path(spec_or_root)
    if p.is_dir():
        if not category:
            raise SpecError("a dataset root needs --category", p)
        return spec_for_root(p, category, dataset=p.resolve().name)  # records and reports name the folder
    spec = load_spec(spec_or_root)
    if category and category != spec.dataset.category:
        raise SpecError(f"--category {category} does not match the spec's category {spec.dataset.category}")
    return spec
