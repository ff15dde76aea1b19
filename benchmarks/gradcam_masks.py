"""Grad-CAM cell masks on Zheng Dataset 1 against ground truth and the classical extractor.

Usage::

    python benchmarks/gradcam_masks.py --preset cpu      # 2-core CPU, about 10 minutes
    python benchmarks/gradcam_masks.py --preset gpu      # larger input and model, longer training
    python benchmarks/gradcam_masks.py --preset quick    # smoke run (a minute or two)

One run of :func:`smearlab.experiments.gradcam_masks.run_cam_experiment`: a fixed stratified split of Dataset 1 by cell
type (70 % train, 30 % test, ``--seed``), a small ResNet trained from scratch on the train crops,
Grad-CAM (predicted class) of several layers summed, thresholded relative to the maximum and
dilated with a 5x5 box. The layer set and the relative threshold are tuned on the *train* images
(separately for the whole cell and for the nucleus), and so are the parameters of the classical
extractor (:func:`smearlab.segmentation.classical.extract_cell`); the test images are used once, for the
figures. Dice and IoU are means over test images against the ground-truth whole cell (mask > 0)
and nucleus. Writes ``benchmarks/results/gradcam_masks.json``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import run_benchmark, save_result  # noqa: E402
from smearlab.experiments import gradcam_masks as cam  # noqa: E402
from smearlab.data import open_dataset  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "wbc_zheng.tar.xz"

#: Classifier and tuning settings per preset.
PRESETS = {
    "gpu": dict(size=96, width=32, epochs=80, batch_size=64, classical_grid=cam.CLASSICAL_GRID),
    "cpu": dict(size=64, width=16, epochs=25, batch_size=32, classical_grid=cam.CLASSICAL_CANDIDATES),
    "quick": dict(size=48, width=8, epochs=4, batch_size=32, classical_grid=cam.classical_candidates(5),
                  thresholds=(0.2, 0.4, 0.6)),
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA,
                    help="the Zheng tree (folder with 'Dataset 1/') or its archive wbc_zheng.tar.xz")
    ap.add_argument("--domain", default="dataset1", help="which Zheng dataset: dataset1 or dataset2")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    t0, c0 = time.perf_counter(), time.process_time()
    domains = open_dataset(str(args.data)).by_domain()
    if args.domain not in domains:
        raise SystemExit(f"{args.data}: no domain {args.domain!r}; found {sorted(domains)}")
    data = domains[args.domain]
    exp = cam.run_cam_experiment(data, seed=args.seed, device=args.device, progress=True, **PRESETS[args.preset])
    result = exp.summary()
    result.update(preset=args.preset, dataset=f"zheng {args.domain}", wall_s=round(time.perf_counter() - t0, 1),
                  cpu_s=round(time.process_time() - c0, 1),
                  load_average_at_start=load,
                  classical_tuning=[{k: v for k, v in r.items()} for r in exp.classical_tuning["table"]],
                  cam_tuning_top=sorted(exp.cam_tuning["table"], key=lambda r: -r["cell_dice"])[:5])
    print(exp.table())
    print(f"classifier accuracy {result['classifier_accuracy']:.3f}, macro F1 {result['classifier_macro_f1']:.3f}; "
          f"layers {result['layers']}, rel_threshold {result['rel_threshold']}; "
          f"classical params {result['classical_cell_params']}; {result['wall_s']} s wall, "
          f"{result['cpu_s']} s CPU (load average {load}) on {result['device']}")
    print(f"wrote {save_result('gradcam_masks', result)}")


if __name__ == "__main__":
    run_benchmark(main)
