"""Synthetic smear generation speed on one CPU core.

Usage: ``python benchmarks/synthetic.py [--n 200] [--width 512] [--height 384] [--stain A]``.
Prints images per second and writes ``benchmarks/results/synthetic.json``.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from smearlab.data.synthetic import make_dataset  # noqa: E402
from smearlab.io import write_json  # noqa: E402


def cpu_name() -> str:
    """CPU model string (from /proc/cpuinfo where available)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="number of images")
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--height", type=int, default=384)
    ap.add_argument("--stain", default="A")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(HERE / "results" / "synthetic.json"))
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
        "hardware": f"{cpu_name()} ({platform.machine()}, {platform.system()} {platform.release()}, "
                    f"Python {platform.python_version()})",
        "date": datetime.date.today().isoformat(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]) if argv is None
        else " ".join(["python", "benchmarks/synthetic.py", *argv]),
    }
    write_json(args.out, result)
    print(f"{result['images_per_s']:.1f} images/s ({args.n} images {args.width}x{args.height}, "
          f"stain {args.stain}, one core) -> {args.out}")
    return result


if __name__ == "__main__":
    main()
