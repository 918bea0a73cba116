"""Reading generated shards: (image, mask, meta) for training, and export to an MVTec-style folder.

``iter_samples`` streams with ``webdataset.WebDataset`` (shards in order, no shuffling); when the
directory has a ``shards.parquet`` only the complete shards it lists are read, so a directory that is
being written (or was interrupted) never yields a partial shard.

``export_mvtec_folder`` writes::

    <out>/<category>/test/<defect_type>/<key>.png
    <out>/<category>/ground_truth/<defect_type>/<key>_mask.png      (0/255)
    <out>/<category>/lineage.jsonl                                   (one lineage record per sample)

which anomalib's ``Folder`` datamodule reads with ``abnormal_dir=test/<type>`` and
``mask_dir=ground_truth/<type>`` (image stem contained in the mask stem), as does ``anoaug``'s MVTec reader.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from anoaug.errors import AnoaugError
from anoaug.png import decode_image, decode_mask, write_png
from anoaug.shards.format import IMAGE_EXT, MASK_EXT, META_EXT, SHARDS_MANIFEST, slug


@dataclass
class ShardSample:
    """One generated sample."""

    key: str
    image: np.ndarray  # (H, W, 3) uint8 RGB
    mask: np.ndarray  # (H, W) bool
    meta: dict[str, Any]  # the lineage record (category, defect_type, generator, artifact_hash, ...)


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
        )


def export_mvtec_folder(shard_dir: Path, out_dir: Path, overwrite: bool = False) -> Path:
    """Write every sample as ``<out>/<category>/test/<type>/<key>.png`` + ground-truth ``_mask.png``.

    Returns ``out_dir / <category>``. The category folder is built under a temporary name and renamed
    when complete; an existing one is replaced only with ``overwrite``.
    """
    shard_dir, out_dir = Path(shard_dir), Path(out_dir)
    if out_dir.resolve() == shard_dir.resolve() or shard_dir.resolve() in out_dir.resolve().parents:
        raise AnoaugError("export into the shard directory itself is refused; choose another folder", out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir))
    category: str | None = None
    try:
        with open(tmp / "lineage.jsonl", "w") as lineage:
            for s in iter_samples(shard_dir):
                cat = str(s.meta.get("category") or "synthetic")
                if category is None:
                    category = cat
                elif cat != category:
                    raise AnoaugError(f"shards mix categories {category!r} and {cat!r}", shard_dir)
                dtype = slug(str(s.meta.get("defect_type") or "defect"))
                img_dir, mask_dir = tmp / "test" / dtype, tmp / "ground_truth" / dtype
                img_dir.mkdir(parents=True, exist_ok=True)
                mask_dir.mkdir(parents=True, exist_ok=True)
                write_png(img_dir / f"{s.key}.png", s.image)
                write_png(mask_dir / f"{s.key}_mask.png", s.mask)
                lineage.write(json.dumps(s.meta, sort_keys=True) + "\n")
        assert category is not None
        final = out_dir / slug(category)
        if final.exists():
            if not overwrite:
                raise AnoaugError("already exists (pass overwrite=True to replace it)", final)
            shutil.rmtree(final)
        os.replace(tmp, final)
        return final
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
