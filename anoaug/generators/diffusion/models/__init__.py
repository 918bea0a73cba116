"""nn.Modules of the diffusion generators."""

from anoaug.generators.diffusion.models.tiny_unet import TinyUNetConfig, build_tiny_unet, model_input

__all__ = ["TinyUNetConfig", "build_tiny_unet", "model_input"]
