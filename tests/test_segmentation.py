"""Semantic segmentation: metrics, U-Net shapes, training, checkpoints, bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from smearlab.classification.model import build_classifier, save_classifier
from smearlab.core.errors import DataError
from smearlab.data.synthetic import make_wbc_crops
from smearlab.metrics.semantic import IGNORE, dice_iou, dice_iou_per_image, semantic_metrics, whole_cell
from smearlab.models import load_model
from smearlab.segmentation.predict import predict_semantic
from smearlab.segmentation.train import train_unet
from smearlab.segmentation.unet import UNet, load_unet, save_unet


@pytest.fixture(scope="module")
def crops():
    return make_wbc_crops(12, seed=0, size=64)


@pytest.fixture(scope="module")
def trained(crops, tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 threads crawl when other processes share the 2 cores
    out = tmp_path_factory.mktemp("unet")
    model = UNet(base=8, depth=3)
    hist = train_unet(model, crops, crops, epochs=12, batch_size=4, lr=1e-2, seed=0,
                      device="cpu", progress=False, out_dir=out)
    yield model, hist, out
    torch.set_num_threads(threads)


# -- metrics ----------------------------------------------------------------------------------
def test_perfect_masks_score_one():
    t = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    res = dice_iou(t, t, 3)
    assert all(v == {"dice": 1.0, "iou": 1.0} for v in res.values())
    assert set(dice_iou(t, t, 3, ignore_background=True)) == {1, 2}


def test_partial_overlap_by_hand():
    # class 1: target 4 px, prediction 2 of them + 2 others -> TP 2, FP 2, FN 2
    t = np.array([[1, 1, 1, 1, 0, 0]], np.uint8)
    p = np.array([[1, 1, 0, 0, 1, 1]], np.uint8)
    r = dice_iou(t, p, 2)
    assert r[1]["dice"] == pytest.approx(0.5) and r[1]["iou"] == pytest.approx(1 / 3)
    # class 0: target 2 px, pred 2 px, overlap 0
    assert r[0] == {"dice": 0.0, "iou": 0.0}


def test_set_level_vs_per_image_mean():
    t1, p1 = np.array([[1, 1, 1, 1]], np.uint8), np.array([[1, 1, 1, 1]], np.uint8)  # dice 1
    t2, p2 = np.array([[1, 0, 0, 0]], np.uint8), np.array([[0, 1, 0, 0]], np.uint8)  # dice 0
    pooled = dice_iou([t1, t2], [p1, p2], 2)[1]["dice"]
    assert pooled == pytest.approx(2 * 4 / (2 * 4 + 1 + 1))
    assert dice_iou_per_image([t1, t2], [p1, p2], 2)[1]["dice"] == pytest.approx(0.5)


def test_empty_class_is_none_and_ignore_pixels_left_out():
    t = np.array([[0, 1, IGNORE]], np.uint8)
    p = np.array([[0, 1, 2]], np.uint8)
    r = dice_iou(t, p, 3)
    assert r[2] == {"dice": None, "iou": None}      # absent in both (the IGNORE pixel is left out)
    assert dice_iou_per_image([t, t], [p, p], 3)[2]["dice"] is None


def test_whole_cell():
    m = np.array([[0, 1, 2, IGNORE]], np.uint8)
    assert whole_cell(m).tolist() == [[0, 1, 1, IGNORE]]


def test_semantic_metrics_names_and_wrong_size(crops):
    truth = [s.semantic for s in crops]
    res = semantic_metrics(crops, truth, whole=True)
    assert set(res) == {"background", "cytoplasm", "nucleus", "whole_cell"}
    assert all(v["dice"] == 1.0 for v in res.values())
    bad = list(truth)
    bad[3] = np.zeros((10, 12), np.uint8)
    with pytest.raises(DataError) as e:
        semantic_metrics(crops, bad)
    msg = str(e.value)
    assert crops[3].image_id in msg and "(10, 12)" in msg and "(64, 64)" in msg
    with pytest.raises(ValueError, match="outside"):
        dice_iou(np.zeros((2, 2), np.uint8), np.full((2, 2), 5, np.uint8), 3)


# -- model ------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm", ["batch", "group"])
def test_unet_odd_sizes(norm):
    m = UNet(3, 3, base=8, depth=4, norm=norm).eval()
    with torch.no_grad():
        assert m(torch.zeros(1, 3, 50, 70)).shape == (1, 3, 50, 70)
        assert m(torch.zeros(2, 3, 17, 33)).shape == (2, 3, 17, 33)
    with pytest.raises(ValueError, match="norm"):
        UNet(norm="layer")


# -- training, prediction, checkpoints ----------------------------------------------------------
def test_training_learns(trained, crops):
    model, hist, _ = trained
    assert len(hist) == 12 and hist[-1]["loss"] < 0.7 * hist[0]["loss"]
    preds = predict_semantic(model, crops, batch_size=4, device="cpu")
    assert all(p.shape == (64, 64) and p.dtype == np.uint8 for p in preds)
    res = semantic_metrics(crops, preds)
    # trivial baseline: all-background prediction gives nucleus dice 0
    assert res["nucleus"]["dice"] > 0.5, res
    assert hist[-1]["val_dice"]["nucleus"] == pytest.approx(res["nucleus"]["dice"])


def test_checkpoint_round_trip(trained, crops, tmp_path):
    model, _, out = trained
    assert (out / "unet" / "weights.pt").is_file() and (out / "history.json").is_file()
    loaded = load_unet(out / "unet")
    imgs = [s.image for s in crops[:4]] + [crops[0].image[:50, :41]]  # odd size too
    a = predict_semantic(model, imgs, device="cpu")
    b = predict_semantic(loaded, imgs, device="cpu")
    assert a[-1].shape == (50, 41)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    p = save_unet(loaded, tmp_path / "again")
    assert load_unet(p).config == model.config
    assert load_model(p, device="cpu").config == model.config  # the one loader of every model folder


def test_letterbox_size(crops):
    torch.manual_seed(0)
    m = UNet(base=4, depth=2)
    train_unet(m, crops[:2], epochs=1, batch_size=2, size=48, device="cpu", progress=False)
    assert m.input_size == 48
    preds = predict_semantic(m, [crops[0].image[:64, :40]], device="cpu")
    assert preds[0].shape == (64, 40)


def test_training_with_augment(crops):
    from smearlab.augment import default_augment
    m = UNet(base=4, depth=2)
    hist = train_unet(m, crops[:4], epochs=1, batch_size=2, device="cpu", progress=False,
                      augment=default_augment(0))
    assert np.isfinite(hist[0]["loss"])


def test_corrupt_checkpoint(tmp_path):
    save_unet(UNet(3, 2, base=4, depth=2), tmp_path / "unet")
    bad = tmp_path / "unet" / "weights.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(DataError, match="weights.pt"):
        load_unet(tmp_path / "unet")
    torch.save({"foo": 1}, bad)
    with pytest.raises(DataError, match="not a state dict"):
        load_unet(tmp_path / "unet")
    with pytest.raises(DataError, match="config.json"):
        load_unet(tmp_path / "missing")
    save_classifier(build_classifier(["a"], width=4), tmp_path / "clf")
    with pytest.raises(DataError, match="holds a classifier, not a unet"):
        load_unet(tmp_path / "clf")


def test_training_needs_semantic(crops):
    from smearlab.data.sample import Sample, SmearDataset
    ds = SmearDataset([Sample("x1", _image=crops[0].image)], ["a"], semantic_names=["bg", "fg"])
    with pytest.raises(DataError, match="x1"):
        train_unet(UNet(num_classes=2, base=4, depth=2), ds, epochs=1, batch_size=1, progress=False)


# -- two-stage: boxes, then the U-Net on each crop -----------------------------------------------
class _DarkNet(torch.nn.Module):
    """A stand-in U-Net with known output: class 1 where the (normalised) image is dark."""

    input_size = None
    crop_pad = 0.3

    def forward(self, x):
        m = x.mean(1, keepdim=True)
        return torch.cat([m, -m], 1)


def _dark_image():
    img = np.full((60, 80, 3), 220, np.uint8)
    img[10:20, 10:25] = 30          # object A
    img[30:50, 40:70] = 30          # object B
    img[30:50, 72:76] = 30          # a neighbour of B, inside B's crop window
    return img


def test_crop_window_square_and_clipped():
    from smearlab.core.geometry import crop_window
    assert crop_window([10, 10, 20, 20], (100, 100), 0.5) == (5, 5, 25, 25)
    assert crop_window([30, 40, 50, 50], (100, 100), 0.0) == (30, 35, 50, 55)   # square side 20
    assert crop_window([0, 0, 10, 10], (8, 100), 0.5) == (0, 0, 15, 8)           # clipped
    assert crop_window([5, 5, 5, 5], (10, 10), 0.0) == (4, 4, 6, 6)              # degenerate box: 1 px + rounding


def test_two_stage_pastes_one_instance_per_box():
    from smearlab.segmentation.predict import two_stage_segment
    img = _dark_image()
    det = {"boxes": np.array([[10, 10, 25, 20], [40, 30, 70, 50]], np.float32),
           "labels": np.array([2, 1]), "scores": np.array([0.9, 0.6], np.float32)}
    preds, sems = two_stage_segment([det], _DarkNet(), [img], crop_size=None, return_semantic=True,
                                    device="cpu")
    (p,) = preds
    assert p["masks"].shape == (2, 60, 80) and p["masks"].dtype == bool
    assert p["labels"].tolist() == [2, 1] and p["scores"].tolist() == pytest.approx([0.9, 0.6])
    a, b = np.zeros((60, 80), bool), np.zeros((60, 80), bool)
    a[10:20, 10:25] = True
    b[30:50, 40:70] = True
    np.testing.assert_array_equal(p["masks"][0], a)
    np.testing.assert_array_equal(p["masks"][1], b)          # the neighbour's strip is not kept
    assert sems[0].shape == (60, 80) and set(np.unique(sems[0])) == {0, 1}
    assert sems[0][a | b].all() and not sems[0][~(a | b)].any()
    # keep="all" keeps every foreground pixel of the crop (the neighbour's strip too)
    (q,) = two_stage_segment([det["boxes"]], _DarkNet(), img, crop_size=None, keep="all", device="cpu")
    assert q["masks"][1].sum() > b.sum() and q["masks"][1][30:50, 72:76].all()
    assert q["labels"].tolist() == [0, 0] and q["scores"].tolist() == [1.0, 1.0]


def test_two_stage_no_boxes_and_oracle_samples(crops):
    from smearlab.segmentation.predict import two_stage_segment
    (p,) = two_stage_segment([np.zeros((0, 4))], _DarkNet(), [crops[0].image], device="cpu")
    assert p["masks"].shape == (0, 64, 64) and p["boxes"].shape == (0, 4)
    preds = two_stage_segment(crops[:2], _DarkNet(), crops[:2], device="cpu")   # ground-truth boxes
    assert [len(q["masks"]) for q in preds] == [1, 1]
    np.testing.assert_array_equal(preds[1]["labels"], crops[1].labels)


@pytest.mark.parametrize("boxes, msg", [
    (np.zeros((2, 3)), r"\(N, 4\)"),
    (np.array([[0, 0, np.nan, 4]]), "NaN"),
    ({"labels": [0]}, "no 'boxes'"),
    ({"boxes": np.zeros((2, 4)), "scores": [1.0]}, "2 boxes but"),
])
def test_two_stage_bad_boxes(boxes, msg):
    from smearlab.segmentation.predict import two_stage_segment
    img = _dark_image()
    with pytest.raises(ValueError, match=msg):
        two_stage_segment([boxes], _DarkNet(), [img], device="cpu")
    with pytest.raises(ValueError, match="2 box sets for 1 images"):
        two_stage_segment([np.zeros((0, 4))] * 2, _DarkNet(), [img], device="cpu")
    with pytest.raises(ValueError, match="pad"):
        two_stage_segment([np.zeros((0, 4))], _DarkNet(), [img], pad=-1, device="cpu")


def test_crop_dataset_targets_are_the_objects_own_pixels():
    from smearlab.data import Sample, SmearDataset
    from smearlab.segmentation.train import crop_dataset
    img = np.zeros((40, 40, 3), np.uint8)
    masks = np.zeros((2, 40, 40), bool)
    masks[0, 10:20, 10:20] = True
    masks[1, 10:20, 21:30] = True                    # a neighbour inside object 0's window
    sem = (masks.any(0)).astype(np.uint8)
    sem[12:15, 12:15] = 2
    s = Sample("x", _image=img, boxes=[[10, 10, 20, 20], [21, 10, 30, 20]], labels=[0, 1],
               _masks=masks, _semantic=sem)
    ds = SmearDataset([s], ["a", "b"], semantic_names=["background", "cell", "nucleus"])
    crops = crop_dataset(ds, pad=0.5)
    assert len(crops) == 2 and crops.semantic_names == ds.semantic_names
    c = crops[0]
    assert c.meta["window"] == (5, 5, 25, 25) and c.image.shape == (20, 20, 3)
    assert c.semantic[5:15, 5:15].max() == 2 and c.semantic[10, 17] == 0    # neighbour -> background
    np.testing.assert_array_equal(c.boxes, [[5, 5, 15, 15]])
    assert len(crop_dataset(ds, classes=[1])) == 1
    no_sem = SmearDataset([Sample("y", _image=img, boxes=s.boxes, labels=[0, 1], _masks=masks)], ["a", "b"])
    assert crop_dataset(no_sem).semantic_names == ["background", "foreground"]
    with pytest.raises(DataError, match="neither instance nor semantic"):
        crop_dataset(SmearDataset([Sample("z", _image=img, boxes=s.boxes, labels=[0, 1])], ["a", "b"]))


def test_train_crop_unet_on_synthetic_smears(tmp_path):
    from smearlab.data.synthetic import make_dataset
    from smearlab.metrics.instances import dsb_score
    from smearlab.segmentation.train import build_crop_unet, train_crop_unet
    from smearlab.segmentation.predict import two_stage_segment
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ds = make_dataset(3, seed=0, width=192, height=144)
        torch.manual_seed(0)
        model = build_crop_unet(ds, base=8, depth=3)
        hist = train_crop_unet(model, ds, pad=0.25, crop_size=32, epochs=8, batch_size=16, lr=1e-2, device="cpu",
                               progress=False, out_dir=tmp_path)
        assert model.crop_pad == 0.25 and model.input_size == 32
        with pytest.raises(ValueError, match="build_crop_unet"):  # outputs that the targets do not have
            train_crop_unet(UNet(3, 5, base=4, depth=2), ds, epochs=1, device="cpu", progress=False)
        assert hist[-1]["loss"] < 0.7 * hist[0]["loss"]
        preds = two_stage_segment(ds, model, ds, device="cpu")     # oracle boxes
        ious = [(a & b).sum() / max(1, (a | b).sum())
                for s, p in zip(ds, preds) for a, b in zip(s.masks, p["masks"])]
        assert np.mean(ious) > 0.6, np.mean(ious)
        assert dsb_score(ds, preds, kind="masks") > 0.3
        loaded = load_unet(tmp_path / "unet")
        assert loaded.crop_pad == 0.25 and loaded.input_size == 32
        again = two_stage_segment(ds[:1], loaded, ds[:1], device="cpu")
        np.testing.assert_array_equal(again[0]["masks"], preds[0]["masks"])
        # smearlab predict letterboxed whole fields into its one-cell input and counted 2 of 9 cells
        from smearlab import batch
        from smearlab.core.errors import DataError
        from smearlab.data.imageio import write_image
        write_image(tmp_path / "field.png", ds[0].image)
        with pytest.raises(DataError, match="single-cell crops"):
            batch.predict(tmp_path / "unet", [tmp_path / "field.png"], tmp_path / "out", device="cpu", progress=False)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("epochs, batch_size", [(5, 1), (1, 1), (3, 2)])  # 10, 2 and 3 steps
def test_short_trainings_have_a_valid_schedule(crops, epochs, batch_size):
    m = UNet(base=4, depth=1)
    hist = train_unet(m, crops[:2], epochs=epochs, batch_size=batch_size, lr=1e-2, device="cpu",
                      progress=False, size=32)
    assert len(hist) == epochs and all(np.isfinite(h["loss"]) for h in hist)


# -- instances <-> semantic, splits for comparing segmenters -------------------------------------
def test_foreground_semantic_and_back_to_instances():
    from smearlab.data import Sample, SmearDataset
    from smearlab.data.derive import foreground_semantic
    from smearlab.segmentation.predict import semantic_to_instances
    yy, xx = np.mgrid[:40, :60]
    a = (yy - 20) ** 2 + (xx - 18) ** 2 <= 81
    b = (yy - 20) ** 2 + (xx - 34) ** 2 <= 81          # touches a
    c = (yy - 8) ** 2 + (xx - 52) ** 2 <= 9
    s = Sample("x", _image=np.zeros((40, 60, 3), np.uint8), boxes=[[9, 11, 28, 30], [25, 11, 44, 30], [49, 5, 56, 12]],
               labels=[0, 0, 0], _masks=np.stack([a, b, c]))
    empty = Sample("y", _image=np.zeros((10, 12, 3), np.uint8))
    ds = foreground_semantic(SmearDataset([s, empty], ["cell"]))
    assert ds.semantic_names == ["background", "foreground"]
    np.testing.assert_array_equal(ds[0].semantic, (a | b | c).astype(np.uint8))
    assert ds[1].semantic.shape == (10, 12) and not ds[1].semantic.any()
    sem = ds[0].semantic * 2                             # any class > 0 is foreground
    assert len(semantic_to_instances(sem, split="components")["masks"]) == 2     # a+b merged, c
    ws = semantic_to_instances(sem, min_distance=5)
    assert len(ws["masks"]) == 3 and ws["masks"].shape == (3, 40, 60)
    assert len(semantic_to_instances(sem, min_distance=5, min_size=40)["masks"]) == 2   # c is 29 px
    with pytest.raises(ValueError, match="split"):
        semantic_to_instances(sem, split="magic")
    with pytest.raises(DataError, match="no instance masks"):
        foreground_semantic(SmearDataset([Sample("z", _image=np.zeros((4, 4, 3), np.uint8), boxes=[[0, 0, 2, 2]],
                                                 labels=[0])], ["cell"]))


def test_instance_splits_synthetic_and_a_dataset_folder(tmp_path):
    from PIL import Image
    from smearlab.data.splits import instance_splits, segmentation_splits
    syn = instance_splits("synthetic", quick=True, seed=3, max_train=2, max_test=1)
    assert len(syn["train"]) == 2 and len(syn["test"]) == 1 and syn["test"].class_names == ["cell"]
    assert not np.array_equal(syn["train"][0].image, syn["test"][0].image)   # different seeds
    for k in range(6):                                   # a small DSB2018 tree
        folder = tmp_path / "stage1_train" / f"img{k}"
        (folder / "images").mkdir(parents=True)
        (folder / "masks").mkdir()
        Image.fromarray(np.full((16, 16, 4), 40 * k, np.uint8)).save(folder / "images" / f"img{k}.png")
        m = np.zeros((16, 16), np.uint8)
        m[2:6, 2 + k:6 + k] = 255
        Image.fromarray(m).save(folder / "masks" / "a.png")
    sp = instance_splits(tmp_path, quick=False, seed=0, test=0.5)
    assert (len(sp["train"]), len(sp["test"])) == (3, 3) and sp["name"] == tmp_path.name
    assert not {s.image_id for s in sp["train"]} & {s.image_id for s in sp["test"]}
    assert sp["test"].class_names == ["cell"] and sp["test"][0].masks.shape == (1, 16, 16)
    assert len(instance_splits(tmp_path, quick=True, seed=0, test=0.5, max_test=1)["test"]) == 1
    # by default the test images are those notebook 04 scores its segmenters on
    for k in range(6, 12):
        folder = tmp_path / "stage1_train" / f"img{k}"
        (folder / "images").mkdir(parents=True)
        (folder / "masks").mkdir()
        Image.fromarray(np.full((16, 16, 4), 20 * k, np.uint8)).save(folder / "images" / f"img{k}.png")
        Image.fromarray(np.pad(np.full((4, 4), 255, np.uint8), ((2, 10), (k - 4, 16 - k)))).save(folder / "masks" / "a.png")
    for seed in (0, 1):
        sp, seg = instance_splits(tmp_path, quick=False, seed=seed), segmentation_splits(str(tmp_path), quick=False, seed=seed)
        ids = {k: {s.image_id for s in d} for k, d in {**sp, **{f"seg_{n}": d for n, d in seg.items()}}.items()
               if k != "name"}
        assert ids["test"] == ids["seg_test"] and ids["train"] == ids["seg_train"] | ids["seg_val"]


def test_tta_averages_over_flips(crops):
    img = _dark_image()
    # a pixel-wise model is flip-equivariant: flip averaging changes nothing
    (a,), (b,) = (predict_semantic(_DarkNet(), [img], device="cpu", tta=t, size=None) for t in (False, True))
    np.testing.assert_array_equal(a, b)

    class LeftBias(torch.nn.Module):       # prefers class 1 on the left half only: not flip-equivariant
        def forward(self, x):
            w = x.shape[-1]
            ramp = torch.linspace(1, -1, w).expand(x.shape[0], 1, x.shape[-2], w)
            return torch.cat([-ramp, ramp], 1)
    plain = predict_semantic(LeftBias(), [img], device="cpu", size=None)[0]
    flipped = predict_semantic(LeftBias(), [img], device="cpu", size=None, tta=True)[0]
    assert plain[:, :10].all() and not plain[:, -10:].any()
    assert flipped.shape == plain.shape and not np.array_equal(flipped, plain)


def test_tile_dataset_covers_each_image():
    from smearlab.data import Sample, SmearDataset
    from smearlab.data.derive import tile_dataset
    big = np.arange(40 * 50 * 3, dtype=np.int64).reshape(40, 50, 3).astype(np.uint8)
    sem = (np.arange(40 * 50).reshape(40, 50) % 3).astype(np.uint8)
    small = Sample("small", _image=np.zeros((10, 12, 3), np.uint8), _semantic=np.ones((10, 12), np.uint8))
    ds = SmearDataset([Sample("big", _image=big, _semantic=sem), small], [], semantic_names=["a", "b", "c"])
    tiles = tile_dataset(ds, 16)
    wins = [t.meta["window"] for t in tiles if t.meta["source"] == "big"]
    assert len(wins) == 3 * 4 and (34, 24, 50, 40) in wins          # last row/column flush with the border
    cover = np.zeros((40, 50), int)
    for t, (x0, y0, x1, y1) in zip(tiles, wins):
        assert t.image.shape == (16, 16, 3)
        np.testing.assert_array_equal(t.image, big[y0:y1, x0:x1])
        np.testing.assert_array_equal(t.semantic, sem[y0:y1, x0:x1])
        cover[y0:y1, x0:x1] += 1
    assert cover.min() >= 1
    assert tiles[-1].image.shape == (10, 12, 3) and tiles.semantic_names == ["a", "b", "c"]
    sub = tile_dataset(ds, 16, max_tiles=5, seed=1)
    assert len(sub) == 5 and [t.image_id for t in sub] == [t.image_id for t in tile_dataset(ds, 16, max_tiles=5, seed=1)]
    with pytest.raises(ValueError, match="tile"):
        tile_dataset(ds, 8)
    with pytest.raises(DataError, match="no semantic"):
        tile_dataset(SmearDataset([Sample("n", _image=big)], []), 16)


def test_central_cell_keeps_the_cell_of_interest():
    from smearlab.segmentation.predict import central_cell

    m = np.zeros((60, 60), np.uint8)
    m[20:40, 20:40] = 1
    m[25:35, 25:35] = 2          # the centred cell: cytoplasm and nucleus
    m[0:10, 50:60] = 1           # a neighbour cut by the edge
    out = central_cell(m)
    assert out[30, 30] == 2 and out[21, 21] == 1 and not out[0:10, 50:60].any()
    assert (out[20:40, 20:40] == m[20:40, 20:40]).all()
    # no region over the centre: the nearest one stays
    m2 = np.zeros((60, 60), np.uint8)
    m2[0:5, 0:5] = 1
    m2[33:40, 33:40] = 2
    out2 = central_cell(m2)
    assert out2[35, 35] == 2 and not out2[0:5, 0:5].any()
    assert not central_cell(np.zeros((8, 8), np.uint8)).any()


def test_a_letterboxed_training_target_lies_under_its_image():
    """The class map was resized with 'nearest' (the top-left of each cell) and the image with
    centred bilinear: every target sat half a working pixel down and right of its cell."""
    from smearlab.segmentation.unet import resize_and_pad
    yy, xx = np.mgrid[:96, :96]
    sem = ((yy - 40.5) ** 2 + (xx - 51.5) ** 2 < 15 ** 2).astype(np.uint8)
    img = np.repeat((sem * 200)[..., None], 3, 2).astype(np.uint8)
    x, t, _ = resize_and_pad(torch.from_numpy(img).permute(2, 0, 1), torch.from_numpy(sem), 32)
    bright = (x[0] > 100).numpy()
    target = (t == 1).numpy()
    cy, cx = np.argwhere(bright).mean(0)
    ty, tx = np.argwhere(target).mean(0)
    assert abs(cy - ty) < 0.15 and abs(cx - tx) < 0.15


def test_class_map_training_refuses_names_and_classes_that_disagree(tmp_path):
    from smearlab.data import Sample, SmearDataset
    from smearlab.segmentation.train import train_unet
    from smearlab.segmentation.unet import UNet
    sem = np.zeros((16, 16), np.uint8)
    sem[4:10, 4:10] = 1
    make = lambda s, names: SmearDataset([Sample("a", _image=np.zeros((16, 16, 3), np.uint8), _semantic=s)],  # noqa: E731
                                         ["x"], semantic_names=names)
    ds = make(sem, ["bg", "cell"])
    with pytest.raises(ValueError, match="3 classes but the dataset has 2"):   # a folder load_unet refused
        train_unet(UNet(3, 3, base=4, depth=2), ds, epochs=1, device="cpu")
    with pytest.raises(ValueError, match="validation classes"):                # Dice under the wrong names
        train_unet(UNet(3, 2, base=4, depth=2), ds, make(sem, ["cell", "bg"]), epochs=1, device="cpu")
    with pytest.raises(DataError, match="class 3, outside"):                   # a bare IndexError
        train_unet(UNet(3, 2, base=4, depth=2), make(sem * 3, ["bg", "cell"]), epochs=1, device="cpu")


def test_an_instance_row_ranks_every_raw_prediction_for_mask_ap():
    """Notebook 04's rows: DSB and counts of the final predictions, mask AP of the raw ones, for
    Mask R-CNN, the two-stage segmenter and the noise check alike (the noise check's "clean" mask AP
    was computed on the thresholded set: 0.079 beside the comparison's 0.247 for one model)."""
    import numpy as np

    from smearlab.data import Sample, SmearDataset
    from smearlab.experiments.segmentation import instance_row
    masks = np.zeros((2, 20, 20), bool)
    masks[0, 2:8, 2:8] = masks[1, 10:16, 10:16] = True
    truth = SmearDataset([Sample("a", boxes=[[2, 2, 8, 8], [10, 10, 16, 16]], labels=[0, 0], _masks=masks,
                                 _image=np.zeros((20, 20, 3), np.uint8))], ["nucleus"])
    raw = [{"boxes": np.array([[2, 2, 8, 8], [10, 10, 16, 16]], np.float32), "scores": np.array([0.9, 0.2], np.float32),
            "labels": np.array([0, 0]), "masks": masks}]
    final = [{k: v[:1] for k, v in raw[0].items()}]  # the threshold kept the first
    row = instance_row(truth, final, raw)
    assert row["mask_mAP50"] == pytest.approx(1.0)  # both found, ranked: a full curve
    assert row["dsb_metric"] == pytest.approx(0.5) and row["count_error"] == pytest.approx(0.5)


def test_an_unannotated_image_adds_nothing_and_a_diverging_loss_stops_training(tmp_path):
    """A class map all IGNORE made the U-Net's epoch loss NaN (cross-entropy over no pixel); a loss
    that turns NaN stopped nothing and the run folder's model got NaN weights."""
    import numpy as np
    import torch

    from smearlab.data.sample import Sample, SmearDataset
    from smearlab.data.synthetic import make_dataset
    from smearlab.segmentation.train import train_unet
    from smearlab.segmentation.unet import UNet, load_unet

    ds = make_dataset(2, seed=0, width=64, height=64)
    blank = Sample("unannotated", _image=ds[0].image, _semantic=np.full(ds[0].semantic.shape, 255, np.uint8))
    train = SmearDataset([blank, ds[1]], ds.class_names, "t", semantic_names=ds.semantic_names)
    torch.manual_seed(0)
    h = train_unet(UNet(3, 3, base=4, depth=2), train, epochs=2, batch_size=1, device="cpu", progress=False)
    assert all(np.isfinite(r["loss"]) for r in h)
    torch.manual_seed(0)
    with pytest.raises(FloatingPointError, match="loss.* at step .*training stopped"):
        train_unet(UNet(3, 3, base=4, depth=2), ds, epochs=6, batch_size=1, lr=1e12, device="cpu", progress=False,
                   out_dir=tmp_path / "run")
    saved = load_unet(tmp_path / "run" / "unet", device="cpu") if (tmp_path / "run" / "unet").exists() else None
    assert saved is None or all(torch.isfinite(p).all() for p in saved.parameters())  # the last good epoch's


def test_a_unet_s_class_maps_are_numbered_by_the_dataset_s_class_names(tmp_path):
    """predict_semantic returned the model's numbering and semantic_metrics read it as the dataset's:
    a U-Net of background, cell, nucleus scored on a dataset of background, nucleus, cell gave
    Dice 0 for a perfect nucleus."""
    import torch

    from smearlab.data import Sample, SmearDataset
    from smearlab.metrics.semantic import semantic_metrics
    from smearlab.segmentation.predict import predict_semantic
    from smearlab.segmentation.unet import UNet, load_unet, save_unet
    u = UNet(num_classes=3, base=4, depth=1, norm="group")
    with torch.no_grad():
        u.head.bias[:] = torch.tensor([0.0, 0.0, 5.0])  # always "nucleus"
    m = load_unet(save_unet(u, tmp_path / "u", class_names=["background", "cell", "nucleus"]), "cpu")
    img = np.zeros((32, 32, 3), np.uint8)
    ds = SmearDataset([Sample("x", _image=img, _semantic=np.full((32, 32), 1, np.uint8))], [],
                      semantic_names=["background", "nucleus", "cell"])  # truth: nucleus everywhere
    pred = predict_semantic(m, ds, device="cpu")
    assert (pred[0] == 1).all()
    assert semantic_metrics(ds, pred)["nucleus"]["dice"] == 1.0
    assert (predict_semantic(m, list(ds), device="cpu")[0] == 2).all()  # samples alone: the model's own numbering
    other = SmearDataset(list(ds), [], semantic_names=["background", "cytoplasm", "nucleus"])
    with pytest.raises(ValueError, match="would be read"):
        predict_semantic(m, other, device="cpu")
