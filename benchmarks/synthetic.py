"""Synthetic smear generation speed on one CPU core.

Usage: ``python benchmarks/synthetic.py [--n 200] [--width 512] [--height 384] [--stain A]``.
The process is pinned to one core.
Prints images per second and writes ``benchmarks/results/synthetic.json``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from _common import run_benchmark, save_result  # noqa: E402
from smearlab.data.synthetic import make_dataset  # noqa: E402


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="number of images")
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--height", type=int, default=384)
    ap.add_argument("--stain", default="A")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    make_dataset(2, seed=args.seed + 1, stain=args.stain, width=args.width, height=args.height)  # warm-up
    t0 = time.perf_counter()
    ds = make_dataset(args.n, seed=args.seed, stain=args.stain, width=args.width, height=args.height)
    dt = time.perf_counter() - t0
    result = {
        "images_per_s": round(args.n / dt, 2),
        "n_images": args.n,
        "width": args.width,
        "height": args.height,
        "stain": args.stain,
        "objects_per_image": round(ds.num_objects / max(args.n, 1), 1),
        "seconds": round(dt, 3),
        "cores": 1,
    }
    out = save_result("synthetic", result, argv)
    print(f"{result['images_per_s']:.1f} images/s ({args.n} images {args.width}x{args.height}, "
          f"stain {args.stain}, one core) -> {out}")
    return result


if __name__ == "__main__":
    run_benchmark(main)
