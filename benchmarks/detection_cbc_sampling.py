"""RoI sampling of the CPU recipe's detector during training: side by side on CBC, same seed and epochs.

The tiny Faster R-CNN samples ``box_batch_size_per_image`` = 128 proposals per image for its box
head (torchvision's default is 512), a quarter of them positive at most. A CBC image holds about
twenty cells, so 128 may already cover them; this measures whether more samples change the
result. Each candidate is trained from scratch with the CPU recipe for the same number of epochs
(not a time budget: the candidates cost different amounts per step) and the same seed, then
scored on the validation split and on Testing with pycocotools. Writes
``benchmarks/results/detection_cbc_sampling.json`` (``_seed<N>`` added for another seed, which
also draws another validation split): one row per candidate (``val_mAP``,
``val_mAP50``, ``mAP``, ``mAP50``, AP per class, ``train_s``), the ratio of each to the first.

Usage::

    python benchmarks/detection_cbc_sampling.py --epochs 8 --values 128 512
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import save_result  # noqa: E402
from detection_cbc import DEFAULT_DATA, compare_candidates  # noqa: E402

from smearlab.data.splits import detection_splits  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the CBC folder (Training/, Testing/)")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--values", type=int, nargs="+", default=[128, 512], help="box_batch_size_per_image values")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    splits = detection_splits(str(args.data), seed=args.seed, val=0.1)
    load_avg = os.getloadavg()
    candidates = [({"box_batch_size_per_image": v}, {"extra": {"box_batch_size_per_image": v}}, {"epochs": args.epochs})
                  for v in args.values]
    with tempfile.TemporaryDirectory() as tmp:
        rows = compare_candidates(splits, candidates, device=args.device, seed=args.seed, out=Path(tmp))
    result = {"rows": rows, "epochs": args.epochs, "seed": args.seed, "images": {k: len(v) for k, v in splits.items()},
              "cpu_threads": os.cpu_count(), "load_average_1_5_15": [round(v, 2) for v in load_avg]}
    out = save_result("detection_cbc_sampling" + (f"_seed{args.seed}" if args.seed else ""), result, argv)
    print(f"-> {out}")


if __name__ == "__main__":
    main()
