"""Semantic segmentation of cells: Dice / IoU metrics, a small U-Net, training and prediction.

Masks are ``(H, W)`` uint8 arrays whose values index ``SmearDataset.semantic_names``
(white-cell crops: 0 background, 1 cytoplasm, 2 nucleus). The value :data:`IGNORE` (255) in a
target is left out of metrics and of the loss (padding uses it).

Two-stage segmentation
----------------------
:func:`two_stage_segment` takes boxes (from a detector, or the ground truth), crops each with a
context margin, runs a crop U-Net (:func:`train_crop_unet`) on the letterboxed crop and pastes
its class map back as one instance mask per box, in the prediction form the evaluator scores.

Instances from semantic masks and back
--------------------------------------
:func:`foreground_semantic` turns instance masks into a two-class training target,
:func:`semantic_to_instances` a predicted class map into instances (watershed or connected
components), :func:`tile_dataset` cuts large images into native-resolution training tiles, and
:func:`instance_splits` gives class-agnostic train/test sets for comparing segmenters.

Empty classes
-------------
A class absent from both prediction and target (no TP, FP or FN) has ``dice`` and ``iou``
**None** (undefined, not 1): set-level metrics report None; per-image means skip those images
and give None when every image is empty for that class.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .data.errors import DataError
from .data.sample import Sample, SmearDataset
from .io import atomic_path, write_json, read_torch_file

__all__ = ["IGNORE", "dice_iou", "dice_iou_per_image", "semantic_metrics", "whole_cell", "UNet",
           "train_unet", "predict_semantic", "save_unet", "load_unet", "crop_window", "crop_dataset",
           "train_crop_unet", "two_stage_segment", "foreground_semantic", "semantic_to_instances",
           "instance_splits", "tile_dataset"]

#: Target value excluded from metrics and loss.
IGNORE = 255
_MEAN, _STD = 0.5, 0.25  # input normalisation: (x / 255 - mean) / std


# ---------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------
def whole_cell(mask: np.ndarray) -> np.ndarray:
    """``mask > 0``: any cell part (cytoplasm or nucleus) against background, for whole-cell Dice.

    :data:`IGNORE` pixels stay :data:`IGNORE` (uint8 result: 0, 1 or 255).
    """
    m = np.asarray(mask)
    out = (m > 0).astype(np.uint8)
    out[m == IGNORE] = IGNORE
    return out


def _as_list(masks) -> list[np.ndarray]:
    if isinstance(masks, np.ndarray) and masks.ndim == 2:
        return [masks]
    return [np.asarray(m) for m in masks]


def _counts(pred: np.ndarray, target: np.ndarray, num_classes: int, where: str = "") -> np.ndarray:
    """``(num_classes, 3)`` TP, FP, FN of one image (target :data:`IGNORE` pixels left out)."""
    if pred.shape != target.shape:
        raise ValueError(f"{where}predicted mask has shape {pred.shape}, target has {target.shape}")
    if pred.ndim != 2:
        raise ValueError(f"{where}masks must be 2-D (H, W), got shape {pred.shape}")
    keep = target != IGNORE
    p, t = pred[keep].astype(np.int64), target[keep].astype(np.int64)
    for name, a in (("prediction", p), ("target", t)):
        if a.size and (a.min() < 0 or a.max() >= num_classes):
            raise ValueError(f"{where}{name} has value {int(a.max() if a.max() >= num_classes else a.min())} "
                             f"outside 0..{num_classes - 1}")
    conf = np.bincount(t * num_classes + p, minlength=num_classes ** 2).reshape(num_classes, num_classes)
    tp = np.diag(conf)
    return np.stack([tp, conf.sum(0) - tp, conf.sum(1) - tp], axis=1)


def _scores(c: np.ndarray) -> dict[str, float | None]:
    tp, fp, fn = (int(v) for v in c)
    if tp + fp + fn == 0:
        return {"dice": None, "iou": None}
    return {"dice": 2 * tp / (2 * tp + fp + fn), "iou": tp / (tp + fp + fn)}


def dice_iou(pred, target, num_classes: int, ignore_background: bool = False) -> dict[int, dict]:
    """Dice and IoU per class over a set of masks (TP, FP, FN summed over all images).

    Parameters
    ----------
    pred, target : one ``(H, W)`` integer mask or a sequence of them (same shapes pairwise).
    num_classes : number of classes (values ``0 .. num_classes - 1``).
    ignore_background : leave class 0 out of the result.

    Returns
    -------
    dict
        ``{class_index: {"dice": float | None, "iou": float | None}}``; None for a class
        absent from both prediction and target.
    """
    preds, targets = _as_list(pred), _as_list(target)
    if len(preds) != len(targets):
        raise ValueError(f"{len(preds)} predicted masks but {len(targets)} targets")
    total = np.zeros((num_classes, 3), np.int64)
    for i, (p, t) in enumerate(zip(preds, targets)):
        total += _counts(p, t, num_classes, f"image {i}: ")
    return {c: _scores(total[c]) for c in range(int(ignore_background), num_classes)}


def dice_iou_per_image(pred, target, num_classes: int, ignore_background: bool = False) -> dict[int, dict]:
    """Like :func:`dice_iou` but the mean of per-image scores (images where a class is empty skipped)."""
    preds, targets = _as_list(pred), _as_list(target)
    if len(preds) != len(targets):
        raise ValueError(f"{len(preds)} predicted masks but {len(targets)} targets")
    per = [[_scores(c) for c in _counts(p, t, num_classes, f"image {i}: ")]
           for i, (p, t) in enumerate(zip(preds, targets))]
    out = {}
    for c in range(int(ignore_background), num_classes):
        out[c] = {}
        for k in ("dice", "iou"):
            v = [img[c][k] for img in per if img[c][k] is not None]
            out[c][k] = float(np.mean(v)) if v else None
    return out


def _targets(dataset) -> list[np.ndarray]:
    out = []
    for s in dataset:
        if not s.has_semantic:
            raise DataError(s.path or s.image_id, "sample has no semantic mask")
        out.append(np.asarray(s.semantic))
    return out


def semantic_metrics(dataset, predictions: Sequence[np.ndarray], *, ignore_background: bool = False,
                     per_image: bool = False, whole: bool = False) -> dict[str, dict]:
    """Dice and IoU per named class of ``dataset.semantic_names``.

    Parameters
    ----------
    dataset : SmearDataset whose samples carry semantic masks.
    predictions : one ``(H, W)`` mask per sample, in dataset order.
    ignore_background, per_image : see :func:`dice_iou` / :func:`dice_iou_per_image`.
    whole : also report ``"whole_cell"`` (``mask > 0`` on both sides).

    Raises
    ------
    DataError : a prediction whose size differs from its sample's mask (names the sample).
    """
    names = getattr(dataset, "semantic_names", None)
    if not names:
        raise ValueError(f"dataset {getattr(dataset, 'name', '?')!r} has no semantic_names")
    if len(predictions) != len(dataset):
        raise ValueError(f"{len(predictions)} predictions for {len(dataset)} samples")
    targets = _targets(dataset)
    preds = [np.asarray(p) for p in predictions]
    for s, p, t in zip(dataset, preds, targets):
        if p.shape != t.shape:
            raise DataError(s.path or s.image_id, f"predicted mask has shape {p.shape}, "
                            f"ground truth has {t.shape}", record=s.image_id)
    fn = dice_iou_per_image if per_image else dice_iou
    res = fn(preds, targets, len(names), ignore_background)
    out = {names[c]: v for c, v in res.items()}
    if whole:
        out["whole_cell"] = fn([whole_cell(p) for p in preds], [whole_cell(t) for t in targets], 2, True)[1]
    return out


# ---------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------
def norm_layer(kind: str, c: int) -> nn.Module:
    """``"batch"`` (BatchNorm2d) or ``"group"`` (GroupNorm, gcd(8, c) groups) over ``c`` channels."""
    if kind == "batch":
        return nn.BatchNorm2d(c)
    if kind == "group":
        return nn.GroupNorm(math.gcd(8, c), c)
    raise ValueError(f"norm must be 'batch' or 'group', got {kind!r}")


def _block(cin: int, cout: int, norm: str) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), norm_layer(norm, cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), norm_layer(norm, cout), nn.ReLU(inplace=True))


class UNet(nn.Module):
    """A small U-Net: ``depth`` 2x down-samplings, ``base * 2**i`` channels at level ``i``.

    Input ``(B, in_channels, H, W)`` of any size is padded (replicate) to a multiple of
    ``2**depth`` and the logits ``(B, num_classes, H, W)`` are cropped back.
    Input is expected normalised (see :func:`predict_semantic`, which does it).
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 3, base: int = 16, depth: int = 4,
                 norm: str = "batch"):
        super().__init__()
        if depth < 1 or base < 1:
            raise ValueError(f"depth and base must be >= 1, got depth={depth}, base={base}")
        self.config = {"in_channels": int(in_channels), "num_classes": int(num_classes),
                       "base": int(base), "depth": int(depth), "norm": str(norm)}
        ch = [base * 2 ** i for i in range(depth + 1)]
        self.down = nn.ModuleList([_block(in_channels, ch[0], norm)] +
                                  [_block(ch[i], ch[i + 1], norm) for i in range(depth)])
        self.reduce = nn.ModuleList([nn.Conv2d(ch[i + 1], ch[i], 1) for i in range(depth)])
        self.up = nn.ModuleList([_block(2 * ch[i], ch[i], norm) for i in range(depth)])
        self.head = nn.Conv2d(ch[0], num_classes, 1)
        self.input_size: int | None = None  # training square size, set by train_unet / load_unet
        self.crop_pad: float | None = None  # context margin of crop models (train_crop_unet)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        m = 2 ** self.config["depth"]
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        skips = []
        for i, blk in enumerate(self.down):
            x = blk(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for i in reversed(range(self.config["depth"])):
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            x = self.up[i](torch.cat([self.reduce[i](x), skips.pop()], 1))
        return self.head(x)[..., :h, :w]


# ---------------------------------------------------------------------------------------------
# data preparation: letterbox to a square, batches
# ---------------------------------------------------------------------------------------------
def _letterbox(img: torch.Tensor, sem: torch.Tensor | None, size: int | None):
    """Scale ``(3, H, W)`` uint8 (and ``(H, W)`` mask) to fit ``size`` keeping the aspect, pad bottom/right.

    Returns (image, mask, (h, w) of the content). Mask padding is :data:`IGNORE`.
    """
    h, w = img.shape[-2:]
    if size is None:
        return img, sem, (h, w)
    s = size / max(h, w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    if (nh, nw) != (h, w):
        img = F.interpolate(img[None].float(), (nh, nw), mode="bilinear", antialias=s < 1,
                            align_corners=False)[0].round().clamp(0, 255).to(torch.uint8)
        if sem is not None:
            sem = F.interpolate(sem[None, None].float(), (nh, nw), mode="nearest")[0, 0].to(sem.dtype)
    img = F.pad(img, (0, size - nw, 0, size - nh), value=0)
    if sem is not None:
        sem = F.pad(sem, (0, size - nw, 0, size - nh), value=IGNORE)
    return img, sem, (nh, nw)


def _image_of(x) -> np.ndarray:
    """The ``(H, W, 3)`` uint8 image of a Sample or array; ValueError for anything else."""
    img = x.image if isinstance(x, Sample) else np.asarray(x)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3), got shape {img.shape}")
    if img.dtype != np.uint8:
        raise ValueError(f"image must be uint8 RGB, got dtype {img.dtype}; convert 16-bit or float "
                         "images with smearlab.data.imageio.to_rgb8 (loaders do it on read)")
    if img.shape[0] == 0 or img.shape[1] == 0:
        raise ValueError(f"image has zero size {img.shape[:2]}")
    return img


def _prepare(dataset, size: int | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    for s in dataset:
        if not s.has_semantic:
            raise DataError(s.path or s.image_id, "sample has no semantic mask (needed to train)")
        img = torch.from_numpy(np.ascontiguousarray(s.image)).permute(2, 0, 1)
        sem = torch.from_numpy(np.ascontiguousarray(s.semantic)).to(torch.uint8)
        if tuple(sem.shape) != tuple(img.shape[-2:]):
            raise DataError(s.path or s.image_id, f"semantic mask has shape {tuple(sem.shape)}, "
                            f"image is {tuple(img.shape[-2:])}")
        img, sem, _ = _letterbox(img, sem, size)
        out.append((img, sem))
    return out


def _collate(items):
    """Stack, padding to the largest size in the batch (mask padding :data:`IGNORE`)."""
    h = max(i.shape[-2] for i, _ in items)
    w = max(i.shape[-1] for i, _ in items)
    imgs = torch.stack([F.pad(i, (0, w - i.shape[-1], 0, h - i.shape[-2])) for i, _ in items])
    sems = torch.stack([F.pad(s, (0, w - s.shape[-1], 0, h - s.shape[-2]), value=IGNORE) for _, s in items])
    return imgs, sems


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return (x.float() / 255 - _MEAN) / _STD


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------
def _loss(logits: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Cross-entropy + soft Dice (mean over classes present in the batch), :data:`IGNORE` left out."""
    logits = logits.float()
    ce = F.cross_entropy(logits, target, ignore_index=IGNORE)
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


def save_unet(model: UNet, path, **extra) -> Path:
    """Write ``{"state_dict", "config", "input_size", "crop_pad", **extra}`` atomically (:func:`torch.save`)."""
    path = Path(path)
    obj = {"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
           "config": dict(model.config), "input_size": model.input_size,
           "crop_pad": getattr(model, "crop_pad", None), **extra}
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return path


def load_unet(path, device: "str | torch.device | None" = "cpu") -> UNet:
    """A :class:`UNet` from :func:`save_unet` / :func:`train_unet`; DataError on an unreadable file."""
    from .detection.models import resolve_device
    p = Path(path)
    obj = read_torch_file(p, "U-Net checkpoint")
    if not isinstance(obj, dict) or not isinstance(obj.get("state_dict"), dict) \
            or not isinstance(obj.get("config"), dict):
        raise DataError(p, "not a smearlab U-Net checkpoint (expected keys 'state_dict' and 'config')")
    try:
        model = UNet(**obj["config"])
        model.load_state_dict(obj["state_dict"])
    except (TypeError, ValueError, RuntimeError) as e:
        raise DataError(p, f"U-Net checkpoint does not match its config: {e}") from e
    model.input_size = obj.get("input_size")
    model.crop_pad = obj.get("crop_pad")
    return model.to(resolve_device(device)).eval()


def train_unet(model: UNet, train_ds, val_ds=None, *, epochs: int = 20, batch_size: int = 8,
               lr: float = 3e-3, size: int | None = None, device="auto", seed: int = 0, augment=None,
               progress: bool = True, out_dir=None) -> list[dict[str, Any]]:
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
    out_dir : if given, ``unet.pt`` (:func:`save_unet`, after every epoch) and ``history.json``.

    Returns
    -------
    list of dict
        one per epoch: ``epoch``, ``loss`` (mean train loss), ``seconds`` and, with ``val_ds``,
        ``val_dice`` ``{class name: dice}``.
    """
    from .detection.models import resolve_device
    dev = resolve_device(device)
    names = train_ds.semantic_names or [str(i) for i in range(model.config["num_classes"])]
    k = model.config["num_classes"]
    if len(names) > k:
        raise ValueError(f"model has {k} classes but the dataset has {len(names)} ({names})")
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    data = _prepare(train_ds, size)
    model.input_size = size
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
    history = []
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        model.train()
        order = torch.randperm(len(data), generator=g).tolist()
        total, n = 0.0, 0
        for b in range(0, len(order), batch_size):
            imgs, sems = _collate([data[i] for i in order[b:b + batch_size]])
            imgs, sems = imgs.to(dev), sems.to(dev)
            if augment is not None:
                tg = [{"boxes": torch.zeros((0, 4), device=dev), "semantic": s} for s in sems]
                imgs, tg = augment.batch(imgs, tg)
                sems = torch.stack([t["semantic"] for t in tg])
            with torch.autocast(dev.type, dtype=torch.float16, enabled=amp):
                logits = model(_normalise(imgs))
            loss = _loss(logits, sems.long(), k)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            total += float(loss.detach()) * len(imgs)
            n += len(imgs)
        rec = {"epoch": epoch, "loss": total / max(n, 1)}
        if val_ds is not None:
            preds = predict_semantic(model, val_ds, batch_size=batch_size, device=dev)
            rec["val_dice"] = {name: v["dice"] for name, v in semantic_metrics(val_ds, preds).items()}
        rec["seconds"] = time.perf_counter() - t0
        history.append(rec)
        if progress:
            extra = "" if "val_dice" not in rec else "  val dice " + ", ".join(
                f"{a}={'-' if d is None else f'{d:.3f}'}" for a, d in rec["val_dice"].items())
            print(f"epoch {epoch}/{epochs}  loss {rec['loss']:.4f}{extra}  ({rec['seconds']:.1f} s)")
        if out_dir is not None:
            save_unet(model, Path(out_dir) / "unet.pt", semantic_names=list(names), epoch=epoch)
            write_json(Path(out_dir) / "history.json", history)
    model.eval()
    return history


# ---------------------------------------------------------------------------------------------
# prediction
# ---------------------------------------------------------------------------------------------
def _forward(model: nn.Module, x: torch.Tensor, tta: bool) -> torch.Tensor:
    """Logits of a normalised batch; with ``tta`` the log of the softmax averaged over the 4 flips."""
    if not tta:
        return model(x).float()
    prob = 0
    for dims in ((), (-1,), (-2,), (-2, -1)):
        xi = x.flip(dims) if dims else x
        p = model(xi).float().softmax(1)
        prob = prob + (p.flip(dims) if dims else p)
    return (prob / 4).clamp_min(1e-8).log()


@torch.no_grad()
def predict_semantic(model: UNet, images, batch_size: int = 8, device="auto",
                     size: "int | None | str" = "model", tta: bool = False) -> list[np.ndarray]:
    """Semantic masks ``(H, W)`` uint8 at each image's own size.

    Parameters
    ----------
    model : trained :class:`UNet`.
    images : SmearDataset / Samples, ``(H, W, 3)`` uint8 arrays, or one such array.
    batch_size : images per forward pass (images of equal working size are batched).
    device : "auto", "cpu", "cuda"...
    size : working square size; "model" uses ``model.input_size`` (the training ``size``),
        None the native size. Logits are resized back to each image's size before argmax.
    tta : test-time augmentation: average the class probabilities over the image and its
        horizontal, vertical and double flips (4 forward passes).
    """
    from .detection.models import resolve_device
    dev = resolve_device(device)
    if isinstance(images, np.ndarray) and images.ndim == 3:
        images = [images]
    if size == "model":
        size = getattr(model, "input_size", None)
    model.to(dev).eval()
    items = []
    for x in images:
        img = torch.from_numpy(np.ascontiguousarray(_image_of(x))).permute(2, 0, 1)
        items.append((img.shape[-2:], *_letterbox(img, None, size)[::2]))
    out: list[np.ndarray | None] = [None] * len(items)
    groups: dict[tuple, list[int]] = {}
    for i, (_, img, _) in enumerate(items):
        groups.setdefault(tuple(img.shape[-2:]), []).append(i)
    amp = dev.type == "cuda"
    for idx in groups.values():
        for b in range(0, len(idx), batch_size):
            chunk = idx[b:b + batch_size]
            x = torch.stack([items[i][1] for i in chunk]).to(dev)
            with torch.autocast(dev.type, dtype=torch.float16, enabled=amp):
                logits = _forward(model, _normalise(x), tta)
            for j, i in enumerate(chunk):
                (h, w), _, (ch, cw) = items[i]
                lg = logits[j:j + 1, :, :ch, :cw]
                if (ch, cw) != (h, w):
                    lg = F.interpolate(lg, (int(h), int(w)), mode="bilinear", align_corners=False)
                out[i] = lg[0].argmax(0).to(torch.uint8).cpu().numpy()
    return out


# ---------------------------------------------------------------------------------------------
# two-stage: boxes, then the U-Net on each crop
# ---------------------------------------------------------------------------------------------
def crop_window(box, hw: tuple[int, int], pad: float) -> tuple[int, int, int, int]:
    """The square crop ``(y0, y1, x0, x1)`` around ``box`` with a context margin, inside the image.

    The square is centred on the box, its side ``max(box w, box h) * (1 + 2 * pad)`` (at least
    one pixel), rounded outwards to whole pixels and clipped to the image ``hw`` (so crops at the
    border are not square).
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    h, w = int(hw[0]), int(hw[1])
    side = max(x1 - x0, y1 - y0, 1.0) * (1 + 2 * float(pad))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    ya, yb = max(0, math.floor(cy - side / 2)), min(h, math.ceil(cy + side / 2))
    xa, xb = max(0, math.floor(cx - side / 2)), min(w, math.ceil(cx + side / 2))
    if yb <= ya:  # box entirely outside the image: the nearest pixel row/column
        ya = min(max(ya, 0), h - 1)
        yb = ya + 1
    if xb <= xa:
        xa = min(max(xa, 0), w - 1)
        xb = xa + 1
    return ya, yb, xa, xb


def _check_pad(pad) -> float:
    if isinstance(pad, bool) or not isinstance(pad, (int, float, np.number)) or not np.isfinite(pad) or pad < 0:
        raise ValueError(f"pad must be a finite number >= 0 (a fraction of the box side), got {pad!r}")
    return float(pad)


def _crop_target(s: Sample, i: int, window) -> np.ndarray:
    """Semantic target of object ``i`` of ``s`` in ``window`` ``(y0, y1, x0, x1)``: its own
    pixels with their class, the rest 0."""
    ya, yb, xa, xb = window
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
        ``meta`` holds ``source`` (image id), ``object`` and ``window`` ``(y0, y1, x0, x1)``.
    """
    pad = _check_pad(pad)
    keep = None if classes is None else {int(c) for c in classes}
    names = getattr(dataset, "semantic_names", None)
    samples = []
    for s in dataset:
        if not len(s.boxes):
            continue
        img = s.image
        hw = img.shape[:2]
        checked = False
        for i, (box, lab) in enumerate(zip(s.boxes, s.labels)):
            if keep is not None and int(lab) not in keep:
                continue
            if not checked:  # once per image, and only for an image that gives crops
                _check_targets(s, hw)
                checked = True
            ya, yb, xa, xb = crop_window(box, hw, pad)
            b = np.clip(box - np.array([xa, ya, xa, ya], np.float32), 0, [xb - xa, yb - ya] * 2)
            samples.append(Sample(f"{s.image_id}#{i}", _image=np.ascontiguousarray(img[ya:yb, xa:xb]),
                                  boxes=b[None], labels=[int(lab)], domain=s.domain,
                                  meta={"source": s.image_id, "object": i, "window": (ya, yb, xa, xb)},
                                  _semantic=np.ascontiguousarray(_crop_target(s, i, (ya, yb, xa, xb)))))
    if not (names and any(s.has_semantic for s in dataset)):
        names = ["background", "foreground"]
    return SmearDataset(samples, getattr(dataset, "class_names", ["object"]),
                        name or f"{getattr(dataset, 'name', 'dataset')}-crops", semantic_names=names)


def train_crop_unet(dataset, *, pad: float = 0.2, crop_size: int = 64, classes: Sequence[int] | None = None,
                    model: UNet | None = None, base: int = 16, depth: int = 4, norm: str = "batch",
                    val_ds=None, **train_kw) -> tuple[UNet, list[dict]]:
    """Train a U-Net on crops around the ground-truth boxes (the second stage of :func:`two_stage_segment`).

    Parameters
    ----------
    dataset : SmearDataset with boxes and instance (and/or semantic) masks.
    pad : context margin of each crop (fraction of the box's longer side), saved with the
        model as ``model.crop_pad``.
    crop_size : crops are letterboxed into ``crop_size`` x ``crop_size`` (``model.input_size``).
    classes : train on the boxes of these label indices only (default all).
    model : a :class:`UNet` to train further; default a new one with ``base``, ``depth`` and
        ``norm`` and as many classes as the crop targets have.
    val_ds : optional dataset whose crops give ``val_dice`` per epoch.
    **train_kw : passed to :func:`train_unet` (``epochs``, ``batch_size``, ``lr``, ``device``,
        ``seed``, ``augment``, ``progress``, ``out_dir``...).

    Returns
    -------
    (model, history) : the trained model (``eval`` mode) and :func:`train_unet`'s history.
    """
    pad = _check_pad(pad)
    if isinstance(crop_size, bool) or not isinstance(crop_size, (int, np.integer)) or crop_size < 8:
        raise ValueError(f"crop_size must be an integer >= 8, got {crop_size!r}")
    crops = crop_dataset(dataset, pad, classes=classes)
    if not len(crops):
        raise ValueError(f"dataset {getattr(dataset, 'name', '?')!r} has no boxes to train on"
                         + ("" if classes is None else f" of classes {list(classes)}"))
    val = None if val_ds is None else crop_dataset(val_ds, pad, classes=classes)
    if model is None:
        model = UNet(3, len(crops.semantic_names), base=base, depth=depth, norm=norm)
    model.crop_pad = pad  # before training, so that every checkpoint of out_dir carries it
    history = train_unet(model, crops, val, size=int(crop_size), **train_kw)
    return model, history


def _boxes_of(entry, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(boxes, labels, scores)`` of one image's boxes, Sample or prediction dict."""
    if isinstance(entry, Sample):
        boxes, labels, scores = entry.boxes, entry.labels, None
    elif isinstance(entry, dict):
        if "boxes" not in entry:
            raise ValueError(f"{where}: prediction has no 'boxes'")
        boxes, labels, scores = entry["boxes"], entry.get("labels"), entry.get("scores")
    else:
        boxes, labels, scores = entry, None, None
    boxes = np.asarray(boxes, np.float32)
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{where}: boxes must have shape (N, 4) (x0, y0, x1, y1), got {boxes.shape}")
    if not np.all(np.isfinite(boxes)):
        raise ValueError(f"{where}: boxes contain NaN or infinite values")
    n = len(boxes)
    labels = np.zeros(n, np.int64) if labels is None else np.asarray(labels, np.int64).reshape(-1)
    scores = np.ones(n, np.float32) if scores is None else np.asarray(scores, np.float32).reshape(-1)
    if len(labels) != n or len(scores) != n:
        raise ValueError(f"{where}: {n} boxes but {len(labels)} labels and {len(scores)} scores")
    return boxes, labels, scores


def _instance(cmap: np.ndarray, inner: tuple[int, int, int, int], keep: str) -> np.ndarray:
    """Foreground (class > 0) of one crop's class map; with ``keep="largest"`` one component.

    The component kept has the most pixels inside ``inner`` (the box in crop coordinates,
    ``y0, y1, x0, x1``), ties and no overlap broken by total size.
    """
    fg = cmap > 0
    if keep == "all" or not fg.any():
        return fg
    from scipy import ndimage as ndi
    lab, n = ndi.label(fg, structure=np.ones((3, 3), bool))
    if n <= 1:
        return fg
    y0, y1, x0, x1 = inner
    inside = np.bincount(lab[y0:y1, x0:x1].ravel(), minlength=n + 1)[1:]
    total = np.bincount(lab.ravel(), minlength=n + 1)[1:]
    best = int(np.lexsort((total, inside))[-1]) + 1
    return lab == best


def two_stage_segment(boxes_or_detector_predictions, unet: UNet, images, *, pad: "float | str" = "model",
                      crop_size: "int | None | str" = "model", keep: str = "largest",
                      batch_size: int = 32, device="auto", return_semantic: bool = False):
    """Instance masks from boxes: crop each box with context, run the U-Net, paste the result.

    Parameters
    ----------
    boxes_or_detector_predictions : per image, a detector prediction dict (``boxes``, and
        ``labels``/``scores`` kept as they are), a Sample (its ground-truth boxes: an oracle
        first stage) or an ``(N, 4)`` xyxy array (labels 0, scores 1).
    unet : a (crop) :class:`UNet` from :func:`train_crop_unet`.
    images : SmearDataset, Samples or ``(H, W, 3)`` uint8 arrays, aligned with the boxes.
    pad : crop margin (fraction of the box's longer side, see :func:`crop_window`); "model"
        uses ``unet.crop_pad`` (0.2 when unset).
    crop_size : working square size of the U-Net; "model" uses ``unet.input_size``.
    keep : ``"largest"`` keeps, per box, the foreground component with most pixels inside the
        box (a neighbour's fringe at the crop edge is dropped); ``"all"`` keeps every
        foreground pixel of the crop.
    batch_size, device : as in :func:`predict_semantic` (all crops are batched together).
    return_semantic : also return one ``(H, W)`` uint8 class map per image (instances pasted by
        increasing score, so the higher score wins where crops overlap; 0 elsewhere).

    Returns
    -------
    list of dict, or (list of dict, list of ndarray)
        one prediction per image: ``boxes`` (the given boxes clipped to the image), ``labels``,
        ``scores`` and ``masks`` ``(N, H, W)`` bool, one instance per box (empty when the U-Net
        finds no foreground in its crop); instances may overlap (each is scored on its own).
    """
    if keep not in ("largest", "all"):
        raise ValueError(f"keep must be 'largest' or 'all', got {keep!r}")
    if pad == "model":
        pad = getattr(unet, "crop_pad", None)
        pad = 0.2 if pad is None else pad
    pad = _check_pad(pad)
    if crop_size == "model":
        crop_size = getattr(unet, "input_size", None)
    if isinstance(images, np.ndarray) and images.ndim == 3:
        images = [images]
    entries = list(boxes_or_detector_predictions)
    if len(entries) != len(images):
        raise ValueError(f"{len(entries)} box sets for {len(images)} images")
    per_image, crops = [], []
    for i, (entry, x) in enumerate(zip(entries, images)):
        img = _image_of(x)
        h, w = img.shape[:2]
        boxes, labels, scores = _boxes_of(entry, f"image {i}")
        boxes = np.clip(boxes, 0, [w, h, w, h]).astype(np.float32)
        windows = [crop_window(b, (h, w), pad) for b in boxes]
        crops += [img[ya:yb, xa:xb] for ya, yb, xa, xb in windows]
        per_image.append((h, w, boxes, labels, scores, windows))
    cmaps = predict_semantic(unet, crops, batch_size=batch_size, device=device, size=crop_size) if crops else []
    preds, sems, k = [], [], 0
    for h, w, boxes, labels, scores, windows in per_image:
        masks = np.zeros((len(boxes), h, w), bool)
        sem = np.zeros((h, w), np.uint8) if return_semantic else None
        maps = cmaps[k:k + len(boxes)]
        k += len(boxes)
        for j, ((ya, yb, xa, xb), box, cm) in enumerate(zip(windows, boxes, maps)):
            bx0, by0, bx1, by1 = box
            inner = (max(0, math.floor(by0) - ya), max(1, math.ceil(by1) - ya),
                     max(0, math.floor(bx0) - xa), max(1, math.ceil(bx1) - xa))
            masks[j, ya:yb, xa:xb] = _instance(cm, inner, keep)
        if sem is not None:
            for j in np.argsort(scores, kind="stable"):
                ya, yb, xa, xb = windows[j]
                m = masks[j, ya:yb, xa:xb]
                sem[ya:yb, xa:xb][m] = maps[j][m]
            sems.append(sem)
        preds.append({"boxes": boxes, "labels": labels, "scores": scores, "masks": masks})
    return (preds, sems) if return_semantic else preds


# ---------------------------------------------------------------------------------------------
# from instances to semantic targets and back
# ---------------------------------------------------------------------------------------------
def foreground_semantic(dataset, name: str | None = None):
    """The dataset with ``semantic`` = union of each sample's instance masks (0 background, 1 foreground).

    For training a U-Net on an instance dataset (DSB2018 nuclei, synthetic cells) as two-class
    semantic segmentation. Samples are shallow copies (images shared); ``semantic_names`` is
    ``["background", "foreground"]``. A sample without objects gets an all-background mask.

    Raises
    ------
    DataError
        naming the sample when it has objects but no instance masks.
    """
    import dataclasses
    out = []
    for s in dataset:
        if len(s.boxes) and not s.has_masks:
            raise DataError(s.path or s.image_id, "sample has objects but no instance masks")

        def fg(s=s):
            m = s.masks
            return (np.asarray(m).any(0) if m is not None and len(m) else np.zeros(s.hw, bool)).astype(np.uint8)
        out.append(dataclasses.replace(s, _semantic=fg))
    return SmearDataset(out, getattr(dataset, "class_names", []), name or getattr(dataset, "name", "dataset"),
                        root=getattr(dataset, "root", None), format=getattr(dataset, "format", None),
                        semantic_names=["background", "foreground"])


def semantic_to_instances(class_map: np.ndarray, *, split: str = "watershed", min_distance: int = 5,
                          min_size: int = 16, label: int = 0) -> dict:
    """Instances of a semantic prediction's foreground (every class > 0), in the prediction form.

    Parameters
    ----------
    class_map : ``(H, W)`` integer class map (e.g. from :func:`predict_semantic`).
    split : ``"watershed"`` splits touching objects with the distance-transform watershed of
        :func:`smearlab.classical.watershed_segment` (``min_distance``); ``"components"``
        keeps connected components as they are.
    min_size : drop instances smaller than this many pixels.
    label : class index of every instance.

    Returns
    -------
    dict
        ``boxes``, ``scores`` (1.0), ``labels`` and ``masks``.
    """
    from . import classical
    cm = np.asarray(class_map)
    if cm.ndim != 2:
        raise ValueError(f"class map must be 2-D (H, W), got shape {cm.shape}")
    if split not in ("watershed", "components"):
        raise ValueError(f"split must be 'watershed' or 'components', got {split!r}")
    fg = cm > 0
    if split == "watershed":
        return classical.watershed_segment(fg, min_distance=min_distance, min_size=min_size, label=label)
    from skimage.measure import label as cc
    return classical._finish(cc(fg, connectivity=1), None, label, min_size)


def instance_splits(spec="synthetic", *, quick: bool = True, seed: int = 0, val: float = 0.15, test: float = 0.2,
                    max_train: int | None = None, max_test: int | None = None) -> dict:
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
    max_train, max_test : caps on the number of images (override the quick defaults).

    Returns
    -------
    dict
        ``{"train", "test"}``: SmearDatasets with one class ``"cell"``
        (:func:`smearlab.classical.as_single_class`), plus ``"name"``.
    """
    from .classical import as_single_class
    from .data import open_dataset
    if quick:
        max_train = max_train or (6 if spec == "synthetic" else 24)
        max_test = max_test or (6 if spec == "synthetic" else 12)
    if spec == "synthetic":
        from .data.synthetic import make_dataset
        w, h = (256, 192) if quick else (512, 384)
        tr = make_dataset(max_train or 40, seed=seed + 1, width=w, height=h)
        te = make_dataset(max_test or 24, seed=seed, width=w, height=h)
        name = "synthetic"
    else:
        from .data.splits import train_val_test_split
        ds = open_dataset(spec)
        parts = train_val_test_split(ds, val=val, test=test, seed=seed, stratify=len(ds.class_names) > 1)
        tr, te = SmearDataset.concat([parts["train"], parts["val"]]) if "val" in parts else parts["train"], parts["test"]
        tr, te = tr[:max_train] if max_train else tr, te[:max_test] if max_test else te
        name = ds.name
    return {"train": as_single_class(tr), "test": as_single_class(te), "name": name}


def _starts(n: int, tile: int) -> list[int]:
    """Tile origins along one axis: a grid of step ``tile``, the last tile flush with the end."""
    if n <= tile:
        return [0]
    return sorted(set(list(range(0, n - tile, tile)) + [n - tile]))


def tile_dataset(dataset, tile: int = 128, *, max_tiles: int | None = None, seed: int = 0):
    """Cut every image (and its semantic mask) into ``tile`` x ``tile`` tiles at native resolution.

    For training a U-Net on images of mixed, large sizes (DSB2018: 256 to 1024 px) without
    shrinking small objects: train on the tiles (``size=None``), predict on whole images. Tiles
    cover the image on a grid, the last row and column flush with the border (so they may
    overlap); an image smaller than ``tile`` stays whole. Instance masks are not kept.

    Parameters
    ----------
    dataset : SmearDataset with semantic masks (see :func:`foreground_semantic`).
    tile : tile side in pixels (>= 16).
    max_tiles : keep a random subset of this many tiles (seeded by ``seed``), or all.

    Returns
    -------
    SmearDataset
        one sample per tile (``meta["source"]``, ``meta["window"]`` ``(y0, y1, x0, x1)``), same
        ``semantic_names``.
    """
    if isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or tile < 16:
        raise ValueError(f"tile must be an integer >= 16, got {tile!r}")
    windows = []
    for i, s in enumerate(dataset):
        if not s.has_semantic:
            raise DataError(s.path or s.image_id, "sample has no semantic mask (needed to train)")
        h, w = s.hw
        windows += [(i, y, min(h, y + tile), x, min(w, x + tile)) for y in _starts(h, tile) for x in _starts(w, tile)]
    if max_tiles is not None and len(windows) > max_tiles:
        keep = np.sort(np.random.default_rng(seed).choice(len(windows), int(max_tiles), replace=False))
        windows = [windows[k] for k in keep]
    out = []
    for i, y0, y1, x0, x1 in windows:
        s = dataset[i]
        out.append(Sample(f"{s.image_id}@{y0},{x0}", _image=np.ascontiguousarray(s.image[y0:y1, x0:x1]),
                          domain=s.domain, meta={"source": s.image_id, "window": (y0, y1, x0, x1)},
                          _semantic=np.ascontiguousarray(np.asarray(s.semantic)[y0:y1, x0:x1])))
    return SmearDataset(out, getattr(dataset, "class_names", []), f"{getattr(dataset, 'name', 'dataset')}-tiles",
                        semantic_names=getattr(dataset, "semantic_names", None))


# ---------------------------------------------------------------------------------------------
# datasets for the segmentation notebook: instances and class maps from either kind of mask
# ---------------------------------------------------------------------------------------------
def instances_from_semantic(dataset, groups: "dict[str, Sequence[int]] | None" = None, *, min_size: int = 4):
    """Instance masks from class maps: each connected component of each group is one instance.

    Zheng's WBC masks are class maps (0 background, 1 cytoplasm, 2 nucleus) with one cell per
    image; ``groups={"cell": (1, 2), "nucleus": (2,)}`` (the default for those names) turns them
    into whole-cell and nucleus instances for Mask R-CNN. Components smaller than ``min_size``
    pixels are dropped. Class maps are kept, so the U-Net trains on the same samples.
    """
    from scipy import ndimage

    from .data.boxes import mask_box
    names = list(getattr(dataset, "semantic_names", None) or [])
    if groups is None:
        if names[:3] != ["background", "cytoplasm", "nucleus"]:
            raise ValueError(f"give groups for class maps named {names}: e.g. {{'cell': (1, 2)}}")
        groups = {"cell": (1, 2), "nucleus": (2,)}
    out = []
    for s in dataset:
        if s.semantic is None:
            raise DataError(s.path or s.image_id, "sample has no class map to make instances from")
        sem = np.asarray(s.semantic)
        masks, labels = [], []
        for k, values in enumerate(groups.values()):
            lab, n = ndimage.label(np.isin(sem, list(values)))
            for j in range(1, n + 1):
                m = lab == j
                if m.sum() >= min_size:
                    masks.append(m)
                    labels.append(k)
        m = np.stack(masks) if masks else np.zeros((0, *sem.shape), bool)
        boxes = np.stack([mask_box(x) for x in m]) if len(m) else np.zeros((0, 4), np.float32)
        out.append(Sample(s.image_id, s.path, boxes=boxes, labels=labels, image_label=s.image_label,
                          domain=s.domain, meta=dict(s.meta), _image=s.image, _masks=m, _semantic=sem))
    return SmearDataset(out, list(groups), getattr(dataset, "name", "dataset"), semantic_names=names)


def segmentation_splits(spec: str = "synthetic", *, quick: bool = True, seed: int = 0, val: float = 0.15,
                        test: float = 0.2) -> dict:
    """Train / val / test splits (by image) whose samples carry instance masks AND class maps.

    * ``"synthetic"``: one staining style, 32 smears of 320 x 240 in quick mode (200 of 512 x 384
      otherwise); instances RBC / WBC / Platelets, class map background / cell / nucleus.
    * Zheng WBC (archive or folder): instances "cell" and "nucleus" from the class maps
      (:func:`instances_from_semantic`).
    * Datasets with instance masks only (DSB2018): class map background / foreground
      (:func:`foreground_semantic`).
    """
    from .data import open_dataset
    from .data.splits import train_val_test_split
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
    return train_val_test_split(ds, val=val, test=test, seed=seed, stratify=len(ds.class_names) > 1)
