"""Batched and tiled inference; the agreed prediction form."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from smearlab.data.synthetic import make_dataset
from smearlab.detection.models import DetectorConfig, build_detector
from smearlab.detection.predict import merge_tiles, predict, predict_fields, tile_windows

H, W = 300, 500
# (x0, y0, x1, y1, label 0-based, score)
OBJECTS = np.array([
    [30, 30, 70, 70, 0, 0.9],      # inside the first tile only
    [100, 100, 370, 160, 1, 0.8],  # wider than a tile: cut in three tiles, whole in none
    [240, 200, 275, 240, 0, 0.7],  # in the overlap of tiles: seen whole twice
    [420, 20, 460, 60, 2, 0.95],   # inside the last tile only
    [110, 240, 160, 290, 0, 0.6],  # crosses a tile border, whole in the neighbour tile
], np.float32)


class TileModel:
    """Fake detector: the image encodes x in channel 0 and y in channel 1, so a tile knows where
    it is; it returns the known objects clipped to the tile (torchvision labels, 1-based)."""

    def __init__(self):
        self.calls = []

    def __call__(self, images):
        outs = []
        for im in images:
            x0, y0 = float(im[0, 0, 0]), float(im[1, 0, 0])
            h, w = im.shape[-2:]
            self.calls.append((x0, y0, w, h))
            b = OBJECTS[:, :4].copy()
            c = b.copy()
            c[:, [0, 2]] = np.clip(c[:, [0, 2]], x0, x0 + w)
            c[:, [1, 3]] = np.clip(c[:, [1, 3]], y0, y0 + h)
            area = lambda r: (r[:, 2] - r[:, 0]) * (r[:, 3] - r[:, 1])  # noqa: E731
            vis = area(c) / area(b)
            keep = vis > 0.1
            c = c[keep] - np.array([x0, y0, x0, y0], np.float32)
            outs.append({"boxes": torch.from_numpy(c), "scores": torch.from_numpy(OBJECTS[keep, 5] * (0.9 + 0.1 * vis[keep])),
                         "labels": torch.from_numpy(OBJECTS[keep, 4].astype(np.int64) + 1)})
        return outs


def coord_image():
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    return torch.from_numpy(np.stack([xx, yy, np.zeros_like(xx)]))


def test_tile_windows_cover_with_overlap():
    wins = tile_windows(H, W, 256, 0.2)
    xs = sorted({w[0] for w in wins})
    assert xs[0] == 0 and max(w[2] for w in wins) == W and max(w[3] for w in wins) == H
    assert all(b - a <= 256 * 0.8 + 1 for a, b in zip(xs, xs[1:]))
    assert tile_windows(100, 120, 256) == [(0, 0, 120, 100)]


def test_tiled_predict_merges_cut_objects():
    model = TileModel()
    pred = predict(model, [coord_image()], tile=256, overlap=0.2, batch_size=3, progress=False)[0]
    assert len(model.calls) == len(tile_windows(H, W, 256, 0.2)) > 2
    assert pred["boxes"].dtype == np.float32 and pred["labels"].dtype == np.int64
    assert len(pred["boxes"]) == len(OBJECTS), pred
    for obj in OBJECTS:
        d = np.abs(pred["boxes"] - obj[:4]).max(1)
        i = int(np.argmin(d))
        assert d[i] <= 1.5, (obj, pred["boxes"])
        assert pred["labels"][i] == int(obj[4])
    # the untiled pass gives the same objects
    whole = predict(model, [coord_image()], progress=False)[0]
    assert len(whole["boxes"]) == len(OBJECTS)


def test_merge_tiles_duplicates_and_neighbours():
    wins = [(0, 0, 100, 100), (60, 0, 160, 100)]
    boxes = np.array([[70, 10, 90, 30], [70, 10, 90, 31],      # same object seen whole twice
                      [50, 50, 100, 70], [60, 50, 120, 70],    # cut object: union 50..120
                      [62, 80, 80, 95], [82, 80, 99, 95]], np.float32)  # two touching cells, kept apart
    out = merge_tiles(boxes, np.array([.9, .8, .7, .6, .5, .5]), np.array([0, 0, 1, 1, 0, 0]),
                      np.array([0, 1, 0, 1, 1, 0]), wins, (100, 160))
    got = sorted(map(tuple, out["boxes"].round(1).tolist()))
    assert (50.0, 50.0, 120.0, 70.0) in got
    assert len(got) == 4, got
    assert len(merge_tiles(np.zeros((0, 4)), [], [], [], wins, (100, 160))["boxes"]) == 0


def test_predict_form_real_model():
    ds = make_dataset(3, seed=0, width=128, height=128)
    cfg = DetectorConfig(arch="fasterrcnn_tiny", class_names=ds.class_names, min_size=128, max_size=128)
    torch.manual_seed(0)
    m = build_detector(cfg)
    preds = predict(m, ds, batch_size=2, score_floor=0.0, progress=False)
    assert m.training  # mode restored
    assert len(preds) == len(ds)
    for p in preds:
        assert set(p) == {"boxes", "scores", "labels"}
        assert p["boxes"].dtype == np.float32 and p["boxes"].shape == (len(p["scores"]), 4)
        assert p["scores"].dtype == np.float32 and p["labels"].dtype == np.int64
        assert ((p["labels"] >= 0) & (p["labels"] < len(ds.class_names))).all()
        assert (np.diff(p["scores"]) <= 0).all()
    assert sum(len(p["boxes"]) for p in preds) > 0
    assert m.roi_heads.score_thresh == pytest.approx(cfg.score_floor)  # restored
    # one image given as an array, tiled on a real model
    one = predict(m, ds[0].image, tile=96, progress=False)
    assert len(one) == 1 and one[0]["boxes"].shape[1] == 4


def test_tiles_are_resized_like_the_whole_image():
    """A tile must reach the network at the scale the whole field would (the training scale)."""
    torch.manual_seed(0)
    model = build_detector(DetectorConfig(arch="fasterrcnn_tiny", class_names=["a"], min_size=150, max_size=200))
    seen = []
    resize = model.transform.resize

    def spy(image, target=None):
        out = resize(image, target)
        seen.append((tuple(image.shape[-2:]), tuple(out[0].shape[-2:])))
        return out

    model.transform.resize = spy
    image = np.zeros((300, 400, 3), np.uint8)  # whole image: scale min(150/300, 200/400) = 0.5
    predict(model, [image], tile=200, overlap=0.1, progress=False)
    assert seen and all(out == (inp[0] // 2, inp[1] // 2) for inp, out in seen)
    assert model.transform.fixed_size is None  # restored


def _resize_spied(low: int, high: int):
    """A tiny detector trained (as recorded) on 480x640 images, resizing to ``low``/``high``, and
    the list its every resize appends its factor to."""
    model = build_detector(DetectorConfig(arch="fasterrcnn_tiny", class_names=["a"], min_size=low, max_size=high,
                                          train_image_size=[480, 640])).eval()
    seen = []
    resize = model.transform.resize

    def spy(image, target=None):
        out = resize(image, target)
        seen.append(out[0].shape[-1] / image.shape[-1])
        return out
    model.transform.resize = spy
    return model, seen


def test_automatic_tiles_are_seen_at_the_training_magnification():
    """smearlab predict cuts a large field into square tiles of the training images' longer side;
    resized as tiles, a 640 px tile of a model trained on 480x640 images reached it at 0.75 of
    the training magnification (its short side set to 480)."""
    from smearlab.detection.models import auto_tile
    for low, high, factor in ((480, 640, 1.0), (800, 1333, 800 / 480)):
        model, seen = _resize_spied(low, high)
        field = np.full((960, 1280, 3), 200, np.uint8)
        assert auto_tile(model.detector_config, field.shape[:2]) == 640
        predict_fields(model, [field], batch_size=4)
        assert seen and all(f == pytest.approx(factor, rel=1e-3) for f in seen)


def test_a_field_smaller_than_the_training_images_is_seen_at_the_training_magnification():
    """Predicted whole, a field smaller than the training images was enlarged to the model's input
    size: a quarter of a training field showed its cells twice their training size."""
    for low, high, factor in ((480, 640, 1.0), (800, 1333, 800 / 480)):
        model, seen = _resize_spied(low, high)
        for hw in ((240, 320), (320, 240), (120, 160), (480, 640)):
            seen.clear()
            predict_fields(model, [np.full((*hw, 3), 200, np.uint8)])
            assert seen and all(f == pytest.approx(factor, rel=1e-2) for f in seen), (hw, seen)


class _DarkDiscs(torch.nn.Module):
    """A stand-in detector with exact answers: one box per dark connected region, no resizing,
    so tiled prediction must give the whole image's boxes."""

    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1))

    def forward(self, images):
        from scipy import ndimage as ndi
        out = []
        for im in images:
            lab, _ = ndi.label(im.float().mean(0).numpy() < 0.5)
            b = torch.tensor([[sl[1].start, sl[0].start, sl[1].stop, sl[0].stop] for sl in ndi.find_objects(lab)],
                             dtype=torch.float32).reshape(-1, 4)
            out.append({"boxes": b, "scores": torch.full((len(b),), 0.9), "labels": torch.ones(len(b), dtype=torch.int64)})
        return out


def test_tiles_keep_two_diagonal_neighbours_apart_and_need_an_overlap():
    """Two cells 1 px apart across a tile corner were fused into one box (a sliver of one, in the
    corner both tiles share, was covered by the other); tiles edge to edge cut a cell on a seam
    into two."""
    h = w = 1000
    img = np.full((h, w, 3), 230, np.uint8)
    yy, xx = np.mgrid[:h, :w]
    truth = [[612, 697, 672, 757], [569, 745, 629, 805]]
    for x0, y0, x1, y1 in truth:
        img[(yy - (y0 + y1 - 1) / 2) ** 2 + (xx - (x0 + x1 - 1) / 2) ** 2 <= 30 ** 2] = 40
    whole = predict(_DarkDiscs(), [img], progress=False)[0]["boxes"]
    assert sorted(whole.astype(int).tolist()) == sorted(truth)
    tiled = predict(_DarkDiscs(), [img], tile=256, overlap=0.2, progress=False)[0]["boxes"]
    assert sorted(tiled.astype(int).tolist()) == sorted(truth)
    with pytest.raises(ValueError, match="overlap must be a fraction in \\(0, 1\\) when tiling"):
        predict(_DarkDiscs(), [img], tile=200, overlap=0.0, progress=False)


# -- test-time augmentation -----------------------------------------------------------------------
def test_fuse_boxes_weighted_mean_and_view_count():
    from smearlab.detection.postprocess import fuse_boxes

    views = [
        {"boxes": np.array([[10, 10, 30, 30], [100, 100, 120, 120]], np.float32),
         "scores": np.array([0.8, 0.6], np.float32), "labels": np.array([0, 1])},
        {"boxes": np.array([[12, 10, 32, 30]], np.float32), "scores": np.array([0.4], np.float32),
         "labels": np.array([0])},
        {"boxes": np.array([[11, 10, 31, 30]], np.float32), "scores": np.array([0.2], np.float32),
         "labels": np.array([1])},  # same place, other class: not fused with class 0
    ]
    f = fuse_boxes(views, iou=0.55)
    assert f["boxes"].dtype == np.float32 and f["labels"].dtype == np.int64
    assert len(f["boxes"]) == 3
    i = int(np.flatnonzero(f["labels"] == 0)[0])
    # score-weighted corners: x0 = (0.8 * 10 + 0.4 * 12) / 1.2
    np.testing.assert_allclose(f["boxes"][i], [(0.8 * 10 + 0.4 * 12) / 1.2, 10, (0.8 * 30 + 0.4 * 32) / 1.2, 30],
                               rtol=1e-5)
    assert f["scores"][i] == pytest.approx((0.8 + 0.4) / 3)  # two of three views found it
    lone = np.flatnonzero(f["labels"] == 1)
    np.testing.assert_allclose(np.sort(f["scores"][lone]), [0.2 / 3, 0.6 / 3], rtol=1e-5)
    assert np.all(np.diff(f["scores"]) <= 0)
    # three boxes of one view on the same object cannot score above the best of them
    same = [{"boxes": np.array([[0, 0, 10, 10]] * 3, np.float32), "scores": np.array([0.9, 0.9, 0.9], np.float32),
             "labels": np.zeros(3, np.int64)}, {"boxes": np.zeros((0, 4), np.float32),
                                                 "scores": np.zeros(0, np.float32), "labels": np.zeros(0, np.int64)}]
    assert fuse_boxes(same)["scores"][0] == pytest.approx(0.9)
    assert len(fuse_boxes([same[1]])["boxes"]) == 0
    assert len(fuse_boxes([views[0]], max_dets=1)["boxes"]) == 1
    # a low-scoring box that overlaps a confident cluster drags its mean down unless skipped
    junk = [{"boxes": np.array([[0, 0, 10, 10]], np.float32), "scores": np.array([0.9], np.float32),
             "labels": np.zeros(1, np.int64)},
            {"boxes": np.array([[0, 0, 10, 10], [0, 0, 10, 11]], np.float32),
             "scores": np.array([0.9, 0.02], np.float32), "labels": np.zeros(2, np.int64)}]
    assert fuse_boxes(junk)["scores"][0] == pytest.approx((0.9 + 0.9 + 0.02) / 3)
    assert fuse_boxes(junk, skip=0.05)["scores"][0] == pytest.approx(0.9)
    # clusters whose scores are all zero take the plain mean of their boxes
    zero = [{"boxes": np.array([[0, 0, 10, 10]], np.float32), "scores": np.zeros(1, np.float32),
             "labels": np.zeros(1, np.int64)},
            {"boxes": np.array([[2, 0, 12, 10]], np.float32), "scores": np.zeros(1, np.float32),
             "labels": np.zeros(1, np.int64)}]
    np.testing.assert_allclose(fuse_boxes(zero, iou=0.5)["boxes"][0], [1, 0, 11, 10])


def test_fuse_boxes_refuses_bad_input():
    from smearlab.detection.postprocess import fuse_boxes

    with pytest.raises(ValueError, match="at least one view"):
        fuse_boxes([])
    with pytest.raises(ValueError, match="iou"):
        fuse_boxes([{"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, int)}], iou=1.0)
    with pytest.raises(ValueError, match="masks"):
        fuse_boxes([{"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, int),
                     "masks": np.zeros((0, 4, 4), bool)}])


class BlobModel:
    """Fake detector: the box of the bright pixels of channel 0 (score 0.9, class 1) and a false
    box at a fixed place of whatever view it is shown (score 0.8, class 2)."""

    def __init__(self):
        self.shapes = []

    def __call__(self, images):
        outs = []
        for im in images:
            self.shapes.append(tuple(im.shape))
            ys, xs = np.nonzero(im[0].numpy() > 0.5)
            boxes = [[5, 5, 15, 25]]
            if len(xs):
                boxes.insert(0, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            scores, labels = [0.9, 0.8][-len(boxes):], [1, 2][-len(boxes):]
            outs.append({"boxes": torch.tensor(boxes, dtype=torch.float32), "scores": torch.tensor(scores),
                         "labels": torch.tensor(labels)})
        return outs


def test_tta_maps_flipped_views_back_and_fuses_them():
    img = torch.zeros(3, 60, 80)
    img[0, 10:20, 50:70] = 1.0  # an object off every axis of symmetry
    model = BlobModel()
    pred = predict(model, [img, img], tta=True, batch_size=8, progress=False)
    assert len(pred) == 2 and len(model.shapes) == 8  # four views of each image
    p = pred[0]
    obj = np.flatnonzero(p["labels"] == 0)
    assert len(obj) == 1  # the four views agree once mapped back
    np.testing.assert_allclose(p["boxes"][obj[0]], [50, 10, 70, 20])
    assert p["scores"][obj[0]] == pytest.approx(0.9)
    false = np.flatnonzero(p["labels"] == 1)  # the fixed false box lands in four places
    assert len(false) == 4 and np.allclose(p["scores"][false], 0.2)
    corners = {tuple(b) for b in p["boxes"][false].round(3)}
    assert corners == {(5, 5, 15, 25), (65, 5, 75, 25), (5, 35, 15, 55), (65, 35, 75, 55)}
    # without tta the false box keeps its score
    plain = predict(BlobModel(), [img], progress=False)[0]
    assert plain["scores"].max() == pytest.approx(0.9) and len(plain["boxes"]) == 2


def test_tta_with_tiles_fuses_each_tile_then_merges():
    img = torch.zeros(3, 60, 80)
    img[0, 10:20, 50:70] = 1.0  # whole in the top-right tile, cut by the lower tile's edge
    model = BlobModel()
    pred = predict(model, [img], tta=True, tile=48, overlap=0.2, batch_size=4, progress=False)[0]
    wins = tile_windows(60, 80, 48, 0.2)
    assert len(model.shapes) == 4 * len(wins) and all(sh[-2:] == (48, 48) for sh in model.shapes)
    obj = np.flatnonzero(pred["labels"] == 0)
    assert len(obj) == 1, pred
    np.testing.assert_allclose(pred["boxes"][obj[0]], [50, 10, 70, 20], atol=1.0)


def test_tta_refuses_masks_and_bad_iou():
    img = torch.zeros(3, 60, 80)
    with pytest.raises(ValueError, match="tta_iou"):
        predict(BlobModel(), [img], tta=True, tta_iou=1.0, progress=False)
    with pytest.raises(ValueError, match="tta_skip"):
        predict(BlobModel(), [img], tta=True, tta_skip=1.0, progress=False)
    mask_model = build_detector(DetectorConfig(arch="maskrcnn_tiny", class_names=["a"], min_size=64, max_size=64))
    with pytest.raises(ValueError, match="tta"):
        predict(mask_model, [img], tta=True, progress=False)


def test_tta_on_a_real_detector_gives_the_prediction_form():
    ds = make_dataset(2, seed=3, width=128, height=96)
    model = build_detector(DetectorConfig(arch="fasterrcnn_tiny", class_names=ds.class_names, min_size=96,
                                          max_size=128, score_floor=0.0))
    pred = predict(model, ds, tta=True, progress=False)
    assert pred.class_names == ds.class_names
    for p in pred:
        assert p["boxes"].shape[1] == 4 and p["boxes"].dtype == np.float32
        assert len(p["boxes"]) == len(p["scores"]) == len(p["labels"])
        assert 0 < len(p["boxes"]) <= model.detector_config.detections_per_img
        assert np.all(np.diff(p["scores"]) <= 0)
    for kw in (dict(scale=0.5), dict(scale="auto"), dict(tile=64)):  # every path takes the flips
        if kw.get("scale") == "auto":
            model.detector_config.object_sizes = {c: {"size": 20.0, "count": 10} for c in ds.class_names}
        out = predict(model, ds, tta=True, progress=False, **kw)
        assert len(out) == len(ds) and all(p["boxes"].shape[1] == 4 for p in out)


def test_tuned_thresholds_must_match_the_way_predictions_were_made(tmp_path):
    from smearlab.detection.tune import Thresholds

    img = torch.zeros(3, 60, 80)
    img[0, 10:20, 50:70] = 1.0
    model = BlobModel()
    model.detector_config = SimpleNamespace(class_names=["a", "b"], detections_per_img=300, in_channels=3)
    plain = Thresholds(score={"a": 0.5, "b": 0.5}, objective="f1")
    fused = Thresholds(score={"a": 0.5, "b": 0.5}, objective="f1", tta=True)
    kw = dict(progress=False)
    with pytest.raises(ValueError, match="tuned on predictions made without tta"):
        predict(model, [img], tta=True, thresholds=plain, **kw)
    with pytest.raises(ValueError, match="tuned on predictions made with tta"):
        predict(model, [img], thresholds=fused, **kw)
    out = predict(model, [img], tta=True, thresholds=fused, **kw)[0]
    assert len(out["boxes"]) == 1  # the false box, fused to 0.2 in four places, is below 0.5
    assert len(predict(model, [img], thresholds=plain, **kw)[0]["boxes"]) == 2
    manual = Thresholds(score={"a": 0.5, "b": 0.5})  # set by hand: applied either way
    assert len(predict(model, [img], tta=True, thresholds=manual, **kw)[0]["boxes"]) == 1
    assert Thresholds.load(fused.save(tmp_path / "t.json")).tta is True


@pytest.mark.parametrize("image, problem", [
    (np.zeros((8, 9, 3), np.uint16), "uint8 or floats"),
    (np.full((8, 9, 3), 200.0), r"\[0, 1\]"),
    (np.zeros((8, 9, 4), np.uint8), "RGBA"),
    (np.zeros((3, 8, 9), np.uint8), "channel-first"),
    (np.full((8, 9, 3), np.nan), "NaN"),
])
def test_images_the_detector_would_read_unscaled_are_refused(image, problem):
    """16-bit and 0..255 float images reached the model unscaled, RGBA as four channels."""
    from smearlab.detection.predict import _to_tensor
    with pytest.raises(ValueError, match=problem):
        _to_tensor(image, 3)
    assert float(_to_tensor(np.full((8, 9, 3), 255, np.uint8), 3).max()) == 1.0
    assert _to_tensor(np.full((8, 9), 0.5), 3).shape == (3, 8, 9)


def test_samples_already_preprocessed_with_the_models_pipeline_are_refused():
    """Preprocess.apply marks its samples: predict applied the model's pipeline a second time."""
    from smearlab.preprocess import Preprocess
    ds = make_dataset(1, seed=0, width=96, height=80)
    pre = Preprocess([("gamma", {"g": 0.5})])
    done = [pre.apply(s) for s in ds]
    model = build_detector(DetectorConfig(arch="fasterrcnn_tiny", class_names=ds.class_names, min_size=80,
                                          max_size=96))
    with pytest.raises(ValueError, match="already preprocessed"):
        predict(model, done, preprocess=pre, progress=False)
    with pytest.raises(ValueError, match="already preprocessed"):  # other containers of samples too
        predict(model, torch.utils.data.Subset(done, [0]), preprocess=pre, progress=False)
    assert len(predict(model, done, preprocess=None, progress=False)) == 1


def test_tiles_that_share_a_thin_strip_do_not_fuse_two_neighbouring_cells():
    """Tiles 0 and 2 of a row shared a 2 px strip (126 px wide image, 64 px tiles): compared over
    it, a piece of one cell matched its neighbour and the two came back as one box."""
    h, w = 64, 126
    yy, xx = np.mgrid[:h, :w]
    a, b, th, gap = 14.6, 3.4, np.deg2rad(51), 2.8
    cells = np.zeros((h, w), bool)
    nx, ny = -np.sin(th), np.cos(th)
    for s in (0, 1):
        ox, oy = 64.5 + s * nx * (2 * b + gap), 28.5 + s * ny * (2 * b + gap)
        u = (xx - ox) * np.cos(th) + (yy - oy) * np.sin(th)
        v = -(xx - ox) * np.sin(th) + (yy - oy) * np.cos(th)
        cells |= (u / a) ** 2 + (v / b) ** 2 <= 1
    img = np.full((h, w, 3), 255, np.uint8)
    img[cells] = 0
    assert tile_windows(h, w, 64, 0.2)[2][0] == 62     # tile 2 starts 2 px before tile 0 ends
    whole = sorted(predict(_DarkDiscs(), [img], progress=False)[0]["boxes"].astype(int).tolist())
    tiled = sorted(predict(_DarkDiscs(), [img], progress=False, tile=64, overlap=0.2)[0]["boxes"].astype(int).tolist())
    assert len(whole) == 2 and tiled == whole
    # any overlap above 0 leaves neighbours at least one shared pixel (0.01 of 64 px rounded to none)
    wins = tile_windows(64, 254, 64, 0.01)
    assert all(b[0] < a[2] for a, b in zip(wins, wins[1:]))


def test_tiled_prediction_merges_with_the_models_own_nms():
    """The merge of tiles applied NMS at 0.5 whatever the model's own (0.7 for dense smears): two
    overlapping cells a whole image kept lost one on a tiled field."""
    from types import SimpleNamespace

    class TwoOverlapping(_DarkDiscs):
        roi_heads = SimpleNamespace(nms_thresh=0.7)

        def forward(self, images):
            out = []
            for im in images:
                dark = im.float().mean(0).numpy() < 0.5
                boxes = [bx for bx in ((20, 20, 60, 60), (28, 20, 68, 60))
                         if dark.shape[0] >= bx[3] and dark.shape[1] >= bx[2] and dark[bx[1]:bx[3], bx[0]:bx[2]].all()]
                out.append({"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                            "scores": torch.tensor([0.9, 0.8][:len(boxes)]), "labels": torch.ones(len(boxes), dtype=torch.int64)})
            return out
    img = np.full((200, 300, 3), 255, np.uint8)
    img[20:60, 20:68] = 0
    m = TwoOverlapping()
    assert len(predict(m, [img], progress=False)[0]["boxes"]) == 2
    assert len(predict(m, [img], progress=False, tile=128)[0]["boxes"]) == 2


def test_a_sliver_of_a_cell_at_a_tile_edge_is_not_a_second_cell():
    """A piece a pixel or two wide, a pixel off the other tile's box, failed every overlap test
    and was counted as a second cell on the seam."""
    wins = [(0, 0, 100, 100), (60, 0, 160, 100)]
    boxes = np.array([[98.5, 40, 100, 60], [99.5, 39, 125, 61],   # one cell: a sliver and the whole
                      [98, 10, 100, 20], [100.5, 15, 130, 40]], np.float32)  # a sliver beside another cell's rows
    out = merge_tiles(boxes, np.array([.9, .8, .7, .6]), np.zeros(4, np.int64), np.array([0, 1, 0, 1]), wins, (100, 160))
    got = sorted(map(tuple, out["boxes"].round(1).tolist()))
    assert (98.5, 39.0, 125.0, 61.0) in got and len(got) == 3, got


def test_fields_given_as_tensors_are_tiled_like_arrays():
    """A (3, H, W) tensor's size was read as (3, H): a large field went in whole, its cells shrunk."""
    from smearlab.detection.predict import predict_fields
    ds = make_dataset(2, seed=0, width=128, height=128)
    cfg = DetectorConfig(arch="fasterrcnn_tiny", class_names=ds.class_names, min_size=128, max_size=128,
                         train_image_size=(128, 128))
    torch.manual_seed(0)
    m = build_detector(cfg)
    field = np.tile(ds[0].image, (2, 3, 1))  # 256 x 384: more than 1.5 times the training size
    as_array = predict_fields(m, [field])
    as_tensor = predict_fields(m, [torch.from_numpy(field).permute(2, 0, 1).float() / 255])
    assert as_array.windows == as_tensor.windows and as_array.windows[0] > 1


def test_a_sliver_a_pixel_away_from_the_other_tiles_box_is_joined():
    wins = [(0, 0, 100, 100), (60, 0, 160, 100)]
    for x0 in (100.0, 100.5, 101.5):  # no overlap at all: joined all the same
        boxes = np.array([[98.5, 40, 100, 60], [x0, 39, 125, 61]], np.float32)
        out = merge_tiles(boxes, np.array([.9, .8]), np.zeros(2, np.int64), np.array([0, 1]), wins, (100, 160))
        assert len(out["boxes"]) == 1, x0


def test_a_prediction_does_not_depend_on_the_images_batched_with_it():
    """torchvision pads a batch to its largest image: a 96x128 image batched with 160x96 ones was
    predicted on a padded canvas, so the same image scored otherwise at another batch size (noise
    check against the comparison table of notebook 04, one image against a folder)."""
    small = make_dataset(3, seed=0, width=128, height=96)
    large = make_dataset(3, seed=1, width=96, height=160)
    images = [s.image for s in small] + [s.image for s in large]
    cfg = DetectorConfig(arch="fasterrcnn_tiny", class_names=small.class_names, min_size=96, max_size=160)
    torch.manual_seed(0)
    m = build_detector(cfg)
    alone = predict(m, images, batch_size=1, score_floor=0.0, progress=False)
    together = predict(m, images, batch_size=8, score_floor=0.0, progress=False)
    def rows(p):  # order-free: detections of tied scores may come in either order
        r = np.round(np.column_stack([p["scores"], p["boxes"], p["labels"]]).astype(np.float64), 3)
        return r[np.lexsort(r.T[::-1])]

    for a, b in zip(alone, together):
        assert len(a["boxes"]) == len(b["boxes"]) > 0
        np.testing.assert_allclose(rows(a), rows(b), atol=2e-3)
