"""Downstream detectors behind one interface: registry, typed per-detector settings, device, run.json arms."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import yaml

from anoaug.data.formats import read_category
from anoaug.data.io import load_image, load_mask
from anoaug.data.split import make_split
from anoaug.errors import AnoaugError, SpecError
from anoaug.evaluation import MODELS, SyntheticPair, run_evaluation
from anoaug.evaluation.detectors import (
    DETECTORS,
    Detector,
    FitContext,
    Prediction,
    available_detectors,
    check_evaluation,
    get_detector,
    register_detector,
)
from anoaug.evaluation.protocol import Sample, read_generation_record
from anoaug.registry import Settings
from anoaug.spec import load_spec, spec_for_root
from tests.test_eval_protocol import write_shards

BUILT_IN = {"segmenter", "classifier", "supersimplenet", "draem", "padim", "patchcore"}
BUILT_IN |= {"diffusionad"}


def _spec_file(tmp_path: Path, evaluation: dict[str, Any]) -> Path:
    path = tmp_path / "specs" / "widget.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    spec = {"dataset": {"name": "mvtec", "root": str(tmp_path), "category": "widget"}, "evaluation": evaluation}
    path.write_text(yaml.safe_dump(spec))
    return path


def test_registry_lists_the_six_builtins() -> None:
    assert set(available_detectors()) == BUILT_IN and set(MODELS) == BUILT_IN
    tasks = {n: get_detector(n).task for n in BUILT_IN}
    assert tasks["classifier"] == "ac" and {tasks[n] for n in BUILT_IN - {"classifier"}} == {"ad"}
    assert get_detector("segmenter").needs_defects == "fallback"
    assert get_detector("classifier").needs_defects == "skip"
    assert {n for n in BUILT_IN if not get_detector(n).uses_defects} == {"padim", "patchcore"}
    with pytest.raises(SpecError, match="unknown detector 'nope'"):
        get_detector("nope")


def test_unknown_model_is_a_spec_error_naming_it_and_the_file(tmp_path: Path) -> None:
    path = _spec_file(tmp_path, {"models": ["segmenter", "segmentr"]})
    with pytest.raises(SpecError) as err:
        check_evaluation(load_spec(path))
    assert "segmentr" in str(err.value) and str(path) in str(err.value) and "evaluation.models" in str(err.value)


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"padim": {"backbon": "resnet18"}}, ["backbon", "evaluation.params.padim", "known: backbone, layers"]),
        ({"padmi": {"backbone": "resnet18"}}, ["padmi", "unknown detector"]),
        ({"draem": {"dtd_dir": 3}}, ["dtd_dir"]),
        ({"segmenter": {"widths": [8]}}, ["widths"]),  # a section-level setting is not a detector's
    ],
)
def test_bad_params_are_spec_errors_naming_key_and_file(tmp_path: Path, params: dict, words: list[str]) -> None:
    path = _spec_file(tmp_path, {"models": ["segmenter"], "params": params})
    with pytest.raises(SpecError) as err:
        check_evaluation(load_spec(path))
    for word in [*words, str(path)]:
        assert word in str(err.value)


def test_the_error_names_the_file_that_sets_the_key(tmp_path: Path) -> None:
    path = _spec_file(tmp_path, {"models": ["segmenter"]})
    defaults = path.parent / "defaults.yaml"
    defaults.write_text(yaml.safe_dump({"evaluation": {"params": {"padim": {"layerz": ["layer1"]}}}}))
    with pytest.raises(SpecError) as err:
        check_evaluation(load_spec(path))
    assert str(err.value).startswith(f"{defaults}:") and "layerz" in str(err.value)


def test_typed_params_reach_their_detectors(tmp_path: Path) -> None:
    params = {"patchcore": {"coreset_ratio": 0.25, "layers": ["layer3"]}, "padim": {"backbone": "resnet34"}}
    spec = load_spec(_spec_file(tmp_path, {"models": ["segmenter", "patchcore"], "params": params}))
    available_detectors()
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # the new layout loads without a deprecation warning
        settings = check_evaluation(spec)
    # the segmenter falls back to padim (the none_baseline) in 'none', so padim's settings are returned too
    assert set(settings) == {"segmenter", "patchcore", "padim"}
    assert settings["patchcore"].coreset_ratio == 0.25 and settings["patchcore"].layers == ["layer3"]
    assert settings["padim"].backbone == "resnet34"
    model_kwargs = get_detector("patchcore")(settings["patchcore"]).model_kwargs()
    assert model_kwargs == {"backbone": "resnet18", "layers": ["layer3"], "coreset_sampling_ratio": 0.25}


def test_deprecated_flat_keys_load_with_a_warning(tmp_path: Path) -> None:
    params = {"patchcore_coreset_ratio": 0.5, "draem_dtd_dir": "/x", "ssn_layers": ["layer3"]}
    spec = load_spec(_spec_file(tmp_path, {"models": ["patchcore", "draem"], "image_size": 64, "params": params}))
    with pytest.warns(DeprecationWarning) as caught:
        settings = check_evaluation(spec)
    said = " ".join(str(w.message) for w in caught)
    assert all(key in said for key in params) and "use 'coreset_ratio'" in said
    assert settings["patchcore"].coreset_ratio == 0.5 and settings["draem"].dtd_dir == "/x"
    assert "supersimplenet" not in settings  # checked (valid) but not used


@pytest.mark.parametrize(
    ("models", "size", "match"),
    [(["supersimplenet"], 64, "supersimplenet needs evaluation.image_size >= 128"), (["draem"], 80, "draem needs")],
)
def test_size_constraints_are_each_detectors_check(tmp_path: Path, models: list[str], size: int, match: str) -> None:
    path = _spec_file(tmp_path, {"models": models, "image_size": size})
    with pytest.raises(SpecError, match=match) as err:
        check_evaluation(load_spec(path))
    assert str(path) in str(err.value)
    # the gpu profile's image size is the one checked
    spec = load_spec(path, {"profile": "gpu"})
    check_evaluation(spec)


def test_make_trainer_asks_for_the_resolved_accelerator(monkeypatch: pytest.MonkeyPatch) -> None:
    import lightning as L
    import torch

    from anoaug.evaluation import datasets

    asked: list[dict[str, Any]] = []
    monkeypatch.setattr(L, "Trainer", lambda **kw: asked.append(kw))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    datasets.make_trainer(1, device="auto")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    datasets.make_trainer(1, device="auto")
    datasets.make_trainer(1, device="cuda:1")
    datasets.make_trainer(1, device="cpu")
    assert [(kw["accelerator"], kw["devices"]) for kw in asked] == [("cpu", 1), ("gpu", [0]), ("gpu", [1]), ("cpu", 1)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(AnoaugError, match="CUDA is not available"):
        datasets.make_trainer(1, device="cuda")


def test_evaluation_device_setting_is_validated() -> None:
    from pydantic import ValidationError

    from anoaug.spec import EvaluationSection

    assert EvaluationSection().device == "auto" and EvaluationSection(device="cuda:1").device == "cuda:1"
    with pytest.raises(ValidationError):
        EvaluationSection(device="gpu")


class _ToySettings(Settings):
    gain: float = 1.0


class _Toy(Detector):
    """Anomaly map: |image - mean normal image|, times ``gain``; score: the map's maximum."""

    name = "toy"
    Settings = _ToySettings
    task = "ad"
    needs_defects = "one-class"
    fits: ClassVar[list[tuple[int, int, int]]] = []  # (seed, normals, defects) of every fit

    def fit(self, train: list[Sample], context: FitContext, seed: int) -> None:
        normals = [s.image for s in train if not s.label]
        self.mean = np.mean(normals, axis=0)
        self.context = context
        _Toy.fits.append((seed, len(normals), len(train) - len(normals)))

    def predict(self, eval_samples: list[Sample]) -> Prediction:
        maps = np.stack([np.abs(s.image - self.mean).mean(-1) for s in eval_samples]) * self.settings.gain
        info = {"implementation": "toy", "gain": self.settings.gain, "device": self._fitted().device}
        return Prediction(scores=maps.reshape(len(maps), -1).max(1), maps=maps, info=info)


class _ToyFallback(_Toy):
    name = "toy-fallback"
    needs_defects = "fallback"

    def predict(self, eval_samples: list[Sample]) -> Prediction:
        pred = super().predict(eval_samples)
        pred.info = {"implementation": "toy-fallback"}
        return pred


class _ToySkip(_ToyFallback):
    name = "toy-skip"
    needs_defects = "skip"


@pytest.fixture
def toys(monkeypatch: pytest.MonkeyPatch) -> None:
    """The toy detectors registered for one test only."""
    DETECTORS.names()  # built-ins first
    monkeypatch.setattr(DETECTORS, "_classes", dict(DETECTORS._classes))
    for cls in (_Toy, _ToyFallback, _ToySkip):
        register_detector(cls)
    _Toy.fits.clear()


@pytest.fixture
def widget(make_mvtec, tmp_path: Path):  # noqa: ANN001, ANN201
    root = make_mvtec(tmp_path / "mvtec", n_train=4, n_test_good=3, defects={"scratch": 4, "dent": 3})
    data = read_category(root, "widget")
    return data, make_split(data, seed=0)


def _paste(data, split) -> list[SyntheticPair]:  # noqa: ANN001
    normals = [load_image(data.path(r["relpath"])) for r in split.rows("train_normal")]
    out = []
    for k, r in enumerate(split.rows("gen_train_defect")):
        img, mask = load_image(data.path(r["relpath"])), load_mask(data.path(r["mask_relpath"]))
        base = normals[k % len(normals)].copy()
        base[mask] = img[mask]
        out.append(SyntheticPair(base, mask, r["label"], f"p{k}"))
    return out


def test_a_registered_toy_detector_runs_end_to_end(toys, widget, tmp_path: Path) -> None:  # noqa: ANN001
    data, split = widget
    evaluation = {
        "image_size": 32,
        "batch_size": 4,
        "models": ["toy", "toy-fallback", "toy-skip"],
        "params": {"toy": {"gain": 2.0}},
        "device": "cpu",
    }
    spec = spec_for_root(data.root, "widget", evaluation=evaluation)
    arms = {"none": None, "real-few": None, "paste": _paste(data, split)}
    run_dir = run_evaluation(spec, data, split, arms, tmp_path / "run", seeds=[3])

    n_eval, n_real = len(split.rows(("eval_normal", "eval_defect"))), len(split.rows("gen_train_defect"))
    n_normal = len(split.rows("train_normal"))
    # toy: every arm (one-class in 'none'); toy-fallback: real-few + paste (padim in 'none'); toy-skip: not in 'none'
    assert sorted(_Toy.fits) == [(3, n_normal, 0)] + [(3, n_normal, n_real)] * 6
    runs = {p.relative_to(run_dir / "runs").parts[:2] for p in run_dir.glob("runs/*/*/seed3/metrics.json")}
    assert runs == {("toy", a) for a in arms} | {("toy-fallback", a) for a in arms} | {
        ("toy-skip", "real-few"), ("toy-skip", "paste")}  # fmt: skip
    d = json.loads((run_dir / "runs" / "toy" / "paste" / "seed3" / "metrics.json").read_text())
    assert d["implementation"] == "toy" and d["gain"] == 2.0 and d["device"] == "cpu" and d["seed"] == 3
    assert {"image_auroc", "image_ap", "pixel_auroc", "pixel_aupro"} <= set(d["metrics"])
    fallback = json.loads((run_dir / "runs" / "toy-fallback" / "none" / "seed3" / "metrics.json").read_text())
    assert fallback["implementation"] == "anomalib padim (one-class fallback)"
    with np.load(run_dir / "runs" / "toy" / "none" / "seed3" / "predictions.npz") as z:
        assert z["scores"].shape == (n_eval,) and z["maps"].shape == (n_eval, 32, 32)
        assert set(z["ids"].tolist()) == {r["relpath"] for r in split.rows(("eval_normal", "eval_defect"))}

    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["environment"]["device"] == "cpu" and meta["status"] == "complete"
    assert meta["detector_settings"]["toy"] == {"gain": 2.0}
    paste = next(a for a in meta["arms"] if a["name"] == "paste")
    assert (paste["generator"], paste["variant"], paste["generator_params"], paste["source"]) == (
        "paste", None, {}, "in-memory")  # fmt: skip


def test_a_detector_breaking_the_prediction_contract_is_refused(toys, widget, tmp_path: Path) -> None:  # noqa: ANN001
    data, split = widget

    class Short(_Toy):
        name = "short"

        def predict(self, eval_samples: list[Sample]) -> Prediction:
            pred = super().predict(eval_samples)
            return Prediction(scores=pred.scores[:-1], maps=pred.maps[:-1], info={"implementation": "short"})

    register_detector(Short)
    spec = spec_for_root(data.root, "widget", evaluation={"image_size": 32, "models": ["short"], "device": "cpu"})
    with pytest.raises(AnoaugError, match="do not match"):
        run_evaluation(spec, data, split, {"real-few": None}, tmp_path / "run", seeds=[0])


def _generation_record(shard_dir: Path, **fields: Any) -> None:
    record = {"category": "widget", "generator": "crop-paste", "generator_params": {"blend": "seamless"}, **fields}
    (shard_dir / "run.json").write_text(json.dumps(record))


def test_read_generation_record(tmp_path: Path) -> None:
    assert read_generation_record([]) == {} and read_generation_record(tmp_path) == {}
    _generation_record(tmp_path)  # written before variants: no "variant"
    assert read_generation_record(tmp_path) == {
        "generator": "crop-paste", "variant": None, "generator_params": {"blend": "seamless"}}  # fmt: skip
    _generation_record(tmp_path, variant="soft")
    assert read_generation_record(str(tmp_path))["variant"] == "soft"
    (tmp_path / "run.json").write_text("{not json")
    with pytest.raises(AnoaugError, match="run.json"):
        read_generation_record(tmp_path)


def test_run_json_arms_name_the_generator_of_a_shard_folder(toys, widget, tmp_path: Path) -> None:  # noqa: ANN001
    data, split = widget
    pairs = [(p.image, p.mask, p.defect_type) for p in _paste(data, split)]
    soft = write_shards(tmp_path / "shards" / "soft", pairs, "widget")
    _generation_record(soft, variant="soft")
    plain = write_shards(tmp_path / "shards" / "plain", pairs, "widget")  # no generation record
    spec = spec_for_root(data.root, "widget", evaluation={"image_size": 32, "models": ["toy"], "device": "cpu"})
    arms = {"soft+real": soft, "plain": plain}
    run_dir = run_evaluation(spec, data, split, arms, tmp_path / "run", seeds=[0])
    meta = {a["name"]: a for a in json.loads((run_dir / "run.json").read_text())["arms"]}
    assert (meta["soft+real"]["generator"], meta["soft+real"]["variant"]) == ("crop-paste", "soft")
    assert meta["soft+real"]["generator_params"] == {"blend": "seamless"} and meta["soft+real"]["use_real"]
    assert (meta["plain"]["generator"], meta["plain"]["variant"], meta["plain"]["generator_params"]) == (
        "plain", None, {})  # fmt: skip


def test_cli_exits_2_on_an_unknown_params_key(widget, tmp_path: Path) -> None:  # noqa: ANN001
    from typer.testing import CliRunner

    from anoaug.cli import app

    data, _ = widget
    path = tmp_path / "spec.yaml"
    spec = {"dataset": {"name": "mvtec", "root": str(data.root), "category": "widget"},
            "evaluation": {"models": ["padim"], "params": {"padim": {"layerz": ["layer1"]}}}}  # fmt: skip
    path.write_text(yaml.safe_dump(spec))
    res = CliRunner().invoke(app, ["evaluate", str(path), "--out", str(tmp_path / "run"), "--arms", "none"])
    assert res.exit_code == 2
    assert "layerz" in res.output and str(path) in res.output
    assert not (tmp_path / "run" / "runs").exists()
