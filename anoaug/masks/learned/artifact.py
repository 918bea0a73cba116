"""The cache of learned mask embeddings and of the masks sampled from them.

Layout (under ``cache_root(settings)``)::

    <training key>/manifest.json          base model identity, tokens, prompts, frame sizes, training record
    <training key>/embeddings.safetensors the learned token rows (anoaug textual-inversion format)
    <training key>/pool-<sampling key>/pool.json            per type: drawn, accepted, rejections, files
    <training key>/pool-<sampling key>/<type>/<j>.png       accepted masks, 0/255, at the real masks' frame

The training key hashes the base model's identity (component configs and weight fingerprints, not its
path), the content of the training masks, the training settings and the seed; the sampling key adds the
sampling settings. Both folders are written into a temporary folder and renamed into place, so a reader
never sees half an artifact and two writers racing keep one complete copy.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from anoaug.masks import MaskError
from anoaug.masks.learned.settings import LearnedMasksSettings
from anoaug.pipeline.fingerprint import fingerprint

FORMAT = "anoaug-learned-masks"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
EMBEDDINGS = "embeddings.safetensors"
POOL = "pool.json"
CACHE_ENV = "ANOAUG_CACHE_DIR"


def cache_root(settings: LearnedMasksSettings) -> Path:
    """``cache_dir``, else $ANOAUG_CACHE_DIR, else $XDG_CACHE_HOME/anoaug, else ~/.cache/anoaug; + masks-learned."""
    if settings.cache_dir:
        base = Path(settings.cache_dir).expanduser()
    elif os.environ.get(CACHE_ENV):
        base = Path(os.environ[CACHE_ENV]).expanduser()
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "anoaug"
    return base / "masks-learned"


def training_key(
    identity: dict[str, Any], masks: list[tuple[str, str]], settings: LearnedMasksSettings, seed: int
) -> str:
    """Key of the learned embeddings: model components, (type, mask sha256) pairs, training settings, seed."""
    parts = (identity.get("components", {}), sorted(masks), settings.training_key(), seed)
    return fingerprint(FORMAT, FORMAT_VERSION, *parts)


def sampling_key(settings: LearnedMasksSettings, seed: int) -> str:
    """Key of the sampled pool, within one training key."""
    return fingerprint(FORMAT, "pool", settings.sampling_key(), seed)


def write_dir(target: Path, fill: Callable[[Path], None]) -> Path:
    """Fill a temporary folder next to ``target`` and rename it onto ``target`` (kept if already there)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        fill(tmp)
        try:
            os.replace(tmp, target)
        except OSError:
            if not target.is_dir():  # not a lost race with another writer of the same content
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def read_json(path: Path, what: str) -> dict[str, Any] | None:
    """The JSON object at ``path``, None when absent; MaskError naming the file when it is unreadable."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise MaskError(f"cannot read the learned-masks {what}: {exc}; delete the folder to rebuild it", path) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise MaskError(f"not a learned-masks {what} (format is not {FORMAT!r})", path)
    return data


def write_json(path: Path, data: dict[str, Any]) -> None:
    """``data`` (with the format marker) as indented JSON."""
    path.write_text(json.dumps({"format": FORMAT, **data}, indent=2, sort_keys=True) + "\n")
