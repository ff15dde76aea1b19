"""Batched and tiled inference; the agreed prediction form."""
import numpy as np
import pytest
import torch

from smearlab.data.synthetic import make_dataset
from smearlab.detection.models import DetectorConfig, build_detector
from smearlab.detection.predict import merge_tiles, predict, tile_windows

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
    predict(model, [image], tile=200, overlap=0.0, progress=False)
    assert seen and all(out == (inp[0] // 2, inp[1] // 2) for inp, out in seen)
    assert model.transform.fixed_size is None  # restored
