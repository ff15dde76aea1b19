"""What the dataset writers must not change on the way out and back: which pixels the boxes sit on,
which objects count, which file an image id names, and the masks of an image."""
import logging

import numpy as np
import pytest
from PIL import Image

from smearlab.core.errors import DataError
from smearlab.data.formats import load, save
from smearlab.data.sample import Sample, SmearDataset


def test_an_image_read_as_stored_keeps_its_boxes_in_every_format(tmp_path):
    """A VOC set whose <size> is the stored one reads its EXIF-turned JPEG as stored; YOLO
    copied the file with its tag, and the copy was read turned, away from the boxes."""
    src = tmp_path / "voc"
    (src / "Annotations").mkdir(parents=True)
    (src / "JPEGImages").mkdir()
    pixels = np.random.default_rng(0).integers(0, 255, (30, 50, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(src / "JPEGImages" / "x.jpg", exif=exif.tobytes(), quality=95)
    (src / "Annotations" / "x.xml").write_text(
        "<annotation><filename>x.jpg</filename><size><width>50</width><height>30</height><depth>3</depth></size>"
        "<object><name>rbc</name><bndbox><xmin>41</xmin><ymin>21</ymin><xmax>50</xmax><ymax>30</ymax></bndbox>"
        "</object></annotation>")
    ds = load(src, format="voc")
    assert ds[0].orientation == "stored" and ds[0].hw == (30, 50)
    for fmt in ("yolo", "coco", "voc"):
        back = load(save(ds, tmp_path / fmt / "gt.json" if fmt == "coco" else tmp_path / fmt, fmt), format=fmt)
        assert back[0].hw == (30, 50), fmt
        assert np.allclose(back[0].boxes, [[40, 20, 50, 30]], atol=1e-3), fmt
        assert (back[0].image == ds[0].image).all(), fmt  # the same pixels under the boxes


def test_crowd_regions_are_left_out_of_formats_without_a_crowd_flag_and_counted(tmp_path, caplog):
    s = Sample("a", _image=np.zeros((20, 30, 3), np.uint8), boxes=[[1, 1, 5, 5], [10, 10, 20, 18]], labels=[0, 1],
               meta={"iscrowd": np.array([0, 1])})
    ds = SmearDataset([s], ["rbc", "wbc"], "crowded")
    for fmt in ("voc", "yolo"):
        with caplog.at_level(logging.WARNING, logger="smearlab"):
            back = load(save(ds, tmp_path / fmt, fmt), format=fmt)
        assert back.class_counts().get("rbc") == 1 and not back.class_counts().get("wbc"), fmt  # the clump is no white cell
        assert "1 crowd region(s)" in caplog.text
        caplog.clear()
    coco = load(save(ds, tmp_path / "coco" / "gt.json", "coco"), format="coco")
    assert coco[0].crowd.tolist() == [False, True]  # COCO keeps it as a crowd region


def test_voc_flags_of_another_length_are_refused_before_any_file(tmp_path):
    s = Sample("a", _image=np.zeros((20, 30, 3), np.uint8), boxes=[[1, 1, 5, 5], [6, 6, 9, 9], [10, 1, 14, 5]],
               labels=[0, 0, 0], meta={"difficult": np.array([True, False])})
    with pytest.raises(DataError, match="2 flags for 3 boxes"):
        save(SmearDataset([s], ["rbc"], "d"), tmp_path / "voc", "voc")
    assert not (tmp_path / "voc").exists() or not any((tmp_path / "voc").rglob("*.*"))


def test_coco_file_names_never_take_another_images_name(tmp_path):
    samples = []
    for i, rel in enumerate(("f2/a.png", "f1/a.png", "f1/a_1.png")):
        (tmp_path / "src" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((10 + i, 20, 3), 40 * i, np.uint8)).save(tmp_path / "src" / rel)
        samples.append(Sample(rel, path=tmp_path / "src" / rel, boxes=[[1, 1, 5, 5]], labels=[0]))
    back = load(save(SmearDataset(samples, ["rbc"], "names"), tmp_path / "coco" / "gt.json", "coco"), format="coco")
    by_id = {s.image_id: s.hw[0] for s in back}
    assert by_id["a_1"] == 12  # f1/a_1.png keeps its name; f1/a.png took another
    assert sorted(by_id.values()) == [10, 11, 12]


def test_coco_polygons_of_an_empty_mask_keep_the_images_other_masks(tmp_path):
    masks = np.zeros((2, 30, 50), bool)
    masks[0, 2:6, 3:9] = True
    s = Sample("a", _image=np.zeros((30, 50, 3), np.uint8), boxes=[[3, 2, 9, 6], [20, 10, 30, 20]], labels=[0, 0],
               _masks=masks)
    from smearlab.data.formats import coco
    back = load(coco.save(SmearDataset([s], ["cell"], "m"), tmp_path / "gt.json", masks="polygon"), format="coco")
    assert back[0].has_masks and back[0].masks[0].sum() == 24 and back[0].masks[1].sum() == 0
