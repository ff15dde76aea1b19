"""Experiment settings in one place: each notebook's quick and full profiles, on a CPU and on a
GPU, on the synthetic default and on real data, and the real dataset each notebook reads under
``smearlab report --data-root``.

A notebook's parameters cell leaves its knobs at None; :func:`settings` fills them from the
profile, so that ``quick`` / ``full``, the device and the data decide the defaults here and a
value the user sets always wins.
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

#: Real dataset each notebook uses when ``--data-root`` is given (relative to the root).
REAL_DATA = {
    "01_eda": "cbc/Training",
    "02_preprocessing": "wbc_zheng.tar.xz",
    "03_detection": "cbc",
    "04_segmentation": "dsb2018_subset",
    "05_classical": "dsb2018_subset",
    "06_gradcam_masks": "wbc_zheng.tar.xz",
    "07_domain_adaptation": "wbc_zheng.tar.xz",
    "08_tsne": "wbc_zheng.tar.xz",
    "09_counting": "cbc",
}

#: Detector training on a CPU: small batches read by the DataLoader.
CPU_RECIPE = {"batch_size": 4, "lr": 0.02, "warmup_iters": 20}
#: The detectors' CPU recipe, the one ``benchmarks/detection_cbc.py --preset cpu`` measures and
#: notebooks 03 and 09 train with: the above with the default augmentation
#: (:func:`smearlab.augment.default_augment`), a cosine schedule after 30 warm-up steps and a
#: moving average of the weights (``TrainConfig.ema_decay``): paired with the raw weights of the
#: same runs on CBC the average scored validation mAP -0.006 to +0.008 (mean about +0.003 over
#: eight runs) and Testing -0.003 to +0.005 (mean about +0.001; benchmarks/RESULTS.md).
CPU_DETECTION_RECIPE = {**CPU_RECIPE, "warmup_iters": 30, "lr_schedule": "cosine", "augment": "default",
                        "ema_decay": 0.998}
#: Quick mode's detector recipe: the same without augmentation. Eight epochs on 32 synthetic
#: images are too short for it to pay: notebook 03's quick model trained in 26 s with it and 14 s
#: without and scored mAP50 0.31 against 0.33 (2026-12-06, two cores; two quick runs of the same
#: settings differ by about 0.05, the CPU's backward pass not being bit-reproducible).
QUICK_DETECTION_RECIPE = {**CPU_DETECTION_RECIPE, "augment": None}
#: Detector training on one CUDA GPU: batches of 16 at a linearly scaled learning rate, mixed
#: precision, the training images kept on the GPU (no DataLoader) and augmented there in batches.
#: Notebook 03's full profile on CUDA and ``benchmarks/detection_cbc.py --preset gpu`` use it.
GPU_RECIPE = {"batch_size": 16, "lr": 0.04, "warmup_iters": 100, "lr_schedule": "cosine", "amp": True,
              "data_on_gpu": True, "num_workers": 0, "augment": "default"}

#: Per notebook: the "quick" and "full" profiles, then overlays applied on top of the full or
#: quick profile: "real" (a dataset path instead of the synthetic default) and "gpu" (the
#: full profile on CUDA).
PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    "01_eda": {"quick": {"colour_images": 60}, "full": {"colour_images": None}},
    "02_preprocessing": {"quick": {"stat_images": 12}, "full": {"stat_images": 60}},
    "03_detection": {
        "quick": {"runs": [["tiny", "fasterrcnn_tiny", False], ["tiny, frozen backbone", "fasterrcnn_tiny", True]],
                  "epochs": 8, "input_size": 384, "recipe": QUICK_DETECTION_RECIPE, "budget_minutes": None,
                  "anchors": "fit"},
        "full": {"runs": [["Faster R-CNN v2", "fasterrcnn_v2", False], ["RetinaNet", "retinanet", False],
                          ["Faster R-CNN v2, frozen backbone", "fasterrcnn_v2", True]],
                 "epochs": 40, "input_size": 640, "recipe": CPU_DETECTION_RECIPE, "budget_minutes": None,
                 "anchors": "fit"},
        "gpu": {"recipe": GPU_RECIPE},
    },
    "04_segmentation": {
        "quick": {"arch": "maskrcnn_tiny", "epochs": 6, "input_size": 240, "recipe": CPU_RECIPE, "unet_epochs": 8,
                  "unet_base": 8, "unet_size": 160, "crop_images": 8, "crop_size": 48, "crop_base": 8,
                  "learned_steps": 150, "learned_base": 8, "learned_depth": 3, "learned_crop": 64, "learned_minutes": None},
        "full": {"arch": "maskrcnn", "epochs": 60, "input_size": 512, "recipe": CPU_RECIPE, "unet_epochs": 80,
                 "unet_base": 32, "unet_size": None, "crop_images": None, "crop_size": 96, "crop_base": 16,
                 "learned_steps": 3000, "learned_base": 16, "learned_depth": 4, "learned_crop": 128, "learned_minutes": 20},
    },
    "05_classical": {
        "quick": {"epochs": 20, "unet_size": 128, "unet_depth": 3, "lr": 1e-2, "max_tiles": 64,
                  "learned_steps": 150, "learned_base": 8, "learned_depth": 3, "learned_crop": 64, "learned_minutes": None},
        "full": {"epochs": 40, "unet_size": 512, "unet_depth": 4, "lr": 3e-3, "max_tiles": None,
                 "learned_steps": 3000, "learned_base": 16, "learned_depth": 4, "learned_crop": 128, "learned_minutes": 20},
        "quick+real": {"epochs": 12},
    },
    "06_gradcam_masks": {
        "quick": {"epochs": 12, "input_size": 48, "width": 8, "synthetic_crops": 100, "classical_candidates": 5,
                  "detector_smears": 17, "detector_epochs": 12},
        "full": {"epochs": 60, "input_size": 96, "width": 32, "synthetic_crops": 400, "classical_candidates": None,
                 "detector_smears": 60, "detector_epochs": 30},
    },
    "07_domain_adaptation": {
        "quick": {"seeds": 2, "steps": 100, "crop_size": 48, "width": 8, "n_synthetic": 100},
        "full": {"seeds": 5, "steps": 250, "crop_size": 64, "width": 16, "n_synthetic": 200},
        "gpu": {"steps": 1500, "crop_size": 96, "width": 32},
    },
    "08_tsne": {
        "quick": {"steps": 60, "input_size": 48, "width": 8, "n_synthetic": 120},
        "full": {"steps": 250, "input_size": 64, "width": 16, "n_synthetic": 400},
    },
    "09_counting": {
        "quick": {"arch": "fasterrcnn_tiny", "epochs": 8, "input_size": 256, "recipe": QUICK_DETECTION_RECIPE,
                  "review": 3, "finetune_epochs": 2},
        "full": {"arch": "fasterrcnn_tiny", "epochs": 16, "input_size": 480, "recipe": CPU_DETECTION_RECIPE,
                 "review": 10, "finetune_epochs": 4},
    },
}


def settings(notebook: str, *, quick: bool = True, gpu: bool = False, real_data: bool = False,
             **given) -> SimpleNamespace:
    """The settings of one notebook run: the profile's, with every value the user gave on top.

    Parameters
    ----------
    notebook : the notebook's name, e.g. ``"03_detection"``.
    quick : the quick profile (about a minute on a CPU) or the full one.
    gpu : the run is on CUDA (the full profile's GPU overlay applies).
    real_data : a dataset path rather than the synthetic default (the "real" overlays apply).
    given : the notebook's own parameters; None leaves the profile's value.

    Returns
    -------
    types.SimpleNamespace
        one attribute per setting (``s.epochs``, ``s.recipe`` ...).
    """
    if notebook not in PROFILES:
        raise ValueError(f"no profile for notebook {notebook!r}; profiles: {', '.join(PROFILES)}")
    table = PROFILES[notebook]
    base = "quick" if quick else "full"
    out = dict(table[base])
    if real_data:
        out.update(table.get(f"{base}+real", {}))
    if gpu and not quick:
        out.update(table.get("gpu", {}))
    unknown = sorted(set(given) - set(out))
    if unknown:
        raise ValueError(f"{notebook}: no setting {unknown[0]!r}; settings: {', '.join(sorted(out))}")
    out.update({k: v for k, v in given.items() if v is not None})
    return SimpleNamespace(**out)


def dataset_label(dataset) -> str:
    """How a report names a notebook's dataset: ``"synthetic"`` (or ``"synthetic-A"``), else the
    last part of its path (``wbc_zheng.tar.xz``, ``cbc``).

    Parameters
    ----------
    dataset : a notebook's ``dataset`` parameter: ``"synthetic..."`` or a path (str or Path).
    """
    return str(dataset) if str(dataset).startswith("synthetic") else Path(str(dataset).rstrip("/")).name
