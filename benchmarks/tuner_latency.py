"""Threshold tuner latency: re-filter + re-evaluate per slider change vs pycocotools.

Usage: ``python benchmarks/tuner_latency.py [--changes 50] [--spurious 150] [--seed 0]
[--data ../shared/data/cbc/Testing]``. The process is pinned to one core (torch to one thread).

On CBC Testing (60 images) with simulated raw predictions (~200 boxes per image at a 0.01
score floor, seeded; no trained model needed), ``ms_per_change`` is the median time of the
:class:`~smearlab.viz.widgets.ThresholdTuner` re-filter (per-class thresholds + NMS) and
re-evaluation (FastEvaluator) over random slider changes, drawing excluded. ``pycocotools_ms``
is the median time of pycocotools on the same filtered predictions: ``loadRes``, then COCOeval
``evaluate`` + ``accumulate`` + ``summarize`` with ``maxDets`` (1, 100, 1000) and the standard
four area ranges. ``coco_eval_ms`` is :func:`smearlab.metrics.detection.coco_eval` (area "all" only).
Writes ``benchmarks/results/tuner_latency.json``.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import numpy as np  # noqa: E402

from _common import run_benchmark, save_result  # noqa: E402
from smearlab.metrics import detection as E  # noqa: E402
from smearlab.data.predictions import check_predictions
from smearlab.data import load  # noqa: E402
from smearlab.detection.postprocess import RawPredictions, postprocess  # noqa: E402
from smearlab.viz.widgets import ThresholdTuner  # noqa: E402


def pycocotools_ms(dataset, preds) -> float:
    from pycocotools.cocoeval import COCOeval
    gt = E._coco_gt(dataset)
    results = E.coco_results(check_predictions(dataset, preds))
    t = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, gt.loadRes(results), "bbox")
        ev.params.maxDets = [1, 100, 1000]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return (time.perf_counter() - t) * 1000


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "cbc" / "Testing"))
    ap.add_argument("--changes", type=int, default=50)
    ap.add_argument("--spurious", type=int, default=150, help="mean spurious boxes per image")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--coco-runs", type=int, default=5)
    args = ap.parse_args(argv)

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    import torch
    torch.set_num_threads(1)

    ds = load(Path(args.data))
    raw = RawPredictions.for_dataset(
        ds, E.simulate_predictions(ds, seed=args.seed, duplicates=4, spurious=args.spurious,
                                   score_floor=0.01), score_floor=0.01)
    per_image = [len(p["scores"]) for p in raw]

    t = time.perf_counter()
    tuner = ThresholdTuner(ds, raw)
    setup_ms = (time.perf_counter() - t) * 1000
    tuner.draw_overlay = False
    rng = np.random.default_rng(args.seed)
    names = list(tuner.sliders)
    for _ in range(3):  # warm-up
        tuner.refilter()
    times = []
    for _ in range(args.changes):
        which = int(rng.integers(0, len(names) + 1))
        slider = tuner.nms if which == len(names) else tuner.sliders[names[which]]
        value = float(rng.choice(np.arange(0.3, 1.01, 0.05).round(2))) if slider is tuner.nms \
            else round(float(rng.uniform(0.05, 0.95)), 2)
        if value == slider.value:
            tuner.update()  # same value: no change event, time the same work explicitly
        else:
            slider.value = value  # the widget's own observer re-filters and re-evaluates
        times.append(tuner.last_ms)

    coco, wrapped = [], []
    for _ in range(args.coco_runs):
        th = tuner.thresholds()
        preds = postprocess(raw, th.score, th.nms_iou, th.class_agnostic, th.max_dets)
        coco.append(pycocotools_ms(ds, preds))
        t = time.perf_counter()
        E.coco_eval(ds, preds)
        wrapped.append((time.perf_counter() - t) * 1000)
        tuner.sliders[names[0]].value = round(float(rng.uniform(0.05, 0.95)), 2)

    result = {
        "ms_per_change": round(float(np.median(times)), 2),
        "ms_per_change_p90": round(float(np.percentile(times, 90)), 2),
        "pycocotools_ms": round(float(np.median(coco)), 1),
        "coco_eval_ms": round(float(np.median(wrapped)), 1),
        "tuner_setup_ms": round(setup_ms, 1),
        "images": len(ds),
        "raw_boxes": int(sum(per_image)),
        "raw_boxes_per_image": [int(min(per_image)), int(np.median(per_image)), int(max(per_image))],
        "changes": args.changes,
        "goal_ms": 30,
    }
    print(f"{len(ds)} images, {result['raw_boxes']} raw boxes (min/median/max per image "
          f"{result['raw_boxes_per_image']})")
    print(f"re-filter + re-evaluate per slider change: {result['ms_per_change']} ms median "
          f"(p90 {result['ms_per_change_p90']} ms; goal <= 30 ms)")
    print(f"pycocotools loadRes+evaluate+accumulate+summarize: {result['pycocotools_ms']} ms; "
          f"smearlab.metrics.detection.coco_eval: {result['coco_eval_ms']} ms")
    print("wrote", save_result("tuner_latency", result, argv))
    return result


if __name__ == "__main__":
    run_benchmark(main)
