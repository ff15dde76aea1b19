"""Training the U-Net on class maps, whole images or crops around objects."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..core.device import resolve_device
from ..core.errors import DataError
from ..core.files import write_json
from ..core.geometry import check_pad, crop_window
from ..core.training import History, check_count, step_loop
from ..data.sample import Sample, SmearDataset
from ..metrics.semantic import IGNORE, semantic_metrics
from .predict import predict_semantic
from .unet import UNet, normalise, resize_and_pad, save_unet


def _prepare(dataset, size: int | None, num_classes: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    seen = np.zeros(256, bool)  # the class-map values over the whole dataset
    for s in dataset:
        if not s.has_semantic:
            raise DataError(s.path or s.image_id, "sample has no semantic mask (needed to train)")
        img = torch.from_numpy(np.ascontiguousarray(s.image)).permute(2, 0, 1)
        sem = torch.from_numpy(np.ascontiguousarray(s.semantic)).to(torch.uint8)
        if tuple(sem.shape) != tuple(img.shape[-2:]):
            raise DataError(s.path or s.image_id, f"semantic mask has shape {tuple(sem.shape)}, "
                            f"image is {tuple(img.shape[-2:])}")
        bad = sem[(sem >= num_classes) & (sem != IGNORE)] if num_classes is not None else sem[:0]
        if len(bad):
            raise DataError(s.path or s.image_id, f"semantic mask holds class {int(bad[0])}, outside the model's "
                            f"{num_classes} classes (0..{num_classes - 1}; {IGNORE} is ignored)")
        seen[np.unique(sem.numpy())] = True
        img, sem, _ = resize_and_pad(img, sem, size)
        out.append((img, sem))
    values = set(np.flatnonzero(seen).tolist())
    if IGNORE in values and values <= {0, IGNORE}:  # dataset-wide: an image all IGNORE alone is unannotated
        raise ValueError(f"the class maps of dataset {getattr(dataset, 'name', '?')!r} hold only 0 and {IGNORE} "
                         f"({IGNORE} is ignored: the model would learn background only); a binary mask saved as "
                         "0/255 must be 0/1")
    return out


def _collate(items):
    """Stack, padding to the largest size in the batch (mask padding :data:`IGNORE`)."""
    h = max(i.shape[-2] for i, _ in items)
    w = max(i.shape[-1] for i, _ in items)
    imgs = torch.stack([F.pad(i, (0, w - i.shape[-1], 0, h - i.shape[-2])) for i, _ in items])
    sems = torch.stack([F.pad(s, (0, w - s.shape[-1], 0, h - s.shape[-2]), value=IGNORE) for _, s in items])
    return imgs, sems


def _loss(logits: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Cross-entropy + soft Dice (mean over classes present in the batch), :data:`IGNORE` left out."""
    logits = logits.float()
    # a batch whose every pixel is ignored has no cross-entropy (torch gives NaN): it adds nothing
    ce = F.cross_entropy(logits, target, ignore_index=IGNORE) if (target != IGNORE).any() else logits.sum() * 0
    valid = (target != IGNORE).unsqueeze(1).float()
    prob = logits.softmax(1) * valid
    onehot = F.one_hot(target.clamp(max=num_classes - 1) * (target != IGNORE), num_classes)
    onehot = onehot.permute(0, 3, 1, 2).float() * valid
    inter = (prob * onehot).sum((0, 2, 3))
    denom = prob.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    present = onehot.sum((0, 2, 3)) > 0
    dice = (2 * inter + 1.0) / (denom + 1.0)
    soft = 1 - dice[present].mean() if present.any() else logits.sum() * 0
    return ce + soft


def train_unet(model: UNet, train_ds, val_ds=None, *, epochs: int = 20, batch_size: int = 8,
               lr: float = 3e-3, size: int | None = None, device="auto", seed: int = 0, augment=None,
               progress: bool = True, out_dir=None) -> History:
    """Train ``model`` in place with cross-entropy + soft Dice, AdamW and a cosine schedule.

    Parameters
    ----------
    model : :class:`UNet` (``num_classes`` must cover ``train_ds.semantic_names``).
    train_ds, val_ds : SmearDatasets with semantic masks.
    epochs, batch_size, lr : optimisation settings.
    size : fit every image into a ``size`` x ``size`` square keeping its aspect (scaled, then
        padded; the padding is ignored by the loss). None: native size, batches padded.
    device : "auto", "cpu", "cuda"...; mixed precision (float16 autocast) on CUDA only.
    seed : seeds initialisation-independent randomness (shuffling, augmentation).
    augment : optional :class:`smearlab.augment.Augment`, applied per batch on the device.
    progress : print one line per epoch.
    out_dir : if given, the model folder ``unet/`` (:func:`save_unet`, after every epoch) and
        ``history.json``.

    Returns
    -------
    History
        one record per epoch (:func:`~smearlab.core.training.step_loop`): ``step``, ``epoch``,
        ``loss`` (mean train loss), ``seconds`` (since the start) and, with ``val_ds``,
        ``val_dice`` ``{class name: dice}``.
    """
    for name, v in (("epochs", epochs), ("batch_size", batch_size)):  # an untrained model or a bare ZeroDivisionError
        check_count(name, v)
    if train_ds is None or not len(train_ds):
        raise ValueError("train_unet needs training images: the dataset is empty")
    dev = resolve_device(device)
    names = train_ds.semantic_names or [str(i) for i in range(model.config["num_classes"])]
    k = model.config["num_classes"]
    if len(names) != k:  # more outputs than names: a folder load_unet refuses and labels outside the names
        raise ValueError(f"model has {k} classes but the dataset has {len(names)} ({names})")
    if val_ds is not None and val_ds.semantic_names and list(val_ds.semantic_names) != list(names):
        raise ValueError(f"the validation classes {list(val_ds.semantic_names)} are not the training classes "
                         f"{list(names)} in that order: its Dice would be reported under the wrong names")
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    data = _prepare(train_ds, size, k)
    model.input_size = size
    model.class_names = list(names)  # as save_unet writes them: predict_semantic (and validation) number by them
    model.sensor_bits = getattr(train_ds, "sensor_bits", None)  # how new files are read (save_unet records it)
    model.to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * math.ceil(len(data) / batch_size)
    if steps >= 4:  # one-cycle: warm-up over 10 % of the steps (at least 2), then cosine decay
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps,
                                                    pct_start=min(max(0.1, 2.0 / steps), 0.5))
    else:  # too few steps for a schedule: constant learning rate
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _step: 1.0)
    amp = dev.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    per_epoch = math.ceil(len(data) / batch_size)
    order: list[int] = []

    def step(i: int) -> dict[str, float]:
        b = i % per_epoch
        if b == 0:  # a new epoch: a new order
            model.train()
            order[:] = torch.randperm(len(data), generator=g).tolist()
        imgs, sems = _collate([data[k] for k in order[b * batch_size:(b + 1) * batch_size]])
        imgs, sems = imgs.to(dev), sems.to(dev)
        if augment is not None:
            tg = [{"boxes": torch.zeros((0, 4), device=dev), "semantic": s} for s in sems]
            imgs, tg = augment.batch(imgs, tg)
            sems = torch.stack([t["semantic"] for t in tg])
        with torch.autocast(dev.type, dtype=torch.float16, enabled=amp):
            logits = model(normalise(imgs))
        loss = _loss(logits, sems.long(), k)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sched.step()
        return {"loss_sum": float(loss.detach()) * len(imgs), "n": len(imgs)}

    def on_record(rec: dict) -> dict:
        epoch = rec["step"] // per_epoch
        out = {"epoch": epoch, "loss": rec.pop("loss_sum") / max(rec.pop("n"), 1)}
        if val_ds is not None:
            preds = predict_semantic(model, val_ds, batch_size=batch_size, device=dev)
            out["val_dice"] = {name: v["dice"] for name, v in semantic_metrics(val_ds, preds).items()}
        if progress:
            extra = "" if "val_dice" not in out else "  val dice " + ", ".join(
                f"{a}={'-' if d is None else f'{d:.3f}'}" for a, d in out["val_dice"].items())
            print(f"epoch {epoch}/{epochs}  loss {out['loss']:.4f}{extra}")
        if out_dir is not None:
            if not all(torch.isfinite(p).all() for p in model.parameters()):  # the last good epoch's model stays
                raise FloatingPointError(f"the U-Net's weights are not finite after epoch {epoch}; training stopped "
                                         "(the last good epoch's model is kept). Lower the learning rate.")
            save_unet(model, Path(out_dir) / "unet", class_names=list(names), epoch=epoch)
            write_json(Path(out_dir) / "history.json", history.records + [{**rec, **out}])
        return out

    history = History(out_dir=None if out_dir is None else Path(out_dir))
    step_loop(step, epochs * per_epoch, record_every=per_epoch, on_record=on_record, history=history)
    model.eval()
    return history


def _crop_target(s: Sample, i: int, window) -> np.ndarray:
    """Semantic target of object ``i`` of ``s`` in ``window`` ``(x0, y0, x1, y1)``: its own
    pixels with their class, the rest 0."""
    xa, ya, xb, yb = window
    if s.has_masks:
        own = np.asarray(s.masks[i][ya:yb, xa:xb], bool)
        if s.has_semantic:
            return np.where(own, s.semantic[ya:yb, xa:xb], 0).astype(np.uint8)
        return own.astype(np.uint8)
    return np.asarray(s.semantic[ya:yb, xa:xb], np.uint8)


def _check_targets(s: Sample, hw) -> None:
    """The masks a crop target is cut from exist and have the image's size."""
    if not (s.has_masks or s.has_semantic):
        raise DataError(s.path or s.image_id, "sample has neither instance nor semantic masks (needed to train)")
    for m in ([s.masks] if s.has_masks else []) + ([s.semantic] if s.has_semantic else []):
        if tuple(m.shape[-2:]) != tuple(hw):
            raise DataError(s.path or s.image_id, f"mask has shape {tuple(m.shape[-2:])}, image is {hw}")


def crop_dataset(dataset, pad: float = 0.2, *, classes: Sequence[int] | None = None,
                 name: str | None = None):
    """One sample per ground-truth box: the :func:`crop_window` crop and its semantic target.

    The target of a crop is the object's own pixels with their semantic class (value 1 for
    every object when the dataset has instance masks but no semantic masks) and background
    elsewhere, neighbouring objects included; a dataset with semantic masks but no instance
    masks keeps the whole semantic mask of the window.

    Parameters
    ----------
    dataset : SmearDataset with instance and/or semantic masks.
    pad : context margin as a fraction of the box's longer side.
    classes : only boxes of these label indices (default all).
    name : name of the crop dataset.

    Returns
    -------
    SmearDataset
        crops with ``semantic`` and one box (the object's box in crop coordinates, the label of
        the object); ``semantic_names`` is the dataset's or ``["background", "foreground"]``;
        ``meta`` holds ``source`` (image id), ``object`` and ``window`` ``(x0, y0, x1, y1)``.
    """
    pad = check_pad(pad)
    keep = None if classes is None else {int(c) for c in classes}
    names = crop_classes(dataset)
    by_class_map = names != ["background", "foreground"]  # crop_classes: the dataset's class maps are used
    samples = []
    for s in dataset:
        if not len(s.boxes):
            continue
        if by_class_map and not s.has_semantic:  # its objects would be value 1, read as names[1]
            raise DataError(s.path or s.image_id, f"has no class map while others of {getattr(dataset, 'name', '?')!r} "
                                                  f"do: its objects would be labelled {names[1]!r}; give every image "
                                                  "a class map, or none")
        img = s.image
        hw = img.shape[:2]
        checked = False
        for i, (box, lab) in enumerate(zip(s.boxes, s.labels)):
            if keep is not None and int(lab) not in keep:
                continue
            if not checked:  # once per image, and only for an image that gives crops
                _check_targets(s, hw)
                checked = True
            xa, ya, xb, yb = crop_window(box, hw, pad)
            b = np.clip(box - np.array([xa, ya, xa, ya], np.float32), 0, [xb - xa, yb - ya] * 2)
            samples.append(Sample(f"{s.image_id}#{i}", _image=np.ascontiguousarray(img[ya:yb, xa:xb]),
                                  boxes=b[None], labels=[int(lab)], domain=s.domain,
                                  meta={"source": s.image_id, "object": i, "window": (xa, ya, xb, yb)},
                                  _semantic=np.ascontiguousarray(_crop_target(s, i, (xa, ya, xb, yb)))))
    return SmearDataset(samples, getattr(dataset, "class_names", ["object"]),
                        name or f"{getattr(dataset, 'name', 'dataset')}-crops", semantic_names=crop_classes(dataset))


def crop_classes(dataset) -> list[str]:
    """The classes of :func:`crop_dataset`'s targets: the dataset's semantic classes when it has
    semantic masks, else ``["background", "foreground"]``.

    Parameters
    ----------
    dataset : SmearDataset with instance and/or semantic masks.
    """
    names = getattr(dataset, "semantic_names", None)
    if names and any(s.has_semantic for s in dataset):
        return list(names)
    return ["background", "foreground"]


def build_crop_unet(dataset, *, base: int = 16, depth: int = 4, norm: str = "batch") -> UNet:
    """A new U-Net for :func:`train_crop_unet`, with one output per class of the crop targets.

    Parameters
    ----------
    dataset : the training dataset (its classes decide the outputs, :func:`crop_classes`).
    base, depth, norm : first-level channels, number of 2x down-samplings and normalisation
        (``"batch"`` or ``"group"``).
    """
    return UNet(3, len(crop_classes(dataset)), base=base, depth=depth, norm=norm)


def train_crop_unet(model: UNet, train, val=None, *, pad: float = 0.2, crop_size: int = 64,
                    classes: Sequence[int] | None = None, **train_kw) -> History:
    """Train a U-Net on crops around the ground-truth boxes (the second stage of :func:`two_stage_segment`).

    Parameters
    ----------
    model : the U-Net (:func:`build_crop_unet`, or one to train further); trained in place and
        left in ``eval`` mode, with ``model.crop_pad`` set.
    train : SmearDataset with boxes and instance (and/or semantic) masks.
    val : optional dataset whose crops give ``val_dice`` per epoch.
    pad : context margin of each crop (fraction of the box's longer side), saved with the
        model as ``model.crop_pad``.
    crop_size : crops are letterboxed into ``crop_size`` x ``crop_size`` (``model.input_size``).
    classes : train on the boxes of these label indices only (default all).
    **train_kw : passed to :func:`train_unet` (``epochs``, ``batch_size``, ``lr``, ``device``,
        ``seed``, ``augment``, ``progress``, ``out_dir``...).

    Returns
    -------
    History
        :func:`train_unet`'s history.
    """
    pad = check_pad(pad)
    if isinstance(crop_size, bool) or not isinstance(crop_size, (int, np.integer)) or crop_size < 8:
        raise ValueError(f"crop_size must be an integer >= 8, got {crop_size!r}")
    crops = crop_dataset(train, pad, classes=classes)
    if not len(crops):
        raise ValueError(f"dataset {getattr(train, 'name', '?')!r} has no boxes to train on"
                         + ("" if classes is None else f" of classes {list(classes)}"))
    if model.config["num_classes"] != len(crops.semantic_names):
        raise ValueError(f"the U-Net has {model.config['num_classes']} outputs, the crop targets {len(crops.semantic_names)} "
                         f"classes {crops.semantic_names}: build it with build_crop_unet(train)")
    crops_val = None if val is None else crop_dataset(val, pad, classes=classes)
    model.crop_pad = pad  # before training, so that every checkpoint of out_dir carries it
    return train_unet(model, crops, crops_val, size=int(crop_size), **train_kw)
