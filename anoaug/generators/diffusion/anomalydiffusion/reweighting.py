"""Adaptive attention re-weighting: strengthen the defect tokens' cross-attention where the defect is faint.

AnomalyDiffusion multiplies the cross-attention of its placeholder tokens, inside the (dilated) defect
mask, by a weight map that is large where the image being generated still looks like the normal one.
Two forms are offered (``attention_reweighting``):

- ``paper``: ``w = |m|_1 * softmax over the mask cells of 1 / ||m*y - m*x0_hat||^2``, with x0_hat the
  x0 predicted at the previous step (latent space here: no VAE decode per step), multiplied into the
  attention probabilities of the placeholder columns (rows inside the mask);
- ``code``: latent x_t against the forward-noised normal latent, the mask dilated by a timestep-dependent
  radius (``(t + 100) * 8 // 1000`` cells on a 32-cell latent, scaled to this latent's size),
  ``1 / distance`` divided by its mean over the dilated mask and clamped to ``[1, reweighting_max]``,
  multiplied into the pre-softmax logits of the placeholder columns.

The weights reach the UNet through diffusers' ``cross_attention_kwargs`` (``{"reweight": Reweight}``) and a
processor installed with ``unet.set_attn_processor`` on the cross-attention layers only. The processor
subclasses ``AttnProcessor2_0`` and first computes the library's output; only the conditional items (those with
placeholder columns) get a correction, so every other row is bit-for-bit the default processor's output. No
library offers weighted attention maps, hence the few lines here.

Cost (the re-weighting runs at every step in every re-weighted layer, so it is kept to a few tensor ops):
the rows re-weighted at each UNet level are found once per sampling run (per dilation radius for the code
form), the weight map once per step and level, the text keys / values once per layer and run. ``paper``
multiplies probabilities without renormalising, so its change is the rank-k correction
``out' = out + W_out (sum_j (w - 1) p_j v_j)`` over the k placeholder columns j, added to the library's output
(``W_out``: the output projection without its bias; rows outside the mask get exactly 0), the sum computed by
torch's fused attention kernel with the other columns' values zeroed. ``code`` changes the softmax normaliser
per head, so its rows are recomputed (the rows any conditional item re-weights, in one batched product) and
written back only inside each item's region. Either way one more softmax normaliser over those rows and all
text columns is the floor: the library's kernel exposes neither its probabilities nor its normaliser.
``ReweightingAttnProcessor.rows_recomputed`` is the straightforward per-row computation (the reference the fast
path is tested against; also used with an attention mask).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

MODES = ("off", "paper", "code")
LAYER_GROUPS = {"down": "down_blocks.", "mid": "mid_block.", "up": "up_blocks."}
_EPS = 1e-6


@dataclass
class Reweight:
    """One step's re-weighting inputs for a UNet batch.

    weight: (B, 1, h, w) latent-resolution weight map (1 where nothing changes); region: (B, 1, h, w) in
    {0, 1}, the rows that are re-weighted; columns: (B, L) bool, the placeholder-token columns (all False
    for the unconditional half of classifier-free guidance); mode: ``paper`` or ``code``.
    """

    weight: torch.Tensor
    region: torch.Tensor
    columns: torch.Tensor
    mode: str
    kv_cache: dict[Any, Any] = field(default_factory=dict, repr=False)
    region_key: Any = None  # rows depend only on this (with the level): reused across steps when not None
    static: dict[Any, Any] = field(default_factory=dict, repr=False)  # the sampling run's cache (Reweighter)
    _levels: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False)
    _plans: dict[tuple[int, int], Any] = field(default_factory=dict, repr=False)
    _fast: dict[int, Any] = field(default_factory=dict, repr=False)

    def _size(self, seq_len: int) -> tuple[int, int]:
        """The (h, w) of a UNet level whose attention has `seq_len` query rows."""
        h, w = self.weight.shape[-2:]
        for k in range(8):  # the UNet halves the latent (ceil) at each level
            s = 2**k
            hh, ww = math.ceil(h / s), math.ceil(w / s)
            if hh * ww == seq_len:
                return hh, ww
        raise ValueError(f"attention length {seq_len} is no downsampling of the {h}x{w} latent")

    def _rows(self, seq_len: int) -> torch.Tensor:
        """(B, S) bool: the rows re-weighted at this level (inside the region, items with placeholder columns);
        computed once per run and region when ``region_key`` is set."""
        key = ("rows", seq_len, self.region_key)
        rows = self.static.get(key) if self.region_key is not None else None
        if rows is None:
            region = F.adaptive_max_pool2d(self.region.float(), self._size(seq_len)).flatten(1) > 0
            rows = region & self.columns.any(dim=1, keepdim=True)
            if self.region_key is not None:
                self.static[key] = rows
        return rows

    def items(self) -> tuple[torch.Tensor, slice | torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(items (I,): those with placeholder columns, the same as a slice when contiguous, their placeholder
        column indices (I, P) or None when they hold different numbers of them, their columns (I, 1, 1, L));
        once per run."""
        if "items" not in self.static:
            items = self.columns.any(dim=1).nonzero().squeeze(1)
            where: slice | torch.Tensor = items
            if len(items) and int(items[-1] - items[0]) + 1 == len(items):
                where = slice(int(items[0]), int(items[-1]) + 1)
            cols = self.columns[items]
            counts = cols.sum(dim=1)
            idx = None
            if len(items) and bool((counts == counts[0]).all()):
                idx = cols.nonzero()[:, 1].view(len(items), int(counts[0]))
            self.static["items"] = (items, where, idx, cols[:, None, None, :])
        return self.static["items"]

    def level(self, seq_len: int) -> tuple[slice | torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """At this level, for the items: (the rows any of them re-weights, (R,) index or a slice when all; each
        item's own rows among them (I, 1, R, 1) bool; their weights (I, 1, R, 1), exactly 1 off the own rows);
        the rows once per run and region, the weights once per step; None when no row is re-weighted."""
        if seq_len not in self._fast:
            items = self.items()[0]
            key = ("level", seq_len, self.region_key)
            static = self.static.get(key) if self.region_key is not None else None
            if static is None:
                rows = self._rows(seq_len)[items]  # (I, S)
                static = False
                if len(items) and bool(rows.any()):
                    union = rows.any(dim=0)
                    idx: slice | torch.Tensor = slice(None) if bool(union.all()) else union.nonzero().squeeze(1)
                    static = (idx, rows[:, idx])
                if self.region_key is not None:
                    self.static[key] = static
            out = None
            if static:
                idx, own = static
                weight = F.adaptive_avg_pool2d(self.weight[items].float(), self._size(seq_len)).flatten(1)[:, idx]
                out = (idx, own[:, None, :, None], torch.where(own, weight, 1.0)[:, None, :, None])
            self._fast[seq_len] = out
        return self._fast[seq_len]

    def at(self, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows (B, S) bool, weight (B, S)) for a UNet level whose attention has `seq_len` query rows."""
        if seq_len not in self._levels:
            weight = F.adaptive_avg_pool2d(self.weight.float(), self._size(seq_len)).flatten(1)
            rows = self._rows(seq_len)
            self._levels[seq_len] = (rows, torch.where(rows, weight, torch.ones_like(weight)))
        return self._levels[seq_len]

    def plan(self, seq_len: int, heads: int) -> tuple[torch.Tensor, ...] | None:
        """What a layer re-weights at this level: (items, union rows, each item's own rows among them (I, R),
        the (I*heads, R, L) column factor, the items as a tuple); None when no row is re-weighted."""
        if (seq_len, heads) not in self._plans:
            rows, weight = self.at(seq_len)
            plan = None
            if bool(rows.any()):
                items = rows.any(dim=1).nonzero().squeeze(1)
                idx = rows[items].any(dim=0).nonzero().squeeze(1)
                factor = column_factor(weight[items][:, idx], self.columns[items])
                own = rows[items][:, idx]
                plan = (items, idx, own, factor.repeat_interleave(heads, dim=0), tuple(items.tolist()))
            self._plans[(seq_len, heads)] = plan
        return self._plans[(seq_len, heads)]


def column_factor(rows_weight: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """(B, R, L) multiplier: the row's weight on the placeholder columns, exactly 1 everywhere else."""
    w = rows_weight[:, :, None]
    return torch.where(columns[:, None, :], w, torch.ones_like(w))


def weighted_probs(
    attn: Attention,
    query: torch.Tensor,
    key: torch.Tensor,
    factor: torch.Tensor,
    mode: str,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention probabilities (B*heads, R, L) with `factor` (B*heads, R, L) applied as `mode` says:
    ``paper`` multiplies the probabilities, ``code`` the pre-softmax logits."""
    if mode == "paper":
        return attn.get_attention_scores(query, key, attention_mask) * factor.to(query.dtype)
    q, k = (query.float(), key.float()) if attn.upcast_attention else (query, key)
    logits = torch.bmm(q, k.transpose(-1, -2)) * attn.scale
    if attention_mask is not None:
        logits = logits + attention_mask
    logits = logits.float() if attn.upcast_softmax else logits
    return (logits * factor.to(logits.dtype)).softmax(dim=-1).to(query.dtype)


class ReweightingAttnProcessor(AttnProcessor2_0):
    """``AttnProcessor2_0`` plus re-weighted rows when a ``reweight`` cross-attention kwarg is given."""

    def __call__(  # type: ignore[override]
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        reweight: Reweight | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        out = super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
        plain = (
            reweight is None
            or encoder_hidden_states is None
            or hidden_states.ndim != 3
            or attn.spatial_norm is not None
            or attn.group_norm is not None
            or attn.norm_q is not None
            or attn.norm_k is not None
        )
        if plain:
            return out
        assert reweight is not None
        if attention_mask is None and reweight.items()[2] is not None:  # the usual case (no text attention mask)
            return self.fast(attn, hidden_states, encoder_hidden_states, out, reweight)
        return self.rows_recomputed(attn, hidden_states, encoder_hidden_states, attention_mask, out, reweight)

    @staticmethod
    def fast(
        attn: Attention, hidden_states: torch.Tensor, states: torch.Tensor, out: torch.Tensor, reweight: Reweight
    ) -> torch.Tensor:
        """`out` (the library's output) corrected on the re-weighted rows, batched over the conditional items:
        the paper form as a rank-k correction over the placeholder columns, the code form by recomputing the
        items' rows with scaled logits (see the module doc)."""
        level = reweight.level(hidden_states.shape[1])
        if level is None:
            return out
        idx, rows, row_weight = level  # rows (R,); (I, 1, R, 1) each
        items, at, cols, col_mask = reweight.items()
        assert cols is not None
        if isinstance(at, slice):  # where the re-weighted rows of the items are in the batch
            where: tuple[Any, Any] = (at, idx)
        else:
            where = (items, idx) if isinstance(idx, slice) else (items[:, None], idx[None, :])
        hidden = hidden_states[where]  # (I, R, C): only rows some item re-weights are computed
        b, n, heads = len(items), hidden.shape[1], attn.heads
        # Keys and values of the (fixed) text states are the same at every step: computed once per layer and run.
        key = ("fast", id(attn), states.data_ptr())
        if key not in reweight.kv_cache:
            context = states[at]
            if attn.norm_cross:
                context = attn.norm_encoder_hidden_states(context)
            k, v = attn.to_k(context), attn.to_v(context)
            d = k.shape[-1] // heads
            k = k.view(b, -1, heads, d).transpose(1, 2).contiguous()  # (I, h, L, d)
            v = v.view(b, -1, heads, d).transpose(1, 2).contiguous()
            if reweight.mode == "paper":  # the values of the placeholder columns only (zero elsewhere)
                extra = (v * col_mask.view(b, 1, -1, 1).to(v.dtype)).contiguous()
            else:  # the keys transposed, for the logits
                extra = (k.float() if attn.upcast_attention else k).transpose(-1, -2).contiguous()
            reweight.kv_cache[key] = (k, v, extra)
        k, v, extra = reweight.kv_cache[key]
        q = attn.to_q(hidden).view(b, n, heads, -1).transpose(1, 2)  # (I, h, S, d)
        if reweight.mode == "paper":
            # sum_j p_j v_j over the placeholder columns = attention with the other columns' values zeroed (the
            # library's fused kernel, no explicit probabilities); times (w - 1), exactly 0 outside the rows.
            part = F.scaled_dot_product_attention(q, k, extra, scale=attn.scale)
            delta = (part * (row_weight - 1).to(part.dtype)).transpose(1, 2).reshape(b, n, -1)
            proj = attn.to_out[0]
            if isinstance(proj, torch.nn.Linear):
                corr = F.linear(delta, proj.weight)  # the projection is linear: W (o + delta) + b = out + W delta
            else:  # a wrapped projection (e.g. a LoRA): its bias removed, rows outside kept exactly 0
                corr = torch.where(rows[:, 0], proj(delta) - proj.bias, 0.0)
            if attn.rescale_output_factor != 1.0:
                corr = corr / attn.rescale_output_factor
            out[where] += corr.to(out.dtype)
            return out
        # Logits times w on the placeholder columns, then the softmax: explicit (no kernel takes a logit scale).
        factor = torch.where(col_mask, row_weight, 1.0)  # (I, 1, R, L)
        logits = torch.matmul(q.float() if attn.upcast_attention else q, extra) * attn.scale
        logits = logits.float() if attn.upcast_softmax else logits
        o = torch.matmul((logits * factor.to(logits.dtype)).softmax(dim=-1).to(v.dtype), v)
        sub = attn.to_out[1](attn.to_out[0](o.transpose(1, 2).reshape(b, n, -1)))
        if attn.residual_connection:
            sub = sub + hidden
        sub = sub / attn.rescale_output_factor
        out[where] = torch.where(rows[:, 0], sub.to(out.dtype), out[where])
        return out

    @staticmethod
    def rows_recomputed(
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        out: torch.Tensor,
        reweight: Reweight,
    ) -> torch.Tensor:
        """`out` with the re-weighted rows recomputed one by one from explicit attention probabilities (the
        reference computation; bit-for-bit the library's output on every other row)."""
        plan = reweight.plan(hidden_states.shape[1], attn.heads)
        if plan is None:
            return out
        items, idx, own, factor, items_key = plan
        # Keys and values of the (fixed) text states are the same at every step: computed once per layer and run.
        key = (id(attn), encoder_hidden_states.data_ptr(), items_key)
        if key not in reweight.kv_cache:
            context = encoder_hidden_states[items]
            if attn.norm_cross:
                context = attn.norm_encoder_hidden_states(context)
            reweight.kv_cache[key] = (
                attn.head_to_batch_dim(attn.to_k(context)),
                attn.head_to_batch_dim(attn.to_v(context)),
            )
        k, v = reweight.kv_cache[key]
        at = (items[:, None], idx[None, :])
        hidden = hidden_states[at]
        mask = None
        if attention_mask is not None:
            mask = attn.prepare_attention_mask(attention_mask[items], encoder_hidden_states.shape[1], len(items))
        probs = weighted_probs(attn, attn.head_to_batch_dim(attn.to_q(hidden)), k, factor, reweight.mode, mask)
        sub = attn.to_out[1](attn.to_out[0](attn.batch_to_head_dim(torch.bmm(probs, v))))
        if attn.residual_connection:
            sub = sub + hidden
        sub = sub / attn.rescale_output_factor
        # Write only each item's own re-weighted rows (the union of rows may include others' rows).
        out[at] = torch.where(own[..., None], sub.to(out.dtype), out[at])
        return out


def cross_attention_names(unet: Any, layers: list[str] | tuple[str, ...]) -> list[str]:
    """Processor names of the UNet's cross-attention layers in the chosen groups (down / mid / up)."""
    prefixes = tuple(LAYER_GROUPS[g] for g in layers)
    return [n for n in unet.attn_processors if n.endswith("attn2.processor") and n.startswith(prefixes)]


def install(unet: Any, layers: list[str] | tuple[str, ...]) -> int:
    """Put a `ReweightingAttnProcessor` on the chosen cross-attention layers (the library default elsewhere);
    returns how many."""
    procs = dict(unet.attn_processors)
    names = cross_attention_names(unet, layers)
    for n, proc in procs.items():
        if n in names and not isinstance(proc, ReweightingAttnProcessor):
            procs[n] = ReweightingAttnProcessor()
        elif n not in names and isinstance(proc, ReweightingAttnProcessor):  # a group no longer chosen
            procs[n] = AttnProcessor2_0()
    unet.set_attn_processor(procs)
    return len(names)


@contextlib.contextmanager
def quiet_unused_kwargs() -> Iterator[None]:
    """Self-attention processors ignore the ``reweight`` kwarg; keep diffusers from warning at every call."""
    log = logging.getLogger("diffusers.models.attention_processor")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


# -- weight maps ----------------------------------------------------------------------------------------


def paper_weights(x0_hat: torch.Tensor, known: torch.Tensor, mask: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    """``|m|_1 * softmax_mask(1 / ||x0_hat - y||^2)`` per latent cell inside `mask` (B, 1, h, w), 1 outside."""
    m = mask > 0.5
    d = (x0_hat.float() - known.float()).pow(2).sum(dim=1, keepdim=True)
    logits = (1.0 / (d + _EPS)).masked_fill(~m, float("-inf")).flatten(1)
    area = m.flatten(1).sum(dim=1, keepdim=True).float()
    soft = torch.nan_to_num(logits.softmax(dim=1), nan=0.0)  # a row with an empty mask has no cell to weight
    w = (area * soft).view_as(d)
    w = torch.where(m, w, torch.ones_like(w))
    return 1.0 + strength * (w - 1.0)


def code_radius(t: int, latent_side: int) -> int:
    """Dilation radius in latent cells at timestep `t`: ``(t + 100) * 8 // 1000`` on a 32-cell latent, scaled."""
    return int((int(t) + 100) * 8 // 1000 * latent_side / 32)


def code_weights(
    x_t: torch.Tensor,
    noised_known: torch.Tensor,
    mask: torch.Tensor,
    t: int,
    max_weight: float = 1.5,
    strength: float = 1.0,
    dilated: dict[int, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, dilated mask): ``1 / ||x_t - y_t||`` over the mask dilated by `code_radius`, divided by its mean
    there and clamped to ``[1, max_weight]``; 1 outside the dilated mask. ``dilated`` caches the dilated masks
    per radius (a sampling run visits a few radii only)."""
    r = code_radius(t, min(mask.shape[-2:]))
    region = dilated.get(r) if dilated is not None else None
    if region is None:
        region = F.max_pool2d(mask.float(), 2 * r + 1, stride=1, padding=r) if r > 0 else mask.float()
        if dilated is not None:
            dilated[r] = region
    inside = region > 0.5
    inv = 1.0 / ((x_t.float() - noised_known.float()).pow(2).sum(dim=1, keepdim=True).sqrt() + _EPS)
    mean = (inv * inside).sum(dim=(1, 2, 3), keepdim=True) / inside.sum(dim=(1, 2, 3), keepdim=True).clamp_min(1)
    w = (inv / mean.clamp_min(_EPS)).clamp(1.0, max_weight)
    w = torch.where(inside, 1.0 + strength * (w - 1.0), torch.ones_like(w))
    return w, region


class Reweighter:
    """Per-sampling-run state: builds each step's `Reweight` and remembers x0_hat for the paper form.

    known: (B, C, h, w) clean normal latents; mask: (B, 1, h, w) blend mask; columns: (copies*B, L)
    placeholder columns of the UNet batch (classifier-free guidance stacks `copies` = 2 batches);
    noise: (B, C, h, w) fixed noise of the code form's noised normal (drawn from the requests' seeds).
    """

    def __init__(
        self,
        mode: str,
        known: torch.Tensor,
        mask: torch.Tensor,
        columns: torch.Tensor,
        scheduler: Any,
        noise: torch.Tensor,
        copies: int = 1,
        strength: float = 1.0,
        max_weight: float = 1.5,
    ) -> None:
        if mode not in ("paper", "code"):
            raise ValueError(f"re-weighting mode must be paper or code, got '{mode}'")
        self.mode, self.known, self.mask, self.columns = mode, known, mask, columns
        self.scheduler, self.noise, self.copies = scheduler, noise, copies
        self.strength, self.max_weight = strength, max_weight
        self.alphas = scheduler.alphas_cumprod.to(known.device, torch.float32)
        self.prediction = scheduler.config.prediction_type
        self.x0_hat: torch.Tensor | None = None
        self.kv_cache: dict[Any, Any] = {}  # per layer: keys / values of the states
        self.static: dict[Any, Any] = {}  # rows per level and region, items: the same at every step
        self.dilated: dict[int, torch.Tensor] = {}  # the code form's dilated masks per radius
        self.regions: dict[int, torch.Tensor] = {}  # the same, repeated over the UNet batch

    def _batch(self, weight: torch.Tensor, region: torch.Tensor, region_key: Any) -> Reweight:
        rep = [self.copies, 1, 1, 1]
        if region_key not in self.regions:
            self.regions[region_key] = region.repeat(*rep)
        return Reweight(
            weight.repeat(*rep), self.regions[region_key], self.columns, self.mode, self.kv_cache, region_key,
            self.static,
        )  # fmt: skip

    def inputs(self, x_t: torch.Tensor, t: torch.Tensor) -> Reweight | None:
        """This step's re-weighting (None at the paper form's first step: no x0 prediction yet)."""
        if self.mode == "paper":
            if self.x0_hat is None:
                return None
            return self._batch(paper_weights(self.x0_hat, self.known, self.mask, self.strength), self.mask, -1)
        ti = int(t)
        noised = self.scheduler.add_noise(self.known, self.noise, t.reshape(1).expand(self.known.shape[0]))
        weight, region = code_weights(x_t, noised, self.mask, ti, self.max_weight, self.strength, self.dilated)
        return self._batch(weight, region, code_radius(ti, min(self.mask.shape[-2:])))

    def observe(self, x_t: torch.Tensor, t: torch.Tensor, model_output: torch.Tensor) -> None:
        """Record the x0 this step predicts (used by the paper form at the next step)."""
        if self.mode != "paper":
            return
        a = self.alphas[int(t)]
        if self.prediction == "v_prediction":
            self.x0_hat = a.sqrt() * x_t - (1 - a).sqrt() * model_output
        else:
            self.x0_hat = (x_t - (1 - a).sqrt() * model_output) / a.sqrt()
