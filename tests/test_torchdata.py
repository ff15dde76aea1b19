"""torch Dataset and collate: torchvision detection targets."""
import torch
from helpers import toy_dataset
from torch.utils.data import DataLoader

from smearlab.data.torchdata import DetectionDataset, collate_detection, image_to_tensor


def test_targets_match_torchvision_convention():
    ds = toy_dataset(4, masks=True)
    tds = DetectionDataset(ds)
    assert tds.num_classes == 4
    img, t = tds[1]
    assert img.shape == (3, 48, 64) and img.dtype == torch.float32 and 0 <= img.min() and img.max() <= 1
    assert set(t) == {"boxes", "labels", "image_id", "area", "iscrowd", "masks"}
    assert torch.equal(t["labels"], torch.as_tensor(ds[1].labels) + 1)  # 0 is background
    assert t["boxes"].shape == (len(ds[1]), 4) and t["masks"].shape == (len(ds[1]), 48, 64)
    assert t["masks"].dtype == torch.uint8 and int(t["image_id"]) == 1
    assert torch.equal(t["area"], t["masks"].flatten(1).sum(1).float())


def test_grayscale_and_collate():
    ds = toy_dataset(5)
    tds = DetectionDataset(ds, grayscale=True)
    img, t = tds[0]
    assert img.shape == (1, 48, 64) and "masks" not in t
    expected = (torch.tensor(ds[0].image, dtype=torch.float32) / 255 @ torch.tensor([0.299, 0.587, 0.114]))
    assert torch.allclose(img[0], expected, atol=1e-5)
    images, targets = next(iter(DataLoader(tds, batch_size=3, collate_fn=collate_detection)))
    assert len(images) == 3 and len(targets) == 3


def test_trains_a_torchvision_detector_step():
    """The target dict is what torchvision's detectors accept: one training step runs."""
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_fpn
    torch.manual_seed(0)
    ds = toy_dataset(2)
    model = fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None, num_classes=4,
                                              min_size=64, max_size=64)
    model.train()
    images, targets = collate_detection([DetectionDataset(ds)[i] for i in range(2)])
    losses = model(list(images), list(targets))
    assert {"loss_classifier", "loss_box_reg"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())


def test_transform_hook_applies():
    ds = toy_dataset(2)
    seen = []
    tds = DetectionDataset(ds, transform=lambda s: seen.append(s.image_id) or s)
    tds[0]
    assert seen == ["toy000"]
    assert image_to_tensor(ds[0].image).shape[0] == 3


def test_crowd_regions_are_no_training_objects():
    """torchvision's detectors do not read iscrowd: a clump outlined as one was learned as one cell."""
    import numpy as np

    from smearlab.data import Sample, SmearDataset
    from smearlab.detection.train import _GpuImages
    m = np.zeros((2, 32, 32), bool)
    m[0, 2:8, 2:8] = m[1, 10:30, 10:30] = True
    s = Sample("a", boxes=[[2, 2, 8, 8], [10, 10, 30, 30]], labels=[0, 1], _image=np.zeros((32, 32, 3), np.uint8),
               _masks=m, meta={"iscrowd": [0, 1]})
    ds = SmearDataset([s], ["A", "B"])
    _, t = DetectionDataset(ds)[0]
    assert t["labels"].tolist() == [1] and t["boxes"].tolist() == [[2, 2, 8, 8]]
    assert t["masks"].shape == (1, 32, 32) and t["iscrowd"].tolist() == [0] and t["area"].tolist() == [36.0]
    g = _GpuImages(ds, grayscale=False, device=torch.device("cpu"), masks=True).targets[0]
    assert g["labels"].tolist() == [1] and g["masks"].shape == (1, 32, 32)
