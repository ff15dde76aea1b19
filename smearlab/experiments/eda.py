"""What notebook 01 runs: what is in a dataset (classes, objects per image, box sizes, colour)."""
from __future__ import annotations

from typing import Any

from ..data.sample import SmearDataset
from ..data.stats import colour_distance


def domain_colour_gap(colours: dict) -> tuple[list[str], float]:
    """The domains of :func:`smearlab.data.stats.colour_stats` and the largest mean-colour
    distance between two of them, over every pair (0 with a single domain).

    Parameters
    ----------
    colours : ``{domain: (n_images, 6) array}`` from :func:`smearlab.data.stats.colour_stats`.
    """
    domains = sorted(colours)
    return domains, max((colour_distance(colours[a], colours[b]) for i, a in enumerate(domains)
                         for b in domains[i + 1:]), default=0.0)


def eda_record(ds: SmearDataset, summary: dict, colour_gap: float, near_copy_pairs: int | None = None) -> dict[str, Any]:
    """The headline numbers notebook 01 records.

    Parameters
    ----------
    ds : the dataset explored.
    summary : its :func:`smearlab.data.stats.summary` (``objects_per_image_mean`` is recorded).
    colour_gap : the mean-colour distance between its domains (:func:`domain_colour_gap`).
    near_copy_pairs : pairs of near-copies found (:func:`smearlab.data.splits.near_copies`), if looked for.
    """
    out = {"dataset": ds.name, "images": len(ds), "objects": summary["objects"], "per_class": summary["per_class"],
           "objects_per_image_mean": summary["objects_per_image_mean"], "skipped": len(ds.skipped),
           "fixed": len(ds.fixed), "domain_colour_distance": colour_gap}
    for key in ("crowd_regions", "images_per_class"):  # a clump boxed as one; a single-cell set's labels
        if key in summary:
            out[key] = summary[key]
    if near_copy_pairs is not None:
        out["near_copy_pairs"] = int(near_copy_pairs)
    return out
