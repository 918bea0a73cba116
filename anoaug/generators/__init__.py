"""Defect generators behind one interface (see base.py). Importing this package registers them.

One folder per method: `crop_paste/`, `cutpaste/`, `perlin/`, `diffusion/tiny/`, `diffusion/sd/`. Shared
modules: `compositing` (pixel blending, the diffusion composite and the changed-pixel final mask),
`diffusion.blending` (blended sampling), `diffusion.crops` (windows around a mask), `diffusion.settings`
(the settings both diffusion generators share, under diffusers' names).
"""

from anoaug.generators.base import (
    BoolOrAuto,
    DefectExample,
    FitData,
    GenerationRequest,
    GenerationResult,
    Generator,
    GeneratorError,
    GeneratorSettings,
    available_generators,
    check_generator_params,
    get_generator,
    register,
)

__all__ = [
    "BoolOrAuto",
    "DefectExample",
    "FitData",
    "GenerationRequest",
    "GenerationResult",
    "Generator",
    "GeneratorError",
    "GeneratorSettings",
    "available_generators",
    "check_generator_params",
    "get_generator",
    "register",
]

# Built-in generators (base.BUILTIN_MODULES) register themselves on import; the registry also imports them
# on first lookup, and entry-point plugins (group "anoaug.generators") after them.

from anoaug.generators import crop_paste, cutpaste, perlin  # noqa: E402,F401  (model-free baselines)
from anoaug.generators.diffusion import tiny as _diffusion_tiny  # noqa: E402,F401  (lazy torch)
from anoaug.generators.diffusion.sd import generator as _diffusion_sd  # noqa: E402,F401  (lazy torch)
