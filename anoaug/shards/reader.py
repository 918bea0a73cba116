"""Reading generated shards: (image, mask, meta) for training (``anoaug.shards.export`` writes them out as a dataset).

``iter_samples`` streams with ``webdataset.WebDataset`` (shards in order, no shuffling); when the
directory has a ``shards.parquet`` only the complete shards it lists are read, so a directory that is
being written (or was interrupted) never yields a partial shard.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from anoaug.errors import AnoaugError
from anoaug.png import decode_image, decode_mask
from anoaug.shards.format import IMAGE_EXT, MASK_EXT, META_EXT, SHARDS_MANIFEST


@dataclass
class ShardSample:
    """One generated sample."""

    key: str
    image: np.ndarray  # (H, W, 3) uint8 RGB
    mask: np.ndarray  # (H, W) bool
    meta: dict[str, Any]  # the lineage record (category, defect_type, generator, artifact_hash, ...)
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # a generator's extra images (``part``), decoded


def shard_files(shard_dir: str | Path) -> list[Path]:
    """The complete shards of a directory: those listed in shards.parquet, else every visible ``*.tar``."""
    shard_dir = Path(shard_dir)
    if not shard_dir.is_dir():
        raise AnoaugError("shard directory does not exist", shard_dir)
    listed = shard_dir / SHARDS_MANIFEST
    if listed.is_file():
        import pyarrow.parquet as pq

        rows = pq.read_table(listed, columns=["shard", "shard_index"]).to_pylist()
        return [shard_dir / r["shard"] for r in sorted(rows, key=lambda r: r["shard_index"])]
    return sorted(p for p in shard_dir.glob("*.tar") if not p.name.startswith("."))


def iter_samples(shard_dir: Path) -> Iterator[ShardSample]:
    """Every sample of a generation directory, in shard order, decoded."""
    import webdataset as wds

    files = shard_files(shard_dir)
    if not files:
        raise AnoaugError("no shards found", shard_dir)
    missing = [p for p in files if not p.is_file()]
    if missing:
        raise AnoaugError(f"{len(missing)} listed shard(s) missing, e.g. {missing[0].name}", shard_dir)
    ds = wds.WebDataset([str(p) for p in files], shardshuffle=False, empty_check=False)
    for s in ds:
        for ext in (IMAGE_EXT, MASK_EXT, META_EXT):
            if ext not in s:
                raise AnoaugError(f"sample {s.get('__key__')} in {s.get('__url__')} has no .{ext} file")
        yield ShardSample(
            key=s["__key__"],
            image=decode_image(s[IMAGE_EXT], "a shard image"),
            mask=decode_mask(s[MASK_EXT], "a shard mask"),
            meta=json.loads(s[META_EXT]),
            extras={
                ext[: -len(".png")]: decode_image(data, f"the shard image {ext}")
                for ext, data in sorted(s.items())
                if ext.endswith(".png") and ext not in (IMAGE_EXT, MASK_EXT)
            },
        )
