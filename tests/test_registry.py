"""The shared registry: lazy built-ins, unknown names, typed settings with renamed keys."""

from __future__ import annotations

import warnings

import pytest

from anoaug.errors import AnoaugError, SpecError
from anoaug.registry import Registry, Settings, validate_settings


class _ToySettings(Settings):
    steps: int = 3
    rate: float = 0.5


def test_register_get_names() -> None:
    reg: Registry[object] = Registry("widget", [])

    @reg.register
    class Toy:
        name = "toy"

    assert reg.get("toy") is Toy
    assert reg.names() == ["toy"]
    assert "toy" in reg and "nope" not in reg
    with pytest.raises(AnoaugError, match="unknown widget 'nope'; available: toy"):
        reg.get("nope")


def test_register_needs_a_name() -> None:
    reg: Registry[object] = Registry("widget", [])
    with pytest.raises(TypeError):
        reg.register(type("Nameless", (), {}))


def test_settings_unknown_key_names_key_and_file() -> None:
    with pytest.raises(SpecError) as err:
        validate_settings(_ToySettings, {"stepz": 4}, "widget toy", "pipelines/x.yaml")
    text = str(err.value)
    assert "stepz" in text and "pipelines/x.yaml" in text and "known: rate, steps" in text


def test_settings_bad_type() -> None:
    with pytest.raises(SpecError, match="steps"):
        validate_settings(_ToySettings, {"steps": "many"}, "widget toy")


def test_renamed_keys_load_with_a_warning() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s = validate_settings(_ToySettings, {"n": 7}, "widget toy", renamed={"n": "steps"})
    assert s.steps == 7
    assert any(issubclass(w.category, DeprecationWarning) and "'n'" in str(w.message) for w in caught)


def test_plugins_env_imports_modules_and_names_a_missing_one(
    tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "anoaug_toy_plugin.py").write_text(
        "from anoaug.registry import Registry\nREG = Registry('widget', [])\n\n\n"
        "@REG.register\nclass Toy:\n    name = 'from-plugin'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("ANOAUG_PLUGINS", "anoaug_toy_plugin")
    import importlib

    reg = importlib.import_module("anoaug_toy_plugin").REG
    assert reg.names() == ["from-plugin"]
    monkeypatch.setenv("ANOAUG_PLUGINS", "anoaug_toy_plugin, no_such_plugin_module")
    with pytest.raises(AnoaugError, match="no_such_plugin_module"):
        reg.names()
