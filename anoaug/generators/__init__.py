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
