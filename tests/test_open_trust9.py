"""Defects found in review of predictions, box checks, COCO writing and format guessing: joins
and shapes read silently the wrong way, a split's images overwritten by another's, a folder of
two formats or a YOLO images/ folder read as something else, skip kinds mangled."""
from __future__ import annotations

import copy
import json
import pickle

import numpy as np
import pytest
from PIL import Image

from smearlab.data import DataError
from smearlab.data.boxes import check_boxes, clean_boxes, mask_box
from smearlab.data.formats import coco, find_dataset, json_kind, load, published_splits, save
from smearlab.data.predictions import Predictions, as_prediction, check_predictions
from smearlab.data.sample import Sample, SkipLog, SmearDataset

BOX = {"boxes": [[1, 1, 9, 9]], "scores": [0.9], "labels": [0]}


def _img(path, w=40, h=30, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), value, np.uint8)).save(path)


def _coco(path, files, anns=(), cats=({"id": 1, "name": "RBC"},), **extra):
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [{"id": i + 1, "file_name": f, "width": 40, "height": 30} for i, f in enumerate(files)]
    path.write_text(json.dumps({**extra, "images": images, "annotations": list(anns), "categories": list(cats)}))


# -- 1. Predictions ---------------------------------------------------------------------------------
def test_predictions_without_classes_plus_predictions_with_classes_is_refused():
    """a + b with a lacking class names took b's: a's label 0 (RBC in the dataset) became WBC."""
    a, b = Predictions([BOX]), Predictions([BOX], ["WBC", "RBC"])
    with pytest.raises(ValueError, match="without class names"):
        a + b
    with pytest.raises(ValueError):
        b + a
    assert (Predictions([]) + b).class_names == ["WBC", "RBC"]     # an empty side relabels nothing
    assert (a + Predictions([BOX])).class_names is None


def test_predictions_refuse_a_bare_string_of_class_names():
    with pytest.raises(TypeError, match="list of class names"):
        Predictions([BOX], "RBC")                                  # was the classes R, B and C


def test_predictions_pickle_and_copy_keep_classes_windows_and_zooms():
    p = Predictions([BOX, BOX], ["WBC", "RBC"], windows=[1, 4], zooms=[1.0, 0.5])
    for q in (pickle.loads(pickle.dumps(p)), copy.copy(p), copy.deepcopy(p)):
        assert type(q) is Predictions and len(q) == 2
        assert (q.class_names, q.windows, q.zooms) == (["WBC", "RBC"], [1, 4], [1.0, 0.5])
    assert copy.deepcopy(p)[0] is not p[0]


# -- 2. as_prediction -------------------------------------------------------------------------------
def test_as_prediction_requires_n_by_4_boxes():
    """A (4, N) column stack or a flat list was reshaped into other boxes without a word."""
    b = np.array([[10, 10, 20, 20], [30, 30, 40, 40]], float)
    for wrong in (b.T, b.ravel()):
        with pytest.raises(ValueError, match=r"\(N, 4\)"):
            as_prediction({"boxes": wrong, "scores": [0.9, 0.8], "labels": [0, 1]})
    assert as_prediction({"boxes": b, "scores": [0.9, 0.8], "labels": [0, 1]})["boxes"].shape == (2, 4)
    assert as_prediction({"boxes": [], "scores": [], "labels": []})["boxes"].shape == (0, 4)
    assert as_prediction({})["boxes"].shape == (0, 4)


def test_as_prediction_names_bad_labels_and_missing_boxes():
    b = [[10, 10, 20, 20], [30, 30, 40, 40]]
    with pytest.raises(ValueError, match=r"whole class indices, got \[inf\]"):   # was "got []"
        as_prediction({"boxes": b, "scores": [0.9, 0.8], "labels": [np.inf, 1]})
    with pytest.raises(ValueError, match="class indices.*RBC"):
        as_prediction({"boxes": b, "scores": [0.9, 0.8], "labels": ["RBC", "WBC"]}, "prediction 3")
    with pytest.raises(ValueError, match="boxes is None"):
        as_prediction({"boxes": None, "scores": [], "labels": []})


# -- 3. boxes ---------------------------------------------------------------------------------------
def test_clean_boxes_tests_the_float32_values_it_stores():
    """A 0.00005-wide box at x=1500 has no width in float32: kept, then refused by check_boxes."""
    skipped, fixed = SkipLog(), SkipLog(kind="fixed")
    boxes, labels, kept = clean_boxes([[1500, 10, 1500.00005, 20], [10, 10, 20, 20], [10, 10, 20.0000001, 20]],
                                      [0, 0, 0], (100, 2000), "f.json", skipped, fixed)
    assert kept.tolist() == [1] and boxes.dtype == np.float32
    reasons = [s.reason for s in skipped]
    assert reasons[0].startswith("degenerate box") and "1500.00005" in reasons[0]
    assert reasons[1].startswith("duplicate of box 1")
    ds = SmearDataset([Sample("a", boxes=boxes, labels=labels, _image=np.zeros((100, 2000, 3), np.uint8))],
                      ["RBC"], "d")
    check_boxes(ds)


def test_mask_box_refuses_a_mask_that_is_not_2d():
    m = np.zeros((5, 6, 3), bool)
    m[1:3, 2:4] = True
    with pytest.raises(ValueError, match=r"2-D.*\(5, 6, 3\)"):
        mask_box(m)
    assert mask_box(m[..., 0]).tolist() == [2, 1, 4, 3]


# -- 4. COCO splits saved into one folder -----------------------------------------------------------
def _pixels(value):
    return SmearDataset([Sample("a", boxes=np.array([[1, 1, 9, 9]], np.float32), labels=np.zeros(1, np.int64),
                                _image=np.full((30, 40, 3), value, np.uint8))], ["RBC"], f"d{value}")


def test_coco_save_of_a_second_split_keeps_the_first_splits_images(tmp_path):
    """val.json saved beside train.json wrote its a.png over train's: train's boxes on val's pixels."""
    train, val = _pixels(10), _pixels(200)
    save(train, tmp_path / "train.json", "coco")
    save(val, tmp_path / "val.json", "coco")
    assert load(tmp_path, split="train")[0].image.max() == 10
    assert load(tmp_path, split="val")[0].image.max() == 200
    save(train, tmp_path / "train.json", "coco")                   # saved again: the same file is reused
    assert len(list((tmp_path / "images").iterdir())) == 2
    assert load(tmp_path, split="train")[0].image.max() == 10
    assert load(tmp_path, split="val")[0].image.max() == 200


# -- 5. published splits with numbers --------------------------------------------------------------
def _yolo(root, splits=("train2017", "val2017"), n=(6, 3), yaml="names: [RBC]\n"):
    for split, k in zip(splits, n):
        for i in range(k):
            _img(root / "images" / split / f"{split}_{i}.png")
            (root / "labels" / split).mkdir(parents=True, exist_ok=True)
            (root / "labels" / split / f"{split}_{i}.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (root / "data.yaml").write_text(yaml)
    return root


def test_numbered_split_folders_are_published_splits(tmp_path):
    """train2017/val2017 were not recognised: published validation images went into training."""
    from smearlab.data.splits import detection_splits
    root = _yolo(tmp_path / "y")
    assert published_splits(root) == {"train": "train2017", "val": "val2017"}
    sp = detection_splits(str(root), val=0.2, test=0.0)
    assert {s.path.parent.name for s in sp["val"]} == {"val2017"} and len(sp["val"]) == 3
    assert {s.path.parent.name for s in sp["train"]} == {"train2017"}
    other = _yolo(tmp_path / "z", splits=("a", "b"), yaml="train: images/a\nval: images/b\nnames: [RBC]\n")
    assert published_splits(other) == {"train": "a", "val": "b"}
    assert published_splits(_yolo(tmp_path / "x", splits=("train", "val"))) == {"train": "train", "val": "val"}


# -- 6. format guessing -----------------------------------------------------------------------------
def test_a_folder_of_two_annotation_formats_is_refused_naming_both(tmp_path):
    voc_dir = tmp_path / "v"
    _img(voc_dir / "JPEGImages" / "a.png")
    (voc_dir / "Annotations").mkdir()
    (voc_dir / "Annotations" / "a.xml").write_text(
        "<annotation><filename>a.png</filename><size><width>40</width><height>30</height></size></annotation>")
    _img(voc_dir / "b.png")
    _coco(voc_dir / "annotations.json", ["b.png"])
    with pytest.raises(DataError, match=r"2 formats: voc .*coco .*--format"):
        find_dataset(voc_dir)
    assert len(load(voc_dir, format="coco")) == 1                  # named, it is read
    both = tmp_path / "j"
    _img(both / "b.png")
    _coco(both / "b_coco.json", ["b.png"])
    (both / "a_bbbc.json").write_text(json.dumps([{"image": {"pathname": "/b.png"}, "objects": []}]))
    with pytest.raises(DataError, match="bbbc041.*coco|coco.*bbbc041"):
        find_dataset(both)


def test_the_images_folder_of_a_yolo_dataset_is_not_read_as_classes(tmp_path):
    """images/ with train/ and val/ was an image-folder dataset of the classes train and val."""
    root = _yolo(tmp_path / "y", splits=("train", "val"))
    with pytest.raises(DataError, match=r"images/ folder of the YOLO dataset .*y\b"):
        find_dataset(root / "images")
    classes = tmp_path / "c"                                       # no labels/ or data.yaml beside it
    _img(classes / "images" / "train" / "a.png")
    assert find_dataset(classes / "images")[1] == "imagefolder"


def test_a_coco_file_with_a_long_info_block_is_recognised(tmp_path):
    """Only the first 4096 bytes were searched for "images": a long info block hid them."""
    _img(tmp_path / "a.png")
    f = tmp_path / "gt.json"
    _coco(f, ["a.png"], info={"description": "x" * 10000}, licenses=[{"name": "y" * 100}] * 20000)
    assert f.stat().st_size > 2 << 20
    assert json_kind(f) == "coco"
    assert find_dataset(tmp_path)[1] == "coco"
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"info": "x" * 10000, "shapes": []}))
    assert json_kind(other) is None


# -- 7. skip kinds ----------------------------------------------------------------------------------
def test_skip_kinds_keep_the_digits_of_names():
    """"degenerate box (x1<=x0 or y1<=y0)" was shown as "(xN<=xN or yN<=yN)"."""
    log = SkipLog()
    log.add("a.json", "degenerate box (x1<=x0 or y1<=y0): [1, 2, 1, 4]")
    log.add("a.json", "box outside the 80x50 image: [1, 2, 3, 4]")
    log.add("b.json", "box outside the 60x40 image: [1, 2, 3, 4]")
    assert dict(log.counts()) == {"degenerate box (x1<=x0 or y1<=y0)": 1, "box outside the NxN image": 2}
