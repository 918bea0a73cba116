"""Pipeline machinery without Prefect: fingerprints, idempotent stages, run manifests, specs of a run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from anoaug.errors import AnoaugError, SpecError
from anoaug.pipeline import stages
from anoaug.pipeline.config import apply_profile, expand_targets, parse_sets, prepare_spec
from anoaug.pipeline.fingerprint import files_hash, fingerprint
from anoaug.pipeline.run_manifest import build_run_manifest, read_run_manifest, write_run_manifest
from anoaug.pipeline.stages import StageError, StageOutput, run_stage
from anoaug.pipeline.summary import build_summary, write_summary
from anoaug.spec import GeneratorSection, VariantSection, deep_merge, load_spec


def test_fingerprint_is_pure_and_sensitive() -> None:
    a = GeneratorSection(name="cutpaste", params={"blend": "seamless", "jitter": 0.1})
    b = GeneratorSection(name="cutpaste", params={"jitter": 0.1, "blend": "seamless"})  # same, other order
    assert fingerprint("generate", a, "h1") == fingerprint("generate", b, "h1")
    assert fingerprint("generate", a, "h1") != fingerprint("generate", a, "h2")
    c = GeneratorSection(name="cutpaste", params={"blend": "seamless", "jitter": 0.2})
    assert fingerprint("generate", a, "h1") != fingerprint("generate", c, "h1")


def test_files_hash_follows_content(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("x")
    h1 = files_hash(tmp_path, ["a.txt"])
    (tmp_path / "a.txt").write_text("y")
    assert files_hash(tmp_path, ["a.txt"]) != h1
    (tmp_path / "a.txt").write_text("x")
    assert files_hash(tmp_path, ["a.txt"]) == h1


def _body(calls: list[bool], text: str = "out"):
    def body(out: Path, resume: bool) -> StageOutput:
        calls.append(resume)
        (out / "o.txt").write_text(text)
        return StageOutput({"o": out / "o.txt"}, {"n": len(calls)})

    return body


def test_run_stage_skips_done_work_and_reruns_on_change(tmp_path: Path) -> None:
    calls: list[bool] = []
    r1 = run_stage("demo", "fp1", tmp_path / "s", _body(calls))
    assert not r1.skipped and calls == [False] and r1.path("o").read_text() == "out"
    r2 = run_stage("demo", "fp1", tmp_path / "s", _body(calls))
    assert r2.skipped and calls == [False] and r2.content_hash == r1.content_hash
    (tmp_path / "s" / "stale.txt").write_text("from the old fingerprint")
    r3 = run_stage("demo", "fp2", tmp_path / "s", _body(calls, "new"))
    assert not r3.skipped and len(calls) == 2 and r3.content_hash != r1.content_hash
    assert not (tmp_path / "s" / "stale.txt").exists()  # a changed fingerprint starts clean
    assert stages.is_complete(tmp_path / "s", "fp2") and not stages.is_complete(tmp_path / "s", "fp1")


def test_run_stage_reruns_when_outputs_vanish(tmp_path: Path) -> None:
    calls: list[bool] = []
    run_stage("demo", "fp", tmp_path / "s", _body(calls))
    (tmp_path / "s" / "o.txt").unlink()
    assert not run_stage("demo", "fp", tmp_path / "s", _body(calls)).skipped
    assert len(calls) == 2


def test_run_stage_failure_names_stage_and_cause_and_resumes(tmp_path: Path) -> None:
    def boom(out: Path, resume: bool) -> StageOutput:
        (out / "partial.txt").write_text("half")
        raise MemoryError("out of memory in the middle")

    with pytest.raises(StageError) as info:
        run_stage("generate:cutpaste", "fp", tmp_path / "g", boom)
    err = info.value
    assert err.stage == "generate:cutpaste" and isinstance(err.cause, MemoryError)
    assert "generate:cutpaste" in str(err) and "out of memory" in str(err) and err.retryable
    assert "MemoryError" in (tmp_path / "g" / "error.log").read_text()
    assert not StageError("x", AnoaugError("bad input")).retryable

    calls: list[bool] = []
    r = run_stage("generate:cutpaste", "fp", tmp_path / "g", _body(calls))
    assert calls == [True]  # same fingerprint after a crash: the body may resume
    assert (tmp_path / "g" / "partial.txt").exists() and not (tmp_path / "g" / "error.log").exists()
    assert r.status == "done"


def test_stage_error_pickles() -> None:
    import pickle

    err = pickle.loads(pickle.dumps(StageError("evaluate", ValueError("nan loss"))))
    assert err.stage == "evaluate" and "nan loss" in str(err)


def test_split_stage_is_idempotent_and_tracks_data(make_mvtec, tmp_path: Path) -> None:  # noqa: ANN001
    tiny_mvtec = make_mvtec(tmp_path / "mvtec", defects={"scratch": 3, "dent": 2})
    spec = prepare_spec(tiny_mvtec, category="widget")
    run_dir = tmp_path / "run"
    r1 = stages.stage_split(spec, tiny_mvtec, run_dir)
    assert r1.path("split").is_file() and r1.info["counts"]["train_normal"] == 3
    r2 = stages.stage_split(spec, tiny_mvtec, run_dir)
    assert r2.skipped and r2.content_hash == r1.content_hash
    spec2 = spec.model_copy(deep=True)
    spec2.seed = 1
    assert stages.split_fingerprint(spec2, tiny_mvtec) != stages.split_fingerprint(spec, tiny_mvtec)
    # touching a file re-reads the data; the same content gives the same manifest hash downstream keys use
    img = next((tiny_mvtec / "widget" / "train" / "good").iterdir())
    img.write_bytes(img.read_bytes())
    r3 = stages.stage_split(spec, tiny_mvtec, run_dir)
    assert not r3.skipped and r3.content_hash == r1.content_hash


def test_producers_their_params_and_cache_keys() -> None:
    spec = load_spec("demo/cap")
    spec.generator.name = "cutpaste"
    spec.variants = {"cp-sharp": VariantSection(generator="crop-paste", params={"feather": 0})}
    spec.evaluation.arms = ["none", "real-few", "perlin", "crop-paste+real", "perlin+real", "cp-sharp+real"]
    assert spec.producers() == [spec.generator.name, "perlin", "crop-paste", "cp-sharp"]
    spec.generator.params = {"jitter": 0.1}
    assert spec.producer(spec.generator.name) == ("cutpaste", {"jitter": 0.1})
    assert spec.producer("perlin") == ("perlin", {})
    assert spec.producer("cp-sharp") == ("crop-paste", {"feather": 0})
    assert stages.stage_dir("r", "generate", "cp-sharp") == Path("r/generate/cp-sharp")
    split = stages.StageResult(stage="split", fingerprint="f", out_dir="s", content_hash="h")
    keys = {name: stages.generate_fingerprint(spec, split, None, name) for name in spec.producers()}
    assert len(set(keys.values())) == 4  # each producer its own cache key
    spec.variants["cp-sharp"].params = {"feather": 2}
    assert stages.generate_fingerprint(spec, split, None, "cp-sharp") != keys["cp-sharp"]
    assert stages.generate_fingerprint(spec, split, None, "crop-paste") == keys["crop-paste"]  # others unchanged
    spec.variants["cp-sharp"].params = {}  # a variant with default params: the same settings as crop-paste
    assert stages.generate_fingerprint(spec, split, None, "cp-sharp") == keys["crop-paste"]


def test_variant_params_from_set_and_generator_option(tmp_path: Path) -> None:
    spec_file = tmp_path / "cap.yaml"
    spec_file.write_text(
        "dataset: {name: demo, category: cap}\ngenerator: {name: cutpaste, params: {jitter: 0.2}}\n"
        "variants: {cp-sharp: {generator: crop-paste, params: {feather: 0}}}\n"
    )
    spec = prepare_spec(spec_file, generator="cp-sharp")  # a variant is added as an arm, the generator stays
    assert spec.generator.name == "cutpaste" and spec.generator.params == {"jitter": 0.2}
    assert spec.evaluation.arms[-1] == "cp-sharp" and spec.producers()[-1] == "cp-sharp"
    variant = {"variants": {"cp-sharp": {"generator": "crop-paste", "params": {"feather": 0}}}}
    sets = deep_merge(variant, parse_sets(["variants.cp-sharp.params.feather=3", "evaluation.arms=[none, cp-sharp]"]))
    spec = prepare_spec("demo/cap", sets=sets)
    assert spec.producer("cp-sharp") == ("crop-paste", {"feather": 3}) and spec.producers()[-1] == "cp-sharp"
    with pytest.raises(SpecError, match="variant 'perlin' has the name of a registered generator"):
        prepare_spec("demo/cap", sets={"variants": {"perlin": {"generator": "cutpaste"}}})
    with pytest.raises(SpecError, match="arm 'nope': unknown generator or variant"):
        prepare_spec("demo/cap", sets={"evaluation": {"arms": ["none", "nope"]}})


def test_parse_sets_and_profile() -> None:
    assert parse_sets(["evaluation.epochs=2", "evaluation.seeds=[0, 1]", "generator.params.blend=seamless"]) == {
        "evaluation": {"epochs": 2, "seeds": [0, 1]},
        "generator": {"params": {"blend": "seamless"}},
    }
    with pytest.raises(SpecError):
        parse_sets(["epochs"])
    data = {"generation": {"count_per_type": 500, "workers": 64}, "evaluation": {"epochs": 30, "seeds": [0, 1, 2, 3]}}
    tiny = apply_profile(data, "cpu-tiny")
    assert tiny["generation"]["count_per_type"] == 100 and tiny["evaluation"]["epochs"] == 10
    assert len(tiny["evaluation"]["seeds"]) == 3 and tiny["profile"] == "cpu-tiny"
    assert apply_profile(data, "gpu")["generation"]["count_per_type"] == 500
    with pytest.raises(SpecError):
        apply_profile(data, "tpu")


def test_prepare_spec_options() -> None:
    spec = prepare_spec("mvtec/bottle", profile="gpu", seed=3, generator="perlin", sets={"evaluation": {"epochs": 1}})
    assert spec.seed == 3 and spec.profile == "gpu" and spec.generator.name == "perlin"
    assert spec.generator.params == {} and "perlin" in spec.evaluation.arms and spec.evaluation.epochs == 1
    assert spec.source and "bottle.yaml" in spec.source
    with pytest.raises(SpecError, match="unknown generator"):
        prepare_spec("mvtec/bottle", generator="no-such-generator")
    with pytest.raises(SpecError, match="epochs"):
        prepare_spec("mvtec/bottle", sets={"evaluation": {"epochs": 0}})


def test_expand_targets() -> None:
    cats = expand_targets(["mvtec"])
    assert "mvtec/bottle" in cats and "mvtec/zipper" in cats and len(cats) == 15
    assert expand_targets(["demo/cap", "demo"]) == ["demo/cap", "demo/fabric"]
    with pytest.raises(SpecError):
        expand_targets(["no-such-dataset"])


def test_missing_dataset_root_names_the_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("ANOAUG_MVTEC_ROOT", raising=False)
    spec = prepare_spec("mvtec/bottle")
    with pytest.raises(SpecError, match=r"--data-root.*\$ANOAUG_MVTEC_ROOT"):
        stages.resolve_data_root(spec, None, tmp_path)
    monkeypatch.setenv("ANOAUG_MVTEC_ROOT", str(tmp_path / "nowhere"))
    with pytest.raises(SpecError, match=r"ANOAUG_MVTEC_ROOT"):
        stages.resolve_data_root(spec, None, tmp_path)


def test_demo_data_is_made_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls = []
    import anoaug.data.demo as demo

    real = demo.make_demo_dataset

    def counting(out_dir: Path, **kw: object) -> list[str]:
        calls.append(kw.get("categories"))
        return real(out_dir, seed=0, categories=["cap"], size=64, n_train_good=2, n_test_good=1, n_per_defect=2)

    monkeypatch.setattr(demo, "make_demo_dataset", counting)
    monkeypatch.delenv("ANOAUG_DEMO_ROOT", raising=False)
    spec = load_spec("demo/cap")
    root = stages.resolve_data_root(spec, None, tmp_path)
    assert root == (tmp_path / "data" / "demo").resolve() and (root / "cap" / "train" / "good").is_dir()
    assert stages.resolve_data_root(spec, None, tmp_path) == root
    assert calls == [["cap"]]
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_run_manifest_links_stages(tmp_path: Path) -> None:
    spec = load_spec("demo/cap")
    run_dir = tmp_path / "demo" / "cap"
    r1 = run_stage("split", "f1", run_dir / "split", _body([]))

    def report(out: Path, resume: bool) -> StageOutput:
        (out / "report.html").write_text("<html></html>")
        (out / "report.json").write_text("{}")
        return StageOutput({"json": out / "report.json", "html": out / "report.html"})

    r2 = run_stage("report", "f2", run_dir / "report", report)
    m = build_run_manifest(spec, tmp_path, run_dir, [r1, r2], {"prefect_flow_run_id": "x"})
    write_run_manifest(run_dir, m)
    back = read_run_manifest(run_dir)
    assert back.report == "report/report.html" and back.stages["split"].outputs["o"] == "split/o.txt"
    assert (run_dir / back.stages["split"].outputs["o"]).is_file()
    assert back.report_path(run_dir).is_file() and back.spec["dataset"]["category"] == "cap"


def _fake_report(path: Path, arms: dict[str, float]) -> Path:
    summary = [{"model": "segmenter", "arm": a, "metric": "image_auroc", "stat": {"mean": v}} for a, v in arms.items()]
    path.write_text(json.dumps({"models": ["segmenter"], "arms": [{"name": a} for a in arms], "summary": summary}))
    return path


def test_benchmark_summary_has_category_rows_and_average(tmp_path: Path) -> None:
    cats = [
        {
            "name": "demo/cap",
            "status": "ok",
            "report_json": str(_fake_report(tmp_path / "a.json", {"x": 0.8, "y": 0.6})),
        },
        {"name": "demo/fabric", "status": "ok", "report_json": str(_fake_report(tmp_path / "b.json", {"x": 0.6}))},
        {"name": "demo/broken", "status": "failed", "error": "stage 'evaluate' failed"},
    ]
    s = build_summary(cats)
    t = s["tables"]["image_auroc"]
    assert t["rows"]["demo/cap"] == {"x": 0.8, "y": 0.6}
    assert t["average"]["x"] == pytest.approx(0.7) and t["average"]["y"] == pytest.approx(0.6)
    assert s["failed"] == [{"category": "demo/broken", "error": "stage 'evaluate' failed"}]
    paths = write_summary(tmp_path / "summary", cats)
    assert "average" in paths["csv"].read_text() and "demo/broken" in paths["md"].read_text()
