"""Time `smearlab report --profile quick` on CPU: the synthetic default, or the real datasets.

Usage: python benchmarks/report_quick.py [--device cpu] [--data-root ../shared/data] [--out DIR]
Prints the wall time and writes benchmarks/results/report_quick.json (synthetic default) or
benchmarks/results/report_quick_real.json (with --data-root)
(keys: wall_s, notebooks, failed, per_notebook_s, device, data_root, hardware, date, command).
"""
import argparse
import tempfile

from _common import run_benchmark, save_result

from smearlab.report.runner import REPO_NOTEBOOKS, run_report


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--data-root", help="folder of the real datasets (default: the synthetic default)")
    ap.add_argument("--out", help="keep the run folder here (default: a temporary folder, removed)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        index = run_report("quick", device=args.device, data_root=args.data_root, out=args.out or tmp,
                           notebook_dir=REPO_NOTEBOOKS)
    wall = index["wall_s"]
    result = {
        "wall_s": round(wall, 1),
        "notebooks": len(index["ran"]),
        "failed": len(index["failed"]),
        "per_notebook_s": {k: v["seconds"] for k, v in index["notebooks"].items()},
        "device": args.device,
        "data_root": args.data_root,
    }
    if index["failed"]:
        result["errors"] = {k: index["notebooks"][k]["error"] for k in index["failed"]}
    name = "report_quick_real" if args.data_root else "report_quick"
    out = save_result(name, result, script="report_quick")
    print(f"quick report: {result['notebooks']} notebooks, {result['failed']} failed, {wall:.1f} s "
          f"({result['per_notebook_s']}) -> {out}")


if __name__ == "__main__":
    run_benchmark(main)
