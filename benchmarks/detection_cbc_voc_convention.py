"""What reading CBC's VOC boxes without the 1-based shift did to the CPU recipe's figures, side by side.

Until 2026-12-07 the VOC loader took ``xmin, ymin`` as pixel edges; PASCAL VOC writes 1-based,
inclusive pixel indices, so every box lost its first column and row (training, validation and
Testing truth alike). This script trains the CPU recipe twice for the same wall-clock budget and
seed, one after the other in one sitting: once on the boxes as the loader reads them now, once on
the same boxes with ``x0, y0`` moved one pixel right and down (the earlier reading), each scored on
Testing in its own convention and in the other one. A diagnostic of a loader fix, not a recipe
choice: nothing is chosen from it. Writes ``benchmarks/results/detection_cbc_voc_convention.json``
(one row per convention: ``mAP50``, ``mAP``, AP per class, epochs; ``cross``: each model scored on
the other convention's truth; the ratio of the rows).

Usage::

    python benchmarks/detection_cbc_voc_convention.py --budget 15
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import run_benchmark, save_result  # noqa: E402
from detection_cbc import DEFAULT_DATA, score, train_recipe  # noqa: E402

from smearlab.data.sample import SmearDataset  # noqa: E402
from smearlab.data.splits import detection_splits  # noqa: E402


def earlier_reading(ds: SmearDataset) -> SmearDataset:
    """``ds`` with every box's ``x0, y0`` one pixel right and down (VOC read without the shift)."""
    shifted = []
    for s in ds:
        b = s.boxes.copy()
        b[:, :2] += 1
        shifted.append(dataclasses.replace(s, boxes=b))
    return SmearDataset(shifted, ds.class_names, f"{ds.name}:unshifted", root=ds.root, format=ds.format)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the CBC folder (Training/, Testing/)")
    ap.add_argument("--budget", type=float, default=15, help="minutes of training per convention")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    now = detection_splits(str(args.data), seed=args.seed, val=0.1)
    before = {k: earlier_reading(v) for k, v in now.items()}
    load_avg = os.getloadavg()
    rows, models = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, splits in (("one_based", now), ("unshifted", before)):
            r = train_recipe(splits, name, train_over={"time_budget_s": args.budget * 60}, device=args.device,
                             seed=args.seed, out=Path(tmp))
            models[name] = r.model
            rows.append({"convention": name, "mAP50": r.metrics["mAP50"], "mAP": r.metrics["mAP"],
                         "epochs": r.metrics["epochs"], "train_s": r.metrics["train_s"],
                         "per_class": {c: {"AP50": v["AP50"], "AP": v["AP"]}
                                       for c, v in r.metrics["per_class"].items()}})
            print(f"{name}: {rows[-1]['epochs']} epochs; Testing mAP50 {rows[-1]['mAP50']:.3f}, "
                  f"mAP {rows[-1]['mAP']:.3f}", flush=True)
        cross = {"one_based_model_on_unshifted_truth": score(models["one_based"], before["test"], args.device),
                 "unshifted_model_on_one_based_truth": score(models["unshifted"], now["test"], args.device)}
    ratio = {k: rows[0][k] / rows[1][k] for k in ("mAP50", "mAP") if rows[1][k]}
    result = {"rows": rows, "cross": cross, "ratio_one_based_to_unshifted": ratio, "budget_s": args.budget * 60,
              "seed": args.seed, "images": {k: len(v) for k, v in now.items()}, "cpu_threads": os.cpu_count(),
              "load_average_1_5_15_at_start": [round(v, 2) for v in load_avg],
              "load_average_1_5_15_at_end": [round(v, 2) for v in os.getloadavg()]}
    out = save_result("detection_cbc_voc_convention", result, argv)
    print(f"ratio one-based / unshifted: {ratio} -> {out}")


if __name__ == "__main__":
    run_benchmark(main)
