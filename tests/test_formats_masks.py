"""Mask and image-only formats: COCO (read/write), DSB2018, Zheng WBC, class folders, DICOM."""
from __future__ import annotations

import csv
import json
from collections import Counter

import numpy as np
import pytest
from helpers import write_dicom
from PIL import Image

from smearlab.data import Sample, SmearDataset
from smearlab.data.boxes import mask_box
from smearlab.data.formats import coco, detect_format, dicom, dsb2018, imagefolder, zheng

# -- helpers ---------------------------------------------------------------------------------


def _blob(hw, cx, cy, rx, ry):
    yy, xx = np.mgrid[: hw[0], : hw[1]]
    return ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1


def _masked_sample(image_id, hw, blobs, rng, labels):
    masks = np.stack([_blob(hw, *b) for b in blobs])
    boxes = np.stack([mask_box(m) for m in masks])
    image = rng.integers(0, 255, (*hw, 3), dtype=np.uint8)
    return Sample(image_id, boxes=boxes, labels=labels, _image=image, _masks=masks)


@pytest.fixture
def small_dataset(rng, tmp_path):
    """Three images: two with masks (one touching the border), one with boxes only, on disk."""
    a = _masked_sample("a", (40, 50), [(10, 10, 6, 4), (35, 25, 10, 8)], rng, [0, 1])
    b = _masked_sample("b/odd id", (30, 30), [(0, 15, 5, 9)], rng, [1])
    c_path = tmp_path / "src" / "c.jpg"
    c_path.parent.mkdir()
    Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(c_path)
    c = Sample("c", c_path, boxes=[[2, 3, 10, 12]], labels=[0])
    return SmearDataset([a, b, c], ["rbc", "wbc"], "small")


def _iou(m1, m2):
    return (m1 & m2).sum() / (m1 | m2).sum()


# -- COCO --------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["rle", "polygon"])
def test_coco_save_load_round_trip(small_dataset, tmp_path, mode):
    out = coco.save(small_dataset, tmp_path / "out" / "gt.json", masks=mode)
    assert out == tmp_path / "out" / "gt.json"
    assert not list(out.parent.glob(".*.tmp")) and not list((out.parent / "images").glob(".*"))
    back = coco.load(out)
    assert back.class_names == ["rbc", "wbc"] and len(back) == 3 and not back.skipped
    for orig, got in zip(small_dataset, back):
        np.testing.assert_array_equal(got.boxes, orig.boxes)
        np.testing.assert_array_equal(got.labels, orig.labels)
        if orig.path is None:
            np.testing.assert_array_equal(got.image, orig.image)
        assert got.meta["iscrowd"].tolist() == [0] * len(orig)
        if not orig.has_masks:
            assert not got.has_masks
            continue
        assert got.masks.shape == orig.masks.shape and got.masks.dtype == bool
        for m_got, m_orig in zip(got.masks, orig.masks):
            if mode == "rle":
                np.testing.assert_array_equal(m_got, m_orig)
            else:
                assert _iou(m_got, m_orig) > 0.9
    assert back[2].image.shape == (20, 24, 3)  # jpg copied byte for byte
    assert (out.parent / "images" / "c.jpg").read_bytes() == small_dataset[2].path.read_bytes()


def test_coco_written_file_loads_in_pycocotools(small_dataset, tmp_path):
    from pycocotools.coco import COCO
    out = coco.save(small_dataset, tmp_path / "gt.json")
    api = COCO(str(out))
    assert len(api.getImgIds()) == 3 and len(api.getAnnIds()) == 4
    assert [c["id"] for c in api.loadCats(api.getCatIds())] == [1, 2]
    ann = api.loadAnns(api.getAnnIds(imgIds=[1]))[0]
    np.testing.assert_array_equal(api.annToMask(ann).astype(bool), small_dataset[0].masks[0])
    assert ann["area"] == int(small_dataset[0].masks[0].sum())
    images = json.loads(out.read_text())["images"]
    assert [i["file_name"] for i in images] == ["images/a.png", "images/b_odd_id.png", "images/c.jpg"]
    assert images[0]["width"] == 50 and images[0]["height"] == 40


def _write_png(path, hw=(20, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*hw, 3), 128, np.uint8)).save(path)


def _runs(mask):
    """Uncompressed COCO RLE counts (column-major runs, starting with background)."""
    flat = mask.ravel(order="F")
    bounds = np.r_[0, np.flatnonzero(np.diff(flat)) + 1, flat.size]
    return ([0] if flat[0] else []) + np.diff(bounds).tolist()


def test_coco_load_segmentation_kinds_and_category_order(tmp_path):
    from pycocotools import mask as mu
    _write_png(tmp_path / "images" / "one.png")
    _write_png(tmp_path / "images" / "two.png")
    m = np.zeros((20, 30), np.uint8)
    m[5:9, 10:20] = 1
    rle = mu.encode(np.asfortranarray(m))
    anns = [
        {"id": 1, "image_id": 1, "category_id": 7, "bbox": [10, 5, 10, 4], "iscrowd": 0,
         "segmentation": [[10, 5, 20, 5, 20, 9, 10, 9]]},
        {"id": 2, "image_id": 1, "category_id": 3, "bbox": [10, 5, 10, 4], "iscrowd": 1,
         "segmentation": {"size": [20, 30], "counts": rle["counts"].decode()}},
        {"id": 3, "image_id": 1, "category_id": 3, "bbox": [10, 5, 10, 4], "iscrowd": 1,
         "segmentation": {"size": [20, 30], "counts": _runs(m)}},
        {"id": 4, "image_id": 2, "category_id": 7, "bbox": [0, 0, 5, 5],
         "segmentation": [[0, 0, 5, 0, 5, 5, 0, 5]]},
        {"id": 5, "image_id": 2, "category_id": 3, "bbox": [1, 1, 5, 5]},
    ]
    data = {"images": [{"id": 1, "file_name": "one.png", "width": 30, "height": 20},
                       {"id": 2, "file_name": "two.png"}],
            "annotations": anns,
            "categories": [{"id": 7, "name": "wbc"}, {"id": 3, "name": "rbc"}]}
    (tmp_path / "gt.json").write_text(json.dumps(data))
    ds = coco.load(tmp_path / "gt.json")
    assert ds.class_names == ["rbc", "wbc"] and not ds.skipped
    one, two = ds
    assert one.image_id == "one" and one.meta["coco_id"] == 1 and one.hw == (20, 30)
    assert one.labels.tolist() == [1, 0, 0] and one.meta["iscrowd"].tolist() == [0, 1, 1]
    np.testing.assert_array_equal(one.boxes[0], [10, 5, 20, 9])
    for k in range(3):
        np.testing.assert_array_equal(one.masks[k], m.astype(bool))
    assert two.hw == (20, 30) and len(two) == 2
    assert not two.has_masks  # only one of its two annotations has a segmentation


def test_coco_image_root_option(tmp_path):
    _write_png(tmp_path / "pics" / "x.png")
    data = {"images": [{"id": 1, "file_name": "x.png"}], "categories": [{"id": 1, "name": "c"}]}
    (tmp_path / "ann" / "gt.json").parent.mkdir()
    (tmp_path / "ann" / "gt.json").write_text(json.dumps(data))
    assert len(coco.load(tmp_path / "ann" / "gt.json").skipped) == 1
    ds = coco.load(tmp_path / "ann" / "gt.json", image_root=tmp_path / "pics")
    assert len(ds) == 1 and ds[0].path == tmp_path / "pics" / "x.png" and len(ds[0]) == 0
    assert detect_format(tmp_path / "ann" / "gt.json") == "coco"


# -- DSB2018 (real data) ------------------------------------------------------------------------


@pytest.mark.shared_data
def test_dsb2018_subset(shared_data):
    root = shared_data / "dsb2018_subset"
    with open(root / "SUBSET_IMAGES.tsv", newline="") as f:
        table = {r["image_id"]: r for r in csv.DictReader(f, delimiter="\t")}
    ds = dsb2018.load(root)
    assert detect_format(root) == "dsb2018"
    assert len(ds) == 30 and not ds.skipped and ds.class_names == ["nucleus"]
    assert ds.num_objects == sum(int(r["n_masks"]) for r in table.values())
    for s in ds:
        row = table[s.image_id]
        assert len(s) == int(row["n_masks"]) and s.meta["group"] == row["group"]
        assert s.hw == (int(row["height"]), int(row["width"]))
        assert (s.labels == 0).all()
    small = min(ds, key=lambda s: s.hw[0] * s.hw[1] * len(s))
    assert small.image.shape == (*small.hw, 3) and small.image.dtype == np.uint8
    for s in ds[::3]:  # every box is the tight box of its mask (a third of the set, for speed)
        masks = s.masks
        assert masks.dtype == bool and masks.shape == (len(s), *s.hw)
        np.testing.assert_array_equal(np.stack([mask_box(m) for m in masks]), s.boxes)
        s.masks = None


# -- Zheng WBC (real data) ------------------------------------------------------------------------


def _csv_classes(path):
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))[1:]
    return Counter(zheng.CLASS_NAMES[int(c) - 1] for _, c in rows)


@pytest.mark.shared_data
def test_zheng_real(zheng_root):
    ds = zheng.load(zheng_root)
    assert detect_format(zheng_root) == "zheng"
    assert not ds.skipped and ds.semantic_names == ["background", "cytoplasm", "nucleus"]
    for n, count, sizes in ((1, 300, range(80, 121)), (2, 100, [300])):  # d1: ~120x120
        part = [s for s in ds if s.domain == f"dataset{n}"]
        found = Counter(ds.class_names[s.image_label] for s in part)
        expected = _csv_classes(zheng_root / f"Class Labels of Dataset {n}.csv")
        print(f"Dataset {n} classes: {dict(sorted(found.items()))}")
        assert len(part) == count and found == expected
        assert all(s.hw[0] in sizes and s.hw[1] in sizes for s in part)
        assert Counter(s.hw for s in part).most_common(1)[0][0] == (sizes[-1], sizes[-1])
        assert part[0].image_id == f"d{n}_001"
    assert len(zheng.load(zheng_root, datasets=(2,))) == 100
    for s in ds:
        sem = s.semantic
        assert sem.dtype == np.uint8 and set(np.unique(sem)) <= {0, 1, 2} and (sem == 2).any()
        np.testing.assert_array_equal(s.masks, (sem > 0)[None])
        np.testing.assert_array_equal(s.boxes[0], mask_box(sem > 0))
        assert s.labels.tolist() == [s.image_label]
    img = ds[0].image
    assert img.shape == (*ds[0].hw, 3) and img.dtype == np.uint8


def test_zheng_maps_resampled_grey_to_nearest_level(tmp_path):
    (tmp_path / "Dataset 1").mkdir()
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(tmp_path / "Dataset 1" / "001.BMP")
    grey = np.array([[0, 63, 64, 128, 191, 192], [255, 250, 7, 130, 0, 0]] * 2, np.uint8)
    Image.fromarray(grey).save(tmp_path / "Dataset 1" / "001.PNG")
    (tmp_path / "Class Labels of Dataset 1.csv").write_bytes(b"image ID,class label\r\n1,5\r\n")
    (s,) = zheng.load(tmp_path, datasets=(1,))
    assert s.semantic[0].tolist() == [0, 0, 1, 1, 1, 2] and s.semantic[1].tolist() == [2, 2, 0, 1, 0, 0]
    assert s.image_label == 4 and s.image_id == "d1_001"


# -- class folders ------------------------------------------------------------------------------


def test_imagefolder_mixed_crops(tmp_path, caplog):
    rng = np.random.default_rng(1)
    (tmp_path / "basophil").mkdir()
    (tmp_path / "neutrophil").mkdir()
    (tmp_path / "platelet").mkdir()
    Image.fromarray(rng.integers(0, 255, (10, 12), dtype=np.uint8)).save(tmp_path / "basophil" / "g.png")
    Image.fromarray(rng.integers(0, 255, (8, 8, 4), dtype=np.uint8)).save(tmp_path / "basophil" / "a.PNG")
    Image.fromarray(rng.integers(0, 255, (9, 7, 3), dtype=np.uint8)).save(tmp_path / "neutrophil" / "c.JPG")
    Image.fromarray(rng.integers(0, 65535, (6, 5), dtype=np.uint16)).save(tmp_path / "neutrophil" / "d.png")
    (tmp_path / "neutrophil" / ".DS_Store").write_bytes(b"junk")
    ds = imagefolder.load(tmp_path)
    assert detect_format(tmp_path) == "imagefolder"
    assert ds.class_names == ["basophil", "neutrophil", "platelet"]
    assert [(s.image_id, s.image_label) for s in ds] == [
        ("basophil/a.PNG", 0), ("basophil/g.png", 0), ("neutrophil/c.JPG", 1), ("neutrophil/d.png", 1)]
    assert all(s._image is None for s in ds)  # lazy
    assert [s.image.shape for s in ds] == [(8, 8, 3), (10, 12, 3), (9, 7, 3), (6, 5, 3)]
    assert all(s.image.dtype == np.uint8 and len(s) == 0 for s in ds)
    assert ds[3].bit_depth == 16 and ds[3].read_raw().dtype == np.uint16
    assert [(sk.path, sk.reason) for sk in ds.skipped] == [
        (str(tmp_path / "platelet"), "empty class folder (class kept with 0 images)")]
    assert "empty class folder" in caplog.text
    assert imagefolder.load(tmp_path, strict=True).class_names == ds.class_names
    assert ds.class_counts() == {"basophil": 2, "neutrophil": 2, "platelet": 0}


# -- DICOM ------------------------------------------------------------------------------------------


def test_dicom_16bit(tmp_path):
    pytest.importorskip("pydicom")
    pixels = (np.arange(6 * 8, dtype=np.uint16).reshape(6, 8) * 1000)
    write_dicom(tmp_path / "smear.dcm", pixels)
    (s,) = dicom.load(tmp_path / "smear.dcm")
    assert s.hw == (6, 8) and s.bit_depth == 16 and s._image is None
    assert s.image.shape == (6, 8, 3) and s.image.dtype == np.uint8 and s.bit_depth == 16
    raw = s.read_raw()
    assert raw.dtype == np.uint16
    np.testing.assert_array_equal(raw, pixels)
    write_dicom(tmp_path / "second.DCM", pixels[:3])
    ds = dicom.load(tmp_path)
    assert [x.image_id for x in ds] == ["second", "smear"] and detect_format(tmp_path) == "dicom"


def test_dicom_monochrome1_turns_over_within_the_stored_bits_and_multiframe_reads_frame_one(tmp_path):
    """MONOCHROME1 (white = 0) is inverted within the stored bit range: a 12-bit value v reads as
    4095 - v in every file, however dark or bright the file's own pixels are."""
    pytest.importorskip("pydicom")
    from smearlab.data.imageio import read_raw
    dim = np.full((4, 5), 3095, np.uint16)
    dim[0, 0] = 4095  # one white pixel
    write_dicom(tmp_path / "dim.dcm", dim, "MONOCHROME1", bits_stored=12)
    write_dicom(tmp_path / "flat.dcm", np.full((4, 5), 3095, np.uint16), "MONOCHROME1", bits_stored=12)
    a, b = read_raw(tmp_path / "dim.dcm"), read_raw(tmp_path / "flat.dcm")
    assert a[1, 1] == b[1, 1] == 1000 and a[0, 0] == 0  # before: 1000 in one file, 0 in the other
    signed = np.array([[-2048, 0], [2047, 1000]], np.int16)  # 12-bit signed: -2048..2047
    write_dicom(tmp_path / "signed.dcm", signed, "MONOCHROME1", bits_stored=12)
    np.testing.assert_array_equal(read_raw(tmp_path / "signed.dcm"), [[4095, 2047], [0, 1047]])  # it read black
    frames = np.stack([np.full((4, 3), v, np.uint16) for v in (7, 9, 11)])
    write_dicom(tmp_path / "frames.dcm", frames)  # 3 frames 3 px wide: not an RGB image 3 px tall
    np.testing.assert_array_equal(read_raw(tmp_path / "frames.dcm"), frames[0])


def test_dsb2018_folder_without_masks_scores_as_empty_and_jpeg_masks_are_skipped(tmp_path):
    from PIL import Image

    from smearlab.data.formats import dsb2018
    from smearlab.metrics.instances import dsb_score
    root = tmp_path / "stage1_train"
    for name in ("a", "b"):
        (root / name / "images").mkdir(parents=True)
        Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(root / name / "images" / f"{name}.png")
    (root / "a" / "masks").mkdir()
    m = np.zeros((20, 30), np.uint8)
    m[5:9, 10:15] = 255
    Image.fromarray(m).save(root / "a" / "masks" / "m1.png")
    Image.fromarray(m).save(root / "a" / "masks" / "m2.jpg", quality=50)
    ds = dsb2018.load(root)
    a, b = sorted(ds, key=lambda s: s.image_id)
    assert len(a.boxes) == 1 and any("JPEG" in str(sk) for sk in ds.skipped)  # noise made a 38 px box of 20
    assert len(b.boxes) == 0 and b.masks.shape == (0, 20, 30)
    preds = [{"boxes": s.boxes, "scores": np.ones(len(s.boxes)), "labels": s.labels, "masks": s.masks} for s in ds]
    assert dsb_score(ds, preds, kind="masks") == pytest.approx(1.0)  # 'image b has no instance masks' before


def test_coco_image_id_naming_two_files_places_none_of_its_annotations(tmp_path):
    """{id 7: a.png} and {id 7: b.png}: every annotation of id 7 went to a.png."""
    for name in ("a.png", "b.png", "c.png"):
        _write_png(tmp_path / name)
    doc = {"images": [{"id": 7, "file_name": "a.png"}, {"id": 7, "file_name": "b.png"}, {"id": 8, "file_name": "c.png"}],
           "categories": [{"id": 1, "name": "RBC"}],
           "annotations": [{"id": k, "image_id": i, "category_id": 1, "bbox": [1, 1, 5, 5]}
                           for k, i in ((1, 7), (2, 7), (3, 8))]}
    (tmp_path / "c.json").write_text(json.dumps(doc))
    ds = coco.load(tmp_path / "c.json")
    assert [s.image_id for s in ds] == ["c"] and ds.num_objects == 1
    assert [str(s).split(": ", 1)[1] for s in ds.skipped] == [
        "image id 7 names 2 files (a.png, b.png): its 2 annotations cannot be placed; the images are left out"]


def test_coco_annotations_folder_beside_a_flat_images_folder(tmp_path):
    """annotations/instances_default.json beside images/a.png (CVAT's COCO export) loaded 0 images
    unsaid; a guessed format that reads no image is now an error."""
    from smearlab.data import DataError, formats
    _write_png(tmp_path / "images" / "a.png")
    doc = {"images": [{"id": 1, "file_name": "a.png"}], "categories": [{"id": 1, "name": "RBC"}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]}]}
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_default.json").write_text(json.dumps(doc))
    ds = formats.load(tmp_path)
    assert [s.image_id for s in ds] == ["a"] and ds.num_objects == 1
    (tmp_path / "images" / "a.png").unlink()
    with pytest.raises(DataError, match="no image could be read as coco, the format guessed"):
        formats.load(tmp_path)


def test_class_map_merges_twin_classes_of_coco_and_class_folders(tmp_path):
    """warn_alias_twins advises class_map= to merge 'RBC' and 'rbc', but for COCO and class folders
    the merge was refused: "['RBC', 'rbc'] would all become 'RBC'"."""
    from smearlab.data.classes import ClassMismatchError
    _write_png(tmp_path / "a.png")
    doc = {"images": [{"id": 1, "file_name": "a.png"}], "categories": [{"id": 1, "name": "RBC"}, {"id": 2, "name": "rbc"}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]},
                           {"id": 2, "image_id": 1, "category_id": 2, "bbox": [10, 10, 5, 5]}]}
    (tmp_path / "c.json").write_text(json.dumps(doc))
    with pytest.raises(ClassMismatchError, match="would all become"):  # not asked: no guess
        coco.load(tmp_path / "c.json", class_names=["RBC"])
    ds = coco.load(tmp_path / "c.json", class_names=["RBC"], class_map={"rbc": "RBC"})
    assert ds.class_names == ["RBC"] and ds[0].labels.tolist() == [0, 0]
    for cls in ("RBC", "rbc"):
        _write_png(tmp_path / "f" / cls / f"{cls}.png")
    ds = imagefolder.load(tmp_path / "f", class_names=["RBC"], class_map={"rbc": "RBC"})
    assert ds.class_names == ["RBC"] and [s.image_label for s in ds] == [0, 0]
