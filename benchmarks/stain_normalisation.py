"""Stain normalisation on Zheng WBC: how close dataset 2 colours come to dataset 1.

Usage: ``python benchmarks/stain_normalisation.py [--zheng DIR] [--n-ref 50]``.
Without ``--zheng`` the archive ``../shared/data/wbc_zheng.tar.xz`` is extracted to a temporary
folder. Each normaliser is fitted on the first ``--n-ref`` dataset-1 images; every dataset-2
image is transformed and ``stain_distance(D1, D2)`` compared before and after.
Prints the figures and writes ``benchmarks/results/stain_normalisation.json`` (keys:
``zheng_d2_to_d1`` {none, reinhard, macenko, macenko_no_conc_match, macenko_io240}: stain_distance dicts;
``ms_per_image``: CPU transform time per dataset-2 image; ``n_ref``, ``n_d1``, ``n_d2``).
"""
from __future__ import annotations

import argparse
import os
import sys
import tarfile
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from _common import run_benchmark, save_result  # noqa: E402
from smearlab.data.formats import zheng  # noqa: E402
from smearlab.preprocess import MacenkoNormalizer, ReinhardNormalizer, stain_distance  # noqa: E402

ARCHIVE = Path(os.environ.get("SMEARLAB_SHARED_DATA", HERE.parent.parent / "shared" / "data")) \
    / "wbc_zheng.tar.xz"
NORMALISERS = {
    "reinhard": ReinhardNormalizer,
    "macenko": MacenkoNormalizer,
    "macenko_no_conc_match": lambda: MacenkoNormalizer(match_concentrations="none"),
    "macenko_io240": lambda: MacenkoNormalizer(io=240),  # the paper's fixed white Io
}


def run(root: Path, n_ref: int) -> dict:
    d1 = [s.image for s in zheng.load(root, datasets=(1,))]
    d2 = [s.image for s in zheng.load(root, datasets=(2,))]
    dist = {"none": stain_distance(d1, d2)}
    ms = {}
    for name, make in NORMALISERS.items():
        norm = make().fit(d1[:n_ref])
        t0 = time.perf_counter()
        out = [norm.transform(im) for im in d2]
        ms[name] = round((time.perf_counter() - t0) / len(d2) * 1e3, 2)
        dist[name] = stain_distance(d1, out)
    dist = {k: {m: round(x, 3) if isinstance(x, float) else x for m, x in v.items()}
            for k, v in dist.items()}
    return {"zheng_d2_to_d1": dist, "ms_per_image": ms, "n_ref": min(n_ref, len(d1)),
            "n_d1": len(d1), "n_d2": len(d2), "image_size_d2": list(d2[0].shape[:2])}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zheng", type=Path, help="extracted Zheng tree (default: extract the archive)")
    ap.add_argument("--n-ref", type=int, default=50, help="dataset-1 reference images")
    args = ap.parse_args(argv)
    if args.zheng is not None:
        result = run(args.zheng, args.n_ref)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            with tarfile.open(ARCHIVE) as tf:
                tf.extractall(tmp, filter="data")
            result = run(Path(tmp), args.n_ref)
    out = save_result("stain_normalisation", result, argv)
    none = result["zheng_d2_to_d1"]["none"]
    for name, v in result["zheng_d2_to_d1"].items():
        red = 100 * (1 - v["lab_mean_delta_e"] / none["lab_mean_delta_e"])
        print(f"{name:22s} dE76 {v['lab_mean_delta_e']:6.2f} ({red:+5.1f} % vs none)  "
              f"EMD {v['hist_emd']:6.2f}  {result['ms_per_image'].get(name, 0):6.1f} ms/img")
    print(f"-> {out}")
    return result


if __name__ == "__main__":
    run_benchmark(main)
