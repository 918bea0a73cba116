"""Shared attention between the branches (SAIM) and the background hook, as one diffusers attention processor.

`DualAttnProcessor` wraps diffusers' stock ``AttnProcessor2_0`` on every attention layer of the UNet:

* background compensation (self-attention layers only): in a ``write`` pass it stores the layer's input; in a
  ``read`` pass the whole-image rows take their key/value source from `BackgroundFusion`;
* after the attention, ``shared_attention`` mixes the two branches of each sample (``(b f)`` layout, f = 2):

  - ``position``: at each spatial position, attention over the 2-element branch axis (the method's code);
  - ``joint``: both branches' tokens concatenated, one attention over the 2N tokens (the paper's text);
  - ``off``: nothing.

  LayerNorm, new q/k/v/out projections (full rank), residual add. The output projection starts at zero,
  so a fresh model computes exactly what the plain UNet computes; training moves it.

The per-call state (how many branches, background write/read) comes in through the UNet's
``cross_attention_kwargs={"dual": DualContext(...)}``; without it the processor is the stock one.
Processors are ``nn.Module`` s, so their parameters are UNet submodules (trained with the adapters).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from anoaug.generators.diffusion.dualanodiff.background import BackgroundFusion

SharedMode = Literal["off", "position", "joint"]
SHARED_MODES: tuple[str, ...] = ("off", "position", "joint")


@dataclass
class DualContext:
    """What one UNet call is: ``branches`` (2 = a ``(b f)`` dual batch) and the background pass.

    ``background``: ``write`` (a background-only pass storing each self-attention input in ``store``; it ends
    with `BackgroundStored` once every fusion layer has stored, the rest of the UNet is not needed), ``read``
    (the dual batch fusing what was stored), ``batched`` (one call: the first ``rows`` rows are the dual batch,
    the rows after them the backgrounds, each fusion layer reads them in place), ``off``."""

    branches: int = 2
    background: Literal["off", "write", "read", "batched"] = "off"
    store: dict[str, torch.Tensor] = field(default_factory=dict)
    rows: int = 0  # batched: the number of dual rows before the background rows
    stop_after: int = 0  # write: raise `BackgroundStored` once this many layers have stored (0 = never)
    # Cross-attention capture: per batch row the prompt token whose attention map is collected (None = off);
    # every cross-attention layer appends its head-averaged map (rows, N) to `maps`.
    token: torch.Tensor | None = None
    maps: list[torch.Tensor] = field(default_factory=list)


class BackgroundStored(Exception):
    """Raised by the last fusion layer of a ``write`` pass: what follows in the UNet is not needed."""


class SharedAttention(nn.Module):
    """Attention across the two branches of each sample, residual, zero-initialised output."""

    def __init__(self, channels: int, heads: int, mode: SharedMode) -> None:
        super().__init__()
        if mode not in ("position", "joint"):
            raise ValueError(f"shared attention mode must be position or joint, got {mode!r}")
        self.mode, self.heads = mode, max(1, int(heads))
        if channels % self.heads:
            self.heads = 1
        self.norm = nn.LayerNorm(channels)
        self.q = nn.Linear(channels, channels, bias=False)
        self.k = nn.Linear(channels, channels, bias=False)
        self.v = nn.Linear(channels, channels, bias=False)
        self.out = nn.Linear(channels, channels)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, h: torch.Tensor, branches: int = 2) -> torch.Tensor:
        rows, n, c = h.shape
        b = rows // branches
        x = h.reshape(b, branches, n, c)
        # position: (b n) f c, attention over the branch axis; joint: b (f n) c, attention over all tokens
        x = x.permute(0, 2, 1, 3).reshape(b * n, branches, c) if self.mode == "position" else x.reshape(b, -1, c)
        y = self.norm(x)
        d = c // self.heads

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(t.shape[0], t.shape[1], self.heads, d).transpose(1, 2)

        att = F.scaled_dot_product_attention(heads(self.q(y)), heads(self.k(y)), heads(self.v(y)))
        att = self.out(att.transpose(1, 2).reshape(x.shape))
        if self.mode == "position":
            att = att.reshape(b, n, branches, c).permute(0, 2, 1, 3)
        return h + att.reshape(rows, n, c).to(h.dtype)


class DualAttnProcessor(nn.Module):
    """Stock scaled-dot-product attention plus background fusion (self-attention) and shared attention."""

    def __init__(self, name: str, attn: Any, shared: SharedMode, background: bool) -> None:
        from diffusers.models.attention_processor import AttnProcessor2_0

        super().__init__()
        self.name = name
        self.base = AttnProcessor2_0()
        self.shared = SharedAttention(attn.out_dim, attn.heads, shared) if shared != "off" else None
        self.fusion = BackgroundFusion(attn.query_dim) if background and not attn.is_cross_attention else None

    def __call__(  # an explicit signature: diffusers passes only the cross_attention_kwargs it names
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        dual: DualContext | None = None,
    ) -> torch.Tensor:
        source = encoder_hidden_states
        rows = dual.rows if dual is not None and dual.background == "batched" else hidden_states.shape[0]
        if dual is not None and self.fusion is not None and encoder_hidden_states is None:
            if dual.background == "write":
                dual.store[self.name] = hidden_states.detach()
                if dual.stop_after and len(dual.store) >= dual.stop_after:
                    raise BackgroundStored
            elif dual.background == "read":
                source = self._fused(hidden_states, dual.store[self.name])
            elif dual.background == "batched":  # background rows attend to themselves (source = their input)
                bg = hidden_states[rows:]
                source = torch.cat([self._fused(hidden_states[:rows], bg.detach()), bg])
        if dual is not None and dual.token is not None and attn.is_cross_attention and source is not None:
            # all rows (the LoRA layers route every row of the call), the background rows' maps dropped
            token = F.pad(dual.token, (0, hidden_states.shape[0] - rows))
            dual.maps.append(token_attention(attn, hidden_states, source, token)[:rows])
        out = self.base(attn, hidden_states, source, attention_mask, temb)
        if dual is not None and dual.branches > 1 and self.shared is not None:
            mixed = self.shared(out[:rows], dual.branches)
            out = mixed if rows == out.shape[0] else torch.cat([mixed, out[rows:]])
        return out

    def _fused(self, dual_rows: torch.Tensor, bg: torch.Tensor) -> torch.Tensor:
        """Key/value source of a ``(b f)`` batch: the whole rows fused with their background (the backgrounds
        repeat over the guidance copies), the part rows unchanged."""
        assert self.fusion is not None
        whole, part = dual_rows[0::2], dual_rows[1::2]
        return torch.stack([self.fusion(whole, bg), part], dim=1).flatten(0, 1)


def token_attention(attn: Any, hidden_states: torch.Tensor, context: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
    """(rows, N) attention of every image token to prompt token ``token[row]``, averaged over heads.

    Recomputes the layer's attention probabilities with diffusers' own helpers (the fused SDPA kernel does
    not return them); only runs when a map is asked for."""
    rows, n, _ = hidden_states.shape
    query = attn.head_to_batch_dim(attn.to_q(hidden_states))
    key = attn.head_to_batch_dim(attn.to_k(context))
    probs = attn.get_attention_scores(query, key, None)  # (rows * heads, N, L)
    probs = probs.reshape(rows, -1, n, probs.shape[-1]).mean(1)
    index = token.to(probs.device).long().clamp(0, probs.shape[-1] - 1)
    return probs[torch.arange(rows, device=probs.device), :, index].float()


def average_map(maps: list[torch.Tensor], size: int) -> torch.Tensor:
    """Average of captured (rows, N) maps of square layers, each resized to ``size`` x ``size``: (rows, size, size)."""
    total = None
    for m in maps:
        side = int(round(m.shape[1] ** 0.5))
        grid = F.interpolate(m.reshape(m.shape[0], 1, side, side), size=(size, size), mode="bilinear")
        total = grid if total is None else total + grid
    if total is None:
        raise ValueError("no cross-attention map was captured")
    return (total / len(maps))[:, 0]


def install(unet: Any, shared: SharedMode, background: bool) -> dict[str, DualAttnProcessor]:
    """Put a `DualAttnProcessor` on every attention layer of `unet`; return them by processor name."""
    from diffusers.models.attention_processor import Attention

    if shared not in SHARED_MODES:
        raise ValueError(f"shared_attention must be one of {SHARED_MODES}, got {shared!r}")
    procs: dict[str, DualAttnProcessor] = {}
    for name, module in unet.named_modules():
        if isinstance(module, Attention):
            key = f"{name}.processor"
            procs[key] = DualAttnProcessor(key, module, shared, background)
    unet.set_attn_processor(dict(procs))
    return procs


def processors(unet: Any) -> dict[str, DualAttnProcessor]:
    return {k: p for k, p in unet.attn_processors.items() if isinstance(p, DualAttnProcessor)}


def processor_state_dict(unet: Any) -> dict[str, torch.Tensor]:
    """The new layers' weights (shared attention, background fusion), keyed by processor name."""
    out = {}
    for key, proc in processors(unet).items():
        for k, v in proc.state_dict().items():
            out[f"{key}.{k}"] = v.detach().to("cpu").contiguous()
    return out


def load_processor_state_dict(unet: Any, state: dict[str, torch.Tensor]) -> list[str]:
    """Load `processor_state_dict` output into the installed processors; returns the missing keys."""
    missing = []
    for key, proc in processors(unet).items():
        own = {k[len(key) + 1 :]: v for k, v in state.items() if k.startswith(f"{key}.")}
        expected = set(proc.state_dict())
        missing += [f"{key}.{k}" for k in expected - set(own)]
        if own:
            proc.load_state_dict(own, strict=False)
    return missing


def trainable_parameters(unet: Any) -> list[nn.Parameter]:
    params = [p for proc in processors(unet).values() for p in proc.parameters()]
    for p in params:
        p.requires_grad_(True)
    return params
