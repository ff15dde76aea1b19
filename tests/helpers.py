"""Small hand-built datasets for unit tests (no files, no generator), and shared test helpers."""
import os

import numpy as np
import pytest

from smearlab.data import Sample, SmearDataset


def toy_dataset(n=12, classes=("RBC", "WBC", "Platelets"), seed=0, size=(48, 64), masks=False):
    """``n`` random images with a few boxes each; image i holds class i % 3 at least once."""
    rng = np.random.default_rng(seed)
    h, w = size
    samples = []
    for i in range(n):
        k = int(rng.integers(1, 5))
        x0 = rng.uniform(0, w - 12, k)
        y0 = rng.uniform(0, h - 12, k)
        bw, bh = rng.uniform(4, 11, k), rng.uniform(4, 11, k)
        boxes = np.stack([x0, y0, x0 + bw, y0 + bh], 1)
        labels = rng.integers(0, len(classes), k)
        labels[0] = i % len(classes)
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        s = Sample(f"toy{i:03d}", boxes=boxes, labels=labels, _image=img, domain="A" if i % 2 else "B")
        if masks:
            m = np.zeros((k, h, w), bool)
            for j, (a, b, c, d) in enumerate(boxes.astype(int)):
                m[j, b:d, a:c] = True
            s.masks = m
        samples.append(s)
    return SmearDataset(samples, list(classes), "toy")


def write_notebook(path, body, params="quick = True\nseed = 0\nmetrics_path = None", title="# test"):
    """A two-cell notebook (a ``parameters`` cell, then ``body``) for report-runner tests."""
    import nbformat
    nb = nbformat.v4.new_notebook()
    p = nbformat.v4.new_code_cell(params)
    p.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell(title), p, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def skip_or_fail(reason: str, ci_note: str):
    """Skip a test whose resource is missing locally; fail it under ``CI=true``, where .ci/run
    must provide the resource (``ci_note`` says why)."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason} - {ci_note}")
    pytest.skip(reason)


def write_dicom(path, pixels, photometric="MONOCHROME2", bits_stored=16, *, samples_per_pixel=1,
                pixel_data=True, extra=None):
    """A minimal DICOM file holding ``pixels``: grey ``(H, W)``, or frames first ``(F, H, W)``;
    colour ``(H, W, 3)`` with ``samples_per_pixel=3``. Bits allocated follow the dtype (signed
    dtypes set the pixel representation); ``extra``: further attributes (e.g. a colour table);
    ``pixel_data=False`` leaves the pixels out."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SamplesPerPixel, ds.PhotometricInterpretation = "OT", samples_per_pixel, photometric
    colour = samples_per_pixel > 1
    ds.Rows, ds.Columns = pixels.shape[:2] if colour else pixels.shape[-2:]
    if colour:
        ds.PlanarConfiguration = 0
    elif pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = pixels.dtype.itemsize * 8, bits_stored, bits_stored - 1
    ds.PixelRepresentation = int(pixels.dtype.kind == "i")
    for k, v in (extra or {}).items():
        setattr(ds, k, v)
    if pixel_data:
        ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    ds.save_as(path, enforce_file_format=True)
