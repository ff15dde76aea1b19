"""Object detection: models, training, prediction, post-processing and threshold tuning."""

# post-processing and threshold tuning (raw prediction cache, per-class thresholds, tuner widget)
from .postprocess import RawPredictions, Selector, postprocess, select  # noqa: F401
from .tune import Thresholds, auto_tune  # noqa: F401
