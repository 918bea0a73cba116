"""MVTec AD layout.

::

    <root>/<category>/train/good/*.png
    <root>/<category>/test/good/*.png
    <root>/<category>/test/<defect>/*.png
    <root>/<category>/ground_truth/<defect>/<stem>_mask.png

Every sub-folder of ``train/`` and ``test/`` is a label (``good`` or a defect type); its images keep the
split they were found in. A defect image's mask is ``ground_truth/<defect>/<stem>_mask.<ext>`` or, failing
that, ``ground_truth/<defect>/<stem>.<ext>`` (any accepted image extension). Record paths are relative
to ``<root>`` and so start with ``<category>/``. Everything is sorted for determinism.
"""

from __future__ import annotations

from pathlib import Path

from anoaug.data.formats._common import MaskIndex, all_images_below, relpath, require_dir, subdirs
from anoaug.data.io import list_images
from anoaug.data.records import GOOD, CategoryData, ImageRecord
from anoaug.errors import DatasetError

NAME = "mvtec"
SPLITS = ("train", "test")


def is_category_dir(path: Path) -> bool:
    """True when ``path`` looks like one MVTec AD category (has ``train/`` or ``test/``)."""
    return any((path / split).is_dir() for split in SPLITS)


def list_categories(root: str | Path) -> list[str]:
    """Names of the category folders of an MVTec AD root, sorted."""
    root = require_dir(Path(root), "dataset root")
    return [d.name for d in subdirs(root) if is_category_dir(d)]


def read_category(root: str | Path, category: str) -> CategoryData:
    """All images of one category; defect images carry their mask path when one exists."""
    root = require_dir(Path(root), "dataset root")
    cat_dir = root / category
    if not cat_dir.is_dir():
        raise DatasetError(f"category {category!r} not found", cat_dir)
    records: list[ImageRecord] = []
    for split in SPLITS:
        for label_dir in subdirs(cat_dir / split):
            label = label_dir.name
            masks = MaskIndex(cat_dir / "ground_truth" / label) if label != GOOD else None
            for img in list_images(label_dir):
                mask = masks.find(img.stem) if masks is not None else None
                records.append(
                    ImageRecord(
                        relpath=relpath(img, root),
                        label=label,
                        source_split=split,
                        mask_relpath=relpath(mask, root) if mask is not None else None,
                    )
                )
    return CategoryData(dataset=NAME, root=root, category=category, records=records)


def list_mask_files(root: str | Path, category: str) -> list[str]:
    """Relpaths of every mask file of the category (to find masks that belong to no image)."""
    root = Path(root)
    return [relpath(p, root) for p in all_images_below(root / category / "ground_truth")]
