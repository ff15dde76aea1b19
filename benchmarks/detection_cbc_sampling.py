"""Sampling and box settings of the CPU recipe's detector during training: side by side on CBC.

The tiny Faster R-CNN samples ``box_batch_size_per_image`` = 128 proposals per image for its box
head (torchvision's default is 512), a quarter of them positive at most. A CBC image holds about
twenty cells, so 128 may already cover them; this measures whether more samples change the
result. Any other keyword of torchvision's detector can be compared the same way
(``--setting``, values as JSON), e.g. ``bbox_reg_weights``, the box head's regression target
scale (torchvision's (10, 10, 5, 5); larger weights stress small localisation errors). A field of
smearlab's ``DetectorConfig`` is passed as such (e.g. ``box_loss``: torchvision's smooth-L1 or an
IoU-family loss on the decoded boxes).
Each candidate is trained from scratch with the CPU recipe and the same seed, for the same number
of epochs (``--epochs``) or the same minutes (``--budget``: candidates that cost more per step
get fewer epochs), then scored on the validation split and on Testing with pycocotools. Writes
``benchmarks/results/detection_cbc_sampling.json`` (``detection_cbc_<setting>.json`` for another
setting; ``_seed<N>`` added for another seed, which also draws another validation split): one row
per candidate (``val_mAP``, ``val_mAP50``, ``mAP``, ``mAP50``, AP per class, ``train_s``), the
ratio of each to the first.

Usage::

    python benchmarks/detection_cbc_sampling.py --epochs 8 --values 128 512
    python benchmarks/detection_cbc_sampling.py --budget 15 --setting bbox_reg_weights \
        --values "[10, 10, 5, 5]" "[20, 20, 10, 10]"
    python benchmarks/detection_cbc_sampling.py --budget 15 --setting box_loss \
        --values '"smooth_l1"' '"giou"' '"ciou"'
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import run_benchmark, save_result  # noqa: E402
from detection_cbc import DEFAULT_DATA, compare_candidates  # noqa: E402

from smearlab.data.splits import detection_splits  # noqa: E402
from smearlab.detection.models import DetectorConfig  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the CBC folder (Training/, Testing/)")
    ap.add_argument("--setting", default="box_batch_size_per_image",
                    help="a keyword of torchvision's detector or a field of smearlab's DetectorConfig")
    ap.add_argument("--values", type=json.loads, nargs="+", default=[128, 512], help="the setting's values (JSON)")
    length = ap.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=int, default=8, help="epochs per candidate")
    length.add_argument("--budget", type=float, help="minutes per candidate instead of a number of epochs")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    splits = detection_splits(str(args.data), seed=args.seed, val=0.1)
    load_avg = os.getloadavg()
    length = {"epochs": args.epochs} if args.budget is None else {"time_budget_s": args.budget * 60}
    own = args.setting in {f.name for f in dataclasses.fields(DetectorConfig)}
    candidates = [({args.setting: v}, {args.setting: v} if own else {"extra": {args.setting: v}}, length)
                  for v in args.values]
    with tempfile.TemporaryDirectory() as tmp:
        rows = compare_candidates(splits, candidates, device=args.device, seed=args.seed, out=Path(tmp))
    result = {"rows": rows, "setting": args.setting, "epochs": None if args.budget else args.epochs,
              "budget_s": None if args.budget is None else args.budget * 60, "seed": args.seed,
              "images": {k: len(v) for k, v in splits.items()}, "cpu_threads": os.cpu_count(),
              "load_average_1_5_15": [round(v, 2) for v in load_avg]}
    name = "detection_cbc_sampling" if args.setting == "box_batch_size_per_image" else f"detection_cbc_{args.setting}"
    name += f"_budget{args.budget:g}" if args.budget is not None else ""  # equal-time runs beside the equal-epoch ones
    out = save_result(name + (f"_seed{args.seed}" if args.seed else ""), result, argv, script="detection_cbc_sampling")
    print(f"-> {out}")


if __name__ == "__main__":
    run_benchmark(main)
