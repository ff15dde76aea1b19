"""Test-time augmentation of the CPU recipe on CBC: one trained model scored with and without flips.

The model sees each Testing image four times (as it is, flipped left-right, upside down and
both); the boxes are mapped back and fused by weighted box fusion
(:func:`smearlab.detection.postprocess.fuse_boxes`; Solovyev et al., Image and Vision Computing
107, 2021). Training is untouched: the time budget buys the same model, and the fused boxes
cost four forward passes per image. Rows: the plain prediction, then one per fusion IoU and
score floor of the fusion (``tta_skip``). The choice is the row with the best validation mAP; Testing is reported,
not used to choose. Counting accuracy uses per-class thresholds tuned on the validation split's
predictions of the same row, as ``fit_and_evaluate`` does.

Writes ``benchmarks/results/detection_cbc_tta.json``: ``rows`` (``tta``, ``tta_iou``, ``tta_skip``,
``val_mAP``, ``val_mAP50``, ``mAP``, ``mAP50``, AP50 and AP per class, ``count_accuracy``,
``infer_images_per_s``), ``chosen_on_validation``, the ratio of each row to the plain one, and
the model's training figures when this script trained it.

Usage::

    python benchmarks/detection_cbc_tta.py --budget 30          # train the CPU recipe 30 minutes, then score
    python benchmarks/detection_cbc.py --keep models/cbc         # or keep the curve's models ...
    python benchmarks/detection_cbc_tta.py --model models/cbc/smearlab-30min   # ... and score one

A ``--model`` folder must have been trained on the same split (``detection_splits``, seed 0,
validation 0.1), as the curve's are; a folder whose ``train_config.json`` records another seed
is refused.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import run_benchmark, save_result  # noqa: E402
from detection_cbc import DEFAULT_DATA, PREDICT_BATCH, train_recipe  # noqa: E402

from smearlab.data.splits import detection_splits  # noqa: E402
from smearlab.detection import predict  # noqa: E402
from smearlab.detection.models import load_model  # noqa: E402
from smearlab.detection.postprocess import RawPredictions  # noqa: E402
from smearlab.detection.train import default_evaluate  # noqa: E402
from smearlab.detection.tune import auto_tune  # noqa: E402
from smearlab.metrics.detection import count_metrics  # noqa: E402


def score_row(model, splits, tta: bool, tta_iou: float, tta_skip: float, device: str) -> dict:
    """Validation and Testing scores of ``model`` predicting with or without test-time augmentation."""
    kw = dict(batch_size=PREDICT_BATCH["gpu" if str(device).startswith("cuda") else "cpu"], device=device,
              progress=False, tta=tta, tta_iou=tta_iou, tta_skip=tta_skip)
    val_preds = predict(model, splits["val"], **kw)
    t0 = time.perf_counter()
    test_preds = predict(model, splits["test"], **kw)
    infer_s = time.perf_counter() - t0
    val, test = default_evaluate(splits["val"], val_preds), default_evaluate(splits["test"], test_preds)
    floor = model.detector_config.score_floor
    thresholds = auto_tune(splits["val"], RawPredictions.for_dataset(splits["val"], val_preds, floor))
    counts = count_metrics(splits["test"], thresholds.apply(RawPredictions.for_dataset(splits["test"], test_preds,
                                                                                       floor)), score_threshold=0.0)
    return {"tta": tta, "tta_iou": tta_iou if tta else None, "tta_skip": tta_skip if tta else None, "val_mAP": val["mAP"], "val_mAP50": val["mAP50"],
            "mAP": test["mAP"], "mAP50": test["mAP50"],
            "per_class": {c: {"AP50": v["AP50"], "AP": v["AP"]} for c, v in test["per_class"].items()},
            "count_accuracy": float(sum(c["accuracy"] for c in counts.values()) / max(len(counts), 1)),
            "infer_images_per_s": round(len(splits["test"]) / infer_s, 2)}


def _training_seed(folder: Path) -> int | None:
    """The seed a model folder's ``train_config.json`` records (the split's seed), or None."""
    try:
        return int(json.loads((folder / "train_config.json").read_text(encoding="utf-8"))["seed"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the CBC folder (Training/, Testing/)")
    ap.add_argument("--model", type=Path, help="a model folder of the CPU recipe trained on this split")
    ap.add_argument("--budget", type=float, default=30, help="minutes of training when no --model is given")
    ap.add_argument("--ious", type=float, nargs="+", default=[0.5, 0.55, 0.6, 0.7],
                    help="fusion IoUs to compare")
    ap.add_argument("--skips", type=float, nargs="+", default=[0.0, 0.05],
                    help="scores below which a view's boxes take no part in the fusion")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default="detection_cbc_tta",
                    help="results/<name>.json (gpu_check.sh writes detection_cbc_gpu_tta)")
    args = ap.parse_args(argv)
    splits = detection_splits(str(args.data), seed=args.seed, val=0.1)
    load_avg = os.getloadavg()
    trained = None
    with tempfile.TemporaryDirectory() as tmp:
        if args.model is not None:
            trained_with = _training_seed(args.model)
            if trained_with is not None and trained_with != args.seed:
                raise SystemExit(f"{args.model} was trained with seed {trained_with}, whose validation split differs "
                                 f"from this run's (--seed {args.seed}): pass --seed {trained_with}")
            model = load_model(args.model, device=args.device)
        else:
            r = train_recipe(splits, "tta", train_over={"time_budget_s": args.budget * 60}, device=args.device,
                             seed=args.seed, out=Path(tmp))
            model = r.model
            trained = {k: r.metrics[k] for k in ("epochs", "train_s", "train_images_per_s", "mAP50", "mAP")}
        model.eval()
        rows = [score_row(model, splits, False, 0.0, 0.0, args.device)]
        rows += [score_row(model, splits, True, iou, skip, args.device) for iou in args.ious for skip in args.skips]
    for r in rows:
        r["ratio_to_plain"] = {k: r[k] / rows[0][k] for k in ("val_mAP", "mAP", "mAP50") if rows[0][k]}
        name = f"tta {r['tta_iou']}/{r['tta_skip']}" if r["tta"] else "plain"
        aps = ", ".join(f"{c} {v['AP']:.3f}" for c, v in r["per_class"].items())
        print(f"{name:13s} val mAP {r['val_mAP']:.4f} | test mAP50 {r['mAP50']:.3f} mAP {r['mAP']:.3f} "
              f"(AP {aps}) count {r['count_accuracy']:.3f} "
              f"{r['infer_images_per_s']:.1f} img/s", flush=True)
    best = max(rows, key=lambda r: r["val_mAP"])
    result = {"rows": rows,
              "chosen_on_validation": {"tta": best["tta"], "tta_iou": best["tta_iou"], "tta_skip": best["tta_skip"]},
              "model": str(args.model) if args.model else None, "trained": trained,
              "budget_s": None if args.model else args.budget * 60, "seed": args.seed,
              "images": {k: len(v) for k, v in splits.items()}, "cpu_threads": os.cpu_count(),
              "load_average_1_5_15_at_start": [round(v, 2) for v in load_avg],
              "load_average_1_5_15_at_end": [round(v, 2) for v in os.getloadavg()]}
    out = save_result(args.name, result, argv, script="detection_cbc_tta")
    print(f"chosen on validation: {result['chosen_on_validation']} -> {out}")


if __name__ == "__main__":
    run_benchmark(main)
