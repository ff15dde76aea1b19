"""Issue #16: the measured-features classifier (nucleus shape, stain, texture + logistic regression)
and its target-statistics adaptation."""
import numpy as np
import pytest
import torch

from smearlab.classification.adapt import adapt_batchnorm, adapt_feature_statistics
from smearlab.classification.crops import CropDataset, crops_from_dataset
from smearlab.classification.features import (FEATURE_NAMES, FEATURE_SIZE, FeatureClassifier, cell_features,
                                              nucleus_mask)
from smearlab.classification.model import build_classifier, load_classifier, save_classifier
from smearlab.classification.predict import predict_classes
from smearlab.classification.train import fit_features, train_classifier
from smearlab.data.synthetic import make_wbc_crops
from smearlab.experiments.domain_adaptation import FEATURE_METHODS, goal_check, run_experiment
from smearlab.metrics.classification import classification_report
from smearlab.models import load_model


def _cell(lobes, size=128, seed=0, stain=(90, 40, 140)):
    """A pale crop holding one cell at the centre whose nucleus is ``lobes`` separate discs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    c = size / 2
    img = np.full((size, size, 3), (235, 225, 215), np.float64)
    img[(yy - c) ** 2 + (xx - c) ** 2 < (0.4 * size) ** 2] = (205, 185, 215)
    if lobes == 1:
        centres, r = [(0, 0)], 0.22 * size
    else:
        ang = np.linspace(0, 2 * np.pi, lobes, endpoint=False)
        centres, r = [(0.18 * size * np.sin(a), 0.18 * size * np.cos(a)) for a in ang], 0.09 * size
    for dy, dx in centres:
        img[(yy - c - dy) ** 2 + (xx - c - dx) ** 2 < r ** 2] = stain
    img += rng.normal(0, 2, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _crops(lobed=12, round_=12, size=64, stain=(90, 40, 140), seed=0, name="drawn"):
    imgs = [_cell(3, seed=seed + i, stain=stain) for i in range(lobed)] + \
           [_cell(1, seed=seed + 100 + i, stain=stain) for i in range(round_)]
    imgs = [torch.nn.functional.interpolate(torch.from_numpy(i).permute(2, 0, 1)[None].float(), size=size,
                                            mode="bilinear")[0].round().byte() for i in imgs]
    labels = [0] * lobed + [1] * round_
    return CropDataset(torch.stack(imgs), labels, ["neutrophil", "lymphocyte"], name=name)


def test_nucleus_mask_and_features_count_the_lobes():
    lobed, round_ = _cell(3), _cell(1)
    m = nucleus_mask(lobed)
    assert m.shape == (128, 128) and 0.05 < m.mean() < 0.2
    f = cell_features(np.stack([lobed, round_]))
    assert f.shape == (2, len(FEATURE_NAMES)) and f.dtype == np.float32 and np.isfinite(f).all()
    col = dict(zip(FEATURE_NAMES, f.T))
    assert col["nucleus_parts"].tolist() == [3, 1]
    # a round nucleus is thicker for its area and more solid than three separate lobes
    assert col["nucleus_thickness"][1] > col["nucleus_thickness"][0]
    assert col["nucleus_solidity"][1] > col["nucleus_solidity"][0]


def test_the_cell_holds_its_nucleus():
    """A nucleus paler than the field's Otsu threshold was partly background: nucleus_to_cell read
    up to 1.2 (a nucleus larger than its cell) on drawn cells of both stains."""
    ratio = FEATURE_NAMES.index("nucleus_to_cell")
    for stain in "AB":
        f = cell_features(crops_from_dataset(make_wbc_crops(10, seed=1, stain=stain, size=96), 64))
        assert (f[:, ratio] <= 1.0 + 1e-6).all() and (f[:, ratio] > 0).any()
    # a pale nucleus on a dark-ish field: its pixels count in the cell
    img = np.full((64, 64, 3), 235, np.uint8)
    yy, xx = np.mgrid[:64, :64]
    img[(yy - 32) ** 2 + (xx - 32) ** 2 < 20 ** 2] = (200, 150, 200)   # cytoplasm
    img[(yy - 32) ** 2 + (xx - 32) ** 2 < 9 ** 2] = (120, 60, 160)     # nucleus
    one = cell_features(img[None])[0]
    assert one[ratio] <= 1.0 + 1e-6


def test_features_accept_every_crop_form_and_resize_to_one_size():
    crops = _crops(2, 2, size=64)
    a = cell_features(crops)
    b = cell_features(crops.images.float() / 255)
    c = cell_features(list(crops.images.permute(0, 2, 3, 1).numpy()))
    assert a.shape == (4, len(FEATURE_NAMES))
    np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(a, c, atol=1e-5)
    assert cell_features(np.zeros((0, 3, 64, 64), np.uint8)).shape == (0, len(FEATURE_NAMES))
    flat = cell_features(np.full((1, 64, 64, 3), 200, np.uint8))  # no cell: zeros, never NaN
    assert np.isfinite(flat).all() and flat[0, 0] == 0


def test_features_refuse_crops_that_resizing_would_distort():
    with pytest.raises(ValueError, match="square"):
        cell_features(np.zeros((1, 64, 80, 3), np.uint8))
    with pytest.raises(ValueError, match="different shapes"):
        cell_features([np.zeros((64, 64, 3), np.uint8), np.zeros((96, 96, 3), np.uint8)])


def test_a_model_folder_fitted_on_other_features_is_refused(tmp_path):
    import json
    from smearlab.core.errors import DataError
    model = build_classifier(["a", "b"], arch="features")
    save_classifier(model, tmp_path / "clf")
    cfg = json.loads((tmp_path / "clf" / "config.json").read_text())
    assert cfg["feature_names"] == list(FEATURE_NAMES)
    cfg["feature_names"] = list(reversed(cfg["feature_names"]))  # same count, other order
    (tmp_path / "clf" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(DataError, match="other features"):
        load_classifier(tmp_path / "clf")


def test_features_refuse_bad_crops():
    with pytest.raises(ValueError, match="3 colour channels"):
        cell_features(np.zeros((2, 64, 64, 4), np.uint8))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        cell_features(torch.full((1, 3, 32, 32), 2.0))
    with pytest.raises(ValueError, match="shape"):
        cell_features(np.zeros((64, 64), np.uint8))


def test_fit_features_learns_drawn_cells_and_round_trips_through_the_model_folder(tmp_path):
    train, test = _crops(12, 12), _crops(6, 6)
    test = CropDataset(test.images.flip(-1), test.labels, test.class_names, name="drawn_test")  # other crops
    model = build_classifier(train.class_names, arch="features")
    assert isinstance(model, FeatureClassifier) and model.input_size == FEATURE_SIZE
    info = fit_features(model, train, folds=3)
    assert info["C"] in (0.03, 0.1, 0.3, 1.0, 3.0) and info["folds"] == 3 and info["n_train"] == 24
    assert info["repeats"] == 5  # the k-fold split drawn five times: the chosen C follows the shuffle less
    pred = predict_classes(model, test)
    assert (pred.labels == test.labels).mean() == 1.0
    assert model.embed(test.images.float() / 255).shape == (12, len(FEATURE_NAMES))
    save_classifier(model, tmp_path / "clf")
    for loaded in (load_classifier(tmp_path / "clf"), load_model(tmp_path / "clf")):
        assert isinstance(loaded, FeatureClassifier) and loaded.class_names == model.class_names
        np.testing.assert_allclose(predict_classes(loaded, test).probs, pred.probs, atol=1e-6)


def test_fit_features_logs_a_class_of_one_crop_once_and_keeps_five_folds(caplog):
    crops = _crops(10, 10)
    one = CropDataset(torch.cat([crops.images, crops.images[:1]]), list(crops.labels) + [2],
                      ["neutrophil", "lymphocyte", "basophil"], name="rare")
    model = build_classifier(one.class_names, arch="features")
    with caplog.at_level("WARNING", logger="smearlab.classification.train"):
        info = fit_features(model, one)
    assert info["folds"] == 5
    assert [r.getMessage() for r in caplog.records if "basophil (1)" in r.getMessage()]


def test_fit_features_refuses_what_it_cannot_fit():
    crops = _crops(4, 4)
    with pytest.raises(ValueError, match="differ"):
        fit_features(build_classifier(["a", "b"], arch="features"), crops)
    one = crops.subset(range(4))
    with pytest.raises(ValueError, match="one class"):
        fit_features(build_classifier(crops.class_names, arch="features"), one)
    with pytest.raises(ValueError, match="features must be"):
        fit_features(build_classifier(crops.class_names, arch="features"), crops, features=np.zeros((3, 5)))
    with pytest.raises(ValueError, match="repeats must be at least 1"):
        fit_features(build_classifier(crops.class_names, arch="features"), crops, repeats=0)
    with pytest.raises(TypeError, match="fit_features"):
        train_classifier(build_classifier(crops.class_names, arch="features"), crops, steps=1)
    with pytest.raises(ValueError, match="unknown classifier arch"):
        build_classifier(["a", "b"], arch="vit")


def test_feature_statistics_adaptation_recentres_a_shifted_domain():
    """A target lab whose nuclei stain another purple: the source model's standardisation is wrong
    there; re-estimated on the target's unlabelled crops, the cells land where the source's were."""
    train = _crops(12, 12)
    model = build_classifier(train.class_names, arch="features")
    fit_features(model, train, folds=3)
    target = _crops(8, 8, stain=(120, 60, 120), seed=200, name="other_lab")
    before = classification_report(target.labels, predict_classes(model, target), target.class_names)["macro"]["f1"]
    assert before <= 0.5  # the shift alone breaks the source model
    adapted = adapt_feature_statistics(model, target)
    assert adapted is not model and torch.equal(adapted.head.weight, model.head.weight)
    assert not torch.equal(adapted.mean, model.mean)
    np.testing.assert_allclose(adapted.mean.numpy(), cell_features(target).mean(0), rtol=1e-5, atol=1e-6)
    z = adapted.embed(target.images)
    assert torch.allclose(z.mean(0), torch.zeros(len(FEATURE_NAMES)), atol=1e-4)
    f1 = classification_report(target.labels, predict_classes(adapted, target), target.class_names)["macro"]["f1"]
    assert f1 >= 0.9
    with pytest.raises(TypeError, match="adapt_batchnorm"):
        adapt_feature_statistics(build_classifier(train.class_names), target)
    with pytest.raises(ValueError, match="at least two"):
        adapt_feature_statistics(model, target.subset([0]))
    with pytest.raises(ValueError, match="no batch-norm"):
        adapt_batchnorm(model, target)


def test_experiment_runs_every_feature_method_and_is_judged():
    a = crops_from_dataset(make_wbc_crops(40, seed=0, stain="A", size=64), 64)
    b = crops_from_dataset(make_wbc_crops(40, seed=1, stain="B", size=64), 64)
    a.name, b.name = "A", "B"
    res = run_experiment(a, b, seeds=(0, 1), arch="features")
    assert list(res.scores) == list(FEATURE_METHODS) and res.settings["arch"] == "features"
    for m in FEATURE_METHODS:
        assert 0 <= res.mean(m) <= 1 and len(res.scores[m]["target"]) == 2
    assert res.mean("oracle", "target") > 0.5  # five drawn cell types, measured and separable
    check = goal_check(res)
    assert "feature_stats_gain" in check and check["best_method"] in ("feature_stats", "stain_norm")
    with pytest.raises(ValueError, match="for arch 'features'"):
        run_experiment(a, b, methods=("dann",), arch="features")
    with pytest.raises(ValueError, match="unknown arch"):
        run_experiment(a, b, arch="svm")


def test_blank_and_nan_crops_are_not_cells():
    """An all-white crop read as 100 % cell, sensor noise on a blank field as a nucleus covering
    half of it, and NaN crops as black ones."""
    from smearlab.classification.features import FEATURE_NAMES, cell_features, nucleus_mask
    i = FEATURE_NAMES.index("cell_fraction")
    assert cell_features(np.full((64, 64, 3), 255, np.uint8))[0, i] == 0.0
    noisy = np.clip(245 + np.random.default_rng(0).normal(0, 2, (64, 64, 3)), 0, 255).astype(np.uint8)
    assert not nucleus_mask(noisy).any()
    with pytest.raises(ValueError, match="NaN"):
        cell_features(torch.full((1, 3, 64, 64), float("nan")))


def test_a_model_fitted_on_an_earlier_version_of_the_features_is_read_with_a_warning(tmp_path, caplog):
    import json
    crops = crops_from_dataset(make_wbc_crops(10, seed=0, stain="A", size=64), 64)
    model = build_classifier(crops.class_names, arch="features")
    fit_features(model, crops, folds=2, repeats=1)
    folder = save_classifier(model, tmp_path / "clf")
    with caplog.at_level("WARNING", logger="smearlab.classification.features"):
        load_classifier(folder, device="cpu")
    assert "version" not in caplog.text
    config = json.loads((folder / "config.json").read_text())
    del config["features_version"]  # a folder saved before the version was recorded
    (folder / "config.json").write_text(json.dumps(config))
    with caplog.at_level("WARNING", logger="smearlab.classification.features"):
        again = load_classifier(folder, device="cpu")
    assert "features of version 1" in caplog.text and isinstance(again, FeatureClassifier)
