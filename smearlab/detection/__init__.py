"""Object detection and instance segmentation (Mask R-CNN): models, training, prediction,
post-processing and threshold tuning.

The training names are imported on first use, so that ``python -m smearlab.detection.train``
(and torchrun) do not import the training module twice.
"""
import importlib

# builders, saving and loading (config.json / thresholds.json beside the weights)
from .models import (ARCHS, MASK_ARCHS, DetectorConfig, build_detector, count_parameters,  # noqa: F401
                     is_mask_model, load_model, read_config, save_model, unwrap)
# raw prediction cache, per-class thresholds and NMS
from .postprocess import RawPredictions, Selector, postprocess, select  # noqa: F401
# batched and tiled inference
from .predict import empty_prediction, merge_tiles, predict, tile_windows  # noqa: F401
from .tune import Thresholds, auto_tune  # noqa: F401

# training loop (AMP, checkpoints, resume, DDP under torchrun)
_TRAIN = ("History", "TrainConfig", "default_evaluate", "param_digest", "train_detector")


def __getattr__(name):
    if name in _TRAIN:
        return getattr(importlib.import_module(f"{__name__}.train"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
