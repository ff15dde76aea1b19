"""Training the classifier: the ResNet plain or domain-adversarial (DANN, with the published
schedules), and the measured-features classifier (:func:`fit_features`)."""
from __future__ import annotations

import logging
import math
import numbers
import warnings

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..augment import augment_crop_batch, default_crop_augment, stain_shift_crop_augment
from ..core.device import resolve_device
from ..core.search import fold_count
from ..core.training import History, check_count, step_loop
from ..metrics.classification import classification_report
from .crops import CropDataset
from .features import FeatureClassifier, cell_features
from .model import DANN, CellClassifier, grad_reverse
from .predict import predict_classes


log = logging.getLogger(__name__)


def _resolve_augment(augment, seed: int):
    if augment is True:
        return default_crop_augment(seed)
    if isinstance(augment, str) and augment == "stain":
        return stain_shift_crop_augment(seed)
    if augment is False or augment is None:
        return None
    if not hasattr(augment, "batch"):
        raise TypeError(f"augment must be True, False, 'stain', a CropAugment or a smearlab.augment.Augment, "
                        f"got {augment!r}")
    return augment


def _check_crops(data, what: str) -> CropDataset:
    if not isinstance(data, CropDataset):
        raise TypeError(f"{what} must be a CropDataset (see crops_from_dataset), got {type(data).__name__}")
    if len(data) == 0:
        raise ValueError(f"{what} {data.name!r} has no crops")
    return data


class _Batches:
    """Endless batches of indices: class-balanced (:class:`WeightedRandomSampler`) or shuffled."""

    def __init__(self, labels: np.ndarray, batch_size: int, balanced: bool, generator: torch.Generator):
        n = len(labels)
        if balanced:
            lab = np.where(labels < 0, len(labels), labels)  # unlabelled crops: one group
            counts = np.bincount(lab)
            w = torch.as_tensor(1.0 / counts[lab], dtype=torch.double)
            self.sampler = torch.utils.data.WeightedRandomSampler(w, n, replacement=True, generator=generator)
        else:
            self.sampler = torch.utils.data.RandomSampler(range(n), generator=generator)
        self.batch_size = int(batch_size)
        self._it = iter(())

    def next(self) -> torch.Tensor:
        out = []
        while len(out) < self.batch_size:
            try:
                out.append(next(self._it))
            except StopIteration:
                self._it = iter(self.sampler)
        return torch.as_tensor(out)


def _optimiser(params, lr: float, weight_decay: float):
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay, nesterov=True)


def fit(model: CellClassifier, train: CropDataset, *, steps: int, batch_size: int = 64, lr: float = 0.05,
        weight_decay: float = 5e-4, balanced: bool = True, augment=True, device="auto", seed: int = 0,
        target: CropDataset | None = None, domain_head: nn.Module | None = None, domain_weight: float = 1.0,
        gamma: float = 10.0, alpha: float = 10.0, beta: float = 0.75, val: CropDataset | None = None,
        eval_every: int | None = None, progress: bool = False) -> History:
    """The training loop shared by :func:`train_classifier` and :func:`smearlab.classification.train.train_dann`.

    SGD (momentum 0.9, Nesterov) with the annealed learning rate ``lr / (1 + alpha p) ** beta``
    of Ganin et al. (``p`` = training progress from 0 to 1), cross-entropy on class-balanced batches
    of ``train``. With ``target`` and ``domain_head`` (a :class:`smearlab.classification.model.DomainHead`) each
    step also draws a batch of ``target`` (labels unused), and adds ``domain_weight`` times the
    domain cross-entropy of both batches, the features passing a gradient reversal layer of weight
    ``dann_lambda(p, gamma)``.

    Returns one record per ``eval_every`` steps (default: every epoch of ``train``) and at the end:
    ``step``, ``epoch`` (fraction of passes over ``train``), ``loss`` (class), ``domain_loss``,
    ``domain_acc``, ``lambda``, ``lr``, ``train_acc``, ``seconds``, and ``val_macro_f1`` with ``val``.

    Parameters
    ----------
    model : the :class:`~smearlab.classification.model.CellClassifier` to train in place; its
        ``class_names`` must equal ``train.class_names`` (left in eval mode).
    train : labelled crops (every crop needs a label).
    steps : number of optimisation steps (>= 1).
    batch_size : crops per batch (and per target batch with domain adaptation).
    lr, weight_decay : SGD's initial learning rate (annealed by :func:`dann_lr`) and weight decay.
    balanced : draw each class equally often; otherwise plain shuffling.
    augment : True for :func:`~smearlab.augment.default_crop_augment`, ``"stain"`` for
        :func:`~smearlab.augment.stain_shift_crop_augment`, False / None for none, or an
        augmenter with a ``batch`` method.
    device : ``"auto"``, ``"cpu"``, ``"cuda"``; mixed precision on CUDA.
    seed : seeds the sampling, the augmentation and dropout.
    target : unlabelled crops of the target domain (same crop size), with ``domain_head``.
    domain_head : the domain classifier (:class:`~smearlab.classification.model.DomainHead`); give it
        with ``target`` or leave both None.
    domain_weight : weight of the domain cross-entropy in the loss.
    gamma : the reversal weight's schedule (:func:`dann_lambda`).
    alpha, beta : the learning-rate annealing (:func:`dann_lr`).
    val : labelled crops scored (macro F1) at each record.
    eval_every : steps between records (None: one epoch of ``train``).
    progress : tqdm progress bar over steps.
    """
    _check_crops(train, "train")
    if isinstance(model, FeatureClassifier):
        raise TypeError("a FeatureClassifier is not trained by gradient steps: use fit_features(model, train)")
    labelled = train.labels >= 0
    if not labelled.all():
        raise ValueError(f"train {train.name!r} has {int((~labelled).sum())} unlabelled crops")
    if train.class_names != model.class_names:
        raise ValueError(f"model classes {model.class_names} differ from the training data's {train.class_names}")
    if val is not None and val.class_names != model.class_names:  # scored by index: another order is all wrong
        raise ValueError(f"model classes {model.class_names} differ from the validation data's {val.class_names}")
    if val is not None and (len(val) == 0 or (val.labels < 0).any()):  # scored 0.0 / failed after an epoch
        raise ValueError(f"validation {val.name!r} must hold labelled crops: it has {len(val)} crops, "
                         f"{int((val.labels < 0).sum())} unlabelled (give val=None to train without it)")
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got steps={steps}, batch_size={batch_size}")
    if isinstance(lr, bool) or not (isinstance(lr, numbers.Real) and 0 < lr < math.inf):  # NaN trained to NaN weights
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if (target is None) != (domain_head is None):
        raise ValueError("give both target and domain_head (domain adaptation) or neither")
    dev = resolve_device(device)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    aug = _resolve_augment(augment, seed)
    model.to(dev).train()
    model.input_size = train.size
    model.crop_cut = getattr(train, "cut", None)  # how its crops were cut: a cascade cuts them the same way
    params = list(model.parameters())
    if domain_head is not None:
        _check_crops(target, "target")
        if target.size != train.size:
            raise ValueError(f"target crops are {target.size} px, source crops {train.size} px")
        domain_head.to(dev).train()
        params += list(domain_head.parameters())
        tgt_batches = _Batches(np.full(len(target), -1), batch_size, False, g)
    opt = _optimiser(params, lr, weight_decay)
    src_batches = _Batches(train.labels, batch_size, balanced, g)
    labels_t = torch.as_tensor(train.labels)
    amp = dev.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    per_epoch = max(1, math.ceil(len(train) / batch_size))

    def progress_at(i: int) -> float:
        return i / max(steps - 1, 1)

    def step(i: int) -> dict[str, float]:
        idx = src_batches.next()
        x = augment_crop_batch(aug, train.images[idx].to(dev))
        y = labels_t[idx].to(dev)
        with torch.autocast(dev.type, dtype=torch.float16, enabled=amp):
            if domain_head is None:
                logits = model(x.float() / 255)
                dloss = None
            else:
                xt = augment_crop_batch(aug, target.images[tgt_batches.next()].to(dev))
                feats = model.embed(torch.cat([x, xt]).float() / 255)
                logits = model.head(feats[:len(x)])
                dlogits = domain_head(grad_reverse(feats, dann_lambda(progress_at(i), gamma)))
                dy = torch.cat([torch.zeros(len(x)), torch.ones(len(xt))]).long().to(dev)
                dloss = F.cross_entropy(dlogits.float(), dy)
        loss = F.cross_entropy(logits.float(), y)
        total = loss if dloss is None else loss + domain_weight * dloss
        opt.zero_grad(set_to_none=True)
        scaler.scale(total).backward()
        scaler.step(opt)
        scaler.update()
        out = {"loss": float(loss.detach()), "train_acc": float((logits.detach().argmax(1) == y).float().mean())}
        if dloss is not None:
            out.update(domain_loss=float(dloss.detach()),
                       domain_acc=float((dlogits.detach().argmax(1) == dy).float().mean()))
        return out

    def on_record(rec: dict) -> dict:
        extra = {"epoch": round(rec["step"] / per_epoch, 3),
                 "lambda": dann_lambda(progress_at(rec["step"] - 1), gamma) if domain_head is not None else 0.0}
        if val is not None:
            pred = predict_classes(model, val, device=dev).labels
            extra["val_macro_f1"] = classification_report(val.labels, pred, val.class_names)["macro"]["f1"]
            model.train()
        return extra

    history = History(best_metric="macro_f1")  # the best record by val_macro_f1, when there is a val
    step_loop(step, steps, record_every=int(eval_every or per_epoch), optimizer=opt,
              lr_at=lambda i, n: dann_lr(progress_at(i), lr, alpha, beta), on_record=on_record,
              after_record=history.note_best, progress=progress, desc="train" if domain_head is None else "train DANN",
              history=history)
    model.eval()
    if domain_head is not None:
        domain_head.eval()
    return history


def train_classifier(model: CellClassifier, train: CropDataset, val: CropDataset | None = None, *,
                     epochs: int = 30, steps: int | None = None, batch_size: int = 64, lr: float = 0.05,
                     weight_decay: float = 5e-4, balanced: bool = True, augment=True, device="auto",
                     seed: int = 0, progress: bool = False) -> History:
    """Train ``model`` in place on labelled crops.

    Parameters
    ----------
    model : a :class:`CellClassifier` whose ``class_names`` equal ``train.class_names``.
    train, val : :class:`CropDataset` (``val`` is scored with macro F1 once per epoch).
    epochs : passes over ``train`` (an epoch is ``ceil(len(train) / batch_size)`` steps).
    steps : number of optimisation steps instead of ``epochs`` (equal training length across
        datasets of different sizes).
    batch_size, lr, weight_decay : SGD with momentum; the learning rate is annealed as
        ``lr / (1 + 10 p) ** 0.75`` over training progress ``p`` (Ganin et al. 2016).
    balanced : draw each class equally often (WeightedRandomSampler with weights 1 / class count);
        otherwise plain shuffling.
    augment : True for :func:`default_crop_augment`, ``"stain"`` for :func:`stain_shift_crop_augment`
        (stronger stain and colour jitter, zoom), False, a :class:`CropAugment` or any
        :class:`smearlab.augment.Augment`.
    device : "auto" (CUDA when present), "cpu", "cuda"; mixed precision on CUDA.
    seed : seeds the sampling, the augmentation and dropout (the weights are drawn when the model
        is built: seed torch before :func:`build_classifier` for repeatable runs).
    progress : tqdm progress bar over steps.

    Returns
    -------
    History
        one record per epoch (see :func:`fit`).
    """
    check_count("batch_size", batch_size)
    per_epoch = max(1, math.ceil(len(_check_crops(train, "train")) / batch_size))
    total = int(steps) if steps is not None else int(epochs) * per_epoch
    return fit(model, train, steps=total, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
               balanced=balanced, augment=augment, device=device, seed=seed, val=val, progress=progress)


def _progress(p: float) -> float:
    p = float(p)
    if not (math.isfinite(p) and 0.0 <= p <= 1.0):
        raise ValueError(f"training progress p must be in [0, 1], got {p!r}")
    return p


def dann_lambda(p: float, gamma: float = 10.0) -> float:
    """Reversal weight ``2 / (1 + exp(-gamma p)) - 1``: 0 at the start, ~1 at the end
    (Ganin & Lempitsky 2015).

    Parameters
    ----------
    p : training progress in [0, 1].
    gamma : how fast the weight rises.
    """
    return 2.0 / (1.0 + math.exp(-float(gamma) * _progress(p))) - 1.0


def dann_lr(p: float, lr0: float, alpha: float = 10.0, beta: float = 0.75) -> float:
    """Annealed learning rate ``lr0 / (1 + alpha p) ** beta`` (Ganin et al. 2016).

    Parameters
    ----------
    p : training progress in [0, 1].
    lr0 : the initial learning rate.
    alpha, beta : the annealing's scale and exponent.
    """
    return float(lr0) / (1.0 + float(alpha) * _progress(p)) ** float(beta)


def train_dann(model: DANN, source: CropDataset, target_unlabelled: CropDataset, *, epochs: int = 30,
               steps: int | None = None, batch_size: int = 64, lr: float = 0.05, weight_decay: float = 5e-4,
               domain_weight: float = 1.0, gamma: float = 10.0, alpha: float = 10.0, beta: float = 0.75,
               balanced: bool = True, augment=True, device="auto", seed: int = 0, val: CropDataset | None = None,
               progress: bool = False) -> History:
    """Train a :class:`DANN` in place: labelled ``source`` crops, unlabelled ``target`` crops.

    Each step takes a class-balanced source batch and a random target batch of ``batch_size``;
    the loss is the source cross-entropy plus ``domain_weight`` times the domain cross-entropy of
    both batches, whose gradient reaches the features reversed and scaled by
    ``dann_lambda(p, gamma)``. The learning rate follows ``dann_lr(p, lr, alpha, beta)`` (SGD,
    momentum 0.9). Target labels are never read.

    Parameters
    ----------
    model : :class:`DANN`.
    source, target_unlabelled : :class:`~smearlab.classification.crops.CropDataset` of the same crop size.
    epochs, steps : training length in passes over ``source`` or in steps (as
        :func:`~smearlab.classification.train.train_classifier`).
    val : optional labelled crops scored (macro F1) at each record, e.g. the *source* validation
        split (target labels would not be available in practice).
    domain_weight : weight of the domain cross-entropy in the loss.
    gamma : the reversal weight's schedule (:func:`dann_lambda`).
    alpha, beta : the learning-rate annealing (:func:`dann_lr`).
    batch_size, lr, weight_decay, balanced, augment, device, seed, progress : as
        :func:`~smearlab.classification.train.train_classifier`.

    Returns
    -------
    History
        the training records (as :func:`fit`'s) with ``loss``, ``domain_loss``, ``domain_acc``,
        ``lambda``, ``lr``.
    """
    if not isinstance(model, DANN):
        raise TypeError(f"model must be a DANN (wrap the classifier: DANN(classifier)), got {type(model).__name__}")
    _check_crops(source, "source")
    _check_crops(target_unlabelled, "target_unlabelled")
    if source.class_names != model.class_names:
        raise ValueError(f"model classes {model.class_names} differ from the source's {source.class_names}")
    check_count("batch_size", batch_size)
    per_epoch = max(1, math.ceil(len(source) / batch_size))
    total = int(steps) if steps is not None else int(epochs) * per_epoch
    hist = fit(model.classifier, source, steps=total, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
               balanced=balanced, augment=augment, device=device, seed=seed, target=target_unlabelled,
               domain_head=model.domain_head, domain_weight=domain_weight, gamma=gamma, alpha=alpha, beta=beta,
               val=val, progress=progress)
    model.grl.lambda_ = dann_lambda(1.0, gamma)
    model.eval()
    return hist


#: Inverse regularisation strengths :func:`fit_features` chooses among by cross-validation.
FEATURE_CS = (0.03, 0.1, 0.3, 1.0, 3.0)


def fit_features(model: FeatureClassifier, train: CropDataset, *, Cs=FEATURE_CS, folds: int = 5, repeats: int = 5,
                 seed: int = 0, balanced: bool = True, features: np.ndarray | None = None) -> dict:
    """Train a :class:`~smearlab.classification.features.FeatureClassifier` in place: standardise
    the training crops' measured features, choose the regularisation by repeated stratified k-fold
    cross-validation on ``train`` alone (mean macro F1 over every fold of every repeat; the smaller
    C on a tie; the crops of one :attr:`~smearlab.classification.crops.CropDataset.groups` key in
    one fold), and fit a multinomial
    logistic regression (:class:`sklearn.linear_model.LogisticRegression`) on all of ``train``.

    Parameters
    ----------
    model : the model to train; its ``class_names`` must equal ``train.class_names``.
    train : labelled crops (every crop needs a label; with a class of fewer than ``folds`` crops
        the folds shrink to its count, at least 2; a class of one crop does not shrink them: it is
        logged once and trained on).
    Cs : the inverse regularisation strengths tried.
    folds : cross-validation folds.
    repeats : how many times the k-fold split is drawn afresh. With one split the chosen C follows
        the shuffle: on Zheng Dataset 1's 209 training crops five seeds chose 0.3, 3, 1, 0.3 and 0.1;
        with five repeats they chose 0.3 or 1 (whose cross-validated F1 differ by about 0.01).
    seed : shuffles the folds (the fit itself is deterministic).
    balanced : weight each class by the inverse of its count (as :func:`fit` draws balanced batches).
    features : ``train``'s :func:`~smearlab.classification.features.cell_features`, when already
        measured (they take about 10 ms a crop).

    Returns
    -------
    dict
        ``C`` (chosen), ``cv_macro_f1`` (mean over every fold at that C), ``folds``, ``repeats``, ``n_train``.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import RepeatedStratifiedKFold, StratifiedGroupKFold, cross_val_score

    _check_crops(train, "train")
    if (train.labels < 0).any():
        raise ValueError(f"train {train.name!r} has {int((train.labels < 0).sum())} unlabelled crops")
    if train.class_names != model.class_names:
        raise ValueError(f"model classes {model.class_names} differ from the training data's {train.class_names}")
    present = np.unique(train.labels)
    if len(present) < 2:
        raise ValueError(f"train {train.name!r} holds one class only ({train.class_names[int(present[0])]}); "
                         "a classifier needs at least two")
    x = cell_features(train) if features is None else np.asarray(features, np.float32)
    if x.shape != (len(train), model.num_features):
        raise ValueError(f"features must be ({len(train)}, {model.num_features}), got {x.shape}")
    mean = x.mean(0)
    scale = x.std(0)
    scale[scale < 1e-6] = 1.0
    z = (x - mean) / scale
    if not len(Cs):
        raise ValueError("Cs is empty: give at least one regularisation strength")
    repeats = int(repeats)
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    grouped = len(set(train.groups)) < len(train)  # crops of one image, or near-copies: one fold each
    # as many folds as the rarest class has crops (groups of crops), or a fold would miss it
    k, short = fold_count(train.labels, folds, list(train.groups) if grouped else None)
    if short:
        what = "group(s) of crops" if grouped else "training crop(s)"
        log.warning("%s: %s %s only, fewer than the %d cross-validation folds: those classes are trained on "
                    "but cannot be in every fold", train.name,
                    ", ".join(f"{train.class_names[c]} ({n})" for c, n in short.items()), what, k)

    def regression(c: float) -> LogisticRegression:
        return LogisticRegression(C=float(c), max_iter=5000, class_weight="balanced" if balanced else None)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)  # logged above
        warnings.filterwarnings("ignore", message="Mean of empty slice", category=RuntimeWarning)  # said below
        if grouped:  # one independent draw per repeat and seed (seed + r shared four of five draws between seeds)
            states = np.random.SeedSequence(int(seed)).generate_state(repeats)
            cv = [f for r in range(repeats) for f in StratifiedGroupKFold(k, shuffle=True, random_state=int(states[r]))
                  .split(z, train.labels, train.groups)]
        else:
            cv = RepeatedStratifiedKFold(n_splits=k, n_repeats=repeats, random_state=seed)
        scores = [float(np.nanmean(cross_val_score(regression(c), z, train.labels, cv=cv, scoring="f1_macro")))
                  for c in Cs]
        if not any(np.isfinite(scores)):
            raise ValueError(f"train {train.name!r}: no cross-validation fold could be scored ({k} folds of "
                             f"{len(set(train.groups))} groups of crops); give more images")
        scores = [v if np.isfinite(v) else -np.inf for v in scores]
        top = max(scores)  # on a tie the strongest regularisation (the smallest C), whatever the order given
        best = min((i for i, v in enumerate(scores) if v == top), key=lambda i: float(Cs[i]))
        reg = regression(Cs[best]).fit(z, train.labels)
    w = np.zeros((len(model.class_names), x.shape[1]), np.float32)
    b = np.zeros(len(model.class_names), np.float32)
    if len(reg.classes_) == 2:  # one weight vector: logit of the second class against the first
        w[reg.classes_[1]], b[reg.classes_[1]] = reg.coef_[0], reg.intercept_[0]
    else:
        w[reg.classes_], b[reg.classes_] = reg.coef_, reg.intercept_
    absent = np.setdiff1d(np.arange(len(model.class_names)), reg.classes_)
    b[absent] = -1e4  # a class without training crops is never predicted
    with torch.no_grad():
        model.mean.copy_(torch.from_numpy(mean))
        model.scale.copy_(torch.from_numpy(scale))
        model.head.weight.copy_(torch.from_numpy(w))
        model.head.bias.copy_(torch.from_numpy(b))
    model.input_size = train.size
    model.crop_cut = getattr(train, "cut", None)  # how its crops were cut: a cascade cuts them the same way
    model.eval()
    c = float(Cs[best])
    info = {"C": c, "cv_macro_f1": round(scores[best], 4), "folds": k, "repeats": repeats, "n_train": len(train)}
    log.info("feature classifier: C %.3g chosen by %d-fold cross-validation repeated %d times (macro F1 %.3f) "
             "on %d crops", c, k, repeats, info["cv_macro_f1"], len(train))
    return info
