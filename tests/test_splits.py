"""Splits by image, stratified K-fold, and the leak check."""
import numpy as np
import pytest
from helpers import toy_dataset

from smearlab.data import Sample, SmearDataset
from smearlab.data.splits import check_leaks, class_signature, kfold, train_val_test_split


def test_train_val_test_partition_images():
    ds = toy_dataset(60)
    parts = train_val_test_split(ds, val=0.2, test=0.2, seed=1)
    ids = {k: {s.image_id for s in v} for k, v in parts.items()}
    assert sum(len(v) for v in ids.values()) == 60
    assert not (ids["train"] & ids["val"] or ids["train"] & ids["test"] or ids["val"] & ids["test"])
    assert len(parts["test"]) == 12 and len(parts["val"]) == 12
    again = train_val_test_split(ds, val=0.2, test=0.2, seed=1)
    assert [s.image_id for s in again["test"]] == [s.image_id for s in parts["test"]]
    assert set(train_val_test_split(ds, val=0, test=0.25)) == {"train", "test"}
    with pytest.raises(ValueError, match="fractions"):
        train_val_test_split(ds, val=0.6, test=0.5)


def test_kfold_stratifies_on_class_combinations():
    rng = np.random.default_rng(0)
    samples = []
    for i in range(50):  # 10 images hold the rare class 2
        labels = [0, 1] if i % 5 else [0, 2]
        samples.append(Sample(f"i{i}", boxes=np.tile([0, 0, 5, 5], (2, 1)), labels=labels,
                              _image=rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)))
    ds = SmearDataset(samples, ["RBC", "WBC", "Platelets"])
    folds = kfold(ds, k=5, seed=0)
    tests = np.concatenate([te for _, te in folds])
    assert sorted(tests.tolist()) == list(range(50))  # each image tested exactly once
    keys = np.array(class_signature(ds))
    for tr, te in folds:
        assert not set(tr) & set(te)
        assert (keys[te] == "0+2").sum() == 2  # the rare combination spread evenly
    with pytest.raises(ValueError, match="folds"):
        kfold(ds, k=1)


def test_leak_check_finds_names_and_content(tmp_path):
    from PIL import Image
    rng = np.random.default_rng(0)
    paths = []
    for i in range(4):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    copy = tmp_path / "renamed_copy.png"
    copy.write_bytes(paths[3].read_bytes())
    mk = lambda ps: SmearDataset([Sample(p.stem, path=p) for p in ps], ["RBC"])
    rep = check_leaks({"train": mk(paths[:3]), "test": mk([paths[2], copy])})
    assert rep.leaks
    assert rep.same_name[("train", "test")] == [paths[2].resolve().as_posix()]  # the same file
    assert len(rep.same_content[("train", "test")]) == 1  # img2 itself (identical bytes)
    rep2 = check_leaks({"train": mk(paths[:3] + [copy]), "test": mk([paths[3]])})
    assert rep2.same_content and not rep2.same_name  # renamed copy caught by content
    assert "identical images" in str(rep2)
    clean = check_leaks({"train": mk(paths[:2]), "test": mk(paths[2:3])})
    assert not clean.leaks and "no leaks" in str(clean)


def test_split_with_more_class_combinations_than_test_images():
    """Many rare class combinations and a small test split: pooled, never an sklearn error."""
    rng = np.random.default_rng(1)
    samples = [Sample(f"i{i}", boxes=np.tile([0, 0, 5, 5], (2, 1)), labels=[0, 1 + i % 7],
                      _image=rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)) for i in range(40)]
    ds = SmearDataset(samples, [f"c{k}" for k in range(8)])
    parts = train_val_test_split(ds, val=0.15, test=0.25, seed=0)
    assert [len(parts[k]) for k in ("train", "val", "test")] == [24, 6, 10]


def test_leak_check_tells_same_names_in_two_folders_apart(tmp_path):
    """Zheng's Dataset 1 and 2 both hold 001.bmp ... 100.bmp: other images, not a leak; a copy of
    a training folder as the validation folder (CBC's layout) is one, each below its own root."""
    from PIL import Image
    rng = np.random.default_rng(1)
    for folder in ("Dataset 1", "Dataset 2"):
        Image.fromarray(rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)).save(tmp_path / f"{folder}.png")
        (tmp_path / folder).mkdir()
        (tmp_path / f"{folder}.png").rename(tmp_path / folder / "002.bmp.png")
    one, two = tmp_path / "Dataset 1" / "002.bmp.png", tmp_path / "Dataset 2" / "002.bmp.png"
    rep = check_leaks({"train": SmearDataset([Sample("d1_002", path=one)], ["c"]),
                       "test": SmearDataset([Sample("d2_002", path=two)], ["c"])})
    assert not rep.leaks
    for split in ("Training", "Validation"):
        (tmp_path / split).mkdir()
        (tmp_path / split / "a.png").write_bytes(one.read_bytes())
    rooted = {k: SmearDataset([Sample("a", path=tmp_path / k / "a.png")], ["c"], root=tmp_path / k)
              for k in ("Training", "Validation")}
    assert check_leaks(rooted).same_name == {("Training", "Validation"): ["a.png"]}


def test_split_sizes_are_exact_and_impossible_splits_refused():
    from smearlab.data.splits import stratified_split
    ds = toy_dataset(20)
    sizes = {k: len(v) for k, v in train_val_test_split(ds, val=0.2, test=0.3).items()}
    assert sizes == {"train": 10, "val": 4, "test": 6}  # 0.2 / 0.7 * 14 is 4.000000000000001: 4, not 5
    for n, val, test in ((0, 0.15, 0.15), (1, 0.15, 0.15), (2, 0.15, 0.15), (20, 0.6, 0.39)):
        with pytest.raises(ValueError, match="cannot give"):
            train_val_test_split(toy_dataset(n) if n else SmearDataset([], ["RBC"]), val=val, test=test)
    with pytest.raises(ValueError, match="one class per item"):
        stratified_split(np.eye(3)[[0, 1, 2, 0]], 0.5)


def test_crops_of_one_image_stay_on_one_side():
    from smearlab.classification.crops import CropDataset
    labels = np.array([0, 0, 1, 0, 1, 1, 0, 1, 0, 1, 1, 0])
    ids = [f"img{i // 3}#{i % 3}" for i in range(12)]  # four images of three cells each
    crops = CropDataset(np.zeros((12, 8, 8, 3), np.uint8), labels, ["a", "b"], ids=ids)
    train, test = crops.split(0.5, seed=0)
    image = lambda i: i.split("#")[0]  # noqa: E731
    assert len(train) + len(test) == 12 and len(test) > 0
    assert not {image(i) for i in train.ids} & {image(i) for i in test.ids}
    single = CropDataset(np.zeros((12, 8, 8, 3), np.uint8), labels, ["a", "b"], ids=[f"c{i}" for i in range(12)])
    from smearlab.data.splits import stratified_split
    tr, te = stratified_split(labels, 0.5, 0)
    assert single.split(0.5, 0)[1].ids == [f"c{i}" for i in te]  # one crop per image: the split of before


def test_crop_ids_with_a_hash_in_the_image_name():
    from smearlab.classification.crops import CropDataset
    labels = np.array([0, 1] * 10)
    crops = CropDataset(np.zeros((20, 8, 8, 3), np.uint8), labels, ["a", "b"],
                        ids=[f"batch#2/img{i}.jpg" for i in range(20)])  # one crop per image
    train, test = crops.split(0.5, seed=0)
    assert len(train) == len(test) == 10


def test_a_cbc_testing_folder_reads_in_the_training_classes_before_any_training(tmp_path):
    """A Testing/ without one class listed the others in another order (VOC sorts them) and the
    run failed only after training; a class Training/ lacks is refused up front."""
    import dataclasses

    from smearlab.data import Sample, SmearDataset
    from smearlab.data.formats import voc
    from smearlab.data.splits import detection_splits
    from smearlab.data.synthetic import make_dataset

    ds = make_dataset(6, seed=0, width=96, height=96)
    voc.save(ds, tmp_path / "cbc" / "Training")
    rbc = ds.class_names.index("RBC")
    no_rbc = SmearDataset([dataclasses.replace(s, boxes=s.boxes[s.labels != rbc], labels=s.labels[s.labels != rbc])
                           for s in ds.samples[:2]], ds.class_names, "test")
    voc.save(no_rbc, tmp_path / "cbc" / "Testing")
    sp = detection_splits(str(tmp_path / "cbc"), seed=0)
    assert sp["test"].class_names == sp["train"].class_names  # not ['Platelets', 'WBC']
    for got, want in zip(sp["test"], no_rbc):
        assert sorted(sp["test"].class_names[k] for k in got.labels.tolist()) == sorted(
            no_rbc.class_names[k] for k in want.labels.tolist())
    other = SmearDataset([Sample("x", boxes=[[2, 2, 20, 20]], labels=[0], _image=ds[0].image)], ["Parasite"], "x")
    voc.save(other, tmp_path / "cbc" / "Testing")
    with pytest.raises(ValueError, match="Parasite.*Training/"):
        detection_splits(str(tmp_path / "cbc"), seed=0)


def test_instance_splits_refuse_boxes_without_masks_and_a_half_cbc_layout_is_said(tmp_path, caplog):
    from smearlab.data import DataError
    from smearlab.data.formats import voc
    from smearlab.data.splits import detection_splits, instance_splits
    from smearlab.data.synthetic import make_dataset

    ds = make_dataset(8, seed=0, width=96, height=96)
    voc.save(ds, tmp_path / "boxes")  # boxes only: notebook 05 failed after every method had run
    with pytest.raises(DataError, match="no instance masks"):
        instance_splits(str(tmp_path / "boxes"), quick=True)
    voc.save(ds, tmp_path / "half" / "Training")  # no Testing/ beside it
    with caplog.at_level("WARNING", logger="smearlab.data.splits"):
        sp = detection_splits(str(tmp_path / "half" / "Training"), seed=0)
        detection_splits(str(tmp_path / "half"), seed=0)
    assert len(sp["test"]) > 0 and any("not Testing/" in r.getMessage() for r in caplog.records)


def _yolo_with_splits(tmp_path, n_train: int, n_test: int):
    """A YOLO dataset of synthetic smears with ``images/train`` and ``images/test``."""
    import shutil

    from smearlab.data.formats import yolo
    from smearlab.data.synthetic import make_dataset
    ds = make_dataset(n_train + n_test, seed=0, width=96, height=96)
    root = tmp_path / "y"
    for part, idx in (("train", range(n_train)), ("test", range(n_train, n_train + n_test))):
        yolo.save(ds.subset(list(idx)), tmp_path / part)
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "labels").mkdir(exist_ok=True)
        shutil.move(tmp_path / part / "images", root / "images" / part)
        shutil.move(tmp_path / part / "labels", root / "labels" / part)
        for f in (tmp_path / part).iterdir():
            if f.is_file():
                shutil.copy(f, root / f.name)
    return root


def test_a_yolo_datasets_published_test_split_is_kept_out_of_training(tmp_path):
    """images/train and images/test were read together and shuffled: published test images
    landed in training."""
    from smearlab.data.formats import published_splits
    from smearlab.data.splits import detection_splits
    root = _yolo_with_splits(tmp_path, 14, 6)
    assert published_splits(root) == {"train": "train", "test": "test"}
    sp = detection_splits(str(root), val=0.2)
    assert {s.path.parent.name for s in sp["test"]} == {"test"} and len(sp["test"]) == 6
    assert {s.path.parent.name for s in (*sp["train"], *sp["val"])} == {"train"}
    assert len(sp["train"]) + len(sp["val"]) == 14 and len(sp["val"]) == 3
    assert published_splits(tmp_path / "nothing-here") == {}


def test_quick_instance_splits_draw_from_every_domain_of_a_dataset_ordered_by_domain(zheng_root):
    """The first 24 and 12 images were taken: Zheng lists Dataset 1 first, so quick runs never
    saw Dataset 2."""
    from smearlab.data.splits import instance_splits
    sp = instance_splits(str(zheng_root), quick=True)
    for part in ("train", "test"):
        assert {s.image_id.split("_")[0] for s in sp[part]} == {"d1", "d2"}
    again = instance_splits(str(zheng_root), quick=True)
    assert [s.image_id for s in again["test"]] == [s.image_id for s in sp["test"]]


def test_published_splits_without_a_validation_split_and_a_single_split(tmp_path, caplog):
    import logging
    import shutil

    from smearlab.data.splits import detection_splits
    root = _yolo_with_splits(tmp_path, 6, 2)
    sp = detection_splits(str(root), val=0.0)       # no validation asked, none published: none, no KeyError
    assert set(sp) == {"train", "test"} and len(sp["test"]) == 2
    shutil.rmtree(root / "images" / "test")
    shutil.rmtree(root / "labels" / "test")
    with caplog.at_level(logging.WARNING, logger="smearlab.data.splits"):
        one = detection_splits(str(root), val=0.2, test=0.2)   # a single published split: split by image
    assert len(one["train"]) + len(one["val"]) + len(one["test"]) == 6
    assert not any("publishes" in r.getMessage() for r in caplog.records)


def test_a_grouped_split_spreads_a_class_that_is_nowhere_the_majority():
    """Groups were split by their most common class: crops cut from fields of red cells put every
    platelet crop in train for half the seeds, silently."""
    from smearlab.classification.crops import CropDataset
    labels, ids = [], []
    for im in range(10):
        for k, lab in enumerate([0] * 8 + [1] + ([2, 2] if im < 2 else [])):
            labels.append(lab)
            ids.append(f"img{im}#{k}")
    crops = CropDataset(np.zeros((len(labels), 8, 8, 3), np.uint8), labels, ["RBC", "WBC", "Platelets"], ids=ids)
    for seed in range(20):
        tr, te = crops.split(0.3, seed)
        assert (tr.labels == 2).any() and (te.labels == 2).any(), seed
        assert not set(tr.groups) & set(te.groups)
