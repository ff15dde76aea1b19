"""Cell crops sorted into one folder per class (PBC style): ``<root>/<class_name>/*.jpg``.

Classes are the sub-folder names in Unicode NFC form, sorted as such (so every machine gets one
class order: Windows sorts paths case-insensitively, macOS may hand back NFD names); each image
becomes a sample with ``image_label`` and no boxes, in the same order of names. Images are read
lazily, of any mode and size (see :func:`smearlab.data.read_image`).
"""
from __future__ import annotations

import unicodedata
from pathlib import Path

from ...core.errors import DataError
from ..imageio import image_info, is_image_file
from ..sample import Sample, SkipLog, SmearDataset
from ._common import Root, dataset_name, remap_classes


def load(path: str | Path, *, strict: bool = False, name: str | None = None, class_names=None,
         class_map=None, allow_outside_root: bool = False) -> SmearDataset:
    """Load a folder of class folders of images.

    Hidden entries (names starting with ".") are ignored. Any other file that is not an image
    (by extension, case-insensitive) or whose header is not a readable image, a folder inside a
    class folder, or a file beside the class folders is a counted skip. An empty class folder stays a class with zero images: it is
    logged as a warning and reported in ``dataset.skipped`` as "empty class folder", but it does
    not raise even with ``strict``. Images are read as shown (EXIF orientation applied).

    Parameters
    ----------
    path : the root folder.
    strict : raise on the first skipped file instead of counting it.
    name : dataset name (default: the folder name).
    class_names : load the dataset in this class list: folders are matched by name or alias
        (case, plural: ``Lymphocytes/`` is ``lymphocyte``; see :mod:`smearlab.data.classes`),
        images of other folders are unknown-class skips. None: the folder names, sorted.
    class_map : ``{folder name: name in class_names}`` for other spellings.
    allow_outside_root : follow links that lead out of the root folder (refused and counted
        as skips by default).

    Raises
    ------
    DataError
        when ``path`` is not a folder, holds no class folder, or two class folders whose names
        are one name in NFC form.
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError(root, "image folder root not found")
    skipped, notes = SkipLog(strict=strict), SkipLog()
    entries = _sorted(p for p in root.iterdir() if not p.name.startswith("."))
    classes = [p for p in entries if p.is_dir()]
    if not classes:
        raise DataError(root, "no class folders (expected <root>/<class_name>/<images>)")
    names = [nfc(c.name) for c in classes]
    twins = [(a.name, b.name) for a, b, x, y in zip(classes, classes[1:], names, names[1:]) if x == y]
    if twins:
        raise DataError(root, f"class folders {twins[0][0]!r} and {twins[0][1]!r} are one name in different "
                              "Unicode forms (NFC and NFD); merge them")
    for stray in (p for p in entries if not p.is_dir()):
        skipped.add(stray, "file outside any class folder")
    samples = []
    inside = Root(root, allow_outside_root)
    for label, folder in enumerate(classes):
        found = _class_samples(folder, label, skipped, inside)
        if not found:
            notes.add(folder, "empty class folder (class kept with 0 images)")
        samples += found
    ds = SmearDataset(samples, names, name or dataset_name(root), root=root,
                      format="imagefolder", skipped=[*notes, *skipped])
    return remap_classes(ds, class_names, class_map)


def _class_samples(folder: Path, label: int, skipped: SkipLog, inside: Root) -> list[Sample]:
    """The images of one class folder; other non-hidden entries are counted skips."""
    samples = []
    for p in _sorted(q for q in folder.iterdir() if not q.name.startswith(".")):
        if not inside.inside(p, skipped):
            continue
        if p.is_dir():
            skipped.add(p, "folder inside a class folder (only images directly inside are read)")
        elif not is_image_file(p):
            skipped.add(p, f"not an image file (extension {p.suffix or 'none'!r})")
        else:
            try:  # the header, as the box formats read it: a broken file is a counted skip, not a count
                size = image_info(p).shown_hw
            except DataError as e:
                skipped.add(p, e.problem)
                continue
            samples.append(Sample(f"{nfc(folder.name)}/{nfc(p.name)}", p, image_label=label, size=size))
    return samples


def nfc(name: str) -> str:
    """``name`` in Unicode NFC form (one spelling of ``é`` whatever the file system handed back).

    Parameters
    ----------
    name : a file or folder name.
    """
    return unicodedata.normalize("NFC", name)


def _sorted(paths) -> list[Path]:
    """``paths`` sorted by NFC name, alike on every system (``sorted`` of Windows paths ignores case)."""
    return sorted(paths, key=lambda p: (nfc(p.name), p.name))
