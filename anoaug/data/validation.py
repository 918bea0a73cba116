"""Dataset checks run before anything else touches the data: every problem, each naming its file.

Errors (the dataset cannot be used as is):

* dataset root or category missing, unknown layout, no category, malformed split CSV;
* a category without images, or without normal training images;
* an image that cannot be read or decoded, or has an unusable mode (see :mod:`anoaug.data.io`: RGB, grey,
  bilevel, palette and fully opaque RGBA are accepted; transparent RGBA, CMYK and 16/32-bit are not);
* a defect image without a mask; a mask that cannot be read, differs in size from its image, is not
  binary, or is empty.

A mask is binary when every pixel is within ``mask_threshold`` grey levels of 0 or of 255 (default
:data:`DEFAULT_MASK_TOLERANCE` = 10), which lets JPEG-compressed masks through; they are binarised at 128
when read (:func:`anoaug.data.io.load_mask`). Pass ``mask_threshold=127`` to accept any grey mask as is
(every value is then within 127 of 0 or 255, and it is binarised at 128).

Warnings (reported, but the dataset is usable): a mask file that belongs to no image (orphan).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from anoaug.data import formats
from anoaug.data.io import (
    DEFAULT_MASK_THRESHOLD,
    image_mode_problem,
    mask_mode_problem,
    open_image,
    to_gray_array,
)
from anoaug.data.records import GOOD, CategoryData, ImageRecord
from anoaug.errors import DatasetError

DEFAULT_MASK_TOLERANCE = 10
Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset; ``str()`` gives ``"<path>: <message>"`` (warnings say so)."""

    path: Path
    message: str
    severity: Severity = "error"

    def __str__(self) -> str:
        prefix = "warning: " if self.severity == "warning" else ""
        return f"{self.path}: {prefix}{self.message}"

    @property
    def is_error(self) -> bool:
        return self.severity == "error"


def validate_dataset(
    root: str | Path,
    category: str | None = None,
    format: str = "auto",
    mask_threshold: int = DEFAULT_MASK_TOLERANCE,
) -> list[Problem]:
    """Check a whole dataset (or one ``category``) and return every problem found; [] when it is clean.

    ``mask_threshold`` is the tolerance of the binary-mask check (see the module docstring). Never raises
    for bad data: a missing root or an unknown layout is returned as a single problem.
    """
    if not 0 <= mask_threshold <= 127:
        raise ValueError(f"mask_threshold must be in 0..127, got {mask_threshold}")
    root = Path(root)
    try:
        fmt = formats.resolve_format(root, format)
        categories = [category] if category is not None else formats.list_categories(root, fmt)
    except DatasetError as exc:
        return [_from_error(exc, root)]
    if not categories:
        return [Problem(root, f"no categories found ({fmt} layout)")]
    problems: list[Problem] = []
    for name in categories:
        problems += validate_category(root, name, fmt, mask_threshold)
    return problems


def validate_category(
    root: str | Path, category: str, format: str = "auto", mask_threshold: int = DEFAULT_MASK_TOLERANCE
) -> list[Problem]:
    """Check one category: its structure, then every image and mask."""
    root = Path(root)
    try:
        fmt = formats.resolve_format(root, format)
        data = formats.read_category(root, category, fmt)
    except DatasetError as exc:
        return [_from_error(exc, root / category)]
    problems = check_structure(data)
    for record in data.records:
        problems += check_record(data, record, mask_threshold)
    referenced = {r.mask_relpath for r in data.records if r.mask_relpath}
    for mask in formats.list_mask_files(root, category, fmt):
        if mask not in referenced:
            problems.append(Problem(root / mask, "mask belongs to no image (orphan); ignored", "warning"))
    return problems


def check_structure(data: CategoryData) -> list[Problem]:
    """Category-level problems: no images at all, or no normal training images."""
    where = data.root / data.category
    if not data.records:
        return [Problem(where, f"category has no images ({data.dataset} layout)")]
    if not data.normal_train:
        return [Problem(where, "category has no normal training images (train/good)")]
    return []


def check_record(data: CategoryData, record: ImageRecord, mask_threshold: int) -> list[Problem]:
    """Problems of one image and, for a defect, of its mask."""
    path = data.path(record.relpath)
    try:
        img = open_image(path)
    except DatasetError as exc:
        return [_from_error(exc, path)]
    size = img.size
    mode_problem = image_mode_problem(img)
    problems = [Problem(path, mode_problem)] if mode_problem else []
    if not record.is_defect:
        return problems
    if record.mask_relpath is None:
        return [*problems, Problem(path, f"defect image ({record.label}) has no mask")]
    return problems + check_mask(data.path(record.mask_relpath), size, mask_threshold)


def check_mask(path: Path, image_size: tuple[int, int], mask_threshold: int) -> list[Problem]:
    """Problems of one mask: unreadable, wrong size, not binary, empty."""
    try:
        img = open_image(path)
    except DatasetError as exc:
        return [_from_error(exc, path)]
    mode_problem = mask_mode_problem(img)
    if mode_problem:
        return [Problem(path, mode_problem)]
    if img.size != image_size:
        (w, h), (iw, ih) = img.size, image_size
        return [Problem(path, f"mask is {w}x{h} but its image is {iw}x{ih}")]
    gray = to_gray_array(img)
    problems = []
    grey = (gray > mask_threshold) & (gray < 255 - mask_threshold)
    if grey.any():
        levels = np.unique(gray[grey])
        problems.append(
            Problem(
                path,
                f"mask is not binary: {len(levels)} grey level(s) between {mask_threshold + 1} and "
                f"{254 - mask_threshold} ({int(grey.sum())} pixels); save it as 0/255 "
                f"or raise --mask-tolerance (it is binarised at {DEFAULT_MASK_THRESHOLD})",
            )
        )
    if not (gray >= DEFAULT_MASK_THRESHOLD).any():
        top = int(gray.max())
        hint = f"; its values go up to {top}: 0/1 masks must be saved as 0/255" if top > 0 else ""
        problems.append(Problem(path, f"mask is empty (no pixel >= {DEFAULT_MASK_THRESHOLD}){hint}"))
    return problems


def summarize(data: CategoryData) -> dict[str, int]:
    """Counts for a one-line summary: ``train good``, ``test good``, then one entry per defect type."""
    counts: dict[str, int] = {"train good": len(data.normal_train), "test good": len(data.normal_test)}
    defects = Counter(r.label for r in data.records if r.label != GOOD)
    counts.update({label: defects[label] for label in sorted(defects)})
    return counts


def _from_error(exc: DatasetError, default_path: Path) -> Problem:
    return Problem(exc.path if exc.path is not None else default_path, exc.message)
