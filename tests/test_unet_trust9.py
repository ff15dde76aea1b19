"""The semantic U-Net path: class names after training, two-stage class maps, 0/255 masks,
thin strips, argument checks."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from smearlab.data import Sample, SmearDataset
from smearlab.metrics.semantic import semantic_metrics
from smearlab.segmentation.predict import predict_semantic, two_stage_segment
from smearlab.segmentation.train import crop_classes, train_crop_unet, train_unet
from smearlab.segmentation.unet import UNet, load_unet, resize_and_pad, save_unet


class Band(torch.nn.Module):
    """Known answer in its own numbering: 0 bright, 1 mid ("cell"), 2 dark ("nucleus")."""
    input_size = None
    crop_pad = 0.2
    class_names = ["background", "cell", "nucleus"]

    def forward(self, x):
        v = x[:, :1] * 0.25 + 0.5
        return torch.cat([-(v - 5 / 6).abs(), -(v - 0.5).abs(), -(v - 1 / 6).abs()], 1) * 100


class Dark(torch.nn.Module):
    """Class 1 where the pixel is dark."""
    input_size = None
    crop_pad = 0.2

    def forward(self, x):
        m = x.mean(1, keepdim=True)
        return torch.cat([m, -m], 1)


def _cell(names=("background", "nucleus", "cell")):
    """One 40x40 image: a mid-grey cell with a dark nucleus, labelled in the order of ``names``."""
    img = np.full((40, 40, 3), 230, np.uint8)
    img[10:30, 10:30] = 120
    img[15:25, 15:25] = 20
    sem = np.zeros((40, 40), np.uint8)
    sem[10:30, 10:30] = names.index("cell")
    sem[15:25, 15:25] = names.index("nucleus")
    mask = np.zeros((1, 40, 40), bool)
    mask[0, 10:30, 10:30] = True
    return SmearDataset([Sample("a", _image=img, boxes=[[10, 10, 30, 30]], labels=[0], _masks=mask, _semantic=sem)],
                        ["cell"], "cells", semantic_names=list(names))


# -- 1: train_unet sets the model's class names ------------------------------------------------
def test_train_unet_gives_the_in_memory_model_the_dataset_s_class_names(tmp_path):
    """save_unet wrote the dataset's names, the in-memory model kept a stale list (or none), and
    predict_semantic renumbered by it: Dice 0 where the reloaded folder scored 1."""
    torch.manual_seed(0)
    pre = load_unet(save_unet(UNet(3, 3, base=4, depth=1), tmp_path / "pre",
                              class_names=["background", "cell", "nucleus"]), "cpu")
    ds = _cell(("background", "nucleus", "cell"))
    train_unet(pre, ds, epochs=1, batch_size=1, device="cpu", progress=False, out_dir=tmp_path / "run")
    assert pre.class_names == ["background", "nucleus", "cell"]
    disk = load_unet(tmp_path / "run" / "unet", "cpu")
    assert np.array_equal(predict_semantic(pre, ds, device="cpu")[0], predict_semantic(disk, ds, device="cpu")[0])

    fresh = UNet(3, 3, base=4, depth=1)
    train_unet(fresh, ds, epochs=1, batch_size=1, device="cpu", progress=False)
    assert fresh.class_names == ["background", "nucleus", "cell"]
    crop = UNet(3, 3, base=4, depth=1)
    train_crop_unet(crop, ds, crop_size=16, epochs=1, batch_size=1, device="cpu", progress=False)
    assert crop.class_names == crop_classes(ds)


# -- 2: two_stage_segment's class maps in the dataset's numbering ---------------------------------
def test_two_stage_class_maps_are_numbered_like_predict_semantic():
    ds = _cell(("background", "nucleus", "cell"))
    assert semantic_metrics(ds, predict_semantic(Band(), ds, device="cpu"))["nucleus"]["dice"] == 1.0
    _, sems = two_stage_segment(ds, Band(), ds, return_semantic=True, device="cpu")
    assert np.array_equal(sems[0], ds[0].semantic)
    res = semantic_metrics(ds, sems)
    assert res["nucleus"]["dice"] == 1.0 and res["cell"]["dice"] == 1.0
    _, own = two_stage_segment(ds, Band(), list(ds), return_semantic=True, device="cpu")  # plain samples: model's
    assert np.array_equal(own[0], np.choose(ds[0].semantic, [0, 2, 1]))


# -- 3: 0/255 binary masks refused -----------------------------------------------------------------
def test_a_binary_mask_saved_as_0_255_is_refused():
    img = np.full((32, 32, 3), 200, np.uint8)
    img[8:24, 8:24] = 30
    sem = np.zeros((32, 32), np.uint8)
    sem[8:24, 8:24] = 255
    mask = np.zeros((1, 32, 32), bool)
    mask[0, 8:24, 8:24] = True
    ds = SmearDataset([Sample("a", _image=img, boxes=[[8, 8, 24, 24]], labels=[0], _masks=mask, _semantic=sem)],
                      ["cell"], "binary", semantic_names=["background", "cell"])
    with pytest.raises(ValueError, match="'binary'.*0/255 must be 0/1"):
        train_unet(UNet(3, 2, base=4, depth=1), ds, epochs=1, batch_size=1, device="cpu", progress=False)
    with pytest.raises(ValueError, match="0/255 must be 0/1"):  # the crops keep the 255
        train_crop_unet(UNet(3, 2, base=4, depth=1), ds, crop_size=16, epochs=1, batch_size=1, device="cpu",
                        progress=False)
    # an unannotated image (all 255) beside annotated ones still trains
    ok = Sample("b", _image=img, _semantic=(sem > 0).astype(np.uint8))
    blank = Sample("c", _image=img, _semantic=np.full((32, 32), 255, np.uint8))
    train_unet(UNet(3, 2, base=4, depth=1), SmearDataset([blank, ok], [], semantic_names=["background", "cell"]),
               epochs=1, batch_size=2, device="cpu", progress=False)


# -- 4: a resize to a width of 1 -------------------------------------------------------------------
def test_a_tall_thin_strip_keeps_its_column():
    img = np.full((200, 2, 3), 230, np.uint8)
    img[100:] = 20  # bright on top, dark below
    truth = (img[..., 0] < 128).astype(np.uint8)
    x, t, (x0, y0, x1, y1) = resize_and_pad(torch.from_numpy(img).permute(2, 0, 1), torch.from_numpy(truth), 64)
    assert x1 - x0 == 1
    col = x[0, y0:y1, x0].numpy()
    flat, _, _ = resize_and_pad(torch.from_numpy(np.ascontiguousarray(img.transpose(1, 0, 2))).permute(2, 0, 1),
                                None, 64)
    assert col[0] == 230 and col[-1] == 20
    assert np.array_equal(col, flat[0, x0, y0:y1].numpy())  # the strip lying flat gives the same row
    assert t[y0:y1, x0].tolist() == (col < 128).astype(int).tolist()
    p = predict_semantic(Dark(), [img], size=64, device="cpu")[0]
    assert int(p.sum()) == int(truth.sum())


# -- 5, 6: argument checks ----------------------------------------------------------------------------
@pytest.mark.parametrize("bs", [0, -1, 1.5, True, "2"])
def test_batch_size_must_be_a_whole_number_of_at_least_1(bs):
    img = np.full((20, 30, 3), 200, np.uint8)
    with pytest.raises(ValueError, match="batch_size must be a whole number of at least 1"):
        predict_semantic(Dark(), [img, img], batch_size=bs, device="cpu")
    with pytest.raises(ValueError, match="batch_size must be a whole number of at least 1"):
        two_stage_segment([np.array([[1, 1, 5, 5]])], Dark(), [img], batch_size=bs, device="cpu")


@pytest.mark.parametrize("size", [32.5, "64", 0, -3, True])
def test_size_must_be_none_model_or_a_positive_whole_number(size):
    with pytest.raises(ValueError, match="size must be None, 'model' or a whole number"):
        predict_semantic(Dark(), [np.full((20, 30, 3), 200, np.uint8)], size=size, device="cpu")


def test_sizes_that_are_allowed_still_work():
    img = np.full((20, 30, 3), 200, np.uint8)
    for size in (None, "model", 16, np.int64(16)):
        assert predict_semantic(Dark(), [img], size=size, device="cpu")[0].shape == (20, 30)


def test_a_lone_grey_image_is_named_as_such():
    with pytest.raises(ValueError, match=r"grey \(H, W\) image.*RGB.*list"):
        predict_semantic(Dark(), np.full((20, 30), 200, np.uint8), device="cpu")


def test_tta_must_be_a_bool():
    img = np.full((20, 30, 3), 200, np.uint8)
    with pytest.raises(ValueError, match="tta must be True or False"):
        predict_semantic(Dark(), [img], tta="no", device="cpu")
    assert predict_semantic(Dark(), [img], tta=np.bool_(True), device="cpu")[0].shape == (20, 30)


@pytest.mark.parametrize("box", [[20, 15, 5, 5], [5, 15, 20, 5], [20, 5, 5, 15]])
def test_an_inverted_box_is_refused(box):
    img = np.full((20, 30, 3), 200, np.uint8)
    with pytest.raises(ValueError, match=r"image 0: box 0 \[.*\] has x1 < x0 or y1 < y0"):
        two_stage_segment([np.array([box], np.float32)], Dark(), [img], device="cpu")
    (p,) = two_stage_segment([np.array([[5, 5, 5, 9]], np.float32)], Dark(), [img], device="cpu")  # empty: allowed
    assert p["masks"].shape == (1, 20, 30)
