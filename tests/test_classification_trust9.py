"""Defects of the classification path found in review (trust round 9): each test failed before the fix."""
import json
import logging

import numpy as np
import pytest
import torch

from smearlab.classification.crops import CENTRAL_PAD, CENTRAL_WHOLE_CELL_PAD, CropDataset
from smearlab.classification.model import build_classifier
from smearlab.data import Sample, SmearDataset


def _crops(n=4, size=8, labels=None):
    imgs = np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones((1, size, size, 3), np.uint8)
    return CropDataset(imgs, [0, 1] * (n // 2) if labels is None else labels, ["a", "b"],
                       ids=[f"i{k}" for k in range(n)])


def test_subset_takes_a_boolean_mask_as_a_mask_and_refuses_bad_indices():
    """``d.subset(d.labels == 0)`` took the mask as positions 0/1: the wrong crops, wrong labels."""
    d = _crops()
    s = d.subset(d.labels == 0)
    assert s.ids == ["i0", "i2"] and s.labels.tolist() == [0, 0]
    assert s.images[:, 0, 0, 0].tolist() == [0, 2]
    assert d.subset(torch.as_tensor(d.labels == 1)).ids == ["i1", "i3"]
    assert d.subset([2, 0]).ids == ["i2", "i0"] and d.subset(np.array([1.0])).ids == ["i1"]
    assert len(d.subset([])) == 0 and len(d.subset(np.zeros(4, bool))) == 0
    with pytest.raises(ValueError, match="boolean mask of shape"):
        d.subset([True, False])
    with pytest.raises(ValueError, match="whole numbers"):
        d.subset([0.5, 1])
    with pytest.raises(ValueError, match="whole numbers"):
        d.subset(["0"])

    img = np.zeros((8, 8, 3), np.uint8)
    ds = SmearDataset([Sample(f"s{k}", _image=img, image_label=k % 2) for k in range(4)], ["a", "b"], "d")
    mask = np.array([s.image_label == 1 for s in ds])
    assert [s.image_id for s in ds.subset(mask)] == ["s1", "s3"]
    assert [s.image_id for s in ds.subset(range(2))] == ["s0", "s1"] and len(ds.subset([])) == 0
    assert [s.image_id for s in ds[1:3]] == ["s1", "s2"]
    with pytest.raises(ValueError, match="boolean mask of shape"):
        ds.subset(mask[:3])
    with pytest.raises(ValueError, match="whole numbers"):
        ds.subset([1.5])


@pytest.fixture(scope="module")
def detector_folder(tmp_path_factory):
    from smearlab.detection.models import DetectorConfig, build_detector, save_model
    return save_model(build_detector(DetectorConfig(arch="fasterrcnn_tiny", class_names=["RBC", "WBC"])), None,
                      tmp_path_factory.mktemp("det") / "det")


def test_cascade_for_central_crops_uses_the_whole_cell_margin(tmp_path, detector_folder, caplog):
    """The central crops' margin (0.3 around the stained part) was applied around whole-cell
    boxes (cells ~1.5x smaller than in training), and an explicit pad was refused."""
    from smearlab.classification.predict import save_cascade

    assert CENTRAL_PAD == 0.3 and CENTRAL_WHOLE_CELL_PAD == 0.1
    clf = build_classifier(["a", "b"], width=4, input_size=16)
    clf.crop_cut = {"source": "central", "pad": CENTRAL_PAD, "fill": "median"}
    with caplog.at_level(logging.WARNING, logger="smearlab.classification.predict"):
        f = save_cascade(tmp_path / "c1", detector_folder, clf)
    assert json.loads((f / "config.json").read_text())["pad"] == CENTRAL_WHOLE_CELL_PAD
    assert "approximately" in caplog.text
    f = save_cascade(tmp_path / "c2", detector_folder, clf, pad=0.15)  # an explicit margin is taken
    assert json.loads((f / "config.json").read_text())["pad"] == 0.15
    clf.crop_cut = {"source": "image", "pad": None, "fill": "median"}  # as before: 0.1, or the one given
    assert json.loads((save_cascade(tmp_path / "c3", detector_folder, clf) / "config.json").read_text())["pad"] == 0.1
    f = save_cascade(tmp_path / "c4", detector_folder, clf, pad=0.2)
    assert json.loads((f / "config.json").read_text())["pad"] == 0.2
    clf.crop_cut = {"source": "boxes", "pad": 0.3, "fill": "median"}  # box crops: the same margin or none
    assert json.loads((save_cascade(tmp_path / "c5", detector_folder, clf) / "config.json").read_text())["pad"] == 0.3
    with pytest.raises(ValueError, match="margin of 0.3"):
        save_cascade(tmp_path / "c6", detector_folder, clf, pad=0.1)


def test_raw_images_are_letterboxed_with_the_models_recorded_fill():
    """predict_classes and cnn_embedding padded raw images with "median" whatever the training crops had."""
    from smearlab.classification.embed import cnn_embedding
    from smearlab.classification.predict import predict_classes
    from smearlab.core.geometry import letterbox

    rng = np.random.default_rng(0)
    img = rng.integers(100, 255, (16, 8, 3), dtype=np.uint8)  # not square: the letterbox pads it
    torch.manual_seed(0)
    m = build_classifier(["a", "b"], width=4, input_size=16).eval()
    m.crop_cut = {"source": "image", "pad": None, "fill": [0]}
    ref = torch.from_numpy(letterbox(img, 16, [0])[None]).permute(0, 3, 1, 2).contiguous()
    median = torch.from_numpy(letterbox(img, 16, "median")[None]).permute(0, 3, 1, 2).contiguous()
    assert not torch.equal(ref, median)
    np.testing.assert_allclose(predict_classes(m, [img], device="cpu").probs,
                               predict_classes(m, ref, device="cpu").probs, atol=1e-6)
    np.testing.assert_allclose(cnn_embedding(m, [img], device="cpu"), cnn_embedding(m, ref, device="cpu"), atol=1e-6)
    m.crop_cut = None  # nothing recorded: "median", as before
    np.testing.assert_allclose(predict_classes(m, [img], device="cpu").probs,
                               predict_classes(m, median, device="cpu").probs, atol=1e-6)


def test_class_mapping_keeps_unlabelled_and_refuses_bad_labels():
    """-1 became the last class through negative indexing; 1.7 was truncated to 1."""
    from smearlab.data.classes import match_classes

    m = match_classes(["a", "b", "c"], ["c", "a", "b"])
    assert m.labels([-1, 0, 2]).tolist() == [-1, 1, 0]
    assert m.labels(np.array([1.0])).tolist() == [2] and m.labels([]).tolist() == []
    with pytest.raises(ValueError, match="whole numbers"):
        m.labels(np.array([1.7]))
    with pytest.raises(ValueError, match="label 3 outside"):
        m.labels([3])


@pytest.mark.parametrize("bs", [0, -1, 1.5])
def test_prediction_embedding_and_adabn_refuse_a_bad_batch_size(bs):
    from smearlab.classification.adapt import adapt_batchnorm
    from smearlab.classification.embed import cnn_embedding
    from smearlab.classification.predict import predict_classes

    rng = np.random.default_rng(0)
    d = CropDataset(rng.integers(0, 255, (5, 16, 16, 3), dtype=np.uint8), [0, 1, 0, 1, 0], ["a", "b"])
    m = build_classifier(["a", "b"], width=4, input_size=16, norm="batch")
    for fn in (predict_classes, cnn_embedding, adapt_batchnorm):
        with pytest.raises(ValueError, match="batch_size"):
            fn(m, d, device="cpu", batch_size=bs)


def test_crop_labels_are_never_truncated():
    imgs = np.zeros((3, 8, 8, 3), np.uint8)
    for bad in ([0.7, 1.2, 1.9], np.array([np.nan, 0, 1]), ["a", "b", "a"], [0, None, 1]):
        with pytest.raises(ValueError, match="whole numbers"):
            CropDataset(imgs, bad, ["a", "b"])
    assert CropDataset(imgs, [1.0, 0.0, -1.0], ["a", "b"]).labels.tolist() == [1, 0, -1]
    assert CropDataset(imgs, np.array([[1], [0], [1]]), ["a", "b"]).labels.tolist() == [1, 0, 1]


def test_canonical_drops_trailing_separators():
    from smearlab.data.classes import canonical, match_classes

    assert canonical("lymphocyte_") == canonical("lymphocytes_") == canonical("Lymphocytes") == "lymphocyte"
    assert canonical(" _Red-blood cells- ") == "red blood cell"
    assert match_classes(["lymphocytes_"], ["Lymphocyte"], require="both").how == {"lymphocytes_": "alias"}


def test_nucleus_circularity_is_documented_as_what_it_measures():
    """It is P^2/(4 pi A), about 1 for a disc and growing for lobed nuclei, not 4 pi A/P^2."""
    import smearlab.classification.features as features

    S = 128
    yy, xx = np.mgrid[:S, :S]
    disc = np.full((S, S, 3), (245, 240, 235), np.uint8)
    disc[(yy - 64) ** 2 + (xx - 64) ** 2 < 35 ** 2] = (220, 150, 160)
    lobed = disc.copy()
    disc[(yy - 64) ** 2 + (xx - 64) ** 2 < 20 ** 2] = (90, 40, 140)
    for cy, cx in ((52, 52), (52, 76), (76, 64)):
        lobed[(yy - cy) ** 2 + (xx - cx) ** 2 < 11 ** 2] = (90, 40, 140)
    lobed[62:66, 50:80] = (90, 40, 140)
    k = features.FEATURE_NAMES.index("nucleus_circularity")
    round_, lobes = features.cell_features(np.stack([disc, lobed]))[:, k]
    assert 1.0 <= round_ < 1.2 and lobes > round_
    assert "inverse of the usual" in features.__doc__
