"""The generation-quality stage body: one producer's shards + the split manifest -> ``quality.json``.

Crops are the mask's bounding box (padded by ``context``, resized to ``crop_size``) of the generated pairs,
of the held-out real defects (role ``eval_defect``) and of the generator-training defects
(``gen_train_defect``). Fidelity and KID compare generated with held-out real crops: nothing is selected
on these figures (no model, threshold or setting is chosen by them), so using held-out defects is no leakage.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from anoaug.atomic import atomic_write_text
from anoaug.data.io import load_image, load_mask
from anoaug.data.split import SplitManifest
from anoaug.evaluation.quality import networks
from anoaug.evaluation.quality.alignment import changed_inside, mask_alignment
from anoaug.evaluation.quality.crops import crop_stack, native_crops
from anoaug.evaluation.quality.diversity import cluster_diversity, l1_distance
from anoaug.evaluation.quality.features import texture_features
from anoaug.evaluation.quality.fidelity import fidelity_distance
from anoaug.evaluation.quality.memorisation import memorisation, nearest_training
from anoaug.evaluation.quality.settings import QualitySettings

QUALITY_FILE = "quality.json"
FIGURES = ("fidelity_mmd", "diversity", "mask_alignment", "memorisation")
NETWORK_FIGURES = ("kid", "is", "ic_lpips")
LEAKAGE_NOTE = (
    "Fidelity and KID compare generated defect crops with the held-out real defects; nothing (no model, "
    "threshold or setting) is selected on them, so this is no leakage."
)

Pair = tuple[np.ndarray, np.ndarray]


def real_pairs(split: SplitManifest, root: Path, role: str) -> tuple[list[Pair], int]:
    """(image, mask) of the split's ``role`` rows that have a mask, and how many had none."""
    pairs, without = [], 0
    for r in split.rows(role):
        if not r["mask_relpath"]:
            without += 1
            continue
        pairs.append((load_image(root / r["relpath"]), load_mask(root / r["mask_relpath"])))
    return pairs, without


def generated_pairs(
    shard_dir: Path, root: Path, settings: QualitySettings
) -> tuple[list[Pair], list[float | None], dict[str, Any]]:
    """The first ``max_generated`` generated pairs, each one's changed-inside-mask share, and lineage facts."""
    from anoaug.shards.reader import iter_samples

    pairs: list[Pair] = []
    shares: list[float | None] = []
    normals: dict[str, np.ndarray | None] = {}
    facts: dict[str, Any] = {"generator": None, "missing_normals": 0}
    for s in iter_samples(shard_dir):
        if len(pairs) >= settings.max_generated:
            break
        facts["generator"] = facts["generator"] or s.meta.get("generator")
        pairs.append((s.image, s.mask))
        rel = s.meta.get("source_normal")
        if rel not in normals:
            path = root / str(rel) if rel else None
            normals[rel] = load_image(path) if path is not None and path.is_file() else None
        normal = normals[rel]
        if normal is None:
            facts["missing_normals"] += 1
            shares.append(None)
        else:
            shares.append(changed_inside(normal, s.image, s.mask, settings.change_threshold))
    return pairs, shares, facts


def _round(x: float | None) -> float | None:
    return None if x is None else round(float(x), 6)


def compute_quality(
    shard_dir: Path, split: SplitManifest, root: Path, settings: QualitySettings, seed: int
) -> dict[str, Any]:
    """Every quality figure of one producer's shards (see the package docstring); a JSON-able dict."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 17]))
    size, ctx = settings.crop_size, settings.context
    gen, shares, facts = generated_pairs(Path(shard_dir), Path(root), settings)
    real, real_unmasked = real_pairs(split, Path(root), "eval_defect")
    train, train_unmasked = real_pairs(split, Path(root), "gen_train_defect")
    gen_crops, _ = crop_stack(gen, size, ctx)
    real_crops, _ = crop_stack(real, size, ctx)
    train_crops, _ = crop_stack(train, size, ctx)

    def feats(pairs: list[Pair]) -> np.ndarray:
        native = native_crops(pairs, ctx)
        return texture_features([c for c, _ in native], [m for _, m in native])

    real_f = feats(real)
    reference = np.concatenate([real_f, feats(train)])  # every real defect sets the scale
    fidelity = fidelity_distance(real_f, feats(gen), rng, settings.subsets, reference)
    nearest, assignment = nearest_training(gen, train)
    diversity, clusters = (None, {})
    if len(train):
        diversity, clusters = cluster_diversity(gen_crops, assignment, l1_distance, rng, settings.cluster_cap)
    out: dict[str, Any] = {
        "fidelity_mmd": _round(fidelity),
        "diversity": _round(diversity),
        "mask_alignment": _round(mask_alignment(shares)),
        "memorisation": _round(memorisation(nearest)),
        "kid": None,
        "is": None,
        "ic_lpips": None,
    }
    finite = nearest[np.isfinite(nearest)]
    real_nearest, _ = nearest_training(real, train)  # the scale: how far new real defects are from training
    out["detail"] = {
        "memorisation_real_reference": _round(memorisation(real_nearest)),
        "memorisation_median": _round(float(np.median(finite))) if len(finite) else None,
        "memorisation_min": _round(float(finite.min())) if len(finite) else None,
        "clusters": clusters,
        "aligned_samples": sum(s is not None for s in shares),
    }
    out["counts"] = {
        "generated": len(gen),
        "real_heldout": len(real),
        "gen_train": len(train),
        "real_without_mask": real_unmasked + train_unmasked,
        "missing_normals": facts["missing_normals"],
    }
    out["generator"] = facts["generator"]
    out["networks"] = network_figures(out, gen_crops, real_crops, train_crops, settings, seed, rng)
    out["settings"] = settings.model_dump(mode="json")
    out["note"] = LEAKAGE_NOTE
    return out


def network_figures(
    out: dict[str, Any],
    gen: np.ndarray,
    real: np.ndarray,
    train: np.ndarray,
    settings: QualitySettings,
    seed: int,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """Fill ``out``'s kid / is / ic_lpips where the weights folder has the networks; the networks record."""
    nets = networks.load_networks(networks.weights_dir_for(settings.weights_dir))
    computed: list[str] = []
    reasons = [nets.reason] if nets.reason else []
    b = settings.network_batch
    if nets.inception is not None:
        k = networks.kid(nets.inception, real, gen, settings.subsets, b, seed)
        if k is not None:
            out["kid"], out["kid_std"] = _round(k[0]), _round(k[1])
            computed.append("kid")
        else:
            reasons.append("KID needs at least two generated and two held-out real crops")
        s = networks.inception_score(nets.inception, gen, b, seed)
        if s is not None:
            out["is"], out["is_std"] = _round(s[0]), _round(s[1])
            computed.append("is")
    if nets.lpips is not None:
        v = networks.ic_lpips(nets.lpips, gen, train, settings.cluster_cap, b, rng)
        if v is not None:
            out["ic_lpips"] = _round(v)
            computed.append("ic_lpips")
    if nets.meaningless and computed:
        reasons.append("stand-in weights (stand_in.json): these figures are meaningless")
    return {
        "weights_dir": str(nets.weights_dir) if nets.weights_dir is not None else None,
        "files": nets.files,
        "computed": computed,
        "meaningless": nets.meaningless,
        "reason": "; ".join(reasons) or None,
    }


def run_quality(
    shard_dir: Path,
    split: SplitManifest,
    root: Path,
    out_dir: Path,
    settings: QualitySettings,
    seed: int,
    producer: str | None = None,
) -> Path:
    """`compute_quality` and write ``<out_dir>/quality.json`` atomically; returns its path."""
    result = {"producer": producer, **compute_quality(shard_dir, split, root, settings, seed)}
    path = Path(out_dir) / QUALITY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(result, indent=2, sort_keys=False))
    return path


def read_quality(path: Path) -> dict[str, Any] | None:
    """A ``quality.json``, or None if absent or unreadable."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
