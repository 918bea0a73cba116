"""The shard writer's speed machinery: ordered threaded encoding, background commit, workers: auto."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from anoaug.shards.workers import MIN_GAIN, plan_workers
from anoaug.shards.writer import (
    EncodedSample,
    RawSample,
    ShardCommitter,
    encode_ordered,
    encode_threads_for,
    tmp_path,
    write_shard,
)


def _raw(n: int, size: int = 24) -> list[RawSample]:
    rng = np.random.default_rng(0)
    out = []
    for g in range(n):
        img = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        mask = rng.random((size, size)) > 0.7
        out.append(RawSample(f"blob_{g:06d}", g, img, mask, {"key": f"blob_{g:06d}", "index": g}))
    return out


def _same(a: EncodedSample, b: EncodedSample) -> bool:
    return (a.key, a.image_png, a.mask_png, a.json_bytes, a.image_sha256, a.mask_sha256) == (
        b.key, b.image_png, b.mask_png, b.json_bytes, b.image_sha256, b.mask_sha256,
    )  # fmt: skip


@pytest.mark.parametrize("threads", [1, 2, 5])
def test_encode_ordered_keeps_order_and_bytes(threads: int) -> None:
    raw = _raw(23)
    inline = list(encode_ordered(raw, None))
    assert [s.key for s in inline] == [r.key for r in raw]
    assert all(s.image_sha256 == hashlib.sha256(s.image_png).hexdigest() for s in inline)
    assert all(s.mask_sha256 == hashlib.sha256(s.mask_png).hexdigest() for s in inline)
    with ThreadPoolExecutor(threads) as pool:
        mixed = [raw[0].encode(), *raw[1:]]  # already encoded samples pass through
        threaded = list(encode_ordered(mixed, pool, window=3))
    assert len(threaded) == len(inline) and all(_same(a, b) for a, b in zip(inline, threaded, strict=True))


def test_encode_ordered_reads_lazily() -> None:
    raw, pulled = _raw(50), []

    def source():
        for r in raw:
            pulled.append(r.key)
            yield r

    with ThreadPoolExecutor(2) as pool:
        it = encode_ordered(source(), pool, window=4)
        first = next(it)
        assert first.key == "blob_000000" and len(pulled) <= 5
        it.close()


def _tar_rows(path: Path, samples: list[EncodedSample], **kw):
    return write_shard(path, iter(samples), **kw)


def test_write_shard_background_commit_lists_only_files_in_place(tmp_path: Path) -> None:
    samples = [r.encode() for r in _raw(7)]
    seen = []

    def on_commit(row, rows):
        final = tmp_path / row["shard"]
        assert final.is_file() and not tmp_path_of(final).exists()  # renamed before it is listed
        assert hashlib.sha256(final.read_bytes()).hexdigest() == row["sha256"] and row["bytes"] == final.stat().st_size
        seen.append((row["shard"], [r["key"] for r in rows]))

    with ShardCommitter() as committer:
        for j in range(3):
            chunk = samples[j * 3 : (j + 1) * 3]
            _tar_rows(tmp_path / f"s-{j}.tar", chunk, committer=committer, on_commit=on_commit)
    assert [name for name, _ in seen] == ["s-0.tar", "s-1.tar", "s-2.tar"]
    assert seen[2][1] == ["blob_000006"]
    inline_row, _ = _tar_rows(tmp_path / "inline.tar", samples[:3])  # no committer: in place on return
    assert (tmp_path / "inline.tar").read_bytes() == (tmp_path / "s-0.tar").read_bytes()
    assert inline_row["sha256"] == hashlib.sha256((tmp_path / "s-0.tar").read_bytes()).hexdigest()


def tmp_path_of(path: Path) -> Path:
    return tmp_path(path)


def test_committer_errors_surface_and_complete_shards_still_land(tmp_path: Path) -> None:
    samples = [r.encode() for r in _raw(4)]

    def boom(row, rows):
        raise RuntimeError("manifest disk full")

    with pytest.raises(RuntimeError, match="manifest disk full"), ShardCommitter() as committer:
        _tar_rows(tmp_path / "a.tar", samples[:2], committer=committer, on_commit=boom)
        _tar_rows(tmp_path / "b.tar", samples[2:], committer=committer)  # submit waits and raises a's error
    assert not (tmp_path / "b.tar").exists() and not list(tmp_path.glob(".*.tmp"))

    # An error in the caller: the shard submitted before it is still committed and listed; the partial is gone.
    listed = []

    def broken():
        yield samples[0]
        raise ValueError("generator failed")

    with pytest.raises(ValueError, match="generator failed"), ShardCommitter() as committer:
        _tar_rows(tmp_path / "c.tar", samples[:2], committer=committer, on_commit=lambda r, rows: listed.append(r))
        write_shard(tmp_path / "d.tar", broken(), committer=committer)
    assert [r["shard"] for r in listed] == ["c.tar"] and (tmp_path / "c.tar").is_file()
    assert not (tmp_path / "d.tar").exists() and not list(tmp_path.glob(".*.tmp"))


def test_encode_threads_setting() -> None:
    assert encode_threads_for(0) == 0 and encode_threads_for(3) == 3
    assert encode_threads_for("auto", cores=2) == 2 and encode_threads_for(None, cores=16) == 4
    assert encode_threads_for("auto", cores=1) == 1


def test_plan_workers_pays_for_start_up_only() -> None:
    # 300 samples at 3 ms: 0.9 s of work never pays for a 3 s start-up.
    assert plan_workers(300, 0.003, cores=2, start_s=3.0)[0] == 1
    # 5,000 samples at 20 ms on 2 cores: 100 s of work, 2 workers pay.
    k, gain = plan_workers(5000, 0.02, cores=2, start_s=3.0)
    assert k == 2 and gain >= MIN_GAIN
    # Never more workers than usable cores, none on one core, an upper limit is honoured.
    assert plan_workers(10**6, 1.0, cores=1, start_s=3.0)[0] == 1
    assert plan_workers(10**6, 1.0, cores=8, start_s=3.0)[0] == 8
    assert plan_workers(10**6, 1.0, cores=8, start_s=3.0, max_workers=3)[0] == 3
    # A small gain (below the margin) is not worth the risk.
    assert plan_workers(100, 0.1, cores=2, start_s=5.0)[0] == 1


def test_spec_generation_workers_setting() -> None:
    from pydantic import ValidationError

    from anoaug.pipeline.config import apply_profile
    from anoaug.spec import GenerationSection

    g = GenerationSection()
    assert g.workers == "auto" and g.encode_threads == "auto"
    assert GenerationSection(workers=3, encode_threads=0).workers == 3
    for bad in ({"workers": 0}, {"workers": "many"}, {"encode_threads": -1}):
        with pytest.raises(ValidationError):
            GenerationSection(**bad)
    data = {"generation": GenerationSection().model_dump(mode="json")}
    assert apply_profile(data, "cpu-tiny")["generation"]["workers"] == "auto"
    assert apply_profile({"generation": {"workers": 10**6}}, "cpu-tiny")["generation"]["workers"] >= 1


def test_speed_settings_do_not_change_the_generate_cache_key() -> None:
    """workers/encode_threads never change the bytes, so changing them must not regenerate; count does."""
    from anoaug.pipeline import stages
    from anoaug.spec import load_spec

    spec = load_spec("demo/cap")
    split = stages.StageResult(stage="split", fingerprint="f", out_dir="s", content_hash="h")
    key = stages.generate_fingerprint(spec, split, None, spec.generator.name)
    spec.generation.workers, spec.generation.encode_threads = 2, 0
    assert stages.generate_fingerprint(spec, split, None, spec.generator.name) == key
    spec.generation.count_per_type += 1
    assert stages.generate_fingerprint(spec, split, None, spec.generator.name) != key


def test_idle_cores_follow_the_load(monkeypatch) -> None:
    import anoaug.shards.workers as w

    monkeypatch.setattr(w.os, "getloadavg", lambda: (1.0, 1.0, 1.0))  # only this process
    assert w.idle_cores(2) == 2
    monkeypatch.setattr(w.os, "getloadavg", lambda: (7.5, 6.0, 3.0))  # a shared, busy machine
    assert w.idle_cores(2) == 1 and w.idle_cores(16) == 10
