"""Grad-CAM masks: layer names, CAM maps on small CNNs, CAM -> mask steps, evaluation, detector CAM."""
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from smearlab.experiments.gradcam_masks import classical_masks, run_cam_experiment, tune_classical
from smearlab.explain import cam
from smearlab.metrics.semantic import cell_mask_scores
from smearlab.viz.plots import plot_cam_examples, plot_detector_cam


def _stage(cin, cout, stride):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.ReLU())


class SmallCNN(nn.Module):
    """Random small CNN with CellClassifier's layout (features.stem .. layer4, pool, head)."""

    def __init__(self, k=3):
        super().__init__()
        self.features = nn.Sequential(OrderedDict([
            ("stem", _stage(3, 8, 2)), ("layer1", _stage(8, 8, 1)), ("layer2", _stage(8, 16, 2)),
            ("layer3", _stage(16, 16, 2)), ("layer4", _stage(16, 32, 1))]))
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.head = nn.Linear(32, k)

    def forward(self, x):
        return self.head(self.pool(self.features(x)))


class RedDetector(nn.Module):
    """Class 0 logit = mean redness (R - (G + B) / 2), class 1 = its negative: the evidence for
    class 0 lies exactly on the red pixels."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(OrderedDict([("layer1", nn.Conv2d(3, 1, 1, bias=False)),
                                                   ("layer2", nn.Conv2d(1, 1, 1, bias=False))]))
        with torch.no_grad():
            self.features.layer1.weight.copy_(torch.tensor([1.0, -0.5, -0.5]).view(1, 3, 1, 1))
            self.features.layer2.weight.fill_(1.0)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.head = nn.Linear(1, 2, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([[1.0], [-1.0]]))
        self.input_size = 32

    def forward(self, x):
        return self.head(self.pool(self.features(x)))


def _red_square(h, w, y0, x0, side):
    img = np.full((h, w, 3), 40, np.uint8)
    img[y0:y0 + side, x0:x0 + side] = (220, 30, 30)
    return img


# -- CAM -> mask ---------------------------------------------------------------------------------
def test_cam_to_mask_thresholds_relative_to_max_then_dilates_with_5x5_box():
    c = np.zeros((40, 40), np.float32)
    c[10:20, 12:18] = 2.0          # the blob: at the maximum
    c[10:20, 18:22] = 0.9          # below 0.5 * max: not part of the mask
    c[30:32, 30:32] = 1.5          # a second, smaller blob above the threshold
    expected = np.zeros((40, 40), bool)
    expected[8:22, 10:20] = True   # blob grown by 2 px on each side (5x5 box)
    assert np.array_equal(cam.cam_to_mask(c, 0.5, 5), expected)  # largest component only
    both = cam.cam_to_mask(c, 0.5, 5, largest=False)
    second = np.zeros_like(expected)
    second[28:34, 28:34] = True
    assert np.array_equal(both, expected | second)
    # a higher threshold drops the second blob even when all components are kept
    assert np.array_equal(cam.cam_to_mask(c, 0.8, 5, largest=False), expected)
    # no dilation: the thresholded blob itself
    assert cam.cam_to_mask(c, 0.5, 0).sum() == 60


def test_cam_to_mask_fills_holes_batches_and_handles_empty_maps():
    ring = np.zeros((30, 30))
    ring[5:25, 5:25] = 1.0
    ring[10:20, 10:20] = 0.0
    assert cam.cam_to_mask(ring, 0.5, 0).sum() == 400
    assert cam.cam_to_mask(ring, 0.5, 0, fill_holes=False).sum() == 300
    out = cam.cam_to_mask(np.stack([ring, np.zeros((30, 30))]), 0.5, 3)
    assert out.shape == (2, 30, 30) and out[0].sum() > 400 and not out[1].any()
    with pytest.raises(ValueError, match="rel_threshold"):
        cam.cam_to_mask(ring, 0.0)
    with pytest.raises(ValueError, match="dilate"):
        cam.cam_to_mask(ring, 0.5, -1)
    with pytest.raises(ValueError, match="cam must be"):
        cam.cam_to_mask(np.zeros(5))


# -- layers --------------------------------------------------------------------------------------
def test_unknown_layer_name_lists_valid_layers():
    m = SmallCNN()
    names = cam.layer_names(m)
    assert {"features.layer2", "features.layer3", "features.layer4"} <= set(names)
    assert "head" not in names and "pool" not in names and "" not in names
    assert cam.layer_names(m, max_depth=2) == ["features", "features.stem", "features.layer1", "features.layer2",
                                               "features.layer3", "features.layer4"]
    with pytest.raises(KeyError) as e:
        cam.resolve_layers(m, ["features.layer2", "features.layer9"])
    msg = str(e.value)
    assert "features.layer9" in msg and "not a layer" in msg and "features.layer4" in msg
    with pytest.raises(KeyError, match="not a convolutional layer"):
        cam.cam_maps(m, torch.rand(1, 3, 32, 32), layers=["head"])
    assert cam.resolve_layers(m, "features.layer3") == [m.features.layer3]


# -- classifier maps -----------------------------------------------------------------------------
def test_cam_maps_shape_and_range_on_a_small_cnn():
    torch.manual_seed(0)
    m = SmallCNN().train()
    x = torch.rand(5, 3, 40, 40)
    per = cam.layer_cams(m, x)
    assert list(per) == list(cam.DEFAULT_LAYERS)
    for v in per.values():
        assert v.shape == (5, 40, 40) and v.min() >= 0 and v.max() <= 1
    total = cam.cam_maps(m, x)
    assert total.shape == (5, 40, 40) and total.dtype == np.float32
    assert total.min() >= 0 and total.max() <= len(cam.DEFAULT_LAYERS) + 1e-5
    assert np.allclose(total, sum(per.values()), atol=1e-5)
    assert m.training  # mode restored
    # uint8 HWC arrays give the same maps as the float tensor; one target per image is accepted
    arr = (x.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    assert cam.cam_maps(m, arr, target=[0, 1, 2, 0, 1]).shape == (5, 40, 40)
    with pytest.raises(ValueError, match="target has 2 entries for 5 images"):
        cam.cam_maps(m, x, target=[0, 1])


def test_gradcam_highlights_the_evidence_for_the_class():
    m = RedDetector()
    img = _red_square(32, 32, 4, 18, 8)
    c = cam.cam_maps(m, img[None], layers=["features.layer1", "features.layer2"], target=0)[0]
    mask = cam.cam_to_mask(c, 0.5, 1)
    truth = np.zeros((32, 32), bool)
    truth[4:12, 18:26] = True
    iou = (mask & truth).sum() / (mask | truth).sum()
    assert iou > 0.8
    # class 1 has only negative evidence: Grad-CAM (ReLU) gives an empty map
    assert cam.cam_maps(m, img[None], layers=["features.layer1"], target=1).max() == 0


def test_cam_masks_map_back_to_each_images_own_pixels_and_evaluate():
    m = RedDetector()
    imgs = [_red_square(40, 64, 6, 40, 12), _red_square(32, 32, 10, 4, 10)]
    sems = []
    for img in imgs:
        s = np.zeros(img.shape[:2], np.uint8)
        red = img[..., 0] > 200
        s[red] = 1
        ys, xs = np.nonzero(red)
        s[ys.min() + 3:ys.max() - 2, xs.min() + 3:xs.max() - 2] = 2  # a nucleus inside the cell
        sems.append(s)
    res = cam.cam_masks(m, imgs, layers=["features.layer1"], target=0, rel_threshold=0.5, dilate=1)
    assert [c.shape for c in res.cams] == [(40, 64), (32, 32)]
    assert [k.shape for k in res.masks] == [(40, 64), (32, 32)]
    assert res.targets == [0, 0] and res.layers == ["features.layer1"]
    scores = cell_mask_scores(sems, res.masks, per_image=True)
    assert scores["cell_dice"] > 0.8 and scores["n"] == 2
    assert scores["nucleus_dice"] < scores["cell_dice"]  # the nucleus is a part of the highlighted cell
    assert len(scores["per_image"]["cell_iou"]) == 2
    import matplotlib
    matplotlib.use("Agg")
    fig = plot_cam_examples(imgs, res, sems, classical=res.masks, class_names=["red", "other"])
    assert len(fig.axes) == 2 * 4 and "red" in fig.axes[0].get_title()


def test_evaluate_cam_masks_known_values_and_errors():
    sem = np.zeros((20, 20), np.uint8)
    sem[0:10, 0:10] = 1
    sem[0:5, 0:5] = 2
    pred = sem > 0
    r = cell_mask_scores([sem], [pred])
    assert r["cell_dice"] == pytest.approx(1.0) and r["cell_iou"] == pytest.approx(1.0)
    assert r["nucleus_dice"] == pytest.approx(2 * 25 / (100 + 25))
    assert r["nucleus_iou"] == pytest.approx(25 / 100)
    with pytest.raises(ValueError, match="shape"):
        cell_mask_scores([sem], [pred[:10]])
    with pytest.raises(ValueError, match="1 masks for 2"):
        cell_mask_scores([sem, sem], [pred])
    best = cam.tune_cam_masks([sem.astype(np.float32)], [sem], thresholds=(0.4, 0.9), dilate=0)
    assert best["rel_threshold"] == 0.4 and best["layers"] is None and best["score"] == pytest.approx(1.0)
    assert [r["rel_threshold"] for r in best["table"]] == [0.4, 0.9] and best["table"][1]["cell_dice"] < 1.0


def test_tune_cam_masks_picks_the_layer_set_and_threshold_that_match_the_cell():
    sem = np.zeros((24, 24), np.uint8)
    sem[4:16, 4:16] = 1
    sem[8:12, 8:12] = 2
    good = np.zeros((24, 24), np.float32)
    good[4:16, 4:16] = 1.0
    good[8:12, 8:12] = 2.0  # hottest on the nucleus
    off = np.zeros((24, 24), np.float32)
    off[16:24, 16:24] = 1.0  # a layer looking elsewhere
    per = {"a": [good], "b": [off]}
    res = cam.tune_cam_masks(per, [sem], layer_sets=[["b"], ["a"], ["a", "b"]], thresholds=(0.4, 0.8), dilate=0)
    assert res["layers"] == ["a"] and res["rel_threshold"] == 0.4 and res["score"] == pytest.approx(1.0)
    nuc = cam.tune_cam_masks(per, [sem], layer_sets=[["a"]], thresholds=(0.4, 0.8), dilate=0, key="nucleus_dice")
    assert nuc["rel_threshold"] == 0.8 and nuc["score"] == pytest.approx(1.0)
    with pytest.raises(KeyError, match="not computed"):
        cam.tune_cam_masks(per, [sem], layer_sets=[["c"]])


def test_classical_baseline_tuned_on_synthetic_crops():
    from smearlab.data.synthetic import make_wbc_crops
    crops = make_wbc_crops(4, seed=1, size=64)
    masks = classical_masks(crops, channel="saturation")
    assert len(masks) == 4 and all(m.shape == (64, 64) and m.dtype == bool for m in masks)
    res = tune_classical(crops, crops, [{"hull": False, "grow": 0}, {"hull": True, "grow": 6}])
    assert len(res["table"]) == 2
    # the hull grown around the stained nucleus covers the cell better; the bare region fits the nucleus
    assert res["cell_dice"]["params"] == {"hull": True, "grow": 6}
    assert res["table"][1]["cell_dice"] > res["table"][0]["cell_dice"]
    assert res["table"][0]["nucleus_dice"] > res["table"][1]["nucleus_dice"]


def test_select_cam_masks_equals_a_fresh_cam_masks_run_on_those_layers():
    torch.manual_seed(0)
    m = SmallCNN()
    imgs = [_red_square(40, 64, 6, 40, 12), _red_square(32, 32, 10, 4, 10)]
    every = cam.cam_masks(m, imgs, layers=list(cam.LAYER_SETS[3]), dilate=3, size=48)
    some = ["features.layer3", "features.layer4"]
    fresh = cam.cam_masks(m, imgs, layers=some, rel_threshold=0.3, dilate=3, size=48)
    picked = cam.select_cam_masks(every, some, 0.3)
    assert picked.layers == some and picked.rel_threshold == 0.3 and picked.targets == fresh.targets
    for a, b in zip(picked.cams, fresh.cams):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert all(np.array_equal(a, b) for a, b in zip(picked.masks, fresh.masks))


def test_run_cam_experiment_end_to_end_on_synthetic_crops():
    from smearlab.data.synthetic import make_wbc_crops
    data = make_wbc_crops(20, seed=0, size=48)
    exp = run_cam_experiment(data, size=32, width=4, epochs=1, device="cpu", thresholds=(0.3, 0.5),
                                 layer_sets=[cam.DEFAULT_LAYERS], classical_grid=[{"grow": 4}])
    s = exp.summary()
    assert s["split"]["train"] + s["split"]["test"] == 20 and len(exp.cam_test.masks) == len(exp.test)
    assert s["layers"] == list(cam.DEFAULT_LAYERS) and s["rel_threshold"] in (0.3, 0.5)
    for k in ("cell_dice", "cell_iou", "classical_cell_dice", "classical_cell_iou", "nucleus_dice"):
        assert 0.0 <= s[k] <= 1.0
    assert 0.0 <= s["classifier_accuracy"] <= 1.0 and s["classical_cell_params"] == {"grow": 4}
    assert "| Grad-CAM (cell threshold) |" in exp.table()


# -- detector ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_detector():
    from smearlab.detection import DetectorConfig, build_detector
    torch.manual_seed(0)
    return build_detector(DetectorConfig(arch="fasterrcnn_tiny", class_names=["RBC", "WBC", "Platelets"],
                                         min_size=128, max_size=200, score_floor=0.0)).eval()


def test_detector_cam_explains_a_box_on_a_tiny_detector(tiny_detector):
    from smearlab.data.synthetic import generate_sample
    from smearlab.detection import predict
    s = generate_sample(0, width=160, height=120)
    names = cam.layer_names(tiny_detector)
    assert "backbone.body.layer3" in names and "backbone.body" not in names and "backbone.fpn" not in names
    assert cam.detector_layers(tiny_detector) == ["backbone.body.layer2", "backbone.body.layer3"]
    res = cam.detector_cam(tiny_detector, s.image, 0)
    assert res.cam.shape == (120, 160) and res.cam.min() >= 0 and res.cam.max() <= 2 + 1e-5
    assert res.cam.max() > 0
    assert set(res.per_layer) == set(res.layers) and res.iou == pytest.approx(1.0)
    top = predict(tiny_detector, [s.image], device="cpu", progress=False, preprocess=None)[0]
    assert np.allclose(res.box, top["boxes"][0], atol=1e-3) and res.label == int(top["labels"][0])
    # a box given by coordinates is explained through its best-matching detection
    again = cam.detector_cam(tiny_detector, s.image, top["boxes"][0] + 0.5)
    assert np.allclose(again.box, res.box, atol=1e-3)
    import matplotlib
    matplotlib.use("Agg")
    fig = plot_detector_cam(s.image, res, ["RBC", "WBC", "Platelets"])
    assert len(fig.axes) == 2 and len(fig.axes[1].patches) == 1
    with pytest.raises(ValueError, match="out of range"):
        cam.detector_cam(tiny_detector, s.image, 10_000)
    with pytest.raises(ValueError, match="no detection matching"):
        cam.detector_cam(tiny_detector, s.image, [0, 0, 2, 2])
    with pytest.raises(KeyError, match="valid layers"):
        cam.detector_cam(tiny_detector, s.image, 0, layers=["backbone.fpn"])


class _FixedBoxDetector(torch.nn.Module):
    """A torchvision-style detector whose detections are fixed boxes; each score is the mean red
    channel inside its box (a 1x1 convolution), so every detection has a gradient."""

    def __init__(self, boxes, labels, h, w):
        from torchvision.models.detection.transform import GeneralizedRCNNTransform
        super().__init__()
        self.transform = GeneralizedRCNNTransform(min(h, w), max(h, w), [0, 0, 0], [1, 1, 1])
        self.backbone = torch.nn.Module()
        conv = torch.nn.Conv2d(3, 1, 1, bias=False)
        with torch.no_grad():
            conv.weight.zero_()
            conv.weight[0, 0] = 1.0
        self.backbone.body = torch.nn.Sequential(conv)
        self.backbone.body.return_layers = {"0": "0"}
        self.boxes, self.labels = torch.tensor(boxes, dtype=torch.float32), torch.tensor(labels)

    def forward(self, images):
        il, _ = self.transform(list(images))
        f = self.backbone.body(il.tensors)[:, 0]
        return [{"boxes": self.boxes.clone(), "labels": self.labels.clone(),
                 "scores": torch.stack([torch.sigmoid(f[k, y0:y1, x0:x1].mean() * 4 - 2)
                                        for x0, y0, x1, y1 in self.boxes.long().tolist()])}
                for k in range(len(f))]


def test_detector_cam_explains_the_detection_of_the_class_asked_for_beside_a_better_overlap():
    from smearlab.explain.cam import detector_cam
    im = np.full((100, 130, 3), 10, np.uint8)
    im[60:90, 90:120] = 240
    det = _FixedBoxDetector([[90, 60, 120, 90], [88, 58, 120, 90]], [1, 2], 100, 130)  # class 0, and class 1 over it
    r = detector_cam(det, im, [90, 60, 120, 90], label=1)  # the class-0 box overlaps better: no gradient, a crash
    assert r.label == 1 and r.box.tolist() == [88.0, 58.0, 120.0, 90.0] and r.cam.max() > 0


def test_cam_masks_take_one_target_object_for_every_image():
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    class Bright(nn.Module):
        def __init__(self):
            super().__init__()
            conv = nn.Conv2d(3, 1, 1, bias=False)
            with torch.no_grad():
                conv.weight.zero_()
                conv.weight[0, 0] = 1.0
            self.features = nn.Sequential(conv)
            self.class_names, self.input_size = ["a", "b"], 64

        def forward(self, x):
            f = self.features(x).mean((1, 2, 3))
            return torch.stack([f, -f], 1)

    im = np.full((40, 100, 3), 20, np.uint8)
    im[10:30, 70:90] = 230
    r = cam.cam_masks(Bright(), [im, im], layers="features", target=ClassifierOutputTarget(0), dilate=0,
                      rel_threshold=0.5)  # a TypeError after all the work before
    ys, xs = np.nonzero(r.masks[1])
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (70, 10, 90, 30)


def test_each_layers_map_is_filed_under_its_own_name_in_any_order_asked():
    """pytorch-grad-cam lists maps in forward order: layers asked deepest first (as the Grad-CAM
    experiment asked them) had layer1's map filed as layer4's."""
    torch.manual_seed(0)
    m = SmallCNN()
    imgs = [_red_square(32, 32, 10, 4, 10), _red_square(32, 32, 2, 18, 8)]
    asked = ["features.layer4", "features.layer2", "features.layer3"]
    both = cam.layer_cams(m, imgs, asked, target=0)
    assert list(both) == asked
    for name in asked:
        np.testing.assert_allclose(both[name], cam.layer_cams(m, imgs, [name], target=0)[name], atol=1e-5)


def test_detector_cam_lands_on_the_pixels_of_a_padded_image_and_skips_frozen_default_stages():
    """A 100 x 128 image padded to 128 x 128: cropping a stride-16 map by whole cells put the
    bright square's map 12 px too high; frozen first stages made the default layers fail with a
    broadcast error."""
    from smearlab.detection.models import DetectorConfig, build_detector
    torch.manual_seed(0)
    det = build_detector(DetectorConfig(arch="fasterrcnn_tiny", class_names=["RBC", "WBC"], min_size=100,
                                        max_size=128, score_floor=0.0)).eval()
    for mod in det.backbone.body.modules():  # a backbone that blurs brightness: its map sits on the square
        if isinstance(mod, nn.Conv2d):
            mod.weight.data.fill_(1.0 / (mod.in_channels * 9))
        if isinstance(mod, nn.BatchNorm2d):
            mod.weight.data.fill_(1), mod.bias.data.zero_(), mod.running_mean.zero_(), mod.running_var.fill_(1)
    peaks = []
    for h in (100, 128):  # padded, and a control that needs no padding
        det.transform.min_size = (h,)
        img = np.full((h, 128, 3), 30, np.uint8)
        img[66:94, 50:78] = 255
        res = cam.detector_cam(det, img, 0, layers="backbone.body.layer3")
        peaks.append(np.unravel_index(np.argmax(res.cam), res.cam.shape))
    assert abs(int(peaks[0][0]) - int(peaks[1][0])) <= 2 and abs(int(peaks[0][1]) - int(peaks[1][1])) <= 2
    assert cam.detector_layers(det) == ["backbone.body.layer2", "backbone.body.layer3"]
    for stage in ("stem", "layer1", "layer2"):  # the first stages frozen
        for p in getattr(det.backbone.body, stage).parameters():
            p.requires_grad_(False)
    res = cam.detector_cam(det, img, 0)
    assert res.layers == ["backbone.body.layer3"] and res.cam.max() > 0
    with pytest.raises(ValueError, match="frozen"):
        cam.detector_cam(det, img, 0, layers=["backbone.body.layer2", "backbone.body.layer3"])


def test_eigencam_refuses_a_class_target_and_records_no_class():
    m = SmallCNN(3).eval()
    m.input_size = 32
    imgs = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    for target in (0, [0, 2]):  # EigenCAM's map is the same for every class: a target was silently ignored
        with pytest.raises(ValueError, match="class-agnostic"):
            cam.cam_maps(m, imgs, layers=["features.layer4"], target=target, method="eigencam")
        with pytest.raises(ValueError, match="class-agnostic"):
            cam.cam_masks(m, list(imgs), layers=["features.layer4"], target=target, method="eigencam")
    r = cam.cam_masks(m, list(imgs), layers=["features.layer4"], method="eigencam")
    assert r.targets == [-1, -1] and r.cams[0].shape == (32, 32)  # no class claimed (plots read -1 as none)
    assert cam.cam_masks(m, list(imgs), layers=["features.layer4"], target=[0, 2]).targets == [0, 2]


def test_tune_cam_masks_breaks_equidistant_threshold_ties_towards_the_lower_one():
    sem = np.zeros((20, 20), np.uint8)
    sem[5:15, 5:15] = 1
    hm = (sem > 0).astype(np.float32)  # every threshold gives the same mask: all tie on the score
    for pair in [(0.3, 0.7), (0.7, 0.3), (0.4, 0.6), (0.6, 0.4), (0.2, 0.8), (0.8, 0.2)]:
        # the distances to 0.5 differ by float error (0.7 - 0.5 < 0.5 - 0.3): it decided before
        assert cam.tune_cam_masks([hm], [sem], thresholds=pair, dilate=0)["rel_threshold"] == min(pair)
    assert cam.tune_cam_masks([hm], [sem], thresholds=(0.2, 0.3, 0.7), dilate=0)["rel_threshold"] == 0.3


def test_detector_cam_explains_the_class_asked_for_when_two_classes_share_one_box():
    from smearlab.explain.cam import detector_cam
    im = np.full((100, 130, 3), 10, np.uint8)
    im[60:90, 90:120] = 240
    # RetinaNet-like: one anchor's box decoded for two classes; class 0 scores higher (listed first)
    det = _FixedBoxDetector([[90, 60, 120, 90], [90, 60, 120, 90]], [1, 2], 100, 130)
    for args in (dict(box=1), dict(box=[90, 60, 120, 90], label=1)):  # a "does not require grad" crash
        r = detector_cam(det, im, **args)
        assert r.label == 1 and r.box.tolist() == [90.0, 60.0, 120.0, 90.0] and r.cam.max() > 0
        assert r.cam[60:90, 90:120].mean() > r.cam[:50, :80].mean()
    assert detector_cam(det, im, 0).label == 0


def test_cam_masks_letterbox_with_the_classifier_s_training_fill():
    """cam_masks padded every non-square image with the median where the classifier was trained
    (and predicts) with another fill: it explained a class the model does not predict."""
    from smearlab.classification.predict import predict_classes

    class Brightness(nn.Module):  # scores the mean brightness of its input
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(OrderedDict(conv=nn.Conv2d(3, 1, 1, bias=False)))
            self.features.conv.weight.data.fill_(1 / 3)
            self.head = nn.Linear(1, 2)
            self.head.weight.data = torch.tensor([[0.0], [10.0]])
            self.head.bias.data = torch.tensor([0.0, -6.0])
            self.class_names, self.input_size = ["dark", "bright"], 32
            self.crop_cut = {"source": "boxes", "pad": 0.1, "fill": [0, 0, 0]}   # trained on black-padded crops

        def forward(self, x):
            return self.head(self.features(x).mean((2, 3)))
    m = Brightness().eval()
    img = np.full((16, 32, 3), 255, np.uint8)   # white, half the square: mean 0.5 on black, ~1 on the median
    assert int(predict_classes(m, [img], device="cpu").labels[0]) == 0
    assert list(cam.cam_masks(m, [img], layers="features.conv").targets) == [0]


def test_detector_cam_refuses_a_sample_already_preprocessed(tiny_detector):
    """predict refuses a Sample its pipeline already processed; detector_cam processed it twice and
    explained a detection of an image the model never sees."""
    import copy

    from smearlab.data.synthetic import generate_sample
    from smearlab.preprocess import Preprocess
    det = copy.deepcopy(tiny_detector)
    pre = Preprocess([("gamma", {"g": 2.0})])
    det.preprocess_spec = pre.to_dict()
    s = generate_sample(0, width=160, height=120)
    cam.detector_cam(det, s, 0)                  # a raw sample: processed once
    with pytest.raises(ValueError, match="already preprocessed"):
        cam.detector_cam(det, pre.apply(s), 0)
