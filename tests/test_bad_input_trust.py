"""No silent wrong answers: files that load without error but would give wrong numbers.

Each case is a file (or a pair of files) a user meets in the wild: a phone JPEG with an EXIF
rotation, an annotation whose size disagrees with the image, a box outside the real image, a
dataset whose classes are in another order or spelling than the model's, two images with one
name, a link out of the dataset, a palette mask, upper-case extensions. Each must be read
right, repaired and counted, or refused with the file named; never used as if nothing were wrong.
"""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from PIL import Image

from smearlab.data import DataError, Sample, SmearDataset
from smearlab.data.classes import ClassMismatchError, canonical, match_classes
from smearlab.data.formats import coco, imagefolder, voc, yolo, zheng
from smearlab.data.imageio import image_info, read_binary_mask, read_image, read_mask, write_image
from smearlab.data.predictions import Predictions, check_predictions
from smearlab.detection.postprocess import postprocess
from smearlab.export import export_predictions, output_names
from smearlab.metrics.detection import coco_eval, simulate_predictions

STORED_HW = (40, 60)  # the pixels as stored: 60 wide, 40 high


def _exif_jpeg(path, orientation=6):
    """A 60x40 JPEG (stored) whose EXIF says "rotate 90" (shown 40x60): left half dark."""
    a = np.full((*STORED_HW, 3), 200, np.uint8)
    a[:, :30] = 20
    exif = Image.Exif()
    exif[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path, exif=exif.tobytes(), quality=95)
    return path


def _voc_xml(root, stem, image_name, size, boxes, names=None):
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    size_xml = f"<size><width>{size[1]}</width><height>{size[0]}</height><depth>3</depth></size>" \
        if size else ""
    names = names or ["RBC"] * len(boxes)
    objs = "".join(f"<object><name>{n}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
                   f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for n, b in zip(names, boxes))
    (root / "Annotations" / f"{stem}.xml").write_text(
        f"<annotation><filename>{image_name}</filename>{size_xml}{objs}</annotation>")


# -- 1. EXIF orientation --------------------------------------------------------------------------
def test_images_are_read_as_shown(tmp_path):
    p = _exif_jpeg(tmp_path / "a.jpg")
    info = image_info(p)
    assert info.stored_hw == (40, 60) and info.shown_hw == (60, 40) and info.exif_orientation == 6
    shown, _ = read_image(p)
    stored, _ = read_image(p, orientation="stored")
    assert shown.shape[:2] == (60, 40) and stored.shape[:2] == (40, 60)
    # tag 6: rotate 90 degrees clockwise to show; the dark left half ends up on top
    assert shown[:20].mean() < 60 and shown[-20:].mean() > 150
    with pytest.raises(ValueError, match="orientation"):
        read_image(p, orientation="sideways")


@pytest.mark.parametrize("declared, expect", [
    ((60, 40), "exif"),      # the annotation tool showed the rotated image (CVAT, viewers)
    ((40, 60), "stored"),    # the tool ignored the tag: boxes refer to the stored pixels
    ((50, 50), "skip"),      # neither
    (None, "exif"),          # nothing declared: the documented convention
])
def test_voc_size_decides_the_orientation(tmp_path, declared, expect):
    _exif_jpeg(tmp_path / "Images" / "a.jpg")
    _voc_xml(tmp_path, "a", "a.jpg", declared, [(2, 2, 12, 12)])
    ds = voc.load(tmp_path)
    if expect == "skip":
        assert len(ds) == 0
        reason = ds.skipped[0].reason
        assert "a.jpg" in ds.skipped[0].path and "40x60" in reason and "50x50" in reason
        assert "EXIF orientation 6" in reason
        return
    s = ds[0]
    assert s.orientation == expect
    assert s.image.shape[:2] == ((60, 40) if expect == "exif" else (40, 60))
    if expect == "stored":
        assert len(ds.fixed) == 1 and "EXIF orientation ignored" in ds.fixed[0].reason
    else:
        assert not ds.fixed


def test_coco_size_decides_the_orientation(tmp_path):
    _exif_jpeg(tmp_path / "a.jpg")
    _exif_jpeg(tmp_path / "b.jpg")
    _exif_jpeg(tmp_path / "c.jpg")
    data = {"images": [{"id": 1, "file_name": "a.jpg", "width": 40, "height": 60},
                       {"id": 2, "file_name": "b.jpg", "width": 60, "height": 40},
                       {"id": 3, "file_name": "c.jpg", "width": 50, "height": 50}],
            "categories": [{"id": 1, "name": "RBC"}],
            "annotations": [{"id": 1, "image_id": 2, "category_id": 1, "bbox": [50, 30, 10, 10]}]}
    (tmp_path / "gt.json").write_text(json.dumps(data))
    ds = coco.load(tmp_path / "gt.json")
    assert [s.image_id for s in ds] == ["a", "b"]
    assert [s.orientation for s in ds] == ["exif", "stored"]
    assert ds[1].image.shape[:2] == (40, 60) and len(ds[1].boxes) == 1  # the box fits the stored image
    assert [f.reason.split(":")[0] for f in ds.fixed] == ["EXIF orientation ignored"]
    assert "c.jpg" in ds.skipped[0].path and "50x50" in ds.skipped[0].reason


def test_yolo_converts_with_the_size_as_shown(tmp_path):
    _exif_jpeg(tmp_path / "images" / "a.jpg")
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (tmp_path / "classes.txt").write_text("RBC\n")
    s = yolo.load(tmp_path)[0]
    assert s.hw == (60, 40)
    np.testing.assert_allclose(s.boxes, [[10, 15, 30, 45]])


# -- 2. boxes against the image as read -----------------------------------------------------------
def test_voc_boxes_are_checked_against_the_pixels(tmp_path):
    write_image(tmp_path / "Images" / "a.png", np.zeros((80, 100, 3), np.uint8))
    _voc_xml(tmp_path, "a", "a.png", None, [(10, 10, 20, 20), (150, 120, 170, 140), (90, 70, 104, 84)])
    ds = voc.load(tmp_path)
    np.testing.assert_array_equal(ds[0].boxes, [[9, 9, 20, 20], [89, 69, 100, 80]])  # VOC: 1-based xmin, ymin
    assert ds[0].size == (80, 100)
    assert [sk.record for sk in ds.skipped] == ["object 1"] and "outside the 100x80" in ds.skipped[0].reason
    assert len(ds.fixed) == 1 and ds.fixed[0].amount == pytest.approx(4)


def test_voc_size_that_is_not_the_image_is_refused(tmp_path):
    write_image(tmp_path / "Images" / "a.png", np.zeros((80, 100, 3), np.uint8))
    _voc_xml(tmp_path, "a", "a.png", (200, 300), [(10, 10, 250, 150)])
    ds = voc.load(tmp_path)
    assert len(ds) == 0 and "image is 100x80" in ds.skipped[0].reason and "300x200" in ds.skipped[0].reason


def test_a_sample_refuses_an_image_of_another_size_than_declared(tmp_path):
    write_image(tmp_path / "a.png", np.zeros((80, 100, 3), np.uint8))
    s = Sample("a", tmp_path / "a.png", boxes=[[0, 0, 5, 5]], labels=[0], size=(40, 60))
    with pytest.raises(DataError, match=r"a\.png.*100x80.*60x40"):
        s.image


def test_clipped_boxes_are_summarised_once(tmp_path, caplog):
    write_image(tmp_path / "Images" / "a.png", np.zeros((80, 100, 3), np.uint8))
    boxes = [(90, i, 103, i + 5) for i in range(0, 60, 5)]
    _voc_xml(tmp_path, "a", "a.png", (80, 100), boxes)
    with caplog.at_level(logging.WARNING, logger="smearlab.data"):
        ds = voc.load(tmp_path)
    assert len(ds.fixed) == 12  # every record is kept
    lines = [r.getMessage() for r in caplog.records if "fixed" in r.getMessage()]
    assert len(lines) == 1
    assert "12 x box clipped to the image, largest 3 px" in lines[0] and "and 9 more" in lines[0]


# -- 3. class order and spelling between datasets and models -------------------------------------
def test_canonical_names():
    assert canonical("Platelets") == canonical("platelet") == "platelet"
    assert canonical("red_blood_cells") == canonical("Red blood cell")
    assert canonical("WBCs") == canonical("WBC") and canonical("class") == "class"
    assert canonical("lymphocytes") == "lymphocyte" and canonical("nucleus") == "nucleus"


def test_match_classes_rules_and_refusals():
    m = match_classes(["Platelets", "RBC", "WBC"], ["WBC", "RBC", "Platelet"], require="both")
    assert m.lut.tolist() == [2, 1, 0] and m.how == {"Platelets": "alias", "RBC": "same", "WBC": "same"}
    assert "'Platelets' -> 'Platelet' (alias)" in m.describe() and "reordered" in m.describe()
    m = match_classes(["red blood cell", "ring"], ["RBC", "ring"], {"red blood cell": "RBC"})
    assert m.lut.tolist() == [0, 1] and m.how["red blood cell"] == "class_map"
    with pytest.raises(ClassMismatchError, match=r"\['a', 'b'\].*\['a'\]"):
        match_classes(["a", "b"], ["a"], require="both")
    with pytest.raises(ClassMismatchError, match="could be any of"):
        match_classes(["cell"], ["Cell", "cells"])
    with pytest.raises(ClassMismatchError, match="not a target class"):
        match_classes(["a"], ["b"], {"a": "c"})


def test_box_loader_maps_aliases_and_a_user_mapping(tmp_path, caplog):
    write_image(tmp_path / "Images" / "a.png", np.zeros((80, 100, 3), np.uint8))
    _voc_xml(tmp_path, "a", "a.png", None, [(1, 1, 9, 9), (2, 2, 9, 9), (3, 3, 9, 9), (4, 4, 9, 9)],
             names=["Platelets", "rbc", "white blood cell", "alien"])
    with caplog.at_level(logging.WARNING, logger="smearlab.data"):
        ds = voc.load(tmp_path, class_names=["WBC", "RBC", "Platelet"], class_map={"white blood cell": "WBC"})
    assert ds.class_names == ["WBC", "RBC", "Platelet"]
    assert ds[0].labels.tolist() == [2, 1, 0]
    assert "unknown class: 'alien'" in ds.skipped[0].reason
    assert any("'Platelets' -> 'Platelet'" in r.getMessage() and "'white blood cell' -> 'WBC'" in r.getMessage()
               for r in caplog.records)


def test_coco_and_class_folders_load_in_another_class_list(tmp_path):
    write_image(tmp_path / "a.png", np.zeros((20, 20, 3), np.uint8))
    data = {"images": [{"id": 1, "file_name": "a.png"}],
            "categories": [{"id": 1, "name": "Platelets"}, {"id": 2, "name": "RBC"}, {"id": 3, "name": "dust"}],
            "annotations": [{"id": k, "image_id": 1, "category_id": k, "bbox": [k, k, 4, 4]} for k in (1, 2, 3)]}
    (tmp_path / "gt.json").write_text(json.dumps(data))
    ds = coco.load(tmp_path / "gt.json", class_names=["RBC", "Platelet"])
    assert ds.class_names == ["RBC", "Platelet"] and ds[0].labels.tolist() == [1, 0]
    assert ds[0].meta["iscrowd"].tolist() == [0, 0]
    assert any("unknown class: 'dust'" in sk.reason for sk in ds.skipped)
    folders = tmp_path / "crops"
    for c in ("Lymphocytes", "neutrophil"):
        write_image(folders / c / "x.png", np.zeros((8, 8, 3), np.uint8))
    ds = imagefolder.load(folders, class_names=["neutrophil", "lymphocyte"])
    assert [(s.image_id, s.image_label) for s in ds] == [("Lymphocytes/x.png", 1), ("neutrophil/x.png", 0)]


def _shuffled(dataset, order):
    """The same images with the classes listed in ``order`` (labels follow their names)."""
    lut = np.array([order.index(n) for n in dataset.class_names])
    samples = [Sample(s.image_id, boxes=s.boxes, labels=lut[s.labels], size=s.size) for s in dataset]
    return SmearDataset(samples, order, dataset.name)


def test_predictions_are_scored_by_class_name():
    rng = np.random.default_rng(0)
    samples = []
    for i in range(6):
        x = rng.uniform(0, 80, (6, 2))
        samples.append(Sample(f"s{i}", boxes=np.hstack([x, x + 12]), labels=[0, 1, 2, 0, 1, 2], size=(100, 100)))
    ds = SmearDataset(samples, ["Platelets", "RBC", "WBC"], "cbc-like")
    raw = simulate_predictions(ds, seed=1)
    preds = Predictions(raw, ds.class_names)  # what predict() returns: the model's classes
    other = _shuffled(ds, ["WBC", "RBC", "Platelets"])
    assert coco_eval(other, preds)["per_class"] == {n: coco_eval(ds, preds)["per_class"][n] for n in other.class_names}
    # the same numbers through postprocess (class names travel) and the alias rule
    final = postprocess(preds, 0.3)
    assert final.class_names == ds.class_names
    alias = _shuffled(ds, ["WBC", "RBC", "Platelets"])
    alias.class_names = ["wbc", "RBCs", "Platelet"]
    assert coco_eval(alias, final)["mAP50"] == pytest.approx(coco_eval(ds, final)["mAP50"])
    # a model whose classes are not the dataset's: refused, both lists shown
    wrong = Predictions(raw, ["Platelets", "RBC", "Lymphocyte"])
    with pytest.raises(ClassMismatchError, match=r"Lymphocyte.*\['Platelets', 'RBC', 'WBC'\]"):
        check_predictions(ds, wrong)
    # a plain list keeps meaning "labels index the dataset's classes"
    assert check_predictions(other, raw)[0]["labels"].tolist() == raw[0]["labels"].tolist()


@pytest.mark.shared_data
def test_cbc_testing_in_a_shuffled_class_order_scores_the_same(cbc_root):
    ds = voc.load(cbc_root / "Testing")
    preds = Predictions(simulate_predictions(ds, seed=0), ds.class_names)
    own = coco_eval(ds, preds)
    shuffled = voc.load(cbc_root / "Testing", class_names=["WBC", "RBC", "Platelets"])
    assert [s.image_id for s in shuffled] == [s.image_id for s in ds]
    got = coco_eval(shuffled, preds)
    assert got["mAP50"] == pytest.approx(own["mAP50"]) and got["mAP"] == pytest.approx(own["mAP"])
    assert got["per_class"] == own["per_class"] or all(
        got["per_class"][n] == pytest.approx(own["per_class"][n]) for n in ds.class_names)
    # label id against label id, as before this check existed, is far off
    plain = coco_eval(shuffled, list(preds))
    assert plain["mAP50"] < own["mAP50"] - 0.3
    # aliases of the published names load onto the same classes
    aliased = voc.load(cbc_root / "Testing", class_names=["platelet", "rbcs", "WBC"])
    assert aliased.num_objects == ds.num_objects


# -- 4. exports keep one file per image -----------------------------------------------------------
def test_exports_never_overwrite_and_stay_traceable(tmp_path):
    root = tmp_path / "crops"
    paths = [root / "rbc" / "a.png", root / "rbc" / "a.jpg", root / "wbc" / "a.png", root / "wbc" / "b.png"]
    for p in paths:
        write_image(p, np.zeros((10, 10, 3), np.uint8))
    samples = [Sample(p.relative_to(root).as_posix(), p, size=(10, 10)) for p in paths]
    ds = SmearDataset(samples, ["cell"], "crops", root=root)
    assert output_names(ds) == ["rbc/a.png", "rbc/a.jpg", "wbc/a", "wbc/b"]
    mask = np.zeros((1, 10, 10), bool)
    mask[0, 2:6, 2:6] = True
    preds = [{"boxes": [[2, 2, 6, 6]], "scores": [0.9], "labels": [0], "masks": mask} for _ in paths]
    out = export_predictions(ds, preds, tmp_path / "out")
    assert len({str(p) for p in out["labels"]}) == 4 and len({str(p) for p in out["json"]}) == 4
    assert (tmp_path / "out" / "json" / "rbc" / "a.jpg.json").is_file()
    assert (tmp_path / "out" / "labels" / "wbc" / "a.png").is_file()
    records = [json.loads(p.read_text()) for p in out["json"]]
    assert [r["image"] for r in records] == ["rbc/a.png", "rbc/a.jpg", "wbc/a.png", "wbc/b.png"]
    coco_json = json.loads((tmp_path / "out" / "coco.json").read_text())
    assert [im["file_name"] for im in coco_json["images"]] == ["rbc/a.png", "rbc/a.jpg", "wbc/a.png", "wbc/b.png"]


# -- 5. files outside the dataset root ------------------------------------------------------------
@pytest.fixture
def secret(tmp_path):
    p = tmp_path / "private" / "secret.png"
    write_image(p, np.full((40, 60, 3), 7, np.uint8))
    return p


def test_voc_refuses_an_image_linked_out_of_the_root(tmp_path, secret):
    root = tmp_path / "voc"
    (root / "Images").mkdir(parents=True)
    (root / "Images" / "a.png").symlink_to(secret)
    _voc_xml(root, "a", "a.png", None, [(1, 1, 5, 5)])
    ds = voc.load(root)
    assert len(ds) == 0 and "outside the dataset root" in ds.skipped[0].reason
    assert "allow_outside_root=True" in ds.skipped[0].reason
    assert len(voc.load(root, allow_outside_root=True)) == 1


def test_yolo_refuses_links_out_for_images_labels_and_the_class_list(tmp_path, secret):
    root = tmp_path / "yolo"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "images" / "a.png").symlink_to(secret)
    write_image(root / "images" / "b.png", np.zeros((40, 60, 3), np.uint8))
    outside_label = tmp_path / "private" / "b.txt"
    outside_label.write_text("0 0.5 0.5 0.2 0.2\n")
    (root / "labels" / "b.txt").symlink_to(outside_label)
    (root / "classes.txt").write_text("RBC\n")
    ds = yolo.load(root)
    assert len(ds) == 0 and len(ds.skipped) == 2
    assert all("outside the dataset root" in sk.reason for sk in ds.skipped)
    (root / "classes.txt").unlink()
    passwd = tmp_path / "private" / "passwd"
    passwd.write_text("root:x:0:0\n")
    (root / "classes.txt").symlink_to(passwd)
    with pytest.raises(DataError, match=r"classes\.txt.*outside the dataset root"):
        yolo.load(root)
    assert len(yolo.load(root, allow_outside_root=True)) == 2


def test_class_folders_and_zheng_refuse_links_out(tmp_path, secret):
    root = tmp_path / "crops"
    (root / "rbc").mkdir(parents=True)
    write_image(root / "rbc" / "ok.png", np.zeros((8, 8, 3), np.uint8))
    (root / "rbc" / "leak.png").symlink_to(secret)
    ds = imagefolder.load(root)
    assert [s.image_id for s in ds] == ["rbc/ok.png"] and "leak.png" in ds.skipped[0].path
    z = tmp_path / "zheng"
    (z / "Dataset 1").mkdir(parents=True)
    (z / "Class Labels of Dataset 1.csv").symlink_to(tmp_path / "private" / "secret.png")
    with pytest.raises(DataError, match="outside the dataset root"):
        zheng.load(z, datasets=(1,))


# -- 6. palette masks and upper-case extensions ---------------------------------------------------
def test_masks_are_read_by_value_not_by_red(tmp_path):
    idx = np.zeros((10, 12), np.uint8)
    idx[2:5, 3:7] = 1
    idx[6:9, 1:3] = 2
    pal = Image.fromarray(idx, "P")
    pal.putpalette([0, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 759)  # 1 green, 2 blue: no red at all
    pal.save(tmp_path / "palette.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "palette.png"), idx)
    assert read_binary_mask(tmp_path / "palette.png").sum() == (idx > 0).sum()
    rgb = np.zeros((10, 12, 3), np.uint8)
    rgb[2:5, 3:7] = (0, 200, 0)
    Image.fromarray(rgb).save(tmp_path / "green.png")
    assert read_binary_mask(tmp_path / "green.png").sum() == 12
    grey_rgb = np.repeat(idx[..., None] * 100, 3, axis=2).astype(np.uint8)
    Image.fromarray(grey_rgb).save(tmp_path / "grey.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "grey.png"), idx * 100)


def test_upper_case_image_and_label_extensions(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    write_image(tmp_path / "images" / "A.PNG", np.zeros((40, 60, 3), np.uint8))
    (tmp_path / "labels" / "A.TXT").write_text("0 0.5 0.5 0.5 0.5\n")
    (tmp_path / "labels" / "ORPHAN.TXT").write_text("0 0.5 0.5 0.5 0.5\n")
    (tmp_path / "classes.txt").write_text("RBC\n")
    ds = yolo.load(tmp_path)
    assert len(ds) == 1 and len(ds[0].boxes) == 1
    assert [sk.path.endswith("ORPHAN.TXT") for sk in ds.skipped] == [True]


class _EchoModel:
    """A stand-in detector: predicts each image's ground truth (held by image size), labels
    in the model's own class order, as torchvision returns them (1-based)."""

    def __init__(self, dataset, class_names):
        from smearlab.detection import DetectorConfig
        self.detector_config = DetectorConfig(arch="fasterrcnn_tiny", class_names=class_names)
        lut = np.array([class_names.index(n) for n in dataset.class_names])
        self.truth = {tuple(s.hw): (s.boxes, lut[s.labels]) for s in dataset}
        self.training = False

    def __call__(self, images):
        import torch
        out = []
        for im in images:
            boxes, labels = self.truth[tuple(im.shape[-2:])]
            out.append({"boxes": torch.as_tensor(boxes), "labels": torch.as_tensor(labels + 1),
                        "scores": torch.linspace(0.9, 0.6, len(boxes))})
        return out


def test_predict_tune_and_count_map_the_model_classes_by_name():
    from smearlab.detection import predict
    from smearlab.detection.postprocess import RawPredictions
    from smearlab.detection.tune import auto_tune
    from smearlab.metrics.detection import count_metrics
    rng = np.random.default_rng(3)
    samples = []
    for i in range(4):
        x = rng.uniform(0, 50, (3, 2))
        img = np.zeros((60 + i, 70, 3), np.uint8)
        samples.append(Sample(f"s{i}", boxes=np.hstack([x, x + 9]), labels=[0, 1, 2], _image=img))
    data = SmearDataset(samples, ["WBC", "RBC", "Platelets"], "other-lab")
    model = _EchoModel(data, ["Platelets", "RBC", "WBC"])  # trained on CBC's sorted order
    preds = predict(model, data, progress=False)
    assert preds.class_names == ["Platelets", "RBC", "WBC"]
    assert preds[0]["labels"].tolist() == [2, 1, 0]  # the model's ids, not the dataset's
    assert coco_eval(data, preds)["mAP50"] == pytest.approx(1.0)
    th = auto_tune(data, RawPredictions.for_dataset(data, preds))
    assert set(th.score) == {"Platelets", "RBC", "WBC"}
    counts = count_metrics(data, th.apply(preds), score_threshold=0.0)
    assert all(c["accuracy"] == pytest.approx(1.0) for c in counts.values())


def test_dsb2018_refuses_masks_and_images_linked_out(tmp_path, secret):
    from smearlab.data.formats import dsb2018
    root = tmp_path / "stage1_train"
    for name in ("a", "b"):
        (root / name / "images").mkdir(parents=True)
        (root / name / "masks").mkdir()
        write_image(root / name / "images" / f"{name}.PNG", np.zeros((40, 60, 3), np.uint8))
        m = np.zeros((40, 60, 3), np.uint8)
        m[5:9, 5:9] = 255
        write_image(root / name / "masks" / "m1.png", m)
    (root / "b" / "masks" / "m2.png").symlink_to(secret)
    (root / "a" / "images" / "a.PNG").unlink()
    (root / "a" / "images" / "a.PNG").symlink_to(secret)
    ds = dsb2018.load(root)
    assert [s.image_id for s in ds] == ["b"] and len(ds[0].boxes) == 1
    assert sorted(sk.path.rsplit("/", 1)[1] for sk in ds.skipped) == ["a.PNG", "m2.png"]
    assert len(dsb2018.load(root, allow_outside_root=True)) == 2


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_a_tiff_with_an_orientation_tag_reads_turned_once_and_sized_as_stored(tmp_path, mode):
    """PIL turns an oriented TIFF itself (a grey one into a garbled picture) and reports the shown
    size as if stored: the size was turned twice and boxes given for the shown image misplaced."""
    from PIL import Image

    from smearlab.data.imageio import image_info, read_raw
    a = np.zeros((100, 200, 3), np.uint8)
    a[10:20, 150:190] = 255  # stored: 100 rows of 200
    im = Image.fromarray(a if mode == "RGB" else a[..., 0])
    exif = im.getexif()
    exif[274] = 6  # shown turned a quarter clockwise: 200 rows of 100
    im.save(tmp_path / "o.tif", exif=exif)
    info = image_info(tmp_path / "o.tif")
    assert info.stored_hw == (100, 200) and info.hw("exif") == (200, 100)
    shown = read_raw(tmp_path / "o.tif")
    lit = np.argwhere((shown if shown.ndim == 2 else shown[..., 0]) > 0)
    assert shown.shape[:2] == (200, 100) and lit.min(0).tolist() == [150, 80] and lit.max(0).tolist() == [189, 89]
    assert read_raw(tmp_path / "o.tif", orientation="stored").shape[:2] == (100, 200)


def test_an_image_over_pils_size_limit_is_refused_alike_by_its_header_and_its_pixels(tmp_path, monkeypatch):
    """Between PIL's warning and error limits the header check counted the image and reading it failed."""
    from PIL import Image

    from smearlab.data.imageio import image_info, read_raw
    write_image(tmp_path / "big.png", np.zeros((60, 80, 3), np.uint8))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)  # 4800 pixels: over the limit, under twice it
    for read in (image_info, read_raw):
        with pytest.raises(DataError, match="MAX_IMAGE_PIXELS"):
            read(tmp_path / "big.png")


def test_a_coco_crowd_flag_that_is_not_0_or_1_is_refused(tmp_path):
    import json

    from smearlab.data.formats import coco as coco_format
    write_image(tmp_path / "a.png", np.zeros((30, 40, 3), np.uint8))
    (tmp_path / "c.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}],
        "categories": [{"id": 1, "name": "RBC"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 10, 10], "iscrowd": "0"}]}))
    with pytest.raises(DataError, match="iscrowd"):
        coco_format.load(tmp_path / "c.json", strict=True)


def test_a_coco_crowd_flag_left_null_reads_as_not_crowd(tmp_path):
    import json

    from smearlab.data.formats import coco as coco_format
    write_image(tmp_path / "a.png", np.zeros((30, 40, 3), np.uint8))
    (tmp_path / "c.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}],
        "categories": [{"id": 1, "name": "RBC"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 10, 10], "iscrowd": None}]}))
    assert coco_format.load(tmp_path / "c.json", strict=True)[0].meta["iscrowd"].tolist() == [0]


def test_embedding_refuses_0_255_floats_and_the_experiments_name_a_missing_domain(tmp_path):
    """cnn_embedding read 0..255 float crops as 0..1 (every pixel saturated, no error, as
    predict_classes refuses); cam_images of a dataset without the domain asked for raised a bare
    KeyError; the stain comparison of a one-domain dataset a bare unpacking error."""
    import torch

    from smearlab.classification.embed import cnn_embedding
    from smearlab.classification.model import build_classifier
    from smearlab.data.synthetic import make_wbc_crops
    from smearlab.experiments.gradcam_masks import cam_images
    from smearlab.experiments.preprocessing import two_domains

    model = build_classifier(["a", "b"], width=4, input_size=16)
    crops = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    assert cnn_embedding(model, crops, device="cpu").shape[0] == 2
    with pytest.raises(ValueError, match=r"values in \[0, 1\]"):
        cnn_embedding(model, crops.float(), device="cpu")
    from smearlab.classification.predict import predict_classes
    for fn in (cnn_embedding, predict_classes):  # int64 0..255 was read unscaled (every pixel saturated)
        with pytest.raises(ValueError, match="uint8 .* or float"):
            fn(model, crops.long(), device="cpu")
    for i in range(2):
        write_image(tmp_path / "cells" / ("ab"[i]) / f"c{i}.png", np.full((20, 20, 3), 120, np.uint8))
    with pytest.raises(DataError, match=r"no domain 'dataset1' here; its domains: \['cells'\]"):
        cam_images(tmp_path / "cells")
    with pytest.raises(ValueError, match="one domain"):
        two_domains(make_wbc_crops(4, seed=0), 2)


def test_a_fractional_class_label_is_refused_not_truncated():
    """A prediction label of 1.7 became class 1 silently."""
    from smearlab.data.predictions import as_prediction
    with pytest.raises(ValueError, match="whole class indices"):
        as_prediction({"boxes": [[0, 0, 4, 4]], "scores": [0.9], "labels": [1.7]})
    assert as_prediction({"boxes": [[0, 0, 4, 4]], "scores": [0.9], "labels": [1.0]})["labels"].tolist() == [1]


def test_one_class_spelled_two_ways_is_said(tmp_path, caplog):
    """'rbc' in one file and 'RBC' in another became two classes without a word."""
    from smearlab.data.synthetic import make_dataset
    ds = make_dataset(2, seed=0, width=96, height=96)
    voc.save(ds, tmp_path / "v")
    xml = [f for f in sorted((tmp_path / "v" / "Annotations").glob("*.xml")) if "<name>RBC</name>" in f.read_text()]
    text = "".join(f.read_text() for f in xml)
    assert text.count("<name>RBC</name>") >= 2  # one red cell renamed, another kept
    xml[0].write_text(xml[0].read_text().replace("<name>RBC</name>", "<name>rbc</name>", 1))
    with caplog.at_level(logging.WARNING, logger="smearlab.data"):
        loaded = voc.load(tmp_path / "v")
    assert {"RBC", "rbc"} <= set(loaded.class_names)
    assert any("'RBC' and 'rbc'" in r.getMessage() and "alias rule" in r.getMessage() for r in caplog.records)


def test_one_class_spelled_two_ways_in_coco_categories_and_folders_is_said(tmp_path, caplog):
    """The alias warning covered the collected formats only: COCO categories and class folders
    whose names split one class went unsaid."""
    from smearlab.data.synthetic import make_dataset
    ds = make_dataset(1, seed=0, width=96, height=96)
    coco.save(ds, tmp_path / "c.json")
    doc = json.loads((tmp_path / "c.json").read_text())
    doc["categories"].append({"id": 99, "name": "Platelet"})   # beside 'Platelets'
    (tmp_path / "c.json").write_text(json.dumps(doc))
    for d in ("WBC", "wbcs"):
        (tmp_path / "f" / d).mkdir(parents=True)
        write_image(tmp_path / "f" / d / "a.png", np.zeros((8, 8, 3), np.uint8))
    with caplog.at_level(logging.WARNING, logger="smearlab.data"):
        coco.load(tmp_path / "c.json")
        imagefolder.load(tmp_path / "f")
    said = [r.getMessage() for r in caplog.records if "alias rule" in r.getMessage()]
    assert any("'Platelets' and 'Platelet'" in m for m in said) and any("'WBC' and 'wbcs'" in m for m in said)


def test_coco_images_sharing_a_stem_in_one_folder_get_distinct_ids(tmp_path):
    """a.png and a.jpg side by side were both image 'a': counts keyed by image id mixed them."""
    for name in ("a.png", "a.jpg"):
        write_image(tmp_path / name, np.zeros((8, 8, 3), np.uint8))
    doc = {"images": [{"id": 1, "file_name": "a.png", "width": 8, "height": 8},
                      {"id": 2, "file_name": "a.jpg", "width": 8, "height": 8}],
           "categories": [{"id": 1, "name": "RBC"}], "annotations": []}
    (tmp_path / "c.json").write_text(json.dumps(doc))
    assert sorted(s.image_id for s in coco.load(tmp_path / "c.json")) == ["a.jpg", "a.png"]


def test_summaries_count_crowd_regions_image_labels_and_unannotated_images_apart(tmp_path, capsys):
    """A crowd region counted as one more red cell (and its clump's box as a cell size); a VOC
    image without an annotation file vanished unsaid; a single-cell set read 'objects: 0' beside
    400 per class; `smearlab data` exited 0 having read no image."""
    from smearlab.cli import main
    from smearlab.data.stats import box_sizes, objects_per_image, summary
    from smearlab.data.synthetic import make_dataset
    from smearlab.detection import DetectorConfig
    from smearlab.detection.anchors import box_shapes
    s = Sample("a", boxes=[[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 60, 40]], labels=[0, 0, 0], size=(48, 64),
               meta={"iscrowd": np.array([0, 0, 1])})
    ds = SmearDataset([s], ["RBC"])
    got = summary(ds)
    assert got["objects"] == 2 and got["per_class"] == {"RBC": 2} and got["crowd_regions"] == {"RBC": 1}
    assert objects_per_image(ds).tolist() == [[2]] and len(box_sizes(ds)["RBC"]) == 2
    assert len(box_shapes(ds, DetectorConfig(arch="fasterrcnn_tiny", class_names=["RBC"]))["RBC"]) == 2
    labelled = SmearDataset([Sample("c", image_label=1, size=(8, 8))], ["a", "b"])
    assert summary(labelled)["images_per_class"] == {"a": 0, "b": 1}
    from smearlab.data.stats import class_distribution   # what notebook 01's class histogram shows
    assert class_distribution(ds) == ({"RBC": 2}, "objects")
    assert class_distribution(labelled) == ({"a": 0, "b": 1}, "images")
    voc.save(make_dataset(2, seed=0, width=64, height=48), tmp_path / "v")
    write_image(tmp_path / "v" / "Images" / "extra.png", np.zeros((8, 8, 3), np.uint8))
    loaded = voc.load(tmp_path / "v")
    assert len(loaded) == 2 and any("no annotation file names this image" in r.reason for r in loaded.skipped)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "c.json").write_text(json.dumps(
        {"images": [{"id": 1, "file_name": "gone.png", "width": 8, "height": 8}],
         "categories": [{"id": 1, "name": "RBC"}], "annotations": []}))
    assert main(["data", str(tmp_path / "empty" / "c.json")]) != 0
    assert "no image could be read" in capsys.readouterr().err


def test_an_image_whose_annotation_file_failed_is_said_once(tmp_path):
    """Its broken XML was skipped, then the image again as 'no annotation file names this image'."""
    from smearlab.data.synthetic import make_dataset
    voc.save(make_dataset(2, seed=0, width=64, height=48), tmp_path / "v")
    bad = sorted((tmp_path / "v" / "Annotations").glob("*.xml"))[0]
    bad.write_text("<annotation><object>")
    loaded = voc.load(tmp_path / "v")
    assert len(loaded) == 1 and len(loaded.skipped) == 1 and bad.name in str(loaded.skipped[0].path)


def test_a_box_only_object_of_zero_area_is_not_taken_for_an_empty_mask():
    from smearlab.export import coco_from_records
    rec = {"image": "a.png", "width": 8, "height": 8, "objects": [
        {"id": 1, "class": "RBC", "label": 0, "score": 0.9, "bbox": [2.0, 2.0, 2.0, 5.0], "area": 0.0,
         "polygons": [], "holes": []}]}
    coco, results = coco_from_records([rec], ["RBC"])
    assert len(coco["annotations"]) == 1 and len(results) == 1


def test_tiffs_read_as_stored_planes_pages_and_colour_spaces(tmp_path):
    """A 16-bit RGB TIFF of separate planes read as scrambled 8-bit pixels; an orientation tag on a
    min-is-white TIFF inverted it silently; a stack's first page was read without a word."""
    import tifffile
    ramp = (np.arange(16, dtype=np.uint16).reshape(4, 4) * 4000)
    planes = np.stack([ramp, np.full((4, 4), 30000, np.uint16), np.zeros((4, 4), np.uint16)])
    tifffile.imwrite(tmp_path / "sep.tif", planes, photometric="rgb", planarconfig="separate")
    img, depth = read_image(tmp_path / "sep.tif")
    assert depth == 16 and img.shape == (4, 4, 3)
    np.testing.assert_array_equal(img[..., 0], np.round(ramp / 65535 * 255).astype(np.uint8))
    tifffile.imwrite(tmp_path / "mw.tif", np.full((2, 2), 200, np.uint8), photometric="miniswhite",
                     extratags=[(274, "H", 1, 3, False)])
    with pytest.raises(DataError, match="photometric interpretation 0"):
        read_image(tmp_path / "mw.tif")
    for value in (10, 200):  # two pages
        tifffile.imwrite(tmp_path / "stack.tif", np.full((4, 4), value, np.uint8), append=True)
    with pytest.warns(UserWarning, match="a TIFF of 2 pages or frames; its first alone"):
        read_image(tmp_path / "stack.tif")
    import warnings
    with warnings.catch_warnings(record=True) as again:   # once per file: images are read every epoch
        warnings.simplefilter("always")
        read_image(tmp_path / "stack.tif")
    assert not [w for w in again if "pages" in str(w.message)]


def test_an_exif_orientation_the_size_cannot_settle_is_said(tmp_path):
    """A square (or flipped) EXIF-tagged JPEG: the declared size fits both readings, and boxes of a
    tool that ignored the tag landed on the background without a word."""
    p = _exif_jpeg(tmp_path / "Images" / "a.jpg", orientation=3)   # a half turn: the same size either way
    _voc_xml(tmp_path, "a", "a.jpg", STORED_HW, [(2, 2, 12, 12)])
    ds = voc.load(tmp_path)
    assert len(ds) == 1 and any("cannot be told" in f.reason for f in ds.fixed)
