"""Fuzzing every loader: malformed files end in a clear ``DataError`` or a counted skip.

Two parts:

* :data:`CASES`, hand-made malformed files for every format and for image files themselves
  (each case checks that the error or the skip names the bad file), at least 30 of them,
  none repeating a case of tests/test_bad_input_*.py;
* hypothesis mutations (byte flips, deletions, insertions, truncation; for the JSON formats
  also replacing any node by any JSON value) of small valid VOC, BBBC041, IML, COCO and YOLO
  datasets: every outcome is a dataset whose kept boxes are sane, or a ``DataError``.

Nothing may raise another exception type, crash the interpreter or hang (each load runs under
a time limit).
"""
from __future__ import annotations

import contextlib
import io
import json
import signal
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

from smearlab.data import DataError, SmearDataset
from smearlab.data.formats import bbbc041, coco, dicom, dsb2018, imagefolder, iml, voc, yolo, zheng
from smearlab.data.imageio import image_size, read_image

HW = (40, 60)
TIME_LIMIT_S = 10


@contextlib.contextmanager
def time_limit(seconds: float):
    """Fail (TimeoutError) when the block runs longer than ``seconds`` (a hang)."""
    def on_alarm(signum, frame):
        raise TimeoutError(f"still running after {seconds} s: the loader hangs")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _png(path: Path, h=HW[0], w=HW[1], channels=3, dtype=np.uint8, value=90) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (h, w) if channels == 1 else (h, w, channels)
    Image.fromarray(np.full(shape, value, dtype)).save(path)
    return path


def _encoded(fmt: str, h=HW[0], w=HW[1]) -> bytes:
    """A small noisy image encoded as ``fmt`` (so that truncation cuts real data)."""
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def _write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return path


def _read_all(ds: SmearDataset) -> SmearDataset:
    """Read every lazily loaded image and mask of ``ds`` (errors surface here), return ``ds``."""
    for s in ds:
        s.image  # noqa: B018
        s.masks  # noqa: B018
    return ds


def _coco_load(path: Path) -> SmearDataset:
    """Load a COCO file and decode its masks (lazy: bad segmentations surface here)."""
    ds = coco.load(path)
    for s in ds:
        s.masks  # noqa: B018
    return ds


# -- the hand-made cases --------------------------------------------------------------------------
@dataclass
class Case:
    """One malformed input: ``build(tmp)`` writes it and returns ``(call, where)``: ``call()``
    loads (and, for lazy formats, reads) it; ``where`` is the part of the file name that the
    error or a skip entry must name."""

    fmt: str
    name: str
    build: Callable[[Path], tuple[Callable, str]]


CASES: list[Case] = []


def case(fmt: str, name: str):
    def register(build):
        CASES.append(Case(fmt, name, build))
        return build
    return register


def _voc(tmp: Path, text: bytes | str, stem="a") -> Path:
    _png(tmp / "Images" / f"{stem}.png")
    _write(tmp / "Annotations" / f"{stem}.xml", text)
    return tmp


def _voc_xml(objects="", size=f"<size><width>{HW[1]}</width><height>{HW[0]}</height></size>"):
    return f"<annotation><filename>a.png</filename>{size}{objects}</annotation>"


@case("voc", "binary garbage named .xml")
def _(tmp):
    return (lambda: voc.load(_voc(tmp, _encoded("PNG")))), "a.xml"


@case("voc", "external entity (XXE) is refused, not read")
def _(tmp):
    text = '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]>' \
           "<annotation><filename>&x;</filename></annotation>"
    return (lambda: voc.load(_voc(tmp, text))), "a.xml"


@case("voc", "invalid UTF-8 inside the text")
def _(tmp):
    text = b'<?xml version="1.0" encoding="utf-8"?><annotation><filename>\xff\xfe</filename></annotation>'
    return (lambda: voc.load(_voc(tmp, text))), "a.xml"


@case("voc", "non-finite size and coordinates (inf, 1e999, nan)")
def _(tmp):
    obj = "<object><name>RBC</name><bndbox><xmin>1</xmin><ymin>nan</ymin><xmax>1e999</xmax>" \
          "<ymax>9</ymax></bndbox></object>"
    return (lambda: voc.load(_voc(tmp, _voc_xml(obj, "<size><width>inf</width><height>nan</height></size>")))), \
        "a.xml"


@case("voc", "object name of white space only")
def _(tmp):
    obj = ("<object><name>  \n </name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax>"
           "</bndbox></object>")
    return (lambda: voc.load(_voc(tmp, _voc_xml(obj)))), "a.xml"


@case("voc", "two annotation files of one stem (a.xml, a.XML)")
def _(tmp):
    _voc(tmp, _voc_xml())
    _write(tmp / "Annotations" / "a.XML", _voc_xml())
    return (lambda: voc.load(tmp)), "a.xml"  # sorted after a.XML: the second one is refused


def _json(tmp: Path, name: str, data) -> Path:
    return _write(tmp / name, data if isinstance(data, (bytes, str)) else json.dumps(data))


def _bb(pathname, objects=None):
    return [{"image": {"pathname": pathname, "shape": {"r": HW[0], "c": HW[1]}},
             "objects": objects if objects is not None else []}]


def _bb_obj(c0=1, r0=1, c1=9, r1=9, category="rbc"):
    return {"bounding_box": {"minimum": {"r": r0, "c": c0}, "maximum": {"r": r1, "c": c1}}, "category": category}


def _bbbc(tmp, data):
    _png(tmp / "images" / "a.png")
    path = _json(tmp, "train.json", data)
    return lambda: bbbc041.load(path)


@case("bbbc041", "JSON nested 100000 deep")
def _(tmp):
    return _bbbc(tmp, "[" * 100_000 + "]" * 100_000), "train.json"


@case("bbbc041", "NUL byte in a pathname")
def _(tmp):
    return _bbbc(tmp, _bb("/images/a.png\u0000.txt")), "train.json"


@case("bbbc041", "lone surrogate (\\ud800) in a pathname")
def _(tmp):
    return _bbbc(tmp, json.dumps(_bb("/images/a.png")).replace("a.png", "\\ud800.png")), "train.json"


@case("bbbc041", "objects is a mapping, not a list")
def _(tmp):
    return _bbbc(tmp, [{**_bb("/images/a.png")[0], "objects": {"0": _bb_obj()}}]), "train.json"


@case("bbbc041", "NaN corner (JSON NaN literal)")
def _(tmp):
    return _bbbc(tmp, json.dumps(_bb("/images/a.png", [_bb_obj(r0=float("nan"))]))), "train.json"


@case("bbbc041", "integer corner too large for a float (10**400)")
def _(tmp):
    return _bbbc(tmp, json.dumps(_bb("/images/a.png", [_bb_obj(c1=10 ** 400)]))), "train.json"


@case("bbbc041", "file that is not UTF-8")
def _(tmp):
    return _bbbc(tmp, b'[{"image": {"pathname": "\xff\xfe"}}]'), "train.json"


@case("bbbc041", "boolean corners and infinite shape")
def _(tmp):
    data = _bb("/images/a.png", [_bb_obj(c0=True, r0=False)])
    data[0]["image"]["shape"] = {"r": float("inf"), "c": 1e400}
    return _bbbc(tmp, json.dumps(data)), "train.json"


def _iml(tmp, data, image=True):
    if image:
        _png(tmp / "IML_Malaria" / "a.png")
    path = _json(tmp, "annotations.json", data)
    return lambda: iml.load(path)


@case("iml", "bbox as a list instead of {x, y, w, h}")
def _(tmp):
    return _iml(tmp, [{"image_name": "a.png", "objects": [{"type": "rbc", "bbox": [1, 2, 3, 4]}]}]), \
        "annotations.json"


@case("iml", "object type that is not text")
def _(tmp):
    bbox = {"x": "1", "y": "1", "w": "5", "h": "5"}
    return _iml(tmp, [{"image_name": "a.png", "objects": [{"type": 7, "bbox": bbox}]}]), "annotations.json"


@case("iml", "the same image in two entries")
def _(tmp):
    return _iml(tmp, [{"image_name": "a.png", "objects": []}] * 2), "annotations.json"


@case("iml", "zero-byte image file")
def _(tmp):
    _write(tmp / "IML_Malaria" / "a.png", b"")
    return _iml(tmp, [{"image_name": "a.png", "objects": []}], image=False), "a.png"


def _coco(tmp, images=None, annotations=(), text=None):
    _png(tmp / "a.png")
    data = {"images": images or [{"id": 1, "file_name": "a.png", "width": HW[1], "height": HW[0]}],
            "annotations": list(annotations), "categories": [{"id": 1, "name": "rbc"}]}
    path = _json(tmp, "gt.json", text if text is not None else json.dumps(data))
    return lambda: _coco_load(path)


def _ann(**kw):
    return {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], **kw}


@case("coco", "JSON nested 100000 deep")
def _(tmp):
    return _coco(tmp, text='{"images": ' + "[" * 100_000 + "]" * 100_000 + "}"), "gt.json"


@case("coco", "compressed RLE counts that are not ASCII")
def _(tmp):
    return _coco(tmp, annotations=[_ann(segmentation={"size": list(HW), "counts": "é0"})]), "gt.json"


@case("coco", "polygon with huge coordinates (crashed pycocotools)")
def _(tmp):
    return _coco(tmp, annotations=[_ann(segmentation=[[0, 0, 1e9, 0, 1e9, 1e9]])]), "gt.json"


@case("coco", "bbox with Infinity")
def _(tmp):
    return _coco(tmp, annotations=[_ann(bbox=[1, 1, float("inf"), 5])]), "gt.json"


@case("coco", "bbox integer too large for a float")
def _(tmp):
    return _coco(tmp, annotations=[_ann(bbox=[1, 1, 10 ** 400, 5])]), "gt.json"


@case("coco", "width and height written as text")
def _(tmp):
    return _coco(tmp, images=[{"id": 1, "file_name": "a.png", "width": "60", "height": "40"}]), "gt.json"


@case("coco", "image id that is a float")
def _(tmp):
    return _coco(tmp, images=[{"id": 1.5, "file_name": "a.png"}]), "gt.json"


@case("coco", "NUL byte in a file_name")
def _(tmp):
    return _coco(tmp, images=[{"id": 1, "file_name": "a.png\u0000"}]), "gt.json"


def _yolo(tmp, yaml_text=None, labels=None, classes_txt=None):
    _png(tmp / "images" / "a.png")
    if yaml_text is not None:
        _write(tmp / "data.yaml", yaml_text)
    if classes_txt is not None:
        _write(tmp / "classes.txt", classes_txt)
    if labels is not None:
        _write(tmp / "labels" / "a.txt", labels)
    return lambda: yolo.load(tmp)


@case("yolo", "YAML alias bomb in names")
def _(tmp):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 6)]
    return _yolo(tmp, "\n".join([*lines, "names: [*a5, *a5]"])), "data.yaml"


@case("yolo", "YAML nested 10000 deep")
def _(tmp):
    return _yolo(tmp, "names: " + "[" * 10_000), "data.yaml"


@case("yolo", "YAML python tag (code execution attempt)")
def _(tmp):
    return _yolo(tmp, "names: !!python/object/apply:os.system ['echo pwned']"), "data.yaml"


@case("yolo", "class names that are lists")
def _(tmp):
    return _yolo(tmp, "names: [[a, b], c]"), "data.yaml"


@case("yolo", "label file that is not UTF-8")
def _(tmp):
    return _yolo(tmp, "names: [c]", labels=b"\xff\xfe0 0.5 0.5 0.1 0.1\n"), "a.txt"


@case("yolo", "nan and inf coordinates")
def _(tmp):
    return _yolo(tmp, "names: [c]", labels="0 nan 0.5 0.1 0.1\n0 0.5 inf 0.1 0.1\n"), "a.txt"


@case("yolo", "empty classes.txt")
def _(tmp):
    return _yolo(tmp, classes_txt="\n \n"), "classes.txt"


@case("yolo", "zero-byte image")
def _(tmp):
    _write(tmp / "images" / "b.png", b"")
    return _yolo(tmp, "names: [c]", labels="0 0.5 0.5 0.2 0.2\n"), "b.png"


def _folder(tmp, name: str, data: bytes):
    _png(tmp / "wbc" / "good.png")
    _write(tmp / "wbc" / name, data)
    return lambda: _read_all(imagefolder.load(tmp))


@case("imagefolder", "zero-byte image")
def _(tmp):
    return _folder(tmp, "x.png", b""), "x.png"


@case("imagefolder", "truncated JPEG")
def _(tmp):
    data = _encoded("JPEG", 64, 64)
    return _folder(tmp, "x.jpg", data[: len(data) // 2]), "x.jpg"


@case("imagefolder", "image behind a wrong extension (.txt)")
def _(tmp):
    return _folder(tmp, "x.txt", _encoded("PNG")), "x.txt"


def _image_case(tmp, name: str, data: bytes, reader=read_image):
    path = _write(tmp / name, data)
    return lambda: reader(path)


@case("image", "truncated PNG")
def _(tmp):
    data = _encoded("PNG")
    return _image_case(tmp, "x.png", data[: len(data) // 2]), "x.png"


@case("image", "JPEG cut inside its header (size read from the header)")
def _(tmp):
    return _image_case(tmp, "x.jpg", _encoded("JPEG")[:20], image_size), "x.jpg"


@case("image", "zero-byte PNG")
def _(tmp):
    return _image_case(tmp, "x.png", b""), "x.png"


@case("image", "PNG with a broken header checksum")
def _(tmp):
    data = bytearray(_encoded("PNG"))
    data[29] ^= 0xFF  # the IHDR CRC
    return _image_case(tmp, "x.png", bytes(data)), "x.png"


def _png_claiming(w: int, h: int) -> bytes:
    """A PNG whose header claims ``w x h`` pixels (valid checksum), data of a 4x4 image."""
    data = bytearray(_encoded("PNG", 4, 4))
    data[16:24] = struct.pack(">II", w, h)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


@case("image", "decompression bomb (header claims 100000 x 100000)")
def _(tmp):
    path = _write(tmp / "x.png", _png_claiming(100_000, 100_000))
    return (lambda: (image_size(path), read_image(path))), "x.png"


@case("image", "a folder named like an image")
def _(tmp):
    (tmp / "x.png").mkdir()
    return (lambda: read_image(tmp / "x.png")), "x.png"


@case("image", "truncated BMP")
def _(tmp):
    data = _encoded("BMP")
    return _image_case(tmp, "x.bmp", data[: len(data) // 3]), "x.bmp"


def _dsb(tmp, *, image: bytes | None = None, masks: dict | None = None):
    folder = tmp / "stage1_train" / "n1"
    if image is None:
        _png(folder / "images" / "n1.png", channels=4)
    else:
        _write(folder / "images" / "n1.png", image)
    mask = np.zeros(HW, np.uint8)
    mask[2:6, 3:9] = 255
    (folder / "masks").mkdir(parents=True)
    Image.fromarray(mask).save(folder / "masks" / "m0.png")
    for name, data in (masks or {}).items():
        if data is None:
            (folder / "masks" / name).mkdir()
        else:
            _write(folder / "masks" / name, data)
    return lambda: _read_all(dsb2018.load(tmp))


@case("dsb2018", "mask file that is text")
def _(tmp):
    return _dsb(tmp, masks={"m1.png": b"not a mask"}), "m1.png"


@case("dsb2018", "zero-byte image")
def _(tmp):
    return _dsb(tmp, image=b""), "n1.png"


@case("dsb2018", "a folder among the masks")
def _(tmp):
    return _dsb(tmp, masks={"sub.png": None}), "sub.png"


def _zheng(tmp, *, csv: bytes = b"image ID,class\r\n1,2\r\n", mask: bytes | None = None,
           image: bytes | None = None):
    folder = tmp / "Dataset 1"
    m = np.zeros(HW, np.uint8)
    m[5:20, 5:30] = 128
    if mask is None:
        folder.mkdir(parents=True)
        Image.fromarray(m).save(folder / "001.png")
    else:
        _write(folder / "001.png", mask)
    _write(folder / "001.bmp", image if image is not None else _encoded("BMP"))
    _write(tmp / "Class Labels of Dataset 1.csv", csv)
    return lambda: _read_all(zheng.load(tmp, datasets=(1,)))


@case("zheng", "empty class-label CSV")
def _(tmp):
    return _zheng(tmp, csv=b""), "Dataset 1.csv"


@case("zheng", "mask that is text")
def _(tmp):
    return _zheng(tmp, mask=b"not a png"), "001.png"


@case("zheng", "zero-byte image")
def _(tmp):
    return _zheng(tmp, image=b""), "001.bmp"


def _dicom_bytes(h=32, w=32) -> bytes:
    """A small MONOCHROME2 16-bit DICOM file."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("x.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.Rows, ds.Columns = "OT", h, w
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.arange(h * w, dtype="<u2").tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@case("dicom", "truncated inside the header")
def _(tmp):
    pytest.importorskip("pydicom")
    path = _write(tmp / "x.dcm", _dicom_bytes()[:150])
    return (lambda: dicom.load(path)), "x.dcm"


@case("dicom", "truncated pixel data")
def _(tmp):
    pytest.importorskip("pydicom")
    data = _dicom_bytes()
    path = _write(tmp / "x.dcm", data[: len(data) - 1000])
    return (lambda: _read_all(dicom.load(path))), "x.dcm"


def _outcome(call: Callable, where: str) -> str:
    """Run ``call`` under the time limit: "error" for a DataError naming ``where``, "skip" for
    a dataset with a skip naming ``where``; anything else fails the test."""
    try:
        with time_limit(TIME_LIMIT_S):
            result = call()
    except DataError as e:
        assert where in str(e), f"the error does not name {where!r}: {e}"
        return "error"
    assert isinstance(result, SmearDataset), f"neither a DataError nor a dataset: {result!r}"
    named = [str(s) for s in result.skipped if where in str(s)]
    assert named, f"no skip names {where!r}; skipped: {[str(s) for s in result.skipped]}"
    return "skip"


@pytest.mark.parametrize("c", CASES, ids=[f"{c.fmt}: {c.name}" for c in CASES])
def test_malformed_file_ends_in_data_error_or_counted_skip(tmp_path, c):
    call, where = c.build(tmp_path)
    assert _outcome(call, where) in ("error", "skip")


def test_enough_distinct_cases_for_every_format():
    per_format = {}
    for c in CASES:
        per_format[c.fmt] = per_format.get(c.fmt, 0) + 1
    assert len(CASES) >= 30 and len({(c.fmt, c.name) for c in CASES}) == len(CASES)
    assert set(per_format) == {"voc", "bbbc041", "iml", "coco", "yolo", "imagefolder", "image",
                               "dsb2018", "zheng", "dicom"}


def test_dsb2018_subset_tsv_not_utf8(tmp_path):
    call = _dsb(tmp_path)
    _write(tmp_path / "SUBSET_IMAGES.tsv", b"image_id\tgroup\n\xff\xfe\tg\n")
    assert _outcome(call, "SUBSET_IMAGES.tsv") in ("error", "skip")


def test_zheng_csv_not_utf8(tmp_path):
    call = _zheng(tmp_path, csv=b"image ID,class\r\n\xff\xfe,1\r\n")
    assert _outcome(call, "Dataset 1.csv") in ("error", "skip")


@pytest.mark.parametrize("stored, name", [("JPEG", "x.png"), ("PNG", "x.jpg"), ("PNG", "x.tif")])
def test_wrong_extension_is_read_by_content(tmp_path, stored, name):
    path = _write(tmp_path / name, _encoded(stored))
    assert read_image(path)[0].shape == (*HW, 3) and image_size(path) == HW


# -- hypothesis: mutations of valid files ---------------------------------------------------------
def _valid(fmt: str, root: Path) -> None:
    """Write a valid one-image dataset of ``fmt`` (two boxes, two classes) into ``root``."""
    _png(root / "img" / "a.png")
    boxes = [(2, 3, 20, 15), (30, 10, 58, 39)]
    if fmt == "voc":
        objs = "".join(f"<object><name>{'rbc' if i else 'wbc'}</name><difficult>0</difficult><bndbox>"
                       f"<xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax><ymax>{d}</ymax></bndbox></object>"
                       for i, (a, b, c, d) in enumerate(boxes))
        _write(root / "Annotations" / "a.xml", _voc_xml(objs))
        (root / "img").rename(root / "Images")
    elif fmt == "bbbc041":
        objs = [_bb_obj(a, b, c, d, "ring" if i else "rbc") for i, (a, b, c, d) in enumerate(boxes)]
        _json(root, "train.json", _bb("/img/a.png", objs))
    elif fmt == "iml":
        objs = [{"type": "rbc", "bbox": {"x": str(a), "y": str(b), "w": str(c - a), "h": str(d - b)}}
                for a, b, c, d in boxes]
        _json(root, "annotations.json", [{"image_name": "a.png", "objects": objs}])
        (root / "img").rename(root / "IML_Malaria")
    elif fmt == "coco":
        mask = np.zeros(HW, bool)
        mask[3:15, 2:20] = True
        anns = [{"id": i + 1, "image_id": 1, "category_id": 1 + i % 2, "bbox": [a, b, c - a, d - b],
                 "iscrowd": 0, "segmentation": [[a, b, c, b, c, d, a, d]] if i else coco.encode_rle(mask)}
                for i, (a, b, c, d) in enumerate(boxes)]
        data = {"images": [{"id": 1, "file_name": "img/a.png", "width": HW[1], "height": HW[0]}],
                "annotations": anns, "categories": [{"id": 1, "name": "rbc"}, {"id": 2, "name": "wbc"}]}
        _json(root, "gt.json", data)
    elif fmt == "yolo":
        (root / "img").rename(root / "images")
        _write(root / "data.yaml", "names: {0: rbc, 1: wbc}\nnc: 2\n")
        lines = "".join(f"{i % 2} {(a + c) / 2 / HW[1]:.6f} {(b + d) / 2 / HW[0]:.6f} {(c - a) / HW[1]:.6f} "
                        f"{(d - b) / HW[0]:.6f}\n" for i, (a, b, c, d) in enumerate(boxes))
        _write(root / "labels" / "a.txt", lines)


def _sane(ds: SmearDataset) -> None:
    """Every kept box is finite, non-degenerate and (when the size is known) inside the image."""
    for s in ds:
        b = s.boxes
        assert np.isfinite(b).all() and (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all(), b
        if s.size is not None and len(b):
            h, w = s.size
            assert (b[:, :2] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all(), (b, s.size)


def _load_mutated(load: Callable) -> None:
    """Load under the time limit: a DataError or a sane dataset, nothing else."""
    try:
        with time_limit(TIME_LIMIT_S):
            ds = load()
    except DataError:
        return
    assert isinstance(ds, SmearDataset)
    _sane(ds)


TARGETS = {  # the file each format's mutations change, and its loader
    "voc": ("Annotations/a.xml", lambda root: voc.load(root)),
    "bbbc041": ("train.json", lambda root: bbbc041.load(root / "train.json")),
    "iml": ("annotations.json", lambda root: iml.load(root / "annotations.json")),
    "coco": ("gt.json", lambda root: _coco_load(root / "gt.json")),
    "yolo": ("labels/a.txt", lambda root: yolo.load(root)),
    "yolo-yaml": ("data.yaml", lambda root: yolo.load(root)),
}


def _fuzz_target(tmp_path: Path, fmt: str) -> tuple[Path, bytes, Callable]:
    """The valid dataset of ``fmt`` (written once per test): the file to mutate, its valid
    bytes and the loader. Every example starts again from the valid bytes."""
    root = tmp_path / fmt
    name, load = TARGETS[fmt]
    if not root.exists():
        root.mkdir()
        _valid(fmt.removesuffix("-yaml"), root)
        (root / "valid.bin").write_bytes((root / name).read_bytes())
    return root / name, (root / "valid.bin").read_bytes(), lambda: load(root)


@pytest.mark.parametrize("fmt", sorted(TARGETS))
def test_unmutated_fuzz_datasets_are_valid(tmp_path, fmt):
    _, _, load = _fuzz_target(tmp_path, fmt)
    ds = load()
    assert len(ds) == 1 and len(ds[0].boxes) == 2 and not ds.skipped and not ds.fixed
    assert ds[0].size == HW and (fmt != "coco" or ds[0].masks.shape == (2, *HW))


MUTATION = st.tuples(st.sampled_from(["flip", "delete", "insert", "truncate"]),
                     st.floats(0, 1, exclude_max=True), st.binary(min_size=1, max_size=6))
FUZZ = settings(max_examples=50, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _mutate(data: bytes, ops) -> bytes:
    """Apply ``(op, relative position, bytes)`` edits: flip a byte, delete a run, insert, truncate."""
    for op, where, chunk in ops:
        i = int(where * len(data)) if data else 0
        if op == "flip" and data:
            data = data[:i] + bytes([data[i] ^ (chunk[0] or 1)]) + data[i + 1:]
        elif op == "delete":
            data = data[:i] + data[i + len(chunk) * 4:]
        elif op == "insert":
            data = data[:i] + chunk + data[i:]
        else:
            data = data[:i]
    return data


@pytest.mark.parametrize("fmt", sorted(TARGETS))
@FUZZ
@given(ops=st.lists(MUTATION, min_size=1, max_size=4))
def test_byte_mutations_of_valid_files(tmp_path, fmt, ops):
    path, valid, load = _fuzz_target(tmp_path, fmt)
    path.write_bytes(_mutate(valid, ops))
    _load_mutated(load)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-10 ** 30, max_value=10 ** 30)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6)


def _nodes(doc, path=()):
    """Every node of a parsed JSON document as a path of keys/indices."""
    yield path
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _nodes(v, (*path, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _nodes(v, (*path, i))


def _replace(doc, path, value, delete: bool):
    if not path:
        return value
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return doc


@pytest.mark.parametrize("fmt", ["bbbc041", "iml", "coco"])
@FUZZ
@given(data=st.data())
def test_json_node_replacements_of_valid_files(tmp_path, fmt, data):
    path, valid, load = _fuzz_target(tmp_path, fmt)
    doc = json.loads(valid)
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        where = data.draw(st.sampled_from(list(_nodes(doc))), label="node")
        delete = bool(where) and data.draw(st.booleans(), label="delete")
        doc = _replace(doc, where, data.draw(JSON_VALUES, label="value"), delete)
    path.write_text(json.dumps(doc))
    _load_mutated(load)
