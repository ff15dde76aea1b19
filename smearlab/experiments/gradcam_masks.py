"""What notebook 06 runs: Grad-CAM masks of a white-cell classifier against the classical
extractor."""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..classification.crops import crops_from_dataset
from ..classification.model import build_classifier
from ..classification.predict import predict_classes
from ..classification.train import train_classifier
from ..core.device import resolve_device
from ..core.errors import DataError
from ..core.search import grid_search
from ..data import open_dataset
from ..data.sample import Sample, SmearDataset
from ..data.splits import split_groups, stratified_split
from ..data.synthetic import make_wbc_crops
from ..detection.models import DetectorConfig, build_detector
from ..detection.predict import predict
from ..detection.train import TrainConfig, train_detector
from ..explain.cam import (LAYER_SETS, THRESHOLDS, CamMasks, DetectorCam, best_cam_masks, cam_mask_table,
                           cam_masks, detector_cam, select_cam_masks)
from ..metrics.classification import classification_report
from ..metrics.semantic import cell_mask_scores
from ..segmentation.classical import extract_cell
from .profiles import dataset_label


CLASSICAL_GRID = {"channel": ("saturation", "hematoxylin"), "hull": (True, False), "grow": (0, 4, 8, 12)}


#: A smaller list of candidates (10 instead of 16): the nucleus-level region, and its hull grown.
CLASSICAL_CANDIDATES = [{"channel": c, "hull": h, "grow": g} for c in ("saturation", "hematoxylin")
                        for h, g in ((False, 0), (True, 0), (True, 4), (True, 8), (True, 12))]


def classical_candidates(n: int | None = None) -> list[dict]:
    """``n`` of :data:`CLASSICAL_CANDIDATES`, the channels taken in turn (the first ``n`` in list
    order were all of one channel: quick mode never tried haematoxylin); None: all of them.

    Parameters
    ----------
    n : how many candidates (quick mode's short tuning).
    """
    by_channel = [[c for c in CLASSICAL_CANDIDATES if c["channel"] == ch] for ch in ("saturation", "hematoxylin")]
    turns = [c for pair in itertools.zip_longest(*by_channel) for c in pair if c is not None]
    return turns if n is None else turns[:int(n)]


def classical_masks(images, **params) -> list[np.ndarray]:
    """Whole-image masks of :func:`smearlab.segmentation.classical.extract_cell` (empty where it finds nothing).

    Parameters
    ----------
    images : ``(H, W, 3)`` images, or samples whose ``image`` is used.
    params : keyword arguments of :func:`~smearlab.segmentation.classical.extract_cell` (e.g.
        ``channel``, ``hull``, ``grow``).

    Returns
    -------
    list of numpy.ndarray
        one ``(H, W)`` bool mask per image.
    """
    out = []
    for x in images:
        img = np.asarray(getattr(x, "image", x))
        pred, _ = extract_cell(img, **params)
        out.append(pred["masks"][0] if len(pred["masks"]) else np.zeros(img.shape[:2], bool))
    return out


def tune_classical(images, truth, grid: "dict[str, Sequence] | Sequence[dict] | None" = None,
                   keys: Sequence[str] = ("cell_dice", "nucleus_dice")) -> dict[str, Any]:
    """The :func:`~smearlab.segmentation.classical.extract_cell` parameters that score best on the given images.

    Every combination of ``grid`` (a dict of candidate lists, default :data:`CLASSICAL_GRID`, or a
    list of parameter dicts such as :data:`CLASSICAL_CANDIDATES`) is run once; the best one is
    picked separately for each of ``keys``. Tune on training images only.

    Parameters
    ----------
    images : the images to segment (``(H, W, 3)`` arrays or samples, as for :func:`classical_masks`).
    truth : their ground truth for :func:`~smearlab.metrics.semantic.cell_mask_scores` (samples with
        semantic masks or ``(H, W)`` class maps), aligned with ``images``.
    grid : the candidates: a dict of candidate lists (every combination is tried) or a list of
        parameter dicts (None: :data:`CLASSICAL_GRID`).
    keys : the scores to pick a best candidate for, each a key of
        :func:`~smearlab.metrics.semantic.cell_mask_scores`.

    Returns
    -------
    dict
        ``{key: {"params": {...}, "score": float}}`` per key, and ``table``: one row per
        combination with its parameters and every score of :func:`~smearlab.metrics.semantic.cell_mask_scores`.
    """
    images, truth = list(images), list(truth)

    def evaluate(params: dict) -> dict:
        scores = cell_mask_scores(truth, classical_masks(images, **params))
        return {k: v for k, v in scores.items() if k != "n"}

    found = grid_search(CLASSICAL_GRID if grid is None else grid, evaluate)
    out: dict[str, Any] = {"table": found.table}
    for k in keys:
        best = found.best(k)
        out[k] = {"params": best["params"], "score": best[k]}
    return out


@dataclass
class CamExperiment:
    """Everything :func:`run_cam_experiment` produced (see :meth:`summary` for the headline).

    Parameters
    ----------
    model : the trained classifier (a :class:`~smearlab.classification.model.CellClassifier`).
    train, test : the training and test images (subsets of the dataset, stratified by image label).
    classifier : the classifier's :func:`~smearlab.metrics.classification.classification_report` on the
        test crops.
    cam_tuning, nucleus_tuning : the Grad-CAM layers and relative threshold chosen on the training images
        for the whole cell and for the nucleus (:func:`~smearlab.explain.cam.best_cam_masks`: ``layers``,
        ``rel_threshold``, ``score``, ``table``).
    classical_tuning : the extractor's tuning on the training images (:func:`tune_classical`).
    cam_test, nucleus_test : the Grad-CAM masks of the test images with the cell and the nucleus settings.
    classical_test, classical_nucleus_test : the extractor's test masks with the cell and the nucleus
        parameters (one bool mask per image).
    scores : :func:`~smearlab.metrics.semantic.cell_mask_scores` of the four mask sets on the test
        images: ``cam``, ``cam_nucleus``, ``classical``, ``classical_nucleus``.
    settings : the run's settings (``size``, ``width``, ``norm``, ``epochs``, ``test_fraction``, ``seed``,
        ``device``, ``dilate``) and the training time ``train_s``.
    """

    model: nn.Module
    train: Any
    test: Any
    classifier: dict
    cam_tuning: dict
    nucleus_tuning: dict
    classical_tuning: dict
    cam_test: CamMasks
    nucleus_test: CamMasks
    classical_test: list
    classical_nucleus_test: list
    scores: dict
    settings: dict

    def summary(self) -> dict[str, Any]:
        """The headline numbers as one flat, JSON-ready dict."""
        sc = self.scores
        return {
            "cell_dice": sc["cam"]["cell_dice"], "cell_iou": sc["cam"]["cell_iou"],
            "nucleus_dice": sc["cam_nucleus"]["nucleus_dice"], "nucleus_iou": sc["cam_nucleus"]["nucleus_iou"],
            "cell_mask_nucleus_dice": sc["cam"]["nucleus_dice"],
            "classical_cell_dice": sc["classical"]["cell_dice"], "classical_cell_iou": sc["classical"]["cell_iou"],
            "classical_nucleus_dice": sc["classical_nucleus"]["nucleus_dice"],
            "classical_nucleus_iou": sc["classical_nucleus"]["nucleus_iou"],
            "layers": self.cam_tuning["layers"], "rel_threshold": self.cam_tuning["rel_threshold"],
            "nucleus_layers": self.nucleus_tuning["layers"],
            "nucleus_rel_threshold": self.nucleus_tuning["rel_threshold"],
            "dilate": self.settings["dilate"],
            "classical_cell_params": self.classical_tuning["cell_dice"]["params"],
            "classical_nucleus_params": self.classical_tuning["nucleus_dice"]["params"],
            "classifier_accuracy": self.classifier["accuracy"], "classifier_macro_f1": self.classifier["macro"]["f1"],
            "split": {"train": len(self.train), "test": len(self.test),
                      "test_fraction": self.settings["test_fraction"], "seed": self.settings["seed"]},
            "seed": self.settings["seed"], "device": self.settings["device"],
            "input_size": self.settings["size"], "width": self.settings["width"], "epochs": self.settings["epochs"],
            "norm": self.settings["norm"], "train_s": self.settings["train_s"],
        }

    def describe(self) -> str:
        """Two lines: the classifier's test scores, and what was tuned on the training images."""
        m = self.summary()
        return (f"classifier: accuracy {m['classifier_accuracy']:.3f}, macro F1 {m['classifier_macro_f1']:.3f} "
                f"on {len(self.test)} test images (trained {m['train_s']:.0f} s)\n"
                f"tuned on train: layers {m['layers']}, rel_threshold {m['rel_threshold']}; "
                f"classical {m['classical_cell_params']}")

    def table(self) -> str:
        """Markdown table: Grad-CAM against the classical extractor on the test images."""
        sc = self.scores
        rows = [("Grad-CAM (cell threshold)", sc["cam"]), ("Grad-CAM (nucleus threshold)", sc["cam_nucleus"]),
                ("classical extract_cell (cell params)", sc["classical"]),
                ("classical extract_cell (nucleus params)", sc["classical_nucleus"])]
        lines = ["| method | cell Dice | cell IoU | nucleus Dice | nucleus IoU |", "|---|---|---|---|---|"]
        for name, r in rows:
            vals = " | ".join("-" if r[k] is None else f"{r[k]:.3f}"
                              for k in ("cell_dice", "cell_iou", "nucleus_dice", "nucleus_iou"))
            lines.append(f"| {name} | {vals} |")
        return "\n".join(lines)


def run_cam_experiment(dataset, *, size: int = 64, width: int = 16, norm: str = "batch", epochs: int = 30,
                       batch_size: int = 32, lr: float = 0.05, augment=True, test_fraction: float = 0.3, seed: int = 0,
                       device="auto", layer_sets: Sequence[Sequence[str]] = LAYER_SETS,
                       thresholds: Sequence[float] = THRESHOLDS, dilate: int = 5,
                       classical_grid: dict | None = None, progress: bool = False) -> CamExperiment:
    """Train a classifier, turn its Grad-CAMs into cell masks and score them against ground truth.

    Steps: stratified split by image label (:func:`smearlab.data.splits.stratified_split`, fixed
    ``seed``; near-copies on one side, :func:`~smearlab.data.splits.split_groups`) -> a :class:`~smearlab.classification.model.CellClassifier` trained from scratch on the train
    crops -> per-layer Grad-CAMs (predicted class) of the train images -> layers and relative
    threshold tuned on the train images (separately for the whole cell and for the nucleus) ->
    the classical extractor's parameters tuned on the same train images -> both applied once to
    the test images and scored (:func:`~smearlab.metrics.semantic.cell_mask_scores`).

    Parameters
    ----------
    dataset : a SmearDataset of single-cell images with ``image_label`` and semantic masks
        (0 background, 1 cytoplasm, 2 nucleus): Zheng (one domain), or ``make_wbc_crops``.
    size, width, norm, epochs, batch_size, lr, augment : classifier input size and training
        (:func:`~smearlab.classification.model.build_classifier`, :func:`~smearlab.classification.train.train_classifier`).
    test_fraction, seed : the split (and the training seed).
    device : where the classifier trains and the Grad-CAMs run (``"auto"``, ``"cpu"``, ``"cuda"``).
    layer_sets, thresholds, dilate : the CAM mask candidates (:func:`tune_cam_masks`).
    classical_grid : :func:`tune_classical` grid (default :data:`CLASSICAL_GRID`).
    progress : progress bar of the training.
    """

    labels = [s.image_label for s in dataset]
    if any(v is None for v in labels):
        raise ValueError(f"dataset {getattr(dataset, 'name', '?')!r} has images without an image_label")
    # near-copies (one cell photographed twice) on one side: a twin in training is no test
    tr_idx, te_idx = stratified_split(np.asarray(labels), test_fraction, seed, groups=split_groups(dataset, True))
    train = dataset.subset(tr_idx.tolist(), name=f"{dataset.name}:train")
    test = dataset.subset(te_idx.tolist(), name=f"{dataset.name}:test")
    dev = resolve_device(device)
    torch.manual_seed(seed)  # the initial weights come from the global generator
    model = build_classifier(dataset.class_names, width=width, norm=norm, input_size=size)
    t0 = time.perf_counter()
    train_classifier(model, crops_from_dataset(train, size), epochs=epochs, batch_size=batch_size, lr=lr,
                     augment=augment, device=dev, seed=seed, progress=progress)
    train_s = time.perf_counter() - t0
    test_crops = crops_from_dataset(test, size)
    pred = predict_classes(model, test_crops, device=dev).labels
    report = classification_report(test_crops.labels, pred, test_crops.class_names)
    all_layers = list(dict.fromkeys(n for ls in layer_sets for n in ls))
    cams_train = cam_masks(model, train, layers=all_layers, dilate=dilate, device=dev)
    table = cam_mask_table(cams_train, train, layer_sets, thresholds, dilate, True)
    cell, nucleus = best_cam_masks(table, "cell_dice"), best_cam_masks(table, "nucleus_dice")
    classical = tune_classical(train, train, classical_grid)
    all_test = cam_masks(model, test, layers=all_layers, dilate=dilate, device=dev)  # one pass, every layer
    cams_test = select_cam_masks(all_test, cell["layers"], cell["rel_threshold"])
    nuc_test = select_cam_masks(all_test, nucleus["layers"], nucleus["rel_threshold"])
    cl_test = classical_masks(test, **classical["cell_dice"]["params"])
    cl_nuc = classical_masks(test, **classical["nucleus_dice"]["params"])
    scores = {"cam": cell_mask_scores(test, cams_test.masks), "cam_nucleus": cell_mask_scores(test, nuc_test.masks),
              "classical": cell_mask_scores(test, cl_test), "classical_nucleus": cell_mask_scores(test, cl_nuc)}
    settings = {"size": size, "width": width, "norm": norm, "epochs": epochs, "test_fraction": test_fraction,
                "seed": seed, "device": str(dev), "dilate": dilate, "train_s": round(train_s, 2)}
    return CamExperiment(model, train, test, report, cell, nucleus, classical, cams_test, nuc_test, cl_test, cl_nuc,
                         scores, settings)


def cam_images(dataset, *, domain: str = "dataset1", synthetic_crops: int = 100, seed: int = 0) -> SmearDataset:
    """The white-cell images of notebook 06: synthetic crops (stain A, 96 px) or one domain of a
    real dataset such as the Zheng archive.

    Parameters
    ----------
    dataset : ``"synthetic"`` or a dataset path or archive for :func:`~smearlab.data.open_dataset`
        whose samples carry a ``domain``.
    domain : the domain of a real dataset to use (Zheng: ``"dataset1"`` or ``"dataset2"``).
    synthetic_crops : how many synthetic crops to make.
    seed : the seed of the synthetic crops.
    """
    if str(dataset) == "synthetic":
        return make_wbc_crops(synthetic_crops, seed=seed, stain="A", size=96)
    ds = open_dataset(dataset)
    domains = ds.by_domain()
    if domain not in domains:
        raise DataError(ds.root or dataset, f"no domain {domain!r} here; its domains: {sorted(domains)} "
                                            "(give one of them as domain=)")
    return domains[domain]


@dataclass
class ExplainedDetection:
    """A detection on a synthetic smear and the Grad-CAM that explains it.

    Parameters
    ----------
    smear : the held-out synthetic smear.
    class_names : the detector's classes (``cam.label`` indexes them).
    index : the index of the explained detection among the detector's predictions on ``smear``.
    cam : the Grad-CAM of that detection (:func:`~smearlab.explain.cam.detector_cam`).
    """

    smear: Sample
    class_names: list[str]
    index: int
    cam: DetectorCam

    def describe(self) -> str:
        """One line: which detection, its class, score and box."""
        return (f"explained detection {self.index}: {self.class_names[self.cam.label]} score {self.cam.score:.2f}, "
                f"box {self.cam.box.round(1)}")


def explain_a_detection(*, smears: int = 17, epochs: int = 12, seed: int = 0, device="auto") -> ExplainedDetection:
    """Train a tiny detector briefly on small synthetic smears (192 x 160 px) and explain its first
    white-cell detection on a held-out smear with Grad-CAM (:func:`smearlab.explain.cam.detector_cam`).

    Parameters
    ----------
    smears : smears made; the last is held out.
    epochs : training epochs.
    seed, device : training seed and device.
    """
    data = open_dataset("synthetic-A", n=smears, seed=seed + 100, width=192, height=160, n_wbc=(1, 2))
    torch.manual_seed(seed)  # the initial weights come from the global generator
    det = build_detector(DetectorConfig(arch="fasterrcnn_tiny", class_names=data.class_names, min_size=160,
                                        max_size=192))
    train_detector(det, train_ds=data[:-1], tcfg=TrainConfig(epochs=epochs, batch_size=2, lr=0.02, warmup_iters=10,
                                                             seed=seed, device=device), progress=False)
    smear = data[len(data) - 1]
    found = predict(det, [smear], progress=False)[0]
    wbc = data.class_names.index("WBC")
    pick = int(np.flatnonzero(found["labels"] == wbc)[0]) if (found["labels"] == wbc).any() else 0
    return ExplainedDetection(smear, list(data.class_names), pick, detector_cam(det, smear.image, pick))


#: The figures of :meth:`CamExperiment.summary` notebook 06 records.
RECORDED = ("cell_dice", "cell_iou", "nucleus_dice", "nucleus_iou", "classical_cell_dice", "classical_cell_iou",
            "classical_nucleus_dice", "classical_nucleus_iou", "layers", "rel_threshold", "classifier_accuracy",
            "classifier_macro_f1")


def gradcam_record(dataset, domain: str, experiment: CamExperiment, explained: ExplainedDetection) -> dict:
    """The headline numbers notebook 06 records.

    Parameters
    ----------
    dataset : the notebook's ``dataset`` parameter (named as :func:`~.profiles.dataset_label` does).
    domain : the domain used for a real dataset (appended to its name; ignored for ``"synthetic"``).
    experiment : the result of :func:`run_cam_experiment` (the figures of :data:`RECORDED`).
    explained : the result of :func:`explain_a_detection`.
    """
    summary = experiment.summary()
    name = dataset_label(dataset) + ("" if str(dataset) == "synthetic" else f":{domain}")
    cam = explained.cam
    return {"dataset": name, "images": {"train": len(experiment.train), "test": len(experiment.test)},
            **{k: summary[k] for k in RECORDED},
            "detector_cam": {"label": explained.class_names[cam.label], "score": cam.score, "box": cam.box.tolist()}}
