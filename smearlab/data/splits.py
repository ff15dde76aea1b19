"""Train/val/test splits by image, stratified K-fold, and a leak check between splits.

Stratification is on the *set of classes an image holds* (e.g. ``{RBC, WBC}`` vs
``{RBC, Platelets}``), so rare classes are spread over the folds rather than pooled in one.
Combinations too rare to stratify are merged into one group.
"""
from __future__ import annotations

import hashlib
import logging
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
from sklearn.model_selection import StratifiedKFold, train_test_split

from ..core.errors import DataError
from . import load, open_dataset
from .formats import published_splits
from .derive import as_single_class, foreground_semantic, instances_from_semantic, remap_dataset
from .sample import SmearDataset
from .synthetic import make_dataset

log = logging.getLogger(__name__)


def class_signature(dataset: SmearDataset) -> list[str]:
    """One stratification key per image: the sorted class indices it holds ("-" for none), and
    the image's class where a derived dataset keeps it by name (``meta["image_class"]``).

    Parameters
    ----------
    dataset : a SmearDataset (box labels and ``image_label`` count).
    """
    keys = []
    for s in dataset:
        labs = set(s.labels.tolist())
        if s.image_label is not None:
            labs.add(int(s.image_label))
        key = "+".join(str(c) for c in sorted(labs)) or "-"
        if s.meta.get("image_class") is not None:  # a derived set's image class (a Zheng cell's type)
            key += f"|{s.meta['image_class']}"
        keys.append(key)
    return keys


def _mergeable_keys(keys: list[str], min_count: int) -> np.ndarray:
    counts = defaultdict(int)
    for k in keys:
        counts[k] += 1
    return np.array([k if counts[k] >= min_count else "rare" for k in keys])


def _stratify(keys: np.ndarray, min_count: int, max_groups: int | None = None) -> np.ndarray | None:
    """Stratification labels, or None when stratifying is impossible.

    Combinations with fewer than ``min_count`` images are pooled as "rare"; when there are more
    groups than ``max_groups`` (a split cannot hold one image of each), the smallest groups are
    pooled too.
    """
    keys = _mergeable_keys(list(keys), min_count)
    if max_groups is not None:
        while True:
            names, counts = np.unique(keys, return_counts=True)
            if len(names) <= max_groups or len(names) <= 1:
                break
            small = [n for n in names[np.argsort(counts, kind="stable")] if n != "rare"][:2]
            keys = np.where(np.isin(keys, small), "rare", keys)
    names, counts = np.unique(keys, return_counts=True)
    if len(counts) > 1 and counts.min() >= min_count:
        return keys
    if len(counts) > 1:  # said, not silent: a few odd images switch stratification off for every class
        log.warning("the split is not stratified: %d image(s) hold class combinations too rare to stratify "
                    "(fewer than %d even pooled); images are shuffled plainly", int(counts.min()), min_count)
    return None


def _units(groups, n: int) -> list[np.ndarray]:
    """The images of each group (``groups``: one group id per image; None: each image alone), in
    the order of each group's first image; with every image alone, ``[[0], [1], ...]``."""
    if groups is None:
        return [np.array([i]) for i in range(n)]
    g = np.asarray(groups)
    if g.shape != (n,):
        raise ValueError(f"groups must give one group per image ({n}), got shape {g.shape}")
    _, first, inverse = np.unique(g, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    return [np.flatnonzero(inverse == k) for k in order]


def train_val_test_split(dataset: SmearDataset, val: float = 0.15, test: float = 0.15,
                         seed: int = 0, stratify: bool = True, groups=None) -> dict[str, SmearDataset]:
    """Split by image into ``{"train", "val", "test"}`` (fractions of the whole set).

    ``val`` or ``test`` may be 0 to leave that split out.

    Parameters
    ----------
    dataset : the SmearDataset to split.
    val, test : fractions of the whole set for validation and test (``val + test < 1``); with
        ``groups``, fractions of the groups.
    seed : random state of the split.
    stratify : stratify on :func:`class_signature` (rare combinations pooled; plain shuffling
        when stratifying is impossible); a group by its first image's.
    groups : one group id per image (e.g. :func:`near_copy_groups`): the images of a group stay
        in one split. None: every image alone (the split is then the same as with groups that
        are all of one image).

    Returns
    -------
    dict
        ``{"train", "val", "test"}`` subsets named ``"<dataset>:<split>"`` (a split of fraction 0
        is absent).
    """
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise ValueError(f"val={val} and test={test} must be fractions with val + test < 1")
    units = _units(groups, len(dataset))
    keys = np.array(class_signature(dataset))[[u[0] for u in units]]
    parts: dict[str, np.ndarray] = {}
    rest = np.arange(len(units))
    for name, frac, remaining in (("test", test, 1.0), ("val", val, 1.0 - test)):
        if frac == 0:
            continue
        # rounded first: 0.2 / 0.7 * 14 is 4.000000000000001, which must take 4 images, not 5
        n_take = int(np.ceil(round(frac / remaining * len(rest), 9)))
        if not 0 < n_take < len(rest):
            what = "images" if len(units) == len(dataset) else f"groups of images ({len(dataset)} images)"
            raise ValueError(f"dataset {dataset.name!r} of {len(units)} {what} cannot give val={val} and "
                             f"test={test} with images left to train on ({name} would take {n_take} of {len(rest)})")
        strat = _stratify(keys[rest], 2, min(n_take, len(rest) - n_take)) if stratify else None
        rest, taken = train_test_split(rest, test_size=n_take, random_state=seed, stratify=strat)
        parts[name] = np.sort(np.concatenate([units[u] for u in taken]))
    parts["train"] = np.sort(np.concatenate([units[u] for u in rest]))
    return {k: dataset.subset(v.tolist(), name=f"{dataset.name}:{k}")
            for k, v in (("train", parts["train"]), ("val", parts.get("val")),
                         ("test", parts.get("test"))) if v is not None}


def kfold(dataset: SmearDataset, k: int = 5, seed: int = 0, groups=None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified K-fold by image: a list of ``(train_indices, test_indices)``.

    Each image appears in exactly one test fold.

    Parameters
    ----------
    dataset : the SmearDataset to split.
    k : number of folds (2 <= k <= number of images, or of groups).
    seed : random state of the shuffle.
    groups : one group id per image (e.g. :func:`near_copy_groups`): the images of a group fall
        in one fold. None: every image alone.
    """
    units = _units(groups, len(dataset))
    if k < 2 or k > len(units):
        what = "images" if len(units) == len(dataset) else "groups of images"
        raise ValueError(f"k={k} folds need 2 <= k <= number of {what} ({len(units)})")
    keys = _mergeable_keys(list(np.array(class_signature(dataset))[[u[0] for u in units]]), k)
    _, counts = np.unique(keys, return_counts=True)
    if counts.min() < k:  # even the merged group is too small: plain shuffled folds
        log.warning("the folds are not stratified: %d image(s) hold class combinations too rare for %d folds "
                    "even pooled; images are shuffled plainly", int(counts.min()), k)
        keys = np.zeros(len(units), int)
    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return [(np.sort(np.concatenate([units[u] for u in tr])), np.sort(np.concatenate([units[u] for u in te])))
            for tr, te in skf.split(np.zeros(len(units)), keys)]


def content_hash(sample) -> str:
    """SHA-1 of the image file's bytes (of the pixels when the sample has no file).

    Parameters
    ----------
    sample : a :class:`~smearlab.data.sample.Sample`.
    """
    h = hashlib.sha1()
    if sample.path is not None and Path(sample.path).is_file():
        with open(sample.path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    else:
        img = sample.image
        h.update(str(img.shape).encode())
        h.update(img.tobytes())
    return h.hexdigest()


#: the similarity above which two images are near-copies whatever else they resemble
#: (:func:`near_copies`): on the shared data, at the best shift, pairs of different cells reached
#: 0.67 at most (Zheng Dataset 1 0.67, Dataset 2 0.56, PBC 0.63; single-cell images share their
#: central cell) and the shots of one cell or field twice in place 0.82 to 1.0 (Zheng Dataset 1
#: 112/139, 166/171, 157/158, 167/169; PBC EO_398276/EO_924136; CBC Training 37/38)
NEAR_COPY_SIMILARITY = 0.75
#: a pair at or above this similarity (at its best shift) is a near-copy when it also stands
#: :data:`NEAR_COPY_Z` robust standard deviations above what each of its images shares with the
#: others. CBC holds fields shot twice 10 to about 380 px apart; searched up to :data:`MAX_SHIFT`
#: (wrapping round: a larger shift is seen from the other side), those below 0.75 score 0.37 to
#: 0.74 with z of 21 to 54 (e.g. Training 204/277 0.74, 205/276 0.55, 248/249 0.47, 239/240 0.42
#: and 232/255 0.37, fields overlapping by about 40 %, their shift confirmed by keypoint matching;
#: Testing 381/397 0.49), while the most similar different cells reached z 12.9 (PBC) and 11.3
#: (Zheng; measured 2026-12-07). Testing 377/400 (0.37, z 18.9, four keypoints) is not joined.
NEAR_COPY_SHIFTED = 0.35
NEAR_COPY_Z = 20.0


def image_signature(image: np.ndarray, side: int = 64, sigma: float = 2.0) -> np.ndarray:
    """What two shots of the same field share: the image resized to ``side`` x ``side`` (colour),
    minus its Gaussian blur of ``sigma`` (the detail of cells and granules, not the overall colour
    or a bright centre, which single-cell images of different cells share), zero mean and unit
    length, as a ``(side, side, C)`` array. Two signatures' similarity is their correlation at the
    best shift (:func:`shifted_similarity`; 1 for the same image; a flat image is all zeros and
    matches nothing).

    Parameters
    ----------
    image : ``(H, W)`` or ``(H, W, C)`` array (any range).
    side : the side of the thumbnail.
    sigma : the blur subtracted, in thumbnail pixels.
    """
    from scipy.ndimage import gaussian_filter
    from skimage.transform import resize

    a = np.asarray(image)
    a = (a[..., :3] if a.ndim == 3 else a[..., None]).astype(np.float64)
    small = resize(a, (side, side, a.shape[2]), order=1, anti_aliasing=True, preserve_range=True)
    detail = small - gaussian_filter(small, (sigma, sigma, 0))
    v = detail - detail.mean()
    norm = np.linalg.norm(v)
    return v / norm if norm > 1e-9 * max(1.0, float(np.abs(small).max())) else np.zeros_like(v)


#: the largest shift between two shots of one field that :func:`shifted_similarity` looks for, as a
#: fraction of the image side (CBC holds fields shot twice up to about 220 px apart in 640 x 480
#: images: a quarter missed six such pairs, and a split could put one shot in training and the
#: other in validation)
MAX_SHIFT = 0.45


def shifted_similarity(a: np.ndarray, others: np.ndarray, max_shift: float = MAX_SHIFT) -> np.ndarray:
    """The similarity of signature ``a`` with each of ``others``: their correlation (the dot product
    of the two signatures, one moved over the other, wrapping round) at the shift of at most
    ``max_shift`` of the side that makes it largest. A field shot twice a little apart matches,
    as it does shot twice in place.

    Parameters
    ----------
    a : one :func:`image_signature` ``(S, S, C)``.
    others : ``(N, S, S, C)`` signatures.
    max_shift : the largest shift looked at, as a fraction of the side (0: in place only).
    """
    side = a.shape[0]
    return _best_shift(np.fft.rfft2(a, axes=(0, 1)), np.fft.rfft2(others, axes=(1, 2)), side, max_shift)


def _best_shift(fa: np.ndarray, fo: np.ndarray, side: int, max_shift: float = MAX_SHIFT) -> np.ndarray:
    """:func:`shifted_similarity` from the signatures' 2-D Fourier transforms (``rfft2``)."""
    corr = np.fft.irfft2((fo * np.conj(fa)[None]).sum(-1), s=(side, side), axes=(1, 2))
    k = int(round(float(max_shift) * side))
    near = np.r_[0:k + 1, side - k:side] if k else np.array([0])  # shifts -k..k, wrapping round
    return corr[:, near][:, :, near].reshape(len(fo), -1).max(1)


def near_copies(datasets: Mapping[str, SmearDataset] | SmearDataset,
                threshold: float = NEAR_COPY_SIMILARITY) -> list[tuple[str, str, float, str, str]]:
    """Pairs of images that are near-copies: the same field or cell photographed twice, re-encoded
    or moved by up to :data:`MAX_SHIFT` of the image side (which a hash of the file misses), by
    :func:`shifted_similarity` of their :func:`image_signature` (see ``threshold``). A
    near-copy on both sides of a split leaks as an identical one does. Images read for it are
    released again (a large dataset is not kept in memory). Every pair is compared at every shift
    (about 15 s for CBC's 360 images on 2 cores, reading them included): beyond
    :data:`SHIFT_SEARCH_IMAGES` images only copies in place are looked for.

    Parameters
    ----------
    datasets : a SmearDataset, or ``{split name: SmearDataset}`` to compare every image with
        every other across and within the splits.
    threshold : the similarity that makes a near-copy whatever else the images resemble (see
        :data:`NEAR_COPY_SIMILARITY`); below it, from :data:`NEAR_COPY_SHIFTED`, a pair standing
        :data:`NEAR_COPY_Z` robust standard deviations out of its images' other similarities is
        one too (30 images or more, up to :data:`SHIFT_SEARCH_IMAGES`; not with a threshold
        above the default).

    Returns
    -------
    list
        ``(image a, image b, similarity, split of a, split of b)``, most similar first; images
        are named by their file path (their id without one).
    """
    if isinstance(datasets, SmearDataset):
        datasets = {datasets.name: datasets}
    return [(_image_name(datasets[ka][i]), _image_name(datasets[kb][j]), sim, ka, kb)
            for ka, i, kb, j, sim in _near_pairs(datasets, threshold)]


def _image_name(s) -> str:
    return str(s.path) if s.path else s.image_id


def _near_pairs(datasets: Mapping[str, SmearDataset], threshold: float) -> list[tuple[str, int, str, int, float]]:
    """``(split a, index a, split b, index b, similarity)`` of every near-copy pair, most similar first."""
    if not -1.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must be a similarity in [-1, 1], got {threshold!r}")
    where, sigs = [], []
    for k, ds in datasets.items():
        for i, s in enumerate(ds):
            lazy = s.path is not None and s._image is None
            sigs.append(image_signature(s.image))
            if lazy:
                s.release()
            where.append((k, i))
    if len(sigs) < 2:
        return []
    S = np.stack(sigs).astype(np.float32)
    pairs = []
    if len(S) <= SHIFT_SEARCH_IMAGES:  # every pair at its best shift
        n, side = len(S), S.shape[1]
        F = np.fft.rfft2(S, axes=(1, 2)).astype(np.complex64)  # once, not once per pair
        M = np.eye(n, dtype=np.float32)
        for i in range(n - 1):
            for j0 in range(i + 1, n, 256):  # in blocks: bounded memory for thousands of images
                sim = _best_shift(F[i], F[j0:j0 + 256], side)
                M[i, j0:j0 + len(sim)] = M[j0:j0 + len(sim), i] = sim
        # a shot of one field moved by tens of pixels shares less than a copy in place (0.55 on
        # CBC), but stands far out of what its image shares with every other: robust z of the pair
        # against each image's own similarities (median and MAD of its row)
        off = M.copy()
        np.fill_diagonal(off, np.nan)
        med = np.nanmedian(off, 1)
        mad = np.maximum(np.nanmedian(np.abs(off - med[:, None]), 1) * 1.4826, 0.01)
        iu, ju = np.triu_indices(n, 1)
        sim = M[iu, ju]
        z = np.minimum((sim - med[iu]) / mad[iu], (sim - med[ju]) / mad[ju])
        # the outlier rule needs rows long enough for a median and a spread, and is a looser rule:
        # a caller asking for a stricter threshold than the default gets that threshold alone
        loose = n >= 30 and threshold <= NEAR_COPY_SIMILARITY
        found = (sim >= threshold) | (loose & (sim >= NEAR_COPY_SHIFTED) & (z >= NEAR_COPY_Z))
        pairs = [(*where[i], *where[j], float(v)) for i, j, v in zip(iu[found], ju[found], sim[found])]
        return sorted(pairs, key=lambda p: -p[4])
    log.warning("%d images: near-copies looked for in place only (shots of one field a little apart are missed "
                "above %d images)", len(S), SHIFT_SEARCH_IMAGES)
    flat = S.reshape(len(S), -1)
    for i0 in range(0, len(S), 512):  # blocks of rows: a similarity matrix of 10,000 images is 400 MB
        block = flat[i0:i0 + 512] @ flat.T
        for r, j in zip(*np.nonzero(block >= threshold)):
            i = i0 + int(r)
            if i < j:
                pairs.append((*where[i], *where[int(j)], float(block[r, j])))
    return sorted(pairs, key=lambda p: -p[4])


def near_copy_groups(dataset: SmearDataset, threshold: float = NEAR_COPY_SIMILARITY) -> np.ndarray:
    """One group id per image, shared by images that are near-copies of each other (directly or
    through a chain, :func:`near_copies`; identical files included), for splits that keep each
    group on one side (``groups=`` of :func:`train_val_test_split` and :func:`kfold`). Reads
    every image (about 15 s for 360 images on 2 cores).

    Parameters
    ----------
    dataset : the SmearDataset.
    threshold : as :func:`near_copies`.

    Returns
    -------
    numpy.ndarray
        ``(N,)`` ints: the index of the group's first image (an image alone keeps its own index).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(dataset)
    pairs = [(i, j) for _, i, _, j, _ in _near_pairs({"all": dataset}, threshold)]
    rows, cols = (np.array(v, np.int64) for v in zip(*pairs)) if pairs else (np.zeros(0, np.int64),) * 2
    _, comp = connected_components(coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n)), directed=False)
    first = np.full(comp.max() + 1 if n else 0, n, np.int64)
    np.minimum.at(first, comp, np.arange(n))  # each group named by its first image
    return first[comp]


def split_groups(dataset: SmearDataset, group: bool) -> np.ndarray | None:
    """:func:`near_copy_groups` for a task's split, logged when it joins images; None when ``group``
    is off, for synthetic data (drawn one field at a time) and for fewer than two images.

    Parameters
    ----------
    dataset : the images to split.
    group : whether to group them.
    """
    if not group or len(dataset) < 2 or dataset.format == "synthetic":  # synthetic fields are drawn one by one
        return None
    known = [s.meta.get(NEAR_COPY_KEY) for s in dataset]
    if all(k is not None for k in known) and len({k[0] for k in known}) == 1:
        # every image grouped in one search already (notebook 03's k-fold over the train and val
        # splits of detection_splits): its groups, without reading every image again
        _, first, inv = np.unique([k[1] for k in known], return_index=True, return_inverse=True)
        return first[inv].astype(np.int64)  # as near_copy_groups: each group named by its first image here
    groups = near_copy_groups(dataset)
    search = uuid.uuid4().hex
    for s, g in zip(dataset, groups.tolist()):
        s.meta[NEAR_COPY_KEY] = (search, int(g))
    joined = len(dataset) - len(np.unique(groups))
    if joined:
        log.info("%s: %d near-copy image(s) kept on one side of the split with their twin (%d groups of "
                 "two or more)", dataset.name, joined, int((np.bincount(groups) > 1).sum()))
    return groups


#: ``Sample.meta`` key of an image's near-copy group: ``(search id, group)``, one search for images
#: grouped together (reused only when every image of a later split comes from the same search)
NEAR_COPY_KEY = "near_copy_group"


#: above this many images :func:`near_copies` compares them in place only (every pair at every
#: shift grows with the square of the count: about 15 s for 360 images, reading them included, and
#: some 10 minutes for 2,500)
SHIFT_SEARCH_IMAGES = 2500


@dataclass
class LeakReport:
    """Images shared between splits, by file name, by content and as near-copies.

    Parameters
    ----------
    same_name : ``{(split a, split b): image files found in both}`` (named by their path below
        the dataset's root, see :func:`check_leaks`).
    same_content : ``{(split a, split b): [(image in a, identical image in b), ...]}``.
    duplicates_within : ``{split: [(image, identical later image), ...]}``.
    near_copies : ``{(split a, split b): [(image in a, image in b, similarity), ...]}``: the same
        field or cell shot twice (:func:`near_copies`), identical files left out.
    near_copies_within : ``{split: [(image, image, similarity), ...]}``.
    """

    same_name: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    same_content: dict[tuple[str, str], list[tuple[str, str]]] = field(default_factory=dict)
    duplicates_within: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    near_copies: dict[tuple[str, str], list[tuple[str, str, float]]] = field(default_factory=dict)
    near_copies_within: dict[str, list[tuple[str, str, float]]] = field(default_factory=dict)

    @property
    def leaks(self) -> bool:
        """Whether any two splits share an image: by name, by content or as a near-copy."""
        return bool(self.same_name or self.same_content or self.near_copies)

    def summary(self) -> dict:
        """Counts for a report: ``leak`` (whether any two splits share images), and the number of shared
        file names, contents and near-copies per pair of splits and of duplicates per split.
        """
        return {
            "leak": self.leaks,
            "same_name": {f"{a}/{b}": len(v) for (a, b), v in self.same_name.items()},
            "same_content": {f"{a}/{b}": len(v) for (a, b), v in self.same_content.items()},
            "near_copies": {f"{a}/{b}": len(v) for (a, b), v in self.near_copies.items()},
            "duplicates_within": {k: len(v) for k, v in self.duplicates_within.items()},
            "near_copies_within": {k: len(v) for k, v in self.near_copies_within.items()},
        }

    def __str__(self) -> str:
        if not self.leaks and not self.duplicates_within and not self.near_copies_within:
            return "no leaks between splits and no duplicates within them"
        lines = []
        for (a, b), v in self.same_name.items():
            lines.append(f"{len(v)} file names in both {a} and {b} (e.g. {v[0]})")
        for (a, b), v in self.same_content.items():
            lines.append(f"{len(v)} identical images in both {a} and {b} (e.g. {v[0][0]} = {v[0][1]})")
        for (a, b), v in self.near_copies.items():
            lines.append(f"{len(v)} near-copies across {a} and {b} (e.g. {v[0][0]} ~ {v[0][1]}, "
                         f"similarity {v[0][2]:.2f})")
        for k, v in self.duplicates_within.items():
            lines.append(f"{len(v)} duplicate images within {k} (e.g. {v[0][0]} = {v[0][1]})")
        for k, v in self.near_copies_within.items():
            lines.append(f"{len(v)} near-copies within {k} (e.g. {v[0][0]} ~ {v[0][1]}, similarity {v[0][2]:.2f})")
        return "\n".join(lines)


def check_leaks(splits: Mapping[str, SmearDataset], *, near: bool = True,
                threshold: float = NEAR_COPY_SIMILARITY) -> LeakReport:
    """Find images that appear in more than one split (the same file, the same content, or a
    near-copy).

    The same file: the same path below each split's dataset root (so a dataset's validation
    folder copied from its training folder is caught), or the same path when there is no root.
    Images held in memory (no file) are compared by content only: two of them may share an id.

    Content is compared by a hash of the file bytes (identical copies under another name);
    near-copies (the same field shot twice, re-encoded or shifted a little) by
    :func:`near_copies`, which reads every image.

    Parameters
    ----------
    splits : ``{split name: SmearDataset}``, e.g. the result of :func:`train_val_test_split`.
    near : also look for near-copies (reads and resizes every image).
    threshold : the similarity that makes a near-copy whatever else the images resemble (see
        :data:`NEAR_COPY_SIMILARITY`); below it, from :data:`NEAR_COPY_SHIFTED`, a pair standing
        :data:`NEAR_COPY_Z` robust standard deviations out of its images' other similarities is
        one too (30 images or more, up to :data:`SHIFT_SEARCH_IMAGES`; not with a threshold
        above the default).
    """
    names = {k: {key: s for s in ds if (key := _file_key(ds, s)) is not None} for k, ds in splits.items()}
    hashes: dict[str, dict[str, str]] = {}
    digest: dict[tuple[str, int], str] = {}  # (split, index) -> content hash
    rep = LeakReport()
    for k, ds in splits.items():
        seen: dict[str, str] = {}
        for idx, s in enumerate(ds):
            h = digest[(k, idx)] = content_hash(s)
            ident = str(s.path) if s.path else s.image_id
            if h in seen:
                rep.duplicates_within.setdefault(k, []).append((seen[h], ident))
            else:
                seen[h] = ident
        hashes[k] = seen
    keys = list(splits)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            common = sorted(set(names[a]) & set(names[b]))
            if common:
                rep.same_name[(a, b)] = common
            same = [(hashes[a][h], hashes[b][h]) for h in sorted(set(hashes[a]) & set(hashes[b]))]
            if same:
                rep.same_content[(a, b)] = same
    if near:
        for ka, i, kb, j, sim in _near_pairs(splits, threshold):
            if digest[(ka, i)] == digest[(kb, j)]:  # identical: reported above (or the same file twice)
                continue
            x, y = _image_name(splits[ka][i]), _image_name(splits[kb][j])
            if ka == kb:
                rep.near_copies_within.setdefault(ka, []).append((x, y, sim))
            else:
                pair = (ka, kb) if keys.index(ka) < keys.index(kb) else (kb, ka)
                rep.near_copies.setdefault(pair, []).append((x, y, sim) if pair[0] == ka else (y, x, sim))
    return rep


def _file_key(ds: SmearDataset, s) -> str | None:
    """What names an image across splits: its path below the dataset's root (``Dataset 1/002.bmp``
    and ``Dataset 2/002.bmp`` are two images; ``Training/Images/a.jpg`` and
    ``Validation/Images/a.jpg`` one, each below its own root), its whole path when the dataset
    has no root (a subset or a concatenation: copies elsewhere are found by their content); None
    when it has no file (images made in memory, such as two synthetic sets, may share ids: their
    content decides)."""
    if not s.path:
        return None
    path = Path(s.path).resolve()
    if ds.root is not None:
        try:
            return path.relative_to(Path(ds.root).resolve()).as_posix()
        except ValueError:
            pass
    return path.as_posix()


def stratified_split(labels, test: float = 0.3, seed: int = 0, groups=None) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, test)``: each class split ``1 - test : test`` (rounded), shuffled by ``seed``.

    A class with two or more items puts at least one in each part; a class with one item goes
    to train. Works for any class sizes (unlike stratified sampling that needs two of each).

    Parameters
    ----------
    labels : ``(N,)`` class label of every item.
    test : fraction of each class for the test part, in (0, 1).
    seed : seed of the shuffle.
    groups : one group key per item (e.g. :func:`near_copy_groups`, or the image of each crop):
        the items of a group stay in one part. Groups are split by the rarest class they hold
        (fractions of groups, not of items), so that a class that is nowhere the most common (the
        white cells and platelets among a field's red cells) is still spread over both parts; a
        class of two or more groups that ends up in one part all the same is warned. None, or
        every item alone: the split of the items.
    """
    if not 0 < test < 1:
        raise ValueError(f"test must be a fraction in (0, 1), got {test}")
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be one class per item, shape (N,), got shape {y.shape} (one-hot labels: "
                         "pass labels.argmax(1))")
    missing = [i for i, v in enumerate(y.tolist()) if v is None or (isinstance(v, (float, np.floating)) and v != v)]
    if missing:  # NaN never equals itself: those items fell out of both parts without a word
        raise ValueError(f"{len(missing)} of {len(y)} labels are missing (None or NaN; first at index "
                         f"{missing[0]}): every item needs a class to be split")
    if groups is not None:
        g = np.asarray(groups)
        if g.shape != y.shape:
            raise ValueError(f"groups must give one group per item ({len(y)}), got shape {g.shape}")
        names, member = np.unique(g, return_inverse=True)
        if len(names) < len(y):
            classes, yi = np.unique(y, return_inverse=True)
            counts = np.zeros((len(names), len(classes)), np.int64)
            np.add.at(counts, (member, yi), 1)  # per group, its items per class
            # each group by the rarest class it holds (by its most common, a class that is nowhere
            # the majority was not stratified at all: all four platelet crops in train, silently)
            rarity = np.argsort(np.argsort(counts.sum(0), kind="stable"), kind="stable")  # 0: the rarest
            held = np.where(counts > 0, rarity[None, :], len(classes))
            gtr, gte = stratified_split(classes[held.argmin(1)], test, seed)
            tr, te = np.flatnonzero(np.isin(member, gtr)), np.flatnonzero(np.isin(member, gte))
            one_side = [str(c) for k, c in enumerate(classes) if (counts[:, k] > 0).sum() >= 2
                        and not ((yi[tr] == k).any() and (yi[te] == k).any())]
            if one_side:
                log.warning("split by groups: %s in one part only (its groups hold rarer classes, which were "
                            "spread first)", ", ".join(one_side))
            return tr, te
    rng = np.random.default_rng(seed)
    tr, te = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = 0 if len(idx) < 2 else min(len(idx) - 1, max(1, int(round(test * len(idx)))))
        te += idx[:k].tolist()
        tr += idx[k:].tolist()
    return np.sort(np.asarray(tr, np.int64)), np.sort(np.asarray(te, np.int64))


#: the share of a CBC-layout ``Training/`` folder held out for validation (of its groups of
#: near-copies: 31 of CBC's 300 images since near-copies are searched up to 0.45 of the side
#: (2026-12-07), 29 with a quarter, 30 before near-copies were kept together; the split of every
#: CBC benchmark and of notebooks 03 and 09: figures recorded before are of the earlier splits)
CBC_VAL_FRACTION = 0.1


def detection_splits(spec: str = "synthetic", *, quick: bool = True, seed: int = 0,
                     val: float | None = None, test: float = 0.15,
                     group_near_copies: bool = True) -> dict[str, SmearDataset]:
    """Train / val / test splits for a detection experiment.

    * ``"synthetic"``: one staining style (A), 48 images in quick mode, 300 otherwise, split by
      image.
    * A folder with ``Training/`` and ``Testing/`` (the CBC layout): ``Testing`` is the test set
      and the validation split is carved out of ``Training``. CBC's own ``Validation/`` is a
      subset of ``Training/`` and is never used.
    * A YOLO dataset with ``images/train`` and ``images/test`` (or ``val``), or a folder of COCO
      files of such splits: the published splits are kept (train, val, test); one it lacks is
      carved out of train (fractions ``val``, ``test``).
    * Any other dataset path: split by image (stratified on the classes each image holds).

    Parameters
    ----------
    spec : ``"synthetic"``, another :func:`smearlab.data.open_dataset` spec, or a dataset path.
    quick : small synthetic sets (48 images for ``"synthetic"``); passed to
        :func:`smearlab.data.open_dataset` for other specs.
    seed : seed of the split and of the synthetic generator.
    val, test : fractions of the images for validation and test (see
        :func:`train_val_test_split`); the CBC layout uses ``val`` of ``Training`` only. None:
        0.15, or :data:`CBC_VAL_FRACTION` (0.1) of ``Training`` in the CBC layout.
    group_near_copies : keep near-copies (:func:`near_copy_groups`: a field shot twice a little
        apart) on one side of the split, so that no validation or test image has its twin in
        training (real data only; reads every image once). Off: the split by image of
        releases before 2026-12-07, which put 2 of CBC's 30 validation images beside their twin.

    Returns
    -------
    dict
        ``{"train", "val", "test"}``: SmearDatasets.
    """

    root = Path(spec)
    halves = [(root / d).is_dir() for d in ("Training", "Testing")] if not spec.startswith("synthetic") else []
    if any(halves) and not all(halves):  # the notebooks would say they count Testing/ while splitting at random
        log.warning("%s holds %s but not %s: split by image as any dataset, not the CBC layout", root,
                    *(("Training/", "Testing/") if halves[0] else ("Testing/", "Training/")))
    if halves and all(halves):
        training = load(root / "Training")
        # Testing/'s classes in Training/'s order, before any training: a folder without one class
        # lists the others in another order (VOC sorts them), found only after every epoch
        testing = remap_dataset(load(root / "Testing"), training.class_names, "Testing/", owner="Training/")
        parts = train_val_test_split(training, val=CBC_VAL_FRACTION if val is None else val, test=0, seed=seed,
                                     groups=split_groups(training, group_near_copies))
        return {"train": parts["train"], "val": parts["val"], "test": testing}
    if spec == "synthetic":
        ds = open_dataset("synthetic-A", n=48 if quick else 300, seed=seed)
    else:
        published = _published_parts(spec, seed=seed, val=0.15 if val is None else val, test=test,
                                      group=group_near_copies)
        if published is not None:
            return published
        ds = open_dataset(spec, quick=quick, seed=seed)
    return train_val_test_split(ds, val=0.15 if val is None else val, test=test, seed=seed,
                                groups=split_groups(ds, group_near_copies))


def _published_parts(spec: str, *, seed: int, val: float, test: float, group: bool) -> dict | None:
    """``{"train", "val", "test"}`` from the splits a YOLO dataset or a folder of COCO files
    publishes (:func:`~smearlab.data.formats.published_splits`): its test split is never shuffled
    into training. A split it lacks (validation, or test when it publishes train and val only)
    is carved out of its training split. None when it publishes no training split with another."""
    roles = published_splits(spec)
    if len(roles) < 2:  # none, or one split only: nothing to keep apart
        return None
    if "train" not in roles:
        log.warning("%s publishes the split(s) %s: read together and split by image (pass one split's "
                    "own folder or file to keep them apart)", spec, sorted(roles.values()))
        return None
    train = load(spec, split=roles["train"])
    parts = {role: remap_dataset(load(spec, split=roles[role]), train.class_names, f"{roles[role]}/",
                                 owner=f"{roles['train']}/")
             for role in ("val", "test") if role in roles}
    carve = {"val": val if "val" not in parts else 0.0, "test": test if "test" not in parts else 0.0}
    if carve["val"] or carve["test"]:
        cut = train_val_test_split(train, val=carve["val"], test=carve["test"], seed=seed,
                                   groups=split_groups(train, group))
        train = cut["train"]
        parts.update({k: v for k, v in cut.items() if k != "train"})
    log.info("%s: its published splits kept (%s)%s", spec, ", ".join(f"{k}: {v}" for k, v in roles.items()),
             "; " + " and ".join(k for k, v in carve.items() if v) + f" carved out of {roles['train']}"
             if carve["val"] or carve["test"] else "")
    return {"train": train, **{k: parts[k] for k in ("val", "test") if k in parts}}


def instance_splits(spec="synthetic", *, quick: bool = True, seed: int = 0, val: float = 0.15, test: float = 0.2,
                    max_train: int | None = None, max_test: int | None = None,
                    group_near_copies: bool = True) -> dict:
    """Train and test sets of class-agnostic instance masks, for comparing segmenters on the same images.

    Parameters
    ----------
    spec : ``"synthetic"`` (smear fields of :func:`smearlab.data.synthetic.make_dataset`, stain
        A: 256 x 192 px in quick mode, 512 x 384 otherwise; the test images use ``seed``, the
        training images ``seed + 1``), or anything :func:`smearlab.data.open_dataset` opens
        (a DSB2018 folder, the Zheng archive...), split by image with the same call as
        :func:`segmentation_splits` (``val`` and ``test`` fractions, ``seed``), its validation
        images joined to the training ones. For a dataset of instance masks (DSB2018) the test
        images are then those notebook 04's segmenters are scored on; the Zheng set is
        stratified on other classes there (cell / nucleus), so its split may differ.
    quick : small sets (synthetic: 6 + 6 images; real data: at most 24 train and 12 test).
    seed : seed of the split (and of the synthetic generator, see ``spec``).
    val, test : fractions of a real dataset's images for validation and test.
    max_train, max_test : caps on the number of images (override the quick defaults).
    group_near_copies : keep near-copies on one side of a real dataset's split (as
        :func:`detection_splits`).

    Returns
    -------
    dict
        ``{"train", "test"}``: SmearDatasets with one class ``"cell"``
        (:func:`smearlab.data.derive.as_single_class`), plus ``"name"``.
    """
    if quick:
        max_train = max_train or (6 if spec == "synthetic" else 24)
        max_test = max_test or (6 if spec == "synthetic" else 12)
    if spec == "synthetic":
        w, h = (256, 192) if quick else (512, 384)
        tr = make_dataset(max_train or 40, seed=seed + 1, width=w, height=h)
        te = make_dataset(max_test or 24, seed=seed, width=w, height=h)
        name = "synthetic"
    else:
        ds = open_dataset(spec)
        boxes_only = sum(1 for x in ds if len(x.boxes) and not x.has_masks)
        if boxes_only:  # found only after every method had run on train and test
            raise DataError(ds.root or spec, f"{boxes_only} of {len(ds)} images have objects but no instance masks: "
                                             "segmenters are scored on masks; give a dataset with instance masks "
                                             "(DSB2018, the Zheng archive, COCO with segmentations)")
        parts = train_val_test_split(ds, val=val, test=test, seed=seed, stratify=len(ds.class_names) > 1,
                                     groups=split_groups(ds, group_near_copies))
        tr, te = SmearDataset.concat([parts["train"], parts["val"]]) if "val" in parts else parts["train"], parts["test"]
        # a seeded draw, not the first images: a dataset ordered by domain (Zheng: Dataset 1, then
        # 2) gave quick runs Dataset 1 alone
        tr, te = _draw(tr, max_train, seed), _draw(te, max_test, seed)
        name = ds.name
    return {"train": as_single_class(tr), "test": as_single_class(te), "name": name}


def _draw(dataset: SmearDataset, n: int | None, seed: int) -> SmearDataset:
    """At most ``n`` images of ``dataset``, drawn with ``seed`` and kept in their order (all when
    ``n`` is None or not smaller)."""
    if not n or n >= len(dataset):
        return dataset
    keep = np.sort(np.random.default_rng(seed).choice(len(dataset), size=int(n), replace=False))
    return dataset.subset(keep.tolist(), name=dataset.name)


def segmentation_splits(spec: str = "synthetic", *, quick: bool = True, seed: int = 0, val: float = 0.15,
                        test: float = 0.2, group_near_copies: bool = True) -> dict:
    """Train / val / test splits (by image) whose samples carry instance masks AND class maps.

    * ``"synthetic"``: one staining style, 32 smears of 320 x 240 in quick mode (200 of 512 x 384
      otherwise); instances RBC / WBC / Platelets, class map background / cell / nucleus.
    * Zheng WBC (archive or folder): instances "cell" and "nucleus" from the class maps
      (:func:`instances_from_semantic`).
    * Datasets with instance masks only (DSB2018): class map background / foreground
      (:func:`foreground_semantic`).

    Parameters
    ----------
    spec : ``"synthetic"``, or anything :func:`smearlab.data.open_dataset` opens.
    quick : small sets (see above; passed to :func:`smearlab.data.open_dataset` for real data).
    seed : seed of the split and of the synthetic generator.
    val, test : fractions of the images for validation and test (see :func:`train_val_test_split`;
        stratified when the dataset has several classes).
    group_near_copies : keep near-copies on one side of a real dataset's split (as
        :func:`detection_splits`).

    Returns
    -------
    dict
        ``{"train", "val", "test"}``: SmearDatasets.
    """
    if spec == "synthetic":
        ds = open_dataset("synthetic-A", n=32 if quick else 200, seed=seed,
                          **({"width": 320, "height": 240} if quick else {}))
    else:
        ds = open_dataset(spec, quick=quick, seed=seed)
        if not len(ds):
            raise DataError(spec, "no images to segment")
        first = ds[0]
        if first.semantic is not None and (ds.semantic_names or [])[:3] == ["background", "cytoplasm", "nucleus"]:
            ds = instances_from_semantic(ds)
        elif first.semantic is None:
            if not first.has_masks:
                raise DataError(spec, "segmentation needs instance masks or class maps; this dataset has neither")
            ds = foreground_semantic(ds)
    return train_val_test_split(ds, val=val, test=test, seed=seed, stratify=len(ds.class_names) > 1,
                                groups=split_groups(ds, group_near_copies))
