"""Export defects found in review: EXIF-turned copies, small masks simplified away, .png renaming
clashes, negative scores in counts, mixed mask/box predictions, unknown classes and too many
instances."""
import csv
import json
import logging

import numpy as np
import pytest
from PIL import Image

from smearlab.core.files import write_json
from smearlab.data import Sample, SmearDataset, load
from smearlab.export import (coco_from_records, export_coco, export_counts_csv, export_predictions,
                             image_record, mask_polygons)


def _pred(masks, scores=None):
    masks = np.asarray(masks, bool)
    boxes = []
    for m in masks:
        ys, xs = np.nonzero(m)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    n = len(masks)
    return {"boxes": np.array(boxes, np.float32), "scores": np.array(scores or [0.9] * n, np.float32),
            "labels": np.zeros(n, int), "masks": masks}


def test_copy_images_writes_exif_turned_stored_image_as_png(tmp_path):
    arr = np.zeros((20, 20, 3), np.uint8)
    arr[2:6, 10:18] = 255  # a bright bar at stored rows 2-5, columns 10-17
    im = Image.fromarray(arr)
    ex = im.getexif()
    ex[0x0112] = 6  # shown turned 90 degrees
    (tmp_path / "src").mkdir()
    im.save(tmp_path / "src/a.jpg", exif=ex.tobytes(), quality=100)
    s = Sample("a", path=tmp_path / "src/a.jpg", boxes=[[10, 2, 18, 6]], labels=[0], orientation="stored")
    m = np.zeros((1, 20, 20), bool)
    m[0, 2:6, 10:18] = True
    out = export_coco(SmearDataset([s], ["c"]), [_pred(m)], tmp_path / "pred/coco.json", copy_images=True)
    name = json.loads(out.read_text())["images"][0]["file_name"]
    assert name.endswith(".png") and (out.parent / "images" / name).is_file()
    back = load(out)
    b = back[0]
    assert not back.fixed and not back.skipped
    assert b.image[..., 0][b.masks[0]].mean() > 200  # the mask lies on the bar, not beside it


@pytest.mark.parametrize("tol", [1.0, 2.0])
@pytest.mark.parametrize("hw", [(1, 1), (1, 2), (2, 2), (1, 5), (3, 3)])
def test_mask_polygons_keeps_small_masks_when_simplified(tol, hw):
    m = np.zeros((12, 12), bool)
    m[4:4 + hw[0], 4:4 + hw[1]] = True
    outer, holes = mask_polygons(m, tolerance=tol)
    assert len(outer) == 1 and not holes
    assert len(np.unique(outer[0], axis=0)) >= 3


def test_records_with_small_simplified_masks_keep_masks_on_read_back(tmp_path):
    img = np.zeros((12, 12, 3), np.uint8)
    s = Sample("a", _image=img)
    m = np.zeros((2, 12, 12), bool)
    m[0, 4:6, 4:6] = True  # 4 pixels: simplified to nothing before
    m[1, 8:11, 1:4] = True
    rec = image_record(s, _pred(m, [0.9, 0.8]), ["c"], file_name="a.png", tolerance=1.5)
    assert all(o["polygons"] for o in rec["objects"])
    coco, _ = coco_from_records([rec], ["c"])
    assert all("segmentation" in a for a in coco["annotations"])
    Image.fromarray(img).save(tmp_path / "a.png")
    write_json(tmp_path / "coco.json", coco)
    b = load(tmp_path / "coco.json")[0]
    assert b.has_masks and len(b.masks) == 2 and b.masks[0][4:6, 4:6].all()


def test_copy_images_png_renaming_does_not_clash(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(np.full((8, 10, 3), 50, np.uint8)).save(src / "x.gif")
    Image.fromarray(np.full((12, 14, 3), 200, np.uint8)).save(src / "x.gif.png")
    ds = SmearDataset([Sample(n, path=src / n, boxes=[[1, 1, 4, 4]], labels=[0]) for n in ("x.gif", "x.gif.png")],
                      ["cell"])
    pred = [{"boxes": [[1, 1, 4, 4]], "scores": [0.9], "labels": [0]}] * 2
    out = export_coco(ds, pred, tmp_path / "pred/coco.json", copy_images=True)
    names = [im["file_name"] for im in json.loads(out.read_text())["images"]]
    assert len(set(names)) == 2 and all(n.endswith(".png") for n in names)
    back = load(out)
    assert len(back) == 2 and not back.skipped
    assert [b.hw for b in back] == [(8, 10), (12, 14)]
    assert [int(b.image.mean()) for b in back] == [50, 200]


def test_counts_csv_without_thresholds_counts_negative_scores(tmp_path):
    ds = SmearDataset([Sample("a", boxes=[[0, 0, 2, 2]] * 3, labels=[0, 0, 0], size=(8, 8))], ["c"])
    pr = [{"boxes": [[0, 0, 2, 2]] * 3, "scores": [0.9, -0.2, -1.5], "labels": [0, 0, 0]}]
    path = export_counts_csv(ds, pr, tmp_path / "c.csv")
    row = list(csv.DictReader(path.open()))[0]
    assert row["c_true"] == "3" and row["c_pred"] == "3"
    row = list(csv.DictReader(export_counts_csv(ds, pr, tmp_path / "d.csv", thresholds=0.0).open()))[0]
    assert row["c_pred"] == "1"


def test_export_predictions_writes_label_pngs_for_images_with_masks(tmp_path, caplog):
    img = np.zeros((8, 8, 3), np.uint8)
    ds = SmearDataset([Sample("a", _image=img), Sample("b", _image=img)], ["c"])
    m = np.zeros((1, 8, 8), bool)
    m[0, 1:3, 1:3] = True
    preds = [_pred(m), {"boxes": [[1, 1, 3, 3]], "scores": [0.9], "labels": [0]}]
    with caplog.at_level(logging.WARNING, logger="smearlab.export"):
        out = export_predictions(ds, preds, tmp_path / "out")
    assert [p.name for p in out["labels"]] == ["a.png"] and out["labels"][0].is_file()
    assert not (tmp_path / "out/labels/b.png").exists()
    warnings = [r for r in caplog.records if "label PNG" in r.getMessage()]
    assert len(warnings) == 1 and "1 of 2" in warnings[0].getMessage() and "b" in warnings[0].getMessage()


def test_coco_from_records_unknown_class_names_image_and_class():
    rec = {"image": "img7.png", "width": 8, "height": 8,
           "objects": [{"class": "WBC", "score": 0.9, "bbox": [0, 0, 2, 2], "area": 4.0, "polygons": [], "holes": []}]}
    with pytest.raises(ValueError, match=r"img7\.png.*WBC"):
        coco_from_records([rec], ["RBC"])


def test_export_predictions_too_many_instances_writes_nothing(tmp_path):
    img = np.zeros((4, 4, 3), np.uint8)
    ds = SmearDataset([Sample("a", _image=img), Sample("big", _image=img)], ["c"])
    m1 = np.zeros((1, 4, 4), bool)
    m1[0, 0, 0] = True
    n = 65536
    mb = np.zeros((n, 4, 4), bool)
    mb[:, 1, 1] = True
    preds = [_pred(m1), {"boxes": np.tile([[1, 1, 2, 2]], (n, 1)), "scores": np.full(n, 0.5),
                         "labels": np.zeros(n, int), "masks": mb}]
    with pytest.raises(ValueError, match="'big'.*65536"):
        export_predictions(ds, preds, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any(p.is_file() for p in (tmp_path / "out").rglob("*"))
