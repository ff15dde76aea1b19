"""The CPU recipe beside a peer, in one run: smearlab's tiny Faster R-CNN and Ultralytics YOLOv8n,
both trained from scratch on CBC Training for the same wall-clock budget, both scored on Testing
by the same pycocotools code (:func:`smearlab.detection.train.default_evaluate`).

Usage::

    pip install ultralytics            # benchmark-only; not a dependency of smearlab
    python benchmarks/detection_cbc_peer.py --budgets 5

YOLOv8n is built from ``yolov8n.yaml`` (no weights are fetched), trained with Ultralytics' own
defaults (its augmentation, SGD schedule and 640 px input) at batch 4 on the CPU, with plots and
validation during training off; ``time=`` gives it the same budget in hours, which Ultralytics
turns into a number of epochs after the first one. Its predictions (confidence floor 0.001, as
COCO scoring expects ranked detections) are scored like smearlab's. Writes
``benchmarks/results/detection_cbc_peer.json``: one row per budget with ``smearlab`` and
``yolov8n`` (``mAP50``, ``mAP``, AP50 and AP per class, ``epochs``, ``train_s``) and their ratio,
each with its date. Rows of budgets not run this time are kept from the file, with the date and
command they were measured with, so the budgets can be run in separate sessions.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from _common import RESULTS, run_benchmark, save_result  # noqa: E402
from detection_cbc import DEFAULT_DATA, run  # noqa: E402

from smearlab.data.formats import yolo  # noqa: E402
from smearlab.data.splits import detection_splits  # noqa: E402
from smearlab.detection.train import default_evaluate  # noqa: E402


def yolo_row(splits, budget_min: float, seed: int, tmp: Path) -> dict:
    """Train YOLOv8n from scratch for ``budget_min`` minutes; its scores on the test split."""
    from ultralytics import YOLO
    train = yolo.save(splits["train"], tmp / "yolo_train")
    val = yolo.save(splits["val"], tmp / "yolo_val")
    data = tmp / "cbc.yaml"
    names = list(splits["train"].class_names)
    data.write_text(f"train: {train / 'images'}\nval: {val / 'images'}\nnc: {len(names)}\nnames: {names}\n")
    model = YOLO("yolov8n.yaml")
    t0 = time.perf_counter()
    model.train(data=str(data), epochs=1000, time=budget_min / 60, imgsz=640, batch=4, device="cpu", workers=0,
                plots=False, val=False, seed=seed, project=str(tmp / "runs"), name="yolov8n", exist_ok=True,
                amp=False, pretrained=False, verbose=False)
    train_s = time.perf_counter() - t0
    epochs = int(getattr(model.trainer, "epoch", -1)) + 1 if getattr(model, "trainer", None) else None
    preds = []
    t0 = time.perf_counter()
    for s in splits["test"]:
        r = model.predict(str(s.path), conf=0.001, iou=0.7, max_det=300, imgsz=640, device="cpu", verbose=False)[0]
        b = r.boxes
        preds.append({"boxes": b.xyxy.cpu().numpy().astype(np.float32), "scores": b.conf.cpu().numpy().astype(np.float32),
                      "labels": b.cls.cpu().numpy().astype(np.int64)})
    infer_s = time.perf_counter() - t0
    coco = default_evaluate(splits["test"], preds)
    return {"mAP50": coco["mAP50"], "mAP": coco["mAP"],
            "per_class": {c: {"AP50": v["AP50"], "AP": v["AP"]} for c, v in coco["per_class"].items()},
            "epochs": epochs, "train_s": round(train_s, 1), "budget_s": budget_min * 60,
            "infer_images_per_s": round(len(preds) / infer_s, 2)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the CBC folder (Training/, Testing/)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budgets", type=float, nargs="+", default=[5, 15, 30], help="minutes of training per row")
    args = ap.parse_args(argv)
    splits = detection_splits(str(args.data), seed=args.seed, val=0.1)
    load_before = [round(v, 2) for v in os.getloadavg()]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for budget in args.budgets:
            ours = run("smearlab", "cpu", splits, "cpu", args.seed, Path(tmp), budget)
            peer = yolo_row(splits, budget, args.seed, Path(tmp) / f"yolo-{budget}")
            rows.append({"budget_min": budget, "smearlab": {k: ours[k] for k in ("mAP50", "mAP", "epochs", "train_s")}
                         | {"per_class": ours["per_class"]}, "yolov8n": peer,
                         "ratio_mAP50": round(ours["mAP50"] / peer["mAP50"], 3) if peer["mAP50"] else None,
                         "ratio_mAP": round(ours["mAP"] / peer["mAP"], 3) if peer["mAP"] else None,
                         "date": datetime.date.today().isoformat()})
            print(f"{budget:4.0f} min: smearlab mAP50 {ours['mAP50']:.3f} mAP {ours['mAP']:.3f} ({ours['epochs']} epochs) | "
                  f"YOLOv8n mAP50 {peer['mAP50']:.3f} mAP {peer['mAP']:.3f} ({peer['epochs']} epochs)", flush=True)
    previous = RESULTS / "detection_cbc_peer.json"
    if previous.is_file():  # keep the rows of the budgets not run this time
        prev = json.loads(previous.read_text(encoding="utf-8"))
        kept = [{"date": prev.get("date"), "command": prev.get("command"), **r} for r in prev.get("rows", [])
                if r["budget_min"] not in args.budgets]
        rows = sorted(kept + rows, key=lambda r: r["budget_min"])
    import ultralytics
    out = save_result("detection_cbc_peer", {"rows": rows, "ultralytics": ultralytics.__version__, "device": "cpu",
                                             "load_average_before": load_before,
                                             "load_average_after": [round(v, 2) for v in os.getloadavg()]}, argv)
    print(f"-> {out}")


if __name__ == "__main__":
    run_benchmark(main)
