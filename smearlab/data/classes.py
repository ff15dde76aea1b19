"""Class names across datasets and models: matched by name, never by position.

Two datasets (or a model and a dataset) may list the same classes in another order
(``[Platelets, RBC, WBC]`` against ``[WBC, RBC, Platelets]``) or spell them differently
(``Platelet`` / ``Platelets``, ``rbc`` / ``RBC``). Label ids are only meaningful with their
class list, so wherever labels of one list meet another, :func:`match_classes` maps them by
name and says what it mapped, or refuses with an error that shows both lists.

Rules, in this order, for each source class:

1. a user mapping ``class_map={source name: target name}`` (explicit, always wins);
2. the same name;
3. an alias: the same :func:`canonical` name, i.e. equal after ignoring case, spaces,
   ``_`` / ``-`` and a plural ending (``Platelets`` = ``platelet``, ``WBCs`` = ``WBC``,
   ``red_blood_cells`` = ``Red blood cell``). An alias that fits several target classes is an
   error, never a guess.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

log = logging.getLogger("smearlab.data")


class ClassMismatchError(ValueError):
    """Two class lists that cannot be matched by name; the message shows both lists."""


def canonical(name: str) -> str:
    """The form two spellings of one class share: lower case, words separated by one space,
    a plural ``s`` / ``es`` / ``ies`` ending removed from the last word.

    Parameters
    ----------
    name : a class name (converted with ``str``).
    """
    words = re.sub(r"[\s_\-]+", " ", str(name).lower()).strip().split(" ")  # "lymphocytes_": no empty last word
    last = words[-1]
    if len(last) > 4 and last.endswith("ies"):
        last = last[:-3] + "y"
    elif len(last) > 3 and last.endswith(("ches", "shes", "sses", "xes")):
        last = last[:-2]
    elif len(last) > 2 and last.endswith("s") and not last.endswith(("ss", "us", "is")):
        last = last[:-1]
    return " ".join([*words[:-1], last])


def whole_labels(values, what: str = "labels") -> np.ndarray:
    """Class indices as int64, in the shape given; ValueError naming ``what`` for fractions, NaN,
    booleans or non-numbers (never truncated: 1.7 would become class 1). Whole floats (1.0) pass.

    Parameters
    ----------
    values : the labels (a sequence or an array).
    what : what the values are, for the error message.
    """
    a = np.asarray(values)
    if a.dtype == bool or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        if a.size:
            raise ValueError(f"{what} must hold class indices (whole numbers), got dtype {a.dtype}: "
                             f"{a.reshape(-1)[:3].tolist()}")
        return a.astype(np.int64)
    if np.issubdtype(a.dtype, np.floating):
        bad = ~(np.isfinite(a) & (a == np.round(a)))
        if bad.any():
            raise ValueError(f"{what} must hold class indices (whole numbers), got {a[bad][:3].tolist()}")
    return a.astype(np.int64)


@dataclass
class ClassMapping:
    """How the labels of ``source`` classes become labels of ``target`` classes.

    Parameters
    ----------
    source, target : the two class lists.
    lut : ``(len(source),)`` int64; ``lut[i]`` is the target index of source class ``i``, or
        -1 for a source class with no target (its objects are dropped by whoever applies it).
    how : ``{source name: "same" | "alias" | "class_map"}`` for every matched class.
    """

    source: list[str]
    target: list[str]
    lut: np.ndarray
    how: dict[str, str] = field(default_factory=dict)

    @property
    def identity(self) -> bool:
        """Whether labels stay as they are (same classes in the same order)."""
        return self.source == self.target

    @property
    def unmatched(self) -> list[str]:
        """Source classes with no target class."""
        return [n for n, t in zip(self.source, self.lut) if t < 0]

    def describe(self) -> str:
        """What was mapped, for the log: renamed classes, a new order or new label ids, unmatched
        source classes and target classes no source class maps to."""
        renamed = [f"{s!r} -> {self.target[t]!r} ({self.how[s]})" for s, t in zip(self.source, self.lut)
                   if t >= 0 and self.how.get(s) != "same"]
        parts = []
        if renamed:
            parts.append("renamed " + ", ".join(renamed))
        used = [t for t in self.lut.tolist() if t >= 0]
        if used != sorted(used):
            parts.append(f"reordered {self.source} -> {self.target}")
        elif any(t != i for i, t in enumerate(self.lut.tolist()) if t >= 0):
            parts.append(f"label ids renumbered {self.source} -> {self.target}")
        if self.unmatched:
            parts.append(f"no counterpart for {self.unmatched}")
        extra = [n for i, n in enumerate(self.target) if i not in set(used)]
        if extra:
            parts.append(f"target classes without a source class: {extra}")
        return "; ".join(parts) or "same classes"

    def labels(self, labels: np.ndarray) -> np.ndarray:
        """``labels`` of the source list as labels of the target list (-1: unmatched).

        Parameters
        ----------
        labels : integer labels indexing ``source``; a negative label (-1: unlabelled) stays -1.

        Returns
        -------
        np.ndarray
            int64 labels indexing ``target``, -1 for unmatched source classes and unlabelled items.

        Raises
        ------
        ValueError
            for fractional or non-numeric labels, or labels past the ``source`` classes.
        """
        labels = whole_labels(labels)
        if (labels >= len(self.source)).any():
            raise ValueError(f"label {int(labels[labels >= len(self.source)][0])} outside the {len(self.source)} "
                             f"source classes {self.source} (-1 marks an unlabelled item)")
        out = np.full(labels.shape, -1, np.int64)
        known = labels >= 0  # -1 (unlabelled) read as lut[-1] became the last class
        out[known] = self.lut[labels[known]]
        return out


def match_classes(source: Sequence[str], target: Sequence[str], class_map: Mapping[str, str] | None = None,
                  *, require: str = "none", what: str = "classes", merge: bool = False) -> ClassMapping:
    """Map the ``source`` class list onto the ``target`` list by name (see the module docstring).

    Parameters
    ----------
    source, target : class lists.
    class_map : ``{source name: target name}`` for names no rule would match
        (e.g. ``{"red blood cell": "RBC"}``).
    require : ``"none"`` (source classes without a target are left unmatched, -1),
        ``"source"`` (every source class must match), or ``"both"`` (one-to-one: every source
        and every target class must match).
    what : what the lists are, for the error message (e.g. ``"the model's and the dataset's
        classes"``).
    merge : let ``class_map`` send source classes onto a target class another source class
        also becomes (``class_map={"rbc": "RBC"}`` beside ``RBC``: the twins merged by name, as
        asked); still an error when two of them got there by a rule (same name, alias).

    Raises
    ------
    ClassMismatchError
        when a required class has no counterpart, two source classes land on one target
        class (but see ``merge``), an alias is ambiguous, or ``class_map`` names a class that is not in the lists;
        the message shows both lists.
    """
    source, target = [str(n) for n in source], [str(n) for n in target]
    if require not in ("none", "source", "both"):
        raise ValueError(f"require must be 'none', 'source' or 'both', got {require!r}")
    class_map = dict(class_map or {})

    def fail(problem: str) -> ClassMismatchError:
        return ClassMismatchError(f"{what} do not match: {problem}; source classes {source}, "
                                  f"target classes {target} (map them by name with "
                                  "class_map={source name: target name})")

    for s_name, t_name in class_map.items():
        if s_name not in source:  # a typo would leave the class it meant unmatched, its data dropped
            raise fail(f"class_map maps {s_name!r}, which is not a source class")
        if t_name not in target:
            raise fail(f"class_map sends {s_name!r} to {t_name!r}, which is not a target class")
    by_canon: dict[str, list[int]] = {}
    for j, n in enumerate(target):
        by_canon.setdefault(canonical(n), []).append(j)
    lut = np.full(len(source), -1, np.int64)
    how: dict[str, str] = {}
    for i, n in enumerate(source):
        if n in class_map:
            lut[i], how[n] = target.index(class_map[n]), "class_map"
        elif n in target:
            lut[i], how[n] = target.index(n), "same"
        else:
            hits = by_canon.get(canonical(n), [])
            if len(hits) > 1:
                raise fail(f"{n!r} could be any of {[target[j] for j in hits]}")
            if hits:
                lut[i], how[n] = hits[0], "alias"
    used = [t for t in lut.tolist() if t >= 0]
    for dup in sorted({t for t in used if used.count(t) > 1}):
        both = [source[i] for i in range(len(source)) if lut[i] == dup]
        if not merge or sum(how[n] != "class_map" for n in both) > 1:  # a merge asked for by name is no guess
            raise fail(f"{both} would all become {target[dup]!r}")
    mapping = ClassMapping(source, target, lut, how)
    if require in ("source", "both") and mapping.unmatched:
        raise fail(f"no target class for {mapping.unmatched}")
    missing = [n for j, n in enumerate(target) if j not in used]
    if require == "both" and missing:
        raise fail(f"no source class for {missing}")
    return mapping


def per_class(value, class_names: Sequence[str], what: str, default=None) -> np.ndarray | None:
    """A ``(K,)`` float array from a scalar, a per-class sequence or a ``{class name: value}`` dict.

    ``None`` stays None. A dict naming an unknown class raises ``ValueError``; classes it does not
    name get ``default`` (``ValueError`` when ``default`` is None).

    Parameters
    ----------
    value : None, a scalar (the same for every class), a sequence of ``K`` values in class order,
        or a ``{class name: value}`` mapping.
    class_names : the ``K`` class names.
    what : the setting's name, for error messages (e.g. ``"score_thresholds"``).
    default : the value of classes a mapping does not name (None: every class must be named).
    """
    if value is None:
        return None
    k = len(class_names)
    if isinstance(value, Mapping):
        unknown = [n for n in value if n not in class_names]
        if unknown:
            raise ValueError(f"{what}: unknown class {unknown[0]!r}; classes are {list(class_names)}")
        missing = [n for n in class_names if n not in value]
        if missing and default is None:
            raise ValueError(f"{what}: no value for class {missing[0]!r}")
        out = np.array([float(value.get(n, default)) for n in class_names])
    elif np.ndim(value) == 0:
        out = np.full(k, float(value))
    else:
        out = np.asarray(value, float).reshape(-1)
        if len(out) != k:
            raise ValueError(f"{what}: {len(out)} values for {k} classes {list(class_names)}")
    if np.isnan(out).any():
        raise ValueError(f"{what}: NaN value")
    return out


def model_class_names(class_names: Sequence[str]) -> list[str]:
    """The class list a model is built with, as strings; ``ValueError`` when it is empty or holds
    a name twice (a model's outputs are indexed by it).

    Parameters
    ----------
    class_names : the classes, in output order.
    """
    names = [str(c) for c in class_names]
    if not names:
        raise ValueError("class_names is empty: a classifier needs at least one class")
    if len(set(names)) != len(names):
        raise ValueError(f"class_names has duplicates: {names}")
    return names
