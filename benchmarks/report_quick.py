"""Time the main job: `smearlab report --profile quick` on the synthetic default.

Usage: python benchmarks/report_quick.py [--device cpu]
Prints the wall time and writes benchmarks/results/report_quick.json
(keys: wall_s, notebooks, failed, per_notebook_s, device, hardware, date, command).
"""
import argparse
import tempfile
import time

from _common import save_result
from smearlab.report import REPO_NOTEBOOKS, run_report


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        index = run_report("quick", device=args.device, out=out, notebook_dir=REPO_NOTEBOOKS)
        wall = time.perf_counter() - t0
    result = {
        "wall_s": round(wall, 1),
        "notebooks": len(index["ran"]),
        "failed": len(index["failed"]),
        "per_notebook_s": {k: v["seconds"] for k, v in index["notebooks"].items()},
        "device": args.device,
    }
    out = save_result("report_quick", result)
    print(f"quick report: {result['notebooks']} notebooks, {result['failed']} failed, {wall:.1f} s "
          f"({result['per_notebook_s']}) -> {out}")


if __name__ == "__main__":
    main()
