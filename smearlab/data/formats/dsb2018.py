"""2018 Data Science Bowl nuclei (BBBC038): one folder per image, one binary PNG per nucleus.

Layout::

    <root>/stage1_train/<id>/images/<id>.png     RGBA (alpha is dropped on read)
    <root>/stage1_train/<id>/masks/<hash>.png    one binary mask per nucleus

``root`` may be the ``stage1_train`` folder itself, its parent, or one image folder
``<id>/`` (holding ``images/`` and ``masks/``, or ``images/<id>.png``: a dataset of one
image). A ``SUBSET_IMAGES.tsv``
(columns ``image_id``, ``group``, ...) beside ``stage1_train`` puts the group into
``sample.meta["group"]``.

Unusual input, and what the loader does with it
-----------------------------------------------
* 16-bit (or 12-bit, float) images are scaled to 8 bits on read (``sample.bit_depth`` keeps
  the original depth; see :func:`smearlab.data.imageio.to_rgb8`).
* Mask files: any non-zero pixel (of any channel) is the nucleus, whatever the bit depth
  (8- or 16-bit grey, RGB, palette); JPEG masks are skipped (their compression noise would be
  nucleus). An image folder without ``masks/`` is an image without objects. A mask file is one instance even when it holds several
  values or components (a label image is *not* split: one file, one nucleus).
* Overlapping masks are kept as separate instances (the published masks overlap by a few
  pixels in places); evaluation scores each on its own.
* A mask of another size than its image, an empty mask, or a float mask is skipped with its
  file named (``dataset.skipped``), or raises :class:`DataError` with ``strict=True``.
"""
from __future__ import annotations

import csv
from functools import partial
from pathlib import Path

import numpy as np

from ...core.errors import DataError
from ..boxes import mask_box
from ..imageio import image_size, is_image_file, read_binary_mask
from ..sample import Sample, SkipLog, SmearDataset
from ._common import Root, check_mask_size, dataset_name

CLASS_NAMES = ["nucleus"]


def load(path: str | Path, *, strict: bool = False, name: str | None = None,
         allow_outside_root: bool = False) -> SmearDataset:
    """Load a DSB2018 ``stage1_train`` tree, or one of its image folders.

    Boxes are computed from the masks at load time; images and masks are read again lazily.
    Only sub-folders are samples (stray files are ignored); a sample folder without
    ``masks/`` (the ``stage1_test`` layout) gives an image without objects.

    Parameters
    ----------
    path : the ``stage1_train`` folder or its parent; or one image folder ``<id>/`` (with
        ``images/`` and ``masks/``, or ``images/<id>.png``), loaded as a dataset of one image.
    strict : raise on the first per-record problem instead of counting it as a skip.
    name : dataset name (default: the folder name).
    allow_outside_root : follow links that lead out of ``path`` (refused by default: such an
        image or mask is a counted skip).

    Raises
    ------
    DataError
        when ``path`` is not a folder, or is an image folder without ``images/<id>.png``.
        Per-record problems (missing or unreadable image;
        unreadable, non-integer or empty mask, mask of another size than its image) are counted
        skips, or raise with ``strict``.
    """
    root = Path(path)
    if root.name in ("", ".."):  # '.' or '..': an image folder's name is its image's name
        root = root.resolve()
    if not root.is_dir():
        raise DataError(root, "DSB2018 root folder not found")
    if is_sample_folder(root):
        base, folders = root.parent, [root]
        if not _image_file(root).is_file():
            held = sorted(p.name for p in (root / "images").iterdir() if not p.name.startswith("."))
            raise DataError(root, f"not a DSB2018 image folder: no images/{root.name}.png (an image "
                                  f"folder is named like its image; images/ holds {len(held)} files"
                                  + (f", e.g. {held[0]})" if held else ")"))
    else:
        base = root / "stage1_train" if (root / "stage1_train").is_dir() else root
        folders = sorted(d for d in base.iterdir() if d.is_dir() and not d.name.startswith("."))
    groups = _read_groups(base.parent / "SUBSET_IMAGES.tsv")
    skipped = SkipLog(strict=strict)
    samples = []
    inside = Root(root, allow_outside_root)
    for folder in folders:
        sample = _load_sample(folder, skipped, inside)
        if sample is not None:
            if folder.name in groups:
                sample.meta["group"] = groups[folder.name]
            samples.append(sample)
    return SmearDataset(samples, CLASS_NAMES, name or dataset_name(root), root=root, format="dsb2018",
                        skipped=skipped)


def is_sample_folder(path: Path) -> bool:
    """Whether ``path`` is one image folder: ``images/`` and ``masks/``, or ``images/<name>.png``.

    Parameters
    ----------
    path : the folder.
    """
    return (path / "images").is_dir() and ((path / "masks").is_dir()
                                           or (path / "images" / f"{path.name}.png").is_file())


def _image_file(folder: Path) -> Path:
    """``images/<id>.png`` of an image folder, the extension matched without regard to case."""
    image = folder / "images" / f"{folder.name}.png"
    if not image.exists() and (folder / "images").is_dir():
        image = next((p for p in sorted((folder / "images").iterdir())
                      if p.stem == folder.name and is_image_file(p)), image)
    return image


def _load_sample(folder: Path, skipped: SkipLog, inside: Root) -> Sample | None:
    """One image folder, or None (counted in ``skipped``) when its image is unusable."""
    image = _image_file(folder)
    if image.exists() and not inside.inside(image, skipped):
        return None
    try:
        hw = image_size(image)
    except DataError as e:
        skipped.add(e.path, e.problem)
        return None
    mask_dir = folder / "masks"
    if not mask_dir.is_dir():  # no objects: an empty stack, so the mask metrics score it (stage1_test)
        return Sample(folder.name, image, size=hw, _masks=np.zeros((0, *hw), bool))
    boxes, paths = [], []
    for mask_path in sorted(p for p in mask_dir.iterdir() if not p.name.startswith(".")):
        if not inside.inside(mask_path, skipped):
            continue
        box = _mask_record(mask_path, hw, skipped)
        if box is not None:
            boxes.append(box)
            paths.append(mask_path)
    return Sample(folder.name, image, boxes=np.reshape(boxes, (-1, 4)),
                  labels=np.zeros(len(boxes), np.int64), size=hw,
                  _masks=partial(_read_masks, tuple(paths), hw))


def _mask_record(path: Path, hw: tuple[int, int], skipped: SkipLog) -> np.ndarray | None:
    """The box of one nucleus mask, or None (counted in ``skipped``) when it is unusable."""
    if path.suffix.lower() in (".jpg", ".jpeg"):  # lossy: compression noise around the nucleus reads as nucleus
        skipped.add(path, "lossy (JPEG) mask file: its compression noise would read as nucleus; save masks as PNG")
        return None
    try:
        m = read_binary_mask(path)
        check_mask_size(path, m, hw)
    except DataError as e:
        skipped.add(e.path, e.problem)
        return None
    box = mask_box(m)
    if box is None:
        skipped.add(path, "empty mask (no foreground pixel)")
    return box


def _read_masks(paths: tuple[Path, ...], hw: tuple[int, int]) -> np.ndarray:
    """The ``(N, H, W)`` bool stack of the nucleus masks."""
    out = np.zeros((len(paths), *hw), bool)
    for i, p in enumerate(paths):
        m = read_binary_mask(p)
        check_mask_size(p, m, hw)
        out[i] = m
    return out


def _read_groups(tsv: Path) -> dict[str, str]:
    """``image_id -> group`` from SUBSET_IMAGES.tsv, or {} when there is none."""
    if not tsv.is_file():
        return {}
    try:
        with open(tsv, newline="", encoding="utf-8-sig") as f:
            return {r["image_id"]: r["group"] for r in csv.DictReader(f, delimiter="\t")
                    if r.get("image_id") and r.get("group")}
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(tsv, f"cannot read the file: {e}") from e
