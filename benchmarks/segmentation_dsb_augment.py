"""Training options of the learned instance segmenter on DSB2018 (zoom augmentation, bfloat16,
training at one object size), side by side, chosen on validation.

The DSB2018 subset's looks hold nuclei of very different sizes (about 10-20 px across in the
fluorescence images, 20-40 px in the colour bright-field tissue), and the 16 training images
hold few of each. Cellpose and StarDist train with random zooms; this script measures whether
it pays here; training in bfloat16 on a CPU with AMX runs more steps in the same minutes; and
Cellpose brings every image to one object size (``InstanceTrainConfig(diameter=D)``: each
training image resized so that its median nucleus is ``D`` pixels across, a size model fitted on
the network's features estimating each test image's size; :mod:`smearlab.segmentation.size`).
Each candidate, a ``scale_jitter`` (None: no zoom; ``LOW,HIGH``: each training crop zoomed by a
factor drawn log-uniformly from that range) with a precision (``fp32``, or ``bf16``: bfloat16
autocast, ``InstanceTrainConfig(cpu_bf16=True)``), trains the learned segmenter's
"boundary" variant from scratch for the same wall-clock budget and seed, one after the other in
one sitting, on the 16 fit images of ``segmentation_dsb.py``'s training split; its prediction
settings are tuned on the 4 validation images; the choice is the best validation DSB metric.
The 10 test images are scored for every candidate (overall and per look) beside the classical
method that ``segmentation_dsb.py`` picks on the training images; Testing is reported, not used
to choose.

A candidate with a diameter (``--diameters``) uses ``--diameter-jitter`` as its zoom range
around that size (Cellpose draws 0.75-1.25). Its row adds ``size_model_error`` (cross-validated
on the fit images), ``size_model_s`` and, per test image, the estimated and the true median
diameters (``diameters``).

A candidate with a weight average (``--ema-decays``, ``InstanceTrainConfig(ema_decay=d)``) gives
two rows from its one training run: the average (``weights: "average"``, what the trained model
holds) and the last raw weights of the same run (``weights: "raw"``), each with its own prediction
settings tuned on validation: a paired comparison, free of the run-to-run spread of training.

``--samplings area image`` compares how each training crop's image is drawn
(``InstanceTrainConfig(sampling=...)``): by area, where the one 1024 x 1024 grey bright-field
image gets about a third of the crops and the five small colour bright-field images an eighth, or
every image equally (StarDist's and Cellpose's way; the default since the choice by folds below).

``--crops 128x8 256x2`` compares the training crops' side and the crops per step
(``InstanceTrainConfig(crop=..., batch_size=...)``): 128 px crops hold two or three of the
largest nuclei (about 60 px across in the packed colour tissue) and little of their
surroundings; StarDist trains on 256 px patches, Cellpose on 224 px. ``256x2`` keeps the pixels
per step of ``128x8``. ``--boundary-weights 3 6`` compares the cross-entropy weight of the
boundary class (``InstanceTrainConfig(boundary_weight=...)``), the scarce class that splits
touching nuclei; ``--lrs 2e-3 4e-3`` the Adam learning rate (``InstanceTrainConfig(lr=...)``);
``--widths 16 24`` the U-Net's first-level width (``build_instance_unet(base=...)``: a wider net
runs fewer steps in the same minutes); ``--boundary-widths 2 3`` the width in pixels of the
boundary band inside each nucleus's edge (``InstanceTrainConfig(boundary=...)``): a wider band
leaves a smaller interior, which might keep the markers of touching nuclei apart more often, and
leaves the smallest nuclei less interior. ``--separations 0 10`` compares U-Net's separation
weight map (``InstanceTrainConfig(separation=...)``, :func:`separation_weights`): the background
and boundary pixels between two nuclei weigh up to ``1 + separation`` times the rest in the loss,
since the learned segmenter's errors on the validation images are mainly merged nuclei.

``--training-images fit all`` compares what the final model trains on: the 16 fit images, its
settings tuned on the 4 held-out validation images (the recipe), or all 20 training images, its
settings tuned on the same 4 images, now seen in training (25 % more training images; the
thresholds of a model that has seen the images it is tuned on). With ``--folds`` such a comparison
is scored on held-out images: in each fold, the fold's training part gives its own 4 validation
images (``validation_split``), each candidate trains on the rest ("fit") or on the whole part
("all"), is tuned on those 4 and scored on the fold's validation images, which neither saw.

Four validation images are few to choose by. ``--folds K --fold-minutes M`` also chooses among the
candidates the way ``segmentation_dsb.py`` chooses the outputs: each candidate trained ``M``
minutes on every one of ``K`` folds of the 20 training images (stratified by look, every image
validating once), its settings tuned and scored on the fold; the best mean wins
(``chosen_by_folds``: the per-fold table and the choice). ``--folds-only`` stops there: no
full-budget rows and no test images.

Writes ``benchmarks/results/segmentation_dsb_augment.json``: ``rows`` (``scale_jitter``,
``precision``, ``diameter``, ``ema_decay``, ``weights``, ``sampling``, ``crop``, ``batch_size``,
``boundary_weight``, ``lr``, ``base``, ``boundary``, ``separation``, ``training_images``, ``steps``,
``val_dsb``,
``dsb_metric``, ``dsb_per_look``, ``dsb_per_image``, mask AP50 / mAP, count error, ``train_s``),
``chosen_on_validation`` (the best row's ``scale_jitter``, ``precision``, ``diameter``,
``ema_decay``, ``weights``, ``sampling``, ``crop``, ``batch_size``, ``boundary_weight``, ``lr``,
``base``, ``boundary``, ``separation`` and ``training_images``), ``chosen_by_folds`` (with ``--folds``; else null),
``classical`` (name, ``dsb_metric``, ``dsb_per_look``).

Usage::

    python benchmarks/segmentation_dsb_augment.py --budget 20 --jitters none 0.67,1.5
    python benchmarks/segmentation_dsb_augment.py --budget 20 --jitters none --train-seed 1 \
        --name segmentation_dsb_seed1     # the same split, another training seed
    python benchmarks/segmentation_dsb_augment.py --budget 20 --jitters none --precisions fp32 bf16 \
        --name segmentation_dsb_bf16
    python benchmarks/segmentation_dsb_augment.py --budget 20 --jitters none --diameters none 20 \
        --diameter-jitter 0.75,1.33 --name segmentation_dsb_diameter
    python benchmarks/segmentation_dsb_augment.py --budget 20 --jitters none --ema-decays 0.998 \
        --name segmentation_dsb_ema       # the average and the raw weights of one run
    python benchmarks/segmentation_dsb_augment.py --budget 20 --jitters none --samplings area image \
        --name segmentation_dsb_sampling  # crops' images drawn by area or each image equally
    python benchmarks/segmentation_dsb_augment.py --jitters none --samplings area image --folds 3 \
        --fold-minutes 5 --folds-only --name segmentation_dsb_sampling_folds  # the choice by 3 folds
    python benchmarks/segmentation_dsb_augment.py --jitters none --crops 128x8 256x2 --folds 3 \
        --fold-minutes 5 --folds-only --name segmentation_dsb_crop_folds  # crop side, by 3 folds
    python benchmarks/segmentation_dsb_augment.py --jitters none --boundary-weights 3 6 --folds 3 \
        --fold-minutes 5 --folds-only --name segmentation_dsb_boundary_weight_folds
    python benchmarks/segmentation_dsb_augment.py --jitters none --training-images fit all --folds 3 \
        --fold-minutes 5 --folds-only --name segmentation_dsb_refit_folds  # 16 or 20 training images
    python benchmarks/segmentation_dsb_augment.py --jitters none --lrs 2e-3 4e-3 --folds 3 --fold-minutes 5 \
        --folds-only --name segmentation_dsb_lr_folds  # the learning rate, by 3 folds
    python benchmarks/segmentation_dsb_augment.py --jitters none --widths 16 24 --folds 3 --fold-minutes 5 \
        --folds-only --name segmentation_dsb_width_folds  # the U-Net's width, by 3 folds
    python benchmarks/segmentation_dsb_augment.py --jitters none --boundary-widths 2 3 --folds 3 \
        --fold-minutes 5 --folds-only --name segmentation_dsb_band_folds  # the boundary band, by 3 folds
    python benchmarks/segmentation_dsb_augment.py --jitters none --separations 0 10 --folds 3 \
        --fold-minutes 5 --folds-only --name segmentation_dsb_separation_folds  # the weight map, by 3 folds
"""
from __future__ import annotations

import argparse
import copy
import itertools
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import run_benchmark, save_result  # noqa: E402
from segmentation_dsb import (DEFAULT_DATA, SEED, UNET_BASE, _classical_predict, _per_group, fixed_split,  # noqa: E402
                              fold_scores, per_image, pick_classical, predict_learned, selection_folds,
                              train_learned, validation_split)

from smearlab.core.device import resolve_device  # noqa: E402
from smearlab.data import load  # noqa: E402
from smearlab.metrics.instances import segmentation_metrics  # noqa: E402
from smearlab.segmentation.instances import (SAMPLINGS, InstanceTrainConfig, nuclear_channel,  # noqa: E402
                                             save_instance_unet, tune_thresholds)
from smearlab.segmentation.size import object_diameter  # noqa: E402


#: what the final model trains on: the fit images (the validation images held out for tuning) or
#: all the training images (the tuning images included)
TRAINING_IMAGES = ("fit", "all")


def _jitter(text: str):
    if text.lower() == "none":
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a zoom range is 'none' or LOW,HIGH (e.g. 0.67,1.5), got {text!r}")
    return (lo, hi)


def _diameter(text: str):
    if text.lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a diameter is 'none' or a number of pixels, got {text!r}")


def _crop(text: str) -> tuple[int, int]:
    try:
        side, batch = (int(v) for v in text.lower().split("x"))
    except ValueError:
        side = batch = 0
    if side < 16 or batch < 1:
        raise argparse.ArgumentTypeError(f"a crop is SIDExBATCH (e.g. 256x2: 256 px crops, 2 per step), got {text!r}")
    return side, batch


def _number(what: str, zero: bool = False):
    """An argparse type: a number above 0 (or 0 too, with ``zero``), refused as ``what`` (e.g. "a
    learning rate is a positive number")."""
    def parse(text: str) -> float:
        try:
            w = float(text)
        except ValueError:
            w = float("nan")
        if not (w >= 0 if zero else w > 0):
            raise argparse.ArgumentTypeError(f"{what}, got {text!r}")
        return w
    return parse


_weight = _number("a class weight or a learning rate is a positive number")
_separation = _number("a separation weight is a number of 0 or more", zero=True)


def _count(what: str):
    """An argparse type: a whole number of at least 1, refused as ``what`` (e.g. "a width is a
    positive number of channels")."""
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            n = 0
        if n < 1:
            raise argparse.ArgumentTypeError(f"{what}, got {text!r}")
        return n
    return parse


def _decay(text: str):
    if text.lower() == "none":
        return None
    try:
        d = float(text)
    except ValueError:
        d = -1.0
    if not 0.0 < d < 1.0:
        raise argparse.ArgumentTypeError(f"an EMA decay is 'none' or a number between 0 and 1, got {text!r}")
    return d


def _raw_twin(model, val, device):
    """The last raw weights of a run trained with a weight average, with prediction settings of
    their own tuned on ``val``: ``(model, post-processing, val DSB)``."""
    raw = copy.deepcopy(model)
    raw.load_state_dict(model.raw_weights)
    th, score = tune_thresholds(raw, val, device=device)
    raw.thresholds = th
    return raw, ("boundary", th), score


def choose_by_folds(train, candidates, folds: int, minutes: float, device, seed: int,
                    fold_seed: int = SEED) -> tuple[dict, dict]:
    """Each candidate trained for ``minutes`` on every fold of
    :func:`~segmentation_dsb.selection_folds` (the rule that chooses the outputs: every one of the 20
    training images validates once), its settings tuned and scored on the fold; the choice is the
    best mean validation DSB. ``seed`` trains, ``fold_seed`` deals the folds. When any candidate
    trains on all the images (its tuning images included), every candidate is scored on held-out
    images instead (``fold_scores(held_out=...)``): the other rule has no tuning images to include.
    ``(chosen candidate, table)``; the table's keys are the candidates' labels."""
    table = {}
    splits = selection_folds(train, folds, fold_seed)
    held_out = any(c["training_images"] == "all" for c in candidates)
    for cand in candidates:
        config = _config(cand)
        scores, posts = fold_scores(train, splits, "boundary", minutes, device, seed, _label(cand) + ":",
                                    held_out=cand["training_images"] if held_out else None, fold_seed=fold_seed,
                                    **config)
        table[_label(cand)] = {"val_dsb": round(float(np.mean(scores)), 4), "fold_val_dsb": scores, "post": posts,
                               "scored_on": "held-out fold images" if held_out else "the tuning images"}
    best = max(candidates, key=lambda c: table[_label(c)]["val_dsb"])
    return best, table


def _config(cand: dict) -> dict:
    """The candidate's :class:`InstanceTrainConfig` fields and the U-Net's width ``base`` (all but
    ``training_images``): the keyword arguments of ``train_learned``."""
    return {k: v for k, v in cand.items() if k != "training_images"}


def _candidates(args) -> list[dict]:
    """Every combination of the compared options, each a dict of :class:`InstanceTrainConfig`
    fields, the U-Net's width ``base`` and the ``training_images`` (a candidate with a diameter
    takes ``--diameter-jitter`` as its zoom range)."""
    out = []
    for (jitter, precision, diameter, decay, sampling, (side, batch), weight, lr, base, band, separation,
         images) in itertools.product(
            args.jitters, args.precisions, args.diameters, args.ema_decays, args.samplings, args.crops,
            args.boundary_weights, args.lrs, args.widths, args.boundary_widths, args.separations,
            args.training_images):
        if diameter is not None and args.diameter_jitter is not None:
            jitter = args.diameter_jitter
        cand = dict(scale_jitter=jitter, cpu_bf16=precision == "bf16", diameter=diameter, ema_decay=decay,
                    sampling=sampling, crop=side, batch_size=batch, boundary_weight=weight, lr=lr,
                    base=base, boundary=band, separation=separation, training_images=images)
        if cand not in out:
            out.append(cand)
    return out


def _label(cand: dict) -> str:
    jitter = cand["scale_jitter"]
    return (f"jitter {'none' if jitter is None else '-'.join(map(str, jitter))}, "
            f"{'bf16' if cand['cpu_bf16'] else 'fp32'}, diameter {cand['diameter']}, ema {cand['ema_decay']}, "
            f"{cand['sampling']}, crop {cand['crop']}x{cand['batch_size']}, "
            f"boundary weight {cand['boundary_weight']:g}, lr {cand['lr']:g}, width {cand['base']}, "
            f"boundary band {cand['boundary']} px, separation {cand['separation']:g}, "
            f"trained on {cand['training_images']} images")


#: the options a candidate's row and the choice carry as they are (beside ``scale_jitter``,
#: ``precision`` and ``weights``)
_OPTIONS = ("diameter", "ema_decay", "sampling", "crop", "batch_size", "boundary_weight", "lr", "base", "boundary",
            "separation", "training_images")

#: the recipe's value of each compared option: a saved model's folder name names only the options
#: that differ from it
_RECIPE = {"diameter": None, "sampling": InstanceTrainConfig.sampling, "crop": InstanceTrainConfig.crop,
           "batch_size": InstanceTrainConfig.batch_size, "boundary_weight": InstanceTrainConfig.boundary_weight,
           "lr": InstanceTrainConfig.lr, "base": UNET_BASE, "boundary": InstanceTrainConfig.boundary,
           "separation": InstanceTrainConfig.separation, "training_images": "fit"}


def _folder_name(prefix: str, cand: dict, ran_in: str, weights: str) -> str:
    """``<prefix>_jitter_<range>_<precision>``, then ``_ema_<decay>_<weights>`` for a weight
    average and ``_<option>_<value>`` for every option that differs from the recipe's."""
    jitter = cand["scale_jitter"]
    parts = [prefix, "jitter", "none" if jitter is None else "-".join(map(str, jitter)), ran_in]
    if cand["ema_decay"] is not None:
        parts += ["ema", f"{cand['ema_decay']:g}", weights]
    for key, recipe in _RECIPE.items():
        if cand[key] != recipe:
            parts += [key, f"{cand[key]:g}" if isinstance(cand[key], float) else str(cand[key])]
    return "_".join(parts)


def _scores(test, preds) -> dict:
    m = segmentation_metrics(test, preds, score_threshold=0.0)
    images = per_image(test, preds)
    return {"dsb_metric": m["dsb_metric"], "dsb_per_look": _per_group(test, images), "mask_mAP50": m["mask_mAP50"],
            "mask_mAP": m["mask_mAP"], "count_error": m["count_error"], "dsb_per_image": images}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the dsb2018_subset folder")
    ap.add_argument("--budget", type=float, default=20, help="minutes of training per candidate")
    ap.add_argument("--jitters", type=_jitter, nargs="+", default=[None, (0.67, 1.5)],
                    help="zoom ranges to compare: 'none' or LOW,HIGH")
    ap.add_argument("--precisions", nargs="+", choices=("fp32", "bf16"), default=["fp32"],
                    help="training precisions to compare on the CPU (bf16: bfloat16 autocast); on CUDA "
                         "training runs under float16 autocast and the rows say fp16")
    ap.add_argument("--diameters", type=_diameter, nargs="+", default=[None],
                    help="object sizes to train at: 'none' (each image at its own scale) or pixels")
    ap.add_argument("--diameter-jitter", type=_jitter, default=None,
                    help="the zoom range of the candidates with a diameter (replaces --jitters for them)")
    ap.add_argument("--ema-decays", type=_decay, nargs="+", default=[None],
                    help="weight averages to train with: 'none' or a decay per step (each gives an average "
                         "row and a raw row from the same run)")
    ap.add_argument("--samplings", nargs="+", choices=SAMPLINGS, default=[InstanceTrainConfig.sampling],
                    help="how each training crop's image is drawn: by area, or every image equally "
                         f"(default: {InstanceTrainConfig.sampling!r}, the recipe's)")
    ap.add_argument("--crops", type=_crop, nargs="+",
                    default=[(InstanceTrainConfig.crop, InstanceTrainConfig.batch_size)],
                    help="training crops to compare, SIDExBATCH: the crop side in pixels and the crops per step "
                         f"(default: {InstanceTrainConfig.crop}x{InstanceTrainConfig.batch_size}, the recipe's)")
    ap.add_argument("--boundary-weights", type=_weight, nargs="+", default=[InstanceTrainConfig.boundary_weight],
                    help="cross-entropy weights of the boundary class to compare (default: "
                         f"{InstanceTrainConfig.boundary_weight:g}, the recipe's)")
    ap.add_argument("--lrs", type=_weight, nargs="+", default=[InstanceTrainConfig.lr],
                    help=f"Adam learning rates to compare (default: {InstanceTrainConfig.lr:g}, the recipe's)")
    ap.add_argument("--widths", type=_count("a width is a positive number of channels"), nargs="+",
                    default=[UNET_BASE],
                    help="U-Net first-level widths to compare (channels, doubled per level; default: "
                         f"{UNET_BASE}, the recipe's)")
    ap.add_argument("--boundary-widths", type=_count("a boundary band is a positive whole number of pixels"),
                    nargs="+", default=[InstanceTrainConfig.boundary],
                    help="widths in pixels of the boundary band inside each nucleus's edge to compare (default: "
                         f"{InstanceTrainConfig.boundary}, the recipe's)")
    ap.add_argument("--separations", type=_separation, nargs="+", default=[InstanceTrainConfig.separation],
                    help="peaks of the separation weight map to compare (0: none; default: "
                         f"{InstanceTrainConfig.separation:g}, the recipe's)")
    ap.add_argument("--training-images", nargs="+", choices=TRAINING_IMAGES, default=["fit"],
                    help="what the final model trains on: the 16 fit images (the recipe) or all 20 training "
                         "images (the 4 validation images that tune its settings included)")
    ap.add_argument("--folds", type=int, default=0,
                    help="also choose among the candidates by cross-validation on the 20 training images: each "
                         "trained --fold-minutes on every one of this many folds (0: no)")
    ap.add_argument("--fold-minutes", type=float, default=5, help="minutes of training per candidate and fold")
    ap.add_argument("--folds-only", action="store_true",
                    help="with --folds: stop after the cross-validated choice (no full-budget rows, no test)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=SEED, help="the seed of the fixed split (keep 0 to compare)")
    ap.add_argument("--train-seed", type=int, help="the seed of the crops and weights (default: --seed)")
    ap.add_argument("--name", default="segmentation_dsb_augment", help="results/<name>.json")
    ap.add_argument("--save-models", type=Path, metavar="DIR",
                    help="write each candidate's model folder (weights and tuned thresholds) under DIR")
    args = ap.parse_args(argv)
    if args.folds == 1 or args.folds < 0:
        ap.error(f"--folds is 0 (no cross-validation) or at least 2, got {args.folds}")
    if args.folds_only and args.folds < 2:
        ap.error("--folds-only needs --folds K with K >= 2")
    if args.folds_only and args.save_models is not None:
        ap.error("--folds-only trains no full-budget model to save: leave out --save-models")
    train_seed = args.seed if args.train_seed is None else args.train_seed
    dev = resolve_device(args.device)
    if dev.type != "cpu" and "bf16" in args.precisions:
        raise SystemExit(f"--precisions bf16 is a CPU option; on {dev.type} training runs under float16 autocast "
                         "(InstanceTrainConfig.amp): leave --precisions out")
    ds = load(args.data)
    if len(ds) == 0:
        raise SystemExit(f"no DSB2018 images under {args.data}")
    train_idx, test_idx = fixed_split(ds, args.seed)
    train, test = ds.subset(train_idx, "dsb-train"), ds.subset(test_idx, "dsb-test")
    fit_idx, val_idx = validation_split(train, args.seed)
    fit, val = train.subset(fit_idx, "dsb-fit"), train.subset(val_idx, "dsb-val")
    load_avg = os.getloadavg()

    rows, labels = [], []  # labels[i]: what rows[i] ran (the candidate and its weights)
    if any(d is not None for d in args.diameters) and any(e is not None for e in args.ema_decays):
        raise SystemExit("--ema-decays with --diameters: the raw twin would need a size model of its own; "
                         "compare them in separate runs")
    candidates = _candidates(args)
    by_folds = None
    if args.folds >= 2:
        chosen_cv, table = choose_by_folds(train, candidates, args.folds, args.fold_minutes, dev, train_seed,
                                            args.seed)
        by_folds = {"folds": args.folds, "minutes": args.fold_minutes, "table": table, "chosen": _label(chosen_cv)}
        print(f"chosen by {args.folds}-fold cross-validation: {_label(chosen_cv)}", flush=True)
        if args.folds_only:
            out = save_result(args.name, {"chosen_by_folds": by_folds, "seed": args.seed, "train_seed": train_seed,
                                          "variant": "boundary", "device": str(dev), "cpu_threads": os.cpu_count(),
                                          "load_average_1_5_15_at_start": [round(v, 2) for v in load_avg],
                                          "load_average_1_5_15_at_end": [round(v, 2) for v in os.getloadavg()]},
                              argv, script="segmentation_dsb_augment")
            print(f"-> {out}")
            return
    name, spec, _ = pick_classical(train)
    cl_preds, _ = _classical_predict(test, spec)
    classical_row = {"name": name, **_scores(test, cl_preds)}
    for cand in candidates:
        jitter, diameter, decay = cand["scale_jitter"], cand["diameter"], cand["ema_decay"]
        images = train if cand["training_images"] == "all" else fit
        model, post, val_dsb, train_s = train_learned(images, val, "boundary", args.budget, dev, train_seed,
                                                      **_config(cand))
        # what the training ran in (CUDA: amp)
        ran_in = "fp16" if dev.type == "cuda" else "bf16" if cand["cpu_bf16"] else "fp32"
        twins = [("average" if decay is not None else "raw", model, post, val_dsb)]
        if decay is not None:
            twins.append(("raw", *_raw_twin(model, val, dev)))
        for weights, net, net_post, net_val in twins:
            preds, sec = predict_learned(net, net_post, test, dev)
            if args.save_models is not None:
                folder = args.save_models / _folder_name(args.name, cand, ran_in, weights)
                save_instance_unet(net, folder, net_post[1], val_dsb=net_val)
            row = {"scale_jitter": list(jitter) if jitter else None, "precision": ran_in, "weights": weights,
                   **{k: cand[k] for k in _OPTIONS}, "steps": model.trained_steps,
                   "val_dsb": net_val,
                   **_scores(test, preds), "settings": str(net_post[1]), "train_s": round(train_s, 1),
                   "seconds_per_image": round(sec, 3)}
            if diameter is not None:
                row.update(size_model_error=model.size_error, size_model_s=model.size_s, diameters={
                    s.image_id: {"estimated": round(model.size_model.estimate(model, nuclear_channel(s.image)), 1),
                                 "true": round(object_diameter(s.masks), 1)} for s in test})
            rows.append(row)
            labels.append(f"{_label(cand)} ({weights} weights, ran in {ran_in})")
            looks = ", ".join(f"{g} {v:.3f}" for g, v in row["dsb_per_look"].items())
            print(f"{labels[-1]}, {model.trained_steps} steps: validation DSB {net_val:.4f} | test DSB "
                  f"{row['dsb_metric']:.3f} ({looks})", flush=True)
    looks = ", ".join(f"{g} {v:.3f}" for g, v in classical_row["dsb_per_look"].items())
    print(f"classical {name}: test DSB {classical_row['dsb_metric']:.3f} ({looks})")
    # a model trained on all the training images is tuned on images it has seen: its validation
    # figure is not comparable with a held-out one, so the choice on validation stays among the rows
    # of one kind (the fit rows when both are run; --folds compares the two on held-out images)
    kind = "fit" if any(r["training_images"] == "fit" for r in rows) else rows[0]["training_images"]
    i_best = max((i for i, r in enumerate(rows) if r["training_images"] == kind), key=lambda i: rows[i]["val_dsb"])
    best = rows[i_best]
    chosen = {k: best[k] for k in ("scale_jitter", "precision", "weights", *_OPTIONS)}
    result = {"rows": rows, "chosen_on_validation": chosen, "chosen_by_folds": by_folds, "classical": classical_row,
              "budget_s": args.budget * 60, "seed": args.seed, "train_seed": train_seed, "variant": "boundary",
              "images": {"fit": len(fit), "val": len(val), "test": len(test)}, "device": str(dev),
              "cpu_threads": os.cpu_count(), "load_average_1_5_15_at_start": [round(v, 2) for v in load_avg],
              "load_average_1_5_15_at_end": [round(v, 2) for v in os.getloadavg()]}
    out = save_result(args.name, result, argv, script="segmentation_dsb_augment")
    print(f"chosen on validation: {labels[i_best]} -> {out}")


if __name__ == "__main__":
    run_benchmark(main)
