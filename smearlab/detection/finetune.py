"""Correct and retrain: fine-tune a saved detector on corrected annotations.

The loop a lab runs with the tool: ``smearlab predict`` writes COCO (CVAT imports it as
"COCO 1.0") and QuPath GeoJSON; someone corrects the boxes there; the corrected export is read
back with :func:`smearlab.data.load` (``format="coco"`` or ``"qupath"``); :func:`fine_tune`
trains the saved model further on it, merged with the original training images so the model
does not forget them, with the recipe it was trained with (``train_config.json`` of the model
folder); :func:`compare_models` scores the model before and after on a held-out split.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from ..core.errors import DataError
from ..core.model_folder import read_side_file, write_side_file
from ..core.training import History
from ..data.derive import box_tiles, pad_to, remap_dataset
from ..data.sample import SmearDataset
from ..metrics.detection import count_matrix
from .anchors import input_scale
from .models import auto_tile, load_model, save_model, smaller_than_training
from .predict import predict_fields
from .train import TrainConfig, default_evaluate, train_detector
from .tune import OBJECTIVES, Thresholds, auto_tune

log = logging.getLogger("smearlab.detection.finetune")

#: The fields of ``train_config.json`` a fine-tuning run takes over (the recipe; a default
#: augmenter is rebuilt, see :func:`read_train_config`); the rest (the run's length, output
#: folder) is the fine-tuning run's own.
RECIPE = ("batch_size", "lr", "optimizer", "momentum", "weight_decay", "warmup_iters", "lr_schedule", "lr_gamma",
          "amp", "grad_clip", "max_steps_per_epoch", "val_tile", "ema_decay")


def read_train_config(folder) -> TrainConfig | None:
    """The recipe a model folder was trained with (``train_config.json``), or None when it has none.

    Parameters
    ----------
    folder : the model folder.
    """
    p = Path(folder) / "train_config.json"
    d = read_side_file(folder, "train_config.json")
    if d is None:
        return None
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    kept = {k: v for k, v in d.items() if k in RECIPE and k in fields}
    if d.get("augment") is not None:  # saved as its repr: the default augmenter is rebuilt, another is not
        from ..augment import default_augment
        if d["augment"] != repr(default_augment(int(d.get("seed") or 0))):
            log.warning("%s: the recipe's augmenter is not the default one and cannot be rebuilt from JSON; "
                        "fine-tuning with smearlab.augment.default_augment (give tcfg= to choose)", p)
        kept["augment"] = "default"  # without augmentation the corrections were trained on bare images
    try:
        return TrainConfig(**kept)
    except (TypeError, ValueError) as e:
        raise DataError(p, f"invalid training settings: {e}") from e


def at_training_magnification(data: SmearDataset, cfg) -> SmearDataset:
    """``data`` as ``smearlab predict`` sees it (:func:`~smearlab.detection.predict.predict_fields`),
    so that every image is learned at the magnification it is predicted at.

    * An image it would tile (:func:`~smearlab.detection.models.auto_tile`: more than 1.5 times
      the training images' size) is cut into square tiles (:func:`~smearlab.data.derive.box_tiles`)
      that the detector resizes by the factor it resized its training images by: the side
      ``min(min_size, max_size)`` over that factor (the training images' short side when
      ``min_size`` sets their resize). Whole, such an image would be shrunk to ``min_size`` and its
      cells learned smaller than they are predicted at.
    * An image smaller than the training images on both sides
      (:func:`~smearlab.detection.models.smaller_than_training`, predicted at the training
      magnification) is padded to the training size with its background
      (:func:`~smearlab.data.derive.pad_to`). Whole, it would be enlarged to ``min_size``: a
      quarter field had its cells learned at twice their size.

    The original training images merged in are seen the same way: for a model trained on images of
    several sizes (``train_image_size`` their median), those smaller than the median on both sides
    are padded here, where its first training saw them whole, enlarged, and prediction sees them at
    the training magnification. Unchanged for a model without ``train_image_size``.

    Parameters
    ----------
    data : the images to train on, labelled in the model's classes.
    cfg : the detector's settings (``train_image_size``, ``min_size``, ``max_size``).
    """
    if not cfg.train_image_size:
        return data
    small = [smaller_than_training(cfg, s.hw) for s in data.samples]
    if any(small):
        data = pad_to(data, cfg.train_image_size, only=small)
        log.info("%d of %d images smaller than the training images (%s) padded to their size with their "
                 "background, as seen at the training magnification", sum(small), len(data),
                 list(cfg.train_image_size))
    big = [auto_tile(cfg, s.hw) is not None for s in data.samples]
    if not any(big):
        return data
    side = max(16, int(round(min(cfg.min_size, cfg.max_size) / input_scale(tuple(cfg.train_image_size), cfg))))
    tiles = box_tiles(data.subset(big), side)
    log.info("%d of %d images larger than the training images (%s) cut into %d tiles of %d px, as seen at the "
             "training magnification", sum(big), len(data), list(cfg.train_image_size), len(tiles), side)
    if all(big):
        return tiles
    return SmearDataset.concat([data.subset([not b for b in big]), tiles], name=data.name)


def fine_tune(model_folder, corrected: SmearDataset, train: SmearDataset | None = None,
              val: SmearDataset | None = None, *, epochs: int = 3, lr_scale: float = 0.1,
              tcfg: TrainConfig | None = None, out_dir=None, device: str = "auto", seed: int = 0,
              progress: bool = False) -> tuple[Any, History]:
    """Train the detector of ``model_folder`` further (never from scratch) on corrected annotations.

    The corrected images are merged with ``train`` (the original training images, so that the
    model keeps what it knew); classes are matched to the model's by name. The recipe is the
    one the folder was trained with (its ``train_config.json``: optimiser, batch size, schedule,
    warm-up, clipping), over ``epochs`` epochs at ``lr_scale`` times its peak learning rate: a
    trained model is moved, not retrained (its warm-up is also capped at 10 steps: the weights are
    already trained).

    Images much larger than the model's training images (those ``smearlab predict`` cuts into
    tiles, :func:`~smearlab.detection.models.auto_tile`) are cut into tiles here too, and images
    smaller than them padded to their size (:func:`at_training_magnification`), so that their cells
    are learned at the magnification they are predicted at: whole, a field twice the training size
    was shrunk to the model's input size, its cells learned at half their size, and a quarter field
    enlarged, its cells learned at twice their size.

    Parameters
    ----------
    model_folder : the saved detector (``smearlab predict``'s model).
    corrected : the corrected images and boxes (e.g. ``load("corrected.json", format="coco")``).
    train : the original training images to merge in (None: the corrected images only).
    val : a validation split (picks ``best/`` and is reported per epoch), or None.
    epochs : epochs of fine-tuning.
    lr_scale : factor on the recipe's peak learning rate.
    tcfg : the whole training configuration instead of the folder's recipe (``epochs`` and
        ``lr_scale`` are then not applied).
    out_dir : the run folder: ``model/`` (the fine-tuned model folder, with the original's
        preprocessing and its thresholds, tuned again on ``val`` for the same objective (and matching
        IoU) when it is given and they were tuned, per class; else the original's, with a warning), ``best/``
        (its thresholds tuned for its own weights in the same way), checkpoints and metrics;
        None: nothing written.
    device : "auto", "cpu", "cuda".
    seed : seeds the data order and augmentation.
    progress : progress bar.

    Returns
    -------
    (model, History)
        the fine-tuned model (eval mode, carrying ``detector_config`` and ``thresholds``) and
        the training history.

    Raises
    ------
    DataError
        for a folder that is not a detector's, or unreadable training settings.
    ValueError
        when ``corrected`` is empty or holds a class the model does not know.
    """
    folder = Path(model_folder)
    if not len(corrected):
        raise ValueError(f"the corrected dataset {corrected.name!r} holds no images")
    model = load_model(folder, device=device)
    cfg = model.detector_config
    names = list(cfg.class_names)
    data = remap_dataset(corrected, names, "corrected")
    if train is not None and len(train):
        data = SmearDataset.concat([remap_dataset(train, names, "training"), data], name=f"{train.name}+corrected")
    data = at_training_magnification(data, cfg)
    saved_config = tcfg
    if tcfg is None:
        recipe = read_train_config(folder)
        if recipe is None:
            log.warning("%s has no train_config.json: fine-tuning with the default TrainConfig", folder)
        base = recipe or TrainConfig()
        tcfg = dataclasses.replace(base, epochs=int(epochs), lr=base.base_lr * float(lr_scale),
                                   warmup_iters=min(base.warmup_iters, 10), seed=seed, device=device,
                                   out_dir=out_dir, time_budget_s=None)
        # the folders keep this run's settings with the recipe's learning rate and warm-up: a further
        # round of corrections scales the recipe again (it scaled the scaled rate: 0.02, 0.002, 2e-4...);
        # a folder that had no recipe passes none on
        saved_config = None if recipe is None else dataclasses.replace(
            tcfg, lr=recipe.lr, warmup_iters=recipe.warmup_iters)
    history = train_detector(model, data, val, tcfg, progress=progress)
    model.eval()
    model.detector_config = cfg
    old = getattr(model, "thresholds", None)
    th = Thresholds(**old) if old else None
    retune = (th is not None and th.objective in OBJECTIVES and not th.class_agnostic
              and val is not None and len(val))
    val_m = remap_dataset(val, names, "validation") if retune else None

    def tuned_for(m) -> dict:  # the thresholds of ``m``'s own weights, for the objective (and IoU) they had
        t = auto_tune(val_m, predict_fields(m, val_m, tta=th.tta, device=device), th.objective,
                      max_dets=th.max_dets, iou=(th.metrics or {}).get("iou", 0.5))
        return t.to_dict()

    if retune:  # tuned for the weights before: tuned again, as training does
        model.thresholds = tuned_for(model)
        log.info("thresholds tuned again on %d validation images (%s)", len(val), th.objective)
    elif th is not None:
        log.warning("the fine-tuned model keeps its thresholds (%s%s): %s", th.objective,
                    ", across classes" if th.class_agnostic else "",
                    "set by hand, they are not tuned again" if th.objective not in OBJECTIVES or th.class_agnostic
                    else "tuned for the weights before it; give val= to tune them again")
    if out_dir is not None:
        save_model(model, cfg, Path(out_dir) / "model", thresholds=getattr(model, "thresholds", None),
                   preprocess=getattr(model, "preprocess_spec", None), train_config=saved_config)
        best = Path(out_dir) / "best"
        if (best / "config.json").is_file():  # train_detector saved best/ with this run's settings
            # removed through the folder's list (deleted by hand, a listed file made best/ unreadable)
            write_side_file(best, "train_config.json", saved_config)
            if retune:  # best/ holds another epoch's weights: its own thresholds
                write_side_file(best, "thresholds.json", tuned_for(load_model(best, device=device)))
            elif model.thresholds:  # kept as they were: model/ and best/ count alike
                write_side_file(best, "thresholds.json", model.thresholds)
    log.info("fine-tuned %s on %d images (%d corrected) for %d epochs", folder, len(data), len(corrected),
             len(history))
    return model, history


def compare_models(before, after, test: SmearDataset, *, device: str = "auto") -> dict[str, dict]:
    """Score two detectors (model folders or models) on the same held-out images.

    Parameters
    ----------
    before, after : the models (model folders or loaded models).
    test : the held-out images with ground truth.
    device : "auto", "cpu", "cuda".

    Returns
    -------
    dict
        ``{"before": {...}, "after": {...}}``, each with ``mAP50``, ``mAP`` and
        ``count_error`` (mean over images and classes of ``|predicted - true| / max(true, 1)``
        at each model's own thresholds, 0.5 where it has none), each model predicting as
        ``smearlab predict`` does (:func:`~smearlab.detection.predict.predict_fields`: large fields
        tiled at the training magnification, test-time augmentation where its thresholds were tuned
        with it).
    """
    out = {}
    for name, m in (("before", before), ("after", after)):
        model = load_model(m, device=device) if isinstance(m, (str, Path)) else m
        th = getattr(model, "thresholds", None)
        tta = bool(th and th.get("tta") and th.get("objective") != "manual")
        raw = predict_fields(model, test, tta=tta, device=device)
        coco = default_evaluate(test, raw)
        kept = Thresholds(**th).apply(raw) if th else raw  # the model's thresholds on the same raw boxes
        true, pred = count_matrix(test, kept, 0.0 if th else 0.5)
        err = float((abs(pred - true) / true.clip(min=1)).mean()) if true.size else None
        out[name] = {"mAP50": coco["mAP50"], "mAP": coco["mAP"], "count_error": err}
    return out
