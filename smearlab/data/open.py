"""``open_dataset``: the one name notebooks use for "the data this run is about"."""
from __future__ import annotations

from pathlib import Path

from .formats import load
from .sample import SmearDataset

#: Images per staining domain of the synthetic default.
SYNTHETIC_SIZES = {True: 24, False: 200}


def open_dataset(spec: str | Path = "synthetic", *, quick: bool = True, seed: int = 0,
                 format: str | None = None, **options) -> SmearDataset:
    """Open a dataset by name or path.

    Parameters
    ----------
    spec : ``"synthetic"`` (both staining domains, A and B), ``"synthetic-A"`` / ``"synthetic-B"``
        (one domain), or a path to a dataset in any supported on-disk format.
    quick : for synthetic data, make a small set (24 images per domain instead of 200).
    seed : seed of the synthetic generator.
    format : name the on-disk format instead of detecting it.
    options : passed to the synthetic generator or the format's loader.
    """
    from . import synthetic

    spec = str(spec)
    if spec.startswith("synthetic"):
        n = options.pop("n", SYNTHETIC_SIZES[bool(quick)])
        stains = ["A", "B"] if spec == "synthetic" else [spec.split("-", 1)[1]]
        parts = [synthetic.make_dataset(n, seed=seed + i, stain=st, **options) for i, st in enumerate(stains)]
        return parts[0] if len(parts) == 1 else SmearDataset.concat(parts, name="synthetic")
    return load(spec, format=format, **options)
