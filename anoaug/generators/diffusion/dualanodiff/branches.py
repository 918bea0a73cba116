"""Two LoRA branches on one frozen UNet, denoised together in one ``(b f)`` batch.

The whole-image branch (the defective image I) and the part branch (I_a = I x M, the defect alone on black)
are two *named peft adapters* on the same attention projections (``sd.lora.LORA_TARGETS``). Both branches of a
sample sit next to each other in the batch (``(b f)`` layout, f = 2: row 2i is sample i's whole image, row
2i + 1 its part) and share the timestep. peft's LoRA layers accept ``adapter_names`` (one adapter per batch
row, ``"__base__"`` = none) and route each row through its own adapter; `BranchRouter` injects that argument
with forward pre-hooks on every LoRA layer (peft does the same inside its
``PeftModel`` wrapper, which a diffusers UNet does not have). Why peft adapters rather than a processor holding
two LoRA sets: the adapters stay plain peft state (saved and loaded with peft's own state-dict functions), and
the attention processors stay free for the shared attention and background compensation.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anoaug.generators.base import GeneratorError
from anoaug.generators.diffusion.sd.artifact import read_weights
from anoaug.generators.diffusion.sd.lora import TEXT_LORA_TARGETS, add_lora, save_lora

if TYPE_CHECKING:
    import torch

WHOLE = "whole"
PART = "part"
BRANCHES = (WHOLE, PART)
BASE = "__base__"  # peft's name for "no adapter" in a mixed batch
FORMAT = "anoaug-dual-lora"  # the branch file's format (metadata)
TEXT = "text"  # the text encoder's adapter (one, shared by both branches' prompts)
TEXT_FORMAT = "anoaug-dual-text-lora"


def add_branch_adapters(unet: Any, rank: int, alpha: float | None = None) -> list[Any]:
    """Add the two branch adapters (rank `rank`, B initialised to zero by peft); return their parameters."""
    return add_lora(unet, rank, alpha, BRANCHES) if rank >= 1 else []


def has_adapters(unet: Any) -> bool:
    return any("lora_" in n for n, _ in unet.named_parameters())


def row_adapters(groups: int, dual: bool = True) -> list[str]:
    """Adapter name per batch row: ``[whole, part] * groups`` in the ``(b f)`` layout, else the base model."""
    return list(BRANCHES) * groups if dual else [BASE] * groups


class BranchRouter:
    """Persistent forward pre-hooks on every LoRA layer of a UNet that pass ``adapter_names = self.names``.

    The names stay set until changed (not only inside a ``with`` block) so that a forward recomputed during
    backward (gradient checkpointing) routes its rows exactly as the original forward did.
    """

    def __init__(self, unet: Any) -> None:
        from peft.tuners.lora import LoraLayer

        self.names: list[str] | None = None
        self._handles = [
            m.register_forward_pre_hook(self._hook, with_kwargs=True)
            for m in unet.modules()
            if isinstance(m, LoraLayer)
        ]

    def _hook(self, _module: Any, args: Any, kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        if self.names is not None:
            kwargs["adapter_names"] = self.names
        return args, kwargs

    @contextmanager
    def route(self, names: list[str] | None) -> Iterator[None]:
        """Within the block, batch row i goes through adapter ``names[i]``."""
        before, self.names = self.names, names
        try:
            yield
        finally:
            self.names = before

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def interleave(whole: torch.Tensor, part: torch.Tensor) -> torch.Tensor:
    """(B, ...) + (B, ...) -> (2B, ...) in the ``(b f)`` layout (whole, part, whole, part, ...)."""
    import torch

    return torch.stack([whole, part], dim=1).flatten(0, 1)


def split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of `interleave`: the whole-image rows and the part rows."""
    return x[0::2], x[1::2]


def save_branches(unet: Any, path: Path, rank: int, alpha: float | None = None) -> Path:
    """Write both branch adapters to `path` (`sd.lora.save_lora`: keys prefixed ``<branch>.``)."""
    return save_lora(unet, path, rank, alpha, BRANCHES, FORMAT)


def load_branches(unet: Any, path: Path) -> None:
    """Add the two adapters to `unet` and load the weights written by `save_branches`."""
    from peft import set_peft_model_state_dict

    meta, sd = read_weights(path, FORMAT, "the branch LoRA weights", "anoaug dual-branch LoRA", ("rank",))
    add_branch_adapters(unet, int(meta["rank"]), float(meta.get("alpha", meta["rank"])))
    for name in BRANCHES:
        part = {k[len(name) + 1 :]: v for k, v in sd.items() if k.startswith(f"{name}.")}
        try:
            result = set_peft_model_state_dict(unet, part, adapter_name=name)
        except RuntimeError as exc:
            raise GeneratorError(f"branch '{name}' LoRA weights do not fit this UNet: {exc}", path) from None
        unexpected = list(getattr(result, "unexpected_keys", []) or [])
        if unexpected or not part:
            raise GeneratorError(f"branch '{name}' LoRA weights do not fit this UNet ({len(part)} tensors)", path)
    unet.requires_grad_(False)


def add_text_adapter(text_encoder: Any, rank: int, alpha: float | None = None) -> list[Any]:
    """A LoRA of `rank` on the text encoder's attention projections (B zero: the plain encoder at first);
    return its parameters (the only ones of the text encoder that require grad)."""
    return add_lora(text_encoder, rank, alpha, (TEXT,), TEXT_LORA_TARGETS) if rank >= 1 else []


def save_text_adapter(text_encoder: Any, path: Path, rank: int, alpha: float | None = None) -> Path:
    """Write the text encoder's adapter to `path` (`sd.lora.save_lora`, keys prefixed ``text.``)."""
    return save_lora(text_encoder, path, rank, alpha, (TEXT,), TEXT_FORMAT)


def load_text_adapter(text_encoder: Any, path: Path) -> None:
    """Add the text adapter to `text_encoder` and load the weights written by `save_text_adapter`."""
    from peft import set_peft_model_state_dict

    meta, sd = read_weights(path, TEXT_FORMAT, "the text-encoder LoRA weights", "anoaug dual text LoRA", ("rank",))
    add_text_adapter(text_encoder, int(meta["rank"]), float(meta.get("alpha", meta["rank"])))
    own = {k[len(TEXT) + 1 :]: v for k, v in sd.items() if k.startswith(f"{TEXT}.")}
    try:
        result = set_peft_model_state_dict(text_encoder, own, adapter_name=TEXT)
    except RuntimeError as exc:
        raise GeneratorError(f"text-encoder LoRA weights do not fit this text encoder: {exc}", path) from None
    if list(getattr(result, "unexpected_keys", []) or []) or not own:
        raise GeneratorError(f"text-encoder LoRA weights do not fit this text encoder ({len(own)} tensors)", path)
    text_encoder.requires_grad_(False)


def interleave_lists(whole: list[Any], part: list[Any]) -> list[Any]:
    """`interleave` for Python lists (prompts)."""
    return [x for pair in zip(whole, part, strict=True) for x in pair]
