"""Background compensation (BCM): the normal image's background steers the whole-image branch.

The background is a normal image with its object removed (anoaug's foreground, `anoaug.masks.foreground`,
set to black). Noised to the sampling step, it goes through the UNet once in a *write* pass (base model, no
adapters) where every self-attention layer stores its input; in the *read* pass each self-attention layer
of the whole-image branch takes its keys and values from ``(1 - a) h + a MLP(h_bg)``: a small two-layer
MLP (no activation, as the method describes) and a learnable scalar gate ``a`` initialised to 0, so
training starts from the plain model. The part branch never sees the background.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from anoaug.masks.foreground import extract_foreground


class BackgroundFusion(nn.Module):
    """``(1 - a) h + a MLP(h_bg)`` with ``a`` a learnable scalar starting at 0."""

    def __init__(self, channels: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = int(hidden or channels)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.Linear(hidden, channels))
        self.gate = nn.Parameter(torch.zeros(1))

    def forward(self, h: torch.Tensor, h_bg: torch.Tensor) -> torch.Tensor:
        """``h_bg`` may have fewer rows than ``h`` (one per sample; ``h`` repeats the samples, e.g. guidance
        copies): the MLP runs once per background row, then repeats."""
        gate = self.gate.to(h.dtype)
        fused = self.mlp(h_bg.to(h.dtype)).to(h.dtype)
        return (1 - gate) * h + gate * fused.repeat(h.shape[0] // fused.shape[0], 1, 1)


def remove_object(image: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """The background of `image`: object pixels (``foreground`` True) set to black."""
    return np.where(foreground[..., None], 0, image).astype(np.uint8)


def object_foreground(image: np.ndarray, kind: str, fn: Any = None) -> np.ndarray:
    """(H, W) bool object region of a normal image: `fn` when given, else anoaug's default foreground."""
    from anoaug.spec import ForegroundSection

    if fn is not None:
        return np.asarray(fn(image), bool)
    return extract_foreground(image, ForegroundSection(), kind)
