"""LoRA on the UNet attention projections (peft), saved and loaded as the adapter weights only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from anoaug.generators.base import GeneratorError

LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
ADAPTER = "anoaug"


def add_lora(unet: Any, rank: int, alpha: float | None = None) -> list[Any]:
    """Inject a LoRA adapter of `rank` into every attention projection of `unet`; return its parameters.

    The adapter starts as the identity (peft initialises B to zero); only its parameters require grad.
    """
    from peft import LoraConfig

    if rank < 1:
        raise GeneratorError(f"lora_rank must be >= 1 to add LoRA, got {rank}")
    config = LoraConfig(
        r=int(rank),
        lora_alpha=float(alpha if alpha is not None else rank),
        init_lora_weights=True,
        target_modules=list(LORA_TARGETS),
    )
    unet.requires_grad_(False)
    unet.add_adapter(config, adapter_name=ADAPTER)
    params = [p for n, p in unet.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    return params


def lora_state_dict(unet: Any) -> dict[str, Any]:
    """The adapter weights only (peft keys, adapter name stripped), as contiguous CPU tensors."""
    from peft import get_peft_model_state_dict

    sd = get_peft_model_state_dict(unet, adapter_name=ADAPTER)
    return {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}


def save_lora(unet: Any, path: Path, rank: int, alpha: float | None = None) -> Path:
    """Write the adapter weights to `path` (safetensors) with rank/alpha in the header metadata."""
    from safetensors.torch import save_file

    meta = {
        "format": "anoaug-lora",
        "rank": str(rank),
        "alpha": str(alpha if alpha is not None else rank),
        "targets": ",".join(LORA_TARGETS),
    }
    save_file(lora_state_dict(unet), str(path), metadata=meta)
    return path


def load_lora(unet: Any, path: Path) -> dict[str, str]:
    """Add an adapter to `unet` and load the weights saved by `save_lora`; return the file's metadata.

    Raises GeneratorError if the file is unreadable or its tensors do not fit this UNet.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
        sd = load_file(str(path))
    except Exception as exc:  # noqa: BLE001  (safetensors raises several kinds)
        raise GeneratorError(f"cannot read LoRA weights: {exc}", path) from None
    if meta.get("format") != "anoaug-lora" or "rank" not in meta:
        raise GeneratorError("not an anoaug LoRA file (missing metadata)", path)
    rank = int(meta["rank"])
    alpha = float(meta.get("alpha", rank))
    add_lora(unet, rank, alpha)
    from peft import set_peft_model_state_dict

    try:
        result = set_peft_model_state_dict(unet, sd, adapter_name=ADAPTER)
    except RuntimeError as exc:  # size mismatch
        first = str(exc).strip().splitlines()
        raise GeneratorError(f"LoRA weights do not fit this UNet: {' '.join(first[:3])}", path) from None
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    missing = [k for k in (getattr(result, "missing_keys", []) or []) if "lora_" in k]
    if unexpected or missing:
        raise GeneratorError(
            f"LoRA weights do not fit this UNet: {len(unexpected)} unexpected keys (e.g. {unexpected[:1]}), "
            f"{len(missing)} missing (e.g. {missing[:1]})",
            path,
        )
    for p in unet.parameters():
        p.requires_grad_(False)
    return meta
