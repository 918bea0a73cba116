"""The downstream-detector interface: one class per model, one registry, one kind of prediction.

A detector is fitted on an arm's training samples (normal images + the arm's defect pairs, resized
to the detector's image size) and predicts on the held-out evaluation samples. ``task`` says what it
predicts: ``"ad"`` image anomaly scores and anomaly maps, ``"ac"`` defect-type predictions.
``needs_defects`` says what happens in an arm without defects ('none'):

* ``"skip"``: no run (the defect-type classifier has nothing to learn types from);
* ``"fallback"``: the one-class model ``evaluation.none_baseline`` stands in (the segmenter);
* ``"one-class"``: the detector trains on normals with its own synthetic anomalies (SuperSimpleNet, DRÆM).

Detectors with ``uses_defects = False`` (the one-class baselines Padim, Patchcore) never see defects:
they run once per seed, recorded under the 'none' arm.

Kept torch-free at import: built-in detectors import their networks when they fit, so specs can be
checked (``check_evaluation``) without loading the training stack.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from anoaug.errors import SpecError
from anoaug.registry import Registry
from anoaug.registry import Settings as SettingsBase

if TYPE_CHECKING:
    from anoaug.evaluation.protocol import Sample
    from anoaug.spec import EvaluationSection

Task = Literal["ad", "ac"]
NoDefects = Literal["skip", "fallback", "one-class"]


@dataclass
class Prediction:
    """A fitted detector's output on the evaluation samples.

    ``"ad"``: ``scores`` (N,) and ``maps`` (N, H, W), one per evaluation sample, in order.
    ``"ac"``: ``classes`` (M,) predicted and ``targets`` (M,) true indices into the defect types, for
    the M samples named in ``ids`` (the classifier predicts on defective samples only).
    ``info``: extra fields of the run's metrics.json; ``implementation`` at least.
    ``arrays``: extra per-sample arrays (first axis N) saved in predictions.npz under their names, e.g.
    DiffusionAD's ``reconstructions`` (N, H, W, 3) uint8; the report draws them when present.
    """

    scores: np.ndarray | None = None
    maps: np.ndarray | None = None
    classes: np.ndarray | None = None
    targets: np.ndarray | None = None
    ids: list[str] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class FitContext:
    """What a detector may use besides its training samples."""

    cfg: EvaluationSection  # the profile-resolved evaluation section (epochs, batch size, ...)
    defect_types: list[str]  # the category's defect types: the class order of the 'ac' task
    device: str = "cpu"  # resolved torch device ("cpu", "cuda:0", "mps")
    profile: str = "cpu-tiny"  # the spec's profile: detectors without a cfg field for a size pick it by this


class Detector(ABC):
    """Base class: subclasses set the class attributes and implement ``fit`` and ``predict``."""

    name: ClassVar[str]
    Settings: ClassVar[type[SettingsBase]] = SettingsBase  # typed ``evaluation.params.<name>`` (none by default)
    task: ClassVar[Task] = "ad"
    needs_defects: ClassVar[NoDefects] = "one-class"
    uses_defects: ClassVar[bool] = True  # False: normals only, one run per seed under arm 'none'
    # Appended to run.json's note on the 'none' arm (how this detector treats it), when it runs.
    none_arm_note: ClassVar[str] = ""
    # Deprecated flat ``evaluation.params`` keys of this detector -> its settings' names.
    renamed: ClassVar[dict[str, str]] = {}

    def __init__(self, settings: SettingsBase | None = None) -> None:
        self.settings = settings if settings is not None else self.Settings()
        self.context: FitContext | None = None

    @classmethod
    def image_size(cls, cfg: EvaluationSection) -> int:
        """The side (px) its training and evaluation samples are resized to."""
        return cfg.image_size

    @classmethod
    def check(cls, cfg: EvaluationSection) -> list[str]:
        """Problems of the evaluation section for this detector (e.g. an image size it cannot take)."""
        del cfg
        return []

    @abstractmethod
    def fit(self, train: list[Sample], context: FitContext, seed: int) -> None:
        """Train on an arm's samples (normals + its defects); every random choice from ``seed``."""

    @abstractmethod
    def predict(self, eval_samples: list[Sample]) -> Prediction:
        """Predict on the evaluation samples (after ``fit``); arrays on the CPU."""

    def _fitted(self) -> FitContext:
        if self.context is None:
            raise RuntimeError(f"detector {self.name!r}: predict before fit")
        return self.context


BUILTIN_DETECTORS = (
    "anoaug.evaluation.detectors.segmenter",
    "anoaug.evaluation.detectors.classifier",
    "anoaug.evaluation.detectors.supersimplenet",
    "anoaug.evaluation.detectors.draem",
    "anoaug.evaluation.detectors.padim",
    "anoaug.evaluation.detectors.patchcore",
    "anoaug.evaluation.detectors.diffusionad",
)
DETECTORS: Registry[Detector] = Registry("detector", BUILTIN_DETECTORS, error=SpecError)


def register_detector(cls: type[Detector]) -> type[Detector]:
    """Class decorator: make a detector selectable by its ``name`` in ``evaluation.models``."""
    return DETECTORS.register(cls)


def get_detector(name: str) -> type[Detector]:
    """The detector class registered under ``name`` (SpecError listing the known ones otherwise)."""
    return DETECTORS.get(name)


def available_detectors() -> list[str]:
    """Every registered detector name, sorted."""
    return DETECTORS.names()
