"""Mask R-CNN: builders, save / load, training on instance masks, predicted masks (whole and tiled),
masks kept aligned by post-processing, and mask metrics."""
import numpy as np
import pytest
import torch

from smearlab.data import Sample, SmearDataset
from smearlab.data.synthetic import make_dataset
from smearlab.detection.models import (MASK_ARCHS, DetectorConfig, build_detector, count_parameters,
                                       is_mask_model, load_model, save_model)
from smearlab.detection.postprocess import RawPredictions, postprocess
from smearlab.detection.predict import merge_tiles, predict
from smearlab.detection.train import _GpuImages, _sanitize, TrainConfig, train_detector
from smearlab.metrics.detection import coco_eval
from smearlab.metrics.instances import dsb_score, mask_ap, segmentation_metrics

CLASSES = ["RBC", "WBC", "Platelets"]


def cfg_of(arch="maskrcnn_tiny", size=96, **kw):
    return DetectorConfig(arch=arch, class_names=CLASSES, min_size=size, max_size=size, **kw)


@pytest.fixture(scope="module")
def ds():
    return make_dataset(4, seed=1, width=96, height=96)


@pytest.fixture(scope="module")
def trained(ds):
    """A tiny Mask R-CNN after a few steps, with its loss history."""
    torch.manual_seed(0)
    cfg = cfg_of(detections_per_img=40)
    model = build_detector(cfg)
    tc = TrainConfig(epochs=4, batch_size=2, lr=0.02, warmup_iters=2, device="cpu", seed=0)
    hist = train_detector(model, ds, None, tc, progress=False)
    return model.eval(), hist


def test_mask_archs_build():
    assert set(MASK_ARCHS) == {"maskrcnn", "maskrcnn_tiny"}
    big = build_detector(cfg_of("maskrcnn", 128, in_channels=1, freeze_backbone=True, detections_per_img=50))
    assert is_mask_model(big) and big.roi_heads.detections_per_img == 50
    assert big.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 4
    assert big.backbone.body.conv1.in_channels == 1 and len(big.transform.image_mean) == 1
    assert not any(p.requires_grad for p in big.backbone.body.parameters())
    n = count_parameters(big)
    assert n["total"] > 40e6 and n["trainable"] < n["total"]
    tiny = build_detector(cfg_of(anchor_sizes=[8, 16, 32]))
    assert is_mask_model(tiny) and count_parameters(tiny)["total"] < 2e6
    assert tiny.rpn.anchor_generator.sizes == ((8,), (16,), (32,))
    assert not is_mask_model(build_detector(cfg_of("fasterrcnn_tiny")))


def test_save_load_roundtrip(tmp_path):
    torch.manual_seed(3)
    cfg = cfg_of(in_channels=1)
    m = build_detector(cfg).eval()
    x = [torch.rand(1, 96, 80)]
    with torch.no_grad():
        ref = m(x)[0]
    assert ref["masks"].shape[1:] == (1, 96, 80)
    save_model(m, cfg, tmp_path / "m")
    m2 = load_model(tmp_path / "m", device="cpu")
    assert is_mask_model(m2) and m2.detector_config.arch == "maskrcnn_tiny"
    with torch.no_grad():
        out = m2(x)[0]
    for k in ("boxes", "scores", "labels", "masks"):
        assert torch.equal(ref[k], out[k]), k


def test_local_detector_weights_into_mask_model(tmp_path):
    """A box detector's weights (backbone, RPN, box head) initialise a Mask R-CNN of the same family."""
    torch.manual_seed(4)
    donor = build_detector(cfg_of("fasterrcnn_tiny"))
    torch.save(donor.state_dict(), tmp_path / "det.pth")
    m = build_detector(cfg_of(weights_path=str(tmp_path / "det.pth"), frozen_bn=False))
    assert torch.equal(m.rpn.head.conv[0][0].weight, donor.rpn.head.conv[0][0].weight)
    assert torch.equal(m.roi_heads.box_predictor.cls_score.weight, donor.roi_heads.box_predictor.cls_score.weight)


def test_training_lowers_the_loss(trained):
    _, hist = trained
    losses = hist.step_losses
    assert len(losses) == 8 and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.85 * np.mean(losses[:3]), losses
    assert hist.records[-1]["loss_mask"] > 0  # the mask head was trained


def test_mask_arch_needs_masks(ds):
    no_masks = SmearDataset([Sample(s.image_id, boxes=s.boxes, labels=s.labels, _image=s.image) for s in ds],
                            ds.class_names, "boxes-only")
    model = build_detector(cfg_of())
    with pytest.raises(ValueError, match=r"maskrcnn_tiny.*instance masks.*'boxes-only'"):
        train_detector(model, no_masks, None, TrainConfig(epochs=1, device="cpu"), progress=False)


def test_predict_masks(trained, ds):
    model, _ = trained
    preds = predict(model, ds, score_floor=0.0, progress=False)
    for s, p in zip(ds, preds):
        assert p["masks"].dtype == bool and p["masks"].shape == (len(p["boxes"]), *s.hw)
    assert sum(len(p["boxes"]) for p in preds) > 0
    loose = predict(model, ds[:1], score_floor=0.0, mask_threshold=0.05, progress=False)[0]
    tight = predict(model, ds[:1], score_floor=0.0, mask_threshold=0.95, progress=False)[0]
    assert loose["masks"].sum() >= preds[0]["masks"].sum() >= tight["masks"].sum()
    assert (tight["masks"] <= loose["masks"]).all()
    with pytest.raises(ValueError, match="mask_threshold"):
        predict(model, ds[:1], mask_threshold=1.5, progress=False)


def test_tiled_predict_gives_full_size_masks(trained):
    model, _ = trained
    big = make_dataset(1, seed=5, width=150, height=120)
    p = predict(model, big, tile=64, score_floor=0.0, progress=False)[0]
    assert p["masks"].shape == (len(p["boxes"]), 120, 150) and p["masks"].dtype == bool
    # each mask lies inside its (merged) box
    for b, m in zip(p["boxes"], p["masks"]):
        ys, xs = np.nonzero(m)
        if len(xs):
            assert xs.min() >= np.floor(b[0]) - 1 and xs.max() < np.ceil(b[2]) + 1
            assert ys.min() >= np.floor(b[1]) - 1 and ys.max() < np.ceil(b[3]) + 1


H, W = 100, 160
DISCS = [(30, 40, 14, 0.9), (50, 80, 16, 0.8), (70, 130, 12, 0.7)]  # cy, cx, r, score: the second straddles tiles


def _disc(cy, cx, r, h=H, w=W):
    yy, xx = np.mgrid[0:h, 0:w]
    return (yy + 0.5 - cy) ** 2 + (xx + 0.5 - cx) ** 2 <= r ** 2


class DiscModel:
    """Fake Mask R-CNN: the image encodes x and y in channels 0 and 1, so a tile knows where it is;
    it returns the parts of the known discs inside the tile, masks as probabilities in tile
    coordinates (torchvision's output form)."""

    def __call__(self, images):
        outs = []
        for im in images:
            x0, y0 = int(im[0, 0, 0]), int(im[1, 0, 0])
            h, w = im.shape[-2:]
            boxes, scores, masks = [], [], []
            for cy, cx, r, sc in DISCS:
                m = _disc(cy, cx, r)[y0:y0 + h, x0:x0 + w]
                if m.any():
                    ys, xs = np.nonzero(m)
                    boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
                    scores.append(sc)
                    masks.append(np.where(m, 0.9, 0.1))
            outs.append({"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                         "scores": torch.tensor(scores, dtype=torch.float32),
                         "labels": torch.ones(len(boxes), dtype=torch.int64),
                         "masks": torch.tensor(np.array(masks), dtype=torch.float32).reshape(-1, 1, h, w)})
        return outs


def test_tiles_paste_and_merge_masks():
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    img = torch.from_numpy(np.stack([xx, yy, np.zeros_like(xx)]))
    whole = predict(DiscModel(), img, progress=False)[0]
    tiled = predict(DiscModel(), img, tile=64, overlap=0.25, progress=False)[0]
    want = np.stack([_disc(cy, cx, r) for cy, cx, r, _ in DISCS])
    for p in (whole, tiled):
        assert p["masks"].shape == (3, H, W)
        np.testing.assert_array_equal(p["masks"], want)
        np.testing.assert_allclose(p["scores"], [0.9, 0.8, 0.7])
    np.testing.assert_allclose(tiled["boxes"], whole["boxes"])


def test_merge_tiles_masks_checks():
    wins = [(0, 0, 10, 10), (5, 0, 15, 10)]
    with pytest.raises(ValueError, match="2 masks for 1 boxes"):
        merge_tiles([[0, 0, 4, 4]], [1.0], [0], [0], wins, (10, 15), masks=[np.ones((10, 10))] * 2)
    with pytest.raises(ValueError, match="tile window"):
        merge_tiles([[0, 0, 4, 4]], [1.0], [0], [0], wins, (10, 15), masks=[np.ones((5, 5), bool)])
    empty = merge_tiles(np.zeros((0, 4)), [], [], [], wins, (10, 15), masks=[])
    assert empty["masks"].shape == (0, 10, 15)


def _gt_predictions(ds):
    return [{"boxes": s.boxes, "scores": np.linspace(1, 0.5, len(s.boxes)), "labels": s.labels,
             "masks": s.masks} for s in ds]


def test_perfect_masks_score_one(ds):
    perfect = _gt_predictions(ds)
    assert coco_eval(ds, perfect, iou_type="segm")["mAP"] == pytest.approx(1.0)
    assert mask_ap(ds, perfect)["mask_mAP50"] == pytest.approx(1.0)
    assert dsb_score(ds, perfect, kind="masks") == pytest.approx(1.0)
    m = segmentation_metrics(ds, perfect)
    assert m["dsb_metric"] == pytest.approx(1.0) and m["mask_mAP"] == pytest.approx(1.0)
    assert m["count_mae"] == 0 and m["objects_predicted"] == ds.num_objects


def test_mask_metrics_on_model_predictions(trained, ds):
    model, _ = trained
    preds = predict(model, ds, score_floor=0.0, progress=False)
    m = segmentation_metrics(ds, preds, score_threshold=0.0)
    assert 0.0 <= m["mask_mAP"] <= m["mask_mAP50"] <= 1.0
    assert 0.0 <= m["dsb_metric"] <= 1.0
    assert m["objects_predicted"] == sum(len(p["boxes"]) for p in preds)


def test_postprocess_keeps_masks_aligned(ds, tmp_path):
    rng = np.random.default_rng(0)
    raw = []
    for s in ds:  # every object twice, the copy shifted, with random scores
        n = len(s.boxes)
        boxes = np.concatenate([s.boxes, s.boxes + 1])
        masks = np.concatenate([s.masks, np.roll(s.masks, 1, axis=(1, 2))])
        raw.append({"boxes": boxes, "scores": rng.random(2 * n), "labels": np.concatenate([s.labels] * 2),
                    "masks": masks})
    cache = RawPredictions.for_dataset(ds, raw)
    back = RawPredictions.load(cache.save(tmp_path / "raw.npz"))
    final = postprocess(back, score_thresholds=0.3, nms_iou=0.5)
    for r, f in zip(raw, final):
        assert f["masks"].shape == (len(f["boxes"]), *r["masks"].shape[1:])
        for b, m in zip(f["boxes"], f["masks"]):
            j = int(np.flatnonzero((r["boxes"] == b).all(1))[0])
            np.testing.assert_array_equal(m, r["masks"][j])


def test_gpu_path_and_sanitize_carry_masks(ds):
    data = _GpuImages(ds, grayscale=True, device=torch.device("cpu"), masks=True)
    imgs, targets = data.batch([0, 1])
    for im, t, s in zip(imgs, targets, ds):
        assert im.shape == (1, *s.hw)
        assert t["masks"].dtype == torch.uint8 and tuple(t["masks"].shape) == (len(s.boxes), *s.hw)
        assert torch.equal(t["masks"].bool(), torch.from_numpy(s.masks))
    t = dict(targets[0])
    t["boxes"] = t["boxes"].clone()
    t["boxes"][0, 2] = t["boxes"][0, 0]  # degenerate: dropped with its mask
    out = _sanitize([t])[0]
    assert len(out["boxes"]) == len(out["masks"]) == len(t["boxes"]) - 1
    assert torch.equal(out["masks"], t["masks"][1:])
