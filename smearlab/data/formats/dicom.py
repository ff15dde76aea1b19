"""DICOM images (whole-slide snapshots, microscope exports): images only, no annotations.

Needs the optional extra ``pip install 'smearlab[dicom]'`` (pydicom). Pixels are read lazily
through :func:`smearlab.data.read_image`; the header is read at load time for the size and the
bit depth (``Sample.read_raw`` returns the stored array, e.g. uint16).
"""
from __future__ import annotations

from pathlib import Path

from ...core.errors import DataError
from ..imageio import DICOM_EXTENSIONS
from ..sample import Sample, SkipLog, SmearDataset


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
        not installed. Unreadable DICOM files and other non-hidden files in the folder are
        counted skips, or raise with ``strict``.
    """
    root = Path(path)
    if not root.exists():
        raise DataError(root, "path does not exist")
    pydicom = _import_pydicom(root)
    skipped = SkipLog(strict=strict)
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
        sample = _header_sample(p, pydicom, skipped)
        if sample is not None:
            samples.append(sample)
    return SmearDataset(samples, [], name or root.stem, root=root, format="dicom", skipped=skipped)


def _import_pydicom(path: Path):
    try:
        import pydicom
    except ImportError:
        raise DataError(path, "reading DICOM needs the optional extra: "
                              "pip install 'smearlab[dicom]'") from None
    return pydicom


def _header_sample(path: Path, pydicom, skipped: SkipLog) -> Sample | None:
    """A lazy sample with size and bit depth from the header, or None (counted) if unreadable."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        hw, depth = (int(ds.Rows), int(ds.Columns)), int(ds.BitsAllocated)
    except Exception as e:  # pydicom raises many types for bad files
        problem = f"not a readable DICOM file ({type(e).__name__}: {e})"
    else:
        return Sample(path.stem, path, bit_depth=depth, size=hw)
    skipped.add(path, problem)
    return None
