"""Every command guards its input and its output (issue 20): a matrix of bad inputs and bad options x commands.

Each case runs the CLI in-process on a tiny MVTec-layout category in a temp folder and asserts: a non-zero
exit, the bad file or option named, no traceback, one error line (for the project's own errors), and that
nothing under the temp folder changed (the input dataset and the output location are as they were found).
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import FLOW_TINY, REPO, write_tiny_mvtec

CAT = "widget"
COMMANDS = ("validate", "split", "masks", "generate", "evaluate", "run")
WRITERS = COMMANDS[1:]


def make_category(root: Path) -> Path:
    """32 px, 3 normals for training, 2 held out, 2 defect types x 3 defects with 0/255 masks."""
    return write_tiny_mvtec(root, CAT, n_train=3, n_test_good=2, defects={"scratch": 3, "dent": 3}, size=32)


def cli_args(command: str, root: Path, out: Path, category: str = CAT) -> list[str]:
    """The command line of ``command`` on the category, writing to ``out`` (split: ``out`` is the manifest)."""
    common = [str(root), "-c", category]
    return {
        "validate": ["validate", *common],
        "split": ["split", *common, "--out", str(out)],
        "masks": ["masks", *common, "--out", str(out), "-n", "3"],
        "generate": ["generate", *common, "--out", str(out), "-g", "cutpaste", "-n", "2"],
        "evaluate": ["evaluate", *common, "--out", str(out), "--arms", "real-few", "--seeds", "0", "--epochs", "1"],
        "run": ["run", *common, "--out", str(out), *FLOW_TINY],
    }[command]


def run_cli(args: list[str]) -> tuple[int, str]:
    """`anoaug ARGS` in-process: exit code and what a terminal shows (stdout and stderr interleaved, once);
    an exception that escapes the command (a traceback for a user) fails the test."""
    from typer.testing import CliRunner

    from flows.cli import app

    result = CliRunner().invoke(app, args)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def default_out(command: str, tmp: Path) -> Path:
    """An output location that exists and holds one file of the user's (it must stay as it is)."""
    folder = tmp / "out"
    folder.mkdir(exist_ok=True)
    (folder / "keep.txt").write_text("mine\n")
    return folder / "split.parquet" if command == "split" else folder


def tree_state(top: Path) -> dict[str, str]:
    """relpath -> sha256 (files) / 'dir' / 'link:<target>' of everything under ``top``."""
    state: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = p.relative_to(top).as_posix()
            if p.is_symlink():
                state[rel] = f"link:{os.readlink(p)}"
            elif p.is_dir():
                state[rel] = "dir"
            else:
                state[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return state


def check_refused(args: list[str], named: str, top: Path, one_line: bool = True) -> str:
    """Run ``args``; assert the refusal and that nothing under ``top`` changed. Returns the output."""
    before = tree_state(top)
    code, text = run_cli(args)
    assert code != 0, text
    assert named in text, text
    assert "Traceback" not in text, text
    if one_line:
        lines = [line for line in text.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), text
    assert tree_state(top) == before
    return text


# --- bad files ------------------------------------------------------------------------------------


def _png(width: int, height: int, depth: int, colour: int, row: bytes) -> bytes:
    """A PNG written by hand: Pillow cannot write 16-bit colour, and a size-bomb header needs no pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    idat = zlib.compress(b"".join(b"\0" + row for _ in range(min(height, 32))))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _save(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    img = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    img.save(path)


NORMAL = f"{CAT}/train/good/001.png"
MASK = f"{CAT}/ground_truth/dent/000_mask.png"


def _wrong_size(root: Path) -> str:
    _save(root / MASK, np.full((16, 16), 255, np.uint8))
    return MASK


def _grey_ramp(root: Path) -> str:
    _save(root / MASK, np.tile(np.arange(0, 256, 8, dtype=np.uint8), (32, 1)))
    return MASK


def _empty_mask(root: Path) -> str:
    _save(root / MASK, np.zeros((32, 32), np.uint8))
    return MASK


def _missing_mask(root: Path) -> str:
    (root / f"{CAT}/ground_truth/scratch/001_mask.png").unlink()
    return f"{CAT}/test/scratch/001.png"


def _rgb16(root: Path) -> str:
    (root / NORMAL).write_bytes(_png(32, 32, 16, 2, b"\x12\x34" * 3 * 32))
    return NORMAL


def _grey16(root: Path) -> str:
    Image.fromarray(np.full((32, 32), 40000, np.uint16)).save(root / NORMAL)
    return NORMAL


def _mask_rgb16(root: Path) -> str:
    (root / MASK).write_bytes(_png(32, 32, 16, 2, b"\xff\xff" * 3 * 32))
    return MASK


def _truncated(root: Path) -> str:
    data = (root / NORMAL).read_bytes()
    (root / NORMAL).write_bytes(data[: len(data) // 2])
    return NORMAL


def _empty_file(root: Path) -> str:
    (root / NORMAL).write_bytes(b"")
    return NORMAL


def _transparent(root: Path) -> str:
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., 3] = 100
    _save(root / NORMAL, rgba)
    return NORMAL


def _size_bomb(root: Path) -> str:
    (root / NORMAL).write_bytes(_png(20000, 20000, 8, 0, b"\0" * 20000))
    return NORMAL


BAD_FILES: dict[str, Callable[[Path], str]] = {
    "mask-wrong-size": _wrong_size,
    "mask-grey-ramp": _grey_ramp,
    "mask-all-zero": _empty_mask,
    "mask-missing": _missing_mask,
    "mask-16bit-rgb": _mask_rgb16,
    "image-16bit-rgb": _rgb16,
    "image-16bit-grey": _grey16,
    "image-truncated": _truncated,
    "image-empty-file": _empty_file,
    "image-transparent": _transparent,
    "image-20000px": _size_bomb,
}


def _column(commands: tuple[str, ...]) -> list:
    """Commands as parameters; the `run` column is marked slow (it still fails within the guard)."""
    return [pytest.param(c, marks=pytest.mark.slow) if c == "run" else c for c in commands]


@pytest.mark.parametrize("case", list(BAD_FILES))
@pytest.mark.parametrize("command", _column(COMMANDS))
def test_bad_file_is_refused_by_every_command(tmp_path: Path, command: str, case: str) -> None:
    root = make_category(tmp_path / "data set")
    named = BAD_FILES[case](root)
    out = default_out(command, tmp_path)
    # validate lists every problem and a summary (exit 1); every other command stops at the first (exit 2).
    check_refused(cli_args(command, root, out), named, tmp_path, one_line=command != "validate")


# --- bad outputs and options ----------------------------------------------------------------------


def _out_inside(command: str, tmp: Path, root: Path) -> tuple[list[str], str]:
    out = root / CAT / "_out"
    return cli_args(command, root, out / "split.parquet" if command == "split" else out), "inside the input dataset"


def _out_symlink_inside(command: str, tmp: Path, root: Path) -> tuple[list[str], str]:
    (tmp / "link").symlink_to(root / CAT, target_is_directory=True)
    out = tmp / "link" / "_out"
    return cli_args(command, root, out / "split.parquet" if command == "split" else out), "inside the input dataset"


def _out_is_file(command: str, tmp: Path, root: Path) -> tuple[list[str], str]:
    if command == "split":  # the manifest is a file: an existing folder is what is wrong there
        (tmp / "folder").mkdir()
        return cli_args(command, root, tmp / "folder"), "existing folder"
    (tmp / "a-file").write_text("not a folder\n")
    return cli_args(command, root, tmp / "a-file"), "existing file"


def _category_escapes(command: str, tmp: Path, root: Path) -> tuple[list[str], str]:
    make_category(tmp / "other")  # a category reachable by climbing out of the root
    return cli_args(command, root, default_out(command, tmp), category=f"../other/{CAT}"), f"../other/{CAT}"


def _negative_seed(command: str, tmp: Path, root: Path) -> tuple[list[str], str]:
    args = cli_args(command, root, default_out(command, tmp))
    if command == "validate":
        return [*args, "--mask-tolerance", "-1"], "--mask-tolerance"
    if command == "evaluate":
        return [*args, "--seeds", "0,-1"], "--seeds"
    return [*args, "--seed", "-1"], "--seed"


def _bad_count(command: str, tmp: Path, root: Path) -> tuple[list[str], str]:
    args = cli_args(command, root, default_out(command, tmp))
    if command == "split":
        return [*args, "--fraction", "-0.5"], "--fraction"
    if command == "evaluate":
        return [*args, "--seeds", "x,y"], "--seeds"
    if command == "run":
        return [*args, "--set", "generation.count_per_type=-5"], "generation.count_per_type"
    if command == "masks":
        return [*args, "--set", "split.gen_train_fraction=1.5"], "split.gen_train_fraction"
    return [*args, "-n", "-5"], "-n"


def _unwritable(command: str, tmp: Path, root: Path) -> tuple[list[str], str]:
    out = tmp / "read-only" / "run"
    return cli_args(command, root, out / "split.parquet" if command == "split" else out), "Read-only file system"


BAD_OPTIONS: dict[str, Callable[[str, Path, Path], tuple[list[str], str]]] = {
    "out-inside-dataset": _out_inside,
    "out-symlink-into-dataset": _out_symlink_inside,
    "out-is-existing-file": _out_is_file,
    "out-unwritable": _unwritable,
    "category-escapes-root": _category_escapes,
    "negative-seed-or-tolerance": _negative_seed,
    "bad-count-fraction-seeds": _bad_count,
}


def _read_only_probe(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """The file system under ``folder`` refuses new files (EROFS), as a read-only mount would; this test runs
    as root, for whom a chmod-ed folder stays writable."""
    import anoaug.outputs

    real = anoaug.outputs.tempfile.mkstemp

    def mkstemp(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        if Path(kwargs.get("dir", "")).resolve().is_relative_to(folder.resolve()):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(folder))
        return real(*args, **kwargs)

    monkeypatch.setattr(anoaug.outputs.tempfile, "mkstemp", mkstemp)


# validate takes no --out: the output cases do not apply to it.
OPTION_MATRIX = [
    pytest.param(command, case, marks=[pytest.mark.slow] if command == "run" else [])
    for command in COMMANDS
    for case in BAD_OPTIONS
    if not (command == "validate" and case.startswith("out-"))
]


@pytest.mark.parametrize(("command", "case"), OPTION_MATRIX)
def test_bad_output_or_option_is_refused(
    tmp_path: Path, command: str, case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_category(tmp_path / "data")
    if case == "out-unwritable":
        (tmp_path / "read-only").mkdir()
        _read_only_probe(monkeypatch, tmp_path / "read-only")
    args, named = BAD_OPTIONS[case](command, tmp_path, root)
    usage_error = case in ("negative-seed-or-tolerance", "bad-count-fraction-seeds") and named.startswith("-")
    check_refused(args, named, tmp_path, one_line=not usage_error)


def test_visa_csv_naming_files_outside_the_root_is_refused(tmp_path: Path) -> None:
    """A VisA split CSV row may not name a file outside the dataset root (absolute or climbing)."""
    root = tmp_path / "visa"
    for sub in ("Normal", "Anomaly"):
        (root / "pcb" / "Data" / "Images" / sub).mkdir(parents=True)
    (tmp_path / "secret.png").write_bytes(b"not yours")
    (root / "split_csv").mkdir()
    (root / "split_csv" / "1cls.csv").write_text(
        "object,split,label,image,mask\npcb,train,normal,../secret.png,\npcb,train,normal,/etc/hostname,\n"
    )
    for command in ("validate", "split", "masks"):
        out = default_out(command, tmp_path)
        args = [*cli_args(command, root, out, category="pcb")]
        check_refused(args, "1cls.csv", tmp_path, one_line=command != "validate")


def test_spec_dataset_name_cannot_climb(tmp_path: Path) -> None:
    root = make_category(tmp_path / "data")
    args = [*cli_args("masks", root, default_out("masks", tmp_path)), "--set", "dataset.name=../../escaped"]
    check_refused(args, "../../escaped", tmp_path)


# --- failures while writing leave nothing half-written ------------------------------------------


def test_masks_disk_full_leaves_out_as_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import anoaug.masks.run

    root = make_category(tmp_path / "data")
    calls = {"n": 0}
    real = anoaug.masks.run.write_png

    def write_png(path, array):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, array)

    monkeypatch.setattr(anoaug.masks.run, "write_png", write_png)
    out = default_out("masks", tmp_path)
    text = check_refused(cli_args("masks", root, out), str(out), tmp_path)
    assert "No space left on device" in text and calls["n"] > 3  # it did fail halfway, and undid it


def test_generate_disk_full_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import anoaug.shards.generate

    def full(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(anoaug.shards.generate, "write_shard", full)
    root = make_category(tmp_path / "data")
    out = tmp_path / "gen"
    code, text = run_cli(cli_args("generate", root, out))
    assert code == 2 and "Traceback" not in text
    assert [line for line in text.splitlines() if line.strip()] == [
        f"error: {out}: cannot write (No space left on device)"
    ]


def test_evaluate_failure_removes_what_it_made(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import anoaug.errors
    import anoaug.evaluation

    def boom(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        out = Path(args[4])
        (out / "runs").mkdir(parents=True)
        (out / "run.json").write_text("{}")
        raise anoaug.errors.AnoaugError("training failed")

    monkeypatch.setattr(anoaug.evaluation, "run_evaluation", boom)
    root = make_category(tmp_path / "data")
    check_refused(cli_args("evaluate", root, default_out("evaluate", tmp_path)), "training failed", tmp_path)


# --- fine inputs keep working -------------------------------------------------------------------


def test_fine_inputs_pass_every_guard(tmp_path: Path) -> None:
    """Opaque RGBA, grey JPEG, unicode and spaces in the path and names, a large but safe image."""
    root = make_category(tmp_path / "données à vérifier")
    good = root / CAT / "train" / "good"
    rgba = np.concatenate([np.asarray(Image.open(good / "000.png")), np.full((32, 32, 1), 255, np.uint8)], axis=2)
    Image.fromarray(rgba).save(good / "000.png")
    grey = np.asarray(Image.open(good / "001.png").convert("L"))
    (good / "001.png").unlink()
    Image.fromarray(grey).save(good / "001 grey é.jpg", quality=95)
    big = np.zeros((3000, 4000), np.uint8)  # 12 Mpx: large, far below the decompression-bomb limit
    big[::7] = 200
    Image.fromarray(big).save(root / CAT / "test" / "good" / "large.png")
    buf = io.BytesIO()
    Image.fromarray(np.full((32, 32), 255, np.uint8)).convert("1").save(buf, format="PNG")  # bilevel mask
    (root / CAT / "ground_truth" / "dent" / "002_mask.png").write_bytes(buf.getvalue())
    out = tmp_path / "sortie ü"
    for command in ("validate", "split", "masks", "generate"):
        target = out / command / ("split.parquet" if command == "split" else "")
        code, text = run_cli(cli_args(command, root, target))
        assert code == 0, (command, text)
    assert (out / "generate" / "samples.parquet").is_file()


# --- run: cached validation stage and one writer per run directory --------------------------------


def test_validation_stage_is_cached_by_listing(tmp_path: Path) -> None:
    from anoaug.errors import DatasetError
    from anoaug.pipeline import stages
    from anoaug.pipeline.config import prepare_spec

    root = make_category(tmp_path / "data")
    spec = prepare_spec(str(root), category=CAT)
    run_dir = tmp_path / "runs" / "x"
    first = stages.stage_validate(spec, root, run_dir)
    assert not first.skipped and first.info["images"] == 11
    assert stages.stage_validate(spec, root, run_dir).skipped
    _grey_ramp(root)  # a changed listing (size, mtime) is validated again
    with pytest.raises(DatasetError, match="not binary"):
        stages.stage_validate(spec, root, run_dir)


@pytest.mark.slow
def test_second_run_on_one_out_is_refused(tmp_path: Path) -> None:
    from anoaug.outputs import exclusive_lock
    from anoaug.pipeline import stages
    from flows.driver import RUN_LOCK, RunOptions, prepare_targets

    root = make_category(tmp_path / "data")
    out = tmp_path / "runs"
    (target,) = prepare_targets([str(root)], RunOptions(out=out, category=CAT))
    run_dir = stages.run_dir_for(target.spec, out)
    run_dir.mkdir(parents=True)
    with exclusive_lock(run_dir / RUN_LOCK, "anoaug run"):  # flock: a second open file is refused, same process
        code, text = run_cli(cli_args("run", root, out))
    assert code == 2 and "another `anoaug run` (pid" in text and "Traceback" not in text


# --- killing generate kills its workers ---------------------------------------------------------


def _children(pid: int) -> set[int]:
    kids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            kids.add(int(stat.parent.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
def test_kill_9_of_generate_kills_its_workers(tmp_path: Path) -> None:
    root = make_category(tmp_path / "data")
    args = [*cli_args("generate", root, tmp_path / "gen"), "--workers", "2"]
    args[args.index("-n") + 1] = "100000"
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", *args], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while len(_children(proc.pid)) < 3 and time.monotonic() < deadline:  # 2 workers + resource tracker
            time.sleep(0.2)
        workers = _children(proc.pid)
        assert len(workers) >= 3, "the workers never started"
        time.sleep(1.0)  # let them finish initialising (the parent-death signal is armed there)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 60
        while any(_alive(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [p for p in workers if _alive(p)]
    finally:
        if proc.poll() is None:
            proc.kill()
