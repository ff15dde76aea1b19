"""What notebook 04 runs: Mask R-CNN, a U-Net class map and the two-stage segmenter (boxes, then a
crop U-Net) on the same splits, scored by the same evaluators, and their noise robustness."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.sample import SmearDataset
from ..detection.models import DetectorConfig
from ..detection.predict import predict
from ..detection.train import TrainConfig
from ..detection.postprocess import take
from ..metrics.instances import score_instances, segmentation_metrics
from ..metrics.robustness import compare_with_noise
from ..metrics.semantic import semantic_metrics
from ..data.derive import as_single_class
from ..segmentation.instances import InstanceTrainConfig, build_instance_unet, predict_instances, train_instance_unet
from ..segmentation.predict import predict_semantic, two_stage_segment
from ..segmentation.train import build_crop_unet, train_crop_unet, train_unet
from ..segmentation.unet import UNet
from .detection import DetectionRun, fit_and_evaluate
from .profiles import dataset_label

#: The instance figures a comparison row shows and records.
ROW_KEYS = ("dsb_metric", "mask_mAP50", "mask_mAP", "count_error", "seconds_per_image")


@dataclass
class SegmentationComparison:
    """Notebook 04's models and their results on the test split.

    Parameters
    ----------
    maskrcnn : the Mask R-CNN run (:func:`~.detection.fit_and_evaluate`: model, raw predictions, tuned
        thresholds, box and mask AP).
    maskrcnn_final : its test predictions after the tuned thresholds (one prediction dict per image).
    unet : the U-Net class-map model.
    unet_pred : its ``(H, W)`` class map of each test image.
    crop_unet : the crop U-Net of the two-stage segmenter.
    two_stage : the two-stage (Mask R-CNN boxes, then crop U-Net masks) prediction of each test image.
    metrics : per instance segmenter (``"Mask R-CNN"``, ``"detector + crop U-Net"``) the
        :func:`~smearlab.metrics.instances.segmentation_metrics` figures (Mask R-CNN also
        ``seconds_per_image``).
    unet_metrics : the U-Net's :func:`~smearlab.metrics.semantic.semantic_metrics` (``dice``, ``iou``
        per class).
    """

    maskrcnn: DetectionRun
    maskrcnn_final: list
    unet: UNet
    unet_pred: list
    crop_unet: UNet
    two_stage: list
    metrics: dict[str, dict]
    unet_metrics: dict[str, dict]
    learned: UNet | None = None
    learned_preds: list | None = None

    def table(self) -> str:
        """The instance segmenters and the U-Net class map as Markdown tables."""
        lines = ["| method | DSB | mask AP50 | mask AP | count error |", "|---|---|---|---|---|"]
        for name, m in self.metrics.items():
            lines.append(f"| {name} | {number_text(m['dsb_metric'])} | {number_text(m['mask_mAP50'])} | {number_text(m['mask_mAP'])} | "
                         f"{number_text(m['count_error'])} |")
        lines += ["", "| U-Net class | Dice | IoU |", "|---|---|---|"]
        for name, m in self.unet_metrics.items():
            lines.append(f"| {name} | {number_text(m['dice'])} | {number_text(m['iou'])} |")
        return "\n".join(lines)


LEARNED = "learned instance U-Net (class-agnostic)"


def train_learned_segmenter(train: SmearDataset, val: SmearDataset | None, s, *, seed: int = 0, device="auto"):
    """The learned instance segmenter (:mod:`smearlab.segmentation.instances`) trained on
    ``train``'s instance masks (class-agnostic), its thresholds tuned on ``val``.

    Parameters
    ----------
    train, val : splits with instance masks (``val`` may be None: default thresholds).
    s : settings with ``learned_steps``, ``learned_base``, ``learned_depth``, ``learned_crop`` and
        optionally ``learned_minutes`` (a time budget instead of the steps).
    seed, device : training seed and device.
    """
    torch.manual_seed(seed)
    model = build_instance_unet(base=s.learned_base, depth=s.learned_depth)
    minutes = getattr(s, "learned_minutes", None)
    cfg = InstanceTrainConfig(crop=s.learned_crop, steps=s.learned_steps, seed=seed, device=device,
                              time_budget_s=None if minutes is None else minutes * 60)
    train_instance_unet(model, train, val, cfg)
    return model


def learned_row(model, test: SmearDataset, *, device="auto") -> tuple[dict, list]:
    """The learned segmenter's class-agnostic figures on ``test`` and its predictions. Its mask
    AP is not given: its objects come out of thresholds, so an AP would rank a curve cut short
    (0.51 where the same objects ranked among every candidate reach 0.90), beside the other rows'
    APs of their whole ranked lists."""
    t0 = time.perf_counter()
    preds = predict_instances(model, test, device=device)
    spi = (time.perf_counter() - t0) / max(len(test), 1)
    return {**score_instances(as_single_class(test), preds), "mask_mAP50": None, "mask_mAP": None,
            "seconds_per_image": spi}, preds


def instance_row(test: SmearDataset, final, raw) -> dict:
    """One instance segmenter's row: :func:`~smearlab.metrics.instances.segmentation_metrics` of its
    final predictions (DSB metric, count error) with the mask AP of its raw, ranked ones (thresholds
    would cut the precision-recall curve short).

    Parameters
    ----------
    test : the ground truth.
    final : the thresholded predictions, with masks.
    raw : every prediction, with masks and scores.
    """
    return segmentation_metrics(test, final, score_threshold=0.0, ranked=raw)


def compare_segmenters(splits: dict[str, SmearDataset], s, *, seed: int = 0, device="auto",
                       out=None) -> SegmentationComparison:
    """Train Mask R-CNN, a U-Net and a crop U-Net on ``splits["train"]``; score them on the test split.

    Parameters
    ----------
    splits : ``{"train", "val", "test"}`` with instance masks and class maps
        (:func:`smearlab.data.splits.segmentation_splits`).
    s : settings (:func:`smearlab.experiments.profiles.settings` for ``"04_segmentation"``):
        Mask R-CNN ``arch``, ``epochs``, ``input_size``, ``recipe``; U-Net ``unet_epochs``,
        ``unet_base``, ``unet_size``; crop U-Net ``crop_images`` (None: every training image),
        ``crop_size``, ``crop_base``.
    seed, device : training seed and device.
    out : folder for the Mask R-CNN run (``<out>/maskrcnn``).

    Returns
    -------
    SegmentationComparison
    """
    train, val, test = splits["train"], splits["val"], splits["test"]
    for sample in test:  # read once, before any timer (Mask R-CNN's inference time held the reading)
        sample.image  # noqa: B018
    cfg = DetectorConfig(arch=s.arch, class_names=train.class_names, min_size=s.input_size,
                         max_size=int(s.input_size * 4 / 3) + 1)
    tcfg = TrainConfig(epochs=s.epochs, **s.recipe, seed=seed, device=device,
                       out_dir=None if out is None else Path(out) / "maskrcnn")
    mrcnn = fit_and_evaluate("Mask R-CNN", cfg, tcfg, train, test, val, progress=False)
    final = mrcnn.thresholds.apply(mrcnn.raw_test)
    metrics = {"Mask R-CNN": {**instance_row(test, final, mrcnn.raw_test),
                              "seconds_per_image": mrcnn.metrics["infer_s"] / max(len(test), 1)}}

    unet = UNet(3, len(train.semantic_names), base=s.unet_base)
    train_unet(unet, train, val, epochs=s.unet_epochs, batch_size=4, size=s.unet_size or s.input_size,
               device=device, seed=seed, progress=False)
    unet_pred = predict_semantic(unet, test, device=device)

    crop_train = train if s.crop_images is None else train.subset(range(min(len(train), s.crop_images)))
    crop_unet = build_crop_unet(crop_train, base=s.crop_base)
    train_crop_unet(crop_unet, crop_train, crop_size=s.crop_size, epochs=s.unet_epochs, batch_size=32, device=device,
                    seed=seed, progress=False)
    # its mask AP ranks every detection too, as Mask R-CNN's does (on the thresholded boxes it was
    # cut short, and the two rows compared unlike figures); a box's mask depends on that box alone,
    # so the final boxes' masks are taken from the raw ones (one pass of the crop U-Net)
    two_stage_raw = two_stage_segment(mrcnn.raw_test, crop_unet, test, device=device)
    two_stage = [take(p, k) for p, k in zip(two_stage_raw, mrcnn.thresholds.keep(mrcnn.raw_test))]
    metrics["detector + crop U-Net"] = instance_row(test, two_stage, two_stage_raw)
    learned = train_learned_segmenter(train, val, s, seed=seed, device=device)
    metrics[LEARNED], learned_preds = learned_row(learned, test, device=device)
    return SegmentationComparison(mrcnn, final, unet, unet_pred, crop_unet, two_stage, metrics,
                                  semantic_metrics(test, unet_pred), learned, learned_preds)


def noise_check(comparison: SegmentationComparison, test: SmearDataset, *, seed: int = 0,
                device="auto") -> dict[str, dict]:
    """Mask R-CNN's instance figures and the U-Net's Dice on ``test`` clean and with noise
    (:func:`smearlab.metrics.robustness.compare_with_noise`: mean 5 % of the maximum, variance
    10 % of the power).

    Parameters
    ----------
    comparison : the models of :func:`compare_segmenters` (Mask R-CNN with its tuned thresholds, the U-Net).
    test : the clean test split (with instance masks and class maps).
    seed : the seed of the noise.
    device : where the models predict.

    Returns
    -------
    dict
        ``{"Mask R-CNN": ..., "U-Net Dice": ...}``, each
        :func:`~smearlab.metrics.robustness.compare_with_noise`'s ``{metric: {"clean", "noisy", "delta"}}``.
    """
    run = comparison.maskrcnn

    def maskrcnn_eval(ds):  # as its row of compare_segmenters: its clean figures are the same
        raw = predict(run.model, ds, device=device, progress=False)
        return instance_row(ds, run.thresholds.apply(raw), raw)

    def unet_eval(ds):
        return {name: m["dice"] for name, m in
                semantic_metrics(ds, predict_semantic(comparison.unet, ds, device=device)).items()}

    return {"Mask R-CNN": compare_with_noise(maskrcnn_eval, test, seed=seed),
            "U-Net Dice": compare_with_noise(unet_eval, test, seed=seed)}


def noise_table(robust: dict[str, dict], metrics=("dsb_metric", "mask_mAP50", "mask_mAP", "count_error")) -> str:
    """The noise check as a Markdown table: clean, noisy and the change, per model and metric.

    Parameters
    ----------
    robust : the result of :func:`noise_check`.
    metrics : the instance metrics shown for Mask R-CNN; a U-Net table shows every class but the
        background. Rows whose change is undefined are left out.
    """
    lines = ["| model | metric | clean | noisy | change |", "|---|---|---|---|---|"]
    for model, table in robust.items():
        for metric, v in table.items():
            if (metric in metrics or (model.startswith("U-Net") and metric != "background")) and v["delta"] is not None:
                lines.append(f"| {model} | {metric} | {v['clean']:.3f} | {v['noisy']:.3f} | {v['delta']:+.3f} |")
    return "\n".join(lines)


def segmentation_record(dataset, splits: dict[str, SmearDataset], comparison: SegmentationComparison,
                        robust: dict[str, dict]) -> dict[str, Any]:
    """The headline numbers notebook 04 records.

    Parameters
    ----------
    dataset : the notebook's ``dataset`` parameter (named as :func:`~.profiles.dataset_label` does).
    splits : ``{"train", "val", "test"}`` datasets the comparison used.
    comparison : the result of :func:`compare_segmenters`.
    robust : the result of :func:`noise_check` (rows with a defined change are recorded).
    """
    short = {name: {k: m[k] for k in ROW_KEYS if k in m} for name, m in comparison.metrics.items()}
    return {"dataset": dataset_label(dataset), "images": {k: len(splits[k]) for k in ("train", "val", "test")},
            "maskrcnn": short["Mask R-CNN"], "two_stage": short["detector + crop U-Net"],
            "learned": short.get(LEARNED),
            "unet_dice": {name: m["dice"] for name, m in comparison.unet_metrics.items()},
            "robustness": {name: {k: v for k, v in table.items() if v["delta"] is not None}
                           for name, table in robust.items()}}


def number_text(v) -> str:
    """A table cell: the number to 3 decimals, "n/a" where it is undefined (None or NaN)."""
    return "n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.3f}"
