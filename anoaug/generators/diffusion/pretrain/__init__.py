"""`anoaug pretrain`: a small Stable Diffusion (VAE, CLIP text encoder + tokenizer, UNet) learned from the
normal training images of some categories, saved in the diffusers layout so that `diffusion-sd`
(``model: <folder>``) and the diffusers Stable Diffusion pipelines load it.

Modules: `settings` (`PretrainSettings`), `data` (normal images, leak guard, held-out split, crops),
`vae`, `text`, `unet` (model builders and losses), `trainer` (`pretrain_base`: phases, checkpoints,
resume, export) and `card` (``model_card.json``). torch / diffusers / transformers are imported lazily
by the functions that need them, except by `trainer`.
"""

from anoaug.generators.diffusion.pretrain.card import CARD, read_card
from anoaug.generators.diffusion.pretrain.data import PretrainError, Source
from anoaug.generators.diffusion.pretrain.settings import PretrainSettings

__all__ = ["CARD", "PretrainError", "PretrainProgress", "PretrainSettings", "Source", "pretrain_base", "read_card"]


def __getattr__(name: str) -> object:
    """`pretrain_base` and `PretrainProgress` load the trainer (and numpy/diffusers helpers) on first use."""
    if name in ("pretrain_base", "PretrainProgress"):
        from anoaug.generators.diffusion.pretrain import trainer

        return getattr(trainer, name)
    raise AttributeError(name)
