"""Pascal VOC: one XML file per image in ``Annotations/``, images in ``Images/`` or ``JPEGImages/``.

Coordinates follow the PASCAL VOC convention: ``xmin, ymin, xmax, ymax`` are 1-based, inclusive
pixel indices, so a box covering a whole 640 px wide image reads ``xmin=1, xmax=640``. In the
package's pixel-edge coordinates that box is ``x0=0, x1=640``: ``x0 = xmin - 1``, ``y0 = ymin - 1``,
``x1 = xmax``, ``y1 = ymax`` (Detectron2's VOC reader does the same). The CBC/BCCD files follow it:
no box of theirs has ``xmin=0`` and 282 have ``xmin=1``. (Read without the shift, every box lost its
first column and row.) ``xmax = xmin`` is a box one pixel wide; a box of a single pixel
(``xmin = xmax`` and ``ymin = ymax``: CBC has one in ``Training/`` and one in ``Testing/``) is a
click, not an outline, and is skipped as degenerate. The writer uses the same convention and
refuses boxes less than a pixel wide or high, or of a single pixel (which it would read back as
a click), so files round-trip exactly.
"""
from __future__ import annotations

import xml.etree.ElementTree as StdET
from pathlib import Path

import numpy as np
from defusedxml import DefusedXmlException, ElementTree as SafeET

from ...core.errors import DataError
from ..imageio import is_image_file
from ..sample import Sample, SmearDataset
from ._common import BoxCollector, Root, dataset_name, number, positive_int, save_samples

VOC_COORDS = ("xmin", "ymin", "xmax", "ymax")


# -- reading --------------------------------------------------------------------------------------
def load(path: str | Path, *, class_names=None, class_map=None, strict: bool = False,
         name: str | None = None, check_images: bool = True,
         allow_outside_root: bool = False) -> SmearDataset:
    """Load a Pascal VOC folder (``Annotations/`` + ``Images/`` or ``JPEGImages/``) or one .xml file.

    The image of an annotation is ``<filename>`` in the image folder, else the XML's stem with
    any image extension (case-insensitive). Each image's header is read (not its pixels): the
    image is read as shown (EXIF orientation applied), its size must match ``<size>`` when the
    file gives one (a ``<size>`` that matches only the stored pixels reads the image as stored,
    counted in ``fixed``; one that matches neither skips the image), and boxes are clipped or
    dropped against the image as read. The VOC ``difficult`` flag is kept in
    ``Sample.meta["difficult"]`` (bool array aligned with the boxes). Images are read lazily.

    Parameters
    ----------
    path : the dataset folder, or one .xml file (its images are looked for in
        ``../Images`` or ``../JPEGImages`` when it lies in ``Annotations/``, else beside it).
    class_names : classes to keep, in this order; None collects all, sorted by name. Names in
        the files are matched to these by name or alias (case, plural: ``Platelet`` keeps
        ``Platelets`` objects), see :mod:`smearlab.data.classes`.
    class_map : ``{name in the files: name in class_names}`` for other spellings.
    strict : raise at the first skipped record instead of counting it.
    name : dataset name (default: the folder name).
    check_images : skip annotations whose image file is missing (default True). With False
        such an annotation is kept with the size ``<size>`` declares.
    allow_outside_root : follow links that lead out of the dataset folder (refused and
        counted as skips by default).

    Returns
    -------
    SmearDataset
        with ``skipped``: images no annotation file names (in a dataset folder), unreadable,
        empty or malformed XML files (forbidden entity
        declarations included, never expanded) and XML whose root is not ``<annotation>``,
        missing images, a second annotation file of the same stem, objects without a name or
        ``<bndbox>`` or with missing or non-numeric coordinates ("object N", 0-based), unknown
        classes, degenerate or far-outside boxes; and ``fixed``: boxes clipped to the image.

    Raises
    ------
    DataError
        when ``path`` is neither a VOC folder nor an .xml file, when the image folder is missing
        (with ``check_images``), or under ``strict`` at the first skipped record.
    """
    path = Path(path)
    xml_files, image_dir, root = _layout(path, check_images)
    images = _image_index(image_dir)
    col = BoxCollector(class_names, strict, class_map)
    inside = Root(root, allow_outside_root)
    annotated: dict[Path, Path] = {}  # image -> the annotation file that gave it
    failed: set[str] = set()  # stems of annotation files skipped whole: their images are said with them
    for xml_path in xml_files:
        if not inside.inside(xml_path, col.skipped):
            failed.add(xml_path.stem.lower())
            continue
        try:
            ann = _parse(xml_path)
        except DataError as e:
            col.skip(xml_path, e.problem)
            failed.add(xml_path.stem.lower())
            continue
        _add_annotation(col, xml_path, ann, image_dir, images, check_images, inside, annotated)
    if path.is_dir():  # an image no annotation file names: not read as an image without objects (unsaid)
        for image in sorted(i for i in set(images.values()) - set(annotated) if i.stem.lower() not in failed):
            col.skip(image, "no annotation file names this image (an image without objects needs an XML "
                            "file without <object>)")
    return col.dataset(name or dataset_name(root), root, "voc")


def _layout(path: Path, check_images: bool) -> tuple[list[Path], Path, Path]:
    """The XML files, the image folder and the dataset root for ``path``."""
    if path.is_file():
        if path.suffix.lower() != ".xml":
            raise DataError(path, "not a VOC .xml annotation file")
        if path.parent.name.lower() == "annotations":
            root = path.parent.parent
            return [path], _child(root, "images", "jpegimages") or path.parent, root
        return [path], path.parent, path.parent
    if not path.is_dir():
        raise DataError(path, "path does not exist")
    ann_dir = _child(path, "annotations")
    if ann_dir is None:
        raise DataError(path, "not a VOC folder: no Annotations/ folder")
    image_dir = _child(path, "images", "jpegimages")
    if image_dir is None:
        if check_images:
            raise DataError(path, "no Images/ or JPEGImages/ folder beside Annotations/ "
                                  "(pass check_images=False to load the annotations alone)")
        image_dir = path / "Images"
    xml_files = sorted(p for p in ann_dir.iterdir() if p.suffix.lower() == ".xml" and p.is_file())
    return xml_files, image_dir, path


def _child(folder: Path, *names: str) -> Path | None:
    """The first sub-folder of ``folder`` named like one of ``names`` (case-insensitive)."""
    subdirs = {p.name.lower(): p for p in sorted(folder.iterdir()) if p.is_dir()}
    return next((subdirs[n] for n in names if n in subdirs), None)


def _image_index(folder: Path) -> dict[str, Path]:
    """Image files of ``folder`` by lower-case name and by lower-case stem."""
    files = sorted(p for p in folder.iterdir() if is_image_file(p)) if folder.is_dir() else []
    index = {p.stem.lower(): p for p in files}
    index.update({p.name.lower(): p for p in files})
    return index


def _parse(xml_path: Path) -> StdET.Element:
    """The root element of an annotation file, parsed with defusedxml (entities refused)."""
    try:
        data = xml_path.read_bytes()
    except OSError as e:
        raise DataError(xml_path, f"cannot read the file: {e}") from None
    if not data.strip():
        raise DataError(xml_path, "empty annotation file")
    try:
        root = SafeET.fromstring(data)
    except DefusedXmlException as e:
        raise DataError(xml_path, f"forbidden XML construct (entities/DTD are not expanded): "
                                  f"{type(e).__name__}") from None
    except SafeET.ParseError as e:
        raise DataError(xml_path, f"malformed XML: {e}") from None
    if root.tag != "annotation":
        raise DataError(xml_path, f"not a VOC annotation: root element <{root.tag}>")
    return root


def _add_annotation(col: BoxCollector, xml_path: Path, ann: StdET.Element, image_dir: Path,
                    images: dict[str, Path], check_images: bool, inside: Root, annotated: dict[Path, Path]) -> None:
    """Add the image of one parsed annotation file with its valid objects; a second annotation
    file of an image already added (``annotated``: image -> its file) is counted as a skip, since
    two samples of one image would split its objects."""
    filename = Path((ann.findtext("filename") or "").strip()).name
    image = images.get(filename.lower()) or images.get(xml_path.stem.lower())
    if image is None:
        if check_images:
            col.skip(xml_path, f"image file not found: {filename or xml_path.stem + '.*'} in {image_dir}")
            return
        image = image_dir / filename if filename else None
    elif check_images and not image.is_file():  # listed, but a broken link (or not a file)
        col.skip(xml_path, f"image file not found: {image} (a broken link?)")
        return
    if image is not None and image.exists() and not inside.inside(image, col.skipped):
        return
    if image is not None and image.exists():
        if image in annotated:
            col.skip(xml_path, f"its image {image.name} is also annotated by {annotated[image].name}; this file "
                               "is left out")
            return
        annotated[image] = xml_path
    objects, difficult = [], []
    for j, obj in enumerate(ann.findall("object")):
        parsed = _parse_object(col, xml_path, obj, f"object {j}")
        if parsed is not None:
            objects.append(parsed)
            difficult.append((obj.findtext("difficult") or "0").strip() == "1")
    col.add(xml_path.stem, image, xml_path, objects, size=_size(ann), flags={"difficult": difficult})


def _parse_object(col: BoxCollector, xml_path: Path, obj: StdET.Element, rec: str):
    """``(xyxy, name, record)`` of one ``<object>``, or None after counting a skip."""
    name = (obj.findtext("name") or "").strip()
    box = obj.find("bndbox")
    if not name:
        col.skip(xml_path, "object without <name>", rec)
    elif box is None:
        col.skip(xml_path, "object without <bndbox>", rec)
    else:
        texts = [box.findtext(k) for k in VOC_COORDS]
        coords = [number(t) for t in texts]
        if None in coords:
            col.skip(xml_path, "missing or non-numeric <bndbox> coordinates: "
                     + ", ".join(f"{k}={t!r}" for k, t in zip(VOC_COORDS, texts)), rec)
        elif coords[2] < coords[0] or coords[3] < coords[1]:
            col.skip(xml_path, f"degenerate box (xmax<xmin or ymax<ymin): {coords}", rec)
        elif coords[2] == coords[0] and coords[3] == coords[1]:  # one pixel: a click, not an outline
            col.skip(xml_path, f"degenerate box (a single pixel, xmin=xmax and ymin=ymax): {coords}", rec)
        elif (kept := col.known(name, xml_path, rec)) is not None:
            return [coords[0] - 1, coords[1] - 1, coords[2], coords[3]], kept, rec
    return None


def _size(ann: StdET.Element) -> tuple[int, int] | None:
    """``(height, width)`` from ``<size>``, or None when absent, zero or not a finite number."""
    w, h = positive_int(ann.findtext("size/width")), positive_int(ann.findtext("size/height"))
    return None if w is None or h is None else (h, w)


# -- writing --------------------------------------------------------------------------------------
def save(dataset: SmearDataset, root: str | Path) -> Path:
    """Write ``dataset`` as ``root/Annotations/*.xml`` and ``root/Images/*``.

    An image is copied when the sample has a file, else written as PNG. Every file is written
    atomically. ``Sample.meta["difficult"]`` is written as the ``difficult`` flag when present.
    A box of a pixel or less (which VOC's convention cannot hold) is refused, naming its image,
    before anything is written.

    Parameters
    ----------
    dataset : the SmearDataset to write.
    root : the output folder (created if needed).

    Returns
    -------
    Path
        ``root``.
    """
    for sample in dataset:  # before any file is written
        bw, bh = sample.boxes[:, 2] - sample.boxes[:, 0], sample.boxes[:, 3] - sample.boxes[:, 1]
        tiny = (bw < 1) | (bh < 1) | ((bw == 1) & (bh == 1))  # the reader skips a single pixel as a click
        if tiny.any():
            raise DataError(sample.path or sample.image_id, f"box {sample.boxes[tiny][0].tolist()} is a pixel or "
                                                            "less: VOC's 1-based pixel indices cannot hold it as a box")
    root = Path(root)
    save_samples(dataset, root / "Images", root / "Annotations", ".xml",
                 lambda sample, image: _to_xml(sample, image.name, dataset.class_names))
    return root


def _to_xml(sample: Sample, filename: str, class_names: list[str]) -> str:
    """The VOC XML text of one sample."""
    ann = StdET.Element("annotation")
    _sub(ann, "folder", "Images")
    _sub(ann, "filename", filename)
    h, w = sample.hw
    size = _sub(ann, "size")
    for tag, value in (("width", w), ("height", h), ("depth", 3)):
        _sub(size, tag, str(value))
    difficult = sample.meta.get("difficult", np.zeros(len(sample.boxes), bool))
    for box, label, hard in zip(sample.boxes, sample.labels, difficult):
        obj = _sub(ann, "object")
        _sub(obj, "name", class_names[label])
        _sub(obj, "difficult", str(int(bool(hard))))
        bndbox = _sub(obj, "bndbox")
        for tag, v in zip(VOC_COORDS, (box[0] + 1, box[1] + 1, box[2], box[3])):  # 1-based, inclusive
            _sub(bndbox, tag, f"{float(v):.10g}")
    StdET.indent(ann, space="\t")
    return StdET.tostring(ann, encoding="unicode") + "\n"


def _sub(parent: StdET.Element, tag: str, text: str | None = None) -> StdET.Element:
    el = StdET.SubElement(parent, tag)
    el.text = text
    return el
