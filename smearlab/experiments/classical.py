"""What notebook 05 runs: the classical methods scored beside a network, on the same images."""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data.derive import foreground_semantic, tile_dataset
from ..data.sample import SmearDataset
from ..metrics.instances import failure_cases, score_instances
from ..segmentation.classical import METHODS, segment
from ..segmentation.predict import predict_semantic, semantic_to_instances
from ..segmentation.train import train_unet
from ..segmentation.unet import UNet
from .profiles import dataset_label
from .segmentation import learned_row, number_text, train_learned_segmenter

#: The figures of a method's row.
ROW_KEYS = ("dsb_metric", "mask_mAP50", "count_error", "seconds_per_image")
NETWORK = "U-Net + watershed"
LEARNED = "learned instance U-Net"


def evaluate_method(dataset, method: str = "threshold", params: dict | None = None, **kw) -> tuple[dict, list]:
    """Run :func:`~smearlab.segmentation.classical.segment` on every image and score it.

    Parameters
    ----------
    dataset : SmearDataset with instance masks.
    method : one of :data:`smearlab.segmentation.classical.METHODS`.
    params, kw : the method's settings (``params`` as a dict, ``kw`` on top).

    Returns
    -------
    (metrics, predictions)
        ``metrics`` is :func:`~smearlab.metrics.instances.score_instances` plus
        ``seconds_per_image`` (segmentation only, not scoring, one CPU thread of this process).
    """
    t0 = time.perf_counter()
    preds = [segment(s.image, method, params, **kw) for s in dataset]
    spi = (time.perf_counter() - t0) / max(len(dataset), 1)
    return {**score_instances(dataset, preds), "seconds_per_image": spi}, preds


@dataclass
class ClassicalComparison:
    """Every classical method and the U-Net + watershed network on the same test images.

    Parameters
    ----------
    rows : per method (the classical ones of :data:`~smearlab.segmentation.classical.METHODS`, then
        :data:`NETWORK`) the figures of :func:`evaluate_method`; the network's row also has
        ``train_seconds``.
    predictions : per method, one prediction dict (``boxes``, ``scores``, ``masks``) per test image.
    best : the classical method with the highest DSB score on the training images (where the settings
        were chosen; the test scores are then not a maximum over methods).
    """

    rows: dict[str, dict]
    predictions: dict[str, list]
    best: str

    def table(self) -> str:
        """One Markdown row per method: DSB score, mask AP50, count error, seconds per image."""
        lines = ["| method | DSB | mask AP50 | count error | s/image |", "|---|---|---|---|---|"]
        for name, r in self.rows.items():
            lines.append(f"| {name}{' (best classical)' if name == self.best else ''} | "
                         f"{number_text(r['dsb_metric'])} | {number_text(r['mask_mAP50'])} | "
                         f"{number_text(r['count_error'])} | {r['seconds_per_image']:.3f} |")  # undefined: n/a, not a measured 0
        return "\n".join(lines)


def compare_classical(splits: dict[str, SmearDataset], params: dict, s, *, native: bool, seed: int = 0,
                      device="auto", out=None) -> ClassicalComparison:
    """Score every classical method on ``splits["test"]`` and train a U-Net on the training
    foreground whose class map is split into instances by the same watershed.

    Parameters
    ----------
    splits : ``{"train", "test"}`` (:func:`smearlab.data.splits.instance_splits`).
    params : classical settings (:func:`~smearlab.segmentation.classical.suggest_params`).
    s : settings (:func:`smearlab.experiments.profiles.settings` for ``"05_classical"``):
        ``epochs``, ``unet_size``, ``unet_depth``, ``lr``, ``max_tiles``.
    native : train the U-Net on native-resolution 128-px tiles (real images of mixed sizes)
        instead of letterboxing whole images to ``s.unet_size``.
    seed, device : training seed and device.
    out : folder for the U-Net's model folder (``<out>/unet``).

    Returns
    -------
    ClassicalComparison
        rows and predictions per method, the network last (with ``train_seconds``).
    """
    train, test = splits["train"], splits["test"]
    for sample in (*train, *test):  # read once, before any timer (the first method timed the reading)
        sample.image  # noqa: B018
    rows, predictions = {}, {}
    for name in METHODS:
        rows[name], predictions[name] = evaluate_method(test, name, params)
    # the best method is chosen on the training images, where its settings were tuned: chosen on
    # the test images, its test score would be the maximum of several, an optimistic figure
    on_train = {name: evaluate_method(train, name, params)[0]["dsb_metric"] for name in METHODS}
    best = max(on_train, key=lambda k: on_train[k] if on_train[k] is not None else -1)
    data = foreground_semantic(train)
    if native:
        data = tile_dataset(data, 128, max_tiles=s.max_tiles, seed=seed)
    size = None if native else s.unet_size
    torch.manual_seed(seed)
    unet = UNet(3, 2, base=8, depth=s.unet_depth)
    t0 = time.perf_counter()
    train_unet(unet, data, epochs=s.epochs, batch_size=4 if size else 8, lr=s.lr, size=size, device=device,
               seed=seed, progress=False, out_dir=None if out is None else Path(out) / "unet")
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    predictions[NETWORK] = [semantic_to_instances(m, min_distance=params["min_distance"], min_size=params["min_size"])
                            for m in predict_semantic(unet, list(test), device=device,  # its own numbering: 1 foreground
                                                      batch_size=1 if native else 8)]
    rows[NETWORK] = {**score_instances(test, predictions[NETWORK]),
                     "seconds_per_image": (time.perf_counter() - t0) / len(test), "train_seconds": train_s}
    t0 = time.perf_counter()
    learned = train_learned_segmenter(train, None, s, seed=seed, device=device)
    learned_s = time.perf_counter() - t0  # training alone, as the U-Net's
    rows[LEARNED], predictions[LEARNED] = learned_row(learned, test, device=device)
    rows[LEARNED]["train_seconds"] = learned_s
    return ClassicalComparison(rows, predictions, best)


def failure_kinds(test: SmearDataset, predictions: list) -> tuple[list[dict], dict[str, int], dict[str, int]]:
    """The failures of ``predictions`` (:func:`~smearlab.metrics.instances.failure_cases`), how many
    of each kind, and for each kind the image with the most failures of it.

    Parameters
    ----------
    test : the test split, samples with instance masks.
    predictions : one prediction dict per image of ``test`` (e.g. ``comparison.predictions[name]``).

    Returns
    -------
    (failures, counts, shown)
        the failure dicts, ``{kind: how many}`` and ``{kind: index of the image with the most
        failures of that kind}`` (the first such image on a tie).
    """
    failures = failure_cases(test, predictions)
    per_image = Counter((f["kind"], f["image"]) for f in failures)
    shown: dict[str, int] = {}
    for (kind, image), n in per_image.items():
        if kind not in shown or n > per_image[(kind, shown[kind])] \
                or (n == per_image[(kind, shown[kind])] and image < shown[kind]):
            shown[kind] = image
    return failures, dict(Counter(f["kind"] for f in failures)), shown


def classical_record(dataset, splits: dict[str, SmearDataset], comparison: ClassicalComparison, params: dict,
                     kinds: dict[str, int]) -> dict[str, Any]:
    """The headline numbers notebook 05 records.

    Parameters
    ----------
    dataset : the notebook's ``dataset`` parameter (named as :func:`~.profiles.dataset_label` does).
    splits : ``{"train", "test"}`` datasets the comparison used.
    comparison : the result of :func:`compare_classical`.
    params : the classical settings used (``channel_scores`` is left out of the record).
    kinds : how many failures of each kind the best classical method made (:func:`failure_kinds`).
    """
    rows = comparison.rows
    return {"dataset": dataset_label(dataset), "images": {k: len(splits[k]) for k in ("train", "test")},
            "methods": {k: {m: v[m] for m in ROW_KEYS} for k, v in rows.items() if k not in (NETWORK, LEARNED)},
            "best_classical": comparison.best,
            "network": {m: rows[NETWORK][m] for m in (*ROW_KEYS, "train_seconds")},
            "learned": {m: rows[LEARNED][m] for m in (*ROW_KEYS, "train_seconds")},
            "params": {k: v for k, v in params.items() if k != "channel_scores"}, "failures": kinds}
