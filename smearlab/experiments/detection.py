"""What notebook 03 runs: train a detector, cache its predictions, tune thresholds, score."""
from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.device import resolve_device
from ..data.sample import SmearDataset
from ..data.splits import kfold, split_groups
from ..detection.anchors import anchor_report, fitted_by_default
from ..detection.models import DetectorConfig, build_detector, save_model
from ..detection.postprocess import RawPredictions
from ..detection.predict import predict
from ..core.training import History
from ..detection.train import TrainConfig, default_evaluate, train_detector
from ..detection.tune import Thresholds, auto_tune
from ..export import export_coco_gt, export_coco_results, export_counts_csv
from ..metrics.detection import count_metrics
from .profiles import dataset_label


@dataclass
class DetectionRun:
    """What one experiment produced (model, raw predictions, metrics and timings).

    Parameters
    ----------
    name : the run's name (e.g. ``"tiny, frozen backbone"``).
    config : the detector's configuration.
    model : the trained detector (in eval mode, on the training device).
    history : the training history (one record per epoch).
    thresholds : the thresholds tuned on the validation split, None when none were tuned.
    raw_val : the raw predictions on the validation split, None without one.
    raw_test : the raw predictions on the test split (low score floor).
    metrics : the scores and timings of :func:`fit_and_evaluate`.
    """

    name: str
    config: DetectorConfig
    model: torch.nn.Module
    history: History
    thresholds: Thresholds | None
    raw_val: RawPredictions | None
    raw_test: RawPredictions
    metrics: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        """The run as one row of a comparison table."""
        m = self.metrics
        return {"name": self.name, "arch": self.config.arch, "frozen": self.config.freeze_backbone,
                "val_mAP": m.get("val_mAP"), "mAP50": m["mAP50"], "mAP": m["mAP"], "count_accuracy": m["count_accuracy"],
                "train_s": m["train_s"], "train_images_per_s": m["train_images_per_s"],
                "infer_images_per_s": m["infer_images_per_s"]}


def fit_and_evaluate(name: str, cfg: DetectorConfig, tcfg: TrainConfig, train: SmearDataset,
                     test: SmearDataset, val: SmearDataset | None = None, *, tune: str | None = "f1",
                     tile: int | None = None, batch_size: int = 8, progress: bool = True,
                     anchors: str = "fit", tile_resize: str = "image", tta: bool = False) -> DetectionRun:
    """Train a detector, cache its raw predictions, tune thresholds on ``val``, score ``test``.

    COCO AP is computed on the raw predictions (low score floor, as COCO expects ranked
    detections); counts use the thresholds tuned on the validation split (objective ``tune``,
    "f1" or "count"), or 0.5 when there is no validation split.

    Parameters
    ----------
    name : the run's name (kept in :class:`DetectionRun`).
    cfg : the detector to build (:func:`~smearlab.detection.models.build_detector`).
    tcfg : the training settings; with ``tcfg.out_dir`` set, the final model folder is saved to
        ``<out_dir>/final``.
    train, test : the training split and the split that is scored.
    val : the split thresholds are tuned on (and validated on during training); None: no tuning.
    tune : the tuning objective (``"f1"`` or ``"count"``), None not to tune.
    tile : tile size for prediction on large fields (None: whole images).
    batch_size : images per prediction batch.
    progress : progress bars.
    tile_resize : how prediction tiles are resized (see :func:`~smearlab.detection.predict.predict`):
        ``"tile"`` for a model trained on tiles.
    anchors : ``"fit"`` (the default): anchor sizes and aspect ratios fitted to ``train``'s boxes
        when ``cfg`` names none (:func:`smearlab.detection.anchors.fitted_by_default`);
        ``"default"``: the arch's own anchors.
    tta : predict the validation and test splits with test-time augmentation (four flipped views,
        boxes fused; :func:`~smearlab.detection.predict.predict`); the thresholds are then tuned
        on fused scores and saved as such (``Thresholds.tta``).

    Returns
    -------
    DetectionRun
        ``metrics`` holds mAP50, mAP, per_class, counts (per class), count_accuracy (mean over
        classes), train_s, train_images_per_s, infer_s, infer_images_per_s, device, epochs,
        anchors (the best-possible recall per class of the arch's anchors and of those used); for
        a Mask R-CNN on a test set with instance masks also mask_mAP50 and mask_mAP. The run's
        ``config`` holds the anchors it was built with.
    """
    base = cfg
    cfg = fitted_by_default(cfg, train, anchors)
    model = build_detector(cfg)
    t0 = time.perf_counter()
    history = train_detector(model, train, val, tcfg, progress=progress)
    train_s = time.perf_counter() - t0
    device = resolve_device(tcfg.device)
    model.to(device).eval()

    raw_val = val_mAP = None
    if val is not None and len(val):
        val_preds = predict(model, val, batch_size=batch_size, tile=tile, tile_resize=tile_resize, progress=progress,
                            device=device, tta=tta)
        raw_val = RawPredictions.for_dataset(val, val_preds, cfg.score_floor)
        val_mAP = default_evaluate(val, val_preds)["mAP"]  # what runs are compared by (best_run), never test
    _sync(device)
    t0 = time.perf_counter()
    preds = predict(model, test, batch_size=batch_size, tile=tile, tile_resize=tile_resize, progress=progress,
                    device=device, tta=tta)
    _sync(device)
    infer_s = time.perf_counter() - t0
    raw_test = RawPredictions.for_dataset(test, preds, cfg.score_floor)

    thresholds = auto_tune(val, raw_val, objective=tune, tta=tta) if (tune and raw_val is not None) else None
    final = thresholds.apply(raw_test) if thresholds else None
    coco = default_evaluate(test, preds)  # box AP, and mask AP for a mask model with masks to score
    counts = count_metrics(test, final if final is not None else preds,
                           score_threshold=0.0 if final is not None else 0.5)
    images = len(train) * len(history.records)
    metrics = {
        "mAP50": coco["mAP50"], "mAP": coco["mAP"], "mAP75": coco["mAP75"], "per_class": coco["per_class"],
        "counts": counts,
        "count_accuracy": float(sum(c["accuracy"] for c in counts.values()) / max(len(counts), 1)),
        "train_s": round(train_s, 2), "train_images_per_s": round(images / train_s, 2) if train_s else None,
        "infer_s": round(infer_s, 3), "infer_images_per_s": round(len(test) / infer_s, 2) if infer_s else None,
        "device": str(device), "epochs": len(history.records), "tta": bool(tta), "val_mAP": val_mAP,
        "anchors": anchor_report(train, dataclasses.replace(base, anchor_sizes=None, aspect_ratios=None), cfg),
    }
    if "mask_mAP" in coco:
        metrics["mask_mAP50"], metrics["mask_mAP"] = coco["mask_mAP50"], coco["mask_mAP"]
    if tcfg.out_dir is not None:
        save_model(model, cfg, Path(tcfg.out_dir) / "final",
                   thresholds=thresholds, preprocess=getattr(model, "preprocess_spec", None), train_config=tcfg)
    return DetectionRun(name, cfg, model, history, thresholds, raw_val, raw_test, metrics)


def cross_validate(dataset: SmearDataset, cfg: DetectorConfig, tcfg: TrainConfig, k: int = 5, *,
                   seed: int = 0, progress: bool = False, tile: int | None = None, tta: bool = False,
                   anchors: str | None = None, group_near_copies: bool = True) -> dict[str, Any]:
    """Stratified K-fold by image: train on k-1 folds, score the held-out fold, k times.

    No thresholds are tuned (COCO AP needs none). Each fold writes under ``tcfg.out_dir/fold<i>``
    when an output folder is set. Returns per-fold rows and the mean and sample standard deviation
    (``ddof=1``) of mAP50 and mAP.

    Parameters
    ----------
    dataset : the images to split into folds (e.g. train + val).
    cfg : the detector configuration trained on each fold.
    tcfg : the training settings; fold ``i`` trains with seed ``tcfg.seed + i``.
    k : the number of folds.
    seed : the seed of the fold split.
    progress : progress bars.
    tile, tta : as for :func:`fit_and_evaluate` (score each fold as the runs were scored).
    anchors : ``"fit"``: each fold's anchors fitted to its own training images (``cfg``'s are
        dropped: anchors fitted to images a fold holds out would have seen its boxes);
        ``"default"``: the arch's own; None: ``cfg``'s as they are.
    group_near_copies : keep near-copies (a field shot twice) in one fold (real data; see
        :func:`smearlab.data.splits.detection_splits`).
    """
    if anchors == "fit":
        cfg = dataclasses.replace(cfg, anchor_sizes=None, aspect_ratios=None)
    rows = []
    for i, (tr, te) in enumerate(kfold(dataset, k=k, seed=seed, groups=split_groups(dataset, group_near_copies))):
        out = None if tcfg.out_dir is None else Path(tcfg.out_dir) / f"fold{i}"
        fold_cfg = dataclasses.replace(tcfg, out_dir=out, seed=tcfg.seed + i)
        run = fit_and_evaluate(f"fold{i}", cfg, fold_cfg, dataset.subset(tr.tolist()),
                               dataset.subset(te.tolist()), None, tune=None, progress=progress, tile=tile, tta=tta,
                               anchors=anchors or "fit")
        rows.append({"fold": i, "train": len(tr), "test": len(te), "mAP50": run.metrics["mAP50"],
                     "mAP": run.metrics["mAP"]})
    summary = {key: {"mean": float(np.mean([r[key] for r in rows])),  # sample std over the folds
                     "std": float(np.std([r[key] for r in rows], ddof=1)) if len(rows) > 1 else float("nan")}
               for key in ("mAP50", "mAP")}
    return {"folds": rows, **summary}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_folder(name: str) -> str:
    """The folder name of a run of :func:`compare_detectors` under its ``out`` folder.

    Parameters
    ----------
    name : the run's name (``s.runs``).
    """
    return name.replace(" ", "_").replace(",", "")


def run_train_config(s, *, seed: int = 0, device="auto", out_dir=None) -> TrainConfig:
    """The training settings of one run of notebook 03 (its comparison and its k-fold check alike):
    the profile's ``epochs`` and ``recipe``, or ``budget_minutes`` of training when set.

    Parameters
    ----------
    s : the settings (:func:`smearlab.experiments.profiles.settings`).
    seed, device : training seed and device.
    out_dir : the run's folder (None: nothing written).
    """
    budget = None if getattr(s, "budget_minutes", None) is None else float(s.budget_minutes) * 60
    return TrainConfig(epochs=s.epochs, **s.recipe, seed=seed, device=device, out_dir=out_dir, time_budget_s=budget)


def compare_detectors(splits: dict[str, SmearDataset], s, *, seed: int = 0, device="auto", out=None,
                      tile: int | None = None, progress: bool = False, tta: bool = False) -> list[DetectionRun]:
    """Train and score each run of the settings ``s`` (notebook 03's comparison).

    Parameters
    ----------
    splits : ``{"train", "val", "test"}`` datasets (:func:`smearlab.data.splits.detection_splits`).
    s : settings with ``runs`` (``[name, arch, frozen backbone]`` each), ``epochs``,
        ``input_size`` (the short image side), ``recipe`` (TrainConfig options) and optionally
        ``budget_minutes`` (train each run for this long instead of ``epochs``) and ``anchors``
        (``"fit"`` or ``"default"``), as :func:`smearlab.experiments.profiles.settings` gives them.
    seed, device : training seed and device.
    out : folder for each run's checkpoints and final model folder (``<out>/<run name>/final``).
    tile : tile size for large fields (None: whole images).
    progress : progress bars.
    tta : score with test-time augmentation (see :func:`fit_and_evaluate`).

    Returns
    -------
    list of DetectionRun
        in the order of ``s.runs``.
    """
    classes = splits["train"].class_names
    results = []
    for name, arch, frozen in s.runs:
        cfg = DetectorConfig(arch=arch, class_names=classes, min_size=s.input_size,
                             max_size=int(s.input_size * 4 / 3) + 1, freeze_backbone=frozen)
        run_dir = None if out is None else Path(out) / run_folder(name)
        tcfg = run_train_config(s, seed=seed, device=device, out_dir=run_dir)
        results.append(fit_and_evaluate(name, cfg, tcfg, splits["train"], splits["test"], splits["val"],
                                        tile=tile, progress=progress, anchors=getattr(s, "anchors", "fit"), tta=tta))
    return results


def runs_table(runs: list[DetectionRun]) -> str:
    """The runs as a Markdown table: validation mAP (what :func:`best_run` chooses by), test mAP50,
    mAP, counting accuracy and speed.

    Parameters
    ----------
    runs : the runs (:func:`compare_detectors`), one row each, in order.
    """
    lines = ["| run | val mAP | test mAP50 | test mAP | count accuracy | train s | train img/s | infer img/s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in (run.row() for run in runs):
        val = "–" if r["val_mAP"] is None else f"{r['val_mAP']:.3f}"
        lines.append(f"| {r['name']} | {val} | {r['mAP50']:.3f} | {r['mAP']:.3f} | {r['count_accuracy']:.3f} | "
                     f"{r['train_s']:.1f} | {r['train_images_per_s']:.1f} | {r['infer_images_per_s']:.1f} |")
    return "\n".join(lines)


def anchors_table(run: DetectionRun) -> str:
    """The anchor coverage of a run as a Markdown table: per class, the share of training boxes
    some anchor matches at IoU >= 0.5 where the anchors sit on the feature grids
    (:func:`~smearlab.detection.anchors.grid_recall`), with the arch's own anchors and with those
    the run used.

    Parameters
    ----------
    run : a :class:`DetectionRun` (its ``metrics["anchors"]``).
    """
    a = run.metrics["anchors"]

    def pct(v):
        return "n/a" if v is None else f"{100 * v:.1f} %"

    used = (f"anchor sizes {a['anchor_sizes']}, aspect ratios {a['aspect_ratios']}" if a["anchor_sizes"]
            else "the arch's own anchors")
    lines = [used, "", "| class | boxes | covered on the grid, arch's anchors | covered, anchors used |",
             "|---|---|---|---|"]
    lines += [f"| {n} | {a['boxes'][n]} | {pct(a['before'][n])} | {pct(a['after'][n])} |" for n in a["before"]]
    return "\n".join(lines)


def best_run(runs: list[DetectionRun]) -> DetectionRun:
    """The run with the highest COCO mAP@[.5:.95] on the validation split (``val_mAP``): chosen
    there, its test figures stay an unbiased estimate. Without a validation split the choice falls
    back to the test split, with a warning that its test figures are then optimistic.

    Parameters
    ----------
    runs : the runs to choose from (:func:`compare_detectors`).
    """
    if all(run.metrics.get("val_mAP") is not None for run in runs):
        return max(runs, key=lambda run: run.metrics["val_mAP"])
    warnings.warn("the runs have no validation split: the best run is chosen on the test split, so its test "
                  "figures are optimistic", stacklevel=2)
    return max(runs, key=lambda run: run.metrics["mAP"])


def export_test_results(run: DetectionRun, test: SmearDataset, out) -> list[str]:
    """Write the test split's final detections (COCO results), its ground truth (COCO) and the
    per-image counts (CSV) into ``out``; the names of what ``out`` holds.

    Parameters
    ----------
    run : the run whose test predictions are written (thresholded with its tuned thresholds, else
        at score 0.5 for the counts).
    test : the test split ``run.raw_test`` was predicted on.
    out : the folder to write into (created if needed).
    """
    out = Path(out)
    final = run.thresholds.apply(run.raw_test) if run.thresholds else run.raw_test.predictions
    export_coco_results(test, final, out / "test_detections_coco.json")
    export_coco_gt(test, out / "test_ground_truth_coco" / "annotations.json")
    export_counts_csv(test, final, out / "test_counts.csv", thresholds=0.0 if run.thresholds else 0.5)
    return sorted(p.name for p in out.iterdir())


def detection_record(dataset: str, splits: dict[str, SmearDataset], runs: list[DetectionRun],
                     best: DetectionRun, **extra) -> dict[str, Any]:
    """The headline numbers notebook 03 records: the runs, the best one's scores and thresholds.

    Parameters
    ----------
    dataset : the notebook's ``dataset`` parameter (named as :func:`~.profiles.dataset_label` does).
    splits : ``{"train", "val", "test"}`` datasets the runs used.
    runs : every run (:func:`compare_detectors`).
    best : the chosen run (:func:`best_run`).
    extra : further entries for the record (notebook 03: ``tuner_ms``, ``kfold``).
    """
    return {"dataset": dataset_label(dataset),
            "images": {k: len(splits[k]) for k in ("train", "val", "test")},
            "runs": [run.row() for run in runs], "best": best.name,
            "best_chosen_by": "validation mAP" if best.metrics.get("val_mAP") is not None else "test mAP",
            "mAP50": best.metrics["mAP50"], "mAP": best.metrics["mAP"], "per_class": best.metrics["per_class"],
            "count_accuracy": best.metrics["count_accuracy"],
            "thresholds": best.thresholds.score if best.thresholds else None, **extra}
