"""What notebook 02 runs: the stain gap between two domains and how much each normalisation closes."""
from __future__ import annotations

from typing import Any

from ..data.sample import SmearDataset


def two_domains(ds: SmearDataset, n: int) -> tuple[str, str, list, list]:
    """The first two domains of ``ds`` (the first is the reference) and up to ``n`` images of each.

    Parameters
    ----------
    ds : a dataset with at least two domains.
    n : the most images of each domain to return.
    """
    domains = ds.by_domain()
    if len(domains) < 2:
        raise ValueError(f"{ds.name}: one domain ({', '.join(domains) or 'none'}); comparing stains needs a "
                         "dataset of two domains (e.g. the Zheng archive, or synthetic-A and synthetic-B)")
    reference, other = list(domains)[:2]
    return reference, other, [s.image for s in domains[reference][:n]], [s.image for s in domains[other][:n]]


def best_pipeline(table: dict[str, dict]) -> str:
    """The pipeline of :func:`smearlab.preprocess.compare_pipelines` with the smallest mean-colour
    distance, grey conversion and doing nothing left out.

    Parameters
    ----------
    table : ``{pipeline: {"lab_mean_delta_e", "hist_emd"}}`` from
        :func:`smearlab.preprocess.compare_pipelines`.
    """
    return min((k for k in table if k not in ("none", "grayscale")), key=lambda k: table[k]["lab_mean_delta_e"])


def preprocessing_record(ds: SmearDataset, reference: str, other: str, table: dict[str, dict]) -> dict[str, Any]:
    """The headline numbers notebook 02 records.

    Parameters
    ----------
    ds : the dataset used.
    reference, other : the reference domain and the other one (:func:`two_domains`).
    table : the comparison of :func:`smearlab.preprocess.compare_pipelines` (must include ``"none"``).

    ``delta_e_reduction`` is None when the two domains already have one mean colour (no gap to reduce).
    """
    best = best_pipeline(table)
    gap = table["none"]["lab_mean_delta_e"]
    return {"dataset": ds.name, "domains": [reference, other],
            "delta_e": {k: v["lab_mean_delta_e"] for k, v in table.items()},
            "hist_emd": {k: v["hist_emd"] for k, v in table.items()}, "best_pipeline": best,
            "delta_e_reduction": 1 - table[best]["lab_mean_delta_e"] / gap if gap > 1e-9 else None}
