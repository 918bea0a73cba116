"""From a spec reference and command-line options to the effective spec of a run.

Precedence, lowest first: defaults.yaml, <category>.yaml, the profile's caps, --seed/--generator,
then --set overrides. Profiles:

* ``cpu-tiny`` (default): caps the expensive knobs so a category runs in minutes on a laptop CPU:
  at most 100 samples per defect type, 128 px, 10 epochs, 3 seeds, one worker per core.
* ``gpu``: the spec's values as written (the papers' scale).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from anoaug.errors import SpecError
from anoaug.spec import PipelineSpec, deep_merge, pipelines_dir, resolve_spec

PROFILES = ("cpu-tiny", "gpu")
CPU_TINY_CAPS = {"count_per_type": 100, "image_size": 128, "epochs": 10, "seeds": 3}


def parse_sets(values: list[str] | None) -> dict[str, Any]:
    """`["evaluation.epochs=1", "generator.params.alpha=0.5"]` -> a nested dict (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in values or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise SpecError(f"--set expects KEY.PATH=VALUE, got {item!r}")
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise SpecError(f"--set {item!r} conflicts with another --set")
        try:
            node[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError:
            node[parts[-1]] = raw
    return out


def apply_profile(data: dict[str, Any], profile: str) -> dict[str, Any]:
    """Apply a profile's caps to a spec dict (see the module docstring)."""
    if profile not in PROFILES:
        raise SpecError(f"unknown profile {profile!r}; profiles: {', '.join(PROFILES)}")
    data = dict(data, profile=profile)
    if profile == "cpu-tiny":
        gen = dict(data.get("generation", {}))
        if "count_per_type" in gen:
            gen["count_per_type"] = min(gen["count_per_type"], CPU_TINY_CAPS["count_per_type"])
        if isinstance(gen.get("workers"), int):  # "auto" (the default) already stays within the usable cores
            gen["workers"] = max(1, min(gen["workers"], os.cpu_count() or 1))
        ev = dict(data.get("evaluation", {}))
        for key in ("image_size", "epochs"):
            if key in ev:
                ev[key] = min(ev[key], CPU_TINY_CAPS[key])
        if "seeds" in ev:
            ev["seeds"] = list(ev["seeds"])[: CPU_TINY_CAPS["seeds"]]
        data.update(generation=gen, evaluation=ev)
    return data


def prepare_spec(
    ref: str | Path,
    *,
    category: str | None = None,
    profile: str | None = None,
    seed: int | None = None,
    generator: str | None = None,
    sets: dict[str, Any] | None = None,
) -> PipelineSpec:
    """The effective spec of a run (see the module docstring for the precedence)."""
    base = resolve_spec(ref, category)
    data = base.model_dump(mode="json", exclude={"source"})
    data = apply_profile(data, profile or base.profile)
    if seed is not None:
        data["seed"] = seed
    if generator is not None:
        # A variant is added as an arm; another generator replaces the spec's (with its defaults).
        if generator != data["generator"]["name"] and generator not in data.get("variants", {}):
            data["generator"] = {"name": generator, "params": {}}
        arms = list(data["evaluation"]["arms"])
        if not any(a == generator or a.startswith(f"{generator}+") for a in arms):
            data["evaluation"]["arms"] = [*arms, generator]
    if sets:
        data = deep_merge(data, sets)
    try:
        spec = PipelineSpec.model_validate(data)
    except ValidationError as exc:
        errs = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise SpecError(f"invalid spec after command-line overrides: {errs}", base.source) from None
    spec.source = base.source
    if generator is not None:
        from anoaug.generators import available_generators

        known = available_generators()
        if generator not in known and generator not in spec.variants:
            raise SpecError(f"unknown generator {generator!r}; available: {', '.join(known) or 'none'}")
    return check_spec(spec)


def check_spec(spec: PipelineSpec, arms: bool = True) -> PipelineSpec:
    """``spec`` after every check that needs the registries, so a typo stops a command before any work:
    variant names and generators (``PipelineSpec.check_producers``; with ``arms`` also the arms, which a run
    generates, while `anoaug evaluate` may take shards made elsewhere), the params of the spec's generator
    and of every variant against their typed settings, and the evaluation's detectors and their params.
    Each error is a SpecError naming the key and the spec file. Here, not in anoaug.spec: the registries
    import the spec module."""
    from anoaug.evaluation.detectors import check_evaluation
    from anoaug.generators import available_generators, check_generator_params

    spec.check_producers(available_generators(), arms=arms)
    for name, variant in spec.variants.items():
        check_generator_params(variant.generator, variant.params, spec.holder(("variants", name)))
    check_generator_params(spec.generator.name, spec.generator.params, spec.holder(("generator",)))
    check_evaluation(spec)
    if spec.pretrain:
        from anoaug.generators.diffusion.pretrain.settings import PretrainSettings
        from anoaug.registry import validate_settings

        validate_settings(PretrainSettings, spec.pretrain, "pretrain", spec.holder(("pretrain",)))
    if spec.quality:
        from anoaug.evaluation.quality import QualitySettings
        from anoaug.registry import validate_settings

        validate_settings(QualitySettings, spec.quality, "quality", spec.holder(("quality",)))
    return spec


def expand_targets(targets: list[str]) -> list[str]:
    """`mvtec` -> every `mvtec/<category>` spec; `mvtec/bottle` and .yaml paths pass through."""
    out: list[str] = []
    for t in targets:
        p = Path(t)
        if "/" not in t.strip("/") and p.suffix not in (".yaml", ".yml") and not p.is_dir():
            folder = pipelines_dir() / t
            cats = sorted(f.stem for f in folder.glob("*.yaml") if f.stem != "defaults")
            if not cats:
                raise SpecError(f"no specs for dataset {t!r} (looked in {folder})")
            out += [f"{t}/{c}" for c in cats]
        else:
            out.append(t)
    return list(dict.fromkeys(out))
