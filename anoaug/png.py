"""PNG encoding and decoding of images and masks (OpenCV), the one place every stage writes them through.

Arrays are RGB (H, W, 3) uint8 images or (H, W) uint8/bool masks; bool masks are stored as 0/255.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from anoaug.atomic import atomic_write_bytes
from anoaug.errors import AnoaugError


def encode_png(array: np.ndarray, compression: int | None = None) -> bytes:
    """PNG bytes of an RGB image or a grey/bool mask. ``compression`` 0-9 (None: OpenCV's default)."""
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    params = [] if compression is None else [cv2.IMWRITE_PNG_COMPRESSION, compression]
    ok, buf = cv2.imencode(".png", array, params)
    if not ok:  # pragma: no cover
        raise AnoaugError(f"PNG encoding failed for an array of shape {array.shape}")
    return buf.tobytes()


def write_png(path: str | Path, array: np.ndarray, compression: int | None = None) -> None:
    """Encode ``array`` (see ``encode_png``) and write it to ``path`` atomically, creating its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, encode_png(array, compression))


def decode_image(data: bytes, what: str = "image") -> np.ndarray:
    """(H, W, 3) RGB uint8 from PNG (or any OpenCV-readable) bytes; ``what`` names it in the error."""
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if arr is None:
        raise AnoaugError(f"cannot decode {what}")
    return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)


def decode_mask(data: bytes, what: str = "mask", threshold: int = 128) -> np.ndarray:
    """(H, W) bool from PNG bytes of a grey mask (``value >= threshold``)."""
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if arr is None:
        raise AnoaugError(f"cannot decode {what}")
    return arr >= threshold
