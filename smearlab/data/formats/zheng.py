"""Zheng et al. 2018 white-blood-cell images: one cell per image, a 3-level mask and a class.

Layout::

    <root>/Dataset N/NNN.bmp                    the image
    <root>/Dataset N/NNN.png                    its ground truth: 255 nucleus, 128 cytoplasm, 0 rest
    <root>/Class Labels of Dataset N.csv        "image ID,class label" (or "image ID,class"), 1..5

PNG files are always masks: an image is any other image file (``.bmp`` in the published sets,
upper-case extensions too) with a PNG of the same number beside it. Some published masks hold
intermediate grey values from resampling; each pixel is mapped to the nearest of 0, 128, 255.

Unusual input, and what the loader does with it
-----------------------------------------------
* 16-bit (or 12-bit, float) images are scaled to 8 bits on read (``sample.bit_depth`` keeps
  the original depth).
* Masks must be 8-bit: a 16-bit mask is skipped naming the file ("mask must be an 8-bit grey
  image"), since its 0/128/255 levels would be ambiguous. Masks are read by value (see
  :func:`smearlab.data.imageio.read_mask`): a grey mask saved as RGB or grey+alpha gives its
  grey level; a palette mask its indices; a colour mask whose channels differ is refused.
* A mask of another size than its image, an empty mask, or a missing mask skips the image
  with the file named (``dataset.skipped``), or raises :class:`DataError` with ``strict=True``.
"""
from __future__ import annotations

import csv
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ...core.errors import DataError
from ..boxes import mask_box
from ..imageio import image_size, is_image_file, read_mask, read_raw
from ..sample import Sample, SkipLog, SmearDataset
from ._common import Root, check_mask_size, dataset_name

CLASS_NAMES = ["neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil"]
SEMANTIC_NAMES = ["background", "cytoplasm", "nucleus"]
_HEADERS = (["image id", "class label"], ["image id", "class"])


def load(path: str | Path, *, datasets=(1, 2), strict: bool = False,
         name: str | None = None, allow_outside_root: bool = False) -> SmearDataset:
    """Load one or both Zheng WBC datasets.

    Each sample has ``image_id`` ``"d1_001"``, ``domain`` ``"dataset1"``, ``image_label`` (the
    cell type, 0-based), one box around the whole cell (mask > 0) with that label, the
    semantic mask (0 background, 1 cytoplasm, 2 nucleus) and the whole-cell instance mask
    ``(1, H, W)``. Boxes come from the masks at load time; images and masks are read again
    lazily.

    Parameters
    ----------
    path : the folder holding ``Dataset N/`` and the class-label CSVs.
    datasets : which datasets to load: 1, 2, or a sequence of them (repeats are loaded once).
    strict : raise on the first per-record problem instead of counting it as a skip.
    name : dataset name (default: the folder name).
    allow_outside_root : follow links that lead out of ``path`` (refused by default: such an
        image or mask is a counted skip, such a CSV an error).

    Raises
    ------
    DataError
        when ``datasets`` names other than 1 and 2, a ``Dataset N`` folder or its CSV is missing,
        or the CSV header is neither variant.
        Per-record problems (image not named by a number or without a CSV row; CSV row
        malformed, repeated, with an unknown class or without an image; image or mask missing,
        unreadable or of another size; empty mask; a second image file of one number, such as
        ``001.jpg`` beside ``001.bmp``: the first by name is kept) are counted skips, or raise
        with ``strict``.
    """
    root = Path(path)
    numbers = _dataset_numbers(root, datasets)
    skipped = SkipLog(strict=strict)
    inside = Root(root, allow_outside_root)
    samples = []
    for n in numbers:
        folder = root / f"Dataset {n}"
        if not folder.is_dir():
            raise DataError(folder, f"Zheng dataset folder 'Dataset {n}' not found")
        csv_path = root / f"Class Labels of Dataset {n}.csv"
        classes = _read_classes(inside.check(csv_path) if csv_path.exists() else csv_path, skipped)
        samples += _load_dataset(folder, n, classes, skipped, inside)
    return SmearDataset(samples, CLASS_NAMES, name or dataset_name(root), root=root, format="zheng",
                        semantic_names=SEMANTIC_NAMES, skipped=skipped)


def _dataset_numbers(root: Path, datasets) -> list[int]:
    """``datasets`` (1, 2 or a sequence of them) as a list without repeats, in order."""
    items = [datasets] if isinstance(datasets, (int, np.integer)) else datasets
    try:
        items = list(items) if not isinstance(items, (str, bytes)) else None
    except TypeError:
        items = None
    if items is None or any(isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d not in (1, 2)
                            for d in items):
        raise DataError(root, f"datasets must be 1, 2 or a sequence of them (the Zheng datasets), got {datasets!r}")
    return list(dict.fromkeys(int(d) for d in items))


def _read_classes(path: Path, skipped: SkipLog) -> dict[int, tuple[int | None, int]]:
    """``image number -> (0-based class, CSV line)`` from a class-label CSV.

    A row with a bad class is counted once here and kept with class None, so that its image is
    left out without a second report.
    """
    if not path.is_file():
        raise DataError(path, "class-label CSV not found")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(path, f"cannot read the class-label CSV: {e}") from e
    header = [c.strip().lower() for c in rows[0]] if rows else []
    if header not in _HEADERS:
        raise DataError(path, f"unexpected header {rows[0] if rows else 'none (empty file)'}; "
                              "expected 'image ID,class label' or 'image ID,class'", "line 1")
    out = {}
    for line, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        rec = f"line {line}"
        if len(row) != 2 or not row[0].strip().isdigit():
            skipped.add(path, f"expected 'image ID,class' with an integer image ID, got {row}", rec)
            continue
        image, cls = int(row[0]), row[1].strip()
        if image in out:
            skipped.add(path, f"duplicate row for image ID {image} (first on line {out[image][1]})",
                        rec)
            continue
        valid = cls.isdigit() and 1 <= int(cls) <= len(CLASS_NAMES)
        if not valid:
            skipped.add(path, f"unknown class {cls!r} (expected 1..{len(CLASS_NAMES)})", rec)
        out[image] = (int(cls) - 1 if valid else None, line)
    return out


def _load_dataset(folder: Path, n: int, classes: dict[int, tuple[int, int]],
                  skipped: SkipLog, inside: Root) -> list[Sample]:
    """The samples of one ``Dataset N`` folder; CSV rows without an image are counted skips."""
    csv_path = folder.parent / f"Class Labels of Dataset {n}.csv"
    files = [p for p in folder.iterdir() if not p.name.startswith(".") and is_image_file(p)
             and inside.inside(p, skipped)]
    masks = {p.stem: p for p in files if p.suffix.lower() == ".png"}
    images = sorted((p for p in files if p.suffix.lower() != ".png"), key=lambda p: p.name)
    samples, seen = [], {}
    for image in images:
        if not image.stem.isdigit():
            skipped.add(image, "image name is not an image number (NNN)")
            continue
        number = int(image.stem)
        if number in seen:  # 001.jpg (a converted copy) beside 001.bmp: one CSV row, one sample
            skipped.add(image, f"second image file for image ID {number}: {seen[number].name} and {image.name} "
                               "(the first kept; remove the other)")
            continue
        seen[number] = image
        if number not in classes:
            skipped.add(image, f"no row for image ID {number} in {csv_path.name}")
            continue
        label = classes[number][0]
        if label is None:  # its CSV row was already counted
            continue
        sample = _load_sample(image, masks.get(image.stem), n, label, skipped)
        if sample is not None:
            samples.append(sample)
    for number, (label, line) in sorted(classes.items()):
        if number not in seen and label is not None:
            skipped.add(csv_path, f"no image file for image ID {number} in {folder.name}/",
                        f"line {line}")
    return samples


def _load_sample(image: Path, mask: Path | None, n: int, label: int,
                 skipped: SkipLog) -> Sample | None:
    """One image with its mask, or None (counted in ``skipped``) when either is unusable."""
    if mask is None:
        skipped.add(image, f"ground-truth mask {image.stem}.png not found")
        return None
    try:
        hw = image_size(image)
        semantic = read_semantic(mask)
        check_mask_size(mask, semantic, hw)
    except DataError as e:
        skipped.add(e.path, e.problem)
        return None
    box = mask_box(semantic > 0)
    if box is None:
        skipped.add(mask, "empty mask (no cell pixel)")
        return None
    return Sample(f"d{n}_{image.stem}", image, boxes=box[None], labels=[label], image_label=label,
                  domain=f"dataset{n}", size=hw, meta={"mask_path": str(mask)},
                  _semantic=partial(read_semantic, mask), _masks=partial(_cell_mask, mask))


def read_semantic(path: Path) -> np.ndarray:
    """Read a Zheng mask as ``(H, W)`` uint8: 0 background, 1 cytoplasm, 2 nucleus.

    Each grey value goes to the nearest of 0, 128, 255 (resampled masks hold values between); a
    mask whose values are 0, 1 and 2 already holds the class ids and is read as it is. A palette
    image is read by the grey levels it shows (the coding is what one sees: its indices may run
    in any order), and refused when its colours are not grey.

    Parameters
    ----------
    path : the mask file (8-bit grey).

    Raises
    ------
    DataError
        naming the file when it is unreadable or not an 8-bit image.
    """
    m = read_mask(path)
    if _is_palette(path):
        shown = read_raw(path, palette="rgb")
        if shown.ndim == 3:
            if not ((shown[..., :3] == shown[..., :1]).all()):
                raise DataError(path, "palette mask with colours that are not grey: a Zheng mask is grey "
                                      "(0 background, 128 cytoplasm, 255 nucleus)")
            shown = shown[..., 0]
        m = shown.astype(np.uint8)
    if m.dtype != np.uint8:
        raise DataError(path, "mask must be an 8-bit grey image, got a colour mask whose channels differ"
                        if m.dtype == np.uint32 else f"mask must be an 8-bit grey image, got dtype {m.dtype}")
    if 0 < int(m.max()) <= 2:  # already the class ids (a mask saved as 0/1/2): read as they are
        return m.copy()
    return (m >= 64).astype(np.uint8) + (m >= 192)


def _is_palette(path: Path) -> bool:
    """Whether ``path`` is a palette image (its values are indices into a table of colours)."""
    try:
        with Image.open(path) as im:
            return im.mode in ("P", "PA")
    except (OSError, UnidentifiedImageError):  # read_mask has said what is wrong with it
        return False


def _cell_mask(path: Path) -> np.ndarray:
    """The whole-cell instance mask ``(1, H, W)`` bool."""
    return (read_semantic(path) > 0)[None]
