"""Per-class AP on the IML-Malaria subset, rare parasite stages included, with tiled inference.

Usage::

    python benchmarks/detection_malaria.py --preset cpu --budget 30   # class-aware tiles, 30 min on a CPU
    python benchmarks/detection_malaria.py --preset gpu

The 40 images (1280x960) are split by image (stratified on the classes each holds). The CPU
preset trains the tiny detector on 640 px tiles at native resolution
(:func:`smearlab.data.derive.box_tiles`), the tiles holding parasites repeated so that they are
seen often (:func:`smearlab.data.derive.repeat_rare`, LVIS repeat factor sampling), for a time
budget; it validates on the validation images' tiles and predicts the test images in 640 px tiles
(20% overlap) resized as its training tiles were, merged across tile edges. The GPU preset
trains on whole images at full resolution. Writes ``benchmarks/results/detection_malaria.json``
(``per_class``: AP50, AP and the number of test objects of each class).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import run_benchmark, save_result  # noqa: E402
from smearlab.augment import default_augment  # noqa: E402
from smearlab.data.derive import box_tiles, repeat_rare  # noqa: E402
from smearlab.data.splits import detection_splits  # noqa: E402
from smearlab.detection import DetectorConfig, TrainConfig  # noqa: E402
from smearlab.experiments.detection import fit_and_evaluate  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "malaria_iml_subset"

#: (model config, training config, tile, train on tiles)
PRESETS = {
    "gpu": (dict(arch="fasterrcnn_v2", min_size=960, max_size=1280, detections_per_img=600),
            dict(epochs=60, batch_size=8, lr=0.02, warmup_iters=50, amp=True, data_on_gpu=True), 640, False),
    "cpu": (dict(arch="fasterrcnn_tiny", min_size=640, max_size=640, detections_per_img=400),
            dict(epochs=12, batch_size=2, lr=0.02, warmup_iters=50, lr_schedule="cosine"), 640, True),
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="gpu")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budget", type=float, help="minutes of training (default: the preset's epochs)")
    args = ap.parse_args(argv)
    model_kw, train_kw, tile, on_tiles = PRESETS[args.preset]
    splits = detection_splits(str(args.data), seed=args.seed, val=0.15, test=0.25)
    train, val = splits["train"], splits["val"]
    if on_tiles:
        train, val = repeat_rare(box_tiles(train, tile)), box_tiles(val, tile)
        print(f"training tiles {len(train)} (with repeats), per class {train.class_counts()}", flush=True)
    cfg = DetectorConfig(class_names=splits["train"].class_names, **model_kw)
    with tempfile.TemporaryDirectory() as tmp:
        tcfg = TrainConfig(seed=args.seed, device=args.device, out_dir=tmp, augment=default_augment(args.seed),
                           time_budget_s=None if args.budget is None else args.budget * 60, **train_kw)
        run = fit_and_evaluate("malaria", cfg, tcfg, train, splits["test"], val, tile=tile, batch_size=4,
                               tile_resize="tile" if on_tiles else "image")
    m = run.metrics
    test_objects = splits["test"].class_counts()
    result = {
        "per_class": {c: {"AP50": v["AP50"], "AP": v["AP"], "test_objects": test_objects[c]}
                      for c, v in m["per_class"].items()},
        "mAP50": m["mAP50"], "mAP": m["mAP"], "tile": tile, "arch": cfg.arch, "epochs": m["epochs"],
        "train_s": m["train_s"], "infer_images_per_s": m["infer_images_per_s"], "device": m["device"],
        "images": {k: len(v) for k, v in splits.items()}, "preset": args.preset,
        "budget_min": args.budget, "training_tiles": len(train) if on_tiles else None,
        "train_objects": splits["train"].class_counts(),
    }
    out = save_result("detection_malaria", result, argv)
    for c, v in result["per_class"].items():
        ap50 = "  n/a" if v["AP50"] is None else f"{v['AP50']:.3f}"
        print(f"{c:16s} AP50 {ap50}  ({v['test_objects']} test objects)")
    print(f"mAP50 {m['mAP50']:.3f}, mAP {m['mAP']:.3f} -> {out}")


if __name__ == "__main__":
    run_benchmark(main)
