"""Errors that the CLI turns into one clear line and a non-zero exit."""

from __future__ import annotations

from pathlib import Path


class AnoaugError(Exception):
    """Base of every error a user can cause with bad input; never shown as a traceback."""

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.message = message
        self.path = Path(path) if path is not None else None
        super().__init__(self.__str__())

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path is not None else self.message


class DatasetError(AnoaugError):
    """The input dataset is missing, malformed or has an unknown layout."""


class SpecError(AnoaugError):
    """A pipeline spec is missing or invalid."""


class ManifestError(AnoaugError):
    """A manifest does not match the files it describes."""
