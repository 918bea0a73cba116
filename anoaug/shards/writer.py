"""Writing one WebDataset shard atomically: ``webdataset.TarWriter`` into ``.<name>.tmp``, fsync, rename.

``webdataset.ShardWriter`` rolls shards by count but names each file directly; resume needs shard ``j`` to
hold exactly the samples ``[j * S, (j + 1) * S)`` and to appear under its final name only when complete,
so each shard gets its own ``TarWriter`` on a temporary file here.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds

from anoaug.png import encode_png
from anoaug.shards.format import IMAGE_EXT, MASK_EXT, META_EXT, TAR_MTIME, TMP_SUFFIX, slug


@dataclass
class EncodedSample:
    """One sample, PNG-encoded and ready for a shard."""

    key: str
    global_index: int
    image_png: bytes
    mask_png: bytes
    lineage: dict[str, Any]
    mask_pixels: int
    extras_png: dict[str, bytes] = field(default_factory=dict)  # name -> PNG, written as <key>.<name>.png

    @property
    def json_bytes(self) -> bytes:
        return json.dumps(self.lineage, sort_keys=True, separators=(",", ":")).encode()


def encode_sample(
    key: str,
    global_index: int,
    image: np.ndarray,
    mask: np.ndarray,
    lineage: dict[str, Any],
    extras: dict[str, np.ndarray] | None = None,
) -> EncodedSample:
    """PNG-encode one sample; ``extras`` (a generator's extra images, e.g. ``part``) become ``<key>.<name>.png``."""
    return EncodedSample(
        key=key,
        global_index=global_index,
        image_png=encode_png(image, compression=1),
        mask_png=encode_png(mask.astype(bool), compression=1),
        lineage=lineage,
        mask_pixels=int(np.count_nonzero(mask)),
        extras_png={extra_ext(name): encode_png(a, compression=1) for name, a in sorted((extras or {}).items())},
    )


def extra_ext(name: str) -> str:
    """The shard member extension of extra image ``name`` (``part`` -> ``part.png``); refuses reserved names."""
    ext = f"{slug(name)}.png"
    if ext in (IMAGE_EXT, MASK_EXT, META_EXT) or slug(name) != name:
        raise ValueError(f"extra image name {name!r} is reserved or not a plain name")
    return ext


def tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}{TMP_SUFFIX}")


def write_shard(
    path: str | Path,
    samples: Iterable[EncodedSample],
    on_sample: Callable[[EncodedSample], None] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Write ``samples`` to ``path`` atomically; return (shard row, per-sample rows) for the manifest.

    Sample rows carry the shard name, key, global index, image/mask sha256, mask pixel count and the
    lineage dict (the caller adds manifest columns from it).
    """
    path = Path(path)
    tmp = tmp_path(path)
    rows: list[dict[str, Any]] = []
    digest = hashlib.sha256()
    try:
        with open(tmp, "wb", buffering=1 << 20) as raw:
            hashing = _HashingWriter(raw, digest)
            tw = wds.TarWriter(hashing, encoder=False, mtime=TAR_MTIME, user="anoaug", group="anoaug")
            try:
                for s in samples:
                    tw.write(
                        {"__key__": s.key, IMAGE_EXT: s.image_png, MASK_EXT: s.mask_png, META_EXT: s.json_bytes}
                        | s.extras_png
                    )
                    rows.append(
                        {
                            "shard": path.name,
                            "key": s.key,
                            "global_index": s.global_index,
                            "image_sha256": hashlib.sha256(s.image_png).hexdigest(),
                            "mask_sha256": hashlib.sha256(s.mask_png).hexdigest(),
                            "mask_pixels": s.mask_pixels,
                            "lineage": s.lineage,
                        }
                    )
                    if on_sample is not None:
                        on_sample(s)
            finally:
                tw.close()
            raw.flush()
            os.fsync(raw.fileno())
        size = tmp.stat().st_size
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    shard_row = {
        "shard": path.name,
        "count": len(rows),
        "first_global_index": rows[0]["global_index"] if rows else 0,
        "sha256": digest.hexdigest(),
        "bytes": size,
    }
    return shard_row, rows


class _HashingWriter:
    """A write-only file object that hashes what passes through (saves re-reading the shard)."""

    def __init__(self, raw: Any, digest: Any) -> None:
        self.raw, self.digest = raw, digest

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()

    def tell(self) -> int:
        return self.raw.tell()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
