"""The output guard: where a command may write, and what it leaves behind when it fails.

Every command that writes calls :func:`check_out` before it writes anything: the output must not lie
inside an input dataset (symlinks resolved), must not be an existing file where a folder is meant (or
a folder where a file is meant), and its nearest existing folder must take a new file (a read-only or
full file system is found here, not halfway through). :func:`check_name` and :func:`check_relpath` keep
names and listed paths (category, defect type, dataset name, CSV entries) inside their root.
:func:`undo_on_failure` removes what a failing command made, so ``--out`` is left as it was found.
:func:`os_error_message` turns a disk-full / read-only / permission error into one line naming the path
(the CLI prints it, exit 2). :func:`die_with_parent` makes a worker process end with its parent.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath

from anoaug.errors import AnoaugError, DatasetError

# Errors of the place written to, not of the program: reported as one line naming the path.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EEXIST,
                          errno.ENOTDIR, errno.EISDIR})  # fmt: skip
_SNAPSHOT_LIMIT = 20_000  # files under --out remembered before a command; above it only the top level


class OutputError(AnoaugError):
    """An output location cannot be used: inside the input, an existing file, unwritable or full."""


def is_inside(a: Path, b: Path) -> bool:
    """True when ``a`` is ``b`` or below it (both resolved)."""
    return a == b or b in a.parents


def check_out(
    out: str | Path,
    inputs: Iterable[str | Path] = (),
    option: str = "--out",
    kind: str = "dir",
) -> Path:
    """Refuse ``out`` before anything is written; return it resolved.

    ``inputs`` are the dataset folders read (root, category folder): ``out`` may not be one of them or
    lie below one, symlinks resolved. ``kind`` is ``"dir"`` (an existing file is refused) or ``"file"``
    (an existing folder is refused). The nearest existing ancestor must accept a new file.
    """
    path = Path(out).expanduser()
    resolved = path.resolve()
    for src in inputs:
        root = Path(src).expanduser().resolve()
        if is_inside(resolved, root):
            raise OutputError(
                f"refusing to write inside the input dataset {root} ({option}); choose a folder outside it",
                path,
            )
    if kind == "dir" and path.exists() and not path.is_dir():
        raise OutputError(f"{option} is an existing file, not a folder", path)
    if kind == "file" and path.is_dir():
        raise OutputError(f"{option} is an existing folder, not a file", path)
    probe_writable(resolved if kind == "dir" else resolved.parent, option)
    return resolved


def probe_writable(folder: Path, option: str = "--out") -> None:
    """OutputError naming the place unless a file can be created in ``folder`` or its nearest existing
    ancestor (a real write, not os.access: root passes access checks on a read-only file system)."""
    here = folder
    while not here.exists():
        if here.parent == here:
            break
        here = here.parent
    if not here.is_dir():
        raise OutputError(f"{option}: {here} is a file, so {folder} cannot be made", folder)
    try:
        fd, tmp = tempfile.mkstemp(prefix=".anoaug-probe.", dir=here)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise OutputError(f"{option} cannot be written ({exc.strerror or exc})", folder) from None


def check_name(name: str, what: str) -> str:
    """``name`` if it is one plain path component (no separator, not ``.``/``..``, not empty)."""
    bad = not name or name in (".", "..") or any(c in name for c in "/\\\0") or name != name.strip()
    if bad:
        raise DatasetError(f"{what} {name!r} must be a plain name (no '/', '\\', '..', or surrounding spaces)")
    return name


def check_relpath(rel: str, where: str | Path | None = None, what: str = "path") -> str:
    """``rel`` if it is a relative path that stays below its root (no leading '/', drive or climbing '..')."""
    p = PurePosixPath(rel.replace("\\", "/"))
    climbs = os.path.normpath(p.as_posix()).split("/")[0] == ".."
    if not rel or p.is_absolute() or (len(rel) > 1 and rel[1] == ":") or climbs:
        raise DatasetError(f"{what} {rel!r} is outside the dataset root (absolute or climbing '..')", where)
    return rel


def os_error_message(exc: OSError, fallback: str | Path | None = None) -> str | None:
    """One line for a write-side OSError (disk full, read-only, permission), naming the path; else None."""
    if exc.errno not in WRITE_ERRNOS:
        return None
    where = exc.filename if exc.filename is not None else fallback
    reason = exc.strerror or os.strerror(exc.errno or 0)
    return f"{where}: cannot write ({reason})" if where is not None else f"cannot write ({reason})"


# --- nothing half-written -------------------------------------------------------------------------


def _snapshot(out: Path) -> tuple[set[str], bool] | None:
    """Relative paths under ``out`` now and whether they go deep (None when ``out`` does not exist); only
    the top level when there are very many."""
    if not out.exists():
        return None
    found: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(out):
        base = Path(dirpath).relative_to(out)
        for n in dirnames + filenames:
            found.add((base / n).as_posix())
        if len(found) > _SNAPSHOT_LIMIT:
            return {p.name for p in out.iterdir()}, False
    return found, True


def _remove(p: Path) -> None:
    with contextlib.suppress(OSError):
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


def _remove_new(out: Path, before: tuple[set[str], bool] | None) -> None:
    if before is None:
        shutil.rmtree(out, ignore_errors=True)
        return
    known, deep = before
    if not out.is_dir():
        return
    if not deep:
        for p in out.iterdir():
            if p.name not in known:
                _remove(p)
        return
    for dirpath, dirnames, filenames in os.walk(out, topdown=False):
        base = Path(dirpath).relative_to(out)
        for n in filenames + dirnames:
            if (base / n).as_posix() not in known:
                _remove(Path(dirpath) / n)


def new_folder(folder: str | Path) -> Path | None:
    """The topmost missing folder on the way to ``folder`` (what writing a file there creates first), or
    None when ``folder`` exists: pass it to :func:`undo_on_failure` around an atomic file write."""
    folder = Path(folder).resolve()
    if folder.exists():
        return None
    top = folder
    while not top.parent.exists() and top.parent != top:
        top = top.parent
    return top


@contextlib.contextmanager
def undo_on_failure(out: str | Path | None, keep: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """Run a command's writes; if it raises (anything but ``keep``), remove every file and folder it made
    under ``out`` (and ``out`` itself when it did not exist), so a failure leaves ``out`` as it was.

    Files that existed before and were overwritten are not restored (commands write new names atomically).
    ``out=None`` watches nothing.
    """
    if out is None:
        yield
        return
    out = Path(out)
    before = _snapshot(out)
    try:
        yield
    except keep:
        raise
    except BaseException:
        _remove_new(out, before)
        raise


# --- one writer per output --------------------------------------------------------------------------


@contextlib.contextmanager
def exclusive_lock(path: str | Path, command: str, error: type[AnoaugError] = OutputError) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the file ``path`` (released by the kernel when the process dies, even on
    kill -9); ``error`` naming the holder's pid at once when another process holds it."""
    path = Path(path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            raise error(
                f"another `{command}` (pid {holder}) is writing to this directory; "
                "wait for it to finish or choose another --out",
                path.parent,
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock


# --- workers end with their parent ----------------------------------------------------------------

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent() -> None:
    """Make this (worker) process end when its parent does, even on kill -9 of the parent.

    Linux: prctl(PR_SET_PDEATHSIG, SIGKILL) through ctypes (no library wraps it); elsewhere a daemon thread
    that polls the parent pid. Either way a parent already gone when this runs ends the process at once.
    """
    import multiprocessing

    spawner = multiprocessing.parent_process()
    parent = spawner.pid if spawner is not None and spawner.pid else os.getppid()
    armed = False
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    if os.getppid() != parent:
        os._exit(1)
    if not armed:

        def watch() -> None:
            import time

            while os.getppid() == parent:
                time.sleep(1.0)
            os._exit(1)

        threading.Thread(target=watch, name="anoaug-parent-watch", daemon=True).start()
