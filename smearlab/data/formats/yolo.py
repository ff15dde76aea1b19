"""YOLO: ``images/`` with one ``labels/<same name>.txt`` per image, class names in a side file.

Layout::

    root/data.yaml            names: [a, b] or {0: a, 1: b}   (or root/classes.txt, one per line)
    root/images/[split/]x.jpg
    root/labels/[split/]x.txt  one "class cx cy w h" line per object, normalised to [0, 1]
                              (or darknet's layout: each x.txt beside its image)

or darknet's own layout, as CVAT's "YOLO 1.1" export writes it (no ``images/`` folder; image
ids keep the sub-folder, ``obj_train_data/x``; the image lists ``train.txt`` ... are not read)::

    root/obj.names            one class name per line
    root/obj_train_data/x.jpg beside x.txt

Classes keep the order of ``data.yaml``/``classes.txt`` (the class ids of the label files).
The ``path``/``train``/``val`` keys of ``data.yaml`` are not used: the layout above is.
Image sizes are read from the file headers (not the pixels) to convert to pixels; images are
read as shown (EXIF orientation applied, as Ultralytics does). A label file belongs to the
image of the same relative path and stem, extensions compared without regard to case
(``A.PNG`` and ``A.TXT``); a name in another case (``a.txt`` for ``A.PNG``) only when no
label file has the exact name and the two are the only ones of that name without regard to
case (otherwise the image is skipped, not guessed).
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Sequence

import yaml

from ...core.errors import DataError
from ...core.files import write_text
from ..imageio import is_image_file
from ..sample import Sample, SmearDataset
from ._common import BoxCollector, Root, check_unique_names, dataset_name, number, save_samples

YAML_NAMES = ("data.yaml", "data.yml")
CLASSES_TXT = "classes.txt"
DARKNET_NAMES = "obj.names"  # darknet's class list, one per line (CVAT's "YOLO 1.1" export)
DARKNET_LISTS = ("train.txt", "valid.txt", "val.txt", "test.txt")  # darknet's image lists: no label files
TOLERANCE = 0.01  # normalised coordinates may leave [0, 1] by this much (rounding of exporters)


# -- reading --------------------------------------------------------------------------------------
def load(path: str | Path, *, split: str | None = None, class_names=None, class_map=None,
         strict: bool = False, name: str | None = None,
         allow_outside_root: bool = False) -> SmearDataset:
    """Load a YOLO dataset from its root folder or its ``data.yaml``.

    Parameters
    ----------
    path : the root folder, or the ``data.yaml`` in it.
    split : sub-folder of ``images/`` and ``labels/`` to load (e.g. ``"train"``); None loads
        every image under ``images/``, sub-folders included (image ids are the paths relative
        to ``images/``, without extension).
    class_names : classes to keep, in this order (objects of other classes are skipped); None
        keeps the file's classes in their order. Without ``data.yaml``/``classes.txt`` these
        are the names of class ids 0, 1, ... Names are matched by name or alias (case,
        plural), see :mod:`smearlab.data.classes`.
    class_map : ``{name in the file: name in class_names}`` for other spellings.
    strict : raise at the first skipped record instead of counting it.
    name : dataset name (default: the root folder name, plus the split).
    allow_outside_root : follow links that lead out of the root folder (refused and counted
        as skips by default; a class names file linked out of it is an error).

    Returns
    -------
    SmearDataset
        An image without a label file has no objects. ``skipped`` counts unreadable images or
        label files, label files without an image, malformed lines ("line N", 1-based: wrong
        field count, non-numeric value, class id out of range, coordinate outside [0, 1]),
        unknown classes, degenerate or far-outside boxes; ``fixed`` the boxes clipped to the image.

    Raises
    ------
    DataError
        when the layout or the class names file is missing or malformed, or under ``strict``
        at the first skipped record.
    """
    path = Path(path)
    root = path.parent if path.is_file() else path
    image_dir, label_dir = _child(root, "images"), _child(root, "labels")
    if not image_dir.is_dir() and not label_dir.is_dir() and split is None and is_darknet(root):
        image_dir = root  # CVAT's "YOLO 1.1": obj_train_data/x.jpg beside x.txt, obj.names at the top
    if not label_dir.is_dir():  # darknet's layout: each label file beside its image
        label_dir = image_dir
    if split is not None:
        image_dir, label_dir = image_dir / split, label_dir / split
    if not image_dir.is_dir():
        raise DataError(root, f"not a YOLO dataset: no folder {image_dir.relative_to(root)}/")
    inside = Root(root, allow_outside_root)
    file_names = _class_names(root, inside)
    if file_names is None and class_names is None:
        raise DataError(root, f"no class names: add {YAML_NAMES[0]} (names) or {CLASSES_TXT}, "
                              "or pass class_names")
    ids = file_names if file_names is not None else list(class_names)
    col = BoxCollector(class_names if class_names is not None else ids, strict, class_map)
    images = sorted(p for p in image_dir.rglob("*") if p.is_file() and is_image_file(p))
    labels, twins = _label_index(label_dir, DARKNET_LISTS if label_dir == root else ())
    if images and not labels and not twins:  # every image without objects: a layout not understood, not a result
        raise DataError(root, f"no label files: expected labels/{'' if split is None else split + '/'}<image "
                              "name>.txt beside images/ (or each .txt beside its image)")
    stems = {image.relative_to(image_dir).with_suffix("").as_posix() for image in images}
    near: dict[str, list[Path]] = {}  # label files no image names exactly, by lower-case name
    for k, p in labels.items():
        if k not in stems:
            near.setdefault(k.lower(), []).append(p)
    wanting = Counter(k.lower() for k in stems if k not in labels)
    used: set[Path] = set()
    for image in images:
        rel = image.relative_to(image_dir)
        key = rel.with_suffix("").as_posix()
        if key in twins:  # x.txt and x.TXT: which one holds the boxes cannot be told
            used.update(twins[key])
            col.skip(image, f"label files differing only in the case of their extension: "
                            f"{', '.join(p.name for p in twins[key])}; keep one")
            continue
        label = labels.get(key)  # the exact name wins; another case only when it names one image and one file
        if label is None and near.get(key.lower()):
            found = near[key.lower()]
            used.update(found)
            if len(found) > 1 or wanting[key.lower()] > 1:  # not guessed: counted, to be renamed
                col.skip(image, _case_problem(found, wanting[key.lower()], rel.with_suffix(".txt").name))
                continue
            label = found[0]
        label = label or label_dir / rel.with_suffix(".txt")
        used.add(label)
        if not inside.inside(image, col.skipped) or (label.is_file() and not inside.inside(label, col.skipped)):
            continue
        _add_image(col, image, label, ids, rel.with_suffix("").as_posix())
    _skip_orphan_labels(col, labels, used, image_dir, label_dir)
    default = dataset_name(root) if split is None else f"{dataset_name(root)}/{split}"
    return col.dataset(name or default, root, "yolo")


def _child(root: Path, name: str) -> Path:
    """``root/name``, or the sub-folder of ``root`` whose name is ``name`` in another case
    (``Labels/``, ``IMAGES/``), as the format detector finds it."""
    if (root / name).is_dir() or not root.is_dir():
        return root / name
    return next((c for c in sorted(root.iterdir()) if c.is_dir() and c.name.lower() == name), root / name)


def _label_index(label_dir: Path, lists: Sequence[str] = ()) -> tuple[dict[str, Path], dict[str, list[Path]]]:
    """Label files by relative path without the extension (``.txt`` in any case), and apart the
    names that several files share (``x.txt`` and ``x.TXT``); ``lists``: names of files at the
    top of ``label_dir`` that are no label files (darknet's image lists)."""
    found: dict[str, list[Path]] = {}
    if label_dir.is_dir():
        for p in sorted(label_dir.rglob("*")):
            if (p.suffix.lower() == ".txt" and p.is_file() and p.name.lower() != CLASSES_TXT
                    and not (p.parent == label_dir and p.name.lower() in lists)):
                found.setdefault(p.relative_to(label_dir).with_suffix("").as_posix(), []).append(p)
    return ({k: v[0] for k, v in found.items() if len(v) == 1},
            {k: v for k, v in found.items() if len(v) > 1})


def _case_problem(found: list[Path], images: int, exact: str) -> str:
    """Why no label file is chosen for an image whose label files differ from its name only in case."""
    if len(found) > 1:
        return (f"{len(found)} label files match it only without regard to case ({', '.join(p.name for p in found)}): "
                f"which one is its label cannot be told; name it {exact}")
    return (f"label file {found[0].name} matches {images} images only without regard to case: which one it "
            f"belongs to cannot be told; name it {exact}")


def is_darknet(folder: Path) -> bool:
    """Whether ``folder`` or one of its sub-folders holds an image with a label file of its
    name beside it (``x.jpg`` and ``x.txt``: darknet's layout, as in CVAT's "YOLO 1.1" export).

    Parameters
    ----------
    folder : the folder to look at.
    """
    for d in (folder, *(c for c in sorted(folder.iterdir()) if c.is_dir() and not c.name.startswith("."))):
        files = [f for f in d.iterdir() if f.is_file()]
        texts = {f.stem.lower() for f in files if f.suffix.lower() == ".txt"}
        if any(f.stem.lower() in texts for f in files if is_image_file(f)):
            return True
    return False


def _class_names(root: Path, inside: Root) -> list[str] | None:
    """Class names from ``data.yaml`` (or ``.yml``), else ``classes.txt``, else darknet's
    ``obj.names``, else None."""
    for fn in YAML_NAMES:
        if (root / fn).is_file():
            return _yaml_names(inside.check(root / fn))
    for fn in (CLASSES_TXT, DARKNET_NAMES):
        if (root / fn).is_file():
            names = [line.strip() for line in _read(inside.check(root / fn)).splitlines() if line.strip()]
            if not names:
                raise DataError(root / fn, "no class names in the file")
            check_unique_names(names, root / fn)
            return names
    return None


def _yaml_names(path: Path) -> list[str]:
    """The ``names`` of a ``data.yaml``: a list, or a mapping of the ids 0..n-1 to names.

    Each name must be a plain value (text or number): a list or mapping in its place is
    refused, which also keeps YAML alias "bombs" from being expanded into text.
    """
    try:
        data = yaml.safe_load(_read(path))
    except yaml.YAMLError as e:
        raise DataError(path, f"malformed YAML: {e}") from None
    except RecursionError:
        raise DataError(path, "YAML nested too deeply") from None
    names = data.get("names") if isinstance(data, dict) else None
    if isinstance(names, dict):
        by_id = {int(k): v for k, v in names.items()
                 if (isinstance(k, int) and not isinstance(k, bool)) or (isinstance(k, str) and k.isdecimal())}
        if sorted(by_id) != list(range(len(names))):
            keys = [k if isinstance(k, (str, int, float)) else type(k).__name__ for k in names]
            raise DataError(path, f"'names' keys must be the class ids 0..{len(names) - 1}, got {keys}")
        names = [by_id[i] for i in range(len(by_id))]
    if not isinstance(names, list) or not names:
        raise DataError(path, "no 'names' list or {id: name} mapping")
    bad = [i for i, n in enumerate(names) if isinstance(n, bool) or not isinstance(n, (str, int, float))]
    if bad:
        raise DataError(path, f"class names must be text, got a {type(names[bad[0]]).__name__} for class "
                              f"id {bad[0]}")
    names = [str(n) for n in names]
    check_unique_names(names, path)
    return names


def _read(path: Path) -> str:
    """The text of a small side file, or DataError naming it."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(path, f"cannot read the file: {e}") from None


def _add_image(col: BoxCollector, image: Path, label: Path, ids: list[str], image_id: str) -> None:
    """Add one image with the objects of its label file (none when there is no label file)."""
    geometry = col.geometry(image, None, label)
    if geometry is None:
        return
    size, orientation = geometry
    try:
        lines = _read(label).splitlines() if label.is_file() else []
    except DataError as e:
        col.skip(e.path, e.problem)
        return
    parsed = [_parse_line(col, label, text, f"line {n}", ids, size)
              for n, text in enumerate(lines, 1) if text.strip()]
    col.add(image_id, image, label, [p for p in parsed if p is not None], size=size,
            orientation=orientation)


def _parse_line(col: BoxCollector, label: Path, text: str, rec: str, ids: list[str], size):
    """``(xyxy, class name, record)`` of one label line, or None after counting a skip."""
    fields = text.split()
    cls, values = _class_id(fields[0]), [number(f) for f in fields[1:]]
    problem = None
    if len(fields) != 5:
        problem = f"expected 5 fields 'class cx cy w h', got {len(fields)}"
    elif cls is None or not 0 <= cls < len(ids):
        problem = f"class id {fields[0]!r} is not one of 0..{len(ids) - 1}"
    elif None in values:
        problem = f"non-numeric coordinate in {text.strip()!r}"
    elif not all(-TOLERANCE <= v <= 1 + TOLERANCE for v in values):
        problem = f"normalised coordinate outside [0, 1]: {text.strip()!r}"
    if problem is not None:
        col.skip(label, f"malformed label line: {problem}", rec)
        return None
    kept = col.known(ids[cls], label, rec)
    if kept is None:
        return None
    (cx, cy, w, h), (ih, iw) = values, size
    return [(cx - w / 2) * iw, (cy - h / 2) * ih, (cx + w / 2) * iw, (cy + h / 2) * ih], kept, rec


def _class_id(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _skip_orphan_labels(col: BoxCollector, labels: dict[str, Path], used: set[Path], image_dir: Path,
                        label_dir: Path) -> None:
    """Count label files that belong to no image (usually a renamed or missing image)."""
    for label in sorted(set(labels.values()) - used):
        col.skip(label, "label file without an image: no matching file in "
                        f"{image_dir / label.relative_to(label_dir).parent}")


# -- writing --------------------------------------------------------------------------------------
def save(dataset: SmearDataset, root: str | Path) -> Path:
    """Write ``dataset`` as ``root/images/``, ``root/labels/``, ``classes.txt`` and ``data.yaml``.

    Boxes are written normalised with 6 decimals (under 1e-3 px of rounding for images up to
    1000 px). An image is copied when the sample has a file, else written as PNG. Every file
    is written atomically.

    Parameters
    ----------
    dataset : the SmearDataset to write.
    root : the output folder (created if needed).

    Returns
    -------
    Path
        ``root``.
    """
    root = Path(root)
    save_samples(dataset, root / "images", root / "labels", ".txt",
                 lambda sample, image: _label_lines(sample))
    write_text(root / CLASSES_TXT, "".join(n + "\n" for n in dataset.class_names))
    config = {"path": str(root.resolve()), "train": "images", "val": "images",
              "nc": len(dataset.class_names), "names": list(dataset.class_names)}
    write_text(root / YAML_NAMES[0], yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    return root


def _label_lines(sample: Sample) -> str:
    """The label file text of one sample: one normalised ``class cx cy w h`` line per box."""
    h, w = sample.hw
    return "".join(f"{label} {(x0 + x1) / 2 / w:.6f} {(y0 + y1) / 2 / h:.6f} "
                   f"{(x1 - x0) / w:.6f} {(y1 - y0) / h:.6f}\n"
                   for (x0, y0, x1, y1), label in zip(sample.boxes.tolist(), sample.labels.tolist()))
