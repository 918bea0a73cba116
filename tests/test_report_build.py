"""The report from a hand-made run directory: gain arithmetic, CI, schema, HTML links, CSV."""

from __future__ import annotations

import csv
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from anoaug.errors import AnoaugError
from anoaug.report import Report, report_json_schema, write_report

SEEDS = [0, 1, 2]
AUROC = {"none": [0.60, 0.62, 0.58], "real-few": [0.70, 0.72, 0.74], "cutpaste": [0.80, 0.83, 0.86]}


def _fake_run(run_dir: Path) -> Path:
    rng = np.random.default_rng(0)
    n, s = 6, 16
    labels = np.array([0, 0, 0, 1, 1, 1], np.int8)
    masks = np.zeros((n, s, s), bool)
    masks[3:, 4:9, 4:9] = True
    arms = [{"name": a, "generator": "cutpaste" if a == "cutpaste" else None, "use_real": a == "real-few",
             "source": None, "train_size": 10, "train_defects": {}} for a in AUROC]  # fmt: skip
    meta = {
        "schema_version": "1", "dataset": "demo", "category": "fabric", "split_seed": 0, "profile": "cpu-tiny",
        "protocol": {"train_normal": 10, "train_defect_real": 2, "eval_normal": 3, "eval_defect": 3,
                     "defect_types": ["cut", "stain"], "leakage_check": "passed", "selection": "fixed epochs"},
        "arms": arms, "seeds": SEEDS, "models": ["segmenter", "classifier"], "config": {}, "pre_trained": False,
        "none_arm": "padim stands in", "generation_quality": {"computed": False, "note": "no weights"},
        "status": "complete",
    }  # fmt: skip
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps(meta))
    for arm, values in AUROC.items():
        for seed, v in zip(SEEDS, values, strict=True):
            d = run_dir / "runs" / "segmenter" / arm / f"seed{seed}"
            d.mkdir(parents=True)
            metrics = {"image_auroc": v, "image_ap": v, "pixel_auroc": v, "pixel_ap": v / 2, "pixel_aupro": v / 3}
            (d / "metrics.json").write_text(json.dumps(
                {"model": "segmenter", "arm": arm, "seed": seed, "metrics": metrics, "seconds": 1.0,
                 "implementation": "x"}))  # fmt: skip
            scores = labels + rng.normal(0, 1 - v, n)
            np.savez(d / "predictions.npz", ids=np.array([f"e{i}" for i in range(n)]), labels=labels,
                     scores=scores.astype(np.float32), maps=rng.random((n, s, s)).astype(np.float16), masks=masks,
                     defect_types=np.array(["good"] * 3 + ["cut"] * 3))  # fmt: skip
            if arm != "none":
                c = run_dir / "runs" / "classifier" / arm / f"seed{seed}"
                c.mkdir(parents=True)
                (c / "metrics.json").write_text(json.dumps(
                    {"model": "classifier", "arm": arm, "seed": seed, "metrics": {"ac_accuracy": v},
                     "seconds": 1.0, "confusion_matrix": [[2, 1], [0, 3]], "classes": ["cut", "stain"]}))  # fmt: skip
    samples = run_dir / "samples"
    samples.mkdir()
    imgs = rng.integers(0, 255, (3, s, s, 3), dtype=np.uint8)
    for name in ("real", "cutpaste"):
        np.savez(samples / f"{name}.npz", ids=np.array(["e3", "e4", "e5"]), images=imgs, masks=masks[3:],
                 defect_types=np.array(["cut"] * 3))  # fmt: skip
    return run_dir


class _Imgs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.src: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.src.append(dict(attrs)["src"] or "")


def test_report_from_run_dir(tmp_path: Path) -> None:
    run = _fake_run(tmp_path / "run")
    paths = write_report(run)
    assert set(paths) == {"json", "md", "html", "csv"} and all(p.is_file() for p in paths.values())
    report = Report.model_validate_json(paths["json"].read_text())
    gain = next(g for g in report.gains if (g.model, g.arm, g.baseline, g.metric)
                == ("segmenter", "cutpaste", "none", "image_auroc"))  # fmt: skip
    assert gain.differences == pytest.approx([0.20, 0.21, 0.28])
    assert gain.stat.mean == pytest.approx(0.23)
    assert gain.stat.half_width == pytest.approx(4.302653 * np.std([0.20, 0.21, 0.28], ddof=1) / np.sqrt(3), 1e-4)
    assert gain.significant
    vs_real = next(g for g in report.gains if (g.model, g.arm, g.baseline, g.metric)
                   == ("segmenter", "cutpaste", "real-few", "image_auroc"))  # fmt: skip
    assert vs_real.differences == pytest.approx([0.10, 0.11, 0.12])
    assert not any(g.arm == "none" for g in report.gains)  # the baseline is not a "gain" row
    assert any(g.model == "classifier" and g.baseline == "real-few" for g in report.gains)
    assert not any(g.model == "classifier" and g.baseline == "none" for g in report.gains)

    parser = _Imgs()
    parser.feed(paths["html"].read_text())
    assert len(parser.src) >= 6
    assert all((run / src).is_file() for src in parser.src)
    for key in ("gain_segmenter_vs_none", "pr_segmenter", "samples_cutpaste", "samples_real",
                "maps_segmenter_cutpaste", "confusion_cutpaste"):  # fmt: skip
        assert report.figures[key] in parser.src
    md = paths["md"].read_text()
    assert "+0.230" in md and "no weights" in md
    rows = list(csv.DictReader(paths["csv"].open()))
    assert len(rows) == 9 + 6
    assert {r["arm"] for r in rows if r["model"] == "classifier"} == {"real-few", "cutpaste"}
    assert "Report" in json.dumps(report_json_schema())


def test_report_needs_a_run_dir(tmp_path: Path) -> None:
    with pytest.raises(AnoaugError, match="run.json"):
        write_report(tmp_path)


def test_learned_generators_are_compared_with_the_model_free_ones() -> None:
    """A diffusion arm gets paired gains over each model-free arm with the same use of the real few."""
    from anoaug.report.build import gain_baselines, summarise
    from anoaug.report.schema import RunResult

    ap = {
        "none": [0.01, 0.01],
        "real-few": [0.40, 0.42],
        "crop-paste": [0.50, 0.55],
        "diffusion-tiny": [0.60, 0.59],
        "cutpaste+real": [0.45, 0.47],
        "diffusion-tiny+real": [0.70, 0.72],
    }
    runs = [
        RunResult(model="segmenter", arm=a, seed=s, implementation="x", metrics={"pixel_ap": v}, seconds=1.0)
        for a, vals in ap.items()
        for s, v in enumerate(vals)
    ]
    _, gains = summarise(runs, list(ap))
    pairs = {(g.arm, g.baseline): g.differences for g in gains}
    assert pairs["diffusion-tiny", "crop-paste"] == pytest.approx([0.10, 0.04])
    assert pairs["diffusion-tiny+real", "cutpaste+real"] == pytest.approx([0.25, 0.25])
    assert ("diffusion-tiny", "cutpaste+real") not in pairs and ("diffusion-tiny+real", "crop-paste") not in pairs
    assert ("crop-paste", "cutpaste+real") not in pairs  # model-free arms are not compared with each other
    assert gain_baselines(gains) == ["none", "real-few", "crop-paste", "cutpaste+real"]


def test_variant_arms_are_labelled_by_name_and_paired_by_their_generator() -> None:
    """A variant's arm keeps its name; its generator (from run.json arms) decides learned vs model-free."""
    from anoaug.report.build import arm_generators, arm_rows, summarise
    from anoaug.report.schema import RunResult

    arms = [
        {"name": "none", "generator": None, "use_real": False},
        {"name": "crop-paste", "generator": "crop-paste", "variant": None, "generator_params": {}, "use_real": False},
        {"name": "tiny-notrimap", "generator": "diffusion-tiny", "variant": "tiny-notrimap",
         "generator_params": {"trimap": False}, "use_real": False},
        {"name": "cp-sharp", "generator": "crop-paste", "variant": "cp-sharp", "generator_params": {"feather": 0},
         "use_real": False},
        {"name": "old-variant", "generator": "old-variant", "use_real": False},  # an older record: no variant field
    ]  # fmt: skip
    ap = {a["name"]: [0.1 * (i + 1), 0.1 * (i + 1) + 0.01] for i, a in enumerate(arms)}
    runs = [
        RunResult(model="segmenter", arm=a, seed=s, implementation="x", metrics={"pixel_ap": v}, seconds=1.0)
        for a, vals in ap.items()
        for s, v in enumerate(vals)
    ]
    _, gains = summarise(runs, list(ap), arm_generators(arms))
    pairs = {(g.arm, g.baseline) for g in gains}
    assert {("tiny-notrimap", "crop-paste"), ("tiny-notrimap", "cp-sharp")} <= pairs  # learned vs model-free
    assert not {b for a, b in pairs if a in ("crop-paste", "cp-sharp")} - {"none"}  # model-free: baselines only
    assert not {b for a, b in pairs if a == "old-variant"} - {"none"}  # unknown generator: no pairing
    assert ("tiny-notrimap", "old-variant") not in pairs
    rows = {r[0]: r for r in arm_rows(arms)}
    assert rows["tiny-notrimap"] == ["tiny-notrimap", "diffusion-tiny", "tiny-notrimap", '{"trimap": false}', "no"]
    assert rows["old-variant"][2:4] == ["–", "–"]


def test_report_shows_the_arms_with_their_generator_and_params(tmp_path: Path) -> None:
    run = _fake_run(tmp_path / "run")
    meta = json.loads((run / "run.json").read_text())
    meta["arms"][2].update(generator="crop-paste", variant="cutpaste", generator_params={"feather": 0})
    (run / "run.json").write_text(json.dumps(meta))
    paths = write_report(run)
    md = paths["md"].read_text()
    assert md.startswith("# anoaug evaluation: demo / fabric")
    assert "| cutpaste | crop-paste | cutpaste | {\"feather\": 0} | no |" in md
    assert "<td>cutpaste</td><td>crop-paste</td><td>cutpaste</td>" in paths["html"].read_text()


def test_older_arm_records_read_the_generation_record_of_their_shards(tmp_path: Path) -> None:
    from anoaug.report.build import arm_record

    shards = tmp_path / "generate" / "cp-sharp"
    shards.mkdir(parents=True)
    record = {"generator": "crop-paste", "variant": "cp-sharp", "generator_params": {"feather": 0}, "category": "cap"}
    (shards / "run.json").write_text(json.dumps(record))
    old = {"name": "cp-sharp+real", "generator": "cp-sharp", "use_real": True, "source": str(shards)}
    rec = arm_record(old)
    assert (rec["name"], rec["generator"], rec["variant"], rec["generator_params"]) == (
        "cp-sharp+real", "crop-paste", "cp-sharp", {"feather": 0})  # fmt: skip
    new = {**old, "generator": "crop-paste", "variant": "cp-sharp", "generator_params": {"feather": 1}}
    assert arm_record(new) == new  # a record with the fields is used as it is
    assert arm_record({**old, "source": str(tmp_path / "missing")})["generator"] == "cp-sharp"


def test_extra_images_are_read_back_and_drawn_beside_image_and_mask(tmp_path: Path) -> None:
    from anoaug.report.build import _extras_grid
    from anoaug.shards.reader import iter_samples
    from anoaug.shards.writer import encode_sample, write_shard

    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
    part = np.zeros_like(img)
    part[4:8, 4:8] = img[4:8, 4:8]
    mask = part.any(axis=2)
    samples = [encode_sample(f"c_{i:06d}", i, img, mask, {"defect_type": "crack"}, {"part": part}) for i in range(3)]
    for d in ("with", "plain"):
        (tmp_path / d).mkdir()
    write_shard(tmp_path / "with" / "x-000000.tar", samples)
    write_shard(tmp_path / "plain" / "x-000000.tar", [encode_sample("crack_000000", 0, img, mask, {})])
    read = list(iter_samples(tmp_path / "with"))
    assert [sorted(s.extras) for s in read] == [["part"]] * 3 and np.array_equal(read[0].extras["part"], part)
    assert list(iter_samples(tmp_path / "plain"))[0].extras == {}
    sheet = _extras_grid(str(tmp_path / "with"), "dualanodiff", tmp_path / "sheet.png")
    assert sheet is not None and sheet.stat().st_size > 0
    assert _extras_grid(str(tmp_path / "plain"), "sd", tmp_path / "none.png") is None
    assert _extras_grid(None, "real-few", tmp_path / "none.png") is None
