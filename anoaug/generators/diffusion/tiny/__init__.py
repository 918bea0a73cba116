"""``diffusion-tiny``: a small pixel-space diffusion UNet trained per category (`generator`), its model
(`unet`) and training loop (`training`). torch and diffusers load only when a model is fitted, loaded or run."""

from anoaug.generators.diffusion.tiny.generator import TinyDiffusionGenerator, cpu_threads

__all__ = ["TinyDiffusionGenerator", "cpu_threads"]
