"""Segmentation figures of issue #5 in one file: Zheng WBC (U-Net) and DSB2018 (Mask R-CNN).

Usage::

    python benchmarks/segmentation.py --preset cpu     # this 2-core machine
    python benchmarks/segmentation.py --preset gpu     # a lent GPU
    python benchmarks/segmentation.py --merge          # combine the two parts' latest results

Runs ``segmentation_zheng.py`` (U-Net within each Zheng dataset, fixed split) and
``segmentation_dsb.py`` (Mask R-CNN and the best classical method on a fixed DSB2018 split),
each of which can also run on its own, and writes ``benchmarks/results/segmentation.json`` with
the keys the issue names (``zheng_d1_nucleus_dice``, ``zheng_d1_cell_dice``,
``zheng_d2_nucleus_dice``, ``dsb_metric``, ``dsb_mask_ap50``, ``dsb_metric_classical``,
``device``) plus both parts in full under ``zheng`` and ``dsb``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, run_benchmark, save_result  # noqa: E402
import segmentation_dsb  # noqa: E402
import segmentation_zheng  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HEADLINE_ZHENG = ("zheng_d1_nucleus_dice", "zheng_d1_cell_dice", "zheng_d2_nucleus_dice", "zheng_d2_cell_dice")
HEADLINE_DSB = ("dsb_metric", "dsb_mask_ap50", "dsb_metric_classical", "dsb_mask_ap50_classical", "dsb_metric_learned",
                "dsb_per_look")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=("quick", "cpu", "gpu"), default="cpu")
    ap.add_argument("--data-root", type=Path, default=DATA, help="folder holding wbc_zheng.tar.xz and dsb2018_subset/")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--merge", action="store_true",
                    help="do not train: combine results/segmentation_zheng.json and segmentation_dsb.json "
                         "(each written by its own script, whose command and date they keep)")
    args = ap.parse_args(argv)

    if args.merge:
        zheng, dsb = (json.loads((RESULTS / f"segmentation_{n}.json").read_text()) for n in ("zheng", "dsb"))
        args.preset = zheng.get("preset") if zheng.get("preset") == dsb.get("preset") else "mixed"
    else:
        zheng = segmentation_zheng.run(args.preset, args.data_root, args.device)
        dsb = segmentation_dsb.run(args.preset, args.data_root / "dsb2018_subset", args.device)
    result = {k: zheng.get(k) for k in HEADLINE_ZHENG}
    result.update({k: dsb.get(k) for k in HEADLINE_DSB})
    result["device"] = zheng.get("device") or dsb.get("device")
    result["preset"] = args.preset
    result["zheng"], result["dsb"] = zheng, dsb
    for k in (*HEADLINE_ZHENG, *HEADLINE_DSB):
        v = result[k]
        print(f"{k:28s} {v:.4f}" if isinstance(v, float) else f"{k:28s} {v}")
    print("wrote", save_result("segmentation", result, argv))
    return 0


if __name__ == "__main__":
    run_benchmark(main)
