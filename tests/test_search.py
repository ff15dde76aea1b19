"""The grid search every tuning step shares: candidates in a known order, every score kept, the best."""
import math

import pytest

from smearlab.core.search import grid_points, grid_search


def test_a_dict_grid_is_every_combination_with_the_last_name_fastest():
    assert grid_points({"a": [1, 2], "b": ["x", "y"]}) == [{"a": 1, "b": "x"}, {"a": 1, "b": "y"},
                                                          {"a": 2, "b": "x"}, {"a": 2, "b": "y"}]
    given = [{"hull": False}, {"hull": True, "grow": 6}]
    points = grid_points(given)
    assert points == given and points[0] is not given[0]  # copies, in the given order
    assert grid_points({}) == [{}]  # no names: one candidate, the defaults
    for empty in ([], {"a": []}):
        with pytest.raises(ValueError, match="no candidate"):
            grid_points(empty)


def test_every_candidate_is_scored_once_and_the_first_of_equals_wins():
    calls = []

    def evaluate(c):
        calls.append(c)
        return -(c["x"] - 2) ** 2 if c["x"] != 3 else 0.0  # x = 2 and x = 3 tie
    r = grid_search({"x": [0, 1, 2, 3, 4]}, evaluate)
    assert [c["x"] for c in calls] == [0, 1, 2, 3, 4]
    assert r.params == {"x": 2} and r.score == 0
    assert [row["score"] for row in r.table] == [-4, -1, 0, 0.0, -4]


def test_several_scores_rank_separately_and_missing_scores_rank_last():
    scores = {1: {"cell": 0.8, "nucleus": None}, 2: {"cell": 0.7, "nucleus": 0.1}, 3: {"cell": math.nan, "nucleus": -1}}
    r = grid_search({"p": [1, 2, 3]}, lambda c: scores[c["p"]], key="cell")
    assert r.params == {"p": 1} and r.best("nucleus")["params"] == {"p": 2}
    assert r.table[0] == {"params": {"p": 1}, "cell": 0.8, "nucleus": None}


def test_a_numpy_nan_ranks_last_and_text_is_not_a_grid():
    import numpy as np
    found = grid_search({"a": [1, 2, 3]}, lambda c: np.float32("nan") if c["a"] == 1 else float(c["a"]))
    assert found.params == {"a": 3}                      # np.float32 NaN was picked as the best
    with pytest.raises(ValueError, match="list of candidates"):
        grid_points({"method": "otsu"})                  # tried as 'o', 't', 's', 'u'
