"""``smearlab predict`` on CBC Testing and on large IML fields: images/s, the cost of writing the
outputs, and a resume that re-does no finished image.

Usage::

    python benchmarks/predict.py                      # trains a tiny CBC detector for --budget minutes first
    python benchmarks/predict.py --model runs/cbc/final

* ``images_per_s``: :func:`smearlab.batch.predict` over the 60 CBC ``Testing/`` images at batch 1,
  and ``images_per_s_by_batch`` for batches 1, 2, 4 and 8 (``best_batch``);
* ``write_overhead``: the share of the batch-1 run's wall time (the whole call: loading the
  model, predicting, writing every file) not spent reading images and running the detector (the
  bare :func:`smearlab.detection.predict.predict` over the same images, read the same way, model
  already loaded), i.e. loading the model and writing per-image JSON, counts, COCO and QuPath
  files;
* ``tiled_images_per_s``: the 40 IML fields (1280x960) predicted in 640 px tiles;
* ``resume``: half the images predicted, then all: how many the second run predicted again.

Writes ``benchmarks/results/predict.json``.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import run_benchmark, save_result  # noqa: E402
from smearlab import batch  # noqa: E402
from smearlab.augment import default_augment  # noqa: E402
from smearlab.data.imageio import is_image_file, read_image  # noqa: E402
from smearlab.data.splits import detection_splits  # noqa: E402
from smearlab.detection.models import DetectorConfig, load_model  # noqa: E402
from smearlab.detection.predict import predict  # noqa: E402
from smearlab.detection.train import TrainConfig  # noqa: E402
from smearlab.experiments.detection import fit_and_evaluate  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--model", type=Path, help="a trained detector's model folder (skips training)")
    ap.add_argument("--budget", type=float, default=3, help="minutes of training (without --model)")
    args = ap.parse_args(argv)
    load_avg = os.getloadavg()
    cbc_test = _images(args.data / "cbc" / "Testing")
    iml = _images(args.data / "malaria_iml_subset")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = args.model
        if folder is None:
            splits = detection_splits(str(args.data / "cbc"), val=0.1)
            cfg = DetectorConfig(arch="fasterrcnn_tiny", class_names=splits["train"].class_names, min_size=480,
                                 max_size=640)
            tcfg = TrainConfig(epochs=16, batch_size=4, lr=0.02, warmup_iters=30, lr_schedule="cosine",
                               device="cpu", augment=default_augment(0), time_budget_s=args.budget * 60,
                               out_dir=tmp / "train")
            fit_and_evaluate("predict", cfg, tcfg, splits["train"], splits["test"], splits["val"])
            folder = tmp / "train" / "final"

        # the bare detector over the same files: reading + predicting, nothing written
        model = load_model(folder, device="cpu")
        predict(model, [read_image(cbc_test[0])[0]], thresholds="model", progress=False)  # warm-up
        t0 = time.perf_counter()
        for p in cbc_test:
            predict(model, [read_image(p)[0]], thresholds="model", progress=False)
        bare_s = time.perf_counter() - t0

        by_batch = {}
        for bs in (1, 2, 4, 8):
            t0 = time.perf_counter()
            s = batch.predict(folder, cbc_test, tmp / f"out{bs}", batch_size=bs, device="cpu", progress=False)
            wall = time.perf_counter() - t0  # everything: loading the model, predicting, every file written
            by_batch[bs] = s["images"] / wall
            print(f"CBC Testing, batch {bs}: {by_batch[bs]:.2f} images/s ({wall:.1f} s)", flush=True)
            if bs == 1:
                full_s = wall
        write_overhead = max(0.0, (full_s - bare_s) / full_s)
        print(f"bare detector {bare_s:.1f} s, smearlab predict {full_s:.1f} s: write overhead "
              f"{100 * write_overhead:.1f}%", flush=True)

        half = cbc_test[: len(cbc_test) // 2]
        batch.predict(folder, half, tmp / "resume", device="cpu", progress=False)
        again = batch.predict(folder, cbc_test, tmp / "resume", device="cpu", progress=False)
        print(f"resume: {again['resumed']} already done, {again['predicted']} predicted "
              f"(of {again['images']})", flush=True)

        t0 = time.perf_counter()
        s = batch.predict(folder, iml, tmp / "iml", tile=640, device="cpu", progress=False)
        tiled = s["images"] / (time.perf_counter() - t0)
        print(f"IML fields 1280x960 in 640 px tiles: {tiled:.2f} images/s", flush=True)

    best = max(by_batch, key=by_batch.get)
    result = {"images_per_s": round(by_batch[1], 3),
              "images_per_s_by_batch": {str(k): round(v, 3) for k, v in by_batch.items()},
              "best_batch": best, "tiled_images_per_s": round(tiled, 3),
              "write_overhead": round(write_overhead, 4), "bare_detector_s": round(bare_s, 2),
              "predict_batch1_s": round(full_s, 2),
              "resume": {"first_run": len(half), "second_run_predicted": again["predicted"],
                         "second_run_resumed": again["resumed"],
                         "redone": again["predicted"] - (len(cbc_test) - len(half))},
              "images": {"cbc_testing": len(cbc_test), "iml_fields": len(iml)},
              "device": "cpu", "trained_budget_min": None if args.model else args.budget,
              "load_average_1_5_15": [round(v, 2) for v in load_avg]}
    print(f"-> {save_result('predict', result, argv)}")
    return 0


if __name__ == "__main__":
    run_benchmark(main)
