"""Pipeline specs: merging, validation, typos named with key and file, root resolution."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from anoaug.cli import app
from anoaug.errors import SpecError
from anoaug.spec import REPO_PIPELINES, arm_producer, load_spec, resolve_spec

MVTEC = [
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
    "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
]  # fmt: skip
VISA = [
    "candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2",
    "pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum",
]  # fmt: skip


@pytest.mark.parametrize(
    "ref", [f"mvtec/{c}" for c in MVTEC] + [f"visa/{c}" for c in VISA] + ["demo/cap", "demo/fabric"]
)
def test_every_shipped_spec_validates(ref: str) -> None:
    spec = load_spec(ref)
    assert spec.dataset.category == ref.split("/")[1]
    assert spec.dataset.name == ref.split("/")[0]
    assert spec.dataset.kind in ("object", "texture")


def test_category_overrides_defaults() -> None:
    spec = load_spec("mvtec/carpet")
    assert spec.masks.placement == "free"  # category file
    assert spec.masks.scale == (0.85, 1.15)  # defaults file
    assert spec.dataset.root_env == "ANOAUG_MVTEC_ROOT"


def _write(tmp: Path, defaults: str, cat: str) -> Path:
    d = tmp / "pipes" / "ds"
    d.mkdir(parents=True)
    (d / "defaults.yaml").write_text(defaults)
    (d / "c1.yaml").write_text(cat)
    return d / "c1.yaml"


def test_typo_names_key_and_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "dataset: {name: ds}\nseed: 3\n", "dataset: {category: c1}\nmasks:\n  rotaton: [0, 90]\n")
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert "masks.rotaton" in str(err.value)
    assert str(path) in str(err.value)


def test_typo_in_defaults_names_defaults_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "dataset: {name: ds}\nsed: 3\n", "dataset: {category: c1}\n")
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert "'sed'" in str(err.value)
    assert "defaults.yaml" in str(err.value)


def test_bad_value_and_bad_range(tmp_path: Path) -> None:
    path = _write(tmp_path, "dataset: {name: ds}\n", "dataset: {category: c1}\nmasks: {scale: [1.2, 0.8]}\n")
    with pytest.raises(SpecError, match="masks.scale"):
        load_spec(path)


def test_invalid_yaml(tmp_path: Path) -> None:
    path = _write(tmp_path, "dataset: {name: ds}\n", "dataset: [unclosed\n")
    with pytest.raises(SpecError, match="invalid YAML"):
        load_spec(path)


def test_unknown_reference() -> None:
    with pytest.raises(SpecError, match="no spec for 'mvtec/nope'"):
        load_spec("mvtec/nope")


def test_root_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = load_spec("mvtec/bottle")
    monkeypatch.delenv("ANOAUG_MVTEC_ROOT", raising=False)
    with pytest.raises(SpecError, match="ANOAUG_MVTEC_ROOT"):
        spec.resolve_root()
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    monkeypatch.setenv("ANOAUG_MVTEC_ROOT", str(a))
    assert spec.resolve_root() == a
    assert spec.resolve_root(b) == b
    monkeypatch.setenv("ANOAUG_MVTEC_ROOT", str(tmp_path / "missing"))
    with pytest.raises(SpecError, match=r"does not exist \(set by \$ANOAUG_MVTEC_ROOT\)"):
        spec.resolve_root()


def test_resolve_spec_with_bare_root(tmp_path: Path) -> None:
    spec = resolve_spec(tmp_path, "widget")
    assert spec.dataset.category == "widget"
    assert spec.resolve_root() == tmp_path
    with pytest.raises(SpecError, match="--category"):
        resolve_spec(tmp_path)


def test_cli_spec_show() -> None:
    result = CliRunner().invoke(app, ["spec", "show", "mvtec/bottle", "--json"])
    assert result.exit_code == 0, result.output
    assert '"category": "bottle"' in result.output


def test_cli_spec_show_error_is_one_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "dataset: {name: ds}\n", "dataset: {category: c1}\nbogus: 1\n")
    result = CliRunner().invoke(app, ["spec", "show", str(path)])
    assert result.exit_code == 2
    assert "unknown key 'bogus'" in result.output
    assert "Traceback" not in result.output


def test_repo_pipelines_dir_exists() -> None:
    assert (REPO_PIPELINES / "mvtec" / "defaults.yaml").is_file()


VARIANTS = """dataset: {category: c1}
generator: {name: cutpaste, params: {jitter: 0.1}}
variants:
  cp-wide: {generator: crop-paste, params: {feather: 0}}
evaluation:
  arms: [none, real-few, cutpaste, perlin+real, cp-wide, cp-wide+real]
"""


def test_variants_and_the_producer_rule(tmp_path: Path) -> None:
    spec = load_spec(_write(tmp_path, "dataset: {name: ds}\n", VARIANTS))
    assert spec.producers() == ["cutpaste", "perlin", "cp-wide"]
    assert spec.producer("cutpaste") == ("cutpaste", {"jitter": 0.1})  # the spec's generator: its params
    assert spec.producer("perlin") == ("perlin", {})  # another generator: its defaults
    assert spec.producer("cp-wide") == ("crop-paste", {"feather": 0})  # a variant: its generator and params
    spec.producer("cp-wide")[1]["feather"] = 9  # a copy: the spec is not changed through it
    assert spec.variants["cp-wide"].params == {"feather": 0}
    assert [arm_producer(a) for a in ("none", "real-few", "cp-wide+real")] == [None, None, "cp-wide"]
    spec.check_producers(["crop-paste", "cutpaste", "perlin"])


@pytest.mark.parametrize("name", ["none", "real-few", "cp+real", "a.b", "a/b"])
def test_reserved_variant_names_name_the_variant_and_file(tmp_path: Path, name: str) -> None:
    cat = f"dataset: {{category: c1}}\nvariants: {{'{name}': {{generator: perlin}}}}\n"
    path = _write(tmp_path, "dataset: {name: ds}\n", cat)
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert repr(name) in str(err.value) and str(path) in str(err.value)


def test_variant_registry_checks_name_the_variant_and_file(tmp_path: Path) -> None:
    from anoaug.generators import available_generators

    known = available_generators()
    clash_defaults = "dataset: {name: ds}\nvariants: {perlin: {generator: cutpaste}}\n"
    clash = _write(tmp_path / "a", clash_defaults, "dataset: {category: c1}\n")
    with pytest.raises(SpecError, match="variant 'perlin' has the name of a registered generator") as err:
        load_spec(clash).check_producers(known)
    assert "defaults.yaml" in str(err.value)  # the file that holds the variant
    bad_gen = "dataset: {category: c1}\nvariants: {v1: {generator: nope}}\n"
    unknown = _write(tmp_path / "b", "dataset: {name: ds}\n", bad_gen)
    with pytest.raises(SpecError, match="variant 'v1': unknown generator 'nope'") as err:
        load_spec(unknown).check_producers(known)
    assert str(unknown) in str(err.value)
    arm = _write(tmp_path / "c", "dataset: {name: ds}\n", "dataset: {category: c1}\nevaluation: {arms: [none, v2]}\n")
    with pytest.raises(SpecError, match="arm 'v2': unknown generator or variant 'v2'"):
        load_spec(arm).check_producers(known)
    load_spec(arm).check_producers(known, arms=False)  # `anoaug evaluate` may take shards made elsewhere


def test_cli_spec_show_checks_variants(tmp_path: Path) -> None:
    path = _write(tmp_path, "dataset: {name: ds}\n", "dataset: {category: c1}\nvariants: {v1: {generator: nope}}\n")
    result = CliRunner().invoke(app, ["spec", "show", str(path), "--json"])
    assert result.exit_code == 2 and "variant 'v1': unknown generator 'nope'" in result.output


def test_generator_params_checked_at_load_name_key_and_file(tmp_path: Path) -> None:
    """A typo in a variant's or the spec generator's params stops the run before any stage, naming both."""
    from anoaug.pipeline.config import check_spec

    bad_variant = "dataset: {category: c1}\nvariants: {v1: {generator: perlin, params: {opacityy: 1}}}\n"
    path = _write(tmp_path / "a", "dataset: {name: ds}\n", bad_variant)
    with pytest.raises(SpecError) as err:
        check_spec(load_spec(path))
    assert "opacityy" in str(err.value) and "perlin" in str(err.value) and str(path) in str(err.value)
    bad_gen = "dataset: {category: c1}\ngenerator: {name: cutpaste, params: {jitterr: 0.1}}\n"
    path = _write(tmp_path / "b", "dataset: {name: ds}\n", bad_gen)
    with pytest.raises(SpecError, match="jitterr"):
        check_spec(load_spec(path))
    result = CliRunner().invoke(app, ["spec", "show", str(path), "--json"])
    assert result.exit_code == 2 and "jitterr" in result.output
