"""LoRA on the UNet attention projections (peft), saved and loaded as the adapter weights only.

One adapter (``ADAPTER``, diffusion-sd, anomalydiffusion) or several named adapters side by side on the same
projections (dualanodiff's branches): a file of several holds each adapter's keys prefixed ``<name>.``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from anoaug.generators.base import GeneratorError
from anoaug.generators.diffusion.sd.artifact import read_weights

LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
ADAPTER = "anoaug"
FORMAT = "anoaug-lora"  # the file's format (metadata)


TEXT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")  # CLIP text encoder attention projections


def add_lora(
    unet: Any,
    rank: int,
    alpha: float | None = None,
    names: Sequence[str] = (ADAPTER,),
    targets: Sequence[str] = LORA_TARGETS,
) -> list[Any]:
    """Inject a LoRA adapter of `rank` per name in `names` into every attention projection (`targets`) of
    `unet` (or of a CLIP text encoder with ``TEXT_LORA_TARGETS``); return their parameters.

    The adapters start as the identity (peft initialises B to zero); only their parameters require grad.
    """
    from peft import LoraConfig

    if rank < 1:
        raise GeneratorError(f"lora_rank must be >= 1 to add LoRA, got {rank}")
    unet.requires_grad_(False)
    for name in names:
        config = LoraConfig(
            r=int(rank),
            lora_alpha=float(alpha if alpha is not None else rank),
            init_lora_weights=True,
            target_modules=list(targets),
        )
        with warnings.catch_warnings():  # peft warns that a second adapter is added: named adapters are the point
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            if targets == TEXT_LORA_TARGETS:  # transformers' own add_adapter wants a newer peft: peft's injector
                from peft import inject_adapter_in_model

                inject_adapter_in_model(config, unet, adapter_name=name)
            else:
                unet.add_adapter(config, adapter_name=name)
    params = [p for n, p in unet.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    return params


def lora_state_dict(unet: Any, names: Sequence[str] | None = None) -> dict[str, Any]:
    """The adapter weights only (peft keys, adapter name stripped), as contiguous CPU tensors: of ``ADAPTER``
    (`names` None), else of each named adapter with its keys prefixed ``<name>.``."""
    from peft import get_peft_model_state_dict

    out = {}
    for name in names or (ADAPTER,):
        prefix = "" if names is None else f"{name}."
        sd = get_peft_model_state_dict(unet, adapter_name=name)
        out.update({f"{prefix}{k}": v.detach().to("cpu").contiguous() for k, v in sd.items()})
    return out


def save_lora(
    unet: Any,
    path: Path,
    rank: int,
    alpha: float | None = None,
    names: Sequence[str] | None = None,
    fmt: str = FORMAT,
) -> Path:
    """Write the adapter weights (`lora_state_dict` of `names`) to `path` (safetensors) with the format
    `fmt` and rank / alpha in the header metadata, plus the targets (one adapter) or the adapter names."""
    from safetensors.torch import save_file

    meta = {"format": fmt, "rank": str(rank), "alpha": str(alpha if alpha is not None else rank)}
    if names is None:
        meta["targets"] = ",".join(LORA_TARGETS)
    else:
        meta["branches"] = ",".join(names)
    save_file(lora_state_dict(unet, names), str(path), metadata=meta)
    return path


def load_lora(unet: Any, path: Path) -> dict[str, str]:
    """Add an adapter to `unet` and load the weights saved by `save_lora`; return the file's metadata.

    Raises GeneratorError if the file is unreadable or its tensors do not fit this UNet.
    """
    meta, sd = read_weights(path, FORMAT, "LoRA weights", "anoaug LoRA", ("rank",))
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
