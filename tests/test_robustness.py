"""Noise robustness check: noise statistics, noisy datasets, clean/noisy metric tables."""
from __future__ import annotations

import numpy as np
import pytest

from smearlab.data import Sample, SmearDataset
from smearlab.data.synthetic import make_wbc_crops
from smearlab.metrics.robustness import add_noise, compare_with_noise, noise_parameters, noisy_dataset


def test_noise_statistics_follow_the_definition():
    rng = np.random.default_rng(1)
    img = rng.integers(60, 181, (400, 400, 3)).astype(np.uint8)  # far from 0 and 255: no clipping
    f = img.astype(np.float64)
    mean, std = noise_parameters(img)
    assert mean == pytest.approx(0.05 * 180)
    assert std ** 2 == pytest.approx(0.10 * np.mean(f ** 2))
    # smaller fractions keep the sum inside 0..255 so the added noise can be measured
    out = add_noise(img, mean_frac=0.02, var_frac=0.01, seed=3)
    assert out.dtype == np.uint8 and out.shape == img.shape
    d = out.astype(np.float64) - f
    assert d.mean() == pytest.approx(0.02 * 180, abs=0.1)
    assert d.var() == pytest.approx(0.01 * np.mean(f ** 2) + 1 / 12, rel=0.02)  # + rounding


def test_noise_is_seeded_and_clipped():
    img = np.full((30, 40), 250, np.uint8)
    a, b, c = add_noise(img, seed=0), add_noise(img, seed=0), add_noise(img, seed=1)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.shape == (30, 40) and a.max() == 255 and a.min() >= 0
    zero = np.zeros((5, 5, 3), np.uint8)
    assert np.array_equal(add_noise(zero), zero)  # max 0 and power 0: no noise


@pytest.mark.parametrize("bad, msg", [
    (np.full((4, 4), 300, np.uint16), "0..255"),
    (np.full((4, 4), np.nan), "NaN"),
    (np.zeros((4, 4, 2), np.uint8), "shape"),
    (np.zeros((0, 4), np.uint8), "zero size"),
    (np.array([["a"]]), "numeric"),
])
def test_bad_images(bad, msg):
    with pytest.raises(ValueError, match=msg):
        add_noise(bad)


def test_bad_fractions():
    with pytest.raises(ValueError, match="var_frac"):
        add_noise(np.zeros((3, 3), np.uint8), var_frac=-0.1)
    with pytest.raises(ValueError, match="mean_frac"):
        noisy_dataset(SmearDataset([], []), mean_frac=float("nan"))


def test_noisy_dataset_keeps_annotations_and_is_deterministic():
    ds = make_wbc_crops(4, seed=0, size=48)
    noisy = noisy_dataset(ds, seed=5)
    assert len(noisy) == 4 and noisy.class_names == ds.class_names
    assert noisy.semantic_names == ds.semantic_names
    for s, n in zip(ds, noisy):
        assert n.image_id == s.image_id and n.image_label == s.image_label
        np.testing.assert_array_equal(n.boxes, s.boxes)
        np.testing.assert_array_equal(n.masks, s.masks)
        np.testing.assert_array_equal(n.semantic, s.semantic)
        assert n.image.shape == s.image.shape and n.image.dtype == np.uint8
        assert np.abs(n.image.astype(int) - s.image.astype(int)).mean() > 10
    # same seed, same noise; the noise of an image depends on its id, not its position
    again = noisy_dataset(ds[::-1], seed=5)
    assert np.array_equal(again[0].image, noisy[3].image)
    assert not np.array_equal(noisy_dataset(ds, seed=6)[0].image, noisy[0].image)


def test_noisy_dataset_from_files_has_no_path(tmp_path):
    from PIL import Image
    p = tmp_path / "a.png"
    Image.fromarray(np.full((6, 7, 3), 100, np.uint8)).save(p)
    ds = SmearDataset([Sample("a", p)], ["c"])
    (n,) = noisy_dataset(ds)
    assert n.path is None and n.meta["clean_path"] == str(p)
    n.release()  # must not fall back to the clean file
    assert n.image.shape == (6, 7, 3) and not np.array_equal(n.image, ds[0].image)


def test_compare_with_noise_reports_every_metric():
    ds = make_wbc_crops(3, seed=0, size=48)

    def evaluate(d):
        mean = float(np.mean([s.image.std() for s in d]))
        return {"spread": mean, "per": {"n": len(d), "undefined": None}}

    res = compare_with_noise(evaluate, ds, seed=0)
    assert set(res) == {"spread", "per.n", "per.undefined"}
    assert res["per.n"] == {"clean": 3, "noisy": 3, "delta": 0.0}
    assert res["per.undefined"]["delta"] is None
    r = res["spread"]
    assert r["noisy"] > r["clean"] and r["delta"] == pytest.approx(r["noisy"] - r["clean"])
    with pytest.raises(ValueError, match="dict"):
        compare_with_noise(lambda d: 1.0, ds)


def test_a_float_image_in_0_1_is_refused_and_alpha_is_kept_out_of_the_noise():
    rgb = np.random.default_rng(0).integers(0, 256, (16, 16, 3)).astype(np.uint8)
    with pytest.raises(ValueError, match="0..1 data"):      # it would come back black
        add_noise(rgb / 255.0)
    dark = np.zeros((8, 8, 3), np.uint8)
    dark[0, 0] = 1
    assert add_noise(dark).dtype == np.uint8                # an 8-bit image this dark is still 8-bit
    rgba = np.dstack([rgb, np.full((16, 16), 200, np.uint8)])
    assert noise_parameters(rgba) == noise_parameters(rgb)  # alpha neither measured...
    out = add_noise(rgba, seed=3)
    assert (out[..., 3] == 200).all() and (out[..., :3] == add_noise(rgb, seed=3)).all()  # ...nor noised
