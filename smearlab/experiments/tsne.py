"""What notebook 08 runs: embeddings of the held-out crops of two domains (raw pixels, a
source-only classifier, a DANN classifier, AdaBN, and the measured-features classifier with the
source's and with the target's feature statistics), their domain separability and t-SNE maps. The
crops are notebook 07's (:func:`~smearlab.experiments.domain_adaptation.domain_pair`)."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..classification.adapt import adapt_batchnorm, adapt_feature_statistics
from ..classification.crops import CropDataset, align_classes, shared_classes
from ..classification.embed import cnn_embedding, pixel_embedding, separability_table, tsne
from ..classification.model import DANN, build_classifier
from ..classification.predict import predict_classes
from ..classification.train import fit_features, train_classifier, train_dann
from ..metrics.classification import classification_report
from .domain_adaptation import domain_pair
from .profiles import dataset_label

SOURCE_ONLY, ADAPTED, PIXELS = "CNN source only", "CNN DANN", "pixels (PCA)"
#: The embedding of the AdaBN baseline: a batch-norm twin of the source-only model, each domain
#: embedded with its own batch-norm statistics (the target's re-estimated without labels).
ADABN = "CNN AdaBN"
#: The measured-features classifier's standardised features: with the source's statistics for
#: both domains, and with each domain's own (the target's re-estimated without labels).
FEATURES, FEATURES_ADAPTED = "features, source statistics", "features, target statistics"


@dataclass
class EmbeddingComparison:
    """Held-out crops of both domains, the two classifiers' F1 and the embeddings of all three.

    Parameters
    ----------
    source, target : the names of the two domains.
    classes : the classes both domains share (the only ones trained on and embedded).
    source_test, target_test : the held-out half of each domain's crops.
    held_out : both held-out halves together (source first), the points of every embedding.
    f1 : macro F1 per classifier and test domain: ``{"source only" | "DANN" | "AdaBN" | "features" |
        "features + target statistics": {"source" | "target": f1}}``.
    features : per embedding (:data:`PIXELS`, :data:`SOURCE_ONLY`, :data:`ADAPTED`, :data:`ADABN`,
        :data:`FEATURES`, :data:`FEATURES_ADAPTED`) the ``(N, D)`` features of ``held_out``.
    separability : per embedding, :func:`~smearlab.classification.embed.separability`'s figures
        (``linear_domain_accuracy``, ``chance``, ``silhouette`` ...).
    maps : per embedding, the ``(N, 2)`` t-SNE map.
    perplexity : the t-SNE perplexity used (after the cap).
    """

    source: str
    target: str
    classes: list[str]
    source_test: CropDataset
    target_test: CropDataset
    held_out: CropDataset
    f1: dict[str, dict[str, float]]
    features: dict[str, np.ndarray]
    separability: dict[str, dict[str, Any]]
    maps: dict[str, np.ndarray]
    perplexity: float

    def table(self) -> str:
        """Separability of each embedding as a Markdown table."""
        return "| embedding | linear domain accuracy | domain silhouette |\n|---|---|---|\n" + "\n".join(
            f"| {k} | {v['linear_domain_accuracy']:.3f} (chance {v['chance']:.2f}) | {v['silhouette']:.3f} |"
            for k, v in self.separability.items())

    def drops(self) -> tuple[float, float]:
        """How much DANN lowered the linear domain accuracy and the domain silhouette."""
        a, b = self.separability[SOURCE_ONLY], self.separability[ADAPTED]
        return a["linear_domain_accuracy"] - b["linear_domain_accuracy"], a["silhouette"] - b["silhouette"]

    def describe(self) -> str:
        """One sentence: whether the domains became harder to tell apart after DANN."""
        drop, _ = self.drops()
        a, b = self.separability[SOURCE_ONLY], self.separability[ADAPTED]
        return (f"Linear domain accuracy {'dropped' if drop > 0 else 'did NOT drop'} after DANN: "
                f"{a['linear_domain_accuracy']:.3f} -> {b['linear_domain_accuracy']:.3f} (drop {drop:.3f}); "
                f"silhouette {a['silhouette']:.3f} -> {b['silhouette']:.3f}.")


def _is_path(domain) -> bool:
    return domain is not None and Path(str(domain).partition("#")[0]).exists()


def compare_embeddings(dataset, s, *, source: str | None = None, target: str | None = None, perplexity: float = 30,
                       seed: int = 0, device="auto") -> EmbeddingComparison:
    """Train a source-only classifier, a DANN (same initial weights), a batch-norm twin and the
    measured-features classifier on half of each domain's crops, and embed the other half of both
    domains six ways (pixels; source only; DANN; AdaBN; features with the source's statistics and
    with each domain's own).

    Parameters
    ----------
    dataset : ``"synthetic"`` (stains A and B) or a dataset with two domains (the Zheng archive).
    s : settings (:func:`smearlab.experiments.profiles.settings` for ``"08_tsne"``): ``steps``
        (batches of 32 per model), ``input_size`` (crop side), ``width``, ``n_synthetic``.
    source, target : the two domains: a domain of ``dataset`` by name, or the path of another
        dataset (``pbc_subset``: the PBC images, cropped around their central cell as notebook 07
        does, :func:`~smearlab.experiments.domain_adaptation.domain_crops`); one None: the other
        domain of ``dataset``; both None: the first two domains of ``dataset``, sorted.
    perplexity : t-SNE perplexity (capped at a third of the points).
    seed, device : seed and device.

    Returns
    -------
    EmbeddingComparison
    """
    if any(_is_path(d) for d in (source, target)):  # a domain from another dataset, e.g. PBC
        a, b = domain_pair([d if _is_path(d) else f"{dataset}#{d}" for d in (source or "dataset1",
                                                                           target or "dataset2")], s.input_size)
    else:
        domains = None if source is None and target is None else (source, target)
        a, b = domain_pair(dataset, s.input_size, n=s.n_synthetic, seed=seed, domains=domains)
    b, _ = align_classes(a, b)  # names matched with aliases, as notebook 07 does
    classes, missing = shared_classes(a, b)
    if len(classes) < 2:
        raise ValueError(f"domains {a.name!r} and {b.name!r} share fewer than two classes ({classes}); counts of the "
                         f"others: {missing}")
    if missing:
        warnings.warn(f"{a.name} and {b.name}: classes {sorted(missing)} are missing or too rare in one domain "
                      f"({missing}); the embedding shows the {len(classes)} shared classes {classes}", stacklevel=2)
    src_train, src_test = a.restrict(classes).split(0.5, seed)
    tgt_train, tgt_test = b.restrict(classes).split(0.5, seed)
    # what adaptation sees of the target: its training half and the crops of classes the source
    # lacks (never tested), without labels; choosing the shared classes' crops would read labels
    rest = [c for c in b.class_names if c not in classes]
    tgt_train = CropDataset.concat([tgt_train.unlabelled(classes)]
                                   + ([b.restrict(rest).unlabelled(classes)] if rest else []), name=tgt_train.name)
    held_out = CropDataset.concat([src_test, tgt_test], name="held-out")
    if len(held_out) < 4:  # a perplexity below 1 cannot be asked of t-SNE
        raise ValueError(f"{len(held_out)} held-out crops: the embedding needs at least 4 (give more crops per class)")
    torch.manual_seed(seed)  # same initial weights for both models
    source_only = build_classifier(classes, width=s.width, norm="group", input_size=s.input_size)
    train_classifier(source_only, src_train, steps=s.steps, batch_size=32, device=device, seed=seed)
    torch.manual_seed(seed)
    dann = DANN(build_classifier(classes, width=s.width, norm="group", input_size=s.input_size))
    train_dann(dann, src_train, tgt_train, steps=s.steps, batch_size=32, device=device, seed=seed)
    torch.manual_seed(seed)
    bn = build_classifier(classes, width=s.width, norm="batch", input_size=s.input_size)
    train_classifier(bn, src_train, steps=s.steps, batch_size=32, device=device, seed=seed)
    bn_target = adapt_batchnorm(bn, tgt_train, device=device)

    def f1_of(model, d):
        return classification_report(d.labels, predict_classes(model, d, device=device).labels, classes)["macro"]["f1"]
    f1 = {name: {split: f1_of(m, d) for split, d in (("source", src_test), ("target", tgt_test))}
          for name, m in (("source only", source_only), ("DANN", dann.classifier))}
    f1["AdaBN"] = {"source": f1_of(bn, src_test), "target": f1_of(bn_target, tgt_test)}
    measured = build_classifier(classes, arch="features")
    fit_features(measured, src_train, seed=seed)
    measured_target = adapt_feature_statistics(measured, tgt_train)
    f1["features"] = {"source": f1_of(measured, src_test), "target": f1_of(measured, tgt_test)}
    f1["features + target statistics"] = {"source": f1["features"]["source"],
                                          "target": f1_of(measured_target, tgt_test)}
    features = {PIXELS: pixel_embedding(held_out, 50, seed=seed),
                SOURCE_ONLY: cnn_embedding(source_only, held_out, device=device),
                ADAPTED: cnn_embedding(dann.classifier, held_out, device=device),
                ADABN: np.concatenate([cnn_embedding(bn, src_test, device=device),
                                       cnn_embedding(bn_target, tgt_test, device=device)])}
    features[FEATURES] = cnn_embedding(measured, held_out, device="cpu")
    features[FEATURES_ADAPTED] = np.concatenate([features[FEATURES][:len(src_test)],
                                                 cnn_embedding(measured_target, tgt_test, device="cpu")])
    sep = separability_table(features, held_out.domains, seed=seed, groups=held_out.groups)
    p = min(perplexity, (len(held_out) - 1) // 3)
    maps = {name: tsne(x, perplexity=p, seed=seed) for name, x in features.items()}
    return EmbeddingComparison(a.name, b.name, list(classes), src_test, tgt_test, held_out, f1, features, sep, maps, p)


def tsne_record(dataset, result: EmbeddingComparison) -> dict[str, Any]:
    """The headline numbers notebook 08 records.

    Parameters
    ----------
    dataset : the notebook's ``dataset`` parameter (named as :func:`~.profiles.dataset_label` does).
    result : the result of :func:`compare_embeddings`.
    """
    drop, silhouette_drop = result.drops()
    domains = f"{result.source}->{result.target}"
    return {"dataset": f"{dataset_label(dataset)}:{domains}", "classes": result.classes,
            "points": {"source": len(result.source_test), "target": len(result.target_test)},
            "separability": {k: {"linear_domain_accuracy": v["linear_domain_accuracy"], "silhouette": v["silhouette"]}
                             for k, v in result.separability.items()},
            "separability_drop": drop, "silhouette_drop": silhouette_drop,
            "source_only_target_f1": result.f1["source only"]["target"], "dann_target_f1": result.f1["DANN"]["target"],
            "adabn_target_f1": result.f1["AdaBN"]["target"],
            "features_target_f1": result.f1["features"]["target"],
            "features_target_statistics_f1": result.f1["features + target statistics"]["target"],
            "perplexity": result.perplexity}
