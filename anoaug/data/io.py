"""Reading images and masks from disk, with errors that name the file.

Accepted image modes (anything else is rejected with a reason, never silently mangled):

* ``RGB`` as is; ``L`` (grey), ``1`` (bilevel) and ``P`` (palette) are converted to RGB;
* ``RGBA`` / ``LA`` / ``PA`` only when the alpha channel is fully opaque (it is then dropped);
* ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``, 16-bit (``I;16*``) and 32-bit (``I``, ``F``) images are rejected:
  convert them to 8-bit RGB first. So are 16-bit-per-channel colour files (48/64 bpp PNG or TIFF), which
  Pillow would silently cut to 8 bits while reporting mode ``RGB``/``RGBA``: :func:`open_image` records
  the file's raw mode (``info["anoaug.rawmode"]``) so the mode checks see the real depth.

Masks are read as 8-bit grey (``1``, ``L``, ``P``, ``RGB`` are converted; an alpha channel is ignored;
16/32-bit masks are rejected) and binarised with ``value >= threshold`` (default 128).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from anoaug.errors import DatasetError

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
DEFAULT_MASK_THRESHOLD = 128

_CONVERTIBLE_MODES = {"RGB", "L", "1", "P"}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_HIGH_DEPTH_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}
_MASK_MODES = {"1", "L", "P", "RGB", "RGBA", "LA", "PA"}
RAWMODE_KEY = "anoaug.rawmode"  # info key: the decoder's raw mode when it had more than 8 bits per channel


def is_image_file(path: Path) -> bool:
    """True for a visible regular file with an accepted image extension (case-insensitive)."""
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def list_images(directory: Path) -> list[Path]:
    """Image files directly inside ``directory``, sorted by name; [] when it does not exist."""
    if not directory.is_dir():
        return []
    return sorted((p for p in directory.iterdir() if is_image_file(p)), key=lambda p: p.name)


def open_image(path: str | Path) -> Image.Image:
    """Open and fully decode an image file; raise DatasetError naming it when it cannot be read."""
    path = Path(path)
    if not path.exists():
        raise DatasetError("file does not exist", path)
    if not path.is_file():
        raise DatasetError("not a file", path)
    try:
        with Image.open(path) as img:
            raw = _deep_rawmode(img)
            img.load()
            out = img.copy() if img.mode != "P" else img.convert("RGBA" if _has_transparency(img) else "RGB")
            if raw is not None:
                out.info[RAWMODE_KEY] = raw
            return out
    except Image.DecompressionBombError as exc:
        raise DatasetError(f"image is too large to read safely ({exc})", path) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"cannot read image ({_reason(exc, path)})", path) from None


def image_mode_problem(img: Image.Image) -> str | None:
    """Why ``img`` cannot be used as an RGB image, or None when it can (see the module docstring)."""
    mode = img.mode
    deep = img.info.get(RAWMODE_KEY)
    if deep:
        return f"16-bit colour images (raw mode {deep}) are not supported; convert it to 8-bit RGB"
    if mode in _CONVERTIBLE_MODES:
        return None
    if mode in _ALPHA_MODES:
        alpha = np.asarray(img.getchannel("A"))
        if alpha.size and int(alpha.min()) < 255:
            return f"image has transparent pixels (mode {mode}); flatten it onto a background as RGB"
        return None
    if mode == "CMYK":
        return "CMYK images are not supported; convert it to RGB"
    if mode in _HIGH_DEPTH_MODES:
        return f"{_depth(mode)} images (mode {mode}) are not supported; convert it to 8-bit RGB or grey"
    return f"unsupported image mode {mode}; convert it to 8-bit RGB"


def mask_mode_problem(img: Image.Image) -> str | None:
    """Why ``img`` cannot be read as an 8-bit mask, or None when it can."""
    deep = img.info.get(RAWMODE_KEY)
    if deep:
        return f"16-bit colour masks (raw mode {deep}) are not supported; save it as 8-bit grey (0/255)"
    if img.mode in _MASK_MODES:
        return None
    if img.mode in _HIGH_DEPTH_MODES:
        return f"{_depth(img.mode)} masks (mode {img.mode}) are not supported; save it as 8-bit grey (0/255)"
    return f"unsupported mask mode {img.mode}; save it as 8-bit grey (0/255)"


def to_rgb_array(img: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 array of an image whose mode passed ``image_mode_problem``."""
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def to_gray_array(img: Image.Image) -> np.ndarray:
    """(H, W) uint8 array of a mask whose mode passed ``mask_mode_problem`` (alpha ignored)."""
    if img.mode in {"RGBA", "PA"}:
        img = img.convert("RGB")
    elif img.mode == "LA":
        img = img.getchannel("L")
    return np.asarray(img.convert("L"), dtype=np.uint8).copy()


def load_image(path: str | Path) -> np.ndarray:
    """Read an image as an (H, W, 3) uint8 RGB array; DatasetError naming the file if unusable."""
    img = open_image(path)
    problem = image_mode_problem(img)
    if problem:
        raise DatasetError(problem, path)
    return to_rgb_array(img)


def load_mask_gray(path: str | Path) -> np.ndarray:
    """Read a mask as an (H, W) uint8 grey array, without binarising it."""
    img = open_image(path)
    problem = mask_mode_problem(img)
    if problem:
        raise DatasetError(problem, path)
    return to_gray_array(img)


def load_mask(path: str | Path, threshold: int = DEFAULT_MASK_THRESHOLD) -> np.ndarray:
    """Read a mask as an (H, W) bool array: True where the grey value is >= ``threshold``."""
    return load_mask_gray(path) >= threshold


def _deep_rawmode(img: Image.Image) -> str | None:
    """The raw mode of a colour file stored with 16 bits per channel (e.g. ``RGB;16B``), read from the
    decoder tile before loading (Pillow reports such files as 8-bit RGB/RGBA), else None."""
    if img.mode not in ("RGB", "RGBA"):
        return None
    for tile in getattr(img, "tile", None) or []:
        args = tile[3] if len(tile) > 3 else None
        raw = args[0] if isinstance(args, tuple) and args else args
        if isinstance(raw, str) and ";16" in raw:
            return raw
    return None


def _has_transparency(img: Image.Image) -> bool:
    return "transparency" in img.info


def _depth(mode: str) -> str:
    return "16-bit" if mode.startswith("I;16") else "32-bit"


def _reason(exc: BaseException, path: Path) -> str:
    """The exception text without the file name (the Problem/DatasetError already names the file)."""
    text = str(exc).replace(repr(str(path)), "").replace(str(path), "").strip(" :")
    return text or type(exc).__name__
