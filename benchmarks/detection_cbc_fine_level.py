"""A stride-4 level for the CPU recipe's box head (``DetectorConfig.fine_level``): side by side on CBC.

Every RoI of the tiny Faster R-CNN smaller than 224 px pools its 7x7 features from the stride-8
level, where a platelet (about 25 px) spans three cells; mAP@[.5:.95] asks for the localisation
that this blurs. The candidates: no fine level (today's recipe), ``"lateral"`` (the stride-4 stage
through a 1x1 convolution plus the upsampled stride-8 level) and ``"fpn"`` (a full pyramid level).
Each is trained from scratch with the CPU recipe and the same seed for the same minutes
(``--budget``: a candidate that costs more per step gets fewer epochs), then scored on the
validation split (the choice) and on Testing (reported) with pycocotools. Writes
``benchmarks/results/detection_cbc_fine_level.json`` (``_budget<M>`` added for another budget than
10 minutes, ``_seed<N>`` for another seed, which also draws another validation split): one row per candidate (``val_mAP``, ``val_mAP50``, ``mAP``,
``mAP50``, AP per class, ``epochs``, ``train_s``) with the ratio of each to the first.

Usage::

    python benchmarks/detection_cbc_fine_level.py --budget 10
    python benchmarks/detection_cbc_fine_level.py --budget 10 --levels none lateral
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import run_benchmark, save_result  # noqa: E402
from detection_cbc import DEFAULT_DATA, compare_candidates  # noqa: E402

from smearlab.data.splits import detection_splits  # noqa: E402
from smearlab.detection.models import FINE_LEVELS  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the CBC folder (Training/, Testing/)")
    ap.add_argument("--levels", nargs="+", choices=("none",) + FINE_LEVELS, default=["none", *FINE_LEVELS],
                    help="the candidates, the first being the reference of the ratios")
    ap.add_argument("--budget", type=float, default=10, help="minutes of training per candidate")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    splits = detection_splits(str(args.data), seed=args.seed, val=0.1)
    load_avg = os.getloadavg()
    candidates = [({"fine_level": level}, {"fine_level": None if level == "none" else level},
                   {"time_budget_s": args.budget * 60}) for level in args.levels]
    with tempfile.TemporaryDirectory() as tmp:
        rows = compare_candidates(splits, candidates, device=args.device, seed=args.seed, out=Path(tmp))
    result = {"rows": rows, "budget_s": args.budget * 60, "seed": args.seed,
              "images": {k: len(v) for k, v in splits.items()}, "cpu_threads": os.cpu_count(),
              "load_average_1_5_15_start": [round(v, 2) for v in load_avg],
              "load_average_1_5_15_end": [round(v, 2) for v in os.getloadavg()]}
    name = "detection_cbc_fine_level" + (f"_budget{args.budget:g}" if args.budget != 10 else "")
    out = save_result(name + (f"_seed{args.seed}" if args.seed else ""), result, argv, script="detection_cbc_fine_level")
    print(f"-> {out}")


if __name__ == "__main__":
    run_benchmark(main)
