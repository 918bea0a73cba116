"""Content hashes of files (sha256), the one implementation every manifest and fingerprint uses."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any


def update_from_file(h: Any, path: str | Path, chunk: int = 1 << 20) -> Any:
    """Feed a file's bytes into the hash object ``h`` (hashlib API) in chunks; returns ``h``."""
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    return update_from_file(hashlib.sha256(), path).hexdigest()
