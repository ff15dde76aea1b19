"""Correct and retrain (#17): predict, correct in the exported format, import back, fine-tune from the
model folder, and check that the model changed and its counts improved; the QuPath loader."""
import json
import shutil

import numpy as np
import pytest
import torch

from smearlab import batch
from smearlab.core.errors import DataError
from smearlab.data import load
from smearlab.data.imageio import write_image
from smearlab.data.synthetic import make_dataset
from smearlab.detection.finetune import compare_models, fine_tune, read_train_config
from smearlab.detection.models import DetectorConfig, build_detector, load_model
from smearlab.detection.train import TrainConfig, param_digest, train_detector
from smearlab.export import image_record


def _truth_as_prediction(sample):
    return {"boxes": sample.boxes, "labels": sample.labels, "scores": np.ones(len(sample.boxes), np.float32)}


def _count_error(records_or_preds, truth, names):
    err = []
    for s, objs in zip(truth, records_or_preds):
        for k, c in enumerate(names):
            t = int((s.labels == k).sum())
            p = sum(o["class"] == c for o in objs["objects"])
            err.append(abs(p - t) / max(t, 1))
    return float(np.mean(err))


def test_correct_and_retrain_round_trip_on_cbc(cbc_root, tmp_path):
    train = load(cbc_root / "Training")
    test = load(cbc_root / "Testing")
    few = test.subset(range(6), name="to-correct")
    cfg = DetectorConfig(arch="fasterrcnn_tiny", class_names=train.class_names, min_size=320, max_size=320)
    torch.manual_seed(0)
    model = build_detector(cfg)
    train_detector(model, train.subset(range(8)), None,
                   TrainConfig(epochs=2, batch_size=2, lr=0.02, warmup_iters=2, device="cpu", out_dir=tmp_path / "run"),
                   progress=False)
    folder = tmp_path / "run" / "model"
    assert read_train_config(folder).batch_size == 2          # the recipe travels with the model
    images = tmp_path / "new"
    for s in few:
        images.mkdir(exist_ok=True)
        shutil.copy(s.path, images / s.path.name)

    # 1. predict the new images
    out = tmp_path / "pred"
    batch.predict(folder, [images], out, score=0.5, progress=False)
    before = [json.loads((out / "json" / f"{s.path.stem}.json").read_text()) for s in few]

    # 2. "correct" them in the exported COCO file, as a reviewer does in CVAT: the annotations
    #    become the truth, images and categories stay as exported
    coco = json.loads((out / "coco.json").read_text())
    ids = {im["file_name"]: im["id"] for im in coco["images"]}
    cats = {c["name"]: c["id"] for c in coco["categories"]}
    anns = []
    for s in few:
        for box, lab in zip(s.boxes.tolist(), s.labels.tolist()):
            x0, y0, x1, y1 = box
            anns.append({"id": len(anns) + 1, "image_id": ids[s.path.name], "category_id": cats[few.class_names[lab]],
                         "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
    coco["annotations"] = anns
    (tmp_path / "corrected.json").write_text(json.dumps(coco))

    # 3. import the corrections back: the same boxes as the truth
    corrected = load(tmp_path / "corrected.json", format="coco", image_root=images)
    assert len(corrected) == 6 and corrected.num_objects == few.num_objects
    by_name = {s.path.name: s for s in corrected}
    for s in few:
        c = by_name[s.path.name]
        assert np.allclose(np.sort(c.boxes, 0), np.sort(s.boxes, 0), atol=1e-3)

    # 4. fine-tune from the model folder (not from scratch), with the corrected images merged in
    digest = param_digest(load_model(folder, device="cpu"))
    tuned, hist = fine_tune(folder, corrected, train.subset(range(8)), epochs=6, lr_scale=1.0, device="cpu",
                            out_dir=tmp_path / "tuned")
    assert len(hist) == 6 and param_digest(tuned) != digest
    assert (tmp_path / "tuned" / "model" / "weights.pt").is_file()

    # 5. the counts on the corrected images improved
    out2 = tmp_path / "pred2"
    batch.predict(tmp_path / "tuned" / "model", [images], out2, score=0.5, progress=False)
    after = [json.loads((out2 / "json" / f"{s.path.stem}.json").read_text()) for s in few]
    assert _count_error(after, few, few.class_names) < _count_error(before, few, few.class_names)
    scores = compare_models(folder, tmp_path / "tuned" / "model", few, device="cpu")
    assert scores["after"]["mAP50"] > scores["before"]["mAP50"]


def test_qupath_geojson_round_trips_through_the_loader(tmp_path):
    ds = make_dataset(3, seed=1, width=96, height=96)
    images, geo = tmp_path / "images", tmp_path / "qupath"
    for i, s in enumerate(ds):
        write_image(images / f"img_{i}.png", s.image)
        rec = image_record(s, _truth_as_prediction(s), ds.class_names, file_name=f"img_{i}.png")
        geo.mkdir(exist_ok=True)
        (geo / f"img_{i}.geojson").write_text(json.dumps(batch.qupath_geojson(rec)))
    back = load(geo, images=images)
    assert back.format == "qupath" and len(back) == 3
    for i, s in enumerate(ds):
        b = next(x for x in back if x.image_id == f"img_{i}")
        names_back = sorted((back.class_names[k], tuple(np.round(bx, 3))) for k, bx in zip(b.labels, b.boxes))
        names_true = sorted((ds.class_names[k], tuple(np.round(bx, 3))) for k, bx in zip(s.labels, s.boxes))
        assert names_back == names_true


def test_qupath_loader_counts_bad_features_and_files(tmp_path):
    images = tmp_path
    write_image(images / "a.png", np.full((40, 40, 3), 200, np.uint8))
    write_image(images / "b.png", np.full((40, 40, 3), 200, np.uint8))
    poly = {"type": "Polygon", "coordinates": [[[2, 2], [20, 2], [20, 30], [2, 30], [2, 2]]]}
    feats = [
        {"type": "Feature", "geometry": poly, "properties": {"classification": {"name": "WBC"}}},
        {"type": "Feature", "geometry": poly, "properties": {}},                                   # no class
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [3, 3]},
         "properties": {"classification": {"name": "WBC"}}},                                        # a point
        {"type": "Feature", "geometry": {"type": "MultiPolygon", "coordinates": [poly["coordinates"]]},
         "properties": {"classification": "RBC"}},                                                  # string class
        *({"type": "Feature", "geometry": {"type": kind, "coordinates": bad},
           "properties": {"classification": "RBC"}}                 # malformed: counted, not a traceback
          for kind, bad in (("Polygon", 5), ("Polygon", {"a": 1}), ("MultiPolygon", [5]), ("Polygon", [[[1]]]))),
    ]
    (tmp_path / "a.geojson").write_text(json.dumps(feats))                  # QuPath's bare list of features
    (tmp_path / "b.geojson").write_text("{not json")
    (tmp_path / "c.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": []}))  # no image
    ds = load(tmp_path, format="qupath")
    assert len(ds) == 1 and ds.class_names == ["RBC", "WBC"] and len(ds[0].boxes) == 2
    reasons = " | ".join(s.reason for s in ds.skipped)
    assert "classification" in reasons and "Point" in reasons and "malformed JSON" in reasons
    assert reasons.count("coordinates are not lists of [x, y] numbers") == 4
    assert "image file not found" in reasons
    with pytest.raises(DataError, match="malformed JSON"):
        load(tmp_path / "b.geojson", strict=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .geojson"):
        load(tmp_path / "empty", format="qupath")


def test_notebook_09_counts_with_notebook_03s_best_model(tmp_path):
    from smearlab.experiments.counting import earlier_model
    run = tmp_path / "report"
    (run / "03_detection" / "tiny_frozen_backbone" / "final").mkdir(parents=True)
    (run / "03_detection" / "tiny_frozen_backbone" / "final" / "config.json").write_text("{}")
    assert earlier_model(run / "09_counting") is None                      # 03 recorded nothing yet
    (run / "03_detection.metrics.json").write_text(json.dumps({"best": "tiny, frozen backbone"}))
    assert earlier_model(run / "09_counting") == run / "03_detection" / "tiny_frozen_backbone" / "final"
    folder = run / "03_detection" / "tiny_frozen_backbone" / "final"
    (folder / "config.json").write_text(json.dumps({"class_names": ["RBC", "WBC", "Platelets"]}))
    assert earlier_model(run / "09_counting", ["RBC", "WBC", "Platelets"]) == folder
    assert earlier_model(run / "09_counting", ["WBC", "RBC", "Platelets"]) is None  # another class order
    assert earlier_model(run / "09_counting", ["ring", "trophozoite"]) is None       # 03 ran on other data
    (folder / "thresholds.json").write_text(json.dumps({"score": {"RBC": 0.5}, "tta": True}))
    assert earlier_model(run / "09_counting", ["RBC", "WBC", "Platelets"]) is None  # tuned with tta: 09 would refuse them
    (run / "03_detection.metrics.json").write_text(json.dumps({"best": "gone"}))
    assert earlier_model(run / "09_counting") is None


def test_notebook_09_scores_before_and_after_on_images_nobody_reviewed(tmp_path):
    from smearlab.experiments.counting import held_out, images_on_disk
    from smearlab.export import file_names
    new = load(images_on_disk(make_dataset(5, seed=3, width=96, height=72), tmp_path / "new"))
    names = file_names(new)
    rest = held_out(new, names[1:3])
    assert file_names(rest) == [names[0], *names[3:]]                  # the reviewed images are left out
    assert [s.image.sum() for s in rest] == [new[i].image.sum() for i in (0, 3, 4)]
    with pytest.raises(ValueError, match="none is left"):                 # review everything: nothing to score
        held_out(new, names)
    with pytest.raises(ValueError, match="not images of"):
        held_out(new, ["elsewhere.png"])


def test_a_second_round_of_fine_tuning_scales_the_recipe_not_the_last_round(tmp_path):
    """The fine-tuned folders keep the recipe: each round's peak rate was the last round's x 0.1."""
    from smearlab.data.synthetic import make_dataset
    from smearlab.detection import DetectorConfig, TrainConfig, build_detector
    from smearlab.detection.finetune import fine_tune, read_train_config
    from smearlab.detection.models import save_model
    ds = make_dataset(3, seed=0, width=96, height=80)
    cfg = DetectorConfig(arch="fasterrcnn_tiny", class_names=ds.class_names, min_size=80, max_size=96)
    save_model(build_detector(cfg), cfg, tmp_path / "r0", train_config=TrainConfig(lr=0.02, batch_size=2))
    folder = tmp_path / "r0"
    for k in (1, 2):
        _, hist = fine_tune(folder, ds, ds, epochs=1, lr_scale=0.1, device="cpu", out_dir=tmp_path / f"r{k}")
        assert max(hist.column("lr")) <= 0.002 + 1e-12  # 0.1 x the recipe, never 0.1 x 0.1
        folder = tmp_path / f"r{k}" / "model"
        assert read_train_config(folder).lr == 0.02 and read_train_config(tmp_path / f"r{k}" / "best").lr == 0.02


def test_fine_tuning_keeps_the_recipes_augmentation_and_average_and_tunes_thresholds_again(tmp_path):
    """Fine-tuning dropped the recipe's augmentation and weight average (and recorded that), kept
    thresholds tuned for the old weights in model/ and gave best/ none: one model, two counts."""
    from smearlab.detection.models import save_model
    from smearlab.detection.tune import Thresholds
    ds = make_dataset(4, seed=0, width=96, height=80)
    cfg = DetectorConfig(arch="fasterrcnn_tiny", class_names=ds.class_names, min_size=80, max_size=96)
    recipe = TrainConfig(lr=0.02, batch_size=2, augment="default", ema_decay=0.9)
    old = Thresholds({c: 0.2 for c in ds.class_names}, nms_iou=0.3, objective="count")
    save_model(build_detector(cfg), cfg, tmp_path / "r0", thresholds=old, train_config=recipe)
    got = read_train_config(tmp_path / "r0")
    assert got.augment is not None and got.ema_decay == 0.9
    model, _ = fine_tune(tmp_path / "r0", ds, val=ds.subset([0, 1]), epochs=1, device="cpu", out_dir=tmp_path / "r1")
    saved = json.loads((tmp_path / "r1" / "model" / "train_config.json").read_text())
    assert saved["augment"] is not None and saved["ema_decay"] == 0.9
    tuned = json.loads((tmp_path / "r1" / "model" / "thresholds.json").read_text())
    assert tuned["objective"] == "count" and tuned["metrics"]       # tuned again, for the same objective
    best = json.loads((tmp_path / "r1" / "best" / "thresholds.json").read_text())
    assert {k: v for k, v in best.items() if k != "save_id"} == {k: v for k, v in tuned.items() if k != "save_id"}


def test_fine_tuning_a_folder_without_a_recipe_leaves_best_readable(tmp_path):
    """best/ lists the training settings it was saved with; deleting the file by hand (the folder
    fine-tuned had no recipe) made best/ unreadable, and re-tuning its thresholds failed."""
    from smearlab.detection.models import load_model, save_model
    from smearlab.detection.tune import Thresholds
    ds = make_dataset(3, seed=0, width=96, height=80)
    cfg = DetectorConfig(arch="fasterrcnn_tiny", class_names=ds.class_names, min_size=80, max_size=96)
    save_model(build_detector(cfg), cfg, tmp_path / "r0", thresholds=Thresholds({c: 0.2 for c in ds.class_names}))
    fine_tune(tmp_path / "r0", ds, val=ds.subset([0]), epochs=1, device="cpu", out_dir=tmp_path / "r1")
    assert not (tmp_path / "r1" / "best" / "train_config.json").exists()
    assert read_train_config(tmp_path / "r1" / "best") is None  # a further round from best/ (it raised)
    assert load_model(tmp_path / "r1" / "best", device="cpu").thresholds


def test_corrections_leave_out_classes_the_model_does_not_know(tmp_path, caplog):
    """Notebook 09 with a model of fewer classes than the dataset stopped with a bare KeyError."""
    from smearlab.experiments.counting import corrections_from_truth
    from smearlab.export import export_coco_gt, file_names

    gt = export_coco_gt(make_dataset(2, seed=0, width=96, height=96), tmp_path / "data" / "truth.json")
    truth = load(gt)
    names = file_names(truth)
    run = tmp_path / "run"
    run.mkdir()
    (run / "coco.json").write_text(json.dumps({  # a model of two classes, one named by an alias
        "images": [{"id": i + 1, "file_name": n, "width": 96, "height": 96} for i, n in enumerate(names)],
        "annotations": [], "categories": [{"id": 1, "name": "rbc"}, {"id": 2, "name": "WBC"}]}))
    classes = [truth.class_names[k] for k in truth[0].labels.tolist()]
    assert "Platelets" in classes and "WBC" in classes
    with caplog.at_level("WARNING", logger="smearlab.experiments.counting"):
        out = corrections_from_truth(run, gt, names[:1], tmp_path / "fixed.json")
    fixed = json.loads(out.read_text())
    assert sorted(a["category_id"] for a in fixed["annotations"]) == sorted(
        {"RBC": 1, "WBC": 2}[c] for c in classes if c != "Platelets")
    assert any("Platelets" in r.getMessage() for r in caplog.records)


def test_fine_tuning_keeps_hand_set_thresholds_and_a_bad_recipe_file_does_not_stop_prediction(tmp_path, caplog):
    """Thresholds set by hand were replaced by F1-tuned ones; a broken train_config.json (which
    prediction never needs) stopped load_model."""
    import logging

    from smearlab.detection.models import save_model
    from smearlab.detection.tune import Thresholds
    ds = make_dataset(3, seed=0, width=96, height=80)
    cfg = DetectorConfig(arch="fasterrcnn_tiny", class_names=ds.class_names, min_size=80, max_size=96)
    hand = Thresholds({c: 0.35 for c in ds.class_names}, nms_iou=0.4)          # objective "manual"
    save_model(build_detector(cfg), cfg, tmp_path / "r0", thresholds=hand, train_config=TrainConfig(batch_size=2))
    fine_tune(tmp_path / "r0", ds, val=ds.subset([0]), epochs=1, device="cpu", out_dir=tmp_path / "r1")
    for folder in ("model", "best"):
        kept = json.loads((tmp_path / "r1" / folder / "thresholds.json").read_text())
        assert kept["score"] == hand.score and kept["objective"] == "manual"
    (tmp_path / "r0" / "train_config.json").write_text("[1, 2]")
    with caplog.at_level(logging.WARNING, logger="smearlab.detection"):
        model = load_model(tmp_path / "r0", device="cpu")
    assert model.train_config is None and any("recipe is not read" in r.getMessage() for r in caplog.records)
