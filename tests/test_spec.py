"""Pipeline specs: merging, validation, typos named with key and file, root resolution."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from anoaug.cli import app
from anoaug.errors import SpecError
from anoaug.spec import REPO_PIPELINES, load_spec, resolve_spec

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
