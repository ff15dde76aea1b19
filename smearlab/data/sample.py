"""The one in-memory form every loader returns and every model consumes.

Conventions
-----------
* ``image``: ``(H, W, 3)`` uint8 RGB. Grey, RGBA, palette and 16-bit inputs are converted
  on read; ``bit_depth`` keeps the original depth and :meth:`Sample.read_raw` the original array.
* ``boxes``: ``(N, 4)`` float32, ``x0, y0, x1, y1`` in pixels, pixel-edge coordinates
  (a box covering columns 0..9 is ``x0=0, x1=10``).
* ``labels``: ``(N,)`` int64 indices into the dataset's ``class_names`` (0-based, no background
  entry; the torch dataset shifts by one so that 0 is background for torchvision).
* ``masks``: optional ``(N, H, W)`` bool, one per instance.
* ``semantic``: optional ``(H, W)`` uint8, values index ``SmearDataset.semantic_names``.
* ``image_label``: optional image-level class (cell crops, Zheng WBC images).

Images and masks may be loaded lazily: a loader passes a zero-argument callable instead of
an array and the first access reads the file. A lazily read image is read as shown (EXIF
orientation applied) unless the loader chose ``orientation="stored"`` for it (see
:mod:`smearlab.data.imageio`); when the loader knew the size (``size``), an image file that
reads at another size is refused with a :class:`DataError`, never used with misplaced boxes.
"""
from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..core.errors import DataError
from .imageio import read_image, read_raw

log = logging.getLogger("smearlab.data")

ArrayOrLoader = "np.ndarray | Callable[[], np.ndarray] | None"

#: The class-map value of pixels that belong to no class (padding, unannotated): excluded from
#: losses and metrics.
IGNORE = 255


def _resolve(value):
    return value() if callable(value) else value


@dataclass
class Sample:
    """One image with its annotations (see the module docstring for the conventions).

    Parameters
    ----------
    image_id : identifier of the image within its dataset.
    path : the image file, or None for an image held in memory.
    boxes : ``(N, 4)`` ``x0, y0, x1, y1`` boxes in pixels (stored as float32).
    labels : ``(N,)`` class indices into the dataset's ``class_names`` (stored as int64).
    image_label : optional image-level class index.
    domain : optional staining / imaging domain (e.g. ``"A"``), see :meth:`SmearDataset.by_domain`.
    bit_depth : bit depth of the original image (set when the image is read).
    size : ``(height, width)`` when known without reading the image; an image file that reads at
        another size is refused.
    meta : further per-sample information from the loader (e.g. ``iscrowd``, ``window``).
    orientation : how the image file is read: ``"exif"`` (as shown) or ``"stored"``.
    sensor_bits : the camera's bits per value for image files wider than 8 bits (12 for 12-bit
        data in 16-bit files), so that every image is scaled alike; None: the range the file
        declares, else guessed per image (see :mod:`smearlab.data.imageio`).
    _image : ``(H, W, 3)`` uint8 image, a zero-argument callable returning it, or None to read
        ``path`` on first access.
    _masks : optional ``(N, H, W)`` bool instance masks, or a zero-argument callable returning them.
    _semantic : optional ``(H, W)`` semantic mask, or a zero-argument callable returning it.
    """

    image_id: str
    path: Path | None = None
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    image_label: int | None = None
    domain: str | None = None
    bit_depth: int = 8
    size: tuple[int, int] | None = None  # (height, width) when known without reading the image
    meta: dict[str, Any] = field(default_factory=dict)
    orientation: str = "exif"  # how the image file is read: "exif" (as shown) or "stored"
    sensor_bits: int | None = None  # bits per value of wide image files; None: declared, else guessed
    _image: Any = field(default=None, repr=False)
    _masks: Any = field(default=None, repr=False)
    _semantic: Any = field(default=None, repr=False)

    def __post_init__(self):
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if len(self.boxes) != len(self.labels):
            raise DataError(self.path or self.image_id,
                            f"{len(self.boxes)} boxes but {len(self.labels)} labels")
        if self.path is not None:
            self.path = Path(self.path)
        # per-box flags given as lists are arrays, so that every step that drops boxes cuts them too
        # (per_box_meta cuts arrays only: a crowd region given as a list became an ordinary object)
        lists = {k: np.asarray(v).reshape(-1) for k, v in self.meta.items()
                 if k in PER_BOX_FLAGS and isinstance(v, (list, tuple))}
        if lists:
            self.meta = {**self.meta, **lists}
        if isinstance(self._image, np.ndarray):
            self._image = _check_image(self._image, self.path or self.image_id)
            if self.size is not None and tuple(self.size) != self._image.shape[:2]:
                raise DataError(self.path or self.image_id, f"size {tuple(self.size)} given for an image of "
                                                            f"{self._image.shape[:2]} (height, width)")
            self.size = self._image.shape[:2]
        # arrays given directly are checked now; loaders (callables) when first read
        if self._masks is not None and not callable(self._masks):
            self._masks = self._check_masks(self._masks)
        if self._semantic is not None and not callable(self._semantic):
            self._semantic = self._check_semantic(self._semantic)

    # -- lazily loaded arrays -------------------------------------------------------------
    @property
    def image(self) -> np.ndarray:
        """RGB uint8 image, read on first access when the loader gave a path only."""
        if self._image is None:
            if self.path is None:
                raise DataError(self.image_id, "sample has neither an image nor a path")
            img, depth = read_image(self.path, orientation=self.orientation, bits=self.sensor_bits)
            if self.size is not None and tuple(img.shape[:2]) != tuple(self.size):
                raise DataError(self.path, f"image reads as {img.shape[1]}x{img.shape[0]} "
                                           f"({self.orientation} orientation) but its annotation "
                                           f"gives {self.size[1]}x{self.size[0]}")
            self._image, self.bit_depth = img, depth
        elif callable(self._image):
            self._image = _check_image(self._image(), self.path or self.image_id)
        self.size = self._image.shape[:2]
        return self._image

    @image.setter
    def image(self, value: np.ndarray):
        """An image given in place of the file's: the sample no longer stands for its file (saving
        it copied the file's old pixels, and ``release`` forgot the new ones); the file's path is
        kept in ``meta["source_path"]``, as preprocessing keeps it."""
        self._image = _check_image(value, self.path or self.image_id)
        self.size = self._image.shape[:2]
        if self.path is not None:
            self.meta = {**self.meta, "source_path": str(self.path)}
            self.path = None

    def release(self) -> None:
        """Forget a lazily read image so that a large dataset stays small in memory (it is read
        again from its file when next used; an image given as an array is kept)."""
        if self.path is not None:
            self._image = None

    @property
    def masks(self) -> np.ndarray | None:
        """``(N, H, W)`` bool instance masks or None."""
        if callable(self._masks):
            self._masks = self._check_masks(self._masks())
        return self._masks

    @masks.setter
    def masks(self, value):
        self._masks = None if value is None else (
            value if callable(value) else self._check_masks(value))

    @property
    def semantic(self) -> np.ndarray | None:
        """``(H, W)`` uint8 semantic mask or None."""
        if callable(self._semantic):
            self._semantic = self._check_semantic(self._semantic())
        return self._semantic

    @semantic.setter
    def semantic(self, value):
        self._semantic = None if value is None else (
            value if callable(value) else self._check_semantic(value))

    @property
    def has_masks(self) -> bool:
        return self._masks is not None

    @property
    def crowd(self) -> np.ndarray:
        """``(N,)`` bool: which boxes are COCO crowd regions (``meta["iscrowd"]``, kept by the COCO
        loader; all False without it; a :class:`DataError` when the flags do not match the boxes)."""
        flags = self.meta.get("iscrowd")
        if flags is None:
            return np.zeros(len(self.boxes), bool)
        if np.size(flags) != len(self.boxes):  # a step that dropped boxes but not their flags
            raise DataError(self.path or self.image_id, f"meta['iscrowd'] holds {np.size(flags)} flags for "
                                                        f"{len(self.boxes)} boxes (filter both: per_box_meta)")
        return np.asarray(flags).reshape(-1).astype(bool)

    @property
    def has_semantic(self) -> bool:
        return self._semantic is not None

    @property
    def hw(self) -> tuple[int, int]:
        """(height, width), reading the image only when the size is not yet known."""
        if self.size is None:
            self.image  # noqa: B018 - reads and sets size
        return tuple(self.size)

    def read_raw(self) -> np.ndarray:
        """The image as stored on disk (original bit depth and channels)."""
        if self.path is None:
            return self.image
        return read_raw(self.path, orientation=self.orientation)

    def _check_masks(self, m) -> np.ndarray:
        try:
            m = binary_masks(m, "instance masks")
        except ValueError as e:
            raise DataError(self.path or self.image_id, str(e)) from None
        if m.ndim == 2 and len(self.boxes) == 1:
            m = m[None]
        if m.ndim != 3 or m.shape[0] != len(self.boxes):
            raise DataError(self.path or self.image_id,
                            f"instance masks have shape {m.shape}, expected ({len(self.boxes)}, H, W)")
        if self.size is not None and tuple(m.shape[1:]) != tuple(self.size):
            raise DataError(self.path or self.image_id,
                            f"mask size {m.shape[1:]} differs from image size {tuple(self.size)}")
        return m

    def _check_semantic(self, s) -> np.ndarray:
        s = np.asarray(s)
        if s.ndim != 2:
            raise DataError(self.path or self.image_id, f"semantic mask must be 2-D, got shape {s.shape}")
        if self.size is not None and tuple(s.shape) != tuple(self.size):
            raise DataError(self.path or self.image_id,
                            f"semantic mask size {s.shape} differs from image size {tuple(self.size)}")
        if s.dtype != np.uint8:  # a cast would wrap 256 to 0 and -1 to 255 (ignored), and floor 0.7 to 0
            if s.dtype == bool:
                return s.astype(np.uint8)
            if not np.issubdtype(s.dtype, np.number) or np.issubdtype(s.dtype, np.complexfloating):
                raise DataError(self.path or self.image_id, f"semantic mask of dtype {s.dtype}: give class indices")
            if s.size and (not np.isfinite(s).all() or (s != np.round(s)).any() or s.min() < 0 or s.max() > 255):
                with np.errstate(invalid="ignore"):
                    bad = s[~np.isfinite(s) | (s != np.round(s)) | (s < 0) | (s > 255)]
                raise DataError(self.path or self.image_id,
                                f"semantic mask holds {bad.reshape(-1)[0].item()!r}: class indices are whole "
                                "numbers 0..254 (255 = ignored)")
        return s.astype(np.uint8, copy=False)

    def __len__(self) -> int:
        return len(self.boxes)


def binary_masks(masks, where="masks") -> np.ndarray:
    """``masks`` as bool, refusing fractional values: a probability map read as a mask makes every
    pixel above 0 foreground (a mask AP and a DSB score of 0 that look like a bad model).

    Parameters
    ----------
    masks : an array of bool, integers (non-zero is foreground) or floats holding only 0 and 1.
    where : names the masks in the error message.
    """
    a = np.asarray(masks)
    if np.issubdtype(a.dtype, np.integer) and a.ndim == 3 and a.size:
        _refuse_label_layers(a, where)
    if a.dtype != np.bool_ and not np.issubdtype(a.dtype, np.integer):
        if not np.issubdtype(a.dtype, np.floating):
            raise ValueError(f"{where}: masks of dtype {a.dtype}; give bool or 0/1 masks")
        if a.size and not np.isin(a, (0.0, 1.0)).all():
            raise ValueError(f"{where}: masks hold fractional values (probabilities?): give bool masks, "
                             "e.g. probabilities > 0.5")
    return a.astype(bool, copy=False)


#: The ``meta`` keys that hold one value per box (arrays; a list given is made one).
PER_BOX_FLAGS = ("iscrowd", "difficult")


def per_box_meta(meta: dict, keep: np.ndarray) -> dict:
    """``meta`` with its per-box arrays (crowd flags, VOC difficult: one entry per box) cut to the
    boxes ``keep`` selects, the rest as it is.

    Parameters
    ----------
    meta : a sample's ``meta``.
    keep : ``(N,)`` bool over its boxes.
    """
    keep = np.asarray(keep, bool)
    return {k: (v[keep] if isinstance(v, np.ndarray) and v.shape[:1] == keep.shape else v) for k, v in meta.items()}


def _refuse_label_layers(a: np.ndarray, where: str) -> None:
    """Refuse a stack of masks one of whose layers holds several object values: a label image
    (ids 1..n) read with a leading axis, ``(1, H, W)``, would be one object covering every cell."""
    top = a.max()
    if top <= 0 or np.where(a > 0, a, top).min() == top:  # one value (1 or 255) everywhere: masks
        return
    for k, layer in enumerate(a):
        hi = layer.max()
        if hi > 0 and np.where(layer > 0, layer, hi).min() != hi:
            raise ValueError(f"{where}: mask {k} holds several object values ({int(np.where(layer > 0, layer, hi).min())} "
                             f"to {int(hi)}): a label image (ids 1..n)? give it 2-D "
                             "(smearlab.segmentation.classical.label_image_to_instances), or one 0/1 mask per object")


def _check_image(img, where) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise DataError(where, f"image must be (H, W, 3) uint8 RGB, got {img.shape} {img.dtype}")
    if img.shape[0] == 0 or img.shape[1] == 0:
        raise DataError(where, f"image has zero size {img.shape[:2]}")
    return img


@dataclass
class Skip:
    """One record a loader refused (or repaired): which file, which record, and why.

    ``amount`` is the size of a repair where it has one (pixels a clipped box ran past the
    image), for the load summary.

    Parameters
    ----------
    path : the file the record comes from.
    reason : why it was refused or repaired.
    record : optional name of the record within the file (e.g. ``"box 3"``).
    amount : optional size of the repair (e.g. pixels a clipped box ran past the image).
    """

    path: str
    reason: str
    record: str | None = None
    amount: float | None = None

    def __str__(self) -> str:
        rec = f" [{self.record}]" if self.record else ""
        return f"{self.path}{rec}: {self.reason}"


class SkipLog(list):
    """A list of :class:`Skip` (each entry logged at debug level; a dataset built with
    records logs one summary of them, see :meth:`SmearDataset.log_summary`).

    Parameters
    ----------
    entries : initial :class:`Skip` entries (not logged again).
    strict : :meth:`add` raises :class:`DataError` instead of recording (a loader's
        ``strict=True``: the first problem stops the load).
    kind : what the entries are, as the log message starts: ``"skipped"`` for refused
        records, ``"fixed"`` for repairs (``SmearDataset.fixed``).
    """

    def __init__(self, entries: Iterable[Skip] = (), *, strict: bool = False, kind: str = "skipped"):
        super().__init__(entries)
        self.strict = strict
        self.kind = kind

    def add(self, path, reason: str, record: str | None = None, amount: float | None = None) -> None:
        """Record one entry; with ``strict`` raise ``DataError(path, reason, record)``.

        Parameters
        ----------
        path : the file the record comes from.
        reason : why it was refused or repaired.
        record : optional name of the record within the file (e.g. ``"box 3"``).
        amount : optional size of the repair (pixels a clipped box ran past the image).
        """
        if self.strict:
            raise DataError(path, reason, record)
        s = Skip(str(path), reason, record, amount)
        log.debug("%s %s", self.kind, s)
        self.append(s)

    def counts(self) -> Counter:
        """How many skips of each kind (the reason without its numbers)."""
        return Counter(_kind(s.reason) for s in self)

    def summary(self, first: int = 3) -> list[str]:
        """One line per kind of entry: count, the largest ``amount`` where entries have one,
        and the first ``first`` files (with their records).

        Parameters
        ----------
        first : how many files to name per kind of entry.
        """
        groups: dict[str, list[Skip]] = {}
        for s in self:
            groups.setdefault(_kind(s.reason), []).append(s)
        lines = []
        for kind, items in sorted(groups.items(), key=lambda kv: -len(kv[1])):
            amounts = [s.amount for s in items if s.amount is not None]
            largest = f", largest {max(amounts):.3g} px" if amounts else ""
            where = "; ".join(f"{s.path}" + (f" [{s.record}]" if s.record else "") for s in items[:first])
            more = f"; and {len(items) - first} more" if len(items) > first else ""
            lines.append(f"{len(items)} x {kind}{largest} (first: {where}{more})")
        return lines


def _kind(reason: str) -> str:
    """A reason without its particulars: the text before the first colon, its numbers written
    ``N`` ("duplicate of object 0" and "... object 1", "box outside the 80x50 image" and "... the
    60x40 image" are one kind each; they were counted apart). A name such as ``x1`` keeps its
    digits ("x1<=x0" became "xN<=xN")."""
    return re.sub(r"\b[A-Za-z_]\w*|\d+(?:\.\d+)?(?:e[-+]?\d+)?",
                  lambda m: m.group() if not m.group()[0].isdigit() else "N", reason.split(":")[0])


class SmearDataset(Sequence[Sample]):
    """A list of :class:`Sample` with its class names and the loader's report.

    Parameters
    ----------
    samples : list of Sample
    class_names : object classes, indexed by ``Sample.labels`` (and ``image_label``).
    name : short name for reports.
    root : the folder the dataset was loaded from, if any.
    format : the on-disk format it was loaded from (e.g. ``"coco"``, ``"synthetic"``), if any.
    semantic_names : names of the semantic mask values, if any (index = value).
    skipped : records the loader refused, with reasons (see :class:`Skip`).
    fixed : boxes the loader repaired (e.g. clipped to the image), with reasons.
    """

    def __init__(self, samples: Iterable[Sample], class_names: Sequence[str], name: str = "dataset",
                 *, root: str | Path | None = None, format: str | None = None,
                 semantic_names: Sequence[str] | None = None,
                 skipped: list[Skip] | None = None, fixed: list[Skip] | None = None):
        self.samples = list(samples)
        self.class_names = list(class_names)
        twice = sorted({c for c in self.class_names if self.class_names.count(c) > 1})
        if twice:  # counts and scores go by name: two labels of one name would merge or vanish
            raise ValueError(f"dataset {name!r}: classes {twice} are named twice in {self.class_names}")
        self.name = name
        self.root = Path(root) if root is not None else None
        self.format = format
        self.semantic_names = list(semantic_names) if semantic_names is not None else None
        self.skipped = SkipLog(skipped or [])
        self.fixed = SkipLog(fixed or [], kind="fixed")
        if self.skipped or self.fixed:
            self.log_summary()
        k = len(self.class_names)
        for s in self.samples:
            bad = (s.labels < 0) | (s.labels >= k)
            if bad.any():
                raise DataError(s.path or s.image_id, f"label {int(s.labels[bad][0])} outside the "
                                f"{k} classes {self.class_names}")
            if s.image_label is not None and (isinstance(s.image_label, bool) or not isinstance(
                    s.image_label, (int, np.integer)) or not 0 <= s.image_label < k):
                raise DataError(s.path or s.image_id, f"image label {s.image_label!r} is not one of the "
                                f"{k} classes {self.class_names} (an index 0..{k - 1})")

    def __len__(self) -> int:
        return len(self.samples)

    def log_summary(self) -> None:
        """Log the skipped and repaired records once, as a summary (a loader with records calls
        this through the constructor); every record stays in ``skipped`` and ``fixed``."""
        for what, entries in (("skipped", self.skipped), ("fixed", self.fixed)):
            if entries:
                lines = entries.summary()
                log.warning("%s: %d record%s %s: %s", self.name, len(entries),
                            "" if len(entries) == 1 else "s", what, " | ".join(lines))

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self.subset(range(*i.indices(len(self))))
        return self.samples[i]

    def __repr__(self) -> str:
        try:
            crowd = sum(int(s.crowd.sum()) for s in self.samples)
        except DataError:  # crowd flags that no longer match their boxes: said where they are used
            crowd = 0
        regions = f" (+{crowd} crowd regions)" if crowd else ""
        return (f"SmearDataset({self.name!r}, {len(self)} images, {self.num_objects - crowd} objects{regions}, "
                f"classes={self.class_names}, skipped={len(self.skipped)})")

    @property
    def num_objects(self) -> int:
        """Boxes of every sample, COCO crowd regions included (``summary()["objects"]`` leaves them out)."""
        return int(sum(len(s.boxes) for s in self.samples))

    @property
    def sensor_bits(self) -> int | None:
        """The camera's bits per value every image is read with (``Sample.sensor_bits``) when they
        share one, else None: what a model trained on them records, so that new image files are
        read alike (a model trained on 12-bit data in 16-bit files read new ones with their range
        guessed per image)."""
        bits = {s.sensor_bits for s in self.samples}
        return bits.pop() if len(bits) == 1 and None not in bits else None

    def subset(self, indices: Iterable[int], name: str | None = None) -> "SmearDataset":
        """A dataset of the chosen samples (shared, not copied), same classes.

        Parameters
        ----------
        indices : positions of the chosen samples, or a boolean mask of one entry per sample.
        name : name of the result (None: this dataset's name).

        Raises
        ------
        ValueError
            for a boolean mask of another length or positions that are not whole numbers.
        """
        idx = np.asarray(indices if hasattr(indices, "__array__") else list(indices))
        if idx.dtype == bool:  # taken as positions 0 and 1, a mask chose the wrong samples
            if idx.shape != (len(self),):
                raise ValueError(f"a boolean mask of shape {idx.shape} for the {len(self)} samples of "
                                 f"{self.name!r}: a mask needs one entry per sample")
            idx = np.flatnonzero(idx)
        elif idx.size and (idx.ndim != 1 or not (np.issubdtype(idx.dtype, np.integer) or (
                np.issubdtype(idx.dtype, np.floating) and np.all(np.isfinite(idx) & (idx == np.round(idx)))))):
            raise ValueError(f"indices into the samples of {self.name!r} must be whole numbers in one row (or a "
                             f"boolean mask), got {idx.dtype} of shape {idx.shape}: {idx.reshape(-1)[:3].tolist()}")
        return SmearDataset([self.samples[i] for i in idx.reshape(-1).astype(np.int64).tolist()], self.class_names,
                            name or self.name, root=self.root, format=self.format,
                            semantic_names=self.semantic_names)

    @classmethod
    def concat(cls, datasets: Sequence["SmearDataset"], name: str | None = None) -> "SmearDataset":
        """One dataset of several with the same classes (e.g. two staining domains).

        Parameters
        ----------
        datasets : the datasets, with identical ``class_names``; their ``skipped`` and ``fixed``
            records are joined too.
        name : name of the result (None: the names joined by ``"+"``).
        """
        first = datasets[0]
        for d in datasets[1:]:
            if d.class_names != first.class_names:
                raise ValueError(f"cannot concatenate {d.name!r} (classes {d.class_names}) with "
                                 f"{first.name!r} (classes {first.class_names})")
        out = cls([s for d in datasets for s in d], first.class_names,
                  name or "+".join(d.name for d in datasets), format=first.format,
                  semantic_names=first.semantic_names)
        for d in datasets:
            out.skipped.extend(d.skipped)
            out.fixed.extend(d.fixed)
        return out

    def by_domain(self) -> dict[str, "SmearDataset"]:
        """One dataset per ``Sample.domain`` (samples without one go under the dataset's name)."""
        groups: dict[str, list[int]] = {}
        for i, s in enumerate(self.samples):
            groups.setdefault(s.domain or self.name, []).append(i)
        return {d: self.subset(idx, name=d) for d, idx in sorted(groups.items())}

    def class_counts(self) -> dict[str, int]:
        """Objects per class name, COCO crowd regions left out (image labels when there are no boxes)."""
        c = Counter()
        for s in self.samples:
            c.update(s.labels[~s.crowd].tolist())
            if len(s.boxes) == 0 and s.image_label is not None:
                c[s.image_label] += 1
        return {n: int(c.get(i, 0)) for i, n in enumerate(self.class_names)}

    def summary(self) -> dict[str, Any]:
        """Counts a report can print: images, objects per class (COCO crowd regions, a clump
        boxed as one, apart: ``crowd_regions``), images per class where images carry the label
        (``images_per_class``), skips and repairs."""
        objects, crowd, labelled = Counter(), Counter(), Counter()
        for s in self.samples:
            flags = s.crowd
            objects.update(s.labels[~flags].tolist())
            crowd.update(s.labels[flags].tolist())
            if s.image_label is not None:
                labelled[s.image_label] += 1
        out = {
            "name": self.name, "format": self.format, "images": len(self),
            "objects": int(sum(objects.values())),
            "per_class": {n: int(objects.get(i, 0)) for i, n in enumerate(self.class_names)},
            "skipped": len(self.skipped), "fixed": len(self.fixed),
            "skip_reasons": dict(self.skipped.counts()),
        }
        if crowd:
            out["crowd_regions"] = {n: int(crowd.get(i, 0)) for i, n in enumerate(self.class_names)}
        if labelled:  # a single-cell set's classes are its images' labels, not objects
            out["images_per_class"] = {n: int(labelled.get(i, 0)) for i, n in enumerate(self.class_names)}
        return out
