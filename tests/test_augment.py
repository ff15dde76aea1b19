"""smearlab.augment: geometry of boxes and masks, clip/drop rules, photometry, seeds, batches."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from smearlab.augment import (BOX_RULES, Affine, Augment, ColorJitter, Gamma, GaussianBlur, GaussianNoise,
                              HorizontalFlip, Pad, RandomCrop, Resize, Rot90, SaltPepper, StainJitter,
                              VerticalFlip, default_augment, map_boxes, warp)
from smearlab.data import DataError, Sample
from smearlab.data.boxes import mask_box
from smearlab.data.synthetic import make_dataset
from smearlab.data.torchdata import DetectionDataset

OBJECTS = ((20, 15, 8, 6), (50, 40, 10, 12), (70, 30, 5, 5))  # ellipses (cx, cy, rx, ry), inside 80x60


def ellipse_sample(h=60, w=80, objects=OBJECTS, seed=0):
    """Elliptic cells; boxes are the tight boxes of their masks, semantic = label + 1."""
    yy, xx = np.mgrid[:h, :w] + 0.5
    masks = np.zeros((len(objects), h, w), bool)
    for m, (cx, cy, rx, ry) in zip(masks, objects):
        m[((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1] = True
    masks = masks[masks.any((1, 2))]
    labels = np.arange(len(masks)) % 3
    sem = np.zeros((h, w), np.uint8)
    for m, lab in zip(masks, labels):
        sem[m] = lab + 1
    img = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    meta = {"cell_type": [f"c{i}" for i in range(len(masks))], "difficult": np.arange(len(masks)) % 2 == 1,
            "stain": "A"}
    s = Sample("ell", boxes=tight(masks), labels=labels, _image=img, meta=meta)
    s.masks, s.semantic = masks, sem
    return s


def tight(masks):
    return np.array([mask_box(m) if m.any() else np.zeros(4) for m in masks], np.float32).reshape(-1, 4)


def area(b):
    return (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])


def iou(a, b):
    lo, hi = np.maximum(a[:2], b[:2]), np.minimum(a[2:], b[2:])
    inter = np.prod(np.clip(hi - lo, 0, None))
    return inter / (area(a) + area(b) - inter)


def contains(box, inner, tol=1.0):
    return bool(np.all(box[:2] <= inner[:2] + tol) and np.all(box[2:] >= inner[2:] - tol))


def check_aligned(out):
    n = len(out.boxes)
    assert len(out.labels) == n == len(out.masks) == len(out.meta["cell_type"]) == len(out.meta["difficult"])
    assert out.masks.shape[1:] == out.image.shape[:2] == out.semantic.shape


def targets_of(samples, device="cpu"):
    return [{"boxes": torch.tensor(s.boxes, device=device), "labels": torch.tensor(s.labels, device=device),
             "masks": torch.tensor(s.masks, device=device).to(torch.uint8)} for s in samples]


# ---------------------------------------------------------------------------------------------
# geometry
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("transform, fn", [(HorizontalFlip(1), lambda a: a[..., :, ::-1, :]),
                                           (VerticalFlip(1), lambda a: a[..., ::-1, :, :])])
def test_flips_are_exact(transform, fn):
    s = ellipse_sample()
    out = Augment([transform])(s)
    assert np.array_equal(out.image, fn(s.image))
    assert np.array_equal(out.masks, fn(s.masks[..., None])[..., 0])
    assert np.array_equal(out.semantic, fn(s.semantic[..., None])[..., 0])
    assert np.array_equal(out.boxes, tight(out.masks))
    check_aligned(out)


def test_rot90_is_exact_for_every_k():
    s = ellipse_sample()
    seen = set()
    for seed in range(12):
        out = Augment([Rot90(p=1)], seed=seed)(s)
        ks = [k for k in (1, 2, 3) if np.array_equal(out.image, np.rot90(s.image, k))]
        assert len(ks) == 1
        k = ks[0]
        seen.add(k)
        assert np.array_equal(out.masks, np.rot90(s.masks, k, axes=(1, 2)))
        assert np.array_equal(out.semantic, np.rot90(s.semantic, k))
        assert np.array_equal(out.boxes, tight(out.masks)) and np.array_equal(out.labels, s.labels)
    assert seen == {1, 2, 3}


def test_affine_box_rules_on_a_rotated_disc():
    s = ellipse_sample(64, 64, objects=((32, 32, 10, 10),))
    outs = {rule: Augment([Affine(degrees=(45, 45), box_rule=rule)])(s) for rule in BOX_RULES}
    mb = tight(outs["mask"].masks)[0]
    for rule in BOX_RULES:  # masks are warped the same way whatever the box rule
        assert np.array_equal(outs[rule].masks, outs["mask"].masks)
    assert np.array_equal(outs["mask"].boxes[0], mb)
    b8, b4 = outs["8point"].boxes[0], outs["4corner"].boxes[0]
    assert area(b8) < area(b4)
    assert iou(b8, mb) > iou(b4, mb) and iou(b8, mb) > 0.85
    assert contains(b8, mb) and contains(b4, mb, tol=0)
    sem = outs["8point"].semantic
    assert (sem == 1).sum() == outs["8point"].masks.sum()
    # the corners the rotation brings in from outside the image are padding: no class (ignored), not background
    assert set(np.unique(sem).tolist()) == {0, 1, 255} and sem[0, 0] == sem[-1, -1] == 255 and sem[32, 2] == 0


def test_affine_mask_rule_matches_warped_masks():
    s = ellipse_sample()
    aug = Augment([Affine(degrees=30, scale=(0.8, 1.2), shear=10, translate=(0.1, 0.1), box_rule="mask")], seed=3)
    for _ in range(5):
        out = aug(s)
        check_aligned(out)
        assert np.array_equal(out.boxes, tight(out.masks))


def test_map_boxes_axis_aligned_rules_agree():
    boxes = torch.tensor([[1.0, 2.0, 5.0, 9.0], [0.0, 0.0, 3.0, 3.0]])
    flip = torch.tensor([[-1.0, 0, 10], [0, 1, 0], [0, 0, 1]], dtype=torch.float64)
    for rule in ("8point", "4corner"):
        assert torch.equal(map_boxes(boxes, torch.eye(3, dtype=torch.float64), rule).float(), boxes)
        assert torch.equal(map_boxes(boxes, flip, rule).float(), torch.tensor([[5.0, 2, 9, 9], [7, 0, 10, 3]]))


def test_pad_places_the_image_at_the_centre():
    s = ellipse_sample()
    out = Augment([Pad((100, 90))])(s)
    assert out.image.shape == (100, 90, 3)
    assert np.array_equal(out.image[20:80, 5:85], s.image) and out.image[:20].max() == 0
    assert np.array_equal(out.masks[:, 20:80, 5:85], s.masks) and np.array_equal(out.semantic[20:80, 5:85], s.semantic)
    assert np.array_equal(out.boxes, s.boxes + [5, 20, 5, 20]) and np.array_equal(out.boxes, tight(out.masks))


def _offset(out_img, img):
    """(oy, ox) such that out_img is img[oy:, ox:] (crop inside the image)."""
    h, w = out_img.shape[:2]
    hits = [(oy, ox) for oy in range(img.shape[0] - h + 1) for ox in range(img.shape[1] - w + 1)
            if np.array_equal(img[oy:oy + h, ox:ox + w], out_img)]
    assert len(hits) == 1
    return hits[0]


def test_random_crop_clips_and_drops_with_meta_aligned():
    s = ellipse_sample()
    clipped = dropped = 0
    for seed in range(10):
        out = Augment([RandomCrop((60, 40))], seed=seed)(s)
        oy, ox = _offset(out.image, s.image)
        b = s.boxes - [ox, oy, ox, oy]
        b = np.clip(b, 0, [40, 60, 40, 60])
        left = s.masks[:, oy:oy + 60, ox:ox + 40]
        keep = np.flatnonzero((b[:, 2] - b[:, 0] >= 1) & (b[:, 3] - b[:, 1] >= 1) & left.any((1, 2)))
        cut = np.any(b[keep] != s.boxes[keep] - [ox, oy, ox, oy], axis=1)
        clipped += int(cut.any())
        dropped += len(s.boxes) - len(keep)
        # a cut object's box is that of its pixels left; one with no pixel left is dropped (a box
        # corner inside the crop kept a cell none of which it showed)
        want = np.where(cut[:, None], tight(left[keep]), b[keep])
        assert np.array_equal(out.boxes, want) and np.array_equal(out.labels, s.labels[keep])
        assert np.array_equal(out.masks, s.masks[keep][:, oy:oy + 60, ox:ox + 40])
        assert out.meta["cell_type"] == [s.meta["cell_type"][i] for i in keep]
        assert np.array_equal(out.meta["difficult"], s.meta["difficult"][keep]) and out.meta["stain"] == "A"
        assert all(contains(bx, mb, tol=0) for bx, mb in zip(out.boxes, tight(out.masks)))
        check_aligned(out)
    assert clipped and dropped


def test_a_crop_holding_a_box_corner_but_none_of_the_cell_drops_it():
    import torch

    from smearlab.augment import warp
    yy, xx = np.mgrid[:40, :40]
    disc = (yy + 0.5 - 20) ** 2 + (xx + 0.5 - 20) ** 2 <= 100
    t = {"boxes": torch.tensor([[10.0, 10.0, 30.0, 30.0]]), "labels": torch.tensor([1]),
         "masks": torch.from_numpy(disc[None])}
    m = torch.tensor([[1.0, 0, -28], [0, 1, -28], [0, 0, 1]], dtype=torch.float64)[None]  # window at (28, 28)
    _, (out,) = warp(torch.zeros(1, 3, 40, 40), [t], m, (12, 12))
    assert len(out["boxes"]) == 0 and len(out["labels"]) == 0  # it kept box [0, 0, 2, 2] with no pixel


def test_random_crop_larger_than_image_pads():
    s = ellipse_sample()
    out = Augment([RandomCrop((70, 96))], seed=1)(s)
    assert out.image.shape == (70, 96, 3) and len(out.boxes) == len(s.boxes)
    assert np.array_equal(out.boxes, tight(out.masks))
    oy, ox = out.boxes[0, 1] - s.boxes[0, 1], out.boxes[0, 0] - s.boxes[0, 0]
    assert np.array_equal(out.image[int(oy):int(oy) + 60, int(ox):int(ox) + 80], s.image)


@pytest.mark.parametrize("scale", [0.5, 0.75, 1.5])
def test_resize_boxes_follow_masks(scale):
    s = ellipse_sample()
    out = Augment([Resize(scale)])(s)
    assert out.image.shape == (round(60 * scale), round(80 * scale), 3)
    check_aligned(out)
    np.testing.assert_allclose(out.boxes, s.boxes * scale, atol=1e-5)
    assert np.abs(out.boxes - tight(out.masks)).max() <= 1.0


def test_translation_drops_outside_objects_and_filters_extras():
    s = ellipse_sample()
    t = {"boxes": torch.tensor(s.boxes), "labels": torch.tensor(s.labels), "masks": torch.tensor(s.masks),
         "iscrowd": torch.tensor([0, 1, 0]), "area": torch.zeros(3), "image_id": torch.tensor(7),
         "semantic": torch.tensor(s.semantic)}
    shift = lambda dx: torch.tensor([[[1.0, 0, dx], [0, 1, 0], [0, 0, 1]]], dtype=torch.float64)  # noqa: E731
    img = torch.rand(1, 3, 60, 80)
    out, (o,) = warp(img, [t], shift(-15.0), (60, 80))  # object 0 at x 12..28 -> -3..13
    assert torch.equal(out[0, :, :, :65], img[0, :, :, 15:]) and out[0, :, :, 65:].max() == 0
    assert o["boxes"][0].tolist() == [0.0, s.boxes[0, 1], 13.0, s.boxes[0, 3]]
    assert torch.equal(o["area"], o["masks"].flatten(1).sum(1).float()) and int(o["image_id"]) == 7
    _, (o,) = warp(img, [t], shift(-15.0), (60, 80), min_visibility=0.9)  # 13/16 visible: dropped
    assert len(o["boxes"]) == 2 and o["iscrowd"].tolist() == [1, 0] and o["labels"].tolist() == s.labels[1:].tolist()
    _, (o,) = warp(img, [t], shift(15.0), (60, 80))  # object 2 at x 65..75 -> 80..90: outside
    assert o["labels"].tolist() == s.labels[:2].tolist() and o["iscrowd"].tolist() == [0, 1]
    assert len(o["masks"]) == 2 and o["semantic"].shape == (60, 80) and (o["boxes"][:, 2] <= 80).all()


# ---------------------------------------------------------------------------------------------
# photometry
# ---------------------------------------------------------------------------------------------
PHOTOMETRIC = [ColorJitter(0.3, 0.3, 0.3, 0.05, p=1), GaussianBlur((1, 2), p=1), GaussianNoise((0.02, 0.05), p=1),
               Gamma((0.5, 0.7), p=1), SaltPepper(0.05, p=1), StainJitter(0.2, 0.1, p=1)]


@pytest.mark.parametrize("transform", PHOTOMETRIC, ids=lambda t: type(t).__name__)
def test_photometric_changes_only_the_image(transform):
    s = ellipse_sample()
    out = Augment([transform], seed=2)(s)
    assert out.image.dtype == np.uint8 and out.image.shape == s.image.shape and not np.array_equal(out.image, s.image)
    for k in ("boxes", "labels", "masks", "semantic"):
        assert np.array_equal(getattr(out, k), getattr(s, k))
    assert out.meta["cell_type"] == s.meta["cell_type"]
    x = torch.rand(3, 3, 20, 24)
    x0 = x.clone()
    t = [{"boxes": torch.tensor([[1.0, 2, 5, 6]]), "labels": torch.tensor([1])} for _ in range(3)]
    y, t2 = Augment([transform]).batch(x, t)
    assert torch.equal(x, x0)  # the input batch is not changed in place
    assert y.dtype == torch.float32 and y.shape == x.shape and 0 <= y.min() and y.max() <= 1
    assert all(torch.equal(a["boxes"], b["boxes"]) for a, b in zip(t, t2))


@pytest.mark.parametrize("transform", [type(t)(p=0.0) for t in PHOTOMETRIC] + [HorizontalFlip(0), Rot90(0),
                                       Affine(degrees=10, scale=(0.5, 2), p=0.0)], ids=lambda t: type(t).__name__)
def test_p_zero_is_identity(transform):
    s = ellipse_sample()
    out = Augment([transform])(s)
    assert np.array_equal(out.image, s.image) and np.array_equal(out.boxes, s.boxes)


def test_stain_jitter_without_perturbation_reconstructs_the_image():
    s = ellipse_sample()
    out = Augment([StainJitter(0.0, 0.0, p=1)])(s)
    assert np.abs(out.image.astype(int) - s.image).max() <= 1


# ---------------------------------------------------------------------------------------------
# pipeline: seeds, no mutation, batch path
# ---------------------------------------------------------------------------------------------
def test_deterministic_and_input_untouched():
    samples = [ellipse_sample(seed=i) for i in range(3)]
    before = [(s.image.copy(), s.boxes.copy(), s.masks.copy(), list(s.meta["cell_type"])) for s in samples]
    a, b, c = default_augment(0), default_augment(0), default_augment(1)
    ra, rb, rc = [a(s) for s in samples], [b(s) for s in samples], [c(s) for s in samples]
    for x, y in zip(ra, rb):
        assert np.array_equal(x.image, y.image) and np.array_equal(x.boxes, y.boxes)
        assert np.array_equal(x.masks, y.masks)
    assert any(not np.array_equal(x.image, y.image) for x, y in zip(ra, rc))
    for s, (img, boxes, masks, ct) in zip(samples, before):
        assert np.array_equal(s.image, img) and np.array_equal(s.boxes, boxes) and np.array_equal(s.masks, masks)
        assert s.meta["cell_type"] == ct
    assert ra[0] is not samples[0] and ra[0].image_id == samples[0].image_id


def run_batch(device, rule="mask"):
    ds = make_dataset(4, seed=5, width=96, height=64)
    images = torch.stack([torch.tensor(s.image).permute(2, 0, 1) for s in ds]).to(device)
    aug = Augment([HorizontalFlip(), VerticalFlip(), Rot90(), Affine(20, (0.9, 1.1), 5, (0.1, 0.1), rule, p=0.7),
                   ColorJitter(0.2, 0.2, 0.2, 0.02), StainJitter(p=1), GaussianNoise(p=1)], seed=0)
    return ds, images, aug.batch(images, targets_of(ds, device))


def test_batch_path_geometry():
    """The batch path (the GPU path, run here on CPU tensors; benchmarks/augment.py checks CUDA)."""
    device = "cpu"
    ds, images, (out, targets) = run_batch(device)
    assert out.dtype == torch.uint8 and out.device == images.device and len(targets) == 4
    for t in targets:
        assert t["boxes"].device == images.device and t["masks"].dtype == torch.uint8
        assert len(t["boxes"]) == len(t["labels"]) == len(t["masks"]) > 0
        assert t["masks"].shape[1:] == out.shape[-2:]
        assert np.array_equal(t["boxes"].cpu().numpy(), tight(t["masks"].cpu().numpy().astype(bool)))
    _, exact = Augment([HorizontalFlip(), Rot90()], seed=1).batch(images, targets_of(ds, device))
    for t in exact:
        assert np.array_equal(t["boxes"].cpu().numpy(), tight(t["masks"].cpu().numpy().astype(bool)))


def test_sample_path_equals_batch_of_one():
    s = make_dataset(1, seed=2, width=96, height=64)[0]
    out = default_augment(4)(s)
    img, (t,) = default_augment(4).batch(torch.tensor(s.image).permute(2, 0, 1)[None], targets_of([s]))
    assert np.array_equal(out.image, img[0].permute(1, 2, 0).numpy())
    assert np.array_equal(out.boxes, t["boxes"].numpy()) and np.array_equal(out.masks, t["masks"].numpy() > 0)


def test_default_augment_feeds_detection_dataset():
    ds = make_dataset(3, seed=1, width=96, height=64)
    tds = DetectionDataset(ds, transform=default_augment(0))
    for i in range(3):
        img, t = tds[i]
        assert img.shape[0] == 3 and t["masks"].shape[1:] == img.shape[1:]
        assert len(t["boxes"]) == len(t["labels"]) == len(t["masks"])


# ---------------------------------------------------------------------------------------------
# properties
# ---------------------------------------------------------------------------------------------
unit = st.floats(0, 1)
TRANSFORMS = st.one_of(
    st.builds(HorizontalFlip, p=unit), st.builds(VerticalFlip, p=unit), st.builds(Rot90, p=unit),
    st.builds(Affine, degrees=st.floats(0, 180), scale=st.tuples(st.floats(0.5, 1), st.floats(1, 1.6)),
              shear=st.floats(0, 20), translate=st.tuples(st.floats(0, 0.5), st.floats(0, 0.5)),
              box_rule=st.sampled_from(BOX_RULES), p=unit),
    st.builds(RandomCrop, size=st.tuples(st.integers(4, 64), st.integers(4, 64))),
    st.builds(Pad, size=st.integers(4, 64)), st.builds(Resize, scale=st.floats(0.6, 1.8)),
    st.builds(ColorJitter, brightness=st.floats(0, 0.5), contrast=st.floats(0, 0.5), saturation=st.floats(0, 0.5),
              hue=st.floats(0, 0.5)),
    st.builds(GaussianBlur, sigma=st.tuples(st.floats(0, 1), st.floats(1, 2))),
    st.builds(StainJitter, alpha=st.floats(0, 0.3), beta=st.floats(0, 0.2), p=unit),
)
ELLIPSES = st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1), st.floats(1.5, 12), st.floats(1.5, 12)), max_size=6)


@settings(max_examples=30, deadline=None)
@given(h=st.integers(8, 48), w=st.integers(8, 48), ellipses=ELLIPSES,
       transforms=st.lists(TRANSFORMS, min_size=1, max_size=4), seed=st.integers(0, 2 ** 16),
       min_visibility=st.sampled_from([0.0, 0.3]))
def test_invariants_under_random_pipelines(h, w, ellipses, transforms, seed, min_visibility):
    s = ellipse_sample(h, w, [(cx * w, cy * h, rx, ry) for cx, cy, rx, ry in ellipses], seed)
    out = Augment(transforms, seed=seed, min_visibility=min_visibility)(s)
    check_aligned(out)
    H, W = out.image.shape[:2]
    b = out.boxes
    assert out.image.dtype == np.uint8 and b.dtype == np.float32
    assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= W).all() and (b[:, 3] <= H).all()
    assert (b[:, 2] - b[:, 0] >= 1 - 1e-4).all() and (b[:, 3] - b[:, 1] >= 1 - 1e-4).all()
    yy, xx = np.mgrid[:H, :W] + 0.5
    for box, m in zip(b, out.masks):
        if m.sum():  # pixel centres within 1 px of the box
            inside = (xx >= box[0] - 1) & (xx <= box[2] + 1) & (yy >= box[1] - 1) & (yy <= box[3] + 1)
            assert (m & inside).sum() >= 0.5 * m.sum()


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------
def test_empty_box_list_still_transforms_the_image():
    s = ellipse_sample(objects=())
    out = Augment([HorizontalFlip(1), Affine(20), ColorJitter(0.2)])(s)
    assert out.boxes.shape == (0, 4) and out.masks.shape == (0, 60, 80) and out.labels.shape == (0,)
    assert out.image.shape == s.image.shape and not np.array_equal(out.image, s.image)
    y, (t,) = default_augment(0).batch(torch.rand(1, 3, 20, 30), [{"boxes": torch.zeros(0, 4),
                                                                    "labels": torch.zeros(0, dtype=torch.long)}])
    assert t["boxes"].shape == (0, 4)


def test_zero_size_image():
    with pytest.raises(ValueError, match="zero size"):
        default_augment().batch(torch.zeros(1, 3, 0, 5), [{"boxes": torch.zeros(0, 4)}])
    lazy = Sample("z", _image=lambda: np.zeros((0, 5, 3), np.uint8))
    with pytest.raises(DataError, match="zero size"):
        default_augment()(lazy)


def test_mask_shape_mismatch_names_the_shapes():
    s = ellipse_sample()
    with pytest.raises(DataError, match=r"bad: mask size \(61, 80\) differs from image size \(60, 80\)"):
        Sample("bad", boxes=s.boxes, labels=s.labels, _image=s.image, _masks=np.zeros((3, 61, 80), bool))
    t = targets_of([s])
    t[0]["masks"] = t[0]["masks"][:, :, :79]
    with pytest.raises(ValueError, match=r"target 0: instance masks have shape \(3, 60, 79\)"):
        default_augment().batch(torch.rand(1, 3, 60, 80), t)


def test_labels_boxes_mismatch():
    s = ellipse_sample()
    s.labels = s.labels[:1]
    with pytest.raises(DataError, match="3 boxes but 1 labels"):
        default_augment()(s)
    with pytest.raises(ValueError, match="2 images but 1 targets"):
        default_augment().batch(torch.rand(2, 3, 8, 8), [{"boxes": torch.zeros(0, 4)}])


def test_bad_parameters():
    for make in (lambda: Affine(box_rule="corners"), lambda: HorizontalFlip(p=1.5), lambda: RandomCrop(0),
                 lambda: Affine(scale=(0, 1)), lambda: ColorJitter(hue=0.7), lambda: GaussianBlur((2, 1)),
                 lambda: Augment([lambda s: s])):
        with pytest.raises((ValueError, TypeError)):
            make()
    with pytest.raises(ValueError, match="empty image"):
        Augment([Resize(0.005)])(ellipse_sample())


def test_nearest_warp_picks_grid_samples_pixels_in_the_maps_dtype():
    """Masks are gathered in their own dtype, pixel for pixel what nearest grid_sample picks."""
    import math

    import torch.nn.functional as F

    from smearlab.augment import _nearest

    g = torch.Generator().manual_seed(0)
    masks = torch.rand(5, 37, 53, generator=g) > 0.5
    for angle, scale, tx, ty, size in [(0.0, 1.0, 0.0, 0.0, (37, 53)), (0.3, 1.3, 4.2, -3.7, (40, 50)),
                                       (-1.1, 0.7, 10.5, 2.25, (30, 61))]:
        c, s = math.cos(angle) * scale, math.sin(angle) * scale
        m = torch.tensor([[c, -s, tx], [s, c, ty], [0, 0, 1]], dtype=torch.float64)
        minv = torch.linalg.inv(m)
        out = _nearest(masks, minv, size)
        assert out.dtype == torch.bool and out.shape == (5, *size)
        ho, wo = size
        ys, xs = torch.meshgrid(torch.arange(ho) + 0.5, torch.arange(wo) + 0.5, indexing="ij")
        src = torch.stack([xs, ys, torch.ones_like(xs)], -1).view(-1, 3) @ minv[:2].T.float()
        grid = (src * torch.tensor([2 / 53, 2 / 37]) - 1).view(1, ho, wo, 2)
        ref = F.grid_sample(masks[None].float(), grid, mode="nearest", align_corners=False)[0] > 0.5
        assert (out != ref).float().mean() < 1e-3  # equal but for float ties on pixel borders


def test_quarter_turns_by_affine_move_the_pixels_with_the_boxes():
    from smearlab.augment import Affine
    img = np.zeros((20, 20, 3), np.uint8)
    img[8:12, 7:13] = 255
    m = np.zeros((1, 20, 20), bool)
    m[0, 8:12, 7:13] = True
    s = Sample("q", boxes=[[7, 8, 13, 12]], labels=[0], _image=img, _masks=m)
    for deg in (90, -90):
        out = Augment([Affine(degrees=(deg, deg), p=1.0)], seed=0)(s)
        bright = out.image[..., 0] > 0                      # the pixels were left black at exactly 90 degrees
        assert bright.sum() == 24 and (bright == out.masks[0]).all()
        ys, xs = np.nonzero(bright)
        np.testing.assert_allclose(out.boxes[0], [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])


def test_what_a_crop_cut_away_does_not_come_back_in_a_composed_warp():
    from smearlab.augment import Affine, RandomCrop
    img = np.zeros((20, 20, 3), np.uint8)
    img[5:15, 2:8] = 255
    s = Sample("c", boxes=[[2, 5, 8, 15]], labels=[0], _image=img)
    for seed in range(8):
        crop, zoom = RandomCrop(12), Affine(scale=(0.5, 0.5), p=1.0)
        out = Augment([crop, zoom], seed=seed)(s)
        g = torch.Generator().manual_seed(seed)              # the same draws, warped one after the other
        x = torch.tensor(img).permute(2, 0, 1)[None].float() / 255
        t = [{"boxes": torch.tensor([[2.0, 5, 8, 15]]), "labels": torch.tensor([0])}]
        x, t = crop.apply(x, t, crop.sample_params(1, g))
        x, t = zoom.apply(x, t, zoom.sample_params(1, g))
        np.testing.assert_allclose(out.image.astype(float), (x[0].permute(1, 2, 0).numpy() * 255).round(), atol=1)
        np.testing.assert_allclose(out.boxes, t[0]["boxes"].numpy().reshape(-1, 4), atol=1e-4)


def test_per_image_meta_is_not_filtered_as_per_object():
    img = np.zeros((40, 40, 3), np.uint8)
    s = Sample("t", boxes=[[0, 0, 4, 4], [30, 30, 34, 34], [1, 30, 5, 34], [30, 1, 34, 5]], labels=[0, 0, 0, 0],
               _image=img, meta={"window": (100, 200, 140, 220), "flag": [1, 2, 3, 4]})
    out = Augment([RandomCrop(20)], seed=1)(s)
    assert out.meta["window"] == (100, 200, 140, 220)        # a tuple is the image's, whatever its length
    assert len(out.meta["flag"]) == len(out.boxes)


def test_batches_out_of_range_or_of_other_channels_are_refused():
    from smearlab.augment import ColorJitter, GaussianNoise, StainJitter
    t = [{"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.int64)}]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):        # 0..255 floats came out white
        Augment([ColorJitter(brightness=0.1)]).batch(torch.full((1, 3, 8, 8), 200.0), t)
    with pytest.raises(ValueError, match="uint8"):
        Augment([GaussianNoise()]).batch(torch.full((1, 3, 8, 8), 4000, dtype=torch.int16), t)
    with pytest.raises(ValueError, match="3 channels"):      # a grey batch became RGB
        Augment([StainJitter(p=1.0)]).batch(torch.rand(1, 1, 8, 8), t)
    out, _ = Augment([GaussianNoise(p=1.0)]).batch(torch.rand(1, 1, 8, 8), t)  # channel-blind transforms are fine
    assert out.shape == (1, 1, 8, 8)
    with pytest.raises(ValueError, match="concentration factor"):
        StainJitter(alpha=2)


def test_an_augmented_copy_of_a_file_keeps_its_pixels_after_release(tmp_path):
    from smearlab.augment import HorizontalFlip
    from smearlab.data.imageio import write_image
    img = np.zeros((10, 20, 3), np.uint8)
    img[2:6, 1:5] = 255
    write_image(tmp_path / "a.png", img)
    s = Sample("a", path=tmp_path / "a.png", boxes=[[1, 2, 5, 6]], labels=[0])
    out = Augment([HorizontalFlip(p=1.0)])(s)
    out.release()
    assert out.path is None and out.meta["source_path"] == str(tmp_path / "a.png")
    assert (out.image[2:6, 15:19] == 255).all()               # release() re-read the unflipped file before


def test_integer_boxes_keep_their_fractions_and_an_empty_batch_passes():
    """Integer boxes were cast back to their dtype after the warp (a half-size box 1.5 read as 1)."""
    from smearlab.augment import Resize, default_augment
    x = torch.zeros((1, 3, 20, 30))
    _, (t,) = Augment([Resize(0.5)]).batch(x, [{"boxes": torch.tensor([[3, 3, 9, 7]]), "labels": torch.tensor([0])}])
    assert t["boxes"].dtype == torch.float32 and t["boxes"].tolist() == [[1.5, 1.5, 4.5, 3.5]]
    out, targets = Augment(default_augment(0).transforms).batch(torch.zeros((0, 3, 8, 8)), [])
    assert out.shape == (0, 3, 8, 8) and targets == []


def test_preprocessing_steps_are_the_images_not_cut_with_the_boxes():
    """meta["preprocess"] was a list as long as the boxes: a crop dropping a box dropped a step name,
    and with one box dropped, the sample passed for raw and could be processed twice."""
    from smearlab.preprocess import Preprocess
    img = np.full((40, 40, 3), 128, np.uint8)
    pre = Preprocess(["gamma"])
    s = pre.apply(Sample("t", boxes=[[30, 30, 38, 38]], labels=[0], _image=img))
    for seed in range(20):  # a crop that drops the box
        out = Augment([RandomCrop(20)], seed=seed)(s)
        if not len(out.boxes):
            break
    assert not len(out.boxes) and out.meta["preprocess"] == ("gamma",)
    with pytest.raises(ValueError, match="already preprocessed"):
        pre.check_raw(out)


def test_per_object_lists_and_arrays_are_dropped_with_their_boxes():
    """Only tensors were filtered: numpy labels kept their length when a box left the image, and the
    labels after it slid onto the wrong boxes."""
    from smearlab.augment import Affine, Augment, warp
    img = torch.rand(1, 3, 10, 10)
    t = {"boxes": torch.tensor([[0.0, 0, 2, 2], [6, 6, 9, 9]]), "labels": np.array([1, 2]), "iscrowd": [0, 1]}
    shift = torch.tensor([[[1.0, 0, -3], [0, 1, 0], [0, 0, 1]]], dtype=torch.float64)
    _, (o,) = warp(img, [t], shift, (10, 10))
    assert o["labels"].tolist() == [2] and o["iscrowd"].tolist() == [1] and len(o["boxes"]) == 1
    _, (o,) = Augment([Affine(translate=((-0.3, -0.3), (0, 0)))]).batch(img, [t])
    assert o["labels"].tolist() == [2] and o["iscrowd"].tolist() == [1]


class _Angles(torch.utils.data.Dataset):
    def __init__(self):
        from smearlab.augment import Affine, Augment
        self.transform = Augment([Affine(degrees=30, p=1)], seed=0)

    def __len__(self):
        return 4

    def __getitem__(self, i):
        from smearlab.data import Sample
        s = Sample("a", boxes=[[20, 20, 40, 30]], labels=[0], _image=np.zeros((64, 64, 3), np.uint8))
        return tuple(np.round(self.transform(s).boxes[0], 3).tolist())  # the box turned by the drawn angle


def test_an_augmenter_in_dataloader_workers_draws_apart_per_worker_and_per_epoch():
    """Every worker held a copy of the generator in one state: two workers drew the same angles, and
    every epoch repeated the first."""
    loader = torch.utils.data.DataLoader(_Angles(), batch_size=None, num_workers=2,
                                         generator=torch.Generator().manual_seed(0))
    first, second = list(loader), list(loader)
    assert first[0] != first[1] and first != second
    again = list(torch.utils.data.DataLoader(_Angles(), batch_size=None, num_workers=2,
                                             generator=torch.Generator().manual_seed(0)))
    assert again == first  # a seeded loader repeats


def test_per_object_text_is_dropped_with_its_boxes_and_stays_text():
    from smearlab.augment import Affine, Augment
    img = torch.rand(1, 3, 10, 10)
    t = {"boxes": torch.tensor([[0.0, 0, 2, 2], [6, 6, 9, 9]]), "labels": torch.tensor([1, 2]),
         "names": ["rbc", "wbc"]}
    _, (o,) = Augment([Affine(translate=((-0.3, -0.3), (0, 0)))]).batch(img, [t])
    assert o["names"] == ["wbc"] and o["labels"].tolist() == [2]
