"""VisA layout.

::

    <root>/<category>/Data/Images/Normal/*.JPG
    <root>/<category>/Data/Images/Anomaly/*.JPG
    <root>/<category>/Data/Masks/Anomaly/*.png
    <root>/<category>/image_anno.csv          (optional: image,label,mask - label is a free-text defect)
    <root>/split_csv/1cls.csv                 (optional: object,split,label,image,mask)

Splits. When ``split_csv/1cls.csv`` exists and has rows for the category, it decides everything: ``split``
is ``train``/``test``, ``label`` is ``normal``/``anomaly`` and ``image``/``mask`` are paths relative to
``<root>`` (an empty mask cell means no mask). Without the CSV (or without rows for the category) the
folders are read: anomalies go to ``test``; normals go to ``train`` except every 5th one in sorted order
(indices 4, 9, 14, ...) which goes to ``test``, so that a held-out normal set exists.

Defect types. VisA has no defect-type folders, so a defect's label is ``anomaly``, unless the category's
``image_anno.csv`` names its defect: one named defect becomes a slug of its text (``"chunk of wax
missing"`` -> ``chunk_of_wax_missing``) and several comma-separated defects become ``combined``
(as in MVTec AD).

Folder fallback masks are ``Data/Masks/Anomaly/<stem>.<ext>`` (or ``<stem>_mask.<ext>``).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from anoaug.data.formats._common import MaskIndex, all_images_below, relpath, require_dir, subdirs
from anoaug.data.io import list_images
from anoaug.data.records import GOOD, CategoryData, ImageRecord
from anoaug.errors import DatasetError
from anoaug.outputs import check_relpath

NAME = "visa"
SPLIT_CSV = Path("split_csv") / "1cls.csv"
CSV_COLUMNS = ("object", "split", "label", "image", "mask")
DEFAULT_DEFECT = "anomaly"
TEST_EVERY = 5  # without the split CSV, every 5th normal image goes to the test split


def is_category_dir(path: Path) -> bool:
    """True when ``path`` looks like one VisA category (has ``Data/Images/``)."""
    return (path / "Data" / "Images").is_dir()


def list_categories(root: str | Path) -> list[str]:
    """Category names from the split CSV when present (and present on disk), plus any category folder."""
    root = require_dir(Path(root), "dataset root")
    names = {d.name for d in subdirs(root) if is_category_dir(d)}
    csv_path = root / SPLIT_CSV
    if csv_path.is_file():
        names.update(row["object"] for row in _read_split_csv(csv_path) if row["object"])
    return sorted(names)


def read_category(root: str | Path, category: str) -> CategoryData:
    """All images of one category, split by the CSV when it has rows for it, else by the folders."""
    root = require_dir(Path(root), "dataset root")
    cat_dir = root / category
    csv_path = root / SPLIT_CSV
    rows = [r for r in _read_split_csv(csv_path) if r["object"] == category] if csv_path.is_file() else []
    if not rows and not cat_dir.is_dir():
        raise DatasetError(f"category {category!r} not found", cat_dir)
    types = _defect_types(root, cat_dir / "image_anno.csv")
    records = (
        _records_from_csv(rows, csv_path, types) if rows else _records_from_folders(root, cat_dir, types)
    )
    return CategoryData(dataset=NAME, root=root, category=category, records=records)


def list_mask_files(root: str | Path, category: str) -> list[str]:
    """Relpaths of every mask file of the category (to find masks that belong to no image)."""
    root = Path(root)
    return [relpath(p, root) for p in all_images_below(root / category / "Data" / "Masks")]


def _read_split_csv(csv_path: Path) -> list[dict[str, str]]:
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise DatasetError(f"split CSV lacks column(s) {', '.join(missing)}", csv_path)
            return [{k: (row.get(k) or "").strip() for k in CSV_COLUMNS} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"cannot read split CSV ({exc})", csv_path) from None


def _records_from_csv(rows: list[dict[str, str]], csv_path: Path, types: dict[str, str]) -> list[ImageRecord]:
    records = []
    for line, row in enumerate(rows, start=2):
        split, label = row["split"].lower(), row["label"].lower()
        if split not in ("train", "test"):
            raise DatasetError(
                f"row for {row['image']!r}: split {row['split']!r} is not train/test", csv_path
            )
        if label not in ("normal", "anomaly"):
            raise DatasetError(
                f"row for {row['image']!r}: label {row['label']!r} is not normal/anomaly", csv_path
            )
        if not row["image"]:
            raise DatasetError(f"a row of {row['object']!r} has no image path (near line {line})", csv_path)
        image = check_relpath(row["image"].replace("\\", "/"), csv_path, f"row {line}: image")
        if row["mask"]:
            check_relpath(row["mask"].replace("\\", "/"), csv_path, f"row {line}: mask")
        if label == "normal":
            records.append(ImageRecord(image, GOOD, split))
        else:
            mask = row["mask"].replace("\\", "/") or None
            records.append(ImageRecord(image, types.get(image, DEFAULT_DEFECT), split, mask))
    return sorted(records, key=lambda r: (r.source_split != "train", r.label, r.relpath))


def _records_from_folders(root: Path, cat_dir: Path, types: dict[str, str]) -> list[ImageRecord]:
    images = cat_dir / "Data" / "Images"
    records = []
    for i, img in enumerate(list_images(images / "Normal")):
        split = "test" if i % TEST_EVERY == TEST_EVERY - 1 else "train"
        records.append(ImageRecord(relpath(img, root), GOOD, split))
    masks = MaskIndex(cat_dir / "Data" / "Masks" / "Anomaly")
    for img in list_images(images / "Anomaly"):
        rel = relpath(img, root)
        mask = masks.find(img.stem, suffixes=("", "_mask"))
        records.append(
            ImageRecord(rel, types.get(rel, DEFAULT_DEFECT), "test", relpath(mask, root) if mask else None)
        )
    return records


def _defect_types(root: Path, anno_csv: Path) -> dict[str, str]:
    """Map image relpath -> defect type from ``image_anno.csv``; {} when absent or unusable."""
    if not anno_csv.is_file():
        return {}
    try:
        with anno_csv.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            if not {"image", "label"} <= set(reader.fieldnames or []):
                return {}
            out = {}
            for row in reader:
                image, text = (row.get("image") or "").strip(), (row.get("label") or "").strip()
                if not image or not text or text.lower() == "normal":
                    continue
                out[image.replace("\\", "/")] = defect_slug(text)
            return out
    except (OSError, UnicodeDecodeError, csv.Error):
        return {}


def defect_slug(text: str) -> str:
    """Defect type from VisA's free-text label: one defect -> its slug, several -> ``combined``."""
    parts = [p for p in (re.sub(r"[^a-z0-9]+", "_", t.lower()).strip("_") for t in text.split(",")) if p]
    if not parts:
        return DEFAULT_DEFECT
    return parts[0] if len(set(parts)) == 1 else "combined"
