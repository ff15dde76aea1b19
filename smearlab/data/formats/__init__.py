"""One module per on-disk format; this module finds the right one for a path.

Every format module exposes ``load(path, **options) -> SmearDataset``; formats that can be
written also expose ``save(dataset, path)``. :func:`detect_format` looks at the files, not only
at the name, and says what it found when it cannot decide. :func:`find_dataset` also looks
one folder down (a cloned repository holding the dataset in a sub-folder), and :func:`load`
picks the split of a YOLO or COCO dataset.
"""
from __future__ import annotations

import importlib
import json
import logging
import re
from pathlib import Path, PurePosixPath

import numpy as np
import yaml

from ...core.errors import DataError
from ..imageio import check_bits, is_image_file

log = logging.getLogger("smearlab.data")

FORMATS = ("voc", "bbbc041", "iml", "coco", "yolo", "dsb2018", "zheng", "imagefolder", "dicom", "qupath")
WRITABLE = ("voc", "coco", "yolo")
#: Formats whose datasets hold several splits that ``load(..., split=NAME)`` chooses from.
SPLIT_FORMATS = ("yolo", "coco")
#: Where the COCO file of split ``s`` may be in a folder, first found wins.
COCO_SPLIT_FILES = ("{s}.json", "instances_{s}.json", "annotations/instances_{s}.json",
                    "annotations/{s}.json", "{s}/_annotations.coco.json")
ROBOFLOW_COCO = "_annotations.coco.json"


def module(fmt: str):
    """The module implementing format ``fmt``.

    Parameters
    ----------
    fmt : one of :data:`FORMATS`; another name is a ``ValueError``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; known formats: {', '.join(FORMATS)}")
    return importlib.import_module(f"{__name__}.{fmt}")


#: the top-level keys of a COCO file (any one of them makes a JSON object COCO)
COCO_KEYS = ("images", "annotations", "categories")
#: how far :func:`json_kind` reads a JSON object for its top-level keys (past long ``info`` or
#: ``licenses`` blocks)
JSON_SCAN_BYTES = 16 << 20


def json_kind(path: Path) -> str | None:
    """Which JSON schema a file holds: 'coco', 'bbbc041', 'iml' or None.

    Parameters
    ----------
    path : the JSON file (its first 4096 bytes are read; a JSON object whose COCO keys are not
        among them is read key by key at its top level, up to :data:`JSON_SCAN_BYTES`, so that a
        long ``info`` or ``licenses`` block before ``images`` is passed over; an unreadable file
        is None).
    """
    try:
        with open(path, "rb") as f:
            raw = f.read(4096)
        head = raw.decode("utf-8-sig", "replace")  # a byte-order mark is no JSON text
    except OSError:
        return None
    h = "".join(head.split())
    if h.startswith("{") and ('"images"' in head or '"annotations"' in head or '"categories"' in head):
        return "coco"
    if h.startswith("{") and len(raw) == 4096 and _has_top_level_key(path, COCO_KEYS):  # the file goes on
        return "coco"
    if h.startswith("[") and ('"bounding_box"' in head or '"pathname"' in head):
        return "bbbc041"
    if h.startswith("[") and '"image_name"' in head:
        return "iml"
    return None


def _has_top_level_key(path: Path, keys: tuple[str, ...]) -> bool:
    """Whether the JSON object in ``path`` has one of ``keys`` at its top level: its keys are read
    in order, each value decoded only to be passed over, from the first MiB of the file and, when
    a value runs past it, from up to :data:`JSON_SCAN_BYTES`."""
    decoder, space = json.JSONDecoder(), re.compile(r"[ \t\n\r]*")
    for size in (1 << 20, JSON_SCAN_BYTES):
        try:
            with open(path, "rb") as f:
                data = f.read(size)
        except OSError:
            return False
        text = data.decode("utf-8-sig", "replace")
        i = space.match(text, 0).end() + 1  # past the "{"
        try:
            while True:
                i = space.match(text, i).end()
                if text[i] == "}":
                    return False
                key, i = decoder.raw_decode(text, i)
                if key in keys:
                    return True
                i = space.match(text, i).end()
                if text[i] != ":":
                    return False  # no JSON object
                _, i = decoder.raw_decode(text, space.match(text, i + 1).end())  # the value, passed over
                i = space.match(text, i).end()
                if text[i] == "}" or text[i] != ",":
                    return False
                i += 1
        except (ValueError, IndexError):  # the text ends inside a value (or is no JSON)
            if len(data) < size:
                return False  # the whole file was read
    return False


def detect_format(path: str | Path) -> str:
    """Guess the format of a file or folder from its contents.

    When nothing matches at the top level of a folder but exactly one of its sub-folders
    holds a dataset (a cloned repository, say), that dataset's format is returned and the
    sub-folder is logged; :func:`find_dataset` returns the sub-folder too.

    Parameters
    ----------
    path : a dataset file (JSON, XML, YAML, DICOM) or folder.

    Raises
    ------
    DataError
        when nothing matches, naming what was looked for, or when several sub-folders hold
        datasets, naming them.
    """
    return find_dataset(path)[1]


def find_dataset(path: str | Path) -> tuple[Path, str]:
    """The dataset at ``path`` and its format: ``path`` itself, else its one sub-folder with one.

    The sub-folders are looked at only when nothing is detected at the top level.

    Parameters
    ----------
    path : a dataset file or folder.

    Returns
    -------
    (Path, str)
        the file or folder to load, and its format.

    Raises
    ------
    DataError
        when nothing matches (naming what was looked for), when several sub-folders hold
        datasets (naming them, to pass one), when the folder holds the annotations of several
        formats (naming them, to name one with ``format=``), or when it is the ``images/``
        folder of a YOLO dataset (naming the dataset).
    """
    p = Path(path)
    try:
        return p, _detect_here(p)
    except _Undecidable:
        raise
    except DataError as top:
        if not p.is_dir():
            raise
        found = []
        for sub in sorted(c for c in p.iterdir() if c.is_dir() and not c.name.startswith(".")):
            try:
                found.append((sub, _detect_here(sub)))
            except (DataError, OSError):
                continue
        if not found:
            raise DataError(p, f"{top.problem}, here or in a sub-folder; name the format with "
                               "--format (format= in Python)") from None
        if len(found) > 1:
            listed = ", ".join(f"{sub.name} ({fmt})" for sub, fmt in found)
            raise DataError(p, f"no dataset at the top level, but {len(found)} sub-folders hold one: "
                               f"{listed}; pass one of them") from None
        sub, fmt = found[0]
        log.info("%s: no dataset at the top level; using its sub-folder %s (%s)", p, sub.name, fmt)
        return sub, fmt


class _Undecidable(DataError):
    """A folder whose format is not to be guessed (several formats' annotations, or the
    ``images/`` folder of a YOLO dataset): its sub-folders are not searched instead."""


def _detect_here(p: Path) -> str:
    """The format of the file or folder ``p`` itself (sub-folders are not searched).

    A folder holding the annotations of more than one format (VOC ``Annotations/`` and a COCO
    file, say) is refused, naming them: name the format to read."""
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
        if p.suffix.lower() == ".geojson":
            return "qupath"
        raise DataError(p, "cannot tell the annotation format of this file")
    names = {c.name for c in p.iterdir()}
    lower = {n.lower() for n in names}
    found: dict[str, str] = {}  # format -> what gave it away: more than one is refused
    if "annotations" in lower and any((p / n).is_dir() for n in names if n.lower() == "annotations") \
            and any(f.suffix.lower() == ".xml" for d in p.iterdir() if d.name.lower() == "annotations"
                    for f in d.iterdir()):
        found["voc"] = "Annotations/*.xml"
    if "stage1_train" in names or (p.name == "stage1_train") or \
            any((c / "images").is_dir() and (c / "masks").is_dir() for c in p.iterdir() if c.is_dir()):
        found["dsb2018"] = "<sample>/images/ + masks/"
    if any(n.lower().startswith("class labels of dataset") for n in names) or \
            any(n.lower().startswith("dataset ") and (p / n).is_dir() for n in names):
        found["zheng"] = "'Dataset N/'"
    if "data.yaml" in lower or "classes.txt" in lower or "labels" in lower:
        found["yolo"] = " / ".join(n for n in sorted(names) if n.lower() in ("data.yaml", "classes.txt", "labels"))
    jsons = sorted(c for c in p.iterdir() if c.suffix.lower() == ".json")
    for j in jsons:
        kind = json_kind(j)
        if kind:
            found.setdefault(kind, j.name)
    if "coco" not in found:
        files = coco_files(p)  # annotations/*.json, or the Roboflow layout <split>/_annotations.coco.json
        if files:
            found["coco"] = files[0].relative_to(p).as_posix()
    if len(found) > 1:  # the first rule won, and the other annotations were never read
        listed = ", ".join(f"{fmt} ({why})" for fmt, why in found.items())
        raise _Undecidable(p, f"the folder holds annotations of {len(found)} formats: {listed}; name the one "
                              "to read with --format (format= in Python)")
    if found:
        return next(iter(found))
    if module("dsb2018").is_sample_folder(p):  # one DSB2018 image folder, not classes images/+masks/
        return "dsb2018"
    if any(c.suffix.lower() == ".geojson" for c in p.iterdir()):
        return "qupath"
    if module("yolo").is_darknet(p):  # x.jpg beside x.txt (CVAT "YOLO 1.1"): no folder of class images
        return "yolo"
    subdirs = [c for c in p.iterdir() if c.is_dir() and not c.name.startswith(".")]
    if subdirs and all(any(is_image_file(f) for f in d.iterdir()) or not any(d.iterdir()) for d in subdirs):
        parent = p.resolve().parent
        if all(_split_role(d.name, True) or _split_role(d.name, False) for d in subdirs) and \
                any((parent / n).exists() for n in ("labels", "data.yaml", "data.yml")):
            # the images/ folder of a YOLO dataset: its splits would be read as image classes
            raise _Undecidable(p, f"this is the images/ folder of the YOLO dataset {parent} (its sub-folders "
                                  f"{', '.join(sorted(d.name for d in subdirs))} are splits, not classes): "
                                  f"pass {parent} (with --split to choose a split)")
        return "imagefolder"
    if any(c.suffix.lower() in (".dcm", ".dicom") for c in p.iterdir()):
        return "dicom"
    raise DataError(p, "cannot detect the dataset format (looked for VOC Annotations/, COCO/BBBC041/"
                       "IML JSON, YOLO labels/, data.yaml or labels beside the images, DSB2018 images/+masks/, Zheng "
                       "'Dataset N/', class folders of images, DICOM files, QuPath .geojson)")


def coco_files(folder: Path) -> list[Path]:
    """The COCO JSON files of a folder: ``*.json``, ``annotations/*.json`` and the Roboflow
    export's ``<split>/_annotations.coco.json``.

    Parameters
    ----------
    folder : the folder to look in.
    """
    candidates = [f for d in (folder, folder / "annotations") if d.is_dir()
                  for f in sorted(d.iterdir()) if f.suffix.lower() == ".json"]
    candidates += sorted(d / ROBOFLOW_COCO for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    return [f for f in candidates if f.is_file() and json_kind(f) == "coco"]


def coco_splits(folder: Path) -> list[str]:
    """The split names of a folder of COCO files: a file's name without ``.json`` and an
    ``instances_`` prefix, or the folder name of a Roboflow ``_annotations.coco.json``.

    Parameters
    ----------
    folder : the folder of COCO files (see :func:`coco_files`).
    """
    return sorted({f.parent.name if f.name == ROBOFLOW_COCO else f.stem.removeprefix("instances_")
                   for f in coco_files(folder)})


def _coco_split_file(folder: Path, split: str) -> Path | None:
    """The COCO file of ``split`` in ``folder`` (see :data:`COCO_SPLIT_FILES`), or None."""
    for pattern in COCO_SPLIT_FILES:
        f = folder / pattern.format(s=split)
        if f.is_file() and json_kind(f) == "coco":
            return f
    return None


def _coco_file(folder: Path, split: str | None) -> Path:
    """The COCO file to load from a folder: the split's, or the folder's only one."""
    if split is not None:
        f = _coco_split_file(folder, split)
        if f is None:
            available = ", ".join(coco_splits(folder)) or "none (no COCO JSON file here)"
            raise DataError(folder, f"no COCO file for split {split!r} (looked for "
                                    f"{', '.join(p.format(s=split) for p in COCO_SPLIT_FILES)}); "
                                    f"available splits: {available}")
        return f
    files = coco_files(folder)
    if len(files) == 1:
        return files[0]
    if not files:
        raise DataError(folder, "no COCO JSON file in the folder (looked for *.json, annotations/*.json "
                                f"and <split>/{ROBOFLOW_COCO})")
    listed = ", ".join(f.relative_to(folder).as_posix() for f in files)
    raise DataError(folder, f"the folder holds {len(files)} COCO files ({listed}): choose one with "
                            f"--split ({', '.join(coco_splits(folder))}) or pass the file itself")


def _coco_image_root(folder: Path, json_path: Path, split: str | None) -> Path | list[Path] | None:
    """Image folder(s) of a file in ``annotations/``: the split's folder (official COCO layout),
    else the dataset folder, then its ``images/`` (CVAT's export); None for a file elsewhere
    (images beside the file)."""
    if json_path.parent != folder / "annotations":
        return None
    name = split or json_path.stem.removeprefix("instances_")
    for candidate in (folder / name, folder / "images" / name):
        if candidate.is_dir():
            return candidate
    return [folder, folder / "images"]


#: split names a dataset may publish, by their role
SPLIT_ROLES = {"train": ("train", "training"), "val": ("val", "valid", "validation"), "test": ("test", "testing")}


def _split_role(name: str, exact: bool) -> str | None:
    """The role of a split name: one of :data:`SPLIT_ROLES`' spellings (``exact``), else such a
    spelling with a number (``train2017``, ``val_1``, ``test-2``), case-insensitive; or None."""
    low = name.lower()
    for role, spellings in SPLIT_ROLES.items():
        if low in spellings if exact else re.fullmatch(rf"(?:{'|'.join(spellings)})[-_]?\d+", low):
            return role
    return None


def _yaml_split_roles(folder: Path, names: list[str]) -> dict[str, str]:
    """``{role: split}`` from the ``train:``/``val:``/``test:`` keys of a YOLO ``data.yaml``
    whose path ends in one of the ``images/<split>`` folders ``names``; ``{}`` when there are none."""
    for fn in ("data.yaml", "data.yml"):
        try:
            data = yaml.safe_load((folder / fn).read_text(encoding="utf-8-sig", errors="replace"))
        except (OSError, yaml.YAMLError):
            continue
        if not isinstance(data, dict):
            return {}
        out = {}
        for role, key in (("train", "train"), ("val", "val"), ("test", "test")):
            value = data.get(key)
            last = PurePosixPath(value.replace("\\", "/")).name if isinstance(value, str) else None
            if last in names and last not in out.values():
                out[role] = last
        return out
    return {}


def published_splits(path: str | Path) -> dict[str, str]:
    """``{role: split name}`` of the splits a dataset publishes (roles ``train``, ``val``,
    ``test``, from :data:`SPLIT_ROLES`, case-insensitive): a YOLO dataset's ``images/<split>/``
    folders or a folder of COCO files' splits (:func:`coco_splits`); ``{}`` for other formats,
    an archive, or a path that is no dataset. A name with a number (``train2017``,
    ``val2017``) has the role of its spelling; a YOLO ``data.yaml`` whose ``train:``, ``val:``
    or ``test:`` names one of the ``images/`` folders decides that role first.

    Parameters
    ----------
    path : the dataset's folder (or file).
    """
    try:
        root, fmt = find_dataset(path)
    except (DataError, OSError):
        return {}
    out = {}
    if fmt == "yolo":
        folder = root.parent if root.is_file() else root
        images = folder / "images"
        names = sorted(d.name for d in images.iterdir() if d.is_dir()) if images.is_dir() else []
        out = _yaml_split_roles(folder, names)
    elif fmt == "coco" and root.is_dir():
        names = coco_splits(root)
    else:
        return {}
    for exact in (True, False):  # "val" before "val2017"
        for n in names:
            role = _split_role(n, exact)
            if role is not None and role not in out and n not in out.values():
                out[role] = n
    return out


def _check_yolo_split(path: Path, split: str) -> None:
    """Refuse a split that is not a sub-folder of the YOLO dataset's ``images/``, listing those that are."""
    root = path.parent if path.is_file() else path
    if not (root / "images").is_dir():
        return  # the loader names the missing folder
    splits = sorted(d.name for d in (root / "images").iterdir() if d.is_dir() and not d.name.startswith("."))
    if not splits:
        raise DataError(root, "this YOLO dataset has no splits (images/ holds the images directly); "
                              "leave out --split")
    if split not in splits:
        raise DataError(root, f"no split {split!r} in images/; available splits: {', '.join(splits)}")


def load(path: str | Path, format: str | None = None, split: str | None = None, **options):
    """Load a dataset from ``path`` in its native format (detected unless ``format`` is given).

    Parameters
    ----------
    path : the dataset's file or folder. Without ``format``, a folder whose one sub-folder
        holds the dataset is accepted too (see :func:`find_dataset`).
    format : one of :data:`FORMATS`; None detects it.
    split : for the formats of :data:`SPLIT_FORMATS`: YOLO's ``images/<split>/``; for a
        folder of COCO files, ``<split>.json``, ``instances_<split>.json``,
        ``annotations/instances_<split>.json`` or ``<split>/_annotations.coco.json``.
        A COCO folder holding one COCO file needs no split.
    options : go to the format's loader (see ``smearlab.data.formats.<format>.load``), except
        ``sensor_bits``: the camera's bits per value (e.g. 12) for image files wider than 8 bits,
        so that every image is scaled to 8 bits alike (see :mod:`smearlab.data.imageio`).

    Raises
    ------
    DataError
        when nothing is detected, a split is given to a format without splits or is not in
        the dataset (the available ones are listed), or when no image was found (the
        skipped records are summarised).
    ValueError
        for an unknown ``format``.
    """
    path = Path(path)
    sensor_bits = check_bits(options.pop("sensor_bits", None))
    if format is None:
        path, fmt = find_dataset(path)
    else:
        fmt = format
        module(fmt)  # an unknown name is refused before anything is read
    if split is not None and (split in ("", ".", "..") or Path(split).name != split):
        raise DataError(path, f"--split {split!r}: expected the name of a split, e.g. train")
    if split is not None and fmt not in SPLIT_FORMATS:
        raise DataError(path, f"{fmt} datasets have no splits (--split goes with "
                              f"{' and '.join(SPLIT_FORMATS)}); pass the split's own folder or file")
    if fmt == "yolo" and split is not None:
        _check_yolo_split(path, split)
        ds = module(fmt).load(path, split=split, **options)
    elif fmt == "coco" and path.is_dir():
        json_path = _coco_file(path, split)
        image_root = _coco_image_root(path, json_path, split)
        if image_root is not None:
            options.setdefault("image_root", image_root)
        if split is not None:
            from ._common import dataset_name  # here: _common imports this module
            options.setdefault("name", f"{dataset_name(path)}/{split}")
        log.info("%s: loading the COCO file %s", path, json_path)
        ds = module(fmt).load(json_path, **options)
    elif fmt == "coco" and split is not None:
        raise DataError(path, "one COCO file is one split already: pass --split with the folder "
                              "holding the COCO files, or pass the file without --split")
    else:
        ds = module(fmt).load(path, **options)
    if format is not None and len(ds) == 0:
        raise DataError(path, f"no images found as {fmt}{_empty_note(path, fmt, ds)}")
    if len(ds) == 0:  # a guess read as an empty dataset would pass for "no cells"
        raise DataError(path, f"no image could be read as {fmt}, the format guessed from the files"
                              f"{_empty_note(path, fmt, ds)}; if it is another one, name it with --format "
                              "(format= in Python)")
    if sensor_bits is not None:
        for s in ds:
            s.sensor_bits = sensor_bits
            if s.path is not None and isinstance(s._image, np.ndarray):  # read while loading: read again at that scale
                s._image = None
    return ds


def _empty_note(path: Path, fmt: str, ds) -> str:
    """Why a dataset loaded as ``fmt`` may be empty: the skips, and the format detected instead."""
    note = ""
    if ds.skipped:
        reasons = ", ".join(f"{reason} ({n})" for reason, n in ds.skipped.counts().most_common(3))
        note += f" ({len(ds.skipped)} records skipped: {reasons})"
    try:
        detected = find_dataset(path)[1]
    except (DataError, OSError):
        detected = None
    if detected is not None and detected != fmt:
        note += f"; the files look like {detected}: leave out --format, or pass --format {detected}"
    return note


def save(dataset, path: str | Path, format: str) -> Path:
    """Write ``dataset`` to ``path`` in ``format`` (one of :data:`WRITABLE`).

    Parameters
    ----------
    dataset : the SmearDataset to write.
    path : where to write: the dataset folder (VOC, YOLO) or the JSON file (COCO).
    format : ``"voc"``, ``"coco"`` or ``"yolo"``.

    Returns
    -------
    Path
        what the format's ``save`` returns: the folder, or the COCO JSON file.
    """
    if format not in WRITABLE:
        raise ValueError(f"cannot write format {format!r}; writable formats: {', '.join(WRITABLE)}")
    return module(format).save(dataset, path)
