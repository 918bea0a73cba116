"""Plain folder layout, for your own photos.

Root convention (what ``anoaug validate ROOT`` and ``--format folder`` read)::

    <root>/<category>/normal/*              normal images -> train split
    <root>/<category>/test_normal/*         optional: normal images held out -> test split
    <root>/<category>/defect/<type>/*       defect images; the folder name is the defect type
    <root>/<category>/mask/<type>/*         their masks: same stem, or stem + "_mask" (any image extension)

Images placed directly in ``defect/`` (not in a type folder) get the type ``defect`` and their masks are
looked up directly in ``mask/``. Defect images are put in the ``test`` split (that is where a reader of
MVTec AD would expect them). Accepted extensions: .png .jpg .jpeg .bmp .tif .tiff (any case).

For folders that follow no convention, call :func:`read_folder` with the directories themselves.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from anoaug.data.formats._common import MaskIndex, all_images_below, relpath, require_dir, subdirs
from anoaug.data.io import list_images
from anoaug.data.records import GOOD, CategoryData, ImageRecord
from anoaug.errors import DatasetError

NAME = "folder"
NORMAL, TEST_NORMAL, DEFECT, MASK = "normal", "test_normal", "defect", "mask"


def is_category_dir(path: Path) -> bool:
    """True when ``path`` looks like one folder-layout category (has ``normal/`` or ``defect/``)."""
    return (path / NORMAL).is_dir() or (path / DEFECT).is_dir()


def list_categories(root: str | Path) -> list[str]:
    """Names of the category folders under ``root``, sorted."""
    root = require_dir(Path(root), "dataset root")
    return [d.name for d in subdirs(root) if is_category_dir(d)]


def read_folder(
    normal_dir: str | Path,
    defect_dirs: Sequence[str | Path],
    mask_dir_root_or_map: str | Path | Mapping[str, str | Path] | None,
    category: str,
    test_normal_dir: str | Path | None = None,
    root: str | Path | None = None,
) -> CategoryData:
    """Read arbitrary folders into a category.

    ``defect_dirs``: one folder per defect type, named after it. ``mask_dir_root_or_map``: either a folder
    holding one mask folder per defect type (``<masks>/<type>/``; when that folder does not exist the
    masks are looked up directly in ``<masks>/``), or a mapping defect type -> mask folder, or None (no
    masks). A mask matches an image by stem, or by stem + ``_mask``. Record paths are relative to
    ``root``, by default the deepest folder containing all the given folders.
    """
    normal = require_dir(Path(normal_dir), "normal image folder").resolve()
    defects = [require_dir(Path(d), "defect image folder").resolve() for d in defect_dirs]
    test_normal = (
        require_dir(Path(test_normal_dir), "test normal folder").resolve() if test_normal_dir else None
    )
    mask_dirs = {
        k: (v.resolve() if v is not None else None)
        for k, v in _mask_dirs(defects, mask_dir_root_or_map).items()
    }
    given = [normal, *defects, *(m for m in mask_dirs.values() if m is not None)]
    if test_normal is not None:
        given.append(test_normal)
    if root is None:
        root = Path(os.path.commonpath(given))
        if root in given:  # keep the folder's own name in every relpath
            root = root.parent
    else:
        root = Path(root).resolve()
        outside = [str(p) for p in given if not p.is_relative_to(root)]
        if outside:
            raise DatasetError(f"folders outside the given root: {', '.join(outside)}", root)
    groups = [(d.name, d, mask_dirs[d.name]) for d in defects]
    return _collect(root, category, normal, test_normal, groups)


def read_category(root: str | Path, category: str) -> CategoryData:
    """Read ``<root>/<category>`` following the root convention of the module docstring."""
    root = require_dir(Path(root), "dataset root")
    cat_dir = root / category
    if not cat_dir.is_dir():
        raise DatasetError(f"category {category!r} not found", cat_dir)
    defect_root = cat_dir / DEFECT
    defect_dirs = subdirs(defect_root)
    if list_images(defect_root):  # loose images in defect/ itself: type "defect", masks in mask/
        defect_dirs.append(defect_root)
    groups = []
    for d in defect_dirs:
        mdir = cat_dir / MASK / d.name
        groups.append((d.name, d, mdir if mdir.is_dir() else cat_dir / MASK))
    return _collect(root, category, cat_dir / NORMAL, cat_dir / TEST_NORMAL, groups)


def list_mask_files(root: str | Path, category: str) -> list[str]:
    """Relpaths of every mask file of the category (to find masks that belong to no image)."""
    root = Path(root)
    return [relpath(p, root) for p in all_images_below(root / category / MASK)]


def _collect(
    root: Path,
    category: str,
    normal: Path,
    test_normal: Path | None,
    groups: list[tuple[str, Path, Path | None]],
) -> CategoryData:
    """Records of normal (train), held-out normal (test) and (label, image dir, mask dir) groups."""
    records = [ImageRecord(relpath(p, root), GOOD, "train") for p in list_images(normal)]
    if test_normal is not None:
        records += [ImageRecord(relpath(p, root), GOOD, "test") for p in list_images(test_normal)]
    for label, image_dir, mask_dir in groups:
        masks = MaskIndex(mask_dir) if mask_dir is not None else None
        for img in list_images(image_dir):
            mask = masks.find(img.stem, suffixes=("", "_mask")) if masks is not None else None
            records.append(
                ImageRecord(relpath(img, root), label, "test", relpath(mask, root) if mask else None)
            )
    return CategoryData(dataset=NAME, root=root, category=category, records=records)


def _mask_dirs(
    defects: list[Path], spec: str | Path | Mapping[str, str | Path] | None
) -> dict[str, Path | None]:
    names = [d.name for d in defects]
    if len(set(names)) != len(names):
        raise DatasetError(f"two defect folders share a name (the defect type): {sorted(names)}")
    if spec is None:
        return dict.fromkeys(names)
    if isinstance(spec, Mapping):
        unknown = sorted(set(spec) - set(names))
        if unknown:
            raise DatasetError(f"mask folders given for unknown defect type(s) {unknown}; types: {names}")
        return {n: (require_dir(Path(spec[n]), "mask folder") if n in spec else None) for n in names}
    base = require_dir(Path(spec), "mask folder")
    return {n: (base / n if (base / n).is_dir() else base) for n in names}
