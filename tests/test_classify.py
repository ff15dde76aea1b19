"""Cell crops (letterbox, crop geometry, datasets), the small ResNet, training, metrics, the cascade."""

import numpy as np
import pytest
import torch
from PIL import Image

from smearlab.augment import CropAugment, default_crop_augment
from smearlab.classification.crops import CropDataset, crops_from_dataset
from smearlab.classification.model import build_classifier, load_classifier, save_classifier
from smearlab.classification.predict import classify_boxes, predict_classes
from smearlab.classification.train import _Batches, train_classifier
from smearlab.core.geometry import extract_crop, letterbox, square_window
from smearlab.data import DataError, Sample, SmearDataset, load
from smearlab.data.splits import stratified_split
from smearlab.data.synthetic import make_wbc_crops
from smearlab.metrics.classification import classification_report
from smearlab.models import load_model


# -- letterbox and crop geometry ---------------------------------------------------------------
def test_letterbox_keeps_aspect_and_pads():
    img = np.zeros((20, 40, 3), np.uint8)
    img[:] = (200, 10, 10)
    img[5:15, 10:30] = (10, 200, 10)          # a green block in the middle
    out = letterbox(img, 64)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    # 40 wide -> 64 wide, 20 high -> 32 high, centred: rows 16..47 hold the image
    assert (out[:16] == (200, 10, 10)).all() and (out[48:] == (200, 10, 10)).all()  # padding = border median
    green = (out[..., 1] > 150)
    rows, cols = np.flatnonzero(green.any(1)), np.flatnonzero(green.any(0))
    assert rows[0] >= 16 + 7 and rows[-1] <= 16 + 25          # block scaled by 1.6, not stretched
    assert abs((cols[-1] - cols[0] + 1) / (rows[-1] - rows[0] + 1) - 2.0) < 0.25
    black = letterbox(img, 64, fill=0)
    assert (black[:16] == 0).all()
    edge = letterbox(img, 64, fill="edge")
    assert (edge[0] == edge[16]).all()


def test_letterbox_rejects_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        letterbox(np.zeros((5, 5, 3), np.float32), 8)
    with pytest.raises(ValueError, match="size"):
        letterbox(np.zeros((5, 5, 3), np.uint8), 0)
    with pytest.raises(ValueError, match="fill"):
        letterbox(np.zeros((5, 5, 3), np.uint8), 8, fill="blue")


def test_square_window_is_centred_and_padded():
    # box 20 x 40 centred on (20, 40); side 40 * 1.2 = 48
    assert square_window([10, 20, 30, 60], pad=0.1) == (-4, 16, 44, 64)
    assert square_window([0, 0, 10, 10], pad=0.0) == (0, 0, 10, 10)
    with pytest.raises(ValueError, match="x1 > x0"):
        square_window([5, 5, 5, 9])
    with pytest.raises(ValueError, match="pad"):
        square_window([0, 0, 4, 4], pad=-1)


def _coords_image(h=50, w=60):
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx, yy, np.full_like(xx, 7)], -1).astype(np.uint8)


def test_extract_crop_copies_pixels_inside():
    img = _coords_image()
    crop = extract_crop(img, [20, 10, 30, 20], pad=0.5)        # side 20, window (15, 5)-(35, 25)
    assert crop.shape == (20, 20, 3)
    assert crop[0, 0, 0] == 15 and crop[0, 0, 1] == 5 and crop[-1, -1, 0] == 34 and crop[-1, -1, 1] == 24


def test_extract_crop_clips_at_image_edges_and_fills():
    img = _coords_image()
    crop = extract_crop(img, [0, 0, 10, 10], pad=0.5, fill=255)  # window (-5, -5)-(15, 15)
    assert crop.shape == (20, 20, 3)
    assert (crop[:5] == 255).all() and (crop[:, :5] == 255).all()        # outside the image: fill
    assert crop[5, 5, 0] == 0 and crop[5, 5, 1] == 0                    # image origin at offset 5
    assert crop[19, 19, 0] == 14 and crop[19, 19, 1] == 14
    far = extract_crop(img, [55, 45, 60, 50], pad=1.0, fill=255)         # bottom-right corner
    assert far.shape == (15, 15, 3) and far[5, 5, 0] == 55 and far[5, 5, 1] == 45 and (far[10:] == 255).all()
    with pytest.raises(ValueError, match="outside"):
        extract_crop(img, [100, 100, 110, 110])


# -- crop datasets -------------------------------------------------------------------------------
def _smear_with_boxes():
    img = np.full((80, 100, 3), 220, np.uint8)
    img[10:30, 10:30] = 250
    img[40:70, 60:90] = 30
    s = Sample("s0", _image=img, boxes=[[10, 10, 30, 30], [60, 40, 90, 70], [0, 70, 5, 80]], labels=[1, 1, 0],
               domain="lab1")
    return SmearDataset([s], ["RBC", "WBC"], "smear")


def test_crops_from_boxes_letterboxed():
    crops = crops_from_dataset(_smear_with_boxes(), 32, source="boxes", classes=["WBC"], pad=0.0)
    assert len(crops) == 2 and crops.class_names == ["WBC"] and crops.labels.tolist() == [0, 0]
    assert crops.ids == ["s0#0", "s0#1"] and crops.domain_names == ["lab1"]
    assert crops.images.shape == (2, 3, 32, 32)
    assert crops.images[0].float().mean() > 240 and crops.images[1].float().mean() < 40
    x, label, domain = crops[1]
    assert x.dtype == torch.float32 and 0 <= float(x.min()) and float(x.max()) <= 1
    assert label == 0 and domain == "lab1"
    all_crops = crops_from_dataset(_smear_with_boxes(), 16, source="boxes")
    assert all_crops.class_counts() == {"RBC": 1, "WBC": 2}
    with pytest.raises(KeyError, match="Neutrophil"):
        crops_from_dataset(_smear_with_boxes(), 16, source="boxes", classes=["Neutrophil"])
    with pytest.raises(ValueError, match="source"):
        crops_from_dataset(_smear_with_boxes(), 16, source="masks")


def test_crops_from_image_labels_and_smears_without_them():
    ds = make_wbc_crops(10, seed=0, size=40)
    crops = crops_from_dataset(ds, 24)
    assert len(crops) == 10 and crops.class_counts() == {n: 2 for n in ds.class_names}
    assert crops.domain_names == ["A"]
    smears = crops_from_dataset(_smear_with_boxes(), 24, source="image")
    assert len(smears) == 0 and "image-level label" in str(smears.skipped[0])


def test_crop_folder_with_empty_class_mixed_sizes_and_modes(tmp_path, caplog):
    root = tmp_path / "pbc"
    for c in ("basophil", "eosinophil", "neutrophil"):
        (root / c).mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (60, 40, 3), dtype=np.uint8)).save(root / "eosinophil" / "a.jpg")
    Image.fromarray(rng.integers(0, 255, (30, 90), dtype=np.uint8), "L").save(root / "eosinophil" / "grey.png")
    Image.fromarray(rng.integers(0, 255, (50, 50, 4), dtype=np.uint8), "RGBA").save(root / "neutrophil" / "rgba.png")
    grey = Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8), "L")
    grey.convert("P").save(root / "neutrophil" / "p.gif")
    Image.fromarray(rng.integers(0, 60000, (33, 21), dtype=np.uint16)).save(root / "neutrophil" / "deep.png")
    (root / "neutrophil" / "broken.png").write_bytes(b"not a png")
    ds = load(root, format="imagefolder")
    crops = crops_from_dataset(ds, 32)
    assert crops.class_names == ["basophil", "eosinophil", "neutrophil"]
    assert crops.class_counts() == {"basophil": 0, "eosinophil": 2, "neutrophil": 3}
    assert crops.empty_classes == ["basophil"]
    assert crops.images.shape == (5, 3, 32, 32)
    reasons = [str(s) for s in crops.skipped]
    assert any("empty class folder" in r for r in reasons) and any("broken.png" in r for r in reasons)
    assert any("basophil" in r.getMessage() for r in caplog.records)
    with pytest.raises(DataError, match="broken.png"):  # the loader reads each header and counts the broken file
        load(root, format="imagefolder", strict=True)


def test_crop_dataset_split_restrict_concat():
    labels = np.array([0] * 10 + [1] * 4 + [2])
    tr, te = stratified_split(labels, 0.3, seed=0)
    assert sorted(np.concatenate([tr, te]).tolist()) == list(range(15)) and not set(tr) & set(te)
    assert (labels[te] == 0).sum() == 3 and (labels[te] == 1).sum() == 1 and (labels[te] == 2).sum() == 0
    imgs = np.zeros((15, 8, 8, 3), np.uint8)
    d = CropDataset(imgs, labels, ["a", "b", "c"], domains=["x"] * 15, name="d")
    r = d.restrict(["c", "a"])
    assert r.class_names == ["c", "a"] and sorted(r.labels.tolist()) == [0] + [1] * 10
    with pytest.raises(KeyError):
        d.restrict(["z"])
    other = CropDataset(np.zeros((2, 3, 8, 8), np.uint8), [1, 1], ["a", "b", "c"], domains=["y", "y"])
    both = CropDataset.concat([d, other])
    assert len(both) == 17 and both.domain_names == ["x", "y"] and set(both.by_domain()) == {"x", "y"}
    with pytest.raises(ValueError, match="concatenate"):
        CropDataset.concat([d, CropDataset(np.zeros((1, 4, 4, 3), np.uint8), [0], ["a", "b", "c"])])
    with pytest.raises(ValueError, match="outside"):
        CropDataset(imgs[:1], [3], ["a", "b", "c"])


def test_balanced_batches_even_out_rare_classes():
    labels = np.array([0] * 95 + [1] * 5)
    b = _Batches(labels, 100, True, torch.Generator().manual_seed(0))
    drawn = np.concatenate([labels[b.next().numpy()] for _ in range(20)])
    assert 0.4 < drawn.mean() < 0.6


def test_crop_augment_is_a_symmetry_plus_colour():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.uint8).view(2, 3, 4, 4)
    out = CropAugment(None, seed=1).batch(x)
    for a, b in zip(x, out):
        views = [torch.rot90(a, k, (1, 2)) for k in range(4)]
        assert any(torch.equal(b, v) or torch.equal(b, v.flip(2)) for v in views)
    y = default_crop_augment(0).batch(x)
    assert y.shape == x.shape and y.dtype == torch.uint8


# -- model -----------------------------------------------------------------------------------------
def test_classifier_api():
    m = build_classifier(["a", "b", "c"], width=8)
    assert [n for n, _ in m.features.named_children()] == ["stem", "layer1", "layer2", "layer3", "layer4"]
    x = torch.rand(2, 3, 32, 32)
    assert m(x).shape == (2, 3) and m.embed(x).shape == (2, 64) and m.pool(m.features(x)).shape == (2, 64)
    assert isinstance(m.head, torch.nn.Linear) and m.class_names == ["a", "b", "c"]
    assert not any(isinstance(mod, torch.nn.BatchNorm2d) for mod in m.modules())
    batch = build_classifier(["a"], width=8, norm="batch")
    assert any(isinstance(mod, torch.nn.BatchNorm2d) for mod in batch.modules())
    with pytest.raises(ValueError, match="norm"):
        build_classifier(["a"], norm="layer")
    with pytest.raises(ValueError, match="duplicates"):
        build_classifier(["a", "a"])


def _two_class_crops(n=32, size=24, seed=0):
    """Dark vs bright discs on noise: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2
    imgs, labels = [], []
    for i in range(n):
        img = rng.integers(100, 156, (size, size, 3)).astype(np.uint8)
        img[disc] = 30 if i % 2 else 225
        imgs.append(img)
        labels.append(i % 2)
    return CropDataset(np.stack(imgs), labels, ["dark", "bright"][::-1], name="discs")


def test_train_classifier_learns_and_reports():
    data = _two_class_crops()
    m = build_classifier(data.class_names, width=4, norm="group")
    hist = train_classifier(m, data, data, steps=30, batch_size=16, lr=0.05, device="cpu", seed=0)
    assert hist[-1]["step"] == 30 and hist[-1]["loss"] < hist[0]["loss"]
    found = predict_classes(m, data, device="cpu")
    pred, probs = found.labels, found.probs
    assert probs.shape == (32, 2) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert (pred == data.labels).mean() > 0.9 and hist[-1]["val_macro_f1"] > 0.9
    # one result per crop, like every task's prediction
    assert len(found) == 32 and found[0]["class"] == data.class_names[found[0]["label"]]
    assert found[0]["score"] == pytest.approx(float(probs[0].max()))
    assert m.input_size == 24
    # plain images (any size) are letterboxed to the model's input size
    imgs = [data.images[i].permute(1, 2, 0).numpy() for i in range(4)]
    assert predict_classes(m, [np.pad(im, ((0, 10), (0, 0), (0, 0)), mode="edge") for im in imgs]).labels.shape == (4,)
    with pytest.raises(ValueError, match="differ"):
        train_classifier(build_classifier(["x", "y"], width=4), data, steps=1)


def test_classification_report_matches_sklearn():
    from sklearn.metrics import f1_score
    yt = [0, 0, 0, 1, 1, 2, 2, 2]
    yp = [0, 0, 1, 1, 1, 2, 0, 3]   # class 3 is never true: it counts as errors, not in the means
    rep = classification_report(yt, yp, ["a", "b", "c", "d"])
    assert rep["per_class"]["a"]["precision"] == pytest.approx(2 / 3)
    assert rep["per_class"]["c"]["recall"] == pytest.approx(1 / 3) and rep["per_class"]["d"]["support"] == 0
    assert rep["macro"]["f1"] == pytest.approx(f1_score(yt, yp, labels=[0, 1, 2], average="macro"))
    assert rep["weighted"]["f1"] == pytest.approx(f1_score(yt, yp, labels=[0, 1, 2], average="weighted"))
    assert rep["confusion"][2] == [1, 0, 1, 1] and np.sum(rep["confusion"]) == 8
    assert rep["accuracy"] == pytest.approx(5 / 8)
    with pytest.raises(ValueError, match="outside"):
        classification_report([0, 5], [0, 0], ["a", "b"])
    with pytest.raises(ValueError, match="whole numbers"):      # never rounded to a label
        classification_report([0.5, 1], [0, 1], ["a", "b"])
    empty = classification_report([], [], ["a", "b"])   # undefined, not a measured 0
    assert empty["n"] == 0 and empty["macro"]["f1"] is None and empty["accuracy"] is None
    assert empty["confusion"] == [[0, 0], [0, 0]]


def test_classification_report_reads_class_predictions_in_their_own_class_order():
    """The model's labels were read in the truth's class order: a perfect model scored 0."""
    from smearlab.classification.predict import ClassPredictions
    model_order = ["lymphocyte", "monocyte", "neutrophil"]
    truth_order = ["neutrophil", "lymphocyte", "monocyte"]
    truth = [0, 1, 2, 1]                     # neutrophil, lymphocyte, monocyte, lymphocyte
    probs = np.eye(3, dtype=np.float32)[[2, 0, 1, 0]]   # the same cells, in the model's order
    rep = classification_report(truth, ClassPredictions(probs, model_order), truth_order)
    assert rep["accuracy"] == 1.0 and rep["macro"]["f1"] == 1.0
    with pytest.raises(ValueError, match="eosinophil"):
        classification_report([0], ClassPredictions(np.eye(2, dtype=np.float32)[[1]], ["neutrophil", "eosinophil"]),
                              ["neutrophil", "lymphocyte"])


def test_save_and_load_classifier(tmp_path):
    m = build_classifier(["a", "b"], width=4, norm="group", input_size=24).eval()
    p = save_classifier(m, tmp_path / "clf")
    assert sorted(q.name for q in p.iterdir()) == ["config.json", "weights.pt"]
    back = load_classifier(p, device="cpu")
    x = torch.rand(2, 3, 24, 24)
    assert torch.allclose(m(x), back(x)) and back.class_names == ["a", "b"] and back.input_size == 24
    assert load_model(p, device="cpu").class_names == ["a", "b"]
    (p / "weights.pt").write_bytes(b"garbage")
    with pytest.raises(DataError, match="weights.pt"):
        load_classifier(p)
    with pytest.raises(DataError, match="config.json"):
        load_classifier(tmp_path / "none")


# -- the cascade -------------------------------------------------------------------------------------
class BrightnessClassifier(torch.nn.Module):
    """Stand-in classifier with a known rule: a crop brighter than mid-grey is 'pale', else 'dark'."""

    class_names = ["pale", "dark"]
    input_size = 16

    def forward(self, x):
        m = x.mean((1, 2, 3))
        return torch.stack([m - 0.5, 0.5 - m], 1) * 10


def test_the_cascade_names_each_white_cell_by_its_crop(caplog):
    """classify_boxes (what ``smearlab predict`` runs on a cascade's white cells) crops each box."""
    ds = _smear_with_boxes()
    boxes = [[10., 10., 30., 30.], [60., 40., 90., 70.], [200., 200., 220., 220.]]  # pale, dark, off the image
    found, kept = classify_boxes(BrightnessClassifier(), ds[0].image, boxes, pad=0.0, device="cpu", where="s0")
    assert kept.tolist() == [0, 1] and [r["class"] for r in found] == ["pale", "dark"]
    assert "s0: box 2 not classified" in caplog.text
    for boxes in ([], [[200., 200., 220., 220.]]):  # no box, or none that can be cropped: no result, no error
        none, kept = classify_boxes(BrightnessClassifier(), ds[0].image, boxes, device="cpu")
        assert len(kept) == 0 and len(none) == 0 and none.probs.shape == (0, 2)


def test_crops_from_detector_predictions():
    from smearlab.classification.crops import crops_from_predictions
    ds = _smear_with_boxes()
    preds = [{"boxes": np.array([[10, 10, 30, 30], [60, 40, 90, 70], [1, 1, 8, 8]], np.float32),
              "scores": np.array([0.9, 0.3, 0.8], np.float32), "labels": np.array([1, 1, 0])}]
    crops = crops_from_predictions(ds, preds, 16, classes=["WBC"], score_threshold=0.5)
    assert len(crops) == 1 and crops.ids == ["s0#0"] and crops.images[0].float().mean() > 240
    assert len(crops_from_predictions(ds, preds, 16, score_threshold=0.0)) == 3
    # the ids name the detection in the prediction, whatever the threshold left out before it
    assert crops_from_predictions(ds, preds, 16, score_threshold=0.5).ids == ["s0#0", "s0#2"]
    with pytest.raises(ValueError, match="1 images"):
        crops_from_predictions(ds, preds * 2, 16)
    # a model's predictions label its own classes, in its order: mapped by name, not by position
    from smearlab.data.predictions import Predictions
    order = list(reversed(ds.class_names))
    theirs = Predictions([{**preds[0], "labels": np.array([order.index(ds.class_names[k]) for k in (1, 1, 0)])}],
                         order)
    crops = crops_from_predictions(ds, theirs, 16, classes=["WBC"], score_threshold=0.5)
    assert crops.ids == ["s0#0"] and crops.images[0].float().mean() > 240


def test_cbc_white_cell_crops_from_ground_truth(cbc_root):
    ds = load(cbc_root / "Testing", format="voc")
    crops = crops_from_dataset(ds, 48, source="boxes", classes=["WBC"])
    assert len(crops) == ds.class_counts()["WBC"] == 61          # the published Testing count
    assert crops.images.shape[1:] == (3, 48, 48) and len(set(crops.ids)) == 61
    assert len(crops.skipped) == len(ds.skipped)                  # the loader's skips, none added


def test_a_diverging_classifier_loss_stops_training():
    """Losses of 7.6e13 then NaN went on silently (the weights no longer finite)."""
    import numpy as np
    import torch

    from smearlab.classification.crops import CropDataset
    from smearlab.classification.model import build_classifier
    from smearlab.classification.train import train_classifier

    rng = np.random.default_rng(0)
    d = CropDataset(rng.integers(0, 256, (16, 24, 24, 3), dtype=np.uint8), [i % 2 for i in range(16)], ["a", "b"])
    torch.manual_seed(0)
    with pytest.raises(FloatingPointError, match="at step"):
        train_classifier(build_classifier(d.class_names, width=4), d, steps=6, batch_size=8, lr=1e8, device="cpu",
                         augment=False)


def test_an_empty_or_unlabelled_validation_set_is_refused_and_side_files_are_not_dropped(tmp_path):
    """An empty validation set scored macro F1 0.0 as if measured; unlabelled crops failed after
    the first epoch; save_classifier / save_unet wrote a preprocess.json their loaders never read."""
    import numpy as np

    from smearlab.classification.crops import CropDataset
    from smearlab.classification.model import build_classifier, save_classifier
    from smearlab.classification.train import train_classifier
    from smearlab.preprocess import Preprocess
    from smearlab.segmentation.unet import UNet, save_unet

    rng = np.random.default_rng(0)
    d = CropDataset(rng.integers(0, 256, (8, 24, 24, 3), dtype=np.uint8), [i % 2 for i in range(8)], ["a", "b"])
    m = build_classifier(d.class_names, width=4)
    for val in (d.subset([]), CropDataset(d.images.permute(0, 2, 3, 1).numpy()[:2], [-1, -1], ["a", "b"])):
        with pytest.raises(ValueError, match="labelled crops"):
            train_classifier(m, d, val, steps=1, device="cpu")
    pre = Preprocess([("gamma", {"g": 2.0})])
    with pytest.raises(TypeError, match="keeps no preprocess"):
        save_classifier(m, tmp_path / "c", preprocess=pre.to_dict())
    with pytest.raises(TypeError, match="keeps no preprocess"):
        save_unet(UNet(3, 2, base=4, depth=1), tmp_path / "u", preprocess=pre.to_dict())
    assert not (tmp_path / "c").exists() and not (tmp_path / "u").exists()


def test_history_picks_the_lowest_loss_and_never_compares_two_metrics():
    from smearlab.core.training import History
    h = History(best_metric="loss")
    for epoch, v in enumerate((0.9, 0.5, 0.7), start=1):
        h.note_best({"epoch": epoch, "val_loss": v})
    assert (h.best_epoch, h.best_value) == (2, 0.5)      # the highest loss won before
    m = History(best_metric="mAP")
    m.note_best({"epoch": 1, "val_mAP": 0.30, "val_mAP50": 0.6})
    assert not m.note_best({"epoch": 2, "val_mAP50": 0.35})  # an mAP50 alone never beats an mAP
    assert m.best_epoch == 1
    only50 = History(best_metric="mAP")
    only50.note_best({"epoch": 1, "val_mAP50": 0.3})
    assert only50.note_best({"epoch": 2, "val_mAP50": 0.4}) and only50.best_epoch == 2


def test_a_classifier_history_knows_its_best_epoch_and_numpy_meta_saves(tmp_path):
    from smearlab.classification.train import fit
    crops = crops_from_dataset(make_wbc_crops(8, seed=0, size=48), 32)
    clf = build_classifier(crops.class_names, width=4, input_size=32)
    hist = fit(clf, crops, val=crops, steps=4, batch_size=4, device="cpu", eval_every=2)
    f1 = hist.column("val_macro_f1")
    assert hist.best_value == max(f1) and hist.best_metric == "macro_f1"
    # numpy numbers in the meta: saved as Python numbers (the folder could not be read back)
    p = save_classifier(clf, tmp_path / "clf", epoch=np.int64(3), val_f1=np.float32(0.5))
    load_classifier(p)
    with pytest.raises(TypeError, match="cannot read back"):
        save_classifier(clf, tmp_path / "bad", note=object())
    assert not (tmp_path / "bad").exists()


def test_a_fallback_best_gives_way_to_the_real_metric_and_the_key_survives_a_checkpoint():
    from smearlab.core.training import History
    h = History(best_metric="mAP")
    h.note_best({"epoch": 1, "val_mAP50": 0.6})           # only the fallback so far
    assert h.note_best({"epoch": 2, "val_mAP": 0.3}) and (h.best_epoch, h.best_value) == (2, 0.3)
    assert not h.note_best({"epoch": 3, "val_mAP50": 0.9})
    state = h.to_state()
    assert state["best_key"] == "val_mAP"


def test_describe_best_says_when_no_gain_is_a_number():
    from smearlab.experiments.domain_adaptation import describe_best
    assert describe_best({"best_method": None, "best_gain": None}) == "none (no adaptation gain is a number)"
    assert describe_best({"best_method": "dann", "best_gain": 0.123}) == "dann +12.3 points"


def test_a_classifier_keeps_how_its_crops_were_cut_and_a_cascade_cuts_them_so(tmp_path, caplog):
    """The crop margin of the training crops was recorded nowhere: a classifier trained on crops
    with a margin of 0.3 was applied by a cascade at 0.1 without a word; a classifier trained on
    stain-normalised crops was saved without its normaliser; the features classifier took crops
    of another size (its measurements change with the resolution)."""
    from smearlab.classification.adapt import stain_normalise
    from smearlab.classification.predict import save_cascade
    from smearlab.classification.train import fit_features
    from smearlab.data.synthetic import make_dataset
    from smearlab.detection.models import DetectorConfig, build_detector, save_model

    smear = make_dataset(4, seed=0, width=160, height=160)
    crops = crops_from_dataset(smear, 32, source="boxes", classes=["WBC", "RBC"], pad=0.3)
    assert crops.cut == {"source": "boxes", "pad": 0.3, "fill": "median"}
    train, test = crops.split(0.3, seed=0)
    assert train.cut == test.cut == crops.cut
    other = crops_from_dataset(smear, 32, source="boxes", classes=["WBC", "RBC"], pad=0.1)
    assert CropDataset.concat([crops, other]).cut is None and CropDataset.concat([train, test]).cut == crops.cut
    clf = build_classifier(crops.class_names, width=4, input_size=32)
    train_classifier(clf, train, steps=2, batch_size=8, device="cpu")
    assert clf.crop_cut == crops.cut
    back = load_classifier(save_classifier(clf, tmp_path / "clf"), device="cpu")
    assert back.crop_cut == crops.cut
    det = save_model(build_detector(DetectorConfig(arch="fasterrcnn_tiny", class_names=["RBC", "WBC"])), None,
                     tmp_path / "det")
    import json
    folder = save_cascade(tmp_path / "cascade", det, back)
    assert json.loads((folder / "config.json").read_text())["pad"] == 0.3  # the classifier's margin
    with pytest.raises(ValueError, match="margin of 0.3"):
        save_cascade(tmp_path / "c2", det, back, pad=0.1)
    normalised = stain_normalise(train, train)
    assert normalised.cut["stain_normalised"]
    stained = build_classifier(crops.class_names, width=4, input_size=32)
    train_classifier(stained, normalised, steps=1, batch_size=8, device="cpu")
    with pytest.raises(ValueError, match="stain-normalised"):
        save_classifier(stained, tmp_path / "stained")
    with pytest.raises(ValueError, match="stain-normalised"):  # refused before the detector is copied
        save_cascade(tmp_path / "c3", det, stained)
    assert not (tmp_path / "c3").exists()
    assert json.loads((folder / "config.json").read_text())["fill"] == "median"
    feats = build_classifier(crops.class_names, arch="features")
    fit_features(feats, train, folds=2)
    small = crops_from_dataset(smear, 24, source="boxes", classes=["WBC", "RBC"], pad=0.3)
    with pytest.raises(ValueError, match="crops of 24 px for a classifier trained on 32 px"):
        predict_classes(feats, small)


def test_predict_classes_takes_the_models_channel_count_and_square_crops_of_its_size():
    torch.manual_seed(0)
    gray = build_classifier(["a", "b"], width=4, input_size=32, in_channels=1)
    p = predict_classes(gray, torch.randint(0, 256, (2, 1, 32, 32), dtype=torch.uint8), device="cpu")
    assert p.probs.shape == (2, 2)  # refused as "must be (N, 3, S, S)" before
    with pytest.raises(ValueError, match=r"\(N, 1, S, S\)"):  # a raw torch RuntimeError before
        predict_classes(gray, torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8), device="cpu")
    with pytest.raises(ValueError, match="RGB"):
        predict_classes(gray, [np.zeros((32, 32, 3), np.uint8)], device="cpu")
    rgb = build_classifier(["a", "b"], width=4, input_size=32)
    with pytest.raises(ValueError, match="square"):  # its width matched the model's 32 px
        predict_classes(rgb, torch.randint(0, 256, (2, 3, 40, 32), dtype=torch.uint8), device="cpu")
    with pytest.raises(ValueError, match="another size"):
        predict_classes(rgb, torch.randint(0, 256, (2, 3, 24, 24), dtype=torch.uint8), device="cpu")
    with pytest.raises(ValueError, match=r"\(N, 3, S, S\)"):
        predict_classes(rgb, torch.randint(0, 256, (2, 1, 32, 32), dtype=torch.uint8), device="cpu")
