"""Domain adaptation of the white-cell classifier: source only, DANN, mixed and oracle, both directions.

Usage: ``python benchmarks/domain_adaptation.py [--preset cpu|gpu|quick] [--zheng PATH] [--device auto]``.

Data: Zheng et al. 2018 WBC Dataset 1 (300 images, Jiangxi Tecom) and Dataset 2 (100 images,
CellaVision) as two domains (``--zheng``: the archive ``wbc_zheng.tar.xz`` or its extraction; default
``../shared/data/wbc_zheng.tar.xz``), and the synthetic white-cell crops in stains A and B
(:func:`smearlab.data.synthetic.make_wbc_crops`, 96 px). Zheng crops are square windows around each
image's whole-cell box (from the ground-truth mask, 10 % margin: the crop the cascade takes from a
detector's box), so both domains show the cell at the same scale. All crops are letterboxed to the
preset's size. Each domain is split once, stratified, 70 % train /
30 % test (split seed 0); the classes both domains share are used (Zheng: basophils are left out, one
image in Dataset 1). Every method trains the same small ResNet (GroupNorm) for the same number of steps,
once per seed: *source only*, *DANN* (target training images without labels), *mixed* (both domains
labelled) and the *oracle* (target labels). Scores: macro F1 (and precision, recall) on the target
test split, and on the source test split.

Writes ``benchmarks/results/domain_adaptation.json``: for each of ``d1_to_d2`` and ``d2_to_d1`` the
keys ``source_only_f1``, ``dann_f1``, ``mixed_f1``, ``oracle_f1``, ``dann_source_f1``,
``source_only_source_f1`` (means over seeds), the same with ``_std``, ``seeds``, ``dann_gain``,
``source_drop``, ``goal_met``, the table ``rows`` and the settings; a ``synthetic`` block with
``a_to_b`` and ``b_to_a`` alike; ``goal`` (met on Zheng / synthetic); ``device``; ``preset``;
``seconds``.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import torch  # noqa: E402

from _common import save_result  # noqa: E402
from smearlab.core.device import resolve_device  # noqa: E402
from smearlab.experiments.domain_adaptation import domain_pair, goal_check, run_directions  # noqa: E402

ARCHIVE = Path(os.environ.get("SMEARLAB_SHARED_DATA", HERE.parent.parent / "shared" / "data")) / "wbc_zheng.tar.xz"

#: Settings per preset: crop size, network width, steps, batch, seeds, synthetic crops per stain.
PRESETS = {
    "quick": {"size": 48, "width": 8, "steps": 100, "batch_size": 32, "seeds": (0, 1, 2), "n_synthetic": 100},
    "cpu": {"size": 64, "width": 16, "steps": 250, "batch_size": 32, "seeds": (0, 1, 2), "n_synthetic": 200},
    "gpu": {"size": 96, "width": 32, "steps": 1500, "batch_size": 64, "seeds": (0, 1, 2, 3, 4), "n_synthetic": 600},
}
COMMON = {"lr": 0.05, "norm": "group", "domain_weight": 1.0, "domain_hidden": 128, "domain_layers": 2,
          "test_fraction": 0.3, "split_seed": 0}
KEYS = ("source_only", "dann", "mixed", "oracle")


def direction(res) -> dict:
    """The JSON block of one direction."""
    s = res.summary()
    out = {f"{m}{suffix}": round(s[f"{m}{suffix}"], 4) for m in KEYS for suffix in
           ("_f1", "_f1_std", "_source_f1", "_source_f1_std") if f"{m}{suffix}" in s}
    out.update(goal_check(res))
    out.update({"seeds": res.seeds, "split_seed": res.split_seed, "test_fraction": res.test_fraction,
                "shared_classes": res.shared_classes, "missing_classes": res.missing_classes, "sizes": res.sizes,
                "rows": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in res.rows()],
                "confusion": res.confusion})
    return out


def pair(a, b, settings: dict, device: str) -> dict:
    """Both directions between two domains: one JSON block per direction."""
    out = {}
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the missing classes are recorded in the result
        results = run_directions(a, b, device=device, **settings)
    for key, res in results.items():
        out[key] = direction(res)
        print(f"\n{res.source} -> {res.target}  (shared classes {res.shared_classes}; "
              f"left out {sorted(res.missing_classes) or 'none'}; sizes {res.sizes})")
        print(res.markdown())
        print(f"DANN gain on target {100 * out[key]['dann_gain']:+.1f} points, source change "
              f"{-100 * out[key]['source_drop']:+.1f} points -> goal {'met' if out[key]['goal_met'] else 'NOT met'}")
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    ap.add_argument("--zheng", type=Path, default=ARCHIVE, help="wbc_zheng.tar.xz or its extracted folder")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--skip-zheng", action="store_true", help="synthetic only")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    p = PRESETS[args.preset]
    dev = resolve_device(args.device)
    settings = {"steps": p["steps"], "batch_size": p["batch_size"], "width": p["width"], "seeds": p["seeds"],
                **COMMON}
    t0 = time.perf_counter()
    result: dict = {"preset": args.preset, "device": str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev),
                    "settings": {**settings, "crop_size": p["size"], "n_synthetic_per_stain": p["n_synthetic"],
                                 "seeds": list(p["seeds"])}}
    if not args.skip_zheng:
        d1, d2 = domain_pair(args.zheng, p["size"], source="boxes", pad=0.1, domains=("dataset1", "dataset2"))
        zheng = pair(d1, d2, settings, str(dev))
        result["zheng_seconds"] = zheng.pop("seconds")
        result.update(zheng)
    a, b = domain_pair("synthetic", p["size"], n=p["n_synthetic"], seed=0)
    result["synthetic"] = pair(a, b, settings, str(dev))
    result["goal"] = {
        "zheng_met": None if args.skip_zheng else any(result[k]["goal_met"] for k in ("d1_to_d2", "d2_to_d1")),
        "synthetic_met": any(result["synthetic"][k]["goal_met"] for k in ("a_to_b", "b_to_a")),
        "rule": "DANN target macro F1 >= source only + 10 points, source macro F1 >= source only - 2 points",
    }
    result["seconds"] = round(time.perf_counter() - t0, 1)
    out = save_result("domain_adaptation", result, argv)
    print(f"\ngoal: Zheng {result['goal']['zheng_met']}, synthetic {result['goal']['synthetic_met']}; "
          f"{result['seconds']} s -> {out}")
    return result


if __name__ == "__main__":
    main()
