"""DSB2018 subset: Mask R-CNN trained from scratch, the two-stage segmenter and the best classical one, same test images.

Usage::

    python benchmarks/segmentation_dsb.py --preset cpu      # this 2-core machine (about 70 minutes)
    python benchmarks/segmentation_dsb.py --preset cpu --threads 1   # the same on a busy shared CPU
    python benchmarks/segmentation_dsb.py --preset gpu      # a lent GPU (ResNet-50 Mask R-CNN)
    python benchmarks/segmentation_dsb.py --preset quick    # a smaller Mask R-CNN; not quick: over 15 minutes,
                                                            # the learned segmenter keeps its budgets

The 30 images of ``../shared/data/dsb2018_subset`` are split once, by a fixed seed, into 20
training and 10 test images, stratified by the three looks of ``SUBSET_IMAGES.tsv`` (fluorescence
12/6, colour bright-field 6/3, grey bright-field 2/1); the image ids of both parts are recorded.

* Mask R-CNN (``maskrcnn_tiny`` on the CPU, ``maskrcnn`` ResNet-50 FPN on a GPU), no pretrained
  weights, flips / quarter turns / colour jitter (:class:`DihedralJitter`), AdamW (on the CPU
  recipe a 20-epoch AdamW run reached test mask AP50 0.36 where a 24-epoch SGD run at lr 0.02
  reached 0.11), trained on the 20 training images. The score
  threshold of its final masks (DSB metric, counts) is picked on the training images; mask AP
  uses every detection.
* Two-stage: the Mask R-CNN's boxes, each crop segmented by a small U-Net trained on crops
  around the training nuclei (:func:`smearlab.segmentation.predict.two_stage_segment`); scored with the
  Mask R-CNN's score threshold, its time per image is the detector's plus the crop U-Net's.
* Learned instance segmenter (:mod:`smearlab.segmentation.instances`): a U-Net from scratch on
  one polarity-normalised grey channel, trained on random crops for a CPU time budget (each
  crop's image drawn with equal chance, chosen over drawing by area by the same folds as below:
  ``segmentation_dsb_augment.py --samplings area image --folds 3``); its outputs
  are chosen by measurement: two variants, "boundary" (background / interior / boundary, then a
  watershed seeded by the confident interior) and "foreground" (the distance-transform watershed
  of the predicted foreground, interior and boundary together; trained on the same three classes
  with the thinnest band, 1 px: every run recorded before 2026-12-07 asked for a band of 0, which
  was read as 1 px until such bands were refused), compared by cross-validation on the
  training images: the 20 are dealt into ``--selection-folds`` folds stratified by look (3: 6-7
  validation images each, every training image validating once), each variant trained for
  ``--selection-budget`` minutes per fold on the rest and scored on the fold, and the better mean
  wins (4 validation images alone, the rule before, chose one variant in one run and the other in
  the next). The winner is trained again for ``--learned-budget`` minutes on 16 training images and
  its thresholds tuned on the other 4 (one per look at least), then scored on the test images. Both variants may average
  the network's output over the eight flips and quarter turns of each image (test-time
  augmentation), a choice made on the validation images like the thresholds.
* Classical: Otsu / Li / adaptive threshold + connected components and the distance-transform
  watershed at a few ``min_distance`` values (:mod:`smearlab.segmentation.classical`); the best by mean DSB
  metric on the *training* images is reported on the test images.

Both are scored on the test images with :func:`smearlab.metrics.instances.segmentation_metrics`: the DSB
metric (mean over images), mask AP50 and mAP (pycocotools segm), object count error; plus the
time per image (CPU; GPU too when the run is on one). With ``smearlab.metrics.robustness`` present
(unless ``--no-noise``) every metric is also reported on the test images with the noise of
issue #5 (mean 5 % of the image maximum, variance 10 % of its power), keys ending ``_noisy``.
Writes ``benchmarks/results/segmentation_dsb.json``.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import run_benchmark, save_result  # noqa: E402
from smearlab.segmentation import classical  # noqa: E402
from smearlab.augment import Augment, ColorJitter  # noqa: E402
from smearlab.data import Sample, load  # noqa: E402
from smearlab.core.device import resolve_device  # noqa: E402
from smearlab.core.search import grid_search  # noqa: E402
from smearlab.detection import DetectorConfig, TrainConfig, build_detector, predict  # noqa: E402
from smearlab.detection.train import train_detector  # noqa: E402
from smearlab.metrics.instances import dsb_score, segmentation_metrics  # noqa: E402
from smearlab.segmentation.train import build_crop_unet, train_crop_unet  # noqa: E402
from smearlab.segmentation.instances import (InstanceTrainConfig, build_instance_unet, predict_probabilities,  # noqa: E402
                                             probabilities_to_instances, train_instance_unet, tune_thresholds)
from smearlab.segmentation.predict import two_stage_segment  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "dsb2018_subset"
SEED = 0
TEST_FRACTION = 1 / 3
#: Mask R-CNN settings per preset: (model config, training config).
_DENSE = {"rpn_pre_nms_top_n_test": 2000, "rpn_post_nms_top_n_test": 1000, "rpn_post_nms_top_n_train": 1000,
          "box_batch_size_per_image": 256}
PRESETS = {
    "quick": (dict(arch="maskrcnn_tiny", min_size=256, max_size=384, anchor_sizes=[[8, 16], [24, 32], [48, 64]],
                   detections_per_img=400, extra=_DENSE),
              dict(epochs=2, batch_size=2, optimizer="adamw", lr=1e-3, weight_decay=0.05, warmup_iters=5)),
    "cpu": (dict(arch="maskrcnn_tiny", min_size=448, max_size=672, anchor_sizes=[[8, 16], [24, 32], [48, 64]],
                 detections_per_img=500, extra=_DENSE),
            dict(epochs=18, batch_size=2, optimizer="adamw", lr=1e-3, weight_decay=0.05, warmup_iters=30)),
    "gpu": (dict(arch="maskrcnn", min_size=800, max_size=1333, anchor_sizes=[8, 16, 32, 64, 128],
                 detections_per_img=500, extra={"rpn_pre_nms_top_n_test": 3000, "rpn_post_nms_top_n_test": 2000}),
            dict(epochs=150, batch_size=4, optimizer="adamw", lr=5e-4, weight_decay=0.05, warmup_iters=100,
                 amp=True)),
}

#: Crop U-Net of the two-stage segmenter (Mask R-CNN boxes -> U-Net per crop) per preset.
TWO_STAGE = {"quick": dict(crop_size=32, base=8, epochs=2), "cpu": dict(crop_size=48, base=8, epochs=30),
             "gpu": dict(crop_size=96, base=16, epochs=60)}

#: Classical candidates: (name, segmenter, keyword arguments).
CLASSICAL = [("otsu", "threshold", {"method": "otsu"}), ("li", "threshold", {"method": "li"}),
             ("adaptive", "threshold", {"method": "adaptive"})] + \
            [(f"watershed_md{d}", "watershed", {"min_distance": d}) for d in (3, 5, 8)]
SCORE_GRID = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
#: the learned segmenter's U-Net width (channels of its first level, doubled per level)
UNET_BASE = 16


def _by_look(ds) -> dict[str, list[int]]:
    """Indices of ``ds`` per look (``sample.meta["group"]`` of ``SUBSET_IMAGES.tsv``)."""
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(ds):
        groups.setdefault(s.meta.get("group", "all"), []).append(i)
    return groups


def fixed_split(ds, seed: int = SEED, test_fraction: float = TEST_FRACTION) -> tuple[list[int], list[int]]:
    """Indices ``(train, test)``: per look (``sample.meta["group"]``), ``round(n * test_fraction)``
    images drawn for the test set by ``seed`` (ids sorted first, so the split does not depend on
    the loading order)."""
    groups = _by_look(ds)
    rng = np.random.default_rng(seed)
    test = []
    for g in sorted(groups):
        idx = sorted(groups[g], key=lambda i: ds[i].image_id)
        k = int(round(len(idx) * test_fraction))
        test += [idx[j] for j in sorted(rng.permutation(len(idx))[:k])]
    test = sorted(test)
    return [i for i in range(len(ds)) if i not in set(test)], test


class DihedralJitter:
    """Training augmentation: a random flip / quarter turn (the 8 symmetries of the square), done
    with numpy on the image and the bool masks (exact, and fast for images with hundreds of
    nuclei), then :class:`smearlab.augment.ColorJitter` on the image.

    It was written when ``smearlab.augment`` warped mask stacks as float32 (0.5 GB and 10-25 s
    per flip for the 369-nucleus image here); the package now gathers masks in their own dtype,
    so ``Augment([Rot90(), HorizontalFlip(), ColorJitter(...)])`` would do. It stays so that the
    recorded figures keep the random stream they were measured with.
    """

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.colour = Augment([ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02, p=0.8)],
                              seed=seed)

    @staticmethod
    def _geo(a: np.ndarray, k: int, flip: bool, axes: tuple[int, int]) -> np.ndarray:
        """``k`` quarter turns (numpy's rot90 over ``axes``), then a left-right flip if ``flip``."""
        a = np.rot90(a, k, axes=axes)
        return np.ascontiguousarray(np.flip(a, axis=axes[1]) if flip else a)

    @staticmethod
    def _boxes(boxes: np.ndarray, hw: tuple[int, int], k: int, flip: bool) -> np.ndarray:
        """Pixel-edge xyxy boxes under :meth:`_geo` (exact)."""
        b = boxes.astype(np.float32).copy()
        h, w = hw
        for _ in range(k):  # one turn: pixel (r, c) -> (w - 1 - c, r); the image becomes w x h
            b = np.stack([b[:, 1], w - b[:, 2], b[:, 3], w - b[:, 0]], 1)
            h, w = w, h
        if flip:
            b = np.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], 1)
        return b

    def __call__(self, sample):
        if len(sample.boxes) and not sample.has_masks:
            raise ValueError(f"DihedralJitter needs instance masks; {sample.image_id!r} has none")
        k, flip = int(self.rng.integers(4)), bool(self.rng.integers(2))
        img = self._geo(sample.image, k, flip, (0, 1))
        img = self.colour(Sample(sample.image_id, _image=img)).image  # photometric: the image only
        return dataclasses.replace(
            sample, size=None, meta=dict(sample.meta), _image=img,
            boxes=self._boxes(sample.boxes, sample.hw, k, flip),
            _masks=self._geo(sample.masks, k, flip, (1, 2)) if len(sample.boxes) else None)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_predict(model, ds, device) -> tuple[list[dict], float]:
    """Predictions of ``ds`` one image at a time and the seconds per image (images read first)."""
    for s in ds:
        s.image  # noqa: B018 - reading files is not inference time
    _sync(device)
    t0 = time.perf_counter()
    preds = predict(model, ds, batch_size=1, device=device, score_floor=0.05, progress=False)
    _sync(device)
    return preds, (time.perf_counter() - t0) / len(ds)


def per_image(ds, preds) -> dict[str, float | None]:
    """The DSB metric of each image of ``ds``, by image id (a failing image shows up by name)."""
    _, scores = dsb_score(ds, preds, kind="masks", per_image=True)
    return {s.image_id: None if v is None else float(v) for s, v in zip(ds, scores)}


def _per_group(ds, images: dict[str, float | None]) -> dict[str, float | None]:
    """The mean of :func:`per_image`'s scores per look."""
    out: dict[str, list] = {}
    for s in ds:
        if images[s.image_id] is not None:
            out.setdefault(s.meta.get("group", "all"), []).append(images[s.image_id])
    return {g: float(np.mean(v)) for g, v in sorted(out.items())}


def _above(preds, thr):
    return [{k: v[p["scores"] >= thr] for k, v in p.items()} for p in preds]


def train_maskrcnn(preset: str, train, device: str, seed: int, epochs: int | None = None):
    """Train the preset's Mask R-CNN on ``train``; ``(model, config, seconds, epochs)``."""
    model_kw, train_kw = PRESETS[preset]
    if epochs is not None:
        train_kw = dict(train_kw, epochs=int(epochs))
    cfg = DetectorConfig(class_names=train.class_names, **model_kw)
    torch.manual_seed(seed)
    model = build_detector(cfg)
    tcfg = TrainConfig(seed=seed, device=device, augment=DihedralJitter(seed), **train_kw)
    t0 = time.perf_counter()
    train_detector(model, train, None, tcfg, progress=True)
    return model, cfg, time.perf_counter() - t0, tcfg.epochs


def train_two_stage(preset: str, train, device, seed: int):
    """The crop U-Net of the two-stage segmenter, trained on crops around the training nuclei."""
    kw = TWO_STAGE[preset]
    t0 = time.perf_counter()
    unet = build_crop_unet(train, base=kw["base"])
    train_crop_unet(unet, train, crop_size=kw["crop_size"], epochs=kw["epochs"], batch_size=32, device=device,
                    seed=seed, progress=False)
    return unet, time.perf_counter() - t0


def _timed_two_stage(detections, unet, ds, device) -> tuple[list[dict], float]:
    """Masks from the detector's boxes (every detection; the score threshold applies when scored)."""
    _sync(device)
    t0 = time.perf_counter()
    preds = two_stage_segment(detections, unet, ds, device=device)
    _sync(device)
    return preds, (time.perf_counter() - t0) / len(ds)


def pick_classical(train) -> tuple[str, dict, dict]:
    """The classical candidate with the best mean DSB metric on ``train``: (name, spec, scores)."""
    def evaluate(c: dict) -> float:
        score = dsb_score(train, classical.segment_dataset(train, c["fn"], **c["kwargs"]), kind="masks")
        print(f"  classical {c['name']:16s} train DSB {score:.4f}")
        return score

    found = grid_search([{"name": n, "fn": fn, "kwargs": kw} for n, fn, kw in CLASSICAL], evaluate)
    best = found.params
    return best["name"], {"fn": best["fn"], "kwargs": best["kwargs"]}, \
        {row["params"]["name"]: row["score"] for row in found.table}


def _classical_predict(ds, spec) -> tuple[list[dict], float]:
    for s in ds:
        s.image  # noqa: B018
    t0 = time.perf_counter()
    preds = classical.segment_dataset(ds, spec["fn"], **spec["kwargs"])
    return preds, (time.perf_counter() - t0) / len(ds)


def validation_split(train, seed: int = SEED) -> tuple[list[int], list[int]]:
    """Indices into ``train``: ``(fit, val)``, one validation image per look and one more from the
    largest look (4 of the 20), drawn by ``seed``."""
    groups = _by_look(train)
    rng = np.random.default_rng(seed + 1)
    val = [int(rng.choice(sorted(idx))) for g, idx in sorted(groups.items())]
    largest = max(groups, key=lambda g: len(groups[g]))
    val.append(int(rng.choice([i for i in groups[largest] if i not in val])))
    return [i for i in range(len(train)) if i not in val], sorted(val)


def selection_folds(train, k: int, seed: int = SEED) -> list[tuple[list[int], list[int]]]:
    """``k`` folds of ``train`` for choosing the learned segmenter's outputs: ``[(fit, val), ...]``,
    indices into ``train``; every training image validates exactly once. Stratified by look:
    within each look (in sorted order) the images are shuffled by ``seed`` and dealt round-robin,
    the deal continuing across looks so the folds differ in size by one at most."""
    if not 2 <= k <= len(train):
        raise ValueError(f"selection folds must be between 2 and the {len(train)} training images, got {k}")
    groups = _by_look(train)
    rng = np.random.default_rng(seed + 1)
    folds: list[list[int]] = [[] for _ in range(k)]
    dealt = 0
    for _, idx in sorted(groups.items()):
        for i in rng.permutation(sorted(idx)):
            folds[dealt % k].append(int(i))
            dealt += 1
    return [([i for i in range(len(train)) if i not in f], sorted(f)) for f in folds]


def fold_scores(train, splits, variant: str, minutes: float, device, seed: int, label: str, *,
                held_out: str | None = None, fold_seed: int = SEED, **config) -> tuple[list[float], list[str]]:
    """One training of ``variant`` per ``(fit, val)`` split of ``train`` (indices), for ``minutes``
    each; ``config`` as for :func:`train_learned`. ``(DSB per split, settings per split)``; one
    line printed per split, headed by ``label``.

    held_out : None: the settings are tuned and scored on the split's validation images. ``"fit"``
        or ``"all"``: the split's training part gives 4 tuning images (:func:`validation_split` by
        ``fold_seed``); the model trains on the rest (``"fit"``) or on the whole part, the tuning
        images included (``"all"``), is tuned on the 4 and scored on the split's validation
        images, which it never saw.
    """
    if held_out not in (None, "fit", "all"):
        raise ValueError(f"held_out must be None, 'fit' or 'all', got {held_out!r}")
    scores, posts = [], []
    for j, (fit_idx, val_idx) in enumerate(splits):
        fit, val = train.subset(fit_idx, f"dsb-fit{j}"), train.subset(val_idx, f"dsb-val{j}")
        tune = val
        if held_out is not None:
            inner_fit, inner_val = validation_split(fit, fold_seed)
            fit, tune = (fit if held_out == "all" else fit.subset(inner_fit, f"dsb-inner{j}"),
                         fit.subset(inner_val, f"dsb-tune{j}"))
        model, post, score, _ = train_learned(fit, tune, variant, minutes, device, seed, **config)
        where = f" ({len(val)} images): validation DSB {score:.4f}"
        if held_out is not None:
            tuned = score
            preds, _ = predict_learned(model, post, val, device)
            score = float(dsb_score(val, preds, kind="masks") or 0.0)
            where = (f": trained on {len(fit)} images, tuned on {len(tune)} (DSB {tuned:.4f}), held-out DSB "
                     f"{score:.4f} ({len(val)} images)")
        scores.append(round(float(score), 4))
        posts.append(str(post[1]))
        print(f"  {label} {minutes} min, fold {j + 1}/{len(splits)}{where}", flush=True)
    return scores, posts


def choose_variant(train, folds: int, minutes: float, device, seed: int) -> tuple[str, dict]:
    """Choose the learned segmenter's outputs on the training images only: each variant trained
    for ``minutes`` and scored on validation; with ``folds`` >= 2 once per fold of
    :func:`selection_folds` (every training image validates once) and compared by the mean,
    otherwise on :func:`validation_split`'s 4 images. ``(chosen variant, table)``."""
    splits = selection_folds(train, folds, seed) if folds >= 2 else [validation_split(train, seed)]
    table: dict[str, dict] = {}
    for variant in ("boundary", "foreground"):
        scores, posts = fold_scores(train, splits, variant, minutes, device, seed, f"learned {variant:10s}")
        table[variant] = {"val_dsb": round(float(np.mean(scores)), 4), "fold_val_dsb": scores, "post": posts,
                          "val_images": [len(v) for _, v in splits],
                          "val_ids": [[train[i].image_id for i in v] for _, v in splits]}
    chosen = max(table, key=lambda v: table[v]["val_dsb"])
    diffs = np.subtract(table["boundary"]["fold_val_dsb"], table["foreground"]["fold_val_dsb"])
    table["boundary_minus_foreground"] = {"per_fold": [round(float(d), 4) for d in diffs],
                                          "mean": round(float(diffs.mean()), 4)}
    return chosen, table


def _foreground_instances(probs, min_distance: int) -> dict:
    """The "foreground" variant's instances: the distance-transform watershed of the predicted
    foreground (what a plain U-Net + watershed does)."""
    return classical.watershed_segment((probs[1] + probs[2]) >= 0.5, min_distance=min_distance, min_size=12)


def train_learned(fit, val, variant: str, minutes: float, device, seed: int, base: int = UNET_BASE, **config):
    """Train one variant for ``minutes``; ``(model, post-processing, val DSB, seconds)``. ``base``
    is the U-Net's first-level width; ``config`` replaces fields of the :class:`InstanceTrainConfig`
    (e.g. ``scale_jitter``)."""
    torch.manual_seed(seed)
    model = build_instance_unet(base=base, depth=4)
    cfg = InstanceTrainConfig(**{**dict(crop=128, batch_size=8, lr=2e-3, time_budget_s=minutes * 60, seed=seed,
                                        device=str(device), boundary=2 if variant == "boundary" else 1), **config})
    t0 = time.perf_counter()
    history = train_instance_unet(model, fit, None, cfg, progress=True)
    train_s = time.perf_counter() - t0
    # the steps the budget allowed (not a replay: the budget re-plans the schedule in its first third)
    model.trained_steps = max((int(r["step"]) for r in history if "step" in r), default=0)
    last = history[-1] if len(history) else {}  # a model trained at one object size: its size model's fit
    model.size_error, model.size_s = last.get("size_model_error"), last.get("size_model_s")
    if variant == "boundary":
        th, score = tune_thresholds(model, val, device=device)
        return model, ("boundary", th), score, train_s
    scores = {}
    for tta in (False, True):  # the flip average is a choice of both variants
        probs = [predict_probabilities(model, s.image, device=device, tta=tta) for s in val]
        for d in (3, 5, 8):
            scores[(d, tta)] = dsb_score(val, [_foreground_instances(p, d) for p in probs], kind="masks") or 0.0
    best = max(scores, key=scores.get)
    return model, ("foreground", best), scores[best], train_s


def predict_learned(model, post, ds, device) -> tuple[list[dict], float]:
    """The learned segmenter's instances of ``ds`` and the seconds per image."""
    for s in ds:
        s.image  # noqa: B018
    t0 = time.perf_counter()
    out = []
    for s in ds:
        if post[0] == "boundary":
            out.append(probabilities_to_instances(predict_probabilities(model, s.image, device=device,
                                                                        tta=post[1].tta), post[1]))
        else:
            min_distance, tta = post[1]
            out.append(_foreground_instances(predict_probabilities(model, s.image, device=device, tta=tta),
                                             min_distance))
    return out, (time.perf_counter() - t0) / len(ds)


def _headline(prefix: str, m: dict, suffix: str = "") -> dict:
    return {f"dsb_metric{prefix}{suffix}": m["dsb_metric"], f"dsb_mask_ap50{prefix}{suffix}": m["mask_mAP50"],
            f"dsb_mask_map{prefix}{suffix}": m["mask_mAP"], f"dsb_count_error{prefix}{suffix}": m["count_error"]}


def run(preset: str = "cpu", data: str | Path = DEFAULT_DATA, device: str = "auto", *, seed: int = SEED,
        noise: bool = True, epochs: int | None = None, learned_budget: float | None = 20,
        selection_budget: float = 5, selection_folds_k: int = 3) -> dict:
    """Train, pick, evaluate; the result dict (see the module docstring for the keys)."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    ds = load(Path(data))
    if len(ds) == 0:
        raise ValueError(f"no DSB2018 images under {data}")
    train_idx, test_idx = fixed_split(ds, seed)
    train, test = ds.subset(train_idx, "dsb-train"), ds.subset(test_idx, "dsb-test")
    dev = resolve_device(device)
    print(f"DSB2018 subset: {len(train)} train / {len(test)} test images, device {dev}")

    model, cfg, train_s, n_epochs = train_maskrcnn(preset, train, str(dev), seed, epochs)
    model.eval()
    train_preds = predict(model, train, batch_size=1, device=dev, score_floor=0.05, progress=False)
    found = grid_search({"threshold": SCORE_GRID},
                        lambda c: dsb_score(train, _above(train_preds, c["threshold"]), kind="masks"))
    thr = found.params["threshold"]
    grid = {row["params"]["threshold"]: row["score"] for row in found.table}
    preds, sec = _timed_predict(model, test, dev)
    seconds = {"maskrcnn": {dev.type: sec}}
    if dev.type == "cuda":  # the CPU figure as well
        model.to("cpu")
        _, seconds["maskrcnn"]["cpu"] = _timed_predict(model, test, torch.device("cpu"))
        model.to(dev)
    net = segmentation_metrics(test, preds, score_threshold=thr)

    crop_unet, crop_s = train_two_stage(preset, train, dev, seed)
    ts_preds, ts_sec = _timed_two_stage(preds, crop_unet, test, dev)
    seconds["two_stage"] = {dev.type: sec + ts_sec}  # the detector, then the crop U-Net
    ts = segmentation_metrics(test, ts_preds, score_threshold=thr)

    name, spec, cl_train = pick_classical(train)
    cl_preds, cl_sec = _classical_predict(test, spec)
    seconds["classical"] = {"cpu": cl_sec}
    cl = segmentation_metrics(test, cl_preds, score_threshold=0.0)

    learned = {}
    if learned_budget:
        chosen, selection = choose_variant(train, selection_folds_k, selection_budget, dev, seed)
        fit_idx, val_idx = validation_split(train, seed)
        fit, val = train.subset(fit_idx, "dsb-fit"), train.subset(val_idx, "dsb-val")
        l_model, post, l_val, l_train_s = train_learned(fit, val, chosen, learned_budget, dev, seed)
        l_preds, l_sec = predict_learned(l_model, post, test, dev)
        seconds["learned"] = {dev.type: l_sec}
        lm = segmentation_metrics(test, l_preds, score_threshold=0.0)
        learned = {**_headline("_learned", lm), "learned": lm, "learned_variant": chosen,
                   "learned_selection": selection, "learned_selection_folds": selection_folds_k, "learned_val_dsb": l_val, "learned_train_s": round(l_train_s, 1),
                   "learned_steps": l_model.trained_steps,
                   "learned_budget_min": learned_budget, "learned_post": {"variant": post[0], "settings": str(post[1])},
                   "learned_split": {"fit": [s.image_id for s in fit], "val": [s.image_id for s in val]}}

    images = {"maskrcnn": per_image(test, _above(preds, thr)), "two_stage": per_image(test, _above(ts_preds, thr)),
              "classical": per_image(test, cl_preds)}
    if learned:
        images["learned"] = per_image(test, l_preds)
    per_look = {method: _per_group(test, scores) for method, scores in images.items()}
    result = {**_headline("", net), **_headline("_classical", cl), **_headline("_two_stage", ts), **learned,
              "dsb_per_look": per_look, "dsb_per_image": images,
              "two_stage": ts, "two_stage_crop_unet": {**TWO_STAGE[preset], "train_s": round(crop_s, 1)},
              "classical_method": name, "classical_params": spec, "classical_train_dsb": cl_train,
              "maskrcnn_score_threshold": thr, "maskrcnn_train_dsb_by_threshold": grid,
              "maskrcnn": net, "classical": cl,
              "per_group_dsb": per_look,
              "seconds_per_image": seconds, "train_s": round(train_s, 1), "epochs": n_epochs,
              "arch": cfg.arch, "min_size": cfg.min_size, "max_size": cfg.max_size, "preset": preset,
              "split": {"train": [s.image_id for s in train], "test": [s.image_id for s in test],
                        "rule": "per SUBSET_IMAGES.tsv group, round(n/3) test images drawn by numpy "
                                "default_rng(seed) over the sorted image ids"},
              "seed": seed, "device": str(dev), "cpu_threads": torch.get_num_threads(),
              "cpu_count": os.cpu_count()}

    if noise and importlib.util.find_spec("smearlab.metrics.robustness") is not None:
        from smearlab.metrics.robustness import noisy_dataset
        noisy = noisy_dataset(test, seed=seed)
        n_preds = predict(model, noisy, batch_size=1, device=dev, score_floor=0.05, progress=False)
        result.update(_headline("", segmentation_metrics(noisy, n_preds, score_threshold=thr), "_noisy"))
        n_ts, _ = _timed_two_stage(n_preds, crop_unet, noisy, dev)
        result.update(_headline("_two_stage", segmentation_metrics(noisy, n_ts, score_threshold=thr), "_noisy"))
        n_cl = classical.segment_dataset(noisy, spec["fn"], **spec["kwargs"])
        result.update(_headline("_classical", segmentation_metrics(noisy, n_cl, score_threshold=0.0), "_noisy"))
        if learned:
            n_l, _ = predict_learned(l_model, post, noisy, dev)
            result.update(_headline("_learned", segmentation_metrics(noisy, n_l, score_threshold=0.0), "_noisy"))
        result["noise"] = {"mean_frac": 0.05, "var_frac": 0.10, "seed": seed}
    elif noise:
        result["noise"] = "smearlab.metrics.robustness not available: no noisy figures"
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the dsb2018_subset folder")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--epochs", type=int, help="override the preset's training epochs")
    ap.add_argument("--no-noise", action="store_true", help="skip the noisy-image evaluation")
    ap.add_argument("--threads", type=int, help="torch CPU threads (1 is much faster on a busy shared CPU)")
    ap.add_argument("--learned-budget", type=float, default=20, help="minutes of training of the learned segmenter "
                    "(0: leave it out)")
    ap.add_argument("--selection-budget", type=float, default=5, help="minutes per variant and fold when choosing "
                    "its outputs")
    ap.add_argument("--selection-folds", type=int, default=3, help="folds of the training images for that choice "
                    "(1: the 4 validation images only)")
    ap.add_argument("--name", default="segmentation_dsb", help="results/<name>.json (another name keeps the "
                    "recorded run, e.g. for a run without the learned segmenter)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    r = run(args.preset, args.data, args.device, seed=args.seed, noise=not args.no_noise, epochs=args.epochs,
            learned_budget=args.learned_budget, selection_budget=args.selection_budget,
            selection_folds_k=args.selection_folds)
    print(f"\n{'':24s} {'Mask R-CNN':>11s} {'two-stage':>11s} {'classical':>11s} {'learned':>11s}   "
          f"({r['classical_method']})")
    for key in ("dsb_metric", "dsb_mask_ap50", "dsb_mask_map", "dsb_count_error"):
        for sfx in ("", "_noisy"):
            vals = [r.get(key + who + sfx) for who in ("", "_two_stage", "_classical", "_learned")]
            if any(v is not None for v in vals):
                print(f"{key + sfx:24s} " + " ".join(f"{v:11.4f}" if isinstance(v, float) else f"{str(v):>11s}"
                                                     for v in vals))
    for method, looks in r["dsb_per_look"].items():
        print(f"DSB per look, {method:10s} " + ", ".join(f"{g} {v:.3f}" for g, v in looks.items()))
    for k, v in r["seconds_per_image"].items():
        print(f"seconds per image, {k}: " + ", ".join(f"{d} {s:.3f}" for d, s in v.items()))
    print(f"-> {save_result(args.name, r, argv, script='segmentation_dsb')}")
    return 0


if __name__ == "__main__":
    run_benchmark(main)
