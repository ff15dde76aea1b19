"""Detection metrics: pycocotools parity of the fast evaluator, hand-made metric cases, exports."""
import csv
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from smearlab.metrics import detection as E  # noqa: E402

from smearlab.export import export_coco_gt

from smearlab.export import export_coco_results

from smearlab.export import export_counts_csv

from smearlab.metrics.instances import dsb_score

from smearlab.viz.plots import plot_confusion

from smearlab.viz.plots import plot_pr_curves
from smearlab.data import Sample, SmearDataset, load  # noqa: E402
from smearlab.data.synthetic import make_dataset  # noqa: E402

from helpers import toy_dataset  # noqa: E402


def _max_diff(ref, fast):
    diffs = [abs(ref["mAP50"] - fast["mAP50"]), abs(ref["mAP"] - fast["mAP"])]
    for name, r in ref["per_class"].items():
        f = fast["per_class"][name]
        if r["AP50"] is None:
            assert f["AP50"] is None and f["AP"] is None
            continue
        diffs += [abs(r["AP50"] - f["AP50"]), abs(r["AP"] - f["AP"])]
    return max(diffs)


def _parity(ds, preds, max_dets=1000):
    ref = E.coco_eval(ds, preds, max_dets=(1, 10, max_dets))
    fast = E.FastEvaluator(ds, max_dets=max_dets).evaluate(preds, full=True)
    assert 0.2 < ref["mAP50"] < 0.99  # a non-trivial case
    return _max_diff(ref, fast)


@pytest.fixture(scope="module")
def cbc_test(cbc_root):
    return load(cbc_root / "Testing")


@pytest.fixture(scope="module")
def synthetic():
    return make_dataset(6, seed=1)


@pytest.mark.shared_data
@pytest.mark.parametrize("seed", [0, 1])
def test_fast_evaluator_matches_pycocotools_on_cbc(cbc_test, seed):
    preds = E.simulate_predictions(cbc_test, seed=seed, spurious=20)
    assert _parity(cbc_test, preds) < 1e-3


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_evaluator_matches_pycocotools_on_synthetic(synthetic, seed):
    preds = E.simulate_predictions(synthetic, seed=seed, spurious=15, duplicates=3, jitter=0.1)
    if seed == 2:  # tied scores, coarse boxes (tied IoUs) and a binding maxDets
        for p in preds:
            p["scores"] = np.round(p["scores"], 1).astype(np.float32)
            p["boxes"] = np.round(p["boxes"] / 8) * 8
        assert _parity(synthetic, preds, max_dets=20) < 1e-3
    else:
        assert _parity(synthetic, preds) < 1e-3


def _perfect(ds):
    return [{"boxes": s.boxes, "scores": np.linspace(1, 0.5, len(s.boxes)), "labels": s.labels,
             "masks": s.masks} for s in ds]


def test_perfect_predictions_score_one(synthetic):
    preds = _perfect(synthetic)
    for iou_type in ("bbox", "segm"):
        r = E.coco_eval(synthetic, preds, iou_type=iou_type)
        assert r["mAP"] == pytest.approx(1.0) and r["mAP50"] == pytest.approx(1.0)
        assert all(v["AP"] == pytest.approx(1.0) for v in r["per_class"].values())
    f = E.FastEvaluator(synthetic).evaluate(preds, full=True)
    assert f["mAP"] == pytest.approx(1.0)
    assert all(v["f1"] == 1.0 for v in f["per_class"].values())
    assert dsb_score(synthetic, preds) == pytest.approx(1.0)
    assert dsb_score(synthetic, preds, kind="masks") == pytest.approx(1.0)


def test_absent_class_and_no_predictions():
    s = Sample("a", boxes=[[0, 0, 10, 10]], labels=[0], size=(32, 32))
    ds = SmearDataset([s], ["A", "B"])
    empty = [{"boxes": np.zeros((0, 4)), "scores": [], "labels": []}]
    r = E.coco_eval(ds, empty)
    assert r["per_class"]["A"]["AP"] == 0.0 and r["per_class"]["B"]["AP"] is None
    assert r["mAP50"] == 0.0
    f = E.FastEvaluator(ds).evaluate(empty)
    assert f["per_class"]["A"]["AP50"] == 0.0 and f["per_class"]["B"]["AP50"] is None
    with pytest.raises(ValueError, match="2 predictions for 1 images"):
        E.coco_eval(ds, empty * 2)


def _hand_case():
    # GT: A at g1, B at g2, A at g3. Preds: A on g1 (right), A on g2 (confused), B far (spurious).
    g = [[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10]]
    s = Sample("x", boxes=g, labels=[0, 1, 0], size=(64, 64))
    ds = SmearDataset([s], ["A", "B"])
    p = {"boxes": np.array([[0, 0, 10, 10], [21, 0, 31, 10], [0, 40, 10, 50]], np.float32),
         "scores": np.array([0.9, 0.8, 0.7], np.float32), "labels": np.array([0, 0, 1])}
    return ds, [p]


def test_confusion_matrix_hand_made():
    ds, preds = _hand_case()
    m = E.confusion_matrix(ds, preds, iou=0.5, score_threshold=0.5)
    np.testing.assert_array_equal(m, [[1, 0, 1],    # A: one right, one missed
                                      [1, 0, 0],    # B: called A
                                      [0, 1, 0]])   # spurious B
    m = E.confusion_matrix(ds, preds, score_threshold={"B": 0.75})
    assert m[2, 1] == 0 and m.sum() == 3
    ax = plot_confusion(m, ds.class_names, plt.figure().gca(), normalize=True)
    assert len(ax.texts) == 9
    plt.close("all")


def test_count_metrics_hand_made():
    a = Sample("a", boxes=[[0, 0, 5, 5], [10, 10, 15, 15]], labels=[0, 0], size=(32, 32))
    b = Sample("b", boxes=[[0, 0, 5, 5]], labels=[1], size=(32, 32))
    ds = SmearDataset([a, b], ["A", "B"])
    box = [[0, 0, 5, 5]]
    preds = [{"boxes": box * 4, "scores": [0.9, 0.8, 0.6, 0.1], "labels": [0, 0, 0, 1]},
             {"boxes": box * 2, "scores": [0.9, 0.9], "labels": [0, 1]}]
    c = E.count_metrics(ds, preds, score_threshold=0.5)
    assert c["A"] == {"mae": 1.0, "accuracy": 0.25, "true": 2, "predicted": 4}
    assert c["B"] == {"mae": 0.0, "accuracy": 1.0, "true": 1, "predicted": 1}
    c = E.count_metrics(ds, preds, score_threshold={"A": 0.7})
    # B falls back to 0.5 as in post-processing (it fell back to 0.0 here, to 0.5 there)
    assert c["A"]["predicted"] == 3 and c["B"]["predicted"] == 1
    from smearlab.detection.postprocess import postprocess
    kept = postprocess(preds, {"A": 0.7}, nms_iou=None, class_names=ds.class_names)
    assert [np.bincount(p["labels"], minlength=2).tolist() for p in kept] == [[2, 0], [1, 1]]


def test_dsb_score_hand_made_boxes_and_masks():
    gt = [np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float), np.zeros((0, 4)),
          np.array([[0, 0, 10, 10]], float), np.array([[0, 0, 10, 10]], float)]
    pred = [{"boxes": np.array([[0, 0, 10, 10]]), "scores": [0.9]},   # half found: 0.5
            np.zeros((0, 4)),                                          # skipped
            np.zeros((0, 4)),                                          # missed: 0
            np.array([[0, 0, 10, 7]], float)]                          # IoU 0.7: 4/10 thresholds
    mean, per = dsb_score(gt, pred, per_image=True)
    assert per == [0.5, None, 0.0, pytest.approx(0.4)]
    assert mean == pytest.approx((0.5 + 0.0 + 0.4) / 3)
    assert dsb_score(gt[:1], [gt[0]]) == 1.0

    def masks(boxes):
        m = np.zeros((len(boxes), 40, 40), bool)
        for j, (x0, y0, x1, y1) in enumerate(np.asarray(boxes, int)):
            m[j, y0:y1, x0:x1] = True
        return m
    gm = [masks(b) for b in gt]
    pm = [masks(pred[0]["boxes"]), masks(np.zeros((0, 4))), masks(np.zeros((0, 4))), masks(pred[3])]
    mean_m, per_m = dsb_score(gm, pm, per_image=True)
    assert per_m == [0.5, None, 0.0, pytest.approx(0.4)]
    assert dsb_score(gm[:1], gm[:1]) == 1.0


def test_dsb_score_label_images_and_ambiguous_arrays():
    """An integer (H, W) label image is read as its objects (with kind="masks"); a 2-D array that
    is not (N, 4) boxes is refused under "auto", and a binary (H, W) mask always, since it does not
    say which pixels make which object."""
    a = np.zeros((16, 16), bool)
    a[2:7, 2:7] = True
    b = np.zeros((16, 16), bool)
    b[9:14, 9:14] = True
    label = a * 1 + b * 7  # ids need not be consecutive
    stack = np.stack([a, b])
    assert dsb_score([label], [label], kind="masks") == 1.0
    assert dsb_score([stack], [label]) == 1.0  # the truth's masks say how to read the prediction
    assert dsb_score([stack], [{"masks": label}], kind="masks") == 1.0
    merged = (label > 0).astype(np.int32)
    merged[6:10, 6:10] = 1  # a bridge: one object over both nuclei
    assert dsb_score([label], [merged], kind="masks") == 0.0  # the two merged
    with pytest.raises(ValueError, match="several separate regions"):  # a 0/1 binary mask, not one object
        dsb_score([label], [(label > 0).astype(np.uint8)], kind="masks")
    assert dsb_score([stack], [stack[:, None]]) == 1.0  # (N, 1, H, W), as Mask R-CNN returns them
    with pytest.raises(ValueError, match="neither"):
        dsb_score([label], [label])
    with pytest.raises(ValueError, match="holds no instances"):
        dsb_score([stack], [a | b])
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        dsb_score([np.zeros((2, 5))], [np.zeros((2, 5))], kind="boxes")
    diagonal = np.zeros((16, 16), np.int32)
    diagonal[[1, 2, 3], [1, 2, 3]] = 5  # one object, its pixels touching at corners
    assert dsb_score([diagonal], [diagonal], kind="masks") == 1.0


def test_instance_metrics_refuse_probabilities_and_uneven_scores_and_take_images_without_objects():
    """Probability masks were made foreground wherever above 0 (DSB and mask AP 0.0 for a right
    answer); a scores array shorter than the masks left an instance unmatched yet counted; an image
    without objects and without masks (a COCO image with no annotation) stopped the DSB score."""
    from smearlab.metrics.instances import mask_ap, score_instances
    truth = np.zeros((2, 20, 20), bool)
    truth[0, 2:8, 2:8] = truth[1, 10:16, 10:16] = True
    soft = np.where(truth, 0.9, 0.02)
    with pytest.raises(ValueError, match="fractional values"):
        dsb_score([truth], [{"masks": soft, "scores": [0.9, 0.8]}], kind="masks")
    ds = SmearDataset([Sample("a", boxes=[[2, 2, 8, 8], [10, 10, 16, 16]], labels=[0, 0], _masks=truth,
                              _image=np.zeros((20, 20, 3), np.uint8)),
                       Sample("empty", _image=np.zeros((20, 20, 3), np.uint8))], ["cell"])
    pred = {"boxes": [[2, 2, 8, 8], [10, 10, 16, 16]], "scores": [0.9, 0.8], "labels": [0, 0]}
    with pytest.raises(ValueError, match="fractional values"):
        mask_ap(ds, [{**pred, "masks": soft}, {}])
    assert dsb_score([truth], [{"masks": truth.astype(np.float32), "scores": [0.9, 0.8]}], kind="masks") == 1.0
    with pytest.raises(ValueError, match="1 scores for 2 masks"):
        dsb_score([truth], [{"masks": truth, "scores": [0.9]}], kind="masks")
    empty = {"boxes": np.zeros((0, 4)), "scores": [], "labels": [], "masks": np.zeros((0, 20, 20), bool)}
    r = score_instances(ds, [{**pred, "masks": truth}, empty])
    assert r["dsb_metric"] == 1.0 and r["mask_mAP50"] == pytest.approx(1.0) and r["count_error"] == 0.0


def test_semantic_metrics_refuse_what_they_would_misread():
    from smearlab.metrics.semantic import binary_dice_iou, dice_iou

    truth = np.zeros((8, 8), np.uint8)
    truth[2:6, 2:6] = 1
    half = np.zeros((8, 8), np.uint8)
    half[2:6, 2:4] = 1
    assert dice_iou(truth, half, 2)[1] == {"dice": pytest.approx(2 / 3), "iou": 0.5}
    assert dice_iou(truth, half * 1.0, 2)[1]["dice"] == pytest.approx(2 / 3)  # whole floats are ids
    with pytest.raises(ValueError, match="fractional"):
        dice_iou(truth, half * 0.9, 2)  # a probability map would be truncated to background
    with pytest.raises(ValueError, match="0/255"):
        dice_iou(truth * 255, np.zeros_like(truth), 2)  # 255 is the ignore value
    # binary masks: any non-zero pixel is foreground, whatever the value
    for t, p in ((truth, half), (truth, half * 255), (truth * 2, half), (truth.astype(bool), half)):
        assert binary_dice_iou(t, p) == (pytest.approx(2 / 3), 0.5)
    with pytest.raises(ValueError, match="shape"):
        binary_dice_iou(truth, half[:4])


def test_pr_curves(synthetic):
    preds = E.simulate_predictions(synthetic, seed=0)
    curves = E.pr_curves(synthetic, preds)
    ref = E.coco_eval(synthetic, preds)
    for name, (rc, pr) in curves.items():
        assert rc.shape == pr.shape == (101,)
        assert pr.mean() == pytest.approx(ref["per_class"][name]["AP50"], abs=1e-9)
    plot_pr_curves(curves, plt.figure().gca())
    plt.close("all")


def test_exports(tmp_path):
    ds = toy_dataset(3, masks=True)
    preds = E.simulate_predictions(ds, seed=0)
    res = export_coco_results(ds, preds, tmp_path / "results.json")
    gt_path = export_coco_gt(ds, tmp_path / "gt" / "gt.json")
    from pycocotools.coco import COCO
    import contextlib
    import io
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        dt = gt.loadRes(str(res))
    assert len(dt.getAnnIds()) == sum(len(p["scores"]) for p in preds)
    first = json.loads(res.read_text())[0]
    assert set(first) == {"image_id", "category_id", "bbox", "score"}
    out = export_counts_csv(ds, preds, tmp_path / "counts.csv", thresholds={"RBC": 0.3})
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["image_id", "file", "RBC_true", "RBC_pred", "WBC_true", "WBC_pred",
                       "Platelets_true", "Platelets_pred"]
    true, pred = E.count_matrix(ds, preds, {"RBC": 0.3})
    assert [int(v) for v in rows[1][2::2]] == true[0].tolist()
    assert [int(v) for v in rows[1][3::2]] == pred[0].tolist()
    assert not list(tmp_path.glob(".*tmp*"))


def test_match_image_and_worst_images():
    import numpy as np

    from smearlab.data import Sample, SmearDataset
    from smearlab.metrics.detection import match_image, worst_images

    img = np.zeros((50, 50, 3), np.uint8)
    gt = Sample("a", boxes=[[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 48, 48]], labels=[0, 1, 0], _image=img)
    pred = {"boxes": np.array([[0, 0, 10, 11], [20, 20, 30, 30], [1, 1, 10, 10], [30, 0, 40, 8]], np.float32),
            "scores": np.array([0.9, 0.8, 0.7, 0.6], np.float32),
            "labels": np.array([0, 0, 0, 1])}
    tp, found = match_image(gt, pred)
    assert tp.tolist() == [True, False, False, False]  # wrong class, duplicate, nothing there
    assert found.tolist() == [True, False, False]
    perfect = {"boxes": gt.boxes, "scores": np.ones(3, np.float32), "labels": gt.labels}
    ds = SmearDataset([gt, gt], ["RBC", "WBC"])
    assert worst_images(ds, [perfect, pred], n=1) == [1]


def _one(boxes, labels, classes=("RBC", "WBC"), **meta):
    return SmearDataset([Sample("a", boxes=boxes, labels=labels, _image=np.zeros((40, 40, 3), np.uint8), meta=meta)],
                        list(classes))


def test_a_nan_box_or_score_is_refused_not_a_perfect_match():
    ds = _one([[0, 0, 10, 10]], [0])
    for box, score in (([np.nan, 0, 10, 10], 0.9), ([0, 0, 10, 10], np.nan)):  # pycocotools: IoU 1, AP 1.0
        with pytest.raises(ValueError, match="NaN or infinite"):
            E.coco_eval(ds, [{"boxes": [box], "scores": [score], "labels": [0]}])
    with pytest.raises(ValueError, match="x1 < x0"):
        E.coco_eval(ds, [{"boxes": [[10, 0, 0, 10]], "scores": [0.9], "labels": [0]}])


def test_crowd_regions_are_ignored_as_pycocotools_ignores_them():
    ds = _one([[0, 0, 10, 10], [20, 20, 40, 40]], [0, 0], iscrowd=np.array([0, 1]))
    pred = {"boxes": [[0, 0, 10, 10]], "scores": [0.9], "labels": [0]}
    assert E.coco_eval(ds, [pred])["mAP50"] == pytest.approx(1.0)   # 0.50 when the crowd region was an object


def test_the_fast_evaluator_and_counts_say_when_they_count_crowd_regions_as_objects(caplog):
    ds = _one([[0, 0, 10, 10], [20, 20, 40, 40]], [0, 0], iscrowd=np.array([0, 1]))
    pred = {"boxes": [[0, 0, 10, 10]], "scores": [0.9], "labels": [0]}
    assert E.crowd_regions(ds) == 1 and E.crowd_regions(_one([[0, 0, 10, 10]], [0])) == 0
    with caplog.at_level("WARNING", logger="smearlab.metrics.detection"):
        assert E.FastEvaluator(ds).evaluate([pred])["mAP50"] == pytest.approx(0.505, abs=0.001)  # 1.0 in COCO
        assert E.count_matrix(ds, [pred])[0].tolist() == [[2, 0]]
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2 and all("1 crowd region(s)" in m and "single objects" in m for m in said)


def test_worst_images_and_match_image_map_classes_by_name_and_break_ties_as_ap():
    from smearlab.data.predictions import Predictions
    ds = _one([[0, 0, 10, 10], [20, 0, 30, 10]], [0, 1])
    two = SmearDataset([ds[0], ds[0]], ds.class_names)
    right = Predictions([{"boxes": [[0, 0, 10, 10], [20, 0, 30, 10]], "scores": [0.9, 0.8], "labels": [1, 0]},
                         {"boxes": [[0, 0, 10, 10]], "scores": [0.9], "labels": [1]}],
                        ["WBC", "RBC"])  # image 0 right, image 1 one box missed, in the model's class order
    assert E.worst_images(two, right, n=2) == [1, 0]   # read by index: [0, 1] (image 0 "had 4 errors")
    tp, found = E.match_image(ds[0], E.check_predictions(two, right)[0])
    assert tp.all() and found.all()
    with pytest.raises(ValueError):
        E.worst_images(two, right[:1])  # 1 prediction for 2 images
    # a detection at IoU exactly 0.5 with two boxes takes the later one, as AP matching does
    tie = _one([[0, 0, 10, 10], [10, 0, 20, 10]], [0, 0])
    pred = {"boxes": [[0, 0, 20, 10], [0, 0, 10, 10]], "scores": [0.9, 0.8], "labels": [0, 0]}
    tp, found = E.match_image(tie[0], pred)
    assert tp.all() and found.all()
    assert E.confusion_matrix(tie, [pred])[0, 0] == 2
    for bad in (0, 1.5):
        with pytest.raises(ValueError, match="iou"):
            E.match_image(tie[0], pred, iou=bad)


def test_precision_counts_every_kept_detection_and_arguments_are_checked():
    ds = _one([[0, 0, 10, 10]], [0])
    pred = {"boxes": [[0, 0, 10, 10], [20, 20, 30, 30], [25, 0, 35, 10]], "scores": [0.9, 0.8, 0.7], "labels": [0, 0, 0]}
    r = E.FastEvaluator(ds, max_dets=1).evaluate([pred])
    assert r["per_class"]["RBC"]["precision"] == pytest.approx(1 / 3)   # was 1.0: the cap hid two false positives
    # a right detection beyond the cap is a true positive for P/R/F1 (it was counted a false one:
    # a perfect detector of 1,200 cells read F1 0.83), while AP keeps COCO's cap
    three = _one([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], [0, 0, 0])
    perfect = {"boxes": [[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], "scores": [0.9, 0.8, 0.7],
               "labels": [0, 0, 0]}
    r = E.FastEvaluator(three, max_dets=2).evaluate([perfect], full=True)
    assert {k: r["per_class"]["RBC"][k] for k in ("tp", "fp", "fn", "f1")} == {"tp": 3, "fp": 0, "fn": 0, "f1": 1.0}
    assert r["mAP"] == pytest.approx(E.coco_eval(three, [perfect], max_dets=(1, 2, 2))["mAP"])
    from smearlab.detection.tune import auto_tune
    th = auto_tune(three, [perfect], objective="count", nms_grid=(None,), score_grid=[0.5],
                   evaluator=E.FastEvaluator(three, max_dets=2))
    assert th.metrics["per_class"]["RBC"]["count"] == 1.0
    for bad in ((), (0,)):
        with pytest.raises(ValueError, match="max_dets"):
            E.coco_eval(ds, [pred], max_dets=bad)
    with pytest.raises(ValueError, match="iou"):
        E.FastEvaluator(ds).evaluate([pred], iou=1.5)


def test_instance_scores_leave_crowd_regions_out_as_mask_ap_does():
    """A COCO crowd region (a clump outlined as one) counted as an object to find: two cells found
    exactly scored DSB 0.667, count error 0.33 and one "missed" failure beside a mask AP of 1."""
    from smearlab.metrics.instances import failure_cases, score_instances, segmentation_metrics
    h, w = 40, 60
    m = np.zeros((3, h, w), bool)
    m[0, 2:10, 2:10] = m[1, 20:30, 30:40] = m[2, 5:35, 45:58] = True
    boxes = np.array([[2, 2, 10, 10], [30, 20, 40, 30], [45, 5, 58, 35]], float)
    img = np.zeros((h, w, 3), np.uint8)
    img[m.any(0)] = 200
    ds = SmearDataset([Sample("a", boxes=boxes, labels=[0, 0, 0], _image=img, _masks=m,
                              meta={"iscrowd": np.array([0, 0, 1])})], ["cell"])
    found = {"boxes": boxes[:2], "scores": np.array([0.9, 0.8]), "labels": np.zeros(2, int), "masks": m[:2]}
    r = segmentation_metrics(ds, [found])
    assert (r["dsb_metric"], r["count_error"], r["objects_true"], r["mask_mAP50"]) == (1.0, 0.0, 2, 1.0)
    assert score_instances(ds, [found])["dsb_metric"] == 1.0 and failure_cases(ds, [found]) == []
    # a prediction inside the crowd region is neither right nor wrong; one on nothing is debris
    q = np.zeros((4, h, w), bool)
    q[:2] = m[:2]
    q[2, 10:20, 48:55] = q[3, 35:39, 2:6] = True
    more = {"boxes": np.array([[2, 2, 10, 10], [30, 20, 40, 30], [48, 10, 55, 20], [2, 35, 6, 39]], float),
            "scores": np.array([0.9, 0.8, 0.7, 0.6]), "labels": np.zeros(4, int), "masks": q}
    assert dsb_score(ds, [more], kind="masks") == pytest.approx(2 / 3)
    assert dsb_score(ds, [more]) == pytest.approx(2 / 3)  # boxes alike
    assert [(f["kind"], f["index"]) for f in failure_cases(ds, [more])] == [("debris", 3)]
    r = segmentation_metrics(ds, [more])  # counted as the DSB metric scores: the one in the clump left out
    assert (r["objects_true"], r["objects_predicted"], r["count_error"]) == (2, 3, 0.5)


def test_counts_judge_a_prediction_against_a_crowd_region_by_its_mask_as_the_dsb_metric_does():
    """A cell found exactly in the corner of an L-shaped clump lies inside the clump's box, not in
    the clump: the counts, judging by boxes, left it out (count error 1.0 beside DSB 1.0)."""
    from smearlab.data.boxes import mask_box
    from smearlab.metrics.instances import count_error, segmentation_metrics
    crowd = np.zeros((40, 40), bool)
    crowd[5:35, 5:10] = crowd[30:35, 5:35] = True
    cell = np.zeros((40, 40), bool)
    cell[8:22, 18:32] = True
    m = np.stack([cell, crowd])
    ds = SmearDataset([Sample("a", boxes=np.stack([mask_box(k) for k in m]), labels=[0, 0],
                              _image=np.full((40, 40, 3), 200, np.uint8), _masks=m, meta={"iscrowd": [0, 1]})],
                      ["cell"])
    pred = {"boxes": mask_box(cell)[None], "scores": np.array([0.9]), "labels": np.zeros(1, int), "masks": cell[None]}
    r = segmentation_metrics(ds, [pred])
    assert (r["dsb_metric"], r["objects_predicted"], r["count_error"]) == (1.0, 1, 0.0)
    assert count_error(ds, [pred], None) == count_error(ds, [pred], 0.5) == 0.0
    with pytest.raises(ValueError, match="crowd regions"):   # every prediction would be counted
        count_error(ds, [{"scores": np.array([0.9])}], None)


def test_failure_cases_match_above_the_iou_as_the_dsb_metric_does():
    """Two equal touching cells merged into one prediction have IoU 0.5 with each: failure_cases
    matched one of them at 0.5 (>=) where the DSB metric (>) finds neither."""
    from smearlab.data.boxes import mask_box
    from smearlab.metrics.instances import failure_cases
    m = np.zeros((2, 20, 30), bool)
    m[0, 2:10, 2:10] = m[1, 2:10, 10:18] = True
    img = np.full((20, 30, 3), 220, np.uint8)
    img[m.any(0)] = 40
    ds = SmearDataset([Sample("a", boxes=np.stack([mask_box(k) for k in m]), labels=[0, 0], _image=img, _masks=m)],
                      ["c"])
    merged = m.any(0)[None]
    pred = {"boxes": mask_box(merged[0])[None], "scores": np.array([0.9]), "labels": np.zeros(1, int), "masks": merged}
    assert dsb_score(ds, [pred], kind="masks") == 0.0
    assert sorted(f["kind"] for f in failure_cases(ds, [pred])) == ["split/merge", "touching", "touching"]
