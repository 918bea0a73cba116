"""Plain-JSON views of values (numpy scalars and arrays, paths, pydantic models), used wherever lineage,
fingerprints or records are written as JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel


def to_jsonable(value: Any, unknown: str = "keep") -> Any:
    """``value`` with numpy scalars/arrays as Python numbers/lists, paths as POSIX strings, pydantic
    models dumped, mappings keyed by str. Anything else is kept as is (``unknown="keep"``, for
    ``json.dumps`` to judge) or replaced by its ``repr`` (``unknown="repr"``, for stable fingerprints)."""
    if isinstance(value, BaseModel):
        return to_jsonable(value.model_dump(mode="json"), unknown)
    if isinstance(value, dict):
        return {str(k): to_jsonable(v, unknown) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v, unknown) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return value.as_posix()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value) if unknown == "repr" else value
