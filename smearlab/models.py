"""One ``load_model(folder)`` for every trainable model: detectors (and Mask R-CNN), U-Nets and
white-cell classifiers, all saved in the one model-folder format
(:mod:`smearlab.core.model_folder`)."""
from __future__ import annotations

from .classification.model import load_classifier
from .core.model_folder import model_kind
from .detection.models import load_model as load_detector
from .segmentation.unet import load_unet

_LOADERS = {"detector": load_detector, "unet": load_unet, "classifier": load_classifier}


def load_model(folder, device="auto"):
    """The model saved in ``folder``, in eval mode on ``device``, whatever its kind.

    Parameters
    ----------
    folder : a model folder (``config.json`` + ``weights.pt``; ``thresholds.json`` and
        ``preprocess.json`` where the model has them).
    device : ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.

    Raises
    ------
    DataError
        naming the file when the folder is not a readable model folder.
    """
    return _LOADERS[model_kind(folder)](folder, device=device)
