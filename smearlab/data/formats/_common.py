"""Helpers shared by the format modules, so that each of those holds only its format.

* box formats (``voc``, ``bbbc041``, ``iml``, ``yolo``): :class:`BoxCollector`, :func:`number`,
  :func:`positive_int`;
* every format: :func:`image_geometry` (the size and orientation of an image as read, checked
  against the size its annotation declares), :class:`Root` (files must lie inside the dataset
  root), :func:`remap_classes` (a dataset in another class list), :func:`dataset_name`;
* JSON formats (``bbbc041``, ``iml``, ``coco``): :func:`read_json`, :func:`find_json`,
  :func:`dig`, and for the list-of-images schemas :func:`entry_image` and :func:`entry_objects`;
* paths written in annotation files: :func:`path_name_problem`, :func:`is_absolute_name`,
  :func:`resolve_inside` (nothing may lead outside the dataset root);
* mask formats (``dsb2018``, ``zheng``): :func:`check_mask_size`;
* writers (``voc``, ``yolo``): :func:`save_samples`, :func:`file_stems`, :func:`save_image_file`.
"""
from __future__ import annotations

import dataclasses
import json
from collections import Counter
import math
import os
import shutil
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Callable, Sequence

import numpy as np

from ...core.errors import DataError
from ...core.files import atomic_path, write_text
from ..boxes import clean_boxes
from ..classes import canonical, match_classes
from ..imageio import image_info, write_image
from ..sample import Sample, SkipLog, SmearDataset, log, per_box_meta
from . import json_kind


# -- the dataset root -----------------------------------------------------------------------------
OUTSIDE_ROOT_HINT = "pass allow_outside_root=True to follow links out of the dataset"


class Root:
    """The folder a dataset lives in; every file a loader reads must resolve inside it.

    A file that resolves outside (a symbolic link to a private file, ``..`` in a name written
    in an annotation file) is refused by default: an image linked to ``~/.ssh/id_rsa`` must not
    end up in a report, nor ``/etc/passwd`` become a class list. ``allow_outside_root=True``
    (every loader's option) follows such links, for splits built as folders of links.

    Parameters
    ----------
    folder : the dataset root (itself may be a link: it is resolved once).
    allow_outside_root : follow links out of the root.
    """

    def __init__(self, folder: str | Path, allow_outside_root: bool = False):
        self.folder = Path(folder)
        self.allow = bool(allow_outside_root)
        try:
            self._real = os.path.realpath(self.folder)
        except (OSError, ValueError):
            self._real = str(self.folder)
        self._folders: dict[str, str] = {}  # real path of each folder met (a folder of many files)

    def _realpath(self, path: str | Path) -> str:
        """``os.path.realpath(path)``, resolving each folder once: a file that is not itself a
        link lies where its folder really is."""
        path = os.path.abspath(path)
        folder, name = os.path.split(path)
        if os.path.islink(path) or name in ("", ".", ".."):
            return os.path.realpath(path)
        if folder not in self._folders:
            self._folders[folder] = os.path.realpath(folder)
        return os.path.join(self._folders[folder], name)

    def problem(self, path: str | Path) -> str | None:
        """Why ``path`` may not be read (it resolves outside the root), or None.

        Parameters
        ----------
        path : the file a loader is about to read.
        """
        if self.allow:
            return None
        try:
            real = self._realpath(path)
        except (OSError, ValueError, RuntimeError) as e:
            return f"cannot resolve the path ({e})"
        if real == self._real or real.startswith(self._real.rstrip(os.sep) + os.sep):
            return None
        return f"resolves to {real}, outside the dataset root {self._real} (refused; {OUTSIDE_ROOT_HINT})"

    def inside(self, path: str | Path, skipped: SkipLog | None = None, record: str | None = None) -> bool:
        """Whether ``path`` may be read; when not, count a skip in ``skipped`` (if given).

        Parameters
        ----------
        path : the file a loader is about to read.
        skipped : optional :class:`~smearlab.data.sample.SkipLog` that counts a refusal.
        record : the record naming the file, for the skip (e.g. ``"entry 3"``).
        """
        problem = self.problem(path)
        if problem is not None and skipped is not None:
            skipped.add(path, problem, record)
        return problem is None

    def check(self, path: str | Path) -> Path:
        """``path`` itself, or :class:`DataError` when it resolves outside the root (side files
        such as a class list, which cannot be skipped).

        Parameters
        ----------
        path : the side file to read.
        """
        problem = self.problem(path)
        if problem is not None:
            raise DataError(path, problem)
        return Path(path)


# -- images as read -------------------------------------------------------------------------------
def image_geometry(image: Path, declared: tuple[int, int] | None, skipped: SkipLog, fixed: SkipLog,
                   source, record: str | None = None) -> tuple[tuple[int, int], str] | None:
    """``((height, width), orientation)`` of an image as it will be read, or None after a skip.

    The image is read as shown (EXIF orientation applied; see :mod:`smearlab.data.imageio`).
    When the annotation file declares a size (VOC ``<size>``, COCO ``width``/``height``,
    BBBC041 ``shape``) it must match: a declared size that matches only the stored pixels
    (an annotation tool that ignored the EXIF tag) selects ``orientation="stored"`` and is
    counted in ``fixed``; a size that matches neither is a skip naming both sizes.

    Parameters
    ----------
    image : the image file.
    declared : ``(height, width)`` the annotation file gives, or None.
    skipped : :class:`~smearlab.data.sample.SkipLog` counting unreadable images and size mismatches.
    fixed : :class:`~smearlab.data.sample.SkipLog` counting images read as stored, and those whose
        EXIF orientation the declared size cannot settle (read as shown, said).
    source : the annotation file, named in the messages.
    record : the image's record in ``source`` (e.g. ``"entry 3"``), for the report.
    """
    try:
        info = image_info(image)
    except DataError as e:
        skipped.add(e.path, e.problem, record)
        return None
    shown = info.shown_hw
    if declared is not None and info.rotated and info.stored_hw == shown and tuple(declared) == shown:
        # a flip, a half turn or a square image: the size cannot tell whether the tool that drew
        # the boxes applied the tag; said, as the reading taken for the user
        fixed.add(image, f"EXIF orientation {info.exif_orientation} with the same size either way: whether "
                         f"{Path(str(source)).name} drew its boxes on the shown or the stored pixels cannot be "
                         "told; read as shown (check a drawn sample)", record)
        return shown, "exif"
    if declared is None or tuple(declared) == shown:
        return shown, "exif"
    h, w = declared
    if info.rotated and tuple(declared) == info.stored_hw:
        fixed.add(image, f"EXIF orientation ignored: {Path(str(source)).name} gives the size "
                         f"{w}x{h} of the stored pixels, not the {shown[1]}x{shown[0]} shown "
                         f"(orientation tag {info.exif_orientation}); read as stored", record)
        return info.stored_hw, "stored"
    turned = f" (stored {info.stored_hw[1]}x{info.stored_hw[0]}, EXIF orientation " \
             f"{info.exif_orientation})" if info.rotated else ""
    skipped.add(image, f"size differs from the annotation: image is {shown[1]}x{shown[0]}{turned} but "
                       f"{Path(str(source)).name} says {w}x{h}", record)
    return None


# -- collecting the samples of a box format -------------------------------------------------------
class BoxCollector:
    """Gathers the samples of one load: class filter, box cleaning, skips and repairs.

    Parameters
    ----------
    class_names : classes to keep, in this order; objects of other classes are skipped as
        ``unknown class``. None keeps every class of the images kept (not those only a skipped
        duplicate or mis-sized image holds), sorted by name (so that every split of a dataset gets
        the same class indices).
    strict : raise :class:`DataError` at the first problem instead of counting a skip (within
        one image, problems with an object's fields come before problems with its box geometry).
        Repairs (boxes clipped to the image) are still only counted in ``fixed``.
    class_map : ``{name in the file: name in class_names}`` for names that are neither equal
        nor an alias (case, plural) of a class in ``class_names``; see
        :func:`smearlab.data.classes.match_classes`. What was mapped is logged once.
    """

    def __init__(self, class_names=None, strict: bool = False, class_map=None):
        self.class_names = None if class_names is None else list(class_names)
        self.class_map = dict(class_map or {})
        if self.class_map and self.class_names is None:
            raise ValueError("class_map needs class_names: the class list to map onto")
        self.skipped = SkipLog(strict=strict)
        self.fixed = SkipLog(kind="fixed")
        self._seen: set[str] = set()
        self._names: dict[str, str | None] = {}
        self._ids: dict[str, set] = {}  # image id -> the files added under it
        self._pending: list[tuple] = []

    def skip(self, path, reason: str, record: str | None = None) -> None:
        """Count a refused record (raise under ``strict``).

        Parameters
        ----------
        path : the file the record comes from.
        reason : why it was refused.
        record : optional name of the record within the file.
        """
        self.skipped.add(path, reason, record)

    def known(self, name: str, path, record: str) -> str | None:
        """The class name objects of file class ``name`` are kept as (``name`` itself, or the
        class of ``class_names`` it maps to), or None after counting an unknown-class skip.

        Parameters
        ----------
        name : the class name written in the file.
        path : the annotation file, for the skip.
        record : the object's record, for the skip.
        """
        if self.class_names is None:  # registered by add(), for images kept (not a duplicate's)
            return name
        if name not in self._names:
            m = match_classes([name], self.class_names,
                              {k: v for k, v in self.class_map.items() if k == name})
            self._names[name] = self.class_names[m.lut[0]] if m.lut[0] >= 0 else None
        if self._names[name] is None:
            self.skip(path, f"unknown class: {name!r} (known: {', '.join(self.class_names)})", record)
        return self._names[name]

    def geometry(self, image: Path | None, declared: tuple[int, int] | None, source,
                 record: str | None = None) -> tuple[tuple[int, int] | None, str] | None:
        """The size and orientation ``image`` is read in (see :func:`image_geometry`), the
        declared size when the file is not there to read, or None after a skip.

        Parameters
        ----------
        image : the image file, or None.
        declared : ``(height, width)`` the annotation file gives, or None.
        source : the annotation file, named in the messages.
        record : the image's record in ``source``, for the report.
        """
        if image is None or not image.is_file():
            return declared, "exif"
        return image_geometry(image, declared, self.skipped, self.fixed, source, record)

    def add(self, image_id: str, image_path: Path | None, source, objects, *,
            size: tuple[int, int] | None = None, flags: dict | None = None,
            record: str | None = None, orientation: str | None = None) -> None:
        """Add one image.

        Parameters
        ----------
        image_id : name of the image (a file's stem); the same file added again is skipped as a
            duplicate, while two files of one stem in different folders are both kept, each
            named by its path below the dataset's folder (one of them was dropped as a
            "duplicate"), with the extension when only that tells them apart (``x.png`` and
            ``x.jpg`` in one folder).
        image_path : the image file (read lazily), or None.
        source : the annotation file, for the report.
        objects : list of ``(xyxy, class_name, record)`` whose fields are already checked.
        size : ``(height, width)`` the annotation declares, or None. The image's header is
            read and checked against it (:meth:`geometry`) unless ``orientation`` is given;
            boxes are then clipped or dropped against the image as read
            (:func:`~smearlab.data.boxes.clean_boxes`).
        flags : per-object lists (aligned with ``objects``) kept in ``Sample.meta`` after cleaning.
        record : the image's record in ``source`` (e.g. ``"entry 3"``), for the report.
        orientation : the caller already measured the image (``size`` is its size as read in
            this orientation).
        """
        key = None if image_path is None else Path(image_path).resolve()
        if image_id in self._ids and (key is None or key in self._ids[image_id]):
            self.skip(source, f"duplicate image: {image_id!r} (first one kept; its {len(objects)} "
                              "objects dropped)", record)
            return
        if orientation is None:
            geometry = self.geometry(image_path, size, source, record)
            if geometry is None:
                return
            size, orientation = geometry
        self._ids.setdefault(image_id, set()).add(key)
        self._seen.update(o[1] for o in objects)  # classes of kept images only
        codes = {n: k for k, n in enumerate(dict.fromkeys(o[1] for o in objects))}  # class -> int, for duplicates
        boxes, _, idx = clean_boxes([o[0] for o in objects], [codes[o[1]] for o in objects], size, source,
                                    self.skipped, self.fixed, records=[o[2] for o in objects])
        meta = {k: np.asarray(v, dtype=bool).reshape(-1)[idx] for k, v in (flags or {}).items()}
        names = [objects[i][1] for i in idx]
        self._pending.append((image_id, image_path, boxes, names, size, meta, orientation))

    def dataset(self, name: str, root, fmt: str) -> SmearDataset:
        """The collected images as a :class:`SmearDataset` carrying the skip and repair logs.

        Parameters
        ----------
        name : the dataset's name.
        root : the folder it was loaded from (``SmearDataset.root``).
        fmt : the format's name (``SmearDataset.format``).
        """
        classes = self.class_names if self.class_names is not None else sorted(self._seen)
        index = {n: i for i, n in enumerate(classes)}
        shared = {i for i, files in self._ids.items() if len(files) > 1}  # one stem, several files
        ids = [_path_id(p, root) if i in shared else i for i, p, *_ in self._pending]
        again = Counter(ids)  # x.png and x.jpg in one folder: the extension tells them apart
        ids = [_path_id(p, root, suffix=True) if again[k] > 1 and p is not None else k
               for k, (_, p, *_) in zip(ids, self._pending)]
        samples = [Sample(image_id=k, path=p, boxes=b, labels=[index[n] for n in names], size=s, meta=m,
                          orientation=o)
                   for k, (_, p, b, names, s, m, o) in zip(ids, self._pending)]
        renamed = {k: v for k, v in self._names.items() if v is not None and v != k}
        if renamed:
            log.warning("%s: classes mapped onto %s: %s", name, classes,
                        ", ".join(f"{k!r} -> {v!r}" for k, v in sorted(renamed.items())))
        warn_alias_twins(name, classes)
        return SmearDataset(samples, classes, name, root=root, format=fmt,
                            skipped=list(self.skipped), fixed=list(self.fixed))


def warn_alias_twins(name: str, classes: Sequence[str]) -> None:
    """Say (once, logged) which classes of one dataset name one class by the alias rule ('rbc'
    beside 'RBC'): they stay two classes, whose counts and scores would split one kind of cell.

    Parameters
    ----------
    name : the dataset's name.
    classes : its class names.
    """
    same: dict[str, list[str]] = {}
    for c in classes:
        same.setdefault(canonical(c), []).append(c)
    twins = [v for v in same.values() if len(v) > 1]
    if twins:
        log.warning("%s: %s name one class by the alias rule (case, plural) but are kept apart; merge them "
                    "with class_names= and class_map=", name, "; ".join(" and ".join(repr(c) for c in v)
                                                                     for v in twins))


def _path_id(path, root, suffix: bool = False) -> str:
    """An image's id from its path below ``root`` without the extension (``a/x`` for
    ``root/a/x.png``; with ``suffix``, ``a/x.png``: for files whose paths differ only in it);
    its whole path when it lies elsewhere."""
    p = Path(path).resolve()
    try:
        rel = p.relative_to(Path(root).resolve()) if root is not None else p
    except ValueError:
        rel = p
    return (rel if suffix else rel.with_suffix("")).as_posix()


def remap_classes(dataset: SmearDataset, class_names=None, class_map=None) -> SmearDataset:
    """``dataset`` in the class list ``class_names`` (for formats whose files fix the classes:
    COCO categories, class folders): labels are mapped by name
    (:func:`~smearlab.data.classes.match_classes`: the same name, an alias, or ``class_map``,
    which may also merge twin classes such as ``RBC`` and ``rbc`` into one);
    objects (or images) of a class with no counterpart are dropped and counted as
    unknown-class skips. With ``class_names=None`` the dataset is returned as it is.

    Parameters
    ----------
    dataset : the SmearDataset as loaded, in the classes of its files.
    class_names : the class list wanted, or None.
    class_map : ``{name in the files: name in class_names}`` for names no rule matches (needs
        ``class_names``).
    """
    if class_names is None:
        if class_map:
            raise ValueError("class_map needs class_names: the class list to map onto")
        warn_alias_twins(dataset.name, dataset.class_names)
        return dataset
    unused = sorted(set(class_map or {}) - set(dataset.class_names))
    if unused:  # one class_map may serve several datasets: a class this one lacks is no error
        log.warning("%s: class_map names %s, which its files do not hold (classes %s)", dataset.name, unused,
                    dataset.class_names)
    class_map = {k: v for k, v in (class_map or {}).items() if k in dataset.class_names}
    m = match_classes(dataset.class_names, class_names, class_map, what=f"the classes of {dataset.name}",
                      merge=True)  # class_map={'rbc': 'RBC'} merges twin classes, as warn_alias_twins advises
    if m.identity:
        return dataset
    log.warning("%s: classes mapped onto %s: %s", dataset.name, m.target, m.describe())
    skipped = SkipLog()
    samples = []
    for s in dataset.samples:
        labels = m.labels(s.labels)
        keep = labels >= 0
        for j in np.flatnonzero(~keep):
            skipped.add(s.path or s.image_id, f"unknown class: {dataset.class_names[s.labels[j]]!r} "
                                              f"(known: {', '.join(m.target)})", f"object {j}")
        image_label = s.image_label
        if image_label is not None:
            image_label = int(m.lut[image_label])
            if image_label < 0:
                skipped.add(s.path or s.image_id, f"unknown class: {dataset.class_names[s.image_label]!r} "
                                                  f"(known: {', '.join(m.target)})")
                continue
        masks = s._masks
        if masks is not None and not keep.all():
            masks = (lambda f, k: (lambda: (f() if callable(f) else f)[k]))(masks, keep)
        samples.append(dataclasses.replace(
            s, boxes=s.boxes[keep], labels=labels[keep], image_label=image_label,
            meta=per_box_meta(s.meta, keep), _masks=masks))
    out = SmearDataset(samples, m.target, dataset.name, root=dataset.root, format=dataset.format,
                       semantic_names=dataset.semantic_names)
    if skipped:  # the loader's own records were summarised when it built the dataset
        log.warning("%s: %d objects or images of unmatched classes dropped: %s", dataset.name,
                    len(skipped), " | ".join(skipped.summary()))
    out.skipped.extend([*dataset.skipped, *skipped])
    out.fixed.extend(dataset.fixed)
    return out


def check_unique_names(names: Sequence[str], path: Path) -> None:
    """Refuse (:class:`DataError` naming ``path``) a class list that names one class twice: its
    objects would be split between two labels that every count and score merges by name.

    Parameters
    ----------
    names : the class names, in label order.
    path : the file that lists them.
    """
    seen: dict[str, int] = {}
    for k, name in enumerate(names):
        if name in seen:
            raise DataError(path, f"class {name!r} is listed twice (labels {seen[name]} and {k}); give each class "
                                  "one name, or merge the two in the file")
        seen[name] = k


def number(value) -> float | None:
    """``value`` as a float (numbers or numeric strings), None when it is missing or not numeric.

    An integer too large for a float becomes ``inf`` (so that box checks report it as
    non-finite) rather than raising ``OverflowError``.

    Parameters
    ----------
    value : the value read from an annotation file (bools count as missing).
    """
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf
    except (TypeError, ValueError):
        return None


def positive_int(value) -> int | None:
    """``value`` (number or numeric string) as a positive int, None when it is not a finite
    number of at least 1 (sizes such as VOC ``<width>`` or BBBC041 ``shape.r``).

    Parameters
    ----------
    value : the value read from an annotation file.
    """
    v = number(value)
    if v is None or not math.isfinite(v) or v < 1:
        return None
    return int(v)


# -- JSON annotation files ------------------------------------------------------------------------
def read_json(path: Path, expect: type, *, empty: str = "empty annotation file"):
    """The parsed top level of a JSON annotation file, which must be an ``expect`` (list or dict).

    ``empty`` is the problem reported for a file holding only white space.

    Parameters
    ----------
    path : the JSON file (UTF-8, a byte-order mark allowed).
    expect : ``list`` or ``dict``, the type the top level must have.
    empty : the problem reported for a file holding only white space.

    Raises
    ------
    DataError
        naming the file when it cannot be read, is empty, is not valid JSON or its top level is
        not an ``expect``.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(path, f"cannot read the file: {e}") from None
    if not text.strip():
        raise DataError(path, empty)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(path, f"malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except RecursionError:
        raise DataError(path, "JSON nested too deeply to be annotations") from None
    if not isinstance(data, expect):
        kind = "list" if expect is list else "object"
        raise DataError(path, f"expected a JSON {kind} at the top level, got {type(data).__name__}")
    return data


def find_json(path: Path, kind: str) -> Path:
    """``path`` itself, or the single JSON file of format ``kind`` in the folder ``path``.

    Parameters
    ----------
    path : a JSON file, or a folder holding one.
    kind : the JSON schema wanted (``"coco"``, ``"bbbc041"`` or ``"iml"``, see
        :func:`~smearlab.data.formats.json_kind`).

    Raises
    ------
    DataError
        when ``path`` does not exist, or the folder holds no or several ``kind`` JSON files.
    """
    if path.is_file():
        return path
    if not path.is_dir():
        raise DataError(path, "path does not exist")
    found = [p for p in sorted(path.iterdir()) if p.suffix.lower() == ".json" and p.is_file()
             and json_kind(p) == kind]
    if len(found) != 1:
        raise DataError(path, f"expected one {kind} JSON file in this folder, found "
                              f"{len(found)}{': ' + ', '.join(p.name for p in found) if found else ''}; "
                              "pass the file")
    return found[0]


def resolve_inside(root: Path, name: str, *, leading_slash: bool = True,
                   allow_outside_root: bool = False) -> Path | None:
    """``root/name`` resolved (symlinks included), or None when it lies outside ``root``.

    With ``leading_slash`` a leading ``/`` means ``root`` (as BBBC041 writes
    ``/images/x.png``), so only ``..`` components or links can leave it; without it an
    absolute ``name`` (``/etc/passwd``, ``C:\\x``) is outside. ``name`` must have passed
    :func:`path_name_problem`. ``allow_outside_root`` accepts ``..`` and links leading out
    (the loaders' option of the same name; absolute names stay refused).

    Parameters
    ----------
    root : the image root folder.
    name : the path written in the annotation file.
    leading_slash : a leading ``/`` (or backslash) means ``root``.
    allow_outside_root : accept targets outside ``root``.
    """
    if leading_slash:
        name = name.lstrip("/\\")
    elif is_absolute_name(name):
        return None
    try:
        base = root.resolve()
        target = (base / name).resolve()
    except (OSError, RuntimeError):  # a link loop (RuntimeError before Python 3.13)
        return None
    return target if allow_outside_root or target.is_relative_to(base) else None


def is_absolute_name(name: str) -> bool:
    """Whether a path written in an annotation file is absolute, in POSIX or Windows form
    (``/x``, ``\\x``, ``C:\\x``, ``C:x``, ``\\\\server\\share``).

    Parameters
    ----------
    name : the path written in the annotation file.
    """
    return PurePosixPath(name).is_absolute() or name.startswith("\\") \
        or bool(PureWindowsPath(name).drive)


def path_name_problem(name) -> str | None:
    """Why ``name`` cannot be a file name from an annotation file, or None when it can.

    Refused: non-strings, empty names, NUL bytes and characters the file system encoding
    cannot represent (lone surrogates from ``\\udXXX`` JSON escapes).

    Parameters
    ----------
    name : the value written in the annotation file.
    """
    if not isinstance(name, str) or not name.strip():
        return "missing or empty"
    if "\0" in name:
        return "contains a NUL byte"
    try:
        os.fsencode(name)
    except UnicodeError:
        return "holds characters that cannot be a file name"
    return None


def dig(obj, *keys):
    """``obj[k0][k1]...`` through nested dicts, or None when a level is missing or not a dict.

    Parameters
    ----------
    obj : the parsed JSON value.
    *keys : the keys, outermost first.
    """
    for k in keys:
        if not isinstance(obj, dict) or k not in obj:
            return None
        obj = obj[k]
    return obj


def entry_image(col: BoxCollector, json_path: Path, root: Path, name, field: str, rec: str, *,
                leading_slash: bool = True, allow_outside_root: bool = False) -> Path | None:
    """The image file named ``name`` (the entry's ``field``) inside ``root``.

    Returns None after counting a skip when ``name`` is not a non-empty string, is not a
    possible file name (NUL byte, unencodable character), is absolute (unless
    ``leading_slash``: then a leading ``/`` means ``root``, see :func:`resolve_inside`) or
    leads outside ``root`` through ``..`` or a link (refused). Whether the file exists is
    left to the caller.

    Parameters
    ----------
    col : the :class:`BoxCollector` that counts the skips.
    json_path : the annotation file, named in the skips.
    root : the folder image names are relative to.
    name : the image name written in the entry.
    field : the entry's field holding it, named in the messages (e.g. ``"image.pathname"``).
    rec : the entry's record (e.g. ``"entry 3"``).
    leading_slash : a leading ``/`` means ``root`` (see :func:`resolve_inside`).
    allow_outside_root : accept ``..`` and links leading out of ``root``.
    """
    problem = path_name_problem(name)
    if problem == "missing or empty":
        col.skip(json_path, f"entry without {field}", rec)
        return None
    if problem is not None:
        col.skip(json_path, f"invalid {field} {name!r}: {problem}", rec)
        return None
    if not leading_slash and is_absolute_name(name):
        col.skip(json_path, f"absolute {field} refused (must be relative to {root}): {name!r}", rec)
        return None
    image = resolve_inside(root, name, leading_slash=leading_slash, allow_outside_root=allow_outside_root)
    if image is None:
        col.skip(json_path, f"image path escapes the image root {root}: {name!r} (refused; "
                            f"{OUTSIDE_ROOT_HINT})", rec)
    return image


def entry_objects(col: BoxCollector, json_path: Path, entry, rec: str, parse: Callable) -> list | None:
    """The parsed ``objects`` list of one entry, or None after counting a skip when it has none.

    ``parse(col, json_path, obj, record)`` returns ``(xyxy, class_name, record)`` or None after
    counting a skip; objects are named ``"<rec> object M"`` (0-based).

    Parameters
    ----------
    col : the :class:`BoxCollector` that counts the skips.
    json_path : the annotation file, named in the skips.
    entry : one entry of the list-of-images schema (a dict with ``objects``).
    rec : the entry's record (e.g. ``"entry 3"``).
    parse : the format's object parser (see above).
    """
    objects = dig(entry, "objects")
    if not isinstance(objects, list):
        col.skip(json_path, "entry without an objects list", rec)
        return None
    parsed = [parse(col, json_path, obj, f"{rec} object {j}") for j, obj in enumerate(objects)]
    return [p for p in parsed if p is not None]


# -- masks ----------------------------------------------------------------------------------------
def check_mask_size(path: Path, mask: np.ndarray, hw: tuple[int, int]) -> None:
    """Raise :class:`DataError` naming ``path`` when ``mask`` is not of the image size ``hw``.

    Parameters
    ----------
    path : the mask file.
    mask : the mask as read, ``(H, W)``.
    hw : ``(height, width)`` of the image.
    """
    if mask.shape != hw:
        raise DataError(path, f"mask size {mask.shape[1]}x{mask.shape[0]} differs from the image size "
                              f"{hw[1]}x{hw[0]}")


# -- writing --------------------------------------------------------------------------------------
def save_samples(dataset: SmearDataset, image_dir: Path, annotation_dir: Path, suffix: str,
                 annotation: Callable[[Sample, Path], str]) -> None:
    """Write each sample's image into ``image_dir`` and its annotation file into ``annotation_dir``.

    Files are named by :func:`file_stems` (checked for clashes before anything is written); the
    annotation of a sample is ``annotation(sample, image_file)`` written as ``<stem><suffix>``.
    Every file is written atomically, the image first. Crowd regions (COCO ``iscrowd``) are left
    out and counted in one warning: these formats have no crowd flag, and as boxes they would be
    counted as single objects. Per-box flags that do not match the boxes are refused first.

    Parameters
    ----------
    dataset : the SmearDataset to write.
    image_dir : folder of the image files.
    annotation_dir : folder of the annotation files.
    suffix : suffix of the annotation files (e.g. ``".xml"``).
    annotation : ``f(sample, image_file) -> text`` of one annotation file.
    """
    stems = file_stems(dataset)
    plain, crowd = [], 0
    for s in dataset:  # every check before the first file
        hard = s.meta.get("difficult")
        if hard is not None and np.size(hard) != len(s.boxes):  # zip() wrote the shorter of the two, silently
            raise DataError(s.path or s.image_id, f"meta['difficult'] holds {np.size(hard)} flags for "
                                                  f"{len(s.boxes)} boxes (filter both: per_box_meta)")
        flags = s.crowd
        crowd += int(flags.sum())
        plain.append(s if not flags.any() else dataclasses.replace(
            s, boxes=s.boxes[~flags], labels=s.labels[~flags], meta=per_box_meta(s.meta, ~flags), _masks=None))
    if crowd:
        log.warning("%s: %d crowd region(s) (COCO iscrowd 1) left out of the %s files: the format has no crowd "
                    "flag, and as boxes they would count as single objects", dataset.name, crowd, suffix)
    for sample, stem in zip(plain, stems):
        image = save_image_file(sample, image_dir, stem)
        write_text(annotation_dir / f"{stem}{suffix}", annotation(sample, image))


def file_stems(dataset: SmearDataset) -> list[str]:
    """One file name stem per sample (its id, path separators replaced), refusing duplicates.

    Parameters
    ----------
    dataset : the SmearDataset to write.
    """
    stems = [s.image_id.replace("/", "_").replace("\\", "_") for s in dataset]
    if len(set(stems)) != len(stems):
        dup = next(s for s in stems if stems.count(s) > 1)
        raise DataError(dataset.name, f"two images would be written as {dup!r}; image ids must be unique")
    return stems


def save_image_file(sample: Sample, folder: Path, stem: str) -> Path:
    """Write the image of ``sample`` as ``folder/stem.*``: a copy of its file, else a PNG (also
    for a file read as stored whose EXIF tag turns it: a copy would be read turned, away from
    its boxes, by a format that declares no image size).

    Parameters
    ----------
    sample : the Sample whose image is written.
    folder : the image folder.
    stem : the file name without suffix (see :func:`file_stems`).

    Returns
    -------
    Path
        the file written.
    """
    if sample.path is not None and sample.path.is_file() and not turned_on_read(sample):
        dest = folder / f"{stem}{sample.path.suffix}"
        with atomic_path(dest) as tmp:
            shutil.copyfile(sample.path, tmp)
        return dest
    dest = folder / f"{stem}.png"
    write_image(dest, sample.image)
    return dest


def turned_on_read(sample: Sample) -> bool:
    """Whether ``sample`` is read as stored from a file whose EXIF tag turns it when shown, so
    that a copy of the file would be read another way up than its boxes.

    Parameters
    ----------
    sample : a Sample with a file.
    """
    return sample.orientation == "stored" and image_info(sample.path).rotated


#: Annotation file names that say nothing of the dataset: such a dataset is named after its folder.
GENERIC_STEMS = ("annotations", "_annotations.coco", "instances", "labels", "data", "dataset", "gt", "ground_truth")


def json_dataset_name(json_path: Path) -> str:
    """The default name of a dataset read from one annotation file: the file's stem
    (``instances_val2017``), or its folder's name when the stem is generic (``annotations.json``
    in ``malaria_iml_subset/``).

    Parameters
    ----------
    json_path : the annotation file.
    """
    json_path = Path(json_path)
    folder = dataset_name(json_path.parent)
    if json_path.stem.lower() in GENERIC_STEMS and folder:
        return folder
    return json_path.stem


def dataset_name(path: str | Path, stem: bool = False) -> str:
    """The default name of a dataset loaded from ``path``: its name (with ``stem``, without the
    extension), taken from the resolved path when ``path`` itself has none (``.``, ``..``).

    Parameters
    ----------
    path : the folder or file the dataset was loaded from.
    stem : drop the extension (a single file's dataset).
    """
    path = Path(path)
    if path.name in ("", ".", ".."):
        try:
            path = path.resolve()
        except (OSError, RuntimeError):
            return path.name
    return path.stem if stem else path.name
