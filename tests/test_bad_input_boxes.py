"""Broken inputs for the box formats: every problem is a counted skip or a DataError naming the file."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

from smearlab.data import DataError
from smearlab.data.formats import bbbc041, iml, voc, yolo
from smearlab.data.imageio import write_image

BOMB = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol">
""" + "".join(f'<!ENTITY lol{i} "{("&lol%s;" % (i - 1 if i > 1 else "")) * 10}">\n' for i in range(1, 10)) + \
    """]>
<annotation><filename>&lol9;</filename></annotation>
"""


def _image(path, h=40, w=60):
    write_image(path, np.full((h, w, 3), 128, np.uint8))
    return path


# -- VOC ------------------------------------------------------------------------------------------
def _obj(name="RBC", box=(5, 5, 20, 20), difficult=0):
    coords = "".join(f"<{k}>{v}</{k}>" for k, v in zip(("xmin", "ymin", "xmax", "ymax"), box or ()))
    bnd = f"<bndbox>{coords}</bndbox>" if box is not None else ""
    return f"<object><name>{name}</name><difficult>{difficult}</difficult>{bnd}</object>"


def _voc(root, stem, objects=(), image=True, text=None, h=40, w=60):
    """Write Annotations/<stem>.xml (``text`` verbatim, else built) and Images/<stem>.jpg."""
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    (root / "Images").mkdir(exist_ok=True)
    if text is None:
        text = (f"<annotation><filename>{stem}.jpg</filename><size><width>{w}</width>"
                f"<height>{h}</height><depth>3</depth></size>{''.join(objects)}</annotation>")
    (root / "Annotations" / f"{stem}.xml").write_text(text)
    if image:
        _image(root / "Images" / f"{stem}.jpg", h, w)
    return root / "Annotations" / f"{stem}.xml"


def test_voc_object_problems_are_counted(tmp_path):
    xml = _voc(tmp_path, "a", [
        _obj(),                              # object 0: fine
        _obj(box=None),                      # 1: no bndbox
        _obj(box=(30, 5, 10, 20)),           # 2: x1 < x0
        _obj(box=(500, 500, 600, 600)),      # 3: far outside
        _obj(box=(50, 30, 63, 43), difficult=1),  # 4: 3 px past the edge: clipped
        _obj(name="Alien"),                  # 5: unknown class
        _obj(box=("1", "2", "x", "")),       # 6: non-numeric
    ])
    ds = voc.load(tmp_path, class_names=["RBC"])
    reasons = {s.record: s.reason for s in ds.skipped}
    assert set(reasons) == {"object 1", "object 2", "object 3", "object 5", "object 6"}
    assert "bndbox" in reasons["object 1"] and "degenerate" in reasons["object 2"]
    assert "outside" in reasons["object 3"] and "unknown class" in reasons["object 5"]
    assert "non-numeric" in reasons["object 6"]
    assert all(s.path == str(xml) for s in ds.skipped)
    assert [f.record for f in ds.fixed] == ["object 4"]
    np.testing.assert_array_equal(ds[0].boxes, [[4, 4, 20, 20], [49, 29, 60, 40]])  # VOC: 1-based xmin, ymin
    np.testing.assert_array_equal(ds[0].meta["difficult"], [False, True])


def test_voc_strict_raises_on_first_problem(tmp_path):
    _voc(tmp_path, "a", [_obj(), _obj(box=(30, 5, 10, 20))])
    with pytest.raises(DataError, match=r"a\.xml \[object 1\]: degenerate"):
        voc.load(tmp_path, strict=True)


def test_voc_file_problems_are_counted(tmp_path):
    _voc(tmp_path, "good", [_obj()])
    _voc(tmp_path, "noimage", [_obj()], image=False)
    _voc(tmp_path, "empty", text="")
    _voc(tmp_path, "broken", text="<annotation><object><name>RBC</name>")
    _voc(tmp_path, "notvoc", text="<html/>")
    ds = voc.load(tmp_path)
    assert [s.image_id for s in ds] == ["good"]
    reasons = {s.path.rsplit("/", 1)[-1]: s.reason for s in ds.skipped}
    assert reasons["noimage.xml"].startswith("image file not found")
    assert reasons["empty.xml"] == "empty annotation file"
    assert reasons["broken.xml"].startswith("malformed XML")
    assert "not a VOC annotation" in reasons["notvoc.xml"]
    assert len(voc.load(tmp_path, check_images=False)) == 2  # the image-less annotation is kept
    with pytest.raises(DataError, match="broken.xml"):
        voc.load(tmp_path, strict=True)


def test_voc_image_found_by_stem_with_upper_case_extension(tmp_path):
    xml = _voc(tmp_path, "a", [_obj()], image=False)
    (tmp_path / "Images").rename(tmp_path / "JPEGImages")
    _image(tmp_path / "JPEGImages" / "a.JPG")
    ds = voc.load(tmp_path)
    assert ds[0].path.name == "a.JPG"
    assert voc.load(xml)[0].path.name == "a.JPG"  # single file: images in ../JPEGImages


def test_voc_billion_laughs_is_refused_not_expanded(tmp_path):
    _voc(tmp_path, "bomb", text=BOMB)
    t = time.perf_counter()
    ds = voc.load(tmp_path)
    assert time.perf_counter() - t < 1
    assert len(ds) == 0 and "bomb.xml" in ds.skipped[0].path
    assert "entit" in ds.skipped[0].reason.lower() and "forbidden" in ds.skipped[0].reason.lower()
    with pytest.raises(DataError, match="bomb.xml.*forbidden"):
        voc.load(tmp_path / "Annotations" / "bomb.xml", strict=True)


def test_voc_corrupt_image_fails_lazily_naming_the_file(tmp_path):
    _voc(tmp_path, "a", [_obj()], image=False)
    data = _image(tmp_path / "a.jpg").read_bytes()
    (tmp_path / "Images" / "a.jpg").write_bytes(data[: len(data) - 40])  # header intact, pixels cut
    ds = voc.load(tmp_path)  # lazy: loading reads the header (size, orientation), not the pixels
    assert len(ds) == 1
    with pytest.raises(DataError, match=r"Images/a\.jpg.*(corrupt|truncated|readable)"):
        ds[0].image


def test_voc_image_with_a_broken_header_is_a_counted_skip(tmp_path):
    _voc(tmp_path, "a", [_obj()], image=False)
    data = _image(tmp_path / "a.jpg").read_bytes()
    (tmp_path / "Images" / "a.jpg").write_bytes(data[: len(data) // 3])
    ds = voc.load(tmp_path)
    assert len(ds) == 0 and "Images/a.jpg" in ds.skipped[0].path
    assert "readable" in ds.skipped[0].reason


def test_voc_layout_errors(tmp_path):
    with pytest.raises(DataError, match="no Annotations"):
        voc.load(tmp_path)
    _voc(tmp_path, "a", [_obj()], image=False)
    (tmp_path / "Images").rmdir()
    with pytest.raises(DataError, match="no Images/ or JPEGImages/"):
        voc.load(tmp_path)
    assert voc.load(tmp_path, check_images=False)[0].path == tmp_path / "Images" / "a.jpg"


# -- BBBC041 --------------------------------------------------------------------------------------
def _bb_obj(c0, r0, c1, r1, category="red blood cell"):
    return {"bounding_box": {"minimum": {"r": r0, "c": c0}, "maximum": {"r": r1, "c": c1}},
            "category": category}


def _bb_entry(pathname, objects, r=40, c=60):
    return {"image": {"pathname": pathname, "shape": {"r": r, "c": c, "channels": 3}, "checksum": "x"},
            "objects": objects}


def _write_json(path, data):
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


@pytest.mark.parametrize("text, problem", [
    ("", "empty annotation file"),
    ("   \n", "empty annotation file"),
    ('[{"image": ', "malformed JSON"),
    ('{"images": []}', "expected a JSON list"),
])
@pytest.mark.parametrize("loader", [bbbc041, iml])
def test_json_whole_file_problems_raise(tmp_path, loader, text, problem):
    path = _write_json(tmp_path / "train.json", text)
    with pytest.raises(DataError, match=problem) as err:
        loader.load(path)
    assert err.value.path == str(path)


def test_bbbc041_records(tmp_path):
    _image(tmp_path / "images" / "a.png")
    path = _write_json(tmp_path / "train.json", [
        _bb_entry("/images/a.png", [
            _bb_obj(5, 5, 20, 20),             # fine
            _bb_obj(30, 5, 10, 20),            # x1 < x0
            _bb_obj(500, 500, 600, 600),       # far outside the 60x40 shape
            _bb_obj(50, 30, 62, 42, "ring"),   # 2 px past the edge: clipped
            _bb_obj(5, 5, 20, 20, "alien"),    # unknown class
            {"bounding_box": {"minimum": {"r": "a"}}, "category": "ring"},  # bad corners
            {"bounding_box": {}},               # no category
        ]),
        _bb_entry("/images/missing.png", []),
        _bb_entry("../../etc/passwd", []),
        _bb_entry("/../outside.png", []),
        {"no image": 1},
        "not even a dict",
    ])
    ds = bbbc041.load(path, class_names=["red blood cell", "ring"])
    assert len(ds) == 1 and ds[0].size == (40, 60)
    np.testing.assert_array_equal(ds[0].boxes, [[5, 5, 20, 20], [50, 30, 60, 40]])
    reasons = {s.record: s.reason for s in ds.skipped}
    assert all(s.path == str(path) for s in ds.skipped)
    assert "degenerate" in reasons["entry 0 object 1"] and "outside" in reasons["entry 0 object 2"]
    assert "unknown class" in reasons["entry 0 object 4"]
    assert "non-numeric" in reasons["entry 0 object 5"] and "category" in reasons["entry 0 object 6"]
    assert reasons["entry 1"].startswith("image file not found")
    assert "escapes" in reasons["entry 2"] and "escapes" in reasons["entry 3"]
    assert "pathname" in reasons["entry 4"] and "pathname" in reasons["entry 5"]
    assert [f.record for f in ds.fixed] == ["entry 0 object 3"]
    with pytest.raises(DataError, match=r"train\.json \[entry 0 object 5\]: missing or non-numeric"):
        bbbc041.load(path, strict=True)


def test_bbbc041_symlink_out_of_the_root_is_refused(tmp_path):
    outside = _image(tmp_path / "secret.png")
    (tmp_path / "data" / "images").mkdir(parents=True)
    (tmp_path / "data" / "images" / "link.png").symlink_to(outside)
    path = _write_json(tmp_path / "data" / "train.json", [_bb_entry("/images/link.png", [])])
    ds = bbbc041.load(path, check_images=False)
    assert len(ds) == 0 and "escapes" in ds.skipped[0].reason
    with pytest.raises(DataError, match=r"train\.json \[entry 0\]: image path escapes"):
        bbbc041.load(path, strict=True)


# -- IML-Malaria ----------------------------------------------------------------------------------
def _iml_obj(x, y, w, h, kind="red blood cell"):
    return {"type": kind, "bbox": {"x": str(x), "y": str(y), "w": str(w), "h": str(h)}}


def test_iml_records(tmp_path):
    folder = tmp_path / "IML_Malaria"
    _image(folder / "a.JPG")
    (folder / "corrupt.JPG").write_bytes(b"\xff\xd8 not really a jpeg")
    path = _write_json(tmp_path / "annotations.json", [
        {"image_name": "a.JPG", "objects": [
            _iml_obj(5, 5, 15, 15),        # fine
            _iml_obj(50, 30, 14, 14),      # 4 px past the edge: clipped
            _iml_obj(5, 5, -3, 10),        # negative width: x1 < x0
            _iml_obj(5, 5, "ten", 10),     # non-numeric string
            _iml_obj(300, 300, 10, 10),    # far outside
            _iml_obj(5, 5, 15, 15, "alien"),
        ]},
        {"image_name": "missing.JPG", "objects": []},
        {"image_name": "corrupt.JPG", "objects": []},
        {"image_name": "../../etc/passwd", "objects": []},
        {"objects": []},
    ])
    ds = iml.load(path, class_names=["red blood cell"])
    assert len(ds) == 1 and ds[0].size == (40, 60)
    np.testing.assert_array_equal(ds[0].boxes, [[5, 5, 20, 20], [50, 30, 60, 40]])
    reasons = {s.record: s.reason for s in ds.skipped}
    assert "degenerate" in reasons["entry 0 object 2"]
    assert "non-numeric" in reasons["entry 0 object 3"] and "'ten'" in reasons["entry 0 object 3"]
    assert "outside" in reasons["entry 0 object 4"] and "unknown class" in reasons["entry 0 object 5"]
    assert reasons["entry 1"].startswith("image file not found")
    assert reasons["entry 2"].startswith("not a readable image") and "corrupt.JPG" in reasons["entry 2"]
    assert "escapes" in reasons["entry 3"] and "image_name" in reasons["entry 4"]
    assert [f.record for f in ds.fixed] == ["entry 0 object 1"]
    kept = iml.load(path, check_images=False, class_names=["red blood cell"])
    assert [s.image_id for s in kept] == ["a", "missing"] and kept[1].size is None
    with pytest.raises(DataError, match=r"annotations\.json \[entry 0 object 3\]: missing or non-numeric"):
        iml.load(path, strict=True)


# -- YOLO -----------------------------------------------------------------------------------------
def _yolo(root, labels: dict[str, str], names="names: [ring, rbc]\n"):
    for stem, text in labels.items():
        _image(root / "images" / f"{stem}.png", 40, 60)
        if text is not None:
            (root / "labels").mkdir(exist_ok=True)
            (root / "labels" / f"{stem}.txt").write_text(text)
    if names is not None:
        (root / "data.yaml").write_text(names)
    return root


def test_yolo_malformed_lines_are_skipped_by_line(tmp_path):
    _yolo(tmp_path, {"a": "\n".join([
        "0 0.5 0.5 0.2 0.2",        # line 1: fine
        "1 0.5 0.5 0.2",            # 2: 4 fields
        "1 0.5 half 0.2 0.2",       # 3: non-numeric
        "7 0.5 0.5 0.2 0.2",        # 4: class out of range
        "x 0.5 0.5 0.2 0.2",        # 5: class not an integer
        "0 1.5 0.5 0.2 0.2",        # 6: outside [0, 1]
        "",                         # 7: blank, ignored
        "1 0.95 0.5 0.2 0.2",       # 8: 3 px past the right edge: clipped
        "0 0.5 0.5 0 0.2",          # 9: zero width
    ]), "nolabel": None})
    (tmp_path / "labels" / "orphan.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    ds = yolo.load(tmp_path)
    assert [s.image_id for s in ds] == ["a", "nolabel"] and len(ds[1]) == 0
    reasons = {s.record: s.reason for s in ds.skipped if s.record}
    assert set(reasons) == {"line 2", "line 3", "line 4", "line 5", "line 6", "line 9"}
    assert all(r.startswith("malformed label line") for k, r in reasons.items() if k != "line 9")
    assert "5 fields" in reasons["line 2"] and "non-numeric" in reasons["line 3"]
    assert "class id '7'" in reasons["line 4"] and "outside [0, 1]" in reasons["line 6"]
    assert all(s.path.endswith("a.txt") for s in ds.skipped if s.record)
    orphan = [s for s in ds.skipped if not s.record]
    assert len(orphan) == 1 and orphan[0].path.endswith("orphan.txt")
    assert [f.record for f in ds.fixed] == ["line 8"]
    np.testing.assert_allclose(ds[0].boxes, [[24, 16, 36, 24], [51, 16, 60, 24]], atol=1e-4)
    with pytest.raises(DataError, match=r"a\.txt \[line 2\]: malformed label line"):
        yolo.load(tmp_path, strict=True)


def test_yolo_corrupt_image_is_skipped(tmp_path):
    _yolo(tmp_path, {"a": "0 0.5 0.5 0.2 0.2\n"})
    (tmp_path / "images" / "b.png").write_bytes(b"\x89PNG garbage")
    ds = yolo.load(tmp_path)
    assert [s.image_id for s in ds] == ["a"]
    assert ds.skipped[0].path.endswith("b.png") and "not a readable image" in ds.skipped[0].reason


@pytest.mark.parametrize("names, problem", [
    ("names: [ring\n", "malformed YAML"),
    ("nc: 2\n", "no 'names'"),
    ("names: {0: ring, 2: rbc}\n", "class ids 0..1"),
])
def test_yolo_bad_data_yaml_raises(tmp_path, names, problem):
    _yolo(tmp_path, {"a": ""}, names=names)
    with pytest.raises(DataError, match=problem) as err:
        yolo.load(tmp_path)
    assert err.value.path.endswith("data.yaml")


def test_yolo_layout_errors(tmp_path):
    with pytest.raises(DataError, match="no folder images/"):
        yolo.load(tmp_path)
    _yolo(tmp_path, {"a": "0 0.5 0.5 0.2 0.2\n"}, names=None)
    with pytest.raises(DataError, match="no class names"):
        yolo.load(tmp_path)
    assert yolo.load(tmp_path, class_names=["ring"]).class_names == ["ring"]
    (tmp_path / "classes.txt").write_text("ring\nrbc\n")
    assert yolo.load(tmp_path).class_names == ["ring", "rbc"]


def test_boxes_and_labels_of_different_lengths_are_refused_naming_the_file():
    from smearlab.data.boxes import clean_boxes
    from smearlab.data.sample import SkipLog
    for labels in ([0, 1, 2], [0]):  # three labels were cut to two; one label was a bare IndexError
        with pytest.raises(DataError, match=r"ann\.json.*2 boxes but"):
            clean_boxes([[0, 0, 5, 5], [1, 1, 6, 6]], labels, (10, 10), "ann.json", SkipLog(), SkipLog(kind="fixed"))
