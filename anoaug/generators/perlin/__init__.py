"""``perlin``: DRAEM-style Perlin-noise masks with a blended-in augmented texture."""

from anoaug.generators.perlin.generator import PerlinGenerator, perlin_mask, perlin_noise

__all__ = ["PerlinGenerator", "perlin_mask", "perlin_noise"]
