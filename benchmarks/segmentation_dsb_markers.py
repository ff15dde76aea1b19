"""DSB2018 subset: the learned segmenter's watershed markers inside or outside the foreground, paired.

Usage::

    python benchmarks/segmentation_dsb_markers.py            # about 25 minutes on this 2-core machine
    python benchmarks/segmentation_dsb_markers.py --minutes 5 --seed 1

Until 2026-12-07 the learned segmenter (:func:`smearlab.segmentation.instances.probabilities_to_instances`)
took its watershed markers from every pixel whose interior probability reached ``marker``; with
``marker`` below ``foreground`` (settings the tuning grid holds and chose) a faint ridge outside
the foreground could join two objects into one marker, hence one instance. The markers now lie
inside the foreground. This script measures what that changes on the figures recorded before:
one model, trained as ``segmentation_dsb.py`` trains the learned segmenter (the "boundary"
variant, on the same 16 fit / 4 validation images of the fixed 20 / 10 split, for ``--minutes``),
its probabilities computed once per flip-average choice, and both post-processings each tuned on
the validation images (:data:`~smearlab.segmentation.instances.THRESHOLD_GRID`) and scored on the
test images: DSB metric overall and per look, and the instances whose mask falls apart into
separate pieces. The earlier rule is reproduced below (``_instances_before``), for this
comparison only.

Writes ``benchmarks/results/segmentation_dsb_markers.json`` (``--out`` for another name).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import run_benchmark, save_result  # noqa: E402
from segmentation_dsb import (DEFAULT_DATA, SEED, _per_group, fixed_split, per_image, train_learned,  # noqa: E402
                              validation_split)
from smearlab.core.device import resolve_device  # noqa: E402
from smearlab.core.search import grid_search  # noqa: E402
from smearlab.data import load  # noqa: E402
from smearlab.metrics.instances import dsb_score  # noqa: E402
from smearlab.segmentation.instances import (THRESHOLD_GRID, InstanceThresholds, predict_probabilities,  # noqa: E402
                                             probabilities_to_instances, seeded_watershed)
from smearlab.data.predictions import empty_prediction  # noqa: E402


def _instances_before(probs: np.ndarray, th: InstanceThresholds) -> dict:
    """The post-processing as it was before 2026-12-07: markers not restricted to the foreground."""
    interior = probs[1]
    fg = (probs[1] + probs[2]) >= th.foreground
    if not fg.any():
        return empty_prediction(fg.shape)
    return seeded_watershed(interior, fg, ndi.label(interior >= th.marker)[0], th.min_size)


RULES = {"before": _instances_before, "after": probabilities_to_instances}


def _pieces(preds) -> int:
    """Instances whose mask is more than one connected piece."""
    return int(sum(ndi.label(m)[1] > 1 for p in preds for m in p["masks"]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the dsb2018_subset folder")
    ap.add_argument("--minutes", type=float, default=20, help="training budget (the benchmark's 20)")
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default="segmentation_dsb_markers", help="name of the results JSON")
    args = ap.parse_args(argv)
    ds = load(args.data)
    train_idx, test_idx = fixed_split(ds, SEED)  # the benchmark's split (its seed, not the training seed)
    train, test = ds.subset(train_idx, "dsb-train"), ds.subset(test_idx, "dsb-test")
    fit_idx, val_idx = validation_split(train, SEED)
    fit, val = train.subset(fit_idx, "dsb-fit"), train.subset(val_idx, "dsb-val")
    dev = resolve_device(args.device)
    model, _, _, train_s = train_learned(fit, val, "boundary", args.minutes, dev, args.seed)
    probs = {tta: ([predict_probabilities(model, s.image, device=dev, tta=tta) for s in val],
                   [predict_probabilities(model, s.image, device=dev, tta=tta) for s in test]) for tta in (False, True)}
    out = {"train_s": round(train_s, 1), "steps": model.trained_steps, "minutes": args.minutes, "seed": args.seed,
           "fit": len(fit), "val": len(val), "test": len(test)}
    chosen = {}
    for name, rule in RULES.items():
        def val_score(c, rule=rule):
            th = InstanceThresholds(float(c["foreground"]), float(c["marker"]), int(c["min_size"]), bool(c["tta"]))
            return float(dsb_score(val, [rule(p, th) for p in probs[th.tta][0]], kind="masks") or 0.0)
        found = grid_search(dict(THRESHOLD_GRID), val_score)
        c = found.params
        th = chosen[name] = InstanceThresholds(float(c["foreground"]), float(c["marker"]), int(c["min_size"]),
                                               bool(c["tta"]))
        preds = [rule(p, th) for p in probs[th.tta][1]]
        images = per_image(test, preds)
        out[name] = {"settings": str(th), "val_dsb": round(found.score, 4),
                     "test_dsb": round(float(dsb_score(test, preds, kind="masks")), 4),
                     "per_look": {g: round(v, 4) for g, v in _per_group(test, images).items()},
                     "instances": int(sum(len(p["masks"]) for p in preds)), "in_pieces": _pieces(preds)}
        print(name, out[name], flush=True)
    # the same settings under both rules: what the restriction alone changes
    th = chosen["before"]
    paired = {n: float(dsb_score(test, [r(p, th) for p in probs[th.tta][1]], kind="masks")) for n, r in RULES.items()}
    out["before_settings_both_rules"] = {k: round(v, 4) for k, v in paired.items()}
    print("the earlier rule's settings under both rules:", out["before_settings_both_rules"], flush=True)
    save_result(args.out, out)
    return 0


if __name__ == "__main__":
    run_benchmark(main)
