"""Online decoder adaptation: fine-tune a copy of the VAE decoder on the final latent of a sample.

Decoding a blended latent shifts colours and blurs the boundary around the generated region. After
sampling, a copy of the decoder is trained for a few steps (AdamW) so that decoding the final latent z gives

    loss = MSE(D(z) * M, D0(z) * M) + lambda_con * MSE(D(z) * (1 - M), x_normal * (1 - M))

i.e. the generated content (the original decoder D0's output) inside the mask M and the normal image
outside it; the sample is then decoded with the adapted copy. The VAE's own decoder is swapped back in
afterwards (its weights are never changed). ``per_image`` adapts one copy per sample (as AdaBLDM);
``per_batch`` one copy per generation batch, on the batch's summed loss (fewer optimisation runs).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch

from anoaug.generators.diffusion.sd import conditioning as cond

Mode = Literal["off", "per_image", "per_batch"]
MODES: tuple[str, ...] = ("off", "per_image", "per_batch")


@contextmanager
def swapped_decoder(vae: Any, decoder: torch.nn.Module) -> Iterator[None]:
    """Use `decoder` as the VAE's decoder inside the block; the original is put back even on error."""
    original = vae.decoder
    vae.decoder = decoder
    try:
        yield
    finally:
        vae.decoder = original


def _losses(out: torch.Tensor, content: torch.Tensor, known: torch.Tensor, m: torch.Tensor) -> tuple[Any, Any]:
    return ((out - content) * m).pow(2).mean(), ((out - known) * (1 - m)).pow(2).mean()


def adapt_decoder(
    vae: Any,
    latents: torch.Tensor,
    known_pixels: torch.Tensor,
    pixel_mask: torch.Tensor,
    steps: int,
    lr: float = 1e-4,
    lambda_con: float = 100.0,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Fine-tune a copy of ``vae.decoder`` for `latents` (B, C, h, w); return its decoding and loss history.

    ``known_pixels`` (B, 3, H, W) in [-1, 1] is the normal image, ``pixel_mask`` (B, 1, H, W) is 1 where
    content is generated. The history holds the background loss before and after and each step's total.
    """
    z = latents.detach().float()
    known = known_pixels.detach().float()
    m = pixel_mask.detach().float().clamp(0, 1)
    with torch.no_grad():
        content = cond.decode_latents(vae, z).float()
    decoder = copy.deepcopy(vae.decoder).float()
    decoder.requires_grad_(True)
    opt = torch.optim.AdamW(decoder.parameters(), lr=lr)
    history: dict[str, Any] = {"steps": steps, "total": []}
    with swapped_decoder(vae, decoder), torch.enable_grad():
        with torch.no_grad():
            history["background_before"] = float(_losses(content, content, known, m)[1])
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            inner, background = _losses(cond.decode_latents(vae, z).float(), content, known, m)
            loss = inner + lambda_con * background
            loss.backward()
            opt.step()
            history["total"].append(float(loss.detach()))
        with torch.no_grad():
            out = cond.decode_latents(vae, z).float()
            history["background_after"] = float(_losses(out, content, known, m)[1])
    return out, history


def decode_adapted(
    vae: Any,
    latents: torch.Tensor,
    known_pixels: torch.Tensor,
    pixel_mask: torch.Tensor,
    mode: str,
    steps: int,
    lr: float,
    lambda_con: float,
) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Decode `latents` with decoder adaptation `mode`; returns images and one history per item."""
    if mode not in MODES:
        raise ValueError(f"decoder_adaptation must be one of {MODES}, got {mode!r}")
    n = latents.shape[0]
    if mode == "off" or steps <= 0:
        with torch.no_grad():
            return cond.decode_latents(vae, latents.float()).float(), [{"mode": "off"}] * n
    if mode == "per_batch":
        out, hist = adapt_decoder(vae, latents, known_pixels, pixel_mask, steps, lr, lambda_con)
        return out, [{"mode": mode, **hist, "batch": n}] * n
    outs, hists = [], []
    for i in range(n):
        sl = slice(i, i + 1)
        out, hist = adapt_decoder(vae, latents[sl], known_pixels[sl], pixel_mask[sl], steps, lr, lambda_con)
        outs.append(out)
        hists.append({"mode": mode, **hist})
    return torch.cat(outs), hists
