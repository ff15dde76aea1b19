"""Input scale of the CPU recipe's detector, side by side on CBC at one time budget, chosen on validation.

Platelets are about 20 px across at the CPU recipe's 480 px short side, and their localisation
(AP@[.5:.95] 0.44) is where the 30-minute row falls short. A larger input shows them larger but
costs more per step, so fewer epochs fit in the same minutes. Each candidate short side is
trained from scratch with the CPU recipe for the same wall-clock budget (``time_budget_s``) and
the same seed, one after the other in one sitting, then scored on the validation split and on
Testing with pycocotools. The choice is the candidate with the best validation mAP; Testing is
reported, not used to choose. Writes ``benchmarks/results/detection_cbc_input.json``: one row per
candidate (``min_size``, ``val_mAP``, ``val_mAP50``, ``mAP``, ``mAP50``, AP per class, epochs,
``train_s``), ``chosen_on_validation`` and the ratio of each row to the first.

Usage::

    python benchmarks/detection_cbc_input.py --budget 30 --sizes 480 640
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import run_benchmark, save_result  # noqa: E402
from detection_cbc import DEFAULT_DATA, PRESETS, compare_candidates  # noqa: E402

from smearlab.data.splits import detection_splits  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the CBC folder (Training/, Testing/)")
    ap.add_argument("--budget", type=float, default=30, help="minutes of training per candidate")
    ap.add_argument("--sizes", type=int, nargs="+", default=[480, 640], help="short sides to compare")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    splits = detection_splits(str(args.data), seed=args.seed, val=0.1)
    recipe = PRESETS["cpu"]["smearlab"][0]  # the long side keeps the recipe's ratio to the short side
    sizes = [{"min_size": s, "max_size": round(s * recipe["max_size"] / recipe["min_size"])} for s in args.sizes]
    load_avg = os.getloadavg()
    candidates = [(size, size, {"time_budget_s": args.budget * 60}) for size in sizes]
    with tempfile.TemporaryDirectory() as tmp:
        rows = compare_candidates(splits, candidates, device=args.device, seed=args.seed, out=Path(tmp))
    chosen = max(rows, key=lambda r: r["val_mAP"])["min_size"]
    result = {"rows": rows, "chosen_on_validation": chosen, "budget_s": args.budget * 60, "seed": args.seed,
              "images": {k: len(v) for k, v in splits.items()}, "cpu_threads": os.cpu_count(),
              "load_average_1_5_15_at_start": [round(v, 2) for v in load_avg],
              "load_average_1_5_15_at_end": [round(v, 2) for v in os.getloadavg()]}
    out = save_result("detection_cbc_input", result, argv)
    print(f"chosen on validation: {chosen} px -> {out}")


if __name__ == "__main__":
    run_benchmark(main)
