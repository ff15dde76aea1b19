"""Domain adaptation: gradient reversal, the DANN schedules, DANN training, the experiment and its bad input."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from smearlab.classification.crops import CropDataset, crops_from_dataset, shared_classes
from smearlab.classification.model import DANN, GradientReversal, build_classifier, grad_reverse
from smearlab.classification.train import dann_lambda, dann_lr, train_dann
from smearlab.experiments.domain_adaptation import run_experiment


# -- gradient reversal ---------------------------------------------------------------------------------
def _numeric_grad(f, x, eps=1e-6):
    """Central finite differences of a scalar function of a float64 tensor."""
    g = torch.zeros_like(x)
    flat = x.view(-1)
    for i in range(flat.numel()):
        old = float(flat[i])
        flat[i] = old + eps
        up = float(f(x))
        flat[i] = old - eps
        down = float(f(x))
        flat[i] = old
        g.view(-1)[i] = (up - down) / (2 * eps)
    return g


@pytest.mark.parametrize("lam", [0.0, 0.37, 1.0, 2.5])
def test_gradient_reversal_negates_and_scales_numerically(lam):
    torch.manual_seed(0)
    w = torch.randn(3, 4, dtype=torch.float64)

    def f(t):  # a non-linear scalar function of the layer's output
        return (torch.sin(t) * w).sum() + (t ** 2).sum()

    x = torch.randn(3, 4, dtype=torch.float64)
    numeric = _numeric_grad(f, x.clone())       # d f / d x without reversal
    xr = x.clone().requires_grad_(True)
    y = GradientReversal(lam)(xr)
    assert torch.equal(y, x)                     # identity forward
    f(y).backward()
    assert torch.allclose(xr.grad, -lam * numeric, atol=1e-6)


def test_gradient_reversal_only_touches_what_is_below_it():
    torch.manual_seed(0)
    below, above = torch.nn.Linear(4, 4).double(), torch.nn.Linear(4, 1).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    grads = []
    for lam in (None, 0.5):
        below.zero_grad(), above.zero_grad()
        h = below(x)
        out = above(h if lam is None else grad_reverse(h, lam)).sum()
        out.backward()
        grads.append((below.weight.grad.clone(), above.weight.grad.clone()))
    (b0, a0), (b1, a1) = grads
    assert torch.allclose(b1, -0.5 * b0) and torch.allclose(a1, a0)
    with pytest.raises(ValueError, match="lambda"):
        grad_reverse(x, -1.0)


# -- schedules -------------------------------------------------------------------------------------------
def test_dann_lambda_schedule():
    assert dann_lambda(0.0) == 0.0
    assert dann_lambda(0.5) == pytest.approx(2 / (1 + math.exp(-5)) - 1) == pytest.approx(0.986614, abs=1e-6)
    assert dann_lambda(1.0) == pytest.approx(0.999909, abs=1e-6)
    assert dann_lambda(0.5, gamma=1.0) == pytest.approx(0.244919, abs=1e-6)
    values = [dann_lambda(p) for p in np.linspace(0, 1, 11)]
    assert values == sorted(values)
    with pytest.raises(ValueError, match="progress"):
        dann_lambda(1.5)


def test_dann_lr_schedule():
    assert dann_lr(0.0, 0.01) == pytest.approx(0.01)
    assert dann_lr(0.5, 0.01) == pytest.approx(0.01 / 6 ** 0.75) == pytest.approx(0.0026084, abs=1e-7)
    assert dann_lr(1.0, 0.01) == pytest.approx(0.01 / 11 ** 0.75) == pytest.approx(0.0016556, abs=1e-7)
    with pytest.raises(ValueError, match="progress"):
        dann_lr(-0.1, 0.01)


# -- DANN training ---------------------------------------------------------------------------------------
def _domain_crops(n=24, size=16, tint=(0, 0, 0), seed=0, classes=("bright", "dark"), labels=None, name="d"):
    """Bright vs dark discs on noise, with a colour ``tint`` per domain."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2
    labels = np.arange(n) % 2 if labels is None else np.asarray(labels)
    imgs = []
    for lab in labels:
        img = rng.integers(100, 156, (size, size, 3)).astype(np.int64)
        img[disc] = 225 if lab % 2 == 0 else 30
        imgs.append(np.clip(img + np.asarray(tint), 0, 255).astype(np.uint8))
    return CropDataset(np.stack(imgs), labels, list(classes), domains=[name] * len(labels), name=name)


def test_a_few_dann_steps_lower_the_label_loss():
    src = _domain_crops(seed=0, name="src")
    tgt = _domain_crops(seed=1, tint=(60, -40, 40), name="tgt")
    torch.manual_seed(0)
    model = DANN(build_classifier(src.class_names, width=4, norm="group"), hidden=16)
    x, y = src.images.float() / 255, torch.as_tensor(src.labels)
    with torch.no_grad():
        before = float(F.cross_entropy(model(x)[0], y))
    hist = train_dann(model, src, tgt, steps=20, batch_size=12, lr=0.05, device="cpu", seed=0, augment=False)
    with torch.no_grad():
        logits, dlogits = model(x)
    assert float(F.cross_entropy(logits, y)) < before
    assert dlogits.shape == (len(src), 2)
    assert hist[-1]["lambda"] == pytest.approx(dann_lambda(1.0)) and "domain_loss" in hist[-1]
    assert model.domain_head.net[0].weight.grad is not None          # the domain classifier trained
    with pytest.raises(TypeError, match="DANN"):
        train_dann(model.classifier, src, tgt, steps=1)
    with pytest.raises(TypeError, match="source must be a CropDataset"):   # not an AttributeError
        train_dann(model, [src], tgt, steps=1)


# -- the experiment and class mismatches -------------------------------------------------------------------
def test_shared_classes_reports_the_rest():
    a = _domain_crops(labels=[0, 0, 1, 1, 2], classes=("x", "y", "z"), name="a")
    b = _domain_crops(labels=[0, 0, 1, 1, 1], classes=("x", "y", "z"), name="b")
    shared, missing = shared_classes(a, b)
    assert shared == ["x", "y"] and missing == {"z": {"a": 1, "b": 0}}


def test_experiment_with_a_class_missing_in_one_domain():
    labels_a = [0, 1] * 6 + [2, 2, 2]          # class "rare" in the source only
    src = _domain_crops(labels=labels_a, classes=("bright", "dark", "rare"), name="A")
    tgt = _domain_crops(labels=[0, 1] * 6, seed=1, tint=(50, 0, -30), classes=("bright", "dark", "rare"), name="B")
    with pytest.warns(UserWarning, match="rare"):
        res = run_experiment(src, tgt, methods=("source_only", "dann"), seeds=(0,), steps=3, batch_size=8,
                             width=4, domain_hidden=8, augment=False, device="cpu")
    assert res.shared_classes == ["bright", "dark"] and res.missing_classes == {"rare": {"A": 3, "B": 0}}
    assert np.asarray(res.confusion["dann"]["target"]).shape == (2, 2)
    assert np.asarray(res.confusion["dann"]["target"]).sum() == res.sizes["target_test"] == 4
    assert res.sizes["source_train"] + res.sizes["source_test"] == 12   # the rare class left out
    rows = res.rows()
    assert {(r["method"], r["tested_on"]) for r in rows} == {("source_only", "B"), ("dann", "B"),
                                                            ("source_only", "A"), ("dann", "A")}
    assert set(res.summary()) >= {"source_only_f1", "dann_f1", "dann_source_f1", "dann_f1_std"}
    assert "trained on" in res.markdown() and res.to_dict()["missing_classes"] == res.missing_classes


def test_experiment_reuses_identical_trainings_across_directions():
    a = _domain_crops(labels=[0, 1] * 5, name="A")
    b = _domain_crops(labels=[0, 1] * 5, seed=1, tint=(40, 0, 0), name="B")
    cache = {}
    kw = dict(seeds=(0,), steps=2, batch_size=4, width=4, augment=False, device="cpu", cache=cache)
    ab = run_experiment(a, b, methods=("source_only", "mixed"), **kw)
    n = len(cache)
    ba = run_experiment(b, a, methods=("oracle", "mixed"), **kw)
    assert len(cache) == n == 2                       # oracle B->A is source only A->B; mixed is shared
    assert ba.scores["oracle"]["target"] == ab.scores["source_only"]["source"]


def test_experiment_rejects_bad_arguments():
    a = _domain_crops(labels=[0, 1] * 3, name="A")
    with pytest.raises(ValueError, match="methods"):
        run_experiment(a, a, methods=("magic",))
    one = _domain_crops(labels=[0] * 6, name="B")
    with pytest.raises(ValueError, match="fewer than two"):
        run_experiment(a, one, seeds=(0,), steps=1)
    with pytest.raises(TypeError, match="CropDataset"):
        run_experiment([1, 2, 3], a)


def test_zheng_domains_share_four_classes(zheng_root):
    from smearlab.data import load
    ds = load(zheng_root, format="zheng")
    doms = {k: crops_from_dataset(v, 32) for k, v in ds.by_domain().items()}
    assert [len(d) for d in doms.values()] == [300, 100]
    shared, missing = shared_classes(doms["dataset1"], doms["dataset2"])
    assert shared == ["neutrophil", "lymphocyte", "monocyte", "eosinophil"]
    assert missing == {"basophil": {"dataset1": 1, "dataset2": 3}}


def test_class_map_naming_a_class_not_in_the_source_is_refused():
    """A typo in class_map ('bands' for 'band') left the class unmatched and its cells dropped."""
    from smearlab.data.classes import ClassMismatchError, match_classes

    with pytest.raises(ClassMismatchError, match="'bands', which is not a source class"):
        match_classes(["Lymphocyte", "band"], ["lymphocyte", "neutrophil"], {"bands": "neutrophil"})
    m = match_classes(["Lymphocyte", "band"], ["lymphocyte", "neutrophil"], {"band": "neutrophil"})
    assert m.lut.tolist() == [0, 1]
