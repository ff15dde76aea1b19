"""``smearlab predict``: folders, globs, a dataset path, a corrupt image among good ones, resume
after an interrupt, the exports read back by the project's loaders, and refusals."""
import csv
import json

import numpy as np
import pytest
import torch

from smearlab import batch, export
from smearlab.cli import main
from smearlab.core.errors import DataError
from smearlab.data.formats import coco as coco_format
from smearlab.data.sample import SmearDataset
from smearlab.data.imageio import write_image
from smearlab.data.synthetic import make_dataset
from smearlab.detection.models import DetectorConfig, build_detector
from smearlab.detection.train import TrainConfig, train_detector


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny detector trained for a few epochs on synthetic smears, and a folder of new images
    (two in a sub-folder) plus one corrupt file."""
    root = tmp_path_factory.mktemp("predict")
    ds = make_dataset(8, seed=0, width=192, height=192)
    cfg = DetectorConfig(arch="fasterrcnn_tiny", class_names=ds.class_names, min_size=192, max_size=192)
    torch.manual_seed(0)
    model = build_detector(cfg)
    train_detector(model, ds, None, TrainConfig(epochs=12, batch_size=2, lr=0.02, warmup_iters=2,
                                                     device="cpu", out_dir=root / "run"), progress=False)
    images = root / "images"
    new = make_dataset(4, seed=7, width=192, height=192)
    for i, s in enumerate(new):
        write_image(images / ("sub" if i >= 2 else "") / f"smear_{i}.png", s.image)
    return {"model": root / "run" / "model", "images": images, "new": new, "root": root}


def read_counts(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_folder_to_counts_and_exports(trained, tmp_path):
    out = tmp_path / "out"
    s = batch.predict(trained["model"], [trained["images"]], out, score=0.3, overlays=True, progress=False)
    assert s["images"] == s["predicted"] == 4 and s["failed"] == 0 and s["resumed"] == 0
    assert s["thresholds"] == "score" and s["images_per_s"] > 0
    names = sorted(p.relative_to(out / "json").as_posix() for p in (out / "json").rglob("*.json"))
    assert names == ["smear_0.json", "smear_1.json", "sub/smear_2.json", "sub/smear_3.json"]
    rows = read_counts(out / "counts.csv")
    classes = s["classes"]
    assert [r["image"] for r in rows] == ["smear_0.png", "smear_1.png", "sub/smear_2.png", "sub/smear_3.png"]
    total = 0
    for r in rows:
        rec = json.loads((out / "json" / (r["image"].rsplit(".", 1)[0] + ".json")).read_text())
        assert all(o["score"] >= 0.3 for o in rec["objects"])
        for c in classes:
            assert int(r[c]) == sum(o["class"] == c for o in rec["objects"])
        assert int(r["total"]) == len(rec["objects"])
        total += len(rec["objects"])
    assert total > 0, "a trained model finds cells in synthetic smears"
    assert sum(s["counts"].values()) == total
    assert json.loads((out / "summary.json").read_text())["counts"] == s["counts"]
    assert (out / "overlays" / "sub" / "smear_2.png").is_file()
    # COCO as CVAT imports it, read back by the project's own COCO loader
    back = coco_format.load(out / "coco.json", image_root=trained["images"])
    assert [sm.path.name for sm in back] == ["smear_0.png", "smear_1.png", "smear_2.png", "smear_3.png"]
    assert back.class_names == classes and back.num_objects == total
    results = json.loads((out / "coco_results.json").read_text())
    assert len(results) == total and {"image_id", "category_id", "bbox", "score"} <= set(results[0])
    # QuPath GeoJSON: one closed polygon per object, classified
    geo = json.loads((out / "qupath" / "smear_0.geojson").read_text())
    assert geo["type"] == "FeatureCollection"
    assert len(geo["features"]) == int(rows[0]["total"])
    for f in geo["features"]:
        ring = f["geometry"]["coordinates"][0]
        assert ring[0] == ring[-1] and len(ring) == 5 and f["properties"]["classification"]["name"] in classes


def test_glob_and_files(trained, tmp_path):
    s = batch.predict(trained["model"], [trained["images"]], tmp_path / "a", pattern="*.png", progress=False)
    assert s["images"] == 2  # the folder's own images only
    one = trained["images"] / "sub" / "smear_3.png"
    s = batch.predict(trained["model"], [one], tmp_path / "b", progress=False)
    assert s["images"] == 1 and (tmp_path / "b" / "json" / "smear_3.json").is_file()
    # the same file named twice is predicted once; two files of one name are refused
    assert len(batch.collect_images([one, one])) == 1
    other = tmp_path / "x" / "smear_3.png"
    other.parent.mkdir()
    other.write_bytes(one.read_bytes())
    with pytest.raises(DataError, match="smear_3.png.*also that of"):
        batch.collect_images([one, other])
    with pytest.raises(DataError, match="no such file"):
        batch.collect_images([tmp_path / "missing"])
    with pytest.raises(DataError, match="no image files"):
        batch.collect_images([tmp_path / "b" / "json"])


def test_corrupt_image_is_listed_not_fatal(trained, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in sorted(trained["images"].glob("*.png")):
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    code = main(["predict", str(trained["model"]), str(folder), "--out", str(tmp_path / "o"), "--no-progress"])
    assert code == 1  # some image failed
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert s["predicted"] == 2 and s["failed"] == 1
    assert s["failures"][0]["image"] == "broken.png" and "broken.png" in s["failures"][0]["error"]
    assert [r["image"] for r in read_counts(tmp_path / "o" / "counts.csv")] == ["smear_0.png", "smear_1.png"]


def test_interrupt_and_resume(trained, tmp_path, monkeypatch):
    out = tmp_path / "out"

    calls = {"n": 0}
    original = batch.image_record

    def flaky(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(*a, **kw)

    monkeypatch.setattr(batch, "image_record", flaky)
    with pytest.raises(KeyboardInterrupt):
        batch.predict(trained["model"], [trained["images"]], out, progress=False)
    done = sorted(p.name for p in (out / "json").rglob("*.json"))
    assert done == ["smear_0.json", "smear_1.json"]
    assert not list(out.rglob(".*tmp*")), "no partial file is left"
    monkeypatch.setattr(batch, "image_record", original)
    first = json.loads((out / "json" / "smear_0.json").read_text())
    s = batch.predict(trained["model"], [trained["images"]], out, progress=False)
    assert s["resumed"] == 2 and s["predicted"] == 2 and s["images"] == 4
    assert json.loads((out / "json" / "smear_0.json").read_text()) == first  # not re-done
    assert len(read_counts(out / "counts.csv")) == 4
    # another model or other settings into the same folder are refused
    with pytest.raises(DataError, match="another run.*score"):
        batch.predict(trained["model"], [trained["images"]], out, score=0.9, progress=False)


def test_a_rerun_never_mixes_results_silently(trained, tmp_path):
    """What a re-run into the same folder must not take from the earlier one: results of images
    whose file changed, results made before the model's preprocessing changed, its own output
    folder as input, results with no run.json; and overlays asked for later are drawn."""
    import shutil

    images = tmp_path / "images"
    shutil.copytree(trained["images"], images)
    out = images / "pred"  # inside the input folder
    first = batch.predict(trained["model"], [images], out, score=0.3, progress=False)
    assert first["predicted"] == 4
    assert len(batch.collect_images([images], exclude=images)) == 4  # --out the input folder itself: all kept
    same = tmp_path / "same"  # --out the input folder itself: its overlays are not new images on a re-run
    shutil.copytree(trained["images"], same)
    batch.predict(trained["model"], [same], same, score=0.3, overlays=True, progress=False)
    rerun = batch.predict(trained["model"], [same], same, score=0.3, overlays=True, progress=False)
    assert rerun["images"] == 4 and rerun["resumed"] == 4
    again = batch.predict(trained["model"], [images], out, score=0.3, overlays=True, progress=False)
    assert again["images"] == 4 and again["resumed"] == 4  # the output folder is not input
    assert len(list((out / "overlays").rglob("*.png"))) == 4  # drawn for the resumed images
    write_image(images / "smear_0.png", np.full((192, 192, 3), 255, np.uint8))  # same name, new content
    changed = batch.predict(trained["model"], [images], out, score=0.3, progress=False)
    assert changed["predicted"] == 1 and changed["resumed"] == 3
    rows = {r["image"]: r for r in read_counts(out / "counts.csv")}
    batch.predict(trained["model"], [images / "smear_0.png"], tmp_path / "fresh", score=0.3, progress=False)
    assert rows["smear_0.png"] == read_counts(tmp_path / "fresh" / "counts.csv")[0]  # the new field's count
    # the model's preprocessing is part of the model: another preprocess.json is another model
    model = tmp_path / "model"
    shutil.copytree(trained["model"], model)
    out2 = tmp_path / "out2"
    batch.predict(model, [images], out2, score=0.3, progress=False)
    (model / "preprocess.json").write_text(json.dumps({"smearlab_preprocess": 1, "steps": []}))
    with pytest.raises(DataError, match="another run.*model_id"):
        batch.predict(model, [images], out2, score=0.3, progress=False)
    (out2 / "run.json").unlink()
    with pytest.raises(DataError, match="no run.json"):
        batch.predict(model, [images], out2, score=0.3, progress=False)


@pytest.mark.parametrize("option, value, message", [
    ("score", 2.0, "score must be"), ("score", float("nan"), "score must be"), ("score", -0.1, "score must be"),
    ("scale", float("inf"), "outside"), ("scale", 1e-9, "outside"), ("pixel_size", float("inf"), "pixel_size"),
])
def test_values_that_would_count_nothing_are_refused_before_any_image(trained, tmp_path, option, value, message):
    with pytest.raises(ValueError, match=message):
        batch.predict(trained["model"], [trained["images"]], tmp_path / "o", progress=False, **{option: value})
    assert not (tmp_path / "o").exists()


def test_thresholds_json_that_is_not_thresholds_is_refused_on_loading(trained, tmp_path):
    import shutil

    from smearlab.detection.models import load_model

    model = tmp_path / "model"
    shutil.copytree(trained["model"], model)
    names = list(json.loads((model / "config.json").read_text())["class_names"])
    for bad, message in (({"foo": 1}, "'score'"), ([1, 2], "JSON object"), ({"score": {names[0]: "0.5"}}, "number"),
                         ({"score": {"Neutrophil": 0.5}}, "not classes of the model"),
                         ({"score": {names[0]: 0.5}, "nms_iou": "x"}, "nms_iou")):
        (model / "thresholds.json").write_text(json.dumps(bad))
        with pytest.raises(DataError, match=message):
            load_model(model, device="cpu")


def test_dataset_path_scores_counts(trained, tmp_path):
    from smearlab.export import export_coco_gt

    gt = export_coco_gt(trained["new"], tmp_path / "gt" / "truth.json")
    code = main(["predict", str(trained["model"]), "--dataset", str(gt), "--out", str(tmp_path / "o"),
                 "--score", "0.3", "--no-progress"])
    assert code == 0
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert s["images"] == 4 and s["failed"] == 0
    err = s["count_error"]
    assert set(err) == set(trained["new"].class_names)
    true = {c: 0 for c in err}
    for sm in trained["new"]:
        for lab in sm.labels.tolist():
            true[trained["new"].class_names[lab]] += 1
    for c, e in err.items():
        assert e["true"] == true[c] and e["predicted"] == s["counts"][c]
        if e["true"]:
            assert e["relative_error"] >= abs(e["predicted"] - e["true"]) / e["true"] - 1e-9
    # the same dataset typed another way is the same run (it was refused as "another run")
    again = main(["predict", str(trained["model"]), "--dataset", str(tmp_path / "gt" / ".." / "gt" / "truth.json"),
                  "--out", str(tmp_path / "o"), "--score", "0.3", "--no-progress"])
    assert again == 0 and json.loads((tmp_path / "o" / "summary.json").read_text())["resumed"] == 4


def test_an_image_given_twice_is_counted_once_and_a_path_glob_is_refused(trained, tmp_path, caplog):
    """A file and the folder holding it were two images (``x.png`` and ``sub/x.png``): counted twice."""
    images = trained["images"]
    with caplog.at_level("WARNING", logger="smearlab.batch"):
        s = batch.predict(trained["model"], [images / "sub" / "smear_2.png", images], tmp_path / "o", score=0.3,
                          progress=False)
    assert s["images"] == 4 and len(read_counts(tmp_path / "o" / "counts.csv")) == 4
    assert any("given more than once" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match="relative to each input folder"):  # a bare NotImplementedError
        batch.collect_images([images], pattern=str(images / "*.png"))


def test_a_rerun_leaves_no_stale_overlay_or_results_under_an_old_name(trained, tmp_path):
    """An image changed and predicted again without overlays kept its old overlay, which a later run
    with overlays did not redraw; an image whose output name changed (``a.png`` -> ``a.png`` once
    ``a.jpg`` joined it) left its old results beside the new ones (QuPath imported it twice)."""
    from PIL import Image

    images = tmp_path / "images"
    write_image(images / "a.png", trained["new"][0].image)
    out = tmp_path / "out"
    batch.predict(trained["model"], [images], out, score=0.3, overlays=True, progress=False)
    write_image(images / "a.png", trained["new"][1].image)  # another field under the same name
    batch.predict(trained["model"], [images], out, score=0.3, progress=False)
    assert not (out / "overlays" / "a.png").exists()
    batch.predict(trained["model"], [images], out, score=0.3, overlays=True, progress=False)
    drawn = np.asarray(Image.open(out / "overlays" / "a.png").convert("RGB"))
    assert (drawn == trained["new"][1].image).mean() > 0.5  # the new field under the boxes, not the old one
    Image.fromarray(trained["new"][2].image).save(images / "a.jpg", quality=95)
    s = batch.predict(trained["model"], [images], out, score=0.3, progress=False)
    assert sorted(s["stems"].values()) == ["a.jpg", "a.png"]
    assert sorted(p.name for p in (out / "json").iterdir()) == ["a.jpg.json", "a.png.json"]
    assert sorted(p.name for p in (out / "qupath").iterdir()) == ["a.jpg.geojson", "a.png.geojson"]
    # the same in a sub-folder, whose results sit in json/sub/ (stems hold the folder)
    write_image(images / "sub" / "b.png", trained["new"][3].image)
    batch.predict(trained["model"], [images], out, score=0.3, progress=False)
    Image.fromarray(trained["new"][3].image).save(images / "sub" / "b.jpg", quality=95)
    batch.predict(trained["model"], [images], out, score=0.3, progress=False)
    assert sorted(p.name for p in (out / "json" / "sub").iterdir()) == ["b.jpg.json", "b.png.json"]


def test_counts_are_not_cut_silently_by_the_detection_cap(trained, caplog):
    """The cap on boxes per image applies per forward pass: a field merged from k tiles holds up
    to k times as many (the thresholds' cap of 300 cut a 1600 px field's count to 300, and the
    classes below the 300th score to 0), and reaching it is said."""
    from smearlab.detection.models import load_model
    from smearlab.detection.predict import predict as predict_images
    from smearlab.detection.tune import Thresholds

    model = load_model(trained["model"], device="cpu")
    tiles = make_dataset(9, seed=11, width=192, height=192)
    field = np.concatenate([np.concatenate([tiles[3 * r + c].image for c in range(3)], 1) for r in range(3)], 0)
    th = Thresholds({c: 0.0 for c in model.detector_config.class_names}, max_dets=3)  # every box the model gives
    with caplog.at_level("WARNING", logger="smearlab.detection.predict"):
        whole = predict_images(model, [field], thresholds=th, progress=False)[0]
        tiled = predict_images(model, [field], thresholds=th, tile=192, tile_resize="tile", progress=False)[0]
    from smearlab.detection.predict import tile_windows
    k = len(tile_windows(576, 576, 192, 0.2))  # the tiles (overlapping) the field was predicted in
    assert len(whole["boxes"]) == 3 and 3 < len(tiled["boxes"]) <= 3 * k
    said = [r.getMessage() for r in caplog.records if "detection cap" in r.getMessage()]
    assert said and "1 of 1 image(s)" in said[0]


def test_cli_refusals(trained, tmp_path, capsys):
    assert main(["predict", str(trained["model"]), "--out", str(tmp_path / "o")]) == 2
    assert "give image files or folders" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "nomodel"), str(trained["images"]), "--out", str(tmp_path / "o")]) == 2
    assert "config.json" in capsys.readouterr().err
    assert main(["predict", str(trained["model"]), str(trained["images"]), "--scale", "big",
                 "--out", str(tmp_path / "o")]) == 2
    assert "--scale" in capsys.readouterr().err


def test_qupath_polygons_of_masks():
    rec = {"objects": [{"class": "nucleus", "score": 0.9, "bbox": [0, 0, 4, 4],
                        "polygons": [[[0, 0], [4, 0], [4, 4], [0, 4]]], "holes": [[[1, 1], [2, 1], [2, 2]]]}]}
    geo = batch.qupath_geojson(rec)
    rings = geo["features"][0]["geometry"]["coordinates"]
    assert len(rings) == 2 and all(r[0] == r[-1] for r in rings)
    coco, results = export.coco_from_records([{"image": "a.png", "width": 5, "height": 5, **rec,
                                              "objects": [{**rec["objects"][0], "area": 16}]}], ["nucleus"])
    from pycocotools import mask as mask_util
    seg = coco["annotations"][0]["segmentation"]  # an object with a hole: its exact mask as RLE
    outer = mask_util.decode(mask_util.frPyObjects([[0, 0, 4, 0, 4, 4, 0, 4]], 5, 5)[0]).astype(bool)
    hole = mask_util.decode(mask_util.frPyObjects([[1, 1, 2, 1, 2, 2]], 5, 5)[0]).astype(bool)
    assert isinstance(seg, dict) and (mask_util.decode(seg).astype(bool) == (outer & ~hole)).all()
    solid = export.coco_from_records([{"image": "a.png", "width": 5, "height": 5, "objects": [
        {**rec["objects"][0], "holes": [], "area": 16}]}], ["nucleus"])[0]
    assert solid["annotations"][0]["segmentation"] == [[0, 0, 4, 0, 4, 4, 0, 4]]  # without holes: polygons
    boxed = export.coco_from_records([{"image": "a.png", "width": 5, "height": 5, "objects": [
        {"class": "nucleus", "score": 0.9, "bbox": [0, 0, 4, 4], "area": 16}]}], ["nucleus"])[0]
    assert "segmentation" not in boxed["annotations"][0]  # a box only (an empty list failed pycocotools' segm)
    assert coco["annotations"][0]["bbox"] == [0, 0, 4, 4] and results[0]["score"] == 0.9
    assert np.array_equal(batch.counts_table([{"objects": rec["objects"]}], ["nucleus"]), [[1]])


def test_qupath_keeps_every_part_of_an_object_with_its_own_holes():
    """A two-part object kept only its first part, with the second part's hole attached to it."""
    square = [[0, 0], [8, 0], [8, 8], [0, 8]]
    far = [[20, 0], [30, 0], [30, 10], [20, 10]]
    hole = [[24, 4], [26, 4], [26, 6]]
    rec = {"objects": [{"class": "nucleus", "score": 0.9, "bbox": [0, 0, 30, 10], "polygons": [square, far],
                        "holes": [hole]}]}
    geometry = batch.qupath_geojson(rec)["features"][0]["geometry"]
    assert geometry["type"] == "MultiPolygon"
    first, second = geometry["coordinates"]
    assert first == [square + [square[0]]] and second == [far + [far[0]], hole + [hole[0]]]


def test_a_speck_inside_a_rings_hole_is_kept_in_the_exports():
    """A red cell's ring with a speck in its pale centre: the speck was traced as a second hole and
    lost in coco.json and in the QuPath file."""
    from pycocotools import mask as mask_util

    yy, xx = np.mgrid[0:40, 0:40]
    r = np.hypot(yy - 20, xx - 20)
    ring = ((r <= 12) & (r > 6)) | (r <= 2)
    pred = {"boxes": np.array([[8, 8, 33, 33]], np.float32), "scores": np.array([0.9], np.float32),
            "labels": np.array([0]), "masks": ring[None]}
    sample = type("S", (), {"hw": (40, 40), "image_id": "x", "path": None})()
    rec = export.image_record(sample, pred, ["rbc"], file_name="x.png")
    o = rec["objects"][0]
    assert len(o["polygons"]) == 2 and len(o["holes"]) == 1 and o["area"] == int(ring.sum())
    coco, _ = export.coco_from_records([rec], ["rbc"])
    back = mask_util.decode(coco["annotations"][0]["segmentation"]).astype(bool)
    np.testing.assert_array_equal(back, ring)
    geometry = batch.qupath_geojson(rec)["features"][0]["geometry"]
    assert geometry["type"] == "MultiPolygon" and [len(p) for p in geometry["coordinates"]] == [2, 1]


def test_read_results_after_a_failed_image_that_shared_a_stem(trained, tmp_path):
    import shutil

    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(trained["images"] / "smear_0.png", images / "a.png")
    (images / "a.jpg").write_bytes(b"not an image")  # fails, but made a.png's output stem "a.png"
    shutil.copy(trained["images"] / "smear_1.png", images / "c, d é.png")
    out = tmp_path / "out"
    s = batch.predict(trained["model"], [images], out, score=0.3, progress=False)
    assert s["failed"] == 1 and (out / "json" / "a.png.json").is_file()
    records, summary = batch.read_results(out)
    assert [r["image"] for r in records] == ["a.png", "c, d é.png"]


def test_dataset_classes_matched_by_name_and_unknown_ones_reported(trained, tmp_path):
    from smearlab.data import Sample, SmearDataset
    from smearlab.export import export_coco_gt

    new = trained["new"]
    # the dataset lists the classes in another order, in lower case, plus one the model lacks
    names = ["platelets", "wbc", "rbc", "ring"]
    remap = {k: names.index(c.lower()) for k, c in enumerate(new.class_names)}
    samples = [Sample(s.image_id, boxes=s.boxes, labels=[remap[int(v)] for v in s.labels], _image=s.image)
               for s in new]
    gt = export_coco_gt(SmearDataset(samples, names, "other lab"), tmp_path / "gt" / "truth.json")
    s = batch.predict(trained["model"], dataset=gt, out=tmp_path / "o", score=0.3, progress=False)
    for c in new.class_names:
        assert s["count_error"][c]["true"] == sum(int((sm.labels == new.class_names.index(c)).sum()) for sm in new)
    assert s["classes_not_scored"]["dataset classes the model does not know"] == ["ring"]


def test_scale_and_tile_refused_before_any_image(trained, tmp_path):
    with pytest.raises(ValueError, match="scale and tile"):
        batch.predict(trained["model"], [trained["images"]], tmp_path / "o", scale=0.5, tile=128, progress=False)
    assert not (tmp_path / "o").exists()
    for tile in (1, 31):  # a 1 px tile divided by zero after run.json was written
        with pytest.raises(ValueError, match="at least 32"):
            batch.predict(trained["model"], [trained["images"]], tmp_path / "o", tile=tile, progress=False)
    assert not (tmp_path / "o").exists()
    from smearlab.detection.predict import tile_windows
    with pytest.raises(ValueError, match="cannot overlap"):
        tile_windows(10, 10, 1, 0.2)
    assert tile_windows(10, 10, 1, 0.0)[:2] == [(0, 0, 1, 1), (1, 0, 2, 1)]


def test_a_run_stopped_before_its_first_image_does_not_hold_the_folder(trained, tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "run.json").write_text(json.dumps({"model_id": "another", "tile": 1}))
    s = batch.predict(trained["model"], [trained["images"]], tmp_path / "o", score=0.3, progress=False)
    assert s["failed"] == 0 and json.loads((tmp_path / "o" / "run.json").read_text())["tile"] == "auto"


def test_readme_command_with_relative_paths(trained, tmp_path, monkeypatch):
    import shutil

    shutil.copytree(trained["model"], tmp_path / "runs" / "cbc" / "final")
    shutil.copytree(trained["images"], tmp_path / "smears")
    monkeypatch.chdir(tmp_path)
    assert main(["predict", "runs/cbc/final", "smears/", "--out", "counts/", "--no-progress"]) == 0
    assert len(read_counts(tmp_path / "counts" / "counts.csv")) == 4
    assert (tmp_path / "counts" / "json" / "sub" / "smear_2.json").is_file()
    # the same command again resumes every image (relative paths in the run check and the digests)
    assert main(["predict", "runs/cbc/final", "smears/", "--out", "counts/", "--no-progress"]) == 0
    assert json.loads((tmp_path / "counts" / "summary.json").read_text())["resumed"] == 4
    # inside the image folder with the default --out (predictions/, below the input): twice, same 4 images
    monkeypatch.chdir(tmp_path / "smears")
    for _ in range(2):
        assert main(["predict", "../runs/cbc/final", ".", "--overlays", "--no-progress"]) == 0
        assert len(read_counts(tmp_path / "smears" / "predictions" / "counts.csv")) == 4


def test_large_fields_are_tiled_automatically_from_the_training_size(trained, tmp_path):
    from smearlab.detection.models import auto_tile, read_config
    cfg = read_config(trained["model"])
    assert list(cfg.train_image_size) == [192, 192]                # recorded by training
    assert auto_tile(cfg, (250, 250)) is None and auto_tile(cfg, (600, 300)) == 192
    # a field nine training images large: whole, the model shrinks its cells threefold
    tiles = make_dataset(9, seed=11, width=192, height=192)
    field = np.concatenate([np.concatenate([tiles[3 * r + c].image for c in range(3)], 1) for r in range(3)], 0)
    write_image(tmp_path / "field" / "big.png", field)
    auto = batch.predict(trained["model"], [tmp_path / "field"], tmp_path / "auto", score=0.3, progress=False)
    whole = batch.predict(trained["model"], [tmp_path / "field"], tmp_path / "whole", score=0.3, tile=None,
                          progress=False)
    for i, t in enumerate(tiles):
        write_image(tmp_path / "parts" / f"part_{i}.png", t.image)
    parts = batch.predict(trained["model"], [tmp_path / "parts"], tmp_path / "parts_out", score=0.3, progress=False)
    # tiled, the field is counted about as its nine parts are one by one; whole, far fewer cells are found
    n_auto, n_whole, n_parts = (sum(x["counts"].values()) for x in (auto, whole, parts))
    assert abs(n_auto - n_parts) < abs(n_whole - n_parts) and n_auto > 0.6 * n_parts
    assert json.loads((tmp_path / "auto" / "run.json").read_text())["tile"] == "auto"


@pytest.mark.parametrize("arch", ["resnet", "features"])
def test_cascade_adds_the_differential_count(trained, tmp_path, arch):
    from smearlab.classification.crops import crops_from_dataset
    from smearlab.classification.model import build_classifier
    from smearlab.classification.predict import save_cascade
    from smearlab.classification.train import fit_features, train_classifier
    from smearlab.data.synthetic import make_wbc_crops
    from smearlab.models import load_model
    crops = crops_from_dataset(make_wbc_crops(20, seed=0, size=48), 32)
    torch.manual_seed(0)
    if arch == "resnet":
        clf = build_classifier(crops.class_names, width=4, input_size=32)
        train_classifier(clf, crops, steps=5, batch_size=8, device="cpu")
    else:  # the measured-features classifier rides the same cascade folder
        clf = build_classifier(crops.class_names, arch="features")
        fit_features(clf, crops, folds=2)
    folder = save_cascade(tmp_path / "cascade", trained["model"], clf, wbc_class="WBC")
    assert type(load_model(folder, device="cpu")).__name__ == "Cascade"
    s = batch.predict(folder, [trained["images"]], tmp_path / "out", score=0.3, progress=False)
    types = crops.class_names
    assert set(s["differential"]) == set(types) and sum(s["differential"].values()) == s["counts"]["WBC"]
    assert s["differential_untyped"] == 0
    if s["counts"]["WBC"]:
        assert sum(s["differential_percent"].values()) == pytest.approx(100, abs=0.1)
    rows = read_counts(tmp_path / "out" / "counts.csv")
    for r in rows:
        n = sum(int(r[t]) for t in types)
        assert n == int(r["WBC"]) and r["untyped"] == "0"
        if n:
            assert sum(float(r[f"{t} %"]) for t in types) == pytest.approx(100, abs=0.1)
        else:  # no typed white cell: no differential, not 0 %
            assert all(r[f"{t} %"] == "" for t in types)
        rec = json.loads((tmp_path / "out" / "json" / (r["image"].rsplit(".", 1)[0] + ".json")).read_text())
        assert all(o["type"] in types and 0 <= o["type_score"] <= 1 for o in rec["objects"] if o["class"] == "WBC")
    with pytest.raises(ValueError, match="not a class of the detector"):
        save_cascade(tmp_path / "bad", trained["model"], clf, wbc_class="Neutrophil")
    save_cascade(folder, folder / "detector", clf, wbc_class="WBC")  # a new classifier for its own detector
    assert (folder / "detector" / "weights.pt").is_file() and type(load_model(folder, device="cpu")).__name__ == "Cascade"


def test_the_instance_segmenter_counts_objects_against_a_dataset(tmp_path, monkeypatch):
    from smearlab.export import export_coco_gt
    from smearlab.segmentation.instances import (InstanceTrainConfig, build_instance_unet, save_instance_unet,
                                                 train_instance_unet)
    ds = make_dataset(4, seed=3, width=96, height=96)
    torch.manual_seed(0)
    model = build_instance_unet(base=4, depth=2)
    train_instance_unet(model, ds, None, InstanceTrainConfig(crop=64, batch_size=4, steps=20, device="cpu"))
    folder = save_instance_unet(model, tmp_path / "seg")
    data = export_coco_gt(ds, tmp_path / "data" / "truth.json")
    s = batch.predict(folder, dataset=data, out=tmp_path / "out", progress=False)
    assert s["classes"] == ["object"] and s["predicted"] == 4 and s["score_thresholds"] == {"object": 0.0}
    assert set(s["count_error"]) == {"object"}                       # the dataset's classes counted as one
    assert s["count_error"]["object"]["true"] == sum(len(x.boxes) for x in ds)
    rec = json.loads(next((tmp_path / "out" / "json").glob("*.json")).read_text())
    assert all(o["class"] == "object" for o in rec["objects"])
    assert all(o["polygons"] for o in rec["objects"])                # outlines from the masks
    with pytest.raises(ValueError, match="scale"):
        batch.predict(folder, dataset=data, out=tmp_path / "o2", scale=0.5, progress=False)
    small = batch.predict(folder, dataset=data, out=tmp_path / "o3", tile=32, progress=False)
    assert small["predicted"] == 4 and small["failed"] == 0           # the default 48 px overlap refused 32 px tiles
    # --tile none: each image in one piece (it meant 256 px tiles): a 288 px field goes through whole
    field = np.concatenate([np.concatenate([ds[(r + c) % 4].image for c in range(3)], 1) for r in range(3)], 0)
    write_image(tmp_path / "big" / "field.png", field)
    tiles = []
    real = batch.predict_instances

    def spy(model, images, *, tile, overlap):
        tiles.append(tile)
        return real(model, images, tile=tile, overlap=overlap)
    monkeypatch.setattr(batch, "predict_instances", spy)
    whole = batch.predict(folder, [tmp_path / "big"], tmp_path / "o4", tile=None, progress=False)
    assert whole["predicted"] == 1 and json.loads((tmp_path / "o4" / "run.json").read_text())["tile"] is None
    assert tiles and min(tiles) >= 4 * 288  # one tile holds the field, even resized 4x to the model's object size
    batch.predict(folder, [tmp_path / "big"], tmp_path / "o5", progress=False)
    assert tiles[-1] == 256  # the default


def test_a_unet_of_class_maps_counts_its_foreground_objects(tmp_path):
    from smearlab.classification.model import build_classifier, save_classifier
    from smearlab.segmentation.train import train_unet
    from smearlab.segmentation.unet import UNet, save_unet
    ds = make_dataset(4, seed=5, width=96, height=96)
    torch.manual_seed(0)
    unet = UNet(3, len(ds.semantic_names), base=4, depth=2)
    train_unet(unet, ds, epochs=2, batch_size=4, size=96, device="cpu", progress=False)
    folder = save_unet(unet, tmp_path / "unet", class_names=ds.semantic_names)
    for i, s in enumerate(ds):
        write_image(tmp_path / "imgs" / f"im{i}.png", s.image)
    s = batch.predict(folder, [tmp_path / "imgs"], tmp_path / "out", progress=False)
    assert s["classes"] == ["object"] and s["predicted"] == 4 and s["failed"] == 0
    assert (tmp_path / "out" / "counts.csv").is_file()
    # a classifier folder alone is not something to count with
    save_classifier(build_classifier(["a", "b"], width=4), tmp_path / "clf")
    with pytest.raises(DataError, match="classifier model folder"):
        batch.predict(tmp_path / "clf", [tmp_path / "imgs"], tmp_path / "o2", progress=False)


def test_a_known_pixel_size_resizes_to_the_training_scale(trained, tmp_path):
    import shutil
    folder = tmp_path / "model"
    shutil.copytree(trained["model"], folder)
    with pytest.raises(DataError, match="pixel_size_um"):
        batch.predict(folder, [trained["images"]], tmp_path / "a", pixel_size=0.1, progress=False)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "pixel_size_um": 0.2}))
    s = batch.predict(folder, [trained["images"]], tmp_path / "b", pixel_size=0.1, score=0.3, progress=False)
    assert s["predicted"] == 4
    run = json.loads((tmp_path / "b" / "run.json").read_text())
    assert run["scale"] == pytest.approx(0.5) and run["tile"] is None    # pixels half as large: halved
    with pytest.raises(ValueError, match="not both"):
        batch.predict(folder, [trained["images"]], tmp_path / "c", pixel_size=0.1, scale=0.5, progress=False)
    assert main(["predict", str(folder), str(trained["images"]), "--out", str(tmp_path / "d"), "--pixel-size", "0.1",
                 "--score", "0.3", "--no-progress"]) == 0


def test_tta_is_recorded_and_must_match_the_tuned_thresholds(trained, tmp_path):
    import shutil

    from smearlab.detection.tune import Thresholds

    out = tmp_path / "out"
    s = batch.predict(trained["model"], [trained["images"]], out, score=0.3, tta=True, progress=False)
    assert s["predicted"] == 4 and s["failed"] == 0
    assert json.loads((out / "run.json").read_text())["tta"] is True
    with pytest.raises(DataError, match="tta"):  # the same folder without tta is another run
        batch.predict(trained["model"], [trained["images"]], out, score=0.3, progress=False)
    # thresholds tuned on plain predictions do not apply to fused ones, and the other way round
    folder = tmp_path / "model"
    shutil.copytree(trained["model"], folder)
    classes = json.loads((folder / "config.json").read_text())["class_names"]
    Thresholds({c: 0.4 for c in classes}, objective="f1").save(folder / "thresholds.json")
    with pytest.raises(DataError, match="thresholds.json.*without test-time augmentation"):
        batch.predict(folder, [trained["images"]], tmp_path / "o2", tta=True, progress=False)
    Thresholds({c: 0.2 for c in classes}, objective="f1", tta=True).save(folder / "thresholds.json")
    with pytest.raises(DataError, match="with test-time augmentation"):
        batch.predict(folder, [trained["images"]], tmp_path / "o3", progress=False)
    assert main(["predict", str(folder), str(trained["images"]), "--tta", "--out", str(tmp_path / "o4"),
                 "--no-progress"]) == 0
    assert json.loads((tmp_path / "o4" / "summary.json").read_text())["score_thresholds"] == {c: 0.2 for c in classes}


def test_each_image_records_the_zoom_it_was_predicted_at(trained, tmp_path):
    s = batch.predict(trained["model"], [trained["images"]], tmp_path / "auto", scale="auto", score=0.3,
                      progress=False)
    records, _ = batch.read_results(tmp_path / "auto")
    zooms = [r["zoom"] for r in records]
    assert len(zooms) == 4 and all(z > 0 for z in zooms)
    assert all(0.1 <= z <= 10 for z in zooms)
    rows = {r["image"]: r for r in read_counts(tmp_path / "auto" / "counts.csv")}
    assert all(float(rows[r["image"]]["zoom"]) == pytest.approx(r["zoom"], rel=1e-2) for r in records)
    assert s["zoom"]["min"] == min(zooms) and s["zoom"]["max"] == max(zooms)
    batch.predict(trained["model"], [trained["images"]], tmp_path / "half", scale=0.5, score=0.3, progress=False)
    assert [r["zoom"] for r in batch.read_results(tmp_path / "half")[0]] == [0.5] * 4  # a given factor as given
    s = batch.predict(trained["model"], [trained["images"]], tmp_path / "plain", score=0.3, progress=False)
    assert "zoom" not in s and "zoom" not in read_counts(tmp_path / "plain" / "counts.csv")[0]


def test_a_score_given_keeps_the_models_tuned_nms_and_cap(trained, tmp_path):
    """--score replaced the whole thresholds.json: the tuned NMS and cap fell back to the defaults
    (50 cells counted as 100)."""
    import shutil

    from smearlab.detection.tune import Thresholds
    model = tmp_path / "model"
    shutil.copytree(trained["model"], model)
    Thresholds({c: 0.05 for c in trained["new"].class_names}, nms_iou=0.05, max_dets=2, objective="f1").save(
        model / "thresholds.json")
    tuned = batch.predict(model, [trained["images"] / "smear_0.png"], tmp_path / "a", progress=False, tile=None)
    given = batch.predict(model, [trained["images"] / "smear_0.png"], tmp_path / "b", score=0.05, progress=False,
                          tile=None)
    assert sum(tuned["counts"].values()) == sum(given["counts"].values()) <= 2


def test_an_empty_predicted_mask_does_not_take_its_images_masks_from_coco_json(tmp_path):
    """An empty mask was written as a box-only annotation; read back, the image then had no masks
    at all (the COCO loader gives masks only when every annotation has one)."""
    from smearlab.data import Sample
    write_image(tmp_path / "a.png", np.zeros((20, 30, 3), np.uint8))
    m = np.zeros((3, 20, 30), bool)
    m[0, 2:6, 2:6] = True
    m[1, 10:15, 10:20] = True  # m[2] empty
    p = {"boxes": [[2, 2, 6, 6], [10, 10, 20, 15], [22, 3, 25, 6]], "scores": [0.9, 0.8, 0.7], "labels": [0, 0, 0],
         "masks": m}
    rec = export.image_record(Sample("a", tmp_path / "a.png"), p, ["RBC"], file_name="a.png")
    coco, results = export.coco_from_records([rec], ["RBC"])
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    back = coco_format.load(tmp_path / "coco.json")[0]
    assert back.has_masks and back.masks.sum((1, 2)).tolist() == [16, 50] and len(results) == 3


def test_a_differential_of_no_typed_white_cells_is_missing_not_zero():
    from smearlab.batch import _percent
    assert _percent(np.array([0, 0])) == [None, None] and _percent(np.array([1, 3])) == [25.0, 75.0]


def test_white_cells_left_untyped_are_counted_beside_the_differential(tmp_path):
    """A white cell the classifier could not see (a box too thin to crop) left the percentages'
    denominator with a word in the log only: the counts did not add up and nothing said why."""
    from smearlab.data import Sample
    from smearlab.export import image_record
    pred = {"boxes": np.array([[0, 0, 5, 5], [5, 5, 5.2, 9], [1, 1, 4, 4]], np.float32),
            "scores": np.array([0.9, 0.8, 0.7], np.float32), "labels": np.array([1, 1, 0])}
    rec = image_record(Sample("a", _image=np.zeros((10, 10, 3), np.uint8)), pred, ["RBC", "WBC"], file_name="a.png")
    rec["objects"][0]["type"] = "neutrophil"  # the second white cell left untyped
    summary = {}
    batch._write_summaries(tmp_path, ["a.png"], {"a.png": rec}, ["RBC", "WBC"], summary,
                           types=["neutrophil", "lymphocyte"], typed_class="WBC")
    row = read_counts(tmp_path / "counts.csv")[0]
    assert (row["WBC"], row["neutrophil"], row["untyped"], row["neutrophil %"]) == ("2", "1", "1", "100.0")
    assert summary["differential_untyped"] == 1 and summary["differential_percent"]["neutrophil"] == 100.0


def test_one_image_the_model_refuses_fails_alone_in_its_batch(trained, tmp_path):
    """--batch-size 2 with a field too large at the zoom asked: its batch-mate failed with it."""
    write_image(tmp_path / "in" / "a_small.png", trained["new"][0].image)
    write_image(tmp_path / "in" / "b_big.png", np.tile(trained["new"][1].image, (8, 8, 1)))  # 1536 px
    s = batch.predict(trained["model"], [tmp_path / "in"], tmp_path / "out", scale=3.0, batch_size=2, progress=False)
    assert (s["predicted"], s["failed"]) == (1, 1)
    assert [f["image"] for f in s["failures"]] == ["b_big.png"] and "4096" in s["failures"][0]["error"]
    assert (tmp_path / "out" / "json" / "a_small.json").is_file()


def test_the_cameras_bit_depth_is_part_of_the_run(trained, tmp_path, monkeypatch):
    """16-bit fields are scaled by the bits the user gives (each read at that scale), and a re-run
    at another scale is another run."""
    from smearlab.data import imageio

    scene = trained["new"][0].image[..., 0].astype(np.uint16) * 4  # 8-bit grey on a 10-bit range
    write_image(tmp_path / "in" / "g16.png", scene)
    seen = []
    real = imageio.read_image
    monkeypatch.setattr(batch, "read_image", lambda p, **kw: seen.append(kw.get("bits")) or real(p, **kw))
    s = batch.predict(trained["model"], [tmp_path / "in"], tmp_path / "out", score=0.3, progress=False,
                      sensor_bits=12)
    assert s["predicted"] == 1 and seen == [12]
    assert json.loads((tmp_path / "out" / "run.json").read_text())["sensor_bits"] == 12
    with pytest.raises(DataError, match="sensor_bits 12 -> None"):
        batch.predict(trained["model"], [tmp_path / "in"], tmp_path / "out", score=0.3, progress=False)
    with pytest.raises(ValueError, match="sensor_bits"):
        batch.predict(trained["model"], [tmp_path / "in"], tmp_path / "x", sensor_bits=0, progress=False)


def test_a_model_trained_on_wide_images_reads_new_ones_as_it_read_them(trained, tmp_path, monkeypatch):
    """Trained on 12-bit data read with sensor_bits=12, a model's new images were read with their
    range guessed per image unless --sensor-bits was given again: a dim frame reached it brighter
    than its training images."""
    import dataclasses

    from smearlab.data import imageio
    from smearlab.detection.models import load_model, save_model
    ds = make_dataset(2, seed=0, width=96, height=96)
    ds = SmearDataset([dataclasses.replace(s, sensor_bits=12) for s in ds.samples], ds.class_names, "wide")
    cfg = DetectorConfig(arch="fasterrcnn_tiny", class_names=ds.class_names, min_size=96, max_size=96)
    model = build_detector(cfg)
    train_detector(model, ds, None, TrainConfig(epochs=1, batch_size=2, device="cpu"), progress=False)
    assert model.detector_config.sensor_bits == 12
    m = load_model(trained["model"], device="cpu")
    m.detector_config.sensor_bits = 12
    folder = save_model(m, m.detector_config, tmp_path / "wide")
    write_image(tmp_path / "in" / "g16.png", trained["new"][0].image[..., 0].astype(np.uint16) * 4)
    seen = []
    real = imageio.read_image
    monkeypatch.setattr(batch, "read_image", lambda p, **kw: seen.append(kw.get("bits")) or real(p, **kw))
    batch.predict(folder, [tmp_path / "in"], tmp_path / "out", score=0.3, progress=False)
    assert seen == [12] and json.loads((tmp_path / "out" / "run.json").read_text())["sensor_bits"] == 12
    seen.clear()
    batch.predict(folder, [tmp_path / "in"], tmp_path / "out2", score=0.3, progress=False, sensor_bits=16)
    assert seen == [16]  # --sensor-bits overrides it


def test_a_run_of_images_in_sub_folders_only_is_checked_and_a_failed_image_loses_its_old_results(trained, tmp_path):
    """The resume check looked for results at the top of json/ only: with every image in a
    sub-folder it found none, and another score's results were resumed and counted; an image that
    became unreadable kept its old JSON, GeoJSON and overlay beside the current results."""
    import shutil
    images = tmp_path / "images"
    shutil.copytree(trained["images"] / "sub", images / "a")
    out = tmp_path / "out"
    batch.predict(trained["model"], [images], out, score=0.3, overlays=True, progress=False)
    with pytest.raises(DataError, match="another run.*score"):
        batch.predict(trained["model"], [images], out, score=0.9, progress=False)
    (images / "a" / "smear_2.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    s = batch.predict(trained["model"], [images], out, score=0.3, overlays=True, progress=False)
    assert s["failed"] == 1 and s["resumed"] == 1
    left = {p.relative_to(out).as_posix() for p in out.rglob("*smear_2*")}
    assert left == set(), left


def test_an_interrupt_between_an_image_s_files_leaves_no_result_of_its_earlier_pixels(trained, tmp_path, monkeypatch):
    import shutil
    images = tmp_path / "images"
    shutil.copytree(trained["images"] / "sub", images)
    out = tmp_path / "out"
    batch.predict(trained["model"], [images], out, score=0.3, overlays=True, progress=False)
    old_geo = (out / "qupath" / "smear_2.geojson").read_text()
    shutil.copy(trained["images"] / "smear_0.png", images / "smear_2.png")  # other pixels under the same name

    def interrupted(rec):
        raise KeyboardInterrupt
    monkeypatch.setattr(batch, "qupath_geojson", interrupted)
    with pytest.raises(KeyboardInterrupt):
        batch.predict(trained["model"], [images], out, score=0.3, overlays=True, progress=False)
    assert not (out / "qupath" / "smear_2.geojson").exists() and not (out / "overlays" / "smear_2.png").exists()
    monkeypatch.undo()
    batch.predict(trained["model"], [images], out, score=0.3, overlays=True, progress=False)
    geo = (out / "qupath" / "smear_2.geojson").read_text()
    assert geo != old_geo and (out / "overlays" / "smear_2.png").is_file()


@pytest.mark.parametrize("kind", ["instances", "class maps"])
def test_a_unet_trained_on_wide_images_reads_new_ones_as_it_read_them(tmp_path, monkeypatch, kind):
    """Detectors record the sensor bits their training images were read with; U-Nets did not, and
    12-bit fluorescence frames given to one later were read with their range guessed per image."""
    import dataclasses

    from smearlab.data import imageio
    from smearlab.segmentation.instances import (InstanceTrainConfig, build_instance_unet, load_instance_unet,
                                                 save_instance_unet, train_instance_unet)
    from smearlab.segmentation.train import train_unet
    from smearlab.segmentation.unet import UNet, load_unet, save_unet
    ds = make_dataset(2, seed=3, width=64, height=64)
    wide = SmearDataset([dataclasses.replace(s, sensor_bits=12) for s in ds.samples], ds.class_names, "wide",
                        semantic_names=ds.semantic_names)
    torch.manual_seed(0)
    if kind == "instances":
        model = build_instance_unet(base=4, depth=2)
        train_instance_unet(model, wide, None, InstanceTrainConfig(crop=32, batch_size=2, steps=2, device="cpu"))
        folder, load = save_instance_unet(model, tmp_path / "seg"), load_instance_unet
    else:
        model = UNet(3, len(ds.semantic_names), base=4, depth=2)
        train_unet(model, wide, epochs=1, batch_size=2, size=64, device="cpu", progress=False)
        folder, load = save_unet(model, tmp_path / "seg", class_names=ds.semantic_names), load_unet
    assert model.sensor_bits == 12 and json.loads((folder / "config.json").read_text())["sensor_bits"] == 12
    assert load(folder, device="cpu").sensor_bits == 12
    write_image(tmp_path / "in" / "g16.png", ds[0].image[..., 0].astype(np.uint16) * 4)
    seen = []
    real = imageio.read_image
    monkeypatch.setattr(batch, "read_image", lambda p, **kw: seen.append(kw.get("bits")) or real(p, **kw))
    batch.predict(folder, [tmp_path / "in"], tmp_path / "out", progress=False)
    assert seen == [12] and json.loads((tmp_path / "out" / "run.json").read_text())["sensor_bits"] == 12
    seen.clear()
    batch.predict(folder, [tmp_path / "in"], tmp_path / "out2", progress=False, sensor_bits=16)
    assert seen == [16]  # --sensor-bits overrides it
    # images of mixed or unknown bits record none
    assert SmearDataset(list(wide.samples[:1]) + list(ds.samples[1:]), ds.class_names).sensor_bits is None
