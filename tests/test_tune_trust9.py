"""Threshold tuning's IoU and NMS grid, fine-tuning's IoU and magnification, the training scale's
class names, and a U-Net given a pixel size."""
import numpy as np
import pytest

from smearlab import batch
from smearlab.core.errors import DataError
from smearlab.core.training import History
from smearlab.data import Sample, SmearDataset
from smearlab.data.imageio import write_image
from smearlab.data.synthetic import make_dataset
from smearlab.detection import finetune
from smearlab.detection.anchors import input_scale
from smearlab.detection.models import DetectorConfig, build_detector, save_model
from smearlab.detection.postprocess import RawPredictions
from smearlab.detection.scale import estimate_zoom, object_sizes
from smearlab.detection.tune import Thresholds, auto_tune


def _two_classes():
    ds = SmearDataset([Sample("a", boxes=np.array([[0, 0, 10, 10], [50, 50, 60, 60]], float), labels=[0, 1],
                              size=(100, 100))], ["A", "B"], "t")
    # each box predicted with the other class
    raw = RawPredictions.for_dataset(ds, [{"boxes": np.array([[0, 0, 10, 10], [50, 50, 60, 60]], np.float32),
                                           "scores": np.array([0.9, 0.9], np.float32), "labels": np.array([1, 0])}])
    return ds, raw


@pytest.mark.parametrize("kw, what", [(dict(iou=0.0), "iou"), (dict(iou=1.5), "iou"), (dict(iou=-1), "iou"),
                                      (dict(iou=float("nan")), "iou"), (dict(nms_grid=()), "nms_grid is empty"),
                                      (dict(nms_grid=(0.5, -0.2)), "nms_grid"), (dict(nms_grid=(7,)), "nms_grid")])
def test_auto_tune_refuses_an_iou_or_nms_grid_outside_its_range(kw, what):
    """iou=0 matched boxes of different classes (F1 2.0); NMS IoUs outside [0, 1] were saved in a
    file Thresholds.load refuses; an empty grid raised a bare TypeError."""
    ds, raw = _two_classes()
    with pytest.raises(ValueError, match=what):
        auto_tune(ds, raw, **kw)


def test_auto_tune_still_takes_the_ends_of_the_ranges(tmp_path):
    ds, raw = _two_classes()
    th = auto_tune(ds, raw, iou=1.0, nms_grid=(0.0, 1.0, None))
    assert th.metrics["iou"] == 1.0 and all(v["f1"] <= 1 for v in th.metrics["per_class"].values())
    th.save(tmp_path / "t.json")
    Thresholds.load(tmp_path / "t.json")


def _no_training(seen):
    def train(model, data, val, tcfg, progress=False):
        seen.append(data)
        return History()
    return train


def test_fine_tuning_tunes_thresholds_again_at_the_iou_they_were_tuned_at(tmp_path, monkeypatch):
    ds = make_dataset(2, seed=0, width=96, height=80)
    cfg = DetectorConfig(arch="fasterrcnn_tiny", class_names=ds.class_names, min_size=80, max_size=96)
    old = Thresholds({c: 0.2 for c in ds.class_names}, nms_iou=None, objective="f1", metrics={"iou": 0.75})
    save_model(build_detector(cfg), cfg, tmp_path / "r0", thresholds=old)
    monkeypatch.setattr(finetune, "train_detector", _no_training([]))
    model, _ = finetune.fine_tune(tmp_path / "r0", ds, val=ds, epochs=1, device="cpu")
    assert model.thresholds["objective"] == "f1" and model.thresholds["metrics"]["iou"] == 0.75


def test_object_sizes_are_keyed_by_the_models_class_names():
    """Keyed by the dataset's names, scale='auto' never found its reference class and left every
    image as it was, without a word."""
    x = np.linspace(10, 500, 8)
    b = np.stack([x, np.full(8, 100.), x + 40, np.full(8, 140.)], 1)
    train = SmearDataset([Sample("a", boxes=b, labels=[1] * 8, size=(480, 640))], ["platelet", "rbc"], "train")
    cfg = DetectorConfig(arch="fasterrcnn_tiny", class_names=["RBC", "WBC", "Platelets"], min_size=480,
                         max_size=640, train_image_size=[480, 640])
    cfg.object_sizes = object_sizes(train, cfg)
    assert set(cfg.object_sizes) == {"RBC"} and cfg.object_sizes["RBC"]["count"] == 8
    pred = {"boxes": np.concatenate([b[:6, :2], b[:6, :2] + 80], 1), "scores": np.full(6, 0.9),
            "labels": np.zeros(6, int)}
    assert estimate_zoom(pred, (480, 640), cfg) == pytest.approx(2.0)   # cells twice their training size


def test_scale_auto_refuses_object_sizes_that_name_none_of_the_models_classes(tmp_path):
    cfg = DetectorConfig(arch="fasterrcnn_tiny", class_names=["RBC", "WBC", "Platelets"], min_size=80, max_size=96,
                         train_image_size=[80, 96], object_sizes={"red blood cell": {"size": 20.0, "count": 50}})
    pred = {"boxes": np.tile([[0., 0, 20, 20]], (6, 1)), "scores": np.full(6, 0.9), "labels": np.zeros(6, int)}
    with pytest.raises(ValueError, match="object_sizes"):
        estimate_zoom(pred, (80, 96), cfg)
    folder = tmp_path / "m"
    save_model(build_detector(cfg), cfg, folder)
    write_image(tmp_path / "imgs" / "a.png", np.zeros((80, 96, 3), np.uint8))
    with pytest.raises(DataError, match="object_sizes"):
        batch.predict(folder, [tmp_path / "imgs"], tmp_path / "out", scale="auto", progress=False)


def test_a_unet_given_a_pixel_size_names_the_pixel_size(tmp_path):
    from smearlab.segmentation.instances import build_instance_unet, save_instance_unet
    folder = save_instance_unet(build_instance_unet(base=4, depth=2), tmp_path / "seg")
    write_image(tmp_path / "imgs" / "a.png", np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="pixel-size"):
        batch.predict(folder, [tmp_path / "imgs"], tmp_path / "out", pixel_size=0.25, progress=False)


def test_fine_tuning_sees_large_corrected_fields_at_the_training_magnification(tmp_path, monkeypatch):
    """Whole, a corrected field twice the training size was shrunk to the model's input: its cells
    were learned at half the size ``smearlab predict`` (tiling it) shows them at."""
    train = make_dataset(2, seed=0, width=96, height=80)
    cfg = DetectorConfig(arch="fasterrcnn_tiny", class_names=train.class_names, min_size=80, max_size=96,
                         train_image_size=[80, 96])
    save_model(build_detector(cfg), cfg, tmp_path / "r0")
    corr = make_dataset(2, seed=1, width=192, height=160)
    seen = []
    monkeypatch.setattr(finetune, "train_detector", _no_training(seen))
    model, _ = finetune.fine_tune(tmp_path / "r0", corr, train=train, epochs=1, device="cpu")
    data = seen[0]
    k_train = input_scale((80, 96), cfg)
    assert all(input_scale(s.hw, cfg) == pytest.approx(k_train) for s in data)
    assert sum(s.hw == (80, 96) for s in data) == 2                      # training-sized images stay whole
    assert len(data) > 4 and data.num_objects >= 0.9 * (corr.num_objects + train.num_objects)
    assert list(model.detector_config.train_image_size) == [80, 96]


def test_fine_tuning_sees_small_corrected_fields_at_the_training_magnification(tmp_path, monkeypatch):
    """Whole, a corrected crop a quarter of the training size was enlarged to the model's input:
    its cells were learned at twice the size ``smearlab predict`` (at the training magnification)
    shows them at. Padded to the training size with its background, it is resized as they were."""
    train = make_dataset(2, seed=0, width=96, height=80)
    cfg = DetectorConfig(arch="maskrcnn_tiny", class_names=train.class_names, min_size=80, max_size=96,
                         train_image_size=[80, 96])
    save_model(build_detector(cfg), cfg, tmp_path / "r0")
    corr = make_dataset(2, seed=1, width=48, height=40)
    big = make_dataset(1, seed=2, width=192, height=160)
    seen = []
    monkeypatch.setattr(finetune, "train_detector", _no_training(seen))
    finetune.fine_tune(tmp_path / "r0", SmearDataset.concat([corr, big], name="corr"), train=train, epochs=1,
                       device="cpu")
    data = seen[0]
    k_train = input_scale((80, 96), cfg)
    assert all(input_scale(s.hw, cfg) == pytest.approx(k_train) for s in data)
    padded = [s for s in data if "padded_from" in s.meta]
    assert len(padded) == 2 and all(s.hw == (80, 96) for s in padded)
    for s, c in zip(padded, corr):
        np.testing.assert_array_equal(s.image[:40, :48], c.image)
        np.testing.assert_array_equal(s.boxes, c.boxes)
    # a Mask R-CNN learns every image, tiles of the large field included, with its masks
    assert all(s.has_masks and len(s.masks) == len(s.boxes) and s.masks.shape[1:] == s.hw for s in data)


def test_thresholds_tuned_on_tta_predictions_record_it(tmp_path):
    """auto_tune left Thresholds.tta False whatever the predictions were made with: thresholds
    tuned on test-time-augmented predictions were refused with tta and used without it unchecked."""
    import pickle

    from smearlab.detection.postprocess import RawPredictions
    from smearlab.detection.predict import predict
    ds = make_dataset(2, seed=0, width=96, height=80)
    cfg = DetectorConfig(arch="fasterrcnn_tiny", class_names=ds.class_names, min_size=80, max_size=96)
    model = build_detector(cfg).eval()
    made = predict(model, ds, tta=True, progress=False, score_floor=0.0)
    assert made.tta is True and made[:1].tta is True and made.copy().tta is True
    assert pickle.loads(pickle.dumps(made)).tta is True and (made + made).tta is True
    assert (made + predict(model, ds, progress=False)).tta is None          # a mix is neither
    added = made.copy()
    added.append(made[0])
    assert added.tta is None                                                 # nor one added by hand
    th = auto_tune(ds, made)
    assert th.tta is True
    predict(model, ds, tta=True, thresholds=th, progress=False)             # used as tuned
    with pytest.raises(ValueError, match="tta"):
        predict(model, ds, tta=False, thresholds=th, progress=False)
    raw = RawPredictions.for_dataset(ds, made)
    assert RawPredictions.load(raw.save(tmp_path / "raw.npz")).meta["tta"] is True
    assert auto_tune(ds, RawPredictions.load(tmp_path / "raw.npz")).tta is True
    with pytest.raises(ValueError, match="tta=False given"):
        auto_tune(ds, made, tta=False)
    assert auto_tune(ds, list(made)).tta is False and auto_tune(ds, list(made), tta=True).tta is True
