"""What notebook 07 runs: source-only, DANN, the simple baselines (stain normalisation, AdaBN),
mixed and oracle classifiers between two domains; with the ResNet, or with the measured-features
classifier and its own baseline (its feature statistics re-estimated on the target)."""
from __future__ import annotations

import hashlib
import logging
import numbers
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..classification.adapt import adapt_batchnorm, adapt_feature_statistics, stain_normalise
from ..classification.crops import CropDataset, align_classes, crops_from_dataset, shared_classes
from ..classification.model import ARCHS, DANN, CellClassifier, build_classifier
from ..classification.predict import predict_classes
from ..classification.train import fit, fit_features, train_dann
from ..data import open_dataset
from ..data.synthetic import make_wbc_crops
from ..metrics.classification import classification_report
from .profiles import dataset_label

log = logging.getLogger(__name__)


#: Every method :func:`run_experiment` knows, in table order: source labels only; DANN (plus
#: unlabelled target images); the two simple baselines (every crop, training and test, with its
#: colours normalised to the source training crops; a batch-norm model whose statistics are
#: re-estimated on the unlabelled target images); both domains labelled; target labels only (the
#: oracle).
METHODS = ("source_only", "dann", "stain_norm", "adabn", "mixed", "oracle")
#: The methods of the measured-features classifier (``arch="features"``): ``feature_stats`` is the
#: source model with its feature standardisation re-estimated on the unlabelled target images
#: (:func:`~smearlab.classification.adapt.adapt_feature_statistics`, AdaBN's counterpart).
FEATURE_METHODS = ("source_only", "feature_stats", "stain_norm", "mixed", "oracle")


def _key(ds: CropDataset) -> str:
    """A digest of a crop set's pixels, labels, ids and classes (identifies identical trainings)."""
    h = hashlib.sha1(ds.images.numpy().tobytes())
    h.update("\n".join(ds.ids).encode())
    h.update(ds.labels.tobytes())
    h.update("|".join(ds.class_names).encode())
    return h.hexdigest()[:16]


def _scores(rep: dict) -> dict[str, float]:
    return {"precision": rep["macro"]["precision"], "recall": rep["macro"]["recall"], "f1": rep["macro"]["f1"],
            "weighted_f1": rep["weighted"]["f1"], "accuracy": rep["accuracy"]}


@dataclass
class ExperimentResult:
    """The outcome of :func:`run_experiment` for one direction (source -> target).

    ``scores[method][split]`` is a list (one per seed) of score dicts (``precision``, ``recall``,
    ``f1`` macro, ``weighted_f1``, ``accuracy``); ``split`` is ``"target"`` or ``"source"``
    (the test splits), and for ``"adabn"`` also ``"target_unadapted"``: its batch-norm model on the
    target before the statistics were re-estimated (AdaBN's own baseline: source only is a
    group-norm model, so AdaBN's gain over it mixes the norm with the adaptation). ``confusion[method][split]`` is the confusion matrix summed over seeds.

    Parameters
    ----------
    source, target : the names of the source and the target domain.
    shared_classes : the classes trained on and scored (enough crops in both domains).
    missing_classes : ``{class: {domain name: count}}`` of the classes left out.
    seeds : the training seeds (one model per seed and method).
    split_seed : the seed of the train/test split of each domain.
    test_fraction : the share of each domain's crops held out for testing.
    sizes : the crop counts ``source_train``, ``source_test``, ``target_train``, ``target_test``
        (shared classes only) and ``target_unlabelled`` (the whole target training split, what
        DANN, AdaBN and the feature statistics see without labels).
    settings : the training settings (``steps``, ``batch_size``, ``lr``, ``width``, ``norm``, ``blocks``,
        the ``domain_*`` options, ``min_count``, ``crop_size``, ``augment``).
    scores : ``{method: {split: [score dict per seed]}}``, see above.
    confusion : ``{method: {split: K x K confusion matrix summed over seeds}}``.
    history : ``{method: [training history per seed]}``.
    class_mapping : how the target's class names were matched to the source's
        (:meth:`~smearlab.data.classes.ClassMapping.describe`).
    """

    source: str
    target: str
    shared_classes: list[str]
    missing_classes: dict[str, dict]
    seeds: list[int]
    split_seed: int
    test_fraction: float
    sizes: dict[str, int]
    settings: dict[str, Any]
    scores: dict[str, dict[str, list[dict]]] = field(default_factory=dict)
    confusion: dict[str, dict[str, list]] = field(default_factory=dict)
    history: dict[str, list] = field(default_factory=dict)
    class_mapping: str = "same classes"

    def describe(self) -> str:
        """One line: the direction, the shared classes, those left out, and the seeds."""
        return (f"{self.source} → {self.target} (shared classes: {', '.join(self.shared_classes)}; "
                f"left out: {', '.join(self.missing_classes) or 'none'}; mean ± std over {len(self.seeds)} seeds)")

    def mean(self, method: str, split: str = "target", metric: str = "f1") -> float:
        """Mean over seeds of ``metric`` (macro ``f1`` by default) of ``method`` on ``split``.

        Parameters
        ----------
        method : one of the methods run (a key of ``scores``, see :data:`METHODS`).
        split : the test split, ``"target"`` or ``"source"``.
        metric : a key of the score dicts: ``precision``, ``recall``, ``f1``, ``weighted_f1``, ``accuracy``.
        """
        return float(np.mean([s[metric] for s in self.scores[method][split]]))

    def std(self, method: str, split: str = "target", metric: str = "f1") -> float:
        """Sample standard deviation over seeds (``ddof=1``: the spread of a new seed's score) of
        ``metric`` (macro ``f1`` by default) of ``method`` on ``split``; NaN with one seed.

        Parameters
        ----------
        method, split, metric : as for :meth:`mean`.
        """
        return seed_std([s[metric] for s in self.scores[method][split]])

    def summary(self) -> dict[str, float]:
        """Flat headline numbers: ``<method>_f1`` (target), ``<method>_source_f1`` (and
        ``adabn_unadapted_f1``), with ``_std``."""
        out: dict[str, float] = {}
        for m in self.scores:
            for split, suffix in (("target", ""), ("source", "_source"), ("target_unadapted", "_unadapted")):
                if split in self.scores[m]:
                    out[f"{m}{suffix}_f1"] = self.mean(m, split)
                    out[f"{m}{suffix}_f1_std"] = self.std(m, split)
        return out

    def rows(self) -> list[dict[str, Any]]:
        """The results table: one row per method and test split (target first)."""
        names = {"source_only": self.source, "dann": f"{self.source} + unlabelled {self.target}",
                 "stain_norm": f"{self.source}, every crop's colours normalised to it",
                 "adabn": f"{self.source} (batch norm), statistics of unlabelled {self.target}",
                 "feature_stats": f"{self.source}, feature statistics of unlabelled {self.target}",
                 "mixed": f"{self.source} + {self.target}", "oracle": self.target}
        rows = []
        for split in ("target", "source"):
            for m in self.scores:
                if split not in self.scores[m]:
                    continue
                tested = self.target if split == "target" else self.source
                row = {"method": m, "trained_on": names[m], "tested_on": tested}
                for k in ("precision", "recall", "f1"):
                    row[k] = self.mean(m, split, k)
                    row[f"{k}_std"] = self.std(m, split, k)
                rows.append(row)
        return rows

    def markdown(self) -> str:
        """:meth:`rows` as a Markdown table (mean ± std over seeds)."""
        lines = ["| method | trained on | tested on | precision | recall | macro F1 |", "|---|---|---|---|---|---|"]
        for r in self.rows():
            cells = [f"{r[k]:.3f} ± {r[k + '_std']:.3f}" for k in ("precision", "recall", "f1")]
            lines.append(f"| {r['method']} | {r['trained_on']} | {r['tested_on']} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (everything but the training histories)."""
        return {"source": self.source, "target": self.target, "shared_classes": self.shared_classes,
                "missing_classes": self.missing_classes, "seeds": self.seeds, "split_seed": self.split_seed,
                "test_fraction": self.test_fraction, "sizes": self.sizes, "settings": self.settings,
                "summary": self.summary(), "rows": self.rows(), "scores": self.scores, "confusion": self.confusion,
                "class_mapping": self.class_mapping}


def _as_splits(data, what: str, test_fraction: float, split_seed: int) -> tuple[CropDataset, CropDataset, str]:
    if isinstance(data, CropDataset):
        if len(data) == 0:
            raise ValueError(f"{what} {data.name!r} has no crops")
        tr, te = data.split(test_fraction, split_seed)
        return tr, te, data.name
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(d, CropDataset) for d in data):
        name = data[0].name.rsplit(":", 1)[0]
        return data[0], data[1], name
    raise TypeError(f"{what} must be a CropDataset or a (train, test) pair of them, got {type(data).__name__}")


def run_experiment(source, target, *, methods: Sequence[str] | None = None, seeds: Sequence[int] = (0, 1, 2),
                   test_fraction: float = 0.3, split_seed: int = 0, min_count: int = 2, steps: int = 300,
                   batch_size: int = 32, lr: float = 0.05, width: int = 16, norm: str = "group",
                   blocks: Sequence[int] = (1, 1, 1, 1), domain_weight: float = 1.0, domain_hidden: int = 128,
                   domain_layers: int = 2, domain_dropout: float = 0.2, augment=True, device="auto",
                   cache: dict | None = None, progress: bool = False, arch: str = "resnet") -> ExperimentResult:
    """Source only, DANN, the two simple baselines, mixed and oracle for one direction, several seeds,
    one table.

    Parameters
    ----------
    source, target : one domain each: a :class:`~smearlab.classification.crops.CropDataset` (split here,
        stratified, ``test_fraction`` to test, seed ``split_seed``) or a ``(train, test)`` pair.
    methods : any of :data:`METHODS` (the default; with ``arch="features"``, any of
        :data:`FEATURE_METHODS`, the default then): ``"source_only"`` (source labels), ``"dann"`` (source labels,
        target images without labels), ``"stain_norm"`` (source labels; every crop, in training and
        in testing, with its colours normalised to the source training crops,
        :func:`~smearlab.classification.adapt.stain_normalise`),
        ``"adabn"`` (a batch-norm model trained on the source; on the target its statistics are
        re-estimated from the target training images without labels,
        :func:`~smearlab.classification.adapt.adapt_batchnorm`), ``"mixed"`` (both domains labelled),
        ``"oracle"`` (target labels). The target's class names are matched to the source's by name
        (:func:`~smearlab.classification.crops.align_classes`; the mapping is in ``class_mapping``).
    seeds : one training per seed and method (weights, sampling, augmentation); the split stays fixed.
    test_fraction, split_seed : the share of each class held out for testing and the seed of that split
        (used only for a domain given as one CropDataset).
    min_count : a class needs this many crops in *each* domain to be shared (see :func:`shared_classes`).
        Other classes are reported (a warning and ``missing_classes``) and left out of training and
        evaluation in both domains.
    steps, batch_size, lr : the same training length and optimiser for every method (DANN steps see a
        source and a target batch each).
    width, norm, blocks : the :func:`~smearlab.classification.model.build_classifier` settings.
    domain_weight, domain_hidden, domain_layers, domain_dropout : DANN's domain loss weight and its domain
        classifier (:class:`DomainHead`).
    augment, device, progress : as :func:`~smearlab.classification.train.train_classifier`.
    cache : a dict shared between calls to reuse identical trainings, e.g. source only of A -> B is
        the oracle of B -> A and "mixed" is the same model in both directions.
    arch : ``"resnet"`` (the small ResNet, trained ``steps`` steps) or ``"features"`` (the
        measured-features classifier, :func:`~smearlab.classification.train.fit_features`; the seed
        shuffles its cross-validation folds; the training settings above do not apply to it).

    Returns
    -------
    ExperimentResult
        scores on the target test split for every method and on the source test split too (how much
        DANN costs on the source).
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    allowed = FEATURE_METHODS if arch == "features" else METHODS
    methods = allowed if methods is None else methods
    unknown = [m for m in methods if m not in allowed]
    if unknown or not methods:
        raise ValueError(f"unknown methods {unknown} for arch {arch!r}; choose from {allowed}")
    if not seeds:
        raise ValueError("give at least one seed")
    if len(set(int(s) for s in seeds)) != len(seeds):  # a repeated seed scores one model twice: a smaller spread
        raise ValueError(f"seeds repeat: {list(seeds)}; give each seed once")
    s_tr, s_te, s_name = _as_splits(source, "source", test_fraction, split_seed)
    t_tr, t_te, t_name = _as_splits(target, "target", test_fraction, split_seed)
    t_tr, mapping = align_classes(s_tr, t_tr)
    t_te, _ = align_classes(s_tr, t_te)
    if s_tr.size != t_tr.size:
        raise ValueError(f"source crops are {s_tr.size} px but target crops {t_tr.size} px")
    whole_s = CropDataset.concat([s_tr, s_te], name=s_name)
    whole_t = CropDataset.concat([t_tr, t_te], name=t_name)
    shared, missing = shared_classes(whole_s, whole_t, min_count)
    if len(shared) < 2:
        raise ValueError(f"domains {s_name!r} and {t_name!r} share fewer than two classes with >= {min_count} "
                         f"crops each ({shared}); counts of the others: {missing}")
    if missing:
        warnings.warn(f"{s_name} -> {t_name}: classes {sorted(missing)} are missing or too rare in one domain "
                      f"({missing}); training and evaluating on the {len(shared)} shared classes {shared}",
                      UserWarning, stacklevel=2)
    # what the adaptation methods see of the target: its whole training split, classes the source
    # lacks included, without labels (picking the shared classes' crops would read the labels)
    t_unl = t_tr.unlabelled(shared)
    s_tr, s_te, t_tr, t_te = (d.restrict(shared) for d in (s_tr, s_te, t_tr, t_te))
    settings = {"steps": steps, "batch_size": batch_size, "lr": lr, "width": width, "norm": norm,
                "blocks": list(blocks), "domain_weight": domain_weight, "domain_hidden": domain_hidden,
                "domain_layers": domain_layers, "domain_dropout": domain_dropout, "min_count": min_count,
                "crop_size": s_tr.size, "augment": augment if isinstance(augment, bool) else repr(augment),
                "arch": arch}
    res = ExperimentResult(s_name, t_name, shared, missing, [int(s) for s in seeds], split_seed, test_fraction,
                           {"source_train": len(s_tr), "source_test": len(s_te), "target_train": len(t_tr),
                            "target_test": len(t_te), "target_unlabelled": len(t_unl)}, settings)
    res.class_mapping = mapping.describe()
    cache = {} if cache is None else cache
    normalised: dict[str, CropDataset] = {}
    for m in methods:
        res.scores[m] = {"target": [], "source": []}
        res.confusion[m] = {}
        res.history[m] = []
        for seed in seeds:
            model, hist = _trained(m, s_tr, t_tr, t_unl, int(seed), settings, augment, device, cache, progress)
            res.history[m].append(hist)
            for split, test in (("target", t_te), ("source", s_te)):
                used = model
                if m == "stain_norm":
                    if split not in normalised:
                        normalised[split] = stain_normalise(test, s_tr)
                    test = normalised[split]
                elif m == "adabn" and split == "target":
                    used = adapt_batchnorm(model, t_unl, device=device)
                    before = predict_classes(model, test, device=device).labels  # the same model unadapted
                    res.scores[m].setdefault("target_unadapted", []).append(
                        _scores(classification_report(test.labels, before, shared)))
                elif m == "feature_stats" and split == "target":
                    used = adapt_feature_statistics(model, t_unl)
                pred = predict_classes(used, test, device=device).labels
                rep = classification_report(test.labels, pred, shared)
                res.scores[m][split].append(_scores(rep))
                conf = np.asarray(rep["confusion"])
                prev = res.confusion[m].get(split)
                res.confusion[m][split] = (conf if prev is None else np.asarray(prev) + conf).tolist()
        log.info("%s -> %s %s: target F1 %.3f ± %.3f, source F1 %.3f", s_name, t_name, m, res.mean(m),
                 res.std(m), res.mean(m, "source"))
    return res


def _trained(method: str, s_tr: CropDataset, t_tr: CropDataset, t_unl: CropDataset, seed: int, st: dict, augment,
             device, cache: dict, progress: bool) -> tuple[CellClassifier, list]:
    """The model of one method and seed, from ``cache`` when an identical training was done
    (``t_tr`` the target's labelled training crops, ``t_unl`` the unlabelled ones DANN sees)."""
    if method == "adabn":
        st = {**st, "norm": "batch"}
    if method == "stain_norm":
        data, tgt = stain_normalise(s_tr, s_tr), None
    elif method in ("source_only", "adabn", "feature_stats"):
        data, tgt = s_tr, None
    elif method == "oracle":
        data, tgt = t_tr, None
    elif method == "mixed":
        data = CropDataset.concat(sorted([s_tr, t_tr], key=_key), name="mixed")
        tgt = None
    else:
        data, tgt = s_tr, t_unl
    config = tuple((k, str(v)) for k, v in sorted(st.items()) if tgt is not None or not k.startswith("domain_"))
    key = ("dann" if tgt is not None else "supervised", _key(data), _key(tgt) if tgt is not None else None, seed,
           config)
    if key in cache:
        return cache[key]
    if st.get("arch") == "features":
        clf = build_classifier(data.class_names, arch="features")
        hist = [fit_features(clf, data, seed=seed)]
        cache[key] = (clf, hist)
        return clf, hist
    torch.manual_seed(seed)
    clf = build_classifier(data.class_names, width=st["width"], norm=st["norm"], blocks=st["blocks"],
                           input_size=data.size)
    if tgt is None:
        hist = fit(clf, data, steps=st["steps"], batch_size=st["batch_size"], lr=st["lr"], augment=augment,
                   device=device, seed=seed, progress=progress)
    else:
        dann = DANN(clf, hidden=st["domain_hidden"], layers=st["domain_layers"], dropout=st["domain_dropout"])
        hist = train_dann(dann, data, tgt, steps=st["steps"], batch_size=st["batch_size"], lr=st["lr"],
                          domain_weight=st["domain_weight"], augment=augment, device=device, seed=seed,
                          progress=progress)
    clf.cpu()
    cache[key] = (clf, hist)
    return clf, hist


#: The methods that adapt to the target without its labels.
ADAPTATION = ("dann", "stain_norm", "adabn", "feature_stats")


def goal_check(result: ExperimentResult, min_gain: float = 0.10, max_source_drop: float = 0.02,
               max_std: float = 0.05) -> dict[str, Any]:
    """Did adaptation help? :func:`judge` on the result's means and standard deviations.

    Parameters
    ----------
    result : one direction's result, with ``"source_only"`` and at least one adaptation method.
    min_gain, max_source_drop, max_std : the goal (see :func:`judge`).
    """
    if "source_only" not in result.scores:
        raise KeyError(f"the experiment has no 'source_only' runs (methods {list(result.scores)})")
    if not any(m in result.scores for m in ADAPTATION):
        raise KeyError(f"the experiment has no adaptation method among {ADAPTATION} (methods {list(result.scores)})")
    return judge(result.summary(), min_gain, max_source_drop, max_std)


def judge(summary: dict[str, float], min_gain: float = 0.10, max_source_drop: float = 0.02,
          max_std: float = 0.05) -> dict[str, Any]:
    """The goal check from a direction's headline numbers (:meth:`ExperimentResult.summary`, or
    the same keys read back from a benchmark's JSON).

    For each adaptation method present (:data:`ADAPTATION`): its gain in target macro F1 over
    source only and its drop in source macro F1 (means over seeds; F1 as a fraction, 0.10 is 10
    points). A method meets the goal when it gains at least ``min_gain`` with a seed standard
    deviation (sample, :func:`seed_std`) below ``max_std`` and loses at most ``max_source_drop``
    on the source; with one seed the spread is unknown (NaN) and no method meets it. The
    comparisons are made on the unrounded figures (a gain of 0.09996 does not meet 0.10). The best
    method is the one meeting the goal with the largest gain, else the one with the largest gain
    (of equal gains, the one losing least on the source); a method whose gain is NaN (a figure
    missing in a summary read back) is never the best.

    Parameters
    ----------
    summary : ``<method>_f1``, ``<method>_f1_std`` and ``<method>_source_f1`` for ``source_only``
        and the adaptation methods.
    min_gain : the least gain in target macro F1 (a fraction).
    max_source_drop : the most source macro F1 the method may lose (a fraction).
    max_std : the seed standard deviation of the method's target macro F1 must be below this.

    Returns
    -------
    dict
        ``<method>_gain``, ``<method>_source_drop`` and ``<method>_meets`` per method present;
        ``adabn_step_gain`` (AdaBN against its own batch-norm model unadapted, when the summary
        has ``adabn_unadapted_f1``); ``dann_gain`` and ``source_drop`` (DANN's, when present);
        ``best_method`` (None when no gain is a number), ``best_gain``, ``best_std``,
        ``best_source_drop`` and ``goal_met``.
    """
    ran = [m for m in ADAPTATION if f"{m}_f1" in summary]
    out: dict[str, Any] = {}
    raw: dict[str, float] = {}
    drops: dict[str, float] = {}
    eps = 1e-9  # float noise only: the figures are compared unrounded
    for m in ran:
        gain = summary[f"{m}_f1"] - summary["source_only_f1"]
        drop = summary["source_only_source_f1"] - summary[f"{m}_source_f1"]
        raw[m], drops[m] = gain, drop
        out[f"{m}_gain"], out[f"{m}_source_drop"] = round(gain, 4), round(drop, 4)
        out[f"{m}_meets"] = bool(gain >= min_gain - eps and summary[f"{m}_f1_std"] < max_std
                                 and drop <= max_source_drop + eps)
    if "adabn" in ran and "adabn_unadapted_f1" in summary:
        out["adabn_step_gain"] = round(summary["adabn_f1"] - summary["adabn_unadapted_f1"], 4)
    if "dann" in ran:
        out["source_drop"] = out["dann_source_drop"]
    meeting = [m for m in ran if out[f"{m}_meets"]]
    numbered = [m for m in (meeting or ran) if np.isfinite(raw[m])]
    # equal gains: the one that loses least on the source (not the first in the list)
    best = max(numbered, key=lambda m: (raw[m], -drops[m])) if numbered else None
    out.update(best_method=best, best_gain=out[f"{best}_gain"] if best else None,
               best_std=round(summary[f"{best}_f1_std"], 4) if best else None,
               best_source_drop=out[f"{best}_source_drop"] if best else None, goal_met=bool(meeting))
    return out


def _crop_source(ds, source: str) -> str:
    """``source="auto"`` made concrete for one dataset (see :func:`domain_crops`)."""
    if source != "auto":
        return source
    if len(ds) and all(len(s.boxes) == 1 for s in ds):
        return "boxes"
    return "central" if len(ds) and all(s.image_label is not None for s in ds) else "image"


def domain_crops(spec, size: int = 64, *, domain: str | None = None, source: str = "auto",
                 pad: float | None = None, name: str | None = None) -> CropDataset:
    """One domain of labelled cell crops from a dataset path.

    Parameters
    ----------
    spec : a dataset path or archive for :func:`~smearlab.data.open_dataset`; ``"PATH#DOMAIN"``
        picks one domain of a dataset whose samples carry one (``wbc_zheng.tar.xz#dataset2``).
    size : crop side in pixels.
    domain : the domain to keep (instead of ``#DOMAIN`` in ``spec``); None: every sample.
    source : ``"boxes"`` (square window around each box), ``"central"`` (the cell at the centre
        of each single-cell image, found by colour, see
        :func:`~smearlab.classification.crops.crops_from_dataset`), ``"image"`` (whole image) or
        ``"auto"``: boxes when every sample has exactly one box (Zheng: the whole-cell box from
        the mask), else central when every sample has an image label (PBC), else image.
    pad : margin around the box (fraction of its longer side); None: the source's default.
    name : the domain's name (default: the domain, else the dataset's name without ``_subset``).
    """
    path, _, dom = str(spec).partition("#")
    domain = domain or dom or None
    ds = open_dataset(path)
    if domain is not None:
        groups = ds.by_domain()
        if domain not in groups:
            raise ValueError(f"{path}: no domain {domain!r}; its domains are {sorted(groups)}")
        ds = groups[domain]
    crops = crops_from_dataset(ds, size, source=_crop_source(ds, source), pad=pad)
    crops.name = name or domain or ds.name.removesuffix("_subset")
    return crops


def domain_pair(spec="synthetic", size: int = 64, *, n: int = 200, seed: int = 0, source: str = "auto",
                pad: float | None = None, domains: Sequence[str] | None = None) -> tuple[CropDataset, CropDataset]:
    """Two domains of labelled cell crops.

    Parameters
    ----------
    spec : ``"synthetic"``: ``n`` white-cell crops per stain from
        :func:`~smearlab.data.synthetic.make_wbc_crops` (stain A with ``seed``, stain B with ``seed + 1``;
        96 px, letterboxed to ``size``), domains named "A" and "B". A dataset path or archive for
        :func:`~smearlab.data.open_dataset` (e.g. ``wbc_zheng.tar.xz``) whose samples carry a ``domain``.
        Or two specs of :func:`domain_crops`, one per domain (``["wbc_zheng.tar.xz#dataset1", "pbc_subset"]``).
    size : crop side in pixels.
    n : synthetic crops per stain (``spec="synthetic"`` only).
    seed : the seed of the synthetic crops (``spec="synthetic"`` only).
    source, pad : how real images become crops (see :func:`domain_crops`).
    domains : the (source, target) domain names to use, in that order; one may be None (the
        first other domain); default: the first two, sorted.

    Returns
    -------
    (CropDataset, CropDataset)
    """
    if isinstance(spec, (list, tuple)):
        if len(spec) != 2:
            raise ValueError(f"give two domain specs, got {len(spec)}: {list(spec)}")
        a, b = (domain_crops(x, size, source=source, pad=pad) for x in spec)
        return a, b
    if str(spec) == "synthetic":
        names = _two_domains(spec, ["A", "B"], domains)
        made = {"A": seed, "B": seed + 1}
        a, b = (crops_from_dataset(make_wbc_crops(n, seed=made[d], stain=d, size=96), size) for d in names)
        a.name, b.name = names
        return a, b
    ds = open_dataset(spec)
    groups = ds.by_domain()
    names = _two_domains(spec, sorted(groups), domains)
    a, b = (crops_from_dataset(groups[d], size, source=_crop_source(groups[d], source), pad=pad) for d in names)
    a.name, b.name = names
    return a, b


def _two_domains(spec, found: list[str], domains) -> list[str]:
    """The (source, target) domain names: ``domains`` as asked (one side may be None: the first
    other domain found), or the first two found."""
    if domains is None:
        names = found[:2]
    else:
        names = list(domains)
        if len(names) == 2 and names[0] is None and names[1] is not None:
            names[0] = next((d for d in found if d != names[1]), None)
        elif len(names) == 2 and names[1] is None and names[0] is not None:
            names[1] = next((d for d in found if d != names[0]), None)
    if len(names) != 2 or names[0] == names[1] or any(d not in found for d in names):
        raise ValueError(f"{spec}: need two different domains, found {found}" +
                         (f" (asked for {list(domains)})" if domains is not None else ""))
    return names


def third_domain(spec=None, size: int = 64, *, dataset="synthetic", data_root=None) -> CropDataset | None:
    """The third domain notebook 07 adapts to (a target only), or None.

    Parameters
    ----------
    spec : a dataset path for :func:`domain_crops` (e.g. ``pbc_subset``); None: the PBC subset
        under ``data_root`` when the notebook runs on real data and it is there, else no third domain.
    size : crop side in pixels.
    dataset : the notebook's ``dataset`` (``"synthetic"`` has no real third domain).
    data_root : the folder of the real datasets (``smearlab report --data-root``), or None.
    """
    if spec is None:
        if str(dataset) == "synthetic" or data_root is None or not (Path(data_root) / "pbc_subset").is_dir():
            return None
        spec = Path(data_root) / "pbc_subset"
    return domain_crops(spec, size)


def _short(name: str) -> str:
    name = name.removesuffix("_subset")
    return ("d" + name[len("dataset"):]) if name.startswith("dataset") else name.lower()


def run_directions(a: CropDataset, b: CropDataset, third: CropDataset | None = None, **kw
                   ) -> dict[str, ExperimentResult]:
    """:func:`run_experiment` both ways between ``a`` and ``b`` (and from each of them to ``third``),
    sharing trainings: ``{"a_to_b": ..., "b_to_a": ..., "a_to_third": ..., "b_to_third": ...}``.

    Keys use short domain names ("dataset1" -> "d1", "A" -> "a"): ``d1_to_d2``, ``d2_to_d1``,
    ``d1_to_pbc``. ``kw`` goes to :func:`run_experiment` (``cache`` is provided here).

    Parameters
    ----------
    a, b : the crop datasets of the two domains (:func:`domain_pair`).
    third : a third domain used as a target only (e.g. PBC: another lab, camera and stain), or None.
    kw : keyword arguments of :func:`run_experiment` (``seeds``, ``steps``, ``batch_size``, ``width``,
        ``norm``, ``device`` ...); a ``cache`` given here is shared by all directions.
    """
    cache = kw.pop("cache", None)
    cache = {} if cache is None else cache
    pairs = [(a, b), (b, a)] + ([(a, third), (b, third)] if third is not None else [])
    return {f"{_short(s.name)}_to_{_short(t.name)}": run_experiment(s, t, cache=cache, **kw) for s, t in pairs}


def seed_std(values) -> float:
    """The sample standard deviation (``ddof=1``) of per-seed scores; NaN for fewer than two.

    The population form (``ddof=0``) is smaller by ``sqrt((n - 1) / n)`` (0.71 with two seeds,
    0.89 with five): a spread check against it passes too easily.

    Parameters
    ----------
    values : one score per seed.
    """
    v = np.asarray(list(values), dtype=float)
    return float(np.std(v, ddof=1)) if v.size >= 2 else float("nan")


def seed_list(seeds, seed: int = 0) -> tuple[int, ...]:
    """Seeds from a count (``seed``, ``seed + 1``, ...) or an explicit list.

    Parameters
    ----------
    seeds : a number of seeds, the seeds themselves (a list, or text such as ``"0,1,2"`` as
        ``--param seeds=0,1,2`` gives it).
    seed : the first seed when ``seeds`` is a number.

    Raises
    ------
    ValueError
        for a count below 1, an empty list, a seed that is not a whole number, or a repeated seed.
    """
    if isinstance(seeds, str):
        text = seeds.strip().strip("[]()")
        try:
            seeds = [int(v) for v in text.replace(",", " ").split()]
        except ValueError:
            raise ValueError(f"seeds must be a count or a list of whole numbers such as '0,1,2', got {seeds!r}") from None
    if isinstance(seeds, numbers.Integral) and not isinstance(seeds, bool):
        if int(seeds) < 1:
            raise ValueError(f"seeds must be at least 1, got {seeds}")
        return tuple(int(seed) + i for i in range(int(seeds)))
    try:
        values = list(seeds)
    except TypeError:
        raise ValueError(f"seeds must be a count or a list of whole numbers, got {seeds!r}") from None
    if not values:
        raise ValueError("seeds is an empty list")
    bad = [v for v in values if isinstance(v, bool) or not (isinstance(v, numbers.Integral)
                                                             or (isinstance(v, float) and v.is_integer()))]
    if bad:
        raise ValueError(f"seeds must be whole numbers, got {bad[:3]}")
    out = tuple(int(v) for v in values)
    if len(set(out)) != len(out):
        raise ValueError(f"seeds repeat a value: {list(out)} (a repeated seed would count one run twice)")
    return out


def describe_best(check: Mapping[str, Any]) -> str:
    """The best method of a :func:`judge` result and its gain, in words (``"none"`` when no gain was
    a number).

    Parameters
    ----------
    check : a :func:`judge` / :func:`goal_check` result.
    """
    if check.get("best_method") is None:
        return "none (no adaptation gain is a number)"
    return f"{check['best_method']} {100 * check['best_gain']:+.1f} points"


def verdict(results: dict[str, ExperimentResult], min_gain: float = 0.10,
            max_source_drop: float = 0.02, max_std: float = 0.05) -> tuple[str, dict[str, dict], bool]:
    """Whether adaptation met the goal in each direction, as Markdown, with the checks of
    :func:`goal_check` and whether any direction met it. Every adaptation method run is listed
    against source only, so the text says which one helped, if any.

    Parameters
    ----------
    results : ``{direction: result}`` (:func:`run_directions`).
    min_gain, max_source_drop, max_std : the goal, as in :func:`goal_check`.

    Returns
    -------
    (text, checks, goal_met)
        the Markdown, ``{direction: goal_check(...)}`` and whether any direction met the goal.
    """
    checks = {name: goal_check(res, min_gain, max_source_drop, max_std) for name, res in results.items()}
    met = any(c["goal_met"] for c in checks.values())
    lines = []
    for name, res in results.items():
        c = checks[name]
        parts = [f"{m} {res.mean(m):.3f} ± {res.std(m):.3f} ({100 * c[f'{m}_gain']:+.1f} points; source "
                 f"{-100 * c[f'{m}_source_drop']:+.1f}"
                 + (f"; {100 * c['adabn_step_gain']:+.1f} over its own batch-norm model unadapted"
                    if m == "adabn" and "adabn_step_gain" in c else "") + ")"
                 for m in ADAPTATION if f"{m}_gain" in c]
        lines.append(f"- **{name}**: source only {res.mean('source_only'):.3f} ± {res.std('source_only'):.3f} on "
                     f"the target; " + ", ".join(parts) + f". Best: {describe_best(c)}, goal "
                     f"{'met' if c['goal_met'] else '**not met**'}")
    goal = (f"+{100 * min_gain:.0f} points on the target with a seed std below {max_std:.2f}, at most "
            f"{100 * max_source_drop:.0f} lost on the source")
    lines += ["", f"Adaptation **met** the goal ({goal}) in at least one direction." if met else
              f"No adaptation method met the goal ({goal}) in any direction."]
    if any(sum(f"{m}_gain" in c for m in ADAPTATION) > 1 for c in checks.values()):  # several methods tried
        lines.append("The best method of a direction is the one with the largest gain on the target test crops "
                     "themselves (no target labels are held back to choose with): with several methods tried, "
                     "its gain is the best of several, an optimistic figure.")
    note = seed_spread_note(results)
    if note:
        lines.append(note)
    return "\n".join(lines), checks, met


def seed_spread_note(results: dict[str, ExperimentResult]) -> str | None:
    """What the seed spread means for the measured-features classifier (None for other models):
    its seeds change only its cross-validation folds.

    Parameters
    ----------
    results : ``{direction: result}``.
    """
    if not any(r.settings.get("arch") == "features" for r in results.values()):
        return None
    return ("The measured-features classifier's seeds change only its cross-validation folds (the fit is "
            "deterministic): its seed spread is that of the regularisation chosen, not of a training, "
            "and a spread of 0 says nothing about how the figure would hold on other data.")


def adaptation_record(dataset, a: CropDataset, b: CropDataset, seeds, results: dict[str, ExperimentResult],
                      checks: dict[str, dict], goal_met: bool) -> dict[str, Any]:
    """The headline numbers notebook 07 records.

    Parameters
    ----------
    dataset : the notebook's ``dataset`` parameter (named as :func:`~.profiles.dataset_label` does).
    a, b : the crop datasets of the two domains (their names are recorded).
    seeds : the training seeds used.
    results : ``{direction: result}`` (:func:`run_directions`).
    checks : ``{direction: goal_check(...)}`` (:func:`verdict`).
    goal_met : whether any adaptation method met the goal in any direction (:func:`verdict`).
    """
    keep = ("source_only_f1", "dann_f1", "stain_norm_f1", "adabn_f1", "adabn_unadapted_f1", "mixed_f1", "oracle_f1",
            "dann_source_f1", "source_only_source_f1")
    domains = list(dict.fromkeys([a.name, b.name] + [n for r in results.values() for n in (r.source, r.target)]))
    # per direction: a third domain's directions may share more classes (Zheng D1 has one basophil,
    # so D1's directions leave it out and D2 -> PBC keeps it): macro F1 is over those classes
    return {"dataset": dataset_label(dataset), "domains": domains, "seeds": list(seeds),
            "shared_classes": {name: res.shared_classes for name, res in results.items()},
            "missing_classes": {name: res.missing_classes for name, res in results.items()},
            "directions": {name: {k: round(v, 4) for k, v in res.summary().items() if k in keep}
                           for name, res in results.items()},
            "dann_gain": {name: c.get("dann_gain") for name, c in checks.items()},
            "source_drop": {name: c.get("source_drop") for name, c in checks.items()},
            "best_method": {name: c["best_method"] for name, c in checks.items()},
            "best_gain": {name: c["best_gain"] for name, c in checks.items()},
            "goal_met": goal_met}
