"""The device choice: auto = CUDA when available, else CPU; explicit choices checked (no GPU needed)."""

from __future__ import annotations

import pytest
import torch

from anoaug.device import lightning_accelerator, resolve_device
from anoaug.errors import AnoaugError


def test_auto_is_cpu_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto").type == "cpu"
    assert lightning_accelerator("auto") == ("cpu", 1)


def test_auto_is_cuda_when_available(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda")
    assert lightning_accelerator("auto") == ("gpu", [0])
    assert lightning_accelerator("cuda:1") == ("gpu", [1])


def test_cuda_requested_without_cuda_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(AnoaugError, match="CUDA is not available"):
        resolve_device("cuda")


def test_cuda_index_out_of_range(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(AnoaugError, match="only 1 CUDA"):
        resolve_device("cuda:3")


@pytest.mark.parametrize("bad", ["gpu0", "tpu", "cuda:x"])
def test_unknown_device_names(bad: str) -> None:
    with pytest.raises(AnoaugError, match="device"):
        resolve_device(bad)


def test_cpu_always_works() -> None:
    assert resolve_device("CPU").type == "cpu"
