"""Spatial embedding: a small CNN turns the defect mask into K extra condition tokens.

Like AnomalyDiffusion's spatial embedding e_s, the tokens tell the UNet's cross-attention where the
defect is; they are appended to the text encoder's output (the UNet accepts any token count). No
library provides this encoder, so it is a few lines of torch here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from anoaug.generators.base import GeneratorError

GRID = 4  # the mask is pooled to GRID x GRID cells before the token projection (keeps "where")


def build_mask_encoder(num_tokens: int, dim: int, width: int = 32) -> Any:
    """A torch module: mask (B, 1, H, W) in [0, 1] -> (B, num_tokens, dim)."""
    import torch
    from torch import nn

    class MaskEncoder(nn.Module):
        """Three stride-2 convs, adaptive pooling to a GRID x GRID map, a linear map to K tokens."""

        def __init__(self) -> None:
            super().__init__()
            self.num_tokens, self.dim, self.width = num_tokens, dim, width
            self.convs = nn.Sequential(
                nn.Conv2d(1, width // 2, 3, stride=2, padding=1),
                nn.SiLU(),
                nn.Conv2d(width // 2, width, 3, stride=2, padding=1),
                nn.SiLU(),
                nn.Conv2d(width, width, 3, stride=2, padding=1),
                nn.SiLU(),
                nn.AdaptiveAvgPool2d(GRID),
            )
            self.proj = nn.Linear(width * GRID * GRID, num_tokens * dim)
            self.norm = nn.LayerNorm(dim)
            nn.init.normal_(self.proj.weight, std=0.02)
            nn.init.zeros_(self.proj.bias)

        def forward(self, mask: torch.Tensor) -> torch.Tensor:
            h = self.convs(mask).flatten(1)
            return self.norm(self.proj(h).view(mask.shape[0], self.num_tokens, self.dim))

    if num_tokens < 1 or dim < 1:
        raise GeneratorError(f"spatial encoder needs num_tokens >= 1 and dim >= 1, got {num_tokens}, {dim}")
    return MaskEncoder()


def append_tokens(text_states: Any, spatial_tokens: Any | None) -> Any:
    """Concatenate (B, L, D) text states with (B, K, D) spatial tokens along the token axis."""
    import torch

    if spatial_tokens is None:
        return text_states
    return torch.cat([text_states, spatial_tokens.to(text_states.dtype)], dim=1)


def save_mask_encoder(encoder: Any, path: Path) -> Path:
    from safetensors.torch import save_file

    sd = {k: v.detach().float().cpu().contiguous() for k, v in encoder.state_dict().items()}
    meta = {
        "format": "anoaug-spatial",
        "num_tokens": str(encoder.num_tokens),
        "dim": str(encoder.dim),
        "width": str(encoder.width),
    }
    save_file(sd, str(path), metadata=meta)
    return path


def load_mask_encoder(path: Path, dim: int) -> Any:
    """Rebuild and load an encoder saved by `save_mask_encoder`; `dim` must match the text encoder."""
    from anoaug.generators.diffusion.sd.artifact import read_weights

    meta, sd = read_weights(path, "anoaug-spatial", "spatial encoder weights", "anoaug spatial-encoder")
    if int(meta["dim"]) != dim:
        raise GeneratorError(
            f"spatial encoder was trained for token dim {meta['dim']}, the text encoder has {dim}", path
        )
    enc = build_mask_encoder(int(meta["num_tokens"]), dim, int(meta["width"]))
    try:
        enc.load_state_dict(sd)
    except RuntimeError as exc:
        raise GeneratorError(f"spatial encoder weights do not fit: {str(exc).splitlines()[0]}", path) from None
    enc.requires_grad_(False)
    return enc.eval()
