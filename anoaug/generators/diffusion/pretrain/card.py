"""`model_card.json` of a pretrained base model: what it was trained on, how long, and how good it is.

Written last (atomically) by the export, so a folder with a card holds a complete model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from anoaug.atomic import atomic_write_text
from anoaug.generators.base import GeneratorError

CARD = "model_card.json"
KIND = "anoaug-pretrained-sd"
FORMAT_VERSION = 1


def thin(values: list[float], points: int = 100) -> list[float]:
    """At most `points` means of consecutive runs of `values` (a loss curve small enough for a card)."""
    if len(values) <= points:
        return [round(float(v), 6) for v in values]
    edges = [round(i * len(values) / points) for i in range(points + 1)]
    return [round(sum(values[a:b]) / max(1, b - a), 6) for a, b in zip(edges[:-1], edges[1:], strict=True)]


def write_card(folder: Path, card: dict[str, Any]) -> Path:
    """Write `card` (with kind and format version) as `folder/model_card.json`."""
    path = Path(folder) / CARD
    atomic_write_text(path, json.dumps({"kind": KIND, "format_version": FORMAT_VERSION, **card}, indent=2) + "\n")
    return path


def read_card(folder: str | Path) -> dict[str, Any]:
    """The model card of a pretrained base model folder; GeneratorError if it is missing or not one."""
    path = Path(folder) / CARD
    if not path.is_file():
        raise GeneratorError(f"no {CARD}: not a complete anoaug pretrained model (rerun `anoaug pretrain`)", folder)
    try:
        card = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise GeneratorError(f"{CARD} is not valid JSON: {exc}", path) from None
    if not isinstance(card, dict) or card.get("kind") != KIND:
        raise GeneratorError(f"{CARD} is not an anoaug pretrained-model card", path)
    return card
