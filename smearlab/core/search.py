"""The one grid search every tuning step uses: candidate settings, a score per candidate, the best.

Thresholds of the learned segmenter (:func:`smearlab.segmentation.instances.tune_thresholds`),
the classical methods' settings (:func:`smearlab.segmentation.classical.suggest_params`,
:func:`smearlab.experiments.gradcam_masks.tune_classical`), the benchmarks' choice of a classical
method and the report sweeps' points all enumerate candidates the same way, score each once and
keep a table of every score, so that a choice can always be shown next to what it beat. Tune on
training or validation images only.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np


def grid_points(grid: "Mapping[str, Sequence] | Sequence[Mapping[str, Any]]") -> list[dict[str, Any]]:
    """The candidates of a grid, one ``{name: value}`` dict each.

    Parameters
    ----------
    grid : a dict of candidate lists (every combination, in the dict's order, the last name
        varying fastest) or a list of candidate dicts (taken as given).

    Returns
    -------
    list of dict
        the candidates.

    Raises
    ------
    ValueError
        when there is no candidate (an empty list, or a name with no value).
    """
    if isinstance(grid, Mapping):
        text = [k for k, v in grid.items() if isinstance(v, (str, bytes))]
        if text:  # 'otsu' would be tried as 'o', 't', 's', 'u'
            raise ValueError(f"grid values of {text[0]!r} must be a list of candidates, got the text {grid[text[0]]!r}")
        single = [k for k, v in grid.items() if not isinstance(v, Iterable)]
        if single:  # {"t": 0.5}: a TypeError from itertools
            raise ValueError(f"grid values of {single[0]!r} must be a list of candidates, got {grid[single[0]]!r}")
        points = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    else:
        bad = [p for p in grid if not isinstance(p, Mapping)]
        if bad:  # ["otsu", "li"]: "dictionary update sequence"
            raise ValueError(f"a grid is a dict of candidate lists or a list of parameter dicts, got {bad[0]!r} in a list")
        points = [dict(p) for p in grid]
    if not points:
        raise ValueError(f"the parameter grid {grid!r} has no candidate")
    return points


def _value(v) -> float:
    """A score for comparison: None and NaN rank below every number."""
    if v is None:
        return -math.inf
    v = float(v)  # numpy and torch scalars too: their NaN ranked as the best score
    return -math.inf if math.isnan(v) else v


@dataclass
class SearchResult:
    """Every candidate's scores, and the best candidate by any of them.

    Parameters
    ----------
    table : one row per candidate, in the order tried: ``{"params": {...}, <score name>: value ...}``.
    key : the score :meth:`best` ranks by when given none.
    """

    table: list[dict[str, Any]] = field(default_factory=list)
    key: str = "score"

    def best(self, key: str | None = None) -> dict[str, Any]:
        """The row with the highest ``key`` score (the first of equals; None and NaN rank last).

        Parameters
        ----------
        key : the score to rank by (None: :attr:`key`).
        """
        k = self.key if key is None else key
        if not self.table:
            raise ValueError("no candidate was scored")
        if not any(math.isfinite(_value(row.get(k))) for row in self.table):  # the first would pass for the best
            found = sorted({c for row in self.table for c in row if c != "params"})
            raise ValueError(f"no candidate has a score {k!r} that is a number (scores recorded: {found})")
        return max(self.table, key=lambda row: _value(row.get(k)))

    @property
    def params(self) -> dict[str, Any]:
        """The best candidate's settings (by :attr:`key`)."""
        return self.best()["params"]

    @property
    def score(self) -> float | None:
        """The best candidate's score (by :attr:`key`; None when no candidate scored it)."""
        return self.best().get(self.key)


def grid_search(grid: "Mapping[str, Sequence] | Sequence[Mapping[str, Any]]",
                evaluate: Callable[[dict[str, Any]], "float | Mapping[str, Any] | None"], *,
                key: str = "score") -> SearchResult:
    """Score every candidate of ``grid`` once with ``evaluate``.

    Parameters
    ----------
    grid : the candidates (:func:`grid_points`).
    evaluate : ``f(params) -> score``: a number (stored as ``key``) or a dict of scores (the
        larger the better for the one ranked by).
    key : the score the result ranks by by default.

    Returns
    -------
    SearchResult
        the table of every candidate's scores; ``.best()``, ``.params``, ``.score``.
    """
    table = []
    for params in grid_points(grid):
        scores = evaluate(params)
        row: dict[str, Any] = {"params": params}
        row.update(scores if isinstance(scores, Mapping) else {key: scores})
        table.append(row)
    return SearchResult(table, key)


def fold_count(labels, folds: int, groups=None) -> tuple[int, dict[Any, int]]:
    """How many stratified cross-validation folds a labelled set can fill, and which classes fall short.

    A fold holds whole groups (``groups``: one key per item, e.g. the crops of one image or
    near-copies kept together; None: every item alone), so a class spread over ``n`` groups can be
    in at most ``n`` folds. The count is ``folds`` capped by the class with the fewest groups,
    not below 2; a class of one group cannot be split at all and does not cap it.

    Parameters
    ----------
    labels : ``(N,)`` class of each item.
    folds : the folds asked for.
    groups : ``(N,)`` group of each item, or None.

    Returns
    -------
    tuple
        ``(k, short)``: the folds to use, and ``{class: groups}`` of every class spread over fewer
        than ``k`` groups (those cannot be in every fold; a caller refuses or says so).
    """
    y = np.asarray(labels)
    g = np.arange(len(y)) if groups is None else np.asarray(groups)
    units = {c: len(np.unique(g[y == c])) for c in np.unique(y).tolist()}
    several = [n for n in units.values() if n >= 2]
    k = max(2, min(int(folds), min(several))) if several else 2
    return k, {c: n for c, n in units.items() if n < k}
