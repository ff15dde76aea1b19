"""Augmentation throughput of ``default_augment`` on CBC-sized (640x480) images.

Usage: ``python benchmarks/augment.py [--n 200] [--batches 20]``.
Measures (a) the numpy sample path on the CPU, one image at a time; (b) the batch path on CPU
tensors (batch 16); (c) when CUDA is available, the batch path on the GPU (batch 32, after a
warm-up, synchronised). Uses the real CBC Testing images from ``../shared/data/cbc/Testing`` when
present, synthetic 640x480 smears otherwise. The CPU figures are taken with torch's default
thread count (recorded) and again with one thread; the load average at the start is recorded too,
since other processes on the machine slow multi-threaded torch down a lot.
Prints images per second and writes ``benchmarks/results/augment.json``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from _common import run_benchmark, save_result  # noqa: E402
from smearlab.augment import default_augment  # noqa: E402

CBC = Path(os.environ.get("SMEARLAB_SHARED_DATA", HERE.parent.parent / "shared" / "data")) / "cbc" / "Testing"


def load_images():
    """(samples, source): CBC Testing when present, else synthetic smears of the same size."""
    if CBC.exists():
        from smearlab.data import load
        ds = load(CBC)
        return [s for s in ds if s.hw == (480, 640)], "CBC Testing"
    from smearlab.data.synthetic import make_dataset
    return list(make_dataset(16, seed=0, width=640, height=480)), "synthetic 640x480"


def batches(samples, size, device):
    """Endless (images uint8 (B, 3, H, W), targets) batches cycling over ``samples``."""
    i = 0
    while True:
        chunk = [samples[(i + j) % len(samples)] for j in range(size)]
        i += size
        images = torch.stack([torch.tensor(s.image).permute(2, 0, 1) for s in chunk]).to(device)
        targets = [{"boxes": torch.tensor(s.boxes, device=device), "labels": torch.tensor(s.labels, device=device)}
                   for s in chunk]
        yield images, targets


def batch_rate(aug, samples, size, n_batches, device: str) -> float:
    """Images per second of ``aug.batch`` (input transfer excluded, one warm-up batch)."""
    it = batches(samples, size, device)
    data = [next(it) for _ in range(n_batches + 1)]
    aug.batch(*data[0])
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for images, targets in data[1:]:
        aug.batch(images, targets)
    if device == "cuda":
        torch.cuda.synchronize()
    return n_batches * size / (time.perf_counter() - t0)


def sample_rate(aug, samples, n) -> float:
    """Images per second of the numpy sample path (three warm-up calls)."""
    for s in samples[:3]:
        aug(s)
    t0 = time.perf_counter()
    for i in range(n):
        aug(samples[i % len(samples)])
    return n / (time.perf_counter() - t0)


def gpu_matches_cpu(samples) -> dict:
    """Same seed on CPU and CUDA: boxes must agree and pixels nearly so (GPU checks live here)."""
    images = torch.stack([torch.from_numpy(s.image).permute(2, 0, 1) for s in samples])
    targets = [{"boxes": torch.from_numpy(s.boxes), "labels": torch.from_numpy(s.labels)} for s in samples]
    out = {}
    for device in ("cpu", "cuda"):
        imgs, tg = default_augment(0).batch(images.to(device), [{k: v.to(device) for k, v in t.items()}
                                                                for t in targets])
        out[device] = (imgs.cpu().float(), [t["boxes"].cpu() for t in tg])
    box_diff = max(float((a - b).abs().max()) if len(a) else 0.0 for a, b in zip(out["cpu"][1], out["cuda"][1]))
    result = {"max_box_diff_px": box_diff,
              "mean_pixel_diff": float((out["cpu"][0] - out["cuda"][0]).abs().mean())}
    if box_diff > 1e-2 or result["mean_pixel_diff"] > 0.5:
        raise AssertionError(f"CUDA augmentation differs from CPU: {result}")
    return result


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="images for the sample path")
    ap.add_argument("--batches", type=int, default=20, help="batches for each batch path")
    args = ap.parse_args(argv)
    load_average = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None

    samples, source = load_images()
    for s in samples:
        s.image  # noqa: B018 - read every image before timing
    aug = default_augment(0)
    threads = torch.get_num_threads()
    cpu = sample_rate(aug, samples, args.n)
    cpu_batch = batch_rate(aug, samples, 16, args.batches, "cpu")
    torch.set_num_threads(1)
    cpu1 = sample_rate(aug, samples, args.n)
    cpu1_batch = batch_rate(aug, samples, 16, args.batches, "cpu")
    torch.set_num_threads(threads)
    gpu = batch_rate(aug, samples, 32, args.batches, "cuda") if torch.cuda.is_available() else None
    parity = gpu_matches_cpu(samples[:8]) if gpu is not None else None

    result = {
        "cpu_images_per_s": round(cpu, 1),
        "cpu_batch_images_per_s": round(cpu_batch, 1),
        "gpu_images_per_s": None if gpu is None else round(gpu, 1),
        "cpu_images_per_s_1_thread": round(cpu1, 1),
        "cpu_batch_images_per_s_1_thread": round(cpu1_batch, 1),
        "gpu": torch.cuda.get_device_name(0) if gpu is not None else None,
        "gpu_vs_cpu": parity,
        "image_size": [640, 480],
        "images": source,
        "threads": threads,
        "load_average_1min": load_average,
        "cpu_batch_size": 16,
        "gpu_batch_size": 32,
        "pipeline": repr(aug),
        "n_images_sample_path": args.n,
        "torch": torch.__version__,
    }
    out = save_result("augment", result, argv)
    gpu_txt = f"{gpu:.1f} images/s on {result['gpu']} (batch 32)" if gpu is not None else "no CUDA"
    print(f"default_augment on {source} 640x480 (load average {load_average}):\n"
          f"  sample path (CPU): {cpu:.1f} images/s with {threads} threads, {cpu1:.1f} with 1\n"
          f"  batch path (CPU, batch 16): {cpu_batch:.1f} images/s with {threads} threads, {cpu1_batch:.1f} with 1\n"
          f"  batch path (GPU, batch 32): {gpu_txt}\n-> {out}")
    return result


if __name__ == "__main__":
    run_benchmark(main)
