"""validate_dataset: one problem per malformed case, naming the file; and the `anoaug validate` command."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from anoaug.cli import app
from anoaug.data.validation import DEFAULT_MASK_TOLERANCE, Problem, validate_dataset

CAT = "widget"


def gt(root: Path, defect: str = "scratch", stem: str = "000") -> Path:
    return root / CAT / "ground_truth" / defect / f"{stem}_mask.png"


def only_problem(root: Path, **kwargs: object) -> Problem:
    problems = validate_dataset(root, **kwargs)  # type: ignore[arg-type]
    assert len(problems) == 1, [str(p) for p in problems]
    return problems[0]


def test_clean_dataset_has_no_problems(tiny_mvtec: Path) -> None:
    before = sorted(p.relative_to(tiny_mvtec) for p in tiny_mvtec.rglob("*"))
    assert validate_dataset(tiny_mvtec) == []
    assert validate_dataset(tiny_mvtec, category=CAT, format="mvtec") == []
    assert sorted(p.relative_to(tiny_mvtec) for p in tiny_mvtec.rglob("*")) == before  # nothing written


def test_problem_str() -> None:
    assert str(Problem(Path("a/b.png"), "broken")) == "a/b.png: broken"
    assert str(Problem(Path("m.png"), "orphan", "warning")) == "m.png: warning: orphan"
    assert not Problem(Path("m.png"), "orphan", "warning").is_error


def test_corrupt_image(tiny_mvtec: Path) -> None:
    bad = tiny_mvtec / CAT / "train" / "good" / "001.png"
    bad.write_bytes(np.random.default_rng(1).bytes(300))
    p = only_problem(tiny_mvtec)
    assert p.path == bad and p.message.startswith("cannot read image")


def test_truncated_image(tiny_mvtec: Path) -> None:
    img = tiny_mvtec / CAT / "test" / "good" / "000.png"
    img.write_bytes(img.read_bytes()[:200])
    p = only_problem(tiny_mvtec)
    assert p.path == img and "cannot read image" in p.message


def test_missing_mask(tiny_mvtec: Path) -> None:
    gt(tiny_mvtec, "dent").unlink()
    p = only_problem(tiny_mvtec)
    assert p.path == tiny_mvtec / CAT / "test" / "dent" / "000.png"
    assert p.message == "defect image (dent) has no mask"


def test_mask_size_mismatch(tiny_mvtec: Path) -> None:
    mask = np.zeros((16, 24), np.uint8)
    mask[2:5, 2:5] = 255
    Image.fromarray(mask).save(gt(tiny_mvtec))
    p = only_problem(tiny_mvtec)
    assert p.path == gt(tiny_mvtec) and p.message == "mask is 24x16 but its image is 32x32"


def test_grey_level_mask_reports_count(tiny_mvtec: Path) -> None:
    mask = np.zeros((32, 32), np.uint8)
    mask[0:8, :] = 255
    mask[8, :4] = 60
    mask[9, :4] = 128
    mask[10, :4] = 200
    mask[11, :4] = 5  # within the tolerance of 0: binary
    mask[12, :4] = 250  # within the tolerance of 255: binary
    Image.fromarray(mask).save(gt(tiny_mvtec))
    p = only_problem(tiny_mvtec)
    assert p.path == gt(tiny_mvtec)
    assert p.message.startswith("mask is not binary: 3 grey level(s) between 11 and 244 (12 pixels)")
    assert validate_dataset(tiny_mvtec, mask_threshold=127) == []  # tolerance raised: accepted


def test_jpeg_like_mask_within_tolerance_is_binary(tiny_mvtec: Path) -> None:
    mask = np.zeros((32, 32), np.uint8)
    mask[:8] = 255 - DEFAULT_MASK_TOLERANCE
    mask[8:10] = DEFAULT_MASK_TOLERANCE
    Image.fromarray(mask).save(gt(tiny_mvtec))
    assert validate_dataset(tiny_mvtec) == []
    assert "2 grey level(s)" in only_problem(tiny_mvtec, mask_threshold=DEFAULT_MASK_TOLERANCE - 1).message


def test_empty_mask(tiny_mvtec: Path) -> None:
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(gt(tiny_mvtec, "dent"))
    p = only_problem(tiny_mvtec)
    assert p.path == gt(tiny_mvtec, "dent") and p.message == "mask is empty (no pixel >= 128)"


def test_zero_one_mask_gets_a_hint(tiny_mvtec: Path) -> None:
    mask = np.zeros((32, 32), np.uint8)
    mask[:4] = 1
    Image.fromarray(mask).save(gt(tiny_mvtec, "dent"))
    p = only_problem(tiny_mvtec)
    assert "0/1 masks must be saved as 0/255" in p.message


def test_corrupt_mask(tiny_mvtec: Path) -> None:
    gt(tiny_mvtec).write_bytes(b"not a png at all")
    p = only_problem(tiny_mvtec)
    assert p.path == gt(tiny_mvtec) and p.message.startswith("cannot read image")


def test_empty_category(tmp_path: Path, tiny_mvtec: Path) -> None:
    (tiny_mvtec / "hollow" / "train" / "good").mkdir(parents=True)
    p = only_problem(tiny_mvtec)
    assert p.path == tiny_mvtec / "hollow" and p.message == "category has no images (mvtec layout)"


def test_no_train_good(make_mvtec: Callable[..., Path], tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "d", n_train=0)
    p = only_problem(root)
    assert p.path == root / CAT and "no normal training images" in p.message


def test_unknown_layout_and_missing_root(tmp_path: Path) -> None:
    (tmp_path / "x" / "y").mkdir(parents=True)
    p = only_problem(tmp_path / "x")
    assert p.path == tmp_path / "x" and p.message.startswith("unknown layout: expected")
    p = only_problem(tmp_path / "nowhere")
    assert p.path == tmp_path / "nowhere" and p.message == "dataset root does not exist"


def test_missing_category(tiny_mvtec: Path) -> None:
    p = only_problem(tiny_mvtec, category="gadget")
    assert p.path == tiny_mvtec / "gadget" and "not found" in p.message


@pytest.mark.parametrize(
    ("mode", "color", "expected"),
    [
        ("RGBA", (10, 20, 30, 100), "image has transparent pixels (mode RGBA)"),
        ("CMYK", (0, 0, 0, 0), "CMYK images are not supported"),
        ("I;16", 3000, "16-bit images (mode I;16) are not supported"),
    ],
)
def test_unusable_image_mode(tiny_mvtec: Path, mode: str, color: object, expected: str) -> None:
    path = tiny_mvtec / CAT / "train" / "good" / ("002.tif" if mode == "CMYK" else "002.png")
    (tiny_mvtec / CAT / "train" / "good" / "002.png").unlink()
    Image.new(mode, (32, 32), color).save(path)  # type: ignore[arg-type]
    p = only_problem(tiny_mvtec)
    assert p.path == path and p.message.startswith(expected)


def test_grey_and_opaque_rgba_images_are_accepted(tiny_mvtec: Path) -> None:
    Image.new("L", (32, 32), 9).save(tiny_mvtec / CAT / "train" / "good" / "000.png")
    Image.new("RGBA", (32, 32), (1, 2, 3, 255)).save(tiny_mvtec / CAT / "train" / "good" / "001.png")
    assert validate_dataset(tiny_mvtec) == []


def test_orphan_mask_is_a_warning(tiny_mvtec: Path) -> None:
    orphan = gt(tiny_mvtec, "dent", "007")
    Image.fromarray(np.full((32, 32), 255, np.uint8)).save(orphan)
    p = only_problem(tiny_mvtec)
    assert p.path == orphan and p.severity == "warning" and "orphan" in p.message


def test_visa_listed_image_missing(tmp_path: Path) -> None:
    normal = tmp_path / "pcb1" / "Data" / "Images" / "Normal"
    normal.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(normal / "0000.JPG")
    (tmp_path / "split_csv").mkdir()
    (tmp_path / "split_csv" / "1cls.csv").write_text(
        "object,split,label,image,mask\n"
        "pcb1,train,normal,pcb1/Data/Images/Normal/0000.JPG,\n"
        "pcb1,train,normal,pcb1/Data/Images/Normal/0003.JPG,\n"
    )
    p = only_problem(tmp_path)
    assert p.path == normal / "0003.JPG" and p.message == "file does not exist"


def test_folder_layout_missing_mask(tmp_path: Path) -> None:
    for name in ("normal/a.png", "defect/chip/c.png"):
        (tmp_path / "cat" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "cat" / name)
    p = only_problem(tmp_path)
    assert p.path == tmp_path / "cat" / "defect" / "chip" / "c.png" and "has no mask" in p.message


# --- CLI --------------------------------------------------------------------------------------

runner = CliRunner()


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["validate", *args])
    assert "Traceback" not in result.output + result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


def test_cli_clean_dataset_summary(tiny_mvtec: Path) -> None:
    code, out, err = invoke(str(tiny_mvtec))
    assert code == 0 and err == ""
    assert "widget (mvtec): 3 train good, 2 test good, 1 dent, 2 scratch" in out


def test_cli_problems_exit_1_one_line_each(tiny_mvtec: Path) -> None:
    gt(tiny_mvtec, "dent").unlink()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(gt(tiny_mvtec, "scratch", "001"))
    code, out, err = invoke(str(tiny_mvtec), "--category", CAT)
    assert code == 1
    lines = err.strip().splitlines()
    assert lines[0] == f"{tiny_mvtec / CAT / 'test' / 'dent' / '000.png'}: defect image (dent) has no mask"
    assert lines[1] == f"{gt(tiny_mvtec, 'scratch', '001')}: mask is empty (no pixel >= 128)"
    assert lines[2].startswith("2 problem(s)")
    assert len(lines) == 3 and "ok" not in out


def test_cli_mask_tolerance_option(tiny_mvtec: Path) -> None:
    mask = np.zeros((32, 32), np.uint8)
    mask[:8] = 230
    Image.fromarray(mask).save(gt(tiny_mvtec))
    assert invoke(str(tiny_mvtec))[0] == 1
    assert invoke(str(tiny_mvtec), "--mask-tolerance", "30")[0] == 0


def test_cli_warnings_do_not_fail(tiny_mvtec: Path) -> None:
    Image.fromarray(np.full((32, 32), 255, np.uint8)).save(gt(tiny_mvtec, "dent", "009"))
    code, out, err = invoke(str(tiny_mvtec))
    assert code == 0 and "warning: mask belongs to no image" in err and "ok widget" in out


def test_cli_bad_root_unknown_layout_and_category(tmp_path: Path, tiny_mvtec: Path) -> None:
    code, _, err = invoke(str(tmp_path / "missing"))
    assert code == 2 and err.count("\n") == 1 and "dataset root does not exist" in err
    (tmp_path / "junk" / "a").mkdir(parents=True)
    code, _, err = invoke(str(tmp_path / "junk"))
    assert code == 2 and err.count("\n") == 1 and "unknown layout: expected" in err
    code, _, err = invoke(str(tiny_mvtec), "--category", "nope")
    assert code == 2 and "category 'nope' not found" in err and "widget" in err
    code, _, err = invoke(str(tiny_mvtec), "--format", "coco")
    assert code == 2 and "unknown format 'coco'" in err


def test_cli_default_tolerance_matches_library() -> None:
    import inspect

    from anoaug.cli import validate_cmd

    assert inspect.signature(validate_cmd).parameters["mask_tolerance"].default == DEFAULT_MASK_TOLERANCE
