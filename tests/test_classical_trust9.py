"""The look of an image (grey or colour, stained bright-field or fluorescence) and the warnings of the
classical segmenters: sensor noise is not colour, a packed colour fluorescence field is not
bright-field, a close minority-rule polarity and a field without foreground are said."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from skimage.filters import threshold_otsu

from smearlab.segmentation import classical as C


def _discs(hw, centres, r):
    yy, xx = np.mgrid[:hw[0], :hw[1]]
    return np.any([(yy - y) ** 2 + (xx - x) ** 2 <= r * r for y, x in centres], axis=0)


def _grid(hw=(80, 80), step=16, r=7):
    return _discs(hw, [(y, x) for y in range(step // 2, hw[0], step) for x in range(step // 2, hw[1], step)], r)


def _paint(fg, objects, background, sd, seed=0):
    rng = np.random.default_rng(seed)
    img = np.where(fg[..., None], np.asarray(objects, float), np.asarray(background, float))
    return np.clip(img + rng.normal(0, sd, img.shape), 0, 255).astype(np.uint8)


def _iou(pred, fg):
    u = pred["masks"].any(0) if len(pred["masks"]) else np.zeros_like(fg)
    return (u & fg).sum() / (u | fg).sum()


def _caught(fn, *a, **kw):
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter("always")
        out = fn(*a, **kw)
    return out, [str(w.message) for w in ws if issubclass(w.category, UserWarning)]


# -- 1. sensor noise on a grey image is not colour ----------------------------------------------------

@pytest.mark.parametrize("sd", [0, 2, 4, 8])
def test_per_channel_noise_on_a_grey_image_is_not_colour(sd):
    """Three bright discs on a grey field, noise drawn per channel: the largest channel spread of one
    pixel called it colour from sd 4, the stained path took the background for the object (1 object)."""
    fg = _discs((100, 120), [(25, 30), (70, 40), (40, 90)], 10)
    img = _paint(fg, (220, 220, 220), (80, 80, 80), sd)
    assert not C.is_colour(img)
    assert not C.is_stained_brightfield(img)
    for fn in (C.threshold_segment, C.watershed_segment):
        p = fn(img)
        assert len(p["boxes"]) == 3 and _iou(p, fg) > 0.9, fn.__name__


def test_stained_and_sparse_colour_images_are_still_colour():
    fg = _discs((100, 120), [(25, 30), (70, 40), (40, 90)], 10)
    assert C.is_colour(_paint(fg, (95, 55, 145), (240, 220, 235), 3))  # H&E-like
    sparse = _paint(_discs((100, 120), [(25, 30), (70, 40), (40, 90)], 5), (20, 200, 60), (5, 5, 10), 2)
    assert C.is_colour(sparse) and not C.is_stained_brightfield(sparse)  # green on 2 % of the field
    # colour on under 1 % of the pixels reads as grey: the grey channel and the minority rule, as for
    # a colour fluorescence image
    speck = _paint(_discs((100, 120), [(50, 60)], 4), (20, 200, 60), (5, 5, 10), 2)
    assert not C.is_colour(speck) and len(C.threshold_segment(speck, min_size=4)["boxes"]) == 1
    assert not C.is_colour(np.full((40, 40, 3), 128, np.uint8)) and not C.is_colour(np.zeros((40, 40)))


# -- 2. a packed colour fluorescence field is not bright-field ----------------------------------------

@pytest.mark.parametrize("objects", [(20, 200, 60), (40, 60, 230)], ids=["green", "DAPI blue"])
def test_a_packed_colour_fluorescence_field_is_not_bright_field(objects):
    """Nuclei on 58 % of a near-black field: the median grey lies on the nuclei, above a quarter of the
    scale, and the field was read as stained bright-field (0 objects, no warning)."""
    fg = _grid()
    assert fg.mean() > 0.55
    img = _paint(fg, objects, (5, 5, 10), 4)
    assert C.is_colour(img) and not C.is_stained_brightfield(img)
    for fn in (C.threshold_segment, C.watershed_segment):
        p, said = _caught(fn, img)
        assert len(p["boxes"]) == 25 and _iou(p, fg) > 0.9 and not said, fn.__name__
    assert C.objects_dark(img, "green", np.zeros((2, 2)), 0.5) is False  # bright in every intensity
    from smearlab.segmentation.instances import image_polarity
    assert image_polarity(img) == "bright"  # the learned segmenter's input: by the minority rule "dark"


def test_a_stained_field_with_black_vignetted_corners_stays_bright_field():
    """Black corners outside the field stop are near-black and colourless like a fluorescence
    background, but the lit side is a pale, light field: bright-field."""
    hw = (120, 160)
    fg = _discs(hw, [(40, 50), (80, 110), (60, 80)], 9)
    img = _paint(fg, (95, 55, 145), (235, 215, 230), 3)
    yy, xx = np.mgrid[:hw[0], :hw[1]]
    img[(yy - 60) ** 2 + (xx - 80) ** 2 > 70 ** 2] = 4  # a quarter of the field
    assert C.is_stained_brightfield(img)
    assert C.objects_dark(img, "gray", np.zeros((2, 2)), 0.5)  # the physics of a stained field


def test_near_black_stained_nuclei_are_not_a_fluorescence_background():
    fg = _grid(step=20, r=7)
    assert 0.05 < fg.mean() < 0.5
    img = _paint(fg, (30, 5, 50), (235, 200, 225), 3)  # very dark purple: coloured even so
    assert C.is_stained_brightfield(img)
    assert len(C.threshold_segment(img)["boxes"]) == 16


# -- 3. a close minority-rule polarity is said ---------------------------------------------------------

def _packed_grey(seed=3, hw=160, r=9):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:hw, :hw]
    fg, cs = np.zeros((hw, hw), bool), []
    for _ in range(5000):
        cy, cx = rng.uniform(0, hw, 2)
        if all((cy - a) ** 2 + (cx - b) ** 2 > (2 * r + 1) ** 2 for a, b in cs):
            cs.append((cy, cx))
            fg |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    return np.clip(np.where(fg, 70, 220) + rng.normal(0, 3, fg.shape), 0, 255).astype(np.uint8), fg


def test_a_packed_grey_field_warns_that_the_polarity_may_be_wrong():
    img, fg = _packed_grey()
    assert 0.45 < fg.mean() < 0.6
    (mask, _), said = _caught(C.foreground_mask, img)
    assert len(said) == 1 and "polarity may be wrong" in said[0] and "invert=True" in said[0]
    assert (mask & fg).sum() / (mask | fg).sum() < 0.5  # still read the wrong way round: a warning only
    for fn in (C.threshold_segment, C.watershed_segment):
        _, said = _caught(fn, img)
        assert len(said) == 1 and "polarity may be wrong" in said[0], fn.__name__
    (mask, _), said = _caught(C.foreground_mask, img, invert=True)  # the side given: right, and silent
    assert not said and (mask & fg).sum() / (mask | fg).sum() > 0.9


def test_holes_filled_over_a_large_share_warn():
    """Discs on 69 % of a field with a connected background web (no opening to break it): the minority
    side, the web, holds 31 %, but filling its holes (the discs) adds about half the image."""
    fg = _grid((96, 96), 16, 7.5)
    img = np.clip(np.where(fg, 200, 30) + np.random.default_rng(0).normal(0, 3, fg.shape), 0, 255).astype(np.uint8)
    (mask, _), said = _caught(C.foreground_mask, img, opening_radius=0)
    assert len(said) == 1 and "filling holes added" in said[0] and "invert=False" in said[0]


def test_clear_minority_fields_and_stained_fields_do_not_warn():
    fg = _discs((100, 120), [(25, 30), (70, 40), (40, 90)], 10)
    grey = np.clip(np.where(fg, 200, 30) + np.random.default_rng(0).normal(0, 3, fg.shape), 0, 255).astype(np.uint8)
    for img in (grey, _paint(fg, (95, 55, 145), (240, 220, 235), 3),
                _paint(_grid(), (95, 55, 145), (235, 170, 205), 4)):  # stained, nuclei on 58 %
        _, said = _caught(C.watershed_segment, img)
        assert not said


# -- 4. a field without foreground is said -------------------------------------------------------------

@pytest.mark.parametrize("sd", [0.3, 0.5, 1, 3, 8])
def test_a_blank_field_with_sensor_noise_warns_once_that_objects_may_be_noise(sd):
    img = np.clip(np.random.default_rng(1).normal(200, sd, (200, 200)), 0, 255).astype(np.uint8)
    out = {}
    for fn in (C.threshold_segment, C.watershed_segment):
        out[fn], said = _caught(fn, img)
        assert len(said) == 1 and "no clear foreground" in said[0] and "may be noise" in said[0], fn.__name__
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the warning is all that is new: silenced, the same prediction
        warnings.filterwarnings("ignore", "the .*(no clear foreground|polarity may be wrong)")
        quiet = C.threshold_segment(img)
    np.testing.assert_array_equal(quiet["masks"], out[C.threshold_segment]["masks"])
    if sd == 3:  # the outputs are not changed: the noise is still segmented (about 49 objects)
        assert len(quiet["boxes"]) > 20 and (quiet["scores"] > 0.5).all()


def test_small_synthetic_white_cell_crops_are_a_clear_foreground():
    """48 px crops: edges are a large share of the pixels, and the mean neighbour difference took
    them for noise (3.8 noise sd between Otsu's sides in the saturation channel); the median does not."""
    from smearlab.data.synthetic import make_wbc_crops
    for s in make_wbc_crops(20, seed=0, size=48):
        (pred, _), said = _caught(C.extract_cell, s.image)
        assert len(pred["boxes"]) == 1 and not said


@pytest.mark.parametrize("r", [5, 10])
def test_one_small_object_on_a_noisy_field_is_a_clear_foreground(r):
    fg = _discs((200, 200), [(100, 100)], r)  # 0.2 % of the field for r = 5
    img = np.clip(np.where(fg, 60, 200) + np.random.default_rng(1).normal(0, 3, fg.shape), 0, 255).astype(np.uint8)
    eta, gap = C._separability(C.stretch01(C.to_channel(img)))
    assert eta > 0.75 and gap > 10 * C.NOISE_GAP
    p, said = _caught(C.watershed_segment, img)
    assert len(p["boxes"]) == 1 and not said


# -- the shared real images: the decisions the benchmark figures rest on ----------------------------

@pytest.mark.shared_data
def test_the_dsb2018_subset_keeps_its_looks_and_warns_on_none(shared_data):
    from smearlab.data.formats import dsb2018
    root = shared_data / "dsb2018_subset"
    if not root.exists():
        pytest.skip(f"{root} not found")
    ds = dsb2018.load(root)
    assert len(ds) == 30
    for s in ds:
        img = np.asarray(s.image)
        group = str(s.meta.get("group"))
        colour, stained = C.is_colour(img), C.is_stained_brightfield(img)
        x = C.stretch01(C.to_channel(img))
        dark = C.objects_dark(img, "auto", x, threshold_otsu(x))
        expected = {"fluo_gray_darkbg": (False, False, False), "color_brightbg": (True, True, False),
                    "gray_brightbg": (False, False, True)}[group]
        assert (colour, stained, dark) == expected, (s.image_id, group)
        _, said = _caught(C.foreground_mask, img)
        assert not said, (s.image_id, said)
