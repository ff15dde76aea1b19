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

from _common import save_result  # noqa: E402
from detection_cbc import DEFAULT_DATA, PRESETS  # noqa: E402
from detection_cbc_inference import score  # noqa: E402

from smearlab.augment import default_augment  # noqa: E402
from smearlab.data.splits import detection_splits  # noqa: E402
from smearlab.detection import DetectorConfig, TrainConfig  # noqa: E402
from smearlab.experiments.detection import fit_and_evaluate  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the CBC folder (Training/, Testing/)")
    ap.add_argument("--budget", type=float, default=30, help="minutes of training per candidate")
    ap.add_argument("--sizes", type=int, nargs="+", default=[480, 640], help="short sides to compare")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    splits = detection_splits(str(args.data), seed=args.seed, val=0.1)
    model_kw, train_kw, anchors = PRESETS["cpu"]["smearlab"]
    load_avg = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            kw = {**model_kw, "min_size": size, "max_size": round(size * model_kw["max_size"] / model_kw["min_size"])}
            cfg = DetectorConfig(class_names=splits["train"].class_names, **kw)
            tcfg = TrainConfig(seed=args.seed, device=args.device, out_dir=Path(tmp) / str(size),
                               augment=default_augment(args.seed), time_budget_s=args.budget * 60, **train_kw)
            r = fit_and_evaluate(f"input_{size}", cfg, tcfg, splits["train"], splits["test"], splits["val"],
                                 progress=True, anchors=anchors)
            val = score(r.model, splits["val"], args.device)
            rows.append({"min_size": size, "max_size": kw["max_size"], "val_mAP": val["mAP"],
                         "val_mAP50": val["mAP50"], "mAP": r.metrics["mAP"], "mAP50": r.metrics["mAP50"],
                         "epochs": r.metrics["epochs"], "count_accuracy": r.metrics["count_accuracy"],
                         "per_class": {c: {"AP50": v["AP50"], "AP": v["AP"]}
                                       for c, v in r.metrics["per_class"].items()},
                         "train_s": r.metrics["train_s"], "train_images_per_s": r.metrics["train_images_per_s"]})
            print(f"short side {size}: {rows[-1]['epochs']} epochs; val mAP {val['mAP']:.4f}; test mAP50 "
                  f"{rows[-1]['mAP50']:.3f}, mAP {rows[-1]['mAP']:.3f}", flush=True)
    first = rows[0]
    for r in rows:
        r["ratio_to_first"] = {k: r[k] / first[k] for k in ("val_mAP", "mAP", "mAP50") if first[k]}
    chosen = max(rows, key=lambda r: r["val_mAP"])["min_size"]
    result = {"rows": rows, "chosen_on_validation": chosen, "budget_s": args.budget * 60, "seed": args.seed,
              "images": {k: len(v) for k, v in splits.items()}, "cpu_threads": os.cpu_count(),
              "load_average_1_5_15_at_start": [round(v, 2) for v in load_avg],
              "load_average_1_5_15_at_end": [round(v, 2) for v in os.getloadavg()]}
    out = save_result("detection_cbc_input", result, argv)
    print(f"chosen on validation: {chosen} px -> {out}")


if __name__ == "__main__":
    main()
