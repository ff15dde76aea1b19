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
from detection_cbc import DEFAULT_DATA, PRESETS  # noqa: E402
from detection_cbc_inference import score  # noqa: E402

from smearlab.augment import default_augment  # noqa: E402
from smearlab.data.splits import detection_splits  # noqa: E402
from smearlab.detection import DetectorConfig, TrainConfig  # noqa: E402
from smearlab.experiments.detection import fit_and_evaluate  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the CBC folder (Training/, Testing/)")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--values", type=int, nargs="+", default=[128, 512], help="box_batch_size_per_image values")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    splits = detection_splits(str(args.data), seed=args.seed, val=0.1)
    model_kw, train_kw, anchors = PRESETS["cpu"]["smearlab"]
    load_avg = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for value in args.values:
            cfg = DetectorConfig(class_names=splits["train"].class_names, extra={"box_batch_size_per_image": value},
                                 **model_kw)
            tcfg = TrainConfig(seed=args.seed, device=args.device, out_dir=Path(tmp) / str(value),
                               augment=default_augment(args.seed), **{**train_kw, "epochs": args.epochs})
            r = fit_and_evaluate(f"box_batch_{value}", cfg, tcfg, splits["train"], splits["test"], splits["val"],
                                 progress=True, anchors=anchors)
            val = score(r.model, splits["val"], args.device)
            rows.append({"box_batch_size_per_image": value, "val_mAP": val["mAP"], "val_mAP50": val["mAP50"],
                         "mAP": r.metrics["mAP"], "mAP50": r.metrics["mAP50"], "epochs": r.metrics["epochs"],
                         "per_class": {c: {"AP50": v["AP50"], "AP": v["AP"]}
                                       for c, v in r.metrics["per_class"].items()},
                         "train_s": r.metrics["train_s"]})
            print(f"box_batch_size_per_image {value}: val mAP {val['mAP']:.4f}; test mAP50 {rows[-1]['mAP50']:.3f}, "
                  f"mAP {rows[-1]['mAP']:.3f}, {rows[-1]['train_s']:.0f} s", flush=True)
    first = rows[0]
    for r in rows:
        r["ratio_to_first"] = {k: r[k] / first[k] for k in ("val_mAP", "mAP", "mAP50") if first[k]}
    result = {"rows": rows, "epochs": args.epochs, "seed": args.seed, "images": {k: len(v) for k, v in splits.items()},
              "cpu_threads": os.cpu_count(), "load_average_1_5_15": [round(v, 2) for v in load_avg]}
    out = save_result("detection_cbc_sampling" + (f"_seed{args.seed}" if args.seed else ""), result, argv)
    print(f"-> {out}")


if __name__ == "__main__":
    main()
