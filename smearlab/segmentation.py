"""Semantic segmentation of cells: Dice / IoU metrics, a small U-Net, training and prediction.

Masks are ``(H, W)`` uint8 arrays whose values index ``SmearDataset.semantic_names``
(white-cell crops: 0 background, 1 cytoplasm, 2 nucleus). The value :data:`IGNORE` (255) in a
target is left out of metrics and of the loss (padding uses it).

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
from .data.sample import Sample
from .io import atomic_path, write_json

__all__ = ["IGNORE", "dice_iou", "dice_iou_per_image", "semantic_metrics", "whole_cell", "UNet",
           "train_unet", "predict_semantic", "save_unet", "load_unet"]

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
def _norm(kind: str, c: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(c)
    if kind == "group":
        return nn.GroupNorm(math.gcd(8, c), c)
    raise ValueError(f"norm must be 'batch' or 'group', got {kind!r}")


def _block(cin: int, cout: int, norm: str) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), _norm(norm, cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), _norm(norm, cout), nn.ReLU(inplace=True))


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
    img = x.image if isinstance(x, Sample) else np.asarray(x)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3), got shape {img.shape}")
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
    """Write ``{"state_dict", "config", "input_size", **extra}`` atomically with :func:`torch.save`."""
    path = Path(path)
    obj = {"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
           "config": dict(model.config), "input_size": model.input_size, **extra}
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return path


def load_unet(path, device: "str | torch.device | None" = "cpu") -> UNet:
    """A :class:`UNet` from :func:`save_unet` / :func:`train_unet`; DataError on an unreadable file."""
    from .detection.models import resolve_device
    p = Path(path)
    if not p.is_file():
        raise DataError(p, "U-Net checkpoint does not exist")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user problem
        raise DataError(p, f"cannot read U-Net checkpoint (corrupt or not a torch file): "
                           f"{type(e).__name__}: {e}") from e
    if not isinstance(obj, dict) or not isinstance(obj.get("state_dict"), dict) \
            or not isinstance(obj.get("config"), dict):
        raise DataError(p, "not a smearlab U-Net checkpoint (expected keys 'state_dict' and 'config')")
    try:
        model = UNet(**obj["config"])
        model.load_state_dict(obj["state_dict"])
    except (TypeError, ValueError, RuntimeError) as e:
        raise DataError(p, f"U-Net checkpoint does not match its config: {e}") from e
    model.input_size = obj.get("input_size")
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
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1), pct_start=0.1)
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
@torch.no_grad()
def predict_semantic(model: UNet, images, batch_size: int = 8, device="auto",
                     size: "int | None | str" = "model") -> list[np.ndarray]:
    """Semantic masks ``(H, W)`` uint8 at each image's own size.

    Parameters
    ----------
    model : trained :class:`UNet`.
    images : SmearDataset / Samples, ``(H, W, 3)`` uint8 arrays, or one such array.
    batch_size : images per forward pass (images of equal working size are batched).
    device : "auto", "cpu", "cuda"...
    size : working square size; "model" uses ``model.input_size`` (the training ``size``),
        None the native size. Logits are resized back to each image's size before argmax.
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
                logits = model(_normalise(x)).float()
            for j, i in enumerate(chunk):
                (h, w), _, (ch, cw) = items[i]
                lg = logits[j:j + 1, :, :ch, :cw]
                if (ch, cw) != (h, w):
                    lg = F.interpolate(lg, (int(h), int(w)), mode="bilinear", align_corners=False)
                out[i] = lg[0].argmax(0).to(torch.uint8).cpu().numpy()
    return out
