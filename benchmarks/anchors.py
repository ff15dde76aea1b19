"""Anchor coverage on CBC Training: the share of boxes some anchor matches at IoU >= 0.5 (the
best-possible recall), per class, with the tiny detector's own anchors and with anchors fitted
to the training boxes (:mod:`smearlab.detection.anchors`), at the CPU recipe's 480 px.
Writes ``results/anchors.json``.

    python benchmarks/anchors.py --data ../shared/data/cbc/Training
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import run_benchmark, save_result  # noqa: E402

from smearlab.data import load  # noqa: E402
from smearlab.detection import DetectorConfig  # noqa: E402
from smearlab.detection.anchors import anchor_report, fit_anchors  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cbc" / "Training"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--arch", default="fasterrcnn_tiny")
    ap.add_argument("--input-size", type=int, default=480)
    args = ap.parse_args(argv)
    ds = load(args.data)
    cfg = DetectorConfig(arch=args.arch, class_names=ds.class_names, min_size=args.input_size,
                         max_size=round(args.input_size * 4 / 3))
    report = anchor_report(ds, cfg, fit_anchors(ds, cfg))
    for name in report["before"]:
        print(f"{name:10s} {report['boxes'][name]:5d} boxes  before {report['before'][name]:.3f}  "
              f"after {report['after'][name]:.3f}")
    print(f"fitted sizes {report['anchor_sizes']}, aspect ratios {report['aspect_ratios']}")
    print(f"-> {save_result('anchors', {**report, 'arch': args.arch, 'input_size': args.input_size}, argv)}")
    return 0


if __name__ == "__main__":
    run_benchmark(main)
