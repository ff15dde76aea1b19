"""The CUDA paths the CPU suite cannot run: batched augmentation on the GPU (speed, and parity
with the same pipeline on the CPU), and a short detector training with mixed precision and the
images kept on the GPU (the loss must fall and stay finite), then mixed-precision prediction.

Usage::

    python benchmarks/gpu_paths.py                 # on CUDA (the device check, benchmarks/gpu_check.sh)
    python benchmarks/gpu_paths.py --device cpu    # the same steps on the CPU (a dry run of the script)
    python benchmarks/gpu_paths.py --profile /tmp/profile.txt   # where a gpu-preset training step goes

Writes ``benchmarks/results/gpu_paths.json``: ``device``, ``batched_augment_images_per_s``,
``augment_parity`` (largest pixel and box difference between the device and the CPU for the same
random parameters, and whether every box stays inside its image), ``train_smoke`` (first and last
epoch loss, finite, whether the images were kept on the device, seconds), ``predict_smoke``.
With ``--profile FILE`` it only profiles a few training steps of the gpu preset's model (the
table of where the time goes) instead.
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import run_benchmark, save_result  # noqa: E402

from smearlab.augment import default_augment  # noqa: E402
from smearlab.data.synthetic import make_dataset  # noqa: E402
from smearlab.data.torchdata import image_to_tensor  # noqa: E402
from smearlab.detection import DetectorConfig, TrainConfig, build_detector, predict, train_detector  # noqa: E402


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def augment_check(device: torch.device, n: int = 32) -> dict:
    """Batched augmentation of ``n`` synthetic 640x480 smears on ``device`` against the CPU."""
    ds = make_dataset(n, seed=0, width=640, height=480)
    imgs = torch.stack([image_to_tensor(s.image) for s in ds])
    targets = [{"boxes": torch.as_tensor(s.boxes, dtype=torch.float32), "labels": torch.as_tensor(s.labels + 1)}
               for s in ds]
    g_cpu, g_dev = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    aug = default_augment(0)
    ref_imgs, ref_t = aug.batch(imgs, targets, generator=g_cpu)
    dev_imgs = imgs.to(device)
    dev_t = [{k: v.to(device) for k, v in t.items()} for t in targets]
    out_imgs, out_t = aug.batch(dev_imgs, dev_t, generator=g_dev)  # also warms the device kernels
    sync(device)
    t0 = time.perf_counter()
    reps = 5
    for _ in range(reps):
        aug.batch(dev_imgs, dev_t)
    sync(device)
    rate = reps * n / (time.perf_counter() - t0)
    diff = (out_imgs.float().cpu() - ref_imgs.float()).abs()
    pix, pix_mean = float(diff.max()), float(diff.mean())
    same_counts = all(len(a["boxes"]) == len(b["boxes"]) for a, b in zip(out_t, ref_t))
    box = max((float((a["boxes"].cpu() - b["boxes"]).abs().max()) for a, b in zip(out_t, ref_t)
               if len(a["boxes"]) and len(a["boxes"]) == len(b["boxes"])), default=0.0)
    h, w = out_imgs.shape[-2:]  # a quarter turn swaps the sides
    hi = torch.tensor([w, h, w, h], dtype=torch.float32) + 0.01
    inside = all(bool(((t["boxes"].cpu() <= hi) & (t["boxes"].cpu() >= -0.01)).all()) for t in out_t)
    return {"batched_augment_images_per_s": round(rate, 1),
            "augment_parity": {"max_pixel_diff": round(pix, 5), "mean_pixel_diff": round(pix_mean, 7),
                               "max_box_diff_px": round(box, 4), "same_box_counts": same_counts,
                               "boxes_inside_image": inside}}


def train_check(device: torch.device, epochs: int) -> dict:
    """A few epochs of the tiny detector with AMP and the images kept on the device."""
    train = make_dataset(16, seed=1, width=512, height=384)
    cfg = DetectorConfig(class_names=train.class_names, arch="fasterrcnn_tiny", min_size=384, max_size=512)
    model = build_detector(cfg)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tcfg = TrainConfig(epochs=epochs, batch_size=8, lr=0.02, warmup_iters=2, lr_schedule="cosine", amp=True,
                           data_on_gpu=True, num_workers=0, augment=default_augment(0), device=str(device),
                           out_dir=Path(tmp) / "run", seed=0)
        t0 = time.perf_counter()
        hist = train_detector(model, train, None, tcfg, progress=False)
        sync(device)
        secs = time.perf_counter() - t0
    losses = [r["loss"] for r in hist.records]
    kept = device.type == "cuda" and not any("data_on_gpu" in str(w.message) for w in caught)
    preds = predict(model, train.samples[:4], batch_size=4, progress=False)
    return {"train_smoke": {"first_loss": round(losses[0], 4), "last_loss": round(losses[-1], 4),
                            "finite": all(math.isfinite(v) for v in losses), "fell": losses[-1] < losses[0],
                            "epochs": len(losses), "images_on_device": kept, "seconds": round(secs, 1)},
            "predict_smoke": {"images": len(preds), "boxes": int(sum(len(p["boxes"]) for p in preds))}}


def profile_training(device: torch.device, steps: int = 6, top: int = 25) -> str:
    """Where a training step of the gpu preset's model spends its time: ``steps`` steps of
    Faster R-CNN v2 (batch 16, 640 px, AMP, images on the device, batched augmentation) under
    :mod:`torch.profiler`, after a warm-up; returns the table of the ``top`` operations by self
    CPU time (the host side that launches the kernels) and by device time."""
    from torch.profiler import ProfilerActivity, profile

    batch = 16 if device.type == "cuda" else 2  # a CPU dry run: a batch that fits in its memory
    steps = steps if device.type == "cuda" else 1
    train = make_dataset(2 * batch, seed=2, width=640, height=480)
    cfg = DetectorConfig(class_names=train.class_names, arch="fasterrcnn_v2", min_size=640, max_size=854)
    model = build_detector(cfg)
    kw = dict(epochs=1, batch_size=batch, lr=0.01, warmup_iters=2, amp=True, data_on_gpu=True, num_workers=0,
              augment=default_augment(0), device=str(device))
    train_detector(model, train, None, TrainConfig(max_steps_per_epoch=2, **kw), progress=False)  # warm-up
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        t0 = time.perf_counter()
        train_detector(model, train, None, TrainConfig(max_steps_per_epoch=steps, **kw), progress=False)
        sync(device)
        secs = time.perf_counter() - t0
    ka = prof.key_averages()
    head = f"{steps} steps of batch {batch} in {secs:.2f} s ({steps * batch / secs:.1f} images/s under the profiler)\n"
    by_dev = ka.table(sort_by="self_cuda_time_total", row_limit=top) if device.type == "cuda" else ""
    return head + ka.table(sort_by="self_cpu_time_total", row_limit=top) + "\n" + by_dev


def main(argv=None) -> int:
    """Run both checks on ``--device`` and write gpu_paths.json."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--epochs", type=int, default=6, help="epochs of the training smoke test")
    ap.add_argument("--profile", type=Path, help="only profile a few training steps of the gpu preset's model "
                                                  "and write the table to this file")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here: run with --device cpu for a dry run", file=sys.stderr)
        return 2
    if args.profile:
        table = profile_training(device)
        args.profile.write_text(table)
        print(table[:4000], flush=True)
        return 0
    res = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "torch": torch.__version__}
    res.update(augment_check(device))
    print(res, flush=True)
    res.update(train_check(device, args.epochs))
    print(res, flush=True)
    save_result("gpu_paths", res)
    ok = (res["train_smoke"]["finite"] and res["augment_parity"]["boxes_inside_image"])
    return 0 if ok else 1


if __name__ == "__main__":
    run_benchmark(main)
