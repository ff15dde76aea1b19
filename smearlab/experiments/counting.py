"""What notebook 09 runs: a detector to count with, a folder of new images counted by
``smearlab predict``, the counts against the truth, and the correct-and-retrain loop.

The splits are notebook 03's (:func:`smearlab.data.splits.detection_splits`): the model is
trained on ``train`` with its score thresholds tuned on ``val``; ``test`` plays next week's
images, on which nothing was trained or tuned: all of it is counted (an honest count error), the
first images of the review order are corrected, and the rest (:func:`held_out`, which nobody
corrected) score the model before and after it learns from the corrections.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

from ..core.errors import DataError
from ..core.files import write_json
from ..core.model_folder import read_config_json, read_side_file
from ..data import load
from ..data.classes import match_classes
from ..data.sample import SmearDataset
from ..detection.models import DetectorConfig
from ..detection.train import TrainConfig
from ..export import export_coco_gt, file_names
from .detection import fit_and_evaluate, run_folder

log = logging.getLogger("smearlab.experiments.counting")


def earlier_model(out, class_names=None) -> Path | None:
    """The best detector notebook 03 saved in the same report run, or None.

    In a report run every notebook writes into ``<run>/<notebook>/`` and its metrics into
    ``<run>/<notebook>.metrics.json``; notebook 03 names its best run (``best``) and saves each
    run's model folder as ``03_detection/<run name>/final``. Both notebooks read the same
    dataset with the same splits, so 09 can count with what 03 trained. A model of other classes
    (03 run on another dataset) is not used: a warning says so and None is returned.

    Parameters
    ----------
    out : notebook 09's output folder (``<run>/09_counting``).
    class_names : the classes 09 counts, in order (None: not checked).
    """
    run = Path(out).parent
    metrics = run / "03_detection.metrics.json"
    if not metrics.is_file():
        return None
    try:
        best = json.loads(metrics.read_text(encoding="utf-8")).get("best")
    except (OSError, ValueError):
        return None
    if not isinstance(best, str):
        return None
    folder = run / "03_detection" / run_folder(best) / "final"
    if not (folder / "config.json").is_file():
        return None
    if class_names is not None:
        try:
            saved = read_config_json(folder).get("class_names")
        except DataError:
            saved = None
        if saved != list(class_names):
            log.warning("%s: notebook 03's model has classes %s, not %s; training a model here instead",
                        folder, saved, list(class_names))
            return None
    try:
        tuned = read_side_file(folder, "thresholds.json") or {}
    except DataError:
        tuned = {}
    if tuned.get("tta"):  # 09 counts without test-time augmentation: such thresholds are refused there
        log.warning("%s: notebook 03's thresholds were tuned with test-time augmentation (tta); training a model "
                    "here instead", folder)
        return None
    return folder


def counting_model(model, splits: dict[str, SmearDataset], s, out, *, seed: int = 0, device="auto",
                   progress: bool = False) -> Path:
    """The detector folder to count with: ``model`` when the user names one, else the best model
    notebook 03 saved in the same report run (:func:`earlier_model`), else a detector trained
    here on ``splits["train"]`` (thresholds tuned on ``splits["val"]``).

    Parameters
    ----------
    model : a saved detector folder, or None (notebook 03's, else one trained here).
    splits : ``{"train", "val", "test"}`` datasets.
    s : the notebook's settings: ``arch``, ``epochs``, ``input_size``, ``recipe``.
    out : folder the trained model is saved under (``<out>/model/final``).
    seed, device, progress : training seed, device and progress bars.

    Returns
    -------
    Path
        the model folder.
    """
    if model is not None:
        return Path(model)
    earlier = earlier_model(out, splits["train"].class_names)
    if earlier is not None:  # its own arch, epochs and input size: this notebook's are not used
        log.warning("counting with notebook 03's model %s: this notebook's arch, epochs and input_size are not used "
                    "(give model= to choose, or run 09 alone to train one here)", earlier)
        return earlier
    classes = splits["train"].class_names
    cfg = DetectorConfig(arch=s.arch, class_names=classes, min_size=s.input_size,
                         max_size=int(s.input_size * 4 / 3) + 1)
    tcfg = TrainConfig(epochs=s.epochs, **s.recipe, seed=seed, device=device, out_dir=Path(out) / "model")
    fit_and_evaluate("counting", cfg, tcfg, splits["train"], splits["val"], splits["val"], progress=progress)
    return Path(out) / "model" / "final"


def images_on_disk(dataset: SmearDataset, folder) -> Path:
    """``dataset`` written as a COCO dataset (images and truth) that ``smearlab predict
    --dataset`` reads: the images a lab would point the tool at, with the counts to compare.

    Parameters
    ----------
    dataset : the images (with their ground truth).
    folder : where ``truth.json`` and ``images/`` go.

    Returns
    -------
    Path
        the COCO file.
    """
    return export_coco_gt(dataset, Path(folder) / "truth.json")


def image_reader(dataset_path, sensor_bits: int | None = None):
    """``f(record) -> image`` for the records of a ``smearlab predict --dataset`` run.

    Parameters
    ----------
    dataset_path : the dataset the run predicted (``--dataset``).
    sensor_bits : the run's ``--sensor-bits`` (its ``run.json``), so that images read as predicted.
    """
    ds = load(dataset_path, sensor_bits=sensor_bits)
    by_name = dict(zip(file_names(ds), ds))
    return lambda record: by_name[record["image"]].image


def true_counts(dataset_path) -> dict[str, dict[str, int]]:
    """``{image name: {class: count}}`` of a dataset, keyed as ``smearlab predict`` names images
    (COCO crowd regions left out, as every count of the dataset leaves them out).

    Parameters
    ----------
    dataset_path : the dataset path.
    """
    ds = load(dataset_path)
    return {name: {c: int((s.labels[~s.crowd] == k).sum()) for k, c in enumerate(ds.class_names)}
            for name, s in zip(file_names(ds), ds)}


def count_error_rows(summary: dict) -> list[dict]:
    """The per-class count error of a run that scored a dataset, as table rows.

    Parameters
    ----------
    summary : the run's ``summary.json``.

    Returns
    -------
    list of dict
        one row per class: ``true`` and ``predicted`` totals, ``mean_abs_error`` per image and
        ``relative_error`` (sum of |predicted - true| over sum of true).
    """
    return [{"class": c, **v} for c, v in (summary.get("count_error") or {}).items()]


def held_out(dataset: SmearDataset, reviewed: Sequence[str]) -> SmearDataset:
    """The images of ``dataset`` nobody reviewed: where the model is scored before and after it
    learns from the corrections (scoring on a corrected image would reward memorising it).

    Parameters
    ----------
    dataset : the counted images (written by :func:`images_on_disk`).
    reviewed : the reviewed image names, as ``smearlab predict`` records name them.

    Raises
    ------
    ValueError
        when a reviewed name is not an image of ``dataset``, or when every image was reviewed.
    """
    names = file_names(dataset)
    unknown = sorted(set(reviewed) - set(names))
    if unknown:
        raise ValueError(f"reviewed images {unknown[:3]} are not images of {dataset.name}")
    keep = [i for i, n in enumerate(names) if n not in set(reviewed)]
    if not keep:
        raise ValueError(f"all {len(names)} counted images were reviewed: none is left to score the "
                         f"fine-tuned model on; review fewer images")
    return dataset.subset(keep, name=f"{dataset.name} (not reviewed)")


def corrections_from_truth(run_out, dataset_path, images: Sequence[str], path) -> Path:
    """What a reviewer hands back after correcting ``images`` in CVAT: the run's exported COCO
    file (``coco.json``, "COCO 1.0") restricted to those images, its annotations replaced by the
    truth. A stand-in for the human in notebooks and tests.

    Parameters
    ----------
    run_out : the ``smearlab predict`` output folder.
    dataset_path : the dataset the run predicted (its truth is the correction).
    images : the image names (as the run's records name them) that were reviewed.
    path : where the corrected COCO file goes.

    Returns
    -------
    Path
        the corrected COCO file (its ``file_name`` entries are those of the export).
    """
    coco = json.loads((Path(run_out) / "coco.json").read_text(encoding="utf-8"))
    ds = load(dataset_path)
    truth = dict(zip(file_names(ds), ds))
    # the truth's classes by name (with aliases) onto the model's: a class the model does not know
    # cannot be a correction of its output (a bare KeyError before); its boxes are counted and left out
    mapping = match_classes(ds.class_names, [c["name"] for c in coco["categories"]],
                            what="the dataset's and the model's classes")
    ids = [coco["categories"][t]["id"] if t >= 0 else None for t in mapping.lut.tolist()]
    keep = [im for im in coco["images"] if im["file_name"] in set(images)]
    anns = []
    unknown: dict[str, int] = {}
    for im in keep:
        s = truth[im["file_name"]]
        for box, lab, crowd in zip(s.boxes.tolist(), s.labels.tolist(), s.crowd.tolist()):
            if ids[lab] is None:
                unknown[ds.class_names[lab]] = unknown.get(ds.class_names[lab], 0) + 1
                continue
            x0, y0, x1, y1 = box
            anns.append({"id": len(anns) + 1, "image_id": im["id"], "category_id": ids[lab],
                         "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0),
                         "iscrowd": int(crowd)})  # a clump stays a crowd region, not one cell
    if unknown:
        log.warning("%s: boxes of classes the model does not know are left out of the corrections: %s",
                    dataset_path, unknown)
    write_json(path, {"images": keep, "annotations": anns, "categories": coco["categories"]})
    return Path(path)


def counting_record(dataset, summary: dict, before_after: dict | None, reviewed: int,
                    scored: int | None = None, model=None) -> dict:
    """The headline numbers notebook 09 records.

    Parameters
    ----------
    dataset : the notebook's ``dataset`` parameter.
    summary : the ``smearlab predict`` summary of the new (test) images.
    before_after : :func:`smearlab.detection.finetune.compare_models` on the images nobody
        reviewed (:func:`held_out`).
    reviewed : how many images were corrected.
    scored : how many images ``before_after`` scored.
    model : the model folder that counted (:func:`counting_model`: given, notebook 03's, or trained here).
    """
    from .profiles import dataset_label
    return {"dataset": dataset_label(dataset), "model": None if model is None else str(model),
            "counted_split": "test", "images": summary["images"],
            "counts": summary["counts"], "count_error": summary.get("count_error"), "reviewed": reviewed,
            "scored_before_after": scored, "before_after": before_after}
