"""Time the full report on the real datasets and publish its summary.

Usage: python benchmarks/report_full.py --data-root ../shared/data [--device cuda] [--out DIR]

Runs `smearlab report --profile full` (all eight notebooks on CBC, Zheng WBC and the DSB2018
subset) into DIR (default reports/<date>-full), prints the wall time per notebook, writes
benchmarks/results/report_full.json (keys: wall_s, device, notebooks, failed, per_notebook_s,
hardware, date, command, run, git_commit) and copies the run's RESULTS.md to
reports/RESULTS.md, the committed summary of the latest full run. The goal is under 20 minutes
on one H100; on a 2-core CPU the full profile takes hours (use the quick profile there:
benchmarks/report_quick.py).
"""
import argparse
import datetime
import shutil
from pathlib import Path

from _common import run_benchmark, save_result

from smearlab.report.runner import REPO_NOTEBOOKS, run_report

REPO = REPO_NOTEBOOKS.parent


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", required=True, help="folder of the real datasets (e.g. ../shared/data)")
    ap.add_argument("--device", default="cuda", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--out", help="run folder (default reports/<date>-full)")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds one cell may run")
    args = ap.parse_args()
    if not Path(args.data_root, "cbc").is_dir():
        ap.error(f"--data-root {args.data_root}: no cbc/ folder there; give the folder of the real datasets")
    out = Path(args.out) if args.out else REPO / "reports" / f"{datetime.datetime.now():%Y%m%d-%H%M%S}-full"
    index = run_report("full", data_root=args.data_root, device=args.device, out=out,
                       notebook_dir=REPO_NOTEBOOKS, timeout=args.timeout)
    result = {
        "wall_s": index["wall_s"],
        "device": args.device,
        "notebooks": len(index["ran"]),
        "failed": index["failed"],
        "per_notebook_s": {k: index["notebooks"][k]["seconds"] for k in index["ran"]},
        "run": str(out),
        "git_commit": index["git_commit"],
    }
    if index["failed"]:
        result["errors"] = {k: index["notebooks"][k]["error"] for k in index["failed"]}
    path = save_result("report_full", result)
    shutil.copyfile(out / "RESULTS.md", REPO / "reports" / "RESULTS.md")
    for name, s in result["per_notebook_s"].items():
        print(f"{s:8.1f} s  {name}" + ("  FAILED" if name in index["failed"] else ""))
    print(f"full report: {result['notebooks']} notebooks, {len(index['failed'])} failed, "
          f"{result['wall_s']:.1f} s -> {path}; summary copied to reports/RESULTS.md")


if __name__ == "__main__":
    run_benchmark(main)
