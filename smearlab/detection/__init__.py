"""Object detection: models, training, prediction, post-processing and threshold tuning.

Names are imported on first use, so that ``python -m smearlab.detection.train`` (and torchrun)
do not import the training module twice, and ``import smearlab.detection`` stays light.
"""
import importlib

_EXPORTS = {
    # builders, saving and loading (config.json / thresholds.json beside the weights)
    "models": ["ARCHS", "DetectorConfig", "build_detector", "count_parameters", "load_model",
               "read_config", "resolve_device", "save_model", "unwrap"],
    # training loop (AMP, checkpoints, resume, DDP under torchrun)
    "train": ["History", "TrainConfig", "default_evaluate", "param_digest", "train_detector"],
    # batched and tiled inference
    "predict": ["empty_prediction", "merge_tiles", "predict", "tile_windows"],
    # raw prediction cache, per-class thresholds and NMS
    "postprocess": ["RawPredictions", "Selector", "postprocess", "select"],
    "tune": ["Thresholds", "auto_tune"],
}
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
