"""CBC Testing at other apparent magnifications, predicted with and without the scale step.

A detector resizes every input to its own size, so resizing a whole image changes nothing; a
different magnification is made the way a microscope makes it: zoom out (z < 1) by placing the
image in a larger canvas filled with its own background colour (the model then shrinks
everything), zoom in (z > 1) by a centre crop (the model enlarges it; boxes cut by the crop keep
their part inside when at least half of the box is). Each zoomed test set is scored (pycocotools
mAP50) with ``predict(scale=None)`` and ``predict(scale="auto")``
(:mod:`smearlab.detection.scale`: each image resized so that its red cells look their training
size). The model is trained here from scratch on CBC Training with the CPU recipe for
``--budget`` minutes (or read from ``--model``, a model folder). Writes ``results/scale.json``
with ``zoom``, ``mAP50_with_scale`` and ``mAP50_without_scale`` (lists in the order of ``zoom``).

    python benchmarks/scale.py --budget 15
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import run_benchmark, save_result  # noqa: E402

import numpy as np  # noqa: E402

from smearlab.augment import default_augment  # noqa: E402
from smearlab.data import Sample, SmearDataset  # noqa: E402
from smearlab.data.splits import detection_splits  # noqa: E402
from smearlab.detection import DetectorConfig, TrainConfig, load_model, predict  # noqa: E402
from smearlab.experiments.detection import fit_and_evaluate  # noqa: E402
from smearlab.metrics.detection import coco_eval  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cbc"
ZOOMS = (0.5, 0.67, 0.8, 1.0, 1.25, 1.6)


def zoomed(sample: Sample, z: float) -> Sample:
    """``sample`` as seen at ``z`` times the magnification (see the module docstring)."""
    img = sample.image
    h, w = img.shape[:2]
    if z == 1.0:
        return Sample(sample.image_id, boxes=sample.boxes, labels=sample.labels, _image=img)
    if z < 1.0:
        H, W = round(h / z), round(w / z)
        border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
        canvas = np.empty((H, W, 3), np.uint8)
        canvas[:] = np.median(border, axis=0).astype(np.uint8)
        y0, x0 = (H - h) // 2, (W - w) // 2
        canvas[y0:y0 + h, x0:x0 + w] = img
        boxes = sample.boxes + np.array([x0, y0, x0, y0], np.float32)
        return Sample(f"{sample.image_id}@{z}", boxes=boxes, labels=sample.labels, _image=canvas)
    ch, cw = round(h / z), round(w / z)
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    crop = np.ascontiguousarray(img[y0:y0 + ch, x0:x0 + cw])
    b = sample.boxes - np.array([x0, y0, x0, y0], np.float32)
    clipped = np.clip(b, 0, [cw, ch, cw, ch])
    area = lambda x: np.clip(x[:, 2] - x[:, 0], 0, None) * np.clip(x[:, 3] - x[:, 1], 0, None)  # noqa: E731
    keep = area(clipped) >= 0.5 * area(b)
    return Sample(f"{sample.image_id}@{z}", boxes=clipped[keep], labels=sample.labels[keep], _image=crop)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--budget", type=float, default=15, help="minutes of training (without --model)")
    ap.add_argument("--model", type=Path, help="a trained detector's model folder (skips training)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save", type=Path, help="keep the trained model folder here (for --model later)")
    args = ap.parse_args(argv)
    splits = detection_splits(str(args.data), seed=args.seed, val=0.1)
    test = splits["test"]
    load_avg = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            model = load_model(args.model, device="cpu")
        else:
            cfg = DetectorConfig(arch="fasterrcnn_tiny", class_names=splits["train"].class_names, min_size=480,
                                 max_size=640)
            tcfg = TrainConfig(epochs=16, batch_size=4, lr=0.02, warmup_iters=30, lr_schedule="cosine",
                               seed=args.seed, device="cpu", augment=default_augment(args.seed),
                               time_budget_s=args.budget * 60, out_dir=Path(tmp) / "model")
            run = fit_and_evaluate("scale", cfg, tcfg, splits["train"], test, splits["val"], progress=True)
            model = run.model
            if args.save:
                shutil.copytree(Path(tmp) / "model" / "final", args.save, dirs_exist_ok=True)
        with_scale, without_scale = [], []
        for z in ZOOMS:
            ds = SmearDataset([zoomed(s, z) for s in test], test.class_names, f"testing@{z}")
            a = coco_eval(ds, predict(model, ds, device="cpu", progress=False))["mAP50"]
            b = coco_eval(ds, predict(model, ds, device="cpu", progress=False, scale="auto"))["mAP50"]
            without_scale.append(round(a, 4))
            with_scale.append(round(b, 4))
            print(f"zoom {z:4.2f}: mAP50 {a:.3f} without the scale step, {b:.3f} with it", flush=True)
    one = with_scale[ZOOMS.index(1.0)]
    result = {"zoom": list(ZOOMS), "mAP50_with_scale": with_scale, "mAP50_without_scale": without_scale,
              "budget_min": None if args.model else args.budget,
              "goal_within_0.03_from_0.67_to_1.6": all(abs(v - one) <= 0.03 for z, v in zip(ZOOMS, with_scale)
                                                       if 0.67 <= z <= 1.6),
              "goal_0.90_at_0.5": with_scale[0] >= 0.90,
              "object_sizes": model.detector_config.object_sizes,
              "load_average_1_5_15": [round(v, 2) for v in load_avg]}
    print(f"-> {save_result('scale', result, argv)}")
    return 0


if __name__ == "__main__":
    run_benchmark(main)
