"""DICOM images (whole-slide snapshots, microscope exports): images only, no annotations.

Needs the optional extra ``pip install 'smearlab[dicom]'`` (pydicom). Pixels are read lazily
through :func:`smearlab.data.read_image`; the header is read at load time for the size and the
bit depth (``Sample.read_raw`` returns the stored array, e.g. uint16). A multi-frame file gives
its first frame (counted in ``dataset.fixed``); ``x.dcm`` and ``x.dicom`` in one folder are told
apart by their extension (ids ``x.dcm``, ``x.dicom``), as the box formats name ``x.png`` and ``x.jpg``.
"""
from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

from ...core.errors import DataError
from ..imageio import DICOM_EXTENSIONS
from ..sample import Sample, SkipLog, SmearDataset
from ._common import dataset_name

PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def load(path: str | Path, *, strict: bool = False, name: str | None = None) -> SmearDataset:
    """Load one ``.dcm`` file or a folder of them (not recursive).

    Parameters
    ----------
    path : a DICOM file or a folder.
    strict : raise on the first skipped file instead of counting it.
    name : dataset name (default: the file or folder name).

    Raises
    ------
    DataError
        when ``path`` does not exist, a folder holds no ``.dcm``/``.dicom`` file, or pydicom is
        not installed. Unreadable DICOM files, files without pixel data and other non-hidden
        files in the folder are counted skips, or raise with ``strict``.
    """
    root = Path(path)
    if not root.exists():
        raise DataError(root, "path does not exist")
    pydicom = _import_pydicom(root)
    skipped, fixed = SkipLog(strict=strict), SkipLog(kind="fixed")
    if root.is_dir():
        files = sorted(p for p in root.iterdir() if not p.name.startswith(".") and p.is_file())
        if not any(p.suffix.lower() in DICOM_EXTENSIONS for p in files):
            raise DataError(root, "no .dcm or .dicom file in this folder")
    else:
        files = [root]
    samples = []
    for p in files:
        if p.suffix.lower() not in DICOM_EXTENSIONS:
            skipped.add(p, "not a DICOM file (expected .dcm or .dicom)")
            continue
        sample = _header_sample(p, pydicom, skipped, fixed)
        if sample is not None:
            samples.append(sample)
    again = Counter(s.image_id for s in samples)  # x.dcm and x.dicom: the extension tells them apart
    samples = [dataclasses.replace(s, image_id=s.path.name) if again[s.image_id] > 1 else s for s in samples]
    return SmearDataset(samples, [], name or dataset_name(root, stem=True), root=root, format="dicom",
                        skipped=skipped, fixed=fixed)


def _import_pydicom(path: Path):
    try:
        import pydicom
    except ImportError:
        raise DataError(path, "reading DICOM needs the optional extra: "
                              "pip install 'smearlab[dicom]'") from None
    return pydicom


def _header_sample(path: Path, pydicom, skipped: SkipLog, fixed: SkipLog) -> Sample | None:
    """A lazy sample with size and bit depth from the header, or None (counted) if unreadable or
    without pixel data; a multi-frame file is noted in ``fixed`` (its first frame is read)."""
    try:  # large values (the pixels) are skipped over, not read: only whether they are there
        ds = pydicom.dcmread(path, defer_size=1024)
        hw, depth = (int(ds.Rows), int(ds.Columns)), int(ds.BitsAllocated)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except Exception as e:  # pydicom raises many types for bad files
        skipped.add(path, f"not a readable DICOM file ({type(e).__name__}: {e})")
        return None
    if not any(tag in ds for tag in PIXEL_TAGS):
        skipped.add(path, "DICOM file without pixel data (no Pixel Data element)")
        return None
    if frames > 1:
        fixed.add(path, f"multi-frame DICOM: {frames} frames, the first read")
    return Sample(path.stem, path, bit_depth=depth, size=hw)
