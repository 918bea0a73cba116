"""Bulk generation into WebDataset shards: format, manifests, resume after kill -9, lock, safety, readers."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from anoaug.shards import ShardError, generate_category, iter_samples, verify_generation
from anoaug.shards.format import LINEAGE_FIELDS
from anoaug.shards.generate import output_lock

REPO = Path(__file__).resolve().parents[1]


def _setup(root: Path, category: str):
    from anoaug.data.formats import read_category
    from anoaug.data.split import make_split
    from anoaug.spec import spec_for_root

    spec = spec_for_root(root, category, dataset="demo")
    data = read_category(root, category, "auto")
    return spec, data, make_split(data, 0)


@pytest.fixture(scope="module")
def fabric(demo_root: Path):
    return _setup(demo_root, "fabric")


def _run(fabric, out: Path, **kw):
    spec, data, split = fabric
    args = {"count_per_type": 3, "seed": 5, "shard_size": 4, "kind": "texture"} | kw
    return generate_category(spec, data, split, args.pop("generator", "cutpaste"), out, **args)


def _tar_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.tar"))}


@pytest.fixture(scope="module")
def reference(fabric, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "gen"
    s = _run(fabric, out)
    assert (s.total, s.written, s.kept) == (6, 6, 0)
    return out


def test_shards_are_plain_webdataset(reference: Path) -> None:
    import webdataset as wds

    tars = sorted(reference.glob("*.tar"))
    assert [p.name for p in tars] == ["fabric-cutpaste-000000.tar", "fabric-cutpaste-000001.tar"]
    samples = list(wds.WebDataset([str(p) for p in tars], shardshuffle=False, empty_check=False))
    keys = [s["__key__"] for s in samples]
    assert len(keys) == 6 and len(set(keys)) == 6 and all("." not in k for k in keys)
    assert sorted(keys) == sorted(f"{t}_{i:06d}" for t in ("cut", "stain") for i in range(3))
    for s in samples:
        assert {"png", "mask.png", "json"} <= set(s)
        meta = json.loads(s["json"])
        assert set(LINEAGE_FIELDS) <= set(meta)
        assert meta["category"] == "fabric" and meta["generator"] == "cutpaste" and meta["seed"] == 5
        assert meta["source_normal"].startswith("fabric/train/good/") and meta["mask_params"]
        assert meta["key"] == s["__key__"]


def test_manifest_checksums_match_files(reference: Path) -> None:
    assert verify_generation(reference) == []
    shards = pq.read_table(reference / "shards.parquet").to_pylist()
    samples = pq.read_table(reference / "samples.parquet").to_pylist()
    assert [r["count"] for r in shards] == [4, 2] and len(samples) == 6
    for r in shards:
        assert hashlib.sha256((reference / r["shard"]).read_bytes()).hexdigest() == r["sha256"]
    by_key = {r["key"]: r for r in samples}
    for tar in reference.glob("*.tar"):
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                key, ext = m.name.split(".", 1)
                data = tf.extractfile(m).read()
                if ext == "png":
                    assert hashlib.sha256(data).hexdigest() == by_key[key]["image_sha256"]
                elif ext == "mask.png":
                    assert hashlib.sha256(data).hexdigest() == by_key[key]["mask_sha256"]
                assert by_key[key]["shard"] == tar.name
    # Tampering is detected.
    victim = reference / shards[1]["shard"]
    original = victim.read_bytes()
    try:
        victim.write_bytes(original[:-1] + b"x")
        assert any("sha256" in p for p in verify_generation(reference))
    finally:
        victim.write_bytes(original)


def test_reader(reference: Path) -> None:
    samples = list(iter_samples(reference))
    assert len(samples) == 6
    for s in samples:
        assert s.image.dtype == np.uint8 and s.image.ndim == 3 and s.image.shape[2] == 3
        assert s.mask.dtype == np.bool_ and s.mask.shape == s.image.shape[:2] and s.mask.any()
        assert s.meta["key"] == s.key


def test_resume_discards_partial_and_is_byte_identical(fabric, reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "gen"
    _run(fabric, out)
    # Simulate a crash in the middle of shard 1: it is gone from the manifests, a temp file is left,
    # and a stray unlisted tar is lying around.
    from anoaug.shards.manifest import GenerationManifest

    m = GenerationManifest.load(out)
    m.drop(1)
    m.save_shards()
    (out / "fabric-cutpaste-000001.tar").rename(out / ".fabric-cutpaste-000001.tar.tmp")
    (out / "fabric-cutpaste-000001.tar").write_bytes(b"garbage")
    s = _run(fabric, out)
    assert (s.total, s.kept, s.written) == (6, 4, 2)
    assert not list(out.glob(".*.tmp"))
    assert _tar_bytes(out) == _tar_bytes(reference)
    assert verify_generation(out) == []
    # A complete run is a no-op.
    s = _run(fabric, out)
    assert (s.kept, s.written) == (6, 0)


def _samples_table(out: Path) -> list[dict]:
    return pq.read_table(out / "samples.parquet").to_pylist()


@pytest.mark.parametrize(("workers", "threads"), [(1, 0), (1, 1), (1, 3), ("auto", 0), ("auto", "auto")])
def test_any_thread_count_gives_identical_shards(fabric, reference: Path, tmp_path: Path, workers, threads) -> None:
    """Encoding threads (0 = inline) and workers=auto change the speed only; the choice is recorded."""
    out = tmp_path / "gen"
    s = _run(fabric, out, workers=workers, encode_threads=threads)
    assert _tar_bytes(out) == _tar_bytes(reference)
    assert _samples_table(out) == _samples_table(reference)
    run = json.loads((out / "run.json").read_text())
    assert run["workers"] == s.workers and s.workers["requested"] == workers and s.workers["chosen"] == 1
    assert s.workers["cores"] == len(os.sched_getaffinity(0)) and s.workers["reason"]
    assert run["encode_threads"] == s.encode_threads == (min(4, s.workers["cores"]) if threads == "auto" else threads)
    # How samples are made is not part of what a resume must match.
    s = _run(fabric, out, workers=2, encode_threads=0)
    assert (s.kept, s.written) == (6, 0) and s.workers["reason"] == "nothing left to generate"


def test_workers_give_identical_shards(fabric, reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "gen"
    s = _run(fabric, out, workers=2)
    assert _tar_bytes(out) == _tar_bytes(reference)
    assert s.workers["chosen"] == 2 and s.workers["reason"] == "set explicitly"


def test_auto_workers_hand_over_to_a_pool_byte_identically(fabric, tmp_path: Path, monkeypatch) -> None:
    """When auto decides for workers, the probe's samples, those made here while the pool starts and the
    pool's samples join in order: the same bytes as one process."""
    import anoaug.shards.generate as gen

    one = _run(fabric, tmp_path / "one", shard_size=2, workers=1, encode_threads=0)  # jobs: 3 shards of 2
    monkeypatch.setattr(gen, "PROBE_S", 0.0)  # probe one job
    monkeypatch.setattr(gen, "WORKER_START_S", 1e6)  # the next job is made here while the pool starts
    monkeypatch.setattr(gen, "plan_workers", lambda remaining, *a, **k: (2, 9.0))
    out = tmp_path / "auto"
    s = _run(fabric, out, shard_size=2, workers="auto")
    assert _tar_bytes(out) == _tar_bytes(tmp_path / "one") and one.total == s.total == 6
    assert _samples_table(out) == _samples_table(tmp_path / "one")
    assert s.workers["chosen"] == 2 and s.workers["probe_samples"] == 2 and s.workers["predicted_gain"] == 9.0
    assert verify_generation(out) == []


def test_auto_workers_start_no_pool_in_a_daemonic_process(fabric, reference: Path, tmp_path: Path, monkeypatch) -> None:
    """Inside a Dask worker (a daemonic process) auto never starts child processes, whatever it measures."""
    import types

    import anoaug.shards.generate as gen

    monkeypatch.setattr(gen.mp, "current_process", lambda: types.SimpleNamespace(daemon=True))
    monkeypatch.setattr(gen, "plan_workers", lambda *a, **k: (2, 9.0))
    s = _run(fabric, tmp_path / "gen", workers="auto")
    assert s.workers["chosen"] == 1 and "daemonic" in s.workers["reason"]
    assert _tar_bytes(tmp_path / "gen") == _tar_bytes(reference)


def test_bad_workers_setting_is_refused(fabric, tmp_path: Path) -> None:
    for bad in (0, "many", True):
        with pytest.raises(ShardError, match="workers must be 'auto' or a number"):
            _run(fabric, tmp_path / "gen", workers=bad)
    with pytest.raises(ShardError, match="encode_threads must be"):
        _run(fabric, tmp_path / "gen", encode_threads="many")
    assert not (tmp_path / "gen").exists()


def test_lock_refuses_concurrent_run(fabric, tmp_path: Path) -> None:
    out = tmp_path / "gen"
    out.mkdir()
    with output_lock(out), pytest.raises(ShardError, match="another `anoaug generate`"):
        _run(fabric, out)
    _run(fabric, out, count_per_type=1)  # the lock is released afterwards


def test_safety_refusals(fabric, demo_root: Path, tmp_path: Path) -> None:
    inside = demo_root / "fabric" / "synthetic"
    with pytest.raises(ShardError, match="inside the input dataset"):
        _run(fabric, inside)
    assert not inside.exists()
    with pytest.raises(ShardError, match="contains the input dataset"):
        _run(fabric, demo_root.parent)
    out = tmp_path / "gen"
    _run(fabric, out, count_per_type=1)
    with pytest.raises(ShardError, match="different generation run.*count_per_type"):
        _run(fabric, out, count_per_type=2)
    s = _run(fabric, out, count_per_type=2, overwrite=True)
    assert (s.total, s.kept) == (4, 0) and verify_generation(out) == []
    # Files we did not write do not block; shard-looking files of an unknown run do.
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    _run(fabric, other, count_per_type=1)
    assert (other / "notes.txt").read_text() == "mine"
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "shards.parquet").write_bytes(b"")
    with pytest.raises(ShardError, match="unknown run"):
        _run(fabric, stray, count_per_type=1)


_CHILD = """
import sys
sys.path.insert(0, {repo!r})
from pathlib import Path
from anoaug.data.formats import read_category
from anoaug.data.split import make_split
from anoaug.shards import generate_category
from anoaug.spec import spec_for_root
root = Path({root!r})
spec = spec_for_root(root, "fabric", dataset="demo")
data = read_category(root, "fabric", "auto")
generate_category(spec, data, make_split(data, 0), "perlin", Path({out!r}), count_per_type={n}, seed=1,
                  shard_size=3, kind="texture")
"""


def test_kill_9_then_resume_gives_exactly_n(fabric, demo_root: Path, tmp_path: Path) -> None:
    out, n = tmp_path / "gen", 15
    code = _CHILD.format(repo=str(REPO), root=str(demo_root), out=str(out), n=n)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            listed = out / "shards.parquet"
            if listed.is_file() and pq.read_metadata(listed).num_rows >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"child ended before it could be killed: {proc.stderr.read().decode()[-500:]}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    s = _run(fabric, out, generator="perlin", count_per_type=n, seed=1, shard_size=3)
    assert 0 < s.kept < 2 * n and s.kept + s.written == s.total == 2 * n
    assert verify_generation(out) == []
    keys = [x.key for x in iter_samples(out)]
    assert len(keys) == len(set(keys)) == 2 * n
    for tar in out.glob("*.tar"):
        with tarfile.open(tar) as tf:
            assert all(tf.extractfile(m).read() for m in tf.getmembers())
    assert not list(out.glob(".*.tmp"))


def test_cli_generate(demo_root: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from anoaug.cli import app

    out = tmp_path / "cli"
    args = ["generate", str(demo_root), "-c", "cap", "-g", "crop-paste", "-n", "2", "--out", str(out), "--seed", "3"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "wrote 4 samples" in res.output
    assert verify_generation(out) == [] and len(list(iter_samples(out))) == 4
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0 and "kept 4" in res.output
    res = CliRunner().invoke(app, [*args[:-2], "--seed", "4"])
    assert res.exit_code == 2 and "different generation run" in res.output
    res = CliRunner().invoke(app, ["generate", str(demo_root), "-c", "cap", "-g", "nope", "--out", str(out)])
    assert res.exit_code == 2 and "unknown generator" in res.output


def test_cli_generate_params(demo_root: Path, tmp_path: Path) -> None:
    """--param sets the generator's params (recorded in the run); a bad key or value is a clear exit 2."""
    from typer.testing import CliRunner

    from anoaug.cli import app

    out = tmp_path / "p"
    base = ["generate", str(demo_root), "-c", "cap", "-g", "cutpaste", "-n", "1", "--out", str(out)]
    res = CliRunner().invoke(app, [*base, "--param", "blend=none", "-p", "feather=0"])
    assert res.exit_code == 0, res.output
    run = json.loads((out / "run.json").read_text())
    assert run["generator_params"] == {"blend": "none", "feather": 0}
    res = CliRunner().invoke(app, [*base, "--param", "blend=nope", "--overwrite"])
    assert res.exit_code == 2 and "generator cutpaste: blend: Input should be 'alpha'" in res.output
    res = CliRunner().invoke(app, [*base, "--param", "nosuchkey=1", "--overwrite"])
    assert res.exit_code == 2 and "nosuchkey" in res.output
    res = CliRunner().invoke(app, [*base, "--param", "a.b=1"])
    assert res.exit_code == 2 and "dotted" in res.output


def test_lineage_json_roundtrip(reference: Path) -> None:
    rows = pq.read_table(reference / "samples.parquet").to_pylist()
    for r in rows:
        lin = json.loads(r["lineage"])
        assert lin["key"] == r["key"] and lin["artifact_hash"] == r["artifact_hash"]
        assert lin["sample_seed"] == r["sample_seed"] and lin["defect_type"] == r["defect_type"]


def test_cli_generate_a_variant(demo_root: Path, tmp_path: Path) -> None:
    """`-g <variant>` runs the variant's generator with its params; the run record names the variant."""
    from typer.testing import CliRunner

    from anoaug.cli import app

    spec = tmp_path / "cap.yaml"
    spec.write_text(
        f"dataset: {{name: demo, format: mvtec, category: cap, root: '{demo_root}'}}\n"
        "generator: {name: cutpaste, params: {jitter: 0.3}}\n"
        "variants: {cp-hard: {generator: crop-paste, params: {feather: 0}}}\n"
    )
    out = tmp_path / "v"
    base = ["generate", str(spec), "-g", "cp-hard", "-n", "1", "--out", str(out)]
    res = CliRunner().invoke(app, base)
    assert res.exit_code == 0, res.output
    run = json.loads((out / "run.json").read_text())
    assert (run["generator"], run["variant"], run["generator_params"]) == ("crop-paste", "cp-hard", {"feather": 0})
    lineage = json.loads(pq.read_table(out / "samples.parquet").to_pylist()[0]["lineage"])
    assert lineage["variant"] == "cp-hard" and lineage["generator"] == "crop-paste"
    res = CliRunner().invoke(app, [*base, "-p", "blend=none", "--overwrite"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "run.json").read_text())["generator_params"] == {"feather": 0, "blend": "none"}
    plain = tmp_path / "plain"
    res = CliRunner().invoke(app, ["generate", str(spec), "-g", "crop-paste", "-n", "1", "--out", str(plain)])
    assert res.exit_code == 0, res.output
    run = json.loads((plain / "run.json").read_text())
    assert (run["generator"], run["variant"], run["generator_params"]) == ("crop-paste", None, {})
