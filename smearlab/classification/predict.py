"""Prediction with the classifier: classes of crops, the classes of the cells in boxes, and the
detector + classifier cascade folder that ``smearlab predict`` runs for a differential count
(:mod:`smearlab.batch`)."""
from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn

from ..core.device import resolve_device
from ..core.errors import DataError
from ..core.files import write_json
from ..core.training import check_count
from ..core.geometry import check_crop_values, extract_crop, letterbox
from ..core.model_folder import read_config_json
from ..data.sample import Sample
from ..detection.models import load_model as load_detector
from .crops import CENTRAL_PAD, CENTRAL_WHOLE_CELL_PAD, CropDataset
from .model import DANN, CellClassifier, load_classifier, save_classifier

log = logging.getLogger('smearlab.classification.predict')


def _in_channels(model: nn.Module) -> int:
    """The channel count ``model`` takes: its config's ``in_channels`` (a :class:`CellClassifier`),
    else that of its first convolution, else 3."""
    cfg = getattr(model, "config", None)
    n = cfg.get("in_channels") if isinstance(cfg, dict) else None
    if n is None:
        n = next((m.in_channels for m in model.modules() if isinstance(m, nn.Conv2d)), 3)
    return int(n)


def _as_batch_source(data, size: int, channels: int = 3, fill="median") -> torch.Tensor:
    """``(N, C, S, S)`` uint8 or float tensor from a CropDataset, a tensor or a list of images
    (``C = channels``: CropDatasets and images are RGB, refused for another count; images are
    letterboxed with ``fill``)."""
    if isinstance(data, torch.Tensor):
        if data.ndim == 3:
            data = data[None]
        if data.ndim != 4 or data.shape[1] != channels or data.shape[2] != data.shape[3]:
            raise ValueError(f"image tensor must be (N, {channels}, S, S) square crops for a classifier of "
                             f"{channels} input channel(s), got {tuple(data.shape)}")
        check_crop_values(data)
        return data
    if channels != 3:
        raise ValueError(f"the classifier takes {channels}-channel crops, but CropDatasets and images are RGB: "
                         f"give an (N, {channels}, S, S) tensor")
    if isinstance(data, CropDataset):
        return data.images
    if isinstance(data, np.ndarray) and data.ndim == 3:
        data = [data]
    images = [letterbox(s.image if isinstance(s, Sample) else np.asarray(s), size, fill) for s in data]
    if not images:
        return torch.zeros((0, 3, size, size), dtype=torch.uint8)
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)


class ClassPredictions(list):
    """One result per crop (or image), as every task's prediction is: a dict ``{"label": int,
    "class": name, "score": probability of that class, "probs": (K,) float32}``; the whole set
    also as arrays (:attr:`labels`, :attr:`probs`) for metrics.

    Parameters
    ----------
    probs : ``(N, K)`` softmax probabilities.
    class_names : the ``K`` classes, in logit order.
    """

    def __init__(self, probs: np.ndarray, class_names: Sequence[str]):
        probs = np.asarray(probs, np.float32)
        if probs.ndim != 2:  # (N,) of one class each; none at all keeps its (0, K) shape
            probs = probs.reshape(len(probs), -1) if probs.size else np.zeros((0, len(class_names)), np.float32)
        self.probs = probs
        self.labels = probs.argmax(1).astype(np.int64) if len(probs) else np.zeros(0, np.int64)
        self.class_names = [str(c) for c in class_names]
        super().__init__({"label": int(k), "class": self.class_names[k] if k < len(self.class_names) else str(k),
                          "score": float(p[k]), "probs": p} for k, p in zip(self.labels, probs))

    def __repr__(self) -> str:
        return f"ClassPredictions({len(self)} crops, classes={self.class_names})"


@torch.no_grad()
def predict_classes(model: nn.Module, data, device="auto", batch_size: int = 256) -> ClassPredictions:
    """The class of each crop: one result per crop, in order.

    Parameters
    ----------
    model : a :class:`CellClassifier` (or any module mapping ``(B, C, S, S)`` in [0, 1] to logits;
        ``C`` is its ``config["in_channels"]``, else its first convolution's, else 3).
    data : a :class:`CropDataset`, an ``(N, C, S, S)`` tensor of square crops (uint8, or float in
        [0, 1]; a tensor of another channel count or size is refused), or ``(H, W, 3)`` uint8
        images / Samples (letterboxed to ``model.input_size`` with the fill of the model's training
        crops, ``model.crop_cut["fill"]``, else "median"). CropDatasets and images are RGB:
        a classifier built with ``in_channels=1`` takes ``(N, 1, S, S)`` tensors only.
    device : "auto", "cpu", "cuda".
    batch_size : crops per forward pass.

    Returns
    -------
    ClassPredictions
        one dict per crop (``label``, ``class``, ``score``, ``probs``); ``.labels`` ``(N,)``
        int64 and ``.probs`` ``(N, K)`` float32 as arrays.
    """

    check_count("batch_size", batch_size)
    if isinstance(model, DANN):
        raise ValueError("a DANN wrapper returns class and domain outputs: predict with its .classifier")
    dev = resolve_device(device)
    size = int(getattr(model, "input_size", 64) or 64)
    x = _as_batch_source(data, size, _in_channels(model), crop_fill(model))
    trained = getattr(model, "input_size", None)
    if trained and len(x) and tuple(x.shape[-2:]) != (size, size):  # the measured features change with the resolution too
        raise ValueError(f"crops of {x.shape[-1]} px for a classifier trained on {size} px crops: the cells would "
                         f"be seen at another size; cut the crops at {size} px (crops_from_dataset(..., {size}))")
    was_training = model.training
    model.to(dev).eval()
    out = []
    amp = dev.type == "cuda"
    for b in range(0, len(x), batch_size):
        xb = x[b:b + batch_size].to(dev)
        xb = xb.float() / 255 if xb.dtype == torch.uint8 else xb.float()
        with torch.autocast(dev.type, dtype=torch.float16, enabled=amp):
            logits = model(xb)
        if not isinstance(logits, torch.Tensor):
            raise ValueError(f"the model returns a {type(logits).__name__}, not class logits (a DANN wrapper? "
                             "predict with its .classifier)")
        out.append(logits.float().softmax(1).cpu())
    if was_training:
        model.train()
    names = list(getattr(model, "class_names", []))
    k = len(names) or (out[0].shape[1] if out else 0)
    probs = torch.cat(out).numpy() if out else np.zeros((0, k), np.float32)
    return ClassPredictions(probs, names or [str(i) for i in range(probs.shape[1])])


def crop_fill(model) -> Any:
    """The fill the model's training crops were letterboxed with (``model.crop_cut["fill"]``),
    "median" where it records none: images are letterboxed with it before it sees them."""
    return (getattr(model, "crop_cut", None) or {}).get("fill", "median")


def classify_boxes(classifier: CellClassifier, image: np.ndarray, boxes, *, pad: float = 0.1, device="auto",
                   where: str = "image", fill="median") -> tuple[ClassPredictions, np.ndarray]:
    """The class of the cell in each box of one image: a square crop around the box (margin
    ``pad``), letterboxed to the classifier's input size.

    Parameters
    ----------
    classifier : a trained :class:`CellClassifier`.
    image : ``(H, W, 3)`` uint8 RGB.
    boxes : ``(N, 4)`` boxes ``(x0, y0, x1, y1)`` in pixels.
    pad : margin around each box (fraction of its longer side, see :func:`square_window`).
    device : "auto", "cpu", "cuda".
    where : names the image in the warning about a box that cannot be cropped.
    fill : what pads a crop past the image edge and the letterbox (as
        :func:`~smearlab.classification.crops.crops_from_dataset`; the classifier's training crops'
        own, ``classifier.crop_cut["fill"]``, in a cascade).

    Returns
    -------
    (ClassPredictions, np.ndarray)
        one result per box that could be cropped, and the indices of those boxes.
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    crops, kept = [], []
    for j, box in enumerate(boxes):
        try:
            crops.append(letterbox(extract_crop(image, box, pad, fill), classifier.input_size, fill))
            kept.append(j)
        except ValueError as e:
            log.warning("%s: box %d not classified (%s)", where, j, e)
    size = classifier.input_size
    x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2) if crops else torch.zeros((0, 3, size, size),
                                                                                       dtype=torch.uint8)
    return predict_classes(classifier, x, device=device), np.asarray(kept, np.int64)


def save_cascade(folder, detector_folder, classifier: CellClassifier, *, wbc_class: str = "WBC",
                 pad: float | None = None) -> Path:
    """Write a detector + white-cell classifier cascade as one model folder that ``smearlab
    predict`` applies: the detector finds the cells, the classifier names each ``wbc_class`` box.

    Layout: ``config.json`` (``kind: "cascade"``, ``wbc_class``, ``pad``), ``detector/`` (a copy
    of the detector folder) and ``classifier/`` (:func:`~smearlab.classification.model.save_classifier`).

    Parameters
    ----------
    folder : the cascade folder (created).
    detector_folder : a saved detector folder; ``wbc_class`` must be one of its classes.
    classifier : the trained white-cell classifier.
    wbc_class : the detector class whose boxes are classified.
    pad : the crop margin around each detected (whole-cell) box. None: for a classifier trained
        on box crops (``crop_cut["source"] == "boxes"``) their margin, and another margin than
        that one is refused (the cells would be seen at another size than in training); for one
        trained on ``source="central"`` crops (a margin around the stained part of the cell)
        :data:`~smearlab.classification.crops.CENTRAL_WHOLE_CELL_PAD`, the whole-cell margin
        that frames the cell about as they did (logged as approximate); else 0.1.

    Returns
    -------
    Path
        ``folder``.
    """
    cut = getattr(classifier, "crop_cut", None) or {}
    if cut.get("stain_normalised"):  # refused before the detector is copied (a half-replaced cascade)
        raise ValueError("this classifier was trained on stain-normalised crops; a cascade does not hold the "
                         "normaliser, so its crops would be classified unnormalised")
    if cut.get("source") == "image":
        log.warning("the classifier was trained on whole single-cell images; the cascade classifies a square "
                    "window around each detected box: the cells may be framed differently than in training")
    # only box crops' margins are whole-cell (a folder from before "source" was recorded cut box crops)
    recorded = cut.get("pad") if cut.get("source", "boxes") == "boxes" else None
    if cut.get("source") == "central":  # their margin is around the stained part: 0.3 around a whole-cell
        # box would show the cells about 1.5 times smaller than in training
        given = cut.get("pad", CENTRAL_PAD)
        if pad is None:
            pad = CENTRAL_WHOLE_CELL_PAD
        log.warning("the classifier was trained on central-cell crops (margin %s around the stained part of the "
                    "cell); the cascade cuts a margin of %s around each detected whole-cell box, which frames the "
                    "cells about as they were, approximately (the whole-cell equivalent of a margin of %s; "
                    "check with central_crop_check%s)", given, pad, CENTRAL_PAD,
                    "" if given is None or abs(float(given) - CENTRAL_PAD) < 1e-9 else
                    ", and give pad: these crops had another margin")
    if pad is None:
        pad = recorded if recorded is not None else 0.1
    elif recorded is not None and abs(float(pad) - float(recorded)) > 1e-9:
        raise ValueError(f"pad {pad} for a classifier whose training crops had a margin of {recorded}: the cells "
                         "would be seen at another size; leave pad out to use the classifier's")
    det = read_config_json(detector_folder)
    names = list(det.get("class_names", []))
    if wbc_class not in names:
        raise ValueError(f"{wbc_class!r} is not a class of the detector in {detector_folder} (classes {names})")
    folder = Path(folder)
    target = folder / "detector"
    if not (target.exists() and target.resolve() == Path(detector_folder).resolve()):  # the cascade's own
        # detector given back (a new classifier for it) stays; another one replaces it through a
        # copy beside it, so a failed copy never leaves the cascade without a detector
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / ".detector.partial"
        if tmp.exists():
            shutil.rmtree(tmp)
        shutil.copytree(detector_folder, tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    save_classifier(classifier, folder / "classifier")
    write_json(folder / "config.json", {"kind": "cascade", "wbc_class": wbc_class, "pad": float(pad),
                                        "fill": cut.get("fill", "median"),
                                        "detector": "detector", "classifier": "classifier",
                                        "types": list(classifier.class_names)})
    return folder


@dataclasses.dataclass
class Cascade:
    """A loaded detector + white-cell classifier cascade (:func:`save_cascade`).

    Parameters
    ----------
    detector : the detector (eval mode, with ``detector_config`` and ``thresholds``).
    classifier : the white-cell classifier.
    wbc_class : the detector class whose boxes are classified.
    pad : the crop margin around each box.
    fill : what pads a crop past the image edge (that of the classifier's training crops).
    """

    detector: Any
    classifier: CellClassifier
    wbc_class: str
    pad: float = 0.1
    fill: Any = "median"

    @property
    def types(self) -> list[str]:
        """The white-cell types, in the classifier's order."""
        return list(self.classifier.class_names)


def load_cascade(folder, device="auto") -> Cascade:
    """The cascade saved in ``folder`` by :func:`save_cascade`.

    Parameters
    ----------
    folder : the cascade folder.
    device : "auto", "cpu", "cuda".

    Raises
    ------
    DataError
        naming the file when the folder is not a cascade or one of its models is unreadable.
    """
    folder = Path(folder)
    cfg = read_config_json(folder)
    if cfg.get("kind") != "cascade":
        raise DataError(folder / "config.json", f"not a cascade folder (kind {cfg.get('kind')!r})")
    det = load_detector(folder / str(cfg.get("detector", "detector")), device=device)
    clf = load_classifier(folder / str(cfg.get("classifier", "classifier")), device=device)
    wbc = str(cfg.get("wbc_class", "WBC"))
    if wbc not in det.detector_config.class_names:
        raise DataError(folder / "config.json", f"wbc_class {wbc!r} is not a class of its detector "
                                                f"({list(det.detector_config.class_names)})")
    return Cascade(det, clf, wbc, float(cfg.get("pad", 0.1)), cfg.get("fill", "median"))
