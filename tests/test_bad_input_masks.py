"""Bad input for the mask and image-only formats: every problem names its file (and record)."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from PIL import Image

from smearlab.data import DataError, Sample, SmearDataset
from smearlab.data.formats import coco, dicom, dsb2018, imagefolder, zheng

HW = (8, 10)


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# -- DSB2018 -----------------------------------------------------------------------------------


def _box_mask(hw=HW, box=(2, 1, 5, 4)):
    m = np.zeros(hw, np.uint8)
    m[box[1]:box[3], box[0]:box[2]] = 255
    return m


def _dsb(root, image_id="img1", masks=None):
    """A one-image stage1_train tree; ``masks`` maps file names to arrays."""
    folder = root / "stage1_train" / image_id
    _png(folder / "images" / f"{image_id}.png", np.full((*HW, 4), 200, np.uint8))
    for name, m in (masks if masks is not None else {"m1.png": _box_mask()}).items():
        _png(folder / "masks" / name, m)
    return folder


def test_dsb_stage1_train_root_and_box(tmp_path):
    _dsb(tmp_path)
    for root in (tmp_path, tmp_path / "stage1_train"):
        (s,) = dsb2018.load(root)
        np.testing.assert_array_equal(s.boxes, [[2, 1, 5, 4]])
        assert s.masks.shape == (1, *HW) and s.image.shape == (*HW, 3)
        assert "group" not in s.meta


def test_dsb_truncated_image_fails_lazily_naming_file(tmp_path):
    folder = _dsb(tmp_path)
    image = folder / "images" / "img1.png"
    _png(image, np.random.default_rng(0).integers(0, 255, (80, 100, 4), dtype=np.uint8))
    _png(folder / "masks" / "m1.png", _box_mask((80, 100)))
    _truncate(image)
    (s,) = dsb2018.load(tmp_path)  # the header is intact: loading succeeds
    with pytest.raises(DataError, match="img1.png") as e:
        s.image  # noqa: B018
    assert "corrupt or truncated" in str(e.value)


def test_dsb_missing_image_is_counted(tmp_path):
    folder = _dsb(tmp_path)
    (folder / "images" / "img1.png").unlink()
    ds = dsb2018.load(tmp_path)
    assert len(ds) == 0 and "img1.png" in ds.skipped[0].path
    assert ds.skipped[0].reason == "image file not found"


@pytest.mark.parametrize("mask, reason", [
    (np.zeros(HW, np.uint8), "empty mask"),
    (_box_mask((9, 10)), "mask size 10x9 differs from the image size 10x8"),
])
def test_dsb_bad_mask_is_counted_or_raises(tmp_path, mask, reason):
    _dsb(tmp_path, masks={"good.png": _box_mask(), "bad.png": mask})
    ds = dsb2018.load(tmp_path)
    assert len(ds) == 1 and len(ds[0]) == 1 and ds[0].masks.shape == (1, *HW)
    (skip,) = ds.skipped
    assert skip.path.endswith("bad.png") and skip.reason.startswith(reason)
    with pytest.raises(DataError, match=r"bad\.png.*" + reason.split(" ")[0]):
        dsb2018.load(tmp_path, strict=True)


def test_dsb_float_mask_is_wrong_dtype(tmp_path):
    folder = _dsb(tmp_path)
    Image.fromarray(np.ones(HW, np.float32)).save(folder / "masks" / "float.tif")
    ds = dsb2018.load(tmp_path)
    assert len(ds[0]) == 1 and ds.skipped[0].path.endswith("float.tif")
    assert "integer image" in ds.skipped[0].reason and "float32" in ds.skipped[0].reason


def test_dsb_missing_root(tmp_path):
    with pytest.raises(DataError, match="nowhere"):
        dsb2018.load(tmp_path / "nowhere")


def test_dsb_16_bit_image_and_masks_overlap_kept(tmp_path):
    folder = _dsb(tmp_path, masks={})
    img16 = (np.arange(80).reshape(HW) * 50).astype(np.uint16)        # 12-bit range
    _png(folder / "images" / "img1.png", img16)
    m16 = np.zeros(HW, np.uint16)
    m16[1:4, 2:5] = 65535                                            # 16-bit binary mask
    over = _box_mask(box=(3, 2, 7, 6))                                # overlaps m16 at (3..4, 2..3)
    rgb = np.zeros((*HW, 3), np.uint8)
    rgb[5:7, 6:9] = 255                                               # colour mask
    labels = np.zeros(HW, np.uint8)
    labels[0, 0], labels[7, 9] = 3, 7                                 # a label image in one file
    for name, m in {"a16.png": m16, "b_over.png": over, "c_rgb.png": rgb, "d_lab.png": labels}.items():
        _png(folder / "masks" / name, m)
    ds = dsb2018.load(tmp_path)
    (s,) = ds
    assert not ds.skipped and s.bit_depth == 8                        # known after the image is read
    assert s.image.dtype == np.uint8 and s.bit_depth == 16
    assert s.image.max() == round(3950 * 255 / 4095)                  # scaled from the 12-bit range
    np.testing.assert_array_equal(s.boxes, [[2, 1, 5, 4], [3, 2, 7, 6], [6, 5, 9, 7], [0, 0, 10, 8]])
    assert s.masks.sum(axis=(1, 2)).tolist() == [9, 16, 6, 2]
    assert (s.masks[0] & s.masks[1]).sum() == 4                       # overlap kept in both
    from smearlab.metrics.instances import dsb_score
    assert dsb_score(ds, [{"masks": s.masks, "scores": np.ones(4)}], kind="masks") == 1.0


# -- Zheng -------------------------------------------------------------------------------------


def _zheng(root, rows=((1, 2), (2, 4)), header="image ID,class label", n=1):
    """A small Zheng tree: ``Dataset n`` with one image + mask per row, CRLF CSV."""
    for number, _ in rows:
        mask = np.zeros(HW, np.uint8)
        mask[1:6, 2:8] = 128
        mask[2:4, 3:6] = 255
        _png(root / f"Dataset {n}" / f"{number:03d}.png", mask)
        Image.fromarray(np.full((*HW, 3), 90, np.uint8)).save(root / f"Dataset {n}" / f"{number:03d}.bmp")
    text = "\r\n".join([header, *(f"{a},{b}" for a, b in rows)]) + "\r\n"
    (root / f"Class Labels of Dataset {n}.csv").write_bytes(text.encode())
    return root / f"Dataset {n}"


def test_zheng_other_header_variant(tmp_path):
    _zheng(tmp_path, header="image ID,class")
    ds = zheng.load(tmp_path, datasets=(1,))
    assert [s.image_label for s in ds] == [1, 3] and not ds.skipped
    np.testing.assert_array_equal(ds[0].boxes, [[2, 1, 8, 6]])
    assert ds[0].semantic[2, 3] == 2 and ds[0].semantic[1, 2] == 1 and ds[0].semantic[0, 0] == 0


def test_zheng_missing_csv_names_expected_file(tmp_path):
    _zheng(tmp_path)
    (tmp_path / "Class Labels of Dataset 1.csv").unlink()
    with pytest.raises(DataError, match="Class Labels of Dataset 1.csv: class-label CSV not found"):
        zheng.load(tmp_path, datasets=(1,))
    with pytest.raises(DataError, match="Dataset 2"):
        zheng.load(tmp_path, datasets=(2,))


def test_zheng_bad_header_is_whole_file_error(tmp_path):
    _zheng(tmp_path, header="id;label")
    with pytest.raises(DataError, match=r"Dataset 1\.csv \[line 1\]: unexpected header"):
        zheng.load(tmp_path, datasets=(1,))


def test_zheng_per_record_problems_are_counted(tmp_path):
    folder = _zheng(tmp_path, rows=((1, 2), (2, 9), (3, 1), (4, 1), (5, 1), (6, 1)))
    csv_path = tmp_path / "Class Labels of Dataset 1.csv"
    csv_path.write_bytes(csv_path.read_bytes() + b"seven,1\r\n8,3\r\n")
    (folder / "003.png").unlink()                                  # image without mask
    _png(folder / "004.png", np.zeros(HW, np.uint8))               # empty mask
    _png(folder / "005.png", np.zeros((9, 10), np.uint8) + 128)   # mask of another size
    _png(folder / "006.png", np.zeros(HW, np.uint16) + 300)        # 16-bit mask
    Image.fromarray(np.zeros((*HW, 3), np.uint8)).save(folder / "010.bmp")  # no CSV row
    ds = zheng.load(tmp_path, datasets=(1,))
    assert [s.image_id for s in ds] == ["d1_001"]
    got = {(s.path.rsplit("/", 1)[-1], s.record): s.reason for s in ds.skipped}
    assert got == {
        ("Class Labels of Dataset 1.csv", "line 3"): "unknown class '9' (expected 1..5)",
        ("Class Labels of Dataset 1.csv", "line 8"): "expected 'image ID,class' with an integer "
                                                     "image ID, got ['seven', '1']",
        ("003.bmp", None): "ground-truth mask 003.png not found",
        ("004.png", None): "empty mask (no cell pixel)",
        ("005.png", None): "mask size 10x9 differs from the image size 10x8",
        ("006.png", None): "mask must be an 8-bit grey image, got dtype uint16",
        ("010.bmp", None): "no row for image ID 10 in Class Labels of Dataset 1.csv",
        ("Class Labels of Dataset 1.csv", "line 9"): "no image file for image ID 8 in Dataset 1/",
    }
    with pytest.raises(DataError, match=r"Dataset 1\.csv \[line 3\]: unknown class '9'"):
        zheng.load(tmp_path, datasets=(1,), strict=True)


def test_zheng_mask_changed_after_load_raises_on_access(tmp_path):
    folder = _zheng(tmp_path)
    ds = zheng.load(tmp_path, datasets=(1,))
    (folder / "001.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="001.png"):
        ds[0].semantic  # noqa: B018


def test_zheng_16_bit_image_colour_mask_and_resampled_levels(tmp_path):
    folder = _zheng(tmp_path, rows=((1, 1), (2, 2), (3, 3)))
    (folder / "001.bmp").unlink()
    Image.fromarray((np.arange(80).reshape(HW) * 800).astype(np.uint16)).save(folder / "001.tif")
    levels = np.zeros(HW, np.uint8)
    levels[1:6, 2:8] = 100                         # resampled cytoplasm -> 128
    levels[2:4, 3:6] = 200                         # resampled nucleus -> 255
    levels[0, 0] = 30                              # near background -> 0
    _png(folder / "002.png", levels)
    colour = np.zeros((*HW, 3), np.uint8)
    colour[1:6, 2:8] = 128
    colour[2:4, 3:6] = 255
    _png(folder / "003.png", colour)
    ds = zheng.load(tmp_path, datasets=(1,))
    assert [s.image_id for s in ds] == ["d1_001", "d1_002", "d1_003"] and not ds.skipped
    s16 = ds[0]
    assert s16.image.dtype == np.uint8 and s16.bit_depth == 16
    assert s16.image.max() == round(63200 * 255 / 65535)           # scaled from the 16-bit range
    expected = np.bincount(ds[0].semantic.ravel(), minlength=3).tolist()
    assert expected == [50, 24, 6]
    for s in ds[1:]:
        assert np.bincount(s.semantic.ravel(), minlength=3).tolist() == expected
    np.testing.assert_array_equal(ds[1].masks[0], ds[1].semantic > 0)
    _png(folder / "002.png", ds[0].semantic)  # the class ids themselves (0/1/2): not an "empty mask"
    again = zheng.load(tmp_path, datasets=(1,))
    assert not again.skipped and np.bincount(again[1].semantic.ravel(), minlength=3).tolist() == expected


def test_zheng_16_bit_mask_raises_naming_the_file_when_strict(tmp_path):
    folder = _zheng(tmp_path, rows=((1, 1),))
    _png(folder / "001.png", np.zeros(HW, np.uint16) + 128)
    with pytest.raises(DataError, match=r"001\.png: mask must be an 8-bit grey image, got dtype uint16"):
        zheng.load(tmp_path, datasets=(1,), strict=True)


# -- label images and instance masks (classical conversions, segmentation) ------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.uint32, np.int64])
def test_label_image_with_gaps_any_integer_dtype(dtype):
    from smearlab.segmentation.classical import instances_to_label_image, label_image_to_instances
    lab = np.zeros((12, 16), dtype)
    hi = 200 if dtype == np.uint8 else 40000
    lab[1:4, 1:5] = hi                           # ids with gaps, out of order in space
    lab[6:10, 2:6] = 3
    lab[5:11, 9:15] = 17
    p = label_image_to_instances(lab)
    assert len(p["masks"]) == 3                  # relabelled 3 -> 1, 17 -> 2, hi -> 3 (id order)
    assert p["masks"][0][7, 3] and p["masks"][1][6, 10] and p["masks"][2][2, 2]
    np.testing.assert_array_equal(p["boxes"], [[2, 6, 6, 10], [9, 5, 15, 11], [1, 1, 5, 4]])
    back = instances_to_label_image(p)
    np.testing.assert_array_equal(back, np.select([lab == 3, lab == 17, lab == hi], [1, 2, 3], 0))


@pytest.mark.parametrize("bad, msg", [
    (np.zeros((3, 4), np.float32), "integer dtype"),
    (np.full((3, 4), -1, np.int16), "negative ids"),
    (np.zeros((3, 4, 2), np.uint16), "2-D"),
])
def test_bad_label_images(bad, msg):
    from smearlab.segmentation.classical import label_image_to_instances
    with pytest.raises(ValueError, match=msg):
        label_image_to_instances(bad)


def test_overlapping_and_empty_instance_masks_to_label_image():
    from smearlab.segmentation.classical import instances_to_label_image, label_image_to_instances
    m = np.zeros((3, 10, 10), bool)
    m[0, 0:6, 0:6] = True
    m[1, 4:10, 4:10] = True
    m[2, 1:3, 1:3] = True                        # entirely inside instance 0
    lab = instances_to_label_image(m)            # first wins: instance 2 disappears, its id unused
    assert lab[5, 5] == 1 and lab[8, 8] == 2 and lab[2, 2] == 1 and 3 not in lab
    lab = instances_to_label_image(m, scores=[0.1, 0.5, 0.9])   # higher score wins
    assert lab[5, 5] == 2 and lab[2, 2] == 3 and lab[0, 0] == 1
    assert len(label_image_to_instances(lab)["masks"]) == 3
    empty = np.zeros((2, 10, 10), bool)
    empty[1, 3:5, 3:5] = True                    # instance 0 is empty: id 1 unused
    lab = instances_to_label_image(empty)
    assert set(np.unique(lab)) == {0, 2}
    assert len(label_image_to_instances(lab)["masks"]) == 1     # the gap is relabelled away
    with pytest.raises(ValueError, match="2 scores for 3"):
        instances_to_label_image(m, scores=[1, 2])
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        instances_to_label_image(np.zeros((10, 10), bool))


def test_evaluation_keeps_overlapping_predictions_separate():
    from smearlab.segmentation.classical import label_image_to_instances
    from smearlab.metrics.instances import dsb_score
    gt = np.zeros((2, 20, 20), bool)
    gt[0, 2:10, 2:10] = True
    gt[1, 8:16, 8:16] = True                     # ground truth overlapping by 4 pixels
    pred = {"masks": gt.copy(), "scores": np.array([0.9, 0.8])}
    assert dsb_score([gt], [pred], kind="masks") == 1.0
    flat = label_image_to_instances(np.where(gt[0], 1, np.where(gt[1], 2, 0)))
    assert flat["masks"].sum() == gt[0].sum() + gt[1].sum() - 4   # a label image must drop the overlap


def test_mask_size_mismatch_in_metrics_names_the_sample():
    from smearlab.metrics.semantic import semantic_metrics
    s = Sample("cell-7", _image=np.zeros((8, 10, 3), np.uint8), _semantic=np.zeros((8, 10), np.uint8))
    ds = SmearDataset([s], ["c"], semantic_names=["background", "cell"])
    with pytest.raises(DataError, match=r"cell-7.*\(8, 9\).*\(8, 10\)"):
        semantic_metrics(ds, [np.zeros((8, 9), np.uint8)])
    lazy = Sample("cell-7", _image=np.zeros((8, 10, 3), np.uint8), boxes=[[0, 0, 2, 2]], labels=[0],
                  _masks=lambda: np.zeros((1, 9, 10), bool))   # as loaders give masks: read on access
    with pytest.raises(DataError, match=r"cell-7: mask size \(9, 10\) differs from image size \(8, 10\)"):
        lazy.masks  # noqa: B018


def test_fractional_truth_masks_are_refused_naming_the_sample():
    """A soft (interpolated or probability) truth mask read as bool would grow every object."""
    soft = np.zeros((1, 8, 8), np.float32)
    soft[0, 2:5, 2:5] = 0.7
    s = Sample("cell-9", _image=np.zeros((8, 8, 3), np.uint8), boxes=[[2, 2, 5, 5]], labels=[0],
               _masks=lambda: soft)
    with pytest.raises(DataError, match=r"cell-9: instance masks: masks hold fractional values"):
        s.masks  # noqa: B018
    for ok in ((soft > 0.5).astype(np.float32), (soft > 0.5).astype(np.uint8) * 255):  # 0/1 floats, 0/255
        kept = Sample("c", _image=np.zeros((8, 8, 3), np.uint8), boxes=[[2, 2, 5, 5]], labels=[0], _masks=ok)
        assert kept.masks.dtype == bool and kept.masks.sum() == 9


def test_a_label_image_with_a_leading_axis_is_refused_not_read_as_one_object():
    """A (1, H, W) label image (ids 1..n, as label TIFFs often load) was cast to one bool mask:
    one object covering every cell, a DSB score of 0 for a perfect answer."""
    from smearlab.metrics.instances import dsb_score
    lab = np.zeros((20, 20), np.int32)
    lab[2:6, 2:6], lab[10:15, 10:15] = 1, 2
    assert dsb_score([lab], [lab], kind="masks") == 1.0
    with pytest.raises(ValueError, match="mask 0 holds several object values"):
        dsb_score([lab[None]], [lab[None]], kind="masks")
    layers = np.stack([(lab == 1) * 1, (lab == 2) * 2]).astype(np.uint8)   # one value per layer: masks
    assert dsb_score([layers], [layers], kind="masks") == 1.0


def test_predicted_masks_of_another_size_are_refused_by_mask_ap():
    """A prediction whose masks are padded or transposed would score 0 without a word."""
    from smearlab.metrics.detection import coco_eval
    from smearlab.metrics.instances import mask_ap
    m = np.zeros((2, 20, 30), bool)
    m[0, 2:8, 2:8] = True
    m[1, 10:18, 15:25] = True
    boxes = np.array([[2, 2, 8, 8], [15, 10, 25, 18]], np.float32)
    ds = SmearDataset([Sample("x-1", _image=np.zeros((20, 30, 3), np.uint8), boxes=boxes, labels=[0, 0], _masks=m)],
                      ["nucleus"])

    def pred(masks):
        return [{"boxes": boxes, "scores": np.ones(2, np.float32), "labels": np.zeros(2, np.int64), "masks": masks}]
    assert coco_eval(ds, pred(m), iou_type="segm")["mAP"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"'x-1'.*\(32, 32\).*\(20, 30\)"):
        coco_eval(ds, pred(np.pad(m, ((0, 0), (0, 12), (0, 2)))), iou_type="segm")
    with pytest.raises(ValueError, match=r"'x-1'.*\(30, 20\)"):
        mask_ap(ds, pred(m.transpose(0, 2, 1)))


def test_segmenters_on_16_bit_images():
    from smearlab.segmentation import classical as C
    from smearlab.segmentation.unet import UNet
    from smearlab.segmentation.predict import predict_semantic
    img8 = np.full((40, 50, 3), 20, np.uint8)
    img8[5:15, 5:15] = img8[25:35, 30:45] = 220
    img16 = img8.astype(np.uint16) * 16                           # the same picture, 12-bit
    for fn in (C.threshold_segment, C.watershed_segment):
        a, b = fn(img8), fn(img16)
        assert len(a["masks"]) == len(b["masks"]) == 2
        np.testing.assert_array_equal(a["masks"], b["masks"])
    with pytest.raises(ValueError, match="uint8 RGB, got dtype uint16.*to_rgb8"):
        predict_semantic(UNet(base=4, depth=1), [img16], device="cpu")
    # a dense stained bright-field field (cells on 65 %): 12-bit data in a 16-bit array is the same
    # image (it was read 16 times too dark, called fluorescence, and its background segmented)
    from smearlab.segmentation.instances import image_polarity
    bf = np.zeros((40, 40, 3), np.uint8)
    bf[:] = (230, 220, 225)
    bf[:, :26] = (90, 40, 120)
    bf12 = bf.astype(np.uint16) * 16
    assert image_polarity(bf) == image_polarity(bf12) == "dark"
    assert [int(m.sum()) for m in C.threshold_segment(bf12, min_size=1)["masks"]] == [1040]
    # an 8-bit image stored as floats (0..255) is the same image: it was read as 0..1 data (255
    # times too bright), called stained bright-field, its polarity turned over (56 objects for 4)
    fl = np.zeros((48, 48, 3), np.uint8)
    for y, x in ((12, 12), (12, 34), (34, 20)):
        fl[y - 5:y + 5, x - 5:x + 5] = (40, 60, 220)  # blue nuclei on black: fluorescence
    assert image_polarity(fl) == image_polarity(fl.astype(np.float32)) == image_polarity(fl / 255.0) == "bright"
    a, b = C.threshold_segment(fl, min_size=1), C.threshold_segment(fl.astype(np.float32), min_size=1)
    assert len(a["masks"]) == len(b["masks"]) == 3
    np.testing.assert_array_equal(a["masks"], b["masks"])
    from smearlab.data.imageio import full_scale
    assert full_scale(fl / 255.0) == 1.0 and full_scale(fl.astype(np.float32)) == 255.0
    assert full_scale(np.full((2, 2), 1.2)) == 1.0 and full_scale(np.full((2, 2), 3000.0)) == 4095.0


# -- COCO --------------------------------------------------------------------------------------


def _coco(tmp_path, annotations, images=None, categories=None):
    _png(tmp_path / "a.png", np.zeros((*HW, 3), np.uint8))
    data = {"images": images or [{"id": 1, "file_name": "a.png", "width": 10, "height": 8}],
            "annotations": annotations,
            "categories": categories or [{"id": 1, "name": "rbc"}, {"id": 2, "name": "wbc"}]}
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("text, problem", [
    ("", "empty file"),
    ('{"images": [', "malformed JSON at line 1"),
    ("[]", "expected a JSON object"),
    ('{"images": []}', "no 'categories' list"),
    ('{"images": {}, "categories": []}', "'images' must be a list"),
    ('{"images": [], "categories": [{"id": "1", "name": "x"}]}', "integer 'id'"),
    ('{"images": [], "categories": [{"id": 1, "name": "x"}, {"id": 1, "name": "y"}]}', "duplicate"),
])
def test_coco_whole_file_errors_name_the_file(tmp_path, text, problem):
    path = tmp_path / "broken.json"
    path.write_text(text)
    with pytest.raises(DataError, match="broken.json") as e:
        coco.load(path)
    assert problem in str(e.value)


def test_coco_missing_file(tmp_path):
    with pytest.raises(DataError, match="gone.json: cannot read"):
        coco.load(tmp_path / "gone.json")


def test_coco_bad_annotations_are_counted(tmp_path):
    path = _coco(tmp_path, [
        {"id": 10, "image_id": 1, "category_id": 1, "bbox": [1, 1, 3, 3]},
        {"id": 11, "image_id": 1, "category_id": 99, "bbox": [1, 1, 3, 3]},
        {"id": 12, "image_id": 7, "category_id": 1, "bbox": [1, 1, 3, 3]},
        {"id": 13, "image_id": 1, "category_id": 2, "bbox": [1, 1, "3", 3]},
        {"id": 14, "image_id": 1, "category_id": 2, "bbox": [6, 5, 6, 4]},     # 2 px past: clipped
        {"id": 15, "image_id": 1, "category_id": 2, "bbox": [50, 50, 5, 5]},   # far outside
        {"id": 16, "image_id": 1, "category_id": 2, "bbox": [1, 1, 0, 3]},     # degenerate
        {"image_id": 1, "category_id": 2},
    ])
    ds = coco.load(path)
    (s,) = ds
    np.testing.assert_array_equal(s.boxes, [[1, 1, 4, 4], [6, 5, 10, 8]])
    assert s.labels.tolist() == [0, 1]
    got = {sk.record: sk.reason for sk in ds.skipped}
    assert all(sk.path == str(path) for sk in ds.skipped)
    assert got["annotation id 11"] == "unknown category id 99"
    assert got["annotation id 12"] == "unknown image id 7"
    assert got["annotation id 13"].startswith("bbox must be 4 numbers")
    assert got["annotation id 15"].startswith("box outside the 10x8 image")
    assert got["annotation id 16"].startswith("degenerate box")
    assert got["annotations[7]"].startswith("bbox must be 4 numbers")
    assert [(f.record, f.reason.split(":")[0]) for f in ds.fixed] == [
        ("annotation id 14", "box clipped to the image")]
    with pytest.raises(DataError, match=r"gt\.json \[annotation id 11\]: unknown category id 99"):
        coco.load(path, strict=True)


def test_coco_segmentation_problems_are_counted(tmp_path):
    path = _coco(tmp_path, [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 3, 3],
         "segmentation": {"size": [9, 10], "counts": [90]}},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [1, 1, 3, 3],
         "segmentation": {"size": [8, 10], "counts": [70]}},
        {"id": 3, "image_id": 1, "category_id": 1, "bbox": [1, 1, 3, 3],
         "segmentation": {"size": [8, 10], "counts": "garbage!!"}},
        {"id": 4, "image_id": 1, "category_id": 1, "bbox": [1, 1, 3, 3], "segmentation": [[1, 2, 3]]},
        {"id": 5, "image_id": 1, "category_id": 1, "bbox": [1, 1, 3, 3], "segmentation": "x"},
        {"id": 6, "image_id": 1, "category_id": 1, "bbox": [1, 1, 3, 3],
         "segmentation": [[1, 1, 4, 1, 4, 4, 1, 4]]},
    ])
    ds = coco.load(path)
    got = {sk.record: sk.reason for sk in ds.skipped}
    assert got["annotation id 1"] == "segmentation size [9, 10] (h, w) differs from the image size [8, 10]"
    assert got["annotation id 2"].startswith("uncompressed RLE counts must be")
    assert got["annotation id 3"] == "invalid compressed RLE counts"
    assert got["annotation id 4"].startswith("polygon segmentation must be")
    assert got["annotation id 5"].startswith("segmentation must be polygons or an RLE")
    assert len(ds[0]) == 1 and ds[0].masks[0].sum() == 9


def test_coco_image_problems_are_counted(tmp_path):
    _png(tmp_path / "b.png", np.zeros((5, 5, 3), np.uint8))
    (tmp_path / "c.png").write_bytes(b"junk")
    _png(tmp_path.parent / "outside.png", np.zeros((5, 5, 3), np.uint8))
    images = [{"id": 1, "file_name": "a.png", "width": 10, "height": 8},
              {"id": 2, "file_name": "missing.png"},
              {"id": 3, "file_name": "../outside.png"},
              {"id": 4, "file_name": "b.png", "width": 6, "height": 5},
              {"id": 5, "file_name": "c.png"},
              {"id": 1, "file_name": "a.png"},
              {"file_name": "a.png"}]
    path = _coco(tmp_path, [{"id": 1, "image_id": 4, "category_id": 1, "bbox": [0, 0, 2, 2]}],
                 images=images)
    ds = coco.load(path)
    assert [s.meta["coco_id"] for s in ds] == [1]
    got = {sk.record: (sk.path, sk.reason) for sk in ds.skipped}
    assert got["image id 2"][1].startswith("image file not found under") and "missing.png" in got["image id 2"][1]
    assert got["image id 3"][1].startswith("file_name escapes the image root (refused")
    assert got["image id 3"][1].endswith(": ../outside.png")
    assert got["image id 4"] == (str(tmp_path / "b.png"), "size differs from the annotation: image is 5x5 but gt.json says 6x5")
    assert got["image id 5"][0] == str(tmp_path / "c.png") and "not a readable image" in got["image id 5"][1]
    assert got["image id 1"] == (str(path), "duplicate image id")
    assert got["images[6]"][1] == "image entry needs an 'id' and a 'file_name'"
    assert len(ds.skipped) == 6  # the annotation of the skipped image 4 is dropped silently


def test_coco_save_refuses_unknown_mode_and_leaves_no_half_files(tmp_path):
    with pytest.raises(ValueError, match="masks must be"):
        coco.save(SmearDataset([], []), tmp_path / "gt.json", masks="bitmap")
    bad = tmp_path / "bad.gif"  # not copied as is: decoded and written as PNG, which fails
    bad.write_bytes(b"not an image")
    ds = SmearDataset([Sample("x", bad)], ["c"])
    with pytest.raises(DataError, match="bad.gif"):
        coco.save(ds, tmp_path / "out" / "gt.json")
    assert not (tmp_path / "out" / "gt.json").exists()
    assert not list((tmp_path / "out").rglob("*.tmp"))


# -- class folders --------------------------------------------------------------------------------


def test_imagefolder_corrupt_image_is_a_counted_skip(tmp_path):
    (tmp_path / "lymphocyte").mkdir()
    (tmp_path / "lymphocyte" / "x.png").write_bytes(b"\x89PNG garbage")
    _png(tmp_path / "lymphocyte" / "y.png", np.zeros((4, 6), np.uint8))
    ds = imagefolder.load(tmp_path)  # a broken file was counted as an image (and a lymphocyte) before
    assert len(ds) == 1 and ds.class_counts() == {"lymphocyte": 1} and ds[0].hw == (4, 6)
    assert ds.skipped[0].path.endswith("x.png") and ds.skipped[0].reason.startswith("not a readable image")
    with pytest.raises(DataError, match=r"x\.png: not a readable image"):
        imagefolder.load(tmp_path, strict=True)


def test_imagefolder_stray_files_are_counted(tmp_path):
    _png(tmp_path / "mono" / "a.png", np.zeros((4, 4), np.uint8))
    (tmp_path / "mono" / "notes.txt").write_text("hi")
    (tmp_path / "mono" / "sub").mkdir()
    (tmp_path / "README").write_text("hi")
    ds = imagefolder.load(tmp_path)
    assert len(ds) == 1 and ds.class_names == ["mono"]
    assert sorted(sk.path.rsplit("/", 1)[-1] for sk in ds.skipped) == ["README", "notes.txt", "sub"]
    with pytest.raises(DataError, match="README: file outside any class folder"):
        imagefolder.load(tmp_path, strict=True)
    with pytest.raises(DataError, match="no class folders"):
        imagefolder.load(tmp_path / "mono" / "sub")


# -- DICOM -------------------------------------------------------------------------------------


def test_dicom_bad_files(tmp_path):
    (tmp_path / "broken.dcm").write_bytes(b"not dicom at all")
    (tmp_path / "notes.txt").write_text("x")
    ds = dicom.load(tmp_path)
    assert len(ds) == 0 and [sk.path.rsplit("/", 1)[-1] for sk in ds.skipped] == ["broken.dcm", "notes.txt"]
    assert "not a readable DICOM file" in ds.skipped[0].reason
    with pytest.raises(DataError, match="broken.dcm: not a readable DICOM"):
        dicom.load(tmp_path, strict=True)
    (tmp_path / "broken.dcm").unlink()
    with pytest.raises(DataError, match="no .dcm"):
        dicom.load(tmp_path)


def test_dicom_without_pydicom_says_how_to_install(tmp_path, monkeypatch):
    (tmp_path / "a.dcm").write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(DataError, match=r"a\.dcm: .*pip install 'smearlab\[dicom\]'"):
        dicom.load(tmp_path / "a.dcm")
