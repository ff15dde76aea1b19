"""Semantic segmentation: metrics, U-Net shapes, training, checkpoints, bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from smearlab.data.errors import DataError
from smearlab.data.synthetic import make_wbc_crops
from smearlab.segmentation import (IGNORE, UNet, dice_iou, dice_iou_per_image, load_unet,
                                   predict_semantic, save_unet, semantic_metrics, train_unet,
                                   whole_cell)


@pytest.fixture(scope="module")
def crops():
    return make_wbc_crops(12, seed=0, size=64)


@pytest.fixture(scope="module")
def trained(crops, tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(min(threads, 2))
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
    r = dice_iou(p, t, 2)
    assert r[1]["dice"] == pytest.approx(0.5) and r[1]["iou"] == pytest.approx(1 / 3)
    # class 0: target 2 px, pred 2 px, overlap 0
    assert r[0] == {"dice": 0.0, "iou": 0.0}


def test_set_level_vs_per_image_mean():
    t1, p1 = np.array([[1, 1, 1, 1]], np.uint8), np.array([[1, 1, 1, 1]], np.uint8)  # dice 1
    t2, p2 = np.array([[1, 0, 0, 0]], np.uint8), np.array([[0, 1, 0, 0]], np.uint8)  # dice 0
    pooled = dice_iou([p1, p2], [t1, t2], 2)[1]["dice"]
    assert pooled == pytest.approx(2 * 4 / (2 * 4 + 1 + 1))
    assert dice_iou_per_image([p1, p2], [t1, t2], 2)[1]["dice"] == pytest.approx(0.5)


def test_empty_class_is_none_and_ignore_pixels_left_out():
    t = np.array([[0, 1, IGNORE]], np.uint8)
    p = np.array([[0, 1, 2]], np.uint8)
    r = dice_iou(p, t, 3)
    assert r[2] == {"dice": None, "iou": None}      # absent in both (the IGNORE pixel is left out)
    assert dice_iou_per_image([p, p], [t, t], 3)[2]["dice"] is None


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
        dice_iou(np.full((2, 2), 5, np.uint8), np.zeros((2, 2), np.uint8), 3)


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
    assert (out / "unet.pt").is_file() and (out / "history.json").is_file()
    loaded = load_unet(out / "unet.pt")
    imgs = [s.image for s in crops[:4]] + [crops[0].image[:50, :41]]  # odd size too
    a = predict_semantic(model, imgs, device="cpu")
    b = predict_semantic(loaded, imgs, device="cpu")
    assert a[-1].shape == (50, 41)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    p = save_unet(loaded, tmp_path / "again.pt")
    assert load_unet(p).config == model.config


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
    bad = tmp_path / "unet.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(DataError, match="unet.pt"):
        load_unet(bad)
    torch.save({"foo": 1}, bad)
    with pytest.raises(DataError, match="not a smearlab U-Net"):
        load_unet(bad)
    with pytest.raises(DataError, match="does not exist"):
        load_unet(tmp_path / "missing.pt")


def test_training_needs_semantic(crops):
    from smearlab.data.sample import Sample, SmearDataset
    ds = SmearDataset([Sample("x1", _image=crops[0].image)], ["a"], semantic_names=["bg", "fg"])
    with pytest.raises(DataError, match="x1"):
        train_unet(UNet(num_classes=2, base=4, depth=2), ds, epochs=1, batch_size=1, progress=False)
