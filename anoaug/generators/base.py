"""The one generator interface every defect generator implements.

A generator is fitted on the generator-training defects of a category (role ``gen_train_defect`` in
the split manifest, never an evaluation image) plus normal images, and saves an *artifact
directory* whose content hash identifies it in every sample's lineage. It then turns batches of
(normal image, synthesized mask/trimap, defect type, seed) into (image, final mask) pairs, where
the final mask describes the defect that was actually drawn.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
from pydantic import BeforeValidator

from anoaug.atomic import atomic_write_text
from anoaug.data.io import load_image, load_mask
from anoaug.data.records import CategoryData
from anoaug.data.split import SplitManifest
from anoaug.errors import AnoaugError, SpecError
from anoaug.hashing import update_from_file
from anoaug.registry import Registry, Settings, validate_settings

ARTIFACT_FILE = "artifact.json"


@dataclass
class DefectExample:
    """One real generator-training defect."""

    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) bool
    defect_type: str
    relpath: str


@dataclass
class FitData:
    """What a generator may learn from: generator-training defects and normal training images."""

    category: str
    kind: str  # "object" or "texture"
    defects: list[DefectExample]
    normal_paths: list[Path]
    foreground_fn: Callable[[np.ndarray], np.ndarray] | None = None  # image -> (H, W) bool

    @property
    def defect_types(self) -> list[str]:
        return sorted({d.defect_type for d in self.defects})

    def normal_images(self, limit: int | None = None) -> list[np.ndarray]:
        return [load_image(p) for p in self.normal_paths[:limit]]

    @classmethod
    def from_split(cls, data: CategoryData, split: SplitManifest, kind: str = "object") -> FitData:
        """Build from a category and its split manifest: only gen_train_defect and train_normal rows."""
        defects = [
            DefectExample(
                image=load_image(data.path(r["relpath"])),
                mask=load_mask(data.path(r["mask_relpath"])),
                defect_type=r["label"],
                relpath=r["relpath"],
            )
            for r in split.rows("gen_train_defect")
        ]
        normals = [data.path(r["relpath"]) for r in split.rows("train_normal")]
        return cls(category=data.category, kind=kind, defects=defects, normal_paths=normals)


@dataclass
class GenerationRequest:
    """One sample to generate."""

    normal: np.ndarray  # (H, W, 3) uint8, the normal image to draw the defect on
    mask: np.ndarray  # (H, W) bool, where the defect should be
    defect_type: str
    seed: int
    trimap: np.ndarray | None = None  # (H, W) uint8: 255 defect, 127 object, 0 background
    normal_key: str | None = None  # where `normal` came from (relpath), for lineage and caches
    # How `mask` was synthesized (SynthesizedMask.params: source_image, component, angle, scale, tx, ty, ...);
    # None for masks of unknown origin. Generators that cannot use it ignore it.
    mask_params: dict[str, Any] | None = None

    @property
    def allowed(self) -> np.ndarray:
        """(H, W) bool: where a defect may be drawn (defect or object in the trimap; everywhere without one)."""
        if self.trimap is None:
            return np.ones(self.normal.shape[:2], bool)
        return (self.trimap > 0) | self.mask


@dataclass
class GenerationResult:
    """One generated sample; `mask` is the final mask of what was actually drawn."""

    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) bool
    info: dict[str, Any] = field(default_factory=dict)  # JSON-serialisable, generator-specific lineage
    # Extra per-sample images (name -> (H, W, 3) or (H, W) uint8/bool), written as <key>.<name>.png in the shard.
    extras: dict[str, np.ndarray] = field(default_factory=dict)


class GeneratorError(AnoaugError):
    """A generator could not be fitted, loaded or run."""


def _parse_bool_or_auto(value: Any) -> Any:
    """YAML bools, or strings like ``yes``/``off``/``AUTO``, for a ``BoolOrAuto`` setting."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "auto":
            return "auto"
        if text in ("true", "1", "yes", "on"):
            return True
        if text in ("false", "0", "no", "off"):
            return False
    return value


# A ``true | false | auto`` generator setting: bool, or "auto" (the generator decides on the machine).
BoolOrAuto = Annotated[bool | Literal["auto"], BeforeValidator(_parse_bool_or_auto)]


class GeneratorSettings(Settings):
    """Base of every generator's typed settings (``Generator.Settings``): unknown keys are errors."""


class Generator(ABC):
    """Base class: subclasses set `name` and `Settings`, implement `_fit`, `_load` and `generate`.

    ``params`` (a spec's ``generator.params``, or an artifact's stored settings) are validated once into
    ``self.settings``, an instance of the class's ``Settings``; keys in ``renamed_settings`` (old name ->
    new name) still load, with a ``DeprecationWarning``.
    """

    name: ClassVar[str]
    # True for generators that learn a model from the defects (diffusion); False for model-free ones
    # (crop-paste, cutpaste, perlin). The report pairs every learned arm with every model-free arm.
    learned: ClassVar[bool] = False
    Settings: ClassVar[type[GeneratorSettings]] = GeneratorSettings
    renamed_settings: ClassVar[dict[str, str]] = {}

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        self.settings = self._validate(params, None, GeneratorError)
        self.artifact_dir: Path | None = None
        self.artifact_hash: str | None = None
        # A learned generator's training record (`anoaug.budget.record`: planned vs done steps), set by
        # `_fit`; kept in the artifact's meta as "training".
        self.training: dict[str, Any] | None = None

    @classmethod
    def check_params(cls, params: dict[str, Any] | None, source: str | Path | None = None) -> GeneratorSettings:
        """``params`` validated into ``cls.Settings`` without building the generator; a bad or unknown key
        is a ``SpecError`` naming the key and the spec file ``source``."""
        return cls._validate(params, source, SpecError)

    @classmethod
    def _validate(
        cls, params: dict[str, Any] | None, source: str | Path | None, error: type[AnoaugError]
    ) -> GeneratorSettings:
        settings = validate_settings(
            cls.Settings,
            params,
            f"generator {cls.name}",
            None if source is None else str(source),
            renamed=cls.renamed_settings,
            error=error,
        )
        assert isinstance(settings, cls.Settings)
        return settings

    def fit(self, data: FitData, out_dir: str | Path, seed: int = 0) -> Path:
        """Learn from `data`, write the artifact directory, and return it (content-hashed)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self._fit(data, out, seed)
        meta = {
            "generator": self.name,
            "params": self.settings.model_dump(mode="json"),
            "category": data.category,
            "kind": data.kind,
            "seed": seed,
            "defect_types": data.defect_types,
            "train_defects": sorted(d.relpath for d in data.defects),
        }
        if self.training is not None:
            meta["training"] = self.training
        atomic_write_text(out / ARTIFACT_FILE, json.dumps(meta, indent=2, sort_keys=True, default=str))
        self.artifact_dir = out
        self.artifact_hash = artifact_hash(out)
        return out

    @classmethod
    def load(cls, artifact_dir: str | Path) -> Generator:
        """Load a fitted generator from its artifact directory."""
        artifact_dir = Path(artifact_dir)
        meta_path = artifact_dir / ARTIFACT_FILE
        if not meta_path.is_file():
            raise GeneratorError(f"not a generator artifact (no {ARTIFACT_FILE})", artifact_dir)
        meta = json.loads(meta_path.read_text())
        if meta.get("generator") != cls.name:
            raise GeneratorError(f"artifact is for generator '{meta.get('generator')}', not '{cls.name}'", meta_path)
        try:
            gen = cls(meta.get("params"))  # old setting names load through `renamed_settings`
        except GeneratorError as exc:
            raise GeneratorError(exc.message, meta_path) from None
        gen._load(artifact_dir, meta)
        gen.training = meta.get("training")
        gen.artifact_dir = artifact_dir
        gen.artifact_hash = artifact_hash(artifact_dir)
        return gen

    @abstractmethod
    def _fit(self, data: FitData, out_dir: Path, seed: int) -> None: ...

    @abstractmethod
    def _load(self, artifact_dir: Path, meta: dict[str, Any]) -> None: ...

    @abstractmethod
    def generate(self, batch: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Generate one result per request, deterministic given each request's seed."""


def validate_result(request: GenerationRequest, result: GenerationResult, generator: str = "?") -> None:
    """Raise GeneratorError unless `result` obeys the contract for `request`.

    Image (H, W, 3) uint8 of the normal's size, mask (H, W) bool and not empty, info a dict.
    """
    h, w = request.normal.shape[:2]
    problems = []
    if not isinstance(result.image, np.ndarray) or result.image.shape != (h, w, 3) or result.image.dtype != np.uint8:
        problems.append(f"image must be ({h}, {w}, 3) uint8, got {_describe(result.image)}")
    if not isinstance(result.mask, np.ndarray) or result.mask.shape != (h, w) or result.mask.dtype != np.bool_:
        problems.append(f"mask must be ({h}, {w}) bool, got {_describe(result.mask)}")
    elif not result.mask.any():
        problems.append("final mask is empty")
    if not isinstance(result.info, dict):
        problems.append("info must be a dict")
    if problems:
        raise GeneratorError(f"generator '{generator}' broke the contract: " + "; ".join(problems))


def _describe(a: Any) -> str:
    return f"{a.shape} {a.dtype}" if isinstance(a, np.ndarray) else type(a).__name__


def artifact_hash(artifact_dir: str | Path) -> str:
    """sha256 over the relative paths and bytes of every file in an artifact directory (first 16 hex)."""
    root = Path(artifact_dir)
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file() and not q.name.startswith(".")):
        h.update(p.relative_to(root).as_posix().encode())
        h.update(b"\0")
        update_from_file(h, p)
    return h.hexdigest()[:16]


BUILTIN_MODULES = (
    "anoaug.generators.crop_paste",
    "anoaug.generators.cutpaste",
    "anoaug.generators.perlin",
    "anoaug.generators.diffusion.tiny",
    "anoaug.generators.diffusion.sd.generator",
    "anoaug.generators.diffusion.anomalydiffusion.generator",
    "anoaug.generators.diffusion.dualanodiff.generator",
    "anoaug.generators.diffusion.adabldm.generator",
)
_REGISTRY: Registry[Generator] = Registry("generator", BUILTIN_MODULES, error=GeneratorError)


def register(cls: type[Generator]) -> type[Generator]:
    """Class decorator: make a generator selectable by its `name` in specs and on the CLI."""
    return _REGISTRY.register(cls)


def get_generator(name: str) -> type[Generator]:
    """The generator class registered under `name`; an unknown name is a GeneratorError listing the known ones."""
    return _REGISTRY.get(name)


def check_generator_params(
    name: str, params: dict[str, Any] | None, source: str | Path | None = None
) -> GeneratorSettings:
    """The typed settings of generator ``name`` for ``params``, without building it (as right after loading a
    spec): an unknown generator, setting key or bad value is a ``SpecError`` naming it and the file ``source``."""
    if name not in _REGISTRY:
        raise SpecError(f"unknown generator '{name}'; available: {', '.join(_REGISTRY.names())}", source)
    return _REGISTRY.get(name).check_params(params, source)


def available_generators() -> list[str]:
    """Every registered generator name, sorted (built-ins, then entry-point plugins)."""
    return _REGISTRY.names()
