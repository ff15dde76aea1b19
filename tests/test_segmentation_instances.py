"""The learned instance segmenter: targets, touching objects split, tiles without seams, both
looks (bright-field and fluorescence), training lowers the loss, the model folder."""
import numpy as np
import pytest
import torch

from smearlab.data import Sample, SmearDataset
from smearlab.metrics.instances import dsb_score
from smearlab.models import load_model
from smearlab.segmentation import classical
from smearlab.segmentation.instances import (InstanceThresholds, InstanceTrainConfig, build_instance_unet,
                                             image_polarity, instance_targets, load_instance_unet, nuclear_channel, polarity,
                                             predict_instances, predict_probabilities, probabilities_to_instances,
                                             save_instance_unet, train_instance_unet)


def _disc(hw, cy, cx, r):
    yy, xx = np.mgrid[:hw[0], :hw[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _touching(hw=(64, 96)):
    a, b = _disc(hw, 32, 30, 14), _disc(hw, 32, 57, 14)  # 27 px apart, radius 14: they touch
    return np.stack([a, b & ~a])


def test_targets_mark_the_boundary_and_where_objects_touch():
    masks = _touching()
    t = instance_targets(masks, masks.shape[1:], boundary=2)
    assert set(np.unique(t)) == {0, 1, 2}
    assert t[32, 30] == 1 and t[0, 0] == 0 and t[32, 16] == 2  # centre, background, the left edge
    contact = masks[0] & np.roll(masks[1], -1, axis=1)  # pixels of disc 1 next to disc 2
    assert contact.any() and (t[contact] == 2).all()


def test_two_touching_discs_become_two_instances():
    masks = _touching()
    t = instance_targets(masks, masks.shape[1:], boundary=2)
    probs = np.stack([(t == k).astype(np.float32) for k in range(3)])
    pred = probabilities_to_instances(probs, InstanceThresholds(foreground=0.5, marker=0.5, min_size=10))
    assert len(pred["masks"]) == 2
    assert dsb_score([masks], [pred], kind="masks") > 0.8
    merged = probabilities_to_instances(np.stack([probs[0], probs[1] + probs[2], 0 * probs[2]]))
    assert len(merged["masks"]) == 1  # without the boundary class the pair is one object
    with pytest.raises(ValueError, match="channels last"):  # it returned (1, 64, 3) masks
        probabilities_to_instances(probs.transpose(1, 2, 0))
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):  # a bare IndexError
        probabilities_to_instances(probs[:2])


class _PixelModel(torch.nn.Module):
    """A per-pixel network (1x1 convolution): any tiling must give exactly its whole-image output."""

    def __init__(self):
        super().__init__()
        self.config = {"depth": 2}
        self.conv = torch.nn.Conv2d(1, 3, 1)

    def forward(self, x):
        return self.conv(x)


def test_tiled_probabilities_have_no_seams():
    torch.manual_seed(0)
    model = _PixelModel().eval()
    img = (np.random.default_rng(0).random((150, 230)) * 255).astype(np.uint8)
    with torch.no_grad():
        whole = model(torch.from_numpy(nuclear_channel(img))[None, None]).softmax(1)[0].numpy()
    tiled = predict_probabilities(model, img, tile=64, overlap=16)
    assert tiled.shape == (3, 150, 230)
    np.testing.assert_allclose(tiled, whole, atol=1e-5)
    small = predict_probabilities(model, img[:20, :30], tile=64, overlap=16)  # smaller than one tile
    assert small.shape == (3, 20, 30)


class _ShiftModel(torch.nn.Module):
    """A network that is not symmetric (a 3x3 convolution of fixed, lopsided weights)."""

    def __init__(self):
        super().__init__()
        self.config = {"depth": 2}
        self.conv = torch.nn.Conv2d(1, 3, 3, padding=1)
        with torch.no_grad():
            # lopsided per class (a kernel shared by all classes cancels in the softmax)
            self.conv.weight.copy_(torch.randn(3, 1, 3, 3, generator=torch.Generator().manual_seed(0)))

    def forward(self, x):
        return self.conv(x)


def test_flip_average_is_symmetric_and_exact_for_a_symmetric_network():
    img = (np.random.default_rng(1).random((40, 56)) * 255).astype(np.uint8)
    lopsided = _ShiftModel().eval()
    plain = predict_probabilities(lopsided, img, tile=64, overlap=16)
    avg = predict_probabilities(lopsided, img, tile=64, overlap=16, tta=True)
    assert avg.shape == (3, 40, 56) and not np.allclose(plain, avg, atol=1e-3)
    np.testing.assert_allclose(avg.sum(0), 1.0, atol=1e-5)
    # the average over the eight orientations no longer depends on the image's orientation
    turned = predict_probabilities(lopsided, np.rot90(img).copy(), tile=64, overlap=16, tta=True)
    np.testing.assert_allclose(np.rot90(avg, axes=(1, 2)), turned, atol=1e-5)
    flipped = predict_probabilities(lopsided, img[:, ::-1].copy(), tile=64, overlap=16, tta=True)
    np.testing.assert_allclose(avg[:, :, ::-1], flipped, atol=1e-5)
    pixel = _PixelModel().eval()  # a per-pixel network gives the same either way
    np.testing.assert_allclose(predict_probabilities(pixel, img, tta=True), predict_probabilities(pixel, img),
                               atol=1e-5)


def _field(look: str, seed: int = 0, hw=(96, 96)):
    """Discs on a plain field: bright on dark (fluorescence) or dark on bright (bright-field)."""
    rng = np.random.default_rng(seed)
    masks = [_disc(hw, y, x, 7) for y, x in ((20, 20), (20, 60), (60, 30), (70, 75))]
    fg = np.any(masks, axis=0)
    base = rng.normal(0, 4, hw)
    grey = np.where(fg, 200, 30) + base if look == "fluorescence" else np.where(fg, 70, 220) + base
    img = np.clip(np.repeat(grey[..., None], 3, axis=2), 0, 255).astype(np.uint8)
    return img, np.stack(masks)


@pytest.mark.parametrize("look", ["fluorescence", "bright-field"])
def test_polarity_is_decided_per_image_for_both_looks(look):
    img, masks = _field(look)
    x = nuclear_channel(img)
    assert x[masks.any(0)].mean() > 0.7 and x[~masks.any(0)].mean() < 0.3  # objects bright either way
    grey = img[..., 0] / 255.0
    assert polarity(grey) == ("dark" if look == "bright-field" else "bright")
    found = classical.watershed_segment(img, min_distance=5)  # the classical method decides it too
    assert dsb_score([masks], [found], kind="masks") > 0.7


@pytest.mark.parametrize("cover", [1, 2, 3])
def test_a_sparse_field_reads_the_same_in_both_looks(cover):
    """Dark objects on under 1 % of a field: the stretch, made before the side was known, set its
    low end in the background, spread the background noise over [0, 1] (half of it above 0.5) and
    crushed the objects to 0 (the network then saw hundreds of speckles)."""
    hw = (200, 200)
    fg = np.any([_disc(hw, 40 + 60 * k, 50 + 50 * k, 6) for k in range(cover)], axis=0)
    assert fg.mean() < 0.01
    noise = np.random.default_rng(cover).normal(0, 5, hw)
    for grey, look in ((np.where(fg, 200, 30) + noise, "bright"), (np.where(fg, 60, 220) + noise, "dark")):
        grey = np.clip(grey, 0, 255).astype(np.uint8)
        stained = np.clip(np.stack([grey * 1.0, grey * 0.75, grey * 0.95], -1), 0, 255).astype(np.uint8)
        for img in (grey, stained) if look == "dark" else (grey,):
            assert image_polarity(img) == look
            x = nuclear_channel(img)
            assert x[fg].mean() > 0.9 and (x[~fg] > 0.5).mean() < 0.001


def _packed_field(background, objects, hw=(80, 80), seed: int = 0):
    """A colour field whose discs cover about 60 % of it (a tissue section packed with nuclei)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:hw[0], :hw[1]]
    fg = np.zeros(hw, bool)
    for y in range(8, hw[0], 16):
        for x in range(8, hw[1], 16):
            fg |= (yy - y) ** 2 + (xx - x) ** 2 <= 7 ** 2
    img = np.where(fg[..., None], np.asarray(objects, float), np.asarray(background, float))
    return np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8), fg


def test_a_stained_field_packed_with_nuclei_is_still_bright_field():
    # purple nuclei on pink stroma, the nuclei the majority of the pixels: the minority rule alone
    # calls the stroma the objects; colour and a light field say bright-field
    img, fg = _packed_field(background=(235, 170, 205), objects=(95, 55, 145))
    assert fg.mean() > 0.5
    grey = img @ np.asarray((0.299, 0.587, 0.114)) / 255.0
    assert polarity((grey - grey.min()) / np.ptp(grey)) == "bright"  # what the old rule decided
    assert image_polarity(img) == "dark"
    x = nuclear_channel(img)
    assert x[fg].mean() > 0.7 and x[~fg].mean() < 0.3


@pytest.mark.parametrize("channel", ["auto", "gray", "value", "red", "green", "hematoxylin", "saturation"])
def test_the_classical_methods_find_the_packed_nuclei_in_every_channel(channel):
    # the same field for the classical methods: the side of each channel follows its physics (dark
    # in intensities, bright in stain densities), not which side holds fewer pixels
    img, fg = _packed_field(background=(235, 170, 205), objects=(95, 55, 145))
    mask, _ = classical.foreground_mask(img, "otsu", channel, min_size=0, opening_radius=0)
    assert (mask & fg).sum() / (mask | fg).sum() > 0.8
    assert classical.objects_dark(img, channel, np.zeros((2, 2)), 0.5) == (
        channel not in ("auto", "hematoxylin", "saturation"))


def test_the_classical_side_on_a_fluorescence_composite_is_still_the_minority():
    img, fg = _packed_field(background=(5, 5, 10), objects=(20, 200, 60))
    img[:40] = (5, 5, 10)
    fg[:40] = False
    assert not classical.is_stained_brightfield(img)
    mask, _ = classical.foreground_mask(img, "otsu", "gray", min_size=0, opening_radius=0)
    assert (mask & fg).sum() / (mask | fg).sum() > 0.8


def test_a_colour_composite_on_a_dark_field_is_fluorescence():
    img, fg = _packed_field(background=(5, 5, 10), objects=(20, 200, 60))
    img[:40] = (5, 5, 10)  # objects a minority: a sparse fluorescence field in colour
    fg[:40] = False
    assert image_polarity(img) == "bright"
    x = nuclear_channel(img)
    assert x[fg].mean() > 0.7 and x[~fg].mean() < 0.3


def _discs_dataset() -> SmearDataset:
    """Four fields of touching discs, bright-field and fluorescence in turn."""
    data = []
    for k in range(4):
        img, masks = _field("fluorescence" if k % 2 else "bright-field", seed=k)
        data.append(Sample(f"f{k}", boxes=[[0, 0, 1, 1]] * len(masks), labels=[0] * len(masks), _image=img,
                           _masks=masks))
    return SmearDataset(data, ["nucleus"], "discs")


def test_training_lowers_the_loss_and_the_model_folder_keeps_the_thresholds(tmp_path):
    ds = _discs_dataset()
    torch.manual_seed(0)
    model = build_instance_unet(base=8, depth=2)
    hist = train_instance_unet(model, ds, ds[:2], InstanceTrainConfig(crop=48, batch_size=4, steps=100, lr=5e-3,
                                                                      device="cpu"))
    assert hist[-1]["loss"] < 0.6 * hist[0]["loss"]
    assert isinstance(model.thresholds, InstanceThresholds) and hist[-1]["val_dsb"] > 0.5
    model.thresholds = InstanceThresholds(0.4, 0.7, 24, True)  # as a tuning would leave them
    folder = save_instance_unet(model, tmp_path / "m")  # no thresholds given: the model's (not the defaults)
    back = load_instance_unet(folder)
    assert back.thresholds == model.thresholds
    a = predict_instances(model, ds[:1], device="cpu")[0]
    b = predict_instances(back, ds[:1], device="cpu")[0]
    np.testing.assert_array_equal(a["masks"], b["masks"])
    assert load_model(folder, device="cpu").config == model.config


def _trained(ds: SmearDataset, steps: int = 100, **options):
    """A small instance U-Net trained from seed 0 on ``ds`` with ``options`` of
    :class:`InstanceTrainConfig`; ``(model, history)``, the loss checked to have fallen."""
    torch.manual_seed(0)
    model = build_instance_unet(base=8, depth=2)
    hist = train_instance_unet(model, ds, None, InstanceTrainConfig(crop=48, batch_size=4, steps=steps, lr=5e-3,
                                                                    device="cpu", **options))
    assert hist[-1]["loss"] < 0.6 * hist[0]["loss"]
    return model, hist


def test_training_with_separation_weights_lowers_the_loss():
    _trained(_discs_dataset(), separation=10.0)


def test_bfloat16_training_on_the_cpu_lowers_the_loss_and_keeps_float32_weights():
    ds = _discs_dataset()
    model, _ = _trained(ds, cpu_bf16=True)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    probs = predict_probabilities(model, ds[0].image, device="cpu")
    assert probs.dtype == np.float32 and np.allclose(probs.sum(0), 1.0, atol=1e-4)


def test_a_weight_average_ends_the_training_and_keeps_the_raw_weights_beside_it():
    ds = _discs_dataset()
    cfg = dict(crop=48, batch_size=4, lr=5e-3, device="cpu")

    def trained(steps, decay=None):
        torch.manual_seed(0)
        model = build_instance_unet(base=8, depth=2)
        train_instance_unet(model, ds, None, InstanceTrainConfig(**cfg, steps=steps, ema_decay=decay))
        return model

    plain, one, two = trained(2), trained(1, 0.9), trained(2, 0.9)
    assert plain.raw_weights is None
    for k, v in plain.state_dict().items():  # the average draws no random numbers: the same run
        torch.testing.assert_close(two.raw_weights[k], v)
    for k, v in one.state_dict().items():  # its first update copies the weights
        torch.testing.assert_close(v, one.raw_weights[k])
    d = min(0.9, 2 / 11)  # the warm-up weight of the second update
    for k, v in two.state_dict().items():
        torch.testing.assert_close(v, d * one.raw_weights[k] + (1 - d) * two.raw_weights[k], rtol=1e-5, atol=1e-6)
    assert any(not torch.allclose(v, two.raw_weights[k]) for k, v in two.state_dict().items())
    for bad in (0.0, 1.0, -0.5):
        with pytest.raises(ValueError, match="ema_decay"):
            InstanceTrainConfig(ema_decay=bad)


def test_scale_jitter_zooms_image_and_targets_together():
    from smearlab.segmentation.instances import _crop_batch

    yy, xx = np.mgrid[:40, :40]
    disc = (yy - 20) ** 2 + (xx - 20) ** 2 <= 6 ** 2  # 113 px, inside any 20 px window of the centre
    x = disc.astype(np.float32)
    y = instance_targets(disc[None], disc.shape, boundary=1)
    items = [(x, y)]
    rng = np.random.default_rng(0)
    plain_x, plain_y, _ = _crop_batch(items, rng, 40, 2)
    zx, zy, zw = _crop_batch(items, np.random.default_rng(0), 40, 6, scale_jitter=(2.0, 2.0))
    assert zx.shape == (6, 1, 40, 40) and zy.shape == zw.shape == (6, 40, 40) and zy.dtype == torch.long
    assert bool((zw == 1).all())  # no separation weights: every pixel weighs one
    assert set(np.unique(zy.numpy())) <= {0, 1, 2}
    # a twice-zoomed crop shows the disc at four times the area, wherever the 20 px window fell
    assert int((plain_y[0] > 0).sum()) == int(disc.sum())
    for k in range(6):
        fg = zy[k] > 0
        if fg.any():
            assert fg.sum() <= 4 * disc.sum() * 1.1
            assert float(zx[k, 0][fg].mean()) > 0.5 > float(zx[k, 0][~fg].mean())  # image and targets aligned
    big = max(int((zy[k] > 0).sum()) for k in range(6))
    assert big > 2 * disc.sum()


def test_scale_jitter_is_checked():
    with pytest.raises(ValueError, match="scale_jitter"):
        InstanceTrainConfig(scale_jitter=(1.5, 0.5))
    with pytest.raises(ValueError, match="scale_jitter"):
        InstanceTrainConfig(scale_jitter=(0.0, 2.0))
    assert InstanceTrainConfig(scale_jitter=[0.7, 1.4]).scale_jitter == (0.7, 1.4)


def test_crop_sampling_by_area_or_by_image():
    """``sampling="area"`` draws a 16x larger image 16x as often; ``"image"`` draws both alike."""
    from smearlab.segmentation.instances import _crop_batch

    small = (np.zeros((32, 32), np.float32), np.zeros((32, 32), np.uint8))
    big = (np.ones((128, 128), np.float32), np.ones((128, 128), np.uint8))
    share = {}
    for sampling in ("area", "image"):
        x, _, _ = _crop_batch([small, big], np.random.default_rng(0), 32, 400, sampling=sampling)
        share[sampling] = float((x.flatten(1).amax(1) == 0).float().mean())  # crops of the small (black) image
    assert abs(share["area"] - 1 / 17) < 0.04
    assert abs(share["image"] - 0.5) < 0.08
    with pytest.raises(ValueError, match="sampling"):
        InstanceTrainConfig(sampling="look")


def test_separation_weights_peak_between_touching_objects():
    """U-Net's weight map: high where two discs touch and in a narrow gap, nothing far from a
    second object, nothing with one object."""
    from smearlab.segmentation.instances import separation_weights

    masks = _touching()
    w = separation_weights(masks, masks.shape[1:], weight=10.0, sigma=5.0)
    contact = masks[0] & np.roll(masks[1], -1, axis=1)
    assert w.dtype == np.float32 and w.shape == masks.shape[1:]
    assert w[contact].min() > 9.0 and w.max() <= 10.0  # d1 + d2 is about one pixel there
    assert w[32, 4] < 1e-3 and w[0, 0] < 0.5  # the far side of a disc, a corner
    assert (separation_weights(masks[:1], masks.shape[1:]) == 0).all()
    hw = (40, 80)
    gap = np.stack([_disc(hw, 20, 20, 10), _disc(hw, 20, 46, 10)])  # 6 px of background between them
    g = separation_weights(gap, hw, weight=10.0, sigma=5.0)
    assert 10 * np.exp(-49 / 50) * 0.8 < g[20, 33] < 10 * np.exp(-25 / 50)  # d1 + d2 = 7 px mid-gap


def test_separation_weights_reach_the_loss_on_the_pixels_between_objects():
    """With ``separation`` the training items carry the weights, zero on the interior, and the
    crops carry ``1 + weight``; without it every pixel weighs one and the loss is torch's."""
    from smearlab.segmentation.instances import _crop_batch, _prepared, weighted_cross_entropy

    masks = _touching()
    img = np.repeat(np.where(masks.any(0), 200, 20)[..., None], 3, axis=2).astype(np.uint8)
    ds = SmearDataset([Sample("pair", boxes=[[0, 0, 1, 1]] * 2, labels=[0, 0], _image=img, _masks=masks)],
                      ["nucleus"], "touching pair")
    (x, t, e), = _prepared(ds, boundary=2, separation=(10.0, 5.0))[0]
    assert e.shape == t.shape and (e[t == 1] == 0).all() and e[t == 2].max() > 9.0
    (plain,) = _prepared(ds, boundary=2)[0]
    assert len(plain) == 2
    _, y, w = _crop_batch([(x, t, e)], np.random.default_rng(0), 64, 4)
    assert float(w.min()) == 1.0 and float(w.max()) > 10.0
    assert ((w > 1) <= (y != 1)).all()  # only background and boundary pixels weigh more
    logits = torch.randn(4, 3, 64, 64)
    cw = torch.tensor([1.0, 1.0, 3.0])
    torch.testing.assert_close(weighted_cross_entropy(logits, y, cw, torch.ones_like(w)),
                               torch.nn.functional.cross_entropy(logits, y, weight=cw))
    for bad in (dict(separation=-1.0), dict(separation_sigma=0.0)):
        with pytest.raises(ValueError, match="separation"):
            InstanceTrainConfig(**bad)


@pytest.mark.parametrize("bad", [0, -3.0])
def test_boundary_weight_must_be_positive(bad):
    """A zero or negative weight of the boundary class is refused: the class that splits touching
    objects would be ignored or pushed away, silently."""
    with pytest.raises(ValueError, match="boundary_weight"):
        InstanceTrainConfig(boundary_weight=bad)


def _sized_dataset() -> SmearDataset:
    """Fields of discs of radius 5, 8 and 12, both looks."""
    data, rng = [], np.random.default_rng(0)
    for k, r in enumerate((5, 8, 12, 5, 8, 12)):
        hw = (120, 120)
        centres = [(y, x) for y in range(r + 6, hw[0] - r - 6, 3 * r) for x in range(r + 6, hw[1] - r - 6, 3 * r)]
        masks = np.stack([_disc(hw, y, x, r) for y, x in centres])
        fg = masks.any(0)
        look = "fluorescence" if k % 2 else "bright-field"
        grey = (np.where(fg, 200, 30) if look == "fluorescence" else np.where(fg, 70, 220)) + rng.normal(0, 4, hw)
        img = np.clip(np.repeat(grey[..., None], 3, axis=2), 0, 255).astype(np.uint8)
        data.append(Sample(f"r{r}_{k}", boxes=[[0, 0, 1, 1]] * len(masks), labels=[0] * len(masks), _image=img,
                           _masks=masks))
    return SmearDataset(data, ["nucleus"], "sized discs")


def test_object_diameter_is_the_median_equivalent_circle():
    from smearlab.segmentation.size import object_diameter

    hw = (80, 80)
    masks = np.stack([_disc(hw, 20, 20, 5), _disc(hw, 50, 50, 10), _disc(hw, 20, 60, 10)])
    assert object_diameter(masks) == pytest.approx(20.0, rel=0.05)
    assert np.isnan(object_diameter(np.zeros((0, *hw), bool)))


def test_training_at_one_object_size_resizes_image_and_targets_together():
    from smearlab.segmentation.instances import _prepared

    ds = _sized_dataset()
    items, channels, diameters = _prepared(ds, boundary=1, diameter=16.0)
    assert [round(d) for d in diameters] == [10, 16, 24, 10, 16, 24]
    for (x, y), d, c in zip(items, diameters, channels):
        zoom = 16.0 / d
        assert x.shape == y.shape == tuple(round(n * zoom) for n in c.shape)
        fg = y > 0
        assert float(x[fg].mean()) > 0.5 > float(x[~fg].mean())  # the channel and the targets stay aligned
        labels, n = __import__("scipy").ndimage.label(fg)
        sizes = np.bincount(labels.ravel())[1:]
        assert np.median(2 * np.sqrt(sizes / np.pi)) == pytest.approx(16.0, rel=0.15)
    with pytest.raises(ValueError, match="diameter"):
        InstanceTrainConfig(diameter=0)
    # too few images for the size model: refused before the training (it failed after, weights trained
    # on resized images left in a model that would predict them unresized)
    model = build_instance_unet(base=8, depth=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="at least 3 training images with objects.*has 2"):
        train_instance_unet(model, ds.subset([0, 1]), None, InstanceTrainConfig(steps=50, diameter=16.0, device="cpu"))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_a_model_trained_at_one_size_estimates_sizes_and_travels_with_its_size_model(tmp_path):
    ds = _sized_dataset()
    model, hist = _trained(ds, steps=120, diameter=16.0)
    assert model.diameter == 16.0 and hist[-1]["size_model_error"] >= 1.0
    from smearlab.segmentation.instances import nuclear_channel as channel

    small, large = (model.size_model.estimate(model, channel(ds[k].image)) for k in (0, 2))
    assert small < large  # fitted on these images: radius 5 reads smaller than radius 12
    probs = predict_probabilities(model, ds[2].image, device="cpu", diameter=24.0)
    assert probs.shape == (3, 120, 120) and np.allclose(probs.sum(0), 1.0, atol=1e-4)
    folder = save_instance_unet(model, tmp_path / "m")
    back = load_instance_unet(folder, device="cpu")
    assert back.diameter == 16.0 and back.size_model == model.size_model
    np.testing.assert_allclose(predict_probabilities(back, ds[2].image), predict_probabilities(model, ds[2].image),
                               atol=1e-5)
    back.size_model = None
    with pytest.raises(ValueError, match="diameter"):
        predict_probabilities(back, ds[2].image)
    assert predict_probabilities(back, ds[2].image, diameter=24.0).shape == (3, 120, 120)


def test_model_folders_that_would_predict_wrongly_are_refused(tmp_path):
    """A folder whose files disagree is refused naming the file; a missing thresholds.json warns."""
    import json
    import warnings

    from smearlab.classification.model import build_classifier, load_classifier, save_classifier
    from smearlab.data import DataError
    from smearlab.segmentation.unet import UNet, load_unet, save_unet

    def edit(path, **changes):
        d = json.loads(path.read_text())
        d.update(changes)
        path.write_text(json.dumps(d))

    # the class list of config.json must be the weights' (a reordered list mislabels every cell)
    clf = save_classifier(build_classifier(["neutrophil", "lymphocyte", "monocyte"], width=8, input_size=32),
                          tmp_path / "clf")
    edit(clf / "config.json", class_names=["lymphocyte", "neutrophil", "monocyte"])
    with pytest.raises(DataError, match=r"weights\.pt.*differ"):
        load_classifier(clf, "cpu")
    sem = save_unet(UNet(3, 2, base=4, depth=2), tmp_path / "sem", class_names=["background", "cell"])
    with pytest.raises(DataError, match="class-map segmenter"):
        load_instance_unet(sem, "cpu")
    edit(sem / "config.json", class_names=["background", "cytoplasm", "nucleus"])
    with pytest.raises(DataError, match="differ"):
        load_unet(sem, "cpu")

    inst = save_instance_unet(build_instance_unet(base=4, depth=2), tmp_path / "inst", InstanceThresholds(0.4, 0.7, 5))
    thresholds = inst / "thresholds.json"
    for bad, msg in (({"note": 1}, "unknown settings"), ({"foreground": "0.5"}, "foreground must be"),
                     ({"marker": 1.5}, "marker must be"), ({"min_size": -1}, "min_size"), ({"tta": "yes"}, "tta")):
        thresholds.write_text(json.dumps({"foreground": 0.4, "marker": 0.7, "min_size": 5, "tta": False, **bad}))
        with pytest.raises(DataError, match=msg):
            load_instance_unet(inst, "cpu")
    thresholds.unlink()  # deleted by hand: config.json lists it, so the folder is refused, not run untuned
    with pytest.raises(DataError, match="thresholds.json: missing"):
        load_instance_unet(inst, "cpu")
    from smearlab.core.model_folder import write_side_file
    write_side_file(inst, "thresholds.json", None)  # removed the documented way: the untuned defaults, warned
    with pytest.warns(UserWarning, match="untuned default"):
        assert load_instance_unet(inst, "cpu").thresholds == InstanceThresholds()
    edit(inst / "config.json", diameter=20.0)
    with warnings.catch_warnings(), pytest.raises(DataError, match="size model"):
        warnings.simplefilter("ignore")
        load_instance_unet(inst, "cpu")


def test_instance_input_drops_alpha_and_refuses_nan():
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[8:16, 8:16] = 200
    rgba = np.concatenate([rgb, np.full((32, 32, 1), 255, np.uint8)], axis=2)
    np.testing.assert_array_equal(nuclear_channel(rgba), nuclear_channel(rgb))
    np.testing.assert_array_equal(nuclear_channel(rgb[..., :1]), nuclear_channel(rgb[..., 0]))
    with pytest.raises(ValueError, match="NaN"):
        nuclear_channel(np.full((8, 8), np.nan, np.float32))


class _MeanModel(_PixelModel):
    """A network whose output depends on the statistics of the whole tile (as GroupNorm does)."""

    def forward(self, x):
        return self.conv(x - x.mean())


def test_an_image_smaller_than_a_tile_is_not_mostly_padding():
    torch.manual_seed(0)
    model = _MeanModel().eval()
    img = (np.random.default_rng(2).random((40, 56)) * 255).astype(np.uint8)
    with torch.no_grad():
        whole = model(torch.from_numpy(nuclear_channel(img))[None, None]).softmax(1)[0].numpy()
    # a 256 px tile padded the image to 256 x 256 (zeros), and the tile's statistics were the padding's
    np.testing.assert_allclose(predict_probabilities(model, img, tile=256, overlap=48), whole, atol=1e-5)
    tall = np.concatenate([img] * 8)                     # 320 x 56: tiled along one side only
    assert predict_probabilities(model, tall, tile=64, overlap=16).shape == (3, 320, 56)


def test_tile_and_overlap_that_leave_pixels_unpredicted_are_refused():
    model = _PixelModel().eval()
    img = np.zeros((40, 40), np.uint8)
    for kw in (dict(tile=64, overlap=-8), dict(tile=64, overlap=64), dict(tile=2, overlap=0), dict(tile=0, overlap=0)):
        with pytest.raises(ValueError, match="tile|overlap"):
            predict_probabilities(model, img, **kw)


def test_a_marker_outside_the_foreground_does_not_join_two_objects():
    a, b = _disc((32, 64), 16, 16, 8), _disc((32, 64), 16, 48, 8)
    probs = np.zeros((3, 32, 64), np.float32)
    probs[1][a | b] = 0.9
    probs[1][14:18, 16:48][~(a | b)[14:18, 16:48]] = 0.45   # a faint ridge between them: marker-high, not foreground
    probs[0] = 1 - probs[1]
    pred = probabilities_to_instances(probs, InstanceThresholds(foreground=0.6, marker=0.4, min_size=5))
    assert len(pred["masks"]) == 2 and all(m.sum() == a.sum() for m in pred["masks"])


def test_one_image_array_is_one_prediction():
    model = build_instance_unet(base=4, depth=2).eval()
    img = np.zeros((24, 40, 3), np.uint8)
    preds = predict_instances(model, img, thresholds=InstanceThresholds())
    assert len(preds) == 1 and preds[0]["masks"].shape[1:] == (24, 40)


def test_a_hand_edited_thresholds_file_is_refused_not_half_used(tmp_path):
    import json

    from smearlab.data import DataError
    inst = save_instance_unet(build_instance_unet(base=4, depth=2), tmp_path / "inst", InstanceThresholds(0.4, 0.7, 5))
    for content, msg in (("5", "JSON object"), ("null", "JSON object"), ('{"foreground": 0.3}', "missing settings"),
                         ("{}", "missing settings")):
        (inst / "thresholds.json").write_text(content)
        with pytest.raises(DataError, match=msg):
            load_instance_unet(inst, "cpu")
    # a folder saved before the flip average was a tuned setting: tuned without it
    (inst / "thresholds.json").write_text('{"foreground": 0.4, "marker": 0.7, "min_size": 5}')
    assert load_instance_unet(inst, "cpu").thresholds == InstanceThresholds(0.4, 0.7, 5, False)


def test_the_learned_segmenters_count_error_counts_every_final_instance():
    from smearlab.data.boxes import mask_box
    from smearlab.metrics.instances import count_error, score_instances
    masks = _touching()
    sample = Sample("touching", boxes=np.stack([mask_box(m) for m in masks]), labels=[0] * len(masks),
                    _image=np.zeros((*masks.shape[1:], 3), np.uint8), _masks=masks)
    ds = SmearDataset([sample], ["object"])
    pred = {"boxes": sample.boxes, "labels": sample.labels, "masks": masks,
            "scores": np.array([0.4, 0.45], np.float32)}  # mean interior probabilities: below 0.5 as they often are
    m = score_instances(ds, [pred])
    assert m["count_error"] == 0.0 and m["dsb_metric"] == pytest.approx(1.0)
    assert count_error(ds, [pred]) == 1.0 and count_error(ds, [pred], score_threshold=None) == 0.0


def test_the_classical_foreground_takes_an_rgba_image():
    rgb = np.full((40, 40, 3), 230, np.uint8)
    rgb[10:20, 10:20] = (90, 40, 120)
    rgba = np.dstack([rgb, np.full((40, 40), 255, np.uint8)])
    np.testing.assert_array_equal(classical.foreground_mask(rgba, min_size=4)[0],
                                  classical.foreground_mask(rgb, min_size=4)[0])


def test_training_settings_and_data_it_would_misread_are_refused():
    """Objects without masks were trained on as background; zero sizes failed with bare errors."""
    from smearlab.core.errors import DataError
    for bad in ({"steps": 0}, {"batch_size": 0}, {"crop": 0}, {"crop": 8}, {"steps": 1.5}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            InstanceTrainConfig(**bad)
    img = np.full((64, 64, 3), 40, np.uint8)
    ds = SmearDataset([Sample("nomasks", _image=img, boxes=[[5, 5, 20, 20]], labels=[0])], ["cell"])
    with pytest.raises(DataError, match="nomasks.*no instance masks"):
        train_instance_unet(build_instance_unet(base=4, depth=2), ds, None, InstanceTrainConfig(crop=32, steps=1))


def test_train_unet_refuses_an_empty_set_and_zero_epochs():
    from smearlab.data.synthetic import make_dataset
    from smearlab.segmentation.train import train_unet
    from smearlab.segmentation.unet import UNet
    ds = make_dataset(2, seed=0, width=64, height=48)
    model = UNet(base=4, depth=2)
    for kw, msg in (({"epochs": 0}, "epochs"), ({"batch_size": 0}, "batch_size")):
        with pytest.raises(ValueError, match=msg):
            train_unet(model, ds, **kw)
    with pytest.raises(ValueError, match="empty"):
        train_unet(model, ds.subset([]))


def test_segmentation_metrics_take_a_segmenters_instances_as_final_by_default():
    """Perfect probabilities of three small nuclei give three instances scoring 0.27 (the boundary
    band is most of a small nucleus): a default threshold of 0.5 scored them DSB 0, count error 1."""
    from smearlab.data.boxes import mask_box
    from smearlab.metrics.instances import segmentation_metrics
    hw = (60, 80)
    gt = np.stack([_disc(hw, y, x, 4) for y, x in ((15, 15), (30, 50), (45, 20))])
    t = instance_targets(gt, hw)
    p = probabilities_to_instances(np.stack([(t == c).astype(np.float32) for c in range(3)]),
                                   InstanceThresholds(min_size=6))
    assert len(p["masks"]) == 3 and p["scores"].max() < 0.5
    img = np.repeat(np.where(gt.any(0), 220, 30).astype(np.uint8)[..., None], 3, 2)
    ds = SmearDataset([Sample("a", boxes=np.stack([mask_box(m) for m in gt]), labels=np.zeros(3), _image=img,
                              _masks=gt)], ["object"])
    m = segmentation_metrics(ds, [p])
    assert m["dsb_metric"] == pytest.approx(1.0) and m["count_error"] == 0 and m["objects_predicted"] == 3
    assert segmentation_metrics(ds, [p], score_threshold=0.5)["objects_predicted"] == 0  # a detector's cut, asked for


def test_a_model_trained_on_the_earlier_input_channel_is_read_with_a_warning(tmp_path, caplog):
    import json
    folder = save_instance_unet(build_instance_unet(base=4, depth=2), tmp_path / "m")
    assert json.loads((folder / "config.json").read_text())["input_version"] == 2
    with caplog.at_level("WARNING", logger="smearlab.segmentation.instances"):
        load_instance_unet(folder, device="cpu")
    assert "input channel" not in caplog.text
    config = json.loads((folder / "config.json").read_text())
    del config["input_version"]  # saved before the objects' side was decided before the stretch
    (folder / "config.json").write_text(json.dumps(config))
    with caplog.at_level("WARNING", logger="smearlab.segmentation.instances"):
        load_instance_unet(folder, device="cpu")
    assert "input channel of version 1" in caplog.text


def test_the_default_channel_of_a_colour_fluorescence_field_is_grey_not_the_stain():
    """channel='auto' deconvolved a colour composite on a dark field: the logarithm of a
    near-black background turned into noise above the nuclei (22 objects, or none, for 2)."""
    rng = np.random.default_rng(0)
    img = np.zeros((64, 96, 3), np.float64) + (5, 5, 10)
    yy, xx = np.mgrid[:64, :96]
    for cy, cx in ((20, 25), (40, 70)):
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < 64] = (20, 200, 60)
    img = np.clip(img + rng.normal(0, 2, img.shape), 0, 255).astype(np.uint8)
    assert not classical.is_stained_brightfield(img)
    for method in (classical.threshold_segment, classical.watershed_segment):
        assert len(method(img)["boxes"]) == 2, method.__name__


def test_a_field_one_object_fills_is_said_and_its_side_can_be_given():
    img = np.full((60, 60), 230, np.uint8)  # one dark disc over 64 % of a bright field
    yy, xx = np.mgrid[:60, :60]
    disc = (yy - 30) ** 2 + (xx - 30) ** 2 < 27 ** 2
    img[disc] = 40
    with pytest.warns(UserWarning, match="foreground fills 100 %"):
        classical.foreground_mask(img)
    mask, _ = classical.foreground_mask(img, invert=True)
    assert (mask == disc).mean() > 0.99
    assert nuclear_channel(img)[disc].mean() < 0.2  # auto: the background taken for the object
    assert nuclear_channel(img, "dark")[disc].mean() > 0.8 and nuclear_channel(img, "dark")[~disc].mean() < 0.2
    with pytest.raises(ValueError, match="polarity"):
        nuclear_channel(img, "inverted")


def test_targets_and_weights_of_0_1_masks_equal_those_of_bool_masks_and_a_band_below_1_is_refused():
    """uint8 masks indexed rows instead of pixels (40 foreground pixels for 50) and ~1 read every
    pixel as outside; a boundary of 0 or -3 silently meant 1."""
    from smearlab.segmentation.instances import InstanceTrainConfig, instance_targets, separation_weights
    m = np.zeros((2, 20, 20), np.uint8)
    m[0, 3:8, 3:8] = 1
    m[1, 12:17, 12:17] = 1
    assert (instance_targets(m, (20, 20), 1) == instance_targets(m.astype(bool), (20, 20), 1)).all()
    assert np.allclose(separation_weights(m, (20, 20)), separation_weights(m.astype(bool), (20, 20)))
    for bad in (0, -3):
        with pytest.raises(ValueError, match="boundary"):
            instance_targets(m, (20, 20), bad)
        with pytest.raises(ValueError, match="boundary"):
            InstanceTrainConfig(boundary=bad)


def test_predict_probabilities_runs_in_eval_mode_and_restores_the_mode():
    import torch

    from smearlab.segmentation.instances import build_instance_unet, predict_probabilities
    torch.manual_seed(0)
    m = build_instance_unet(base=4, depth=2, norm="batch")
    img = np.random.default_rng(0).integers(0, 255, (40, 48), dtype=np.uint8)
    m.train()
    p_train = predict_probabilities(m, img, tile=32, overlap=8)
    assert m.training  # restored
    m.eval()
    assert np.allclose(p_train, predict_probabilities(m, img, tile=32, overlap=8))


def test_crops_of_an_image_without_a_class_map_beside_ones_with_are_refused():
    from smearlab.core.errors import DataError
    from smearlab.data import Sample, SmearDataset
    from smearlab.segmentation.train import crop_dataset
    img = np.zeros((32, 32, 3), np.uint8)
    mask = np.zeros((1, 32, 32), bool)
    mask[0, 8:20, 8:20] = True
    sem = np.where(mask[0], 2, 0).astype(np.uint8)
    with_map = Sample("a", _image=img, boxes=[[8, 8, 20, 20]], labels=[0], _masks=mask, _semantic=sem)
    without = Sample("b", _image=img, boxes=[[8, 8, 20, 20]], labels=[0], _masks=mask)
    ds = SmearDataset([with_map, without], ["cell"], semantic_names=["background", "rbc", "wbc"])
    with pytest.raises(DataError, match="no class map"):
        crop_dataset(ds)
    assert np.unique(crop_dataset(SmearDataset([with_map], ["cell"], semantic_names=["background", "rbc", "wbc"]))[0]
                     .semantic).tolist() == [0, 2]


@pytest.mark.parametrize("variant, band", [("boundary", 2), ("foreground", 1)])
def test_the_dsb_benchmark_s_variants_are_valid_training_settings(monkeypatch, variant, band):
    """The benchmark's "foreground" variant asked for a boundary band of 0, read as 1 px until such
    bands were refused; from then on the benchmark stopped after 30 minutes of choosing."""
    import importlib.util
    import sys
    from pathlib import Path
    here = Path(__file__).resolve().parent.parent / "benchmarks"
    saved = list(sys.path)
    sys.path.insert(0, str(here))  # the script imports its neighbour _common (and adds its folder itself)
    try:
        spec = importlib.util.spec_from_file_location("bench_dsb", here / "segmentation_dsb.py")
        bench = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bench)
    finally:
        sys.path[:] = saved  # its scripts (augment.py, predict.py...) would shadow other imports
    seen = []

    class Stop(Exception):
        pass

    def spy(model, fit, val, cfg, progress=False):
        seen.append(cfg)
        raise Stop
    monkeypatch.setattr(bench, "train_instance_unet", spy)
    with pytest.raises(Stop):
        bench.train_learned([], [], variant, 0.1, torch.device("cpu"), 0)
    assert seen[0].boundary == band
