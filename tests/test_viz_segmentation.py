"""Drawing predictions and class maps (notebook 04)."""
import matplotlib.pyplot as plt
import numpy as np
import pytest

from smearlab.data.sample import Sample
from smearlab.viz import plots as viz


def _sample():
    img = np.full((20, 30, 3), 200, np.uint8)
    return Sample("s", boxes=[[2, 2, 10, 10]], labels=[0], _image=img)


def test_prediction_sample_keeps_scored_instances_with_masks():
    masks = np.zeros((2, 20, 30), bool)
    masks[0, 2:10, 2:10] = True
    masks[1, 12:18, 20:28] = True
    pred = {"boxes": np.array([[2, 2, 10, 10], [20, 12, 28, 18]], np.float32), "labels": np.array([0, 1]),
            "scores": np.array([0.9, 0.2], np.float32), "masks": masks}
    s = viz.prediction_sample(_sample(), pred, score_threshold=0.5)
    assert len(s.boxes) == 1 and s.masks.shape == (1, 20, 30) and s.masks[0].sum() == 64
    _, ax = plt.subplots()
    viz.draw_prediction(_sample(), pred, ["a", "b"], ax, score_threshold=0.0)
    assert len(ax.patches) == 2 and "2 predicted" in ax.get_title()
    plt.close("all")


def test_draw_semantic_colours_only_foreground_and_checks_shape():
    img = np.zeros((10, 10, 3), np.uint8)
    sem = np.zeros((10, 10), np.uint8)
    sem[2:5, 2:5] = 2
    _, ax = plt.subplots()
    viz.draw_semantic(img, sem, ["background", "cytoplasm", "nucleus"], ax)
    shown = ax.get_images()[0].get_array()
    assert np.allclose(shown[0, 0], 0) and shown[3, 3].sum() > 0
    with pytest.raises(ValueError, match="does not match"):
        viz.draw_semantic(img, sem[:5], ["background", "x"])
    plt.close("all")
