"""Issue #16: central-cell crops, class names across domains, stain jitter, and the adaptation baselines."""
import numpy as np
import pytest
import torch

from smearlab.augment import Augment, StainJitter, default_crop_augment
from smearlab.classification.adapt import adapt_batchnorm, stain_normalise
from smearlab.classification.crops import (CropDataset, align_classes, central_crop_check, crops_from_dataset,
                                           shared_classes)
from smearlab.classification.model import build_classifier
from smearlab.classification.train import fit
from smearlab.core.errors import DataError
from smearlab.data.classes import ClassMismatchError
from smearlab.data.sample import Sample, SmearDataset
from smearlab.data.synthetic import make_wbc_crops
from smearlab.experiments.domain_adaptation import domain_crops, goal_check, run_directions, run_experiment, verdict
from smearlab.segmentation.classical import central_cell_box

from helpers import skip_or_fail


def _field(centre=(60, 64), r=14, others=((15, 15), (100, 20)), size=(128, 128), seed=0):
    """A pale field with red-ish discs and one purple, lobed cell of radius ``r`` at ``centre``."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    img = np.full((h, w, 3), (235, 225, 215), np.float64)
    for cy, cx in others:  # neighbouring pale red cells
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < 12 ** 2] = (225, 170, 170)
    cy, cx = centre
    cyto = (yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2
    img[cyto] = (200, 180, 215)
    for dy, dx in ((-4, -4), (4, 4), (-4, 5)):  # three lobes, not touching
        img[(yy - cy - dy) ** 2 + (xx - cx - dx) ** 2 < 3.5 ** 2] = (90, 40, 140)
    img += rng.normal(0, 2, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), cyto


# -- the cell at the centre ------------------------------------------------------------------------------
def test_central_cell_box_joins_the_lobes_of_the_centre_cell_and_ignores_neighbours():
    img, cyto = _field()
    box = central_cell_box(img)
    assert box is not None
    ys, xs = np.nonzero(cyto)
    # the box spans all three lobes (one cell, not one lobe) and stays inside the cell
    assert box[2] - box[0] >= 12 and box[3] - box[1] >= 12
    assert xs.min() - 1 <= box[0] and box[2] <= xs.max() + 2 and ys.min() - 1 <= box[1] and box[3] <= ys.max() + 2


def test_central_cell_box_says_none_on_an_empty_field():
    assert central_cell_box(np.full((64, 64, 3), 230, np.uint8)) is None


def test_central_crops_on_synthetic_fields_hold_the_labelled_cell():
    ds = make_wbc_crops(30, seed=3, size=96)
    check = central_crop_check(ds)
    assert check["n"] == 30 and check["not_found"] == 0
    assert check["holds"] >= 0.75 and 0.7 <= check["median_scale"] <= 1.3
    crops = crops_from_dataset(ds, 48, source="central")
    assert len(crops) == 30 and crops.central["found"] + crops.central["fallback"] == 30
    assert crops.central["pad"] == pytest.approx(0.3)
    assert list(crops.labels) == [s.image_label for s in ds]


def test_central_crops_fall_back_to_a_centre_crop_of_the_usual_cell_size():
    imgs = [_field(seed=i)[0] for i in range(3)] + [np.full((128, 128, 3), 230, np.uint8)]
    ds = SmearDataset([Sample(f"im{i}", _image=im, image_label=i % 2) for i, im in enumerate(imgs)], ["a", "b"], "f")
    crops = crops_from_dataset(ds, 32, source="central")
    assert crops.central["found"] == 3 and crops.central["fallback"] == 1
    assert crops.central["fallback_ids"] == ["im3"]
    assert 20 <= crops.central["fallback_side_px"] <= 64
    assert crops.images.shape == (4, 3, 32, 32)


# -- class names across domains ----------------------------------------------------------------------------
def _crops(classes, labels, name, seed=0, size=16):
    rng = np.random.default_rng(seed)
    return CropDataset(rng.integers(0, 255, (len(labels), size, size, 3), dtype=np.uint8), labels, classes, name=name)


def test_align_classes_maps_by_name_and_reports_what_is_missing(caplog):
    a = _crops(["neutrophil", "lymphocyte", "basophil"], [0, 0, 1, 1, 2, 2], "zheng")
    b = _crops(["Lymphocytes", "Neutrophils", "Eosinophils"], [0, 0, 1, 1, 2, 2], "pbc")
    b2, mapping = align_classes(a, b)
    assert b2.class_names == ["lymphocyte", "neutrophil", "Eosinophils"]
    assert list(b2.labels) == list(b.labels)                    # labels keep their meaning
    assert "renamed" in mapping.describe() and "Eosinophils" in mapping.unmatched
    assert any("renamed" in r.message for r in caplog.records)
    shared, missing = shared_classes(a, b2)
    assert shared == ["neutrophil", "lymphocyte"]
    assert missing == {"basophil": {"zheng": 2, "pbc": 0}, "Eosinophils": {"zheng": 0, "pbc": 2}}
    same, m = align_classes(a, a)
    assert same is a and m.identity


def test_align_classes_refuses_an_ambiguous_alias():
    a = _crops(["Monocyte", "monocytes"], [0, 1], "a")
    with pytest.raises(ClassMismatchError, match="monocyte"):
        align_classes(a, _crops(["MONOCYTE"], [0, 0], "b"))


# -- stain jitter --------------------------------------------------------------------------------------------
def test_stain_jitter_keeps_labels_and_bounds_the_optical_density():
    crops = make_wbc_crops(8, seed=0, size=32)
    x = torch.from_numpy(np.stack([s.image for s in crops])).permute(0, 3, 1, 2).float() / 255
    aug = Augment([StainJitter(alpha=0.2, beta=0.05, p=1.0)], seed=0)
    boxes = [{"boxes": torch.as_tensor(s.boxes), "labels": torch.as_tensor(s.labels)} for s in crops]
    y, t = aug.batch(x, boxes)
    assert all(torch.equal(a["labels"], b["labels"]) and torch.equal(a["boxes"], b["boxes"]) for a, b in zip(t, boxes))
    od_in = -torch.log(x.clamp_min(1 / 255))
    od_out = -torch.log(y.clamp_min(1 / 255))
    assert not torch.allclose(y, x)
    # a concentration factor of at most 1.2 and an offset of at most 0.05 per stain bound the change:
    # the optical density stays within a fixed multiple of the input's plus the offsets' reach
    assert float((od_out - od_in).abs().max()) <= 0.2 * float(od_in.max()) * 3 + 0.05 * 3 * 3
    assert float(y.min()) >= 0 and float(y.max()) <= 1.0 + 1e-5
    assert y.is_contiguous()          # the einsum's channels-last result crashed a CPU backward pass


def test_crop_training_with_stain_jitter_on_every_crop_runs():
    crops = CropDataset(np.random.default_rng(0).integers(0, 255, (16, 16, 16, 3), dtype=np.uint8), [0, 1] * 8,
                        ["a", "b"])
    aug = Augment([StainJitter(alpha=0.15, beta=0.04, p=1.0)], seed=0)
    hist = fit(build_classifier(["a", "b"], width=4, input_size=16), crops, steps=3, batch_size=8, device="cpu",
               augment=aug)
    assert np.isfinite(hist[-1]["loss"])


def test_crop_training_switches_augmentation_on_and_off():
    src = _crops(["a", "b"], [0, 1] * 8, "s")
    hist_on = fit(build_classifier(["a", "b"], width=4, input_size=16), src, steps=2, batch_size=4, device="cpu",
                  augment=True)
    hist_off = fit(build_classifier(["a", "b"], width=4, input_size=16), src, steps=2, batch_size=4, device="cpu",
                   augment=False)
    assert len(hist_on) == len(hist_off) == 1
    assert default_crop_augment(0).photometric is not None


# -- the baselines ---------------------------------------------------------------------------------------------
def test_adapt_batchnorm_reestimates_statistics_on_the_target_only():
    torch.manual_seed(0)
    model = build_classifier(["a", "b"], width=4, norm="batch", input_size=16).eval()
    tgt = _crops(["a", "b"], [-1] * 12, "t", seed=1)
    tgt.images = (tgt.images // 4 + 180).to(torch.uint8)  # another domain: brighter, less contrast
    before = [b.running_mean.clone() for b in model.modules() if isinstance(b, torch.nn.BatchNorm2d)]
    adapted = adapt_batchnorm(model, tgt, device="cpu")
    after = [b.running_mean for b in adapted.modules() if isinstance(b, torch.nn.BatchNorm2d)]
    assert not adapted.training
    assert all(torch.equal(a, b) for a, b in zip(before, [b.running_mean for b in model.modules()
                                                          if isinstance(b, torch.nn.BatchNorm2d)]))  # original kept
    assert not torch.allclose(before[0], after[0])
    # the stem's statistics are those of the target's first-layer responses
    stem = adapted.features.stem[0]
    with torch.no_grad():
        z = stem((tgt.images.float() / 255 - adapted.mean) / adapted.std)
    assert torch.allclose(after[0], z.mean((0, 2, 3)), atol=1e-4)
    assert torch.allclose(adapted.features.stem[1].running_var, z.var((0, 2, 3)), rtol=1e-3)
    # every crop weighs the same: batches of 5 (the last one of 2) give the stem the same statistics
    small = adapt_batchnorm(model, tgt, batch_size=5, device="cpu")
    assert torch.allclose(small.features.stem[1].running_mean, after[0], atol=1e-5)
    with pytest.raises(ValueError, match="batch-norm"):
        adapt_batchnorm(build_classifier(["a", "b"], width=4, norm="group"), tgt)
    odd = adapt_batchnorm(model, tgt, batch_size=11, device="cpu")
    assert torch.allclose(odd.features.stem[1].running_mean, after[0], atol=1e-5)
    # every layer's statistics are what it sees when the adapted model predicts, whatever the batch
    # size or order (batches normalised by their own statistics moved a deeper layer's by 60 %)
    flipped = adapt_batchnorm(model, tgt.subset(range(len(tgt) - 1, -1, -1)), batch_size=3, device="cpu")
    bns = [m for m in adapted.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for a, b in zip(bns, (m for m in flipped.modules() if isinstance(m, torch.nn.BatchNorm2d))):
        assert torch.allclose(a.running_mean, b.running_mean, atol=1e-5)
        assert torch.allclose(a.running_var, b.running_var, rtol=1e-4, atol=1e-6)
    seen = []
    hook = bns[-1].register_forward_pre_hook(lambda m, i: seen.append(i[0].detach()))
    with torch.no_grad():
        adapted(tgt.images.float() / 255)
    hook.remove()
    assert torch.allclose(bns[-1].running_mean, seen[0].mean((0, 2, 3)), atol=1e-5)
    with pytest.raises(ValueError, match="one crop"):
        adapt_batchnorm(model, tgt.subset([0]), device="cpu")
    with pytest.raises(ValueError, match="another scale"):  # crops of 24 px for a 16 px model
        adapt_batchnorm(model, _crops(["a", "b"], [-1] * 4, "t", seed=1, size=24), device="cpu")


def test_seed_spread_is_the_sample_standard_deviation_and_seeds_are_checked():
    from smearlab.experiments.domain_adaptation import judge, seed_list, seed_std
    assert seed_std([0.6, 0.7, 0.8]) == pytest.approx(0.1)              # ddof=1 (the population form gave 0.082)
    assert np.isnan(seed_std([0.7]))                                      # one seed: the spread is unknown
    base = {"source_only_f1": 0.5, "source_only_source_f1": 0.9, "dann_source_f1": 0.9}
    two = judge({**base, "dann_f1": 0.74, "dann_f1_std": seed_std([0.70, 0.78])})
    assert not two["dann_meets"]                                          # 0.057 > 0.05 (0.040 passed before)
    assert not judge({**base, "dann_f1": 0.8, "dann_f1_std": seed_std([0.8])})["goal_met"]
    assert seed_list(3, seed=2) == (2, 3, 4) and seed_list(np.int64(2)) == (0, 1)
    assert seed_list("0,1,2") == (0, 1, 2) and seed_list("[5, 7]") == (5, 7) and seed_list("12") == (12,)
    for bad in ("a,b", 0, [], [0.5], [1, 1], None):
        with pytest.raises(ValueError):
            seed_list(bad)


def test_a_direction_asked_for_is_the_direction_run():
    from smearlab.experiments.domain_adaptation import domain_pair
    a, b = domain_pair("synthetic", 32, n=10, seed=0, domains=("B", "A"))
    a0, b0 = domain_pair("synthetic", 32, n=10, seed=0)
    assert (a.name, b.name) == ("B", "A") and torch.equal(a.images, b0.images) and torch.equal(b.images, a0.images)
    assert [d.name for d in domain_pair("synthetic", 32, n=10, domains=("B", None))] == ["B", "A"]
    assert [d.name for d in domain_pair("synthetic", 32, n=10, domains=(None, "B"))] == ["A", "B"]
    for bad in (("A", "A"), ("A", "C")):
        with pytest.raises(ValueError, match="two different domains"):
            domain_pair("synthetic", 32, n=10, domains=bad)


def test_stain_normalise_moves_the_colours_to_the_reference():
    ref = _crops(["a"], [0] * 6, "r")
    ref.images = (ref.images // 2 + 100).to(torch.uint8)
    other = _crops(["a"], [0] * 6, "o", seed=2)
    out = stain_normalise(other, ref)
    assert out.images.shape == other.images.shape and list(out.labels) == list(other.labels)
    d_before = abs(float(other.images.float().mean()) - float(ref.images.float().mean()))
    d_after = abs(float(out.images.float().mean()) - float(ref.images.float().mean()))
    assert d_after < d_before


def _tinted(labels, tint, name, seed=0):
    rng = np.random.default_rng(seed)
    imgs = []
    yy, xx = np.mgrid[:16, :16]
    for lab in labels:
        img = np.full((16, 16, 3), 120.0) + rng.normal(0, 5, (16, 16, 3))
        disc = (yy - 8) ** 2 + (xx - 8) ** 2 < (3 if lab == 0 else 6) ** 2
        img[disc] = 40
        imgs.append(np.clip(img + np.asarray(tint), 0, 255).astype(np.uint8))
    return CropDataset(np.stack(imgs), labels, ["small", "large"], domains=[name] * len(labels), name=name)


def test_every_method_trains_scores_and_is_judged():
    a = _tinted([0, 1] * 8, (0, 0, 0), "A")
    b = _tinted([0, 1] * 8, (60, -30, 40), "B", seed=1)
    c = _tinted([0, 1] * 8, (-40, 20, 60), "C", seed=2)
    res = run_directions(a, b, c, seeds=(0, 1), steps=3, batch_size=8, width=4, domain_hidden=8, augment=False,
                         device="cpu")
    assert list(res) == ["a_to_b", "b_to_a", "a_to_c", "b_to_c"]
    r = res["a_to_c"]
    assert set(r.scores) == {"source_only", "dann", "stain_norm", "adabn", "mixed", "oracle"}
    assert all(len(r.scores[m]["target"]) == 2 for m in r.scores)
    check = goal_check(r)
    assert check["best_method"] in ("dann", "stain_norm", "adabn")
    assert {"dann_gain", "stain_norm_gain", "adabn_gain", "best_std", "goal_met"} <= set(check)
    text, checks, met = verdict(res)
    assert "stain_norm" in text and "adabn" in text and set(checks) == set(res)
    assert "best of several, an optimistic figure" in text  # chosen on the target test crops themselves
    from smearlab.experiments.domain_adaptation import adaptation_record
    rec = adaptation_record("synthetic", a, b, (0, 1), res, checks, met)
    assert rec["domains"] == ["A", "B", "C"]  # the third domain was left out
    assert set(rec["shared_classes"]) == set(res)  # per direction: a third domain may share other classes
    assert isinstance(met, bool)
    # AdaBN's batch-norm model is scored before its statistics move too: source only is a group-norm
    # model, and AdaBN's gain over it mixed the norm with the adaptation
    assert len(r.scores["adabn"]["target_unadapted"]) == 2 and "adabn_unadapted_f1" in r.summary()
    assert check["adabn_step_gain"] == pytest.approx(r.mean("adabn") - r.summary()["adabn_unadapted_f1"], abs=1e-4)
    assert "over its own batch-norm model unadapted" in text


def test_the_goal_is_checked_on_unrounded_figures_and_a_nan_gain_is_never_best():
    from smearlab.experiments.domain_adaptation import judge
    base = {"source_only_f1": 0.5, "source_only_source_f1": 0.9}
    near = judge({**base, "dann_f1": 0.59996, "dann_f1_std": 0.01, "dann_source_f1": 0.9})
    assert near["dann_gain"] == 0.1 and not near["dann_meets"]          # 0.09996 rounds to 0.1, misses 0.10
    drop = judge({**base, "dann_f1": 0.7, "dann_f1_std": 0.01, "dann_source_f1": 0.87996})
    assert drop["dann_source_drop"] == 0.02 and not drop["goal_met"]    # lost 0.02004 on the source
    assert judge({**base, "dann_f1": 0.6, "dann_f1_std": 0.01, "dann_source_f1": 0.88})["goal_met"]  # exactly on
    nan = judge({**base, "dann_f1": float("nan"), "dann_f1_std": 0.01, "dann_source_f1": 0.9,
                 "stain_norm_f1": 0.7, "stain_norm_f1_std": 0.01, "stain_norm_source_f1": 0.9})
    assert nan["best_method"] == "stain_norm" and nan["best_gain"] == pytest.approx(0.2)
    none = judge({**base, "dann_f1": float("nan"), "dann_f1_std": 0.01, "dann_source_f1": 0.9})
    assert none["best_method"] is None and none["best_gain"] is None and not none["goal_met"]


def test_adaptation_sees_the_whole_unlabelled_target_training_split(monkeypatch):
    """AdaBN, the feature statistics and DANN see every target training crop without labels, classes
    the source lacks included (they were picked by their labels: 12 of 23 crops, labels 0 and 1)."""
    import smearlab.experiments.domain_adaptation as da
    a = _tinted([0, 1] * 8, (0, 0, 0), "A")
    b = _tinted([0, 1] * 8 + [0] * 16, (40, 0, 0), "B", seed=1)
    b.class_names = ["small", "large", "other"]
    b.labels[16:] = 2  # a class the source lacks
    seen = []

    def spy(real):
        def wrapped(model, *data, **kw):  # (model, target) or DANN's (model, source, target)
            target = data[-1]
            seen.append((real.__name__, len(target), set(target.labels.tolist()), list(target.class_names)))
            return real(model, *data, **kw)
        return wrapped
    monkeypatch.setattr(da, "adapt_batchnorm", spy(da.adapt_batchnorm))
    monkeypatch.setattr(da, "adapt_feature_statistics", spy(da.adapt_feature_statistics))
    monkeypatch.setattr(da, "train_dann", spy(da.train_dann))
    with pytest.warns(UserWarning, match="other"):
        res = run_experiment(a, b, methods=("dann", "adabn"), seeds=(0,), steps=2, batch_size=4, width=4,
                             domain_hidden=8, augment=False, device="cpu")
    with pytest.warns(UserWarning, match="other"):
        run_experiment(a, b, methods=("feature_stats",), seeds=(0,), arch="features")
    n = res.sizes["target_unlabelled"]
    assert res.sizes["target_train"] < n == 23  # 70 % of each class of B: 6 + 6 + 11
    assert [(name, size, labels) for name, size, labels, _ in seen] == [
        ("train_dann", n, {-1}), ("adapt_batchnorm", n, {-1}), ("adapt_feature_statistics", n, {-1})]
    assert all(names == ["small", "large"] for *_, names in seen)


def test_a_repeated_seed_is_refused():
    """(0, 0) scored one model twice: a spread that looks smaller than it is."""
    a = _tinted([0, 1] * 4, (0, 0, 0), "A")
    with pytest.raises(ValueError, match="seeds repeat"):
        run_experiment(a, a, methods=("source_only",), seeds=(0, 0), steps=1, device="cpu")


def test_experiment_matches_target_class_names_by_alias():
    a = _tinted([0, 1] * 6, (0, 0, 0), "A")
    b = _tinted([0, 1] * 6, (30, 0, 0), "B", seed=1)
    b.class_names = ["Smalls", "LARGE"]
    res = run_experiment(a, b, methods=("source_only", "stain_norm"), seeds=(0,), steps=2, batch_size=4, width=4,
                         augment=False, device="cpu")
    assert res.shared_classes == ["small", "large"] and not res.missing_classes
    assert "renamed" in res.class_mapping


# -- real data ------------------------------------------------------------------------------------------------
def test_pbc_central_crops_find_a_cell_in_every_image(shared_data):
    if not (shared_data / "pbc_subset").is_dir():
        skip_or_fail("../shared/data/pbc_subset not found", "under CI a missing dataset is an error")
    crops = domain_crops(shared_data / "pbc_subset", 32)
    assert crops.name == "pbc" and len(crops) == 400
    assert crops.central["fallback"] <= 8
    assert crops.class_counts() == {c: 80 for c in ("basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil")}


def test_classifier_inputs_it_would_misread_are_refused():
    """Crop arguments that turned every box into a 'bad box' skip, a label outside the classes
    dropped without a record, float crops in 0..255 (saturated), a DANN wrapper (a bare
    AttributeError), batch size 0 (ZeroDivisionError) and lr NaN (trained to NaN weights)."""
    from smearlab.classification.model import DANN
    from smearlab.classification.predict import predict_classes
    from smearlab.classification.train import train_classifier
    img = np.full((40, 40, 3), 200, np.uint8)
    img[10:30, 10:30] = 60
    with pytest.raises(DataError, match="image label 5"):  # refused where the dataset is made
        SmearDataset([Sample("b", _image=img, image_label=5)], ["c0", "c1"], name="made")
    ds = SmearDataset([Sample("a", _image=img, boxes=[[10, 10, 30, 30]], labels=[0], image_label=0),
                       Sample("b", _image=img, image_label=1)], ["c0", "c1"], name="made")
    for kw, msg in ((dict(pad=-0.5), "pad"), (dict(pad=float("nan")), "pad"), (dict(fill="blue"), "fill")):
        with pytest.raises(ValueError, match=msg):
            crops_from_dataset(ds, 16, source="boxes", **kw)
    with pytest.raises(ValueError, match="named twice"):
        crops_from_dataset(ds, 16, source="boxes", classes=["c0", "c0"])
    crops = crops_from_dataset(ds, 16, source="image")
    assert len(crops) == 2 and not crops.skipped
    model = build_classifier(["c0", "c1"], width=4, input_size=16)
    with pytest.raises(ValueError, match=r"values in \[0, 1\]"):
        predict_classes(model, crops.images.float(), device="cpu")
    with pytest.raises(ValueError, match="DANN wrapper"):
        predict_classes(DANN(model), crops, device="cpu")
    with pytest.raises(ValueError, match="crops of 16 px for a classifier trained on 32 px crops"):
        predict_classes(build_classifier(["c0", "c1"], width=4, input_size=32), crops, device="cpu")
    with pytest.raises(ValueError, match="batch_size"):
        train_classifier(model, crops, steps=1, batch_size=0, device="cpu")
    with pytest.raises(ValueError, match="lr must be a positive number"):
        train_classifier(model, crops, steps=1, lr=float("nan"), device="cpu")


def test_grad_cam_targets_and_affine_arguments_are_checked():
    from smearlab.augment import Affine
    from smearlab.explain.cam import cam_masks, layer_cams
    model = build_classifier(["a", "b", "c"], width=4, input_size=32).eval()
    img = np.full((32, 32, 3), 128, np.uint8)
    for bad, msg in ((-1, "not one of the model's 3 classes"), (5, "not one of the model's 3 classes"),
                     (1.7, "class index")):
        with pytest.raises(ValueError, match=msg):
            layer_cams(model, [img], target=bad, device="cpu")
    with pytest.raises(ValueError, match="no images"):
        cam_masks(model, [], device="cpu")
    with pytest.raises(ValueError, match="translate must be a pair"):
        Affine(translate=0.1)


def test_equal_gains_go_to_the_method_losing_least_on_the_source():
    from smearlab.experiments.domain_adaptation import judge
    s = {"source_only_f1": 0.5, "source_only_source_f1": 0.9,
         "stain_norm_f1": 0.6, "stain_norm_f1_std": 0.01, "stain_norm_source_f1": 0.866,
         "feature_stats_f1": 0.6, "feature_stats_f1_std": 0.01, "feature_stats_source_f1": 0.9}
    assert judge(s)["best_method"] == "feature_stats"  # list order gave stain_norm, 3.4 points lost on the source


def test_stain_normalised_crops_joined_with_others_still_refuse_a_save_without_the_normaliser(tmp_path):
    """Crops cut two ways lost their record on joining, so a classifier trained on raw crops plus
    stain-normalised ones was saved (and could enter a cascade) without its normaliser."""
    from smearlab.classification.model import save_classifier
    from smearlab.classification.train import train_classifier
    src = _crops(["a", "b"], [0, 1] * 8, "src")
    tgt = _crops(["a", "b"], [0, 1] * 8, "tgt", seed=1)
    both = CropDataset.concat([src, stain_normalise(tgt, src)])
    assert both.cut == {"stain_normalised": True}
    m = build_classifier(["a", "b"], width=4, input_size=16)
    train_classifier(m, both, steps=1, batch_size=8, device="cpu")
    with pytest.raises(ValueError, match="stain-normalised"):
        save_classifier(m, tmp_path / "mixed")


def test_the_benchmark_s_rejudge_checks_the_goal_on_the_figures_as_computed(tmp_path):
    """--rejudge judged the JSON's figures rounded to 4 decimals: a gain of 0.09996 that missed the
    goal in the run met it on rejudging."""
    import importlib.util
    import json
    from pathlib import Path

    from smearlab.experiments.domain_adaptation import ExperimentResult
    import sys
    here = Path(__file__).resolve().parent.parent / "benchmarks"
    sys.path.insert(0, str(here))  # the script imports its neighbour _common
    spec = importlib.util.spec_from_file_location("bench_da", here / "domain_adaptation.py")
    bench = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(bench)
    finally:
        sys.path.remove(str(here))

    def scores(f1s, source):
        row = lambda f: {"precision": f, "recall": f, "f1": f, "weighted_f1": f, "accuracy": f}  # noqa: E731
        return {"target": [row(f) for f in f1s], "source": [row(f) for f in source]}
    r = ExperimentResult("A", "B", ["x", "y"], {}, [0, 1, 2], 0, 0.3, {}, {})
    r.scores = {"source_only": scores([0.50004] * 3, [0.9] * 3), "dann": scores([0.61, 0.60, 0.59], [0.9] * 3)}
    block = bench.direction(r)
    assert not block["dann_meets"] and not block["goal_met"]
    path = tmp_path / "da.json"
    path.write_text(json.dumps({"a_to_b": block}))
    again = bench.rejudge(path)["a_to_b"]
    assert not again["dann_meets"] and not again["goal_met"]
