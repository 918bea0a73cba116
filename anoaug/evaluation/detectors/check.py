"""One check of a spec's ``evaluation`` section against the registered detectors, run before any training.

``evaluation.params`` maps a detector name to its settings (``{padim: {backbone: resnet18}}``), each
validated by that detector's ``Settings``. The old flat keys (``padim_backbone``, ``draem_dtd_dir``, ...)
still load, with a DeprecationWarning. Unknown detector names (in ``models`` or ``params``), unknown keys
and image sizes a detector cannot take are ``SpecError``s naming the key and the spec file that sets it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from anoaug.errors import SpecError
from anoaug.evaluation.detectors.base import DETECTORS, Detector, get_detector
from anoaug.registry import Settings, validate_settings

if TYPE_CHECKING:
    from anoaug.spec import PipelineSpec


def _grouped_params(spec: PipelineSpec, params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``evaluation.params`` as ``{detector: {key: value}}``, deprecated flat keys moved under their detector."""
    names = DETECTORS.names()
    flat = {old: name for name in names for old in get_detector(name).renamed}
    grouped: dict[str, dict[str, Any]] = {}
    for key, value in params.items():
        if key in names:
            if not isinstance(value, dict):
                where = spec.holder(("evaluation", "params", key))
                raise SpecError(f"evaluation.params.{key} must be a mapping of {key}'s settings", where)
            grouped.setdefault(key, {}).update(value)
        elif key in flat:
            grouped.setdefault(flat[key], {})[key] = value
        else:
            raise SpecError(
                f"evaluation.params: unknown detector '{key}' (params are keyed by detector: {', '.join(names)})",
                spec.holder(("evaluation", "params", key)),
            )
    return grouped


def check_evaluation(spec: PipelineSpec) -> dict[str, Settings]:
    """Validate ``spec.evaluation`` (profile applied) for the registered detectors; raise SpecError if wrong.

    Returns the typed settings of every detector that will run: those of ``evaluation.models``, plus
    ``evaluation.none_baseline`` when a model falls back to it in arms without defects.
    """
    cfg = spec.evaluation.for_profile(spec.profile)
    names = DETECTORS.names()
    unknown = [m for m in cfg.models if m not in names]
    if unknown:
        listed = ", ".join(repr(m) for m in unknown)
        message = f"evaluation.models: unknown detector(s) {listed}; available: {', '.join(names)}"
        raise SpecError(message, spec.holder(("evaluation", "models")))
    grouped = _grouped_params(spec, dict(cfg.params))
    used: list[str] = list(dict.fromkeys(cfg.models))
    classes: dict[str, type[Detector]] = {m: get_detector(m) for m in used}
    if any(c.needs_defects == "fallback" for c in classes.values()) and cfg.none_baseline not in classes:
        classes[cfg.none_baseline] = get_detector(cfg.none_baseline)
    settings: dict[str, Settings] = {}
    for name in names:  # every detector's params are checked, also those of detectors not used now
        cls = get_detector(name)
        if name in grouped or name in classes:
            loc = ("evaluation", "params", name) if name in cfg.params else ("evaluation", "params")
            what = f"evaluation.params.{name}"
            s = validate_settings(cls.Settings, grouped.get(name), what, spec.holder(loc), cls.renamed)
            if name in classes:
                settings[name] = s
    problems = [p for cls in classes.values() for p in cls.check(cfg)]
    if problems:
        raise SpecError("; ".join(problems), spec.holder(("evaluation", "image_size")))
    return settings
