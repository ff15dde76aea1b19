"""fit_and_evaluate, detection splits and K-fold cross-validation on tiny data."""
import pytest

from smearlab.data.splits import detection_splits
from smearlab.data.synthetic import make_dataset
from smearlab.detection import DetectorConfig, TrainConfig, load_model
from smearlab.experiments.detection import cross_validate, fit_and_evaluate


@pytest.fixture(scope="module")
def small():
    return make_dataset(9, seed=3, width=160, height=128)


def _cfgs(ds, tmp_path, epochs=1):
    cfg = DetectorConfig(arch="fasterrcnn_tiny", class_names=ds.class_names, min_size=128, max_size=160)
    return cfg, TrainConfig(epochs=epochs, batch_size=3, lr=0.01, warmup_iters=2, device="cpu", out_dir=tmp_path)


def test_fit_and_evaluate_writes_model_with_thresholds(small, tmp_path):
    cfg, tcfg = _cfgs(small, tmp_path)
    run = fit_and_evaluate("t", cfg, tcfg, small[:5], small[7:], small[5:7], progress=False)
    row = run.row()
    assert set(row) >= {"mAP50", "mAP", "count_accuracy", "train_images_per_s", "infer_images_per_s"}
    assert 0 <= row["mAP50"] <= 1 and len(run.raw_test.predictions) == 2
    assert set(run.thresholds.score) == set(small.class_names)
    model = load_model(tmp_path / "final", device="cpu")
    assert model.thresholds["score"] == run.thresholds.score


def test_cross_validate_covers_every_image(small, tmp_path):
    cfg, tcfg = _cfgs(small, tmp_path)
    cv = cross_validate(small, cfg, tcfg, k=3)
    assert [r["test"] for r in cv["folds"]] == [3, 3, 3]
    assert sum(r["test"] for r in cv["folds"]) == len(small)
    assert 0 <= cv["mAP50"]["mean"] <= 1 and cv["mAP50"]["std"] >= 0
    assert (tmp_path / "fold2" / "final" / "weights.pt").exists()


def test_kfold_trains_and_scores_the_folds_as_the_runs_were(small, monkeypatch):
    """Notebook 03's k-fold check trained 8 epochs whatever budget_minutes said, scored without its
    tile and tta, and kept anchors fitted to images the folds hold out."""
    import dataclasses

    from smearlab.experiments import detection as exp
    from smearlab.experiments.profiles import settings

    seen = []

    def fake(name, cfg, tcfg, train, test, val, **kw):
        seen.append((cfg, tcfg, kw))
        metrics = {"mAP50": 0.5, "mAP": 0.3}
        return type("Run", (), {"metrics": metrics})()
    monkeypatch.setattr(exp, "fit_and_evaluate", fake)
    s = settings("03_detection", quick=True, budget_minutes=2)
    tcfg = exp.run_train_config(s, seed=1, device="cpu")
    assert tcfg.time_budget_s == 120 and tcfg.seed == 1
    fitted = DetectorConfig(arch="fasterrcnn_tiny", class_names=small.class_names, anchor_sizes=((8,), (16,)),
                            aspect_ratios=((1.0,), (1.0,)))
    exp.cross_validate(small, fitted, tcfg, k=3, tile=96, tta=True, anchors="fit")
    assert len(seen) == 3 and all(t.time_budget_s == 120 for _, t, _ in seen)
    assert all(kw["tile"] == 96 and kw["tta"] and kw["anchors"] == "fit" for *_, kw in seen)
    assert all(c.anchor_sizes is None and c.aspect_ratios is None for c, _, _ in seen)  # each fold fits its own
    seen.clear()
    exp.cross_validate(small, fitted, dataclasses.replace(tcfg), k=3)
    assert all(c.anchor_sizes == fitted.anchor_sizes for c, _, _ in seen)  # None: the given anchors


def test_cbc_splits_never_use_the_leaking_validation_folder(cbc_root):
    sp = detection_splits(str(cbc_root), seed=0, val=0.1)
    assert len(sp["test"]) == 60 and len(sp["train"]) + len(sp["val"]) == 300
    names = {s.path.parent.parent.name for part in sp.values() for s in part}
    assert names == {"Training", "Testing"}
    # the default (notebooks 03 and 09) is the benchmarks' split: a tenth of Training's groups of
    # near-copies (20 pairs of fields shot twice), 31 images, none with its twin in training
    default = detection_splits(str(cbc_root), seed=0)
    assert len(default["val"]) == len(sp["val"]) == 31
    assert [s.image_id for s in default["val"]] == [s.image_id for s in sp["val"]]
    from smearlab.data.splits import check_leaks
    assert not check_leaks({"train": sp["train"], "val": sp["val"]}).near_copies
    by_image = detection_splits(str(cbc_root), seed=0, group_near_copies=False)  # the old split leaked
    assert len(by_image["val"]) == 30 and check_leaks({"train": by_image["train"], "val": by_image["val"]}).leaks


def test_preprocess_and_thresholds_travel_with_the_model(small, tmp_path, monkeypatch):
    import numpy as np

    from smearlab.detection import predict
    from smearlab.preprocess import Preprocess

    pre = Preprocess([("gamma", {"g": 0.5})])
    cfg, tcfg = _cfgs(small, tmp_path)
    tcfg.preprocess = pre
    seen = []
    monkeypatch.setattr(Preprocess, "apply", lambda self, s: seen.append(s.image_id) or s)
    run = fit_and_evaluate("p", cfg, tcfg, small[:5], small[7:], small[5:7], progress=False)
    assert set(seen) >= {s.image_id for s in small[:7]}  # training and validation images
    model = load_model(tmp_path / "final", device="cpu")
    assert model.preprocess_spec == pre.to_dict() and model.thresholds is not None

    calls = []
    monkeypatch.setattr(Preprocess, "__call__", lambda self, im: calls.append(1) or im)
    raw = predict(model, small[7:], progress=False)
    assert len(calls) == 2  # the saved pipeline is applied at inference too
    final = predict(model, small[7:], progress=False, thresholds="model", preprocess=None)
    assert len(calls) == 2
    for r, f in zip(raw, final):
        assert len(f["scores"]) <= len(r["scores"])
        for c, name in enumerate(small.class_names):
            assert np.all(f["scores"][f["labels"] == c] >= model.thresholds["score"][name])
    assert run.metrics["epochs"] == 1
    # saved again with new thresholds, the loaded model keeps its pipeline and recipe (both files
    # were deleted: every later prediction ran on unprocessed images)
    from smearlab.detection.models import save_model
    from smearlab.detection.tune import Thresholds
    save_model(model, None, tmp_path / "retuned", thresholds=Thresholds({c: 0.3 for c in small.class_names}))
    again = load_model(tmp_path / "retuned", device="cpu")
    assert again.preprocess_spec == pre.to_dict() and again.thresholds["score"]["RBC"] == 0.3
    assert (tmp_path / "retuned" / "train_config.json").is_file()
    assert again.train_config == model.train_config is not None


def test_the_best_run_is_chosen_on_validation_not_test():
    """Notebook 03 picked its best detector by test mAP and reported that run's test mAP."""
    import warnings
    from types import SimpleNamespace

    from smearlab.experiments.detection import best_run
    runs = [SimpleNamespace(name="a", metrics={"val_mAP": 0.40, "mAP": 0.50}),
            SimpleNamespace(name="b", metrics={"val_mAP": 0.45, "mAP": 0.42})]
    assert best_run(runs).name == "b"
    no_val = [SimpleNamespace(name=r.name, metrics={"val_mAP": None, "mAP": r.metrics["mAP"]}) for r in runs]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert best_run(no_val).name == "a"
    assert any("optimistic" in str(w.message) for w in caught)
