"""The CUDA paths the CPU suite cannot run: batched augmentation on the GPU (speed, and parity
with the same pipeline on the CPU), and a short detector training with mixed precision and the
images kept on the GPU (the loss must fall and stay finite), then mixed-precision prediction.

Usage::

    python benchmarks/gpu_paths.py                 # on CUDA (the device check, benchmarks/gpu_check.sh)
    python benchmarks/gpu_paths.py --device cpu    # the same steps on the CPU (a dry run of the script)

Writes ``benchmarks/results/gpu_paths.json``: ``device``, ``batched_augment_images_per_s``,
``augment_parity`` (largest pixel and box difference between the device and the CPU for the same
random parameters, and whether every box stays inside its image), ``train_smoke`` (first and last
epoch loss, finite, whether the images were kept on the device, seconds), ``predict_smoke``.
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

from _common import save_result  # noqa: E402

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
    pix = float((out_imgs.float().cpu() - ref_imgs.float()).abs().max())
    same_counts = all(len(a["boxes"]) == len(b["boxes"]) for a, b in zip(out_t, ref_t))
    box = max((float((a["boxes"].cpu() - b["boxes"]).abs().max()) for a, b in zip(out_t, ref_t)
               if len(a["boxes"]) and len(a["boxes"]) == len(b["boxes"])), default=0.0)
    inside = all(bool(((t["boxes"][:, 2:] <= 640.01) & (t["boxes"][:, :2] >= -0.01)).all()) for t in out_t)
    return {"batched_augment_images_per_s": round(rate, 1),
            "augment_parity": {"max_pixel_diff": round(pix, 5), "max_box_diff_px": round(box, 4),
                               "same_box_counts": same_counts, "boxes_inside_image": inside}}


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


def main(argv=None) -> int:
    """Run both checks on ``--device`` and write gpu_paths.json."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--epochs", type=int, default=6, help="epochs of the training smoke test")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here: run with --device cpu for a dry run", file=sys.stderr)
        return 2
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
    sys.exit(main())
