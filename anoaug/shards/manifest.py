"""Parquet manifests of a generation directory: every sample and every complete shard, with checksums.

Memory stays flat however many samples a run writes: the sample rows of each complete shard go to
``manifest-parts/<shard>.parquet`` (atomically, before the shard is listed), ``shards.parquet`` (one small
row per shard) is rewritten after each shard, and ``samples.parquet`` is assembled from the parts, one
part at a time, when the run completes. A shard counts as complete only when ``shards.parquet`` lists it
with the sha256 of the file on disk and its part holds ``count`` rows, so a crash at any point leaves at
most one shard that the next run discards and rewrites.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from anoaug.atomic import atomic_path
from anoaug.errors import ManifestError
from anoaug.hashing import sha256_file
from anoaug.shards.format import FORMAT_VERSION, PARTS_DIR, SAMPLES_MANIFEST, SHARDS_MANIFEST

SAMPLES_SCHEMA = pa.schema(
    [
        pa.field("shard", pa.string(), nullable=False),
        pa.field("shard_index", pa.int64(), nullable=False),
        pa.field("key", pa.string(), nullable=False),
        pa.field("index", pa.int64(), nullable=False),
        pa.field("global_index", pa.int64(), nullable=False),
        pa.field("category", pa.string(), nullable=False),
        pa.field("defect_type", pa.string(), nullable=False),
        pa.field("generator", pa.string(), nullable=False),
        pa.field("artifact_hash", pa.string(), nullable=False),
        pa.field("source_normal", pa.string(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("sample_seed", pa.int64(), nullable=False),
        pa.field("image_sha256", pa.string(), nullable=False),
        pa.field("mask_sha256", pa.string(), nullable=False),
        pa.field("mask_pixels", pa.int64(), nullable=False),
        pa.field("lineage", pa.string(), nullable=False),  # the full <key>.json record
    ]
)

SHARDS_SCHEMA = pa.schema(
    [
        pa.field("shard", pa.string(), nullable=False),
        pa.field("shard_index", pa.int64(), nullable=False),
        pa.field("count", pa.int64(), nullable=False),
        pa.field("first_global_index", pa.int64(), nullable=False),
        pa.field("sha256", pa.string(), nullable=False),
        pa.field("bytes", pa.int64(), nullable=False),
    ]
)


@dataclass
class GenerationManifest:
    """The complete shards of a directory (``shards.parquet``) and their per-shard sample parts."""

    out_dir: Path
    shards: dict[int, dict[str, Any]] = field(default_factory=dict)  # shard_index -> shards.parquet row

    @property
    def parts_dir(self) -> Path:
        return self.out_dir / PARTS_DIR

    def part_path(self, shard: str) -> Path:
        return self.parts_dir / f"{Path(shard).stem}.parquet"

    @classmethod
    def load(cls, out_dir: str | Path) -> GenerationManifest:
        """Read shards.parquet (empty when absent); shards whose sample part is missing or short are left out."""
        out = Path(out_dir)
        m = cls(out)
        shards_path = out / SHARDS_MANIFEST
        if not shards_path.is_file():
            return m
        for r in _read(shards_path, SHARDS_SCHEMA):
            part = m.part_path(r["shard"])
            try:
                complete = part.is_file() and pq.read_metadata(part).num_rows == int(r["count"])
            except (OSError, pa.ArrowInvalid):
                complete = False
            if complete:
                m.shards[int(r["shard_index"])] = r
        return m

    def add(self, shard_row: dict[str, Any], sample_rows: list[dict[str, Any]]) -> None:
        """Record a complete shard: its sample part first, then the shard list."""
        self.parts_dir.mkdir(exist_ok=True)
        _write(pa.Table.from_pylist(sample_rows, schema=SAMPLES_SCHEMA), self.part_path(shard_row["shard"]), "samples")
        self.shards[int(shard_row["shard_index"])] = shard_row
        self.save_shards()

    def drop(self, shard_index: int) -> None:
        row = self.shards.pop(shard_index, None)
        if row is not None:
            self.part_path(row["shard"]).unlink(missing_ok=True)

    @property
    def n_samples(self) -> int:
        return sum(int(r["count"]) for r in self.shards.values())

    def save_shards(self) -> None:
        rows = [self.shards[j] for j in sorted(self.shards)]
        _write(pa.Table.from_pylist(rows, schema=SHARDS_SCHEMA), self.out_dir / SHARDS_MANIFEST, "shards")

    def samples_current(self) -> bool:
        """Whether samples.parquet already holds exactly the listed shards' samples."""
        path = self.out_dir / SAMPLES_MANIFEST
        try:
            return (
                path.is_file()
                and pq.read_metadata(path).num_rows == self.n_samples
                and (path.stat().st_mtime_ns >= (self.out_dir / SHARDS_MANIFEST).stat().st_mtime_ns)
            )
        except (OSError, pa.ArrowInvalid):
            return False

    def write_samples(self) -> Path:
        """Assemble samples.parquet from the parts in shard order, one part in memory at a time."""
        path = self.out_dir / SAMPLES_MANIFEST
        meta = {b"anoaug.kind": b"samples", b"anoaug.shard_format": FORMAT_VERSION.encode()}
        schema = SAMPLES_SCHEMA.with_metadata(meta)
        with atomic_path(path, fsync=True) as tmp, pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            for j in sorted(self.shards):
                part = pq.read_table(self.part_path(self.shards[j]["shard"]))
                writer.write_table(part.select(SAMPLES_SCHEMA.names).cast(schema))
        return path


def _read(path: Path, schema: pa.Schema) -> list[dict[str, Any]]:
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise ManifestError(f"cannot read generation manifest: {exc}", path) from None
    missing = set(schema.names) - set(table.column_names)
    if missing:
        raise ManifestError(f"not a generation manifest: missing columns {sorted(missing)}", path)
    return table.select(schema.names).cast(schema).to_pylist()


def _write(table: pa.Table, path: Path, kind: str) -> None:
    meta = {b"anoaug.kind": kind.encode(), b"anoaug.shard_format": FORMAT_VERSION.encode()}
    table = table.replace_schema_metadata(meta)
    with atomic_path(path, fsync=True) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def verify_generation(out_dir: str | Path) -> list[str]:
    """Problems with a generation directory: listed shards missing or changed, unlisted shards, counts.

    An empty list means every ``*.tar`` is listed in shards.parquet with its sha256 and sample count,
    and samples.parquet has exactly the listed samples with unique keys.
    """
    out = Path(out_dir)
    problems: list[str] = []
    if not (out / SHARDS_MANIFEST).is_file():
        return [f"{out / SHARDS_MANIFEST}: missing"]
    shard_rows = _read(out / SHARDS_MANIFEST, SHARDS_SCHEMA)
    sample_rows = _read(out / SAMPLES_MANIFEST, SAMPLES_SCHEMA) if (out / SAMPLES_MANIFEST).is_file() else []
    listed = {r["shard"] for r in shard_rows}
    for r in shard_rows:
        p = out / r["shard"]
        if not p.is_file():
            problems.append(f"{p}: listed in {SHARDS_MANIFEST} but missing")
        elif sha256_file(p) != r["sha256"]:
            problems.append(f"{p}: sha256 differs from {SHARDS_MANIFEST}")
        n = sum(1 for s in sample_rows if s["shard"] == r["shard"])
        if n != r["count"]:
            problems.append(f"{p}: {SAMPLES_MANIFEST} has {n} sample(s), {SHARDS_MANIFEST} says {r['count']}")
    for p in sorted(out.glob("*.tar")):
        if p.name not in listed:
            problems.append(f"{p}: not listed in {SHARDS_MANIFEST}")
    keys = [s["key"] for s in sample_rows]
    if len(keys) != len(set(keys)):
        problems.append(f"{SAMPLES_MANIFEST}: duplicate sample keys")
    stray = [s["key"] for s in sample_rows if s["shard"] not in listed]
    if stray:
        problems.append(f"{SAMPLES_MANIFEST}: {len(stray)} sample(s) of unlisted shards")
    return problems

