"""``smearlab predict``: a saved detector (or cascade) over folders of new images, with per-image results and counts.

:func:`predict` (also ``smearlab.predict``) takes a model folder and image files, folders or a
dataset, and writes into ``out``::

    run.json               the model folder and settings of the run (a re-run must match them)
    json/<image>.json      one per image: class, score, box, polygon of every object
                           (:func:`smearlab.export.image_record`); with ``scale``, the
                           ``zoom`` the image was predicted at (chosen per image by "auto")
    overlays/<image>.png   the image with its boxes drawn (``overlays=True``)
    counts.csv             one row per image: the count of each class and the total (and the
                           zoom with ``scale``); with a
                           cascade, the count and percentage of each white-cell type and
                           the white cells left untyped
    summary.json           images done, resumed and failed (with the reason), counts per class,
                           each image's output stem (``stems``),
                           images/s; with a dataset, the count error per class against its truth
    coco.json              every image and object as COCO (CVAT imports it as "COCO 1.0")
    coco_results.json      the COCO results list (``image_id``, ``category_id``, ``bbox``, ``score``),
                           in the ids of this folder's coco.json (images 1..n, classes 1..K):
                           score it against that file, not against a dataset's own COCO file
    qupath/<image>.geojson one FeatureCollection per image, as QuPath imports it

Every file is written atomically. A re-run with the same model, settings and ``out`` skips the
images whose JSON is already there and whose file has not changed since (each record keeps the
image's digest; an interrupted run resumes where it stopped), draws the overlays the earlier run
did not, and rewrites the summaries from all of them. An image that cannot be read or predicted is counted and listed in
``summary.json``, never fatal to the run.

Detectors (Faster R-CNN, RetinaNet, Mask R-CNN folders), detector + white-cell classifier
cascades, the learned instance segmenter and U-Nets of class maps (their foreground split into
objects) are supported; the U-Nets' objects are of class ``"object"`` with their outlines, and a
dataset's classes are counted as one.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from .classification.predict import classify_boxes, load_cascade
from .core.errors import DataError
from .core.files import write_json, write_text
from .core.model_folder import model_kind, read_config_json
from .data.classes import match_classes
from .data.derive import as_single_class
from .data.imageio import check_bits, read_image
from .data.predictions import DEFAULT_SCORE
from .detection.models import auto_tile, load_model
from .detection.predict import predict as predict_images
from .detection.predict import predict_fields
from .detection.scale import check_object_sizes, check_zoom
from .detection.tune import Thresholds
from .export import coco_from_records, file_names, image_record, names_without_extension
from .segmentation.instances import load_instance_unet, predict_instances
from .segmentation.predict import predict_semantic, semantic_to_instances
from .segmentation.unet import load_unet

log = logging.getLogger(__name__)


#: The folders a run writes inside its output folder (never read back as input images).
RUN_FOLDERS = ("overlays", "json", "qupath")


@dataclass(frozen=True)
class ImageInput:
    """One image to predict: its file, its name (the path relative to the folder given, or the
    dataset's root) and the stem its output files take (:func:`smearlab.export.names_without_extension`).

    Parameters
    ----------
    path : the image file.
    name : its name in the outputs (the records' ``image``, the rows of ``counts.csv``).
    stem : the name of its output files (``json/<stem>.json``).
    index : its position in the dataset (dataset inputs only).
    """

    path: Path
    name: str
    stem: str
    index: int | None = None


def collect_images(inputs: Sequence[str | Path], *, pattern: str = "**/*",
                   exclude: str | Path | None = None) -> list[ImageInput]:
    """The image files named by ``inputs``: files as given, folders searched with ``pattern``.

    Output names are relative to the folder given (a file's own name for a file), so that
    ``a/x.png`` and ``b/x.png`` in one folder stay apart.

    Parameters
    ----------
    inputs : image files and folders.
    exclude : a folder whose files are never inputs (the run's output folder, when it lies inside
        an input folder: its overlays would be predicted as new images on a re-run); when it is
        an input folder itself, the folders a run writes there (:data:`RUN_FOLDERS`).
    pattern : the glob a folder is searched with (``"**/*"``: every image file below it;
        ``"*.jpg"``: the folder's own JPEGs).

    Raises
    ------
    DataError
        for an input that does not exist, a folder with no image files, or two inputs whose
        images would share an output name.
    """
    from .data.imageio import is_image_file

    if Path(pattern).is_absolute() or Path(pattern).drive:
        raise ValueError(f"the glob {pattern!r} is a path: give a pattern relative to each input folder, "
                         "e.g. '**/*.png'")
    skip = Path(exclude).resolve() if exclude is not None else None
    found: list[tuple[Path, str]] = []
    for item in inputs:
        p = Path(item)
        if p.is_file():
            found.append((p, p.name))
        elif p.is_dir():
            inside = skip is not None and skip.is_relative_to(p.resolve())  # --out is p or below it
            # the folders a run writes (overlays are images: a re-run predicted them as new ones);
            # when --out is the input folder itself, only those, not the images beside them
            written = ([skip / d for d in RUN_FOLDERS] if skip == p.resolve() else [skip]) if inside else []
            files = sorted(f for f in p.glob(pattern) if f.is_file() and is_image_file(f)
                           and not any(f.resolve().is_relative_to(w) for w in written))
            if not files:
                raise DataError(p, f"no image files match {pattern!r}")
            found += [(f, f.relative_to(p).as_posix()) for f in files]
        else:
            raise DataError(p, "no such file or folder")
    seen: dict[str, Path] = {}
    files_seen: set[Path] = set()
    unique = []
    twice = 0
    for path, name in found:
        resolved = path.resolve()
        if resolved in files_seen:  # the same file through two inputs (a file and a folder holding it): once
            twice += 1
            continue
        files_seen.add(resolved)
        if name.lower() in seen:
            raise DataError(path, f"its name {name!r} is also that of {seen[name.lower()]}; "
                                  "predict the two into different output folders")
        seen[name.lower()] = path
        unique.append((path, name))
    if twice:
        log.warning("%d image file(s) were given more than once (the same file through two inputs or names, "
                    "e.g. a file and a folder holding it): each is predicted and counted once", twice)
    stems = names_without_extension([name for _, name in unique])
    return [ImageInput(path, name, stem) for (path, name), stem in zip(unique, stems)]


def _model_id(folder: Path, out: Path | None = None) -> str:
    """A fingerprint of the model folder, stored in ``run.json``: every ``.json`` and ``.pt`` file
    in it (config, weights, thresholds, preprocessing; a cascade's two models too), those of an
    output folder ``out`` inside it left out."""
    h = hashlib.sha256()
    skip = out.resolve() if out is not None else None
    for f in sorted(folder.rglob("*")):
        if skip is not None and f.resolve().is_relative_to(skip):
            continue
        if f.is_file() and f.suffix in (".json", ".pt"):
            h.update(f.relative_to(folder).as_posix().encode())
            h.update(_file_digest(f).encode())
    return h.hexdigest()[:16]


def _file_digest(path: Path) -> str:
    """The SHA-256 of a file's bytes (hex, 16 characters)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _image_digest(im: ImageInput) -> str | None:
    """What a record stores to tell that its image has not changed since: the file's digest, or
    None when the image is not a file (a dataset's image made in memory) or cannot be read (the
    run lists it as failed)."""
    try:
        return _file_digest(im.path) if im.path.is_file() else None
    except OSError:
        return None


#: The smallest tile side asked for by hand (pixels): a tile must hold whole cells.
MIN_TILE = 32


def _forget(out: Path, im, keep_json: bool = False) -> None:
    """Remove an image's results of an earlier run: when it failed this time (a file that became
    unreadable kept its old JSON, GeoJSON and overlay beside the current results), and before its
    new ones are written (``keep_json``: the JSON is replaced atomically)."""
    for path in ([] if keep_json else [_json_path(out, im.stem)]) + [
            out / "qupath" / f"{im.stem}.geojson", out / "overlays" / f"{im.stem}.png"]:
        path.unlink(missing_ok=True)


def _check_run(out: Path, run: dict) -> None:
    """Refuse to resume into ``out`` when it holds the results of another model or settings."""
    f = out / "run.json"
    # rglob: an image in a sub-folder keeps it in its output name (glob saw no results, and the
    # check was skipped: another model's results were resumed)
    results = (out / "json").is_dir() and any((out / "json").rglob("*.json"))
    if not f.is_file():
        if results:
            raise DataError(out, "holds per-image results but no run.json, so which model made them cannot be "
                                 "told; use another --out, or remove the folder to start again")
        return
    if not results:  # a run stopped before its first image: nothing of it to keep apart (its run.json is rewritten)
        return
    try:
        old = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f, f"not a readable run file ({e}); remove it or use another --out") from None
    keys = {"model_id": None, "scale": None, "tile": None, "score": None, "tta": False,
            "dataset": None, "sensor_bits": None}  # key: value when absent
    def same(k, a, b) -> bool:  # a dataset path typed another way (./gt, an absolute path) is the same
        if k == "dataset" and a is not None and b is not None:
            return Path(a).resolve() == Path(b).resolve()
        return a == b
    diff = [k for k, absent in keys.items() if not same(k, old.get(k, absent), run.get(k, absent))]
    if diff:
        changes = ", ".join(f"{k} {old.get(k)!r} -> {run.get(k)!r}" for k in diff)
        raise DataError(out, f"holds the results of another run ({changes}; a folder written before 2026-12-06 "
                             "fingerprints the model differently); use another --out, or remove the folder to "
                             "start again")


def _json_path(out: Path, stem: str) -> Path:
    return out / "json" / f"{stem}.json"


def _done(out: Path, stem: str) -> dict | None:
    """The record already written for ``stem``, or None."""
    f = _json_path(out, stem)
    if not f.is_file():
        return None
    try:
        rec = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # cannot happen with atomic writes; predict it again
    return rec if isinstance(rec, dict) and "objects" in rec else None


def _overlay(image: np.ndarray, record: dict, path: Path, colours: dict) -> None:
    from PIL import Image, ImageDraw

    from .core.files import atomic_path

    im = Image.fromarray(image)
    draw = ImageDraw.Draw(im)
    for o in record["objects"]:
        x0, y0, x1, y1 = o["bbox"]
        draw.rectangle([x0, y0, x1, y1], outline=colours[o["class"]], width=2)
    with atomic_path(path) as tmp:
        im.save(tmp, format="PNG")


def _palette(class_names: Sequence[str]) -> dict:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return {c: tuple(int(255 * v) for v in cmap(i % 10)[:3]) for i, c in enumerate(class_names)}


def _closed(ring) -> list:
    ring = [list(map(float, pt)) for pt in ring]
    return ring + [ring[0]] if ring and ring[0] != ring[-1] else ring


def qupath_geojson(record: dict) -> dict:
    """One image's record as a GeoJSON FeatureCollection the way QuPath imports it: one
    ``detection`` per object, its outline (or box) as the polygon, its class as the
    ``classification`` and its score as a measurement.

    Parameters
    ----------
    record : a per-image record (:func:`smearlab.export.image_record`).
    """
    features = []
    for o in record["objects"]:
        if o.get("polygons"):
            geometry = _outline_geometry(o["polygons"], o.get("holes", []))
        else:
            x0, y0, x1, y1 = o["bbox"]
            geometry = {"type": "Polygon", "coordinates": [_closed([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])]}
        features.append({"type": "Feature", "geometry": geometry,
                         "properties": {"objectType": "detection", "classification": {"name": o["class"]},
                                        "measurements": {"score": o["score"]}}})
    return {"type": "FeatureCollection", "features": features}


def _outline_geometry(outers: list, holes: list) -> dict:
    """A GeoJSON Polygon (one part) or MultiPolygon (several) of an object's outlines, each hole
    with the part that holds it."""
    from skimage.measure import points_in_poly

    parts = [[_closed(p)] for p in outers]

    def area(p) -> float:  # shoelace
        a = np.asarray(p, float)
        return abs(float(np.dot(a[:, 0], np.roll(a[:, 1], 1)) - np.dot(a[:, 1], np.roll(a[:, 0], 1)))) / 2

    for h in holes:
        inside = [k for k, p in enumerate(outers) if len(h) and points_in_poly(np.asarray(h[:1], float),
                                                                              np.asarray(p, float))[0]]
        # the innermost part that holds it (a part can lie in another's hole and have holes of its own)
        parts[min(inside, key=lambda k: area(outers[k])) if inside else 0].append(_closed(h))
    if len(parts) == 1:
        return {"type": "Polygon", "coordinates": parts[0]}
    return {"type": "MultiPolygon", "coordinates": parts}


def counts_table(records: Sequence[dict], class_names: Sequence[str]) -> np.ndarray:
    """``(n_images, n_classes)`` object counts of the records.

    Parameters
    ----------
    records : per-image records (:func:`smearlab.export.image_record`).
    class_names : the columns, in label order.
    """
    idx = {c: k for k, c in enumerate(class_names)}
    table = np.zeros((len(records), len(class_names)), int)
    for i, r in enumerate(records):
        for o in r["objects"]:
            table[i, idx[o["class"]]] += 1
    return table


def _classify_white_cells(cascade, image: np.ndarray, record: dict, device) -> None:
    """Name each white cell of one image's record: ``type`` and ``type_score`` on its objects."""
    cells = [o for o in record["objects"] if o["class"] == cascade.wbc_class]
    if not cells:
        return
    found, kept = classify_boxes(cascade.classifier, image, [o["bbox"] for o in cells], pad=cascade.pad,
                                 device=device, where=str(record["image"]), fill=cascade.fill)
    for k, r in zip(kept.tolist(), found):
        cells[k]["type"], cells[k]["type_score"] = r["class"], r["score"]


def differential(records: Sequence[dict], types: Sequence[str]) -> np.ndarray:
    """``(n_images, n_types)`` white cells of each type per record (objects with a ``type``).

    Parameters
    ----------
    records : per-image records of a cascade run.
    types : the white-cell types, in the classifier's order.
    """
    idx = {t: k for k, t in enumerate(types)}
    table = np.zeros((len(records), len(types)), int)
    for i, r in enumerate(records):
        for o in r["objects"]:
            if o.get("type") in idx:
                table[i, idx[o["type"]]] += 1
    return table


def _percent(row: np.ndarray) -> list[float | None]:
    """Each type's share of the typed white cells in percent; None for all when none was typed
    (0 of 0 is no differential: read as 0 %, an image without white cells pulled means down)."""
    n = int(row.sum())
    return [round(100.0 * int(v) / n, 2) if n else None for v in row]


def _write_summaries(out: Path, names: list[str], records: dict, class_names: Sequence[str],
                     summary: dict, truth=None, mapping=None, types: Sequence[str] | None = None,
                     typed_class: str | None = None) -> None:
    ordered = [records[n] for n in names if n in records]
    table = counts_table(ordered, class_names)
    diff = differential(ordered, types) if types else None
    # white cells the classifier could not see (a box too thin to crop): counted, never in the percentages
    untyped = [sum(1 for o in r["objects"] if o["class"] == typed_class and "type" not in o) for r in ordered]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    zoomed = any("zoom" in r for r in ordered)  # a --scale run: the factor each image was predicted at
    w.writerow(["image"] + list(class_names) + ["total"]
               + ([*types, "untyped", *(f"{t} %" for t in types)] if types else []) + (["zoom"] if zoomed else []))
    for k, (r, row) in enumerate(zip(ordered, table)):
        extra = ([*diff[k].tolist(), untyped[k], *("" if v is None else v for v in _percent(diff[k]))]
                 if types else [])
        w.writerow([r["image"]] + row.tolist() + [int(row.sum())] + extra
                   + ([f"{r['zoom']:.3g}" if "zoom" in r else ""] if zoomed else []))
    write_text(out / "counts.csv", buf.getvalue())
    coco, results = coco_from_records(ordered, class_names)
    write_json(out / "coco.json", coco)
    write_json(out / "coco_results.json", results)
    summary["counts"] = {c: int(v) for c, v in zip(class_names, table.sum(0))}
    if zoomed:
        z = np.array([r["zoom"] for r in ordered if "zoom" in r])
        summary["zoom"] = {"min": float(z.min()), "median": float(np.median(z)), "max": float(z.max())}
    if types:
        totals = diff.sum(0)
        summary["differential"] = {t: int(v) for t, v in zip(types, totals)}
        summary["differential_percent"] = dict(zip(types, _percent(totals)))  # of the typed cells
        summary["differential_untyped"] = int(sum(untyped))
    if truth is not None:
        summary["count_error"] = _count_error(truth, names, records, class_names, mapping)
    write_json(out / "summary.json", summary)


def _count_error(truth, names, records, class_names, mapping) -> dict:
    """Per model class with a counterpart in the dataset (``mapping``: model -> dataset classes,
    :func:`smearlab.data.classes.match_classes`), over the images predicted: the true and
    predicted totals, mean |predicted - true| and the relative error sum|pred - true| / sum(true),
    as blood-count papers report them. COCO crowd regions (a clump boxed as one) are not true
    cells: they are left out, as every count of the dataset leaves them out."""
    have = [(i, n) for i, n in enumerate(names) if n in records]
    to_model = {int(t): m for m, t in enumerate(mapping.lut.tolist()) if t >= 0}
    true = np.zeros((len(have), len(class_names)), int)
    for row, (i, _) in enumerate(have):
        for lab in truth[i].labels[~truth[i].crowd].tolist():
            if int(lab) in to_model:
                true[row, to_model[int(lab)]] += 1
    pred = counts_table([records[n] for _, n in have], class_names)
    out = {}
    for k in sorted(to_model.values()):
        diff = np.abs(pred[:, k] - true[:, k])
        out[class_names[k]] = {"true": int(true[:, k].sum()), "predicted": int(pred[:, k].sum()),
                               "mean_abs_error": float(diff.mean()) if len(diff) else None,
                               "relative_error": float(diff.sum() / true[:, k].sum()) if true[:, k].sum() else None}
    return out


def predict(model_folder: str | Path, inputs: Sequence[str | Path] | str | Path = (), out: str | Path = "predictions",
            *, dataset: str | Path | None = None, pattern: str = "**/*", device: str = "auto",
            batch_size: int = 1, scale: float | str | None = None, tile: int | str | None = "auto",
            score: float | None = None, overlays: bool = False, progress: bool = True,
            pixel_size: float | None = None, tta: bool = False, sensor_bits: int | None = None) -> dict:
    """Predict every image of ``inputs`` (or of ``dataset``) with the detector in ``model_folder``
    and write per-image results, counts and exports into ``out`` (see the module docstring).

    Parameters
    ----------
    model_folder : a saved detector folder (``config.json``, ``weights.pt``, ``thresholds.json``), a
        U-Net folder (the learned instance segmenter,
        :func:`smearlab.segmentation.instances.save_instance_unet`, with ``tile`` its tile size,
        256 by default; or a U-Net of class maps whose foreground is split into objects;
        ``scale`` is refused for both), or
        a detector + white-cell classifier cascade
        (:func:`smearlab.classification.predict.save_cascade`): each white cell's record then
        has a ``type`` and ``type_score``, ``counts.csv`` a count and a percentage per type (the
        differential count, percentages of the typed white cells) and an ``untyped`` count (white
        cells whose box could not be cropped), ``summary.json`` ``differential``,
        ``differential_percent`` and ``differential_untyped``.
    inputs : image files and folders (searched with ``pattern``).
    out : the output folder.
    dataset : instead of ``inputs``, a dataset path :func:`smearlab.data.load` reads; its
        ground truth gives the count error per class in ``summary.json``.
    pattern : the glob folders are searched with.
    device : ``"auto"``, ``"cpu"`` or ``"cuda"``.
    batch_size : images per forward pass.
    scale : ``"auto"``: zoom each image to the training magnification, judged from its cells
        (:mod:`smearlab.detection.scale`); a number: predict every image at that zoom of the
        training magnification, whole (a field too large for one pass is refused); None: as they are.
    tile : ``"auto"``: a field more than 1.5 times larger than the model's training images is cut
        into tiles of their size, each seen at the training magnification
        (:func:`smearlab.detection.models.auto_tile`; a model folder without
        ``train_image_size`` never tiles), and a field smaller than them is seen whole at the
        training magnification (not enlarged to the model's input size); a number: tiles of this many pixels for every image;
        None: whole images. With ``scale``, ``"auto"`` does not tile.
    score : one score threshold for every class instead of the model's tuned ``thresholds.json``
        (:data:`DEFAULT_SCORE` when the folder has none).
    overlays : also write ``overlays/<image>.png``.
    progress : progress bar with images/s.
    pixel_size : the new images' pixel size in micrometres: they are resized to the training
        scale by ``pixel_size / pixel_size_um`` of the model's config (which must record it;
        instead of ``scale``).
    tta : test-time augmentation of a detector: each image (or tile) predicted as it is and
        flipped three ways, the boxes fused (:func:`smearlab.detection.predict.predict`); four
        times slower. Tuned thresholds must have been tuned the same way (``thresholds.json``
        records it; a mismatch is refused), unless ``score`` is given.
    sensor_bits : the camera's bits per value for image files wider than 8 bits (12 for 12-bit
        data in 16-bit files), so that every image is scaled to 8 bits alike; None: the value the
        model (a detector or a U-Net) recorded from its training images (``config.json``), else the range each file
        declares, else guessed per image (see :mod:`smearlab.data.imageio`).

    Returns
    -------
    dict
        the summary written to ``summary.json``.

    Raises
    ------
    DataError
        for a folder that is not a detector's model folder, inputs that name no image, or an
        ``out`` folder holding the results of another model or settings.
    """
    folder = Path(model_folder)
    kind = model_kind(folder)
    if kind not in ("detector", "cascade", "unet"):
        raise DataError(folder, f"a {kind} model folder; smearlab predict takes detectors, detector + classifier "
                                "cascades, the learned instance segmenter and U-Nets")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if score is not None and not 0.0 <= float(score) <= 1.0:  # NaN fails too
        raise ValueError(f"score must be a threshold from 0 to 1, got {score!r}")
    check_zoom(scale)
    sensor_bits = check_bits(sensor_bits)
    truth = None
    if dataset is not None:
        if inputs not in ((), None, []):
            raise ValueError("give image inputs or a dataset, not both")
        from .data import load

        truth = load(dataset, sensor_bits=sensor_bits)
        names = file_names(truth)
        items = [ImageInput(s.path if s.path is not None else Path(name), name, stem, i)
                 for i, (s, name, stem) in enumerate(zip(truth, names, names_without_extension(names)))]
    else:
        items = collect_images([inputs] if isinstance(inputs, (str, Path)) else list(inputs), pattern=pattern,
                               exclude=out)
    if not items:
        raise DataError(dataset if dataset is not None else "inputs", "no images to predict")

    if kind == "unet":
        if pixel_size is not None:  # it was passed on as the scale: the message named --scale, not what was given
            raise ValueError("pixel_size (--pixel-size) applies to detectors; a U-Net sees images as they are")
        if tta:
            raise ValueError("tta applies to detectors; the U-Net's own thresholds.json says whether it averages "
                             "flips")
        return _predict_instances(folder, items, Path(out), truth=truth, dataset=dataset, device=device,
                                  scale=scale, tile=tile, score=score,
                                  overlays=overlays, progress=progress, sensor_bits=sensor_bits)
    cascade = load_cascade(folder, device=device) if kind == "cascade" else None
    model = cascade.detector if cascade is not None else load_model(folder, device=device)
    types = cascade.types if cascade is not None else None
    cfg = model.detector_config
    class_names = list(cfg.class_names)
    sensor_bits = _bits_read_with(sensor_bits, getattr(cfg, "sensor_bits", None), truth)
    if pixel_size is not None:
        if scale is not None:
            raise ValueError("give a pixel size or a scale, not both")
        if not cfg.pixel_size_um:
            raise DataError(folder / "config.json", "the model does not record its training pixel size "
                                                    "(pixel_size_um); give --scale (a number or 'auto') instead")
        if not 0.0 < float(pixel_size) < float("inf"):
            raise ValueError(f"pixel_size must be a positive number of micrometres, got {pixel_size!r}")
        scale = float(pixel_size) / float(cfg.pixel_size_um)
        check_zoom(scale, f"the zoom pixel_size / the model's pixel_size_um ({pixel_size} / {cfg.pixel_size_um})")
    if tile == "auto":
        tile = "auto" if scale is None else None
    elif tile is not None and not (isinstance(tile, int) and tile >= MIN_TILE):
        raise ValueError(f"tile must be 'auto', None or a number of pixels of at least {MIN_TILE} (a smaller tile "
                         f"holds no whole cell), got {tile!r}")
    if scale is not None and tile:
        raise ValueError("scale and tile cannot be combined: tile a field at the model's scale, or rescale it")
    if scale == "auto" and not cfg.object_sizes:
        raise DataError(folder / "config.json", "scale='auto' needs the training scale (object_sizes), which "
                                                "this model folder does not hold; give a number instead")
    if scale == "auto":
        try:
            check_object_sizes(cfg)
        except ValueError as e:
            raise DataError(folder / "config.json", str(e)) from None
    mapping = unscored = None
    if truth is not None:
        mapping = match_classes(class_names, truth.class_names, what="the model's and the dataset's classes")
        matched = {int(t) for t in mapping.lut.tolist() if t >= 0}
        if not matched:
            raise DataError(dataset, f"none of its classes {truth.class_names} is one of the model's {class_names}")
        unscored = {"dataset classes the model does not know": [c for k, c in enumerate(truth.class_names)
                                                                 if k not in matched],
                    "model classes not in the dataset": [c for c, t in zip(class_names, mapping.lut.tolist()) if t < 0]}
        if any(unscored.values()):
            log.warning("%s: count error not scored for %s", dataset, unscored)
    if score is not None:  # the score alone replaced: the model's tuned NMS and cap stay
        kept = {k: v for k, v in (getattr(model, "thresholds", None) or {}).items()
                if k in ("nms_iou", "class_agnostic", "max_dets")}
        thresholds, threshold_source = Thresholds({c: float(score) for c in class_names}, **kept), "score"
    elif getattr(model, "thresholds", None):
        thresholds, threshold_source = "model", "thresholds.json"
        try:  # before any image: predict() would refuse every batch alike
            Thresholds(**model.thresholds).check_tta(tta)
        except ValueError as e:
            raise DataError(folder / "thresholds.json", f"{e} (--tta), or give --score") from None
    else:
        thresholds, threshold_source = Thresholds({c: DEFAULT_SCORE for c in class_names}), "default"
        log.warning("%s has no thresholds.json: every class kept at score >= %s", folder, DEFAULT_SCORE)
    used = (model.thresholds or {}).get("score", {}) if isinstance(thresholds, str) else thresholds.score

    def predict_fn(images: list) -> list[dict]:
        if tile == "auto":
            return predict_fields(model, images, batch_size=batch_size, thresholds=thresholds, tta=tta)
        # a tile size given: each tile at the training magnification, as automatic tiling does (resized
        # by the whole field's factor, tiles of a large field were shrunk: 5 times the red cells counted)
        resize = "training" if tile and getattr(cfg, "train_image_size", None) else "image"
        return predict_images(model, images, batch_size=batch_size, thresholds=thresholds, scale=scale, tile=tile,
                              tile_resize=resize, progress=False, tta=tta)

    post = None if cascade is None else (lambda img, rec: _classify_white_cells(cascade, img, rec, device))
    run = {"model": str(folder.resolve()), "model_id": _model_id(folder, Path(out)), "classes": class_names,
           "scale": scale, "tile": tile, "score": score, "tta": bool(tta), "thresholds": threshold_source,
           "dataset": str(Path(dataset).resolve()) if dataset is not None else None, "sensor_bits": sensor_bits}
    summary = _run_images(Path(out), run, items, truth, predict_fn, batch_size=batch_size, post=post,
                          overlays=overlays, progress=progress)
    summary["score_thresholds"] = {c: float(used.get(c, DEFAULT_SCORE)) for c in class_names}
    if mapping is not None:
        summary["classes_not_scored"] = unscored
    _write_summaries(Path(out), [im.name for im in items], summary.pop("_records"), class_names, summary, truth,
                     mapping, types, cascade.wbc_class if cascade is not None else None)
    return summary


def _bits_read_with(given: int | None, trained: int | None, truth) -> int | None:
    """The sensor bits new image files are read with: ``given`` (``--sensor-bits``), else the bits
    the model's training images were read with (``config.json`` ``sensor_bits``), which the
    dataset's samples (``truth``) then take too; None: each file's declared or guessed range."""
    if given is not None or not trained:
        return given
    bits = check_bits(trained)
    log.info("images read as %d-bit data, as the model's training images were (config.json sensor_bits; "
             "--sensor-bits overrides it)", bits)
    for s in truth if truth is not None else ():
        s.sensor_bits, s._image = bits, (s._image if s.path is None else None)
    return bits


def _predict_instances(folder: Path, items: list, out: Path, *, truth, dataset, device, scale, tile, score,
                       overlays: bool, progress: bool, sensor_bits: int | None = None) -> dict:
    """:func:`predict` with a U-Net folder: every object is of class ``"object"`` (a dataset's
    classes are counted as one). The learned instance segmenter predicts in tiles of 256 px unless
    ``tile`` names a size (None: each image in one piece); a U-Net of class maps predicts whole images at its training size and
    its foreground is split into objects (:func:`~smearlab.segmentation.predict.semantic_to_instances`)."""
    if scale is not None:
        raise ValueError("scale applies to detectors; a U-Net sees images as they are")
    instances = read_config_json(folder).get("task") == "instances"
    model = load_instance_unet(folder, device=device) if instances else load_unet(folder, device=device)
    sensor_bits = _bits_read_with(sensor_bits, getattr(model, "sensor_bits", None), truth)
    if getattr(model, "crop_pad", None) is not None:  # a field letterboxed into a one-cell input: 2 of 9 cells
        raise DataError(folder, "a U-Net trained on single-cell crops (crop_pad in config.json) segments one cell "
                                "in a box, not a field: use it through a detector (the two-stage segmenter), "
                                "or give a U-Net trained on whole images")
    side = 256 if tile == "auto" else None if tile is None else int(tile)  # None: each image whole
    floor = 0.0 if score is None else float(score)

    def whole(image) -> int:  # one tile holding the image, even resized up to 4x to the model's object
        m = 2 ** model.config["depth"]  # size (a tile larger than a side shrinks to that side)
        return -(-4 * max(image.shape[:2]) // m) * m

    def predict_fn(images: list) -> list[dict]:
        if instances and side is None:
            preds = [predict_instances(model, [img], tile=whole(img), overlap=0)[0] for img in images]
        elif instances:
            preds = predict_instances(model, images, tile=side, overlap=min(48, side // 4))
        else:
            preds = [semantic_to_instances(m) for m in predict_semantic(model, images, device=device)]
        return [{k: v[p["scores"] >= floor] for k, v in p.items()} for p in preds]

    run = {"model": str(folder.resolve()), "model_id": _model_id(folder, Path(out)), "classes": ["object"], "scale": None,
           "tile": side, "score": score, "thresholds": "score" if score is not None else "thresholds.json",
           "dataset": str(Path(dataset).resolve()) if dataset is not None else None, "sensor_bits": sensor_bits}
    summary = _run_images(out, run, items, truth, predict_fn, batch_size=1, overlays=overlays, progress=progress)
    summary["score_thresholds"] = {"object": floor}
    mapping = None
    if truth is not None:
        truth = as_single_class(truth, "object")
        mapping = match_classes(["object"], truth.class_names)
    _write_summaries(out, [im.name for im in items], summary.pop("_records"), ["object"], summary, truth, mapping)
    return summary


def _run_images(out: Path, run: dict, items: list, truth, predict_fn, *, batch_size: int, post=None,
                overlays: bool = False, progress: bool = True) -> dict:
    """The resumable loop of :func:`predict`: each image not done yet is read, predicted by
    ``predict_fn`` (a list of images -> their predictions), given to ``post(image, record)`` and
    written; failures are listed. Returns the summary (with the records under ``_records``)."""
    class_names = run["classes"]
    _check_run(out, run)
    write_json(out / "run.json", run)
    records: dict[str, dict] = {}
    failed: list[dict] = []
    todo: list[ImageInput] = []
    digests = {im.name: _image_digest(im) for im in items}
    changed = unmarked = 0
    for im in items:
        rec = _done(out, im.stem)
        if rec is not None and rec.get("image") == im.name and rec.get("image_digest") == digests[im.name]:
            records[im.name] = rec
        else:
            if rec is not None and "image_digest" not in rec:
                unmarked += 1
            else:
                changed += rec is not None
            todo.append(im)
    if changed:
        log.warning("%s: %d images changed since their results were written: predicted again", out, changed)
    if unmarked:
        log.warning("%s: %d results were written without the image's digest (before 2026-12-06): predicted again",
                    out, unmarked)
    resumed = len(records)
    redraw = [im for im in items if overlays and im.name in records
              and not (out / "overlays" / f"{im.stem}.png").is_file()]
    colours = _palette(class_names) if overlays else None
    t0 = time.perf_counter()
    bar = tqdm(total=len(todo), desc="predict", unit="img", disable=not progress)
    try:
        for start in range(0, len(todo), batch_size):
            chunk, images = [], []
            for im in todo[start:start + batch_size]:
                try:
                    img = truth[im.index].image if truth is not None else read_image(im.path, bits=run.get("sensor_bits"))[0]
                except (DataError, OSError, ValueError) as e:
                    failed.append({"image": im.name, "error": str(e)})
                    _forget(out, im)
                    bar.update(1)
                    continue
                chunk.append(im)
                images.append(img)
            if not chunk:
                continue
            done = []  # (image, pixels, prediction, zoom)
            try:
                preds = predict_fn(images)
                done = list(zip(chunk, images, preds, getattr(preds, "zooms", None) or [None] * len(chunk)))
            except (RuntimeError, ValueError) as e:
                if len(chunk) == 1:
                    failed.append({"image": chunk[0].name, "error": f"prediction failed: {e}"})
                    _forget(out, chunk[0])
                    bar.update(1)
                    continue
                # one image of the batch may be the cause (a field too large at the zoom asked): each
                # alone, so that the others are predicted (the whole batch failed with it)
                for im, img in zip(chunk, images):
                    try:
                        one = predict_fn([img])
                    except (RuntimeError, ValueError) as e1:
                        failed.append({"image": im.name, "error": f"prediction failed: {e1}"})
                        _forget(out, im)
                        bar.update(1)
                        continue
                    done.append((im, img, one[0], (getattr(one, "zooms", None) or [None])[0]))
            for im, img, p, zoom in done:
                rec = image_record(_Shape(img, im), p, class_names, file_name=im.name)
                rec["image_digest"] = digests[im.name]
                if zoom is not None:  # the factor --scale applied (chosen per image with 'auto')
                    rec["zoom"] = float(zoom)
                if post is not None:
                    post(img, rec)
                # the earlier prediction's GeoJSON and overlay go first: an interrupt between the
                # files left them beside the new JSON, and a resumed run kept them (it redraws only
                # what is missing)
                _forget(out, im, keep_json=True)
                write_json(_json_path(out, im.stem), rec)
                write_json(out / "qupath" / f"{im.stem}.geojson", qupath_geojson(rec))
                if overlays:
                    _overlay(img, rec, out / "overlays" / f"{im.stem}.png", colours)
                records[im.name] = rec
                bar.update(1)
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    predicted = len(records) - resumed
    for im in redraw:  # images done by an earlier run without overlays
        try:
            img = truth[im.index].image if truth is not None else read_image(im.path, bits=run.get("sensor_bits"))[0]
        except (DataError, OSError, ValueError) as e:
            log.warning("%s: no overlay drawn: %s", im.name, e)
            continue
        _overlay(img, records[im.name], out / "overlays" / f"{im.stem}.png", colours)
    for im in items:  # resumed images whose GeoJSON an interrupt left unwritten
        geo = out / "qupath" / f"{im.stem}.geojson"
        if im.name in records and not geo.is_file():
            write_json(geo, qupath_geojson(records[im.name]))
    _remove_moved_results(out, items)
    if failed:
        log.warning("%d of %d images failed (listed in %s): first %s: %s", len(failed), len(items),
                    out / "summary.json", failed[0]["image"], failed[0]["error"])
    return {"model": run["model"], "classes": class_names, "thresholds": run["thresholds"],
            "images": len(items), "predicted": predicted, "resumed": resumed, "failed": len(failed),
            "stems": {im.name: im.stem for im in items},
            "failures": failed, "seconds": round(seconds, 3),
            "images_per_s": round(predicted / seconds, 3) if predicted and seconds > 0 else None,
            "_records": records}


def _remove_moved_results(out: Path, items: list[ImageInput]) -> None:
    """Remove the files an earlier run wrote for an image of this run under another output name
    (``a.png``'s results were ``a.json`` until ``a.jpg`` joined it and both became ``a.png.json``
    and ``a.jpg.json``: a folder import in QuPath read ``a.png`` twice); say how many results of
    images not in this run the folder holds (kept, and left out of ``counts.csv``)."""
    stems = {im.stem for im in items}
    names = {im.name for im in items}
    moved = other = 0
    for f in sorted((out / "json").rglob("*.json")) if (out / "json").is_dir() else ():
        stem = f.relative_to(out / "json").as_posix()[:-len(".json")]  # stems may hold folders (rbc/a)
        if stem in stems:
            continue
        try:
            image = json.loads(f.read_text(encoding="utf-8")).get("image")
        except (OSError, ValueError, AttributeError):
            image = None
        if image in names:
            for stale in (f, out / "qupath" / f"{stem}.geojson", out / "overlays" / f"{stem}.png"):
                stale.unlink(missing_ok=True)
            moved += 1
        else:
            other += 1
    if moved:
        log.info("%s: removed the earlier results of %d image(s) now written under another name", out, moved)
    if other:
        log.warning("%s holds the results of %d image(s) not in this run (kept; counts.csv and summary.json "
                    "cover this run's images only)", out, other)


def read_results(out: str | Path) -> tuple[list[dict], dict]:
    """The per-image records (in the order of ``counts.csv``) and the summary of a finished
    :func:`predict` run.

    Parameters
    ----------
    out : the run's output folder.

    Raises
    ------
    DataError
        when the folder holds no finished run (no ``summary.json``).
    """
    out = Path(out)
    p = out / "summary.json"
    if not p.is_file():
        raise DataError(out, "no summary.json: not the output folder of a finished smearlab predict run")
    summary = json.loads(p.read_text(encoding="utf-8"))
    with open(out / "counts.csv", newline="", encoding="utf-8") as f:
        names = [row["image"] for row in csv.DictReader(f)]
    # the stems the run gave: from every image it was given, the failed ones included (a failed
    # a.jpg beside a.png made a.png's stem a.png)
    stem_of = summary.get("stems")  # written since 2026-12-06; before, rebuilt from the names given
    if not isinstance(stem_of, dict):
        given = names + [f["image"] for f in summary.get("failures", [])]
        stem_of = dict(zip(given, names_without_extension(given)))
    return [json.loads(_json_path(out, stem_of[n]).read_text(encoding="utf-8")) for n in names], summary


def review_order(records: Sequence[dict], thresholds: dict, margin: float = 0.15) -> list[tuple[int, int]]:
    """Which images to review first: those with the most objects whose score lies within
    ``margin`` above their class's threshold (the model's borderline calls), then those whose
    objects are least confident on average.

    Parameters
    ----------
    records : per-image records (:func:`read_results`).
    thresholds : ``{class: score threshold}`` the run used (``summary["score_thresholds"]``).
    margin : how far above its threshold an object's score counts as borderline.

    Returns
    -------
    list of (int, int)
        ``(index into records, borderline objects)``, most uncertain first.
    """
    keys = []
    for i, r in enumerate(records):
        margins = [o["score"] - float(thresholds.get(o["class"], 0.0)) for o in r["objects"]]
        near = sum(m < margin for m in margins)
        keys.append((-near, float(np.mean(margins)) if margins else 1.0, i, near))
    return [(i, near) for _, _, i, near in sorted(keys)]


class _Shape:
    """What :func:`smearlab.export.image_record` reads of a sample, for a bare image."""

    def __init__(self, image: np.ndarray, item: ImageInput):
        self.hw = image.shape[:2]
        self.image_id = item.name
        self.path = item.path

