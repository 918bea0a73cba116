"""Dataset layout readers (MVTec AD, VisA, folder), layout detection and image/mask loading."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anoaug.data import formats
from anoaug.data.formats import folder, mvtec, visa
from anoaug.data.io import load_image, load_mask
from anoaug.data.records import GOOD, ImageRecord
from anoaug.errors import DatasetError


def save(path: Path, size: int = 32, mode: str = "RGB", value: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (size, size), value if mode in ("L", "1") else (value,) * len(mode)).save(path)
    return path


def save_mask(path: Path, size: int = 32) -> Path:
    arr = np.zeros((size, size), np.uint8)
    arr[2:6, 2:6] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


# --- MVTec AD ---------------------------------------------------------------------------------


def test_mvtec_records(tiny_mvtec: Path) -> None:
    (tiny_mvtec / "license.txt").write_text("x")
    (tiny_mvtec / "notes").mkdir()  # a folder without train/ or test/ is not a category
    assert mvtec.list_categories(tiny_mvtec) == ["widget"]
    data = mvtec.read_category(tiny_mvtec, "widget")
    assert data.dataset == "mvtec" and data.category == "widget" and data.root == tiny_mvtec
    assert [r.relpath for r in data.normal_train] == [f"widget/train/good/00{i}.png" for i in range(3)]
    assert [r.relpath for r in data.normal_test] == ["widget/test/good/000.png", "widget/test/good/001.png"]
    assert data.defect_types == ["dent", "scratch"]
    assert (
        ImageRecord(
            "widget/test/scratch/001.png", "scratch", "test", "widget/ground_truth/scratch/001_mask.png"
        )
        in data.records
    )
    assert all(r.mask_relpath for r in data.defects)
    assert len(data.records) == 8
    assert all(data.path(r.relpath).is_file() for r in data.records)
    assert mvtec.read_category(tiny_mvtec, "widget").records == data.records  # deterministic


def test_mvtec_extensions_mask_fallback_and_missing_mask(tmp_path: Path) -> None:
    cat = tmp_path / "cat"
    save(cat / "train" / "good" / "b.JPG")
    save(cat / "train" / "good" / "a.jpeg")
    save(cat / "train" / "good" / "c.bmp")
    save(cat / "train" / "good" / "d.tif")
    (cat / "train" / "good" / "readme.txt").write_text("not an image")
    save(cat / "train" / "good" / ".hidden.png")
    save(cat / "test" / "crack" / "x.png")
    save(cat / "test" / "crack" / "y.png")
    save_mask(cat / "ground_truth" / "crack" / "x.png")  # no _mask suffix: accepted as fallback
    data = mvtec.read_category(tmp_path, "cat")
    assert [Path(r.relpath).name for r in data.normal_train] == ["a.jpeg", "b.JPG", "c.bmp", "d.tif"]
    by_name = {Path(r.relpath).name: r for r in data.defects}
    assert by_name["x.png"].mask_relpath == "cat/ground_truth/crack/x.png"
    assert by_name["y.png"].mask_relpath is None
    assert mvtec.list_mask_files(tmp_path, "cat") == ["cat/ground_truth/crack/x.png"]


def test_mvtec_missing_category_names_it(tiny_mvtec: Path) -> None:
    with pytest.raises(DatasetError) as err:
        mvtec.read_category(tiny_mvtec, "nope")
    assert err.value.path == tiny_mvtec / "nope" and "not found" in err.value.message


# --- VisA -------------------------------------------------------------------------------------


def make_visa(root: Path, n_normal: int = 6, n_anomaly: int = 2, with_csv: bool = True) -> Path:
    cat = root / "pcb1" / "Data"
    for i in range(n_normal):
        save(cat / "Images" / "Normal" / f"{i:04d}.JPG")
    for i in range(n_anomaly):
        save(cat / "Images" / "Anomaly" / f"{i:03d}.JPG")
        save_mask(cat / "Masks" / "Anomaly" / f"{i:03d}.png")
    if with_csv:
        (root / "split_csv").mkdir(parents=True)
        with (root / "split_csv" / "1cls.csv").open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["object", "split", "label", "image", "mask"])
            for i in range(n_normal):
                split = "test" if i < 2 else "train"
                w.writerow(["pcb1", split, "normal", f"pcb1/Data/Images/Normal/{i:04d}.JPG", ""])
            for i in range(n_anomaly):
                w.writerow(
                    [
                        "pcb1",
                        "test",
                        "anomaly",
                        f"pcb1/Data/Images/Anomaly/{i:03d}.JPG",
                        f"pcb1/Data/Masks/Anomaly/{i:03d}.png",
                    ]
                )
    return root


def test_visa_from_csv(tmp_path: Path) -> None:
    root = make_visa(tmp_path)
    assert visa.list_categories(root) == ["pcb1"]
    data = visa.read_category(root, "pcb1")
    assert data.dataset == "visa"
    assert [r.relpath for r in data.normal_test] == [f"pcb1/Data/Images/Normal/000{i}.JPG" for i in (0, 1)]
    assert len(data.normal_train) == 4
    assert data.defect_types == ["anomaly"]
    assert data.defects[0] == ImageRecord(
        "pcb1/Data/Images/Anomaly/000.JPG", "anomaly", "test", "pcb1/Data/Masks/Anomaly/000.png"
    )


def test_visa_defect_types_from_image_anno(tmp_path: Path) -> None:
    root = make_visa(tmp_path)
    (root / "pcb1" / "image_anno.csv").write_text(
        "image,label,mask\n"
        "pcb1/Data/Images/Anomaly/000.JPG,Bent Lead,pcb1/Data/Masks/Anomaly/000.png\n"
        'pcb1/Data/Images/Anomaly/001.JPG,"scratch,missing part",pcb1/Data/Masks/Anomaly/001.png\n'
    )
    labels = [r.label for r in visa.read_category(root, "pcb1").defects]
    assert labels == ["bent_lead", "combined"]


def test_visa_without_csv_every_fifth_normal_is_test(tmp_path: Path) -> None:
    root = make_visa(tmp_path, n_normal=11, with_csv=False)
    data = visa.read_category(root, "pcb1")
    assert [Path(r.relpath).stem for r in data.normal_test] == ["0004", "0009"]
    assert len(data.normal_train) == 9
    assert [r.mask_relpath for r in data.defects] == [f"pcb1/Data/Masks/Anomaly/00{i}.png" for i in (0, 1)]
    assert all(r.source_split == "test" for r in data.defects)


def test_visa_bad_csv_label_is_dataset_error(tmp_path: Path) -> None:
    root = make_visa(tmp_path)
    csv_path = root / "split_csv" / "1cls.csv"
    csv_path.write_text(csv_path.read_text().replace(",normal,", ",weird,", 1))
    with pytest.raises(DatasetError) as err:
        visa.read_category(root, "pcb1")
    assert err.value.path == csv_path and "'weird'" in err.value.message


def test_visa_csv_missing_column(tmp_path: Path) -> None:
    root = make_visa(tmp_path)
    (root / "split_csv" / "1cls.csv").write_text("object,split,image\npcb1,train,x.JPG\n")
    with pytest.raises(DatasetError, match="lacks column"):
        visa.read_category(root, "pcb1")


# --- folder -----------------------------------------------------------------------------------


def test_folder_root_convention(tmp_path: Path) -> None:
    cat = tmp_path / "parts"
    save(cat / "normal" / "n1.png")
    save(cat / "normal" / "n2.jpg")
    save(cat / "test_normal" / "t1.png")
    save(cat / "defect" / "scratch" / "s1.png")
    save(cat / "defect" / "hole" / "h1.png")
    save(cat / "defect" / "loose.png")
    save_mask(cat / "mask" / "scratch" / "s1_mask.png")
    save_mask(cat / "mask" / "hole" / "h1.png")
    save_mask(cat / "mask" / "loose.png")
    assert folder.list_categories(tmp_path) == ["parts"]
    data = folder.read_category(tmp_path, "parts")
    assert data.dataset == "folder"
    assert [r.relpath for r in data.normal_train] == ["parts/normal/n1.png", "parts/normal/n2.jpg"]
    assert [r.relpath for r in data.normal_test] == ["parts/test_normal/t1.png"]
    masks = {r.label: r.mask_relpath for r in data.defects}
    assert masks == {
        "scratch": "parts/mask/scratch/s1_mask.png",
        "hole": "parts/mask/hole/h1.png",
        "defect": "parts/mask/loose.png",
    }


def test_read_folder_with_mask_root_and_map(tmp_path: Path) -> None:
    save(tmp_path / "ok" / "a.png")
    save(tmp_path / "bad" / "crack" / "c1.png")
    save(tmp_path / "bad" / "stain" / "s1.png")
    save_mask(tmp_path / "gt" / "crack" / "c1_mask.png")
    save_mask(tmp_path / "gt" / "stain" / "s1.png")
    dirs = [tmp_path / "bad" / "crack", tmp_path / "bad" / "stain"]
    data = folder.read_folder(tmp_path / "ok", dirs, tmp_path / "gt", "thing")
    assert data.root == tmp_path.resolve() and data.category == "thing"
    assert [r.relpath for r in data.normal_train] == ["ok/a.png"]
    assert {r.label: r.mask_relpath for r in data.defects} == {
        "crack": "gt/crack/c1_mask.png",
        "stain": "gt/stain/s1.png",
    }
    mapped = folder.read_folder(tmp_path / "ok", dirs, {"crack": tmp_path / "gt" / "crack"}, "thing")
    assert {r.label: r.mask_relpath for r in mapped.defects} == {
        "crack": "gt/crack/c1_mask.png",
        "stain": None,
    }
    with pytest.raises(DatasetError, match="unknown defect type"):
        folder.read_folder(tmp_path / "ok", dirs, {"dent": tmp_path / "gt"}, "thing")
    with pytest.raises(DatasetError) as err:
        folder.read_folder(tmp_path / "missing", dirs, None, "thing")
    assert err.value.path == tmp_path / "missing"


# --- detection and dispatch -------------------------------------------------------------------


def test_detect_format_each_layout(tmp_path: Path, tiny_mvtec: Path) -> None:
    assert formats.detect_format(tiny_mvtec) == "mvtec"
    assert formats.detect_format(make_visa(tmp_path / "visa")) == "visa"
    assert formats.detect_format(make_visa(tmp_path / "visa2", with_csv=False)) == "visa"
    save(tmp_path / "fold" / "c" / "normal" / "a.png")
    assert formats.detect_format(tmp_path / "fold") == "folder"
    assert formats.list_categories(tiny_mvtec) == ["widget"]
    assert formats.read_category(tiny_mvtec, "widget").dataset == "mvtec"
    assert formats.read_category(tmp_path / "fold", "c", format="folder").normal_train


def test_detect_format_unknown_and_missing(tmp_path: Path) -> None:
    (tmp_path / "junk" / "stuff").mkdir(parents=True)
    with pytest.raises(DatasetError) as err:
        formats.detect_format(tmp_path / "junk")
    assert err.value.message.startswith("unknown layout: expected MVTec AD")
    assert err.value.path == tmp_path / "junk"
    with pytest.raises(DatasetError, match="does not exist"):
        formats.detect_format(tmp_path / "absent")
    with pytest.raises(DatasetError, match="unknown format 'coco'"):
        formats.read_category(tmp_path / "junk", "stuff", format="coco")


def test_detect_format_category_dir_given_as_root(tiny_mvtec: Path) -> None:
    with pytest.raises(DatasetError, match="single mvtec category.*--category widget"):
        formats.detect_format(tiny_mvtec / "widget")


# --- io ---------------------------------------------------------------------------------------


def test_load_image_modes(tmp_path: Path) -> None:
    grey = load_image(save(tmp_path / "g.png", mode="L", value=7))
    assert grey.shape == (32, 32, 3) and grey.dtype == np.uint8 and (grey == 7).all()
    assert load_image(save(tmp_path / "rgb.jpg")).shape == (32, 32, 3)
    opaque = Image.new("RGBA", (8, 4), (1, 2, 3, 255))
    opaque.save(tmp_path / "opaque.png")
    assert load_image(tmp_path / "opaque.png").shape == (4, 8, 3)
    Image.new("RGBA", (8, 8), (1, 2, 3, 10)).save(tmp_path / "alpha.png")
    with pytest.raises(DatasetError, match="transparent") as err:
        load_image(tmp_path / "alpha.png")
    assert err.value.path == tmp_path / "alpha.png"
    Image.new("CMYK", (8, 8)).save(tmp_path / "cmyk.jpg")
    with pytest.raises(DatasetError, match="CMYK"):
        load_image(tmp_path / "cmyk.jpg")
    Image.fromarray(np.full((8, 8), 4000, np.uint16)).save(tmp_path / "deep.png")
    with pytest.raises(DatasetError, match="16-bit"):
        load_image(tmp_path / "deep.png")


def test_load_image_corrupt_and_missing_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(np.random.default_rng(0).bytes(200))
    with pytest.raises(DatasetError) as err:
        load_image(bad)
    assert err.value.path == bad and "cannot read image" in err.value.message
    assert str(bad) in str(err.value)
    with pytest.raises(DatasetError, match="does not exist"):
        load_image(tmp_path / "none.png")


def test_load_mask_threshold(tmp_path: Path) -> None:
    arr = np.array([[0, 127], [128, 255]], np.uint8)
    Image.fromarray(arr).save(tmp_path / "m.png")
    mask = load_mask(tmp_path / "m.png")
    assert mask.dtype == bool and mask.tolist() == [[False, False], [True, True]]
    assert load_mask(tmp_path / "m.png", threshold=1).tolist() == [[False, True], [True, True]]
    Image.fromarray(arr > 0).save(tmp_path / "bilevel.png")  # mode "1"
    assert load_mask(tmp_path / "bilevel.png").tolist() == [[False, True], [True, True]]


def test_good_constant_used_for_normals(tiny_mvtec: Path) -> None:
    data = formats.read_category(tiny_mvtec, "widget")
    assert {r.label for r in data.records if not r.is_defect} == {GOOD}
