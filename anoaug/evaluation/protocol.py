"""The evaluation protocol, built from the split manifest, and the leakage guard.

* Train sets: ``train_normal`` images; an arm adds defect pairs to them: ``real-few`` the
  ``gen_train_defect`` images, a generator arm the synthetic pairs of its shards, ``<gen>+real`` both.
* Evaluation set: ``eval_normal`` + ``eval_defect`` only. Nothing the generator saw is evaluated.
* No checkpoint or threshold is chosen on the evaluation set: schedules are fixed (spec epochs), and
  every reported metric is threshold-free (AUROC, AP, F1-max over all thresholds, AUPRO).

``check_no_leakage`` enforces the split: it raises ``LeakageError`` when an evaluation image appears in
a train set by relative path, by file hash (from the manifest) or by decoded-pixel hash, or when a
synthetic sample's metadata names an evaluation image as its source.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from anoaug.data.io import load_image, load_mask
from anoaug.data.records import CategoryData
from anoaug.data.split import SplitManifest
from anoaug.errors import AnoaugError

NONE_ARM = "none"
REAL_ARM = "real-few"
REAL_SUFFIX = "+real"


class LeakageError(AnoaugError):
    """An evaluation image (or something made from it) is in a training set."""


@dataclass
class Sample:
    """One image with its mask (all False for good images) and provenance."""

    id: str  # relpath for real images, "<arm>:<key>" for synthetic ones
    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) bool
    defect_type: str  # "good" or the defect type
    origin: str  # "real" or "synthetic"
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> int:
        return int(self.defect_type != "good")


@dataclass
class SyntheticPair:
    """A synthetic (image, mask, defect type) pair: the shape every synthetic source yields."""

    image: np.ndarray
    mask: np.ndarray
    defect_type: str
    key: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


SyntheticSource = Path | Iterable[SyntheticPair] | None


@dataclass(frozen=True)
class Arm:
    """One training-set variant."""

    name: str
    use_real: bool  # add the gen_train_defect images
    generator: str | None  # add synthetic pairs of this generator

    @property
    def has_defects(self) -> bool:
        return self.use_real or self.generator is not None


def parse_arm(name: str) -> Arm:
    """'none', 'real-few', '<generator>' or '<generator>+real'."""
    if name == NONE_ARM:
        return Arm(name, False, None)
    if name == REAL_ARM:
        return Arm(name, True, None)
    if name.endswith(REAL_SUFFIX):
        return Arm(name, True, name[: -len(REAL_SUFFIX)])
    if not name or "/" in name:
        raise AnoaugError(f"invalid arm name {name!r}")
    return Arm(name, False, name)


def source_for(arm: Arm, arm_sources: dict[str, Any]) -> Any:
    """The synthetic source of a generator arm (looked up by arm name, then generator name)."""
    if arm.generator is None:
        return None
    for key in (arm.name, arm.generator):
        if arm_sources.get(key) is not None:
            return arm_sources[key]
    raise AnoaugError(f"arm {arm.name!r} needs synthetic samples: give --shards {arm.generator}=DIR")


@dataclass
class Protocol:
    """Which manifest rows train and which evaluate; built only from the manifest's roles."""

    train_normal: list[dict]
    train_defect: list[dict]  # gen_train_defect: only the real-few arms train on them
    eval_rows: list[dict]  # eval_normal + eval_defect

    @classmethod
    def from_split(cls, split: SplitManifest) -> Protocol:
        return cls(
            train_normal=split.rows("train_normal"),
            train_defect=split.rows("gen_train_defect"),
            eval_rows=split.rows(("eval_normal", "eval_defect")),
        )

    def counts(self) -> dict[str, int]:
        return {
            "train_normal": len(self.train_normal),
            "train_defect_real": len(self.train_defect),
            "eval_normal": sum(r["label"] == "good" for r in self.eval_rows),
            "eval_defect": sum(r["label"] != "good" for r in self.eval_rows),
        }


def load_rows(data: CategoryData, rows: list[dict]) -> list[Sample]:
    """Read the images (and masks) of manifest rows at full resolution."""
    out = []
    for r in rows:
        img = load_image(data.path(r["relpath"]))
        rel = r["mask_relpath"]
        mask = load_mask(data.path(rel)) if rel else np.zeros(img.shape[:2], bool)
        meta = {"sha256": r["sha256"]}
        out.append(Sample(r["relpath"], img, mask, r["label"], "real", meta))
    return out


def iter_synthetic(source: Path | Iterable[SyntheticPair]) -> Iterator[SyntheticPair]:
    """Pairs of a synthetic source: a shard directory or any iterable of SyntheticPair/tuples."""
    if isinstance(source, str | Path):
        path = Path(source)
        if not path.is_dir():
            raise AnoaugError("shard directory does not exist", path)
        from anoaug.shards.reader import iter_samples

        for s in iter_samples(path):
            yield SyntheticPair(s.image, s.mask, str(s.meta.get("defect_type", "")), s.key, dict(s.meta))
        return
    for i, item in enumerate(source):
        if isinstance(item, SyntheticPair):
            yield item
        else:
            img, mask, dtype = item[:3]
            yield SyntheticPair(np.asarray(img), np.asarray(mask, bool), str(dtype), f"{i:06d}")


def read_generation_record(source: Any) -> dict[str, Any]:
    """Which generator made a synthetic source: ``generator``, ``variant`` and ``generator_params`` (and
    ``training``, the artifact's planned vs done steps, when the record has it).

    For a shard directory, from its generation record (``run.json`` of ``anoaug generate``; a record
    without ``variant`` is from before variants: null). An in-memory source, or a directory without a
    record, gives ``{}``: the caller falls back to the arm's own generator name.
    """
    if not isinstance(source, str | Path):
        return {}
    from anoaug.shards.format import RUN_FILE

    path = Path(source) / RUN_FILE
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise AnoaugError(f"unreadable generation record: {exc}", path) from None
    if not isinstance(record, dict) or not isinstance(record.get("generator"), str):
        raise AnoaugError("not a generation record (no 'generator')", path)
    params = record.get("generator_params")
    out = {
        "generator": record["generator"],
        "variant": record.get("variant"),
        "generator_params": params if isinstance(params, dict) else {},
    }
    for key in ("training", "base_training"):  # planned vs done steps of a learned generator / its base model
        if isinstance(record.get(key), dict):
            out[key] = record[key]
    return out


def load_synthetic(
    arm: str,
    source: Path | Iterable[SyntheticPair],
    category: str,
    defect_types: list[str],
    max_per_type: int,
) -> list[Sample]:
    """Up to ``max_per_type`` synthetic pairs per known defect type, in source order.

    Samples whose meta names another category are refused (a shard dir mixed up between categories).
    """
    per_type: dict[str, int] = {}
    out: list[Sample] = []
    for p in iter_synthetic(source):
        cat = p.meta.get("category")
        if cat is not None and cat != category:
            raise AnoaugError(f"arm {arm!r}: synthetic sample {p.key!r} is of category {cat!r}, not {category!r}")
        if p.defect_type not in defect_types:
            raise AnoaugError(
                f"arm {arm!r}: synthetic sample {p.key!r} has defect type {p.defect_type!r}; "
                f"the category's types are {defect_types}"
            )
        if per_type.get(p.defect_type, 0) >= max_per_type:
            continue
        if p.image.ndim != 3 or p.image.shape[:2] != p.mask.shape:
            raise AnoaugError(f"arm {arm!r}: synthetic sample {p.key!r} has mismatched image/mask shapes")
        per_type[p.defect_type] = per_type.get(p.defect_type, 0) + 1
        out.append(
            Sample(
                f"{arm}:{p.key}",
                np.ascontiguousarray(p.image, np.uint8),
                p.mask.astype(bool),
                p.defect_type,
                "synthetic",
                dict(p.meta),
            )
        )
    if not out:
        raise AnoaugError(f"arm {arm!r}: the synthetic source holds no samples")
    return out


def pixel_hash(image: np.ndarray) -> str:
    """Hash of decoded pixels (catches an evaluation image re-encoded or renamed)."""
    a = np.ascontiguousarray(image, np.uint8)
    return hashlib.sha256(str(a.shape).encode() + a.tobytes()).hexdigest()


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _strings(v)


def check_no_leakage(eval_set: list[Sample], train_sets: dict[str, list[Sample]]) -> dict[str, int]:
    """Raise LeakageError if any evaluation image is (or is the source of) a training sample.

    Checks, for every train set: relative path, manifest file hash, decoded-pixel hash, and any
    string in a synthetic sample's metadata that equals an evaluation image's relative path or file
    hash (e.g. the source normal or defect a generator drew from). Returns per-arm train-set sizes.
    """
    eval_ids = {s.id for s in eval_set}
    eval_file_hashes = {s.meta["sha256"] for s in eval_set if "sha256" in s.meta}
    eval_pixels = {pixel_hash(s.image): s.id for s in eval_set}
    for arm, train in train_sets.items():
        for s in train:
            hit = None
            if s.id in eval_ids:
                hit = s.id
            elif s.meta.get("sha256") in eval_file_hashes:
                hit = f"{s.id} (same file content)"
            elif (ph := pixel_hash(s.image)) in eval_pixels:
                hit = f"{s.id} (same pixels as {eval_pixels[ph]})"
            else:
                refs = {x for x in _strings(s.meta) if x in eval_ids or x in eval_file_hashes}
                if refs:
                    hit = f"{s.id} (made from evaluation image {sorted(refs)[0]})"
            if hit:
                raise LeakageError(f"arm {arm!r}: evaluation image in the training set: {hit}")
    return {arm: len(train) for arm, train in train_sets.items()}
