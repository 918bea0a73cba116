"""Export generated shards as a dataset other tools read: the MVTec AD layout or anomalib's Folder layout.

``anoaug export SHARDS_DIR --out DIR --layout mvtec|folder [--normals DATA_ROOT]`` writes one category::

    layout mvtec                                   layout folder (anoaug's own folder layout too)
    <out>/<category>/train/good/NNN.png            <out>/<category>/normal/NNN.png          (--normals only)
    <out>/<category>/test/<type>/NNN.png           <out>/<category>/defect/<type>/NNN.png
    <out>/<category>/ground_truth/<type>/NNN_mask.png   <out>/<category>/mask/<type>/NNN_mask.png  (0/255)
    <out>/<category>/lineage.jsonl                 one lineage record per pair (+ the exported paths)
    <out>/<category>/export.json                   layout, source, defect types, counts, Folder arguments

``NNN`` is the sample's per-type index, zero-padded to one width; ``<type>`` the defect types of the
generation's ``run.json`` (made safe as folder names with ``format.slug``; ``export.json`` maps them back).
Normal images are not in the shards: with ``--normals DATA_ROOT`` the generation's training normals
(the files under DATA_ROOT whose sha256 the run recorded in ``run.json`` ``normals``, so never an
evaluation image) are copied byte for byte; without it only the pairs are written, and the test split of
an MVTec reader has no ``test/good``.

The whole ``<out>`` is built in a temporary sibling folder and renamed at the end, so it is complete or
absent. An existing non-empty ``<out>`` and an ``<out>`` inside a dataset (an MVTec / VisA / folder
dataset or category, a generation directory, the shards or ``--normals``) are refused.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anoaug.errors import AnoaugError
from anoaug.outputs import is_inside
from anoaug.png import encode_png
from anoaug.shards.format import RUN_FILE, SHARDS_MANIFEST, check_type_keys, slug
from anoaug.shards.reader import iter_samples

LAYOUTS = ("mvtec", "folder")
# layout -> (normal folder, defect folder, mask folder), relative to <out>/<category>/
LAYOUT_DIRS: dict[str, tuple[str, str, str]] = {
    "mvtec": ("train/good", "test", "ground_truth"),
    "folder": ("normal", "defect", "mask"),
}
EXPORT_FILE = "export.json"
LINEAGE_FILE = "lineage.jsonl"


class ExportError(AnoaugError):
    """Shards cannot be exported (bad source, an existing or unsafe output folder, missing normals)."""


@dataclass
class ExportSummary:
    """What `export_shards` wrote."""

    category_dir: Path
    layout: str
    category: str
    counts: dict[str, int] = field(default_factory=dict)  # defect type -> pairs
    normals: int = 0

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def _read_run(shard_dir: Path) -> dict[str, Any]:
    path = shard_dir / RUN_FILE
    if not shard_dir.is_dir():
        raise ExportError("shard directory does not exist", shard_dir)
    if not path.is_file():
        raise ExportError(f"not a generation directory (no {RUN_FILE}; write one with `anoaug generate`)", shard_dir)
    try:
        run = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ExportError(f"unreadable: {exc}", path) from None
    if not isinstance(run, dict) or not run.get("category") or not run.get("defect_types"):
        raise ExportError("no category or defect_types: not a generation run file", path)
    return run


def _looks_like_dataset(path: Path) -> str | None:
    """Why ``path`` is (part of) a dataset, or None: a category folder, a dataset root or a generation dir."""
    from anoaug.data.formats import FORMATS

    if not path.is_dir():
        return None
    if (path / SHARDS_MANIFEST).is_file() or ((path / RUN_FILE).is_file() and any(path.glob("*.tar"))):
        return "a generation directory"
    for name, module in FORMATS.items():
        if module.is_category_dir(path):
            return f"a dataset category ({name} layout)"
    try:
        children = [d for d in path.iterdir() if d.is_dir() and not d.name.startswith(".")]
    except OSError:
        return None
    for name, module in FORMATS.items():
        if any(module.is_category_dir(d) for d in children):
            return f"a dataset root ({name} layout)"
    return None


def check_out_dir(out: Path, shard_dir: Path, normals_root: Path | None = None) -> None:
    """Refuse an existing non-empty ``out`` and one inside a dataset (ExportError naming why)."""
    out_r = out.resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError("already exists and is not empty; export into a new folder", out)
    for what, other in (("the shard directory", shard_dir), ("the --normals dataset", normals_root)):
        if other is not None and (is_inside(out_r, other.resolve()) or is_inside(other.resolve(), out_r)):
            raise ExportError(f"refusing to export inside (or around) {what} {other}", out)
    for parent in out_r.parents:
        why = _looks_like_dataset(parent)
        if why:
            raise ExportError(f"refusing to export inside {why} ({parent}); choose a folder outside it", out)


def _find_normals(root: Path, category: str, hashes: list[str]) -> list[Path]:
    """The files under ``root`` (``root/<category>`` when it exists) whose sha256 is in ``hashes``, one per hash,
    in the order of their paths; ExportError when some are missing."""
    from anoaug.data.io import is_image_file
    from anoaug.hashing import sha256_file

    base = root / category if (root / category).is_dir() else root
    if not base.is_dir():
        raise ExportError("--normals: not a directory", root)
    wanted, found = set(hashes), {}
    for p in sorted(base.rglob("*")):
        if is_image_file(p):
            h = sha256_file(p)
            if h in wanted and h not in found:
                found[h] = p
    if len(found) < len(wanted):
        raise ExportError(
            f"--normals: found {len(found)} of the generation's {len(wanted)} training normals (sha256 in "
            f"{RUN_FILE}) under this folder; pass the dataset root the shards were generated from",
            base,
        )
    return sorted(found.values())


def export_shards(
    shard_dir: str | Path, out_dir: str | Path, layout: str = "mvtec", normals_root: str | Path | None = None
) -> ExportSummary:
    """Write the pairs of ``shard_dir`` (and, with ``normals_root``, its training normals) as
    ``<out_dir>/<category>/`` in ``layout`` (see the module docstring); atomically, never over a dataset."""
    shard_dir, out = Path(shard_dir), Path(out_dir)
    normals_root = Path(normals_root) if normals_root is not None else None
    if layout not in LAYOUTS:
        raise ExportError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    run = _read_run(shard_dir)
    category, types = str(run["category"]), [str(t) for t in run["defect_types"]]
    try:
        check_type_keys(types)
    except ValueError as exc:
        raise ExportError(str(exc), shard_dir / RUN_FILE) from None
    folders = {t: slug(t) for t in types}
    if layout == "mvtec" and "good" in folders.values():
        raise ExportError("a defect type named 'good' would mix with MVTec's normal test folder", shard_dir)
    check_out_dir(out, shard_dir, normals_root)
    normals: list[Path] = []
    if normals_root is not None:
        if not run.get("normals"):
            raise ExportError(f"no 'normals' sha256 list in {RUN_FILE}: cannot tell the training normals", shard_dir)
        normals = _find_normals(normals_root, category, list(run["normals"]))

    normal_rel, defect_rel, mask_rel = LAYOUT_DIRS[layout]
    width = max(3, len(str(max(int(run.get("count_per_type") or 1) - 1, len(normals) - 1, 0))))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    cat_dir = tmp / slug(category)
    summary = ExportSummary(out / slug(category), layout, category, {t: 0 for t in types})
    try:
        for t in types:
            (cat_dir / defect_rel / folders[t]).mkdir(parents=True)
            (cat_dir / mask_rel / folders[t]).mkdir(parents=True)
        sources = []
        if normals:
            (cat_dir / normal_rel).mkdir(parents=True)
            for i, p in enumerate(normals):
                name = f"{i:0{width}d}{p.suffix.lower()}"
                shutil.copyfile(p, cat_dir / normal_rel / name)
                sources.append({"image": f"{normal_rel}/{name}", "source": str(p.relative_to(normals_root))})
        with open(cat_dir / LINEAGE_FILE, "w") as lineage:
            for s in iter_samples(shard_dir):
                t = str(s.meta.get("defect_type"))
                if t not in folders or s.meta.get("category", category) != category:
                    raise ExportError(
                        f"sample {s.key} ({s.meta.get('category')}/{t}) is not of this run's category "
                        f"{category!r} and defect types {types}",
                        shard_dir,
                    )
                stem = f"{int(s.meta['index']):0{width}d}"
                image = f"{defect_rel}/{folders[t]}/{stem}.png"
                mask = f"{mask_rel}/{folders[t]}/{stem}_mask.png"
                if (cat_dir / image).exists():
                    raise ExportError(f"two samples of type {t!r} share the index {s.meta['index']}", shard_dir)
                (cat_dir / image).write_bytes(encode_png(s.image))
                (cat_dir / mask).write_bytes(encode_png(s.mask))
                lineage.write(json.dumps({**s.meta, "image": image, "mask": mask}, sort_keys=True) + "\n")
                summary.counts[t] += 1
        summary.normals = len(normals)
        record = {
            "layout": layout,
            "category": category,
            "dataset": run.get("dataset"),
            "generator": run.get("generator"),
            "variant": run.get("variant"),
            "artifact_hash": run.get("artifact_hash"),
            "source": str(shard_dir.resolve()),
            "defect_types": {folders[t]: t for t in types},
            "counts": summary.counts,
            "normals": sources,
            "anomalib_folder": folder_kwargs_for(layout, category, [folders[t] for t in types], bool(normals)),
        }
        (cat_dir / EXPORT_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700
        os.replace(tmp, out)  # replaces an empty <out>; a non-empty one was refused above
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return summary


def folder_kwargs_for(layout: str, category: str, type_folders: list[str], with_normals: bool) -> dict[str, Any]:
    """anomalib ``Folder`` arguments (relative to ``root`` = the category folder) for an exported layout."""
    normal_rel, defect_rel, mask_rel = LAYOUT_DIRS[layout]
    return {
        "name": category,
        "normal_dir": normal_rel if with_normals else None,
        "abnormal_dir": [f"{defect_rel}/{f}" for f in type_folders],
        "mask_dir": [f"{mask_rel}/{f}" for f in type_folders],
    }


def folder_kwargs(category_dir: str | Path, normal_dir: str | Path | None = None) -> dict[str, Any]:
    """``anomalib.data.Folder(**folder_kwargs(dir), ...)`` arguments for an exported category folder.

    ``normal_dir``: your normal images, where the export has none (exported without ``--normals``).
    Folder pairs each abnormal image with a mask by sorted path, which the ``NNN.png`` /
    ``NNN_mask.png`` names of every type folder keep aligned.
    """
    category_dir = Path(category_dir)
    path = category_dir / EXPORT_FILE
    if not path.is_file():
        raise ExportError(f"no {EXPORT_FILE}: not a folder written by `anoaug export`", category_dir)
    kw = dict(json.loads(path.read_text())["anomalib_folder"])
    if normal_dir is not None:
        kw["normal_dir"] = str(normal_dir)
    if kw["normal_dir"] is None:
        raise ExportError("exported without --normals: pass normal_dir (anomalib's Folder needs normals)", category_dir)
    return {**kw, "root": str(category_dir)}
