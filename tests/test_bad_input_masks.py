"""Bad input for the mask and image-only formats: every problem names its file (and record)."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from PIL import Image

from smearlab.data import DataError, Sample, SmearDataset
from smearlab.data.formats import coco, dicom, dsb2018, imagefolder, zheng

HW = (8, 10)


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# -- DSB2018 -----------------------------------------------------------------------------------


def _box_mask(hw=HW, box=(2, 1, 5, 4)):
    m = np.zeros(hw, np.uint8)
    m[box[1]:box[3], box[0]:box[2]] = 255
    return m


def _dsb(root, image_id="img1", masks=None):
    """A one-image stage1_train tree; ``masks`` maps file names to arrays."""
    folder = root / "stage1_train" / image_id
    _png(folder / "images" / f"{image_id}.png", np.full((*HW, 4), 200, np.uint8))
    for name, m in (masks if masks is not None else {"m1.png": _box_mask()}).items():
        _png(folder / "masks" / name, m)
    return folder


def test_dsb_stage1_train_root_and_box(tmp_path):
    _dsb(tmp_path)
    for root in (tmp_path, tmp_path / "stage1_train"):
        (s,) = dsb2018.load(root)
        np.testing.assert_array_equal(s.boxes, [[2, 1, 5, 4]])
        assert s.masks.shape == (1, *HW) and s.image.shape == (*HW, 3)
        assert "group" not in s.meta


def test_dsb_truncated_image_fails_lazily_naming_file(tmp_path):
    folder = _dsb(tmp_path)
    image = folder / "images" / "img1.png"
    _png(image, np.random.default_rng(0).integers(0, 255, (80, 100, 4), dtype=np.uint8))
    _png(folder / "masks" / "m1.png", _box_mask((80, 100)))
    _truncate(image)
    (s,) = dsb2018.load(tmp_path)  # the header is intact: loading succeeds
    with pytest.raises(DataError, match="img1.png") as e:
        s.image  # noqa: B018
    assert "corrupt or truncated" in str(e.value)


def test_dsb_missing_image_is_counted(tmp_path):
    folder = _dsb(tmp_path)
    (folder / "images" / "img1.png").unlink()
    ds = dsb2018.load(tmp_path)
    assert len(ds) == 0 and "img1.png" in ds.skipped[0].path
    assert ds.skipped[0].reason == "image file not found"


@pytest.mark.parametrize("mask, reason", [
    (np.zeros(HW, np.uint8), "empty mask"),
    (_box_mask((9, 10)), "mask size 10x9 differs from the image size 10x8"),
])
def test_dsb_bad_mask_is_counted_or_raises(tmp_path, mask, reason):
    _dsb(tmp_path, masks={"good.png": _box_mask(), "bad.png": mask})
    ds = dsb2018.load(tmp_path)
    assert len(ds) == 1 and len(ds[0]) == 1 and ds[0].masks.shape == (1, *HW)
    (skip,) = ds.skipped
    assert skip.path.endswith("bad.png") and skip.reason.startswith(reason)
    with pytest.raises(DataError, match=r"bad\.png.*" + reason.split(" ")[0]):
        dsb2018.load(tmp_path, strict=True)


def test_dsb_float_mask_is_wrong_dtype(tmp_path):
    folder = _dsb(tmp_path)
    Image.fromarray(np.ones(HW, np.float32)).save(folder / "masks" / "float.tif")
    ds = dsb2018.load(tmp_path)
    assert len(ds[0]) == 1 and ds.skipped[0].path.endswith("float.tif")
    assert "integer image" in ds.skipped[0].reason and "float32" in ds.skipped[0].reason


def test_dsb_missing_root(tmp_path):
    with pytest.raises(DataError, match="nowhere"):
        dsb2018.load(tmp_path / "nowhere")


# -- Zheng -------------------------------------------------------------------------------------


def _zheng(root, rows=((1, 2), (2, 4)), header="image ID,class label", n=1):
    """A small Zheng tree: ``Dataset n`` with one image + mask per row, CRLF CSV."""
    for number, _ in rows:
        mask = np.zeros(HW, np.uint8)
        mask[1:6, 2:8] = 128
        mask[2:4, 3:6] = 255
        _png(root / f"Dataset {n}" / f"{number:03d}.png", mask)
        Image.fromarray(np.full((*HW, 3), 90, np.uint8)).save(root / f"Dataset {n}" / f"{number:03d}.bmp")
    text = "\r\n".join([header, *(f"{a},{b}" for a, b in rows)]) + "\r\n"
    (root / f"Class Labels of Dataset {n}.csv").write_bytes(text.encode())
    return root / f"Dataset {n}"


def test_zheng_other_header_variant(tmp_path):
    _zheng(tmp_path, header="image ID,class")
    ds = zheng.load(tmp_path, datasets=(1,))
    assert [s.image_label for s in ds] == [1, 3] and not ds.skipped
    np.testing.assert_array_equal(ds[0].boxes, [[2, 1, 8, 6]])
    assert ds[0].semantic[2, 3] == 2 and ds[0].semantic[1, 2] == 1 and ds[0].semantic[0, 0] == 0


def test_zheng_missing_csv_names_expected_file(tmp_path):
    _zheng(tmp_path)
    (tmp_path / "Class Labels of Dataset 1.csv").unlink()
    with pytest.raises(DataError, match="Class Labels of Dataset 1.csv: class-label CSV not found"):
        zheng.load(tmp_path, datasets=(1,))
    with pytest.raises(DataError, match="Dataset 2"):
        zheng.load(tmp_path, datasets=(2,))


def test_zheng_bad_header_is_whole_file_error(tmp_path):
    _zheng(tmp_path, header="id;label")
    with pytest.raises(DataError, match=r"Dataset 1\.csv \[line 1\]: unexpected header"):
        zheng.load(tmp_path, datasets=(1,))


def test_zheng_per_record_problems_are_counted(tmp_path):
    folder = _zheng(tmp_path, rows=((1, 2), (2, 9), (3, 1), (4, 1), (5, 1), (6, 1)))
    csv_path = tmp_path / "Class Labels of Dataset 1.csv"
    csv_path.write_bytes(csv_path.read_bytes() + b"seven,1\r\n8,3\r\n")
    (folder / "003.png").unlink()                                  # image without mask
    _png(folder / "004.png", np.zeros(HW, np.uint8))               # empty mask
    _png(folder / "005.png", np.zeros((9, 10), np.uint8) + 128)   # mask of another size
    _png(folder / "006.png", np.zeros(HW, np.uint16) + 300)        # 16-bit mask
    Image.fromarray(np.zeros((*HW, 3), np.uint8)).save(folder / "010.bmp")  # no CSV row
    ds = zheng.load(tmp_path, datasets=(1,))
    assert [s.image_id for s in ds] == ["d1_001"]
    got = {(s.path.rsplit("/", 1)[-1], s.record): s.reason for s in ds.skipped}
    assert got == {
        ("Class Labels of Dataset 1.csv", "line 3"): "unknown class '9' (expected 1..5)",
        ("Class Labels of Dataset 1.csv", "line 8"): "expected 'image ID,class' with an integer "
                                                     "image ID, got ['seven', '1']",
        ("003.bmp", None): "ground-truth mask 003.png not found",
        ("004.png", None): "empty mask (no cell pixel)",
        ("005.png", None): "mask size 10x9 differs from the image size 10x8",
        ("006.png", None): "mask must be an 8-bit grey image, got dtype uint16",
        ("010.bmp", None): "no row for image ID 10 in Class Labels of Dataset 1.csv",
        ("Class Labels of Dataset 1.csv", "line 9"): "no image file for image ID 8 in Dataset 1/",
    }
    with pytest.raises(DataError, match=r"Dataset 1\.csv \[line 3\]: unknown class '9'"):
        zheng.load(tmp_path, datasets=(1,), strict=True)


def test_zheng_mask_changed_after_load_raises_on_access(tmp_path):
    folder = _zheng(tmp_path)
    ds = zheng.load(tmp_path, datasets=(1,))
    (folder / "001.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="001.png"):
        ds[0].semantic  # noqa: B018


# -- COCO --------------------------------------------------------------------------------------


def _coco(tmp_path, annotations, images=None, categories=None):
    _png(tmp_path / "a.png", np.zeros((*HW, 3), np.uint8))
    data = {"images": images or [{"id": 1, "file_name": "a.png", "width": 10, "height": 8}],
            "annotations": annotations,
            "categories": categories or [{"id": 1, "name": "rbc"}, {"id": 2, "name": "wbc"}]}
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("text, problem", [
    ("", "empty file"),
    ('{"images": [', "malformed JSON at line 1"),
    ("[]", "expected a JSON object"),
    ('{"images": []}', "no 'categories' list"),
    ('{"images": {}, "categories": []}', "'images' must be a list"),
    ('{"images": [], "categories": [{"id": "1", "name": "x"}]}', "integer 'id'"),
    ('{"images": [], "categories": [{"id": 1, "name": "x"}, {"id": 1, "name": "y"}]}', "duplicate"),
])
def test_coco_whole_file_errors_name_the_file(tmp_path, text, problem):
    path = tmp_path / "broken.json"
    path.write_text(text)
    with pytest.raises(DataError, match="broken.json") as e:
        coco.load(path)
    assert problem in str(e.value)


def test_coco_missing_file(tmp_path):
    with pytest.raises(DataError, match="gone.json: cannot read"):
        coco.load(tmp_path / "gone.json")


def test_coco_bad_annotations_are_counted(tmp_path):
    path = _coco(tmp_path, [
        {"id": 10, "image_id": 1, "category_id": 1, "bbox": [1, 1, 3, 3]},
        {"id": 11, "image_id": 1, "category_id": 99, "bbox": [1, 1, 3, 3]},
        {"id": 12, "image_id": 7, "category_id": 1, "bbox": [1, 1, 3, 3]},
        {"id": 13, "image_id": 1, "category_id": 2, "bbox": [1, 1, "3", 3]},
        {"id": 14, "image_id": 1, "category_id": 2, "bbox": [6, 5, 6, 4]},     # 2 px past: clipped
        {"id": 15, "image_id": 1, "category_id": 2, "bbox": [50, 50, 5, 5]},   # far outside
        {"id": 16, "image_id": 1, "category_id": 2, "bbox": [1, 1, 0, 3]},     # degenerate
        {"image_id": 1, "category_id": 2},
    ])
    ds = coco.load(path)
    (s,) = ds
    np.testing.assert_array_equal(s.boxes, [[1, 1, 4, 4], [6, 5, 10, 8]])
    assert s.labels.tolist() == [0, 1]
    got = {sk.record: sk.reason for sk in ds.skipped}
    assert all(sk.path == str(path) for sk in ds.skipped)
    assert got["annotation id 11"] == "unknown category id 99"
    assert got["annotation id 12"] == "unknown image id 7"
    assert got["annotation id 13"].startswith("bbox must be 4 numbers")
    assert got["annotation id 15"].startswith("box outside the 10x8 image")
    assert got["annotation id 16"].startswith("degenerate box")
    assert got["annotations[7]"].startswith("bbox must be 4 numbers")
    assert [(f.record, f.reason.split(":")[0]) for f in ds.fixed] == [
        ("annotation id 14", "box clipped to the image")]
    with pytest.raises(DataError, match=r"gt\.json \[annotation id 11\]: unknown category id 99"):
        coco.load(path, strict=True)


def test_coco_segmentation_problems_are_counted(tmp_path):
    path = _coco(tmp_path, [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 3, 3],
         "segmentation": {"size": [9, 10], "counts": [90]}},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [1, 1, 3, 3],
         "segmentation": {"size": [8, 10], "counts": [70]}},
        {"id": 3, "image_id": 1, "category_id": 1, "bbox": [1, 1, 3, 3],
         "segmentation": {"size": [8, 10], "counts": "garbage!!"}},
        {"id": 4, "image_id": 1, "category_id": 1, "bbox": [1, 1, 3, 3], "segmentation": [[1, 2, 3]]},
        {"id": 5, "image_id": 1, "category_id": 1, "bbox": [1, 1, 3, 3], "segmentation": "x"},
        {"id": 6, "image_id": 1, "category_id": 1, "bbox": [1, 1, 3, 3],
         "segmentation": [[1, 1, 4, 1, 4, 4, 1, 4]]},
    ])
    ds = coco.load(path)
    got = {sk.record: sk.reason for sk in ds.skipped}
    assert got["annotation id 1"] == "segmentation size [9, 10] (h, w) differs from the image size [8, 10]"
    assert got["annotation id 2"].startswith("uncompressed RLE counts must be")
    assert got["annotation id 3"] == "invalid compressed RLE counts"
    assert got["annotation id 4"].startswith("polygon segmentation must be")
    assert got["annotation id 5"].startswith("segmentation must be polygons or an RLE")
    assert len(ds[0]) == 1 and ds[0].masks[0].sum() == 9


def test_coco_image_problems_are_counted(tmp_path):
    _png(tmp_path / "b.png", np.zeros((5, 5, 3), np.uint8))
    (tmp_path / "c.png").write_bytes(b"junk")
    _png(tmp_path.parent / "outside.png", np.zeros((5, 5, 3), np.uint8))
    images = [{"id": 1, "file_name": "a.png", "width": 10, "height": 8},
              {"id": 2, "file_name": "missing.png"},
              {"id": 3, "file_name": "../outside.png"},
              {"id": 4, "file_name": "b.png", "width": 6, "height": 5},
              {"id": 5, "file_name": "c.png"},
              {"id": 1, "file_name": "a.png"},
              {"file_name": "a.png"}]
    path = _coco(tmp_path, [{"id": 1, "image_id": 4, "category_id": 1, "bbox": [0, 0, 2, 2]}],
                 images=images)
    ds = coco.load(path)
    assert [s.meta["coco_id"] for s in ds] == [1]
    got = {sk.record: (sk.path, sk.reason) for sk in ds.skipped}
    assert got["image id 2"][1].startswith("image file not found under") and "missing.png" in got["image id 2"][1]
    assert got["image id 3"][1] == "file_name escapes the image root: ../outside.png"
    assert got["image id 4"] == (str(tmp_path / "b.png"), "image is 5x5 but gt.json says 6x5")
    assert got["image id 5"][0] == str(tmp_path / "c.png") and "not a readable image" in got["image id 5"][1]
    assert got["image id 1"] == (str(path), "duplicate image id")
    assert got["images[6]"][1] == "image entry needs an 'id' and a 'file_name'"
    assert len(ds.skipped) == 6  # the annotation of the skipped image 4 is dropped silently


def test_coco_save_refuses_unknown_mode_and_leaves_no_half_files(tmp_path):
    with pytest.raises(ValueError, match="masks must be"):
        coco.save(SmearDataset([], []), tmp_path / "gt.json", masks="bitmap")
    bad = tmp_path / "bad.gif"  # not copied as is: decoded and written as PNG, which fails
    bad.write_bytes(b"not an image")
    ds = SmearDataset([Sample("x", bad)], ["c"])
    with pytest.raises(DataError, match="bad.gif"):
        coco.save(ds, tmp_path / "out" / "gt.json")
    assert not (tmp_path / "out" / "gt.json").exists()
    assert not list((tmp_path / "out").rglob("*.tmp"))


# -- class folders --------------------------------------------------------------------------------


def test_imagefolder_corrupt_image_fails_lazily(tmp_path):
    (tmp_path / "lymphocyte").mkdir()
    (tmp_path / "lymphocyte" / "x.png").write_bytes(b"\x89PNG garbage")
    (s,) = imagefolder.load(tmp_path)
    with pytest.raises(DataError, match=r"x\.png: not a readable image"):
        s.image  # noqa: B018


def test_imagefolder_stray_files_are_counted(tmp_path):
    _png(tmp_path / "mono" / "a.png", np.zeros((4, 4), np.uint8))
    (tmp_path / "mono" / "notes.txt").write_text("hi")
    (tmp_path / "mono" / "sub").mkdir()
    (tmp_path / "README").write_text("hi")
    ds = imagefolder.load(tmp_path)
    assert len(ds) == 1 and ds.class_names == ["mono"]
    assert sorted(sk.path.rsplit("/", 1)[-1] for sk in ds.skipped) == ["README", "notes.txt", "sub"]
    with pytest.raises(DataError, match="README: file outside any class folder"):
        imagefolder.load(tmp_path, strict=True)
    with pytest.raises(DataError, match="no class folders"):
        imagefolder.load(tmp_path / "mono" / "sub")


# -- DICOM -------------------------------------------------------------------------------------


def test_dicom_bad_files(tmp_path):
    (tmp_path / "broken.dcm").write_bytes(b"not dicom at all")
    (tmp_path / "notes.txt").write_text("x")
    ds = dicom.load(tmp_path)
    assert len(ds) == 0 and [sk.path.rsplit("/", 1)[-1] for sk in ds.skipped] == ["broken.dcm", "notes.txt"]
    assert "not a readable DICOM file" in ds.skipped[0].reason
    with pytest.raises(DataError, match="broken.dcm: not a readable DICOM"):
        dicom.load(tmp_path, strict=True)
    (tmp_path / "broken.dcm").unlink()
    with pytest.raises(DataError, match="no .dcm"):
        dicom.load(tmp_path)


def test_dicom_without_pydicom_says_how_to_install(tmp_path, monkeypatch):
    (tmp_path / "a.dcm").write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(DataError, match=r"a\.dcm: .*pip install 'smearlab\[dicom\]'"):
        dicom.load(tmp_path / "a.dcm")
