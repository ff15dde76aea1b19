"""One ``load_model(folder)`` for every trainable model: detectors (and Mask R-CNN), U-Nets (class
maps, and the learned instance segmenter), white-cell classifiers and detector + classifier cascades, all
saved in the one model-folder format (:mod:`smearlab.core.model_folder`)."""
from __future__ import annotations

from .classification.model import load_classifier
from .classification.predict import load_cascade
from .core.model_folder import model_kind, read_config_json
from .detection.models import load_model as load_detector
from .segmentation.instances import load_instance_unet
from .segmentation.unet import load_unet

_LOADERS = {"detector": load_detector, "unet": load_unet, "classifier": load_classifier, "cascade": load_cascade}


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
    kind = model_kind(folder)
    if kind == "unet" and read_config_json(folder).get("task") == "instances":
        return load_instance_unet(folder, device=device)
    return _LOADERS[kind](folder, device=device)
