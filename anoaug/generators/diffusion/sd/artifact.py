"""What every SD-family artifact manifest holds: the base model's identity (machine-independent), the
category, and a summary of the training losses; each method adds its learned parts. Also the lineage
every SD-family sample records (`sample_info`), and the one reader of the learned parts' safetensors files
(`read_weights`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anoaug.generators.base import GeneratorError

if TYPE_CHECKING:
    from anoaug.generators.diffusion.crops import Box
    from anoaug.generators.diffusion.sd.loading import SDComponents
    from anoaug.generators.diffusion.sd.settings import SDFamilySettings


def manifest_header(comps: SDComponents, category: str) -> dict[str, Any]:
    """format_version, base_model (identity without the local folder), inpainting and category."""
    return {
        "format_version": 1,
        "base_model": {k: v for k, v in comps.identity.items() if k != "folder"},
        "inpainting": comps.inpainting,
        "category": category,
    }


def loss_record(losses: Sequence[float]) -> dict[str, Any]:
    """steps, first_loss and last_loss of a training run (None when nothing was trained)."""
    return {
        "steps": len(losses),
        "first_loss": round(losses[0], 5) if losses else None,
        "last_loss": round(losses[-1], 5) if losses else None,
    }


def sample_info(
    generator: str, settings: SDFamilySettings, prompt: str, seed: int, box: Box | None, **extra: Any
) -> dict[str, Any]:
    """A sample's lineage: generator, base model, prompt, seed, crop ([y0, x0, side]; None for a whole
    image) and the sampling settings; `extra` adds the method's own entries."""
    return {
        "generator": generator,
        "base_model": settings.model,
        "prompt": prompt,
        "seed": int(seed),
        "crop": None if box is None else [box.y0, box.x0, box.side],
        "scheduler": settings.scheduler,
        "num_inference_steps": settings.num_inference_steps,
        "guidance_scale": settings.guidance_scale,
        **extra,
    }


def read_weights(
    path: Path, fmt: str, what: str, kind: str, keys: Sequence[str] = ()
) -> tuple[dict[str, str], dict[str, Any]]:
    """(metadata, tensors) of a safetensors file of ours: GeneratorError "cannot read <what>" if it is
    unreadable, "not an <kind> file" unless its metadata has format `fmt` and every key in `keys`."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
        tensors = load_file(str(path))
    except Exception as exc:  # noqa: BLE001  (safetensors raises several kinds)
        raise GeneratorError(f"cannot read {what}: {exc}", path) from None
    if meta.get("format") != fmt or any(k not in meta for k in keys):
        raise GeneratorError(f"not an {kind} file (missing metadata)", path)
    return meta, tensors


def open_artifact(
    artifact_dir: Path, manifest: str, generator: str, load: Callable[[], SDComponents]
) -> tuple[dict[str, Any], SDComponents]:
    """The artifact's `manifest` (GeneratorError if it lacks one) and the base model `load` gives, checked
    to be the one the artifact was trained on."""
    from anoaug.generators.diffusion.sd.loading import check_identity

    path = artifact_dir / manifest
    if not path.is_file():
        raise GeneratorError(f"{generator} artifact lacks {manifest}", artifact_dir)
    data = json.loads(path.read_text())
    comps = load()
    check_identity(data["base_model"], comps.identity)
    return data, comps
