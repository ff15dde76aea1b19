"""Box formats (VOC, BBBC041, IML-Malaria, YOLO) on the real datasets, and save -> load round trips."""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from smearlab.data import DataError, formats
from smearlab.data.formats import bbbc041, coco as coco_format, iml, voc, yolo
from smearlab.data.sample import Sample, SmearDataset

CBC_CLASSES = ["RBC", "WBC", "Platelets"]
MALARIA_CLASSES = {"red blood cell", "ring", "trophozoite", "schizont", "gametocyte", "difficult"}


def _box_skips(ds) -> int:
    return sum("box" in s.reason for s in ds.skipped)


# -- VOC / CBC ------------------------------------------------------------------------------------
def test_cbc_training(cbc_root):
    ds = voc.load(cbc_root / "Training")
    assert len(ds) == 300
    assert ds.num_objects + _box_skips(ds) == 3952
    assert len(ds.skipped) == 1 and "BloodImage_00338.xml" in str(ds.skipped[0])
    assert "degenerate" in ds.skipped[0].reason
    assert ds.class_names == sorted(CBC_CLASSES)  # collected classes are sorted by name
    assert ds.format == "voc" and ds.name == "Training"
    s = ds[0]
    assert s.path.is_file() and s.size == (480, 640) and s._image is None  # lazy
    assert s.meta["difficult"].dtype == bool and len(s.meta["difficult"]) == len(s.boxes)


def test_cbc_testing_counts(cbc_root):
    ds = voc.load(cbc_root / "Testing", class_names=CBC_CLASSES)
    assert len(ds) == 60
    assert ds.num_objects + _box_skips(ds) == 908
    assert len(ds.skipped) == 1 and "BloodImage_00343.xml" in ds.skipped[0].path
    assert ds.class_names == CBC_CLASSES
    assert ds.class_counts() == {"RBC": 791, "WBC": 61, "Platelets": 55}
    assert ds[0].image.shape == (480, 640, 3)


def test_cbc_single_xml_and_dispatch(cbc_root):
    xml = cbc_root / "Testing" / "Annotations" / "BloodImage_00339.xml"
    ds = voc.load(xml)
    assert len(ds) == 1 and ds[0].path == cbc_root / "Testing" / "Images" / "BloodImage_00339.jpg"
    assert formats.detect_format(cbc_root / "Testing") == "voc"
    assert len(formats.load(cbc_root / "Testing")) == 60


def test_cbc_save_load_round_trip_copies_images(cbc_root, tmp_path):
    src = voc.load(cbc_root / "Testing", class_names=CBC_CLASSES)[:3]
    out = voc.save(src, tmp_path / "voc")
    back = voc.load(out, class_names=CBC_CLASSES)
    assert [s.image_id for s in back] == [s.image_id for s in src]
    for a, b in zip(src, back):
        assert b.path.read_bytes() == a.path.read_bytes()
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.labels, b.labels)


# -- BBBC041 --------------------------------------------------------------------------------------
def test_bbbc041_test_json(shared_data):
    path = shared_data / "bbbc041_annotations" / "test.json"
    ds = bbbc041.load(path, check_images=False)
    assert len(ds) == 120 and set(ds.class_names) == MALARIA_CLASSES
    expected = {"red blood cell": 5614, "ring": 169, "trophozoite": 111, "gametocyte": 12,
                "schizont": 11, "difficult": 5}
    assert sum(expected.values()) == ds.num_objects + _box_skips(ds)
    counts = ds.class_counts()
    assert all(counts[k] <= v for k, v in expected.items())
    s = ds[0]
    assert s.size == (1383, 1944)
    assert s.path == (path.parent / "images" / f"{s.image_id}.jpg").resolve()
    assert formats.detect_format(path) == "bbbc041"


def test_bbbc041_missing_images_are_skipped(shared_data):
    ds = bbbc041.load(shared_data / "bbbc041_annotations" / "test.json")
    assert len(ds) == 0 and len(ds.skipped) == 120
    assert ds.skipped.counts() == {"image file not found": 120}


# -- IML-Malaria ----------------------------------------------------------------------------------
def test_iml_subset(shared_data):
    root = shared_data / "malaria_iml_subset"
    ds = iml.load(root / "annotations.json")
    assert len(ds) == 40 and set(ds.class_names) == MALARIA_CLASSES
    expected = {"red blood cell": 4443, "gametocyte": 27, "ring": 15, "trophozoite": 9,
                "schizont": 4, "difficult": 2}
    assert ds.num_objects + _box_skips(ds) == sum(expected.values())
    counts = ds.class_counts()
    assert all(counts[k] <= v for k, v in expected.items())
    assert len(ds.fixed) > 0 and all("clipped" in f.reason for f in ds.fixed)
    for s in ds:
        assert s.size == (960, 1280) and s._image is None
        assert (s.boxes >= 0).all() and (s.boxes[:, 2] <= 1280).all() and (s.boxes[:, 3] <= 960).all()
    assert formats.detect_format(root) == "iml"
    assert len(formats.load(root)) == 40


# -- round trips ----------------------------------------------------------------------------------
def _toy_dataset() -> SmearDataset:
    rng = np.random.default_rng(1)
    samples = []
    for i, (h, w) in enumerate([(48, 64), (100, 75), (33, 41)]):
        xy = rng.uniform(0, 0.5, (4, 2)) * [w, h]
        wh = rng.uniform(0.1, 0.5, (4, 2)) * [w, h]
        boxes = np.hstack([xy, xy + wh]).astype(np.float32)
        img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        samples.append(Sample(image_id=f"img{i}", boxes=boxes, labels=rng.integers(0, 3, 4), _image=img,
                              meta={"difficult": np.array([True, False, False, True])}))
    samples.append(Sample(image_id="img3", _image=np.zeros((10, 12, 3), np.uint8)))
    return SmearDataset(samples, ["ring", "schizont", "red blood cell"], "toy")


def test_yolo_round_trip(tmp_path):
    src = _toy_dataset()
    root = yolo.save(src, tmp_path / "yolo")
    assert (root / "classes.txt").read_text().split("\n")[:3] == src.class_names
    config = yaml.safe_load((root / "data.yaml").read_text())
    assert config["names"] == src.class_names and config["train"] == "images"
    assert formats.detect_format(root) == "yolo"
    back = yolo.load(root / "data.yaml")
    assert back.class_names == src.class_names and not back.skipped and not back.fixed
    assert [s.image_id for s in back] == [s.image_id for s in src]
    for a, b in zip(src, back):
        assert b.size == a.size
        np.testing.assert_allclose(b.boxes, a.boxes, atol=1e-3)
        np.testing.assert_array_equal(b.labels, a.labels)
        np.testing.assert_array_equal(b.image, a.image)


def test_yolo_splits_and_dict_names(tmp_path):
    src = _toy_dataset()
    yolo.save(src, tmp_path / "tmp")
    root = tmp_path / "split"
    for kind in ("images", "labels"):
        (root / kind).mkdir(parents=True)
        (tmp_path / "tmp" / kind).rename(root / kind / "train")
    (root / "data.yaml").write_text("names: {0: ring, 1: schizont, 2: red blood cell}\n")
    ds = yolo.load(root, split="train")
    assert len(ds) == 4 and ds.class_names == src.class_names and ds.name == "split/train"
    everything = yolo.load(root, class_names=["ring"])
    assert [s.image_id for s in everything] == [f"train/{s.image_id}" for s in src]
    assert everything.class_names == ["ring"]
    assert everything.num_objects == sum(int((s.labels == 0).sum()) for s in src)
    assert everything.skipped.counts() == {"unknown class": src.num_objects - everything.num_objects}


def test_voc_round_trip_in_memory_images(tmp_path):
    src = _toy_dataset()
    root = voc.save(src, tmp_path / "voc")
    back = voc.load(root, class_names=src.class_names)
    assert not back.skipped and not back.fixed
    for a, b in zip(src, back):
        assert b.path.suffix == ".png" and b.size == a.size
        np.testing.assert_allclose(b.boxes, a.boxes, atol=1e-4)
        np.testing.assert_array_equal(b.labels, a.labels)
        np.testing.assert_array_equal(b.meta["difficult"], a.meta.get("difficult", np.zeros(0, bool)))
        np.testing.assert_array_equal(b.image, a.image)
    assert formats.load(root, class_names=src.class_names).num_objects == src.num_objects


def _png(path, size=(40, 30)):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 180, 190)).save(path)
    return path


def test_yolo_label_folder_in_another_case_or_beside_the_images(tmp_path):
    """``Labels/`` and darknet's labels beside the images loaded with 0 objects and no skip."""
    for layout in ("Labels", "beside"):
        root = tmp_path / layout
        _png(root / "images" / "a.png")
        (root / "classes.txt").write_text("RBC\nWBC\n")
        labels = root / ("images" if layout == "beside" else layout)
        labels.mkdir(parents=True, exist_ok=True)
        (labels / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n1 0.3 0.3 0.1 0.1\n")
        ds = yolo.load(root)
        assert ds.num_objects == 2 and not ds.skipped, layout
    empty = tmp_path / "nolabels"
    _png(empty / "images" / "a.png")
    (empty / "classes.txt").write_text("RBC\n")
    with pytest.raises(DataError, match="no label files"):
        yolo.load(empty)


def test_a_class_named_twice_is_refused_naming_the_file(tmp_path):
    root = tmp_path / "y"
    _png(root / "images" / "a.png")
    (root / "labels").mkdir(parents=True)
    (root / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (root / "classes.txt").write_text("RBC\nRBC\n")
    with pytest.raises(DataError, match=r"classes.txt: class 'RBC' is listed twice"):
        yolo.load(root)
    (root / "classes.txt").unlink()
    (root / "data.yaml").write_text("names: [RBC, WBC, RBC]\n")
    with pytest.raises(DataError, match=r"data.yaml: class 'RBC' is listed twice \(labels 0 and 2\)"):
        yolo.load(root)
    coco = tmp_path / "c.json"
    _png(tmp_path / "a.png")
    coco.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}],
                                "categories": [{"id": 1, "name": "RBC"}, {"id": 2, "name": "RBC"}],
                                "annotations": []}))
    with pytest.raises(DataError, match=r"c.json: class 'RBC' is listed twice"):
        coco_format.load(coco)
    with pytest.raises(ValueError, match="named twice"):
        SmearDataset([], ["RBC", "RBC"])


def test_one_image_annotated_twice_is_one_sample(tmp_path):
    """Two COCO entries or two VOC files of one image made two samples that split its objects."""
    _png(tmp_path / "a.png")
    coco = tmp_path / "c.json"
    coco.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30},
                   {"id": 2, "file_name": "a.png", "width": 40, "height": 30}],
        "categories": [{"id": 1, "name": "RBC"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 10, 10]},
                        {"id": 2, "image_id": 2, "category_id": 1, "bbox": [20, 5, 10, 10]}]}))
    ds = coco_format.load(coco)
    assert len(ds) == 1 and ds.num_objects == 1
    assert any("also image id 1" in s.reason for s in ds.skipped)
    root = tmp_path / "voc"
    _png(root / "Images" / "a.png")
    (root / "Annotations").mkdir()
    for stem in ("a", "a_copy"):
        (root / "Annotations" / f"{stem}.xml").write_text(
            "<annotation><filename>a.png</filename><object><name>RBC</name><bndbox><xmin>1</xmin><ymin>1</ymin>"
            "<xmax>9</xmax><ymax>9</ymax></bndbox></object></annotation>")
    ds = voc.load(root)
    assert len(ds) == 1 and ds.num_objects == 1
    assert [s.reason for s in ds.skipped] == ["its image a.png is also annotated by a.xml; this file is left out"]


def test_an_object_annotated_twice_counts_once(tmp_path):
    root = tmp_path / "voc"
    _png(root / "Images" / "a.png")
    (root / "Annotations").mkdir()
    box = "<bndbox><xmin>2</xmin><ymin>2</ymin><xmax>12</xmax><ymax>12</ymax></bndbox>"
    objects = [f"<object><name>{n}</name>{box}</object>" for n in ("RBC", "RBC", "RBC", "WBC")]
    (root / "Annotations" / "a.xml").write_text(f"<annotation><filename>a.png</filename>{''.join(objects)}</annotation>")
    ds = voc.load(root)
    assert ds.num_objects == 2  # one red cell and the white cell at the same place: another class
    assert [s.reason.split(":")[0] for s in ds.skipped] == ["duplicate of object 0 (same class and box)"] * 2


def test_voc_coordinates_are_one_based_inclusive_and_round_trip(tmp_path):
    """PASCAL VOC writes 1-based, inclusive pixel indices (a whole 40 px wide image is xmin=1,
    xmax=40): read without the shift every box lost its first column and row."""
    root = tmp_path / "voc"
    _png(root / "Images" / "a.png")
    (root / "Annotations").mkdir()
    objects = ["<object><name>RBC</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>40</xmax><ymax>30</ymax>"
               "</bndbox></object>",
               "<object><name>WBC</name><bndbox><xmin>11</xmin><ymin>6</ymin><xmax>20</xmax><ymax>15</ymax>"
               "</bndbox></object>",
               "<object><name>RBC</name><bndbox><xmin>7</xmin><ymin>7</ymin><xmax>7</xmax><ymax>7</ymax>"
               "</bndbox></object>"]  # a point, not an object
    (root / "Annotations" / "a.xml").write_text(f"<annotation><filename>a.png</filename>{''.join(objects)}</annotation>")
    ds = voc.load(root)
    assert ds[0].boxes.tolist() == [[0, 0, 40, 30], [10, 5, 20, 15]]
    assert [s.reason.split(" (")[0] for s in ds.skipped] == ["degenerate box"]
    voc.save(ds, tmp_path / "out")
    text = (tmp_path / "out" / "Annotations" / "a.xml").read_text()
    assert "<xmin>11</xmin>" in text and "<xmax>20</xmax>" in text
    assert voc.load(tmp_path / "out")[0].boxes.tolist() == ds[0].boxes.tolist()


def test_files_of_one_stem_in_two_folders_are_two_images(tmp_path):
    """BBBC041, IML and COCO named images by their file's stem: a second x.png in another folder
    was dropped as a 'duplicate' (BBBC041, IML) or shared the id (COCO)."""
    for sub in ("a", "b"):
        _png(tmp_path / "images" / sub / "x.png")
    box = {"minimum": {"r": 1, "c": 2}, "maximum": {"r": 11, "c": 22}}
    (tmp_path / "b.json").write_text(json.dumps(
        [{"image": {"pathname": f"/images/{sub}/x.png", "shape": {"r": 30, "c": 40, "channels": 3}},
          "objects": [{"category": "red blood cell", "bounding_box": box}]} for sub in ("a", "b")]))
    ds = bbbc041.load(tmp_path / "b.json")
    assert sorted(s.image_id for s in ds) == ["images/a/x", "images/b/x"] and not ds.skipped
    (tmp_path / "c.json").write_text(json.dumps({
        "images": [{"id": k, "file_name": f"images/{sub}/x.png", "width": 40, "height": 30}
                   for k, sub in ((1, "a"), (2, "b"))],
        "categories": [{"id": 1, "name": "RBC"}],
        "annotations": [{"id": k, "image_id": k, "category_id": 1, "bbox": [1, 1, 10, 10]} for k in (1, 2)]}))
    assert sorted(s.image_id for s in coco_format.load(tmp_path / "c.json")) == ["images/a/x", "images/b/x"]


def test_a_json_file_with_a_byte_order_mark_is_recognised(tmp_path):
    _png(tmp_path / "x.png")
    entry = [{"image_name": "x.png", "objects": [{"type": "ring", "bbox": {"x": 1, "y": 1, "w": 5, "h": 5}}]}]
    (tmp_path / "ann.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(entry).encode())
    assert formats.json_kind(tmp_path / "ann.json") == "iml"


def test_cvat_darknet_export_is_read_as_yolo(tmp_path):
    """CVAT's "YOLO 1.1" export (obj_train_data/ with each .txt beside its image, obj.names) was
    guessed as a one-class folder of images 'obj_train_data', its boxes lost."""
    for stem, cls in (("a", 0), ("b", 1)):
        _png(tmp_path / "obj_train_data" / f"{stem}.png")
        (tmp_path / "obj_train_data" / f"{stem}.txt").write_text(f"{cls} 0.5 0.5 0.2 0.2\n")
    (tmp_path / "obj.names").write_text("RBC\nWBC\n")
    (tmp_path / "obj.data").write_text("classes = 2\nnames = data/obj.names\ntrain = data/train.txt\n")
    (tmp_path / "train.txt").write_text("data/obj_train_data/a.png\ndata/obj_train_data/b.png\n")
    assert formats.detect_format(tmp_path) == "yolo"
    ds = formats.load(tmp_path)
    assert ds.format == "yolo" and ds.class_names == ["RBC", "WBC"] and not ds.skipped
    assert [s.image_id for s in ds] == ["obj_train_data/a", "obj_train_data/b"]
    assert [s.labels.tolist() for s in ds] == [[0], [1]] and ds[0].boxes.tolist() == [[16, 12, 24, 18]]


def test_images_of_one_stem_and_two_extensions_get_distinct_ids(tmp_path):
    """YOLO and BBBC041 named images/x.png and images/x.jpg both 'images/x': the dataset could not
    be saved again, and whatever was keyed by id mixed the two."""
    root = tmp_path / "y"
    for ext in ("png", "jpg"):
        _png(root / "images" / f"x.{ext}")
    (root / "labels").mkdir()
    (root / "labels" / "x.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (root / "classes.txt").write_text("RBC\n")
    ds = yolo.load(root)
    assert sorted(s.image_id for s in ds) == ["images/x.jpg", "images/x.png"]
    voc.save(ds, tmp_path / "out")  # refused before: "two images would be written as 'images_x'"
    box = {"minimum": {"r": 1, "c": 2}, "maximum": {"r": 11, "c": 22}}
    (root / "b.json").write_text(json.dumps(
        [{"image": {"pathname": f"/images/x.{ext}", "shape": {"r": 30, "c": 40, "channels": 3}},
          "objects": [{"category": "red blood cell", "bounding_box": box}]} for ext in ("png", "jpg")]))
    assert sorted(s.image_id for s in bbbc041.load(root / "b.json")) == ["images/x.jpg", "images/x.png"]


def test_yolo_label_files_differing_in_case_are_not_mixed(tmp_path):
    """labels/A.txt and labels/a.txt were one lower-case key: both images got the objects of one."""
    root = tmp_path / "y"
    for stem in ("A", "a"):
        _png(root / "images" / f"{stem}.png")
    (root / "labels").mkdir()
    (root / "labels" / "A.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (root / "labels" / "a.txt").write_text("1 0.25 0.25 0.1 0.1\n")
    (root / "classes.txt").write_text("RBC\nWBC\n")
    ds = yolo.load(root)
    assert {s.image_id: s.labels.tolist() for s in ds} == {"A": [0], "a": [1]} and not ds.skipped
    (root / "labels" / "a.txt").rename(root / "labels" / "B.TXT")  # another case: used when it is the only match
    _png(root / "images" / "b.png")
    ds = yolo.load(root)
    assert {s.image_id: s.labels.tolist() for s in ds} == {"A": [0], "a": [], "b": [1]}
    for stem in ("Cc", "cC"):  # two files in other cases for cc.png: not guessed, counted
        (root / "labels" / f"{stem}.txt").write_text("0 0.25 0.25 0.1 0.1\n")
    _png(root / "images" / "cc.png")
    ds = yolo.load(root)
    assert [s.image_id for s in ds] == ["A", "a", "b"]
    assert len(ds.skipped) == 1 and "2 label files match it only without regard to case" in ds.skipped[0].reason


def test_yolo_label_files_differing_only_in_the_extension_case_are_refused(tmp_path):
    """labels/x.txt and labels/x.TXT were one key: the one sorted last gave x.png its objects,
    the other was neither read nor counted."""
    root = tmp_path / "y"
    for stem in ("x", "y"):
        _png(root / "images" / f"{stem}.png")
    (root / "labels").mkdir()
    (root / "labels" / "x.TXT").write_text("0 0.5 0.5 0.2 0.2\n")
    (root / "labels" / "x.txt").write_text("1 0.25 0.25 0.1 0.1\n")
    (root / "labels" / "y.txt").write_text("1 0.25 0.25 0.1 0.1\n")
    (root / "classes.txt").write_text("RBC\nWBC\n")
    ds = yolo.load(root)
    assert [s.image_id for s in ds] == ["y"]
    assert len(ds.skipped) == 1 and "x.TXT, x.txt" in ds.skipped[0].reason
    assert str(ds.skipped[0].path).endswith("x.png")
