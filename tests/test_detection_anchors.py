"""Anchors fitted to the cells: coverage (best-possible recall) on known boxes, and fitting."""
import numpy as np
import pytest
import torch

from smearlab.data import Sample, SmearDataset
from smearlab.detection import DetectorConfig, build_detector
from smearlab.detection.anchors import (anchor_report, anchor_shapes, best_possible_recall, box_shapes, fit_anchors,
                                        fitted_by_default, shape_iou)


def _dataset(sizes_by_class, hw=(480, 640), per_image=4, images=6, seed=0):
    """Square-ish boxes of known sizes per class, placed at random in ``hw`` images."""
    rng = np.random.default_rng(seed)
    names = list(sizes_by_class)
    samples = []
    for i in range(images):
        boxes, labels = [], []
        for k, (name, (w, h)) in enumerate(sizes_by_class.items()):
            for _ in range(per_image):
                x, y = rng.uniform(0, hw[1] - w), rng.uniform(0, hw[0] - h)
                boxes.append([x, y, x + w, y + h])
                labels.append(k)
        samples.append(Sample(f"s{i}", boxes=boxes, labels=labels, size=hw))
    return SmearDataset(samples, names, "known")


def test_shape_iou_and_recall_on_known_shapes():
    anchors = np.array([[10.0, 10.0], [20.0, 40.0]])
    wh = np.array([[10.0, 10.0], [20.0, 20.0], [100.0, 100.0]])
    iou = shape_iou(wh, anchors)
    assert iou[0, 0] == pytest.approx(1.0) and iou[1, 1] == pytest.approx(0.5) and iou[2].max() < 0.1
    assert best_possible_recall({"a": wh}, anchors) == {"a": pytest.approx(2 / 3)}
    assert best_possible_recall({"none": np.zeros((0, 2))}, anchors) == {"none": None}


def test_anchor_shapes_follow_torchvision():
    cfg = DetectorConfig(arch="fasterrcnn_tiny", class_names=["a"], anchor_sizes=[20, 40, 80], aspect_ratios=[1.0, 4.0])
    wh = anchor_shapes(cfg)
    assert wh.shape == (6, 2)
    # torchvision: height = size * sqrt(ratio), width = size / sqrt(ratio)
    np.testing.assert_allclose(wh[1], [10.0, 40.0])


def test_fitting_covers_every_class_the_defaults_miss():
    ds = _dataset({"platelet": (30, 28), "rbc": (95, 90), "wbc": (190, 200)})
    cfg = DetectorConfig(arch="fasterrcnn_tiny", class_names=ds.class_names, min_size=480, max_size=640)
    before = best_possible_recall(box_shapes(ds, cfg), anchor_shapes(cfg))
    assert before["wbc"] < 0.5  # the tiny model's 16/32/64 anchors are far too small for white cells
    fitted = fit_anchors(ds, cfg)
    assert len(fitted.anchor_sizes) == 3 and cfg.anchor_sizes is None  # the input config is not changed
    sizes = [s[0] for s in fitted.anchor_sizes]
    assert sizes == sorted(sizes) and abs(sizes[0] - 29) <= 2 and abs(sizes[2] - 195) <= 5
    report = anchor_report(ds, cfg, fitted)
    assert all(v == 1.0 for v in report["after"].values()), report
    assert report["boxes"] == {"platelet": 24, "rbc": 24, "wbc": 24}
    build_detector(fitted)  # the fitted anchors make a working model


def test_boxes_are_measured_at_the_model_input_scale():
    ds = _dataset({"cell": (40, 40)}, hw=(240, 320))
    cfg = DetectorConfig(arch="fasterrcnn_tiny", class_names=["cell"], min_size=480, max_size=640)
    np.testing.assert_allclose(box_shapes(ds, cfg)["cell"], 80.0, rtol=1e-5)  # images are upscaled x2


def test_fitted_by_default_and_the_option_to_keep_the_defaults():
    ds = _dataset({"cell": (60, 60)})
    cfg = DetectorConfig(arch="fasterrcnn_tiny", class_names=["cell"], min_size=480, max_size=640)
    assert fitted_by_default(cfg, ds).anchor_sizes is not None
    assert fitted_by_default(cfg, ds, "default") is cfg
    named = DetectorConfig(arch="fasterrcnn_tiny", class_names=["cell"], anchor_sizes=[8, 16, 32])
    assert fitted_by_default(named, ds) is named  # anchors the user named are kept
    with pytest.raises(ValueError, match="anchors must be"):
        fitted_by_default(cfg, ds, "auto")
    with pytest.raises(ValueError, match="no boxes"):
        fit_anchors(SmearDataset([Sample("e", size=(10, 10))], ["cell"], "empty"), cfg)


def test_a_zero_size_box_is_refused_not_fitted():
    """One zero-width box among two gave aspect ratios in the millions and a recall of 0."""
    from smearlab.data import Sample, SmearDataset
    from smearlab.detection.anchors import fit_anchors
    from smearlab.detection.models import DetectorConfig
    ds = SmearDataset([Sample("a", _image=np.zeros((100, 100, 3), np.uint8), boxes=[[10, 10, 30, 30], [40, 40, 40, 60]],
                             labels=[0, 0])], ["RBC"], name="made")
    with pytest.raises(ValueError, match=r"'a': box \[40.0, 40.0, 40.0, 60.0\]"):
        fit_anchors(ds, DetectorConfig(arch="fasterrcnn_tiny", class_names=["RBC"]))


def test_coverage_counts_anchors_where_they_sit_on_the_grid():
    """The shape-only figure centred each box on an anchor: on the MobileNet detector it said 1.0
    for CBC's platelets where 0.73 have an anchor on its stride-32 grid."""
    from smearlab.data import Sample, SmearDataset
    from smearlab.detection.anchors import grid_recall
    ds = _dataset({"p": (30, 28), "w": (190, 200)})
    cfg = DetectorConfig(arch="fasterrcnn_tiny", class_names=ds.class_names, min_size=480, max_size=640)
    grid, shape = grid_recall(ds, cfg), best_possible_recall(box_shapes(ds, cfg), anchor_shapes(cfg))
    assert grid["p"] < shape["p"] and all(grid[n] <= shape[n] + 1e-9 for n in grid)
    # a box that is an anchor: centred on a grid point of the 32 px level (stride 8 in the tiny model)
    exact = SmearDataset([Sample("a", boxes=[[64 - 16, 64 - 16, 64 + 16, 64 + 16]], labels=[0], size=(480, 640))],
                         ["c"])
    assert grid_recall(exact, DetectorConfig(arch="fasterrcnn_tiny", class_names=["c"], min_size=480,
                                             max_size=640)) == {"c": 1.0}


def test_fitted_anchors_are_used_only_where_they_cover_better(monkeypatch):
    from smearlab.detection import anchors
    ds = _dataset({"p": (30, 28), "r": (95, 90)})
    cfg = DetectorConfig(arch="fasterrcnn_tiny", class_names=ds.class_names, min_size=480, max_size=640)
    assert fitted_by_default(cfg, ds).anchor_sizes is not None            # the tiny model's miss the cells
    monkeypatch.setattr(anchors, "grid_recall", lambda d, c: {"p": 0.9, "r": 1.0})   # a tie: the arch's stay
    assert fitted_by_default(cfg, ds) is cfg


def test_boxes_are_scaled_to_the_size_the_model_resizes_to_and_the_fine_level_has_no_anchors():
    """The recall grid rounded the resized sides (torchvision rounds down) and scaled boxes by one
    factor; a tiny model with a stride-4 level failed with '4 feature levels but 3 anchor sets'."""
    from smearlab.data import Sample, SmearDataset
    from smearlab.detection import DetectorConfig, build_detector
    from smearlab.detection.anchors import _resized, fitted_by_default, grid_recall
    cfg = DetectorConfig(arch="fasterrcnn_tiny", class_names=["cell"], min_size=96, max_size=200)
    model = build_detector(cfg).eval()
    for hw in ((97, 131), (131, 97), (480, 640), (575, 575)):
        images, _ = model.transform([torch.zeros(3, *hw)])
        assert _resized(hw, cfg) == tuple(images.image_sizes[0]), hw
    img = np.zeros((160, 200, 3), np.uint8)
    ds = SmearDataset([Sample("a", boxes=[[10, 10, 30, 30], [50, 60, 58, 66]], labels=[0, 0], _image=img)], ["cell"])
    fine = DetectorConfig(arch="fasterrcnn_tiny", class_names=["cell"], min_size=160, max_size=256,
                          fine_level="lateral")
    assert set(grid_recall(ds, fine)) == {"cell"}
    fitted_by_default(fine, ds)
