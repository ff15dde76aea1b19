"""A moving average of the weights (``TrainConfig.ema_decay``) for the CPU recipe on CBC, paired
with the raw weights of the same run.

Each run trains the CPU recipe from scratch for ``--budget`` minutes with an exponential moving
average of its weights (:func:`smearlab.core.training.ema_model`); the run's ``last.pt`` keeps
the raw weights beside the average, so both are scored from one training trajectory: the
difference is the average's alone, free of the run-to-run spread of training. Each set of weights
is scored plainly and with flip test-time augmentation (``predict(tta=True)``, the fusion
defaults chosen in ``detection_cbc_tta.json``), on the validation split (the choice) and on
Testing (reported). Writes ``benchmarks/results/detection_cbc_ema.json`` (``_budget<M>`` added
for a budget other than 30 minutes, ``_seed<N>`` for another seed): ``rows`` (``decay``,
``weights`` = ``"raw"`` or ``"average"``, ``tta``, ``val_mAP``, ``val_mAP50``, ``mAP``, ``mAP50``,
AP50 and AP per class, ``count_accuracy``, ``infer_images_per_s``), ``trained`` (epochs, seconds,
steps per run), ``chosen_on_validation`` and the ratio of each row to the run's raw plain row.

Usage::

    python benchmarks/detection_cbc_ema.py --budget 30 --decays 0.998
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import run_benchmark, save_result  # noqa: E402
from detection_cbc import DEFAULT_DATA, raw_weights, train_recipe  # noqa: E402
from detection_cbc_tta import score_row  # noqa: E402

from smearlab.data.splits import detection_splits  # noqa: E402

#: the fusion settings chosen on validation in detection_cbc_tta.json (predict's defaults)
TTA_IOU, TTA_SKIP = 0.6, 0.05


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the CBC folder (Training/, Testing/)")
    ap.add_argument("--budget", type=float, default=30, help="minutes of training per run")
    ap.add_argument("--decays", type=float, nargs="+", default=[0.998], help="EMA decay per step, one run each")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    splits = detection_splits(str(args.data), seed=args.seed, val=0.1)
    load_avg = os.getloadavg()
    rows, trained = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for decay in args.decays:
            name = f"ema_{decay:g}"
            r = train_recipe(splits, name, train_over={"time_budget_s": args.budget * 60, "ema_decay": decay},
                             device=args.device, seed=args.seed, out=Path(tmp))
            steps = sum(rec.get("steps", 0) for rec in r.history.records if "epoch" in rec)
            trained[f"{decay:g}"] = {"epochs": r.metrics["epochs"], "train_s": r.metrics["train_s"], "steps": steps,
                                     "train_images_per_s": r.metrics["train_images_per_s"]}
            average = r.model.eval()
            raw = raw_weights(average, Path(tmp) / name / "last.pt")
            first = None
            for weights, model in (("raw", raw), ("average", average)):
                for tta in (False, True):
                    row = {"decay": decay, "weights": weights,
                           **score_row(model, splits, tta, TTA_IOU, TTA_SKIP, args.device)}
                    first = first or row
                    row["ratio_to_raw_plain"] = {k: row[k] / first[k] for k in ("val_mAP", "mAP", "mAP50") if first[k]}
                    rows.append(row)
                    aps = ", ".join(f"{c} {v['AP']:.3f}" for c, v in row["per_class"].items())
                    print(f"decay {decay:g} {weights:7s} {'tta' if tta else 'plain':5s} val mAP {row['val_mAP']:.4f} | "
                          f"test mAP50 {row['mAP50']:.3f} mAP {row['mAP']:.3f} (AP {aps}) "
                          f"count {row['count_accuracy']:.3f}", flush=True)
    best = max(rows, key=lambda r: r["val_mAP"])
    result = {"rows": rows, "trained": trained,
              "chosen_on_validation": {k: best[k] for k in ("decay", "weights", "tta")},
              "budget_s": args.budget * 60, "seed": args.seed, "tta_iou": TTA_IOU, "tta_skip": TTA_SKIP,
              "images": {k: len(v) for k, v in splits.items()}, "cpu_threads": os.cpu_count(),
              "load_average_1_5_15_at_start": [round(v, 2) for v in load_avg],
              "load_average_1_5_15_at_end": [round(v, 2) for v in os.getloadavg()]}
    name = "detection_cbc_ema" + (f"_budget{args.budget:g}" if args.budget != 30 else "")
    out = save_result(name + (f"_seed{args.seed}" if args.seed else ""), result, argv, script="detection_cbc_ema")
    print(f"chosen on validation: {result['chosen_on_validation']} -> {out}")


if __name__ == "__main__":
    run_benchmark(main)
