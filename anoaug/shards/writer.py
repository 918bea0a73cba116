"""Writing WebDataset shards atomically: ``webdataset.TarWriter`` into ``.<name>.tmp``, fsync, rename.

``webdataset.ShardWriter`` rolls shards by count but names each file directly; resume needs shard ``j`` to
hold exactly the samples ``[j * S, (j + 1) * S)`` and to appear under its final name only when complete,
so each shard gets its own ``TarWriter`` on a temporary file here.

Speed: PNG encoding is the cost of writing (OpenCV releases the GIL while it encodes), so ``encode_ordered``
encodes samples in a thread pool, in order, with the sha256 of each PNG taken in the same thread while the
bytes are hot; the shard's own sha256 is taken as the tar stream passes through (no re-read), and a
``ShardCommitter`` does the fsync, rename, directory fsync and manifest update of a finished shard in a
background thread while the next shard is encoded and written. Bytes never depend on the thread count.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import webdataset as wds

from anoaug.cpu import usable_cores
from anoaug.png import encode_png
from anoaug.shards.format import IMAGE_EXT, MASK_EXT, META_EXT, TAR_MTIME, TMP_SUFFIX, slug

ShardRow = dict[str, Any]
CommitFn = Callable[[ShardRow, list[dict[str, Any]]], None]


@dataclass
class EncodedSample:
    """One sample, PNG-encoded (with the sha256 of each PNG) and ready for a shard."""

    key: str
    global_index: int
    image_png: bytes
    mask_png: bytes
    lineage: dict[str, Any]
    mask_pixels: int
    extras_png: dict[str, bytes] = field(default_factory=dict)  # name -> PNG, written as <key>.<name>.png
    image_sha256: str = ""  # taken by encode_sample; write_shard fills it in when empty
    mask_sha256: str = ""

    @property
    def json_bytes(self) -> bytes:
        return json.dumps(self.lineage, sort_keys=True, separators=(",", ":")).encode()


@dataclass
class RawSample:
    """One sample as arrays, to be encoded (possibly in another thread) by ``encode_ordered``."""

    key: str
    global_index: int
    image: np.ndarray
    mask: np.ndarray
    lineage: dict[str, Any]
    extras: dict[str, np.ndarray] | None = None

    def encode(self) -> EncodedSample:
        return encode_sample(self.key, self.global_index, self.image, self.mask, self.lineage, self.extras)


def encode_sample(
    key: str,
    global_index: int,
    image: np.ndarray,
    mask: np.ndarray,
    lineage: dict[str, Any],
    extras: dict[str, np.ndarray] | None = None,
) -> EncodedSample:
    """PNG-encode one sample; ``extras`` (a generator's extra images, e.g. ``part``) become ``<key>.<name>.png``."""
    image_png = encode_png(image, compression=1)
    mask_png = encode_png(mask.astype(bool), compression=1)
    return EncodedSample(
        key=key,
        global_index=global_index,
        image_png=image_png,
        mask_png=mask_png,
        lineage=lineage,
        mask_pixels=int(np.count_nonzero(mask)),
        extras_png={extra_ext(name): encode_png(a, compression=1) for name, a in sorted((extras or {}).items())},
        image_sha256=hashlib.sha256(image_png).hexdigest(),
        mask_sha256=hashlib.sha256(mask_png).hexdigest(),
    )


def extra_ext(name: str) -> str:
    """The shard member extension of extra image ``name`` (``part`` -> ``part.png``); refuses reserved names."""
    ext = f"{slug(name)}.png"
    if ext in (IMAGE_EXT, MASK_EXT, META_EXT) or slug(name) != name:
        raise ValueError(f"extra image name {name!r} is reserved or not a plain name")
    return ext


def encode_threads_for(setting: int | str | None, cores: int | None = None) -> int:
    """Encoding threads for a setting: an int is honoured (0 = encode inline); ``auto``/None: the usable
    cores, at most 4 (PNG encoding scales with cores; more threads only queue)."""
    if setting is None or setting == "auto":
        return max(1, min(4, cores if cores is not None else usable_cores()))
    return max(0, int(setting))


def encode_ordered(
    samples: Iterable[RawSample | EncodedSample], pool: Executor | None, window: int = 8
) -> Iterator[EncodedSample]:
    """The samples encoded, in input order; with a ``pool``, up to ``window`` are encoded ahead in its threads.

    Samples already encoded pass through. The input is read lazily (memory stays at ``window`` samples).
    """
    pending: deque[Future[EncodedSample] | EncodedSample] = deque()
    it = iter(samples)
    try:
        while pool is None:
            s = next(it, None)
            if s is None:
                return
            yield s.encode() if isinstance(s, RawSample) else s
        while True:
            while len(pending) < max(1, window):
                s = next(it, None)
                if s is None:
                    break
                pending.append(pool.submit(s.encode) if isinstance(s, RawSample) else s)
            if not pending:
                return
            head = pending.popleft()
            yield head.result() if isinstance(head, Future) else head
    finally:
        for f in pending:
            if isinstance(f, Future):
                f.cancel()
        close = getattr(it, "close", None)
        if close is not None:  # a generator source (e.g. one holding a worker pool) ends now, not at GC
            close()


def tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}{TMP_SUFFIX}")


class ShardCommitter:
    """Finishes written shards in order in one background thread: fsync, rename, directory fsync, then the
    caller's ``on_commit`` (listing the shard in the manifest), so that the next shard is encoded meanwhile.

    At most one shard waits (``submit`` first waits for the previous one). A failure is raised by the next
    ``submit`` or by ``close``; ``close`` (also on an error in the caller) finishes what was submitted, so a
    complete shard is still listed. ``background=False`` commits inline.
    """

    def __init__(self, background: bool = True) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="anoaug-commit") if background else None
        self._last: Future[None] | None = None

    def submit(self, fh: BinaryIO, tmp: Path, path: Path, on_commit: Callable[[], None] | None = None) -> None:
        """Commit ``tmp`` (written through the open ``fh``) as ``path``; ``fh`` is closed here."""
        try:
            self.wait()
        except BaseException:  # an earlier shard failed: this one is dropped (the next run rewrites both)
            fh.close()
            tmp.unlink(missing_ok=True)
            raise
        if self._pool is None:
            _commit(fh, tmp, path, on_commit)
        else:
            self._last = self._pool.submit(_commit, fh, tmp, path, on_commit)

    def wait(self) -> None:
        """Wait for the submitted commit; raise its error."""
        last, self._last = self._last, None
        if last is not None:
            last.result()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)

    def __enter__(self) -> ShardCommitter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
            return
        with contextlib.suppress(Exception):  # the caller's error wins; a shard submitted before it still lands
            self.close()


def _commit(fh: BinaryIO, tmp: Path, path: Path, on_commit: Callable[[], None] | None) -> None:
    try:
        try:
            os.fsync(fh.fileno())
        finally:
            fh.close()
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if on_commit is not None:
        on_commit()


def write_shard(
    path: str | Path,
    samples: Iterable[EncodedSample],
    on_sample: Callable[[EncodedSample], None] | None = None,
    *,
    committer: ShardCommitter | None = None,
    on_commit: CommitFn | None = None,
) -> tuple[ShardRow, list[dict[str, Any]]]:
    """Write ``samples`` to ``path`` atomically; return (shard row, per-sample rows) for the manifest.

    Sample rows carry the shard name, key, global index, image/mask sha256, mask pixel count and the
    lineage dict (the caller adds manifest columns from it). Without a ``committer`` the shard is in place
    (fsynced, renamed) on return; with one, it is once ``committer`` has run ``on_commit(shard_row, rows)``.
    """
    path = Path(path)
    tmp = tmp_path(path)
    rows: list[dict[str, Any]] = []
    digest = hashlib.sha256()
    raw = open(tmp, "wb", buffering=1 << 20)  # noqa: SIM115 - closed by the commit or below
    try:
        sink = _HashingWriter(raw, digest)
        tw = wds.TarWriter(sink, encoder=False, mtime=TAR_MTIME, user="anoaug", group="anoaug")
        try:
            for s in samples:
                member = {"__key__": s.key, IMAGE_EXT: s.image_png, MASK_EXT: s.mask_png, META_EXT: s.json_bytes}
                tw.write(member | s.extras_png)
                rows.append(
                    {
                        "shard": path.name,
                        "key": s.key,
                        "global_index": s.global_index,
                        "image_sha256": s.image_sha256 or hashlib.sha256(s.image_png).hexdigest(),
                        "mask_sha256": s.mask_sha256 or hashlib.sha256(s.mask_png).hexdigest(),
                        "mask_pixels": s.mask_pixels,
                        "lineage": s.lineage,
                    }
                )
                if on_sample is not None:
                    on_sample(s)
        finally:
            tw.close()
        raw.flush()
        size = raw.tell()
    except BaseException:
        raw.close()
        tmp.unlink(missing_ok=True)
        raise
    shard_row = {
        "shard": path.name,
        "count": len(rows),
        "first_global_index": rows[0]["global_index"] if rows else 0,
        "sha256": digest.hexdigest(),
        "bytes": size,
    }
    then = None if on_commit is None else (lambda: on_commit(shard_row, rows))
    (committer or _INLINE).submit(raw, tmp, path, then)
    return shard_row, rows


_INLINE = ShardCommitter(background=False)


class _HashingWriter:
    """A write-only file object that hashes what passes through (saves re-reading the shard)."""

    def __init__(self, raw: Any, digest: Any) -> None:
        self.raw, self.digest = raw, digest

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()

    def tell(self) -> int:
        return self.raw.tell()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
