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
