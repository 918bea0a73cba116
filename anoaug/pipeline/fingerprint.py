"""Cache keys: pure functions of a spec section and the hashes of a stage's inputs.

A fingerprint never includes a run id, a timestamp or an absolute path, so the same inputs give the
same key on every machine and every rerun, and a changed setting changes exactly the keys of the
stages that read it (and, through their output hashes, of the stages downstream).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from anoaug.hashing import sha256_file
from anoaug.jsonable import to_jsonable

FINGERPRINT_VERSION = "1"
BIG_FILE = 16 << 20  # files larger than this are hashed by (name, size): shards carry their own checksums


def canonical_json(value: Any) -> str:
    """Key-sorted, whitespace-free JSON of value (pydantic models are dumped first)."""
    return json.dumps(to_jsonable(value, unknown="repr"), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def fingerprint(*parts: Any) -> str:
    """sha256 (first 24 hex) of the canonical JSON of parts: spec sections, input hashes, names."""
    payload = canonical_json([FINGERPRINT_VERSION, *parts])
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def files_hash(root: str | Path, files: Iterable[str | Path], big_file: int = BIG_FILE) -> str:
    """Hash of relative paths and contents of `files` under `root` (directories are walked).

    Files over `big_file` bytes count by relative path and size only (WebDataset shards: their
    checksums are in the shard manifest, which is hashed by content).
    """
    root = Path(root)
    paths: set[Path] = set()
    for f in files:
        p = root / f
        if p.is_dir():
            paths.update(q for q in p.rglob("*") if q.is_file() and not q.name.startswith("."))
        elif p.is_file():
            paths.add(p)
    h = hashlib.sha256()
    for p in sorted(paths):
        rel = p.relative_to(root).as_posix() if root in p.parents else p.name
        size = p.stat().st_size
        h.update(f"{rel}\0{size}\0".encode())
        if size <= big_file:
            h.update(sha256_file(p).encode())
    return h.hexdigest()[:24]


def listing_hash(root: str | Path, relpaths: Iterable[str]) -> str:
    """Cheap fingerprint of input files: relative path, size and mtime (no reading).

    Used only to decide whether the split stage must look at the data again; the split manifest
    itself records the sha256 of every file, and downstream stages key on that manifest's hash.
    """
    root = Path(root)
    h = hashlib.sha256()
    for rel in sorted(set(relpaths)):
        try:
            st = (root / rel).stat()
            h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{rel}\0missing\n".encode())
    return h.hexdigest()[:24]
