"""Training loop for torchvision detectors (references/detection style), resumable and DDP-ready.

``train_detector`` runs the loop every task shares (:func:`smearlab.core.training.step_loop`),
one step per batch and one record per epoch: mixed precision (``torch.autocast`` +
``GradScaler``) on CUDA, a warm-up then cosine / step learning-rate schedule per iteration,
gradient clipping, a tqdm bar with the loss, learning rate and time budget, and per epoch:

* ``out_dir/metrics.jsonl`` and ``metrics.csv``: epoch, lr, loss components, images/s,
  validation mAP50 / mAP, time;
* ``out_dir/last.pt``: model, optimizer, scaler, scheduler, epoch, history and every RNG state
  (torch, numpy, python, cuda, the augmenter's; per rank), written atomically, so that a resumed run gives the
  same weights as an uninterrupted one (CPU, ``num_workers=0``);
* ``out_dir/best/``: the best model by validation mAP (a :func:`save_model` folder); at the end
  ``out_dir/model/`` holds the final model.

Mask R-CNN (``arch="maskrcnn"`` / ``"maskrcnn_tiny"``, :func:`~smearlab.detection.models.is_mask_model`)
trains on the samples' instance masks (``Sample.masks``): every sample with objects must have
them (``ValueError`` otherwise, before training starts); an image without objects gets an empty
``(0, H, W)`` mask stack. Augmentation warps the masks with the image (nearest sampling), on the
CPU per sample or batched on the GPU, and drops them with their boxes (the masks are gathered
in their own dtype, never copied to float32).
With ``data_on_gpu`` the masks are kept on the GPU beside the images (uint8, counted in the
memory check that falls back to the CPU loader when the data would take more than a quarter of
the free GPU memory). The validation records of a mask model also hold the mask AP
(``val_mask_mAP``, ``val_mask_mAP50``).

A non-finite loss stops training with a ``FloatingPointError`` naming the epoch, step and
learning rate; ``last.pt`` then still holds the last good epoch.

Multi-GPU: the same entry point works under ``torchrun`` (WORLD_SIZE / RANK / LOCAL_RANK in the
environment): DistributedDataParallel, a DistributedSampler, only rank 0 writes files, and every
rank ends with the same weights::

    torchrun --nproc_per_node=4 -m smearlab.detection.train --data DATASET --arch fasterrcnn --out runs/x
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import random
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, RandomSampler

from ..core.device import resolve_device
from ..core.errors import DataError
from ..core.files import atomic_path, write_text
from ..core.training import History, TimeBudget, ema_model, step_loop
from ..data import open_dataset
from ..data.boxes import check_boxes
from ..data.derive import remap_dataset
from ..data.sample import SmearDataset
from ..data.splits import split_groups, train_val_test_split
from ..data.synthetic import make_dataset
from ..data.torchdata import LUMA, DetectionDataset, collate_detection
from ..metrics.detection import coco_eval
from ..metrics.instances import has_instance_masks
from ..preprocess import as_preprocess
from .losses import BOX_LOSSES
from .models import (ARCHS, FINE_LEVELS, DetectorConfig, build_detector, is_mask_model, median_sides, save_model,
                     unwrap)
from .predict import predict
from .scale import object_sizes

log = logging.getLogger("smearlab.detection")

CHECKPOINT_FORMAT = "smearlab-train/1"

@dataclass
class TrainConfig:
    """Training options.

    Parameters
    ----------
    epochs : length of the run (and of the learning-rate schedule).
    batch_size : images per step (per process under DDP).
    lr : peak learning rate (None: 0.02 * batch_size / 16 for SGD, 1e-4 for AdamW).
    optimizer : ``"sgd"`` or ``"adamw"``.
    momentum, weight_decay : optimizer options.
    warmup_iters : linear warm-up steps (capped at a quarter of all steps).
    lr_schedule : ``"cosine"``, ``"step"`` (x ``lr_gamma`` at ``lr_steps`` epochs; default 2/3
        and 8/9 of the run) or ``"constant"``.
    lr_steps : the epochs at which the ``"step"`` schedule multiplies the learning rate by
        ``lr_gamma`` (None: 2/3 and 8/9 of ``epochs``).
    lr_gamma : the factor of each ``"step"`` decay.
    amp : mixed precision on CUDA: float16 autocast with a gradient scaler (see ``cpu_bf16``
        for the CPU).
    cpu_bf16 : bfloat16 autocast on the CPU (the losses stay float32). Fast on CPUs with
        AMX or AVX-512 BF16 (recent Xeons), slower elsewhere; off by default (a float32 run is the
        same on every CPU). Training only: validation and prediction run in float32.
    channels_last : keep the weights and activations in channels-last (NHWC) memory layout
        while training, which oneDNN's CPU convolutions run faster; the same arithmetic up to the
        order of float sums. None: on the CPU, off on CUDA. Saved weights are plain (NCHW).
    seed : seeds python, numpy, torch and the data order.
    num_workers : DataLoader worker processes.
    device : ``"auto"``, ``"cpu"``, ``"cuda"`` (under DDP each process takes ``cuda:LOCAL_RANK``).
    out_dir : folder for checkpoints, metrics and models (None: nothing written).
    val_every : validate every this many epochs (and after the last one).
    checkpoint_every : write ``last.pt`` every this many epochs (and after the last one, and at
        ``until_epoch``). On a fast GPU an epoch of a small dataset takes seconds and a ResNet-50
        checkpoint with its optimiser state is about 350 MB; a resumed run goes on from the last
        one written.
    best_metric : validation metric that picks ``best/`` (``"mAP"`` or ``"mAP50"``).
    grad_clip : max gradient norm (None: no clipping).
    data_on_gpu : on CUDA, keep every training image on the GPU as uint8 (small datasets):
        no DataLoader, no per-sample augmentation (a ``.batch`` augmenter still runs). A mask
        model's instance masks go to the GPU with the images.
    augment : ``f(sample) -> sample`` applied to each training sample on the CPU, or an
        object with ``.batch(images, targets) -> (images, targets)`` applied to each batch of
        device tensors; ``"default"``: :func:`smearlab.augment.default_augment` seeded with
        ``seed`` (what the recipes of ``smearlab.experiments.profiles`` and the benchmarks train
        with); None: no augmentation.
    max_steps_per_epoch : cut epochs short (quick looks, tests).
    val_tile : tile size for validation inference on large fields (see ``predict``).
    preprocess : preprocessing pipeline (a ``Preprocess`` or its dict), applied to the training
        and validation images before augmentation and saved with the models, so that
        :func:`~smearlab.detection.predict.predict` applies it identically.
    ema_decay : keep an exponential moving average of the weights (decay per step, e.g. 0.999;
        :func:`~smearlab.core.training.ema_model`): validation scores the average, ``best/`` and
        ``model/`` hold it and the trained model ends with its weights; ``last.pt`` keeps both
        (the raw weights as ``model``, the average as ``ema``). None: no average.
    time_budget_s : train for this many seconds (validation included) instead of ``epochs``:
        the number of epochs, and with it the learning-rate schedule, is fitted to the budget
        from the measured speed of the first steps and of each epoch
        (:class:`~smearlab.core.training.TimeBudget`), so the run ends on a finished schedule
        within the budget; a slowdown that leaves no time for the epochs planned ends the run one
        epoch later, to finish the schedule (past the budget by at most that epoch). ``epochs`` is
        then only the plan before the first measurement. A resumed run goes on with the budget
        and plan of its ``last.pt``.
    """

    epochs: int = 12
    batch_size: int = 4
    lr: float | None = None
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 200
    lr_schedule: str = "cosine"
    lr_steps: Sequence[int] | None = None
    lr_gamma: float = 0.1
    amp: bool = True
    cpu_bf16: bool = False
    channels_last: bool | None = None
    seed: int = 0
    num_workers: int = 0
    device: str = "auto"
    out_dir: str | Path | None = None
    val_every: int = 1
    checkpoint_every: int = 1
    best_metric: str = "mAP"
    grad_clip: float | None = 10.0
    data_on_gpu: bool = False
    augment: Any = None
    max_steps_per_epoch: int | None = None
    val_tile: int | None = None
    preprocess: Any = None
    time_budget_s: float | None = None
    ema_decay: float | None = None

    def __post_init__(self):
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        if self.lr_schedule not in ("cosine", "step", "constant"):
            raise ValueError(f"lr_schedule must be 'cosine', 'step' or 'constant', got {self.lr_schedule!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}")
        if self.checkpoint_every < 1 or self.val_every < 1:
            raise ValueError(f"val_every and checkpoint_every must be >= 1, got {self.val_every}, "
                             f"{self.checkpoint_every}")
        if self.ema_decay is not None and not 0.0 < float(self.ema_decay) < 1.0:
            raise ValueError(f"ema_decay must lie between 0 and 1 (exclusive), got {self.ema_decay!r}")
        if self.best_metric not in ("mAP", "mAP50"):  # another name picked best/ by mAP50 without a word
            raise ValueError(f"best_metric must be 'mAP' or 'mAP50', got {self.best_metric!r}")
        if self.time_budget_s is not None and not float(self.time_budget_s) > 0:
            raise ValueError(f"time_budget_s must be a positive number of seconds, got {self.time_budget_s!r}")
        if isinstance(self.augment, str):
            if self.augment != "default":
                raise ValueError(f"augment must be a callable, an object with .batch(), 'default' or None, "
                                 f"got {self.augment!r}")
            from ..augment import default_augment
            self.augment = default_augment(self.seed)
            self.augment.seeded_by_config = True
        elif getattr(self.augment, "seeded_by_config", False) and self.augment.seed != self.seed:
            # a copy with another seed (dataclasses.replace, e.g. a fold's seed): its own default augmentation
            from ..augment import default_augment
            self.augment = default_augment(self.seed)
            self.augment.seeded_by_config = True

    @property
    def base_lr(self) -> float:
        if self.lr is not None:
            return float(self.lr)
        return 0.02 * self.batch_size / 16 if self.optimizer == "sgd" else 1e-4

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: every field (``augment`` and ``preprocess`` as their ``repr``, paths as
        strings, tuples as lists) plus the effective ``base_lr``.
        """
        d = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name in ("augment", "preprocess"):
                v = None if v is None else repr(v)
            elif isinstance(v, Path):
                v = str(v)
            elif isinstance(v, tuple):
                v = list(v)
            d[f.name] = v
        d["base_lr"] = self.base_lr
        return d


def default_evaluate(dataset, predictions) -> dict[str, float]:
    """COCO-style evaluation by :func:`smearlab.metrics.detection.coco_eval` (imported when first used).

    When every prediction carries ``masks`` and every sample with objects has instance masks,
    the mask AP is added as ``mask_mAP`` and ``mask_mAP50``.

    Parameters
    ----------
    dataset : the ground truth (a SmearDataset).
    predictions : one prediction dict per sample, aligned with ``dataset``.

    Returns
    -------
    dict
        :func:`~smearlab.metrics.detection.coco_eval`'s box scores (``mAP``, ``mAP50``, ``mAP75``,
        ``per_class`` ...), with ``mask_mAP`` and ``mask_mAP50`` when masks are scored.
    """
    out = coco_eval(dataset, predictions)
    if predictions and all("masks" in p for p in predictions) and has_instance_masks(dataset):
        segm = coco_eval(dataset, predictions, iou_type="segm")
        out["mask_mAP"], out["mask_mAP50"] = segm["mAP"], segm["mAP50"]
    return out


# ---------------------------------------------------------------------------------------------
# distributed context
# ---------------------------------------------------------------------------------------------
@dataclass
class _Dist:
    world: int = 1
    rank: int = 0
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def setup(cls, device: str) -> "_Dist":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1 and not (dist.is_available() and dist.is_initialized()):
            return cls(device=resolve_device(device))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        want = resolve_device(device)
        if want.type == "cuda":
            want = torch.device("cuda", local)
            torch.cuda.set_device(want)
        owns = False
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if want.type == "cuda" else "gloo")
            owns = True
        return cls(world=dist.get_world_size(), rank=dist.get_rank(), local_rank=local, device=want,
                   owns_group=owns)

    def barrier(self):
        if self.active:
            dist.barrier()

    def share(self, value):
        """Rank 0's ``value`` on every rank (a picklable object)."""
        if not self.active:
            return value
        box = [value]
        dist.broadcast_object_list(box, 0)
        return box[0]

    def close(self):
        if self.owns_group:
            if dist.is_initialized():
                dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# RNG states (stored as tensors / plain types: checkpoints load with weights_only=True)
# ---------------------------------------------------------------------------------------------
def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, pstate, pgauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(np.asarray(keys, np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": int(version), "state": torch.tensor(pstate, dtype=torch.int64),
                   "gauss": pgauss},
    }


def _set_rng_state(s: dict[str, Any]) -> None:
    torch.set_rng_state(s["torch"].cpu())
    if s.get("cuda") and torch.cuda.is_available() and len(s["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([t.cpu() for t in s["cuda"]])
    n = s["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = s["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))


def _seed_worker(worker_id: int) -> None:  # DataLoader worker_init_fn (module level: picklable)
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)
    # an augmenter with its own generator (smearlab.augment.Augment) is copied into every worker
    # in one state, and again each epoch: every worker drew the same numbers, every epoch alike
    info = torch.utils.data.get_worker_info()
    g = getattr(getattr(getattr(info, "dataset", None), "transform", None), "generator", None)
    if isinstance(g, torch.Generator):
        g.manual_seed(torch.initial_seed())  # per worker and per epoch (the loader's seeded generator)


def _epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    # rank 0 (and a single process) keeps the seeds it always had
    return int(np.random.SeedSequence([seed, epoch] + ([rank] if rank else [])).generate_state(1, np.uint64)[0] >> 1)


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------
def _preprocessed(ds: SmearDataset, pre) -> SmearDataset:
    """The dataset with ``pre`` applied to every image once, up front (same annotations)."""
    if pre is None or not len(pre):
        return ds
    return SmearDataset([pre.apply(s) for s in ds], ds.class_names, ds.name, root=ds.root,
                        format=ds.format, semantic_names=ds.semantic_names)


def _as_smear(ds) -> tuple[SmearDataset | None, Any]:
    """(SmearDataset or None, per-sample transform of a given DetectionDataset)."""
    if isinstance(ds, SmearDataset):
        return ds, None
    if isinstance(ds, DetectionDataset):
        return ds.dataset, ds.transform
    return None, None


class _ReleasingDataset(DetectionDataset):
    """A DetectionDataset that forgets lazily read images after use (large sets stay small)."""

    def __getitem__(self, i):
        s = self.dataset[i]
        lazy = s.path is not None and s._image is None
        try:
            return super().__getitem__(i)
        finally:
            if lazy:
                s.release()


class _GpuImages:
    """Every training image on the GPU as uint8 (C, H, W), targets beside them.

    With ``masks`` (Mask R-CNN) each target also holds the ``(N, H, W)`` uint8 instance masks
    (an empty stack for an image without objects).
    """

    def __init__(self, ds: SmearDataset, grayscale: bool, device: torch.device, masks: bool = False):
        self.grayscale = grayscale
        self.luma = torch.tensor(LUMA, device=device).view(3, 1, 1)
        self.images, self.targets = [], []
        for s in ds.samples:
            lazy = s.path is not None and s._image is None
            self.images.append(torch.from_numpy(np.ascontiguousarray(s.image)).permute(2, 0, 1).to(device))
            keep = torch.from_numpy(~np.asarray(s.crowd, bool))  # crowd regions left out, as target_dict does
            t = {"boxes": torch.as_tensor(s.boxes, dtype=torch.float32).reshape(-1, 4)[keep].to(device),
                 "labels": (torch.as_tensor(s.labels, dtype=torch.int64)[keep] + 1).to(device)}
            if masks:
                t["masks"] = _mask_tensor(s)[keep].to(device)
            if lazy:
                s.release()
            self.targets.append(t)

    def __len__(self):
        return len(self.images)

    def batch(self, idx):
        imgs = []
        for i in idx:
            t = self.images[i].float().div_(255.0)
            if self.grayscale:
                t = (t * self.luma).sum(0, keepdim=True)
            imgs.append(t)
        return imgs, [dict(self.targets[i]) for i in idx]


def _mask_tensor(s) -> torch.Tensor:
    """``(N, H, W)`` uint8 instance masks of a sample (empty when it has no objects)."""
    if s.has_masks:
        return torch.from_numpy(np.ascontiguousarray(s.masks)).to(torch.uint8)
    return torch.zeros((0, *s.hw), dtype=torch.uint8)


def _check_masks(ds: SmearDataset, arch: str) -> None:
    """``ValueError`` unless every sample with objects has instance masks (Mask R-CNN training)."""
    missing = [s.image_id for s in ds.samples if len(s.boxes) and not s.has_masks]
    if missing:
        raise ValueError(f"{arch} is a Mask R-CNN and trains on instance masks, but {len(missing)} of the "
                         f"{len(ds)} images of dataset {ds.name!r} have objects without masks (first: "
                         f"{missing[0]!r}); use a dataset with instance masks or a box-only arch such as "
                         "'fasterrcnn_tiny'")


def _fits_on_gpu(ds: SmearDataset, device: torch.device, masks: bool = False) -> bool:
    need = sum(s.hw[0] * s.hw[1] * (3 + (len(s.boxes) if masks else 0)) for s in ds.samples)
    free, _ = torch.cuda.mem_get_info(device)
    if need > 0.25 * free:
        warnings.warn(f"data_on_gpu: the images{' and masks' if masks else ''} need {need / 2**30:.1f} GiB, "
                      "more than a quarter of the "
                      f"{free / 2**30:.1f} GiB free on {device}; loading them from the CPU instead", stacklevel=3)
        return False
    return True


def _sanitize(targets: list[dict]) -> list[dict]:
    """Keep boxes with positive width and height (torchvision refuses degenerate ones), and
    their instance masks when the targets have them."""
    out = []
    for t in targets:
        b = t["boxes"].reshape(-1, 4)
        ok = (b[:, 2] - b[:, 0] > 1e-2) & (b[:, 3] - b[:, 1] > 1e-2)
        new = {"boxes": b[ok], "labels": t["labels"].reshape(-1)[ok]}
        if "masks" in t:
            new["masks"] = t["masks"][ok]
        out.append(new)
    return out


def _device_targets(images: list, targets, device: torch.device, masks: bool) -> list[dict]:
    """Boxes and labels (and, for a mask model, ``(N, H, W)`` uint8 masks) on ``device``.

    A target without masks gets an empty stack when it has no objects; with objects it is a
    ``ValueError`` (checked up front for SmearDatasets, here for other torch datasets).
    """
    out = []
    for im, t in zip(images, targets):
        d = {"boxes": t["boxes"].to(device, non_blocking=True), "labels": t["labels"].to(device, non_blocking=True)}
        if masks:
            if "masks" in t:
                d["masks"] = t["masks"].to(device, non_blocking=True)
            elif len(d["boxes"]) == 0:
                d["masks"] = torch.zeros((0, *im.shape[-2:]), dtype=torch.uint8, device=device)
            else:
                raise ValueError("a Mask R-CNN needs target['masks'] ((N, H, W) instance masks) for every "
                                 "image with objects; the training dataset gave a target without them")
        out.append(d)
    return out


# ---------------------------------------------------------------------------------------------
# schedule, checkpoints, logs
# ---------------------------------------------------------------------------------------------
def _lr_lambda(tcfg: TrainConfig, steps_per_epoch: int, epochs: Callable[[], int] | None = None) -> Callable[[int], float]:
    """The learning-rate factor at step ``it``; the schedule spans ``epochs()`` epochs (``tcfg.epochs``,
    or the plan of a time budget, read at every step)."""
    epochs = epochs or (lambda: tcfg.epochs)

    def f(it: int) -> float:
        n = epochs()
        total = max(1, n * steps_per_epoch)
        warm = int(min(tcfg.warmup_iters, total // 4))  # a quarter of the steps at most, of the plan now
        milestones = sorted(int(e) * steps_per_epoch for e in
                            (tcfg.lr_steps if tcfg.lr_steps is not None else (round(n * 2 / 3), round(n * 8 / 9))))
        w = 1.0 if it >= warm else 0.001 + (1 - 0.001) * it / warm
        if tcfg.lr_schedule == "cosine":
            s = 0.5 * (1 + math.cos(math.pi * min(it, total) / total))
        elif tcfg.lr_schedule == "step":
            s = tcfg.lr_gamma ** sum(it >= m for m in milestones)
        else:
            s = 1.0
        return w * s
    return f


def _save_torch(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _write_metrics(out_dir: Path, records: list[dict]) -> None:
    write_text(out_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    keys: list[str] = ["epoch"] if any("epoch" in r for r in records) else []  # the first column
    for r in records:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    w.writerows(records)
    write_text(out_dir / "metrics.csv", buf.getvalue())


def _resolve_resume(resume, out_dir: Path | None) -> Path | None:
    if resume is None or resume is False:
        return None
    if resume is True:
        if out_dir is None:
            raise ValueError("resume=True needs tcfg.out_dir (where last.pt is)")
        p = out_dir / "last.pt"
        if not p.is_file():
            log.info("no checkpoint at %s: starting a new run", p)
            return None
        return p
    p = Path(resume)
    if p.is_dir():
        p = p / "last.pt"
    if not p.is_file():
        raise DataError(p, "checkpoint to resume from does not exist")
    return p


def _load_checkpoint(path: Path) -> dict:
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise DataError(path, f"cannot read checkpoint (corrupt or not a torch file): {type(e).__name__}: {e}") from e
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise DataError(path, f"not a smearlab training checkpoint (expected format {CHECKPOINT_FORMAT})")
    return ck


def _params_finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def param_digest(model: nn.Module) -> str:
    """SHA-256 of every parameter and buffer (compare weights across processes or runs).

    Parameters
    ----------
    model : the model (a DDP wrapper is unwrapped first).

    Returns
    -------
    str
        the hex digest.
    """
    h = hashlib.sha256()
    for k, v in unwrap(model).state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                 if v.numel() else b"")
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------
def train_detector(model: nn.Module, train_ds=None, val_ds=None, tcfg: TrainConfig | None = None, *,
                   evaluate_fn: Callable | None = None, resume: "bool | str | Path | None" = None,
                   progress: bool = True, until_epoch: int | None = None) -> History:
    """Train ``model`` (from :func:`build_detector`) on ``train_ds``; returns a :class:`History`.

    The call shape of every task's training, ``train_x(model, train, val, config)``; the model
    carries its :class:`DetectorConfig` (``model.detector_config``), which training completes
    with the training scale (``object_sizes``, ``train_image_size``).

    Parameters
    ----------
    model : the detector; trained in place (and left on the training device).
    train_ds, val_ds : SmearDatasets (or DetectionDatasets over them). Their classes are mapped
        onto the model's by name; a class the model lacks raises ``ValueError`` before training.
        Any other torch dataset of ``(image, target)`` pairs is used as is (labels 1-based).
    tcfg : :class:`TrainConfig`.
    evaluate_fn : ``f(val_dataset, predictions) -> {"mAP50": ..., "mAP": ...}`` (None:
        :func:`default_evaluate`, skipped with a warning when unavailable).
    resume : a checkpoint path or run folder, or True for ``tcfg.out_dir/last.pt`` (a fresh
        start when there is none yet).
    progress : tqdm progress bars.
    until_epoch : stop after this epoch (the schedule still spans ``tcfg.epochs``); resume
        later to go on. A run stopped before its last epoch writes ``last.pt`` (and, with
        validation, its ``best/`` so far) but no ``model/``, the folder of a finished run.
    """

    if isinstance(train_ds, DetectorConfig):
        raise TypeError("train_detector(model, train, val, tcfg) takes no DetectorConfig: the model carries "
                        "its own (model.detector_config)")
    tcfg = tcfg or TrainConfig()
    cfg_model = getattr(unwrap(model), "detector_config", None)
    if cfg_model is None:
        raise ValueError("train_detector needs a model from build_detector or load_model (it carries its "
                         "DetectorConfig as model.detector_config)")
    if train_ds is None:
        raise ValueError("train_detector needs a training dataset")
    names = list(cfg_model.class_names)
    grayscale = cfg_model.in_channels == 1
    masks = is_mask_model(model)

    # --- data: checked before anything else ------------------------------------------------
    train_smear, given_transform = _as_smear(train_ds)
    # the median training image size, read from the headers once: a CLAHE step's tiles are fixed
    # from it, and automatic tiling at prediction cuts fields into it
    train_hw = np.median([s.hw for s in train_smear.samples], 0) if train_smear is not None and len(train_smear) \
        else None
    # the pipeline given, else the one the model already carries (a loaded model trained further:
    # its predictions apply it, so its training images must have it too)
    pre = as_preprocess(tcfg.preprocess if tcfg.preprocess is not None
                        else getattr(unwrap(model), "preprocess_spec", None))
    if pre is not None and train_hw is not None:
        pre = pre.with_fixed_tiles(train_hw)
    pre_spec = pre.to_dict() if pre is not None else None
    if pre is not None:  # the trained model carries its pipeline, as a loaded one does
        unwrap(model).preprocess_spec = pre_spec
    if train_smear is not None:
        check_boxes(train_smear)
        if masks:
            _check_masks(train_smear, cfg_model.arch)
        if cfg_model.sensor_bits is None:  # how new images must be read
            cfg_model.sensor_bits = train_smear.sensor_bits
        train_smear = _preprocessed(remap_dataset(train_smear, names, "training"), pre)
        if cfg_model.object_sizes is None:  # the training scale, saved with the model
            cfg_model.object_sizes = object_sizes(train_smear, cfg_model)
        if cfg_model.train_image_size is None and train_hw is not None:  # what automatic tiling cuts fields into
            cfg_model.train_image_size = median_sides(s.hw for s in train_smear.samples)
    val_smear = None
    if val_ds is not None:
        val_smear, _ = _as_smear(val_ds)
        if val_smear is None:
            raise TypeError("val_ds must be a SmearDataset (or a DetectionDataset over one)")
        if len(val_smear) == 0:  # no val_* figures and best/ silently the final model otherwise
            raise ValueError(f"the validation dataset {val_smear.name!r} is empty: give images or val_ds=None")
        val_smear = _preprocessed(remap_dataset(val_smear, names, "validation"), pre)
    if val_smear is not None and evaluate_fn is None:
        try:
            from ..metrics.detection import coco_eval  # noqa: F401
            evaluate_fn = default_evaluate
        except ImportError:
            warnings.warn("smearlab.metrics.detection.coco_eval is not available: no validation mAP", stacklevel=2)
            val_smear = None

    dctx = _Dist.setup(tcfg.device)
    device = dctx.device
    augment = tcfg.augment
    # an augmenter with both paths (smearlab.augment.Augment) runs batched on the GPU and per
    # sample on the CPU, where that is faster (benchmarks/RESULTS.md, augmentation throughput)
    batch_aug = augment if (augment is not None and hasattr(augment, "batch")
                            and (device.type == "cuda" or not callable(augment))) else None
    sample_aug = augment if (augment is not None and batch_aug is None) else given_transform
    # a batched augment (colour and stain jitter among it) sees RGB: a grey model's images are
    # made grey after it, not before
    grey_after_aug = grayscale and batch_aug is not None
    luma = torch.tensor(LUMA).view(3, 1, 1)
    if augment is not None and batch_aug is None and not callable(augment):
        raise TypeError("augment must be a callable f(sample) -> sample or have a .batch(images, targets) method")
    # the augmenter's own generator (smearlab.augment.Augment): saved in last.pt, so that a resumed
    # run draws what the uninterrupted one would have
    aug_generator = getattr(batch_aug if batch_aug is not None else sample_aug, "generator", None)
    aug_generator = aug_generator if isinstance(aug_generator, torch.Generator) else None
    out_dir = Path(tcfg.out_dir) if tcfg.out_dir is not None else None
    use_amp = bool(tcfg.amp and device.type == "cuda")
    cpu_bf16 = bool(tcfg.cpu_bf16 and device.type == "cpu")
    autocast = (dict(device_type="cpu", dtype=torch.bfloat16, enabled=True) if cpu_bf16
                else dict(device_type=device.type, enabled=use_amp))
    channels_last = device.type == "cpu" if tcfg.channels_last is None else bool(tcfg.channels_last)
    net = unwrap(model)
    epoch_state: dict[str, Any] = {}  # the epoch's batches and counters (the loop's hooks share them)
    float_hooks: list = []
    try:
        _seed_all(tcfg.seed + dctx.rank)
        if aug_generator is not None:  # from its seed on every run (one config trained twice drew on where it stopped)
            base = getattr(batch_aug if batch_aug is not None else sample_aug, "seed", None)
            base = int(base) if isinstance(base, (int, np.integer)) else aug_generator.initial_seed()
            aug_generator.manual_seed(base if dctx.rank == 0 else _epoch_seed(base, 0, dctx.rank))  # each rank its own
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        net.to(device)
        ema = ema_model(net, tcfg.ema_decay) if tcfg.ema_decay is not None else None
        scored = ema.module if ema is not None else net  # what validation scores and the folders hold
        if cpu_bf16:
            float_hooks = _float32_head_outputs(net)
        if channels_last:  # back to the plain layout when training ends (finally, below)
            net.to(memory_format=torch.channels_last)

        # --- batches -----------------------------------------------------------------------
        gen = torch.Generator()
        gpu_data = None
        if tcfg.data_on_gpu and device.type == "cuda" and train_smear is not None:
            if sample_aug is not None:
                warnings.warn("data_on_gpu ignores a per-sample augment; give an object with .batch() "
                              "to augment on the GPU", stacklevel=2)
            if sample_aug is None and _fits_on_gpu(train_smear, device, masks):
                gpu_data = _GpuImages(train_smear, grayscale and not grey_after_aug, device, masks)
        if train_smear is not None:
            torch_ds = _ReleasingDataset(train_smear, grayscale=grayscale and not grey_after_aug, transform=sample_aug,
                                         with_masks=masks)
        else:
            torch_ds = train_ds
        n_items = len(torch_ds)
        if n_items == 0:
            raise ValueError("the training dataset is empty")
        if dctx.active:
            sampler = DistributedSampler(torch_ds, num_replicas=dctx.world, rank=dctx.rank, shuffle=True,
                                         seed=tcfg.seed, drop_last=False)
        else:
            sampler = RandomSampler(torch_ds, generator=gen)
        if gpu_data is not None:
            batches = BatchSampler(sampler, tcfg.batch_size, drop_last=False)
            loader = None
        else:
            loader = DataLoader(torch_ds, batch_size=tcfg.batch_size, sampler=sampler,
                                num_workers=tcfg.num_workers, collate_fn=collate_detection,
                                pin_memory=device.type == "cuda", worker_init_fn=_seed_worker, generator=gen)
        steps_per_epoch = len(loader) if loader is not None else len(batches)
        if tcfg.max_steps_per_epoch:
            steps_per_epoch = min(steps_per_epoch, int(tcfg.max_steps_per_epoch))

        # --- optimisation ------------------------------------------------------------------
        params = [p for p in net.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameter")
        if tcfg.optimizer == "sgd":
            optimizer = torch.optim.SGD(params, lr=tcfg.base_lr, momentum=tcfg.momentum,
                                        weight_decay=tcfg.weight_decay)
        else:
            optimizer = torch.optim.AdamW(params, lr=tcfg.base_lr, weight_decay=tcfg.weight_decay)
        budget = None
        if tcfg.time_budget_s is not None:
            budget = TimeBudget(tcfg.time_budget_s, steps_per_epoch, initial_epochs=tcfg.epochs, share=dctx.share,
                                window=tcfg.val_every)
        start_epoch = 0  # epochs done before this run (a resumed run: set from the checkpoint)

        def planned_epochs() -> int:  # of the whole run; a budget plans the epochs of this run
            return start_epoch + budget.planned_epochs if budget is not None else tcfg.epochs

        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, _lr_lambda(tcfg, steps_per_epoch, planned_epochs if budget else None))
        scaler = _grad_scaler(use_amp)

        history = History(best_metric=tcfg.best_metric, out_dir=out_dir)
        ck_path = _resolve_resume(resume, out_dir)
        if ck_path is not None:
            ck = _load_checkpoint(ck_path)
            saved = ck.get("model_config", {})
            if list(saved.get("class_names", names)) != names or saved.get("arch", cfg_model.arch) != cfg_model.arch:
                raise DataError(ck_path, f"checkpoint is a {saved.get('arch')} model of classes "
                                         f"{saved.get('class_names')}, not the {cfg_model.arch} model of classes {names}")
            if ck.get("steps_per_epoch") not in (None, steps_per_epoch):
                log.warning("%s: %s steps per epoch when saved, %s now: the schedule changes", ck_path,
                            ck.get("steps_per_epoch"), steps_per_epoch)
            net.load_state_dict(ck["model"])
            if ema is not None:
                if ck.get("ema") is not None:
                    ema.load_state_dict(ck["ema"])
                else:
                    log.warning("%s holds no weight average: the average starts from the resumed weights", ck_path)
                    ema.load_state_dict({**ema.state_dict(), **{f"module.{k}": v for k, v in ck["model"].items()},
                                         "n_averaged": torch.zeros_like(ema.n_averaged)})
            optimizer.load_state_dict(ck["optimizer"])
            if ck.get("scaler") and use_amp:
                scaler.load_state_dict(ck["scaler"])
            scheduler.load_state_dict(ck["scheduler"])
            h = ck.get("history", {})
            history.records = list(h.get("records", []))
            history.step_losses = list(h.get("step_losses", []))
            for r in history.records:  # the best found again, as History.load does (by the same rule)
                history.note_best(r)
            start_epoch = int(ck["epoch"])
            if budget is not None:
                if ck.get("budget") is not None:  # the seconds spent and the plan go on
                    budget.resume(ck["budget"], start_epoch)
                else:
                    log.warning("%s was written without a time budget: the budget of %.0f s starts afresh after "
                                "epoch %d", ck_path, budget.seconds, start_epoch)
            per_rank = ck.get("rng_per_rank") or []
            own = per_rank[dctx.rank] if len(per_rank) == dctx.world else ck["rng"]
            _set_rng_state(own)
            aug_state = own.get("augment", ck.get("augment_rng"))
            if aug_generator is not None and aug_state is not None:
                aug_generator.set_state(aug_state)
            if dctx.main:
                log.info("resumed from %s after epoch %d", ck_path, start_epoch)

        if dctx.active:
            train_model = DDP(net, device_ids=[device.index] if device.type == "cuda" else None)
        else:
            train_model = net

        # --- the shared loop: one step per batch, one record per epoch -------------------------
        last_good = out_dir / "last.pt" if out_dir is not None else None
        check_labels = None if train_smear is not None else len(names) + 1
        clip_params = [p for g in optimizer.param_groups for p in g["params"]]

        def kept() -> str:
            return (f"; the last good checkpoint {last_good} is kept"
                    if last_good is not None and last_good.exists() else "")

        def begin_epoch(epoch: int) -> None:  # the same batches whether the run was resumed or not
            if isinstance(sampler, DistributedSampler):
                sampler.set_epoch(epoch)
            gen.manual_seed(_epoch_seed(tcfg.seed, epoch, dctx.rank))  # DDP: the workers' seeds per rank
            train_model.train()
            epoch_state.update(t0=time.time(), images=0, steps=0, lr_start=optimizer.param_groups[0]["lr"],
                               source=iter(loader) if loader is not None else (gpu_data.batch(i) for i in batches))

        def step(i: int) -> dict[str, float]:
            epoch, k = divmod(i, steps_per_epoch)
            if budget is not None:  # the plan refitted since the scheduler set this step's rate: under the new plan
                for g, base, f in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
                    g["lr"] = base * f(scheduler.last_epoch)
            if k == 0:
                begin_epoch(epoch)
            images, targets = next(epoch_state["source"])
            images = [im.to(device, non_blocking=True) for im in images]
            targets = _device_targets(images, targets, device, masks)
            if batch_aug is not None:
                images, targets = _augment_batch(batch_aug, images, targets)
                if grey_after_aug:
                    images = [(im * luma.to(im)).sum(0, keepdim=True) for im in images]
            targets = _sanitize(targets)
            if check_labels is not None:
                for t in targets:
                    bad = (t["labels"] < 1) | (t["labels"] >= check_labels)
                    if bool(bad.any()):
                        raise ValueError(f"label {int(t['labels'][bad][0]) - 1} (0-based) is outside the model's "
                                         f"{check_labels - 1} classes")
            with torch.autocast(**autocast):
                loss_dict = train_model(images, targets)
            losses = sum(loss_dict.values())
            logged = torch.stack([losses.detach().float()] + [v.detach().float() for v in loss_dict.values()])
            if dctx.active:
                dist.all_reduce(logged)
                logged /= dctx.world
            vals = logged.tolist()
            if not all(math.isfinite(v) for v in vals):
                parts = ", ".join(f"{n}={v:.4g}" for n, v in zip(loss_dict, vals[1:]))
                raise FloatingPointError(
                    f"loss is {vals[0]} at epoch {epoch + 1}, step {k + 1} (learning rate "
                    f"{optimizer.param_groups[0]['lr']:.3g}; {parts}); training stopped" + kept()
                    + ". Lower the learning rate, raise warmup_iters or check the data.")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(losses).backward()
            if tcfg.grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(clip_params, tcfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            if ema is not None:
                ema.update_parameters(net)
            epoch_state["steps"] += 1
            epoch_state["images"] += len(images) * dctx.world
            history.step_losses.append(vals[0])
            return dict(zip(["loss", *loss_dict], vals))

        def end_epoch(rec: dict[str, Any]) -> dict[str, Any]:  # before the budget is refitted
            epoch = rec["step"] // steps_per_epoch
            epoch_state["source"] = None  # the loader's workers stop here, not at the next epoch
            out: dict[str, Any] = {"epoch": epoch, "lr": epoch_state["lr_start"],
                                   "lr_end": optimizer.param_groups[0]["lr"], "steps": epoch_state["steps"],
                                   "images": epoch_state["images"],
                                   "images_per_s": epoch_state["images"] / max(time.time() - epoch_state["t0"], 1e-9)}
            if dctx.active:  # BN running stats differ per rank after the last step: take rank 0's
                for b in net.buffers():
                    dist.broadcast(b, 0)
                if ema is not None:  # the average's too (it averages each rank's own statistics)
                    for b in ema.module.buffers():
                        dist.broadcast(b, 0)
            if not _params_finite(net):
                raise FloatingPointError(
                    f"weights became non-finite in epoch {epoch} (learning rate "
                    f"{optimizer.param_groups[0]['lr']:.3g}); training stopped" + kept()
                    + ". Lower the learning rate or raise warmup_iters.")
            is_last = epoch == planned_epochs()
            epoch_state["validated"] = val_smear is not None and (epoch % tcfg.val_every == 0 or is_last)
            if epoch_state["validated"]:
                validate(out)
            out["time_s"] = round(time.time() - epoch_state["t0"], 3)
            return out

        def validate(out: dict[str, Any]) -> None:  # val_* figures of the model as it is now, into out
            if dctx.main:
                t_val = time.time()
                preds = predict(scored, val_smear, batch_size=tcfg.batch_size, amp=use_amp,  # already preprocessed
                                score_floor=cfg_model.score_floor, tile=tcfg.val_tile, progress=False,
                                preprocess=None)
                for k, v in (evaluate_fn(val_smear, preds) or {}).items():
                    if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool):
                        out[f"val_{k}"] = float(v)
                out["val_time_s"] = round(time.time() - t_val, 3)
            dctx.barrier()

        def save_epoch(rec: dict[str, Any]) -> None:  # once the record is in the history
            epoch = rec["epoch"]
            if (budget is not None and val_smear is not None and not epoch_state.get("validated")
                    and epoch >= planned_epochs()):
                # the budget's refit after this record made it the last epoch after the record had
                # decided not to validate it (val_every > 1): validate the final model now, so it is
                # scored and can be best/ (one validation past the budget); every rank decides alike
                validate(rec)
            improved = history.note_best(rec)
            if dctx.main and out_dir is not None and improved:  # before last.pt, which records it as best
                save_model(scored, cfg_model, out_dir / "best", preprocess=pre_spec, train_config=tcfg)
            write_last = out_dir is not None and (epoch % tcfg.checkpoint_every == 0 or epoch >= planned_epochs()
                                                  or (until_epoch is not None and epoch >= until_epoch))
            if write_last:  # every rank's RNG state, after everything this epoch drew (every rank decides alike)
                rng = _rng_state()
                if aug_generator is not None:
                    rng["augment"] = aug_generator.get_state()
                per_rank = [rng]
                if dctx.active:
                    per_rank = [None] * dctx.world
                    dist.all_gather_object(per_rank, rng)
            if dctx.main and write_last:
                ck = {"format": CHECKPOINT_FORMAT, "epoch": epoch, "model": net.state_dict(),
                      "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                      "scheduler": scheduler.state_dict(), "rng": rng, "rng_per_rank": per_rank,
                      "ema": ema.state_dict() if ema is not None else None,
                      "augment_rng": aug_generator.get_state() if aug_generator is not None else None,
                      "world_size": dctx.world, "steps_per_epoch": steps_per_epoch,
                      "history": history.to_state(), "model_config": cfg_model.to_dict(),
                      "train_config": tcfg.to_dict(),
                      "budget": budget.state(start_epoch) if budget is not None else None}
                _save_torch(ck, out_dir / "last.pt")
            if dctx.main and out_dir is not None:
                _write_metrics(out_dir, history.records)
            if dctx.main:
                log.info("epoch %d/%d: %s", epoch, planned_epochs(),
                         ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.items()))
            dctx.barrier()

        step_loop(step, tcfg.epochs * steps_per_epoch, record_every=steps_per_epoch, optimizer=optimizer,
                  on_record=end_epoch, after_record=save_epoch, budget=budget,
                  start_step=start_epoch * steps_per_epoch,
                  stop_step=None if until_epoch is None else max(0, int(until_epoch)) * steps_per_epoch,
                  progress=progress and dctx.main, desc="train detector", history=history)
        if budget is not None and dctx.main:
            done = (history.records[-1]["epoch"] if history.records else start_epoch) - start_epoch
            log.info("time budget %.0f s: %d epochs in %.0f s", budget.seconds, done, budget.elapsed_s)
        if ema is not None:  # the trained model is the average (last.pt keeps the raw weights)
            net.load_state_dict(ema.module.state_dict())
        stopped_at = history.records[-1]["epoch"] if history.records else start_epoch
        if stopped_at < planned_epochs():  # until_epoch: a paused run is no model/ (last.pt resumes it)
            if dctx.main:
                log.info("stopped after epoch %d of %d: resume from %s to finish", stopped_at, planned_epochs(),
                         out_dir / "last.pt" if out_dir is not None else "a checkpoint")
        elif dctx.main and out_dir is not None:
            save_model(net, cfg_model, out_dir / "model", preprocess=pre_spec, train_config=tcfg)
            if history.best_epoch is None:  # no validation: best is the final model
                save_model(net, cfg_model, out_dir / "best", preprocess=pre_spec, train_config=tcfg)
        dctx.barrier()
        return history
    finally:
        epoch_state.clear()  # an unfinished epoch's loader workers stop, even when training failed
        if channels_last:
            net.to(memory_format=torch.contiguous_format)
        for h in float_hooks:
            h.remove()
        dctx.close()


def _to_float32(out):
    if torch.is_tensor(out):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, (list, tuple)):
        return type(out)(_to_float32(o) for o in out)
    if isinstance(out, dict):
        return {k: _to_float32(v) for k, v in out.items()}
    return out


def _float32_head_outputs(net) -> list:
    """Forward hooks that hand the detector's head outputs on in float32 under bfloat16 autocast.

    Box coding (proposals decoded from the RPN's deltas, regression targets encoded against them)
    needs float32: bfloat16 keeps 8 significant bits, so a coordinate near 600 px moves in steps
    of 4 px, a small proposal rounds to zero width and the box loss becomes NaN (seen on CBC in
    the fifth epoch). The convolutions keep their bfloat16 speed; only what the heads return is
    widened. Returns the hook handles (``handle.remove()`` undoes them).
    """
    heads = [getattr(getattr(net, "rpn", None), "head", None),
             getattr(getattr(net, "roi_heads", None), "box_predictor", None),
             getattr(getattr(net, "roi_heads", None), "mask_predictor", None),
             getattr(net, "head", None)]  # RetinaNet
    return [m.register_forward_hook(lambda _m, _i, out: _to_float32(out)) for m in heads if m is not None]


def _grad_scaler(enabled: bool):
    if hasattr(torch, "amp") and hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler("cuda", enabled=enabled)
    return torch.cuda.amp.GradScaler(enabled=enabled)  # pragma: no cover - torch < 2.3


def _augment_batch(aug, images: list, targets: list) -> tuple[list, list]:
    """Run ``aug.batch`` on a list of images: stacked when they share a size, else one by one."""
    if len({tuple(im.shape) for im in images}) == 1:
        out, targets = aug.batch(torch.stack(images), targets)
        return list(out), targets
    pairs = [aug.batch(im[None], [t]) for im, t in zip(images, targets)]
    return [im[0] for im, _ in pairs], [t[0] for _, t in pairs]


# ---------------------------------------------------------------------------------------------
# command line (torchrun-able)
# ---------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m smearlab.detection.train",
                                description="Train a smearlab detector (works under torchrun for DDP).")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--synthetic", type=int, metavar="N", help="N synthetic smears (stain A)")
    src.add_argument("--data", help="dataset: open_dataset spec ('synthetic', 'synthetic-A') or path")
    p.add_argument("--width", type=int, default=512, help="synthetic image width")
    p.add_argument("--height", type=int, default=384, help="synthetic image height")
    p.add_argument("--val-fraction", type=float, default=0.0, help="images held out for validation")
    p.add_argument("--split-by-image", action="store_true",
                   help="split validation off image by image (default: near-copies, a field shot twice, "
                        "stay on one side; finding them reads every image)")
    p.add_argument("--arch", default="fasterrcnn_mobilenet", choices=ARCHS)
    p.add_argument("--weights", help="local pretrained weights file (backbone or detector)")
    p.add_argument("--grayscale", action="store_true", help="1-channel model")
    p.add_argument("--freeze-backbone", action="store_true")
    p.add_argument("--fine-level", choices=FINE_LEVELS,
                   help="tiny models: a stride-4 level for the box head (DetectorConfig.fine_level)")
    p.add_argument("--box-loss", default=DetectorConfig.box_loss, choices=BOX_LOSSES,
                   help="the box head's regression loss (DetectorConfig.box_loss; Faster R-CNN models)")
    p.add_argument("--min-size", type=int, default=800)
    p.add_argument("--max-size", type=int, default=1333)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--time-budget-s", type=float,
                   help="fit the epochs and the schedule to this many seconds (measured on the run itself)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float)
    p.add_argument("--optimizer", default="sgd", choices=["sgd", "adamw"])
    p.add_argument("--schedule", default="cosine", choices=["cosine", "step", "constant"])
    p.add_argument("--warmup-iters", type=int, default=200)
    p.add_argument("--max-steps-per-epoch", type=int)
    p.add_argument("--ema-decay", type=float,
                   help="keep a moving average of the weights (decay per step, e.g. 0.998) and save it")
    p.add_argument("--augment", default="default", choices=["default", "none"],
                   help="training augmentation: smearlab.augment.default_augment (default) or none")
    p.add_argument("--no-amp", action="store_true")
    p.add_argument("--data-on-gpu", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--resume", action="store_true", help="go on from OUT/last.pt if it exists")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--param-digest", action="store_true", help=argparse.SUPPRESS)  # tests: per-rank weight digest
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m smearlab.detection.train``: train a detector on a dataset (or synthetic smears)
    and write the run folder ``--out``; under ``torchrun`` every rank trains (DDP).

    Parameters
    ----------
    argv : the command-line arguments (None: ``sys.argv[1:]``); ``--help`` lists them.

    Returns
    -------
    int
        0; rank 0 prints the last epoch's record as JSON.
    """

    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.synthetic is not None:
        ds = make_dataset(args.synthetic, seed=args.seed, width=args.width, height=args.height)
    else:
        ds = open_dataset(args.data, seed=args.seed)
    val = None
    if args.val_fraction > 0:
        parts = train_val_test_split(ds, val=args.val_fraction, test=0.0, seed=args.seed,
                                     groups=split_groups(ds, not args.split_by_image))  # near-copies on one side
        ds, val = parts["train"], parts["val"]
    cfg = DetectorConfig(arch=args.arch, class_names=ds.class_names, in_channels=1 if args.grayscale else 3,
                         min_size=args.min_size, max_size=args.max_size, weights_path=args.weights,
                         freeze_backbone=args.freeze_backbone, fine_level=args.fine_level,
                         box_loss=args.box_loss)
    torch.manual_seed(args.seed)  # same initial weights on every rank
    model = build_detector(cfg)
    tcfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
                       lr_schedule=args.schedule, warmup_iters=args.warmup_iters, amp=not args.no_amp,
                       seed=args.seed, num_workers=args.num_workers, device=args.device, out_dir=args.out,
                       data_on_gpu=args.data_on_gpu, max_steps_per_epoch=args.max_steps_per_epoch,
                       time_budget_s=args.time_budget_s, ema_decay=args.ema_decay,
                       augment=None if args.augment == "none" else args.augment)
    hist = train_detector(model, ds, val, tcfg, resume=True if args.resume else None,
                          progress=not args.no_progress)
    rank = int(os.environ.get("RANK", "0"))
    if args.param_digest:
        write_text(Path(args.out) / f"param_digest.rank{rank}.txt", param_digest(model) + "\n")
    if rank == 0 and hist.last is not None:
        print(json.dumps(hist.last), file=sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
