"""Scale-aware prediction (the training scale, the zoom estimate, the resize) and class-aware tiles."""
import numpy as np
import pytest
import torch

from smearlab.data import Sample, SmearDataset
from smearlab.data.derive import box_tiles, repeat_rare
from smearlab.detection import DetectorConfig, build_detector, predict
from smearlab.detection.scale import PROBE_FACTORS, choose_factor, estimate_zoom, object_sizes, zoom_to_apply


def _cells(size, n=8, hw=(480, 640)):
    x = np.linspace(10, hw[1] - size - 10, n)
    return np.stack([x, np.full(n, 100.0), x + size, np.full(n, 100.0 + size)], 1).astype(np.float32)


def test_training_scale_and_zoom_estimate():
    ds = SmearDataset([Sample("a", boxes=_cells(80), labels=[0] * 8, size=(480, 640))], ["RBC"], "train")
    cfg = DetectorConfig(arch="fasterrcnn_tiny", class_names=["RBC"], min_size=480, max_size=640)
    cfg.object_sizes = object_sizes(ds, cfg)
    assert cfg.object_sizes == {"RBC": {"size": pytest.approx(80.0), "count": 8}}
    # the same cells seen half as large (another magnification): zoom 0.5, resize x2
    seen = {"boxes": _cells(40), "scores": np.full(8, 0.9, np.float32), "labels": np.zeros(8, np.int64)}
    z = estimate_zoom(seen, (480, 640), cfg)
    assert z == pytest.approx(0.5) and zoom_to_apply(z) == pytest.approx(2.0)
    assert zoom_to_apply(1.05) == 1.0 and zoom_to_apply(None) == 1.0 and zoom_to_apply(0.01) == 3.0
    few = {k: v[:3] for k, v in seen.items()}  # too few confident cells: no estimate
    assert estimate_zoom(few, (480, 640), cfg) is None


def test_choose_factor_trusts_the_most_confident_look():
    cfg = DetectorConfig(arch="fasterrcnn_tiny", class_names=["RBC", "Platelets"], min_size=480, max_size=640,
                         object_sizes={"RBC": {"size": 80.0, "count": 8}, "Platelets": {"size": 30.0, "count": 8}})

    def pred(size, score, label=0):
        return {"boxes": _cells(size), "scores": np.full(8, score, np.float32), "labels": np.full(8, label)}

    hw = (480, 640)
    # red cells at half size: at the model's own scale they pass for platelets of the right size
    # (a one-look estimate says "no zoom"); at x2 they are confident red cells of 40 px -> x2
    probes = {f: pred(40, 0.3) for f in PROBE_FACTORS}
    probes[1.0] = pred(40, 0.6, label=1)
    probes[2.0] = pred(40, 0.95)
    assert zoom_to_apply(estimate_zoom(probes[1.0], hw, cfg)) < 1  # one look: the wrong way
    assert choose_factor(probes, hw, cfg) == pytest.approx(2.0)
    # the size estimate refines the probe (cells of 48 px: zoom 0.6 -> x1.67, near the x1.41 probe)
    probes = {f: pred(48, 0.3) for f in PROBE_FACTORS}
    probes[1.41] = pred(48, 0.9)
    assert choose_factor(probes, hw, cfg) == pytest.approx(80 / 48)
    # an estimate that disagrees with the best probe by more than sqrt(2) leaves the probe's factor
    probes[1.41] = pred(160, 0.9)
    assert choose_factor(probes, hw, cfg) == 1.41
    # nothing confident anywhere: the image stays as it is
    assert choose_factor({f: pred(40, 0.2) for f in PROBE_FACTORS}, hw, cfg) == 1.0
    # too few reference cells to measure at the most confident look: score noise alone zoomed x2
    few = {f: {k: v[:4] for k, v in pred(80, 0.95 if f == 2.0 else 0.9).items()} for f in PROBE_FACTORS}
    assert choose_factor(few, hw, cfg) == 1.0


def test_choose_factor_corrects_boxes_that_lean_to_the_training_size():
    """A detector draws cells off its training size only part of the way (here the square root of
    the ratio): the cells' size at one look says less than the truth, the factor where a look's
    cells ask for that look's own factor is the truth."""
    cfg = DetectorConfig(arch="fasterrcnn_tiny", class_names=["RBC"], min_size=480, max_size=640,
                         object_sizes={"RBC": {"size": 80.0, "count": 8}})
    hw = (480, 640)  # the model's own scale is 1: original pixels are input pixels

    def look(f, true_size=100.0):
        drawn = 80.0 * np.sqrt(true_size * f / 80.0)  # in the resized input
        return {"boxes": _cells(drawn / f), "scores": np.full(8, 0.9 - 0.1 * abs(np.log(f * true_size / 80)),
                                                                np.float32), "labels": np.zeros(8, np.int64)}

    probes = {f: look(f) for f in PROBE_FACTORS}
    one_look = zoom_to_apply(estimate_zoom(probes[1.0], hw, cfg))
    assert one_look == 1.0  # 100 px cells drawn at 89 px: within the tolerance, no resize
    assert choose_factor(probes, hw, cfg) == pytest.approx(0.8, rel=1e-3)  # 100 px -> 80 px
    probes = {f: look(f, true_size=50.0) for f in PROBE_FACTORS}  # half size: x1.6, between probes
    assert choose_factor(probes, hw, cfg) == pytest.approx(1.6, rel=1e-3)


class _SizeModel(torch.nn.Module):
    """Stands in for the model's internals: records the size its transform hands the network."""

    def __init__(self):
        super().__init__()
        cfg = DetectorConfig(arch="fasterrcnn_tiny", class_names=["RBC"], min_size=240, max_size=320)
        self.inner = build_detector(cfg).eval()
        self.detector_config = cfg
        self.transform = self.inner.transform
        self.seen = []
        self.inner.backbone.register_forward_hook(lambda m, i, o: self.seen.append(tuple(i[0].shape[-2:])))

    def forward(self, images):
        return self.inner(images)


def test_predict_rescales_on_top_of_the_model_scale():
    m = _SizeModel()
    img = np.zeros((240, 320, 3), np.uint8)
    predict(m, [img], progress=False)
    predict(m, [img], progress=False, scale=2.0)
    assert m.seen[0][0] == 256 and m.seen[1][0] == 480  # 240 rows (padded to 32) and twice that
    with pytest.raises(ValueError, match="training scale"):
        predict(m, [img], progress=False, scale="auto")
    with pytest.raises(ValueError, match="tile"):
        predict(m, [img], progress=False, scale=2.0, tile=128)
    for bad in (-1, 0, 1e-9, 50, float("inf"), float("nan")):  # the counts would read zero, or overflow
        with pytest.raises(ValueError, match="outside 0.1..10"):
            predict(m, [img], progress=False, scale=bad)
    with pytest.raises(ValueError, match="a number"):
        predict(m, [img], progress=False, scale="big")


def test_a_given_scale_is_relative_to_the_training_magnification_on_a_larger_field():
    """scale=1 (the model's own pixel size) on a field three times the training images' size
    shrank it to the model's input size first: the cells came out at a third of their size."""
    import dataclasses
    m = _SizeModel()
    m.detector_config = dataclasses.replace(m.detector_config, train_image_size=(240, 320))
    field = np.zeros((720, 960, 3), np.uint8)   # three training images wide and high
    predict(m, [field], progress=False, scale=1.0)
    predict(m, [field], progress=False, scale=0.5)
    assert m.seen[0] == (736, 960) and m.seen[1] == (384, 480)  # 720 rows (padded to 32) and half that
    m.detector_config = dataclasses.replace(m.detector_config, train_image_size=None)  # an older model
    predict(m, [field], progress=False, scale=1.0)
    assert m.seen[2] == (256, 320)


def test_box_tiles_keep_boxes_mostly_inside_and_cover_the_image():
    img = np.arange(100 * 150 * 3, dtype=np.uint8).reshape(100, 150, 3)
    boxes = [[10, 10, 30, 30], [60, 10, 90, 30], [140, 80, 150, 100]]
    ds = SmearDataset([Sample("big", boxes=boxes, labels=[0, 1, 1], _image=img)], ["ring", "rbc"], "fields")
    tiles = box_tiles(ds, 64)
    wins = [t.meta["window"] for t in tiles]
    assert (86, 36, 150, 100) in wins and len(wins) == 6  # a 3 x 2 grid, the last flush with the border
    first = tiles[0]
    np.testing.assert_array_equal(first.image, img[0:64, 0:64])
    # box 1 spans x 60..90: 4 of 30 px inside the first tile (dropped there), whole in the second
    assert first.labels.tolist() == [0] and first.boxes.tolist() == [[10, 10, 30, 30]]
    second = next(t for t in tiles if t.meta["window"][:2] == (64, 0))
    assert second.boxes.tolist() == [[0, 10, 26, 30]] and second.labels.tolist() == [1]  # 26 of 30 px inside
    # per-box flags follow their boxes (a crowd region of a tile became an ordinary object)
    crowd = SmearDataset([Sample("big", boxes=boxes, labels=[0, 1, 1], _image=img,
                                 meta={"iscrowd": np.array([0, 1, 0])})], ["ring", "rbc"], "fields")
    second = next(t for t in box_tiles(crowd, 64) if t.meta["window"][:2] == (64, 0))
    assert second.crowd.tolist() == [True]


def test_tiles_holding_rare_classes_repeat():
    common = [Sample(f"c{i}", boxes=[[0, 0, 5, 5]], labels=[1], size=(10, 10)) for i in range(18)]
    rare = [Sample("r", boxes=[[0, 0, 5, 5], [5, 5, 9, 9]], labels=[0, 1], size=(10, 10))]
    empty = [Sample("e", size=(10, 10))]
    out = repeat_rare(SmearDataset(common + rare + empty, ["ring", "rbc"], "tiles"))
    ids = [s.image_id for s in out]
    assert ids.count("r") == 3 and ids.count("c0") == 1 and ids.count("e") == 1  # sqrt(0.5 / (1/20)) = 3.2
    capped = repeat_rare(SmearDataset(common * 10 + rare, ["ring", "rbc"], "tiles"), max_repeat=4)
    assert [s.image_id for s in capped].count("r") == 4


def test_a_scaled_field_too_large_for_one_pass_is_refused():
    """At the training magnification a large field goes in whole: a 4000 x 3000 field of a model
    trained on 240 x 320 images at zoom 2 would be 8000 px wide (before, it was shrunk silently)."""
    import dataclasses
    m = _SizeModel()
    m.detector_config = dataclasses.replace(m.detector_config, train_image_size=(240, 320))
    with pytest.raises(ValueError, match="tiled"):
        predict(m, [np.zeros((3000, 4000, 3), np.uint8)], progress=False, scale=2.0)


def test_training_size_and_automatic_tiles_go_by_the_sides_not_the_orientation():
    """Half 480 x 640, half 640 x 480 training images recorded 560 x 560 (a magnification 0.86 of
    the real one); a portrait field was tiled where the same field in landscape was not."""
    from smearlab.detection.models import DetectorConfig, auto_tile, median_sides
    assert median_sides([(480, 640), (640, 480), (480, 640), (640, 480)]) == [480, 640]
    cfg = DetectorConfig(arch="fasterrcnn_tiny", class_names=["RBC"], train_image_size=[480, 640])
    assert auto_tile(cfg, (955, 715)) == auto_tile(cfg, (715, 955)) is None
    assert auto_tile(cfg, (1000, 740)) == auto_tile(cfg, (740, 1000)) == 640
    old = DetectorConfig(arch="fasterrcnn_tiny", class_names=["RBC"], train_image_size=[640, 480])  # (h, w) of a portrait set
    assert auto_tile(old, (955, 715)) == auto_tile(old, (715, 955)) is None


def test_box_tiles_keep_a_share_exactly_at_min_visible_and_list_flags_follow_their_boxes():
    """0.3 * 100 px in float32 is above 30: a box exactly 30 % inside was dropped at 0.3 and 0.6
    and kept at the other shares; crowd flags given as a list were lost (the region became a cell)."""
    from smearlab.data.derive import tile_dataset
    img = np.zeros((32, 64, 3), np.uint8)
    for k in range(1, 10):  # a box 10 px wide, exactly k px inside the first tile (x < 32)
        s = Sample("a", boxes=[[32 - k, 0, 42 - k, 10]], labels=[0], _image=img)
        assert len(box_tiles(SmearDataset([s], ["c"]), 32, min_visible=k / 10)[0].boxes) == 1, k
    s = Sample("a", boxes=[[0, 0, 10, 10], [20, 20, 30, 30]], labels=[0, 0],
               _image=np.zeros((40, 40, 3), np.uint8), meta={"iscrowd": [0, 1]})
    tiles = box_tiles(SmearDataset([s], ["c"]), 64)
    assert tiles[0].crowd.tolist() == [False, True] and tiles.summary()["objects"] == 1
    # both tilers name a tile by its x then y
    sem = SmearDataset([Sample("im", _image=np.zeros((40, 70, 3), np.uint8), _semantic=np.zeros((40, 70), np.uint8))],
                       [], semantic_names=["background", "cell"])
    assert [t.image_id for t in tile_dataset(sem, 32)] == [f"im@{t.meta['window'][0]},{t.meta['window'][1]}"
                                                          for t in tile_dataset(sem, 32)]
    assert "im@32,0" in [t.image_id for t in tile_dataset(sem, 32)]


def test_a_sample_given_a_size_that_is_not_its_image_s_is_refused():
    from smearlab.core.errors import DataError
    with pytest.raises(DataError, match=r"size \(5, 5\) given for an image of \(10, 10\)"):
        Sample("a", size=(5, 5), _image=np.zeros((10, 10, 3), np.uint8))


def test_box_tiles_cut_instance_masks_with_the_image():
    """The tiles of a field with instance masks had none: fine-tuning a Mask R-CNN on a large
    corrected field was refused for 'objects without masks'. A cut object's box is its mask's."""
    img = np.zeros((100, 150, 3), np.uint8)
    masks = np.zeros((2, 100, 150), bool)
    masks[0, 10:30, 10:30] = True
    masks[1, 10:20, 55:90] = True       # an L: its lower arm reaches x 55..60 only
    masks[1, 20:30, 55:60] = True
    ds = SmearDataset([Sample("big", boxes=[[10, 10, 30, 30], [55, 10, 90, 30]], labels=[0, 1], _image=img,
                              _masks=masks)], ["a", "b"], "fields")
    tiles = box_tiles(ds, 64)
    assert all(t.has_masks and len(t.masks) == len(t.boxes) for t in tiles)
    first = tiles[0]
    assert first.labels.tolist() == [0] and first.masks.shape == (1, 64, 64)
    np.testing.assert_array_equal(first.masks[0], masks[0, :64, :64])
    second = next(t for t in tiles if t.meta["window"][:2] == (64, 0))
    # 26 of 35 px of the box inside; in the tile the object is the upper arm, x 64..90, y 10..20
    assert second.labels.tolist() == [1] and second.boxes.tolist() == [[0, 10, 26, 20]]
    np.testing.assert_array_equal(second.masks[0], masks[1, :64, 64:128])
    # a box reaching into a tile whose mask does not: not in the tile
    hook = np.zeros((1, 100, 150), bool)
    hook[0, 10:12, 10:100] = hook[0, 10:90, 98:100] = True   # a thin hook: its box covers x 10..100, y 10..90
    one = box_tiles(SmearDataset([Sample("h", boxes=[[10, 10, 100, 90]], labels=[0], _image=img, _masks=hook)],
                                 ["a"]), 64, min_visible=0.1)
    by_window = {t.meta["window"]: t.boxes.tolist() for t in one}
    assert by_window[(0, 36, 64, 100)] == []                 # 41 % of the box, none of the object
    assert by_window[(0, 0, 64, 64)] == [[10, 10, 64, 12]]   # the arm, not the clipped box


def test_pad_to_places_small_images_on_their_background_in_their_orientation():
    from smearlab.data.derive import pad_to
    img = np.full((30, 20, 3), 200, np.uint8)
    img[5:10, 5:10] = 40
    masks = np.zeros((1, 30, 20), bool)
    masks[0, 5:10, 5:10] = True
    ds = SmearDataset([Sample("p", boxes=[[5, 5, 10, 10]], labels=[0], _image=img, _masks=masks),
                       Sample("same", _image=np.zeros((40, 60, 3), np.uint8)),
                       Sample("wide", _image=np.zeros((20, 70, 3), np.uint8))], ["c"], "d")
    out = pad_to(ds, (40, 60))
    p = out[0]
    assert p.hw == (60, 40)                              # portrait image: portrait canvas
    np.testing.assert_array_equal(p.image[:30, :20], img)
    assert (p.image[30:] == 200).all() and (p.image[:, 20:] == 200).all()
    assert p.boxes.tolist() == [[5, 5, 10, 10]] and p.masks.shape == (1, 60, 40) and p.masks.sum() == 25
    assert p.meta["padded_from"] == (30, 20) and p.image_id == "p"
    assert out[1] is ds[1] and out[2] is ds[2]           # the training size, and wider than it: as they are
    assert pad_to(ds, (40, 60), only=[False, False, False])[0] is ds[0]
