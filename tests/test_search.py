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


def test_fold_count_caps_by_the_class_with_fewest_groups():
    from smearlab.core.search import fold_count
    # items alone: the class of 3 caps 5 folds at 3; a class of one item does not cap them
    assert fold_count(["a"] * 10 + ["b"] * 3 + ["c"], 5) == (3, {"c": 1})
    # groups: "a" has 10 items in 2 groups, so 2 folds, whatever its item count
    k, short = fold_count(["a"] * 10 + ["b"] * 6, 5, groups=[0] * 5 + [1] * 5 + [2, 3, 4, 5, 6, 7])
    assert (k, short) == (2, {})
    assert fold_count(["a", "b"], 5) == (2, {"a": 1, "b": 1})  # never below 2: the caller refuses


def test_fit_features_warns_with_the_fold_count_it_uses(caplog):
    """The warning named the cap of the crops (3 folds) before the groups lowered it to the 2 used."""
    import logging

    import numpy as np

    from smearlab.classification.crops import CropDataset
    from smearlab.classification.model import build_classifier
    from smearlab.classification.train import fit_features
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (14, 32, 32, 3), dtype=np.uint8)
    labels = [0] * 3 + [1] * 10 + [2]  # a: 3 crops in 3 groups; b: 10 crops in 2 groups; c: one crop
    groups = ["a0", "a1", "a2"] + ["b0"] * 5 + ["b1"] * 5 + ["c0"]
    crops = CropDataset(images, labels, ["a", "b", "c"], name="g", groups=groups)
    with caplog.at_level(logging.WARNING):
        out = fit_features(build_classifier(["a", "b", "c"], arch="features"), crops, folds=5, repeats=1)
    assert out["folds"] == 2
    assert "c (1) group(s) of crops only, fewer than the 2 cross-validation folds" in caplog.text
