"""Exports of instance predictions: label PNGs, COCO JSON through the repo's COCO loader, per-image JSON."""
import json

import numpy as np
import pytest
from pycocotools import mask as mask_util

from smearlab.core.errors import DataError
from smearlab.data import Sample, SmearDataset, load
from smearlab.export import (coco_dict, export_coco, export_image_jsons, export_predictions, label_image,
                             mask_polygons, read_label_png, write_label_png)
from smearlab.segmentation.classical import label_image_to_instances

CLASSES = ["nucleus", "cell"]


def _disc(h, w, cy, cx, r):
    yy, xx = np.mgrid[0:h, 0:w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2


def _box(m):
    ys, xs = np.nonzero(m)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def _dataset():
    """Two images: discs, an ellipse, a ring (a mask with a hole), a two-part mask; their
    ground truth doubles as the prediction (scores deliberately out of order)."""
    rng = np.random.default_rng(0)
    h, w = 96, 128
    a = [_disc(h, w, 20, 20, 10), _disc(h, w, 60, 90, 14), _disc(h, w, 70, 30, 8) & ~_disc(h, w, 70, 30, 4)]
    two = _disc(h, w, 20, 70, 6) | _disc(h, w, 20, 100, 6)
    yy, xx = np.mgrid[0:h, 0:w]
    ell = ((yy - 60) / 20.0) ** 2 + ((xx - 40) / 12.0) ** 2 <= 1
    b = [two, ell]
    samples, preds = [], []
    for i, (ms, labels, scores) in enumerate([(a, [0, 0, 1], [0.6, 0.9, 0.7]), (b, [1, 0], [0.8, 0.95])]):
        m = np.stack(ms)
        boxes = np.array([_box(x) for x in m], np.float32)
        img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        samples.append(Sample(f"img{i}", boxes=boxes, labels=labels, _image=img, _masks=m))
        preds.append({"boxes": boxes, "scores": np.array(scores, np.float32), "labels": np.array(labels),
                      "masks": m})
    return SmearDataset(samples, CLASSES, "exp"), preds


def _iou(a, b):
    return (a & b).sum() / (a | b).sum()


def _order(p):
    return np.argsort(-p["scores"], kind="stable")


@pytest.mark.parametrize("mode", ["polygon", "rle", "auto"])
def test_coco_roundtrip_through_loader(tmp_path, mode):
    ds, preds = _dataset()
    path = export_coco(ds, preds, tmp_path / "out" / "coco.json", segmentation=mode, copy_images=True)
    back = load(path)
    assert back.format == "coco" and back.class_names == CLASSES and len(back) == 2
    assert not back.skipped
    for s, p in zip(back, preds):
        o = _order(p)
        assert s.masks.shape == p["masks"].shape
        np.testing.assert_array_equal(s.labels, p["labels"][o])
        np.testing.assert_allclose(s.boxes, p["boxes"][o])
        for got, want in zip(s.masks, p["masks"][o]):
            has_hole = (want != np.asarray(_filled(want))).any()
            if mode == "rle" or (mode == "auto" and has_hole):
                np.testing.assert_array_equal(got, want)
            elif mode == "polygon" and has_hole:
                assert got[want].all() and _iou(got, _filled(want)) > 0.95  # holes are filled
            else:
                assert _iou(got, want) > 0.95
    data = json.loads(path.read_text())
    assert [c["name"] for c in data["categories"]] == CLASSES
    assert data["images"][0] == {"id": 1, "file_name": "img0.png", "width": 128, "height": 96}
    ann = data["annotations"][0]
    assert {"id", "image_id", "category_id", "segmentation", "bbox", "area", "iscrowd", "score"} <= set(ann)
    assert ann["score"] == pytest.approx(0.9) and ann["iscrowd"] == 0 and len(ann["bbox"]) == 4
    assert sorted(x.name for x in path.parent.iterdir()) == ["coco.json", "images"]  # no temp files


def _filled(m):
    from scipy import ndimage as ndi
    return ndi.binary_fill_holes(m)


def test_coco_auto_uses_rle_only_for_holes():
    ds, preds = _dataset()
    anns = coco_dict(ds, preds)["annotations"]
    kinds = [type(a["segmentation"]).__name__ for a in anns]
    assert kinds == ["list", "dict", "list", "list", "list"]  # image 0 by score: disc, ring (RLE), disc
    assert anns[1]["segmentation"]["size"] == [96, 128]
    ellipse, two_discs = anns[3]["segmentation"], anns[4]["segmentation"]  # image 1 by score
    assert len(ellipse) == 1 and len(two_discs) == 2


def test_coco_score_threshold_and_empty_masks(caplog):
    ds, preds = _dataset()
    preds[0]["masks"] = preds[0]["masks"].copy()
    preds[0]["masks"][1] = False  # the top instance of image 0 lost its mask
    data = coco_dict(ds, preds, score_threshold=0.75)
    assert [a["score"] for a in data["annotations"]] == pytest.approx([0.95, 0.8])
    assert "empty mask" in caplog.text


def test_coco_boxes_only(tmp_path):
    ds, preds = _dataset()
    boxes_only = [{k: v for k, v in p.items() if k != "masks"} for p in preds]
    data = coco_dict(ds, boxes_only)
    assert len(data["annotations"]) == 5 and all("segmentation" not in a for a in data["annotations"])


def test_bad_arguments(tmp_path):
    ds, preds = _dataset()
    with pytest.raises(ValueError, match="segmentation must be one of"):
        coco_dict(ds, preds, segmentation="mask")
    small = [dict(p, masks=p["masks"][:, :10, :10]) for p in preds]
    with pytest.raises(ValueError, match="masks of size"):
        export_coco(ds, small, tmp_path / "x.json")
    with pytest.raises(ValueError, match="predictions for"):
        export_coco(ds, preds[:1], tmp_path / "x.json")
    with pytest.raises(ValueError, match="no 'masks'"):
        label_image({"boxes": np.zeros((1, 4)), "scores": [1.0], "labels": [0]})
    assert not (tmp_path / "x.json").exists()


def test_label_png_roundtrip(tmp_path):
    ds, preds = _dataset()
    p = preds[0]
    path = write_label_png(tmp_path / "a.png", p)
    lab = read_label_png(path)
    assert lab.dtype == np.uint8 and lab.shape == (96, 128)
    assert sorted(np.unique(lab).tolist()) == [0, 1, 2, 3]
    back = label_image_to_instances(lab)
    np.testing.assert_array_equal(back["masks"], p["masks"][_order(p)])  # ids 1..N in score order


def test_label_png_overlap_and_16_bit(tmp_path):
    h, w = 40, 40
    low, high = np.zeros((h, w), bool), np.zeros((h, w), bool)
    low[5:25, 5:25] = True
    high[15:35, 15:35] = True
    p = {"boxes": np.zeros((2, 4)), "scores": [0.2, 0.9], "labels": [0, 0], "masks": np.stack([low, high])}
    lab = label_image(p)
    assert (lab[high] == 1).all() and (lab[low & ~high] == 2).all() and (lab[~(low | high)] == 0).all()
    n = 300  # more than 255 instances: 16-bit PNG
    masks = np.zeros((n, 60, 100), bool)
    for i in range(n):
        y, x = divmod(i, 25)
        masks[i, y * 5:y * 5 + 4, x * 4:x * 4 + 3] = True
    scores = np.linspace(1, 0.1, n)[::-1].copy()
    big = {"boxes": np.zeros((n, 4)), "scores": scores, "labels": np.zeros(n, int), "masks": masks}
    lab = read_label_png(write_label_png(tmp_path / "big.png", big))
    assert lab.dtype == np.uint16 and lab.max() == n
    assert lab[masks[-1]].tolist() == [1] * int(masks[-1].sum())  # the top score is instance 1
    np.testing.assert_array_equal(label_image_to_instances(lab)["masks"], masks[::-1])


def test_read_label_png_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_label_png(tmp_path / "none.png")
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="junk.png"):
        read_label_png(tmp_path / "junk.png")
    from PIL import Image
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(DataError, match="single-channel"):
        read_label_png(tmp_path / "rgb.png")


def test_image_json_schema(tmp_path):
    ds, preds = _dataset()
    paths = export_image_jsons(ds, preds, tmp_path / "json")
    assert [p.name for p in paths] == ["img0.json", "img1.json"]
    rec = json.loads(paths[0].read_text())
    assert set(rec) == {"image", "image_id", "width", "height", "objects"}
    assert (rec["image"], rec["image_id"], rec["width"], rec["height"]) == ("img0.png", "img0", 128, 96)
    objs = rec["objects"]
    assert [o["id"] for o in objs] == [1, 2, 3] and [o["score"] for o in objs] == pytest.approx([0.9, 0.7, 0.6])
    p, o = preds[0], _order(preds[0])
    for obj, m, box, lab in zip(objs, p["masks"][o], p["boxes"][o], p["labels"][o]):
        assert set(obj) == {"id", "class", "label", "score", "bbox", "area", "polygons", "holes"}
        assert obj["class"] == CLASSES[lab] and obj["label"] == lab and obj["area"] == int(m.sum())
        assert obj["bbox"] == pytest.approx(box.tolist())
        assert all(len(v) == 2 for poly in obj["polygons"] for v in poly)
        drawn = _raster(obj["polygons"], 96, 128) & ~_raster(obj["holes"], 96, 128)
        assert _iou(drawn, m) > 0.95
    assert len(objs[1]["holes"]) == 1 and not objs[0]["holes"]  # the ring (score 0.7) has its hole


def _raster(polys, h, w):
    if not polys:
        return np.zeros((h, w), bool)
    rles = mask_util.frPyObjects([np.asarray(p, float).ravel().tolist() for p in polys], h, w)
    return mask_util.decode(mask_util.merge(rles)).astype(bool)


def test_mask_polygons():
    m = np.zeros((20, 20), bool)
    m[3:15, 4:16] = True
    outer, holes = mask_polygons(m)
    assert len(outer) == 1 and not holes
    xy = outer[0]
    assert xy[:, 0].min() == 4 and xy[:, 0].max() == 16 and xy[:, 1].min() == 3 and xy[:, 1].max() == 15
    simple, _ = mask_polygons(m, tolerance=1.0)
    assert len(simple[0]) < len(xy)
    assert mask_polygons(np.zeros((5, 5), bool)) == ([], [])
    with pytest.raises(ValueError, match="2-D"):
        mask_polygons(np.zeros((2, 5, 5), bool))


def test_export_predictions_all_three(tmp_path):
    ds, preds = _dataset()
    out = export_predictions(ds, preds, tmp_path / "run", score_threshold=0.65)
    assert [p.name for p in out["labels"]] == ["img0.png", "img1.png"]
    assert read_label_png(out["labels"][0]).max() == 2  # 0.6 is below the threshold
    assert out["coco"].name == "coco.json" and len(out["json"]) == 2
    assert len(json.loads(out["json"][0].read_text())["objects"]) == 2


def test_predict_outputs_of_images_in_sub_folders_read_back_exactly(tmp_path):
    """QuPath files in sub-folders were skipped without a word, and coco.json filled every hole."""
    from PIL import Image

    from smearlab import batch
    src = tmp_path / "src"
    for f in ("rbc/a.png", "wbc/a.png"):
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(src / f)
    ring = np.zeros((20, 30), bool)
    ring[8:15, 10:17] = True
    ring[10:13, 12:15] = False
    pred = {"boxes": np.array([[10, 8, 17, 15]], np.float32), "scores": np.array([0.9], np.float32),
            "labels": np.array([0]), "masks": ring[None]}
    items = batch.collect_images([src])
    run = {"model": "fake", "model_id": "x", "classes": ["cell"], "scale": None, "tile": None, "score": None,
           "thresholds": "score", "dataset": None}
    res = tmp_path / "res"
    summary = batch._run_images(res, run, items, None, lambda imgs: [pred for _ in imgs], batch_size=1, progress=False)
    batch._write_summaries(res, [i.name for i in items], summary.pop("_records"), ["cell"], summary)
    q = load(res / "qupath", format="qupath", images=src)
    assert sorted(s.image_id for s in q) == ["rbc/a", "wbc/a"] and all(len(s.boxes) == 1 for s in q)
    coco = json.loads((res / "coco.json").read_text())
    h, w = 20, 30
    for a in coco["annotations"]:
        seg = a["segmentation"]
        rle = mask_util.frPyObjects(seg, h, w) if isinstance(seg, list) else seg
        m = mask_util.decode(mask_util.merge(rle) if isinstance(rle, list) else rle).astype(bool)
        assert (m == ring).all() and a["area"] == ring.sum() == 40   # the hole was filled: 49


def test_exports_stay_below_their_folder_and_name_what_they_write(tmp_path):
    from smearlab.export import export_counts_csv
    img = np.zeros((8, 8, 3), np.uint8)
    odd = SmearDataset([Sample("x/../../../escaped", boxes=[[1, 1, 4, 4]], labels=[0], _image=img)], ["cell"])
    pred = [{"boxes": [[1, 1, 4, 4]], "scores": [0.9], "labels": [0]}]
    export_predictions(odd, pred, tmp_path / "out")
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written and all((tmp_path / "out") in p.parents for p in written)   # '..' wrote outside
    from PIL import Image
    for f in ("rbc/a.png", "wbc/a.png"):
        (tmp_path / "src" / f).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(tmp_path / "src" / f)
    ds = SmearDataset([Sample("a", path=tmp_path / "src" / f, boxes=[[1, 1, 4, 4]], labels=[0])
                       for f in ("rbc/a.png", "wbc/a.png")], ["cell"])
    export_counts_csv(ds, pred * 2, tmp_path / "counts.csv")
    rows = (tmp_path / "counts.csv").read_text().splitlines()[1:]
    assert [r.split(",")[1] for r in rows] == ["rbc/a.png", "wbc/a.png"]        # both were 'a.png'


def test_copied_images_of_other_formats_are_written_as_png_under_a_png_name(tmp_path):
    from PIL import Image
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(np.zeros((8, 10, 3), np.uint8)).save(src / "x.gif")
    Image.fromarray(np.zeros((8, 10, 3), np.uint8)).save(src / "x.png")
    ds = SmearDataset([Sample(n, path=src / n, boxes=[[1, 1, 4, 4]], labels=[0]) for n in ("x.gif", "x.png")], ["cell"])
    pred = [{"boxes": [[1, 1, 4, 4]], "scores": [0.9], "labels": [0]}] * 2
    out = export_coco(ds, pred, tmp_path / "pred" / "coco.json", copy_images=True)
    names = [im["file_name"] for im in json.loads(out.read_text())["images"]]
    assert names == ["x.gif.png", "x.png"]          # PNG bytes under x.gif could not be read back; x.png kept apart
    back = load(out, image_root=tmp_path / "pred" / "images")
    assert len(back) == 2 and back.skipped == []


def test_counts_csv_counts_final_predictions_as_given(tmp_path):
    """Final predictions tuned below 0.5 were filtered again at 0.5: a class tuned at 0.15 lost
    every cell between 0.15 and 0.5 from the counts CSV."""
    import csv

    from smearlab.data import Sample, SmearDataset
    from smearlab.detection.tune import Thresholds
    from smearlab.export import export_counts_csv
    box = [[0, 0, 5, 5], [10, 0, 15, 5], [20, 0, 25, 5]]
    ds = SmearDataset([Sample("a", boxes=box, labels=[1, 1, 1], size=(32, 32))], ["RBC", "WBC"])
    raw = [{"boxes": np.array(box, np.float32), "scores": np.array([0.3, 0.25, 0.2], np.float32),
            "labels": np.array([1, 1, 1])}]
    final = Thresholds({"RBC": 0.8, "WBC": 0.15}).apply(raw, class_names=ds.class_names)
    rows = list(csv.DictReader(export_counts_csv(ds, final, tmp_path / "c.csv").open()))
    assert rows[0]["WBC_pred"] == "3" and rows[0]["WBC_true"] == "3"
    rows = list(csv.DictReader(export_counts_csv(ds, raw, tmp_path / "r.csv", thresholds=0.22).open()))
    assert rows[0]["WBC_pred"] == "2"


def test_coco_ground_truth_export_keeps_crowd_regions(tmp_path):
    """export_coco_gt wrote every box with iscrowd 0: pycocotools on the exported pair scored a
    detection of a crowd region as a false positive (AP50 0.505 where the package said 1.0)."""
    import contextlib
    import io
    import json

    from PIL import Image
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from smearlab.data.formats import coco as coco_format
    from smearlab.export import export_coco_gt, export_coco_results
    from smearlab.metrics.detection import coco_eval
    (tmp_path / "images").mkdir()
    Image.fromarray(np.zeros((50, 60, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    doc = {"images": [{"id": 7, "file_name": "a.png", "width": 60, "height": 50}],
           "categories": [{"id": 1, "name": "RBC"}],
           "annotations": [{"id": 1, "image_id": 7, "category_id": 1, "bbox": [2, 2, 10, 10], "iscrowd": 0, "area": 100},
                           {"id": 2, "image_id": 7, "category_id": 1, "bbox": [30, 20, 25, 25], "iscrowd": 1,
                            "area": 625}]}
    (tmp_path / "gt.json").write_text(json.dumps(doc))
    ds = coco_format.load(tmp_path / "gt.json")
    preds = [{"boxes": [[2, 2, 12, 12], [32, 22, 40, 30]], "scores": [0.9, 0.8], "labels": [0, 0]}]
    ours = coco_eval(ds, preds)["mAP50"]
    gt_path = export_coco_gt(ds, tmp_path / "out" / "gt.json")
    res_path = export_coco_results(ds, preds, tmp_path / "out" / "res.json")
    assert [a["iscrowd"] for a in json.loads(gt_path.read_text())["annotations"]] == [0, 1]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        ev = COCOeval(gt, gt.loadRes(str(res_path)), "bbox")
        ev.evaluate(), ev.accumulate(), ev.summarize()
    assert ev.stats[1] == pytest.approx(ours) == pytest.approx(1.0)
    assert coco_format.load(gt_path)[0].crowd.tolist() == [False, True]


def test_a_renamed_repeat_never_takes_another_images_name():
    """[a.png, a.png, a_1.png]: the second a.png was named a_1.png, and the real a_1.png's
    predictions went to it."""
    from smearlab.export import _unique
    assert _unique(["a.png", "a.png", "a_1.png"]) == ["a.png", "a_2.png", "a_1.png"]
    assert _unique(["x/a.png", "x/A.png"]) == ["x/a.png", "x/A_1.png"]
