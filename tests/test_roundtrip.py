"""The synthetic default written to disk as VOC, COCO and YOLO loads back the same."""
import numpy as np
import pytest

from smearlab.data import load, save
from smearlab.data.synthetic import make_dataset


@pytest.fixture(scope="module")
def smears():
    return make_dataset(3, seed=11, stain="B", classes="wbc")


@pytest.mark.parametrize("fmt", ["voc", "coco", "yolo"])
def test_synthetic_round_trip(smears, tmp_path, fmt):
    target = tmp_path / ("gt.json" if fmt == "coco" else fmt)
    written = save(smears, target, fmt)
    back = load(written)
    assert back.format == fmt and len(back) == len(smears) and not back.skipped
    for a, b in zip(smears, back):
        assert b.image.shape == a.image.shape
        assert np.array_equal(b.image, a.image)  # lossless PNG
        assert len(b) == len(a)
        np.testing.assert_allclose(b.boxes, a.boxes, atol=1e-2)
        assert [back.class_names[i] for i in b.labels] == [smears.class_names[i] for i in a.labels]
        if fmt == "coco":  # masks survive as RLE
            assert np.array_equal(b.masks, a.masks)
    if fmt != "voc":  # VOC stores no class list: it knows only the classes that occur
        assert sorted(back.class_names) == sorted(smears.class_names)
