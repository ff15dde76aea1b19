"""Loader defects found in review: one image loaded twice or split in two, records lost without a
count, names that depend on the machine or the working folder."""
from __future__ import annotations

import json
import unicodedata

import numpy as np
import pytest
from helpers import write_dicom
from PIL import Image

from smearlab.data import DataError
from smearlab.data.formats import bbbc041, dicom, dsb2018, imagefolder, iml, qupath, voc, yolo, zheng
from smearlab.data.imageio import write_image


# -- Zheng ------------------------------------------------------------------------------------------
def _zheng(root, images=("001.bmp",)):
    (root / "Dataset 1").mkdir(parents=True)
    m = np.zeros((20, 30), np.uint8)
    m[2:18, 3:25] = 128
    Image.fromarray(m).save(root / "Dataset 1" / "001.png")
    for name in images:
        Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(root / "Dataset 1" / name)
    (root / "Class Labels of Dataset 1.csv").write_text("image ID,class label\n1,2\n")
    return root


def test_zheng_second_image_file_of_one_number_is_a_counted_skip(tmp_path):
    """001.jpg (a converted copy) beside 001.bmp loaded twice under the one id d1_001."""
    ds = zheng.load(_zheng(tmp_path, ("001.bmp", "001.jpg")), datasets=(1,))
    assert [(s.image_id, s.path.name) for s in ds] == [("d1_001", "001.bmp")]
    (sk,) = ds.skipped
    assert sk.path.endswith("001.jpg") and "001.bmp" in sk.reason and "001.jpg" in sk.reason
    with pytest.raises(DataError, match="001.bmp and 001.jpg"):
        zheng.load(tmp_path, datasets=(1,), strict=True)


def test_zheng_datasets_once_each_a_single_int_and_no_other_number(tmp_path):
    _zheng(tmp_path)
    assert [s.image_id for s in zheng.load(tmp_path, datasets=(1, 1))] == ["d1_001"]  # was loaded twice
    assert [s.image_id for s in zheng.load(tmp_path, datasets=1)] == ["d1_001"]  # was a bare TypeError
    for bad in (3, (1, 3), 0, "1", True, 1.5):
        with pytest.raises(DataError, match="datasets must be 1, 2"):
            zheng.load(tmp_path, datasets=bad)


# -- DICOM ------------------------------------------------------------------------------------------
def test_dicom_one_stem_two_extensions_get_two_ids(tmp_path):
    pytest.importorskip("pydicom")
    write_dicom(tmp_path / "x.dcm", np.zeros((4, 5), np.uint16), bits_stored=12)
    write_dicom(tmp_path / "x.dicom", np.ones((4, 5), np.uint16), bits_stored=12)
    write_dicom(tmp_path / "y.dcm", np.ones((4, 5), np.uint16), bits_stored=12)
    assert [s.image_id for s in dicom.load(tmp_path)] == ["x.dcm", "x.dicom", "y"]  # was x, x, y


def test_dicom_multiframe_is_noted_and_a_file_without_pixels_is_skipped(tmp_path):
    pytest.importorskip("pydicom")
    frames = np.stack([np.full((4, 5), v, np.uint16) for v in (1, 2, 3)])
    write_dicom(tmp_path / "frames.dcm", frames, bits_stored=12)
    write_dicom(tmp_path / "nopix.dcm", np.zeros((4, 5), np.uint16), bits_stored=12, pixel_data=False)
    ds = dicom.load(tmp_path)
    assert [s.image_id for s in ds] == ["frames"]  # nopix loaded, to fail at its first read
    (fx,) = ds.fixed
    assert fx.path.endswith("frames.dcm") and "3 frames, the first read" in fx.reason
    (sk,) = ds.skipped
    assert sk.path.endswith("nopix.dcm") and "pixel data" in sk.reason
    with pytest.raises(DataError, match="pixel data"):
        dicom.load(tmp_path, strict=True)


# -- QuPath -----------------------------------------------------------------------------------------
def _feature(x0, y0, x1, y1, cls="RBC", **props):
    ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {"classification": {"name": cls}, **props}}


def _geojson(path, features):
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))


def test_qupath_two_files_for_one_image_keep_the_first(tmp_path):
    """a.geojson and a.png.geojson both matched a.png: two samples of one image, objects split."""
    write_image(tmp_path / "a.png", np.zeros((40, 60, 3), np.uint8))
    _geojson(tmp_path / "a.geojson", [_feature(2, 2, 6, 6), _feature(10, 10, 20, 20)])
    _geojson(tmp_path / "a.png.geojson", [_feature(30, 5, 40, 15, "WBC")])
    ds = qupath.load(tmp_path)
    assert [(s.image_id, len(s)) for s in ds] == [("a", 2)]
    assert ds.class_names == ["RBC"]
    (sk,) = ds.skipped
    assert sk.path.endswith("a.png.geojson") and "a.geojson" in sk.reason and "a.png.geojson" in sk.reason


def test_qupath_root_tile_and_tma_core_objects_are_not_cells(tmp_path):
    write_image(tmp_path / "a.png", np.zeros((40, 60, 3), np.uint8))
    whole = dict(x0=0, y0=0, x1=60, y1=40, cls="Region")
    feats = [_feature(2, 2, 6, 6, objectType="annotation"), _feature(8, 8, 12, 12, objectType="detection"),
             _feature(14, 14, 18, 18, objectType="cell"),
             _feature(**whole, objectType="root"), _feature(**whole, objectType="tile"),
             _feature(**whole, objectType="tmaCore"), _feature(**whole, object_type="tma_core"),  # QuPath 0.3
             {**_feature(**whole), "id": "PathRootObject"},  # QuPath 0.2
             {"type": "Feature", "geometry": None, "properties": {"objectType": "root"}}]  # as QuPath writes it
    _geojson(tmp_path / "a.geojson", feats)
    ds = qupath.load(tmp_path)
    assert ds.class_names == ["RBC"] and len(ds[0]) == 3  # 'Region' was a class with a whole-image box
    assert [sk.record for sk in ds.skipped] == [f"feature {k}" for k in range(3, 9)]
    assert all(sk.reason.startswith("not a cell") for sk in ds.skipped)


# -- class folders ----------------------------------------------------------------------------------
def test_imagefolder_orders_classes_and_files_by_nfc_names(tmp_path):
    """A share that hands back NFD names sorted 'érythroblast' before 'monocyte', and named the
    class in NFD: another class order, and another class name, than the same data elsewhere."""
    nfd = unicodedata.normalize("NFD", "érythroblast")
    for c in ("monocyte", "eosinophil", nfd):
        write_image(tmp_path / c / "b.png", np.zeros((4, 4, 3), np.uint8))
    write_image(tmp_path / "monocyte" / unicodedata.normalize("NFD", "é.png"), np.zeros((4, 4, 3), np.uint8))
    write_image(tmp_path / "monocyte" / "f.png", np.zeros((4, 4, 3), np.uint8))
    ds = imagefolder.load(tmp_path)
    assert ds.class_names == ["eosinophil", "monocyte", "érythroblast"]  # NFC
    assert [s.image_id for s in ds] == ["eosinophil/b.png", "monocyte/b.png", "monocyte/f.png", "monocyte/é.png",
                                        "érythroblast/b.png"]
    write_image(tmp_path / "érythroblast" / "c.png", np.zeros((4, 4, 3), np.uint8))  # NFC twin of the NFD folder
    with pytest.raises(DataError, match="Unicode"):
        imagefolder.load(tmp_path)


# -- dataset names ----------------------------------------------------------------------------------
def test_a_dataset_loaded_from_dot_is_named_after_the_folder(tmp_path, monkeypatch):
    pytest.importorskip("pydicom")
    folders = {k: tmp_path / k for k in ("zheng_wbc", "crops", "dsb", "scans", "qp")}
    _zheng(folders["zheng_wbc"])
    write_image(folders["crops"] / "rbc" / "a.png", np.zeros((4, 4, 3), np.uint8))
    write_image(folders["dsb"] / "s1" / "images" / "s1.png", np.zeros((8, 8, 3), np.uint8))
    folders["scans"].mkdir()
    write_dicom(folders["scans"] / "x.dcm", np.zeros((4, 5), np.uint16), bits_stored=12)
    write_image(folders["qp"] / "a.png", np.zeros((40, 60, 3), np.uint8))
    _geojson(folders["qp"] / "a.geojson", [_feature(2, 2, 6, 6)])
    for key, load in (("zheng_wbc", lambda: zheng.load(".", datasets=(1,))), ("crops", lambda: imagefolder.load(".")),
                      ("dsb", lambda: dsb2018.load(".")), ("scans", lambda: dicom.load(".")),
                      ("qp", lambda: qupath.load("."))):
        monkeypatch.chdir(folders[key])
        ds = load()
        assert ds.name == key and len(ds) == 1  # the name was ''
    for key, load in (("v", voc.load), ("y", yolo.load)):  # the box formats alike
        write_image(tmp_path / key / "images" / "a.png", np.zeros((8, 8, 3), np.uint8))
        (tmp_path / key / "labels").mkdir()
        (tmp_path / key / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
        (tmp_path / key / "classes.txt").write_text("RBC\n")
        monkeypatch.chdir(tmp_path / key)
        if key == "v":
            voc.save(yolo.load("."), tmp_path / "v2")
            monkeypatch.chdir(tmp_path / "v2")
            key = "v2"
        assert load(".").name == key
    monkeypatch.chdir(folders["dsb"] / "s1")  # one image folder, its name its image's
    assert [(ds.name, len(ds)) for ds in (dsb2018.load("."), dsb2018.load("images/.."))] == [("s1", 1)] * 2


# -- one image in two list entries ------------------------------------------------------------------
def test_iml_duplicate_entry_says_what_it_dropped_and_adds_no_class(tmp_path):
    write_image(tmp_path / "IML_Malaria" / "a.jpg", np.zeros((40, 60, 3), np.uint8))
    ob = lambda x, y, t="red blood cell": {"type": t, "bbox": {"x": str(x), "y": str(y), "w": "10", "h": "5"}}  # noqa: E731
    (tmp_path / "annotations.json").write_text(json.dumps([
        {"image_name": "a.jpg", "objects": [ob(1, 2)]},
        {"image_name": "a.jpg", "objects": [ob(30, 20), ob(40, 2, "ring")]}]))
    ds = iml.load(tmp_path / "annotations.json")
    assert ds.class_names == ["red blood cell"]  # 'ring' was a class with 0 objects
    assert [s.boxes.tolist() for s in ds] == [[[1, 2, 11, 7]]]
    (sk,) = ds.skipped
    assert sk.record == "entry 1" and "first one kept" in sk.reason and "2 objects dropped" in sk.reason


def test_bbbc041_duplicate_entry_says_what_it_dropped_and_adds_no_class(tmp_path):
    write_image(tmp_path / "images" / "a.png", np.zeros((40, 60, 3), np.uint8))
    ob = lambda r, c, cat: {"bounding_box": {"minimum": {"r": r, "c": c}, "maximum": {"r": r + 5, "c": c + 5}},  # noqa: E731
                            "category": cat}
    entry = lambda objects: {"image": {"pathname": "/images/a.png", "shape": {"r": 40, "c": 60}},  # noqa: E731
                             "objects": objects}
    (tmp_path / "t.json").write_text(json.dumps([entry([ob(1, 1, "ring")]),
                                                 entry([ob(10, 10, "ring"), ob(20, 20, "gametocyte"),
                                                        ob(30, 30, "trophozoite")])]))
    ds = bbbc041.load(tmp_path / "t.json")
    assert ds.class_names == ["ring"] and len(ds) == 1 and len(ds[0]) == 1
    (sk,) = ds.skipped
    assert sk.record == "entry 1" and "3 objects dropped" in sk.reason


def test_zheng_palette_mask_is_read_by_the_grey_levels_it_shows(tmp_path):
    """An indexed mask whose index 0 is white (an editor's re-save) held 0/1/2 and was taken as
    class ids: nucleus and background swapped, the cell's box the whole image."""
    root = tmp_path / "zp"
    (root / "Dataset 1").mkdir(parents=True)
    m = np.zeros((20, 30), np.uint8)
    m[2:18, 3:25] = 128
    m[6:12, 8:16] = 255
    write_image(root / "Dataset 1" / "001.bmp", np.zeros((20, 30, 3), np.uint8))
    q = Image.fromarray(m).convert("RGB").quantize(3)
    assert q.getpalette()[:3] == [255, 255, 255]  # index 0 white
    q.save(root / "Dataset 1" / "001.png")
    (root / "Class Labels of Dataset 1.csv").write_text("image ID,class label\n1,2\n")
    (s,) = zheng.load(root, datasets=(1,))
    assert [int((s.semantic == k).sum()) for k in range(3)] == [248, 304, 48]
    assert s.boxes.tolist() == [[3, 2, 25, 18]]
    Image.fromarray(np.stack([m, m // 2, m], -1)).quantize(3).save(root / "Dataset 1" / "001.png")  # not grey
    with pytest.raises(DataError, match="not grey"):
        zheng.read_semantic(root / "Dataset 1" / "001.png")
