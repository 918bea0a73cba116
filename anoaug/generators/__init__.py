"""Defect generators behind one interface (see base.py). Importing this package registers them."""

from anoaug.generators.base import (
    DefectExample,
    FitData,
    GenerationRequest,
    GenerationResult,
    Generator,
    available_generators,
    get_generator,
    register,
)

__all__ = [
    "DefectExample",
    "FitData",
    "GenerationRequest",
    "GenerationResult",
    "Generator",
    "available_generators",
    "get_generator",
    "register",
]

# Built-in generators register themselves on import; each module is added here as it lands.

from anoaug.generators import crop_paste, cutpaste, perlin  # noqa: E402,F401  (model-free baselines)
from anoaug.generators.diffusion import tiny as _diffusion_tiny  # noqa: E402,F401  (lazy torch)
from anoaug.generators.diffusion.sd import generator as _diffusion_sd  # noqa: E402,F401  (lazy torch)
