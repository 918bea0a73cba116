"""Small helpers shared by the layout readers."""

from __future__ import annotations

from pathlib import Path

from anoaug.data.io import IMAGE_EXTENSIONS, list_images
from anoaug.errors import DatasetError


def relpath(path: Path, root: Path) -> str:
    """``path`` relative to ``root``, with forward slashes (stable across platforms)."""
    return path.relative_to(root).as_posix()


def require_dir(path: Path, what: str) -> Path:
    """Return ``path`` if it is a directory, else raise DatasetError naming it."""
    if not path.exists():
        raise DatasetError(f"{what} does not exist", path)
    if not path.is_dir():
        raise DatasetError(f"{what} is not a directory", path)
    return path


def subdirs(path: Path) -> list[Path]:
    """Visible sub-directories of ``path``, sorted by name; [] when it is not a directory."""
    if not path.is_dir():
        return []
    return sorted(
        (p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name
    )


class MaskIndex:
    """Masks of one directory indexed by file stem, to find a defect image's mask in O(1)."""

    def __init__(self, mask_dir: Path) -> None:
        self.mask_dir = mask_dir
        self._by_stem: dict[str, Path] = {}
        for p in list_images(mask_dir):  # sorted: the first name wins a tie (x.png before x.tif)
            self._by_stem.setdefault(p.stem, p)

    def find(self, stem: str, suffixes: tuple[str, ...] = ("_mask", "")) -> Path | None:
        """First existing ``<stem><suffix>.<any image ext>``, trying ``suffixes`` in order."""
        for suffix in suffixes:
            found = self._by_stem.get(stem + suffix)
            if found is not None:
                return found
        return None


def all_images_below(path: Path) -> list[Path]:
    """Every image file anywhere below ``path`` (hidden folders skipped), sorted."""
    if not path.is_dir():
        return []
    out = [
        p
        for p in path.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
    ]
    return sorted(out)
