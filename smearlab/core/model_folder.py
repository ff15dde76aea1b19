"""The one folder format every trainable model is saved in, and reading it back.

Layout::

    <folder>/weights.pt       {"format": "smearlab-model/1", "kind", "class_names", "state_dict"}
    <folder>/config.json      {"kind", ...}: everything needed to rebuild the model, the save's
                              id and the side files below that belong to it ("side_files")
    <folder>/thresholds.json  tuned thresholds, where the task has them (detectors)
    <folder>/preprocess.json  the preprocessing pipeline the model was trained with, if any
    <folder>/train_config.json  the training settings (the recipe a fine-tuning run repeats), if any

``kind`` is ``"detector"``, ``"unet"`` or ``"classifier"``; :func:`smearlab.models.load_model`
reads any of them. A ``"cascade"`` folder holds a ``config.json`` and two model folders,
``detector/`` and ``classifier/`` (:func:`smearlab.classification.predict.save_cascade`). Weights are read with ``torch.load(weights_only=True)`` (tensors and plain
containers only); every file is written atomically. Detector folders written before ``kind``
existed (a ``config.json`` with an ``arch``) still read as detectors.

A save writes ``weights.pt``, then ``config.json``, then the side files, each atomically and each
carrying the save's id. A save interrupted part-way leaves a folder that reading refuses, naming
the file (weights and config of two saves; a side file the config lists missing or from another
save), never one that loads without its thresholds or pipeline; save the model again.
"""
from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from .errors import DataError
from .files import atomic_path, json_text, read_torch_file, write_json, write_text

log = logging.getLogger("smearlab.core.model_folder")

#: The ``format`` tag of ``weights.pt``.
FORMAT = "smearlab-model/1"
#: Earlier tags that read the same way (detector folders before one format served every model).
OLD_FORMATS = ("smearlab-detector/1",)
KINDS = ("detector", "unet", "classifier", "cascade")


@dataclass
class ModelFolder:
    """What a model folder holds (see the module docstring).

    Parameters
    ----------
    folder : the model folder.
    kind : ``"detector"``, ``"unet"`` or ``"classifier"`` (see :data:`KINDS`).
    config : the settings of ``config.json`` that rebuild the model (without ``kind``).
    state_dict : the weights, ``module.`` prefixes removed.
    meta : the other entries of ``weights.pt`` (``format``, ``kind``, ``class_names``, ``epoch``...).
    thresholds : the content of ``thresholds.json``, or None when the folder has none.
    preprocess : the content of ``preprocess.json``, or None when the folder has none.
    """

    folder: Path
    kind: str
    config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)
    thresholds: dict | None = None
    preprocess: dict | None = None


def save_model_folder(folder, kind: str, model: torch.nn.Module, config: Mapping[str, Any], *,
                      class_names=None, thresholds=None, preprocess=None, train_config=None, side_files: bool = True,
                      **meta) -> Path:
    """Write ``model`` into ``folder`` as ``kind``.

    Parameters
    ----------
    folder : the model folder (created if needed).
    kind : one of :data:`KINDS`.
    model : the module whose ``state_dict`` is saved (moved to the CPU).
    config : the JSON-ready settings that rebuild it (``kind`` is added).
    class_names : the classes the model's outputs index, stored beside the weights too so that a
        config and weights of different class lists are caught on reading.
    thresholds, preprocess, train_config : dicts (or objects with ``to_dict()``) written as
        ``thresholds.json`` / ``preprocess.json`` / ``train_config.json``, each with the save's
        ``save_id`` (reading ignores, with a warning, one left by another save); None removes the
        file an earlier save into the same folder left (it belonged to another model). Each is
        turned into JSON before any file is written, so one that cannot be fails first.
    side_files : whether the kind's loader reads those side files; False refuses them (a U-Net or
        classifier given a pipeline would be loaded without it and predict silently without it).
    meta : further plain values kept in ``weights.pt`` (e.g. ``epoch``).

    Returns
    -------
    Path
        ``folder``.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}; kinds: {', '.join(KINDS)}")
    given = [n for n, v in (("thresholds", thresholds), ("preprocess", preprocess), ("train_config", train_config))
             if v is not None]
    if given and not side_files:
        raise TypeError(f"a {kind} model folder keeps no {', '.join(given)}: a loaded model would silently go "
                        "without it")
    folder = Path(folder)
    meta = _plain_meta(meta)
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}  # one layout on disk
    # weights.pt and config.json carry the same save id: a save interrupted between the two files
    # (each written atomically) leaves a pair that reading refuses rather than mixes
    save_id = uuid.uuid4().hex
    payload = {"format": FORMAT, "kind": kind, "class_names": None if class_names is None else list(class_names),
               "state_dict": sd, "save_id": save_id, **meta}
    # the JSON files as text first: one that cannot be written fails before the folder is touched;
    # each carries the save id, so that one left by another save is never read as this model's
    side = {name: None if value is None else
            json_text({**(value.to_dict() if hasattr(value, "to_dict") else dict(value)), "save_id": save_id})
            for name, value in (("thresholds.json", thresholds), ("preprocess.json", preprocess),
                                ("train_config.json", train_config))}
    # config.json lists the side files of this save: one missing, or left by another save (this
    # save interrupted before it was written), is refused on reading, never used or skipped silently
    config_text = json_text({"kind": kind, **dict(config), "save_id": save_id,
                             "side_files": [name for name, text in side.items() if text is not None]})
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "weights.pt") as tmp:
        torch.save(payload, tmp)
    write_text(folder / "config.json", config_text)
    for name, text in side.items():
        if text is not None:
            write_text(folder / name, text)
        elif (folder / name).exists():  # an earlier model's file: it would be read as this one's
            (folder / name).unlink()
    return folder


def warn_other_version(where, name: str, saved: int | None, current: int, change: str) -> None:
    """Warn when a model folder was saved with another version of what its model reads (its input
    channel, its measured features): it still loads, but its predictions shift a little.

    Parameters
    ----------
    where : the folder (or model) named in the warning.
    name : what the version is of (e.g. ``"input channel"``).
    saved : the version the folder records (None: saved before versions were recorded, version 1).
    current : this code's version.
    change : what changed since, in words.
    """
    if (saved or 1) != current:
        log.warning("%s: saved with the %s of version %s; this version (%d) %s: predictions shift slightly; "
                    "train it again for exact ones", where, name, saved or 1, current, change)


def _plain_meta(meta: Mapping[str, Any]) -> dict[str, Any]:
    """``meta`` as values the folder's reader accepts (``torch.load(weights_only=True)``): numpy
    numbers as Python numbers, arrays as lists; anything else that reader refuses is a TypeError
    before a file is written (an epoch given as ``np.int64`` made a folder that could not be read)."""
    import io

    def plain(v):
        if isinstance(v, np.generic):
            return v.item()
        if isinstance(v, np.ndarray):
            return v.tolist()
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v] if isinstance(v, list) else tuple(plain(x) for x in v)
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    out = {k: plain(v) for k, v in meta.items()}
    buf = io.BytesIO()
    torch.save(out, buf)
    buf.seek(0)
    try:
        torch.load(buf, weights_only=True)
    except Exception as e:  # pickle's own errors: the reader would refuse the folder
        raise TypeError(f"model folder meta {sorted(out)}: a value the folder's reader cannot read back ({e}); give "
                        "numbers, text, lists or dicts of them") from None
    return out


def write_side_file(folder, name: str, value) -> None:
    """Replace (or remove) one JSON file of a saved model folder (``thresholds.json``,
    ``preprocess.json`` or ``train_config.json``), tied to the folder's save like the files
    :func:`save_model_folder` writes.

    Parameters
    ----------
    folder : the model folder.
    name : the file's name.
    value : a dict (or an object with ``to_dict()``); None removes the file (a side file deleted by
        hand is refused on reading, as a save interrupted before writing it would be).
    """
    if name not in SIDE_FILES:
        raise ValueError(f"{name!r} is not one of a model folder's files {SIDE_FILES}")
    config = _config_with_id(folder)
    save_id = config.get("save_id")
    listed = config.get("side_files")
    path = Path(folder) / name
    if value is None:  # unlisted first: an interruption leaves an unlisted file, which is not used
        if isinstance(listed, list) and name in listed:
            write_text(Path(folder) / "config.json",
                       json_text({**config, "side_files": [n for n in listed if n != name]}))
        path.unlink(missing_ok=True)
        return
    d = value.to_dict() if hasattr(value, "to_dict") else dict(value)
    write_json(path, {**d, "save_id": save_id} if save_id is not None else d)
    if isinstance(listed, list) and name not in listed:  # written first: an interruption leaves it unlisted, unused
        write_text(Path(folder) / "config.json", json_text({**config, "side_files": [*listed, name]}))


def model_kind(folder) -> str:
    """The ``kind`` a model folder holds (from its ``config.json``).

    Parameters
    ----------
    folder : the model folder.

    Raises
    ------
    DataError
        naming the file when the folder has no readable ``config.json`` or an unknown kind.
    """
    config = read_config_json(folder)
    kind = config.get("kind") or ("detector" if "arch" in config else None)
    if kind not in KINDS:
        raise DataError(Path(folder) / "config.json",
                        f"unknown model kind {kind!r} (expected one of {', '.join(KINDS)}); "
                        "not a smearlab model folder?")
    return kind


def read_config_json(folder) -> dict[str, Any]:
    """The ``config.json`` of a model folder as a dict (without its ``save_id``);
    :class:`DataError` naming it otherwise.

    Parameters
    ----------
    folder : the model folder.
    """
    d = _config_with_id(folder)
    d.pop("save_id", None)
    d.pop("side_files", None)
    return d


def _config_with_id(folder) -> dict[str, Any]:
    p = Path(folder) / "config.json"
    if not p.is_file():
        raise DataError(p, "model folder has no config.json (not a saved smearlab model?)")
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DataError(p, f"not a readable JSON file: {e}") from None
    if not isinstance(d, dict):
        raise DataError(p, f"expected a JSON object of model settings, got a {type(d).__name__}")
    return d


def read_model_folder(folder, kind: str | None = None) -> ModelFolder:
    """Read a model folder (its weights and JSON files), checking its ``kind`` when given.

    Parameters
    ----------
    folder : the model folder.
    kind : the expected kind (one of :data:`KINDS`), or None to accept any.

    Returns
    -------
    ModelFolder

    Raises
    ------
    DataError
        naming the file: a missing or unreadable ``config.json`` or ``weights.pt``, weights that
        are not a state dict, a folder of another kind, class names in ``weights.pt`` and
        ``config.json`` that differ (names or order), an unreadable ``thresholds.json`` or
        ``preprocess.json``.
    """
    folder = Path(folder)
    found = model_kind(folder)
    if kind is not None and found != kind:
        raise DataError(folder / "config.json", f"this folder holds a {found}, not a {kind}")
    raw = _config_with_id(folder)  # with its save id and side-file list, for the side files below
    config = dict(raw)
    config.pop("kind", None)
    save_id = config.pop("save_id", None)
    config.pop("side_files", None)
    wpath = folder / "weights.pt"
    obj = read_torch_file(wpath, "model weights")
    if isinstance(obj, dict) and isinstance(obj.get("format"), str) and obj["format"] not in (FORMAT, *OLD_FORMATS):
        # before the state dict is looked for: a later format may keep its weights elsewhere
        raise DataError(wpath, f"unknown weights format {obj['format']!r} (expected {FORMAT!r}): saved by a newer "
                               "smearlab? update it to read this folder")
    state_dict, meta = state_dict_of(obj, wpath)
    # weights of a save beside a config.json without a save id: a folder saved before save ids existed,
    # saved over and interrupted after weights.pt (written first), was read as one model. (A bare state
    # dict or a training checkpoint put beside a saved config.json carries no id: read, its class names
    # checked against the config's when it has them, with a warning when it has none.)
    if (meta.get("save_id") is not None and save_id is None) or \
            (save_id is not None and meta.get("save_id") is not None and save_id != meta["save_id"]):
        raise DataError(wpath, f"weights.pt and {folder / 'config.json'} come from two different saves (a save "
                               "interrupted between them?): the model would be rebuilt with another model's "
                               "settings; save it again")
    if meta.get("format") not in (None, FORMAT, *OLD_FORMATS):
        raise DataError(wpath, f"unknown weights format {meta.get('format')!r} (expected {FORMAT!r})")
    saved_names = meta.get("class_names")
    if saved_names is None and isinstance(meta.get("model_config"), dict):  # a training checkpoint
        saved_names = meta["model_config"].get("class_names")
    if saved_names is None and config.get("class_names") is not None:
        log.warning("%s carries no class names (a bare state dict): the class order of %s cannot be checked "
                    "against the weights", wpath, folder / "config.json")
    if saved_names is not None and config.get("class_names") is not None \
            and [str(c) for c in saved_names] != [str(c) for c in config["class_names"]]:
        raise DataError(wpath, f"the weights' classes {list(saved_names)} differ from the classes "
                               f"{list(config['class_names'])} of {folder / 'config.json'}: every prediction "
                               "would carry the wrong name")
    return ModelFolder(folder, found, config, state_dict, meta, read_side_file(folder, "thresholds.json", raw),
                       read_side_file(folder, "preprocess.json", raw))


def state_dict_of(obj, path) -> tuple[dict, dict]:
    """``(state dict, metadata)`` from a weights file: a smearlab model folder's ``weights.pt``, a
    training checkpoint (``{"model": ...}``) or a raw state dict; a ``module.`` prefix (DDP) is
    removed.

    Parameters
    ----------
    obj : the object loaded from the weights file (see :func:`~smearlab.core.files.read_torch_file`).
    path : the file it was read from, named in the :class:`DataError` when it holds no state dict.

    Returns
    -------
    tuple of dict
        the state dict (parameter names to tensors) and the metadata: the other entries of a
        ``weights.pt``, the ``model_config`` of a training checkpoint, or empty.
    """
    meta = {}
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        meta = {k: v for k, v in obj.items() if k != "state_dict"}
        obj = obj["state_dict"]
    elif isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        meta = {k: v for k, v in obj.items() if k == "model_config"}
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise DataError(path, "not a state dict (expected a mapping of parameter names to tensors)")
    obj = {(k[7:] if k.startswith("module.") else k): v for k, v in obj.items()}
    return obj, meta


#: The optional JSON files of a model folder.
SIDE_FILES = ("thresholds.json", "preprocess.json", "train_config.json")


def read_side_file(folder, name: str, config: dict | None = None) -> dict | None:
    """One optional JSON file of a model folder as a dict (without its ``save_id``), or None when
    there is none, or when it was left by an earlier save that the folder's save does not list
    (warned: the model is used without it).

    Parameters
    ----------
    folder : the model folder.
    name : the file's name (one of :data:`SIDE_FILES`).
    config : the folder's ``config.json`` as read, with its ``save_id`` and ``side_files`` (None:
        read here).

    Raises
    ------
    DataError
        naming the file when it is not a JSON object, or when ``config.json`` lists it as part of
        its save and it is missing or belongs to another save (a save interrupted between its
        files): the model would otherwise run without its thresholds or pipeline, or with another
        model's.
    """
    p = Path(folder) / name
    config = _config_with_id(folder) if config is None else config
    save_id = config.get("save_id")
    listed = config.get("side_files")
    expected = isinstance(listed, list) and name in listed
    if not p.is_file():
        if expected:
            raise DataError(p, f"missing, though {Path(folder) / 'config.json'} lists it as part of the model (a save "
                               "interrupted before it was written?): the model would run without it; save it again")
        return None
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DataError(p, f"invalid JSON: {e}") from e
    if not isinstance(d, dict):
        raise DataError(p, f"expected a JSON object, got a {type(d).__name__}")
    own = d.pop("save_id", None)
    if own is not None and save_id is not None and own != save_id:
        if expected:
            raise DataError(p, "belongs to another save of this folder than its weights and config.json, which list "
                               "it as part of the model (a save interrupted between its files?): the model would run "
                               "with another model's settings, or without its own; save it again")
        log.warning("%s belongs to another save of this folder than its weights (a save interrupted between "
                    "its files?): ignored; save the model again", p)
        return None
    return d
