"""Typed in-memory records every dataset layout is read into."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

GOOD = "good"


@dataclass(frozen=True)
class ImageRecord:
    """One image of a category, its label and (for defects) its pixel mask.

    Paths are relative to the dataset root so that a manifest stays valid when
    the dataset is moved.
    """

    relpath: str
    label: str  # "good" or the defect type
    source_split: str  # "train" or "test": where the layout put it
    mask_relpath: str | None = None

    @property
    def is_defect(self) -> bool:
        return self.label != GOOD


@dataclass
class CategoryData:
    """All images of one category of one dataset."""

    dataset: str  # layout / dataset name: "mvtec", "visa", "folder", "demo"
    root: Path  # dataset root; record paths are relative to it
    category: str
    records: list[ImageRecord] = field(default_factory=list)

    def path(self, relpath: str) -> Path:
        return self.root / relpath

    @property
    def normal_train(self) -> list[ImageRecord]:
        return [r for r in self.records if not r.is_defect and r.source_split == "train"]

    @property
    def normal_test(self) -> list[ImageRecord]:
        return [r for r in self.records if not r.is_defect and r.source_split == "test"]

    @property
    def defects(self) -> list[ImageRecord]:
        return [r for r in self.records if r.is_defect]

    @property
    def defect_types(self) -> list[str]:
        return sorted({r.label for r in self.records if r.is_defect})
