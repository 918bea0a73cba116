"""Dataset layouts (MVTec AD, VisA, plain folders) and detection of which one a root uses.

Detection looks at the immediate sub-folders of the root: a ``<category>/train/`` or
``<category>/test/`` folder means MVTec AD; ``<category>/Data/Images/`` or ``split_csv/1cls.csv`` means
VisA; ``<category>/normal/`` or ``<category>/defect/`` means the plain folder layout. They are tried in
that order.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from anoaug.data.formats import folder, mvtec, visa
from anoaug.data.records import CategoryData
from anoaug.errors import DatasetError
from anoaug.outputs import check_name

FORMATS: dict[str, ModuleType] = {"mvtec": mvtec, "visa": visa, "folder": folder}
FORMAT_NAMES: tuple[str, ...] = ("auto", *FORMATS)

UNKNOWN_LAYOUT = (
    "unknown layout: expected MVTec AD (<category>/train/good/, <category>/test/<defect>/), "
    "VisA (<category>/Data/Images/Normal/ or split_csv/1cls.csv) "
    "or folder (<category>/normal/, <category>/defect/<type>/, <category>/mask/<type>/)"
)


def detect_format(root: str | Path) -> str:
    """``"mvtec"``, ``"visa"`` or ``"folder"``; DatasetError when the root is missing or matches none."""
    root = Path(root)
    if not root.exists():
        raise DatasetError("dataset root does not exist", root)
    if not root.is_dir():
        raise DatasetError("dataset root is not a directory", root)
    children = [d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")]
    if any(mvtec.is_category_dir(d) for d in children):
        return "mvtec"
    if (root / visa.SPLIT_CSV).is_file() or any(visa.is_category_dir(d) for d in children):
        return "visa"
    if any(folder.is_category_dir(d) for d in children):
        return "folder"
    for name, module in FORMATS.items():
        if module.is_category_dir(root):
            raise DatasetError(
                f"this looks like a single {name} category; pass its parent folder as the root "
                f"(and --category {root.resolve().name})",
                root,
            )
    raise DatasetError(UNKNOWN_LAYOUT, root)


def resolve_format(root: str | Path, format: str = "auto") -> str:
    """The layout name to use: ``format`` itself, or the detected one for ``"auto"``."""
    if format not in FORMAT_NAMES:
        raise DatasetError(f"unknown format {format!r}; choose one of {', '.join(FORMAT_NAMES)}")
    if format == "auto":
        return detect_format(root)
    root = Path(root)
    if not root.is_dir():
        raise DatasetError("dataset root does not exist" if not root.exists() else "not a directory", root)
    return format


def list_categories(root: str | Path, format: str = "auto") -> list[str]:
    """Category names of the dataset at ``root``, sorted."""
    return FORMATS[resolve_format(root, format)].list_categories(root)


def read_category(root: str | Path, category: str, format: str = "auto") -> CategoryData:
    """All records of one category of the dataset at ``root`` (``category`` must be a plain folder name)."""
    check_name(category, "category")
    return FORMATS[resolve_format(root, format)].read_category(root, category)


def list_mask_files(root: str | Path, category: str, format: str = "auto") -> list[str]:
    """Relpaths of every mask file the layout keeps for ``category`` (referenced or not)."""
    return FORMATS[resolve_format(root, format)].list_mask_files(root, category)


__all__ = [
    "FORMATS",
    "FORMAT_NAMES",
    "detect_format",
    "list_categories",
    "list_mask_files",
    "read_category",
    "resolve_format",
]
