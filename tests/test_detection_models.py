"""Detector builders, local weights, save / load (tiny inputs: CPU-friendly)."""
import json
from pathlib import Path

import pytest
import torch
import torchvision

from smearlab.core.device import resolve_device
from smearlab.core.errors import DataError
from smearlab.detection.models import (ARCHS, DetectorConfig, build_detector, count_parameters, load_model,
                                       save_model)
from smearlab.models import load_model as load_any_model

CLASSES = ["RBC", "WBC", "Platelets"]


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch):
    """Any attempt to fetch weights fails loudly."""
    def refuse(*a, **k):
        raise AssertionError(f"download attempted: {a}")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    import torchvision.models._api as api
    if hasattr(api, "load_state_dict_from_url"):
        monkeypatch.setattr(api, "load_state_dict_from_url", refuse)


def small(arch="fasterrcnn_mobilenet", **kw):
    return DetectorConfig(arch=arch, class_names=CLASSES, min_size=128, max_size=128, **kw)


def test_archs_listed():
    assert {"fasterrcnn", "fasterrcnn_v2", "retinanet", "fasterrcnn_mobilenet"} <= set(ARCHS)


@pytest.mark.parametrize("arch", ["fasterrcnn", "fasterrcnn_v2", "retinanet"])
def test_heavy_archs_build(arch):
    m = build_detector(small(arch))
    n = count_parameters(m)
    assert n["total"] > 20e6 and n["trainable"] == n["total"]
    if arch == "retinanet":
        a = m.anchor_generator.num_anchors_per_location()[0]
        assert m.head.classification_head.cls_logits.out_channels == a * 4
        assert m.detections_per_img == 300 and m.score_thresh == pytest.approx(0.01)
    else:
        assert m.roi_heads.box_predictor.cls_score.out_features == 4
        assert m.roi_heads.detections_per_img == 300
    assert m.detector_config.arch == arch


@pytest.mark.parametrize("arch", ["fasterrcnn_mobilenet", "fasterrcnn_tiny"])
def test_light_archs_forward(arch):
    torch.manual_seed(0)
    m = build_detector(small(arch)).eval()
    with torch.no_grad():
        out = m(torch.rand(1, 3, 128, 128))
    assert set(out[0]) == {"boxes", "scores", "labels"}
    assert out[0]["boxes"].shape[1] == 4 and len(out[0]["boxes"]) <= 300


def test_one_channel_model():
    m = build_detector(small(in_channels=1)).eval()
    assert len(m.transform.image_mean) == 1 and len(m.transform.image_std) == 1
    assert m.backbone.body["0"][0].in_channels == 1
    with torch.no_grad():
        out = m([torch.rand(1, 128, 128)])
    assert out[0]["boxes"].shape[1] == 4


def test_frozen_backbone_has_fewer_trainable_params():
    full = count_parameters(build_detector(small()))
    frozen_model = build_detector(small(freeze_backbone=True))
    frozen = count_parameters(frozen_model)
    assert frozen["trainable"] < full["trainable"] and frozen["trainable"] < frozen["total"]
    assert not any(p.requires_grad for p in frozen_model.backbone.body.parameters())
    assert all(p.requires_grad for p in frozen_model.backbone.fpn.parameters())


@pytest.mark.parametrize("arch,channels", [("fasterrcnn_mobilenet", 3), ("fasterrcnn_tiny", 1)])
def test_save_load_roundtrip(tmp_path, arch, channels):
    torch.manual_seed(1)
    cfg = small(arch, in_channels=channels)
    m = build_detector(cfg).eval()
    x = [torch.rand(channels, 128, 128)]
    with torch.no_grad():
        ref = m(x)[0]
    save_model(m, cfg, tmp_path / "m", thresholds={"score": {"RBC": 0.5}}, preprocess={"steps": []})
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == \
        ["config.json", "preprocess.json", "thresholds.json", "weights.pt"]
    assert json.loads((tmp_path / "m" / "config.json").read_text())["class_names"] == CLASSES
    m2 = load_model(tmp_path / "m", device="cpu")
    assert not m2.training and m2.detector_config.class_names == CLASSES
    assert load_any_model(tmp_path / "m", device="cpu").detector_config == m2.detector_config
    assert m2.thresholds == {"score": {"RBC": 0.5}} and m2.preprocess_spec == {"steps": []}
    with pytest.raises(DataError, match="'score'"):  # a file load_model would refuse is never written
        save_model(m, cfg, tmp_path / "bad", thresholds={"RBC": 0.5})
    assert not (tmp_path / "bad").exists()
    with torch.no_grad():
        out = m2(x)[0]
    for k in ref:
        assert torch.equal(ref[k], out[k]), k


def test_corrupt_checkpoint(tmp_path):
    cfg = small("fasterrcnn_tiny")
    save_model(build_detector(cfg), cfg, tmp_path / "m")
    (tmp_path / "m" / "weights.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(DataError, match="weights.pt.*corrupt"):
        load_model(tmp_path / "m", device="cpu")
    with pytest.raises(DataError, match="config.json"):
        load_model(tmp_path / "nothing-here", device="cpu")
    for text, problem in (("[1, 2]", "got a list"), ("{broken", "not a readable JSON"),
                          ('{"arch": "nope"}', "unknown detector arch")):
        (tmp_path / "m" / "config.json").write_text(text)
        with pytest.raises(DataError, match=f"config.json.*{problem}"):
            load_model(tmp_path / "m", device="cpu")


def test_checkpoint_of_other_classes(tmp_path):
    cfg = small("fasterrcnn_tiny")
    save_model(build_detector(cfg), cfg, tmp_path / "m")
    other = DetectorConfig(arch="fasterrcnn_tiny", class_names=["RBC", "WBC"], min_size=128, max_size=128)
    saved = json.loads((tmp_path / "m" / "config.json").read_text())  # the config of this save, edited by hand
    (tmp_path / "m" / "config.json").write_text(json.dumps({**other.to_dict(), "save_id": saved["save_id"]}))
    with pytest.raises(DataError, match=r"weights\.pt.*\['RBC', 'WBC', 'Platelets'\].*\['RBC', 'WBC'\]"):
        load_model(tmp_path / "m", device="cpu")
    # a raw state dict (no class names stored): the shape mismatch is still named
    sd = torch.load(tmp_path / "m" / "weights.pt", weights_only=True)["state_dict"]
    torch.save(sd, tmp_path / "m" / "weights.pt")
    with pytest.raises(DataError, match=r"3 classes.*\['RBC', 'WBC'\]"):
        load_model(tmp_path / "m", device="cpu")


def test_missing_local_weights(tmp_path):
    with pytest.raises(DataError, match="pretrained weights must be a local file"):
        build_detector(small(weights_path=str(tmp_path / "resnet50.pth")))


def test_local_backbone_and_detector_weights(tmp_path):
    # a classification backbone state dict (as torchvision's mobilenet_v3_large-*.pth)
    torch.manual_seed(2)
    cls_model = torchvision.models.mobilenet_v3_large(weights=None)
    torch.save(cls_model.state_dict(), tmp_path / "mnv3.pth")
    m = build_detector(small(weights_path=str(tmp_path / "mnv3.pth")))
    w = cls_model.features[0][0].weight
    assert torch.equal(m.backbone.body["0"][0].weight, w)
    assert count_parameters(m)["trainable"] < count_parameters(m)["total"]  # 3 trainable stages
    g = build_detector(small(weights_path=str(tmp_path / "mnv3.pth"), in_channels=1))
    assert torch.allclose(g.backbone.body["0"][0].weight, w.sum(1, keepdim=True))
    # a whole detector of other classes: everything but the class-specific predictor loads
    donor_cfg = DetectorConfig(arch="fasterrcnn_tiny", class_names=["a", "b", "c", "d", "e"])
    donor = build_detector(donor_cfg)
    torch.save(donor.state_dict(), tmp_path / "det.pth")
    t = build_detector(small("fasterrcnn_tiny", weights_path=str(tmp_path / "det.pth"), frozen_bn=False))
    assert torch.equal(t.rpn.head.conv[0][0].weight, donor.rpn.head.conv[0][0].weight)
    assert t.roi_heads.box_predictor.cls_score.out_features == 4
    (tmp_path / "bad.pth").write_bytes(b"\x00garbage")
    with pytest.raises(DataError, match="bad.pth"):
        build_detector(small(weights_path=str(tmp_path / "bad.pth")))


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            resolve_device("cuda")


def test_bad_config():
    with pytest.raises(ValueError, match="unknown detector arch"):
        DetectorConfig(arch="yolo", class_names=CLASSES)
    with pytest.raises(ValueError, match="in_channels"):
        DetectorConfig(class_names=CLASSES, in_channels=2)
    with pytest.raises(ValueError, match="feature levels"):
        build_detector(small("fasterrcnn_tiny", anchor_sizes=[16, 32]))
    m = build_detector(small("fasterrcnn_tiny", anchor_sizes=[[8, 16], [32, 48], [64, 96]], aspect_ratios=[1.0]))
    assert m.rpn.anchor_generator.num_anchors_per_location() == [2, 2, 2]


# -- torchvision's weights API, opt-in (#17) ------------------------------------------------------------------
@pytest.fixture
def hub(tmp_path):
    """torch's cache moved into the test's folder, and put back afterwards."""
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(old)


def test_backbone_weights_come_from_torchs_cache(hub, monkeypatch):
    from smearlab.detection.models import backbone_weights_file

    def no_network(*a, **k):
        raise AssertionError("nothing may be fetched when the file is cached")
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    cfg = DetectorConfig(arch="fasterrcnn", class_names=["a"], min_size=64, max_size=64, backbone_weights="DEFAULT")
    w = torchvision.models.ResNet50_Weights.DEFAULT
    file = hub / "checkpoints" / w.url.rsplit("/", 1)[-1]
    file.parent.mkdir(parents=True)
    fake = torchvision.models.resnet50(weights=None).state_dict()
    fake["conv1.weight"] = torch.full_like(fake["conv1.weight"], 0.125)
    torch.save(fake, file)
    assert backbone_weights_file(cfg) == file
    model = build_detector(cfg)
    assert torch.all(model.backbone.body.conv1.weight == 0.125)
    assert cfg.uses_frozen_bn and cfg.to_dict()["backbone_weights"] == "DEFAULT"
    # a name of another backbone, and an arch without one, are refused
    with pytest.raises(ValueError, match="not weights of resnet50"):
        backbone_weights_file(DetectorConfig(arch="fasterrcnn", backbone_weights="MobileNet_V3_Large_Weights.DEFAULT"))
    with pytest.raises(ValueError, match="no torchvision backbone"):
        backbone_weights_file(DetectorConfig(arch="fasterrcnn_tiny", backbone_weights="DEFAULT"))


def test_backbone_weights_offline_say_which_file_goes_where(hub, monkeypatch):
    from urllib.error import URLError

    def offline(*a, **k):
        raise URLError("no network")
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    cfg = DetectorConfig(arch="fasterrcnn_mobilenet", class_names=["a"], backbone_weights="IMAGENET1K_V1")
    with pytest.raises(DataError, match="place it at this path") as e:
        build_detector(cfg)
    assert "mobilenet_v3_large" in str(e.value) and str(hub / "checkpoints") in str(e.value)
    assert not list((hub / "checkpoints").glob("*.pth"))      # no half-written file
    # without backbone_weights nothing is looked up at all
    build_detector(DetectorConfig(arch="fasterrcnn_tiny", class_names=["a"], min_size=64, max_size=64))


@pytest.mark.parametrize("kind", ["lateral", "fpn"])
def test_fine_level_pools_small_rois_from_stride_4_and_keeps_the_rpn_on_the_coarse_levels(kind):
    torch.manual_seed(0)
    cfg = small("fasterrcnn_tiny", fine_level=kind)
    m = build_detector(cfg)
    plain = build_detector(small("fasterrcnn_tiny"))
    images = [torch.rand(3, 128, 128)]
    targets = [{"boxes": torch.tensor([[10.0, 10, 30, 30], [20, 20, 120, 120]]), "labels": torch.tensor([3, 2])}]
    losses = m(images, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert m.backbone.body["layer1"][0].weight.grad.abs().sum() > 0  # the stride-4 stage learns through the heads
    features = m.backbone(torch.rand(1, 3, 128, 128))
    assert list(features) == ["fine", "0", "1", "pool"] and features["fine"].shape[-1] == 32
    # the box head's pooler: a 20-px RoI from stride 4, a 150-px one from stride 8
    pool = m.roi_heads.box_roi_pool
    assert pool.scales == [0.25, 0.125, 0.0625]
    levels = pool.map_levels([torch.tensor([[0.0, 0, 20, 20], [0, 0, 150, 150]])])
    assert levels.tolist() == [0, 1]
    # the RPN: the same anchors as without the fine level, and blind to it
    m.eval()
    with torch.no_grad():
        from collections import OrderedDict

        from torchvision.models.detection.image_list import ImageList
        from torchvision.models.detection.rpn import RegionProposalNetwork
        il = ImageList(torch.rand(1, 3, 128, 128), [(128, 128)])
        coarse = OrderedDict((k, v) for k, v in features.items() if k != "fine")
        with_fine, _ = m.rpn(il, features)
        without, _ = RegionProposalNetwork.forward(m.rpn, il, coarse)  # torchvision's own, coarse levels only
    assert torch.equal(with_fine[0], without[0])
    assert m.rpn.anchor_generator.sizes == plain.rpn.anchor_generator.sizes


def test_fine_level_round_trips_and_refuses_what_it_is_not_for(tmp_path):
    torch.manual_seed(2)
    cfg = small("fasterrcnn_tiny", fine_level="lateral")
    m = build_detector(cfg).eval()
    x = [torch.rand(3, 128, 128)]
    with torch.no_grad():
        ref = m(x)[0]
    save_model(m, cfg, tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["fine_level"] == "lateral"
    with torch.no_grad():
        out = load_model(tmp_path / "m", device="cpu")(x)[0]
    assert torch.equal(ref["boxes"], out["boxes"]) and torch.equal(ref["scores"], out["scores"])
    with pytest.raises(ValueError, match="unknown fine_level"):
        small("fasterrcnn_tiny", fine_level="stride4")
    with pytest.raises(ValueError, match="tiny models"):
        small("fasterrcnn_mobilenet", fine_level="lateral")


def _sampled_head_outputs(m, seed=0):
    """The box head's inputs of one training step: class logits, offsets and the sampled proposals."""
    torch.manual_seed(seed)
    images = [torch.rand(3, 128, 128), torch.rand(3, 128, 128)]
    targets = [{"boxes": torch.tensor([[10.0, 10, 30, 30], [40, 40, 100, 90]]), "labels": torch.tensor([3, 1])},
               {"boxes": torch.tensor([[5.0, 60, 50, 120]]), "labels": torch.tensor([2])}]
    m.train()
    il, tg = m.transform(images, targets)
    f = m.backbone(il.tensors)
    props, _ = m.rpn(il, f, tg)
    h = m.roi_heads
    props, matched, labels, reg = h.select_training_samples(props, tg)
    logits, offsets = h.box_predictor(h.box_head(h.box_roi_pool(f, props, il.image_sizes)))
    gt = [t["boxes"][i] for t, i in zip(tg, matched)]
    return logits, offsets, labels, reg, props, gt


def test_box_losses_smooth_l1_is_torchvisions_and_the_iou_losses_score_the_decoded_boxes():
    from torchvision.models.detection.roi_heads import fastrcnn_loss
    from torchvision.ops import generalized_box_iou

    from smearlab.detection.losses import IOU_LOSS_WEIGHT, box_head_loss
    m = build_detector(small("fasterrcnn_tiny"))
    logits, offsets, labels, reg, props, gt = _sampled_head_outputs(m)
    coder = m.roi_heads.box_coder
    ref = fastrcnn_loss(logits, offsets, labels, reg)
    ours = box_head_loss(logits, offsets, labels, reg, props, box_loss="smooth_l1", box_coder=coder)
    assert torch.equal(ref[0], ours[0]) and torch.equal(ref[1], ours[1])
    # GIoU by hand: each positive proposal's predicted box (its class's offsets) against its ground truth
    lab, n = torch.cat(labels), len(torch.cat(labels))
    pos = torch.where(lab > 0)[0]
    pred = coder.decode_single(offsets.reshape(n, -1, 4)[pos, lab[pos]], torch.cat(props)[pos])
    truth = torch.cat(gt)[pos]
    want = IOU_LOSS_WEIGHT * (1 - torch.diag(generalized_box_iou(pred, truth))).sum() / n
    got = box_head_loss(logits, offsets, labels, reg, props, box_loss="giou", box_coder=coder)
    assert torch.equal(got[0], ref[0]) and got[1].item() == pytest.approx(want.item(), rel=1e-4)
    assert len(pos) > 0 and got[1] > 0
    # offsets that hit every target exactly cost nothing under each loss
    perfect = offsets.detach().clone().reshape(n, -1, 4)
    perfect[pos, lab[pos]] = torch.cat(reg)[pos]
    for kind in ("smooth_l1", "giou", "diou", "ciou"):
        loss = box_head_loss(logits, perfect.reshape(n, -1), labels, reg, props, box_loss=kind, box_coder=coder)[1]
        assert loss.item() == pytest.approx(0.0, abs=1e-5), kind


@pytest.mark.parametrize("kind", ["giou", "ciou"])
def test_iou_box_loss_trains_predicts_as_before_and_round_trips(tmp_path, kind):
    torch.manual_seed(1)
    cfg = small("fasterrcnn_tiny", box_loss=kind, fine_level="lateral")
    m = build_detector(cfg)
    assert type(m.roi_heads).__name__ == "IoULossRoIHeads" and m.roi_heads.box_loss == kind
    plain = build_detector(small("fasterrcnn_tiny", fine_level="lateral"))
    assert m.state_dict().keys() == plain.state_dict().keys()     # the same weights, only the loss differs
    images = [torch.rand(3, 128, 128)]
    targets = [{"boxes": torch.tensor([[10.0, 10, 34, 30], [40, 44, 100, 90]]), "labels": torch.tensor([3, 1])}]
    losses = m(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    sum(losses.values()).backward()
    assert m.roi_heads.box_predictor.bbox_pred.weight.grad.abs().sum() > 0
    # steps of the box head on the same sampled proposals lower the IoU loss
    from smearlab.detection.losses import box_head_loss
    with torch.no_grad():
        il, tg = m.transform(images, targets)
        f = m.backbone(il.tensors)
        props, _ = m.rpn(il, f, tg)
        props, _, labels, reg = m.roi_heads.select_training_samples(props, tg)
        pooled = m.roi_heads.box_roi_pool(f, props, il.image_sizes)
    h = m.roi_heads
    opt = torch.optim.SGD(list(h.box_head.parameters()) + list(h.box_predictor.parameters()), lr=0.02)
    seen = []
    for _ in range(20):
        logits, offsets = h.box_predictor(h.box_head(pooled))
        loss = box_head_loss(logits, offsets, labels, reg, props, box_loss=kind, box_coder=h.box_coder)[1]
        seen.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert seen[-1] < 0.8 * seen[0]
    # prediction is torchvision's: the same weights give the same boxes with either loss
    plain.load_state_dict(m.state_dict())
    m.eval(), plain.eval()
    x = [torch.rand(3, 128, 128)]
    with torch.no_grad():
        a, b = m(x)[0], plain(x)[0]
    assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["scores"], b["scores"])
    save_model(m, cfg, tmp_path / "m")
    back = load_model(tmp_path / "m", device="cpu")
    assert back.roi_heads.box_loss == kind and back.detector_config.box_loss == kind


def test_box_loss_refuses_what_it_is_not_for():
    with pytest.raises(ValueError, match="unknown box_loss"):
        small("fasterrcnn_tiny", box_loss="iou")
    for arch in ("maskrcnn_tiny", "retinanet"):
        with pytest.raises(ValueError, match="Faster R-CNN models"):
            small(arch, box_loss="giou")
    assert small("fasterrcnn_tiny").box_loss == "smooth_l1"


def test_weights_without_class_names_are_loaded_with_a_warning(tmp_path, caplog):
    """A bare state dict in weights.pt cannot tell its class order: loading says so."""
    cfg = small("fasterrcnn_tiny")
    m = build_detector(cfg)
    save_model(m, cfg, tmp_path / "m")
    torch.save(m.state_dict(), tmp_path / "m" / "weights.pt")
    with caplog.at_level("WARNING", logger="smearlab.core.model_folder"):
        load_model(tmp_path / "m", device="cpu")
    assert "carries no class names" in caplog.text


def test_a_model_folder_never_mixes_two_saves(tmp_path):
    """An interrupted save left new weights beside the old config (read without a word), and a
    second model saved into the same folder kept the first one's thresholds and pipeline."""
    import json
    import shutil

    from smearlab.core.errors import DataError
    from smearlab.detection.models import DetectorConfig, build_detector, load_model, save_model
    from smearlab.preprocess import Preprocess
    names = ["RBC", "WBC"]
    folder = tmp_path / "m"
    first = DetectorConfig(arch="fasterrcnn_tiny", class_names=names, min_size=96, max_size=96)
    save_model(build_detector(first), first, folder, thresholds={"score": {"RBC": 0.9, "WBC": 0.9}},
               preprocess=Preprocess([("gamma", {"g": 2.0})]))
    old_config = (folder / "config.json").read_text()
    second = DetectorConfig(arch="fasterrcnn_tiny", class_names=names, min_size=128, max_size=128)
    save_model(build_detector(second), second, folder)
    assert not (folder / "thresholds.json").exists() and not (folder / "preprocess.json").exists()
    m = load_model(folder, device="cpu")
    assert m.preprocess_spec is None and not m.thresholds and m.detector_config.min_size == 128
    edited = json.loads((folder / "config.json").read_text())
    edited["pixel_size_um"] = 0.1  # a hand edit keeps the save id: still one save
    (folder / "config.json").write_text(json.dumps(edited))
    assert load_model(folder, device="cpu").detector_config.pixel_size_um == 0.1
    (folder / "config.json").write_text(old_config)  # the first save's config beside the second's weights
    with pytest.raises(DataError, match="two different saves"):
        load_model(folder, device="cpu")
    shutil.rmtree(folder)


def test_side_files_of_another_save_are_ignored_and_unusable_ones_named_at_load(tmp_path, caplog):
    """A save that cannot write its JSON fails before touching the folder; a side file left by
    another save is ignored with a warning; a pipeline that cannot run, or thresholds with a key
    they do not know, are dealt with at load (they failed each image, or crashed predict)."""
    import logging

    from smearlab.core.model_folder import read_side_file, write_side_file
    from smearlab.preprocess import Preprocess
    names = ["RBC", "WBC"]
    folder = tmp_path / "m"
    cfg = DetectorConfig(arch="fasterrcnn_tiny", class_names=names, min_size=96, max_size=96)
    save_model(build_detector(cfg), cfg, folder, preprocess=Preprocess([("gamma", {"g": 2.0})]))
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(TypeError):  # not JSON
        save_model(build_detector(cfg), cfg, folder, train_config={"lr": object()})
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # untouched
    stale = (folder / "preprocess.json").read_text()
    save_model(build_detector(cfg), cfg, folder)  # a second save; then the first's file put back
    (folder / "preprocess.json").write_text(stale)
    with caplog.at_level(logging.WARNING):
        assert load_model(folder, device="cpu").preprocess_spec is None
    assert "another save" in caplog.text
    write_side_file(folder, "preprocess.json", {"smearlab_preprocess": 1,
                                                "steps": [{"name": "stain_augment", "params": {}}]})
    with pytest.raises(DataError, match="preprocess.json.*stain_augment"):
        load_model(folder, device="cpu")
    write_side_file(folder, "preprocess.json", None)
    write_side_file(folder, "thresholds.json", {"score": {"RBC": 0.4, "WBC": 0.6}, "note": "hand-made"})
    m = load_model(folder, device="cpu")
    assert m.thresholds["score"] == {"RBC": 0.4, "WBC": 0.6} and "note" not in m.thresholds
    assert "save_id" not in read_side_file(folder, "thresholds.json")


@pytest.mark.parametrize("fails_at", ["config.json", "preprocess.json", "thresholds.json"])
def test_a_save_interrupted_between_its_files_is_refused_not_loaded_without_its_pipeline(tmp_path, monkeypatch,
                                                                                         fails_at):
    """A second save that failed while writing its preprocess.json or thresholds.json left a model
    that loaded without its pipeline or thresholds (only a log line): it predicted on unprocessed
    images and returned raw detections."""
    import smearlab.core.model_folder as mf
    from smearlab.core.errors import DataError
    from smearlab.preprocess import Preprocess
    names = ["RBC", "WBC"]
    folder = tmp_path / "m"
    cfg = DetectorConfig(arch="fasterrcnn_tiny", class_names=names, min_size=96, max_size=96)
    kept = {"thresholds": {"score": {"RBC": 0.5, "WBC": 0.5}}, "preprocess": Preprocess([("gamma", {"g": 2.0})])}
    save_model(build_detector(cfg), cfg, folder, **kept)
    real = mf.write_text

    def failing(path, text):
        if Path(path).name == fails_at:
            raise OSError("disk full")
        real(path, text)
    monkeypatch.setattr(mf, "write_text", failing)
    with pytest.raises(OSError):
        save_model(build_detector(cfg), cfg, folder, thresholds={"score": {"RBC": 0.2, "WBC": 0.2}},
                   preprocess=Preprocess([("gamma", {"g": 0.5})]))
    monkeypatch.setattr(mf, "write_text", real)
    with pytest.raises(DataError, match="save it again|two different saves"):
        load_model(folder, device="cpu")
    save_model(build_detector(cfg), cfg, folder, **kept)  # saved again: whole
    m = load_model(folder, device="cpu")
    assert m.preprocess_spec is not None and m.thresholds["score"] == {"RBC": 0.5, "WBC": 0.5}


@pytest.mark.parametrize("arch", ["fasterrcnn_tiny", "maskrcnn_tiny", "retinanet"])
def test_a_detector_started_from_a_folder_takes_its_head_by_class_name(tmp_path, arch):
    """The head was copied by position whenever its shape matched: a model started from a folder of
    RBC, WBC under the classes WBC, RBC called every red cell a white cell."""
    torch.manual_seed(0)
    cfg = DetectorConfig(arch=arch, class_names=["RBC", "WBC", "Platelets"], min_size=96, max_size=96)
    first = build_detector(cfg)
    save_model(first, cfg, tmp_path / "m")
    again = DetectorConfig(arch=arch, class_names=["WBC", "RBC", "Neutrophil"], min_size=96, max_size=96,
                           weights_path=str(tmp_path / "m"), frozen_bn=False)
    a, b = first.state_dict(), build_detector(again).state_dict()
    key = ("head.classification_head.cls_logits.weight" if arch == "retinanet"
           else "roi_heads.box_predictor.cls_score.weight")
    old, new = a[key].reshape(-1, 4, *a[key].shape[1:]), b[key].reshape(-1, 4, *b[key].shape[1:])  # anchors x classes
    assert torch.equal(new[:, 0], old[:, 0])  # background
    assert torch.equal(new[:, 1], old[:, 2]) and torch.equal(new[:, 2], old[:, 1])  # WBC and RBC by name
    assert not torch.equal(new[:, 3], old[:, 3])  # Neutrophil is new: fresh rows, not the platelets'
    if arch != "retinanet":
        box = "roi_heads.box_predictor.bbox_pred.weight"
        assert torch.equal(b[box][4:8], a[box][8:12])  # WBC's box regression came along


def test_weights_of_a_newer_format_are_named_as_such(tmp_path):
    """A later format that keeps its weights under another key was reported as 'not a state dict'."""
    cfg = DetectorConfig(arch="fasterrcnn_tiny", class_names=["RBC"], min_size=96, max_size=96)
    folder = save_model(build_detector(cfg), cfg, tmp_path / "m")
    payload = torch.load(folder / "weights.pt", weights_only=True)
    torch.save({"format": "smearlab-model/2", "weights": payload["state_dict"], "save_id": payload["save_id"]},
               folder / "weights.pt")
    with pytest.raises(DataError, match="unknown weights format 'smearlab-model/2'"):
        load_model(folder, device="cpu")


def test_weights_of_a_new_save_beside_a_config_of_a_folder_older_than_save_ids_are_refused(tmp_path):
    """A folder saved before save ids existed, saved over and interrupted after weights.pt: the new
    weights were read with the old config.json (another input size, another model's settings)."""
    import json
    cfg = DetectorConfig(arch="fasterrcnn_tiny", class_names=["RBC"], min_size=96, max_size=96)
    folder = save_model(build_detector(cfg), cfg, tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    old = {k: v for k, v in config.items() if k not in ("save_id", "side_files")}
    (folder / "config.json").write_text(json.dumps({**old, "min_size": 64}))
    with pytest.raises(DataError, match="two different saves"):
        load_model(folder, device="cpu")
    payload = torch.load(folder / "weights.pt", weights_only=True)   # neither with an id: an old folder reads
    torch.save({k: v for k, v in payload.items() if k != "save_id"}, folder / "weights.pt")
    assert load_model(folder, device="cpu").detector_config.min_size == 64
