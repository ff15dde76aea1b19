"""The white-cell classifiers (a small ResNet, or measured features + logistic regression,
:mod:`smearlab.classification.features`) and the domain-adversarial wrapper (DANN)."""
from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from ..core.device import resolve_device
from ..core.errors import DataError
from ..core.model_folder import read_model_folder, save_model_folder
from ..core.nn import BasicBlock, norm_layer
from ..data.classes import model_class_names
from .features import FEATURE_SIZE, FeatureClassifier




#: Input normalisation inside the model: ``(x - MEAN) / STD`` for x in [0, 1].
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")


class CellClassifier(nn.Module):
    """A small ResNet for cell crops, trained from scratch.

    Stages: ``stem`` (3x3 convolution, stride 2) then ``layer1 .. layer4`` with ``width * (1, 2,
    4, 8)`` channels (strides 1, 2, 2, 2): a 64 px crop ends as 4x4 cells of ``8 * width``
    features. Build it with :func:`build_classifier`.

    Parameters
    ----------
    class_names, width, norm, in_channels, blocks, input_size : see :func:`build_classifier`.

    Attributes
    ----------
    features : ``nn.Sequential`` with children ``stem, layer1, layer2, layer3, layer4``.
    pool : global average pool and flatten, ``(B, C, h, w) -> (B, C)``.
    head : ``nn.Linear(C, len(class_names))``.
    class_names : the classes, in logit order.
    input_size : crop side the model was trained on (used to letterbox new images).
    config : the :func:`build_classifier` arguments (saved with the weights).
    """

    def __init__(self, class_names: Sequence[str], width: int = 32, norm: str = "group",
                 in_channels: int = 3, blocks: Sequence[int] = (1, 1, 1, 1), input_size: int = 64):
        super().__init__()
        self.class_names = model_class_names(class_names)
        if int(width) < 1 or in_channels not in (1, 3) or len(blocks) != 4 or min(blocks) < 1:
            raise ValueError(f"need width >= 1, in_channels 1 or 3 and four block counts >= 1; got "
                             f"width={width}, in_channels={in_channels}, blocks={tuple(blocks)}")
        norm_layer(norm, 8)  # validates the name
        self.config = {"class_names": list(self.class_names), "width": int(width), "norm": str(norm),
                       "in_channels": int(in_channels), "blocks": [int(b) for b in blocks]}
        self.input_size = int(input_size)
        w = int(width)
        chans = [w, 2 * w, 4 * w, 8 * w]
        stages: list[tuple[str, nn.Module]] = [("stem", nn.Sequential(
            nn.Conv2d(in_channels, w, 3, 2, 1, bias=False), norm_layer(norm, w), nn.ReLU()))]
        cin = w
        for i, (c, n) in enumerate(zip(chans, blocks)):
            layer = [BasicBlock(cin if j == 0 else c, c, (1 if i == 0 else 2) if j == 0 else 1, norm)
                     for j in range(n)]
            stages.append((f"layer{i + 1}", nn.Sequential(*layer)))
            cin = c
        self.features = nn.Sequential(OrderedDict(stages))
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.head = nn.Linear(chans[-1], len(self.class_names))
        k = int(in_channels)
        self.register_buffer("mean", torch.tensor(MEAN[:k] if k == 3 else (0.5,)).view(1, k, 1, 1))
        self.register_buffer("std", torch.tensor(STD[:k] if k == 3 else (0.25,)).view(1, k, 1, 1))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for blk in self.modules():  # zero-init the last norm of each block (Goyal et al. 2017)
            if isinstance(blk, BasicBlock):
                nn.init.zeros_(blk.norm2.weight)

    @property
    def num_features(self) -> int:
        return self.head.in_features

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features ``(B, C)`` before the head, for ``x`` ``(B, 3, S, S)`` in [0, 1].

        Parameters
        ----------
        x : ``(B, in_channels, S, S)`` float tensor in [0, 1].
        """
        return self.pool(self.features((x - self.mean) / self.std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``(B, K)`` for ``x`` ``(B, 3, S, S)`` float in [0, 1].

        Parameters
        ----------
        x : ``(B, in_channels, S, S)`` float tensor in [0, 1].
        """
        return self.head(self.embed(x))


#: The classifier architectures :func:`build_classifier` makes.
ARCHS = ("resnet", "features")


def build_classifier(class_names: Sequence[str], *, arch: str = "resnet", width: int = 32, norm: str = "group",
                     in_channels: int = 3, blocks: Sequence[int] = (1, 1, 1, 1),
                     input_size: int | None = None,
                     feature_names: Sequence[str] | None = None,
                     features_version: int | None = None) -> CellClassifier | FeatureClassifier:
    """An untrained classifier.

    Parameters
    ----------
    class_names : the classes.
    arch : ``"resnet"`` (the default): a :class:`CellClassifier` with random weights, trained with
        :func:`~smearlab.classification.train.train_classifier`; ``"features"``: a
        :class:`~smearlab.classification.features.FeatureClassifier` (measured nucleus shape,
        stain and texture + logistic regression), trained with
        :func:`~smearlab.classification.train.fit_features`. With a few dozen labelled crops per
        class the features win (benchmarks/RESULTS.md, domain adaptation); the other arguments
        apply to ``"resnet"`` only.
    width : channels of the first stage (then x2 per stage). 16 trains in seconds on a CPU.
    norm : "group" (default; GroupNorm does not depend on batch statistics, so it neither breaks on
        small batches nor collapses when the test domain's statistics differ) or "batch".
    in_channels : 3 (RGB) or 1.
    blocks : basic blocks per stage (``(1, 1, 1, 1)``: a ResNet-10; ``(2, 2, 2, 2)``: ResNet-18 layout).
    input_size : crop side the model expects (set again by training; default 64 for ``"resnet"``,
        :data:`~smearlab.classification.features.FEATURE_SIZE` for ``"features"``).
    feature_names : ``"features"`` only: the features a saved model was fitted on (read back from
        its folder; a mismatch with this version's is refused).
    features_version : ``"features"`` only: the version of the features a saved model was fitted
        with (another than this one's is said in a warning).
    """
    if arch == "features":
        return FeatureClassifier(class_names, input_size=FEATURE_SIZE if input_size is None else input_size,
                                 feature_names=feature_names, features_version=features_version)
    if arch != "resnet":
        raise ValueError(f"unknown classifier arch {arch!r}; choose one of {', '.join(ARCHS)}")
    input_size = 64 if input_size is None else input_size
    return CellClassifier(class_names, width=width, norm=norm, in_channels=in_channels, blocks=blocks,
                          input_size=input_size)


def save_classifier(model: CellClassifier | FeatureClassifier, folder, **meta) -> Path:
    """Write the classifier as a model folder (:mod:`smearlab.core.model_folder`, kind
    ``"classifier"``); ``meta`` is kept in ``weights.pt``.

    Parameters
    ----------
    model : the trained :class:`CellClassifier` or
        :class:`~smearlab.classification.features.FeatureClassifier` (its ``config``,
        ``input_size``, ``class_names`` and the way its training crops were cut, ``crop_cut``,
        are saved). A model trained on stain-normalised crops is refused: its normaliser is not
        part of the folder, so whoever loads it would classify crops that were not normalised.
    folder : the model folder (created if needed).
    **meta : further plain values kept in ``weights.pt`` (e.g. ``epoch``).

    Returns
    -------
    Path
        ``folder``.
    """
    cut = getattr(model, "crop_cut", None)
    if cut and cut.get("stain_normalised"):
        raise ValueError("this classifier was trained on stain-normalised crops; a model folder does not hold the "
                         "normaliser, so its crops would be classified unnormalised: save one trained on the crops "
                         "themselves")
    config = {**model.config, "input_size": int(model.input_size), **({"crop_cut": cut} if cut else {})}
    return save_model_folder(folder, "classifier", model, config, class_names=model.class_names, side_files=False,
                             **meta)


def load_classifier(folder, device="auto") -> CellClassifier | FeatureClassifier:
    """The classifier of a model folder (:func:`save_classifier`), of the architecture it was saved with.

    Parameters
    ----------
    folder : the model folder.
    device : ``"auto"`` (the default, as every loader: CUDA when there is one), ``"cpu"``, ``"cuda"``...
        (see :func:`~smearlab.core.device.resolve_device`).

    Raises
    ------
    DataError
        naming the file when the folder is missing, unreadable, of another kind, or its weights
        do not fit its config.
    """
    saved = read_model_folder(folder, "classifier")
    config = dict(saved.config)
    cut = config.pop("crop_cut", None)  # how its training crops were cut (folders saved before 2026-12-07: unknown)
    try:
        model = build_classifier(**config)
        model.load_state_dict(saved.state_dict)
        model.crop_cut = cut
    except (TypeError, ValueError, KeyError, RuntimeError) as e:
        raise DataError(Path(folder) / "weights.pt", f"classifier weights do not match config.json: {e}") from None
    return model.to(resolve_device(device)).eval()


class GradReverse(torch.autograd.Function):
    """Identity forward; the backward pass multiplies the incoming gradient by ``-lambda_``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, lambda_: float) -> torch.Tensor:
        """``x`` unchanged (a view); ``lambda_`` is kept for the backward pass.

        Parameters
        ----------
        ctx : the autograd context.
        x : any tensor.
        lambda_ : weight of the reversed gradient (>= 0).
        """
        ctx.lambda_ = float(lambda_)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        """``(-lambda_ * grad, None)``: the reversed gradient of ``x``, none for ``lambda_``.

        Parameters
        ----------
        ctx : the autograd context (holds ``lambda_``).
        grad : gradient of the output.
        """
        return grad.neg() * ctx.lambda_, None


def grad_reverse(x: torch.Tensor, lambda_: float = 1.0) -> torch.Tensor:
    """Apply :class:`GradReverse` with weight ``lambda_`` (>= 0).

    Parameters
    ----------
    x : any tensor.
    lambda_ : weight of the reversed gradient, a finite number >= 0.
    """
    if not math.isfinite(float(lambda_)) or float(lambda_) < 0:
        raise ValueError(f"lambda_ must be a finite number >= 0, got {lambda_!r}")
    return GradReverse.apply(x, float(lambda_))


class GradientReversal(nn.Module):
    """The gradient reversal layer as a module; set ``lambda_`` during training (see :func:`dann_lambda`).

    Parameters
    ----------
    lambda_ : weight of the reversed gradient (>= 0), the attribute ``lambda_``.
    """

    def __init__(self, lambda_: float = 1.0):
        super().__init__()
        self.lambda_ = float(lambda_)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """:func:`grad_reverse` of ``x`` with the current ``lambda_``.

        Parameters
        ----------
        x : any tensor.
        """
        return grad_reverse(x, self.lambda_)

    def extra_repr(self) -> str:
        """``lambda_=<value>`` for the module's repr."""
        return f"lambda_={self.lambda_:g}"


class DomainHead(nn.Module):
    """The domain classifier: an MLP from features ``(B, C)`` to two logits (source, target).

    Parameters
    ----------
    in_features : feature size (``classifier.num_features``).
    hidden : units per hidden layer.
    layers : hidden layers (ReLU, dropout after each).
    dropout : dropout probability.
    """

    def __init__(self, in_features: int, hidden: int = 128, layers: int = 2, dropout: float = 0.2):
        super().__init__()
        if hidden < 1 or layers < 0 or not 0 <= dropout < 1:
            raise ValueError(f"need hidden >= 1, layers >= 0 and dropout in [0, 1); got {hidden}, {layers}, {dropout}")
        mods: list[nn.Module] = []
        cin = in_features
        for _ in range(layers):
            mods += [nn.Linear(cin, hidden), nn.ReLU(), nn.Dropout(dropout)]
            cin = hidden
        mods.append(nn.Linear(cin, 2))
        self.net = nn.Sequential(*mods)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Domain logits ``(B, 2)``.

        Parameters
        ----------
        features : ``(B, in_features)`` features.
        """
        return self.net(features)


class DANN(nn.Module):
    """A :class:`~smearlab.classification.model.CellClassifier` with a domain classifier behind a gradient reversal.

    ``features -> pool`` feed both the label ``head`` and, through :class:`GradientReversal`,
    the :class:`DomainHead`. ``forward`` returns ``(class_logits, domain_logits)``; after training
    ``model.classifier`` is an ordinary classifier (save it with
    :func:`~smearlab.classification.model.save_classifier`).

    Parameters
    ----------
    classifier : the :class:`CellClassifier` to train (kept as ``model.classifier``).
    hidden, layers, dropout : the :class:`DomainHead`'s settings.
    """

    def __init__(self, classifier: CellClassifier, hidden: int = 128, layers: int = 2, dropout: float = 0.2):
        super().__init__()
        if not isinstance(classifier, CellClassifier):
            raise TypeError(f"DANN wraps a CellClassifier, got {type(classifier).__name__}")
        self.classifier = classifier
        self.grl = GradientReversal(0.0)
        self.domain_head = DomainHead(classifier.num_features, hidden, layers, dropout)

    @property
    def class_names(self) -> list[str]:
        return self.classifier.class_names

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(class_logits (B, K), domain_logits (B, 2))``; the domain branch passes the reversal layer.

        Parameters
        ----------
        x : ``(B, in_channels, S, S)`` float tensor in [0, 1].
        """
        f = self.classifier.embed(x)
        return self.classifier.head(f), self.domain_head(self.grl(f))
