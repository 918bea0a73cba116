"""The input guard every command that reads a dataset runs before it writes anything.

It applies the checks of ``anoaug validate`` (:mod:`anoaug.data.validation`: one set of checks, not a
copy) to the files of the category the command will use: decodable, a supported mode (16-bit colour
included), within Pillow's size limit, and for each defect a mask that exists, has its image's size,
is binary within the tolerance and is not empty; every listed path stays inside the dataset root.
The first problem is raised as a ``DatasetError`` naming its file (the CLI prints it as one line, exit 2),
with how many more there are and the `validate` command that lists them all.
"""

from __future__ import annotations

from collections.abc import Iterable

from anoaug.data.records import CategoryData, ImageRecord
from anoaug.data.validation import DEFAULT_MASK_TOLERANCE, Problem, check_record, check_structure
from anoaug.errors import DatasetError
from anoaug.outputs import check_relpath


def category_problems(
    data: CategoryData,
    mask_tolerance: int = DEFAULT_MASK_TOLERANCE,
    records: Iterable[ImageRecord] | None = None,
) -> list[Problem]:
    """Every error (no warnings) of the category's structure and of ``records`` (default: all of them)."""
    if not 0 <= mask_tolerance <= 127:
        raise DatasetError(f"mask tolerance must be in 0..127, got {mask_tolerance}")
    problems = [p for p in check_structure(data) if p.is_error]
    for record in data.records if records is None else records:
        for rel in (record.relpath, record.mask_relpath):
            if rel is not None:
                check_relpath(rel, data.root / data.category, "listed file")
        problems += [p for p in check_record(data, record, mask_tolerance) if p.is_error]
    return problems


def guard_category(
    data: CategoryData,
    mask_tolerance: int = DEFAULT_MASK_TOLERANCE,
    records: Iterable[ImageRecord] | None = None,
) -> CategoryData:
    """``data`` unchanged when its files are usable, else DatasetError naming the first bad file."""
    problems = category_problems(data, mask_tolerance, records)
    if problems:
        first = problems[0]
        more = f" (+{len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        hint = f"; `anoaug validate {data.root} -c {data.category}` lists every problem"
        raise DatasetError(first.message + more + hint, first.path)
    return data
