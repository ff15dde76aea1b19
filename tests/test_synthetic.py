"""The synthetic smear generator: determinism, ground truth, label schemes, domains, crops."""
from __future__ import annotations

import pickle
from collections import Counter

import numpy as np
import pytest

from smearlab.data import synthetic as S
from smearlab.data.sample import SmearDataset


@pytest.fixture(scope="module")
def ds_a():
    return S.make_dataset(12, seed=3, stain="A", malaria=True)


@pytest.fixture(scope="module")
def ds_b():
    return S.make_dataset(12, seed=3, stain="B", malaria=True)


@pytest.fixture(scope="module")
def wbc_ds():
    return S.make_dataset(40, seed=7, classes="wbc", width=256, height=192, n_rbc=(3, 8))


# -- determinism -------------------------------------------------------------------------------
def test_same_seed_same_bytes():
    a = S.generate_sample(5, index=2, malaria=True)
    b = S.generate_sample(5, index=2, malaria=True)
    assert a.image.tobytes() == b.image.tobytes()
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.masks, b.masks)
    np.testing.assert_array_equal(a.semantic, b.semantic)
    assert a.meta == b.meta


def test_different_seed_or_index_differs():
    a = S.generate_sample(5, index=0)
    assert a.image.tobytes() != S.generate_sample(6, index=0).image.tobytes()
    assert a.image.tobytes() != S.generate_sample(5, index=1).image.tobytes()


def test_image_independent_of_dataset(ds_a):
    alone = S.generate_sample(3, index=7, stain="A", malaria=True)
    assert alone.image.tobytes() == ds_a[7].image.tobytes()
    np.testing.assert_array_equal(alone.boxes, ds_a[7].boxes)


def test_classes_change_labels_not_image():
    a = S.generate_sample(1, classes="cbc")
    b = S.generate_sample(1, classes="wbc")
    assert a.image.tobytes() == b.image.tobytes()
    np.testing.assert_array_equal(a.boxes, b.boxes)


# -- shapes and ground truth -------------------------------------------------------------------
def test_shapes_and_dtypes(ds_a):
    assert isinstance(ds_a, SmearDataset) and ds_a.format == "synthetic"
    assert ds_a.name == "synthetic-A" and ds_a.semantic_names == ["background", "cell", "nucleus"]
    for s in ds_a:
        assert s.image.shape == (384, 512, 3) and s.image.dtype == np.uint8
        assert s.boxes.dtype == np.float32 and s.labels.dtype == np.int64
        assert s.masks.shape == (len(s.boxes), 384, 512) and s.masks.dtype == bool
        assert s.semantic.shape == (384, 512) and s.semantic.dtype == np.uint8
        assert s.domain == "A" and s.image_id.startswith("synA_")
        assert len(s.meta["cell_type"]) == len(s.boxes)
        assert 15 <= s.meta["cell_type"].count("RBC") + sum(
            t in S.STAGES for t in s.meta["cell_type"]) + s.meta["n_dropped"]


def test_boxes_are_tight_boxes_of_masks(ds_a):
    for s in list(ds_a)[:6]:
        b = s.boxes
        assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all()
        assert (b[:, 2] <= 512).all() and (b[:, 3] <= 384).all()
        assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
        for box, m in zip(b, s.masks):
            rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
            assert box.tolist() == [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]
        assert all(v >= S.MIN_VISIBLE for v in s.meta["visible"])


def test_semantic_consistent_with_instances(ds_a):
    checked = 0
    for s in ds_a:
        masks, sem, types = s.masks, s.semantic, s.meta["cell_type"]
        union = masks.any(0)
        assert (sem[union] > 0).all()
        if s.meta["n_dropped"]:
            continue
        checked += 1
        assert ((sem > 0) == union).all()
        nuc_owner = np.zeros_like(union)
        for m, t in zip(masks, types):
            if t in S.WBC_TYPES or t in S.STAGES:
                nuc_owner |= m
        assert not (sem == 2)[~nuc_owner].any()
    assert checked > 0


def test_label_schemes():
    for scheme, names in S.SCHEMES.items():
        ds = S.make_dataset(3, seed=0, classes=scheme, width=200, height=160, malaria=True)
        assert ds.class_names == names
        for s in ds:
            assert ((s.labels >= 0) & (s.labels < len(names))).all()
            for lab, t in zip(s.labels, s.meta["cell_type"]):
                assert names[lab] == S.class_name(t, scheme)


def test_all_wbc_types_appear(wbc_ds):
    seen = Counter(wbc_ds.class_names[k] for s in wbc_ds for k in s.labels)
    for t in S.WBC_TYPES:
        assert seen[t] > 0, seen


def test_malaria_stages_appear(ds_a):
    ds = S.make_dataset(4, seed=1, classes="malaria", width=256, height=192)
    seen = Counter(t for s in list(ds) + list(ds_a) for t in s.meta["cell_type"])
    for stage in S.STAGES:
        assert seen[stage] > 0, seen
    clean = S.make_dataset(3, seed=1, classes="malaria", malaria=False, width=256, height=192)
    assert not any(t in S.STAGES for s in clean for t in s.meta["cell_type"])


def test_objects_cut_by_edge_are_dropped_or_kept():
    ds = S.make_dataset(6, seed=2, width=256, height=192)
    assert sum(s.meta["n_dropped"] for s in ds) > 0
    assert any((s.boxes[:, 0] == 0).any() for s in ds)


# -- domains -----------------------------------------------------------------------------------
def test_domains_differ(ds_a, ds_b):
    def bg_mean(ds):
        return np.mean([s.image[s.semantic == 0].mean(0) for s in ds], 0)

    a, b = bg_mean(ds_a), bg_mean(ds_b)
    assert np.abs(a - b).max() > 20, (a, b)
    assert b[2] - b[1] > a[2] - a[1] + 20  # A yellowish (low blue), B lavender

    def rbc_size(ds):
        return np.mean([np.sqrt((b[2] - b[0]) * (b[3] - b[1])) for s in ds
                        for b, t, v in zip(s.boxes, s.meta["cell_type"], s.meta["visible"])
                        if t == "RBC" and v == 1.0])

    assert rbc_size(ds_b) > 1.15 * rbc_size(ds_a)
    assert all(s.domain == "B" for s in ds_b)


def test_make_domains():
    d = S.make_domains(2, seed=0, width=128, height=96)
    assert set(d) == {"A", "B"} and len(d["A"]) == len(d["B"]) == 2
    assert d["B"].name == "synthetic-B"


def test_custom_stain_style():
    style = S.StainStyle("C", background=(220, 230, 240), scale=0.8, blur=0.0)
    s = S.generate_sample(0, stain=style, width=128, height=96)
    assert s.domain == "C" and s.image_id == "synC_00000"


# -- must learn: not trivially separable -------------------------------------------------------
def test_images_have_texture_and_noise(ds_a):
    s = ds_a[0]
    rbc = [m for m, t in zip(s.masks, s.meta["cell_type"]) if t == "RBC"]
    px = s.image[np.any(rbc, 0) & (s.semantic == 1)].astype(float)
    assert px.std(0).min() > 5  # rim, pallor and texture, not a flat colour
    bg = s.image.astype(float)[150:200, 200:260]
    lap = bg[1:-1, 1:-1] * 4 - bg[:-2, 1:-1] - bg[2:, 1:-1] - bg[1:-1, :-2] - bg[1:-1, 2:]
    sem = s.semantic[151:199, 201:259]
    assert lap[sem == 0].std() > 2  # pixel noise present


# -- white-cell crops --------------------------------------------------------------------------
def test_wbc_crops():
    ds = S.make_wbc_crops(10, seed=0, stain="B", size=96)
    assert ds.class_names == list(S.WBC_TYPES)
    assert ds.semantic_names == ["background", "cytoplasm", "nucleus"]
    assert Counter(s.image_label for s in ds) == {i: 2 for i in range(5)}
    for s in ds:
        assert s.image.shape == (96, 96, 3) and s.boxes.shape == (1, 4)
        assert s.masks.shape == (1, 96, 96) and s.labels.tolist() == [s.image_label]
        assert set(np.unique(s.semantic)) == {0, 1, 2}
        assert ((s.semantic > 0) == s.masks[0]).all()
    again = S.make_wbc_crops(3, seed=0, stain="B", size=96)
    assert again[2].image.tobytes() == ds[2].image.tobytes()


def test_wbc_crops_natural_balance():
    ds = S.make_wbc_crops(60, seed=0, size=64, balance="natural")
    c = Counter(s.image_label for s in ds)
    assert c[0] > c[2] + c[3] + c[4]
    skewed = S.make_wbc_crops(10, seed=0, size=64, balance=[0, 0, 0, 0, 1])
    assert {s.image_label for s in skewed} == {4}


def test_samples_pickle():
    s = S.generate_sample(0, width=128, height=96)
    t = pickle.loads(pickle.dumps(s))
    np.testing.assert_array_equal(t.masks, s.masks)


# -- bad arguments -----------------------------------------------------------------------------
@pytest.mark.parametrize("kw, msg", [
    (dict(stain="C"), "unknown stain"),
    (dict(classes="foo"), "unknown classes scheme"),
    (dict(width=0), "width must be a positive integer"),
    (dict(height=-5), "height must be a positive integer"),
    (dict(parasite_rate=2.0), "parasite_rate"),
    (dict(n_rbc=-1), "n_rbc"),
    (dict(wbc_weights=[1, 2]), "wbc_weights"),
])
def test_bad_arguments(kw, msg):
    with pytest.raises(ValueError, match=msg):
        S.generate_sample(0, **kw)


def test_bad_dataset_arguments():
    with pytest.raises(ValueError, match="unknown stain"):
        S.make_dataset(2, stain="Z")
    with pytest.raises(ValueError, match="width"):
        S.make_dataset(2, width=0)
    with pytest.raises(ValueError, match="n must be"):
        S.make_dataset(-1)
    with pytest.raises(ValueError, match="balance"):
        S.make_wbc_crops(2, balance="rare")
    with pytest.raises(ValueError, match="size"):
        S.make_wbc_crops(2, size=0)
    with pytest.raises(ValueError, match="seed"):
        S.generate_sample(-1)


@pytest.mark.parametrize("hw, stain", [((16, 16), "A"), ((17, 64), "A"), ((22, 100), "B")])
def test_small_images_are_generated_with_white_cells_inside(hw, stain):
    for seed in range(6):  # a white cell drawn on an image narrower than its margins raised a numpy error
        s = S.generate_sample(seed, index=0, width=hw[1], height=hw[0], stain=stain, n_wbc=1)
        assert s.image.shape == (*hw, 3)


def test_an_infected_cell_whose_parasite_lies_outside_the_image_is_a_red_cell():
    """Its visible part is an uninfected red cell (no parasite pixel): it was labelled by its stage."""
    from smearlab.data import synthetic as S

    s = S.generate_sample(36, index=0, width=160, height=128, classes="malaria", parasite_rate=0.6)
    names = S.SCHEMES["malaria"]
    for k in range(len(s.boxes)):
        stage = names[s.labels[k]] in S.STAGES
        parasite_shown = bool((s.semantic[s.masks[k]] == 2).any())
        assert not stage or parasite_shown, (k, names[s.labels[k]])
    assert names[s.labels[5]] == "RBC" and s.meta["cell_type"][5] == "RBC"
