"""A torch Dataset over :class:`SmearDataset` yielding torchvision detection targets."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from .imageio import LUMA
from .sample import Sample, SmearDataset



class DetectionDataset(Dataset):
    """Images as float tensors in [0, 1] and the target dict torchvision detectors expect.

    Labels are shifted by one so that 0 is the background class of torchvision models: a
    dataset with classes ``[RBC, WBC, Platelets]`` yields labels 1..3 and a model needs
    ``num_classes = len(class_names) + 1``.

    Parameters
    ----------
    dataset : SmearDataset
    grayscale : yield a 1-channel image (luma) instead of RGB.
    transform : optional ``f(sample) -> sample`` applied before conversion (augmentation).
    with_masks : include ``masks`` in the target when the sample has instance masks.
    """

    def __init__(self, dataset: SmearDataset, *, grayscale: bool = False,
                 transform: Callable[[Sample], Sample] | None = None, with_masks: bool = True):
        self.dataset = dataset
        self.grayscale = grayscale
        self.transform = transform
        self.with_masks = with_masks

    @property
    def num_classes(self) -> int:
        """Classes including background, as torchvision model builders want it."""
        return len(self.dataset.class_names) + 1

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        s = self.dataset[i]
        if self.transform is not None:
            s = self.transform(s)
        return image_to_tensor(s.image, self.grayscale), target_dict(s, i, self.with_masks)


def image_to_tensor(image: np.ndarray, grayscale: bool = False) -> torch.Tensor:
    """(H, W, 3) uint8 -> (C, H, W) float32 in [0, 1]; C is 1 for ``grayscale``.

    Parameters
    ----------
    image : ``(H, W, 3)`` uint8 RGB.
    grayscale : return one channel, the luma (:data:`~smearlab.data.imageio.LUMA` weights).
    """
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0).contiguous()
    if grayscale:
        w = torch.tensor(LUMA, dtype=t.dtype).view(3, 1, 1)
        t = (t * w).sum(0, keepdim=True)
    return t


def target_dict(sample: Sample, index: int, with_masks: bool = True) -> dict[str, torch.Tensor]:
    """torchvision target: boxes, labels (+1), image_id, area, iscrowd and masks if present.

    COCO crowd regions (``iscrowd``: a clump outlined as one) are left out, as torchvision's own
    COCO training pipeline leaves them out: torchvision's detectors do not read ``iscrowd``, so a
    clump would be learned as one cell of its class (``iscrowd`` is therefore all 0).

    Parameters
    ----------
    sample : the (possibly augmented) Sample.
    index : its position in the dataset, stored as ``image_id``.
    with_masks : include ``masks`` (uint8 ``(N, H, W)``; ``area`` is then the mask area) when the
        sample has instance masks.
    """
    keep = ~np.asarray(sample.crowd, bool)
    boxes = torch.as_tensor(sample.boxes, dtype=torch.float32).reshape(-1, 4)[keep]
    t = {
        "boxes": boxes,
        "labels": torch.as_tensor(sample.labels, dtype=torch.int64)[keep] + 1,
        "image_id": torch.tensor(index, dtype=torch.int64),
        "area": (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]),
        "iscrowd": torch.zeros(len(boxes), dtype=torch.int64),
    }
    if with_masks and sample.has_masks:
        m = torch.from_numpy(np.ascontiguousarray(np.asarray(sample.masks)[keep])).to(torch.uint8)
        t["masks"] = m
        t["area"] = m.flatten(1).sum(1).float()
    return t


def collate_detection(batch):
    """Keep images and targets as tuples: detection images may differ in size.

    Parameters
    ----------
    batch : list of ``(image, target)`` pairs from :class:`DetectionDataset`.

    Returns
    -------
    tuple
        ``(images, targets)``, each a tuple.
    """
    return tuple(zip(*batch))
