"""One module per on-disk format; this module finds the right one for a path.

Every format module exposes ``load(path, **options) -> SmearDataset``; formats that can be
written also expose ``save(dataset, path)``. :func:`detect_format` looks at the files, not only
at the name, and says what it found when it cannot decide.
"""
from __future__ import annotations

import importlib
from pathlib import Path

from ..errors import DataError
from ..imageio import is_image_file

FORMATS = ("voc", "bbbc041", "iml", "coco", "yolo", "dsb2018", "zheng", "imagefolder", "dicom")
WRITABLE = ("voc", "coco", "yolo")


def module(fmt: str):
    """The module implementing format ``fmt``."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; known formats: {', '.join(FORMATS)}")
    return importlib.import_module(f"{__name__}.{fmt}")


def json_kind(path: Path) -> str | None:
    """Which JSON schema a file holds: 'coco', 'bbbc041', 'iml' or None."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096).decode("utf-8", "replace")
    except OSError:
        return None
    h = head.replace(" ", "").replace("\n", "")
    if h.startswith("{") and ('"images"' in head or '"annotations"' in head or '"categories"' in head):
        return "coco"
    if h.startswith("[") and ('"bounding_box"' in head or '"pathname"' in head):
        return "bbbc041"
    if h.startswith("[") and '"image_name"' in head:
        return "iml"
    return None


def detect_format(path: str | Path) -> str:
    """Guess the format of a file or folder from its contents.

    Raises
    ------
    DataError
        when nothing matches, naming what was looked for.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(p, "path does not exist")
    if p.is_file():
        if p.suffix.lower() == ".json":
            kind = json_kind(p)
            if kind:
                return kind
            raise DataError(p, "JSON file is neither COCO, BBBC041 nor IML-Malaria annotations")
        if p.suffix.lower() == ".xml":
            return "voc"
        if p.suffix.lower() in (".yaml", ".yml"):
            return "yolo"
        if p.suffix.lower() in (".dcm", ".dicom"):
            return "dicom"
        raise DataError(p, "cannot tell the annotation format of this file")
    names = {c.name for c in p.iterdir()}
    lower = {n.lower() for n in names}
    if "annotations" in lower and any((p / n).is_dir() for n in names if n.lower() == "annotations") \
            and any(f.suffix.lower() == ".xml" for d in p.iterdir() if d.name.lower() == "annotations"
                    for f in d.iterdir()):
        return "voc"
    if "stage1_train" in names or (p.name == "stage1_train") or \
            any((c / "images").is_dir() and (c / "masks").is_dir() for c in p.iterdir() if c.is_dir()):
        return "dsb2018"
    if any(n.lower().startswith("class labels of dataset") for n in names) or \
            any(n.lower().startswith("dataset ") and (p / n).is_dir() for n in names):
        return "zheng"
    if "data.yaml" in lower or "classes.txt" in lower or "labels" in lower:
        return "yolo"
    jsons = sorted(c for c in p.iterdir() if c.suffix.lower() == ".json")
    kinds = [k for k in (json_kind(j) for j in jsons) if k]
    if kinds:
        return kinds[0]
    subdirs = [c for c in p.iterdir() if c.is_dir() and not c.name.startswith(".")]
    if subdirs and all(any(is_image_file(f) for f in d.iterdir()) or not any(d.iterdir()) for d in subdirs):
        return "imagefolder"
    if any(c.suffix.lower() in (".dcm", ".dicom") for c in p.iterdir()):
        return "dicom"
    raise DataError(p, "cannot detect the dataset format (looked for VOC Annotations/, COCO/BBBC041/"
                       "IML JSON, YOLO labels/ or data.yaml, DSB2018 images/+masks/, Zheng "
                       "'Dataset N/', class folders of images, DICOM files); name it with format=")


def load(path: str | Path, format: str | None = None, **options):
    """Load a dataset from ``path`` in its native format (detected unless ``format`` is given).

    Extra keyword options go to the format's loader (see ``smearlab.data.formats.<format>.load``).
    """
    fmt = format or detect_format(path)
    return module(fmt).load(path, **options)


def save(dataset, path: str | Path, format: str) -> Path:
    """Write ``dataset`` to ``path`` in ``format`` (one of :data:`WRITABLE`)."""
    if format not in WRITABLE:
        raise ValueError(f"cannot write format {format!r}; writable formats: {', '.join(WRITABLE)}")
    return module(format).save(dataset, path)
