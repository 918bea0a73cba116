"""One registry mechanism for every kind of pluggable part (generators, downstream detectors).

A part is a class with a ``name`` class attribute and a ``Settings`` pydantic model (unknown keys are
errors). Built-in parts register on import of their modules; third-party parts register the same way
from any module, or are found through the Python entry-point group ``anoaug.<kind>s`` (for example
``[project.entry-points."anoaug.generators"] my-gen = "my_pkg.my_gen"``: the module is imported and its
``@register`` decorators run).
"""

from __future__ import annotations

import importlib
import os
import warnings
from collections.abc import Callable, Iterable
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from anoaug.errors import AnoaugError, SpecError

T = TypeVar("T")
PLUGINS_ENV = "ANOAUG_PLUGINS"


class Settings(BaseModel):
    """Base of every part's typed settings: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class Registry(Generic[T]):
    """Name -> class for one kind of part, filled lazily from built-in modules and entry points."""

    def __init__(self, kind: str, builtin_modules: Iterable[str], error: type[AnoaugError] = AnoaugError) -> None:
        self.kind = kind
        self.builtin_modules = tuple(builtin_modules)
        self.error = error
        self._classes: dict[str, type[T]] = {}
        self._loaded = False

    def register(self, cls: type[T]) -> type[T]:
        """Class decorator: make ``cls`` selectable by its ``name`` in specs and on the CLI."""
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            raise TypeError(f"a registered {self.kind} needs a non-empty str `name` class attribute: {cls!r}")
        self._classes[name] = cls
        return cls

    def _load(self) -> None:
        load_plugin_modules()
        if self._loaded:
            return
        self._loaded = True
        for module in self.builtin_modules:
            importlib.import_module(module)
        for ep in entry_points(group=f"anoaug.{self.kind}s"):
            try:
                ep.load()
            except Exception as exc:  # a broken plugin must not hide the built-in parts
                warnings.warn(f"anoaug: {self.kind} plugin {ep.name!r} failed to load: {exc}", stacklevel=2)

    def get(self, name: str) -> type[T]:
        """The class registered under ``name``; an unknown name is an error listing the known ones."""
        self._load()
        if name not in self._classes:
            raise self.error(f"unknown {self.kind} '{name}'; available: {', '.join(self.names())}")
        return self._classes[name]

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        self._load()
        return sorted(self._classes)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._classes


def load_plugin_modules() -> None:
    """Import every module named in ``$ANOAUG_PLUGINS`` (once each; Python caches imports). A module that
    cannot be imported is an error naming it: the user asked for it explicitly."""
    for module in filter(None, (m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(","))):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise AnoaugError(f"${PLUGINS_ENV} names module '{module}', which cannot be imported: {exc}") from None


def validate_settings(
    settings_cls: type[BaseModel],
    params: dict[str, Any] | None,
    what: str,
    source: str | None = None,
    renamed: dict[str, str] | None = None,
    error: Callable[..., AnoaugError] = SpecError,
) -> BaseModel:
    """``params`` validated into ``settings_cls``; errors name the key, ``what`` (e.g. ``generator
    diffusion-tiny``) and the spec file ``source``. ``renamed`` maps deprecated keys to their new names:
    they still load, with a ``DeprecationWarning``."""
    params = dict(params or {})
    for old, new in (renamed or {}).items():
        if old in params:
            warnings.warn(f"{what}: setting '{old}' is deprecated, use '{new}'", DeprecationWarning, stacklevel=3)
            value = params.pop(old)
            params.setdefault(new, value)
    try:
        return settings_cls.model_validate(params)
    except ValidationError as exc:
        known = ", ".join(sorted(settings_cls.model_fields))
        parts = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "<root>"
            if err["type"] == "extra_forbidden":
                parts.append(f"unknown key '{loc}' (known: {known})")
            else:
                parts.append(f"{loc}: {err['msg']}")
        raise error(f"{what}: " + "; ".join(parts), source) from None
