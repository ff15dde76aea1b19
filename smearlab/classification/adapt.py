"""Domain adaptation without training: the simple baselines DANN is measured against.

- :func:`adapt_batchnorm`: the classifier's batch-norm statistics re-estimated on unlabelled
  images of the target domain (AdaBN; Li Y., Wang N., Shi J., Liu J., Hou X. (2016),
  "Revisiting batch normalization for practical domain adaptation", arXiv:1603.04779).
- :func:`stain_normalise`: every crop's colours mapped to the source domain's LAB statistics
  (Reinhard et al. 2001, :class:`smearlab.preprocess.ReinhardNormalizer`), in training and before
  a crop is classified.
- :func:`adapt_feature_statistics`: the same idea as AdaBN for the measured-features classifier
  (:class:`~smearlab.classification.features.FeatureClassifier`): its features standardised with
  the target domain's mean and spread instead of the source's.

Neither adds a training objective; DANN (:func:`smearlab.classification.train.train_dann`) does.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn as nn

from ..core.device import resolve_device
from ..core.training import check_count
from ..preprocess import ReinhardNormalizer
from .crops import CropDataset
from .features import FeatureClassifier, cell_features


def _batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


class _Measured(Exception):
    """Raised by :func:`adapt_batchnorm`'s hook once the layer being measured has seen its input."""


@torch.no_grad()
def adapt_batchnorm(model: nn.Module, target: CropDataset, *, batch_size: int = 64, device="auto") -> nn.Module:
    """A copy of ``model`` whose batch-norm layers hold the target domain's statistics (AdaBN).

    Every batch-norm layer's running mean and variance are re-estimated as the mean and variance
    of what the layer sees over all of ``target``'s crops when the model predicts: layer by layer
    in the order they run, each measured with the layers before it already holding their target
    statistics (one pass per layer, in eval mode; no labels, no gradient). So the statistics do not
    depend on the batch size or the order of the crops (normalising each batch by its own
    statistics on the way, as training does, made a deeper layer's variance move by 60 % with
    the batch size on class-sorted crops). Weights and the model given are unchanged.

    Parameters
    ----------
    model : a classifier with batch-norm layers (``build_classifier(..., norm="batch")``).
    target : unlabelled crops of the target domain (labels are not read).
    batch_size : crops per forward pass.
    device : "auto", "cpu", "cuda".

    Returns
    -------
    nn.Module
        the adapted copy, in eval mode.

    Raises
    ------
    ValueError
        when the model has no batch-norm layer (a GroupNorm model has no statistics to adapt),
        ``target`` holds fewer than two crops, crops of another size than the model's, or
        ``batch_size`` is not a whole number >= 1.
    """
    check_count("batch_size", batch_size)
    if not _batchnorms(model):
        raise ValueError("the model has no batch-norm layers to adapt: build it with norm='batch' "
                         "(GroupNorm normalises each image by itself)")
    if len(target) == 0:
        raise ValueError(f"target {target.name!r} has no crops")
    size = getattr(model, "input_size", None)
    if size and int(target.size) != int(size):
        raise ValueError(f"target crops of {target.size} px for a classifier trained on {size} px crops: the "
                         f"statistics would be measured at another scale; cut them at {size} px")
    if len(target) < 2:
        raise ValueError(f"target {target.name!r} has one crop: batch statistics need at least two")
    dev = resolve_device(device)
    out = copy.deepcopy(model).to(dev).eval()
    ran: list[nn.Module] = []  # the batch-norm layers in the order they run
    hooks = [bn.register_forward_pre_hook(lambda m, _: ran.append(m) if m not in ran else None)
             for bn in _batchnorms(out)]
    try:
        out(target.images[:2].to(dev).float() / 255)
    finally:
        for h in hooks:
            h.remove()
    for bn in ran:  # each layer measured on what the layers before it, already adapted, give it
        acc = [0.0, 0.0, 0]  # per channel: sum, sum of squares, count

        def collect(_, inputs, acc=acc):
            x = inputs[0].detach().double().transpose(0, 1).reshape(inputs[0].shape[1], -1)
            acc[0], acc[1], acc[2] = acc[0] + x.sum(1), acc[1] + (x * x).sum(1), acc[2] + x.shape[1]
            raise _Measured  # the layers after this one do not matter to it: stop the pass here

        hook = bn.register_forward_pre_hook(collect)
        try:
            for b in range(0, len(target), batch_size):
                try:
                    out(target.images[b:b + batch_size].to(dev).float() / 255)
                except _Measured:
                    pass
        finally:
            hook.remove()
        total, squares, n = acc
        mean = total / n
        var = (squares / n - mean * mean).clamp_min(0) * (n / max(n - 1, 1))  # unbiased, as BatchNorm keeps it
        bn.running_mean.copy_(mean.to(bn.running_mean.dtype))
        bn.running_var.copy_(var.to(bn.running_var.dtype))
        bn.num_batches_tracked.fill_(0)
    return out


def stain_normalise(crops: CropDataset, reference: CropDataset, *, normaliser: ReinhardNormalizer | None = None
                    ) -> CropDataset:
    """``crops`` with every crop's colours mapped to ``reference``'s (Reinhard, in CIE LAB).

    Parameters
    ----------
    crops : the crops to normalise (labels, ids and domains kept).
    reference : crops of the domain whose colours are the target (e.g. the source training
        crops); ignored when ``normaliser`` is given.
    normaliser : an already fitted :class:`~smearlab.preprocess.ReinhardNormalizer`.

    Returns
    -------
    CropDataset
        a normalised copy.
    """
    norm = normaliser or ReinhardNormalizer().fit(list(reference.images.permute(0, 2, 3, 1).numpy()))
    imgs = crops.images.permute(0, 2, 3, 1).numpy()
    out = np.stack([norm.transform(x) for x in imgs]) if len(imgs) else imgs
    res = CropDataset(out, crops.labels, crops.class_names, crops.domains, crops.ids, crops.name, groups=crops.groups)
    res.cut = {**(crops.cut or {}), "stain_normalised": True}  # a model trained on these needs the normaliser too
    return res


@torch.no_grad()
def adapt_feature_statistics(model: FeatureClassifier, target: CropDataset, *,
                             features: np.ndarray | None = None) -> FeatureClassifier:
    """A copy of a trained feature classifier that standardises each feature with the target
    domain's mean and standard deviation (no labels read; weights and the model given unchanged).

    A lab whose stain is bluer or whose cells are imaged larger shifts every feature; the
    regression's weights were fitted on standardised source features, so re-centring them on the
    target puts the target's cells where the source's were.

    Parameters
    ----------
    model : a trained :class:`~smearlab.classification.features.FeatureClassifier`.
    target : unlabelled crops of the target domain (at least two).
    features : ``target``'s :func:`~smearlab.classification.features.cell_features`, when already measured.

    Raises
    ------
    TypeError
        for a model of another kind (use :func:`adapt_batchnorm` for a ResNet).
    ValueError
        when ``target`` has fewer than two crops.
    """
    if not isinstance(model, FeatureClassifier):
        raise TypeError(f"adapt_feature_statistics needs a FeatureClassifier, got {type(model).__name__} "
                        "(a ResNet adapts with adapt_batchnorm)")
    if len(target) < 2:
        raise ValueError(f"target {target.name!r} has {len(target)} crops: the statistics need at least two")
    x = cell_features(target) if features is None else np.asarray(features, np.float32)
    if x.shape != (len(target), model.num_features):
        raise ValueError(f"features must be ({len(target)}, {model.num_features}), got {x.shape}")
    scale = x.std(0)
    keep = scale < 1e-6  # a feature constant on the target keeps the source's spread
    out = copy.deepcopy(model)
    out.mean.copy_(torch.from_numpy(x.mean(0)))
    out.scale.copy_(torch.where(torch.from_numpy(keep), model.scale.cpu(), torch.from_numpy(scale)))
    return out.eval()
