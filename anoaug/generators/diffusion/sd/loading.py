"""Load a Stable Diffusion 1.x/2.x base model (diffusers format) with clear errors, and describe its identity.

The model is a local folder or a Hugging Face hub id. Offline (``HF_HUB_OFFLINE=1``), a hub id must
already be in the local cache; otherwise the error names the id and says how to fix it. The identity
manifest (hashes of each component's config and tokenizer files, sampled fingerprints of its weights) is saved
with the learned parts so that they are never applied to a different base model.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anoaug.generators.base import GeneratorError

COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
# Components whose identity must match when learned parts are applied (the scheduler may be swapped).
CHECKED_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".msgpack", ".h5")
_HUB_PATTERNS = [
    "model_index.json",
    *(f"{c}/*.json" for c in COMPONENTS),
    "tokenizer/*.txt",
    "unet/diffusion_pytorch_model.safetensors",  # full-precision safetensors only (no fp16 / .bin / .ckpt)
    "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/model.safetensors",
]


@dataclass
class SDComponents:
    """The parts of a Stable Diffusion model that anoaug uses (the safety checker is not loaded)."""

    unet: Any  # diffusers.UNet2DConditionModel
    vae: Any  # diffusers.AutoencoderKL
    text_encoder: Any  # transformers.CLIPTextModel
    tokenizer: Any  # transformers.CLIPTokenizer
    scheduler_config: dict[str, Any]
    folder: Path
    identity: dict[str, Any] = field(default_factory=dict)

    @property
    def inpainting(self) -> bool:
        """True for an inpainting UNet (latents + mask + masked-image latents as input)."""
        return int(self.unet.config.in_channels) == 2 * int(self.vae.config.latent_channels) + 1

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_scale(self) -> float:
        return float(self.vae.config.scaling_factor)


def place(module: Any, device: Any, dtype: Any) -> Any:
    """Move `module` to `device` and cast it to `dtype` only if needed (diffusers warns on no-op casts)."""
    module.to(device)
    if module.dtype != dtype:
        module.to(dtype=dtype)
    return module


def check_resolution(comps: SDComponents, resolution: int) -> None:
    """GeneratorError unless `resolution` is a multiple of the VAE factor x the UNet's downsampling."""
    multiple = comps.vae_scale_factor * 2 ** (len(comps.unet.config.block_out_channels) - 1)
    if resolution % multiple != 0:
        raise GeneratorError(
            f"resolution {resolution} must be a multiple of {multiple} (VAE factor x UNet downsampling)"
        )


def place_for_inference(comps: SDComponents, device: Any, dtype: Any) -> None:
    """The base model on `device` for sampling: VAE fp32, UNet and text encoder in `dtype`; frozen, eval mode."""
    import torch

    place(comps.vae, device, torch.float32)
    place(comps.unet, device, dtype)
    place(comps.text_encoder, device, dtype)
    for m in (comps.unet, comps.vae, comps.text_encoder):
        m.requires_grad_(False)
        m.eval()


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def resolve_model_folder(model: str | os.PathLike[str]) -> Path:
    """The local folder of `model`: a directory as given, or a hub id's snapshot in the local cache."""
    if not str(model).strip():
        raise GeneratorError("generator param 'model' is empty: set it to a diffusers model folder or hub id")
    path = Path(os.path.expanduser(str(model)))
    if path.is_dir():
        return path.resolve()
    text = str(model)
    if text == "base":  # anoaug.spec.BASE_MODEL; the pipeline swaps it for its pretrain stage's folder
        raise GeneratorError(
            "model 'base' (the base model pretrained on the run's normal images) is resolved by `anoaug run`; "
            "outside a pipeline run, pretrain one with `anoaug pretrain SPEC --out DIR` and pass model=DIR"
        )
    if not _HUB_ID.match(text) or text.startswith((".", "~")):
        raise GeneratorError("Stable Diffusion model folder does not exist", path)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    offline = _offline()
    try:
        return Path(snapshot_download(text, local_files_only=offline, allow_patterns=_HUB_PATTERNS))
    except LocalEntryNotFoundError:
        hint = "offline (HF_HUB_OFFLINE=1) and it" if offline else "it"
        raise GeneratorError(
            f"model '{text}' is not a local folder and {hint} is not in the local Hugging Face cache; "
            f"download it first (`hf download {text}`) or set 'model' to a local diffusers folder"
        ) from None
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise GeneratorError(f"cannot fetch model '{text}' from the Hugging Face hub: {exc}") from None


def _weights_fingerprint(path: Path, chunks: int = 32, chunk: int = 1 << 16) -> str:
    """sha256 of a weight file's size, first and last MiB and `chunks` evenly spaced 64 KiB samples.

    Hashing whole multi-GB checkpoints on every load is slow; sampled bytes still tell apart models with
    identical configs and sizes (SD 1.4 vs 1.5, or fine-tunes), which sizes alone cannot.
    """
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fh:
        if size <= (2 << 20) + chunks * chunk:
            h.update(fh.read())
            return h.hexdigest()[:16]
        offsets = [0] + [int(size * (i + 1) / (chunks + 1)) for i in range(chunks)] + [size - (1 << 20)]
        for off in offsets:
            fh.seek(off)
            h.update(fh.read(1 << 20 if off in (0, size - (1 << 20)) else chunk))
    return h.hexdigest()[:16]


def _component_digest(folder: Path) -> dict[str, Any]:
    """sha256 over the small (config/tokenizer) files of one component, plus fingerprints of its weights."""
    h = hashlib.sha256()
    weights: dict[str, str] = {}
    for p in sorted(q for q in folder.rglob("*") if q.is_file() and not q.name.startswith(".")):
        rel = p.relative_to(folder).as_posix()
        if p.suffix in _WEIGHT_SUFFIXES:
            weights[rel] = _weights_fingerprint(p)
        else:
            h.update(rel.encode() + b"\0" + p.read_bytes())
    return {"config_sha256": h.hexdigest()[:16], "weights": weights}


def model_identity(model: str, folder: Path) -> dict[str, Any]:
    """The identity manifest of a base model: what it was called, where it was, and component digests."""
    ident: dict[str, Any] = {"model": str(model), "folder": str(folder)}
    if folder.parent.name == "snapshots":  # hub cache layout: .../snapshots/<commit>
        ident["revision"] = folder.name
    ident["components"] = {c: _component_digest(folder / c) for c in COMPONENTS if (folder / c).is_dir()}
    return ident


def check_identity(saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Raise if the base model in `current` is not the one the learned parts in `saved` were trained on."""
    diffs = []
    for comp in CHECKED_COMPONENTS:
        a = saved.get("components", {}).get(comp)
        b = current.get("components", {}).get(comp)
        if a != b:
            diffs.append(comp)
    if diffs:
        raise GeneratorError(
            f"base model '{current.get('model')}' differs from the one this artifact was trained on "
            f"('{saved.get('model')}'): {', '.join(diffs)} differ (config or weight fingerprints); "
            "load the artifact with the same base model"
        )


def _load_one(kind: str, folder: Path) -> Any:
    """from_pretrained of one component, turning any library error into a GeneratorError."""
    sub = folder / kind
    if not sub.is_dir():
        raise GeneratorError(f"not a diffusers Stable Diffusion folder: missing '{kind}/'", folder)
    try:
        if kind == "unet":
            from diffusers import UNet2DConditionModel

            return UNet2DConditionModel.from_pretrained(str(sub), local_files_only=True)
        if kind == "vae":
            from diffusers import AutoencoderKL

            return AutoencoderKL.from_pretrained(str(sub), local_files_only=True)
        if kind == "text_encoder":
            from transformers import CLIPTextModel

            return CLIPTextModel.from_pretrained(str(sub), local_files_only=True)
        if kind == "tokenizer":
            from transformers import CLIPTokenizer

            return CLIPTokenizer.from_pretrained(str(sub), local_files_only=True)
        from diffusers import DDPMScheduler

        return dict(DDPMScheduler.load_config(str(sub), local_files_only=True))
    except GeneratorError:
        raise
    except Exception as exc:  # noqa: BLE001  (library errors vary: OSError, ValueError, RuntimeError, ...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GeneratorError(f"cannot load the {kind}: {type(exc).__name__}: {first}", sub) from None


def check_compatible(c: SDComponents) -> None:
    """Raise a clear error if the loaded components cannot work together as Stable Diffusion 1.x/2.x."""
    unet, vae, te = c.unet.config, c.vae.config, c.text_encoder.config
    lat = int(vae.latent_channels)
    problems = []
    if int(unet.in_channels) not in (lat, 2 * lat + 1):
        problems.append(
            f"unet in_channels {unet.in_channels} is neither {lat} (text-to-image) nor {2 * lat + 1}"
            " (inpainting)"
        )
    if int(unet.out_channels) != lat:
        problems.append(f"unet out_channels {unet.out_channels} != vae latent_channels {lat}")
    if int(unet.cross_attention_dim) != int(te.hidden_size):
        problems.append(
            f"unet cross_attention_dim {unet.cross_attention_dim} "
            f"!= text encoder hidden_size {te.hidden_size}"
        )
    if len(c.tokenizer) > int(te.vocab_size):
        problems.append(f"tokenizer has {len(c.tokenizer)} tokens but the text encoder only {te.vocab_size}")
    pred = c.scheduler_config.get("prediction_type", "epsilon")
    if pred not in ("epsilon", "v_prediction"):
        problems.append(f"scheduler prediction_type '{pred}' is not supported (epsilon or v_prediction)")
    if problems:
        raise GeneratorError("incompatible Stable Diffusion components: " + "; ".join(problems), c.folder)


def load_components(model: str | os.PathLike[str], inpainting: bool | str = "auto") -> SDComponents:
    """Load unet / vae / text_encoder / tokenizer / scheduler config from `model` (fp32, on CPU, frozen).

    `inpainting` (a generator's setting): ``auto``, or true / false asserted against the UNet's input channels.
    """
    folder = resolve_model_folder(model)
    parts = {k: _load_one(k, folder) for k in COMPONENTS}
    comps = SDComponents(
        unet=parts["unet"],
        vae=parts["vae"],
        text_encoder=parts["text_encoder"],
        tokenizer=parts["tokenizer"],
        scheduler_config=parts["scheduler"],
        folder=folder,
        identity=model_identity(str(model), folder),
    )
    check_compatible(comps)
    if inpainting != "auto" and bool(inpainting) != comps.inpainting:
        kind = "an inpainting" if comps.inpainting else "a text-to-image"
        raise GeneratorError(
            f"param inpainting={inpainting} but '{model}' has {kind} UNet "
            f"(in_channels={comps.unet.config.in_channels}); use inpainting: auto"
        )
    for m in (comps.unet, comps.vae, comps.text_encoder):
        m.requires_grad_(False)
        m.eval()
    return comps
