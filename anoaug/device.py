"""Where torch work runs: one ``device`` setting (``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` | ``mps``) for
every trainer and sampler, and its Lightning equivalent. ``auto`` = CUDA when available, else CPU.

Kept torch-import-free until called, so specs and the CLI stay light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from anoaug.errors import AnoaugError

if TYPE_CHECKING:
    import torch

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"


def resolve_device(setting: str = "auto") -> torch.device:
    """The torch device for a ``device`` setting; an unavailable accelerator is an error naming it."""
    import torch

    name = str(setting or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise AnoaugError(f"device must be {DEVICE_CHOICES}, got {setting!r}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise AnoaugError(f"device {setting!r} requested but CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise AnoaugError(f"device {setting!r} requested but only {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise AnoaugError(f"device {setting!r} requested but MPS is not available on this machine")
    elif dev.type != "cpu":
        raise AnoaugError(f"device must be {DEVICE_CHOICES}, got {setting!r}")
    return dev


def lightning_accelerator(setting: str = "auto") -> tuple[str, list[int] | int]:
    """(accelerator, devices) for ``lightning.Trainer`` from a ``device`` setting: ``("gpu", [N])`` on
    CUDA, ``("mps", 1)``, else ``("cpu", 1)``. Resolved here, not by Lightning's own ``auto``, so the
    choice is the same one the generators make and is recorded in the run manifest."""
    dev = resolve_device(setting)
    if dev.type == "cuda":
        return "gpu", [dev.index or 0]
    if dev.type == "mps":
        return "mps", 1
    return "cpu", 1
