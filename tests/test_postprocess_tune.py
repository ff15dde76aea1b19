"""Raw prediction cache, per-class post-processing, threshold tuning and the tuner widget."""
import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from smearlab.data import DataError, Sample, SmearDataset  # noqa: E402
from smearlab.detection.postprocess import RawPredictions, postprocess, select  # noqa: E402
from smearlab.detection.tune import Thresholds, auto_tune  # noqa: E402
from smearlab.metrics.detection import FastEvaluator, simulate_predictions  # noqa: E402

from helpers import toy_dataset  # noqa: E402

NAMES = ["A", "B"]
# a and b overlap (IoU 0.818, class A), c is b's box as class B, d is far and low-scored.
RAW = [{"boxes": np.array([[0, 0, 10, 10], [1, 0, 11, 10], [1, 0, 11, 10], [50, 50, 60, 60]], np.float32),
        "scores": np.array([0.9, 0.8, 0.7, 0.3], np.float32),
        "labels": np.array([0, 0, 1, 0])}]


def _kept(**kw):
    return select(RawPredictions(RAW, NAMES), **kw)[0].tolist()


def test_thresholds_and_nms_hand_made():
    assert _kept(score_thresholds=0.5, nms_iou=None) == [0, 1, 2]
    assert _kept(score_thresholds=0.5, nms_iou=0.5) == [0, 2]           # b suppressed by a
    assert _kept(score_thresholds=0.5, nms_iou=0.85) == [0, 1, 2]       # IoU 0.818 < 0.85
    assert _kept(score_thresholds=0.5, nms_iou=0.5, class_agnostic=True) == [0]
    assert _kept(score_thresholds={"A": 0.2}, nms_iou=0.5) == [0, 2, 3]  # B keeps 0.5
    assert _kept(score_thresholds=[0.95, 0.1], nms_iou=0.5) == [2]
    assert _kept(score_thresholds=0.5, nms_iou={"A": 0.9}) == [0, 1, 2]  # per-class NMS
    assert _kept(score_thresholds=0.0, nms_iou=None, max_dets=2) == [0, 1]
    with pytest.raises(ValueError, match="unknown class 'C'"):
        _kept(score_thresholds={"C": 0.1})
    with pytest.raises(ValueError, match="3 values for 2 classes"):
        _kept(score_thresholds=[0.1, 0.2, 0.3])
    out = postprocess(RawPredictions(RAW, NAMES), 0.5, 0.5)[0]
    assert out["boxes"].dtype == np.float32 and out["labels"].dtype == np.int64
    np.testing.assert_array_equal(out["scores"], np.float32([0.9, 0.7]))
    np.testing.assert_array_equal(out["labels"], [0, 1])
    # a plain list needs the class names
    assert postprocess(RAW, 0.5, None, class_names=NAMES)[0]["scores"].tolist() == \
        pytest.approx([0.9, 0.8, 0.7])


def test_raw_predictions_round_trip_and_corrupt_files(tmp_path):
    ds = toy_dataset(4)
    raw = RawPredictions.for_dataset(ds, simulate_predictions(ds, seed=3), score_floor=0.01)
    raw.predictions[1] = {k: v[:0] for k, v in raw.predictions[1].items()}  # an empty image
    path = raw.save(tmp_path / "raw.npz")
    back = RawPredictions.load(path)
    assert back.class_names == raw.class_names and back.image_ids == raw.image_ids
    assert back.score_floor == pytest.approx(0.01)
    for a, b in zip(raw, back):
        for key in ("boxes", "scores", "labels"):
            np.testing.assert_array_equal(a[key], b[key])
            assert a[key].dtype == b[key].dtype
    back.check(ds)
    with pytest.raises(ValueError, match="image"):
        back.check(toy_dataset(4, seed=1).subset([1, 0, 2, 3]))

    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip archive")
    with pytest.raises(DataError, match="bad.npz"):
        RawPredictions.load(bad)
    with pytest.raises(DataError, match="missing.npz"):
        RawPredictions.load(tmp_path / "missing.npz")
    mismatched = tmp_path / "mismatched.npz"
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["counts"] = arrays["counts"] + 1
    np.savez(mismatched, **arrays)
    with pytest.raises(DataError, match="mismatched.npz.*counts"):
        RawPredictions.load(mismatched)
    assert not list(tmp_path.glob(".*tmp*"))


@pytest.fixture(scope="module")
def tuning_case():
    ds = toy_dataset(16, seed=2)
    raw = RawPredictions.for_dataset(ds, simulate_predictions(ds, seed=5, spurious=6, duplicates=2))
    return ds, raw


def test_auto_tune_f1_beats_default_and_is_exact(tuning_case, tmp_path):
    ds, raw = tuning_case
    th = auto_tune(ds, raw, objective="f1")
    assert th.metrics["mean"] >= th.metrics["mean_at_0.5"]
    for name, t in th.score.items():
        assert 0.05 <= t <= 0.95
        # true boxes score Beta(6, 2), duplicates Beta(2, 4), spurious Beta(1, 6)
        assert 0.3 <= t <= 0.8, (name, t)
    # the tuned figures are what evaluating the applied thresholds gives
    res = FastEvaluator(ds).evaluate(th.apply(raw))
    for name, pc in res["per_class"].items():
        assert pc["f1"] == pytest.approx(th.metrics["per_class"][name]["f1"])
    default = FastEvaluator(ds).evaluate(postprocess(raw, 0.5, th.nms_iou))
    assert np.mean([pc["f1"] for pc in res["per_class"].values()]) >= \
        np.mean([pc["f1"] for pc in default["per_class"].values()]) - 1e-12
    path = th.save(tmp_path / "thresholds.json")
    back = Thresholds.load(path)
    assert back == th
    assert [p["scores"].tolist() for p in back.apply(raw)] == [p["scores"].tolist() for p in th.apply(raw)]
    (tmp_path / "bad.json").write_text("{\"score\": 3}")
    with pytest.raises(DataError, match="bad.json"):
        Thresholds.load(tmp_path / "bad.json")


def test_auto_tune_count_objective(tuning_case):
    ds, raw = tuning_case
    th = auto_tune(ds, raw, objective="count", nms_grid=(0.5,))
    assert th.objective == "count" and th.nms_iou == 0.5
    assert th.metrics["mean"] >= th.metrics["mean_at_0.5"]
    from smearlab.metrics.detection import count_metrics
    c = count_metrics(ds, th.apply(raw), 0.0)
    for name, m in c.items():
        assert m["accuracy"] == pytest.approx(th.metrics["per_class"][name]["count"])
    with pytest.raises(ValueError, match="objective"):
        auto_tune(ds, raw, objective="map")


def test_threshold_tuner_widget(tuning_case):
    from smearlab.viz.widgets import ThresholdTuner
    ds, raw = tuning_case
    tuner = ThresholdTuner(ds, raw, images_for_overlay=[0, 3, 5])
    assert set(tuner.sliders) == set(ds.class_names)
    before, png = tuner.metrics, tuner.image.value
    assert before["per_class"]["RBC"]["recall"] > 0 and tuner.last_ms > 0
    tuner.sliders["RBC"].value = 1.0
    after = tuner.metrics
    assert after["per_class"]["RBC"]["recall"] == 0.0 and after["per_class"]["RBC"]["AP50"] == 0.0
    assert after["per_class"]["WBC"] == before["per_class"]["WBC"]
    assert tuner.image.value != png and "RBC" in tuner.table.value
    png = tuner.image.value
    tuner.index.value = 1
    assert tuner.image.value != png
    tuner.nms.value = 1.0
    th = tuner.thresholds()
    assert th.score["RBC"] == 1.0 and th.nms_iou is None
    assert len(th.apply(raw)) == len(ds)


def test_threshold_tuner_with_the_model_classes_in_another_order_and_spelling(tuning_case):
    """A model listing ``Platelet, WBC, RBC`` on a dataset of ``RBC, WBC, Platelets``: the tuner
    crashed on the alias, started every slider at 0.5 whatever auto_tune chose, and drew the
    predictions in another class's colour."""
    from smearlab.viz.widgets import ThresholdTuner
    ds, raw = tuning_case
    order = [2, 1, 0]  # the model's class k is the dataset's class order[k]
    model_names = ["Platelet", "WBC", "RBC"]
    preds = []
    for p in raw.predictions:
        inverse = np.argsort(order)
        preds.append({**p, "labels": inverse[p["labels"]]})
    model_raw = RawPredictions(preds, model_names, raw.score_floor, raw.image_ids)
    tuned = auto_tune(ds, model_raw)
    assert set(tuned.score) == set(model_names)
    tuner = ThresholdTuner(ds, model_raw, initial=tuned)
    assert {m: s.value for m, s in tuner.sliders.items()} == pytest.approx(tuned.score)
    assert tuner.sliders["Platelet"].description == "Platelet (Platelets)"
    plain = ThresholdTuner(ds, raw, initial=Thresholds({"RBC": tuned.score["RBC"], "WBC": tuned.score["WBC"],
                                                        "Platelets": tuned.score["Platelet"]}))
    assert tuner.metrics["per_class"] == plain.metrics["per_class"]  # the same model, however it names them
    assert tuner.image.value == plain.image.value  # drawn alike: each box in its class's colour
    assert tuner.thresholds().score == pytest.approx(tuned.score)
    assert ThresholdTuner(ds, model_raw).thresholds().score == {"Platelet": 0.5, "WBC": 0.5, "RBC": 0.5}
    with pytest.raises(ValueError, match=r"initial thresholds name \['Platelets'\]"):  # the dataset's spelling
        ThresholdTuner(ds, model_raw, initial=Thresholds({"Platelets": 0.3}))
    with pytest.raises(ValueError, match=r"images_for_overlay \[99\]"):
        ThresholdTuner(ds, raw, images_for_overlay=[0, 99])


def test_per_class_dict_must_name_known_classes():
    s = Sample("a", boxes=[[0, 0, 5, 5]], labels=[0], size=(16, 16))
    ds = SmearDataset([s], NAMES)
    raw = RawPredictions.for_dataset(ds, RAW)
    with pytest.raises(ValueError, match="unknown class"):
        Thresholds({"A": 0.5, "Z": 0.2}).apply(raw)


def test_selector_equals_select(tuning_case):
    from smearlab.detection.postprocess import Selector
    ds, raw = tuning_case
    sel = Selector(raw)
    rng = np.random.default_rng(0)
    for _ in range(12):
        thr = {n: float(rng.choice([0.1, 0.3, 0.5, 0.7])) for n in ds.class_names}
        nms = rng.choice([None, 0.3, 0.5, 1.0, {"RBC": 0.4}])
        agnostic = bool(rng.random() < 0.3) and not isinstance(nms, dict)
        max_dets = int(rng.choice([3, 300]))
        a = sel(thr, nms, agnostic, max_dets)
        b = select(raw, thr, nms, agnostic, max_dets)
        assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_a_cache_of_other_images_with_the_same_ids_is_refused(tmp_path):
    from smearlab.data.synthetic import make_dataset
    from smearlab.detection.postprocess import RawPredictions
    a, b = make_dataset(3, seed=0, width=64, height=64), make_dataset(3, seed=1, width=64, height=64)
    assert [s.image_id for s in a] == [s.image_id for s in b]  # synthetic ids do not depend on the seed
    raw = RawPredictions.for_dataset(a, [{"boxes": s.boxes, "scores": np.ones(len(s.boxes)), "labels": s.labels}
                                         for s in a])
    cached = RawPredictions.load(raw.save(tmp_path / "raw.npz"))
    cached.check(a)
    with pytest.raises(ValueError, match="annotations differ"):
        cached.check(b)


def test_tuning_refuses_class_agnostic_nms_and_thresholds_outside_the_cache():
    from smearlab.data.synthetic import make_dataset
    from smearlab.detection.postprocess import RawPredictions
    from smearlab.detection.tune import auto_tune
    ds = make_dataset(2, seed=0, width=64, height=64)
    raw = RawPredictions.for_dataset(ds, [{"boxes": s.boxes, "scores": np.full(len(s.boxes), 0.6),
                                           "labels": s.labels} for s in ds], score_floor=0.3)
    with pytest.raises(ValueError, match="class-agnostic"):
        auto_tune(ds, raw, class_agnostic=True)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        auto_tune(ds, raw, score_grid=[0.5, 1.5])
    th = auto_tune(ds, raw, nms_grid=(None,), score_grid=[0.1, 0.2, 0.4, 0.5])
    assert min(th.score.values()) >= 0.3   # 0.1 and 0.2 lie below the floor: never observed, never chosen


def test_the_cap_on_boxes_is_per_forward_pass_wherever_thresholds_apply(tmp_path):
    """A field merged from k tiles keeps k times max_dets, through RawPredictions (notebooks 03 and
    09 apply tuned thresholds to cached raw predictions) and the tuner's Selector alike."""
    import numpy as np

    from smearlab.data import Sample, SmearDataset
    from smearlab.data.predictions import Predictions
    from smearlab.detection.postprocess import RawPredictions, Selector, per_image_caps
    from smearlab.detection.tune import Thresholds

    boxes = np.array([[i * 10, 0, i * 10 + 8, 8] for i in range(10)], np.float32)
    one = {"boxes": boxes, "scores": np.linspace(0.9, 0.5, 10).astype(np.float32), "labels": np.zeros(10, int)}
    preds = Predictions([one, one], ["cell"])
    preds.windows = [1, 3]  # the second image was predicted in three tiles
    ds = SmearDataset([Sample(f"i{k}", _image=np.zeros((10, 100, 3), np.uint8)) for k in range(2)], ["cell"])
    raw = RawPredictions.for_dataset(ds, preds)
    assert per_image_caps(raw, 2, 2) == [2, 6] and per_image_caps(raw, None, 2) == [None, None]
    th = Thresholds({"cell": 0.0}, nms_iou=None, max_dets=2)
    assert [len(p["boxes"]) for p in th.apply(raw)] == [2, 6]
    raw.save(tmp_path / "raw.npz")  # a cache read back keeps them
    assert [len(p["boxes"]) for p in th.apply(RawPredictions.load(tmp_path / "raw.npz"))] == [2, 6]
    assert [len(k) for k in Selector(preds)(0.0, None, max_dets=2)] == [2, 6]
    assert [len(p["boxes"]) for p in th.apply(list(preds), class_names=["cell"])] == [2, 2]  # no windows: one pass each


def test_a_slice_of_tiled_predictions_keeps_its_per_pass_cap():
    """A slice (or a post-processed copy) lost the tiles each image was merged from: the cap of
    300 per forward pass became 300 per image, and a field of four tiles lost three quarters."""
    from smearlab.data.predictions import Predictions
    from smearlab.detection.postprocess import per_image_caps, postprocess
    n = 8
    boxes = np.array([[10 * k, 0, 10 * k + 8, 8] for k in range(n)], np.float32)
    one = {"boxes": boxes, "scores": np.linspace(0.9, 0.6, n).astype(np.float32), "labels": np.zeros(n, np.int64)}
    preds = Predictions([one, one], ["RBC"], windows=[1, 4])
    assert per_image_caps(preds[1:], 2, 1) == [8]
    kept = postprocess(preds, 0.5, None, max_dets=2)
    assert [len(p["boxes"]) for p in kept] == [2, 8] and kept.windows == [1, 4]
    assert [len(p["boxes"]) for p in postprocess(kept[1:], 0.5, None, max_dets=2)] == [8]
    with pytest.raises(ValueError, match="classes"):
        preds + Predictions([one], ["WBC"])
    assert (preds[:1] + preds[1:]).windows == [1, 4]


def test_predictions_joined_by_sum_or_appended_keep_their_classes_and_line_up():
    """``sum([p, q], [])`` and ``[] + p`` gave a plain list (its labels then read in a dataset's
    class order); ``append`` left the per-image windows one short; ``copy`` dropped them."""
    from smearlab.data.predictions import Predictions
    one = {"boxes": np.zeros((1, 4), np.float32) + [0, 0, 4, 4], "scores": np.ones(1, np.float32),
           "labels": np.zeros(1, np.int64)}
    p, q = Predictions([one], ["RBC", "WBC"], windows=[4]), Predictions([one, one], ["RBC", "WBC"], windows=[1, 1])
    joined = sum([p, q], [])
    assert isinstance(joined, Predictions) and joined.class_names == ["RBC", "WBC"] and joined.windows == [4, 1, 1]
    assert ([] + p).class_names == ["RBC", "WBC"] and p.copy().windows == [4]
    with pytest.raises(ValueError, match="whose classes"):
        [one] + p
    with pytest.raises(ValueError, match="classes"):
        sum([p, Predictions([one], ["WBC", "RBC"])], [])
    p.append(one)
    assert len(p) == 2 and p.windows is None and p.class_names == ["RBC", "WBC"]


def test_a_class_mapping_says_when_label_ids_change_without_a_new_order():
    from smearlab.data.classes import match_classes
    text = match_classes(["RBC", "WBC"], ["Platelets", "RBC", "WBC"]).describe()
    assert "renumbered" in text and "['Platelets']" in text
    assert match_classes(["RBC", "WBC"], ["RBC", "WBC"]).describe() == "same classes"


def test_the_tuner_scores_at_the_iou_it_was_tuned_for_and_saves_what_its_sliders_hold(tuning_case, caplog):
    """Tuned for F1 at IoU 0.7, the tuner showed F1 at 0.5 under a plain header and saved it;
    sliders went below the cache's score floor (counted on boxes never kept); values were cut to
    4 decimals; per-class metrics were keyed by the dataset's names, the scores by the model's."""
    import logging

    from smearlab.metrics.detection import FastEvaluator
    from smearlab.viz.widgets import ThresholdTuner
    ds, raw = tuning_case
    tuned = auto_tune(ds, raw, iou=0.7)
    tuner = ThresholdTuner(ds, raw, initial=tuned)
    assert tuner.iou == 0.7 and "F1@0.7" in tuner.table.value
    ref = FastEvaluator(ds).evaluate(tuned.apply(raw), iou=0.7)
    assert tuner.metrics["per_class"]["RBC"]["f1"] == pytest.approx(ref["per_class"]["RBC"]["f1"])
    saved = tuner.thresholds()
    assert saved.metrics["iou"] == 0.7 and set(saved.metrics["per_class"]) == set(saved.score)
    floored = RawPredictions(raw.predictions, raw.class_names, 0.05, raw.image_ids)
    with caplog.at_level(logging.WARNING, logger="smearlab"):
        low = ThresholdTuner(ds, floored, initial=Thresholds({"RBC": 0.02, "WBC": 0.5, "Platelets": 0.5}))
    assert "below the raw predictions' score floor" in caplog.text
    assert low.sliders["RBC"].min == 0.05 and low.thresholds().score["RBC"] == 0.05
    fine = ThresholdTuner(ds, raw, initial=Thresholds({"RBC": 1 / 30, "WBC": 0.5, "Platelets": 0.5}))
    assert fine.thresholds().score["RBC"] == round(1 / 30, 6) and fine.sliders["RBC"].readout_format == ".4f"


def test_every_list_operation_that_moves_images_drops_the_per_image_lists():
    from smearlab.data.predictions import Predictions
    one = {"boxes": np.zeros((0, 4), np.float32), "scores": np.zeros(0, np.float32), "labels": np.zeros(0, np.int64)}
    for op in (lambda p: p.insert(0, one), lambda p: p.pop(), lambda p: p.remove(p[0]), lambda p: p.__delitem__(0),
               lambda p: p.reverse(), lambda p: p.clear(), lambda p: p.__setitem__(slice(0, 1), [])):
        p = Predictions([one, dict(one)], ["RBC"], windows=[1, 4], zooms=[1.0, 2.0])
        op(p)
        assert p.windows is None and p.zooms is None and p.class_names == ["RBC"]
    p = Predictions([one, dict(one)], ["RBC"], windows=[1, 4])
    p[1] = one  # the same image's prediction replaced: its windows stand
    assert p.windows == [1, 4]


def test_postprocess_refuses_class_names_other_than_the_predictions_and_labels_outside_the_classes():
    """A class list given beside predictions that carry another read every WBC as an RBC, under the
    RBC's threshold; a label -1 in a plain list took the last class's threshold."""
    from smearlab.detection.postprocess import RawPredictions, postprocess
    raw = RawPredictions([{"boxes": [[0, 0, 10, 10]], "scores": [0.7], "labels": [0]}], ["WBC", "RBC"])
    with pytest.raises(ValueError, match="differ from the classes"):
        postprocess(raw, {"WBC": 0.9, "RBC": 0.5}, class_names=["RBC", "WBC"])
    assert len(postprocess(raw, {"WBC": 0.9, "RBC": 0.5})[0]["boxes"]) == 0  # WBC at 0.7 under its 0.9
    with pytest.raises(ValueError, match="label -1 is outside"):
        postprocess([{"boxes": [[0, 0, 10, 10]], "scores": [0.4], "labels": [-1]}],
                    {"RBC": 0.9, "WBC": 0.9, "Platelets": 0.3}, class_names=["RBC", "WBC", "Platelets"])
