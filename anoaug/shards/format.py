"""The shard format: names, sample keys, per-sample seeds and the lineage record.

A generation directory holds::

    <out>/<category>-<generator>-000000.tar   WebDataset shards; sample files <key>.png, <key>.mask.png, <key>.json
    <out>/samples.parquet                     one row per sample (shard, key, sha256 of image and mask, lineage)
    <out>/shards.parquet                      one row per complete shard (count, sha256, bytes)
    <out>/manifest-parts/<shard>.parquet      the sample rows of each complete shard (samples.parquet's source)
    <out>/run.json                            the run's configuration (what a resume must match)
    <out>/artifact/                           the fitted generator (unless an artifact dir was given)
    <out>/.lock                               held (flock) while a run writes

Samples are ordered by a global index ``g``: defect type ``types[g % T]``, per-type index ``g // T``
(types interleaved, so every shard mixes them). Shard ``j`` holds ``g`` in ``[j * S, (j + 1) * S)``.
The sample key ``<type>_<index:06d>`` and the per-sample seeds depend only on (run seed, type, index),
so a resumed run writes byte-identical shards.
"""

from __future__ import annotations

import re
import zlib

import numpy as np

FORMAT_VERSION = "1"
SAMPLES_MANIFEST = "samples.parquet"
SHARDS_MANIFEST = "shards.parquet"
RUN_FILE = "run.json"
LOCK_FILE = ".lock"
ARTIFACT_DIR = "artifact"
PARTS_DIR = "manifest-parts"
TMP_SUFFIX = ".tmp"
TAR_MTIME = 0  # fixed tar member mtime: the same samples give byte-identical shards

# Per-sample file extensions inside a shard (WebDataset: everything after the key's first dot).
IMAGE_EXT = "png"
MASK_EXT = "mask.png"
META_EXT = "json"

# Keys of the lineage record stored as <key>.json in the shard and in samples.parquet.
LINEAGE_FIELDS: tuple[str, ...] = (
    "key",
    "index",
    "dataset",
    "category",
    "defect_type",
    "generator",
    "generator_params",
    "artifact_hash",
    "source_normal",
    "source_normal_sha256",
    "mask_params",
    "seed",
    "sample_seed",
    "generator_info",
    "format_version",
)

_SAFE = re.compile(r"[^A-Za-z0-9_-]+")


def slug(text: str) -> str:
    """A name made safe for shard file names and sample keys (no dots, no slashes)."""
    s = _SAFE.sub("-", text).strip("-")
    return s or "x"


def shard_pattern(category: str, generator: str) -> str:
    """printf-style shard name pattern, ``<category>-<generator>-%06d.tar``."""
    return f"{slug(category)}-{slug(generator)}-%06d.tar"


def shard_name(category: str, generator: str, index: int) -> str:
    return shard_pattern(category, generator) % index


def sample_key(defect_type: str, index: int) -> str:
    """``<type>_<index:06d>``, without dots (WebDataset splits a member name at the key's first dot)."""
    return f"{slug(defect_type)}_{index:06d}"


def check_type_keys(defect_types: list[str]) -> None:
    """Raise ValueError when two defect types would share a key prefix."""
    seen: dict[str, str] = {}
    for t in defect_types:
        s = slug(t)
        if s in seen:
            raise ValueError(f"defect types {seen[s]!r} and {t!r} give the same sample key prefix {s!r}")
        seen[s] = t


def sample_at(g: int, defect_types: list[str]) -> tuple[str, int]:
    """(defect type, per-type index) of global sample index ``g``."""
    t = len(defect_types)
    return defect_types[g % t], g // t


def shard_ranges(total: int, shard_size: int) -> list[range]:
    """Global sample indices of every shard."""
    return [range(s, min(total, s + shard_size)) for s in range(0, total, shard_size)]


def sample_seeds(run_seed: int, defect_type: str, index: int) -> tuple[np.random.SeedSequence, ...]:
    """Independent seed sequences (normal choice, mask, generator) of one sample, from (seed, type, index).

    ``zlib.crc32`` rather than ``hash()``: it is the same in every process.
    """
    ss = np.random.SeedSequence([int(run_seed), zlib.crc32(defect_type.encode()), int(index)])
    return tuple(ss.spawn(3))


def int_seed(ss: np.random.SeedSequence) -> int:
    """A non-negative 63-bit integer seed from a seed sequence (fits Parquet int64 and JSON)."""
    hi, lo = (int(v) for v in ss.generate_state(2, np.uint32))
    return ((hi << 32) | lo) & ((1 << 63) - 1)
