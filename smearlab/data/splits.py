"""Train/val/test splits by image, stratified K-fold, and a leak check between splits.

Stratification is on the *set of classes an image holds* (e.g. ``{RBC, WBC}`` vs
``{RBC, Platelets}``), so rare classes are spread over the folds rather than pooled in one.
Combinations too rare to stratify are merged into one group.
"""
from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
from sklearn.model_selection import StratifiedKFold, train_test_split

from .sample import SmearDataset


def class_signature(dataset: SmearDataset) -> list[str]:
    """One stratification key per image: the sorted class indices it holds ("-" for none)."""
    keys = []
    for s in dataset:
        labs = set(s.labels.tolist())
        if s.image_label is not None:
            labs.add(int(s.image_label))
        keys.append("+".join(str(c) for c in sorted(labs)) or "-")
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
    _, counts = np.unique(keys, return_counts=True)
    return keys if len(counts) > 1 and counts.min() >= min_count else None


def train_val_test_split(dataset: SmearDataset, val: float = 0.15, test: float = 0.15,
                         seed: int = 0, stratify: bool = True) -> dict[str, SmearDataset]:
    """Split by image into ``{"train", "val", "test"}`` (fractions of the whole set).

    ``val`` or ``test`` may be 0 to leave that split out.
    """
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise ValueError(f"val={val} and test={test} must be fractions with val + test < 1")
    idx = np.arange(len(dataset))
    keys = np.array(class_signature(dataset))
    parts: dict[str, np.ndarray] = {}
    rest = idx
    for name, frac, remaining in (("test", test, 1.0), ("val", val, 1.0 - test)):
        if frac == 0:
            continue
        n_take = int(np.ceil(frac / remaining * len(rest)))
        strat = _stratify(keys[rest], 2, min(n_take, len(rest) - n_take)) if stratify else None
        rest, taken = train_test_split(rest, test_size=n_take, random_state=seed, stratify=strat)
        parts[name] = np.sort(taken)
    parts["train"] = np.sort(rest)
    return {k: dataset.subset(v.tolist(), name=f"{dataset.name}:{k}")
            for k, v in (("train", parts["train"]), ("val", parts.get("val")),
                         ("test", parts.get("test"))) if v is not None}


def kfold(dataset: SmearDataset, k: int = 5, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified K-fold by image: a list of ``(train_indices, test_indices)``.

    Each image appears in exactly one test fold.
    """
    if k < 2 or k > len(dataset):
        raise ValueError(f"k={k} folds need 2 <= k <= number of images ({len(dataset)})")
    keys = _mergeable_keys(class_signature(dataset), k)
    _, counts = np.unique(keys, return_counts=True)
    if counts.min() < k:  # even the merged group is too small: plain shuffled folds
        keys = np.zeros(len(dataset), int)
    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return [(tr, te) for tr, te in skf.split(np.zeros(len(dataset)), keys)]


def content_hash(sample) -> str:
    """SHA-1 of the image file's bytes (of the pixels when the sample has no file)."""
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


@dataclass
class LeakReport:
    """Images shared between splits, by file name and by content."""

    same_name: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    same_content: dict[tuple[str, str], list[tuple[str, str]]] = field(default_factory=dict)
    duplicates_within: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    @property
    def leaks(self) -> bool:
        return bool(self.same_name or self.same_content)

    def summary(self) -> dict:
        return {
            "leak": self.leaks,
            "same_name": {f"{a}/{b}": len(v) for (a, b), v in self.same_name.items()},
            "same_content": {f"{a}/{b}": len(v) for (a, b), v in self.same_content.items()},
            "duplicates_within": {k: len(v) for k, v in self.duplicates_within.items()},
        }

    def __str__(self) -> str:
        if not self.leaks and not self.duplicates_within:
            return "no leaks between splits and no duplicates within them"
        lines = []
        for (a, b), v in self.same_name.items():
            lines.append(f"{len(v)} file names in both {a} and {b} (e.g. {v[0]})")
        for (a, b), v in self.same_content.items():
            lines.append(f"{len(v)} identical images in both {a} and {b} (e.g. {v[0][0]} = {v[0][1]})")
        for k, v in self.duplicates_within.items():
            lines.append(f"{len(v)} duplicate images within {k} (e.g. {v[0][0]} = {v[0][1]})")
        return "\n".join(lines)


def check_leaks(splits: Mapping[str, SmearDataset]) -> LeakReport:
    """Find images that appear in more than one split (same file name or same content).

    Content is compared by a hash of the file bytes, so re-saved or re-encoded copies are not
    caught; identical copies under another name are.
    """
    names = {k: {(Path(s.path).name if s.path else s.image_id): s for s in ds} for k, ds in splits.items()}
    hashes: dict[str, dict[str, str]] = {}
    rep = LeakReport()
    for k, ds in splits.items():
        seen: dict[str, str] = {}
        for s in ds:
            h = content_hash(s)
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
    return rep
