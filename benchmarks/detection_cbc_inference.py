"""Proposal and NMS settings of the CPU recipe's detector, chosen on CBC validation, scored on Testing.

Dense smears hold overlapping cells of one class (red cells in clumps), which per-class NMS at
IoU 0.5 and a short proposal list can suppress. These settings change inference only, not the
weights: one detector is trained (the CPU recipe of ``detection_cbc.py`` for ``--budget``
minutes), then rebuilt with each candidate of the grid (``box_nms_thresh``: NMS IoU of the final
boxes; ``rpn_post_nms_top_n_test``: proposals kept per image) around its weights. The candidate
with the best validation mAP@[.5:.95] (the model's own settings first, so that a tie keeps them) is
compared with those settings on Testing, side by side on the same weights. Writes ``benchmarks/results/detection_cbc_inference.json``:
``default`` and ``chosen`` (settings, val and test mAP50 / mAP, AP50 and AP per class),
``val_table`` (every candidate's validation scores), ``gain_mAP`` / ``gain_mAP50`` on Testing.

Usage::

    python benchmarks/detection_cbc_inference.py                 # train 15 min, then the sweep
    python benchmarks/detection_cbc_inference.py --model runs/cbc/final   # sweep a saved detector
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import run_benchmark, save_result  # noqa: E402
from detection_cbc import DEFAULT_DATA, run as train_row, score  # noqa: E402

from smearlab.core.search import grid_points, grid_search  # noqa: E402
from smearlab.data.splits import detection_splits  # noqa: E402
from smearlab.detection import build_detector, load_model  # noqa: E402

#: The candidates (torchvision keyword arguments of the detector).
GRID = {"box_nms_thresh": (0.4, 0.5, 0.6, 0.7), "rpn_post_nms_top_n_test": (300, 1000)}


def rebuilt(model, settings: dict):
    """The same weights in a detector built with ``settings`` added to its config's ``extra``."""
    cfg = dataclasses.replace(model.detector_config, extra={**model.detector_config.extra, **settings})
    if "rpn_post_nms_top_n_test" in settings:  # the proposals NMS keeps cannot outnumber those it sees
        cfg.extra["rpn_pre_nms_top_n_test"] = max(model.rpn._pre_nms_top_n["testing"],
                                                  int(settings["rpn_post_nms_top_n_test"]))
    new = build_detector(cfg)
    new.load_state_dict(model.state_dict())
    new.preprocess_spec = getattr(model, "preprocess_spec", None)
    return new.eval()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the CBC folder (Training/, Testing/)")
    ap.add_argument("--model", type=Path, help="a saved detector folder (default: train the CPU recipe)")
    ap.add_argument("--budget", type=float, default=15, help="minutes of training when no --model is given")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    splits = detection_splits(str(args.data), seed=args.seed, val=0.1)
    load_avg = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        trained = None
        if args.model is None:
            trained = train_row("smearlab", "cpu", splits, args.device, args.seed, Path(tmp), args.budget)
            print(f"trained {args.budget:.0f} min: test mAP50 {trained['mAP50']:.3f}, mAP {trained['mAP']:.3f}, "
                  f"{trained['epochs']} epochs", flush=True)
            folder = Path(tmp) / f"smearlab-{args.budget}" / "final"
        else:
            folder = args.model
        model = load_model(folder, device=args.device)
        base = {k: v for k, v in model.detector_config.extra.items()}
        t0 = time.perf_counter()

        def evaluate(settings: dict) -> dict:
            s = score(rebuilt(model, settings), splits["val"], args.device)
            print(f"  {settings}: val mAP50 {s['mAP50']:.4f}, mAP {s['mAP']:.4f}", flush=True)
            return {"mAP": s["mAP"], "mAP50": s["mAP50"]}

        # the model's own settings, tried first so that a tie keeps them
        default = {"box_nms_thresh": float(model.roi_heads.nms_thresh),
                   "rpn_post_nms_top_n_test": int(model.rpn._post_nms_top_n["testing"])}
        candidates = [default] + [c for c in grid_points(GRID) if c != default]
        found = grid_search(candidates, evaluate, key="mAP")
        chosen = found.params
        rows = {}
        for name, settings in (("default", default), ("chosen", chosen)):
            rows[name] = {"settings": settings, "val": next(r for r in found.table if r["params"] == settings),
                          "test": score(rebuilt(model, settings), splits["test"], args.device)}
        sweep_s = time.perf_counter() - t0
    d, c = rows["default"]["test"], rows["chosen"]["test"]
    result = {"default": rows["default"], "chosen": rows["chosen"], "val_table": found.table,
              "gain_mAP": c["mAP"] - d["mAP"], "gain_mAP50": c["mAP50"] - d["mAP50"],
              "trained": trained, "model": str(args.model) if args.model else None, "config_extra": base,
              "sweep_s": round(sweep_s, 1), "images": {k: len(v) for k, v in splits.items()},
              "cpu_threads": os.cpu_count(), "load_average_1_5_15": [round(v, 2) for v in load_avg]}
    out = save_result("detection_cbc_inference", result, argv)
    print(f"chosen on validation: {chosen}")
    for name in ("default", "chosen"):
        t = rows[name]["test"]
        print(f"{name:8s} test mAP50 {t['mAP50']:.3f}, mAP {t['mAP']:.3f}; AP per class "
              + ", ".join(f"{k} {v['AP']:.3f}" for k, v in t["per_class"].items()))
    print(f"-> {out}")


if __name__ == "__main__":
    run_benchmark(main)
