"""Leak-free split manifests: which images train the generator and which are held out.

Rule (per defect type): the type's images are sorted by relative path, shuffled with a generator
seeded from (seed, category, defect type), and the first ``max(min_gen_train, floor(n * fraction))``
go to generator training (``gen_train_defect``), the rest to evaluation (``eval_defect``); with the
default fraction 1/3, 9 images give 3 + 6, 10 give 3 + 7, 2 give 1 + 1. ``train/good`` images are
``train_normal`` and ``test/good`` images ``eval_normal``. Disjointness is checked on both the path
and the content hash, so a defect photo copied under two names cannot leak either.

The manifest is a Parquet file (schema in ``data_manifests/SCHEMA.md``); the same dataset and seed
give a byte-identical file.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from anoaug.atomic import atomic_path
from anoaug.data.records import CategoryData, ImageRecord
from anoaug.errors import DatasetError, ManifestError
from anoaug.hashing import sha256_file

SCHEMA_VERSION = "1"
ROLES = ("train_normal", "gen_train_defect", "eval_normal", "eval_defect")

SPLIT_SCHEMA = pa.schema(
    [
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("category", pa.string(), nullable=False),
        pa.field("relpath", pa.string(), nullable=False),
        pa.field("label", pa.string(), nullable=False),
        pa.field("mask_relpath", pa.string(), nullable=True),
        pa.field("role", pa.string(), nullable=False),
        pa.field("source_split", pa.string(), nullable=False),
        pa.field("sha256", pa.string(), nullable=False),
        pa.field("mask_sha256", pa.string(), nullable=True),
        pa.field("seed", pa.int64(), nullable=False),
    ]
)


def _type_rng(seed: int, category: str, label: str) -> np.random.Generator:
    # zlib.crc32 is stable across processes (Python's hash() is salted).
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(f"{category}/{label}".encode())]))


def n_gen_train(n: int, fraction: float = 1 / 3, min_gen_train: int = 1) -> int:
    """How many of n defect images of one type go to generator training."""
    return max(min_gen_train, int(np.floor(n * fraction + 1e-9)))


@dataclass
class SplitManifest:
    """A validated split table with convenient accessors."""

    table: pa.Table

    def __post_init__(self) -> None:
        check_disjoint(self.table)

    @property
    def seed(self) -> int:
        return int(self.table.column("seed")[0].as_py()) if self.table.num_rows else 0

    @property
    def category(self) -> str:
        return str(self.table.column("category")[0].as_py())

    @property
    def dataset(self) -> str:
        return str(self.table.column("dataset")[0].as_py())

    def rows(self, role: str | Iterable[str]) -> list[dict]:
        roles = {role} if isinstance(role, str) else set(role)
        unknown = roles - set(ROLES)
        if unknown:
            raise ValueError(f"unknown role(s) {sorted(unknown)}; roles are {ROLES}")
        return [r for r in self.table.to_pylist() if r["role"] in roles]

    def records(self, role: str | Iterable[str]) -> list[ImageRecord]:
        return [
            ImageRecord(r["relpath"], r["label"], r["source_split"], r["mask_relpath"]) for r in self.rows(role)
        ]

    def defect_types(self) -> list[str]:
        return sorted({r["label"] for r in self.rows(("gen_train_defect", "eval_defect"))})


def make_split(
    data: CategoryData, seed: int, fraction: float = 1 / 3, min_gen_train: int = 1, min_eval: int = 1
) -> SplitManifest:
    """Assign every image of a category a role; see the module docstring for the rule."""
    if not data.normal_train:
        raise DatasetError(f"category '{data.category}' has no normal training images", data.root)
    rows: list[dict] = []

    def add(rec: ImageRecord, role: str) -> None:
        mask_sha = sha256_file(data.path(rec.mask_relpath)) if rec.mask_relpath else None
        rows.append(
            {
                "dataset": data.dataset,
                "category": data.category,
                "relpath": rec.relpath,
                "label": rec.label,
                "mask_relpath": rec.mask_relpath,
                "role": role,
                "source_split": rec.source_split,
                "sha256": sha256_file(data.path(rec.relpath)),
                "mask_sha256": mask_sha,
                "seed": int(seed),
            }
        )

    for rec in sorted(data.normal_train, key=lambda r: r.relpath):
        add(rec, "train_normal")
    for rec in sorted(data.normal_test, key=lambda r: r.relpath):
        add(rec, "eval_normal")
    for label in data.defect_types:
        recs = sorted((r for r in data.defects if r.label == label), key=lambda r: r.relpath)
        n = len(recs)
        k = n_gen_train(n, fraction, min_gen_train)
        if n - k < min_eval:
            raise DatasetError(
                f"defect type '{label}' has {n} image(s): need at least {k + min_eval} to hold out "
                f"{min_eval} for evaluation after {k} for generator training",
                data.root / data.category,
            )
        order = _type_rng(seed, data.category, label).permutation(n)
        gen = {int(i) for i in order[:k]}
        for i, rec in enumerate(recs):
            add(rec, "gen_train_defect" if i in gen else "eval_defect")
    table = pa.Table.from_pylist(rows, schema=SPLIT_SCHEMA)
    return SplitManifest(table)


def check_disjoint(table: pa.Table) -> None:
    """Raise ManifestError if any image (by path or content) is both generator-training and evaluation."""
    gen_paths, gen_hashes, eval_paths, eval_hashes = set(), set(), set(), set()
    for r in table.select(["relpath", "role", "sha256"]).to_pylist():
        if r["role"] not in ROLES:
            raise ManifestError(f"unknown role '{r['role']}' for {r['relpath']}")
        if r["role"] == "gen_train_defect":
            gen_paths.add(r["relpath"])
            gen_hashes.add(r["sha256"])
        elif r["role"].startswith("eval_"):
            eval_paths.add(r["relpath"])
            eval_hashes.add(r["sha256"])
    both = sorted(gen_paths & eval_paths)
    if both:
        raise ManifestError(f"images in both generator training and evaluation: {both[:5]}")
    same = gen_hashes & eval_hashes
    if same:
        raise ManifestError(f"{len(same)} evaluation image(s) have the same content as a generator-training one")


def write_split(manifest: SplitManifest, path: str | Path, root: str | Path | None = None) -> Path:
    """Write atomically (temp file + rename). Refuses a path inside the dataset root."""
    path = Path(path).resolve()
    if root is not None and Path(root).resolve() in path.parents:
        raise ManifestError("refusing to write a manifest inside the input dataset", path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {b"anoaug.schema_version": SCHEMA_VERSION.encode(), b"anoaug.kind": b"split"}
    table = manifest.table.replace_schema_metadata(meta)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return path


def read_split(path: str | Path) -> SplitManifest:
    """Read and validate a split manifest."""
    path = Path(path)
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise ManifestError(f"cannot read split manifest: {exc}", path) from None
    missing = set(SPLIT_SCHEMA.names) - set(table.column_names)
    if missing:
        raise ManifestError(f"not a split manifest: missing columns {sorted(missing)}", path)
    return SplitManifest(table.select(SPLIT_SCHEMA.names).cast(SPLIT_SCHEMA))


def verify_split(manifest: SplitManifest, root: str | Path) -> None:
    """Check that the files a manifest describes are still those on disk (sha256)."""
    root = Path(root)
    problems = []
    for r in manifest.table.to_pylist():
        for rel, digest in ((r["relpath"], r["sha256"]), (r["mask_relpath"], r["mask_sha256"])):
            if rel is None:
                continue
            p = root / rel
            if not p.is_file():
                problems.append(f"{p}: missing")
            elif sha256_file(p) != digest:
                problems.append(f"{p}: changed since the manifest was written (sha256 differs)")
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ManifestError("dataset does not match the split manifest: " + "; ".join(problems[:3]) + more)


def default_split_path(dataset: str, category: str, seed: int, base: str | Path = "data_manifests") -> Path:
    return Path(base) / dataset / category / f"split-seed{seed}.parquet"


def ensure_split(
    data: CategoryData,
    seed: int,
    out: str | Path,
    fraction: float = 1 / 3,
    min_gen_train: int = 1,
) -> tuple[SplitManifest, bool]:
    """Reuse the manifest at `out` if it matches the data (else ManifestError), or write it.

    Returns the manifest and whether it was newly written. Reusing a manifest whose files changed
    is an error: silently re-splitting could move an evaluation image into generator training.
    """
    out = Path(out)
    fresh = make_split(data, seed, fraction, min_gen_train)
    if out.is_file():
        existing = read_split(out)
        if existing.seed != seed:
            raise ManifestError(f"manifest was written with seed {existing.seed}, not {seed}", out)
        verify_split(existing, data.root)
        if not existing.table.select(["relpath", "role"]).equals(fresh.table.select(["relpath", "role"])):
            raise ManifestError("dataset images were added or removed since the manifest was written", out)
        return existing, False
    write_split(fresh, out, root=data.root)
    return fresh, True
