"""``LearnedMaskSource``: learned masks of each defect type as a mask source for ``MaskSynthesizer``.

``learned_source`` reads the type's real generator-training masks (never an evaluation mask), learns or
reuses the cached mask embeddings (``artifact``), samples or reuses a pool of accepted masks per type and
returns them as ``BankMask`` candidates. ``MaskSynthesizer`` then places a candidate exactly as it places a
real bank mask: the bank's random rotation and scale, then a position drawn among those where every defect
pixel lies inside the (eroded) foreground, so a learned mask never lands on the background. The pool is a
pure function of the seed and the settings; placements come from each sample's own rng.
"""

from __future__ import annotations

import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from anoaug.data.io import load_mask
from anoaug.data.records import CategoryData
from anoaug.data.split import SplitManifest
from anoaug.errors import AnoaugError, DatasetError
from anoaug.hashing import sha256_file
from anoaug.masks import MaskError
from anoaug.masks.learned import artifact as art
from anoaug.masks.learned.settings import BASE_MODEL, LearnedMasksSettings
from anoaug.masks.synthesis import BankMask, MaskBank
from anoaug.png import decode_mask, write_png
from anoaug.spec import MasksSection


@dataclass
class RealMasks:
    """The real generator-training masks of a category: full frames per type, their hashes, and the bank."""

    masks: dict[str, list[np.ndarray]] = field(default_factory=dict)
    digests: list[tuple[str, str]] = field(default_factory=list)  # (type, sha256 of the mask file)
    bank: MaskBank = field(default_factory=MaskBank)

    def frame(self, defect_type: str) -> tuple[int, int]:
        """The (H, W) frame learned masks of a type are drawn in: the median of its real masks' sizes."""
        shapes = np.array([m.shape[:2] for m in self.masks[defect_type]])
        return int(np.median(shapes[:, 0])), int(np.median(shapes[:, 1]))


def real_masks(data: CategoryData, split: SplitManifest, spec: MasksSection) -> RealMasks:
    """The ``gen_train_defect`` masks of ``split`` (an evaluation mask is an error, as for the bank)."""
    if split.table.num_rows and split.category != data.category:
        raise MaskError(f"split manifest is for category {split.category!r}, not {data.category!r}")
    evals = {r.mask_relpath for r in split.records("eval_defect") if r.mask_relpath}
    out = RealMasks()
    for rec in sorted(split.records("gen_train_defect"), key=lambda r: r.relpath):
        if not rec.mask_relpath:
            out.bank.skipped.append(f"{rec.relpath}: no mask")
            continue
        if rec.mask_relpath in evals:
            raise MaskError(f"mask {rec.mask_relpath} is both generator-training and evaluation")
        path = data.path(rec.mask_relpath)
        try:
            mask = load_mask(path)
        except DatasetError as exc:
            raise MaskError(f"cannot read a training mask: {exc.message}", exc.path) from None
        out.bank.add(rec.label, mask, rec.mask_relpath, rec.relpath, spec)
        if mask.any():
            out.masks.setdefault(rec.label, []).append(mask)
            out.digests.append((rec.label, sha256_file(path)))
    if not out.masks:
        raise MaskError(f"no generator-training defect of {data.category!r} has a usable mask to learn from")
    return out


def sample_seed(seed: int, defect_type: str, index: int) -> int:
    """The seed of learned mask ``index`` of a type (crc32: stable across processes)."""
    ss = np.random.SeedSequence([int(seed), zlib.crc32(defect_type.encode()), int(index)])
    return int(ss.generate_state(1)[0])


@dataclass
class LearnedMaskSource:
    """Accepted learned masks per type (``MaskSource``), with the real bank and the sampling record."""

    entries: dict[str, list[BankMask]]
    real: MaskBank
    sampling: dict[str, dict[str, Any]]  # per type: drawn, accepted, acceptance_rate, rejections
    artifact_dir: Path
    manifest: dict[str, Any]
    skipped: list[str] = field(default_factory=list)

    @property
    def defect_types(self) -> list[str]:
        return sorted(t for t, e in self.entries.items() if e)

    def candidates(self, defect_type: str) -> list[BankMask]:
        return self.entries.get(defect_type, [])

    @property
    def real_areas(self) -> dict[str, list[int]]:
        return self.real.real_areas

    def report(self) -> dict[str, Any]:
        """What the masks stage records: the artifact, the base model, training and sampling statistics."""
        drawn = sum(s["drawn"] for s in self.sampling.values())
        accepted = sum(s["accepted"] for s in self.sampling.values())
        return {
            "artifact": str(self.artifact_dir),
            "base_model": self.manifest.get("base_model", {}).get("model"),
            "train": self.manifest.get("train", {}),
            "resolution": self.manifest.get("resolution"),
            "sampled": drawn,
            "accepted": accepted,
            "acceptance_rate": accepted / drawn if drawn else 0.0,
            "per_type": self.sampling,
        }


def _model_folder(model: str) -> Path:
    from anoaug.generators.diffusion.sd.loading import resolve_model_folder

    if model == BASE_MODEL:
        raise MaskError(
            "masks.learned.model 'base' (the base model pretrained on the run's normal images) is resolved by "
            "`anoaug run`; elsewhere pretrain one with `anoaug pretrain SPEC --out DIR` and set "
            "masks.learned.model=DIR (or a diffusers Stable Diffusion folder)"
        )
    try:
        return resolve_model_folder(model)
    except AnoaugError as exc:
        raise MaskError(f"masks.learned.model: {exc.message}", exc.path) from None


def _ready(comps: Any, device: Any) -> None:
    """Inference placement: VAE fp32, UNet and text encoder in the device's compute dtype, all frozen."""
    from anoaug.generators.diffusion.sd.loading import place_for_inference
    from anoaug.generators.diffusion.sd.training import resolve_dtype

    place_for_inference(comps, device, resolve_dtype("auto", device))


def train_artifact(
    model: str, real: RealMasks, settings: LearnedMasksSettings, seed: int, target: Path
) -> tuple[Any, dict[str, Any]]:
    """Learn the mask tokens and write ``target`` (embeddings + manifest); returns (components, manifest)."""
    from anoaug.device import resolve_device
    from anoaug.generators.diffusion.sd import textual_inversion as ti
    from anoaug.generators.diffusion.sd.loading import load_components
    from anoaug.masks.learned.training import MaskTrainer

    comps = load_components(model)
    device = resolve_device(settings.device)
    t0 = time.perf_counter()
    trainer = MaskTrainer(comps, real.masks, settings, device, seed)
    losses = trainer.train()
    trainer.finish()
    k = max(1, len(losses) // 10)
    manifest = {
        "format_version": art.FORMAT_VERSION,
        "base_model": {key: v for key, v in comps.identity.items() if key != "folder"},
        "inpainting": comps.inpainting,
        "resolution": trainer.resolution,
        "tokens": trainer.learned.tokens,
        "prompts": trainer.learned.prompts,
        "frames": {t: list(real.frame(t)) for t in trainer.types},
        "training_masks": {t: len(real.masks[t]) for t in trainer.types},
        "settings": settings.training_key(),
        "seed": int(seed),
        "train": {
            "steps": len(losses),
            "loss_first": round(float(np.mean(losses[:k])), 5) if losses else None,
            "loss_last": round(float(np.mean(losses[-k:])), 5) if losses else None,
            "seconds": round(time.perf_counter() - t0, 1),
            "device": str(device),
        },
    }

    def fill(tmp: Path) -> None:
        ti.save_embeddings(comps.text_encoder, trainer.learned.bank, tmp / art.EMBEDDINGS)
        art.write_json(tmp / art.MANIFEST, manifest)

    art.write_dir(target, fill)
    return comps, manifest


def load_artifact(model: str, artifact_dir: Path, manifest: dict[str, Any]) -> Any:
    """The base model with the cached mask tokens added (its identity checked against the manifest)."""
    from anoaug.generators.diffusion.sd import textual_inversion as ti
    from anoaug.generators.diffusion.sd.loading import check_identity, load_components

    comps = load_components(model)
    try:
        check_identity(manifest["base_model"], comps.identity)
    except AnoaugError as exc:
        raise MaskError(exc.message, artifact_dir) from None
    ti.load_embeddings(comps.tokenizer, comps.text_encoder, artifact_dir / art.EMBEDDINGS)
    return comps


def sample_pool(
    comps: Any, manifest: dict[str, Any], settings: LearnedMasksSettings, seed: int, target: Path
) -> dict[str, Any]:
    """Sample each type's masks until ``pool_per_type`` are accepted or ``max_samples_per_type`` are drawn;
    write the accepted ones and the counts into ``target``; returns the pool record."""
    from anoaug.device import resolve_device
    from anoaug.generators.diffusion.sd.textual_inversion import type_slug
    from anoaug.masks.learned.sampling import sample_maps, to_mask

    device = resolve_device(settings.device)
    _ready(comps, device)
    res = int(manifest["resolution"])
    types: dict[str, Any] = {}
    files: dict[str, list[tuple[str, np.ndarray]]] = {}
    t0 = time.perf_counter()
    for t in sorted(manifest["prompts"]):
        frame = tuple(manifest["frames"][t])
        rej: Counter[str] = Counter()
        kept: list[tuple[str, np.ndarray]] = []
        drawn = 0
        while len(kept) < settings.pool_per_type and drawn < settings.max_samples_per_type:
            n = min(settings.sample_batch_size, settings.max_samples_per_type - drawn)
            seeds = [sample_seed(seed, t, drawn + i) for i in range(n)]
            for prob in sample_maps(comps, manifest["prompts"][t], seeds, res, settings, device):
                if len(kept) >= settings.pool_per_type:
                    break  # samples past a full pool are not counted: the pool does not depend on the batch
                mask, verdict = to_mask(prob, frame, settings)  # type: ignore[arg-type]
                if mask is None:
                    rej[verdict] += 1
                else:
                    kept.append((f"{type_slug(t)}/{drawn:04d}.png", mask))
                drawn += 1
        files[t] = kept
        types[t] = {
            "drawn": drawn,
            "accepted": len(kept),
            "acceptance_rate": len(kept) / drawn if drawn else 0.0,
            "rejections": dict(sorted(rej.items())),
            "masks": [name for name, _ in kept],
            "areas": [int(m.sum()) for _, m in kept],
        }
    record = {"types": types, "settings": settings.sampling_key(), "seed": int(seed),
              "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip

    def fill(tmp: Path) -> None:
        for kept in files.values():
            for name, mask in kept:
                write_png(tmp / name, mask)
        art.write_json(tmp / art.POOL, record)

    art.write_dir(target, fill)
    return {"format": art.FORMAT, **record}


def learned_source(data: CategoryData, split: SplitManifest, spec: MasksSection, seed: int) -> LearnedMaskSource:
    """The learned masks of ``data``'s defect types (learned and sampled now, or read from the cache)."""
    settings = spec.learned
    folder = _model_folder(settings.model)
    from anoaug.generators.diffusion.sd.loading import model_identity

    real = real_masks(data, split, spec)
    identity = model_identity(settings.model, folder)
    artifact_dir = art.cache_root(settings) / art.training_key(identity, real.digests, settings, seed)
    pool_dir = artifact_dir / f"pool-{art.sampling_key(settings, seed)}"
    comps = None
    manifest = art.read_json(artifact_dir / art.MANIFEST, "manifest")
    if manifest is None or not (artifact_dir / art.EMBEDDINGS).is_file():
        comps, manifest = train_artifact(str(folder), real, settings, seed, artifact_dir)
        manifest = {"format": art.FORMAT, **manifest}
    pool = art.read_json(pool_dir / art.POOL, "pool")
    if pool is None:
        if comps is None:
            comps = load_artifact(str(folder), artifact_dir, manifest)
        pool = sample_pool(comps, manifest, settings, seed, pool_dir)
    entries: dict[str, list[BankMask]] = {}
    sampling: dict[str, dict[str, Any]] = {}
    for t, rec in sorted(pool["types"].items()):
        lst = entries.setdefault(t, [])
        for name in rec["masks"]:
            path = pool_dir / name
            try:
                mask = decode_mask(path.read_bytes(), str(path))
            except (OSError, AnoaugError) as exc:
                why = f"cannot read a cached learned mask ({exc}); delete {pool_dir} to resample"
                raise MaskError(why, path) from None
            ys, xs = np.nonzero(mask)
            crop = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].copy()
            lst.append(BankMask(t, f"learned:{name}", "", -1, crop, (int(mask.shape[0]), int(mask.shape[1]))))
        sampling[t] = {k: v for k, v in rec.items() if k != "masks"}
    empty = [t for t in real.masks if not entries.get(t)]
    if empty:
        t = empty[0]
        raise MaskError(
            f"learned masks: none of the {sampling.get(t, {}).get('drawn', 0)} masks sampled for {t!r} was "
            f"accepted ({sampling.get(t, {}).get('rejections', {})}); raise masks.learned.train_steps, lower "
            "masks.learned.threshold, or use masks.source: bank",
            pool_dir,
        )
    return LearnedMaskSource(entries, real.bank, sampling, artifact_dir, manifest, list(real.bank.skipped))
